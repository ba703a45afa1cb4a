//! Client certificate policy: required, optional, off. A refused client gets
//! a fatal alert and nothing of it reaches the backend.

mod common;

use std::io::{Read, Write};

use common::*;
use rustls::AlertDescription;

/// Connects with `opts` and expects the server to refuse: with TLS 1.2 the
/// handshake itself fails; with TLS 1.3 the client's handshake completes and
/// the alert arrives on the first read. Writes a payload in between, which
/// must never reach the backend. Returns the rustls error seen.
fn expect_refused(server: &Server, opts: &ClientOpts) -> rustls::Error {
    let mut tls = match tls_connect(server.addr(), opts.build()) {
        Err(e) => {
            return rustls_error(&e)
                .unwrap_or_else(|| panic!("handshake failed without a TLS alert: {e}"))
                .clone()
        }
        Ok(tls) => tls,
    };
    // TLS 1.3: the client believes it is connected.
    let _ = tls.write_all(b"this must never reach the backend\n");
    let _ = tls.flush();
    let mut buf = [0u8; 256];
    match tls.read(&mut buf) {
        Ok(0) => panic!("refused connection closed with close_notify instead of a fatal alert"),
        Ok(n) => panic!(
            "refused connection returned data: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => rustls_error(&e)
            .unwrap_or_else(|| panic!("refused connection ended without a TLS alert: {e}"))
            .clone(),
    }
}

/// After refusals: a good client still gets through, and the backend saw
/// exactly that one connection and its bytes.
fn assert_backend_saw_only_good_client(server: &Server, backend: &Backend, pki: &Pki) {
    let msg = b"the good client\n";
    let mut tls = tls_connect(server.addr(), ClientOpts::new(pki).build()).expect("handshake");
    echo_round_trip(&mut tls, msg);
    assert_eq!(
        backend.accepted(),
        1,
        "the backend accepted connections for refused clients"
    );
    assert_eq!(
        backend.bytes_in(),
        msg.len() as u64,
        "bytes of refused clients reached the backend"
    );
}

fn alert(e: &rustls::Error) -> Option<AlertDescription> {
    match e {
        rustls::Error::AlertReceived(a) => Some(*a),
        _ => None,
    }
}

fn spawn(pki: &Pki, backend: &Backend, mode: &str) -> Server {
    let mut args = ServeArgs::new(pki, backend.addr);
    args.flag("--client-auth", mode);
    if mode == "off" {
        args.remove("--client-ca");
    }
    args.spawn()
}

#[test]
fn required_valid_cert_admitted() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = spawn(&pki, &backend, "required");
    for opts in [ClientOpts::new(&pki).tls13(), ClientOpts::new(&pki).tls12()] {
        let mut tls = tls_connect(server.addr(), opts.build()).expect("handshake");
        echo_round_trip(&mut tls, b"valid client\n");
    }
    assert_eq!(backend.accepted(), 2);
}

/// The default policy is `required`: no `--client-auth` flag, no cert, refused.
#[test]
fn required_is_default_no_cert_tls13_certificate_required() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let e = expect_refused(&server, &ClientOpts::new(&pki).tls13().identity(None));
    assert_eq!(
        alert(&e),
        Some(AlertDescription::CertificateRequired),
        "got {e:?}"
    );
    assert_backend_saw_only_good_client(&server, &backend, &pki);
}

#[test]
fn required_no_cert_tls12_refused() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = spawn(&pki, &backend, "required");
    let e = expect_refused(&server, &ClientOpts::new(&pki).tls12().identity(None));
    assert!(alert(&e).is_some(), "expected a fatal alert, got {e:?}");
    assert_backend_saw_only_good_client(&server, &backend, &pki);
}

#[test]
fn required_other_ca_refused_unknown_ca() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = spawn(&pki, &backend, "required");
    for opts in [ClientOpts::new(&pki).tls13(), ClientOpts::new(&pki).tls12()] {
        let e = expect_refused(&server, &opts.identity(Some(&pki.client_other_ca)));
        assert_eq!(alert(&e), Some(AlertDescription::UnknownCA), "got {e:?}");
    }
    assert_backend_saw_only_good_client(&server, &backend, &pki);
}

