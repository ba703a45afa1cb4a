//! tlsplice's kernel TLS path, end to end: a rustls client with a client
//! certificate talks to the real `tlsplice` binary, which hands the session
//! to the kernel and splices to a backend on std threads.
//!
//! The host kernel usually has no kTLS: then every test prints
//! `skipped: kernel has no kTLS` and passes, unless `TLSPLICE_REQUIRE_KTLS=1`
//! (set by `scripts/ktls-vm-test.sh`, which runs this binary in a VM with
//! Debian's 6.1 kernel), where a missing kTLS is a failure. Each test that
//! expects offload asserts `path=ktls` in the access line and that
//! `/proc/net/tls_stat` counted the kernel sessions, so a silent fallback to
//! userspace fails.
//!
//! Knobs: `TLSPLICE_BIN` (binary under test), `TLSPLICE_KTLS_MIB` (MiB each
//! way in the bulk tests, default 32), `TLSPLICE_KTLS_CONNS` (connections in
//! the descriptor-leak test, default 1000), `TLSPLICE_TEST_LOG` (RUST_LOG
//! for tlsplice).

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use harness::*;
use rustls::version::{TLS12, TLS13};
use rustls::{CipherSuite, SupportedProtocolVersion};

/// Stream seeds: client -> backend and backend -> client.
const UP: u64 = 0x5550;
const DOWN: u64 = 0xD0D0;

const ACCESS_WAIT: Duration = Duration::from_secs(30);
const REPORT_WAIT: Duration = Duration::from_secs(60);

fn handshake_deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

fn version_name(v: &SupportedProtocolVersion) -> &'static str {
    if v.version == rustls::ProtocolVersion::TLSv1_3 {
        "TLSv1_3"
    } else {
        "TLSv1_2"
    }
}

/// The start-up probe must have found every pair this kernel offers.
fn assert_probe_found_all(server: &Server) {
    let line = server.kernel_tls_line();
    for want in [
        "TLS1.2/AES-128-GCM",
        "TLS1.2/AES-256-GCM",
        "TLS1.2/CHACHA20-POLY1305",
        "TLS1.3/AES-128-GCM",
        "TLS1.3/AES-256-GCM",
        "TLS1.3/CHACHA20-POLY1305",
    ] {
        assert!(line.contains(want), "probe lacks {want}: {line}");
    }
}

// ----------------------------------------------------- 1. cipher x version

/// N MiB each way at once through the kernel path, byte-exact both ways.
fn bulk(name: &'static str, version: &'static SupportedProtocolVersion, suite: CipherSuite) {
    bulk_with(name, version, suite, &[]);
}

/// [`bulk`] with extra tlsplice flags; returns the access line.
fn bulk_with(
    name: &'static str,
    version: &'static SupportedProtocolVersion,
    suite: CipherSuite,
    extra: &[&str],
) -> Option<Access> {
    let _run = begin(name)?;
    let n = bulk_mib() * MIB;
    let pki = Pki::new();
    let backend = Backend::start(Mode::Concurrent {
        send: n,
        seed: DOWN,
    });
    let server = Server::start_with(&pki, backend.addr, "auto", extra);
    assert_probe_found_all(&server);
    let before = TlsStat::read();
    let (out, access) = exact_both_ways(name, &pki, &server, &backend, n, version, suite);
    assert_eq!(
        access.get("version"),
        version_name(version),
        "{}",
        access.line
    );
    assert_eq!(access.get("suite"), format!("{suite:?}"), "{}", access.line);
    assert_eq!(access.get("subject"), "CN=client", "{}", access.line);
    assert_offloaded_since(&before, 1);
    let secs = out.elapsed.as_secs_f64();
    println!(
        "[ktls] {name}: {} MiB each way in {secs:.2}s ({:.1} MiB/s each way)",
        n / MIB,
        (n / MIB) as f64 / secs
    );
    Some(access)
}

/// Moves `n` bytes each way through `server` (the backend sends its
/// stream at once) and checks both arrive byte-exact on the kernel path.
fn exact_both_ways(
    name: &str,
    pki: &Pki,
    server: &Server,
    backend: &Backend,
    n: u64,
    version: &'static SupportedProtocolVersion,
    suite: CipherSuite,
) -> (Outcome, Access) {
    let mut client = Client::connect(server.addr, pki.client_config(version, Some(suite)));
    client.handshake(handshake_deadline());
    let mut plan = Plan::new(Some(Source::new(UP, n)), DOWN, transfer_deadline(2 * n));
    let out = client
        .transfer(&mut plan)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", server.log_text()));
    let port = client.port;
    drop(client);
    let report = backend.report(REPORT_WAIT);
    let access = server.access(port, ACCESS_WAIT);

    assert_eq!(out.end, End::CloseNotify, "client read side: {out:?}");
    assert_eq!(out.write_error, None);
    assert_eq!(out.first_mismatch, None, "backend->client stream differs");
    assert_eq!(out.received, n, "client received");
    assert_eq!(
        hex(&out.received_sha),
        hex(&report.sent_sha),
        "sha256 backend->client"
    );
    assert!(report.eof, "backend saw no EOF: {report:?}");
    assert_eq!(report.received, n, "backend received");
    assert_eq!(
        hex(&report.received_sha),
        hex(&out.sent_sha),
        "sha256 client->backend"
    );
    access.assert_ktls_done();
    assert_eq!(access.num("bytes_up"), n, "{}", access.line);
    assert_eq!(access.num("bytes_down"), n, "{}", access.line);
    (out, access)
}

/// A throttling tier's `bytes_per_second` on the kernel path: each splice
/// is capped to the client's budget, and every byte still arrives, no
/// sooner than the rate allows (lower bound only, generous).
#[test]
fn paced_splice_delivers_every_byte() {
    let name = "paced_splice_delivers_every_byte";
    let Some(_run) = begin(name) else { return };
    const RATE: u64 = 512 * 1024;
    let n = 2 * MIB;
    let pki = Pki::new();
    let backend = Backend::start(Mode::Concurrent {
        send: n,
        seed: DOWN,
    });
    let tier = format!(
        "\n[[tier]]\nname = \"paced\"\nclients = [\"cn:client\"]\nbytes_per_second = {RATE}\n"
    );
    let server = Server::start_config(&pki, backend.addr, &tier);
    let before = TlsStat::read();
    let (out, access) = exact_both_ways(
        name,
        &pki,
        &server,
        &backend,
        n,
        &TLS13,
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    );
    assert_eq!(access.get("tier"), "paced", "{}", access.line);
    assert_offloaded_since(&before, 1);
    // One second's worth may go at once; the rest at RATE, each way.
    let floor = Duration::from_secs_f64((n - RATE) as f64 / RATE as f64 * 0.75);
    assert!(
        out.elapsed >= floor,
        "{n} bytes at {RATE} B/s took only {:?}",
        out.elapsed
    );
    println!(
        "[ktls] {name}: {} MiB each way in {:?}",
        n / MIB,
        out.elapsed
    );
}

