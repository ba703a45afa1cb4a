//! SIGHUP reload: new connections get the new trust store, established ones
//! keep working, and a broken reload keeps the previous configuration.

mod common;

use std::fs;
use std::io::Read;
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
