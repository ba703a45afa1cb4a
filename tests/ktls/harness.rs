//! A self-contained harness for the kernel TLS tests: a throwaway PKI, a
//! backend on std threads, the tlsplice process and its log, a rustls client
//! driven over a non-blocking socket, deterministic data streams, and
//! `/proc/net/tls_stat`.
//!
//! Everything is bounded: every wait has a deadline, sockets have timeouts,
//! and a tlsplice process is killed when its `Server` is dropped.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
    SupportedProtocolVersion,
};
use sha2::{Digest, Sha256};

pub const MIB: u64 = 1024 * 1024;

// ------------------------------------------------------------------ gate

static SERIAL: Mutex<()> = Mutex::new(());

/// Whether the running kernel offers the `tls` ULP.
pub fn ktls_available() -> bool {
    fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .map(|s| s.split_whitespace().any(|w| w == "tls"))
        .unwrap_or(false)
}

/// `TLSPLICE_REQUIRE_KTLS=1`: a kernel without kTLS is a failure, not a skip.
pub fn ktls_required() -> bool {
    std::env::var("TLSPLICE_REQUIRE_KTLS").is_ok_and(|v| v == "1")
}

/// A running test: holds the lock that serialises these tests (they compare
/// system-wide kTLS counters and count descriptors) and prints the wall time.
pub struct TestRun {
    name: &'static str,
    started: Instant,
    _serial: MutexGuard<'static, ()>,
}

impl Drop for TestRun {
    fn drop(&mut self) {
        let verdict = if thread::panicking() { "FAILED" } else { "ok" };
        println!(
            "[ktls] {} {verdict} in {:.1}s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// Starts a test, or returns `None` (after printing why) when the kernel has
/// no kTLS and `TLSPLICE_REQUIRE_KTLS` is not set.
pub fn begin(name: &'static str) -> Option<TestRun> {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !ktls_available() {
        let ulp = fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
            .unwrap_or_else(|e| format!("<{e}>"));
        assert!(
            !ktls_required(),
            "TLSPLICE_REQUIRE_KTLS=1 but the kernel has no kTLS (tcp_available_ulp: {:?})",
            ulp.trim()
        );
        println!("skipped: kernel has no kTLS");
        return None;
    }
    println!("[ktls] {name} ...");
    Some(TestRun {
        name,
        started: Instant::now(),
        _serial: serial,
    })
}

/// MiB per direction for the bulk transfers (`TLSPLICE_KTLS_MIB`, default 32).
pub fn bulk_mib() -> u64 {
    env_u64("TLSPLICE_KTLS_MIB", 32)
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A deadline for moving `bytes` in total: generous, since the VM emulates
/// the CPU (about 1 MiB/s there is the floor), but always bounded.
pub fn transfer_deadline(bytes: u64) -> Instant {
    Instant::now() + Duration::from_secs(60 + bytes / MIB)
}

// ------------------------------------------------------------------- PKI

/// A CA, a server certificate for `localhost` and a client certificate,
/// written as PEM files into a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
    ca_der: CertificateDer<'static>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: Vec<u8>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name = dn("tlsplice ktls test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).expect("ca cert");

        let server_key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.distinguished_name = dn("localhost");
        let server = params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server cert");

        let client_key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = dn("client");
        let client = params
            .signed_by(&client_key, &ca, &ca_key)
            .expect("client cert");

        fs::write(dir.path().join("ca.crt"), ca.pem()).expect("write ca");
        fs::write(dir.path().join("server.crt"), server.pem()).expect("write cert");
        fs::write(dir.path().join("server.key"), server_key.serialize_pem()).expect("write key");
        // tlsplice's identity toward TLS backends (`--backend-tls-*`).
        fs::write(dir.path().join("client.crt"), client.pem()).expect("write client cert");
        fs::write(dir.path().join("client.key"), client_key.serialize_pem()).expect("write key");
        Pki {
            ca_der: ca.der().clone(),
            client_chain: vec![client.der().clone()],
            client_key: client_key.serialize_der(),
            server_chain: vec![server.der().clone()],
            server_key: server_key.serialize_der(),
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The client's end-entity certificate.
    pub fn client_cert(&self) -> &CertificateDer<'static> {
        &self.client_chain[0]
    }

    /// A rustls client configuration with the client certificate, limited
    /// to `version` and, when given, to one cipher suite.
    pub fn client_config(
        &self,
        version: &'static SupportedProtocolVersion,
        suite: Option<CipherSuite>,
    ) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if let Some(suite) = suite {
            provider.cipher_suites.retain(|s| s.suite() == suite);
            assert_eq!(provider.cipher_suites.len(), 1, "suite {suite:?}");
        }
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("ca root");
        let config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(
                self.client_chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.client_key.clone())),
            )
            .expect("client cert");
        Arc::new(config)
    }
}

