//! `tlsplice quickstart`: a development PKI and a built-in backend, so a
//! first run needs no certificates and no service to put behind the proxy.
//!
//! Nothing here is for production: the CA key sits next to the certificates
//! it signs, and the backend spends a thread per connection.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

/// Subject common name of the development CA.
pub const CA_COMMON_NAME: &str = "tlsplice dev CA";
/// Subject common name of the development client certificate.
pub const CLIENT_COMMON_NAME: &str = "quickstart-client";

const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 365;

/// Paths of the development PKI (all in one directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// The directory holding all files below.
    pub dir: PathBuf,
    /// `ca.crt`: the self-signed CA, trust anchor for both sides.
    pub ca_cert: PathBuf,
    /// `ca.key`: the CA's private key.
    pub ca_key: PathBuf,
    /// `server.crt`: for `localhost`, `127.0.0.1` and `::1`.
    pub server_cert: PathBuf,
    /// `server.key`: the server's private key.
    pub server_key: PathBuf,
    /// `client.crt`: client certificate with CN `quickstart-client`.
    pub client_cert: PathBuf,
    /// `client.key`: the client's private key.
    pub client_key: PathBuf,
}

impl DevPki {
    /// The paths the PKI uses inside `dir`; touches nothing on disk.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

/// Why the development PKI could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum QuickstartError {
    /// The PKI directory could not be created.
    #[error("cannot create PKI directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An existing PKI file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A PKI file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An existing key file holds no usable private key.
    #[error("{} does not hold a usable private key: {source}", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What rcgen reported.
        source: rcgen::Error,
    },
    /// Key or certificate generation failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// Which file was being produced.
        what: &'static str,
        /// What rcgen reported.
        source: rcgen::Error,
    },
}

/// Creates dir and generates whatever is missing.
///
/// - `ca.crt`/`ca.key`: self-signed CA "tlsplice dev CA" (ECDSA P-256, 10 years).
/// - `server.crt`/`server.key`: ECDSA P-256, SAN DNS `localhost`, IP
///   `127.0.0.1` and `::1`, EKU serverAuth, signed by the CA, 1 year.
/// - `client.crt`/`client.key`: ECDSA P-256, CN `quickstart-client`, EKU
///   clientAuth, signed by the CA, 1 year.
///
/// Existing files are kept byte for byte. A missing CA key regenerates the
/// whole set (nothing could be signed otherwise); a leaf certificate or key
/// that is missing, unreadable as a certificate, or expired is regenerated
/// as a pair. Key files are created with mode 0600.
pub fn ensure_dev_pki(dir: &Path) -> Result<DevPki, QuickstartError> {
    let pki = DevPki::in_dir(dir);
    fs::create_dir_all(dir).map_err(|source| QuickstartError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;

    let now = OffsetDateTime::now_utc();
    let fresh_ca = !pki.ca_key.exists();
    let ca_key = if fresh_ca {
        let key = generate_key("ca.key")?;
        write_file(&pki.ca_key, key.serialize_pem().as_bytes(), true)?;
        key
    } else {
        load_key(&pki.ca_key)?
    };
    // The issuer's name and key are all that signing a leaf takes from the
    // CA certificate, so an equivalent one is rebuilt in memory from the
    // fixed CA parameters instead of parsing ca.crt.
    let ca = ca_params(now)
        .self_signed(&ca_key)
        .map_err(|source| QuickstartError::Generate {
            what: "ca.crt",
            source,
        })?;
    if fresh_ca || !pki.ca_cert.exists() {
        write_file(&pki.ca_cert, ca.pem().as_bytes(), false)?;
    }

    let server = || {
        let mut params = leaf_params(now, "localhost", ExtendedKeyUsagePurpose::ServerAuth)?;
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(Ipv4Addr::LOCALHOST.into()),
            SanType::IpAddress(Ipv6Addr::LOCALHOST.into()),
        ];
        Ok(params)
    };
    ensure_leaf(
        &pki.server_cert,
        &pki.server_key,
        fresh_ca,
        now,
        (&ca, &ca_key),
        server,
    )?;

    let client = || leaf_params(now, CLIENT_COMMON_NAME, ExtendedKeyUsagePurpose::ClientAuth);
    ensure_leaf(
        &pki.client_cert,
        &pki.client_key,
        fresh_ca,
        now,
        (&ca, &ca_key),
        client,
    )?;

    Ok(pki)
}

fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
    params
}

fn leaf_params(
    now: OffsetDateTime,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    // CA:FALSE, critical, in DER: the empty sequence. rcgen's ExplicitNoCa
    // encodes the DEFAULT `cA FALSE`, which strict DER parsers (sslyze's
    // `cryptography`) reject: found by scripts/scan.sh.
    params.is_ca = IsCa::NoCa;
    let mut basic_constraints = CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0]);
    basic_constraints.set_criticality(true);
    params.custom_extensions.push(basic_constraints);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    // Lets verifiers (OpenSSL in particular) pick the issuer by key id.
    params.use_authority_key_identifier_extension = true;
    // An hour of slack for clocks that run slightly behind this one.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(LEAF_VALIDITY_DAYS);
    Ok(params)
}

/// Keeps a valid existing certificate/key pair, else issues a new pair.
fn ensure_leaf(
    cert_path: &Path,
    key_path: &Path,
    force: bool,
    now: OffsetDateTime,
    (ca, ca_key): (&Certificate, &KeyPair),
    params: impl FnOnce() -> Result<CertificateParams, rcgen::Error>,
) -> Result<(), QuickstartError> {
    let what = file_label(cert_path);
    if !force && key_path.exists() && cert_is_current(cert_path, now)? {
        return Ok(());
    }
    let key = generate_key(what)?;
    let cert = params()
        .and_then(|params| params.signed_by(&key, ca, ca_key))
        .map_err(|source| QuickstartError::Generate { what, source })?;
    // Key first: a crash in between leaves a key without a certificate,
    // which the next run treats as missing and replaces.
    write_file(key_path, key.serialize_pem().as_bytes(), true)?;
    write_file(cert_path, cert.pem().as_bytes(), false)?;
    tracing::info!(path = %cert_path.display(), "generated development certificate");
    Ok(())
}

/// Whether `path` holds a certificate that is valid at `now`; false when the
/// file is missing or not a PEM certificate (it is then replaced).
fn cert_is_current(path: &Path, now: OffsetDateTime) -> Result<bool, QuickstartError> {
    let pem = match fs::read(path) {
        Ok(pem) => pem,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(QuickstartError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&pem) else {
        tracing::warn!(path = %path.display(), "not a PEM certificate; regenerating");
        return Ok(false);
    };
    let Ok(cert) = pem.parse_x509() else {
        tracing::warn!(path = %path.display(), "unparsable certificate; regenerating");
        return Ok(false);
    };
    let valid = cert.validity().not_after.timestamp() > now.unix_timestamp();
    if !valid {
        tracing::info!(path = %path.display(), "certificate expired; regenerating");
    }
    Ok(valid)
}

fn file_label(path: &Path) -> &'static str {
    match path.file_name().and_then(|name| name.to_str()) {
        Some("server.crt") => "server.crt",
        Some("client.crt") => "client.crt",
        _ => "certificate",
    }
}

fn generate_key(what: &'static str) -> Result<KeyPair, QuickstartError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| QuickstartError::Generate { what, source })
}