#[test]
fn bulk_tls13_aes128gcm() {
    bulk(
        "bulk_tls13_aes128gcm",
        &TLS13,
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    );
}

#[test]
fn bulk_tls13_aes256gcm() {
    bulk(
        "bulk_tls13_aes256gcm",
        &TLS13,
        CipherSuite::TLS13_AES_256_GCM_SHA384,
    );
}

#[test]
fn bulk_tls13_chacha20() {
    bulk(
        "bulk_tls13_chacha20",
        &TLS13,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    );
}

#[test]
fn bulk_tls12_aes128gcm() {
    bulk(
        "bulk_tls12_aes128gcm",
        &TLS12,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    );
}

#[test]
fn bulk_tls12_aes256gcm() {
    bulk(
        "bulk_tls12_aes256gcm",
        &TLS12,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    );
}

#[test]
fn bulk_tls12_chacha20() {
    bulk(
        "bulk_tls12_chacha20",
        &TLS12,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    );
}

/// The client's segments are 536 bytes, so each record reaches the kernel
/// in some 30 pieces (the splice path must still move whole records).
#[test]
fn bulk_tls13_small_client_mss() {
    let name = "bulk_tls13_small_client_mss";
    let Some(_run) = begin(name) else { return };
    let n = 4 * MIB;
    let pki = Pki::new();
    let backend = Backend::start(Mode::Concurrent {
        send: n,
        seed: DOWN,
    });
    let server = Server::start(&pki, backend.addr, "auto");
    let before = TlsStat::read();

    let mut client = Client::connect_mss(server.addr, pki.client_config(&TLS13, None), Some(536));
    client.handshake(handshake_deadline());
    let mut plan = Plan::new(Some(Source::new(UP, n)), DOWN, transfer_deadline(4 * n));
    let out = client
        .transfer(&mut plan)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", server.log_text()));
    let port = client.port;
    drop(client);
    let report = backend.report(REPORT_WAIT);
    let access = server.access(port, ACCESS_WAIT);

    assert_eq!(out.end, End::CloseNotify, "{out:?}");
    assert_eq!(out.first_mismatch, None);
    assert_eq!(out.received, n);
    assert_eq!(hex(&out.received_sha), hex(&report.sent_sha));
    assert_eq!(report.received, n, "backend received");
    assert_eq!(
        hex(&report.received_sha),
        hex(&out.sent_sha),
        "sha256 client->backend"
    );
    access.assert_ktls_done();
    assert_offloaded_since(&before, 1);
}

// ------------------------------------- 2. data in the handshake's last flight

/// Where to cut the client's last flight.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Write it as rustls produced it.
    None,
    /// In the middle of the first full-size data record.
    MidRecord,
    /// Three bytes into the first full-size data record's header.
    MidHeader,
}

fn cut_at(cut: Cut, flight: &[u8]) -> Option<usize> {
    let (at, _, len) = records(flight)
        .into_iter()
        .find(|&(_, kind, len)| kind == 23 && len > 16_000)?;
    match cut {
        Cut::None => None,
        Cut::MidRecord => Some(at + 5 + len / 2),
        Cut::MidHeader => Some(at + 3),
    }
}

/// The client queues `len` bytes before the handshake starts, so rustls
/// sends them right behind its Finished (TLS 1.3: in the same flight), cut
/// as `cut` says with a pause between the parts so tlsplice holds a partial
/// record when it hands over. The echo must come back byte-exact.
fn early_data(name: &'static str, version: &'static SupportedProtocolVersion, len: u64, cut: Cut) {
    let Some(_run) = begin(name) else { return };
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo);
    let server = Server::start(&pki, backend.addr, "auto");
    // A first connection pays for start-up work (slow in the VM), so that
    // the pause below really finds tlsplice waiting on the partial record.
    echo_once(&server, &pki, version, 1000, 1).assert_ktls_done();
    let _ = backend.report(REPORT_WAIT);
    let before = TlsStat::read();

    let mut client = Client::connect(server.addr, pki.client_config(version, None));
    client.conn.set_buffer_limit(None);
    let mut src = Source::new(UP, len);
    let mut buf = vec![0u8; len as usize];
    let data = src.next(&mut buf).to_vec();
    client
        .conn
        .writer()
        .write_all(&data)
        .expect("queue early data");
    client.handshake_with(
        handshake_deadline(),
        &mut |flight| match cut_at(cut, flight) {
            Some(at) => Flight::Split(at, Duration::from_millis(500)),
            None => Flight::Write,
        },
    );
    // Everything was queued already: read the echo, then close.
    let mut plan = Plan::new(None, UP, transfer_deadline(2 * len));
    plan.close_after_recv = Some(len);
    let out = client
        .transfer(&mut plan)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", server.log_text()));
    let port = client.port;
    drop(client);
    let report = backend.report(REPORT_WAIT);
    let access = server.access(port, ACCESS_WAIT);

    assert_eq!(out.end, End::CloseNotify, "{out:?}");
    assert_eq!(out.first_mismatch, None, "echo differs");
    assert_eq!(out.received, len);
    assert_eq!(hex(&out.received_sha), hex(&src.digest()), "sha256 echo");
    assert_eq!(report.received, len, "backend received: {report:?}");
    assert_eq!(hex(&report.received_sha), hex(&src.digest()), "sha256 up");
    access.assert_ktls_done();
    assert_eq!(access.num("bytes_up"), len, "{}", access.line);
    assert_eq!(access.num("bytes_down"), len, "{}", access.line);
    assert_offloaded_since(&before, 1);
}

#[test]
fn early_data_tls13_same_flight() {
    early_data("early_data_tls13_same_flight", &TLS13, 1000, Cut::None);
}

#[test]
fn early_data_tls13_large_same_flight() {
    early_data(
        "early_data_tls13_large_same_flight",
        &TLS13,
        200 * 1024 + 123,
        Cut::None,
    );
}

#[test]
fn early_data_tls13_partial_record_at_handover() {
    early_data(
        "early_data_tls13_partial_record_at_handover",
        &TLS13,
        100 * 1024 + 123,
        Cut::MidRecord,
    );
}