impl Pki {
    /// A rustls server configuration (the `localhost` certificate) that
    /// requires a client certificate from this CA, limited to `version` and
    /// one cipher suite: a TLS backend's.
    pub fn backend_config(
        &self,
        version: &'static SupportedProtocolVersion,
        suite: CipherSuite,
    ) -> Arc<ServerConfig> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites.retain(|s| s.suite() == suite);
        assert_eq!(provider.cipher_suites.len(), 1, "suite {suite:?}");
        let provider = Arc::new(provider);
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("ca root");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .expect("client verifier");
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                self.server_chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone())),
            )
            .expect("server cert");
        Arc::new(config)
    }

    /// `--backend-tls-*` flags for TLS to a [`TlsFront`] of this PKI.
    pub fn backend_tls_flags(&self) -> Vec<String> {
        let path = |name: &str| self.path(name).display().to_string();
        vec![
            "--backend-tls-ca".into(),
            path("ca.crt"),
            "--backend-tls-cert".into(),
            path("client.crt"),
            "--backend-tls-key".into(),
            path("client.key"),
            "--backend-tls-name".into(),
            "localhost".into(),
        ]
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

// ------------------------------------------------------------ data streams

/// A deterministic byte stream (xorshift64*), the same for any chunking.
pub struct Gen {
    state: u64,
    pending: [u8; 8],
    pending_len: usize,
}

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            pending: [0; 8],
            pending_len: 0,
        }
    }

    fn word(&mut self) -> [u8; 8] {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes()
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while self.pending_len > 0 && i < out.len() {
            out[i] = self.pending[8 - self.pending_len];
            self.pending_len -= 1;
            i += 1;
        }
        let rest = &mut out[i..];
        let mut words = rest.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.word());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.pending = self.word();
            let n = tail.len();
            tail.copy_from_slice(&self.pending[..n]);
            self.pending_len = 8 - n;
        }
    }
}

/// The sending side of a stream: generates, counts and hashes.
pub struct Source {
    gen: Gen,
    hasher: Sha256,
    pub total: u64,
    pub produced: u64,
}

impl Source {
    pub fn new(seed: u64, total: u64) -> Self {
        Source {
            gen: Gen::new(seed),
            hasher: Sha256::new(),
            total,
            produced: 0,
        }
    }

    /// The next chunk (at most `buf.len()`, never past `total`).
    pub fn next<'a>(&mut self, buf: &'a mut [u8]) -> &'a [u8] {
        let n = (buf.len() as u64).min(self.total - self.produced) as usize;
        self.gen.fill(&mut buf[..n]);
        self.hasher.update(&buf[..n]);
        self.produced += n as u64;
        &buf[..n]
    }

    pub fn done(&self) -> bool {
        self.produced == self.total
    }

    /// sha256 of everything produced so far.
    pub fn digest(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }
}

/// The receiving side: compares with the expected stream as it goes (to
/// name the first differing offset) and hashes what arrived.
pub struct Verifier {
    gen: Gen,
    expected: Vec<u8>,
    hasher: Sha256,
    pub count: u64,
    pub first_mismatch: Option<u64>,
}

