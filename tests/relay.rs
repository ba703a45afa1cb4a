//! The relay: bulk data both ways, half-close in each direction, backend
//! failures, handshake timeout, garbage, idle timeout, access log.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Held by the bulk test and by the idle-memory test, so that the one's
/// load does not skew the other's resident-memory measurement.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// 64 MiB up and 64 MiB down at the same time, different streams each way,
/// byte-exact by sha256; both ends see a clean end.
#[test]
fn bulk_64mib_each_way_at_once() {
    const SIZE: u64 = 64 << 20;
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let pki = Pki::new();
    let backend = Backend::start(Mode::SinkAndSource {
        send: SIZE,
        seed: 2,
    });
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    let started = Instant::now();
    bulk_each_way(tls, &backend, (SIZE, 1, 2), ClientClose::AfterUpload);
    let elapsed = started.elapsed();
    eprintln!("128 MiB relayed in {elapsed:?}");
}

/// Client close_notify -> backend sees EOF; the backend's reply still
/// reaches the client, followed by a clean close.
#[test]
fn client_close_notify_half_closes_backend() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::ReadToEofThenReply);
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    let data = pattern(3);
    let sha = write_pattern(&mut tls, &data, 300_000).unwrap();
    close_notify(&mut tls).unwrap();
    let (reply, end) = read_until_end(&mut tls);
    end.expect("after the backend's reply the client must get close_notify");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        format!("300000 {}\n", hex(&sha))
    );
    let report = backend.next_report(WAIT);
    assert!(report.saw_eof);
}

/// Client TCP FIN (no close_notify) -> backend sees EOF, reply still flows.
#[test]
fn client_fin_half_closes_backend() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::ReadToEofThenReply);
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    tls.write_all(b"0123456789").unwrap();
    tls.flush().unwrap();
    tls.sock.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    // Read the reply line; how the stream ends after it is not checked here
    // (no close_notify was sent by us).
    while !reply.ends_with(b"\n") {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the reply after our FIN: {e}"),
        }
    }
    let sha: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(b"0123456789").into()
    };
    assert_eq!(
        String::from_utf8_lossy(&reply),
        format!("10 {}\n", hex(&sha))
    );
}

/// Backend EOF -> client gets close_notify (clean `Ok(0)`), and the
/// client -> backend direction keeps working afterwards.
#[test]
fn backend_eof_half_closes_client() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::GreetThenHalfClose(b"hello, then EOF\n".to_vec()));
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let mut tls =
        tls_connect(server.addr(), ClientOpts::new(&pki).tls13().build()).expect("handshake");
    let (greeting, end) = read_until_end(&mut tls);
    end.expect("backend EOF must reach the client as close_notify (clean EOF)");
    assert_eq!(greeting, b"hello, then EOF\n");
    // Now upload after the server's close_notify.
    let data = pattern(4);
    let sha = write_pattern(&mut tls, &data, 200_000).expect("client->backend after EOF");
    close_notify(&mut tls).unwrap();
    let report = backend.next_report(WAIT);
    assert_eq!(report.error, None);
    assert_eq!(report.received, 200_000);
    assert!(report.sha256 == sha, "upload after half-close corrupted");
    assert!(report.saw_eof);
}

/// No backend listening: the client's connection is closed promptly.
#[test]
fn backend_unreachable_closes_client_promptly() {
    let pki = Pki::new();
    let dead = unused_port();
    let server = ServeArgs::new(&pki, dead)
        .flag("--connect-timeout", "2s")
        .spawn();
    let started = Instant::now();
    let mut tls = match tls_connect(server.addr(), ClientOpts::new(&pki).build()) {
        Ok(t) => t,
        Err(e) => {
            // Closed during the handshake: fine if prompt.
            assert!(!is_timeout(&e), "handshake hung: {e}");
            assert!(started.elapsed() < Duration::from_secs(3));
            return;
        }
    };
    let _ = tls.write_all(b"anyone there?\n");
    let _ = tls.flush();
    let (data, end) = read_until_end(&mut tls);
    let elapsed = started.elapsed();
    assert!(data.is_empty(), "got data from nowhere: {data:?}");
    assert!(
        elapsed < Duration::from_secs(3),
        "client not closed within connect timeout + 1s: {elapsed:?}"
    );
    if let Err(e) = &end {
        assert!(
            !is_timeout(e),
            "client read timed out instead of seeing a close"
        );
    }
    // The server is still up and logs the failure against the backend.
    assert!(
        server
            .log
            .wait_line(WAIT, &[&dead.port().to_string()])
            .is_some(),
        "no log line names the unreachable backend {dead}"
    );
}

