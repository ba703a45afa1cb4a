//! [`TrustVerifier`]: the rustls client-certificate verifier that puts the
//! verdict cache in front of webpki's chain validation and applies the
//! allowlist after it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::cache::{CacheKey, Verdict, VerifyCache};
use super::crl::Crl;
use super::ocsp::{other_error, OcspChecker, OcspSettings, Outcome};
use super::policy::Allowlist;
use crate::admit::{self, Client, Throttle};

/// Whether a client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// A handshake without a client certificate fails.
    Required,
    /// A client may present no certificate; one it presents must verify
    /// and pass the allowlist all the same.
    Optional,
}

/// Which certificates of a chain are checked against the CRLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationScope {
    /// Only the client's own certificate.
    EndEntity,
    /// Every certificate up to the trust anchor.
    #[default]
    FullChain,
}

/// When the list of client CAs is too long to send as hints.
///
/// The CertificateRequest names the acceptable CAs so a client with several
/// certificates can pick one. The encoding caps the list at 64 KiB, and
/// clients and middleboxes break well before that (OpenSSL's default
/// maximum handshake message is 16 KiB on some builds), so past these
/// limits no hints are sent at all: the client then offers whichever
/// certificate it has, which is what nearly all clients do anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HintLimits {
    /// Most CAs listed.
    pub max_cas: usize,
    /// Most bytes of encoded names listed.
    pub max_bytes: usize,
}

impl Default for HintLimits {
    fn default() -> Self {
        HintLimits {
            max_cas: 100,
            max_bytes: 16 * 1024,
        }
    }
}

/// Everything the client-certificate check is built from. The config layer
/// fills it from the listener's settings; reload builds a new verifier from
/// a new one.
#[derive(Debug, Clone)]
pub struct TrustSettings {
    /// Required or optional client certificates.
    pub mode: ClientAuthMode,
    /// Trust anchors: the client CA certificates.
    pub roots: Vec<CertificateDer<'static>>,
    /// Revocation lists; none means no revocation checking.
    pub crls: Vec<Crl>,
    /// Which certificates are checked against the CRLs.
    pub revocation_scope: RevocationScope,
    /// Refuse a chain when no CRL covers one of its certificates. Off by
    /// default: most deployments have CRLs for some issuers only, and an
    /// unknown status is not evidence of revocation.
    pub deny_unknown_revocation: bool,
    /// Refuse a chain when an authoritative CRL is past its `nextUpdate`.
    /// Off by default, so a late CRL refresh does not lock everyone out.
    pub enforce_crl_expiry: bool,
    /// Which verified clients are admitted, and their identities.
    pub allowlist: Allowlist,
    /// When to stop listing CAs in the CertificateRequest.
    pub hint_limits: HintLimits,
    /// Throttling tiers, decided right after the allowlist; none: no throttling.
    pub throttle: Option<Arc<Throttle>>,
    /// OCSP checking of the client certificate; `None`: off.
    pub ocsp: Option<OcspSettings>,
}

impl TrustSettings {
    /// Settings with these trust anchors and the defaults: full-chain
    /// revocation checks, unknown status allowed, CRL expiry not enforced,
    /// empty allowlist, default hint limits.
    pub fn new(mode: ClientAuthMode, roots: Vec<CertificateDer<'static>>) -> Self {
        TrustSettings {
            mode,
            roots,
            crls: Vec::new(),
            revocation_scope: RevocationScope::default(),
            deny_unknown_revocation: false,
            enforce_crl_expiry: false,
            allowlist: Allowlist::default(),
            hint_limits: HintLimits::default(),
            throttle: None,
            ocsp: None,
        }
    }
}

/// Why a verifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Client authentication needs at least one trust anchor.
    #[error("no client CA certificates: client certificate verification needs at least one trust anchor")]
    NoRoots,
    /// A CA certificate cannot be a trust anchor.
    #[error("client CA certificate #{index} cannot be used as a trust anchor: {source}")]
    TrustAnchor {
        /// 1-based position among [`TrustSettings::roots`].
        index: usize,
        /// What webpki said.
        source: Error,
    },
    /// rustls refused the verifier configuration (a CRL it cannot use).
    #[error("client certificate verifier: {0}")]
    Builder(#[from] VerifierBuilderError),
}

