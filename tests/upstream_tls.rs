//! TLS to backends ("re-encrypt"): tlsplice terminates the client's mutual
//! TLS and speaks mutual TLS to a backend run by servers nobody here wrote
//! (stunnel in server mode in front of a plain backend, `openssl s_server`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// stunnel in server mode: TLS with a required, verified client
/// certificate on `addr`, plaintext to `backend`.
struct Stunnel {
    child: Child,
    addr: SocketAddr,
    log: LogBuf,
}

impl Stunnel {
    fn start(pki: &Pki, backend: SocketAddr) -> Stunnel {
        let addr = unused_port();
        let conf = write_file(
            pki.path(),
            &format!("stunnel-{}.conf", addr.port()),
            format!(
                "foreground = yes\npid =\ndebug = 7\n\n[up]\naccept = {addr}\nconnect = {backend}\n\
                 cert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                pki.server.cert_path.display(),
                pki.server.key_path.display(),
                pki.ca_path.display(),
            ),
        );
        let mut child = Command::new("stunnel4")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stunnel4");
        let log = LogBuf::capture(child.stderr.take().unwrap());
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "stunnel did not listen on {addr}:\n{}",
                log.text()
            );
            thread::sleep(Duration::from_millis(50));
        }
        Stunnel { child, addr, log }
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tlsplice flags for TLS to `backend` with `cert` as the client identity.
fn upstream_args(pki: &Pki, backend: SocketAddr, ca: &Path, cert: &Identity) -> ServeArgs {
    let mut args = ServeArgs::new(pki, backend);
    args.flag("--backend-tls-ca", ca.to_str().unwrap())
        .flag("--backend-tls-cert", cert.cert_path.to_str().unwrap())
        .flag("--backend-tls-key", cert.key_path.to_str().unwrap());
    args
}

/// The access line of the connection from `client`: its fields, with
/// `reason` (the last field, which may hold spaces) whole.
fn access_of(server: &Server, client: SocketAddr) -> std::collections::HashMap<String, String> {
    let line = server
        .log
        .wait_line(WAIT, &["access", &format!("client={client} ")])
        .unwrap_or_else(|| panic!("no access line for {client}:\n{}", server.log.text()));
    let mut access = fields(&line);
    let reason = line.split_once(" reason=").map_or("", |(_, r)| r);
    access.insert("reason".into(), reason.trim().to_string());
    access
}

/// One echo of `msg` on a new connection through `server`, closed with
/// close_notify; returns that connection's access line.
fn echo_once(server: &Server, pki: &Pki, msg: &[u8]) -> std::collections::HashMap<String, String> {
    let mut tls = tls_connect(server.addr(), ClientOpts::new(pki).build()).expect("handshake");
    let local = tls.sock.local_addr().unwrap();
    echo_round_trip(&mut tls, msg);
    close_notify(&mut tls).unwrap();
    let _ = read_until_end(&mut tls);
    access_of(server, local)
}

/// 32 MiB each way at once through tlsplice and stunnel (client
/// certificate required); byte-exact by sha256, clean ends on both sides.
#[test]
fn bulk_32mib_each_way_to_a_backend_requiring_a_client_cert() {
    const SIZE: u64 = 32 << 20;
    let pki = Pki::new();
    let backend = Backend::start(Mode::SinkAndSource {
        send: SIZE,
        seed: 7,
    });
    let stunnel = Stunnel::start(&pki, backend.addr);
    let server = upstream_args(&pki, stunnel.addr, &pki.ca_path, &pki.client).spawn();
    let tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    let local = tls.sock.local_addr().unwrap();
    // stunnel ends both directions when it receives close_notify, so the
    // client closes once its download is complete; both flow at once before.
    bulk_each_way(tls, &backend, (SIZE, 6, 7), ClientClose::AfterDownload);

    let access = access_of(&server, local);
    assert_eq!(access["upstream"], "full", "{access:?}");
    assert_eq!(access["reason"], "done", "{access:?}");
    assert_eq!(access["bytes_up"], SIZE.to_string());
    assert_eq!(access["bytes_down"], SIZE.to_string());
}

/// A client certificate the backend does not trust: the backend refuses
/// it, nothing reaches the plain backend, and tlsplice logs the alert.
#[test]
fn wrong_client_cert_for_the_backend_is_refused_and_logged() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let stunnel = Stunnel::start(&pki, backend.addr);
    let server = upstream_args(&pki, stunnel.addr, &pki.ca_path, &pki.client_other_ca).spawn();
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    let local = tls.sock.local_addr().unwrap();
    tls.sock.set_read_timeout(Some(WAIT)).unwrap();
    // Under TLS 1.3 the backend judges the client certificate after the
    // client's handshake is complete; its alert then ends the connection.
    let _ = tls.write_all(b"must not arrive\n");
    let (got, _) = read_until_end(&mut tls);
    assert!(got.is_empty(), "client got {got:?}");
    let access = access_of(&server, local);
    let reason = &access["reason"];
    assert!(
        reason.starts_with("backend_") && reason.contains("alert"),
        "reason: {reason}"
    );
    assert_eq!(access["bytes_down"], "0");
    assert_eq!(backend.accepted(), 0, "stunnel let the connection through");
    assert!(
        stunnel.log.wait_line(WAIT, &["Rejected by CERT"]).is_some(),
        "stunnel did not reject the certificate:\n{}",
        stunnel.log.text()
    );
}

