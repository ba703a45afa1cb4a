//! SIGHUP reload: new connections get the new trust store, established ones
//! keep working, and a broken reload keeps the previous configuration.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::time::Duration;

use common::*;

/// Connects with `opts`; true if the server admitted the client (an echo
/// round trip works), false if it refused it with an alert.
fn admitted(server: &Server, opts: &ClientOpts) -> bool {
    let Ok(mut tls) = tls_connect(server.addr(), opts.build()) else {
        return false;
    };
    use std::io::Write;
    if tls.write_all(b"ping\n").and_then(|()| tls.flush()).is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    tls.read_exact(&mut buf).is_ok() && &buf == b"ping\n"
}

#[test]
fn sighup_swaps_trust_store_and_keeps_established_connections() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let ca_file = pki.path().join("reloadable-ca.crt");
    fs::copy(&pki.ca_path, &ca_file).unwrap();
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.set("--client-ca", ca_file.to_str().unwrap());
    let server = args.spawn();

    let ours = ClientOpts::new(&pki).identity(Some(&pki.client));
    let theirs = ClientOpts::new(&pki).identity(Some(&pki.client_other_ca));
    assert!(admitted(&server, &ours));
    assert!(!admitted(&server, &theirs));

    // An established connection from before the reload.
    let mut before = tls_connect(server.addr(), ours.build()).unwrap();
    echo_round_trip(&mut before, b"before reload\n");

    fs::copy(&pki.other_ca_path, &ca_file).unwrap();
    server.signal(libc::SIGHUP);
    server
        .log
        .wait_line(Duration::from_secs(10), &["reloaded"])
        .expect("reload logged");

    assert!(admitted(&server, &theirs), "new CA trusted after reload");
    assert!(!admitted(&server, &ours), "old CA no longer trusted");
    echo_round_trip(&mut before, b"still alive after reload\n");

    // A broken file: the reload fails, the previous state keeps serving.
    fs::write(&ca_file, "not a certificate\n").unwrap();
    server.signal(libc::SIGHUP);
    let line = server
        .log
        .wait_line(Duration::from_secs(10), &["reload failed"])
        .expect("failed reload logged");
    assert!(
        line.contains("reloadable-ca.crt"),
        "reason names the file: {line}"
    );
    assert!(
        admitted(&server, &theirs),
        "previous configuration still serves"
    );
    echo_round_trip(&mut before, b"and after a failed reload\n");
}

