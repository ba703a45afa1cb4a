//! Zero-downtime restart on one host: a new tlsplice binds the same port
//! beside the old one (SO_REUSEPORT), the old one gets SIGTERM, stops
//! accepting and drains. Under a client loop, no connection is refused and
//! no established connection breaks.
//!
//! Connections still queued on the old process's sockets when it closes
//! them would be reset; Linux moves them to the new process's sockets when
//! `net.ipv4.tcp_migrate_req = 1` (README, "Restarts"). The test sets that
//! inside a network namespace of its own, so the host is untouched.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Moves the calling thread (and the threads and processes it starts) into
/// a new network namespace with loopback up and request migration on.
fn private_network() -> io::Result<()> {
    // SAFETY: unshare changes only this thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a plain datagram socket and SIOCGIFFLAGS/SIOCSIFFLAGS on an
    // ifreq naming "lo", zero-initialised and NUL-terminated.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo") {
            *dst = *src as libc::c_char;
        }
        let up = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0 && {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) == 0
        };
        let err = io::Error::last_os_error();
        libc::close(fd);
        if !up {
            return Err(err);
        }
    }
    std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1")
}

fn spawn_instance(pki: &Pki, backend: SocketAddr, listen: SocketAddr) -> Server {
    let mut args = ServeArgs::new(pki, backend);
    args.set("--listen", &listen.to_string())
        .flag("--drain-timeout", "30s");
    args.spawn()
}

/// Client loops opening short connections: enough that some are always in
/// the accept queues when the old process closes its sockets.
const SHORT_CLIENTS: usize = 16;

#[derive(Default)]
struct Tally {
    short_ok: AtomicUsize,
    long_rounds: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

#[test]
fn restart_under_load_refuses_nothing_and_breaks_nothing() {
    if let Err(e) = private_network() {
        eprintln!("SKIPPED: a private network namespace is needed ({e}); run as root");
        return;
    }
    let pki = Pki::new();
    let backend = Backend::echo();
    let listen: SocketAddr = "127.0.0.1:18443".parse().unwrap();
    let mut old = spawn_instance(&pki, backend.addr, listen);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let cfg = ClientOpts::new(&pki).build();
    let mut clients = Vec::new();
    // Short connections: handshake, one echo, close, again.
    for i in 0..SHORT_CLIENTS {
        let (stop, tally, cfg) = (stop.clone(), tally.clone(), cfg.clone());
        clients.push(thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let result = tls_connect(listen, cfg.clone()).and_then(|mut tls| {
                    try_echo(&mut tls, format!("short {i}").as_bytes())?;
                    close_notify(&mut tls)
                });
                match result {
                    Ok(()) => {
                        tally.short_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tally.fail(format!("short connection: {e}")),
                }
            }
        }));
    }
    // Long connections opened on the old process, used across the restart.
    for i in 0..4 {
        let (stop, tally, cfg) = (stop.clone(), tally.clone(), cfg.clone());
        let mut tls = tls_connect(listen, cfg).expect("long connection");
        clients.push(thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Err(e) = try_echo(&mut tls, format!("long {i}").as_bytes()) {
                    tally.fail(format!("long connection {i}: {e}"));
                    return;
                }
                tally.long_rounds.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
            if let Err(e) = close_notify(&mut tls) {
                tally.fail(format!("long connection {i} close: {e}"));
            }
        }));
    }

    thread::sleep(Duration::from_millis(700));
    let new = spawn_instance(&pki, backend.addr, listen);
    thread::sleep(Duration::from_millis(300));
    old.signal(libc::SIGTERM);
    old.log
        .wait_line(WAIT, &["stopping"])
        .expect("old process starts draining");
    let at_restart = tally.short_ok.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let status = old.wait_exit(WAIT).expect("old process exits once drained");
    assert!(status.success(), "old process: {status:?}");

    let failures = tally.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "failures across the restart: {failures:#?}"
    );
    let total = tally.short_ok.load(Ordering::Relaxed);
    assert!(
        total > at_restart + 20,
        "connections went on after the restart ({at_restart} before, {total} in all)"
    );
    assert!(tally.long_rounds.load(Ordering::Relaxed) > 40);
    let served_by_new = new
        .log
        .lines()
        .iter()
        .filter(|l| l.contains("bytes_up=") && !l.contains("bytes_up=0 "))
        .count();
    assert!(
        served_by_new > 0,
        "the new process served connections; its log:\n{}",
        new.log.text()
    );
}
