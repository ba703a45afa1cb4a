//! Fault injection against the real binary on loopback: backends that die
//! or stall, clients that reset in every phase, slow and idle floods,
//! descriptor exhaustion, and reload storms under load. Each test checks
//! that the connections it breaks end (no hang) with a logged reason, that
//! unaffected connections lose no byte, and that descriptors come back.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Closes `sock` with a RST instead of a FIN (SO_LINGER 0).
fn reset(sock: TcpStream) {
    socket2::SockRef::from(&sock)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(sock);
}

/// The access line of the connection from local port `port`.
fn access_line(server: &Server, port: u16) -> String {
    let client = format!("client=127.0.0.1:{port} ");
    server
        .log
        .wait_line(WAIT, &["access", &client])
        .unwrap_or_else(|| panic!("no access line for {client}:\n{}", server.log.text()))
}

/// Lines of the log containing `needle`.
fn count_lines(server: &Server, needle: &str) -> usize {
    server
        .log
        .lines()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn backend_killed_mid_transfer_ends_the_client_cleanly() {
    let pki = Pki::new();
    let limit = 100 * 1024;
    let backend = Backend::start(Mode::CloseAfter(limit));
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let cfg = ClientOpts::new(&pki).build();

    // The backend goes away after echoing all it was sent (FIN): the
    // client gets every byte, then close_notify.
    let mut tls = tls_connect(server.addr(), cfg.clone()).unwrap();
    let port = tls.sock.local_addr().unwrap().port();
    write_pattern(&mut tls, &pattern(7), limit as u64).unwrap();
    let (count, sha) = read_to_end_hashed(&mut tls).expect("clean close_notify end");
    assert_eq!(count, limit as u64);
    assert_eq!(sha, pattern_sha(&pattern(7), limit as u64), "echoed bytes");
    // Half-closed: the client may still send; the connection ends when it
    // closes too.
    drop(tls);
    let line = access_line(&server, port);
    assert!(line.contains("reason=done"), "{line}");

    // The backend dies with the client's bytes still unread (the kernel
    // answers with RST): the client's stream ends, without close_notify
    // so it reads as truncated, and what it got is a prefix of its echo.
    let tls = tls_connect(server.addr(), cfg).unwrap();
    let port = tls.sock.local_addr().unwrap().port();
    let (mut rd, mut wr) = split(tls);
    let block = pattern(8);
    let writer = thread::spawn(move || {
        // Writing fails once the connection is gone.
        let _ = write_pattern(&mut wr, &pattern(8), 64 * 1024 * 1024);
    });
    let (got, end) = read_until_end(&mut rd);
    writer.join().unwrap();
    assert!(
        got.len() <= limit && got[..] == block[..got.len()],
        "received {} bytes that are not a prefix of the echo",
        got.len()
    );
    let e = end.expect_err("a dead backend must not look like a clean end");
    assert!(!is_timeout(&e), "the client was left hanging: {e}");
    let line = access_line(&server, port);
    assert!(line.contains("reason=backend_error"), "{line}");
}

#[test]
fn backend_that_never_reads_is_cut_by_the_idle_timeout() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and holds the socket without ever reading it.
    let holder = thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        thread::sleep(Duration::from_secs(15));
        drop(sock);
    });
    let mut args = ServeArgs::new(&pki, addr);
    args.flag("--idle-timeout", "2s");
    let server = args.spawn();
    let tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).unwrap();
    let port = tls.sock.local_addr().unwrap().port();
    let (mut rd, mut wr) = split(tls);
    let writer = thread::spawn(move || {
        // Far more than socket buffers hold: the stream must stall.
        write_pattern(&mut wr, &pattern(1), 256 * 1024 * 1024).map(|_| ())
    });
    let (_, end) = read_until_end(&mut rd);
    assert!(
        !end.as_ref().is_err_and(is_timeout),
        "the stalled connection was not ended: {end:?}"
    );
    assert!(
        writer.join().unwrap().is_err(),
        "256 MiB went into a backend that never reads"
    );
    let line = access_line(&server, port);
    assert!(line.contains("reason=idle_timeout"), "{line}");
    drop(holder);
}

