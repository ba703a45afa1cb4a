//! Loading certificates and private keys from files, and the few facts about
//! a certificate the rest of the program needs (validity, subject).
//!
//! Formats are recognised by content, not by file extension, because `.crt`
//! and `.cer` are used for both PEM and DER in the wild: a file containing a
//! PEM `-----BEGIN` line is PEM, anything else is DER. Every error names the
//! file it is about; no error ever includes key material.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

#[cfg(test)]
pub(crate) mod test_pki;

/// Largest certificate or key file read. Real files are a few KiB; the cap
/// keeps a mistyped path such as `/dev/zero` from exhausting memory.
const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;

/// Why a certificate or key could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {}", path.display(), io_reason(cause))]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        cause: io::Error,
    },
    /// The file is larger than any certificate or key file should be.
    #[error("{}: file is larger than {} MiB; not a certificate or key file", path.display(), MAX_FILE_SIZE >> 20)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file looks like PEM but is malformed.
    #[error("{}: malformed PEM: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser reported.
        reason: String,
    },
    /// The file holds no certificate.
    #[error("{}: no certificate found (expected PEM 'CERTIFICATE' blocks or DER)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in the file is not valid X.509.
    #[error("{}: certificate #{index} is not valid X.509: {reason}", path.display())]
    InvalidCertificate {
        /// The file.
        path: PathBuf,
        /// 1-based position of the certificate in the file.
        index: usize,
        /// What the parser reported.
        reason: String,
    },
    /// A CA certificate cannot serve as a trust anchor.
    #[error("{}: certificate #{index} cannot be used as a trust anchor: {reason}", path.display())]
    BadTrustAnchor {
        /// The file.
        path: PathBuf,
        /// 1-based position of the certificate in the file.
        index: usize,
        /// What rustls reported.
        reason: String,
    },
    /// The file holds no private key in a supported format.
    #[error("{}: no private key found (expected PEM PKCS#8/SEC1/PKCS#1 or DER PKCS#8)", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The file holds an encrypted private key, which is not supported.
    #[error("{}: private key is encrypted; store it unencrypted (e.g. `openssl pkey -in KEY -out KEY.plain`)", path.display())]
    EncryptedKey {
        /// The file.
        path: PathBuf,
    },
    /// The file holds more than one private key, so which one to use is ambiguous.
    #[error("{}: more than one private key found; keep exactly one", path.display())]
    MultipleKeys {
        /// The file.
        path: PathBuf,
    },
    /// The key parsed but the crypto provider cannot use it (corrupt or an
    /// unsupported algorithm or curve).
    #[error("private key {} is not usable: {reason}", Shown(path.as_deref()))]
    UnusableKey {
        /// The file, when known.
        path: Option<PathBuf>,
        /// What the crypto provider reported.
        reason: String,
    },
    /// The end-entity certificate does not belong to the private key.
    #[error("certificate {} does not match private key {}", Shown(cert.as_deref()), Shown(key.as_deref()))]
    KeyMismatch {
        /// The certificate file, when known.
        cert: Option<PathBuf>,
        /// The key file, when known.
        key: Option<PathBuf>,
    },
    /// The chain is empty, so there is nothing to match the key against.
    #[error("certificate chain {} is empty", Shown(path.as_deref()))]
    EmptyChain {
        /// The certificate file, when known.
        path: Option<PathBuf>,
    },
    /// A certificate given in memory could not be parsed. Certificates from
    /// [`load_certs`] were already parsed, so they never produce this.
    #[error("certificate cannot be parsed: {reason}")]
    Unparsable {
        /// What the parser reported.
        reason: String,
    },
}

impl CertError {
    /// Fills in the file names of errors raised by functions that only see
    /// bytes ([`check_key_matches`]), so the message names the files.
    pub fn with_files(self, cert_path: &Path, key_path: &Path) -> Self {
        match self {
            CertError::KeyMismatch { .. } => CertError::KeyMismatch {
                cert: Some(cert_path.to_path_buf()),
                key: Some(key_path.to_path_buf()),
            },
            CertError::UnusableKey { path: None, reason } => CertError::UnusableKey {
                path: Some(key_path.to_path_buf()),
                reason,
            },
            CertError::EmptyChain { path: None } => CertError::EmptyChain {
                path: Some(cert_path.to_path_buf()),
            },
            other => other,
        }
    }
}

/// Displays an optional path, or nothing-in-particular when it is unknown.
struct Shown<'a>(Option<&'a Path>);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{}", p.display()),
            None => f.write_str("(in memory)"),
        }
    }
}

/// The I/O error text without the `(os error N)` suffix, which tells an
/// operator nothing the message does not.
fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

