//! Certificate revocation lists: loading them from files and reading the
//! facts the verifier needs (when the next one is due).
//!
//! Formats are recognised by content, like certificates (see
//! [`crate::tls::certs`]): a file with a PEM `-----BEGIN` line holds one or
//! more `X509 CRL` blocks, anything else is one DER CRL.
//!
//! Every CRL is checked here with webpki's own parser, entries included,
//! so a broken file is reported with its name when loaded rather than as
//! an anonymous error when the verifier is built. The revocation lookups
//! themselves are webpki's: rustls turns each CRL into an
//! `OwnedCertRevocationList`, whose revoked serials are a `BTreeMap`, so a
//! lookup is `O(log n)` in the entries, never a scan. The verifier only
//! scans the list of CRLs to find the one whose issuer matches.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateRevocationListDer, UnixTime};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::der::{time_value, tlv, GENERALIZED_TIME, INTEGER, SEQUENCE, UTC_TIME};

/// Largest CRL file read. A CRL with a million entries is about 40 MiB;
/// the cap keeps a mistyped path from exhausting memory.
const MAX_CRL_FILE_SIZE: u64 = 256 * 1024 * 1024;

/// Why a CRL could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    /// The file could not be opened or read.
    #[error("cannot read CRL {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        cause: io::Error,
    },
    /// The file is larger than any CRL should be.
    #[error("CRL {}: file is larger than {} MiB", path.display(), MAX_CRL_FILE_SIZE >> 20)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file looks like PEM but is malformed.
    #[error("CRL {}: malformed PEM: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser reported.
        reason: String,
    },
    /// The file holds no CRL.
    #[error("CRL {}: no CRL found (expected PEM 'X509 CRL' blocks or DER)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A CRL is not one webpki can use.
    #[error("CRL {}#{index}: {reason}", path.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "(in memory)".into()))]
    Invalid {
        /// The file, when known.
        path: Option<PathBuf>,
        /// 1-based position of the CRL in the file.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// One parsed, validated CRL.
#[derive(Debug, Clone)]
pub struct Crl {
    der: CertificateRevocationListDer<'static>,
    this_update: UnixTime,
    next_update: UnixTime,
    entries: usize,
}

impl Crl {
    /// Validates a DER CRL. webpki accepts only version 2 CRLs with a
    /// `nextUpdate`, which is why every [`Crl`] has one.
    pub fn from_der(der: CertificateRevocationListDer<'static>) -> Result<Self, CrlError> {
        let invalid = |reason: String| CrlError::Invalid {
            path: None,
            index: 1,
            reason,
        };
        let parsed = webpki::BorrowedCertRevocationList::from_der(der.as_ref())
            .map_err(|e| invalid(format!("not a usable CRL: {e}")))?;
        let mut entries = 0;
        for entry in &parsed {
            entry.map_err(|e| invalid(format!("revoked certificate #{}: {e}", entries + 1)))?;
            entries += 1;
        }
        let (this_update, next_update) = update_times(der.as_ref())
            .map_err(|reason| invalid(format!("cannot read thisUpdate/nextUpdate: {reason}")))?;
        let next_update = next_update.ok_or_else(|| invalid("has no nextUpdate".into()))?;
        Ok(Crl {
            der,
            this_update,
            next_update,
            entries,
        })
    }

    /// The DER encoding, for the verifier.
    pub fn der(&self) -> &CertificateRevocationListDer<'static> {
        &self.der
    }

    /// When this CRL was issued.
    pub fn this_update(&self) -> UnixTime {
        self.this_update
    }

    /// When the issuer promises the next CRL. Cached verdicts do not
    /// outlive it.
    pub fn next_update(&self) -> UnixTime {
        self.next_update
    }

    /// How many revoked certificates it lists.
    pub fn entries(&self) -> usize {
        self.entries
    }
}

