//! Graceful shutdown: on SIGTERM/SIGINT stop accepting, let open connections
//! finish up to the drain timeout, then close them with close_notify; exit 0.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Waits (bounded) until new connections to `addr` are refused: either the
/// TCP connect fails, or the TLS handshake does not complete.
fn wait_until_refusing(addr: SocketAddr, pki: &Pki, within: Duration) -> Duration {
    let started = Instant::now();
    let cfg = ClientOpts::new(pki).build();
    loop {
        // A TLS 1.3 client finishes before the server could refuse, so
        // also try one round trip.
        let refused = match tls_connect_timeout(addr, cfg.clone(), Duration::from_secs(1)) {
            Err(_) => true,
            Ok(mut tls) => {
                tls.sock
                    .set_read_timeout(Some(Duration::from_secs(1)))
                    .unwrap();
                let mut buf = [0u8; 6];
                let ok = tls.write_all(b"probe\n").is_ok()
                    && tls.flush().is_ok()
                    && tls.read_exact(&mut buf).is_ok();
                !ok
            }
        };
        if refused {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "still accepting new connections {within:?} after the signal"
        );
        thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn sigterm_drains_open_connection_then_close_notify() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let mut server = ServeArgs::new(&pki, backend.addr)
        .flag("--drain-timeout", "3s")
        .spawn();
    let addr = server.addr();
    let mut tls = tls_connect(addr, ClientOpts::new(&pki).build()).expect("handshake");
    echo_round_trip(&mut tls, b"before the signal\n");

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    wait_until_refusing(addr, &pki, Duration::from_secs(2));

    // The open connection still works while draining.
    echo_round_trip(&mut tls, b"during the drain\n");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "test too slow to observe the drain"
    );

    // At the drain deadline the server closes it with close_notify.
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let (rest, end) = read_until_end(&mut tls);
    let closed_after = signalled.elapsed();
    assert!(rest.is_empty());
    end.unwrap_or_else(|e| {
        panic!("drained connection not ended with close_notify: {e} (after {closed_after:?})")
    });
    assert!(
        closed_after >= Duration::from_millis(2500),
        "closed after {closed_after:?}, before the 3s drain timeout"
    );
    assert!(
        closed_after <= Duration::from_secs(6),
        "closed only after {closed_after:?} with a 3s drain timeout"
    );
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("tlsplice did not exit after the drain");
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

#[test]
fn sigterm_without_connections_exits_promptly() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let mut server = ServeArgs::new(&pki, backend.addr)
        .flag("--drain-timeout", "10s")
        .spawn();
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("an idle tlsplice did not exit within 5s of SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// SIGINT behaves like SIGTERM, and the process exits as soon as the last
/// connection finishes, not at the drain deadline.
#[test]
fn sigint_exits_when_last_connection_finishes() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let mut server = ServeArgs::new(&pki, backend.addr)
        .flag("--drain-timeout", "20s")
        .spawn();
    let addr = server.addr();
    let mut tls = tls_connect(addr, ClientOpts::new(&pki).build()).expect("handshake");
    echo_round_trip(&mut tls, b"before\n");
    let signalled = Instant::now();
    server.signal(libc::SIGINT);
    wait_until_refusing(addr, &pki, Duration::from_secs(3));
    echo_round_trip(&mut tls, b"after SIGINT\n");
    close_notify(&mut tls).unwrap();
    let (rest, end) = read_until_end(&mut tls);
    assert!(rest.is_empty());
    end.expect("clean close after our close_notify");
    drop(tls);
    let status = server
        .wait_exit(Duration::from_secs(8))
        .expect("tlsplice kept running after its last connection closed");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "exit took {:?}",
        signalled.elapsed()
    );
    let report = backend.next_report(WAIT);
    assert!(report.saw_eof);
}
