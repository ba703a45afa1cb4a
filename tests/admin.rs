//! The admin listener: /metrics parses with Prometheus' own parser and its
//! counters match what the test did; /healthz; POST /reload reports the
//! outcome; /ready turns 503 while draining.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

#[test]
fn metrics_health_ready_and_reload() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.flag("--admin", "127.0.0.1:0")
        .flag("--drain-timeout", "5s");
    let mut server = args.spawn();
    let admin = admin_addr(&server);

    assert_eq!(http(admin, "GET", "/healthz").0, 200);
    assert_eq!(http(admin, "GET", "/ready").0, 200);

    // Two admitted connections, one refused (no client certificate).
    for i in 0..2 {
        let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).unwrap();
        echo_round_trip(&mut tls, format!("metrics {i}\n").as_bytes());
        close_notify(&mut tls).unwrap();
        let _ = read_until_end(&mut tls);
    }
    let refused = ClientOpts::new(&pki).identity(None);
    if let Ok(mut tls) = tls_connect(server.addr(), refused.build()) {
        let _ = tls.write_all(b"x");
        let _ = tls.read(&mut [0u8; 8]);
    }
    server
        .log
        .wait_for(WAIT, |lines| {
            (lines.iter().filter(|l| l.contains("access")).count() >= 3).then_some(())
        })
        .expect("three access lines");

    let (status, text) = http(admin, "GET", "/metrics");
    assert_eq!(status, 200);
    let samples = parse_with_prometheus_client(&text);
    for want in [
        "tlsplice_connections_closed_total{reason=\"done\"} 2",
        "tlsplice_connections_closed_total{reason=\"handshake_failed\"} 1",
        "tlsplice_connections_relayed_total{path=\"userspace\"} 2",
        "tlsplice_connections_open{} 0",
        "tlsplice_handshake_seconds_count{} 2",
        "tlsplice_bytes_total{direction=\"up\"} 20",
        // The same client twice: verified once, then served from the cache.
        "tlsplice_verify_cache_misses_total{} 1",
        "tlsplice_verify_cache_hits_total{} 1",
        "tlsplice_draining{} 0",
    ] {
        assert!(
            samples.iter().any(|s| s == want),
            "missing {want:?} in\n{}",
            samples.join("\n")
        );
    }

    // Reload over HTTP reports the outcome.
    assert_eq!(http(admin, "POST", "/reload"), (200, "reloaded\n".into()));
    assert_eq!(http(admin, "GET", "/reload").0, 405);
    std::fs::write(&pki.ca_path, "not a certificate\n").unwrap();
    let (status, body) = http(admin, "POST", "/reload");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("ca.crt"), "{body}");
    let samples = parse_with_prometheus_client(&http(admin, "GET", "/metrics").1);
    assert!(
        samples
            .iter()
            .any(|s| s == "tlsplice_reloads_total{result=\"applied\"} 1"),
        "{samples:#?}"
    );
    // The file watcher may count the broken CA file a second time.
    assert!(
        samples.iter().any(|s| s
            .strip_prefix("tlsplice_reloads_total{result=\"failed\"} ")
            .is_some_and(|n| n != "0")),
        "{samples:#?}"
    );

    // Drain: /ready turns 503 while an open connection keeps the process up.
    let mut open = tls_connect(server.addr(), ClientOpts::new(&pki).build()).unwrap();
    echo_round_trip(&mut open, b"hold\n");
    server.signal(libc::SIGTERM);
    let not_ready = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        http(admin, "GET", "/ready").0 == 503
    });
    assert!(not_ready, "/ready never turned 503 during the drain");
    drop(open);
    assert!(server
        .wait_exit(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
}
