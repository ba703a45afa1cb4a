//! PKCS#12 (`.p12`, `.pfx`) identities: a certificate chain and its private
//! key in one password-protected file, as Windows, Java and
//! `openssl pkcs12 -export` produce them.
//!
//! Decoding is p12-keystore's, which reads both the modern form (PBES2 with
//! PBKDF2 and AES-CBC, HMAC-SHA-256 MAC: OpenSSL 3's default) and the
//! legacy PBES1 forms (3DES, RC2) older tools write.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// PKCS#12 files hold one identity; anything this big is not one.
const MAX_PKCS12_FILE_SIZE: u64 = 16 * 1024 * 1024;

/// Why a PKCS#12 file could not be loaded. No variant carries the password
/// or key material.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs12Error {
    /// The file could not be opened or read.
    #[error("cannot read PKCS#12 file {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        cause: io::Error,
    },
    /// The file is larger than any PKCS#12 identity should be.
    #[error("PKCS#12 file {}: larger than {} MiB", path.display(), MAX_PKCS12_FILE_SIZE >> 20)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The integrity check failed: almost always the wrong password.
    #[error("PKCS#12 file {}: wrong password (integrity check failed)", path.display())]
    WrongPassword {
        /// The file.
        path: PathBuf,
    },
    /// The file is not PKCS#12, or uses an algorithm that is not supported.
    #[error("PKCS#12 file {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the decoder reported.
        reason: String,
    },
    /// The file holds no private key with a matching certificate.
    #[error("PKCS#12 file {}: no private key with its certificate found", path.display())]
    NoIdentity {
        /// The file.
        path: PathBuf,
    },
    /// A certificate-only file holds no certificate, or several (and no
    /// key to say which is the client's).
    #[error("PKCS#12 file {}: holds {count} certificates and no private key; expected one client certificate", path.display())]
    NotOneCertificate {
        /// The file.
        path: PathBuf,
        /// How many certificates it holds.
        count: usize,
    },
}

/// Loads the certificate chain (end entity first) and private key from a
/// PKCS#12 file.
///
/// The chain is the key's certificate followed by the issuers found in the
/// file, as linked by p12-keystore; when the file holds several keys, the
/// first is used.
pub fn load_pkcs12(
    path: &Path,
    password: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Pkcs12Error> {
    let store = read_store(path, password, Pkcs12ImportPolicy::Strict)?;
    identity(&store).map_err(|e| e.at(path))
}

/// Loads one client certificate from a PKCS#12 file, for an allowlist
/// alias: the certificate of the key when the file holds one (a client's
/// own bundle), else the file's only certificate (a certificate-only
/// bundle, as trust-store tools export).
pub fn load_pkcs12_certificate(
    path: &Path,
    password: &str,
) -> Result<CertificateDer<'static>, Pkcs12Error> {
    let store = read_store(path, password, Pkcs12ImportPolicy::Strict)?;
    if let Ok((mut chain, _)) = identity(&store) {
        return Ok(chain.swap_remove(0));
    }
    // No key: read every certificate bag, including the ones without the
    // Java "trusted" mark that `openssl pkcs12 -nokeys` writes.
    let store = read_store(path, password, Pkcs12ImportPolicy::Raw)?;
    let certs: Vec<&p12_keystore::Certificate> = store
        .entries()
        .filter_map(|(_, entry)| match entry {
            KeyStoreEntry::Certificate(cert) => Some(cert),
            _ => None,
        })
        .collect();
    match certs.as_slice() {
        [only] => Ok(CertificateDer::from(only.as_der().to_vec())),
        _ => Err(Pkcs12Error::NotOneCertificate {
            path: path.to_path_buf(),
            count: certs.len(),
        }),
    }
}

