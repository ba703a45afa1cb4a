//! PROXY protocol to the backend: a backend reads tlsplice's header with a
//! decoder written here from HAProxy's specification, then the stream.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;

use common::*;
use sha2::Digest;

/// Accepts one connection, reads a PROXY header (v1 or v2), then echoes.
/// Sends the raw header to the returned channel.
fn header_backend() -> (std::net::SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut head = [0u8; 16];
        s.read_exact(&mut head[..6]).unwrap();
        let header = if &head[..6] == b"PROXY " {
            let mut line = head[..6].to_vec();
            let mut b = [0u8; 1];
            while !line.ends_with(b"\r\n") {
                s.read_exact(&mut b).unwrap();
                line.push(b[0]);
            }
            line
        } else {
            s.read_exact(&mut head[6..]).unwrap();
            let len = u16::from_be_bytes([head[14], head[15]]) as usize;
            let mut rest = vec![0u8; len];
            s.read_exact(&mut rest).unwrap();
            [head.to_vec(), rest].concat()
        };
        tx.send(header).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
            }
        }
    });
    (addr, rx)
}

#[test]
fn v2_header_carries_address_tls_and_client_identity() {
    let pki = Pki::new();
    let (backend, header) = header_backend();
    let alias = format!("alias:billing={}", pki.client.cert_path.display());
    let mut args = ServeArgs::new(&pki, backend);
    args.flag("--proxy-protocol", "v2").flag("--allow", &alias);
    let server = args.spawn();
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).tls13().build()).unwrap();
    let client_port = tls.sock.local_addr().unwrap().port();
    echo_round_trip(&mut tls, b"after the header\n");
    let h = header.recv_timeout(WAIT).expect("backend got a header");

    let h = proxy_header::decode(&h).expect("a v2 header per the specification");
    assert_eq!(h.version, 2);
    assert_eq!(
        h.source,
        std::net::SocketAddr::from(([127, 0, 0, 1], client_port)),
        "client address"
    );
    assert_eq!(h.destination.port(), server.addr().port());
    assert_eq!(h.tlv(0x02), Some(&b"localhost"[..]), "authority: {h:?}");
    let ssl = proxy_header::decode_ssl(h.tlv(0x20).expect("PP2_TYPE_SSL")).unwrap();
    assert_eq!(ssl.client, 0x07, "SSL, cert on connection and session");
    assert_eq!(ssl.verify, 0, "verified");
    assert_eq!(ssl.sub(0x21), Some(&b"TLSv1.3"[..]), "{ssl:?}");
    assert_eq!(ssl.sub(0x22), Some(&b"test-client"[..]), "{ssl:?}");
    let fp = sha2::Sha256::digest(&pki.client.cert_der).to_vec();
    assert_eq!(h.tlv(0xE0), Some(&fp[..]), "client certificate SHA-256");
    assert_eq!(h.tlv(0xE1), Some(&b"billing"[..]), "identity");
}

#[test]
fn v1_header_is_one_text_line() {
    let pki = Pki::new();
    let (backend, header) = header_backend();
    let mut args = ServeArgs::new(&pki, backend);
    args.flag("--proxy-protocol", "v1");
    let server = args.spawn();
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).unwrap();
    let client_port = tls.sock.local_addr().unwrap().port();
    echo_round_trip(&mut tls, b"v1\n");
    let h = header.recv_timeout(WAIT).unwrap();
    assert_eq!(
        String::from_utf8(h).unwrap(),
        format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {}\r\n",
            server.addr().port()
        )
    );
}

#[test]
fn v2_header_can_carry_the_certificate_der_in_a_chosen_tlv() {
    let pki = Pki::new();
    let (backend, header) = header_backend();
    let mut args = ServeArgs::new(&pki, backend);
    args.flag("--proxy-protocol", "v2")
        .flag("--proxy-protocol-cert-tlv", "der:0xE5");
    let server = args.spawn();
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).unwrap();
    echo_round_trip(&mut tls, b"der\n");
    let h = header.recv_timeout(WAIT).expect("backend got a header");
    let h = proxy_header::decode(&h).expect("a v2 header per the specification");
    assert_eq!(
        h.tlv(0xE5),
        Some(&pki.client.cert_der[..]),
        "client certificate DER in 0xE5: {h:?}"
    );
    assert_eq!(h.tlv(0xE0), None, "{h:?}");
}