impl Verifier {
    pub fn new(seed: u64) -> Self {
        Verifier {
            gen: Gen::new(seed),
            expected: Vec::new(),
            hasher: Sha256::new(),
            count: 0,
            first_mismatch: None,
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.expected.resize(data.len(), 0);
        self.gen.fill(&mut self.expected);
        if self.first_mismatch.is_none() && data != &self.expected[..] {
            let at = data
                .iter()
                .zip(&self.expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            self.first_mismatch = Some(self.count + at as u64);
        }
        self.hasher.update(data);
        self.count += data.len() as u64;
    }

    pub fn digest(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }
}

/// sha256 of the first `len` bytes of the stream `seed`.
pub fn stream_digest(seed: u64, len: u64) -> [u8; 32] {
    let mut src = Source::new(seed, len);
    let mut buf = vec![0u8; 256 * 1024];
    while !src.done() {
        src.next(&mut buf);
    }
    src.digest()
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

// ----------------------------------------------------------------- backend

/// What the backend saw on one connection.
#[derive(Debug, Clone)]
pub struct BackendReport {
    pub peer: SocketAddr,
    pub received: u64,
    pub received_sha: [u8; 32],
    /// The read side ended with EOF (not an error or a timeout).
    pub eof: bool,
    pub read_error: Option<String>,
    pub sent: u64,
    pub sent_sha: [u8; 32],
    pub write_error: Option<String>,
    /// For `SinkThenSend`: bytes it had sent when it saw EOF (always 0 there).
    pub sent_before_eof: u64,
}

/// How the backend treats a connection.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Writes back what it reads; at EOF shuts down its write side.
    Echo,
    /// Reads to EOF while writing `send` bytes of stream `seed`, then shuts
    /// down its write side.
    Concurrent { send: u64, seed: u64 },
    /// Reads to EOF, then writes `send` bytes of stream `seed` and shuts down.
    SinkThenSend { send: u64, seed: u64 },
    /// Writes `send` bytes of stream `seed`, shuts down its write side, then
    /// reads to EOF.
    SendThenSink { send: u64, seed: u64 },
}

/// A TCP backend on 127.0.0.1 serving every connection on its own thread.
pub struct Backend {
    pub addr: SocketAddr,
    reports: Receiver<BackendReport>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<thread::JoinHandle<()>>,
}

const BACKEND_IO_TIMEOUT: Duration = Duration::from_secs(120);

impl Backend {
    pub fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let (tx, reports) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let accept_thread = thread::Builder::new()
            .name("backend-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let tx = tx.clone();
                    let _ = thread::Builder::new()
                        .name("backend-conn".into())
                        .spawn(move || {
                            let report = serve_backend(conn, mode);
                            let _ = tx.send(report);
                        });
                }
            })
            .expect("spawn backend");
        Backend {
            addr,
            reports,
            stop,
            accept_thread: Some(accept_thread),
        }
    }

    /// The next finished connection's report.
    pub fn report(&self, timeout: Duration) -> BackendReport {
        self.reports
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no backend connection finished within {timeout:?}: {e}"))
    }

    pub fn try_report(&self, timeout: Duration) -> Option<BackendReport> {
        self.reports.recv_timeout(timeout).ok()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_backend(conn: TcpStream, mode: Mode) -> BackendReport {
    let peer = conn
        .peer_addr()
        .unwrap_or_else(|_| "0.0.0.0:0".parse().unwrap());
    let _ = conn.set_read_timeout(Some(BACKEND_IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(BACKEND_IO_TIMEOUT));
    let _ = conn.set_nodelay(true);
    let mut report = BackendReport {
        peer,
        received: 0,
        received_sha: [0; 32],
        eof: false,
        read_error: None,
        sent: 0,
        sent_sha: [0; 32],
        write_error: None,
        sent_before_eof: 0,
    };
    let sink = |conn: &TcpStream, report: &mut BackendReport| {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut rd = conn;
        loop {
            match rd.read(&mut buf) {
                Ok(0) => {
                    report.eof = true;
                    break;
                }
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    report.received += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    report.read_error = Some(e.to_string());
                    break;
                }
            }
        }
        report.received_sha = hasher.finalize().into();
    };
    let send = |conn: &TcpStream, send: u64, seed: u64| -> (u64, [u8; 32], Option<String>) {
        let mut src = Source::new(seed, send);
        let mut buf = vec![0u8; 256 * 1024];
        let mut wr = conn;
        let mut sent = 0u64;
        let mut err = None;
        while !src.done() {
            let chunk = src.next(&mut buf);
            if let Err(e) = wr.write_all(chunk) {
                err = Some(e.to_string());
                break;
            }
            sent += chunk.len() as u64;
        }
        if err.is_none() {
            let _ = conn.shutdown(Shutdown::Write);
        }
        (sent, src.digest(), err)
    };
    match mode {
        Mode::Echo => {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let (mut rd, mut wr) = (&conn, &conn);
            loop {
                match rd.read(&mut buf) {
                    Ok(0) => {
                        report.eof = true;
                        break;
                    }
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        report.received += n as u64;
                        if let Err(e) = wr.write_all(&buf[..n]) {
                            report.write_error = Some(e.to_string());
                            break;
                        }
                        report.sent += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        report.read_error = Some(e.to_string());
                        break;
                    }
                }
            }
            report.received_sha = hasher.finalize().into();
            report.sent_sha = report.received_sha;
            let _ = conn.shutdown(Shutdown::Write);
        }
        Mode::Concurrent { send: n, seed } => {
            let writer_conn = conn.try_clone().expect("clone backend socket");
            let writer = thread::spawn(move || send(&writer_conn, n, seed));
            sink(&conn, &mut report);
            let (sent, sha, err) = writer.join().expect("backend writer");
            report.sent = sent;
            report.sent_sha = sha;
            report.write_error = err;
        }
        Mode::SinkThenSend { send: n, seed } => {
            sink(&conn, &mut report);
            report.sent_before_eof = 0;
            if report.eof {
                let (sent, sha, err) = send(&conn, n, seed);
                report.sent = sent;
                report.sent_sha = sha;
                report.write_error = err;
            }
        }
        Mode::SendThenSink { send: n, seed } => {
            let (sent, sha, err) = send(&conn, n, seed);
            report.sent = sent;
            report.sent_sha = sha;
            report.write_error = err;
            sink(&conn, &mut report);
        }
    }
    report
}

// ------------------------------------------------------------ tlsplice process