/// A backend that black-holes the connect (a listener whose backlog is
/// full) is abandoned after the connect timeout.
#[test]
fn backend_connect_timeout() {
    use socket2::{Domain, Socket, Type};
    let pki = Pki::new();
    // A listener with backlog 0 that never accepts: after it fills, SYNs
    // are dropped and connects hang.
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let f = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        f.set_nonblocking(true).unwrap();
        let _ = f.connect(&addr.into());
        fillers.push(f);
    }
    let server = ServeArgs::new(&pki, addr)
        .flag("--connect-timeout", "1s")
        .spawn();
    let started = Instant::now();
    let mut tls = match tls_connect(server.addr(), ClientOpts::new(&pki).build()) {
        Ok(t) => t,
        Err(e) => panic!("handshake: {e}"),
    };
    let _ = tls.write_all(b"hello?\n");
    let _ = tls.flush();
    let (data, end) = read_until_end(&mut tls);
    let elapsed = started.elapsed();
    assert!(data.is_empty());
    if let Err(e) = &end {
        assert!(!is_timeout(e), "client never closed: {e}");
    }
    assert!(
        elapsed < Duration::from_secs(4),
        "closed only after {elapsed:?} with --connect-timeout 1s"
    );
    assert!(
        server
            .log
            .wait_line(WAIT, &[&addr.port().to_string()])
            .is_some(),
        "no log line names the black-holed backend {addr}"
    );
    drop(s);
}

/// The backend closes mid-stream: the client sees the close (no hang).
#[test]
fn backend_closes_mid_stream() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::CloseAfter(1000));
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    let data = pattern(5);
    echo_round_trip(&mut tls, &data[..1000]);
    let started = Instant::now();
    // Keep writing; the backend is gone.
    let _ = tls.write_all(&data[1000..5000]);
    let _ = tls.flush();
    let (rest, end) = read_until_end(&mut tls);
    assert!(rest.is_empty(), "data after the backend closed");
    if let Err(e) = &end {
        assert!(!is_timeout(e), "client connection not closed: {e}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Half a ClientHello, then silence: dropped after the handshake timeout,
/// not before.
#[test]
fn stalled_client_hello_dropped_after_handshake_timeout() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr)
        .flag("--handshake-timeout", "1s")
        .spawn();
    let hello = client_hello_bytes(&pki);
    let mut sock = tcp_connect(server.addr());
    sock.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    sock.write_all(&hello[..hello.len() / 2]).unwrap();
    let started = Instant::now();
    let (data, end) = read_until_end(&mut sock);
    let elapsed = started.elapsed();
    if let Err(e) = &end {
        assert!(
            !is_timeout(e),
            "server did not close a stalled handshake within 6s"
        );
    }
    assert!(
        data.is_empty() || data[0] == 0x15,
        "expected nothing or an alert, got {data:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(700),
        "closed after {elapsed:?}, before the 1s handshake timeout"
    );
    assert!(
        elapsed <= Duration::from_secs(3),
        "closed after {elapsed:?} with --handshake-timeout 1s"
    );
    assert_eq!(backend.accepted(), 0);
}

/// A client that connects and sends nothing is also dropped.
#[test]
fn silent_client_dropped_after_handshake_timeout() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr)
        .flag("--handshake-timeout", "1s")
        .spawn();
    let mut sock = tcp_connect(server.addr());
    sock.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let started = Instant::now();
    let (_data, end) = read_until_end(&mut sock);
    if let Err(e) = &end {
        assert!(!is_timeout(e), "silent client kept open past 6s");
    }
    assert!(started.elapsed() <= Duration::from_secs(3));
    assert!(started.elapsed() >= Duration::from_millis(700));
}

