//! Throttling tiers end to end: the real binary with a config file of
//! `[[tier]]` tables, rustls clients with their own certificates, an echo
//! backend. Assertions are on counts and bytes; the only time bound is the
//! lower one a byte rate implies, taken generously.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rustls::AlertDescription;

/// A config file with one listener in front of `backend`, an admin
/// listener, and `tiers` (TOML tables) after it; `top` holds top-level keys.
fn config(pki: &Pki, backend: &Backend, client_auth: &str, top: &str, tiers: &str) -> PathBuf {
    let text = format!(
        r#"workers = 2
admin = "127.0.0.1:0"
{top}
[[listener]]
listen = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
client_auth = "{client_auth}"
backends = ["{backend}"]
{tiers}
"#,
        cert = pki.server.cert_path.display(),
        key = pki.server.key_path.display(),
        ca = pki.ca_path.display(),
        backend = backend.addr,
    );
    write_file(pki.path(), "tlsplice.toml", text)
}

/// tlsplice with client certificates required and `tiers`.
fn serve_tiers(pki: &Pki, backend: &Backend, tiers: &str) -> Server {
    serve(&config(pki, backend, "required", "", tiers))
}

fn serve(path: &Path) -> Server {
    Server::spawn_args(
        &[
            "serve".into(),
            "--config".into(),
            path.display().to_string(),
        ],
        1,
    )
}

/// TLS 1.3 with a fresh client config per call: no session to resume, so
/// every connection's certificate goes through the verifier (and the tier).
fn client<'a>(pki: &'a Pki, id: &'a Identity) -> ClientOpts<'a> {
    ClientOpts::new(pki).tls13().identity(Some(id))
}

/// The access line of a connection refused by `tier`.
fn throttled_line(server: &Server, tier: &str) -> String {
    let tier = format!("tier={tier} ");
    server
        .log
        .wait_line(WAIT, &["access", "reason=throttled", &tier])
        .unwrap_or_else(|| panic!("no throttled access line with {tier}"))
}

/// The sample `name{labels} value` from /metrics, parsed by prometheus_client.
fn metric(admin: std::net::SocketAddr, sample: &str) -> Option<f64> {
    let (status, text) = http(admin, "GET", "/metrics");
    assert_eq!(status, 200);
    parse_with_prometheus_client(&text)
        .iter()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn rate_tier_admits_about_its_rate_and_other_identities_are_unaffected() {
    const RATE: f64 = 50.0;
    const BURST: f64 = 10.0;
    const WINDOW: Duration = Duration::from_secs(2);
    let pki = Pki::new();
    let backend = Backend::echo();
    let busy = pki.client_for("busy", "metered-busy");
    let calm = pki.client_for("calm", "metered-calm");
    let server = serve_tiers(
        &pki,
        &backend,
        r#"
[[tier]]
name = "metered"
clients = ["cn:metered-*"]
new_connections_per_second = 50
burst = 10
"#,
    );
    let admin = admin_addr(&server);

    // The busy identity tries from four threads as fast as it can; the calm
    // one, in the same tier, once every 100 ms (10/s, under its own rate).
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (admitted, refused, calm_outcomes) = thread::scope(|s| {
        let busy_threads: Vec<_> = (0..4)
            .map(|_| {
                let (stop, server, pki, busy) = (&stop, &server, &pki, &busy);
                s.spawn(move || {
                    let (mut ok, mut denied) = (0u32, 0u32);
                    // Bounded by the window and by count.
                    for _ in 0..2000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match admission(server, &client(pki, busy)) {
                            Ok(()) => ok += 1,
                            Err(rustls::Error::AlertReceived(AlertDescription::AccessDenied)) => {
                                denied += 1
                            }
                            Err(e) => panic!("busy client: unexpected {e:?}"),
                        }
                    }
                    (ok, denied)
                })
            })
            .collect();
        let calm_thread = s.spawn(|| {
            let mut outcomes = Vec::new();
            while start.elapsed() < WINDOW && outcomes.len() < 100 {
                outcomes.push(admission(&server, &client(&pki, &calm)));
                thread::sleep(Duration::from_millis(100));
            }
            outcomes
        });
        thread::sleep(WINDOW);
        stop.store(true, Ordering::Relaxed);
        let mut totals = (0, 0);
        for t in busy_threads {
            let (ok, denied) = t.join().unwrap();
            totals.0 += ok;
            totals.1 += denied;
        }
        (totals.0, totals.1, calm_thread.join().unwrap())
    });
    let elapsed = start.elapsed().as_secs_f64();
    let allowed = BURST + RATE * elapsed;
    eprintln!(
        "busy: {admitted} admitted, {refused} refused in {elapsed:.2} s (bucket allows {allowed:.0})"
    );

    // Never more than the bucket allows over the time the client saw.
    assert!(
        f64::from(admitted) <= allowed + 1.0,
        "{admitted} admitted, at most {allowed:.1} allowed"
    );
    // Offered well over the rate, it gets about the rate: the refusals
    // prove the limit bit, and the admissions that it did not bite early.
    assert!(
        f64::from(admitted + refused) >= 2.0 * allowed,
        "the client offered only {} connections: too few to test the limit",
        admitted + refused
    );
    assert!(refused > 0);
    assert!(
        f64::from(admitted) >= 0.6 * allowed,
        "{admitted} admitted, about {allowed:.0} expected"
    );

    // Another identity in the same tier: every connection admitted.
    assert!(calm_outcomes.len() >= 5, "{calm_outcomes:?}");
    assert!(
        calm_outcomes.iter().all(Result::is_ok),
        "calm identity refused: {calm_outcomes:?}"
    );

    // The refusal's log line names the tier and the limit.
    let line = server
        .log
        .wait_line(
            WAIT,
            &["access", "identity=cn:metered-busy", "reason=throttled"],
        )
        .expect("throttled access line");
    assert!(line.contains("tier=metered"), "{line}");
    assert!(
        line.contains("tier metered: over 50 new connections/s (burst 10)"),
        "{line}"
    );

    // /metrics counts exactly what the clients saw.
    let total = admitted + calm_outcomes.len() as u32;
    server
        .log
        .wait_for(WAIT, |lines| {
            let n = lines.iter().filter(|l| l.contains(" access ")).count();
            (n >= (total + refused) as usize).then_some(())
        })
        .expect("an access line per connection");
    assert_eq!(
        metric(
            admin,
            "tlsplice_throttle_refused_total{reason=\"rate\",tier=\"metered\"}"
        ),
        Some(f64::from(refused))
    );
    assert_eq!(
        metric(admin, "tlsplice_throttle_admitted_total{tier=\"metered\"}"),
        Some(f64::from(total))
    );
    assert_eq!(
        metric(
            admin,
            "tlsplice_connections_closed_total{reason=\"throttled\"}"
        ),
        Some(f64::from(refused))
    );
    assert_eq!(
        backend.accepted(),
        total as usize,
        "refused clients reached the backend"
    );
}