#[test]
fn client_reset_in_each_phase_frees_everything() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let pid = server.pid();
    let cfg = ClientOpts::new(&pki).build();
    let mut warm = tls_connect(server.addr(), cfg.clone()).unwrap();
    echo_round_trip(&mut warm, b"warm-up");
    drop(warm);
    let _ = backend.next_report(WAIT);
    let fds = settled_fds(pid);

    // During the handshake: half a ClientHello, then RST.
    let hello = client_hello_bytes(&pki);
    let mut sock = tcp_connect(server.addr());
    let port = sock.local_addr().unwrap().port();
    sock.write_all(&hello[..hello.len() / 2]).unwrap();
    thread::sleep(Duration::from_millis(100));
    reset(sock);
    let line = access_line(&server, port);
    assert!(line.contains("reason=client_gone_in_handshake"), "{line}");

    // After the handshake, before any data: once tlsplice has finished its
    // side (it connects to the backend only then).
    let accepted = backend.accepted();
    let tls = tls_connect(server.addr(), cfg.clone()).unwrap();
    let port = tls.sock.local_addr().unwrap().port();
    let deadline = Instant::now() + WAIT;
    while backend.accepted() == accepted && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(backend.accepted() > accepted, "no backend connection");
    reset(tls.sock);
    let report = backend.next_report(WAIT);
    assert_eq!(report.received, 0);
    let line = access_line(&server, port);
    assert!(line.contains("reason=client_error"), "{line}");

    // Mid-transfer: 1 MiB up, part of its echo read, then RST.
    let mut tls = tls_connect(server.addr(), cfg.clone()).unwrap();
    let port = tls.sock.local_addr().unwrap().port();
    write_pattern(&mut tls, &pattern(3), 1 << 20).unwrap();
    let mut some = vec![0u8; 4096];
    tls.read_exact(&mut some).unwrap();
    reset(tls.sock);
    let report = backend.next_report(WAIT);
    assert!(report.received > 0 && report.received <= 1 << 20);
    let line = access_line(&server, port);
    assert!(line.contains("reason=client_error"), "{line}");

    // Nothing held, and still serving.
    assert_fds_back(pid, fds);
    let mut tls = tls_connect(server.addr(), cfg).unwrap();
    echo_round_trip(&mut tls, b"after the resets");
}

#[test]
fn slowloris_does_not_starve_a_normal_client() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.flag("--handshake-timeout", "3s");
    let server = args.spawn();
    let addr = server.addr();
    let hello = client_hello_bytes(&pki);

    // 200 clients, each sending its ClientHello one byte a second.
    let stop = Arc::new(AtomicBool::new(false));
    let slow = {
        let (stop, hello) = (stop.clone(), hello.clone());
        thread::spawn(move || {
            let mut socks: Vec<TcpStream> = (0..200).map(|_| tcp_connect(addr)).collect();
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) && sent < hello.len() {
                for s in &mut socks {
                    // The server may already have cut it: that is the point.
                    let _ = s.write_all(&hello[sent..sent + 1]);
                }
                sent += 1;
                thread::sleep(Duration::from_secs(1));
            }
            socks
        })
    };
    thread::sleep(Duration::from_millis(500));
    let cfg = ClientOpts::new(&pki).build();
    for i in 0..4 {
        let mut tls = tls_connect_timeout(addr, cfg.clone(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("normal client {i} refused during slowloris: {e}"));
        echo_round_trip(&mut tls, b"served beside the slow ones");
        thread::sleep(Duration::from_millis(500));
    }
    // Every slow client is cut by the handshake timeout.
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_lines(&server, "reason=handshake_timeout") < 200 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    let socks = slow.join().unwrap();
    assert_eq!(count_lines(&server, "reason=handshake_timeout"), 200);
    for mut s in socks {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut b = [0u8; 64];
        let r = s.read(&mut b);
        assert!(
            !r.as_ref().is_err_and(is_timeout),
            "a slow client is still open"
        );
    }
}

/// Raises this process's soft RLIMIT_NOFILE to `want` (or the hard limit).
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_cur.max(want.min(lim.rlim_max));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

#[test]
fn ten_thousand_idle_connections_against_a_low_limit() {
    const IDLE: usize = 10_000;
    let have = raise_nofile(IDLE as u64 + 512);
    assert!(
        have >= IDLE as u64 + 256,
        "this test needs `ulimit -n` of at least {}; it is {have}",
        IDLE + 256
    );
    let pki = Pki::new();
    let backend = Backend::echo();
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.flag("--max-connections", "50")
        .flag("--handshake-timeout", "60s")
        .set("--workers", "2");
    let server = args.spawn();
    let pid = server.pid();
    let fds = settled_fds(pid);

    let mut socks = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let s = TcpStream::connect_timeout(&server.addr(), WAIT)
            .unwrap_or_else(|e| panic!("connect {i}: {e}"));
        socks.push(s);
    }
    // Beyond 2 workers x 50, every connection is accepted and closed with
    // a logged reason.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_lines(&server, "reason=max_connections") < IDLE - 100 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let refused = count_lines(&server, "reason=max_connections");
    assert!(
        (IDLE - 100..IDLE).contains(&refused),
        "{refused} of {IDLE} refused with reason max_connections"
    );
    let held = open_fds(pid);
    assert!(
        held <= fds + 2 * 50,
        "{held} descriptors open while only 100 connections are admitted"
    );
    // The refused ones see the close.
    let mut closed = 0;
    for s in socks.iter_mut().step_by(97) {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut b = [0u8; 1];
        if !s.read(&mut b).as_ref().is_err_and(is_timeout) {
            closed += 1;
        }
    }
    assert!(closed > 0, "no refused connection saw its close");

    drop(socks);
    assert_fds_back(pid, fds);
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).unwrap();
    echo_round_trip(&mut tls, b"after ten thousand");
}

