//! Handshakes with real clients: every version x suite x server key type
//! with rustls, OpenSSL's s_client for TLS 1.2 and 1.3, curl over HTTP.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use common::*;
use rustls::crypto::aws_lc_rs::cipher_suite as cs;
use rustls::{ProtocolVersion, SupportedCipherSuite};

/// One full round trip with exactly this version and suite; checks what was
/// negotiated and that 100 KiB come back byte-exact.
fn round_trip(key: KeyType, version: ProtocolVersion, suite: SupportedCipherSuite) {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr)
        .key_type(&pki, key)
        .spawn();
    let opts = ClientOpts::new(&pki).suite(suite);
    let opts = match version {
        ProtocolVersion::TLSv1_2 => opts.tls12(),
        _ => opts.tls13(),
    };
    let mut tls = tls_connect(server.addr(), opts.build()).expect("handshake");
    assert_eq!(tls.conn.protocol_version(), Some(version));
    assert_eq!(
        tls.conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(suite.suite())
    );
    let block = pattern(7);
    echo_round_trip(&mut tls, &block[..100 * 1024]);
    close_notify(&mut tls).unwrap();
    let (rest, end) = read_until_end(&mut tls);
    assert!(rest.is_empty(), "unexpected bytes after the echo");
    end.expect("after our close_notify the echo backend closes; expected a clean close_notify");
    let report = backend.next_report(WAIT);
    assert_eq!(report.received, 100 * 1024);
    assert!(report.saw_eof, "backend did not see EOF after close_notify");
}

macro_rules! matrix {
    ($($name:ident: $key:ident, $ver:ident, $suite:ident;)*) => {$(
        #[test]
        fn $name() {
            round_trip(KeyType::$key, ProtocolVersion::$ver, cs::$suite);
        }
    )*};
}

matrix! {
    tls13_ecdsa_aes128: EcdsaP256, TLSv1_3, TLS13_AES_128_GCM_SHA256;
    tls13_ecdsa_aes256: EcdsaP256, TLSv1_3, TLS13_AES_256_GCM_SHA384;
    tls13_ecdsa_chacha: EcdsaP256, TLSv1_3, TLS13_CHACHA20_POLY1305_SHA256;
    tls13_rsa_aes128: Rsa2048, TLSv1_3, TLS13_AES_128_GCM_SHA256;
    tls13_rsa_aes256: Rsa2048, TLSv1_3, TLS13_AES_256_GCM_SHA384;
    tls13_rsa_chacha: Rsa2048, TLSv1_3, TLS13_CHACHA20_POLY1305_SHA256;
    tls12_ecdsa_aes128: EcdsaP256, TLSv1_2, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
    tls12_ecdsa_aes256: EcdsaP256, TLSv1_2, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384;
    tls12_ecdsa_chacha: EcdsaP256, TLSv1_2, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256;
    tls12_rsa_aes128: Rsa2048, TLSv1_2, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256;
    tls12_rsa_aes256: Rsa2048, TLSv1_2, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384;
    tls12_rsa_chacha: Rsa2048, TLSv1_2, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256;
}

/// Certificate and key given as DER files work like PEM.
#[test]
fn der_cert_and_key_files() {
    let pki = Pki::new();
    let cert = write_file(pki.path(), "server.der", pki.server.cert_der.as_ref());
    let key = write_file(pki.path(), "server-key.der", &pki.server.key_der);
    let ca = write_file(pki.path(), "ca.der", pki.ca_der.as_ref());
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr)
        .set("--cert", cert.to_str().unwrap())
        .set("--key", key.to_str().unwrap())
        .set("--client-ca", ca.to_str().unwrap())
        .spawn();
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    echo_round_trip(&mut tls, b"der files work\n");
}

/// Two `--listen` addresses: two `listening on` lines, both serve.
#[test]
fn two_listen_addresses() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr)
        .listen("127.0.0.2:0")
        .spawn();
    assert_eq!(server.addrs.len(), 2, "{:?}", server.addrs);
    assert_ne!(server.addrs[0], server.addrs[1]);
    for addr in &server.addrs {
        let mut tls = tls_connect(*addr, ClientOpts::new(&pki).build()).expect("handshake");
        echo_round_trip(&mut tls, format!("via {addr}\n").as_bytes());
    }
    assert_eq!(backend.accepted(), 2);
}

