//! Shared harness for the integration tests: a throwaway PKI, plain TCP
//! backends on std threads, a `Server` that runs the real `tlsplice` binary,
//! and rustls clients.
//!
//! Every wait here is bounded; every socket has timeouts; every address is on
//! loopback; every test gets its own ephemeral ports and temp dirs.

// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

pub mod proxy_header;

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedCipherSuite};
use sha2::{Digest, Sha256};

/// Default bound for "this should happen soon" waits.
pub const WAIT: Duration = Duration::from_secs(10);
/// Socket read/write timeout for test clients and backends.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tlsplice")
}

/// Fails the test with a clear message if an external tool is missing.
pub fn require_tool(name: &str) {
    let found = Command::new(name)
        .arg(if name == "openssl" {
            "version"
        } else {
            "--version"
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{name}` on PATH (apt-get install {name}); it is not installed"
    );
}

// ---------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------

/// A certificate and its key, as files and as DER.
#[derive(Clone)]
pub struct Identity {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

impl Identity {
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone()]
    }
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "tlsplice tests");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn new_ca(cn: &str) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = ca_params(cn).self_signed(&key).unwrap();
    Ca { cert, key }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    Rsa2048,
}

fn leaf(
    ca: &Ca,
    cn: &str,
    sans: &[&str],
    eku: &[ExtendedKeyUsagePurpose],
    key_type: KeyType,
    expired: bool,
    ocsp_url: Option<&str>,
) -> (rcgen::Certificate, KeyPair) {
    let key = match key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        KeyType::Rsa2048 => KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap(),
    };
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "tlsplice tests");
    p.distinguished_name = dn;
    p.extended_key_usages = eku.to_vec();
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if key_type == KeyType::Rsa2048 {
        p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    let now = time::OffsetDateTime::now_utc();
    if expired {
        p.not_before = now - time::Duration::days(400);
        p.not_after = now - time::Duration::days(30);
    } else {
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(30);
    }
    if let Some(url) = ocsp_url {
        p.custom_extensions.push(aia_ocsp_extension(url));
    }
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert, key)
}

/// An Authority Information Access extension naming one OCSP responder
/// (short URLs only: every length fits one byte).
fn aia_ocsp_extension(url: &str) -> rcgen::CustomExtension {
    let tlv = |tag: u8, value: &[u8]| {
        assert!(value.len() < 128);
        [&[tag, value.len() as u8][..], value].concat()
    };
    // AccessDescription { id-ad-ocsp (1.3.6.1.5.5.7.48.1), URI [6] }
    let method = tlv(0x06, &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01]);
    let description = tlv(0x30, &[method, tlv(0x86, url.as_bytes())].concat());
    rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], tlv(0x30, &description))
}

/// Writes a certificate and key as `NAME.crt` and `NAME.key` in `dir`.
fn write_identity(dir: &Path, name: &str, (cert, key): (rcgen::Certificate, KeyPair)) -> Identity {
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    Identity {
        cert_path,
        key_path,
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

/// A throwaway PKI in its own temp dir.
///
/// - `ca.crt` signs the server and the valid client certificates;
/// - `other-ca.crt` signs `client-other-ca`;
/// - `server` (ECDSA P-256) and, on demand, `server-rsa` (RSA 2048) for
///   `localhost` and `127.0.0.1`;
/// - clients: `client` (valid), `client-other-ca`, `client-expired`,
///   `client-no-eku` (serverAuth only).
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: Ca,
    pub ca_path: PathBuf,
    pub ca_der: CertificateDer<'static>,
    pub other_ca_path: PathBuf,
    pub server: Identity,
    pub client: Identity,
    pub client_other_ca: Identity,
    pub client_expired: Identity,
    pub client_no_eku: Identity,
    rsa: OnceLock<Identity>,
}

const SERVER_SANS: &[&str] = &["localhost", "127.0.0.1"];

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("tlsplice-pki-")
            .tempdir()
            .unwrap();
        let ca = new_ca("tlsplice test CA");
        let other = new_ca("tlsplice other CA");
        let ca_path = dir.path().join("ca.crt");
        fs::write(&ca_path, ca.cert.pem()).unwrap();
        fs::write(dir.path().join("ca.key"), ca.key.serialize_pem()).unwrap();
        let other_ca_path = dir.path().join("other-ca.crt");
        fs::write(&other_ca_path, other.cert.pem()).unwrap();

        let write = |name: &str, pair| write_identity(dir.path(), name, pair);
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let server = write(
            "server",
            leaf(
                &ca,
                "localhost",
                SERVER_SANS,
                &[ServerAuth],
                KeyType::EcdsaP256,
                false,
                None,
            ),
        );
        let client = write(
            "client",
            leaf(
                &ca,
                "test-client",
                &[],
                &[ClientAuth],
                KeyType::EcdsaP256,
                false,
                None,
            ),
        );
        let client_other_ca = write(
            "client-other-ca",
            leaf(
                &other,
                "intruder",
                &[],
                &[ClientAuth],
                KeyType::EcdsaP256,
                false,
                None,
            ),
        );
        let client_expired = write(
            "client-expired",
            leaf(
                &ca,
                "expired-client",
                &[],
                &[ClientAuth],
                KeyType::EcdsaP256,
                true,
                None,
            ),
        );
        let client_no_eku = write(
            "client-no-eku",
            leaf(
                &ca,
                "server-only-client",
                &[],
                &[ServerAuth],
                KeyType::EcdsaP256,
                false,
                None,
            ),
        );
        let ca_der = ca.cert.der().clone();
        Pki {
            dir,
            ca,
            ca_path,
            ca_der,
            other_ca_path,
            server,
            client,
            client_other_ca,
            client_expired,
            client_no_eku,
            rsa: OnceLock::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A CRL (PEM) issued by the test CA revoking `revoked`.
    pub fn crl(&self, revoked: &[&Identity]) -> String {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|id| {
                    let (_, cert) = x509_parser::parse_x509_certificate(&id.cert_der).unwrap();
                    rcgen::RevokedCertParams {
                        serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
                        revocation_time: now - time::Duration::minutes(1),
                        reason_code: None,
                        invalidity_date: None,
                    }
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.ca.cert, &self.ca.key)
            .unwrap()
            .pem()
            .unwrap()
    }

    /// The RSA-2048 server identity (generated on first use: RSA key
    /// generation is the slow part of the PKI).
    pub fn server_rsa(&self) -> &Identity {
        self.rsa.get_or_init(|| {
            let pair = leaf(
                &self.ca,
                "localhost",
                SERVER_SANS,
                &[ExtendedKeyUsagePurpose::ServerAuth],
                KeyType::Rsa2048,
                false,
                None,
            );
            write_identity(self.path(), "server-rsa", pair)
        })
    }

    /// Another valid client certificate from the test CA, written as
    /// `NAME.crt`/`NAME.key`, with an AIA OCSP URL when given.
    pub fn issue_client(&self, name: &str, ocsp_url: Option<&str>) -> Identity {
        self.issue(
            name,
            name,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            ocsp_url,
        )
    }

    /// A server certificate for `sans` (ECDSA P-256), signed by the test
    /// CA, written as `<file>.crt` and `<file>.key`.
    pub fn server_for(&self, file: &str, sans: &[&str]) -> Identity {
        self.issue(
            file,
            sans[0],
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            None,
        )
    }

    /// A valid client certificate with subject CN `cn`, signed by the test
    /// CA, written as `<file>.crt` and `<file>.key`.
    pub fn client_for(&self, file: &str, cn: &str) -> Identity {
        self.issue(file, cn, &[], ExtendedKeyUsagePurpose::ClientAuth, None)
    }

    fn issue(
        &self,
        file: &str,
        cn: &str,
        sans: &[&str],
        eku: ExtendedKeyUsagePurpose,
        ocsp_url: Option<&str>,
    ) -> Identity {
        let pair = leaf(
            &self.ca,
            cn,
            sans,
            &[eku],
            KeyType::EcdsaP256,
            false,
            ocsp_url,
        );
        write_identity(self.path(), file, pair)
    }

    pub fn server_identity(&self, key_type: KeyType) -> &Identity {
        match key_type {
            KeyType::EcdsaP256 => &self.server,
            KeyType::Rsa2048 => self.server_rsa(),
        }
    }

    /// Writes the standard dev PKI file names (`ca.crt`, `server.crt`, ...)
    /// into `dir`, for config files that expect them.
    pub fn write_standard_files(&self, dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        for (src, dst) in [
            ("ca.crt", "ca.crt"),
            ("ca.key", "ca.key"),
            ("server.crt", "server.crt"),
            ("server.key", "server.key"),
            ("client.crt", "client.crt"),
            ("client.key", "client.key"),
        ] {
            fs::copy(self.path().join(src), dir.join(dst)).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------

/// Length of the repeating pattern block: prime, so it never lines up with
/// TLS record or buffer sizes.
pub const PATTERN_LEN: usize = 1_048_573;

/// A pseudo-random block; `seed` picks the stream.
pub fn pattern(seed: u64) -> Arc<Vec<u8>> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(PATTERN_LEN + 8);
    while v.len() < PATTERN_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(PATTERN_LEN);
    Arc::new(v)
}

/// Writes `total` bytes of the repeating `block` to `w`, returning their sha256.
pub fn write_pattern(w: &mut impl Write, block: &[u8], total: u64) -> io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut sent = 0u64;
    let mut off = 0usize;
    while sent < total {
        let n = ((total - sent) as usize)
            .min(64 * 1024)
            .min(block.len() - off);
        let chunk = &block[off..off + n];
        w.write_all(chunk)?;
        h.update(chunk);
        sent += n as u64;
        off = (off + n) % block.len();
    }
    w.flush()?;
    Ok(h.finalize().into())
}

/// The sha256 of `total` bytes of the repeating `block`.
pub fn pattern_sha(block: &[u8], total: u64) -> [u8; 32] {
    struct Sink;
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    write_pattern(&mut Sink, block, total).unwrap()
}

/// Reads `r` to its end; returns (count, sha256). The end must be clean
/// (`Ok(0)`); any error is returned.
pub fn read_to_end_hashed(r: &mut impl Read) -> io::Result<(u64, [u8; 32])> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok((n, h.finalize().into())),
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// What a test backend does with each accepted connection.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Echo every byte; on EOF from the peer, shut down writing.
    Echo,
    /// Answer one HTTP/1.x request with `200 OK` and the request head as body.
    Http,
    /// Read (and echo) `n` bytes, then close the socket completely.
    CloseAfter(usize),
    /// Read to EOF, then reply `"<count> <sha256 hex>\n"` and close.
    ReadToEofThenReply,
    /// Write the greeting, shut down writing, then read to EOF.
    GreetThenHalfClose(Vec<u8>),
    /// Concurrently: read to EOF, and write `send` bytes of `pattern(seed)`
    /// then shut down writing.
    SinkAndSource { send: u64, seed: u64 },
}

/// What a backend connection saw, reported when it ends.
#[derive(Clone, Debug)]
pub struct ConnReport {
    pub peer: SocketAddr,
    pub received: u64,
    pub sha256: [u8; 32],
    /// The first bytes received (up to 1 MiB).
    pub head: Vec<u8>,
    /// The peer closed its write side cleanly (read returned 0).
    pub saw_eof: bool,
    /// A read/write error, if any.
    pub error: Option<String>,
}

pub struct Backend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    bytes_in: Arc<AtomicU64>,
    reports: Receiver<ConnReport>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn start(mode: Mode) -> Backend {
        Backend::start_at("127.0.0.1:0".parse().unwrap(), mode)
    }

    /// A backend on a given address (e.g. where a stopped one was).
    pub fn start_at(addr: SocketAddr, mode: Mode) -> Backend {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let bytes_in = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, reports) = mpsc::channel();
        let t = {
            let accepted = accepted.clone();
            let bytes_in = bytes_in.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let serve = |sock: TcpStream| {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (mode, tx, bytes_in) = (mode.clone(), tx.clone(), bytes_in.clone());
                    thread::spawn(move || {
                        let report = serve_backend_conn(sock, &mode, &bytes_in);
                        let _ = tx.send(report);
                    });
                };
                for conn in listener.incoming() {
                    let stopping = stop.load(Ordering::SeqCst);
                    if let Ok(sock) = conn {
                        serve(sock);
                    }
                    if stopping {
                        // Like a process finishing its accept queue before
                        // it exits: what the kernel already accepted is
                        // served, only later connects are refused.
                        let _ = listener.set_nonblocking(true);
                        while let Ok((sock, _)) = listener.accept() {
                            let _ = sock.set_nonblocking(false);
                            serve(sock);
                        }
                        break;
                    }
                }
            })
        };
        Backend {
            addr,
            accepted,
            bytes_in,
            reports,
            stop,
            accept_thread: Some(t),
        }
    }

    pub fn echo() -> Backend {
        Backend::start(Mode::Echo)
    }

    /// A backend that greets every connection with `id` (then half-closes),
    /// so a client can tell which backend it reached.
    pub fn with_id(id: &str) -> Backend {
        Backend::start(Mode::GreetThenHalfClose(id.as_bytes().to_vec()))
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Bytes received so far over all connections.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::SeqCst)
    }

    /// The report of the next connection to end, waiting up to `timeout`.
    pub fn next_report(&self, timeout: Duration) -> ConnReport {
        self.reports
            .recv_timeout(timeout)
            .unwrap_or_else(|_| panic!("no backend connection ended within {timeout:?}"))
    }

    pub fn try_report(&self) -> Option<ConnReport> {
        self.reports.try_recv().ok()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

struct Recorder<'a> {
    h: Sha256,
    n: u64,
    head: Vec<u8>,
    total: &'a AtomicU64,
}

impl<'a> Recorder<'a> {
    fn new(total: &'a AtomicU64) -> Self {
        Recorder {
            h: Sha256::new(),
            n: 0,
            head: Vec::new(),
            total,
        }
    }
    fn add(&mut self, b: &[u8]) {
        self.h.update(b);
        self.n += b.len() as u64;
        self.total.fetch_add(b.len() as u64, Ordering::SeqCst);
        let room = (1usize << 20).saturating_sub(self.head.len());
        self.head.extend_from_slice(&b[..b.len().min(room)]);
    }
}

fn serve_backend_conn(mut sock: TcpStream, mode: &Mode, total: &AtomicU64) -> ConnReport {
    let peer = sock.peer_addr().unwrap();
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    sock.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut rec = Recorder::new(total);
    let mut saw_eof = false;
    let mut buf = vec![0u8; 64 * 1024];
    let result: io::Result<()> = (|| {
        match mode {
            Mode::Echo => loop {
                let n = sock.read(&mut buf)?;
                if n == 0 {
                    saw_eof = true;
                    sock.shutdown(Shutdown::Write)?;
                    return Ok(());
                }
                rec.add(&buf[..n]);
                sock.write_all(&buf[..n])?;
            },
            Mode::Http => {
                while !contains(&rec.head, b"\r\n\r\n") {
                    let n = sock.read(&mut buf)?;
                    if n == 0 {
                        saw_eof = true;
                        return Ok(());
                    }
                    rec.add(&buf[..n]);
                }
                let end = find(&rec.head, b"\r\n\r\n").unwrap() + 4;
                let body = rec.head[..end].to_vec();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                sock.write_all(resp.as_bytes())?;
                sock.write_all(&body)?;
                sock.shutdown(Shutdown::Write)?;
                // Drain until the peer closes, so no RST eats the response.
                loop {
                    let n = sock.read(&mut buf)?;
                    if n == 0 {
                        saw_eof = true;
                        return Ok(());
                    }
                    rec.add(&buf[..n]);
                }
            }
            Mode::CloseAfter(limit) => {
                while (rec.n as usize) < *limit {
                    let want = (*limit - rec.n as usize).min(buf.len());
                    let n = sock.read(&mut buf[..want])?;
                    if n == 0 {
                        saw_eof = true;
                        return Ok(());
                    }
                    rec.add(&buf[..n]);
                    sock.write_all(&buf[..n])?;
                }
                // Returning drops (closes) the socket mid-stream.
                Ok(())
            }
            Mode::ReadToEofThenReply => {
                loop {
                    let n = sock.read(&mut buf)?;
                    if n == 0 {
                        saw_eof = true;
                        break;
                    }
                    rec.add(&buf[..n]);
                }
                let sha: [u8; 32] = rec.h.clone().finalize().into();
                let reply = format!("{} {}\n", rec.n, hex(&sha));
                sock.write_all(reply.as_bytes())?;
                sock.shutdown(Shutdown::Write)?;
                Ok(())
            }
            Mode::GreetThenHalfClose(greeting) => {
                sock.write_all(greeting)?;
                sock.shutdown(Shutdown::Write)?;
                loop {
                    let n = sock.read(&mut buf)?;
                    if n == 0 {
                        saw_eof = true;
                        return Ok(());
                    }
                    rec.add(&buf[..n]);
                }
            }
            Mode::SinkAndSource { send, seed } => {
                let mut w = sock.try_clone()?;
                let (send, seed) = (*send, *seed);
                let writer = thread::spawn(move || -> io::Result<()> {
                    let block = pattern(seed);
                    write_pattern(&mut w, &block, send)?;
                    w.shutdown(Shutdown::Write)
                });
                let r = loop {
                    match sock.read(&mut buf) {
                        Ok(0) => {
                            saw_eof = true;
                            break Ok(());
                        }
                        Ok(n) => rec.add(&buf[..n]),
                        Err(e) => break Err(e),
                    }
                };
                let w = writer.join().expect("backend writer panicked");
                r.and(w)
            }
        }
    })();
    ConnReport {
        peer,
        received: rec.n,
        sha256: rec.h.finalize().into(),
        head: rec.head,
        saw_eof,
        error: result.err().map(|e| e.to_string()),
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `curl` for `https://localhost:PORT/…` (resolved to 127.0.0.1), trusting
/// the PKI's CA and presenting `client`'s certificate, if any; bounded to
/// 10 s. Output is piped, stdin closed; the caller adds the URL and options.
pub fn curl_cmd(pki: &Pki, port: u16, client: Option<&Identity>) -> Command {
    require_tool("curl");
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        "--cacert",
        pki.ca_path.to_str().unwrap(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(id) = client {
        cmd.arg("--cert").arg(&id.cert_path);
        cmd.arg("--key").arg(&id.key_path);
    }
    cmd
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// A loopback port on which nothing listens (bound, then released).
pub fn unused_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------------------
// The tlsplice process
// ---------------------------------------------------------------------------

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    eof: bool,
}

/// The stderr of a child process, read continuously by a thread.
#[derive(Clone)]
pub struct LogBuf(Arc<(Mutex<LogState>, Condvar)>);

impl LogBuf {
    pub fn capture(r: impl Read + Send + 'static) -> LogBuf {
        let log = LogBuf(Arc::new((Mutex::new(LogState::default()), Condvar::new())));
        let l = log.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match r.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(&String::from_utf8_lossy(&raw));
                        let line = line.trim_end_matches(['\r', '\n']).to_string();
                        let (m, cv) = &*l.0;
                        m.lock().unwrap().lines.push(line);
                        cv.notify_all();
                    }
                }
            }
            let (m, cv) = &*l.0;
            m.lock().unwrap().eof = true;
            cv.notify_all();
        });
        log
    }

    pub fn lines(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().lines.clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until `f` finds something in the lines so far, or the stream
    /// ends, or `timeout` passes.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&[String]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.0;
        let mut st = m.lock().unwrap();
        loop {
            if let Some(t) = f(&st.lines) {
                return Some(t);
            }
            let now = Instant::now();
            if st.eof || now >= deadline {
                return None;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Waits for a line containing all of `needles`.
    pub fn wait_line(&self, timeout: Duration, needles: &[&str]) -> Option<String> {
        self.wait_for(timeout, |lines| {
            lines
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned()
        })
    }
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for c in it.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Addresses from `listening on ADDR` lines, in order.
pub fn listening_addrs(lines: &[String]) -> Vec<SocketAddr> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find("listening on ")? + "listening on ".len()..];
            let word = rest.split_whitespace().next()?;
            let word = word.trim_matches(|c: char| matches!(c, '"' | '\'' | ',' | ';' | '`'));
            word.parse().ok()
        })
        .collect()
}