/// Reads a whole file, refusing anything over [`MAX_FILE_SIZE`].
fn read_file(path: &Path) -> Result<Vec<u8>, CertError> {
    let read_err = |cause| CertError::Read {
        path: path.to_path_buf(),
        cause,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(CertError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether the bytes contain a PEM section start; otherwise they are DER.
fn looks_like_pem(bytes: &[u8]) -> bool {
    contains(bytes, b"-----BEGIN ")
}

fn pem_error(path: &Path, e: pem::Error) -> CertError {
    match e {
        pem::Error::Io(cause) => CertError::Read {
            path: path.to_path_buf(),
            cause,
        },
        other => CertError::Pem {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// Parses one DER certificate, returning how many bytes it used.
fn parse_one(der: &[u8]) -> Result<(X509Certificate<'_>, usize), String> {
    match X509Certificate::from_der(der) {
        Ok((rest, cert)) => Ok((cert, der.len() - rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Loads a certificate chain (or CA bundle) from a PEM or DER file.
///
/// PEM: every `CERTIFICATE` block, in file order; other blocks are ignored.
/// DER: one certificate, or several concatenated. Each certificate is parsed
/// as X.509 here so that a broken one is reported with its file and position.
/// At least one certificate is required.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = read_file(path)?;
    let certs = if looks_like_pem(&bytes) {
        CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(path, e))?
    } else {
        split_der_certs(path, &bytes)?
    };
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    for (i, cert) in certs.iter().enumerate() {
        let invalid = |reason| CertError::InvalidCertificate {
            path: path.to_path_buf(),
            index: i + 1,
            reason,
        };
        let (_, used) = parse_one(cert).map_err(invalid)?;
        if used != cert.len() {
            return Err(invalid(format!(
                "{} unexpected bytes after the certificate",
                cert.len() - used
            )));
        }
    }
    Ok(certs)
}

/// Splits concatenated DER certificates.
fn split_der_certs(
    path: &Path,
    mut bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let mut certs = Vec::new();
    while !bytes.is_empty() {
        let (_, used) = parse_one(bytes).map_err(|reason| {
            if certs.is_empty() && bytes.first() != Some(&0x30) {
                // Not even an ASN.1 SEQUENCE: this is not a DER file at all.
                CertError::NoCertificate {
                    path: path.to_path_buf(),
                }
            } else {
                CertError::InvalidCertificate {
                    path: path.to_path_buf(),
                    index: certs.len() + 1,
                    reason,
                }
            }
        })?;
        certs.push(CertificateDer::from(bytes[..used].to_vec()));
        bytes = &bytes[used..];
    }
    Ok(certs)
}

/// Loads client CA certificates and checks that each one can serve as a
/// trust anchor, so a bad bundle fails at load time rather than at the first
/// handshake.
pub fn load_client_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = load_certs(path)?;
    let mut store = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        store
            .add(cert.clone())
            .map_err(|e| CertError::BadTrustAnchor {
                path: path.to_path_buf(),
                index: i + 1,
                reason: e.to_string(),
            })?;
    }
    Ok(certs)
}

/// Loads a private key from a PEM file (PKCS#8, SEC1 EC or PKCS#1 RSA) or a
/// DER file (PKCS#8; SEC1 and PKCS#1 are recognised too), and checks that
/// the crypto provider can use it.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let bytes = read_file(path)?;
    let no_key = || CertError::NoPrivateKey {
        path: path.to_path_buf(),
    };
    let key = if looks_like_pem(&bytes) {
        if contains(&bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY")
            || contains(&bytes, b"Proc-Type: 4,ENCRYPTED")
        {
            return Err(CertError::EncryptedKey {
                path: path.to_path_buf(),
            });
        }
        let mut keys = PrivateKeyDer::pem_slice_iter(&bytes);
        let key = keys
            .next()
            .ok_or_else(no_key)?
            .map_err(|e| pem_error(path, e))?;
        if keys.next().is_some() {
            return Err(CertError::MultipleKeys {
                path: path.to_path_buf(),
            });
        }
        key
    } else {
        PrivateKeyDer::try_from(bytes.as_slice())
            .map_err(|_| no_key())?
            .clone_key()
    };
    provider_key(&key).map_err(|e| match e {
        CertError::UnusableKey { reason, .. } => CertError::UnusableKey {
            path: Some(path.to_path_buf()),
            reason,
        },
        other => other,
    })?;
    Ok(key)
}

/// Loads the key into the aws-lc-rs key provider, the same one the server
/// configuration uses.
fn provider_key(
    key: &PrivateKeyDer<'_>,
) -> Result<std::sync::Arc<dyn rustls::sign::SigningKey>, CertError> {
    rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| CertError::UnusableKey {
            path: None,
            reason: e.to_string(),
        })
}

/// Checks that the chain's end-entity certificate (the first) carries the
/// public key of `key`. Errors name no files; [`CertError::with_files`] or
/// [`check_key_pair`] add them.
pub fn check_key_matches(
    chain: &[CertificateDer<'_>],
    key: &PrivateKeyDer<'_>,
) -> Result<(), CertError> {
    if chain.is_empty() {
        return Err(CertError::EmptyChain { path: None });
    }
    let signing_key = provider_key(key)?;
    let owned = chain.iter().map(|c| c.clone().into_owned()).collect();
    CertifiedKey::new(owned, signing_key)
        .keys_match()
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch {
                cert: None,
                key: None,
            },
            other => CertError::Unparsable {
                reason: other.to_string(),
            },
        })
}

/// [`check_key_matches`] with errors naming the two files.
pub fn check_key_pair(
    cert_path: &Path,
    chain: &[CertificateDer<'_>],
    key_path: &Path,
    key: &PrivateKeyDer<'_>,
) -> Result<(), CertError> {
    check_key_matches(chain, key).map_err(|e| match e {
        CertError::Unparsable { reason } => CertError::InvalidCertificate {
            path: cert_path.to_path_buf(),
            index: 1,
            reason,
        },
        other => other.with_files(cert_path, key_path),
    })
}

fn parse(cert: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    parse_one(cert)
        .map(|(c, _)| c)
        .map_err(|reason| CertError::Unparsable { reason })
}

/// Converts seconds since the Unix epoch to a `SystemTime` without panicking
/// on out-of-range values.
fn system_time(unix_secs: i64) -> Option<SystemTime> {
    let magnitude = Duration::from_secs(unix_secs.unsigned_abs());
    if unix_secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(magnitude)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(magnitude)
    }
}

/// The certificate's validity period: `(not_before, not_after)`.
pub fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), CertError> {
    let parsed = parse(cert)?;
    let v = parsed.validity();
    let convert = |t: i64| {
        system_time(t).ok_or_else(|| CertError::Unparsable {
            reason: format!("validity time {t} is out of range"),
        })
    };
    Ok((
        convert(v.not_before.timestamp())?,
        convert(v.not_after.timestamp())?,
    ))
}

/// Formats a time as RFC 3339 UTC (`2025-01-31T12:00:00Z`) for messages.
pub fn format_time(t: SystemTime) -> String {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        ),
        Err(_) => format!("{secs}s since 1970"),
    }
}

/// The certificate's subject as an RFC 4514 string, most specific attribute
/// first (`CN=client,O=Example`), or `<unparsable>`.
///
/// Control characters are escaped as `\XX`, so a hostile subject cannot
/// forge lines in the access log.
pub fn subject(cert: &CertificateDer<'_>) -> String {
    match parse(cert) {
        Ok(c) => name_to_string(c.subject()),
        Err(_) => "<unparsable>".to_string(),
    }
}

/// The first subject common name, if the certificate has one.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let c = parse(cert).ok()?;
    let cn = c.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The names in a certificate that policies and backends look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    /// Subject common names.
    pub common_names: Vec<String>,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs among them).
    pub uris: Vec<String>,
}