#[test]
fn early_data_tls13_partial_header_at_handover() {
    early_data(
        "early_data_tls13_partial_header_at_handover",
        &TLS13,
        100 * 1024 + 123,
        Cut::MidHeader,
    );
}

#[test]
fn early_data_tls12_right_after_handshake() {
    early_data(
        "early_data_tls12_right_after_handshake",
        &TLS12,
        100 * 1024 + 123,
        Cut::None,
    );
}

#[test]
fn early_data_tls12_partial_record() {
    early_data(
        "early_data_tls12_partial_record",
        &TLS12,
        100 * 1024 + 123,
        Cut::MidRecord,
    );
}

/// A TLS 1.3 client whose Finished, request and close_notify arrive in one
/// TCP segment (a client that sends one request and half-closes at once, as
/// `printf req | openssl s_client` does). TLS 1.3 allows the half-close: the
/// request must reach the backend and the answer must come back. Whether
/// tlsplice then offloads (`path=ktls`) or stays in userspace with
/// `ktls_fallback=client already closed` is its choice.
#[test]
fn early_data_tls13_finished_data_close_notify_in_one_segment() {
    let name = "early_data_tls13_finished_data_close_notify_in_one_segment";
    let Some(_run) = begin(name) else { return };
    let len = 5000u64;
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo);
    let server = Server::start(&pki, backend.addr, "auto");

    let mut client = Client::connect(server.addr, pki.client_config(&TLS13, None));
    let deadline = handshake_deadline();
    let mut segment = client
        .handshake_with(deadline, &mut |_| Flight::Hold)
        .expect("last flight held");
    let mut src = Source::new(UP, len);
    let mut buf = vec![0u8; len as usize];
    let data = src.next(&mut buf).to_vec();
    client.conn.writer().write_all(&data).unwrap();
    client.conn.send_close_notify();
    while client.conn.wants_write() {
        client.conn.write_tls(&mut segment).unwrap();
    }
    client.send_raw(&segment, deadline);
    let mut plan = Plan::new(None, UP, transfer_deadline(2 * len));
    plan.close_notify = false;
    let out = client
        .transfer(&mut plan)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", server.log_text()));
    let port = client.port;
    drop(client);
    let access = server.access(port, ACCESS_WAIT);
    let report = backend.try_report(Duration::from_secs(5));
    println!(
        "[ktls] {name}: client {:?}; access {}",
        out.end, access.line
    );

    assert_eq!(
        access.get("reason"),
        "done",
        "request + close_notify right after Finished was not served: {}",
        access.line
    );
    let report = report.expect("the backend saw no connection");
    assert_eq!(report.received, len, "backend received: {report:?}");
    assert_eq!(hex(&report.received_sha), hex(&src.digest()));
    assert_eq!(out.received, len, "echo: {out:?}");
    assert_eq!(out.first_mismatch, None);
    assert_eq!(out.end, End::CloseNotify, "{out:?}");
    match access.get("path") {
        "ktls" => {}
        "userspace" => assert_eq!(
            access.get("ktls_fallback"),
            "client already closed",
            "{}",
            access.line
        ),
        other => panic!("path={other}: {}", access.line),
    }
}

// ----------------------------------------------------------- 3. KeyUpdate

/// A client KeyUpdate mid-transfer: Linux 6.1 cannot re-key, so tlsplice
/// must end the connection promptly with a reason naming KeyUpdate, after
/// the backend got every byte sent before it.
#[test]
fn key_update_closes_cleanly() {
    let Some(_run) = begin("key_update_closes_cleanly") else {
        return;
    };
    let before_update = 2 * MIB + 4321;
    let total = before_update + 2 * MIB;
    let pki = Pki::new();
    let backend = Backend::start(Mode::SinkThenSend {
        send: 0,
        seed: DOWN,
    });
    let server = Server::start(&pki, backend.addr, "auto");
    let rekey = server.kernel_tls_line().contains("rekey yes");
    let before = TlsStat::read();

    let mut client = Client::connect(
        server.addr,
        pki.client_config(&TLS13, Some(CipherSuite::TLS13_AES_128_GCM_SHA256)),
    );
    client.handshake(handshake_deadline());
    let mut plan = Plan::new(Some(Source::new(UP, total)), DOWN, transfer_deadline(total));
    plan.key_update_at = Some(before_update);
    let started = Instant::now();
    let out = client
        .transfer(&mut plan)
        .unwrap_or_else(|e| panic!("no clean end after KeyUpdate: {e}\n{}", server.log_text()));
    let port = client.port;
    drop(client);
    let report = backend.report(REPORT_WAIT);
    let access = server.access(port, ACCESS_WAIT);
    println!(
        "[ktls] key_update: client read side {:?}, write error {:?}, after {:.2}s; reason: {}",
        out.end,
        out.write_error,
        started.elapsed().as_secs_f64(),
        access.get("reason")
    );

    let (at, sha) = out.sha_before_key_update.expect("KeyUpdate was sent");
    assert_eq!(at, before_update);
    assert_eq!(access.get("path"), "ktls", "{}", access.line);
    if rekey {
        // Linux 6.14+: the kernel re-keys and the transfer completes.
        assert_eq!(access.get("reason"), "done", "{}", access.line);
        assert_eq!(report.received, total);
        assert_eq!(hex(&report.received_sha), hex(&out.sent_sha));
    } else {
        assert!(
            access.get("reason").contains("KeyUpdate"),
            "reason should name KeyUpdate: {}",
            access.line
        );
        assert!(report.eof, "backend saw no EOF: {report:?}");
        assert_eq!(
            report.received, before_update,
            "backend should have exactly the bytes sent before the KeyUpdate"
        );
        assert_eq!(
            hex(&report.received_sha),
            hex(&sha),
            "sha256 before KeyUpdate"
        );
        assert_ne!(out.end, End::Open);
    }
    assert_offloaded_since(&before, 1);
}

// ----------------------------------------------------------- 4. half-close