/// A running `tlsplice` child. Killed on drop; its stderr is printed when
/// the test fails.
pub struct Server {
    child: Child,
    pub log: LogBuf,
    pub addrs: Vec<SocketAddr>,
    exited: Option<ExitStatus>,
}

/// Builder for `tlsplice serve` flags.
pub struct ServeArgs {
    pub args: Vec<String>,
    listens: usize,
}

impl ServeArgs {
    /// `serve --listen 127.0.0.1:0 --cert --key --client-ca --backend` with
    /// client auth required, 2 workers.
    pub fn new(pki: &Pki, backend: SocketAddr) -> ServeArgs {
        let mut a = ServeArgs {
            args: vec!["serve".into()],
            listens: 0,
        };
        a.listen("127.0.0.1:0")
            .flag("--cert", pki.server.cert_path.to_str().unwrap())
            .flag("--key", pki.server.key_path.to_str().unwrap())
            .flag("--client-ca", pki.ca_path.to_str().unwrap())
            .flag("--backend", &backend.to_string())
            .flag("--workers", "2");
        a
    }

    pub fn flag(&mut self, name: &str, value: &str) -> &mut Self {
        self.args.push(name.into());
        self.args.push(value.into());
        self
    }

    pub fn listen(&mut self, addr: &str) -> &mut Self {
        self.listens += 1;
        self.flag("--listen", addr)
    }