#[test]
fn required_expired_cert_refused() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = spawn(&pki, &backend, "required");
    for opts in [ClientOpts::new(&pki).tls13(), ClientOpts::new(&pki).tls12()] {
        let e = expect_refused(&server, &opts.identity(Some(&pki.client_expired)));
        assert_eq!(
            alert(&e),
            Some(AlertDescription::CertificateExpired),
            "got {e:?}"
        );
    }
    assert_backend_saw_only_good_client(&server, &backend, &pki);
}

#[test]
fn required_cert_without_client_auth_eku_refused() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = spawn(&pki, &backend, "required");
    for opts in [ClientOpts::new(&pki).tls13(), ClientOpts::new(&pki).tls12()] {
        let e = expect_refused(&server, &opts.identity(Some(&pki.client_no_eku)));
        // rustls maps a wrong EKU to unsupported_certificate.
        assert!(
            matches!(
                alert(&e),
                Some(AlertDescription::UnsupportedCertificate | AlertDescription::BadCertificate)
            ),
            "got {e:?}"
        );
    }
    assert_backend_saw_only_good_client(&server, &backend, &pki);
}

/// Server certificate presented as a client certificate (serverAuth EKU,
/// same CA) is also refused, and the server keeps serving afterwards.
#[test]
fn refusals_do_not_disturb_the_server() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = spawn(&pki, &backend, "required");
    for _ in 0..5 {
        let e = expect_refused(&server, &ClientOpts::new(&pki).identity(Some(&pki.server)));
        assert!(alert(&e).is_some(), "expected a fatal alert, got {e:?}");
    }
    assert_backend_saw_only_good_client(&server, &backend, &pki);
}

#[test]
fn optional_no_cert_admitted() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = spawn(&pki, &backend, "optional");
    for opts in [ClientOpts::new(&pki).tls13(), ClientOpts::new(&pki).tls12()] {
        let mut tls = tls_connect(server.addr(), opts.identity(None).build()).expect("handshake");
        echo_round_trip(&mut tls, b"anonymous client\n");
    }
    assert_eq!(backend.accepted(), 2);
}

#[test]
fn optional_valid_cert_admitted() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = spawn(&pki, &backend, "optional");
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    echo_round_trip(&mut tls, b"identified client\n");
    assert_eq!(backend.accepted(), 1);
}

#[test]
fn optional_bad_cert_refused() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = spawn(&pki, &backend, "optional");
    for id in [&pki.client_other_ca, &pki.client_expired] {
        for opts in [ClientOpts::new(&pki).tls13(), ClientOpts::new(&pki).tls12()] {
            let e = expect_refused(&server, &opts.identity(Some(id)));
            assert!(alert(&e).is_some(), "expected a fatal alert, got {e:?}");
        }
    }
    assert_backend_saw_only_good_client(&server, &backend, &pki);
}

#[test]
fn off_needs_no_client_ca_and_admits_anyone() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = spawn(&pki, &backend, "off");
    let mut tls = tls_connect(
        server.addr(),
        ClientOpts::new(&pki).tls13().identity(None).build(),
    )
    .expect("handshake");
    echo_round_trip(&mut tls, b"no client auth\n");
    assert_eq!(backend.accepted(), 1);
}

/// `required` (the default) without `--client-ca` is a startup error.
#[test]
fn required_without_client_ca_is_an_error() {
    let pki = Pki::new();
    let backend = unused_port();
    let mut args = ServeArgs::new(&pki, backend);
    args.remove("--client-ca");
    let args: Vec<&str> = args.args.iter().map(String::as_str).collect();
    let (status, _out, err) = run_tlsplice(&args, None);
    assert!(!status.success(), "serve started without --client-ca");
    assert!(
        err.contains("client-ca") || err.contains("client_ca"),
        "the error does not name --client-ca:\n{err}"
    );
}