/// Reads and decrypts a PKCS#12 file.
fn read_store(
    path: &Path,
    password: &str,
    policy: Pkcs12ImportPolicy,
) -> Result<KeyStore, Pkcs12Error> {
    let read_err = |cause| Pkcs12Error::Read {
        path: path.to_path_buf(),
        cause,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(read_err)?
        .take(MAX_PKCS12_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_PKCS12_FILE_SIZE {
        return Err(Pkcs12Error::TooLarge {
            path: path.to_path_buf(),
        });
    }
    decode(&bytes, password, policy).map_err(|e| e.at(path))
}

/// Why in-memory PKCS#12 bytes could not be decoded; [`load_pkcs12`] adds
/// the file name.
#[derive(Debug)]
enum Problem {
    WrongPassword,
    Invalid(String),
    NoIdentity,
}

impl Problem {
    fn at(self, path: &Path) -> Pkcs12Error {
        let path = path.to_path_buf();
        match self {
            Problem::WrongPassword => Pkcs12Error::WrongPassword { path },
            Problem::Invalid(reason) => Pkcs12Error::Invalid { path, reason },
            Problem::NoIdentity => Pkcs12Error::NoIdentity { path },
        }
    }
}

fn decode(bytes: &[u8], password: &str, policy: Pkcs12ImportPolicy) -> Result<KeyStore, Problem> {
    KeyStore::from_pkcs12(bytes, password, policy).map_err(|e| match e {
        // The MAC is checked before anything is decrypted, so a MAC
        // failure means the password, not corruption further in.
        p12_keystore::error::Error::MacError(_) => Problem::WrongPassword,
        other => Problem::Invalid(other.to_string()),
    })
}

/// The first key's chain and the key.
fn identity(
    store: &KeyStore,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Problem> {
    let (_, chain) = store.private_key_chain().ok_or(Problem::NoIdentity)?;
    if chain.certs().is_empty() {
        return Err(Problem::NoIdentity);
    }
    let certs = chain
        .certs()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().as_der().to_vec()));
    Ok((certs, key))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{leaf, Ca, Leaf, LeafSpec};
    use super::*;
    use std::process::Command;

    struct Exported {
        _dir: tempfile::TempDir,
        p12: PathBuf,
        client: Leaf,
        intermediate: Ca,
    }

    /// Exports a leaf, its key and its issuing intermediate with
    /// `openssl pkcs12 -export` and `extra` arguments, password `s3cret`;
    /// `None` (with a note) when openssl is not installed.
    fn export(extra: &[&str]) -> Option<Exported> {
        let dir = tempfile::tempdir().unwrap();
        let intermediate = Ca::root("p12 root").intermediate("p12 intermediate");
        let client = leaf(&intermediate, &LeafSpec::cn("p12 client"));
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = write("client.crt", &client.cert_pem);
        let key = write("client.key", &client.key_pem);
        let ca = write("ca.crt", &intermediate.cert_pem);
        let p12 = dir.path().join("client.p12");
        let status = Command::new("openssl")
            .args(["pkcs12", "-export", "-passout", "pass:s3cret", "-in"])
            .arg(&cert)
            .arg("-inkey")
            .arg(&key)
            .arg("-certfile")
            .arg(&ca)
            .arg("-out")
            .arg(&p12)
            .args(extra)
            .status();
        match status {
            Ok(s) if s.success() => Some(Exported {
                _dir: dir,
                p12,
                client,
                intermediate,
            }),
            Ok(s) => panic!("openssl pkcs12 -export {extra:?} failed: {s}"),
            Err(e) => {
                println!("note: openssl is not available ({e}); PKCS#12 test skipped");
                None
            }
        }
    }

    fn check_round_trip(extra: &[&str]) {
        let Some(x) = export(extra) else { return };
        let (chain, key) = load_pkcs12(&x.p12, "s3cret").unwrap();
        assert_eq!(
            chain,
            vec![x.client.cert.clone(), x.intermediate.cert.clone()]
        );
        assert_eq!(key, x.client.key());
        // What came out is usable as a rustls identity.
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signing = provider.key_provider.load_private_key(key).unwrap();
        rustls::sign::CertifiedKey::new(chain, signing)
            .keys_match()
            .unwrap();
    }

    #[test]
    fn openssl3_default_aes_pkcs12() {
        // OpenSSL 3 defaults: PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC,
        // HMAC-SHA-256 MAC.
        check_round_trip(&[]);
    }

    #[test]
    fn legacy_3des_pkcs12() {
        check_round_trip(&[
            "-keypbe",
            "PBE-SHA1-3DES",
            "-certpbe",
            "PBE-SHA1-3DES",
            "-macalg",
            "sha1",
        ]);
    }

    #[test]
    fn wrong_password_and_bad_files() {
        let Some(x) = export(&[]) else { return };
        let e = load_pkcs12(&x.p12, "guess").unwrap_err();
        assert!(matches!(e, Pkcs12Error::WrongPassword { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "PKCS#12 file {}: wrong password (integrity check failed)",
                x.p12.display()
            )
        );
        assert!(!e.to_string().contains("guess"));

        let junk = x.p12.with_extension("junk");
        std::fs::write(&junk, b"not pkcs12").unwrap();
        let e = load_pkcs12(&junk, "s3cret").unwrap_err();
        assert!(matches!(e, Pkcs12Error::Invalid { .. }), "{e}");

        let e = load_pkcs12(&x.p12.with_extension("missing"), "s3cret").unwrap_err();
        assert!(matches!(e, Pkcs12Error::Read { .. }), "{e}");
    }

    #[test]
    fn alias_certificate_from_a_bundle_or_a_certificate_only_file() {
        let Some(x) = export(&[]) else { return };
        // With a key: the key's certificate, not its issuer.
        let cert = load_pkcs12_certificate(&x.p12, "s3cret").unwrap();
        assert_eq!(cert, x.client.cert);

        let dir = x.p12.parent().unwrap();
        // Certificate-only bundles, as `openssl pkcs12 -nokeys` writes them.
        let certs_only = |name: &str, extra: &[&str]| {
            let out = dir.join(name);
            let status = Command::new("openssl")
                .args(["pkcs12", "-export", "-nokeys", "-passout", "pass:pw", "-in"])
                .arg(dir.join("client.crt"))
                .args(extra)
                .arg("-out")
                .arg(&out)
                .status()
                .unwrap();
            assert!(status.success());
            out
        };
        let only = certs_only("only.p12", &[]);
        assert_eq!(load_pkcs12_certificate(&only, "pw").unwrap(), x.client.cert);
        let e = load_pkcs12_certificate(&only, "nope").unwrap_err();
        assert!(matches!(e, Pkcs12Error::WrongPassword { .. }), "{e}");
        // Without a key, two certificates are ambiguous.
        let ca = dir.join("ca.crt");
        let two = certs_only("two.p12", &["-certfile", ca.to_str().unwrap()]);
        let e = load_pkcs12_certificate(&two, "pw").unwrap_err();
        assert!(
            matches!(e, Pkcs12Error::NotOneCertificate { count: 2, .. }),
            "{e}"
        );
    }
}