    /// Replaces the value of every occurrence of `name`.
    pub fn set(&mut self, name: &str, value: &str) -> &mut Self {
        let mut found = false;
        for i in 0..self.args.len().saturating_sub(1) {
            if self.args[i] == name {
                self.args[i + 1] = value.into();
                found = true;
            }
        }
        if !found {
            self.flag(name, value);
        }
        self
    }

    /// Removes a flag and its value.
    pub fn remove(&mut self, name: &str) -> &mut Self {
        while let Some(i) = self.args.iter().position(|a| a == name) {
            self.args.drain(i..(i + 2).min(self.args.len()));
        }
        self
    }

    pub fn key_type(&mut self, pki: &Pki, kt: KeyType) -> &mut Self {
        let id = pki.server_identity(kt).clone();
        self.set("--cert", id.cert_path.to_str().unwrap())
            .set("--key", id.key_path.to_str().unwrap())
    }

    pub fn spawn(&self) -> Server {
        Server::spawn_args(&self.args, self.listens.max(1))
    }

    /// Like [`ServeArgs::spawn`], with RLIMIT_NOFILE set to `nofile` (soft
    /// and hard) in the child before it runs, as `ulimit -n` would.
    pub fn spawn_with_nofile(&self, nofile: u64) -> Server {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin());
        // SAFETY: only setrlimit(2), async-signal-safe, runs between fork
        // and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        Server::spawn_command(cmd, &self.args, self.listens.max(1), None)
    }
}