/// A backend whose certificate does not chain to the configured CA, or
/// does not carry the configured name, is a connect failure with the reason
/// logged: the client gets what it gets when no backend answers.
#[test]
fn untrusted_or_misnamed_backend_certificate_is_refused_and_logged() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let stunnel = Stunnel::start(&pki, backend.addr);
    for (extra, expect) in [
        (None, "certificate signed by an unknown CA"),
        (Some("wrong.example"), "certificate name mismatch"),
    ] {
        let ca = if extra.is_none() {
            &pki.other_ca_path
        } else {
            &pki.ca_path
        };
        let mut args = upstream_args(&pki, stunnel.addr, ca, &pki.client);
        if let Some(name) = extra {
            args.flag("--backend-tls-name", name);
        }
        let server = args.spawn();
        let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
        let local = tls.sock.local_addr().unwrap();
        tls.sock.set_read_timeout(Some(WAIT)).unwrap();
        let (got, _) = read_until_end(&mut tls);
        assert!(got.is_empty(), "client got {got:?}");
        let access = access_of(&server, local);
        let reason = &access["reason"];
        assert!(
            reason.starts_with("backend_unavailable") && reason.contains(expect),
            "expected {expect:?} in: {reason}"
        );
        assert_eq!(access["upstream"], "-");
    }
    assert_eq!(backend.accepted(), 0, "a refused backend got data");
}

/// `openssl s_server -Verify 1` as the backend: it sees the configured SNI
/// and a verified client certificate, and its line-reversing service works
/// through tlsplice.
#[test]
fn sni_is_sent_as_configured_to_openssl_s_server() {
    require_tool("openssl");
    let pki = Pki::new();
    let addr = unused_port();
    let mut s_server = Command::new("openssl")
        .args(["s_server", "-rev", "-naccept", "1", "-Verify", "1"])
        .args(["-accept", &addr.to_string()])
        .arg("-CAfile")
        .arg(&pki.ca_path)
        .arg("-cert")
        .arg(&pki.server.cert_path)
        .arg("-key")
        .arg(&pki.server.key_path)
        .args(["-servername", "localhost"])
        .arg("-cert2")
        .arg(&pki.server.cert_path)
        .arg("-key2")
        .arg(&pki.server.key_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn openssl s_server");
    let out = LogBuf::capture(s_server.stdout.take().unwrap());
    assert!(out.wait_line(WAIT, &["ACCEPT"]).is_some(), "{}", out.text());

    let mut args = upstream_args(&pki, addr, &pki.ca_path, &pki.client);
    args.flag("--backend-tls-name", "localhost");
    let server = args.spawn();
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&pki).build()).expect("handshake");
    tls.sock.set_read_timeout(Some(WAIT)).unwrap();
    tls.write_all(b"upstream tls\n").unwrap();
    let mut reply = [0u8; 13];
    tls.read_exact(&mut reply).expect("reply from s_server");
    assert_eq!(&reply, b"slt maertspu\n");
    // s_server (-naccept 1) exits once tlsplice closes its connection,
    // flushing what it printed about it.
    close_notify(&mut tls).unwrap();
    let _ = read_until_end(&mut tls);
    let exited = wait_child(&mut s_server, WAIT);
    assert!(exited.is_some(), "s_server did not exit");
    assert!(
        out.wait_line(WAIT, &["Hostname in TLS extension: \"localhost\""])
            .is_some(),
        "s_server did not see SNI localhost:\n{}",
        out.text()
    );
}