/// tlsplice's stderr, line by line, as it arrives.
struct Log {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// A running `tlsplice serve`.
/// What a [`TlsFront`] saw of one connection.
#[derive(Debug)]
pub struct FrontReport {
    /// The peer (tlsplice) sent close_notify before its FIN.
    pub close_notify: bool,
    /// The handshake resumed a session.
    pub resumed: bool,
    /// Why the connection failed, if it did.
    pub error: Option<String>,
}

/// A TLS backend: terminates TLS (client certificate required) in front
/// of a plain [`Backend`], on std threads, with rustls.
pub struct TlsFront {
    pub addr: SocketAddr,
    reports: Receiver<FrontReport>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<thread::JoinHandle<()>>,
}

impl TlsFront {
    pub fn start(config: Arc<ServerConfig>, inner: SocketAddr) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind TLS front");
        let addr = listener.local_addr().unwrap();
        let (tx, reports) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let accept_thread = thread::Builder::new()
            .name("front-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (tx, config) = (tx.clone(), config.clone());
                    let _ = thread::Builder::new()
                        .name("front-conn".into())
                        .spawn(move || {
                            let _ = tx.send(front_conn(conn, config, inner));
                        });
                }
            })
            .expect("spawn TLS front");
        TlsFront {
            addr,
            reports,
            stop,
            accept_thread: Some(accept_thread),
        }
    }

    /// The next finished connection's report.
    pub fn report(&self, timeout: Duration) -> FrontReport {
        self.reports
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no TLS front connection finished within {timeout:?}: {e}"))
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

/// One TLS front connection: TLS from `sock` to plaintext on a new
/// connection to `inner`, both ways at once. The socket toward tlsplice is
/// written under the connection's lock, so records go out in sequence.
fn front_conn(sock: TcpStream, config: Arc<ServerConfig>, inner: SocketAddr) -> FrontReport {
    let mut report = FrontReport {
        close_notify: false,
        resumed: false,
        error: None,
    };
    let mut conn = ServerConnection::new(config).expect("server conn");
    // The inner backend may send before the handshake is done: hold it all.
    conn.set_buffer_limit(None);
    let tls = Arc::new(Mutex::new(conn));
    let plain = TcpStream::connect(inner).expect("connect inner backend");
    for s in [&sock, &plain] {
        s.set_read_timeout(Some(BACKEND_IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(BACKEND_IO_TIMEOUT)).unwrap();
    }
    let (mut sock_out, mut plain_in) = (sock.try_clone().unwrap(), plain.try_clone().unwrap());
    let down_tls = tls.clone();
    // Inner backend -> TLS -> tlsplice; its EOF becomes close_notify + FIN.
    let down = thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match plain_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Records leave in the order they were made: the socket is
            // written under the lock.
            let mut out = Vec::new();
            let mut c = down_tls.lock().unwrap();
            c.writer().write_all(&buf[..n]).unwrap();
            while c.wants_write() {
                c.write_tls(&mut out).unwrap();
            }
            if sock_out.write_all(&out).is_err() {
                return;
            }
        }
        let mut out = Vec::new();
        {
            let mut c = down_tls.lock().unwrap();
            c.send_close_notify();
            while c.wants_write() {
                c.write_tls(&mut out).unwrap();
            }
        }
        let _ = sock_out.write_all(&out);
        let _ = sock_out.shutdown(Shutdown::Write);
    });
    // tlsplice -> TLS -> inner backend; close_notify or FIN becomes FIN.
    let mut sock_reply = sock.try_clone().unwrap();
    let (mut sock_in, mut plain_out) = (sock, plain);
    let mut buf = vec![0u8; 64 * 1024];
    'read: loop {
        let n = match sock_in.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                report.error = Some(format!("read: {e}"));
                break;
            }
        };
        let (mut plaintext, mut out, mut closed) = (Vec::new(), Vec::new(), false);
        {
            let mut c = tls.lock().unwrap();
            let mut rest = &buf[..n];
            let mut chunk = [0u8; 16 * 1024];
            while !rest.is_empty() {
                if let Err(e) = c.read_tls(&mut rest) {
                    report.error = Some(format!("read_tls: {e}"));
                    break 'read;
                }
                match c.process_new_packets() {
                    Ok(state) => closed |= state.peer_has_closed(),
                    Err(e) => {
                        report.error = Some(format!("TLS: {e}"));
                        while c.wants_write() {
                            let _ = c.write_tls(&mut out);
                        }
                        let _ = sock_reply.write_all(&out);
                        break 'read;
                    }
                }
                // Drained after every step: rustls takes no more input
                // while its received-plaintext buffer is full.
                loop {
                    match c.reader().read(&mut chunk) {
                        Ok(0) => break,
                        Ok(m) => plaintext.extend_from_slice(&chunk[..m]),
                        Err(_) => break,
                    }
                }
            }
            report.resumed = c.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            while c.wants_write() {
                c.write_tls(&mut out).unwrap();
            }
            if !out.is_empty() && sock_reply.write_all(&out).is_err() {
                break;
            }
        }
        if !plaintext.is_empty() && plain_out.write_all(&plaintext).is_err() {
            report.error = Some("inner backend write failed".into());
            break;
        }
        if closed {
            report.close_notify = true;
            break;
        }
    }
    let _ = plain_out.shutdown(Shutdown::Write);
    let _ = down.join();
    report
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    log: Arc<Log>,
    reader: Option<thread::JoinHandle<()>>,
}