impl Server {
    /// Starts `tlsplice ARGS` and waits until it logged `listens`
    /// `listening on` lines. Panics with its stderr if it does not.
    pub fn spawn_args(args: &[String], listens: usize) -> Server {
        Self::spawn_in(args, listens, None)
    }

    pub fn spawn_in(args: &[String], listens: usize, cwd: Option<&Path>) -> Server {
        Self::spawn_command(Command::new(bin()), args, listens, cwd)
    }

    fn spawn_command(
        mut cmd: Command,
        args: &[String],
        listens: usize,
        cwd: Option<&Path>,
    ) -> Server {
        cmd.args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let mut child = cmd.spawn().expect("spawn tlsplice");
        let log = LogBuf::capture(child.stderr.take().unwrap());
        let addrs = log.wait_for(WAIT, |lines| {
            let a = listening_addrs(lines);
            (a.len() >= listens).then_some(a)
        });
        let mut server = Server {
            child,
            log,
            addrs: Vec::new(),
            exited: None,
        };
        match addrs {
            Some(a) => server.addrs = a,
            None => {
                let status = wait_child(&mut server.child, Duration::from_secs(2));
                panic!(
                    "tlsplice {args:?} did not log {listens} `listening on ADDR` line(s) within {WAIT:?} \
                     (exit status: {status:?}); stderr:\n{}",
                    server.log.text()
                );
            }
        }
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited {
            return Some(s);
        }
        let s = wait_child(&mut self.child, timeout);
        self.exited = s;
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- tlsplice stderr ----\n{}\n-------------------------",
                self.log.text()
            );
        }
    }
}