/// close_notify from the client: the backend sees EOF, and only then sends
/// its data, which must still reach the client.
fn client_close_notify(name: &'static str, version: &'static SupportedProtocolVersion) {
    let Some(_run) = begin(name) else { return };
    let (up, down) = (MIB + 17, 4 * MIB + 5);
    let pki = Pki::new();
    let backend = Backend::start(Mode::SinkThenSend {
        send: down,
        seed: DOWN,
    });
    let server = Server::start(&pki, backend.addr, "auto");
    let before = TlsStat::read();

    let mut client = Client::connect(server.addr, pki.client_config(version, None));
    client.handshake(handshake_deadline());
    let mut plan = Plan::new(
        Some(Source::new(UP, up)),
        DOWN,
        transfer_deadline(up + down),
    );
    let out = client
        .transfer(&mut plan)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", server.log_text()));
    let port = client.port;
    drop(client);
    let report = backend.report(REPORT_WAIT);
    let access = server.access(port, ACCESS_WAIT);

    assert!(
        report.eof,
        "backend saw no EOF after close_notify: {report:?}"
    );
    assert_eq!(report.received, up);
    assert_eq!(hex(&report.received_sha), hex(&out.sent_sha));
    assert_eq!(report.write_error, None, "{report:?}");
    assert_eq!(report.sent, down);
    assert_eq!(out.end, End::CloseNotify, "{out:?}");
    assert_eq!(out.first_mismatch, None);
    assert_eq!(
        out.received, down,
        "backend->client after the client's close_notify"
    );
    assert_eq!(hex(&out.received_sha), hex(&report.sent_sha));
    access.assert_ktls_done();
    assert_offloaded_since(&before, 1);
}

#[test]
fn client_close_notify_half_closes_tls13() {
    client_close_notify("client_close_notify_half_closes_tls13", &TLS13);
}

#[test]
fn client_close_notify_half_closes_tls12() {
    client_close_notify("client_close_notify_half_closes_tls12", &TLS12);
}

/// The backend shuts down its write side: the client reads a clean EOF
/// (close_notify) and can still send afterwards.
#[test]
fn backend_half_close_gives_clean_eof() {
    let Some(_run) = begin("backend_half_close_gives_clean_eof") else {
        return;
    };
    let (up, down) = (2 * MIB + 3, MIB + 11);
    let pki = Pki::new();
    let backend = Backend::start(Mode::SendThenSink {
        send: down,
        seed: DOWN,
    });
    let server = Server::start(&pki, backend.addr, "auto");
    let before = TlsStat::read();

    let mut client = Client::connect(server.addr, pki.client_config(&TLS13, None));
    client.handshake(handshake_deadline());
    let mut plan = Plan::new(
        Some(Source::new(UP, up)),
        DOWN,
        transfer_deadline(up + down),
    );
    plan.send_after_eof = true;
    let out = client
        .transfer(&mut plan)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    let port = client.port;
    drop(client);
    let report = backend.report(REPORT_WAIT);
    let access = server.access(port, ACCESS_WAIT);

    assert_eq!(
        out.end,
        End::CloseNotify,
        "client should read a clean EOF: {out:?}"
    );
    assert_eq!(out.received, down);
    assert_eq!(out.first_mismatch, None);
    assert_eq!(hex(&out.received_sha), hex(&report.sent_sha));
    assert_eq!(
        out.write_error, None,
        "client could not send after EOF: {out:?}"
    );
    assert_eq!(out.sent, up);
    assert!(report.eof, "{report:?}");
    assert_eq!(
        report.received, up,
        "bytes sent after the backend's half-close"
    );
    assert_eq!(hex(&report.received_sha), hex(&out.sent_sha));
    access.assert_ktls_done();
    assert_offloaded_since(&before, 1);
}

/// A small echo through `server` on the kernel path.
fn echo_once(
    server: &Server,
    pki: &Pki,
    version: &'static SupportedProtocolVersion,
    len: u64,
    seed: u64,
) -> Access {
    echo_after(server, pki, version, (len, seed), Duration::ZERO)
}

/// An echo of `len` bytes of stream `seed`, after the connection idled for
/// `idle` past its handshake; byte-exact. Returns the access line.
fn echo_after(
    server: &Server,
    pki: &Pki,
    version: &'static SupportedProtocolVersion,
    (len, seed): (u64, u64),
    idle: Duration,
) -> Access {
    let mut client = Client::connect(server.addr, pki.client_config(version, None));
    client.handshake(handshake_deadline());
    thread::sleep(idle);
    let mut plan = Plan::new(
        Some(Source::new(seed, len)),
        seed,
        transfer_deadline(2 * len),
    );
    plan.close_after_recv = Some(len);
    let out = client
        .transfer(&mut plan)
        .unwrap_or_else(|e| panic!("echo: {e}\n{}", server.log_text()));
    let port = client.port;
    drop(client);
    assert_eq!(out.end, End::CloseNotify, "{out:?}");
    assert_eq!(out.received, len);
    assert_eq!(out.first_mismatch, None);
    assert_eq!(out.received_sha, out.sent_sha);
    server.access(port, ACCESS_WAIT)
}

/// The client resets the connection mid-transfer: tlsplice logs the
/// connection as closed, closes the backend, and keeps serving.
#[test]
fn client_reset_mid_transfer() {
    let Some(_run) = begin("client_reset_mid_transfer") else {
        return;
    };
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo);
    let mut server = Server::start(&pki, backend.addr, "auto");
    let before = TlsStat::read();

    let mut client = Client::connect(server.addr, pki.client_config(&TLS13, None));
    client.handshake(handshake_deadline());
    let mut plan = Plan::new(
        Some(Source::new(UP, 64 * MIB)),
        UP,
        transfer_deadline(4 * MIB),
    );
    plan.close_notify = false;
    plan.stop_after = Some((2 * MIB, MIB));
    let out = client
        .transfer(&mut plan)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    assert_eq!(out.first_mismatch, None);
    let port = client.port;
    client.reset();
    let access = server.access(port, ACCESS_WAIT);
    let report = backend.report(REPORT_WAIT);
    println!(
        "[ktls] reset: reason {:?}; backend {:?}",
        access.get("reason"),
        report
    );
    assert_eq!(access.get("path"), "ktls", "{}", access.line);
    assert!(
        access.get("reason").starts_with("client_error"),
        "{}",
        access.line
    );
    assert!(server.alive(), "tlsplice died:\n{}", server.log_text());
    echo_once(&server, &pki, &TLS13, 100_000, 7).assert_ktls_done();
    assert_offloaded_since(&before, 2);
}