#[test]
fn descriptor_exhaustion_backs_off_and_recovers() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.flag("--handshake-timeout", "60s");
    let server = args.spawn_with_nofile(48);
    let pid = server.pid();
    let cfg = ClientOpts::new(&pki).build();
    let mut tls = tls_connect(server.addr(), cfg.clone()).unwrap();
    echo_round_trip(&mut tls, b"before exhaustion");
    drop(tls);
    let fds = settled_fds(pid);

    // Idle connections until the process is out of descriptors.
    let socks: Vec<TcpStream> = (0..80).map(|_| tcp_connect(server.addr())).collect();
    server
        .log
        .wait_line(WAIT, &["accept failed", "Too many open files"])
        .unwrap_or_else(|| panic!("no EMFILE from accept:\n{}", server.log.text()));
    // Backing off, not spinning: a second of exhaustion costs a handful of
    // log lines per listener, not thousands.
    thread::sleep(Duration::from_secs(1));
    let failures = count_lines(&server, "accept failed");
    assert!(failures < 200, "{failures} accept failures: spinning");

    drop(socks);
    assert_fds_back(pid, fds);
    let mut tls = tls_connect(server.addr(), cfg).unwrap();
    echo_round_trip(&mut tls, b"recovered");
}

#[test]
fn sighup_storm_under_load_fails_no_connection() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let addr = server.addr();
    let cfg = ClientOpts::new(&pki).build();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let (cfg, stop, done) = (cfg.clone(), stop.clone(), done.clone());
            thread::spawn(move || -> Result<(), String> {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) && n < 10_000 {
                    let mut tls = tls_connect(addr, cfg.clone())
                        .map_err(|e| format!("client {t} connection {n}: handshake: {e}"))?;
                    let msg = format!("client {t} connection {n}\n");
                    try_echo(&mut tls, msg.as_bytes())
                        .map_err(|e| format!("client {t} connection {n}: echo: {e}"))?;
                    close_notify(&mut tls).map_err(|e| e.to_string())?;
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for _ in 0..100 {
        server.signal(libc::SIGHUP);
        thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap().unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 0);
    server
        .log
        .wait_line(WAIT, &["reloaded"])
        .expect("the storm reloaded at least once");
    assert_eq!(count_lines(&server, "reload failed"), 0);
    let mut tls = tls_connect(addr, cfg).unwrap();
    echo_round_trip(&mut tls, b"after the storm");
}

#[test]
fn handshakes_in_flight_are_limited_per_worker() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.set("--workers", "1").flag("--max-handshakes", "5");
    let server = args.spawn();
    let cfg = ClientOpts::new(&pki).build();
    // An established connection does not count against the limit.
    let mut established = tls_connect(server.addr(), cfg.clone()).unwrap();
    echo_round_trip(&mut established, b"established");

    // Five clients that never send their hello fill the worker's slots...
    let silent: Vec<TcpStream> = (0..5).map(|_| tcp_connect(server.addr())).collect();
    // ...so the sixth is closed at once, with the reason logged.
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        let mut sock = tcp_connect(server.addr());
        let port = sock.local_addr().unwrap().port();
        let mut b = [0u8; 1];
        let r = sock.read(&mut b);
        assert!(!r.as_ref().is_err_and(is_timeout), "not refused: {r:?}");
        let line = access_line(&server, port);
        if line.contains("reason=max_handshakes") || Instant::now() >= deadline {
            break line;
        }
    };
    assert!(refused.contains("reason=max_handshakes"), "{refused}");
    echo_round_trip(&mut established, b"still served");

    // Once the silent ones leave, handshakes are admitted again.
    drop(silent);
    let deadline = Instant::now() + WAIT;
    let mut tls = loop {
        let attempt = tls_connect(server.addr(), cfg.clone())
            .and_then(|mut tls| try_echo(&mut tls, b"admitted").map(|()| tls));
        match attempt {
            Ok(tls) => break tls,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("not admitted after the slots freed: {e}"),
        }
    };
    echo_round_trip(&mut tls, b"again");
}