/// The binary under test: `TLSPLICE_BIN`, else the one cargo built.
pub fn tlsplice_bin() -> PathBuf {
    match std::env::var_os("TLSPLICE_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_tlsplice")),
    }
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Server {
    /// Starts tlsplice in front of `backend` with `--ktls <ktls>` and waits
    /// for its `listening on` line.
    pub fn start(pki: &Pki, backend: SocketAddr, ktls: &str) -> Server {
        Self::start_with(pki, backend, ktls, &[])
    }

    pub fn start_with(pki: &Pki, backend: SocketAddr, ktls: &str, extra: &[&str]) -> Server {
        Self::start_env(pki, backend, ktls, extra, &[])
    }

    /// Like [`Server::start_with`], with extra environment variables (fault
    /// injection).
    pub fn start_env(
        pki: &Pki,
        backend: SocketAddr,
        ktls: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut cmd = Command::new(tlsplice_bin());
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--cert")
            .arg(pki.path("server.crt"))
            .arg("--key")
            .arg(pki.path("server.key"))
            .arg("--client-ca")
            .arg(pki.path("ca.crt"))
            .args(["--client-auth", "required"])
            .arg("--backend")
            .arg(backend.to_string())
            .args(["--workers", "1", "--ktls", ktls])
            .args(extra)
            .envs(env.iter().copied());
        Self::launch(cmd)
    }

    /// Starts tlsplice from a config file: the listener [`Server::start`]
    /// makes (kTLS auto), with `extra` TOML tables after it.
    pub fn start_config(pki: &Pki, backend: SocketAddr, extra: &str) -> Server {
        let path = pki.path("tlsplice.toml");
        let text = format!(
            "workers = 1\nktls = \"auto\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\
             cert = {:?}\nkey = {:?}\nclient_ca = {:?}\nclient_auth = \"required\"\n\
             backends = [\"{backend}\"]\n{extra}",
            pki.path("server.crt"),
            pki.path("server.key"),
            pki.path("ca.crt"),
        );
        fs::write(&path, text).expect("write config");
        let mut cmd = Command::new(tlsplice_bin());
        cmd.arg("serve").arg("--config").arg(&path);
        Self::launch(cmd)
    }

    /// Runs `cmd` (a `tlsplice serve` command line) with the log captured,
    /// and waits for its `listening on` line.
    fn launch(mut cmd: Command) -> Server {
        let bin = tlsplice_bin();
        cmd.env(
            "RUST_LOG",
            std::env::var("TLSPLICE_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let pid = child.id();
        let log = Arc::new(Log {
            lines: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        });
        let stderr = child.stderr.take().unwrap();
        let log2 = log.clone();
        let reader = thread::Builder::new()
            .name("tlsplice-stderr".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log2.lines.lock().unwrap().push(line);
                    log2.changed.notify_all();
                }
                log2.lines.lock().unwrap().push("<stderr closed>".into());
                log2.changed.notify_all();
            })
            .expect("spawn log reader");
        let mut server = Server {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            pid,
            log,
            reader: Some(reader),
        };
        let line = server
            .wait_line(START_TIMEOUT, |l| {
                l.contains("listening on 127.0.0.1:") || l == "<stderr closed>"
            })
            .unwrap_or_else(|| {
                panic!(
                    "tlsplice printed no `listening on` line within {START_TIMEOUT:?}:\n{}",
                    server.log_text()
                )
            });
        assert!(
            line != "<stderr closed>",
            "tlsplice exited at start ({:?}):\n{}",
            server.child.try_wait(),
            server.log_text()
        );
        let at = line.find("listening on ").unwrap() + "listening on ".len();
        let addr = line[at..].split_whitespace().next().unwrap();
        server.addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
        server
    }

    /// The first log line that satisfies `pred`, waiting up to `timeout`.
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self
                .log
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// The `kernel TLS: ...` start-up line.
    pub fn kernel_tls_line(&self) -> String {
        self.wait_line(Duration::from_secs(5), |l| l.contains("kernel TLS: "))
            .unwrap_or_else(|| panic!("no `kernel TLS:` line:\n{}", self.log_text()))
    }

    /// The access line of the connection from client port `port`.
    pub fn access(&self, port: u16, timeout: Duration) -> Access {
        let needle = format!(" client=127.0.0.1:{port} ");
        let line = self
            .wait_line(timeout, |l| l.contains("access:") && l.contains(&needle))
            .unwrap_or_else(|| {
                panic!(
                    "no access line for client port {port} within {timeout:?}:\n{}",
                    self.log_text()
                )
            });
        Access::parse(&line)
    }

    /// Every access line so far.
    pub fn access_lines(&self) -> Vec<Access> {
        self.log
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("access:") && l.contains(" client="))
            .map(|l| Access::parse(l))
            .collect()
    }

    /// Waits until at least `n` access lines were logged.
    pub fn wait_access_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            let count = lines
                .iter()
                .filter(|l| l.contains("access:") && l.contains(" client="))
                .count();
            if count >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            lines = self
                .log
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    pub fn log_text(&self) -> String {
        let lines = self.log.lines.lock().unwrap();
        let skip = lines.len().saturating_sub(60);
        let mut s = String::new();
        if skip > 0 {
            s.push_str(&format!("  ... ({skip} earlier lines)\n"));
        }
        for l in &lines[skip..] {
            s.push_str("  | ");
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// Open descriptors of the tlsplice process.
    pub fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// The descriptor count once closes in flight have landed (tlsplice
    /// closes through io_uring, a little after the access line): the
    /// lowest count seen until it held still for half a second (at most 5 s).
    pub fn settled_fd_count(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut low = self.fd_count();
        let mut still = 0;
        while still < 5 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            let now = self.fd_count();
            if now < low {
                low = now;
                still = 0;
            } else {
                still += 1;
            }
        }
        low
    }

    pub fn fd_listing(&self) -> String {
        let mut out = Vec::new();
        if let Ok(dir) = fs::read_dir(format!("/proc/{}/fd", self.pid)) {
            for e in dir.flatten() {
                let target = fs::read_link(e.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                out.push(format!("{}->{}", e.file_name().to_string_lossy(), target));
            }
        }
        out.sort();
        out.join(" ")
    }

    /// CPU time (user + system, all threads) the process used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).expect("stat");
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if thread::panicking() {
            eprintln!("tlsplice log (pid {}):\n{}", self.pid, self.log_text());
        }
    }
}

