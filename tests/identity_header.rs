//! Header mode end to end: curl with a client certificate through tlsplice
//! to a Python `http.server` backend that reports each request it parsed.
//! Also the 400 for a malformed head, and the JSON access log.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The Python HTTP/1.1 backend (tests/backends/http_echo.py); killed on drop.
struct HttpEcho {
    child: Child,
    addr: SocketAddr,
}

impl HttpEcho {
    fn start() -> HttpEcho {
        require_tool("python3");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/backends/http_echo.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).expect("python backend did not start");
        let port: u16 = line.trim().parse().expect("python backend port");
        HttpEcho {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for HttpEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl with the client certificate against `https://localhost:PORT`
/// plus `args`; returns each response body (one JSON object a line).
fn curl(pki: &Pki, port: u16, args: &[&str]) -> Vec<Value> {
    let mut cmd = curl_cmd(pki, port, Some(&pki.client));
    cmd.args(["--fail", "-w", "\n"]).args(args);
    let (status, out, err) = run_bounded(cmd, WAIT);
    assert!(status.success(), "curl failed: {status}\n{err}\n{out}");
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Every value of header `name` (any case) the backend received.
fn header_values(request: &Value, name: &str) -> Vec<String> {
    request["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect()
}

fn url(port: u16, path: &str) -> String {
    format!("https://localhost:{port}{path}")
}

fn serve(pki: &Pki, backend: SocketAddr, extra: &[(&str, &str)]) -> Server {
    let mut args = ServeArgs::new(pki, backend);
    for (k, v) in extra {
        args.flag(k, v);
    }
    args.spawn()
}

#[test]
fn rfc9440_header_on_every_request_of_a_keepalive_connection() {
    let pki = Pki::new();
    let backend = HttpEcho::start();
    let server = serve(&pki, backend.addr, &[("--client-cert-header", "rfc9440")]);
    let port = server.addr().port();
    // Two URLs: curl sends both on one connection. The spoofed headers (in
    // another case) must not reach the backend.
    let got = curl(
        &pki,
        port,
        &[
            "-H",
            "client-cert: :c3Bvb2Y=:",
            "-H",
            "CLIENT-CERT-CHAIN: :c3Bvb2Y=:",
            &url(port, "/first"),
            &url(port, "/second"),
        ],
    );
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["path"], "/first");
    assert_eq!(got[1]["path"], "/second");
    assert_eq!(
        got[0]["peer_port"], got[1]["peer_port"],
        "curl did not reuse the connection"
    );
    for request in &got {
        let values = header_values(request, "Client-Cert");
        assert_eq!(values.len(), 1, "{request}");
        let der = values[0]
            .strip_prefix(':')
            .and_then(|v| v.strip_suffix(':'))
            .map(|v| BASE64.decode(v).unwrap())
            .unwrap_or_else(|| panic!("not an RFC 9440 byte sequence: {}", values[0]));
        assert_eq!(der, pki.client.cert_der.as_ref());
        // curl sends the chain in client.crt: the CA follows the leaf.
        assert_eq!(
            header_values(request, "Client-Cert-Chain"),
            [format!(":{}:", BASE64.encode(&pki.ca_der))],
            "{request}"
        );
    }
}

#[test]
fn chunked_and_length_bodies_pass_byte_exact() {
    let pki = Pki::new();
    let backend = HttpEcho::start();
    let server = serve(&pki, backend.addr, &[("--client-cert-header", "rfc9440")]);
    let port = server.addr().port();
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body");
    let block = pattern(7);
    let len = 300_001u64;
    let sha = {
        let mut f = std::fs::File::create(&body_path).unwrap();
        write_pattern(&mut f, &block, len).unwrap()
    };
    let data = format!("@{}", body_path.display());
    for framing in [&["-H", "Transfer-Encoding: chunked"][..], &[]] {
        let mut args = framing.to_vec();
        args.extend(["--data-binary", &data, "-H", "Client-Cert: spoof"]);
        let u = url(port, "/upload");
        args.push(&u);
        let got = curl(&pki, port, &args);
        assert_eq!(got.len(), 1);
        let r = &got[0];
        assert_eq!(r["method"], "POST");
        assert_eq!(r["body_len"], len, "{framing:?}");
        assert_eq!(r["body_sha256"], hex(&sha), "{framing:?}");
        let chunked = !header_values(r, "Transfer-Encoding").is_empty();
        assert_eq!(chunked, !framing.is_empty());
        let values = header_values(r, "Client-Cert");
        assert_eq!(values.len(), 1, "{r}");
        assert_ne!(values[0], "spoof");
    }
}

#[test]
fn xfcc_and_escaped_pem_under_custom_names() {
    let pki = Pki::new();
    let backend = HttpEcho::start();
    let fingerprint = hex(&Sha256::digest(pki.client.cert_der.as_ref()));

    let server = serve(
        &pki,
        backend.addr,
        &[
            ("--client-cert-header", "xfcc"),
            ("--client-cert-header-name", "x-fwd-client"),
        ],
    );
    let port = server.addr().port();
    let got = curl(
        &pki,
        port,
        &["-H", "X-FWD-CLIENT: Hash=00", &url(port, "/")],
    );
    let values = header_values(&got[0], "x-fwd-client");
    assert_eq!(values.len(), 1, "{}", got[0]);
    let xfcc = &values[0];
    assert!(
        xfcc.starts_with(&format!("Hash={fingerprint};Cert=\"")),
        "{xfcc}"
    );
    assert!(
        xfcc.contains(";Subject=\"") && xfcc.contains("CN=test-client"),
        "{xfcc}"
    );
    let cert = xfcc
        .split("Cert=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(pem_der(&url_decode(cert)), pki.client.cert_der);
    // The name is sent exactly as configured.
    assert!(got[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h[0] == "x-fwd-client"));
    drop(server);

    let server = serve(
        &pki,
        backend.addr,
        &[("--client-cert-header", "escaped-pem")],
    );
    let port = server.addr().port();
    let got = curl(&pki, port, &[&url(port, "/")]);
    let values = header_values(&got[0], "X-SSL-Client-Cert");
    assert_eq!(values.len(), 1, "{}", got[0]);
    assert_eq!(pem_der(&url_decode(&values[0])), pki.client.cert_der);
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn pem_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
}

#[test]
fn malformed_head_gets_400_and_close_and_never_reaches_the_backend() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = serve(&pki, backend.addr, &[("--client-cert-header", "rfc9440")]);
    for (head, status) in [
        (
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            "400",
        ),
        (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", "400"),
    ] {
        let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
        tls.write_all(head).unwrap();
        tls.flush().unwrap();
        let (reply, _) = read_until_end(&mut tls);
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status} Bad Request\r\n")),
            "{reply}"
        );
        assert!(reply.contains("Connection: close"), "{reply}");
    }
    // A head over the limit: 431.
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    let mut big = b"GET / HTTP/1.1\r\n".to_vec();
    while big.len() <= 70 * 1024 {
        big.extend_from_slice(b"X-Filler: 0123456789abcdef0123456789abcdef\r\n");
    }
    // The server may close before taking all of it.
    let _ = tls.write_all(&big).and_then(|()| tls.flush());
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{reply}"
    );
    let line = server
        .log
        .wait_line(WAIT, &["request head refused: 431"])
        .expect("the refusal is logged");
    assert!(line.contains("client_error"), "{line}");
    assert_eq!(backend.bytes_in(), 0, "a refused head reached the backend");
}

#[test]
fn json_access_log_lines_match_the_connection() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let server = serve(
        &pki,
        backend.addr,
        &[("--access-log", "json"), ("--allow", "cn:test-client")],
    );
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    let local = tls.sock.local_addr().unwrap();
    let msg = b"twelve bytes";
    echo_round_trip(&mut tls, msg);
    close_notify(&mut tls).unwrap();
    let (rest, _) = read_until_end(&mut tls);
    assert!(rest.is_empty());
    let line = server
        .log
        .wait_for(WAIT, |lines| {
            lines
                .iter()
                .find(|l| l.starts_with('{') && l.contains(&local.to_string()))
                .cloned()
        })
        .expect("a JSON access line for the connection");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["client"], local.to_string());
    assert_eq!(v["sni"], "localhost");
    assert_eq!(v["identity"], "cn:test-client");
    assert_eq!(v["backend"], backend.addr.to_string());
    assert_eq!(v["bytes_up"], msg.len());
    assert_eq!(v["bytes_down"], msg.len());
    assert_eq!(v["reason"], "done");
    assert!(
        v["subject"].as_str().unwrap().contains("CN=test-client"),
        "{v}"
    );
    assert!(v["handshake_ms"].as_f64().unwrap() >= 0.0);
    assert!(v["duration_ms"].as_f64().unwrap() >= v["handshake_ms"].as_f64().unwrap());
    assert!(["userspace", "ktls"].contains(&v["path"].as_str().unwrap()));
    // No text access line beside it.
    assert!(
        !server.log.text().contains(" access: "),
        "{}",
        server.log.text()
    );
}