/// Garbage instead of a ClientHello: closed at once (optionally with an
/// alert; plain HTTP may get an `HTTP/1.1 400` answer), nothing reaches the
/// backend, and the server keeps serving.
#[test]
fn garbage_instead_of_client_hello() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr)
        .flag("--handshake-timeout", "10s")
        .spawn();
    for (garbage, http) in [
        (&b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..], true),
        (
            &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            false,
        ),
        (&[0u8; 4096][..], false),
    ] {
        let mut sock = tcp_connect(server.addr());
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        sock.write_all(garbage).unwrap();
        let (data, end) = read_until_end(&mut sock);
        if let Err(e) = &end {
            assert!(
                !is_timeout(e),
                "garbage {:?}: connection not closed within 5s",
                &garbage[..8]
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "garbage {:?}: closed only after {:?}",
            &garbage[..8],
            started.elapsed()
        );
        let http_400 =
            data.starts_with(b"HTTP/1.") && contains(&data[..data.len().min(16)], b" 400");
        assert!(
            data.is_empty() || data[0] == 0x15 || (http && http_400),
            "garbage {:?}: expected nothing or an alert record{}, got {:?}",
            &garbage[..8],
            if http { " or an HTTP 400" } else { "" },
            String::from_utf8_lossy(&data)
        );
    }
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    echo_round_trip(&mut tls, b"still serving\n");
    assert_eq!(backend.accepted(), 1);
}

/// A connection with no traffic either way is closed after the idle timeout.
#[test]
fn idle_connection_closed_after_idle_timeout() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr)
        .flag("--idle-timeout", "1s")
        .spawn();
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    echo_round_trip(&mut tls, b"then silence\n");
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    let started = Instant::now();
    let (data, end) = read_until_end(&mut tls);
    assert!(data.is_empty());
    if let Err(e) = &end {
        assert!(!is_timeout(e), "idle connection kept open past 6s");
    }
    assert!(
        started.elapsed() <= Duration::from_secs(4),
        "idle connection closed only after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= Duration::from_millis(700));
}

/// TLS 1.3 KeyUpdate from the client mid-stream (requesting one back): the
/// relay keeps working byte-exact across several key changes.
#[test]
fn tls13_key_update_mid_stream() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let mut tls =
        tls_connect(server.addr(), ClientOpts::new(&pki).tls13().build()).expect("handshake");
    let data = pattern(6);
    for (i, chunk) in data[..400_000].chunks(100_000).enumerate() {
        echo_round_trip(&mut tls, chunk);
        tls.conn
            .refresh_traffic_keys()
            .unwrap_or_else(|e| panic!("key update {i}: {e}"));
    }
    echo_round_trip(&mut tls, b"after four key updates\n");
    close_notify(&mut tls).unwrap();
    let (rest, end) = read_until_end(&mut tls);
    assert!(rest.is_empty());
    end.expect("clean close after key updates");
}

/// `--max-connections 1` with one worker: a second concurrent client is
/// turned away; once the first is gone, a new one is admitted.
#[test]
fn max_connections_per_worker() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr)
        .set("--workers", "1")
        .flag("--max-connections", "1")
        .spawn();
    let cfg = ClientOpts::new(&pki).build();
    let mut first = tls_connect(server.addr(), cfg.clone()).expect("handshake");
    echo_round_trip(&mut first, b"first\n");
    let first_addr = first.sock.local_addr().unwrap().to_string();

    let second =
        tls_connect(server.addr(), cfg.clone()).and_then(|mut t| try_echo(&mut t, b"second\n"));
    let e = second.expect_err("a second connection was served despite --max-connections 1");
    assert!(
        !is_timeout(&e),
        "the second connection hung instead of being closed"
    );

    close_notify(&mut first).unwrap();
    let (_rest, end) = read_until_end(&mut first);
    end.unwrap();
    drop(first);
    server
        .log
        .wait_line(WAIT, &["access", &first_addr])
        .expect("no access line for the first connection");
    // The slot frees when the first connection's task ends, around its
    // access line; allow a few tries.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let third =
            tls_connect(server.addr(), cfg.clone()).and_then(|mut t| try_echo(&mut t, b"third\n"));
        if third.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection admitted after the first closed"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(backend.accepted(), 2);
}

/// One access-log line per connection, naming the client's address.
#[test]
fn access_log_line_per_connection() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    let client_addr = tls.sock.local_addr().unwrap();
    echo_round_trip(&mut tls, &[b'x'; 1234]);
    close_notify(&mut tls).unwrap();
    let (_rest, end) = read_until_end(&mut tls);
    end.unwrap();
    drop(tls);
    let needle = client_addr.to_string();
    let line = server
        .log
        .wait_line(WAIT, &["access", &needle])
        .unwrap_or_else(|| panic!("no access line with {needle}:\n{}", server.log.text()));
    assert!(
        line.contains("CN=test-client"),
        "access line lacks the client certificate subject: {line}"
    );
    assert!(
        line.contains("localhost"),
        "access line lacks the SNI: {line}"
    );
    let f = fields(&line);
    if let Some(up) = f.get("bytes_up") {
        assert_eq!(up, "1234", "{line}");
    }
    if let Some(down) = f.get("bytes_down") {
        assert_eq!(down, "1234", "{line}");
    }
    if let Some(b) = f.get("backend") {
        assert!(b.contains(&backend.addr.port().to_string()), "{line}");
    }
    // Exactly one line for this connection.
    let count = server
        .log
        .lines()
        .iter()
        .filter(|l| l.contains("access") && l.contains(&needle))
        .count();
    assert_eq!(count, 1, "{}", server.log.text());
}

