//! OCSP checking of client certificates: after a chain verifies, ask the
//! issuer's responder whether the client's certificate is revoked.
//!
//! Only the end-entity certificate is checked (intermediates are covered by
//! CRLs, which CAs publish for them). The responder is the configured one,
//! else the certificate's Authority Information Access OCSP URL. A good
//! answer is cached with the chain's verdict in the [`super::VerifyCache`]
//! until its `nextUpdate` or the OCSP cache TTL, whichever is first, so the
//! next handshake with the same chain asks nobody. A revoked certificate is
//! refused with `certificate_revoked`. No answer (unreachable, timeout,
//! `unknown`, a response that fails a check) refuses the client with
//! `certificate_unknown` when failing closed (the default), and admits it,
//! with a warning, when failing open; either outcome is remembered for the
//! cache's negative TTL, so a dead responder costs one attempt per chain in
//! that time, not one per handshake.
//!
//! **Where the query runs.** rustls calls the verifier synchronously inside
//! the handshake, so the query blocks the worker thread that runs it, for
//! at most the configured timeout (connect, send and receive share one
//! deadline). That is the simplest correct choice: a cache hit, the common
//! case, costs nothing extra; moving the query to another thread would not
//! help, because the handshake cannot continue without the answer and
//! rustls offers no way to suspend it. While a responder is down, each
//! worker gives up on it at once (without connecting) until one timeout has
//! passed since the failure, so a burst of new chains stalls the worker's
//! other connections for about one timeout, not one per chain.
//!
//! [`message`] builds and checks the OCSP messages (sans-IO);
//! [`transport`] is the HTTP POST.

pub mod message;
pub mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use message::{check_response, encode_request, CertId, CertStatus, Expected, ResponseError};
use transport::TransportError;
pub use transport::{ResponderUrl, UrlError};

/// 1.3.6.1.5.5.7.48.1, id-ad-ocsp: the AIA access method naming a responder.
const OID_AD_OCSP: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];

/// Most responders remembered as down at once; more are forgotten.
const MAX_DOWN_RESPONDERS: usize = 64;

/// How a listener checks client certificates with OCSP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspSettings {
    /// The responder to ask; `None`: the certificate's AIA OCSP URL.
    pub responder: Option<ResponderUrl>,
    /// Longest a query may take, connect to last byte.
    pub timeout: Duration,
    /// Admit a client whose status could not be learned.
    pub fail_open: bool,
    /// Longest a good answer is trusted (less when its `nextUpdate` is
    /// sooner).
    pub cache_ttl: Duration,
}

impl Default for OcspSettings {
    /// AIA responder, 2 s timeout, fail closed, 5 minute cache.
    fn default() -> Self {
        OcspSettings {
            responder: None,
            timeout: Duration::from_secs(2),
            fail_open: false,
            cache_ttl: Duration::from_secs(300),
        }
    }
}