/// Writes `contents` to `path` atomically (a reader never sees half a file),
/// as operators and cert-manager do.
fn replace_file(path: &std::path::Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// 200 established connections and a loop of new ones while the server
/// certificate, client CA and CRL are replaced and reloaded 20 times: no
/// handshake that should succeed fails, no established connection drops.
#[test]
fn reload_under_load_loses_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    const HELD: usize = 200;
    const RELOADS: usize = 20;
    let pki = Pki::new();
    let backend = Backend::echo();
    let dir = pki.path();
    let (cert, key, ca, crl) = (
        dir.join("live-server.crt"),
        dir.join("live-server.key"),
        dir.join("live-ca.crt"),
        dir.join("live-clients.crl"),
    );
    fs::copy(&pki.server.cert_path, &cert).unwrap();
    fs::copy(&pki.server.key_path, &key).unwrap();
    fs::copy(&pki.ca_path, &ca).unwrap();
    fs::write(&crl, pki.crl(&[&pki.client_expired])).unwrap();
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.set("--cert", cert.to_str().unwrap())
        .set("--key", key.to_str().unwrap())
        .set("--client-ca", ca.to_str().unwrap())
        .flag("--crl", crl.to_str().unwrap());
    let server = args.spawn();
    let cfg = ClientOpts::new(&pki).identity(Some(&pki.client)).build();

    let mut held: Vec<_> = (0..HELD)
        .map(|i| {
            let mut tls = tls_connect(server.addr(), cfg.clone()).expect("held handshake");
            echo_round_trip(&mut tls, format!("held {i}\n").as_bytes());
            tls
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let churn = {
        let (stop, ok, failed, cfg, addr) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            cfg.clone(),
            server.addr(),
        );
        std::thread::spawn(move || {
            let mut first_error = None;
            while !stop.load(Ordering::Relaxed) {
                let result = tls_connect(addr, cfg.clone()).and_then(|mut tls| {
                    tls.write_all(b"new\n")?;
                    let mut buf = [0u8; 4];
                    tls.read_exact(&mut buf)?;
                    Ok(buf)
                });
                match result {
                    Ok(buf) if &buf == b"new\n" => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        first_error.get_or_insert(format!("{:?}", other.err()));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            first_error
        })
    };

    let server_cert = fs::read(&pki.server.cert_path).unwrap();
    let server_key = fs::read(&pki.server.key_path).unwrap();
    let ca_pem = fs::read(&pki.ca_path).unwrap();
    for round in 1..=RELOADS {
        replace_file(&cert, &server_cert);
        replace_file(&key, &server_key);
        replace_file(&ca, &ca_pem);
        // Alternate which (unused) certificate the CRL revokes.
        let revoked = if round % 2 == 0 {
            &pki.client_expired
        } else {
            &pki.client_no_eku
        };
        replace_file(&crl, pki.crl(&[revoked]).as_bytes());
        server.signal(libc::SIGHUP);
        let done = server.log.wait_for(Duration::from_secs(10), |lines| {
            let n = lines.iter().filter(|l| l.contains("reloaded")).count();
            (n >= round).then_some(())
        });
        assert!(
            done.is_some(),
            "reload {round} not logged:\n{}",
            server.log.text()
        );
        assert!(
            !server.log.text().contains("reload failed"),
            "{}",
            server.log.text()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let first_error = churn.join().unwrap();

    for (i, tls) in held.iter_mut().enumerate() {
        echo_round_trip(tls, format!("held {i} after reloads\n").as_bytes());
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "failed new connections ({ok} ok); first: {first_error:?}"
    );
    assert!(ok > 0, "no new connection completed during the reloads");
}

/// Kubernetes rotates a mounted secret by repointing the `..data` symlink
/// to a new directory; tlsplice notices without a signal and reloads.
#[test]
fn secret_style_symlink_swap_reloads_without_a_signal() {
    use std::os::unix::fs::symlink;
    let pki = Pki::new();
    let backend = Backend::echo();
    let mount = pki.path().join("secret");
    let (v1, v2) = (mount.join("..2026_v1"), mount.join("..2026_v2"));
    fs::create_dir_all(&v1).unwrap();
    fs::create_dir_all(&v2).unwrap();
    fs::copy(&pki.ca_path, v1.join("ca.crt")).unwrap();
    fs::copy(&pki.other_ca_path, v2.join("ca.crt")).unwrap();
    symlink("..2026_v1", mount.join("..data")).unwrap();
    symlink("..data/ca.crt", mount.join("ca.crt")).unwrap();

    let mut args = ServeArgs::new(&pki, backend.addr);
    args.set("--client-ca", mount.join("ca.crt").to_str().unwrap());
    let server = args.spawn();
    let ours = ClientOpts::new(&pki).identity(Some(&pki.client));
    let theirs = ClientOpts::new(&pki).identity(Some(&pki.client_other_ca));
    assert!(admitted(&server, &ours));
    assert!(!admitted(&server, &theirs));

    // The atomic swap: a new symlink renamed over `..data`.
    symlink("..2026_v2", mount.join("..data_tmp")).unwrap();
    fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    server
        .log
        .wait_line(Duration::from_secs(15), &["reloaded"])
        .unwrap_or_else(|| panic!("no reload after the swap:\n{}", server.log.text()));
    assert!(admitted(&server, &theirs), "rotated CA trusted");
    assert!(!admitted(&server, &ours), "previous CA no longer trusted");
}