/// Something the operator should know about a verifier that was built
/// anyway; the caller logs these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustWarning {
    /// The CA list is over the [`HintLimits`]; no CA names are sent.
    #[error(
        "{cas} client CAs ({bytes} bytes of names) exceed the CertificateRequest hint limits \
         ({max_cas} CAs, {max_bytes} bytes); no CA names are sent, so clients choose their \
         certificate without hints"
    )]
    HintsOmitted {
        /// CAs in the trust store.
        cas: usize,
        /// Bytes their names take in the CertificateRequest.
        bytes: usize,
        /// The CA limit.
        max_cas: usize,
        /// The byte limit.
        max_bytes: usize,
    },
    /// A CRL's `nextUpdate` has passed: the issuer has (or should have)
    /// published a newer one.
    #[error("CRL #{index} is stale: its nextUpdate was {seconds_ago} s ago; fetch a newer one")]
    StaleCrl {
        /// 1-based position among [`TrustSettings::crls`].
        index: usize,
        /// How long ago `nextUpdate` was.
        seconds_ago: u64,
    },
}

/// The client-certificate verifier: webpki chain validation (with CRLs)
/// behind the shared verdict cache, then the allowlist.
///
/// Refusals and the alert the client receives (rustls maps the error):
/// - chain does not lead to a trust anchor: `unknown_ca`;
/// - a certificate revoked by a CRL or by its OCSP responder:
///   `certificate_revoked`;
/// - OCSP status not learned, failing closed: `certificate_unknown`;
/// - expired or not yet valid: `certificate_expired`;
/// - chain verifies but no allowlist entry matches: `access_denied`
///   (`CertificateError::ApplicationVerificationFailure`);
/// - the client's throttling tier refuses the connection: `access_denied`
///   (the verdict, with the tier and the reason, is handed to the
///   connection through [`crate::admit::hand_over`]);
/// - CertificateVerify signature wrong: `decrypt_error`.
pub struct TrustVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowlist: Allowlist,
    throttle: Option<Arc<Throttle>>,
    cache: Arc<VerifyCache>,
    generation: u64,
    /// The earliest CRL `nextUpdate`: no trusted verdict outlives it.
    crls_valid_until: Option<UnixTime>,
    ocsp: Option<OcspChecker>,
    warnings: Vec<TrustWarning>,
}

impl fmt::Debug for TrustVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustVerifier")
            .field("generation", &self.generation)
            .field("mandatory", &self.inner.client_auth_mandatory())
            .field("allowlist_entries", &self.allowlist.entries().len())
            .finish_non_exhaustive()
    }
}

impl TrustVerifier {
    /// Builds a verifier. It takes a fresh generation from `cache`, so no
    /// verdict made under earlier settings is ever reused. `now` is only
    /// used to warn about stale CRLs.
    pub fn new(
        settings: &TrustSettings,
        provider: Arc<CryptoProvider>,
        cache: Arc<VerifyCache>,
        now: UnixTime,
    ) -> Result<Self, TrustError> {
        if settings.roots.is_empty() {
            return Err(TrustError::NoRoots);
        }
        let mut roots = RootCertStore::empty();
        for (i, root) in settings.roots.iter().enumerate() {
            roots
                .add(root.clone())
                .map_err(|source| TrustError::TrustAnchor {
                    index: i + 1,
                    source,
                })?;
        }

        let mut warnings = Vec::new();
        let subjects = roots.subjects();
        // Each name goes on the wire with a two-byte length.
        let hint_bytes: usize = subjects.iter().map(|s| s.as_ref().len() + 2).sum();
        let limits = settings.hint_limits;
        let omit_hints = subjects.len() > limits.max_cas || hint_bytes > limits.max_bytes;
        if omit_hints {
            warnings.push(TrustWarning::HintsOmitted {
                cas: subjects.len(),
                bytes: hint_bytes,
                max_cas: limits.max_cas,
                max_bytes: limits.max_bytes,
            });
        }
        for (i, crl) in settings.crls.iter().enumerate() {
            if crl.next_update().as_secs() <= now.as_secs() {
                warnings.push(TrustWarning::StaleCrl {
                    index: i + 1,
                    seconds_ago: now.as_secs() - crl.next_update().as_secs(),
                });
            }
        }

        let algorithms = provider.signature_verification_algorithms.all;
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(settings.crls.iter().map(|c| c.der().clone()));
        if omit_hints {
            builder = builder.clear_root_hint_subjects();
        }
        if settings.mode == ClientAuthMode::Optional {
            builder = builder.allow_unauthenticated();
        }
        if settings.revocation_scope == RevocationScope::EndEntity {
            builder = builder.only_check_end_entity_revocation();
        }
        if !settings.deny_unknown_revocation {
            builder = builder.allow_unknown_revocation_status();
        }
        if settings.enforce_crl_expiry {
            builder = builder.enforce_revocation_expiration();
        }

        let ocsp = settings
            .ocsp
            .clone()
            .map(|ocsp| OcspChecker::new(ocsp, settings.roots.clone(), algorithms));
        Ok(TrustVerifier {
            inner: builder.build()?,
            ocsp,
            allowlist: settings.allowlist.clone(),
            throttle: settings.throttle.clone(),
            generation: cache.next_generation(),
            cache,
            crls_valid_until: settings.crls.iter().map(Crl::next_update).min(),
            warnings,
        })
    }