/// Polls a child for exit, bounded by `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `tlsplice ARGS` to completion (bounded) and returns (status, stdout, stderr).
pub fn run_tlsplice(args: &[&str], cwd: Option<&Path>) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    run_bounded(cmd, WAIT)
}

/// Runs a command with a time bound, collecting its output.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = LogBuf::capture(child.stdout.take().unwrap());
    let err = LogBuf::capture(child.stderr.take().unwrap());
    let status = match wait_child(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                out.text(),
                err.text()
            );
        }
    };
    // The pipes close when the process exits; wait for the readers to finish.
    out.wait_for(WAIT, |_| None::<()>);
    err.wait_for(WAIT, |_| None::<()>);
    (status, out.text(), err.text())
}

// ---------------------------------------------------------------------------
// rustls clients
// ---------------------------------------------------------------------------

pub struct ClientOpts<'a> {
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    pub suite: Option<SupportedCipherSuite>,
    pub identity: Option<&'a Identity>,
    pub roots: Vec<CertificateDer<'static>>,
    pub alpn: Vec<Vec<u8>>,
}

impl<'a> ClientOpts<'a> {
    /// TLS 1.3 and 1.2, all suites, trusting the PKI's CA, presenting the
    /// valid client certificate.
    pub fn new(pki: &'a Pki) -> Self {
        ClientOpts {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            suite: None,
            identity: Some(&pki.client),
            roots: vec![pki.ca_der.clone()],
            alpn: Vec::new(),
        }
    }
    pub fn tls12(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS12];
        self
    }
    pub fn tls13(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS13];
        self
    }
    pub fn suite(mut self, s: SupportedCipherSuite) -> Self {
        self.suite = Some(s);
        self
    }
    pub fn identity(mut self, id: Option<&'a Identity>) -> Self {
        self.identity = id;
        self
    }
    pub fn build(&self) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if let Some(s) = self.suite {
            provider.cipher_suites = vec![s];
        }
        let mut roots = RootCertStore::empty();
        for r in &self.roots {
            roots.add(r.clone()).unwrap();
        }
        let b = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&self.versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut cfg = match self.identity {
            Some(id) => b.with_client_auth_cert(id.chain(), id.key()).unwrap(),
            None => b.with_no_client_auth(),
        };
        cfg.alpn_protocols = self.alpn.clone();
        Arc::new(cfg)
    }
}

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let sock = TcpStream::connect_timeout(&addr, WAIT)
        .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    sock.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    sock.set_nodelay(true).unwrap();
    sock
}