/// After the handover, half a record arrives and the rest only seconds
/// later: tlsplice must wait for it without spinning, then relay it.
#[test]
fn partial_record_wait_does_not_spin() {
    let name = "partial_record_wait_does_not_spin";
    let Some(_run) = begin(name) else { return };
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo);
    let server = Server::start(&pki, backend.addr, "auto");
    let before = TlsStat::read();

    let mut client = Client::connect(server.addr, pki.client_config(&TLS13, None));
    client.handshake(handshake_deadline());
    // A first round trip: the relay is on the kernel path from here on.
    let mut plan = Plan::new(Some(Source::new(UP, 1000)), UP, transfer_deadline(2000));
    plan.close_notify = false;
    plan.stop_after = Some((1000, 1000));
    client.transfer(&mut plan).unwrap();
    // One 10,000-byte record, of which only 100 bytes go out now.
    let mut src = Source::new(DOWN, 10_000);
    let mut buf = vec![0u8; 10_000];
    let data = src.next(&mut buf).to_vec();
    client.conn.writer().write_all(&data).unwrap();
    let mut record = Vec::new();
    while client.conn.wants_write() {
        client.conn.write_tls(&mut record).unwrap();
    }
    assert_eq!(records(&record).len(), 1);
    let deadline = handshake_deadline();
    client.send_raw(&record[..100], deadline);
    let cpu0 = server.cpu_time();
    let wall = Duration::from_secs(3);
    thread::sleep(wall);
    let busy = server.cpu_time().saturating_sub(cpu0);
    client.send_raw(&record[100..], deadline);
    let mut plan = Plan::new(None, DOWN, transfer_deadline(20_000));
    plan.close_after_recv = Some(10_000);
    let out = client
        .transfer(&mut plan)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", server.log_text()));
    let port = client.port;
    drop(client);
    let access = server.access(port, ACCESS_WAIT);
    println!("[ktls] {name}: tlsplice used {busy:?} CPU in {wall:?} waiting");

    assert_eq!(out.end, End::CloseNotify, "{out:?}");
    assert_eq!(out.received, 10_000);
    assert_eq!(out.first_mismatch, None);
    access.assert_ktls_done();
    assert_eq!(access.num("bytes_up"), 11_000, "{}", access.line);
    assert!(
        busy < wall / 6,
        "tlsplice used {busy:?} of CPU in {wall:?} while a partial record was pending"
    );
    assert_offloaded_since(&before, 1);
}

/// An idle kernel-path connection: after `--idle-timeout` tlsplice sends
/// close_notify through the kernel and logs `idle_timeout`. Runs with
/// `--ktls require`.
#[test]
fn idle_timeout_sends_close_notify() {
    let name = "idle_timeout_sends_close_notify";
    let Some(_run) = begin(name) else { return };
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo);
    let server = Server::start_with(&pki, backend.addr, "require", &["--idle-timeout", "2s"]);
    let before = TlsStat::read();

    let mut client = Client::connect(server.addr, pki.client_config(&TLS12, None));
    client.handshake(handshake_deadline());
    let mut plan = Plan::new(
        Some(Source::new(UP, 1000)),
        UP,
        Instant::now() + Duration::from_secs(30),
    );
    plan.close_notify = false;
    let out = client
        .transfer(&mut plan)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", server.log_text()));
    let port = client.port;
    drop(client);
    let access = server.access(port, ACCESS_WAIT);

    assert_eq!(out.received, 1000);
    assert_eq!(out.end, End::CloseNotify, "{out:?}");
    assert_eq!(access.get("path"), "ktls", "{}", access.line);
    assert_eq!(access.get("reason"), "idle_timeout", "{}", access.line);
    assert!(out.elapsed >= Duration::from_secs(2), "{out:?}");
    let report = backend.report(REPORT_WAIT);
    assert_eq!(report.received, 1000, "{report:?}");
    assert_offloaded_since(&before, 1);
}

// ------------------------------------------------------ 5. descriptor leak

#[test]
fn no_descriptor_leak() {
    let Some(_run) = begin("no_descriptor_leak") else {
        return;
    };
    let conns = env_u64("TLSPLICE_KTLS_CONNS", 1000);
    const SLACK: usize = 4;
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo);
    let server = Server::start(&pki, backend.addr, "auto");
    let configs = [
        pki.client_config(&TLS13, None),
        pki.client_config(&TLS12, None),
    ];
    // Warm up: pools, timers and the like exist before the baseline.
    for i in 0..4u64 {
        echo_once(
            &server,
            &pki,
            if i % 2 == 0 { &TLS13 } else { &TLS12 },
            1000,
            i,
        )
        .assert_ktls_done();
    }
    let baseline = server.settled_fd_count();
    let baseline_list = server.fd_listing();
    let stat0 = TlsStat::read();

    let started = Instant::now();
    for i in 0..conns {
        let mut client = Client::connect(server.addr, configs[(i % 2) as usize].clone());
        client.handshake(handshake_deadline());
        let mut plan = Plan::new(Some(Source::new(i, 1000)), i, transfer_deadline(2000));
        // Request, response, then close_notify (see
        // early_data_tls13_finished_data_close_notify_in_one_segment for a
        // client that closes at once).
        plan.close_after_recv = Some(1000);
        let out = client
            .transfer(&mut plan)
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", server.log_text()));
        assert_eq!(out.end, End::CloseNotify, "connection {i}: {out:?}");
        assert_eq!(out.received, 1000, "connection {i}");
        assert_eq!(out.first_mismatch, None, "connection {i}");
    }
    let elapsed = started.elapsed();
    let total = conns as usize + 4;
    assert!(
        server.wait_access_count(total, Duration::from_secs(60)),
        "only {} of {total} access lines",
        server.access_lines().len()
    );
    for a in server.access_lines() {
        a.assert_ktls_done();
    }
    let now_fds = server.settled_fd_count();
    println!(
        "[ktls] no_descriptor_leak: {conns} connections in {:.1}s ({:.1}/s); fds baseline {baseline}, after {now_fds}",
        elapsed.as_secs_f64(),
        conns as f64 / elapsed.as_secs_f64()
    );
    assert!(
        now_fds <= baseline + SLACK,
        "descriptors leaked: {baseline} -> {now_fds} after {conns} connections\nbefore: {baseline_list}\nafter:  {}",
        server.fd_listing()
    );
    if let (Some(s0), Some(s1)) = (&stat0, TlsStat::read()) {
        for key in ["TlsCurrTxSw", "TlsCurrRxSw"] {
            assert_eq!(
                s1.get(key),
                s0.get(key),
                "{key}: kernel TLS sockets left open"
            );
        }
    }
    assert_offloaded_since(&stat0, conns);
}

// --------------------------------------------------------- 6. --ktls off