    /// Warnings to log once, after building.
    pub fn warnings(&self) -> &[TrustWarning] {
        &self.warnings
    }

    /// The allowlist, for [`super::identify`] after the handshake.
    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    /// The cache generation this verifier's verdicts are stored under.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The shared cache.
    pub fn cache(&self) -> &Arc<VerifyCache> {
        &self.cache
    }

    /// Chain validation through the cache.
    fn validate_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), Error> {
        let key = CacheKey::new(self.generation, end_entity, intermediates);
        match self.cache.get(&key, now) {
            Some(Verdict::Trusted) => return Ok(()),
            Some(Verdict::Refused(e)) => return Err(Error::InvalidCertificate(e)),
            None => {}
        }
        match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(_) => {
                let mut until = self.valid_until(end_entity, intermediates);
                if let Some(ocsp) = &self.ocsp {
                    match ocsp.check(end_entity, intermediates, now) {
                        Outcome::Good { until: answer } => {
                            until = until.map(|u| u.min(answer));
                        }
                        Outcome::Revoked { responder } => {
                            tracing::warn!(
                                "OCSP responder {responder} reports the client certificate revoked; refusing the client"
                            );
                            self.cache
                                .insert_refused(key, CertificateError::Revoked, now);
                            return Err(Error::InvalidCertificate(CertificateError::Revoked));
                        }
                        Outcome::Failed(failure) if ocsp.settings().fail_open => {
                            tracing::warn!(
                                "{failure}; admitting the client (client_ocsp fail = \"open\")"
                            );
                            // Remembered only as long as a refusal would be,
                            // so the status is asked again soon.
                            let retry = UnixTime::since_unix_epoch(Duration::from_secs(
                                now.as_secs()
                                    .saturating_add(self.cache.config().negative_ttl.as_secs()),
                            ));
                            until = until.map(|u| u.min(retry));
                        }
                        Outcome::Failed(failure) => {
                            tracing::warn!(
                                "{failure}; refusing the client (client_ocsp fail = \"closed\")"
                            );
                            let e = CertificateError::Other(other_error(failure));
                            self.cache.insert_refused(key, e.clone(), now);
                            return Err(Error::InvalidCertificate(e));
                        }
                    }
                }
                if let Some(until) = until {
                    self.cache.insert_trusted(key, until, now);
                }
                Ok(())
            }
            Err(Error::InvalidCertificate(e)) => {
                if worth_remembering(&e) {
                    self.cache.insert_refused(key, e.clone(), now);
                }
                Err(Error::InvalidCertificate(e))
            }
            // Not a verdict about the chain (say, an internal error): try
            // again next time.
            Err(other) => Err(other),
        }
    }

    /// How long a trusted verdict may be kept: until the first certificate
    /// in the chain expires or the CRLs are due, whichever is first. `None`
    /// (do not cache) when a certificate's validity cannot be read.
    fn valid_until(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Option<UnixTime> {
        let mut until = self.crls_valid_until.map_or(u64::MAX, |t| t.as_secs());
        for cert in std::iter::once(end_entity).chain(intermediates) {
            let (_, parsed) = X509Certificate::from_der(cert).ok()?;
            let not_after = u64::try_from(parsed.validity().not_after.timestamp()).ok()?;
            until = until.min(not_after);
        }
        Some(UnixTime::since_unix_epoch(Duration::from_secs(until)))
    }
}

/// Whether a refusal is worth a cache slot. A certificate that does not
/// even parse is refused as cheaply as it is looked up, and caching it
/// would let junk push out useful entries.
fn worth_remembering(e: &CertificateError) -> bool {
    !matches!(e, CertificateError::BadEncoding)
}

impl ClientCertVerifier for TrustVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.validate_chain(end_entity, intermediates, now)?;
        // rustls sends access_denied for this error.
        let denied = || {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        };
        let throttle = self.throttle.as_ref().filter(|t| t.is_active());
        let Some(throttle) = throttle else {
            if !self.allowlist.admits(end_entity) {
                return denied();
            }
            return Ok(ClientCertVerified::assertion());
        };
        let Some(identity) = self.allowlist.identify(end_entity) else {
            return denied();
        };
        let client = Client {
            end_entity: Some(end_entity),
            identity: Some(identity.label()),
            address: None,
        };
        // Decided here, not after the handshake, so that a refused client
        // gets an alert: see the `admit` module documentation.
        let verdict = throttle.admit(&client, std::time::Instant::now());
        let refused = matches!(verdict, admit::Verdict::Refused(_));
        admit::hand_over(verdict);
        if refused {
            return denied();
        }
        Ok(ClientCertVerified::assertion())
    }

    // The proof of possession is checked on every handshake: a cached chain
    // verdict says nothing about who holds the key.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