/// An access-log line, split into its fields.
#[derive(Debug, Clone)]
pub struct Access {
    pub line: String,
    pub fields: HashMap<String, String>,
}

/// The access line's fields, in the order tlsplice writes them. Values may
/// contain spaces (reasons, fallbacks), so each runs to the next key.
const ACCESS_KEYS: [&str; 21] = [
    "client",
    "listener",
    "route",
    "sni",
    "subject",
    "identity",
    "tier",
    "alpn",
    "version",
    "suite",
    "backend",
    "upstream",
    "path",
    "ktls_fallback",
    "ktls_offload",
    "ktls_after_bytes",
    "bytes_up",
    "bytes_down",
    "handshake_ms",
    "duration_ms",
    "reason",
];

impl Access {
    pub fn parse(line: &str) -> Access {
        let mut fields = HashMap::new();
        let mut starts = Vec::new();
        let mut from = 0;
        for key in ACCESS_KEYS {
            let pat = format!(" {key}=");
            if let Some(i) = line[from..].find(&pat) {
                let at = from + i;
                starts.push((key, at, at + pat.len()));
                from = at + pat.len();
            }
        }
        for (i, (key, _, vstart)) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(line.len(), |n| n.1);
            fields.insert(key.to_string(), line[*vstart..end].trim().to_string());
        }
        Access {
            line: line.to_string(),
            fields,
        }
    }

    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", |s| s.as_str())
    }

    pub fn num(&self, key: &str) -> u64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number in {:?}", self.line))
    }

    /// Asserts the connection was offloaded to the kernel and ended `done`.
    pub fn assert_ktls_done(&self) {
        assert_eq!(self.get("path"), "ktls", "not offloaded: {}", self.line);
        assert_eq!(self.get("ktls_fallback"), "-", "{}", self.line);
        assert_eq!(self.get("reason"), "done", "{}", self.line);
    }
}

// ------------------------------------------------------------- tls_stat

/// `/proc/net/tls_stat` counters.
#[derive(Debug, Clone, Default)]
pub struct TlsStat(pub HashMap<String, u64>);

impl TlsStat {
    /// Reads the counters; panics when the file is missing under
    /// `TLSPLICE_REQUIRE_KTLS=1` (the VM), returns `None` otherwise.
    pub fn read() -> Option<TlsStat> {
        match fs::read_to_string("/proc/net/tls_stat") {
            Ok(s) => Some(TlsStat(
                s.lines()
                    .filter_map(|l| {
                        let mut it = l.split_whitespace();
                        Some((it.next()?.to_string(), it.next()?.parse().ok()?))
                    })
                    .collect(),
            )),
            Err(e) => {
                assert!(!ktls_required(), "cannot read /proc/net/tls_stat: {e}");
                None
            }
        }
    }

    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }
}

/// Asserts the kernel installed at least `sessions` TX and RX software kTLS
/// states since `before`, and decrypted nothing wrongly.
pub fn assert_offloaded_since(before: &Option<TlsStat>, sessions: u64) {
    let (Some(before), Some(after)) = (before.as_ref(), TlsStat::read()) else {
        return;
    };
    for key in ["TlsTxSw", "TlsRxSw"] {
        let rose = after.get(key).saturating_sub(before.get(key));
        assert!(
            rose >= sessions,
            "/proc/net/tls_stat {key} rose by {rose}, want >= {sessions} (before {:?}, after {:?})",
            before.0,
            after.0
        );
    }
    assert_eq!(
        after.get("TlsDecryptError"),
        before.get("TlsDecryptError"),
        "TlsDecryptError rose: {:?}",
        after.0
    );
}

// ----------------------------------------------------------------- client

/// How a client's read side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Still open.
    Open,
    /// close_notify received (rustls `read` returned `Ok(0)`).
    CloseNotify,
    /// TCP EOF without close_notify.
    TcpEof,
    /// A TLS alert or error.
    Tls(String),
    /// A socket error (reset, ...).
    Io(String),
}

/// A transfer plan for [`Client::transfer`].
pub struct Plan {
    /// Plaintext to send, if any.
    pub send: Option<Source>,
    /// Send close_notify after the last byte.
    pub close_notify: bool,
    /// ... but only once this many bytes were received (request/response).
    pub close_after_recv: Option<u64>,
    /// Start sending only after the peer's close_notify arrived.
    pub send_after_eof: bool,
    /// Call `refresh_traffic_keys()` once this many bytes were handed to rustls.
    pub key_update_at: Option<u64>,
    /// Stop (successfully) once this many bytes were sent and received.
    pub stop_after: Option<(u64, u64)>,
    /// What to expect from the peer.
    pub recv: Verifier,
    pub deadline: Instant,
}

impl Plan {
    pub fn new(send: Option<Source>, recv_seed: u64, deadline: Instant) -> Self {
        Plan {
            send,
            close_notify: true,
            close_after_recv: None,
            send_after_eof: false,
            key_update_at: None,
            stop_after: None,
            recv: Verifier::new(recv_seed),
            deadline,
        }
    }
}