/// Runs `n` bytes each way at once through a server started by `start`,
/// checks the transfer is byte-exact, ended with close_notify, was relayed
/// in userspace and left the kernel's TLS counters alone. Returns the
/// access line and the elapsed time.
fn userspace_transfer(
    n: u64,
    start: impl FnOnce(&Pki, SocketAddr) -> Server,
) -> (Access, Duration) {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Concurrent {
        send: n,
        seed: DOWN,
    });
    let server = start(&pki, backend.addr);
    let before = TlsStat::read();

    let mut client = Client::connect(server.addr, pki.client_config(&TLS13, None));
    client.handshake(handshake_deadline());
    let mut plan = Plan::new(Some(Source::new(UP, n)), DOWN, transfer_deadline(2 * n));
    let out = client
        .transfer(&mut plan)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    let port = client.port;
    drop(client);
    let report = backend.report(REPORT_WAIT);
    let access = server.access(port, ACCESS_WAIT);

    assert_eq!(out.end, End::CloseNotify, "{out:?}");
    assert_eq!(out.received, n);
    assert_eq!(out.first_mismatch, None);
    assert_eq!(hex(&out.received_sha), hex(&report.sent_sha));
    assert_eq!(report.received, n);
    assert_eq!(hex(&report.received_sha), hex(&out.sent_sha));
    assert_eq!(access.get("path"), "userspace", "{}", access.line);
    assert_eq!(access.get("reason"), "done", "{}", access.line);
    if let (Some(b), Some(a)) = (&before, TlsStat::read()) {
        assert_eq!(a.get("TlsTxSw"), b.get("TlsTxSw"), "kTLS was used");
        assert_eq!(a.get("TlsRxSw"), b.get("TlsRxSw"), "kTLS was used");
    }
    (access, out.elapsed)
}

#[test]
fn ktls_off_uses_userspace() {
    let Some(_run) = begin("ktls_off_uses_userspace") else {
        return;
    };
    let n = bulk_mib() * MIB;
    let (access, elapsed) = userspace_transfer(n, |pki, backend| {
        let server = Server::start(pki, backend, "off");
        let line = server.kernel_tls_line();
        assert!(line.contains("unavailable"), "{line}");
        server
    });
    assert_eq!(access.get("ktls_fallback"), "-", "{}", access.line);
    let secs = elapsed.as_secs_f64();
    println!(
        "[ktls] ktls_off_uses_userspace: {} MiB each way in {secs:.2}s ({:.1} MiB/s)",
        n / MIB,
        (n / MIB) as f64 / secs
    );
}

/// A setsockopt failure before the keys leave rustls (injected at the ULP
/// step) keeps each connection in userspace, intact and byte-exact.
#[test]
fn forced_ulp_failure_falls_back_to_userspace() {
    let Some(_run) = begin("forced_ulp_failure_falls_back_to_userspace") else {
        return;
    };
    let (access, _) = userspace_transfer(4 * MIB, |pki, backend| {
        Server::start_env(
            pki,
            backend,
            "auto",
            &[],
            &[("TLSPLICE_FAULT_KTLS_ULP", "1")],
        )
    });
    assert!(
        access.line.contains("injected fault"),
        "fallback reason logged: {}",
        access.line
    );
}

// ------------------------------------- 7. TLS 1.2 AES-GCM explicit nonces

/// A TCP relay between the client and tlsplice that records what tlsplice
/// sends. Returns its address, the recording, and (once connected) the
/// relay's own port toward tlsplice, which is what the access line names.
fn recording_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>, mpsc::Receiver<u16>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let rec = recorded.clone();
    let (port_tx, port_rx) = mpsc::channel();
    thread::spawn(move || {
        let Ok((down, _)) = listener.accept() else {
            return;
        };
        let Ok(up) = TcpStream::connect(upstream) else {
            return;
        };
        let _ = port_tx.send(up.local_addr().unwrap().port());
        for s in [&down, &up] {
            let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
            let _ = s.set_nodelay(true);
        }
        let (mut d_rd, mut u_wr) = (down.try_clone().unwrap(), up.try_clone().unwrap());
        let c2s = thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = d_rd.read(&mut buf) {
                if n == 0 || u_wr.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = u_wr.shutdown(std::net::Shutdown::Write);
        });
        let (mut u_rd, mut d_wr) = (up, down);
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = u_rd.read(&mut buf) {
            if n == 0 {
                break;
            }
            rec.lock().unwrap().extend_from_slice(&buf[..n]);
            if d_wr.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = d_wr.shutdown(std::net::Shutdown::Write);
        let _ = c2s.join();
    });
    (addr, recorded, port_rx)
}

/// With TLS 1.2 AES-GCM the explicit nonce is on the wire. The kernel must
/// not reuse one rustls already used under the same key (the Finished), nor
/// repeat its own.
#[test]
fn tls12_gcm_explicit_nonces_never_repeat() {
    let Some(_run) = begin("tls12_gcm_explicit_nonces_never_repeat") else {
        return;
    };
    let down = MIB;
    let pki = Pki::new();
    let backend = Backend::start(Mode::Concurrent {
        send: down,
        seed: DOWN,
    });
    let server = Server::start(&pki, backend.addr, "auto");
    for suite in [
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ] {
        let before = TlsStat::read();
        let (proxy, recorded, port_rx) = recording_proxy(server.addr);
        let mut client = Client::connect(proxy, pki.client_config(&TLS12, Some(suite)));
        client.handshake(handshake_deadline());
        let mut plan = Plan::new(
            Some(Source::new(UP, 64 * 1024)),
            DOWN,
            transfer_deadline(down),
        );
        let out = client
            .transfer(&mut plan)
            .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
        drop(client);
        assert_eq!(out.end, End::CloseNotify, "{out:?}");
        assert_eq!(out.received, down);
        assert_eq!(out.first_mismatch, None);
        let _ = backend.report(REPORT_WAIT);
        let port = port_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        server.access(port, ACCESS_WAIT).assert_ktls_done();
        assert_offloaded_since(&before, 1);

        let wire = recorded.lock().unwrap().clone();
        let recs = records(&wire);
        let ccs = recs
            .iter()
            .position(|&(_, kind, _)| kind == 20)
            .expect("server ChangeCipherSpec");
        let mut nonces: Vec<[u8; 8]> = Vec::new();
        for &(at, kind, len) in &recs[ccs + 1..] {
            assert!(matches!(kind, 21..=23), "record type {kind}");
            assert!(len >= 8 + 16, "short record");
            nonces.push(wire[at + 5..at + 13].try_into().unwrap());
        }
        assert!(
            nonces.len() as u64 > down / 16384,
            "{suite:?}: only {} encrypted records",
            nonces.len()
        );
        let mut sorted = nonces.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            nonces.len(),
            "{suite:?}: an explicit nonce repeats under one key (first: Finished {}, next {})",
            hex(&nonces[0]),
            hex(&nonces[1])
        );
    }
}

/// The client as a blocking rustls stream, for request/response tests.
fn blocking(client: &mut Client) -> rustls::Stream<'_, rustls::ClientConnection, TcpStream> {
    client.sock.set_nonblocking(false).unwrap();
    client
        .sock
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    rustls::Stream::new(&mut client.conn, &mut client.sock)
}