/// Connects and completes the client side of the handshake (server name
/// `localhost`). For TLS 1.3 with client auth the server may still refuse
/// the client certificate afterwards: that shows on the first read.
pub fn tls_connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Result<Tls, io::Error> {
    tls_connect_timeout(addr, cfg, IO_TIMEOUT)
}

/// Like [`tls_connect`], with `timeout` for the TCP connect and each socket
/// read or write of the handshake; a failed TCP connect is an `Err` too.
pub fn tls_connect_timeout(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Tls, io::Error> {
    tls_connect_named(addr, cfg, "localhost", timeout)
}

/// Like [`tls_connect_timeout`], asking for `server_name` (sent as SNI
/// unless it is an IP address, and checked against the certificate).
pub fn tls_connect_named(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    server_name: &str,
    timeout: Duration,
) -> Result<Tls, io::Error> {
    let sock = TcpStream::connect_timeout(&addr, timeout)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    sock.set_nodelay(true)?;
    let name = ServerName::try_from(server_name.to_string()).expect("a valid server name");
    let conn = ClientConnection::new(cfg, name).unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    tls.sock.set_read_timeout(Some(IO_TIMEOUT))?;
    tls.sock.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(tls)
}

/// The rustls error inside an io::Error, if any.
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

/// Admitted: an echo round trip through the server works. Refused: the
/// alert the client got. In TLS 1.3 the verdict on a client certificate
/// shows on the first read, so both are only known after one.
pub fn admission(server: &Server, opts: &ClientOpts) -> Result<(), rustls::Error> {
    let mut tls = match tls_connect(server.addr(), opts.build()) {
        Ok(tls) => tls,
        Err(e) => return Err(rustls_error(&e).expect("TLS alert").clone()),
    };
    let _ = tls.write_all(b"ping\n").and_then(|()| tls.flush());
    let mut buf = [0u8; 5];
    match tls.read_exact(&mut buf) {
        Ok(()) => {
            assert_eq!(&buf, b"ping\n");
            Ok(())
        }
        Err(e) => Err(rustls_error(&e)
            .unwrap_or_else(|| panic!("refused without an alert: {e}"))
            .clone()),
    }
}

/// Writes `msg`, reads exactly `msg.len()` bytes back and checks they match.
pub fn echo_round_trip(tls: &mut impl ReadWrite, msg: &[u8]) {
    tls.write_all(msg).expect("write through tlsplice");
    tls.flush().unwrap();
    let mut back = vec![0u8; msg.len()];
    tls.read_exact(&mut back)
        .expect("read echo through tlsplice");
    assert!(back == msg, "echo differs from what was sent");
}

/// Like [`echo_round_trip`], returning an error instead of panicking.
pub fn try_echo(tls: &mut impl ReadWrite, msg: &[u8]) -> io::Result<()> {
    tls.write_all(msg)?;
    tls.flush()?;
    let mut back = vec![0u8; msg.len()];
    tls.read_exact(&mut back)?;
    if back != msg {
        return Err(io::Error::other("echo differs from what was sent"));
    }
    Ok(())
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Reads until the stream ends; returns the bytes and how it ended.
pub fn read_until_end(r: &mut impl Read) -> (Vec<u8>, io::Result<()>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (out, Err(e)),
        }
    }
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

// ---------------------------------------------------------------------------
// A TLS stream split into a read half and a write half for two threads
// ---------------------------------------------------------------------------

struct SharedTls {
    conn: Mutex<ClientConnection>,
    /// The socket for writing; held while TLS bytes are taken from `conn`
    /// and written, so records go out in order.
    wsock: Mutex<TcpStream>,
}

impl SharedTls {
    fn flush_locked(conn: &mut ClientConnection, w: &mut TcpStream) -> io::Result<()> {
        while conn.wants_write() {
            conn.write_tls(w)?;
        }
        Ok(())
    }
}

pub struct TlsReadHalf {
    shared: Arc<SharedTls>,
    rsock: TcpStream,
    pending: Vec<u8>,
    pos: usize,
}

pub struct TlsWriteHalf {
    shared: Arc<SharedTls>,
}

/// Splits an established connection into halves usable from two threads.
pub fn split(tls: Tls) -> (TlsReadHalf, TlsWriteHalf) {
    let StreamOwned { conn, sock } = tls;
    let rsock = sock.try_clone().unwrap();
    let shared = Arc::new(SharedTls {
        conn: Mutex::new(conn),
        wsock: Mutex::new(sock),
    });
    (
        TlsReadHalf {
            shared: shared.clone(),
            rsock,
            pending: Vec::new(),
            pos: 0,
        },
        TlsWriteHalf { shared },
    )
}

impl Read for TlsReadHalf {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            {
                let mut c = self.shared.conn.lock().unwrap();
                match c.reader().read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            let eof = if self.pos < self.pending.len() {
                false
            } else {
                let n = self.rsock.read(&mut tmp)?;
                self.pending.clear();
                self.pending.extend_from_slice(&tmp[..n]);
                self.pos = 0;
                n == 0
            };
            let mut w = self.shared.wsock.lock().unwrap();
            let mut c = self.shared.conn.lock().unwrap();
            if eof {
                let mut empty: &[u8] = &[];
                c.read_tls(&mut empty)?;
            } else {
                let mut slice = &self.pending[self.pos..];
                let k = c.read_tls(&mut slice)?;
                self.pos += k;
            }
            let r = c.process_new_packets();
            SharedTls::flush_locked(&mut c, &mut w)?;
            r.map_err(io::Error::other)?;
        }
    }
}