/// Why a certificate's status could not be learned.
#[derive(thiserror::Error)]
pub enum OcspFailure {
    /// The chain does not contain the certificate's issuer.
    #[error("OCSP: the issuer of the client certificate is not in the chain or the trust store")]
    NoIssuer,
    /// No responder is configured and the certificate names none.
    #[error("OCSP: no responder configured and the client certificate has no AIA OCSP URL")]
    NoResponder,
    /// The certificate's AIA URL cannot be used.
    #[error("OCSP: {0}")]
    BadUrl(#[from] UrlError),
    /// The responder could not be reached or did not answer in time.
    #[error("OCSP responder {url} unreachable: {cause}")]
    Unreachable {
        /// The responder.
        url: String,
        /// What failed.
        cause: TransportError,
    },
    /// The responder failed moments ago and is not tried again yet.
    #[error("OCSP responder {url} failed within the last {retry_after:?}; not asked again yet")]
    RecentlyDown {
        /// The responder.
        url: String,
        /// How long a failed responder is left alone.
        retry_after: Duration,
    },
    /// The response failed a check.
    #[error("OCSP responder {url}: {cause}")]
    BadResponse {
        /// The responder.
        url: String,
        /// What is wrong with its response.
        cause: ResponseError,
    },
    /// The responder does not know the certificate.
    #[error("OCSP responder {url} answered unknown for the client certificate")]
    Unknown {
        /// The responder.
        url: String,
    },
}

// rustls prints a refusal's cause with `{:?}` (the access log's reason):
// the sentence reads better there than the structure.
impl std::fmt::Debug for OcspFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// What an OCSP check concluded.
#[derive(Debug)]
pub enum Outcome {
    /// Not revoked; the answer may be relied on until `until`.
    Good {
        /// `nextUpdate` or now plus the cache TTL, whichever is first.
        until: UnixTime,
    },
    /// Revoked, says this responder.
    Revoked {
        /// The responder's URL.
        responder: String,
    },
    /// No trustworthy answer.
    Failed(OcspFailure),
}

/// Asks responders about client certificates; one per verifier.
pub struct OcspChecker {
    settings: OcspSettings,
    roots: Vec<CertificateDer<'static>>,
    algorithms: Vec<&'static dyn SignatureVerificationAlgorithm>,
    /// Responders that failed, and when: skipped for one timeout after.
    down: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for OcspChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OcspChecker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl OcspChecker {
    /// A checker; `roots` are the client CAs (an issuer may be one of them),
    /// `algorithms` the signature algorithms responses may use.
    pub fn new(
        settings: OcspSettings,
        roots: Vec<CertificateDer<'static>>,
        algorithms: &[&'static dyn SignatureVerificationAlgorithm],
    ) -> Self {
        OcspChecker {
            settings,
            roots,
            algorithms: algorithms.to_vec(),
            down: Mutex::new(HashMap::new()),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &OcspSettings {
        &self.settings
    }

    /// Checks `end_entity`, whose chain (with `intermediates`) has already
    /// verified. Blocks for at most the configured timeout.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Outcome {
        match self.ask(end_entity, intermediates, now) {
            Ok(outcome) => outcome,
            Err(failure) => Outcome::Failed(failure),
        }
    }

    fn ask(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Outcome, OcspFailure> {
        let Ok((_, cert)) = X509Certificate::from_der(end_entity) else {
            return Err(OcspFailure::NoIssuer);
        };
        let (issuer_der, issuer) = intermediates
            .iter()
            .chain(self.roots.iter())
            .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| (der, c)))
            .find(|(_, c)| c.subject().as_raw() == cert.issuer().as_raw())
            .ok_or(OcspFailure::NoIssuer)?;
        let url = match &self.settings.responder {
            Some(url) => url.clone(),
            None => ResponderUrl::parse(&aia_ocsp_url(&cert).ok_or(OcspFailure::NoResponder)?)?,
        };
        self.check_not_down(&url)?;

        let cert_id = CertId::new(&cert, &issuer);
        let mut nonce = [0u8; 16];
        // Without randomness the request simply goes without a nonce.
        let nonce = aws_lc_rs::rand::fill(&mut nonce).ok().map(|()| &nonce[..]);
        let request = encode_request(&cert_id, nonce);
        let body = transport::post(&url, &request, self.settings.timeout).map_err(|cause| {
            self.mark_down(&url);
            OcspFailure::Unreachable {
                url: url.to_string(),
                cause,
            }
        })?;
        let answer = check_response(
            &body,
            &Expected {
                cert_id: &cert_id,
                issuer: issuer_der,
                nonce,
                now,
                algorithms: &self.algorithms,
            },
        )
        .map_err(|cause| OcspFailure::BadResponse {
            url: url.to_string(),
            cause,
        })?;
        match answer.status {
            CertStatus::Good => {
                let ttl_end = now
                    .as_secs()
                    .saturating_add(self.settings.cache_ttl.as_secs());
                let until = answer
                    .next_update
                    .map_or(ttl_end, |next| next.as_secs().min(ttl_end));
                Ok(Outcome::Good {
                    until: UnixTime::since_unix_epoch(Duration::from_secs(until)),
                })
            }
            CertStatus::Revoked => Ok(Outcome::Revoked {
                responder: url.to_string(),
            }),
            CertStatus::Unknown => Err(OcspFailure::Unknown {
                url: url.to_string(),
            }),
        }
    }

    fn check_not_down(&self, url: &ResponderUrl) -> Result<(), OcspFailure> {
        let down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        match down.get(url.as_str()) {
            Some(at) if at.elapsed() < self.settings.timeout => Err(OcspFailure::RecentlyDown {
                url: url.to_string(),
                retry_after: self.settings.timeout,
            }),
            _ => Ok(()),
        }
    }

    fn mark_down(&self, url: &ResponderUrl) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if down.len() >= MAX_DOWN_RESPONDERS {
            down.clear();
        }
        down.insert(url.as_str().to_string(), Instant::now());
    }
}

/// The first OCSP responder URL in a certificate's Authority Information
/// Access extension.
pub fn aia_ocsp_url(cert: &X509Certificate<'_>) -> Option<String> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => {
                aia.accessdescs
                    .iter()
                    .find_map(|desc| match &desc.access_location {
                        GeneralName::URI(uri) if desc.access_method.as_bytes() == OID_AD_OCSP => {
                            Some(uri.to_string())
                        }
                        _ => None,
                    })
            }
            _ => None,
        })
}

/// The failure as a rustls error payload, for `CertificateError::Other`.
pub(crate) fn other_error(failure: OcspFailure) -> rustls::OtherError {
    rustls::OtherError(Arc::new(failure))
}

#[cfg(test)]
mod tests;
