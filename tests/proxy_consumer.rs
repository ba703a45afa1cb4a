//! PROXY protocol read by a consumer nobody here wrote: HAProxy (Debian's
//! package) behind tlsplice with `accept-proxy`, answering every request with
//! what it took from the header: the client's address and port, the address
//! the client connected to, and (v2) the SNI from PP2_TYPE_AUTHORITY.
//!
//! HAProxy 2.6 (Debian 12) has `fc_pp_authority`; the generic `fc_pp_tlv()`
//! that would show the SSL and custom TLVs arrived in 2.9, so those are
//! checked by the decoder test in tests/proxy_protocol.rs instead.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The haproxy binary: on PATH, or in /usr/sbin (not on a user's PATH).
fn haproxy_bin() -> PathBuf {
    for candidate in ["haproxy", "/usr/sbin/haproxy"] {
        let ok = Command::new(candidate)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return candidate.into();
        }
    }
    panic!(
        "this test needs HAProxy (apt-get install haproxy, or scripts/install-test-deps.sh); it is not installed"
    );
}

/// A running HAProxy; killed on drop, its output shown if the test fails.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    log: LogBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start() -> Haproxy {
        let bin = haproxy_bin();
        let dir = tempfile::tempdir().unwrap();
        let addr = unused_port();
        let config = format!(
            r#"global
    log stderr format raw local0 notice

defaults
    mode http
    log global
    timeout connect 5s
    timeout client 10s
    timeout server 10s

frontend behind_tlsplice
    bind {addr} accept-proxy
    http-request return status 200 content-type text/plain lf-string "src=%[src] src_port=%[src_port] dst=%[dst] dst_port=%[dst_port] authority=%[fc_pp_authority] \n"
"#
        );
        let path = write_file(dir.path(), "haproxy.cfg", config);
        let mut child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start haproxy");
        let log = LogBuf::capture(child.stderr.take().unwrap());
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("haproxy exited: {status}\n{}", log.text());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {addr}\n{}",
                log.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Haproxy {
            child,
            addr,
            log,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- haproxy stderr ----\n{}", self.log.text());
        }
    }
}

/// One request through tlsplice; returns the client's own address and the
/// `key=value` fields HAProxy answered with.
fn request(pki: &Pki, server: &Server) -> (SocketAddr, HashMap<String, String>) {
    let mut tls = tls_connect(server.addr(), ClientOpts::new(pki).build()).expect("handshake");
    let local = tls.sock.local_addr().unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .unwrap();
    tls.flush().unwrap();
    let (reply, _) = read_until_end(&mut tls);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (local, fields(body))
}

fn check(version: &str) {
    let pki = Pki::new();
    let haproxy = Haproxy::start();
    let server = ServeArgs::new(&pki, haproxy.addr)
        .flag("--proxy-protocol", version)
        .spawn();
    let (client, got) = request(&pki, &server);
    assert_eq!(got["src"], client.ip().to_string(), "{got:?}");
    assert_eq!(got["src_port"], client.port().to_string(), "{got:?}");
    assert_eq!(got["dst"], server.addr().ip().to_string(), "{got:?}");
    assert_eq!(got["dst_port"], server.addr().port().to_string(), "{got:?}");
    let authority = got.get("authority").map_or("", String::as_str);
    match version {
        // v1 has no TLVs: HAProxy has no authority to show.
        "v1" => assert_eq!(authority, "", "{got:?}"),
        _ => assert_eq!(authority, "localhost", "{got:?}"),
    }
}

#[test]
fn haproxy_reads_the_v1_header() {
    check("v1");
}

#[test]
fn haproxy_reads_the_v2_header_and_its_authority_tlv() {
    check("v2");
}
