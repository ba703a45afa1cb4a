//! Client-certificate trust: who may connect, and who they are.
//!
//! One handshake's client chain goes through, in order:
//! 1. the [`VerifyCache`], keyed by the presented chain and the trust
//!    configuration's generation: a remembered verdict skips step 2;
//! 2. webpki chain validation against the client CAs, with CRLs
//!    ([`load_crls`]) when configured;
//! 3. optionally, OCSP: the client certificate's responder is asked whether
//!    it is revoked ([`ocsp`]); the answer is cached with the verdict;
//! 4. the [`Allowlist`]: entries by alias (exact certificate), fingerprint,
//!    subject CN, DNS/URI SAN or SPIFFE ID. No entry matching refuses the
//!    client with `access_denied`.
//!
//! The client's signature over the handshake (proof that it holds the key)
//! is checked by webpki on every handshake, never cached.
//!
//! After the handshake the connection learns the client's [`Identity`] with
//! [`identify`] on `peer_certificates()`, a pure function of the allowlist
//! and the certificate, so the verifier keeps no per-connection state.
//!
//! Use from the listener's configuration (one cache per process, kept
//! across reloads):
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use rustls::pki_types::{CertificateDer, UnixTime};
//! use tlsplice::tls::verify::{
//!     load_crls, AllowEntry, Allowlist, CacheConfig, ClientAuthMode, TrustSettings,
//!     TrustVerifier, VerifyCache,
//! };
//! # fn f(client_cas: Vec<CertificateDer<'static>>, provider: Arc<rustls::crypto::CryptoProvider>)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Arc::new(VerifyCache::new(CacheConfig::default()));
//! let mut settings = TrustSettings::new(ClientAuthMode::Required, client_cas);
//! settings.crls = load_crls("/etc/tlsplice/clients.crl".as_ref())?;
//! settings.allowlist = Allowlist::new(vec![
//!     AllowEntry::spiffe_id("spiffe://prod.example/ns/*/sa/api")?,
//!     AllowEntry::subject_cn("batch-*")?.with_label("batch")?,
//! ]);
//! let verifier = TrustVerifier::new(&settings, provider.clone(), cache.clone(), UnixTime::now())?;
//! for warning in verifier.warnings() {
//!     tracing::warn!("{warning}");
//! }
//! let verifier = Arc::new(verifier);
//! let config = rustls::ServerConfig::builder_with_provider(provider)
//!     .with_safe_default_protocol_versions()?
//!     .with_client_cert_verifier(verifier.clone());
//! // ... after a connection's handshake:
//! // let who = tlsplice::tls::verify::identify(verifier.allowlist(), conn.peer_certificates());
//! # Ok(()) }
//! ```

mod cache;
mod crl;
mod der;
mod glob;
pub mod ocsp;
mod pkcs12;
mod policy;
mod verifier;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

pub use cache::{CacheConfig, CacheKey, CacheStats, Verdict, VerifyCache};
pub use crl::{load_crls, Crl, CrlError};
pub use ocsp::{OcspSettings, ResponderUrl};
pub use pkcs12::{load_pkcs12, load_pkcs12_certificate, Pkcs12Error};
pub use policy::{identify, AllowEntry, Allowlist, Fingerprint, Identity, PolicyError, RuleKind};
pub use verifier::{
    ClientAuthMode, HintLimits, RevocationScope, TrustError, TrustSettings, TrustVerifier,
    TrustWarning,
};
