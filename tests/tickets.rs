//! Session tickets shared by a fleet: instances with the same ticket key
//! file resume each other's sessions, instances with other keys do not,
//! and a rotation (new key prepended, reload) keeps old tickets valid while
//! new ones are sealed with the new key.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use rustls::{ClientConfig, HandshakeKind};

/// A key file line: base64 of 80 bytes derived from `seed`.
fn key_line(seed: u8) -> String {
    let bytes: Vec<u8> = (0..80u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn key_file(dir: &Path, name: &str, seeds: &[u8]) -> PathBuf {
    let lines: Vec<String> = seeds.iter().map(|s| key_line(*s)).collect();
    write_file(dir, name, format!("# newest first\n{}\n", lines.join("\n")))
}

fn serve(pki: &Pki, backend: &Backend, keys: Option<&Path>) -> Server {
    let mut args = ServeArgs::new(pki, backend.addr);
    if let Some(keys) = keys {
        args.flag("--ticket-keys", keys.to_str().unwrap());
    }
    args.spawn()
}

/// Connects with `cfg` (whose session store keeps what the server sends),
/// proves the relay works and returns how the handshake went. The echo
/// also makes the client read the TLS 1.3 tickets that follow the handshake.
fn visit(server: &Server, cfg: &Arc<ClientConfig>) -> HandshakeKind {
    let mut tls = tls_connect(server.addr(), cfg.clone()).expect("handshake");
    echo_round_trip(&mut tls, b"ticket please");
    let kind = tls.conn.handshake_kind().expect("handshake finished");
    let _ = close_notify(&mut tls);
    kind
}

/// A client that has a ticket from `server`.
fn client_with_ticket(pki: &Pki, server: &Server, tls12: bool) -> Arc<ClientConfig> {
    let opts = ClientOpts::new(pki);
    let cfg = if tls12 { opts.tls12() } else { opts.tls13() }.build();
    assert_eq!(visit(server, &cfg), HandshakeKind::Full);
    cfg
}

#[test]
fn instances_with_the_same_keys_resume_each_others_sessions() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let dir = tempfile::tempdir().unwrap();
    let shared = key_file(dir.path(), "shared.keys", &[1, 2]);
    let other = key_file(dir.path(), "other.keys", &[9]);
    let a = serve(&pki, &backend, Some(&shared));
    let b = serve(&pki, &backend, Some(&shared));
    let c = serve(&pki, &backend, Some(&other));

    for tls12 in [false, true] {
        let cfg = client_with_ticket(&pki, &a, tls12);
        assert_eq!(
            visit(&b, &cfg),
            HandshakeKind::Resumed,
            "ticket from A resumes on B (tls12={tls12})"
        );
        let cfg = client_with_ticket(&pki, &a, tls12);
        assert_eq!(
            visit(&c, &cfg),
            HandshakeKind::Full,
            "ticket from A is useless on C, which has other keys (tls12={tls12})"
        );
    }
    assert!(
        a.log.text().contains("sealing with key"),
        "{}",
        a.log.text()
    );
}

#[test]
fn rotation_keeps_old_tickets_and_seals_new_ones_with_the_new_key() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let dir = tempfile::tempdir().unwrap();
    let rotating = key_file(dir.path(), "fleet.keys", &[1]);
    let old_only = key_file(dir.path(), "old.keys", &[1]);
    let new_only = key_file(dir.path(), "new.keys", &[7]);
    let server = serve(&pki, &backend, Some(&rotating));
    let old_server = serve(&pki, &backend, Some(&old_only));
    let new_server = serve(&pki, &backend, Some(&new_only));

    let before = client_with_ticket(&pki, &server, false);

    // Rotate: the new key first, the previous one kept to open old tickets.
    key_file(dir.path(), "fleet.keys", &[7, 1]);
    server.signal(libc::SIGHUP);
    server
        .log
        .wait_line(Duration::from_secs(10), &["reloaded"])
        .expect("reload after rotation");

    assert_eq!(
        visit(&server, &before),
        HandshakeKind::Resumed,
        "a ticket sealed before the rotation still resumes"
    );
    let after = client_with_ticket(&pki, &server, false);
    assert_eq!(
        visit(&new_server, &after),
        HandshakeKind::Resumed,
        "new tickets are sealed with the new key"
    );
    let after = client_with_ticket(&pki, &server, false);
    assert_eq!(
        visit(&old_server, &after),
        HandshakeKind::Full,
        "new tickets are not sealed with the old key"
    );
}

#[test]
fn without_a_key_file_tickets_are_private_to_the_process_and_survive_reload() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let a = serve(&pki, &backend, None);
    let b = serve(&pki, &backend, None);

    let cfg = client_with_ticket(&pki, &a, false);
    assert_eq!(visit(&b, &cfg), HandshakeKind::Full);

    let cfg = client_with_ticket(&pki, &a, false);
    a.signal(libc::SIGHUP);
    a.log
        .wait_line(Duration::from_secs(10), &["reloaded"])
        .expect("reload");
    assert_eq!(
        visit(&a, &cfg),
        HandshakeKind::Resumed,
        "in-memory keys are kept across a reload"
    );
}

#[test]
fn a_bad_key_file_is_reported_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let short = base64::engine::general_purpose::STANDARD.encode([3u8; 48]);
    let bad = write_file(
        dir.path(),
        "bad.keys",
        format!("{}\n\n{short}\n", key_line(1)),
    );
    let pki = Pki::new();
    let backend = Backend::echo();
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.flag("--ticket-keys", bad.to_str().unwrap());
    let args: Vec<&str> = args.args.iter().map(String::as_str).collect();
    let (status, _, stderr) = run_tlsplice(&args, None);
    assert!(!status.success());
    let expected = format!("{}:3:1: --ticket-keys: a key is 80 bytes", bad.display());
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn a_ticket_never_resumes_under_a_stricter_client_policy() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "fleet.keys", &[4]);
    let mut optional = ServeArgs::new(&pki, backend.addr);
    optional
        .flag("--ticket-keys", keys.to_str().unwrap())
        .flag("--client-auth", "optional");
    let optional = optional.spawn();
    let required = serve(&pki, &backend, Some(&keys));

    // A session without a client certificate, admitted by the optional policy.
    let anonymous = ClientOpts::new(&pki).identity(None).tls13().build();
    assert_eq!(visit(&optional, &anonymous), HandshakeKind::Full);
    assert_eq!(visit(&optional, &anonymous), HandshakeKind::Resumed);

    // Same keys, same SNI, but a certificate is required here: the ticket
    // must not open, and the full handshake refuses the anonymous client.
    let refused = tls_connect(required.addr(), anonymous.clone())
        .and_then(|mut tls| try_echo(&mut tls, b"let me in").map(|()| tls));
    match refused {
        Ok(tls) => panic!(
            "anonymous client got through a required listener ({:?})",
            tls.conn.handshake_kind()
        ),
        Err(e) => assert!(
            matches!(
                rustls_error(&e),
                Some(rustls::Error::AlertReceived(
                    rustls::AlertDescription::CertificateRequired
                ))
            ),
            "expected certificate_required, got {e}"
        ),
    }
}