/// A header-mode tlsplice (`format`) that offloads to the kernel, in front
/// of an echo backend, and a TLS 1.3 client past its handshake.
struct HeaderMode {
    pki: Pki,
    server: Server,
    client: Client,
    before: Option<TlsStat>,
    _backend: Backend,
    _run: TestRun,
}

fn header_mode(name: &'static str, format: &str) -> Option<HeaderMode> {
    let run = begin(name)?;
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo);
    let server = Server::start_with(
        &pki,
        backend.addr,
        "auto",
        &["--client-cert-header", format],
    );
    let before = TlsStat::read();
    let mut client = Client::connect(server.addr, pki.client_config(&TLS13, None));
    client.handshake(handshake_deadline());
    Some(HeaderMode {
        pki,
        server,
        client,
        before,
        _backend: backend,
        _run: run,
    })
}

/// Header mode on the kernel path: request heads are read in userspace and
/// rewritten (spoofed header removed, ours inserted) while bodies are
/// spliced; the echo backend returns exactly what it received.
#[test]
fn header_mode_rewrites_heads_and_splices_bodies() {
    let name = "header_mode_rewrites_heads_and_splices_bodies";
    let Some(mut h) = header_mode(name, "rfc9440") else {
        return;
    };
    let ours = format!(
        "Client-Cert: :{}:\r\n",
        base64::engine::general_purpose::STANDARD.encode(h.pki.client_cert())
    );
    let mut body = vec![0u8; 100_000];
    Gen::new(UP).fill(&mut body);
    let chunk = &body[..40_000];
    let (mut sent, mut expected) = (Vec::new(), Vec::new());
    let mut both = |to_send: &[u8], to_expect: &[u8]| {
        sent.extend_from_slice(to_send);
        expected.extend_from_slice(to_expect);
    };
    both(
        b"POST /a HTTP/1.1\r\nHost: t\r\nclient-cert: :c3Bvb2Y=:\r\nContent-Length: 100000\r\n\r\n",
        format!("POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n{ours}\r\n").as_bytes(),
    );
    both(&body, &body);
    let chunked_head = b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n";
    both(chunked_head, chunked_head);
    both(b"\r\n", format!("{ours}\r\n").as_bytes());
    let chunk_body = [
        format!("{:x};ext=1\r\n", chunk.len()).as_bytes(),
        chunk,
        b"\r\n0\r\nX-Trailer: 1\r\n\r\n",
    ]
    .concat();
    both(&chunk_body, &chunk_body);
    both(
        b"GET /c HTTP/1.1\r\n\r\n",
        format!("GET /c HTTP/1.1\r\n{ours}\r\n").as_bytes(),
    );

    let port = h.client.port;
    {
        let mut tls = blocking(&mut h.client);
        // Odd-sized writes: heads and chunk lines straddle records.
        for piece in sent.chunks(7_001) {
            tls.write_all(piece).unwrap();
        }
        tls.flush().unwrap();
        let mut got = vec![0u8; expected.len()];
        tls.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("echo: {e}\n{}", h.server.log_text()));
        let mismatch = got.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(mismatch, None, "backend got other bytes than expected");
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
    let access = h.server.access(port, ACCESS_WAIT);
    access.assert_ktls_done();
    assert_eq!(
        access.num("bytes_up"),
        expected.len() as u64,
        "{}",
        access.line
    );
    assert_offloaded_since(&h.before, 1);
}

/// A malformed head on the kernel path: 400 through the kernel, then
/// close_notify; nothing reaches the backend.
#[test]
fn header_mode_refuses_a_malformed_head_on_the_kernel_path() {
    let name = "header_mode_refuses_a_malformed_head_on_the_kernel_path";
    let Some(mut h) = header_mode(name, "xfcc") else {
        return;
    };
    let port = h.client.port;
    let reply = {
        let mut tls = blocking(&mut h.client);
        tls.write_all(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        tls.flush().unwrap();
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply)
            .unwrap_or_else(|e| panic!("reply: {e}\n{}", h.server.log_text()));
        String::from_utf8_lossy(&reply).into_owned()
    };
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    let access = h.server.access(port, ACCESS_WAIT);
    assert_eq!(access.get("path"), "ktls", "{}", access.line);
    assert!(
        access.line.contains("request head refused: 400"),
        "{}",
        access.line
    );
    assert_eq!(access.num("bytes_up"), 0, "{}", access.line);
}

// ------------------------------------------------ 9. ktls_offload policy

/// Under `--ktls-offload-after-bytes 1MiB` a bulk connection starts in
/// userspace and moves to the kernel mid-transfer: byte-exact both ways,
/// reported as ktls (the kernel counted the session) with the bytes relayed
/// before the switch.
#[test]
fn offload_after_bytes_moves_a_bulk_connection() {
    let extra = ["--ktls-offload-after-bytes", "1MiB"];
    let name = "offload_after_bytes_moves_a_bulk_connection";
    let Some(access) = bulk_with(name, &TLS13, CipherSuite::TLS13_AES_128_GCM_SHA256, &extra)
    else {
        return;
    };
    assert_eq!(access.get("ktls_offload"), "bytes", "{}", access.line);
    let before = access.num("ktls_after_bytes");
    assert!(
        (MIB..2 * bulk_mib() * MIB).contains(&before),
        "relayed {before} bytes in userspace: {}",
        access.line
    );
    println!("[ktls] {name}: moved to the kernel after {before} bytes in userspace");
}

/// Many short echo connections under each policy: every one completes
/// byte-exact; at once, each costs the kernel one TX and one RX session
/// (what `/proc/net/tls_stat` counts, one `setsockopt` each, after the
/// `TCP_ULP` one); under a 64 KiB threshold none reaches the kernel.
#[test]
fn offload_policy_short_connections() {
    let Some(_run) = begin("offload_policy_short_connections") else {
        return;
    };
    const CONNS: u64 = 100;
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo);
    for (policy, extra, want_path) in [
        ("at once", &[][..], "ktls"),
        (
            "after 64KiB",
            &["--ktls-offload-after-bytes", "64KiB"][..],
            "userspace",
        ),
    ] {
        let server = Server::start_with(&pki, backend.addr, "auto", extra);
        let before = TlsStat::read();
        let started = Instant::now();
        for i in 0..CONNS {
            let access = echo_once(&server, &pki, &TLS13, 4096, i);
            assert_eq!(access.get("path"), want_path, "{}", access.line);
            assert_eq!(access.get("reason"), "done", "{}", access.line);
        }
        let elapsed = started.elapsed();
        let (b, a) = (
            before.unwrap_or_default(),
            TlsStat::read().unwrap_or_default(),
        );
        let tx = a.get("TlsTxSw") - b.get("TlsTxSw");
        let rx = a.get("TlsRxSw") - b.get("TlsRxSw");
        let want = if want_path == "ktls" { CONNS } else { 0 };
        assert_eq!((tx, rx), (want, want), "kernel sessions under {policy}");
        println!(
            "[ktls] offload_policy_short_connections: {policy}: {CONNS} echo connections of 4 KiB \
             completed, kernel TX/RX sessions +{tx}/+{rx}, {:.2}s (TCG: not a timing)",
            elapsed.as_secs_f64()
        );
    }
}