/// After the first connection to a backend, later ones resume the upstream
/// session: the access log and the metrics count full and resumed.
#[test]
fn later_connections_resume_the_upstream_session() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let stunnel = Stunnel::start(&pki, backend.addr);
    let admin = unused_port();
    let mut args = upstream_args(&pki, stunnel.addr, &pki.ca_path, &pki.client);
    // One worker, so every connection shares the one session store.
    args.set("--workers", "1")
        .flag("--admin", &admin.to_string());
    let server = args.spawn();
    let kinds: Vec<String> = (0..3)
        .map(|i| echo_once(&server, &pki, format!("message {i}\n").as_bytes())["upstream"].clone())
        .collect();
    assert_eq!(kinds, ["full", "resumed", "resumed"]);

    // The counters are updated just after the access line is written.
    let want = [
        "tlsplice_upstream_handshakes_total{kind=\"full\"} 1\n",
        "tlsplice_upstream_handshakes_total{kind=\"resumed\"} 2\n",
    ];
    let deadline = Instant::now() + WAIT;
    loop {
        let mut http = TcpStream::connect(admin).unwrap();
        http.set_read_timeout(Some(WAIT)).unwrap();
        http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        http.read_to_string(&mut body).unwrap();
        if want.iter().all(|w| body.contains(w)) {
            break;
        }
        assert!(Instant::now() < deadline, "metrics lack {want:?}:\n{body}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A backend that fails the TLS handshake (here: a plain echo server, which
/// answers the ClientHello with itself) is skipped like a refused one: the
/// connection goes to the next backend.
#[test]
fn a_failed_backend_handshake_moves_on_to_the_next_backend() {
    let pki = Pki::new();
    let plain = Backend::echo();
    let backend = Backend::echo();
    let stunnel = Stunnel::start(&pki, backend.addr);
    let mut args = upstream_args(&pki, plain.addr, &pki.ca_path, &pki.client);
    // One worker: its round robin starts at the first backend.
    args.set("--workers", "1")
        .flag("--backend", &stunnel.addr.to_string());
    let server = args.spawn();
    for i in 0..2 {
        let access = echo_once(&server, &pki, format!("attempt {i}\n").as_bytes());
        assert_eq!(access["backend"], stunnel.addr.to_string(), "{access:?}");
        assert_eq!(access["reason"], "done", "{access:?}");
    }
    assert!(plain.accepted() >= 1, "the plain backend was never tried");
    assert!(plain.bytes_in() > 0, "no ClientHello reached it");
}

/// A config file: the listener's route sends to a `[[pool]]` whose
/// `backend_tls` presents a PKCS#12 client identity (password from a file)
/// and does not verify the backend (`verify = false`, no CA at all). The
/// backend (stunnel) requires and verifies the client certificate; data
/// flows both ways and the access line names the pool's backend. The
/// backend session survives a reload.
#[test]
fn a_pool_with_backend_tls_from_a_config_file() {
    require_tool("openssl");
    let pki = Pki::new();
    let backend = Backend::echo();
    let stunnel = Stunnel::start(&pki, backend.addr);
    let p12 = pki.path().join("to-backend.p12");
    export_pkcs12(&pki.client, &p12, "upstr3am");
    write_file(pki.path(), "to-backend.pass", "upstr3am\n");
    let config = write_file(
        pki.path(),
        "tlsplice.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
             pool = \"secure\"\n\n[[pool]]\nname = \"secure\"\nbackends = [\"{}\"]\n\
             backend_tls = {{ verify = false, cert = \"to-backend.p12\", cert_password_file = \"to-backend.pass\" }}\n",
            pki.server.cert_path, pki.server.key_path, pki.ca_path, stunnel.addr
        ),
    );
    let server = Server::spawn_args(
        &[
            "serve".into(),
            "--config".into(),
            config.display().to_string(),
            "--workers".into(),
            "1".into(),
        ],
        1,
    );
    assert!(
        server
            .log
            .text()
            .contains("backend certificates are not verified"),
        "verify = false is warned about:\n{}",
        server.log.text()
    );
    let upstream_of_one = |msg: &[u8]| {
        let access = echo_once(&server, &pki, msg);
        assert_eq!(access["backend"], stunnel.addr.to_string(), "{access:?}");
        assert_eq!(access["reason"], "done", "{access:?}");
        access["upstream"].clone()
    };
    assert_eq!(upstream_of_one(b"through a TLS pool\n"), "full");
    // A reload that leaves the pool's TLS material alone keeps its session
    // store: the next connection still resumes.
    server.signal(libc::SIGHUP);
    assert!(
        server.log.wait_line(WAIT, &["reloaded"]).is_some(),
        "{}",
        server.log.text()
    );
    assert_eq!(upstream_of_one(b"after a reload\n"), "resumed");
    assert_eq!(backend.accepted(), 2);
}

/// `--backend-tls-no-session-reuse` (HAProxy's `no-ssl-reuse`): every
/// connection pays a full handshake with the backend.
#[test]
fn session_reuse_off_gives_a_full_handshake_each_time() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let stunnel = Stunnel::start(&pki, backend.addr);
    let mut args = upstream_args(&pki, stunnel.addr, &pki.ca_path, &pki.client);
    args.set("--workers", "1")
        .args
        .push("--backend-tls-no-session-reuse".into());
    let server = args.spawn();
    let kinds: Vec<String> = (0..3)
        .map(|i| echo_once(&server, &pki, format!("message {i}\n").as_bytes())["upstream"].clone())
        .collect();
    assert_eq!(kinds, ["full", "full", "full"]);
}