#[test]
fn max_connections_refuses_the_extra_one_until_one_closes() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let pooled = pki.client_for("pooled", "pool-a");
    let server = serve_tiers(
        &pki,
        &backend,
        r#"
[[tier]]
name = "pool"
clients = ["cn:pool-*"]
max_connections = 2

[[tier]]
name = "default"
"#,
    );

    let mut open: Vec<Tls> = (0..2)
        .map(|i| {
            let mut tls = tls_connect(server.addr(), client(&pki, &pooled).build()).unwrap();
            echo_round_trip(&mut tls, format!("held {i}\n").as_bytes());
            tls
        })
        .collect();
    assert_eq!(
        admission(&server, &client(&pki, &pooled)),
        Err(rustls::Error::AlertReceived(AlertDescription::AccessDenied))
    );
    let line = throttled_line(&server, "pool");
    assert!(line.contains("max_connections = 2"), "{line}");

    // OpenSSL over TLS 1.2, where the client certificate is judged before
    // the handshake ends, gets the same alert.
    require_tool("openssl");
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-tls1_2",
        "-servername",
        "localhost",
        "-connect",
    ])
    .arg(server.addr().to_string())
    .arg("-CAfile")
    .arg(&pki.ca_path)
    .arg("-cert")
    .arg(&pooled.cert_path)
    .arg("-key")
    .arg(&pooled.key_path)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let (status, _, err) = run_bounded(cmd, WAIT);
    assert!(!status.success(), "openssl was admitted: {err}");
    assert!(err.contains("access denied"), "{err}");

    // Another identity (the default tier, no limits) is not counted with it.
    assert_eq!(admission(&server, &client(&pki, &pki.client)), Ok(()));

    // One closes: once its access line is written its slot is free.
    let mut first = open.remove(0);
    close_notify(&mut first).unwrap();
    let _ = read_until_end(&mut first);
    server
        .log
        .wait_line(WAIT, &["access", "identity=cn:pool-a", "reason=done"])
        .expect("the closed connection's access line");
    assert_eq!(admission(&server, &client(&pki, &pooled)), Ok(()));
    // The one still open was never disturbed.
    echo_round_trip(&mut open[0], b"still here\n");
}

#[test]
fn clients_without_certificate_are_limited_by_address_in_the_default_tier() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let path = config(
        &pki,
        &backend,
        "optional",
        r#"default_tier = "anonymous""#,
        r#"
[[tier]]
name = "anonymous"
max_connections = 1
"#,
    );
    let server = serve(&path);
    let anonymous = ClientOpts::new(&pki).tls13().identity(None);

    let mut held = tls_connect(server.addr(), anonymous.build()).unwrap();
    echo_round_trip(&mut held, b"first\n");
    // Decided after the handshake (no certificate to verify): the refusal
    // is a close_notify, and the log says why.
    let mut second = tls_connect(server.addr(), anonymous.build()).unwrap();
    let (data, end) = read_until_end(&mut second);
    assert!(data.is_empty());
    assert!(end.is_ok(), "expected a clean close_notify, got {end:?}");
    let line = throttled_line(&server, "anonymous");
    assert!(line.contains("identity=-"), "{line}");
    // A client with a certificate is in the same default tier but counted
    // under its identity, not its address.
    assert_eq!(admission(&server, &client(&pki, &pki.client)), Ok(()));
    echo_round_trip(&mut held, b"still open\n");
}