/// The certificate's names, or `None` when it does not parse.
pub fn cert_names(der: &CertificateDer<'_>) -> Option<CertNames> {
    let cert = parse(der).ok()?;
    let common_names = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    let mut dns = Vec::new();
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns.push(n.to_string()),
                GeneralName::URI(u) => uris.push(u.to_string()),
                _ => {}
            }
        }
    }
    Some(CertNames {
        common_names,
        dns,
        uris,
    })
}

/// RFC 4514 order is the reverse of the encoded order.
fn name_to_string(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for (i, rdn) in name
        .iter_rdn()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            push_attribute(&mut out, attr);
        }
    }
    out
}

fn push_attribute(out: &mut String, attr: &AttributeTypeAndValue<'_>) {
    let oid = attr.attr_type().to_id_string();
    let short = match oid.as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => oid.as_str(),
    };
    out.push_str(short);
    out.push('=');
    match attr.as_str() {
        Ok(value) => push_escaped(out, value),
        Err(_) => {
            // Not a string type RFC 4514 can print: hex form.
            out.push('#');
            for b in attr.as_slice() {
                out.push_str(&format!("{b:02x}"));
            }
        }
    }
}

/// Escapes a value per RFC 4514 section 2.4, plus control characters.
fn push_escaped(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_pki::{openssl, Pki};
    use super::*;
    use std::fs;

    #[test]
    fn pem_chain_round_trip() {
        let pki = Pki::new();
        let certs = load_certs(&pki.path("server.crt")).unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0], pki.server_cert_der);
        // A chain file with the CA appended loads both, in order.
        let chain = pki.write(
            "chain.pem",
            format!("{}{}", pki.server_cert_pem, pki.ca_cert_pem).as_bytes(),
        );
        let certs = load_certs(&chain).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[1], pki.ca_cert_der);
    }

    #[test]
    fn der_cert_and_key_round_trip() {
        let pki = Pki::new();
        let crt = pki.write("server.der", &pki.server_cert_der);
        // `.crt` holding DER: the content decides, not the extension.
        let crt2 = pki.write("server-der.crt", &pki.server_cert_der);
        let key = pki.write("server-key.der", &pki.server_key_der);
        assert_eq!(load_certs(&crt).unwrap(), vec![pki.server_cert_der.clone()]);
        assert_eq!(
            load_certs(&crt2).unwrap(),
            vec![pki.server_cert_der.clone()]
        );
        let key = load_private_key(&key).unwrap();
        assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
        check_key_matches(&load_certs(&crt).unwrap(), &key).unwrap();
    }

    #[test]
    fn concatenated_der_certs() {
        let pki = Pki::new();
        let mut both = pki.server_cert_der.to_vec();
        both.extend_from_slice(&pki.ca_cert_der);
        let path = pki.write("both.der", &both);
        assert_eq!(load_certs(&path).unwrap().len(), 2);
    }

    #[test]
    fn ecdsa_pkcs8_pem_key_matches() {
        let pki = Pki::new();
        let chain = load_certs(&pki.path("server.crt")).unwrap();
        let key = load_private_key(&pki.path("server.key")).unwrap();
        assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
        check_key_matches(&chain, &key).unwrap();
        check_key_pair(
            &pki.path("server.crt"),
            &chain,
            &pki.path("server.key"),
            &key,
        )
        .unwrap();
    }

    #[test]
    fn rsa_key_pkcs8_and_pkcs1() {
        let pki = Pki::new();
        let (crt, key) = pki.rsa_pair();
        let chain = load_certs(&crt).unwrap();
        let k = load_private_key(&key).unwrap();
        check_key_matches(&chain, &k).unwrap();
        let Some(pkcs1) = openssl(&pki, &["rsa", "-traditional", "-in"], &key, "rsa-pkcs1.key")
        else {
            return;
        };
        assert!(fs::read_to_string(&pkcs1)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY"));
        let k1 = load_private_key(&pkcs1).unwrap();
        assert!(matches!(k1, PrivateKeyDer::Pkcs1(_)));
        check_key_matches(&chain, &k1).unwrap();
    }

    #[test]
    fn sec1_ec_key() {
        let pki = Pki::new();
        let Some(sec1) = openssl(&pki, &["ec", "-in"], &pki.path("server.key"), "sec1.key") else {
            return;
        };
        assert!(fs::read_to_string(&sec1)
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY"));
        let key = load_private_key(&sec1).unwrap();
        assert!(matches!(key, PrivateKeyDer::Sec1(_)));
        check_key_matches(std::slice::from_ref(&pki.server_cert_der), &key).unwrap();
    }

    #[test]
    fn missing_file() {
        let pki = Pki::new();
        let path = pki.path("nope.crt");
        let e = load_certs(&path).unwrap_err();
        assert!(matches!(e, CertError::Read { .. }));
        assert_eq!(
            e.to_string(),
            format!("cannot read {}: No such file or directory", path.display())
        );
        let e = load_private_key(&pki.path("nope.key")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read "), "{e}");
    }

    #[test]
    fn directory_is_a_read_error() {
        let pki = Pki::new();
        let e = load_certs(pki.dir()).unwrap_err();
        assert!(matches!(e, CertError::Read { .. }), "{e}");
    }

    #[test]
    fn garbage_files() {
        let pki = Pki::new();
        let g = pki.write("garbage.crt", b"this is not a certificate\n");
        let e = load_certs(&g).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: no certificate found (expected PEM 'CERTIFICATE' blocks or DER)",
                g.display()
            )
        );
        let e = load_private_key(&g).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: no private key found (expected PEM PKCS#8/SEC1/PKCS#1 or DER PKCS#8)",
                g.display()
            )
        );
        // Starts like DER but is truncated.
        let mut cut = pki.server_cert_der.to_vec();
        cut.truncate(cut.len() / 2);
        let t = pki.write("cut.der", &cut);
        let e = load_certs(&t).unwrap_err();
        assert!(
            matches!(e, CertError::InvalidCertificate { index: 1, .. }),
            "{e}"
        );
        // Valid PEM armour around bytes that are not a certificate.
        let p = pki.write(
            "fake.pem",
            b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let e = load_certs(&p).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "{}: certificate #1 is not valid X.509",
                p.display()
            )),
            "{e}"
        );
        // Broken armour.
        let b = pki.write("broken.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n");
        let e = load_certs(&b).unwrap_err();
        assert!(matches!(e, CertError::Pem { .. }), "{e}");
    }

    #[test]
    fn empty_pem_and_empty_file() {
        let pki = Pki::new();
        let empty = pki.write("empty.pem", b"");
        assert!(matches!(
            load_certs(&empty).unwrap_err(),
            CertError::NoCertificate { .. }
        ));
        assert!(matches!(
            load_private_key(&empty).unwrap_err(),
            CertError::NoPrivateKey { .. }
        ));
        // A PEM file holding only a key has no certificate, and vice versa.
        let e = load_certs(&pki.path("server.key")).unwrap_err();
        assert!(matches!(e, CertError::NoCertificate { .. }), "{e}");
        let e = load_private_key(&pki.path("server.crt")).unwrap_err();
        assert!(matches!(e, CertError::NoPrivateKey { .. }), "{e}");
    }

    #[test]
    fn encrypted_and_multiple_keys_are_refused() {
        let pki = Pki::new();
        let enc = pki.write(
            "enc.key",
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        assert!(matches!(
            load_private_key(&enc).unwrap_err(),
            CertError::EncryptedKey { .. }
        ));
        let two = pki.write(
            "two.key",
            format!("{}{}", pki.server_key_pem, pki.ca_key_pem).as_bytes(),
        );
        assert!(matches!(
            load_private_key(&two).unwrap_err(),
            CertError::MultipleKeys { .. }
        ));
    }

    #[test]
    fn corrupt_key_is_unusable() {
        let pki = Pki::new();
        let bad = pki.write(
            "bad.key",
            b"-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----\n",
        );
        let e = load_private_key(&bad).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("private key {} is not usable", bad.display())),
            "{e}"
        );
    }

    #[test]
    fn mismatched_key_and_cert() {
        let pki = Pki::new();
        let chain = load_certs(&pki.path("server.crt")).unwrap();
        let other = load_private_key(&pki.path("client.key")).unwrap();
        let e = check_key_matches(&chain, &other).unwrap_err();
        assert!(matches!(e, CertError::KeyMismatch { .. }), "{e}");
        let (crt, key) = (pki.path("server.crt"), pki.path("client.key"));
        let e = check_key_pair(&crt, &chain, &key, &other).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "certificate {} does not match private key {}",
                crt.display(),
                key.display()
            )
        );
        // An RSA key against an ECDSA certificate is a mismatch too.
        let (_, rsa_key) = pki.rsa_pair();
        let rsa = load_private_key(&rsa_key).unwrap();
        assert!(matches!(
            check_key_matches(&chain, &rsa).unwrap_err(),
            CertError::KeyMismatch { .. }
        ));
        assert!(matches!(
            check_key_matches(&[], &rsa).unwrap_err(),
            CertError::EmptyChain { .. }
        ));
    }

    #[test]
    fn subject_string() {
        let pki = Pki::new();
        assert_eq!(subject(&pki.client_cert_der), "CN=client,O=Example");
        assert_eq!(subject(&pki.ca_cert_der), "CN=tlsplice test CA");
        assert_eq!(
            subject(&CertificateDer::from(vec![1, 2, 3])),
            "<unparsable>"
        );
        let mut s = String::new();
        push_escaped(&mut s, " a,b+c\nd ");
        assert_eq!(s, "\\ a\\,b\\+c\\0Ad\\ ");
    }

    #[test]
    fn validity_period() {
        let pki = Pki::new();
        let (nb, na) = validity(&pki.server_cert_der).unwrap();
        let now = SystemTime::now();
        assert!(nb < now && now < na);
        let (nb, na) = validity(&pki.expired_cert_der).unwrap();
        assert_eq!(format_time(nb), "2000-01-01T00:00:00Z");
        assert_eq!(format_time(na), "2001-01-01T00:00:00Z");
        assert!(validity(&CertificateDer::from(vec![0x30, 0])).is_err());
    }

    #[test]
    fn client_ca_must_be_a_trust_anchor() {
        let pki = Pki::new();
        assert_eq!(load_client_ca(&pki.path("ca.crt")).unwrap().len(), 1);
    }
}