impl Write for TlsWriteHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut w = self.shared.wsock.lock().unwrap();
        let mut c = self.shared.conn.lock().unwrap();
        let n = c.writer().write(buf)?;
        SharedTls::flush_locked(&mut c, &mut w)?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        let mut w = self.shared.wsock.lock().unwrap();
        let mut c = self.shared.conn.lock().unwrap();
        SharedTls::flush_locked(&mut c, &mut w)
    }
}

impl TlsWriteHalf {
    pub fn close_notify(&mut self) -> io::Result<()> {
        let mut w = self.shared.wsock.lock().unwrap();
        let mut c = self.shared.conn.lock().unwrap();
        c.send_close_notify();
        SharedTls::flush_locked(&mut c, &mut w)
    }
}

/// Sends close_notify on a whole stream.
pub fn close_notify(tls: &mut Tls) -> io::Result<()> {
    tls.conn.send_close_notify();
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut tls.sock)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------

/// Parses `key=value` fields from a log line (values end at whitespace;
/// quotes are stripped).
pub fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

/// A raw ClientHello from a rustls client, for tests that need its bytes.
pub fn client_hello_bytes(pki: &Pki) -> Vec<u8> {
    let cfg = ClientOpts::new(pki).build();
    let mut conn = ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Writes a file and returns its path.
pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, contents).unwrap();
    p
}

// ---------------------------------------------------------------------------
// The admin listener
// ---------------------------------------------------------------------------

/// The admin listener's address, from its `admin listening on` line.
pub fn admin_addr(server: &Server) -> SocketAddr {
    server
        .log
        .wait_line(WAIT, &["admin listening on"])
        .and_then(|l| l.rsplit(' ').next().and_then(|a| a.parse().ok()))
        .expect("admin address logged")
}

/// One HTTP/1.1 request to the admin listener: (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Parses Prometheus text with prometheus_client (the reference parser)
/// and returns `name{labels} value` lines, sorted.
pub fn parse_with_prometheus_client(text: &str) -> Vec<String> {
    require_tool("python3");
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()):\n  for s in f.samples:\n    l=','.join(f'{k}=\"{v}\"' for k,v in sorted(s.labels.items()))\n    print(f'{s.name}{{{l}}} {s.value:g}')\n",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected /metrics (pip install prometheus_client?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// The value of the sample `name{labels}` (labels sorted by name, as
/// [`parse_with_prometheus_client`] writes them) in its output.
pub fn sample(lines: &[String], name_and_labels: &str) -> Option<f64> {
    lines.iter().find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name_and_labels).then(|| value.parse().ok())?
    })
}