/// Many concurrent connections across the workers, each byte-exact.
#[test]
fn concurrent_connections() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let cfg = ClientOpts::new(&pki).build();
    let addr = server.addr();
    let threads: Vec<_> = (0..32u64)
        .map(|i| {
            let cfg = cfg.clone();
            thread::spawn(move || {
                let mut tls = tls_connect(addr, cfg).expect("handshake");
                let block = pattern(100 + i);
                for chunk in block[..256 * 1024].chunks(32 * 1024) {
                    echo_round_trip(&mut tls, chunk);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread failed");
    }
    assert_eq!(backend.accepted(), 32);
}

/// ALPN: the server offers what `--alpn` lists and picks the client's match.
#[test]
fn alpn_negotiated() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr)
        .flag("--alpn", "h2")
        .flag("--alpn", "http/1.1")
        .spawn();
    let mut opts = ClientOpts::new(&pki);
    opts.alpn = vec![b"http/1.1".to_vec()];
    let mut tls = tls_connect(server.addr(), opts.build()).expect("handshake");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    echo_round_trip(&mut tls, b"alpn\n");
}

/// Backends are used round-robin: with one worker, four connections reach
/// both backends.
#[test]
fn round_robin_backends() {
    let pki = Pki::new();
    let a = Backend::echo();
    let b = Backend::echo();
    let server = ServeArgs::new(&pki, a.addr)
        .flag("--backend", &b.addr.to_string())
        .set("--workers", "1")
        .spawn();
    let cfg = ClientOpts::new(&pki).build();
    for i in 0..4 {
        let mut tls = tls_connect(server.addr(), cfg.clone()).expect("handshake");
        echo_round_trip(&mut tls, format!("conn {i}\n").as_bytes());
    }
    assert_eq!(a.accepted() + b.accepted(), 4);
    assert!(
        a.accepted() >= 1 && b.accepted() >= 1,
        "not round-robin: backend a got {}, b got {}",
        a.accepted(),
        b.accepted()
    );
}

/// `openssl s_client` with a client certificate: a line goes through and
/// comes back.
fn openssl_round_trip(version_flag: &str, expect_protocol: &str) {
    require_tool("openssl");
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &server.addr().to_string(),
            "-servername",
            "localhost",
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
            "-CAfile",
            pki.ca_path.to_str().unwrap(),
            "-cert",
            pki.client.cert_path.to_str().unwrap(),
            "-key",
            pki.client.key_path.to_str().unwrap(),
            version_flag,
            "-ign_eof",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl");
    let stderr = LogBuf::capture(child.stderr.take().unwrap());
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = format!("hello from openssl {version_flag}");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    let mut echoed = false;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                // s_client writes received data straight to stdout while its
                // session printout is buffered, so the echo may share a
                // line with a piece of a ticket dump.
                echoed = l.ends_with(&line);
                seen.push(l);
                if echoed {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        echoed,
        "no echo from openssl s_client within {WAIT:?}; stdout:\n{}\nstderr:\n{}",
        seen.join("\n"),
        stderr.text()
    );
    let session = format!("New, {expect_protocol}, Cipher is");
    assert!(
        seen.iter().any(|l| l.contains(&session)),
        "s_client did not report `{session}`; stdout:\n{}",
        seen.join("\n")
    );
    assert_eq!(backend.accepted(), 1);
}

#[test]
fn openssl_s_client_tls12() {
    openssl_round_trip("-tls1_2", "TLSv1.2");
}

#[test]
fn openssl_s_client_tls13() {
    openssl_round_trip("-tls1_3", "TLSv1.3");
}

/// curl with a client certificate against an HTTP backend.
#[test]
fn curl_with_client_cert() {
    require_tool("curl");
    let pki = Pki::new();
    let backend = Backend::start(Mode::Http);
    let server = ServeArgs::new(&pki, backend.addr).spawn();
    let port = server.addr().port();
    let mut cmd = curl_cmd(&pki, port, Some(&pki.client));
    cmd.args([
        "-w",
        "\nstatus=%{http_code}\n",
        &format!("https://localhost:{port}/hello/tlsplice"),
    ]);
    let (status, out, err) = run_bounded(cmd, WAIT);
    assert!(status.success(), "curl failed: {status}\n{err}");
    assert!(out.contains("status=200"), "{out}");
    assert!(out.contains("GET /hello/tlsplice HTTP/1.1"), "{out}");
    assert!(out.contains(&format!("Host: localhost:{port}")), "{out}");
    // Without a client certificate curl is refused.
    let mut cmd = curl_cmd(&pki, port, None);
    cmd.arg(format!("https://localhost:{port}/"));
    let (status, out, _err) = run_bounded(cmd, WAIT);
    assert!(
        !status.success(),
        "curl without a client cert succeeded: {out}"
    );
    assert_eq!(
        backend.accepted(),
        1,
        "the refused curl reached the backend"
    );
}