/// A client whose last handshake flight, a request and close_notify leave in
/// one segment: the handshake completes, the request reaches the backend,
/// the backend sees EOF, and the reply still comes back.
#[test]
fn finished_request_and_close_notify_in_one_segment() {
    use rustls::pki_types::ServerName;
    use rustls::ClientConnection;

    let pki = Pki::new();
    let backend = Backend::start(Mode::ReadToEofThenReply);
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let mut sock = tcp_connect(server.addr());
    let cfg = ClientOpts::new(&pki).tls13().build();
    let mut conn = ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();

    // Run the handshake until the client has queued its last flight, but
    // do not send it yet.
    let deadline = Instant::now() + WAIT;
    while conn.is_handshaking() {
        assert!(Instant::now() < deadline, "handshake timed out");
        while conn.wants_write() {
            conn.write_tls(&mut sock).unwrap();
        }
        if conn.read_tls(&mut sock).unwrap() == 0 {
            panic!("server closed during the handshake");
        }
        conn.process_new_packets().unwrap();
    }
    let request = b"hello in the same segment as Finished";
    conn.writer().write_all(request).unwrap();
    conn.send_close_notify();
    let mut segment = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut segment).unwrap();
    }
    sock.write_all(&segment).unwrap();

    let mut reply = Vec::new();
    loop {
        assert!(Instant::now() < deadline + WAIT, "no reply");
        match conn.read_tls(&mut sock) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("read: {e}\n{}", server.log.text()),
        }
        let state = conn.process_new_packets().unwrap();
        let n = state.plaintext_bytes_to_read();
        if n > 0 {
            let mut buf = vec![0u8; n];
            conn.reader().read_exact(&mut buf).unwrap();
            reply.extend_from_slice(&buf);
        }
        if state.peer_has_closed() {
            break;
        }
    }
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(request)
    };
    assert_eq!(
        String::from_utf8_lossy(&reply),
        format!("{} {}\n", request.len(), hex(&sha)),
        "{}",
        server.log.text()
    );
    assert!(backend.next_report(WAIT).saw_eof);
}

/// Connections that moved data and then wait hold no pooled buffers: the
/// server's resident memory grows by far less per idle connection than the
/// buffers a busy one uses (it was ~165 KiB per connection here when every
/// connection kept its buffers for its whole life; ~28 KiB now on a quiet
/// machine, up to ~90 KiB measured on a saturated one, hence the bound).
#[test]
fn idle_connections_give_their_buffers_back() {
    const CONNS: usize = 300;
    const BOUND_KIB: u64 = 120;
    let _quiet = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr)
        .set("--workers", "1")
        .spawn();
    let cfg = ClientOpts::new(&pki).build();
    // Both directions stream more than a small read holds, so each
    // connection takes pooled buffers before it goes quiet.
    let msg = pattern(9)[..40 * 1024].to_vec();
    let mut warm = tls_connect(server.addr(), cfg.clone()).expect("handshake");
    echo_round_trip(&mut warm, &msg);
    let before = rss_kib(server.pid());
    let mut held = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let mut tls = tls_connect(server.addr(), cfg.clone()).expect("handshake");
        echo_round_trip(&mut tls, &msg);
        held.push(tls);
    }
    let after = rss_kib(server.pid());
    let per_conn = after.saturating_sub(before) / CONNS as u64;
    eprintln!("RSS {before} KiB -> {after} KiB with {CONNS} idle connections: {per_conn} KiB each");
    assert!(
        per_conn < BOUND_KIB,
        "{per_conn} KiB resident per idle connection (bound {BOUND_KIB})"
    );
    // They are idle, not broken.
    for tls in held.iter_mut().step_by(50) {
        echo_round_trip(tls, b"still there\n");
    }
}