/// What a transfer did.
#[derive(Debug)]
pub struct Outcome {
    pub sent: u64,
    pub sent_sha: [u8; 32],
    /// Digest of what was sent before the KeyUpdate, when one was sent.
    pub sha_before_key_update: Option<(u64, [u8; 32])>,
    pub received: u64,
    pub received_sha: [u8; 32],
    pub first_mismatch: Option<u64>,
    pub end: End,
    pub write_error: Option<String>,
    pub elapsed: Duration,
}

/// What [`Client::handshake_with`] does with the client's last flight.
pub enum Flight {
    /// Write it as it is.
    Write,
    /// Write it in two parts, cut at the offset, with a pause between.
    Split(usize, Duration),
    /// Do not write it; `handshake_with` returns it.
    Hold,
}

/// A rustls client over a non-blocking TCP socket.
pub struct Client {
    pub conn: ClientConnection,
    pub sock: TcpStream,
    pub port: u16,
    end: End,
}

const CHUNK: usize = 64 * 1024;

impl Client {
    pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Client {
        Self::connect_mss(addr, config, None)
    }

    /// Connects with `TCP_MAXSEG` set first, so the client's records reach
    /// tlsplice in segments of at most `mss` bytes.
    pub fn connect_mss(addr: SocketAddr, config: Arc<ClientConfig>, mss: Option<u32>) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        if let Some(mss) = mss {
            socket.set_mss(mss).expect("TCP_MAXSEG");
        }
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to tlsplice {addr}: {e}"));
        let sock: TcpStream = socket.into();
        sock.set_nodelay(true).unwrap();
        sock.set_nonblocking(true).unwrap();
        let port = sock.local_addr().unwrap().port();
        let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap())
            .expect("client connection");
        Client {
            conn,
            sock,
            port,
            end: End::Open,
        }
    }

    /// Waits for `events` on the socket for at most `ms` milliseconds.
    fn poll(&self, events: libc::c_short, ms: i32) -> libc::c_short {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            pfd.revents
        } else {
            0
        }
    }

    /// Writes all of `bytes` to the socket (raw, not through rustls).
    fn write_raw(&mut self, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
        while !bytes.is_empty() {
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "write deadline"));
            }
            match self.sock.write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.poll(libc::POLLOUT, 100);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes what rustls has queued; `Ok(true)` once nothing is left.
    fn flush_some(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn flush_all(&mut self, deadline: Instant) -> io::Result<()> {
        while !self.flush_some()? {
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "flush deadline"));
            }
            self.poll(libc::POLLOUT, 100);
        }
        Ok(())
    }

    /// Reads what the socket has and lets rustls process it; plaintext goes
    /// to `sink`. Records how the read side ended.
    fn read_some(&mut self, sink: &mut dyn FnMut(&[u8])) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            if self.end != End::Open {
                return;
            }
            let tcp_eof = match self.conn.read_tls(&mut self.sock) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.end = End::Io(e.to_string());
                    return;
                }
            };
            if let Err(e) = self.conn.process_new_packets() {
                // Deliver what was decrypted before the error, then stop.
                let _ = self.drain_plaintext(&mut buf, sink);
                self.end = End::Tls(e.to_string());
                let _ = self.flush_some();
                return;
            }
            if let Some(end) = self.drain_plaintext(&mut buf, sink) {
                self.end = end;
                return;
            }
            if tcp_eof {
                self.end = End::TcpEof;
                return;
            }
        }
    }

    fn drain_plaintext(&mut self, buf: &mut [u8], sink: &mut dyn FnMut(&[u8])) -> Option<End> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(0) => return Some(End::CloseNotify),
                Ok(n) => sink(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Some(End::TcpEof),
                Err(e) => return Some(End::Io(e.to_string())),
            }
        }
    }

    /// Completes the handshake. `last_flight` decides what happens to the
    /// client's last flight (its Finished, plus any data queued before the
    /// handshake); a held flight is returned.
    pub fn handshake_with(
        &mut self,
        deadline: Instant,
        last_flight: &mut dyn FnMut(&[u8]) -> Flight,
    ) -> Option<Vec<u8>> {
        let mut early = Vec::new();
        let mut held = None;
        loop {
            assert!(
                Instant::now() < deadline,
                "handshake did not complete in time"
            );
            if self.conn.wants_write() {
                let mut flight = Vec::new();
                while self.conn.wants_write() {
                    self.conn.write_tls(&mut flight).unwrap();
                }
                let what = if self.conn.is_handshaking() {
                    Flight::Write
                } else {
                    last_flight(&flight)
                };
                match what {
                    Flight::Write => self.write_raw(&flight, deadline).expect("write flight"),
                    Flight::Split(at, pause) => {
                        self.write_raw(&flight[..at], deadline)
                            .expect("write first part");
                        thread::sleep(pause);
                        self.write_raw(&flight[at..], deadline)
                            .expect("write second part");
                    }
                    Flight::Hold => held = Some(flight),
                }
                continue;
            }
            if !self.conn.is_handshaking() {
                break;
            }
            let rev = self.poll(libc::POLLIN, 100);
            if rev != 0 {
                self.read_some(&mut |d| early.extend_from_slice(d));
                assert!(self.end == End::Open, "handshake failed: {:?}", self.end);
            }
        }
        assert!(early.is_empty(), "data before the handshake completed");
        held
    }

    /// Completes the handshake, writing every flight as rustls made it.
    pub fn handshake(&mut self, deadline: Instant) {
        self.handshake_with(deadline, &mut |_| Flight::Write);
    }

    /// Writes raw bytes (a held flight) to the socket.
    pub fn send_raw(&mut self, bytes: &[u8], deadline: Instant) {
        self.write_raw(bytes, deadline).expect("write raw");
    }

    /// Runs `plan` to completion: sends (and close_notify) while reading and
    /// verifying, until both directions are finished, `stop_after` is met,
    /// or the deadline passes (an error).
    pub fn transfer(&mut self, plan: &mut Plan) -> Result<Outcome, String> {
        let started = Instant::now();
        let mut buf = vec![0u8; CHUNK];
        let mut pending: Vec<u8> = Vec::new();
        let mut pending_at = 0usize;
        let mut handed = 0u64;
        let mut before_update = None;
        let mut close_sent = false;
        let mut write_error: Option<String> = None;
        let mut flushed = true;
        loop {
            let now = Instant::now();
            if now > plan.deadline {
                return Err(format!(
                    "transfer deadline passed: sent {handed} of {:?}, received {}, read side {:?}",
                    plan.send.as_ref().map(|s| s.total),
                    plan.recv.count,
                    self.end
                ));
            }
            // Feed plaintext to rustls while it takes it.
            let may_send = write_error.is_none()
                && (!plan.send_after_eof || self.end != End::Open)
                && !matches!(self.end, End::Io(_));
            if may_send {
                loop {
                    if pending_at == pending.len() {
                        let Some(src) = plan.send.as_mut() else { break };
                        if src.done() {
                            break;
                        }
                        let mut n = CHUNK;
                        if let Some(at) = plan.key_update_at {
                            if before_update.is_none() && handed < at {
                                n = n.min((at - handed) as usize);
                            }
                        }
                        pending.clear();
                        pending.extend_from_slice(src.next(&mut buf[..n]));
                        pending_at = 0;
                    }
                    let n = match self.conn.writer().write(&pending[pending_at..]) {
                        Ok(n) => n,
                        Err(e) => {
                            write_error = Some(format!("rustls write: {e}"));
                            break;
                        }
                    };
                    if n == 0 {
                        break;
                    }
                    pending_at += n;
                    handed += n as u64;
                    if let Some(at) = plan.key_update_at {
                        if before_update.is_none() && handed == at && pending_at == pending.len() {
                            let src = plan.send.as_ref().unwrap();
                            before_update = Some((handed, src.digest()));
                            self.conn
                                .refresh_traffic_keys()
                                .map_err(|e| format!("refresh_traffic_keys: {e}"))?;
                        }
                    }
                }
                let all_handed =
                    pending_at == pending.len() && plan.send.as_ref().is_none_or(|s| s.done());
                let answered = plan.close_after_recv.is_none_or(|r| plan.recv.count >= r);
                if all_handed && plan.close_notify && !close_sent && answered {
                    self.conn.send_close_notify();
                    close_sent = true;
                }
            }
            if write_error.is_none() {
                match self.flush_some() {
                    Ok(done) => flushed = done,
                    Err(e) => write_error = Some(e.to_string()),
                }
            }

            let send_finished = write_error.is_some()
                || (flushed
                    && pending_at == pending.len()
                    && plan.send.as_ref().is_none_or(|s| s.done())
                    && (close_sent || !plan.close_notify));
            if let Some((s, r)) = plan.stop_after {
                if handed >= s && plan.recv.count >= r {
                    break;
                }
            }
            if send_finished && self.end != End::Open {
                break;
            }

            let mut events = 0;
            if self.end == End::Open {
                events |= libc::POLLIN;
            }
            if !flushed && write_error.is_none() {
                events |= libc::POLLOUT;
            }
            if events == 0 {
                // Read side over, waiting to be allowed to send: nothing to wait for.
                if !may_send || send_finished {
                    break;
                }
                continue;
            }
            let rev = self.poll(events, 100);
            if rev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                let recv = &mut plan.recv;
                self.read_some(&mut |d| recv.feed(d));
            }
        }
        let sent_sha = plan.send.as_ref().map_or([0; 32], |s| s.digest());
        Ok(Outcome {
            sent: handed,
            sent_sha,
            sha_before_key_update: before_update,
            received: plan.recv.count,
            received_sha: plan.recv.digest(),
            first_mismatch: plan.recv.first_mismatch,
            end: self.end.clone(),
            write_error,
            elapsed: started.elapsed(),
        })
    }

    /// Resets the connection: SO_LINGER 0, then close.
    pub fn reset(self) {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid fd and option buffer.
        let rc = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", io::Error::last_os_error());
        drop(self.sock);
    }
}

/// Offsets and types of the TLS records in `bytes` (complete ones only).
pub fn records(bytes: &[u8]) -> Vec<(usize, u8, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]) as usize;
        if at + 5 + len > bytes.len() {
            break;
        }
        out.push((at, bytes[at], len));
        at += 5 + len;
    }
    out
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