/// Loads every CRL in a PEM or DER file, in file order.
pub fn load_crls(path: &Path) -> Result<Vec<Crl>, CrlError> {
    let bytes = read_file(path)?;
    let ders = if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CrlError::Pem {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?
    } else if bytes.is_empty() {
        Vec::new()
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    if ders.is_empty() {
        return Err(CrlError::Empty {
            path: path.to_path_buf(),
        });
    }
    ders.into_iter()
        .enumerate()
        .map(|(i, der)| {
            Crl::from_der(der).map_err(|e| match e {
                CrlError::Invalid { reason, .. } => CrlError::Invalid {
                    path: Some(path.to_path_buf()),
                    index: i + 1,
                    reason,
                },
                other => other,
            })
        })
        .collect()
}

fn read_file(path: &Path) -> Result<Vec<u8>, CrlError> {
    let read_err = |cause| CrlError::Read {
        path: path.to_path_buf(),
        cause,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_CRL_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CRL_FILE_SIZE {
        return Err(CrlError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Reads `thisUpdate` and `nextUpdate` from the head of a CRL (RFC 5280
/// §5.1). webpki parses them but does not expose them; walking the few
/// fields before them is cheaper than parsing the whole CRL a second time
/// with another X.509 library.
fn update_times(der: &[u8]) -> Result<(UnixTime, Option<UnixTime>), &'static str> {
    let (tag, cert_list, _) = tlv(der)?;
    if tag != SEQUENCE {
        return Err("CertificateList is not a SEQUENCE");
    }
    let (tag, mut tbs, _) = tlv(cert_list)?;
    if tag != SEQUENCE {
        return Err("TBSCertList is not a SEQUENCE");
    }
    // version INTEGER OPTIONAL, signature AlgorithmIdentifier, issuer Name
    let (tag, _, rest) = tlv(tbs)?;
    tbs = if tag == INTEGER { tlv(rest)?.2 } else { rest };
    let (_, _, rest) = tlv(tbs)?;
    let (tag, this_update, rest) = tlv(rest)?;
    let this_update = time_value(tag, this_update)?;
    let next_update = match tlv(rest) {
        Ok((tag @ (UTC_TIME | GENERALIZED_TIME), value, _)) => Some(time_value(tag, value)?),
        _ => None,
    };
    Ok((this_update, next_update))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{at, Ca};
    use super::*;
    use std::time::{Duration, Instant, SystemTime};

    fn secs(t: UnixTime) -> u64 {
        t.as_secs()
    }

    fn unix(t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn pem_and_der_files_load() {
        let ca = Ca::root("crl CA");
        let next = at(3_600);
        let crl = ca.crl_object(&[7, 9], next);
        let der = crl.der().clone();
        let dir = tempfile::tempdir().unwrap();

        let der_path = dir.path().join("ca.crl");
        std::fs::write(&der_path, der.as_ref()).unwrap();
        let crls = load_crls(&der_path).unwrap();
        assert_eq!(crls.len(), 1);
        assert_eq!(crls[0].entries(), 2);
        assert_eq!(secs(crls[0].next_update()), unix(next));
        assert!(secs(crls[0].this_update()) < unix(next));

        // Two CRLs in one PEM file, with unrelated text around them.
        let other = Ca::root("other CA").crl_object(&[], at(60));
        let pem = format!("comment\n{}{}", crl.pem().unwrap(), other.pem().unwrap());
        let pem_path = dir.path().join("both.pem");
        std::fs::write(&pem_path, pem).unwrap();
        let crls = load_crls(&pem_path).unwrap();
        assert_eq!(crls.len(), 2);
        assert_eq!(crls[1].entries(), 0);
        assert_eq!(crls[0].der(), &der);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crl");
        let e = load_crls(&missing).unwrap_err();
        assert!(matches!(e, CrlError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.crl"), "{e}");

        let empty = dir.path().join("empty.crl");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            load_crls(&empty).unwrap_err(),
            CrlError::Empty { .. }
        ));

        let garbage = dir.path().join("garbage.crl");
        std::fs::write(&garbage, b"\x30\x03abc").unwrap();
        let e = load_crls(&garbage).unwrap_err();
        assert!(matches!(e, CrlError::Invalid { index: 1, .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("CRL {}#1: ", garbage.display())),
            "{e}"
        );

        let cert_pem = dir.path().join("cert.pem");
        std::fs::write(
            &cert_pem,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(matches!(
            load_crls(&cert_pem).unwrap_err(),
            CrlError::Empty { .. }
        ));
    }

    #[test]
    fn time_forms() {
        let t = |tag, s: &str| time_value(tag, s.as_bytes()).map(secs);
        assert_eq!(t(UTC_TIME, "700101000000Z"), Ok(0));
        assert_eq!(t(UTC_TIME, "491231235959Z"), Ok(2_524_607_999));
        assert_eq!(t(GENERALIZED_TIME, "20500101000000Z"), Ok(2_524_608_000));
        assert!(t(UTC_TIME, "700101000000").is_err());
        assert!(t(UTC_TIME, "701301000000Z").is_err());
        assert!(t(GENERALIZED_TIME, "700101000000Z").is_err());
        assert!(t(UTC_TIME, "69123100000aZ").is_err());
    }

    /// A 100,000-entry CRL loads (read, PEM-free DER, full webpki parse of
    /// every entry) and is turned into the verifier's lookup map well under
    /// a second.
    #[test]
    fn hundred_thousand_entries_load_fast() {
        let ca = Ca::root("big CRL CA");
        let serials: Vec<u64> = (1..=100_000).map(|n| n * 3).collect();
        let der = ca.crl(&serials, at(3_600));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.crl");
        std::fs::write(&path, der.as_ref()).unwrap();

        let start = Instant::now();
        let crls = load_crls(&path).unwrap();
        let loaded = start.elapsed();
        let owned = webpki::OwnedCertRevocationList::from_der(crls[0].der().as_ref()).unwrap();
        let total = start.elapsed();
        drop(owned);
        println!(
            "100k-entry CRL ({} KiB): load+validate {loaded:?}, plus lookup map {total:?}",
            der.len() / 1024
        );
        assert_eq!(crls[0].entries(), 100_000);
        assert!(total < Duration::from_secs(1), "{total:?}");
    }
}