/// Connects as `server_name` and reads the greeting of a
/// [`Backend::with_id`] backend to its end; returns the greeting, the
/// certificate the server presented, and the still-open connection.
pub fn greeting(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    server_name: &str,
) -> io::Result<(String, CertificateDer<'static>, Tls)> {
    let mut tls = tls_connect_named(addr, cfg, server_name, IO_TIMEOUT)?;
    let presented = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .clone()
        .into_owned();
    let (bytes, end) = read_until_end(&mut tls);
    end?;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), presented, tls))
}

// ---------------------------------------------------------------------------
// Process resources
// ---------------------------------------------------------------------------

/// Open file descriptors of process `pid` (entries of /proc/PID/fd).
pub fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count()
}

/// What each open descriptor of `pid` is (socket:[inode], pipe:[...],
/// anon_inode:[io_uring], paths), sorted: for failure messages.
pub fn fd_targets(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Resident set size of process `pid` in KiB (VmRSS in /proc/PID/status).
pub fn rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The descriptor count of `pid` once it holds still (the same over
/// 300 ms, or whatever it is after [`WAIT`]): a baseline taken after
/// connections closed and lazily opened worker state exists.
pub fn settled_fds(pid: i32) -> usize {
    let deadline = Instant::now() + WAIT;
    let mut last = open_fds(pid);
    let mut same = 0;
    while same < 6 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        let n = open_fds(pid);
        same = if n == last { same + 1 } else { 0 };
        last = n;
    }
    last
}

/// Asserts that `pid` is back to at most `before` open descriptors,
/// waiting up to [`WAIT`] for closes in flight; a failure lists them.
pub fn assert_fds_back(pid: i32, before: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = open_fds(pid);
        if n <= before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors: {before} before, {n} after: {:?}",
            fd_targets(pid)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// When the client of [`bulk_each_way`] sends its close_notify.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClientClose {
    /// As soon as its upload is written, while the download still runs.
    AfterUpload,
    /// Once the download ended too: for backends behind TLS terminators
    /// (stunnel) that end both directions on close_notify.
    AfterDownload,
}

/// Sends `size` bytes of `pattern(up_seed)` over `tls` while reading its
/// answer to the end, with close_notify sent as `close` says, and checks
/// both ways byte-exact: the client must receive `size` bytes of
/// `pattern(down_seed)`, and the backend's next report must show the
/// upload intact and a clean EOF.
pub fn bulk_each_way(
    tls: Tls,
    backend: &Backend,
    (size, up_seed, down_seed): (u64, u64, u64),
    close: ClientClose,
) {
    let (mut rd, mut wr) = split(tls);
    let writer = thread::spawn(move || -> io::Result<(TlsWriteHalf, [u8; 32])> {
        let sha = write_pattern(&mut wr, &pattern(up_seed), size)?;
        if close == ClientClose::AfterUpload {
            wr.close_notify()?;
        }
        Ok((wr, sha))
    });
    let reader = thread::spawn(move || read_to_end_hashed(&mut rd));
    let (mut wr, sent_sha) = writer.join().unwrap().expect("client upload");
    let (got, got_sha) = reader
        .join()
        .unwrap()
        .expect("client download must end with close_notify");
    if close == ClientClose::AfterDownload {
        wr.close_notify().expect("client close_notify");
    }
    assert_eq!(got, size, "client received a different byte count");
    assert!(
        got_sha == pattern_sha(&pattern(down_seed), size),
        "download corrupted"
    );
    let report = backend.next_report(WAIT);
    assert_eq!(report.error, None);
    assert_eq!(report.received, size, "backend received a different count");
    assert!(report.sha256 == sent_sha, "upload corrupted");
    assert!(report.saw_eof);
}

/// Exports `id` (certificate and key) as PKCS#12 with `password`.
pub fn export_pkcs12(id: &Identity, p12: &Path, password: &str) {
    let status = Command::new("openssl")
        .args(["pkcs12", "-export", "-passout"])
        .arg(format!("pass:{password}"))
        .arg("-in")
        .arg(&id.cert_path)
        .arg("-inkey")
        .arg(&id.key_path)
        .arg("-out")
        .arg(p12)
        .status()
        .unwrap();
    assert!(status.success(), "openssl pkcs12 -export");
}

/// Adds what configs/edge.toml names beside the standard PKI files in
/// `pki_dir`: a certificate and key per domain and a partners' CA (copies
/// of the standard ones).
pub fn add_edge_files(pki_dir: &Path) {
    for (from, to) in [
        ("server.crt", "api.crt"),
        ("server.key", "api.key"),
        ("server.crt", "portal.crt"),
        ("server.key", "portal.key"),
        ("ca.crt", "partners-ca.crt"),
    ] {
        fs::copy(pki_dir.join(from), pki_dir.join(to)).unwrap();
    }
}