#[test]
fn bytes_per_second_delays_but_delivers_every_byte() {
    const RATE: u64 = 64 * 1024;
    const TOTAL: u64 = 256 * 1024;
    let pki = Pki::new();
    let backend = Backend::echo();
    let slow = pki.client_for("slow", "slow-client");
    let server = serve_tiers(
        &pki,
        &backend,
        &format!(
            r#"
[[tier]]
name = "slow"
clients = ["cn:slow-*"]
bytes_per_second = {RATE}
"#
        ),
    );
    let admin = admin_addr(&server);

    let block = pattern(7);
    let start = Instant::now();
    let tls = tls_connect(server.addr(), client(&pki, &slow).build()).unwrap();
    let (mut rd, mut wr) = split(tls);
    let (sent_sha, (received, received_sha)) = thread::scope(|s| {
        let writer = s.spawn(|| {
            let sha = write_pattern(&mut wr, &block, TOTAL).unwrap();
            wr.close_notify().unwrap();
            sha
        });
        let got = read_to_end_hashed(&mut rd).unwrap();
        (writer.join().unwrap(), got)
    });
    let elapsed = start.elapsed();
    assert_eq!(received, TOTAL);
    assert_eq!(
        hex(&received_sha),
        hex(&sent_sha),
        "bytes changed on the way"
    );
    assert_eq!(hex(&sent_sha), hex(&pattern_sha(&block, TOTAL)));
    // One second of burst, then RATE a second: at least (TOTAL - RATE) / RATE
    // seconds each way (the directions overlap); allow a quarter off.
    let floor = Duration::from_secs_f64((TOTAL - RATE) as f64 / RATE as f64 * 0.75);
    assert!(
        elapsed >= floor,
        "{TOTAL} bytes at {RATE} B/s took only {elapsed:?}"
    );
    let line = server
        .log
        .wait_line(WAIT, &["access", "identity=cn:slow-client"])
        .expect("access line");
    assert!(line.contains("tier=slow"), "{line}");
    assert!(line.contains(&format!("bytes_up={TOTAL}")), "{line}");
    assert!(line.contains(&format!("bytes_down={TOTAL}")), "{line}");
    let paced = metric(admin, "tlsplice_throttle_paced_bytes_total{}").unwrap();
    assert!(paced > 0.0, "no bytes were paced");
}

#[test]
fn reloaded_limits_apply_and_open_connections_still_count() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let tiers = |max: u32| {
        format!("\n[[tier]]\nname = \"pool\"\nclients = [\"cn:test-*\"]\nmax_connections = {max}\n")
    };
    let path = config(&pki, &backend, "required", "", &tiers(1));
    let server = serve(&path);
    let opts = client(&pki, &pki.client);
    let mut held = tls_connect(server.addr(), opts.build()).unwrap();
    echo_round_trip(&mut held, b"held\n");
    assert_eq!(
        admission(&server, &opts),
        Err(rustls::Error::AlertReceived(AlertDescription::AccessDenied))
    );

    // Same tier name, higher limit: the held connection still counts, so
    // exactly one more fits.
    config(&pki, &backend, "required", "", &tiers(2));
    server.signal(libc::SIGHUP);
    server
        .log
        .wait_line(WAIT, &["reloaded"])
        .expect("reload logged");
    let mut second = tls_connect(server.addr(), opts.build()).unwrap();
    echo_round_trip(&mut second, b"second\n");
    assert_eq!(
        admission(&server, &opts),
        Err(rustls::Error::AlertReceived(AlertDescription::AccessDenied))
    );
    echo_round_trip(&mut held, b"held still\n");
}

/// A resumed session presents no certificate to verify, so it is decided
/// after the handshake, under the same identity: resuming is no way around
/// the tier.
#[test]
fn resumed_sessions_count_against_the_same_identity() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = serve_tiers(
        &pki,
        &backend,
        "\n[[tier]]\nname = \"single\"\nclients = [\"cn:test-*\"]\nmax_connections = 1\n",
    );
    // One client config throughout: its session store keeps the tickets.
    let cfg = client(&pki, &pki.client).build();
    let mut held = tls_connect(server.addr(), cfg.clone()).unwrap();
    echo_round_trip(&mut held, b"first\n");
    assert_eq!(
        held.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );

    let mut resumed = tls_connect(server.addr(), cfg).unwrap();
    assert_eq!(
        resumed.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the second connection should resume with the ticket from the first"
    );
    let (data, end) = read_until_end(&mut resumed);
    assert!(data.is_empty());
    assert!(end.is_ok(), "expected a clean close_notify, got {end:?}");
    let line = throttled_line(&server, "single");
    assert!(line.contains("identity=cn:test-client"), "{line}");
    assert!(line.contains("max_connections = 1"), "{line}");
    echo_round_trip(&mut held, b"still open\n");
}