/// A connection that ends below the threshold never reaches the kernel.
#[test]
fn below_offload_threshold_stays_userspace() {
    let Some(_run) = begin("below_offload_threshold_stays_userspace") else {
        return;
    };
    let (access, _) = userspace_transfer(256 * 1024, |pki, backend| {
        Server::start_with(
            pki,
            backend,
            "auto",
            &["--ktls-offload-after-bytes", "1MiB"],
        )
    });
    assert_eq!(
        access.get("ktls_offload"),
        "below_threshold",
        "{}",
        access.line
    );
    assert_eq!(access.get("ktls_fallback"), "-", "{}", access.line);
}

/// Under `--ktls-offload-after 200ms` a connection that idles past the
/// threshold moves to the kernel while idle; the echo that follows runs on
/// the kernel path, byte-exact.
#[test]
fn offload_after_time_moves_an_idle_then_busy_connection() {
    let Some(_run) = begin("offload_after_time_moves_an_idle_then_busy_connection") else {
        return;
    };
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo);
    let extra = ["--ktls-offload-after", "200ms"];
    let server = Server::start_with(&pki, backend.addr, "auto", &extra);
    let before = TlsStat::read();
    let len = 8 * MIB;
    let idle = Duration::from_millis(800);
    let access = echo_after(&server, &pki, &TLS13, (len, UP), idle);
    access.assert_ktls_done();
    assert_eq!(access.get("ktls_offload"), "time", "{}", access.line);
    assert_eq!(access.num("ktls_after_bytes"), 0, "{}", access.line);
    assert_eq!(access.num("bytes_up"), len, "{}", access.line);
    assert_offloaded_since(&before, 1);
}

/// The pause gives the session back intact even when the handover then
/// fails (injected at the ULP step): the connection resumes in userspace,
/// byte-exact.
#[test]
fn offload_pause_then_failed_handover_resumes_in_userspace() {
    let Some(_run) = begin("offload_pause_then_failed_handover_resumes_in_userspace") else {
        return;
    };
    let (access, _) = userspace_transfer(8 * MIB, |pki, backend| {
        Server::start_env(
            pki,
            backend,
            "auto",
            &["--ktls-offload-after-bytes", "1MiB"],
            &[("TLSPLICE_FAULT_KTLS_ULP", "1")],
        )
    });
    assert_eq!(access.get("ktls_offload"), "bytes", "{}", access.line);
    assert!(access.num("ktls_after_bytes") >= MIB, "{}", access.line);
    assert!(access.line.contains("injected fault"), "{}", access.line);
}

// ------------------------------------------------- TLS to the backend

/// TLS to a backend (`--backend-tls-*`) with both legs in the kernel, on
/// the same version and cipher: N MiB each way at once, byte-exact, through
/// a rustls TLS front (client certificate required) before the plain
/// backend. The client's end reaches the backend as close_notify, the
/// backend's end reaches the client as close_notify, and both sockets count
/// as kernel sessions (tls_stat TX and RX rise by two per connection). A
/// second connection resumes the backend session: on TLS 1.3 its ticket
/// came after the handshake (as a control record on the kernel path, or
/// still in rustls) and went to rustls.
fn backend_tls_both_legs(
    name: &'static str,
    version: &'static SupportedProtocolVersion,
    suite: CipherSuite,
) {
    let Some(_run) = begin(name) else { return };
    let n = bulk_mib() * MIB / 4;
    let pki = Pki::new();
    let backend = Backend::start(Mode::Concurrent {
        send: n,
        seed: DOWN,
    });
    let front = TlsFront::start(pki.backend_config(version, suite), backend.addr);
    let flags = pki.backend_tls_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start_with(&pki, front.addr, "auto", &flags);
    let mut kinds = Vec::new();
    for round in 0..2 {
        let before = TlsStat::read();
        let (_, access) = exact_both_ways(name, &pki, &server, &backend, n, version, suite);
        kinds.push(access.get("upstream").to_string());
        let report = front.report(REPORT_WAIT);
        assert_eq!(report.error, None, "round {round}: {report:?}");
        assert!(
            report.close_notify,
            "round {round}: the backend got no close_notify: {report:?}"
        );
        assert_eq!(report.resumed, round == 1, "round {round}: {report:?}");
        assert_offloaded_since(&before, 2);
    }
    assert_eq!(kinds, ["full", "resumed"]);
    println!(
        "[ktls] {name}: {} MiB each way twice, both legs in the kernel, resumed the second time",
        n / MIB
    );
}

#[test]
fn backend_tls13_aes128gcm_both_legs_in_the_kernel() {
    backend_tls_both_legs(
        "backend_tls13_aes128gcm_both_legs_in_the_kernel",
        &TLS13,
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    );
}

#[test]
fn backend_tls13_aes256gcm_both_legs_in_the_kernel() {
    backend_tls_both_legs(
        "backend_tls13_aes256gcm_both_legs_in_the_kernel",
        &TLS13,
        CipherSuite::TLS13_AES_256_GCM_SHA384,
    );
}

#[test]
fn backend_tls13_chacha20_both_legs_in_the_kernel() {
    backend_tls_both_legs(
        "backend_tls13_chacha20_both_legs_in_the_kernel",
        &TLS13,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    );
}

#[test]
fn backend_tls12_aes128gcm_both_legs_in_the_kernel() {
    backend_tls_both_legs(
        "backend_tls12_aes128gcm_both_legs_in_the_kernel",
        &TLS12,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    );
}

#[test]
fn backend_tls12_aes256gcm_both_legs_in_the_kernel() {
    backend_tls_both_legs(
        "backend_tls12_aes256gcm_both_legs_in_the_kernel",
        &TLS12,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    );
}

#[test]
fn backend_tls12_chacha20_both_legs_in_the_kernel() {
    backend_tls_both_legs(
        "backend_tls12_chacha20_both_legs_in_the_kernel",
        &TLS12,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    );
}