fn load_key(path: &Path) -> Result<KeyPair, QuickstartError> {
    let pem = fs::read_to_string(path).map_err(|source| QuickstartError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    KeyPair::from_pem(&pem).map_err(|source| QuickstartError::BadKey {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes through a temporary file and a rename, so a reader never sees a
/// half-written file; secrets get mode 0600 from creation on.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), QuickstartError> {
    let err = |source| QuickstartError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// The commands a user copies to connect with the client certificate, one
/// per line, ready to paste (paths shell-quoted where needed).
pub fn connect_commands(pki: &DevPki, port: u16) -> Vec<String> {
    let ca = shell_word(&pki.ca_cert);
    let cert = shell_word(&pki.client_cert);
    let key = shell_word(&pki.client_key);
    vec![
        format!("curl --cacert {ca} --cert {cert} --key {key} https://localhost:{port}/"),
        format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost \
             -CAfile {ca} -cert {cert} -key {key}"
        ),
    ]
}

/// A path as one POSIX shell word: unchanged when it is plainly safe,
/// else single-quoted.
fn shell_word(path: &Path) -> String {
    let text = path.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:@%+=,".contains(&b));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// How long the backend waits for the rest of a possible HTTP request head
/// before treating the connection as raw bytes and echoing them.
const HEAD_WAIT: Duration = Duration::from_millis(500);
/// Largest request head the backend answers; larger gets 431 and a close.
const MAX_HEAD: usize = 64 * 1024;
/// An idle keep-alive HTTP connection is closed after this long.
const HTTP_IDLE: Duration = Duration::from_secs(120);

/// Starts the built-in backend on 127.0.0.1 (port 0 = ephemeral) on std
/// threads; returns its address.
///
/// It echoes raw bytes, except that a connection whose first bytes form an
/// HTTP/1.x request head gets `HTTP/1.1 200 OK` responses (keep-alive
/// aware, Content-Length bodies read) whose text/plain body echoes the
/// request head, so `curl` shows something meaningful. Raw input that
/// starts like a request line without completing one is echoed after a
/// short wait.
pub fn start_echo_backend(port: u16) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
    let addr = listener.local_addr()?;
    thread::Builder::new()
        .name("quickstart-backend".into())
        .spawn(move || accept_loop(listener))?;
    Ok(addr)
}

fn accept_loop(listener: TcpListener) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%err, "backend accept failed");
                // Out of descriptors and the like: back off instead of spinning.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let spawned = thread::Builder::new()
            .name("quickstart-conn".into())
            .spawn(move || {
                if let Err(err) = serve(stream) {
                    tracing::debug!(%err, "backend connection ended");
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(%err, "backend cannot start a connection thread");
        }
    }
}

/// What the first bytes of a connection turned out to be.
enum Opening {
    /// A complete HTTP/1.x request head is buffered.
    Http,
    /// Anything else: echo.
    Raw,
    /// Could still become a request head.
    Undecided,
}

fn serve(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    stream.set_read_timeout(Some(HEAD_WAIT))?;
    loop {
        let opening = classify(&buf);
        if !matches!(opening, Opening::Undecided) || buf.len() > MAX_HEAD {
            if matches!(opening, Opening::Http) {
                return serve_http(stream, buf);
            }
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err) if is_timeout(&err) && !buf.is_empty() => break,
            // Nothing sent yet: nothing to decide on, keep waiting.
            Err(err) if is_timeout(&err) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    stream.set_read_timeout(None)?;
    echo(stream, &buf)
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Decides from the bytes so far whether the connection speaks HTTP/1.x.
fn classify(buf: &[u8]) -> Opening {
    let line_end = buf.windows(2).position(|w| w == b"\r\n");
    let line = match line_end {
        Some(end) => &buf[..end],
        // A trailing CR may be the first half of the line's CRLF.
        None => buf.strip_suffix(b"\r").unwrap_or(buf),
    };
    let method_len = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let method_ok = line[..method_len].iter().all(u8::is_ascii_uppercase) && method_len <= 16;
    if buf.is_empty() || !method_ok || line.iter().any(|&b| b.is_ascii_control()) {
        return if buf.is_empty() {
            Opening::Undecided
        } else {
            Opening::Raw
        };
    }
    let Some(_) = line_end else {
        return Opening::Undecided;
    };
    if parse_request_line(line).is_none() {
        return Opening::Raw;
    }
    if head_end(buf).is_some() {
        Opening::Http
    } else {
        Opening::Undecided
    }
}

/// `METHOD SP target SP HTTP/1.x` → (method, minor version).
fn parse_request_line(line: &[u8]) -> Option<(&[u8], u8)> {
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || method.is_empty() || target.is_empty() {
        return None;
    }
    match version {
        b"HTTP/1.0" => Some((method, 0)),
        b"HTTP/1.1" => Some((method, 1)),
        _ => None,
    }
}

/// Offset just past the blank line ending the request head.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Copies everything read back to the peer until it closes its side.
fn echo(mut stream: TcpStream, already_read: &[u8]) -> io::Result<()> {
    stream.write_all(already_read)?;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => stream.write_all(&chunk[..n])?,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    stream.shutdown(std::net::Shutdown::Write)
}

/// The parts of a request head the backend acts on.
struct RequestHead {
    is_head_method: bool,
    keep_alive: bool,
    content_length: u64,
    chunked: bool,
}

fn parse_head(head: &[u8]) -> Option<RequestHead> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let (method, minor) = parse_request_line(lines.next()?)?;
    let mut request = RequestHead {
        is_head_method: method == b"HEAD",
        keep_alive: minor == 1,
        content_length: 0,
        chunked: false,
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let colon = line.iter().position(|&b| b == b':')?;
        let name = &line[..colon];
        let value = std::str::from_utf8(&line[colon + 1..]).ok()?.trim();
        if name.eq_ignore_ascii_case(b"content-length") {
            request.content_length = value.parse().ok()?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            request.chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    request.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    request.keep_alive = true;
                }
            }
        }
    }
    Some(request)
}

/// Answers requests on one connection; `buf` holds bytes already read.
fn serve_http(mut stream: TcpStream, mut buf: Vec<u8>) -> io::Result<()> {
    stream.set_read_timeout(Some(HTTP_IDLE))?;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let Some(end) = head_end(&buf) else {
            if buf.len() > MAX_HEAD {
                return respond_error(&mut stream, "431 Request Header Fields Too Large");
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
            continue;
        };
        let Some(request) = parse_head(&buf[..end]) else {
            return respond_error(&mut stream, "400 Bad Request");
        };
        if request.chunked {
            // Bodies without a length are out of scope for a demo backend.
            return respond_error(&mut stream, "501 Not Implemented");
        }
        let head: Vec<u8> = buf.drain(..end).collect();
        discard_body(&mut stream, &mut buf, request.content_length)?;

        let mut response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
            head.len()
        )
        .into_bytes();
        response.extend_from_slice(if request.keep_alive {
            b"Connection: keep-alive\r\n\r\n"
        } else {
            b"Connection: close\r\n\r\n"
        });
        if !request.is_head_method {
            response.extend_from_slice(&head);
        }
        stream.write_all(&response)?;
        if !request.keep_alive {
            return stream.shutdown(std::net::Shutdown::Write);
        }
    }
}

