//! OCSP checking of client certificates against `openssl ocsp` running as
//! the responder on loopback, behind a counting TCP proxy so the tests see
//! how often tlsplice asked.

mod common;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use rustls::AlertDescription;

/// `openssl ocsp` answering for the test CA (signing with the CA's own key)
/// from an index with one good and one revoked client.
struct Responder {
    child: Child,
    addr: SocketAddr,
    log: LogBuf,
}

/// The serial as openssl's index writes it: upper-case hex, no leading
/// zero bytes.
fn index_serial(id: &Identity) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(&id.cert_der).unwrap();
    let raw = cert.raw_serial();
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len() - 1);
    hex(&raw[start..]).to_uppercase()
}

impl Responder {
    fn start(pki: &Pki, good: &[&Identity], revoked: &[&Identity]) -> Responder {
        Self::start_at(pki, unused_port(), good, revoked)
    }

    fn start_at(
        pki: &Pki,
        addr: SocketAddr,
        good: &[&Identity],
        revoked: &[&Identity],
    ) -> Responder {
        require_tool("openssl");
        let mut index = String::new();
        for id in good {
            index.push_str(&format!(
                "V\t491231235959Z\t\t{}\tunknown\t/CN=good\n",
                index_serial(id)
            ));
        }
        for id in revoked {
            index.push_str(&format!(
                "R\t491231235959Z\t240101000000Z\t{}\tunknown\t/CN=revoked\n",
                index_serial(id)
            ));
        }
        let index_path = write_file(pki.path(), "index.txt", index);
        let ca = pki.ca_path.to_str().unwrap();
        let mut child = Command::new("openssl")
            .args(["ocsp", "-index"])
            .arg(&index_path)
            .args(["-port", &addr.port().to_string(), "-rsigner", ca, "-CA", ca])
            .arg("-rkey")
            .arg(pki.path().join("ca.key"))
            .args(["-nmin", "10", "-ignore_err"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openssl ocsp");
        let log = LogBuf::capture(child.stderr.take().unwrap());
        let _stdout = LogBuf::capture(child.stdout.take().unwrap());
        // Not a probe connection: openssl ocsp serves one connection at a
        // time and would wait on an empty one for good.
        if log
            .wait_line(WAIT, &["waiting for OCSP client connections"])
            .is_none()
        {
            panic!(
                "openssl ocsp did not start on {addr}; stderr:\n{}",
                log.text()
            );
        }
        Responder { child, addr, log }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("---- openssl ocsp stderr ----\n{}", self.log.text());
        }
    }
}

/// Forwards each connection to `target`, counting them: one per OCSP query.
struct CountingProxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl CountingProxy {
    fn start(target: SocketAddr) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (connections.clone(), stop.clone());
        thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        thread::spawn(move || forward(client, target));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        CountingProxy {
            addr,
            connections,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn forward(client: TcpStream, target: SocketAddr) {
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    for s in [&client, &server] {
        let _ = s.set_read_timeout(Some(WAIT));
    }
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let _ = io::copy(&mut s_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = up.join();
}

/// Admitted (an echo round trip works) or the alert `client` got.
fn outcome(server: &Server, client: &Identity, pki: &Pki) -> Result<(), rustls::Error> {
    admission(server, &ClientOpts::new(pki).identity(Some(client)))
}

/// `openssl s_client` (TLS 1.2, so the verdict comes inside the handshake)
/// with `client`'s certificate: its stderr.
fn s_client(server: &Server, pki: &Pki, client: &Identity) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-tls1_2",
        "-connect",
        &server.addr().to_string(),
    ])
    .arg("-CAfile")
    .arg(&pki.ca_path)
    .arg("-cert")
    .arg(&client.cert_path)
    .arg("-key")
    .arg(&client.key_path)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let (_, _, stderr) = run_bounded(cmd, WAIT);
    stderr
}

#[test]
fn good_admitted_revoked_refused_and_answers_cached() {
    let pki = Pki::new();
    let good = pki.issue_client("ocsp-good", None);
    let revoked = pki.issue_client("ocsp-revoked", None);
    let responder = Responder::start(&pki, &[&good], &[&revoked]);
    let proxy = CountingProxy::start(responder.addr);
    let backend = Backend::echo();
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.flag("--client-ocsp-responder", &proxy.url());
    let server = args.spawn();

    assert_eq!(outcome(&server, &good, &pki), Ok(()));
    assert_eq!(proxy.count(), 1, "the first handshake asks the responder");
    // The same chain again (both workers share the cache): no new query.
    for _ in 0..3 {
        assert_eq!(outcome(&server, &good, &pki), Ok(()));
    }
    assert_eq!(
        proxy.count(),
        1,
        "later handshakes are served from the cache"
    );

    assert_eq!(
        outcome(&server, &revoked, &pki),
        Err(rustls::Error::AlertReceived(
            AlertDescription::CertificateRevoked
        ))
    );
    assert_eq!(proxy.count(), 2);
    let stderr = s_client(&server, &pki, &revoked);
    assert!(
        stderr.contains("alert certificate revoked"),
        "openssl s_client did not see certificate_revoked:\n{stderr}"
    );
    assert_eq!(
        backend.accepted(),
        4,
        "only the good client reached the backend"
    );
    let line = server
        .log
        .wait_line(WAIT, &["reports the client certificate revoked"])
        .unwrap_or_else(|| panic!("refusal logged:\n{}", server.log.text()));
    assert!(line.contains(&proxy.url()), "{line}");
    server
        .log
        .wait_line(WAIT, &["handshake_failed", "Revoked"])
        .unwrap_or_else(|| panic!("refusal in the access log:\n{}", server.log.text()));
}

#[test]
fn responder_down_refuses_when_closed_and_admits_when_open() {
    let pki = Pki::new();
    let client = pki.issue_client("ocsp-client", None);
    let backend = Backend::echo();
    let dead = format!("http://{}/", unused_port());

    let mut args = ServeArgs::new(&pki, backend.addr);
    args.flag("--client-ocsp-responder", &dead)
        .flag("--client-ocsp-timeout", "1s");
    let closed = args.spawn();
    assert_eq!(
        outcome(&closed, &client, &pki),
        Err(rustls::Error::AlertReceived(
            AlertDescription::CertificateUnknown
        ))
    );
    let line = closed
        .log
        .wait_line(WAIT, &["unreachable", "refusing the client"])
        .unwrap_or_else(|| panic!("reason logged:\n{}", closed.log.text()));
    assert!(line.contains(&dead), "{line}");
    let stderr = s_client(&closed, &pki, &client);
    assert!(
        stderr.contains("alert certificate unknown"),
        "openssl s_client did not see certificate_unknown:\n{stderr}"
    );
    assert_eq!(backend.accepted(), 0);

    args.flag("--client-ocsp-fail", "open");
    let open = args.spawn();
    assert_eq!(outcome(&open, &client, &pki), Ok(()));
    open.log
        .wait_line(WAIT, &["unreachable", "admitting the client"])
        .unwrap_or_else(|| panic!("fail-open logged:\n{}", open.log.text()));
    assert_eq!(backend.accepted(), 1);
}

#[test]
fn responder_from_the_certificate_aia_url() {
    let pki = Pki::new();
    // The certificates name the proxy, which forwards to where the
    // responder will listen once it knows their serials.
    let responder_addr = unused_port();
    let proxy = CountingProxy::start(responder_addr);
    let good = pki.issue_client("aia-good", Some(&proxy.url()));
    let revoked = pki.issue_client("aia-revoked", Some(&proxy.url()));
    let plain = pki.issue_client("aia-none", None);
    let _responder = Responder::start_at(&pki, responder_addr, &[&good], &[&revoked]);
    let backend = Backend::echo();
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.flag("--client-ocsp", "check");
    let server = args.spawn();

    assert_eq!(outcome(&server, &good, &pki), Ok(()));
    assert_eq!(
        outcome(&server, &revoked, &pki),
        Err(rustls::Error::AlertReceived(
            AlertDescription::CertificateRevoked
        ))
    );
    assert_eq!(proxy.count(), 2);
    // No AIA URL and no configured responder: nobody to ask, refused.
    assert_eq!(
        outcome(&server, &plain, &pki),
        Err(rustls::Error::AlertReceived(
            AlertDescription::CertificateUnknown
        ))
    );
    server
        .log
        .wait_line(WAIT, &["no AIA OCSP URL"])
        .unwrap_or_else(|| panic!("reason logged:\n{}", server.log.text()));
    assert_eq!(backend.accepted(), 1);
}