/// Consumes `len` body bytes, first from `buf`, then from the stream, so the
/// next request head starts where it should.
fn discard_body(stream: &mut TcpStream, buf: &mut Vec<u8>, len: u64) -> io::Result<()> {
    let buffered = usize::try_from(len).map_or(buf.len(), |len| len.min(buf.len()));
    buf.drain(..buffered);
    let mut left = len - buffered as u64;
    let mut chunk = [0u8; 16 * 1024];
    while left > 0 {
        let want = usize::try_from(left).map_or(chunk.len(), |left| left.min(chunk.len()));
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => left -= n as u64,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn respond_error(stream: &mut TcpStream, status: &str) -> io::Result<()> {
    let body = format!("{status}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;

    use super::*;

    fn cert(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).expect("PEM certificate")
    }

    fn roots(pki: &DevPki) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(cert(&pki.ca_cert)).expect("CA accepted");
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn verify_server(pki: &DevPki, name: &str) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(pki), provider())
            .build()
            .expect("verifier");
        let name = ServerName::try_from(name.to_owned()).expect("name");
        verifier
            .verify_server_cert(&cert(&pki.server_cert), &[], &name, &[], UnixTime::now())
            .map(drop)
    }

    fn verify_client(pki: &DevPki, path: &Path) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(pki), provider())
            .build()
            .expect("verifier");
        verifier
            .verify_client_cert(&cert(path), &[], UnixTime::now())
            .map(drop)
    }

    fn read_all(pki: &DevPki) -> Vec<Vec<u8>> {
        [
            &pki.ca_cert,
            &pki.ca_key,
            &pki.server_cert,
            &pki.server_key,
            &pki.client_cert,
            &pki.client_key,
        ]
        .iter()
        .map(|p| fs::read(p).expect("file exists"))
        .collect()
    }

    #[test]
    fn generates_a_verifiable_pki() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let pki = ensure_dev_pki(&dir).expect("generated");
        assert_eq!(pki, DevPki::in_dir(&dir));
        for key in [&pki.ca_key, &pki.server_key, &pki.client_key] {
            let mode = fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }

        for name in ["localhost", "127.0.0.1", "::1"] {
            verify_server(&pki, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify_server(&pki, "example.com").is_err());

        // The client verifier insists on the clientAuth EKU, so it both
        // accepts the client certificate and refuses the server one.
        verify_client(&pki, &pki.client_cert).expect("client cert verifies");
        assert!(verify_client(&pki, &pki.server_cert).is_err());

        let der = cert(&pki.client_cert);
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = parsed.extended_key_usage().unwrap().expect("EKU present");
        assert!(eku.value.client_auth && !eku.value.server_auth);
        let cn = parsed.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), CLIENT_COMMON_NAME);

        // Leaves say CA:FALSE in strict DER (no encoded DEFAULT).
        for leaf in [&pki.client_cert, &pki.server_cert] {
            let der = cert(leaf);
            let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
            let bc = parsed
                .basic_constraints()
                .unwrap()
                .expect("basicConstraints");
            assert!(bc.critical && !bc.value.ca);
            let ext = parsed
                .extensions()
                .iter()
                .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_BASIC_CONSTRAINTS)
                .unwrap();
            assert_eq!(ext.value, &[0x30, 0]);
        }
    }

    #[test]
    fn second_call_keeps_files() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = ensure_dev_pki(tmp.path()).unwrap();
        let before = read_all(&pki);
        ensure_dev_pki(tmp.path()).unwrap();
        assert_eq!(read_all(&pki), before);
    }

    #[test]
    fn missing_leaf_is_reissued_by_the_existing_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = ensure_dev_pki(tmp.path()).unwrap();
        let before = read_all(&pki);
        fs::remove_file(&pki.client_cert).unwrap();
        ensure_dev_pki(tmp.path()).unwrap();
        let after = read_all(&pki);
        assert_eq!(after[..4], before[..4], "CA and server untouched");
        assert_ne!(
            after[5], before[5],
            "client key replaced with its certificate"
        );
        verify_client(&pki, &pki.client_cert).expect("new client cert verifies");
    }

    #[test]
    fn missing_ca_key_regenerates_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = ensure_dev_pki(tmp.path()).unwrap();
        let before = read_all(&pki);
        fs::remove_file(&pki.ca_key).unwrap();
        ensure_dev_pki(tmp.path()).unwrap();
        let after = read_all(&pki);
        for (i, (a, b)) in after.iter().zip(&before).enumerate() {
            assert_ne!(a, b, "file {i} regenerated");
        }
        verify_server(&pki, "localhost").expect("server cert verifies");
        verify_client(&pki, &pki.client_cert).expect("client cert verifies");
    }

    #[test]
    fn bad_key_file_names_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("ca.key"), "not a key").unwrap();
        let err = ensure_dev_pki(tmp.path()).unwrap_err();
        assert!(matches!(err, QuickstartError::BadKey { .. }));
        assert!(err.to_string().contains("ca.key"), "{err}");
    }

    #[test]
    fn connect_commands_quote_paths() {
        let pki = DevPki::in_dir(Path::new("/tmp/it's here"));
        let lines = connect_commands(&pki, 8443);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("curl --cacert '/tmp/it'\\''s here/ca.crt' "));
        assert!(lines[0].ends_with(" https://localhost:8443/"));
        assert!(
            lines[1].starts_with("openssl s_client -connect 127.0.0.1:8443 -servername localhost ")
        );
        assert!(lines[1].contains("-key '/tmp/it'\\''s here/client.key'"));

        let plain = connect_commands(&DevPki::in_dir(Path::new("/srv/pki")), 1);
        assert_eq!(
            plain[0],
            "curl --cacert /srv/pki/ca.crt --cert /srv/pki/client.crt \
             --key /srv/pki/client.key https://localhost:1/"
        );
    }

    fn connect() -> TcpStream {
        let addr = start_echo_backend(0).expect("backend");
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    /// Reads one response; returns (head, body). The body is Content-Length
    /// bytes, or none for an answer to HEAD.
    fn read_response(
        stream: &mut TcpStream,
        pending: &mut Vec<u8>,
        has_body: bool,
    ) -> (String, Vec<u8>) {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = head_end(pending) {
                let head = String::from_utf8(pending[..end].to_vec()).unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .expect("content length")
                    .parse()
                    .unwrap();
                let len = if has_body { len } else { 0 };
                if pending.len() >= end + len {
                    let body = pending[end..end + len].to_vec();
                    pending.drain(..end + len);
                    return (head, body);
                }
            }
            let n = stream.read(&mut chunk).expect("read");
            assert!(n > 0, "backend closed early");
            pending.extend_from_slice(&chunk[..n]);
        }
    }

    #[test]
    fn backend_echoes_raw_bytes() {
        let mut stream = connect();
        let message = b"hello\x00\xff backend\r\n\r\n".to_vec();
        stream.write_all(&message).unwrap();
        let mut got = vec![0; message.len()];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(got, message);
        // And keeps echoing.
        stream.write_all(b"again").unwrap();
        let mut got = [0; 5];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"again");
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(stream.read(&mut got).unwrap(), 0);
    }

    #[test]
    fn backend_echoes_uppercase_raw_bytes_after_a_wait() {
        let mut stream = connect();
        stream.write_all(b"PING").unwrap();
        let mut got = [0; 4];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"PING");
    }

    #[test]
    fn backend_answers_http_get() {
        let mut stream = connect();
        let request = b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        stream.write_all(request).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let mut pending = response;
        let (head, body) = read_response(&mut stream, &mut pending, true);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Type: text/plain\r\n"));
        assert!(head.contains("Connection: close\r\n"));
        assert_eq!(body, request);
    }

    #[test]
    fn backend_keeps_http_connection_alive() {
        let mut stream = connect();
        let first = b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec();
        let second = b"POST /two HTTP/1.1\r\nHost: localhost\r\ncontent-length: 5\r\n\r\n".to_vec();
        let mut pending = Vec::new();

        stream.write_all(&first).unwrap();
        let (head, body) = read_response(&mut stream, &mut pending, true);
        assert!(head.contains("Connection: keep-alive"), "{head}");
        assert_eq!(body, first);

        // The body trickles in after its head.
        stream.write_all(&second).unwrap();
        stream.write_all(b"ab").unwrap();
        stream.write_all(b"cde").unwrap();
        let (head, body) = read_response(&mut stream, &mut pending, true);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body, second);

        // Pipelined: two requests in one write, two answers in order.
        let third = b"HEAD /three HTTP/1.1\r\n\r\n".to_vec();
        let fourth = b"GET /four HTTP/1.0\r\n\r\n".to_vec();
        stream
            .write_all(&[third.clone(), fourth.clone()].concat())
            .unwrap();
        let (head, _) = read_response(&mut stream, &mut pending, false);
        assert!(head.contains(&format!("Content-Length: {}\r\n", third.len())));
        let (head, body) = read_response(&mut stream, &mut pending, true);
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert_eq!(body, fourth);
        // HTTP/1.0 without keep-alive closes.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(pending.is_empty() && rest.is_empty());
    }
}
