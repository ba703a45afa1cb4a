//! The rustls `ServerConfig` a listener hands every new connection.

use std::sync::Arc;

use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::UnixTime;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ProducesTickets, WebPkiClientVerifier};
use rustls::{CipherSuite as Suite, ServerConfig, SupportedCipherSuite};

use crate::admit::Throttle;
use crate::config::{CipherSuite, ClientAuth, TlsSettings, TlsVersion};
use crate::tls::tickets::ScopedTicketer;
use crate::tls::verify::{ClientAuthMode, TrustError, TrustSettings, TrustVerifier, VerifyCache};

/// Why a listener's TLS settings could not become a rustls configuration.
#[derive(Debug, thiserror::Error)]
pub enum ServerConfigError {
    /// The client trust store (CAs, CRLs) was refused.
    #[error("client trust: {0}")]
    Trust(#[from] TrustError),
    /// rustls refused the combination of versions, suites or key.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// No enabled cipher suite is usable with the enabled versions.
    #[error("no enabled cipher suite matches the enabled TLS versions")]
    NoSuites,
}

/// Builds the server configuration for one listener.
///
/// Secret extraction is enabled so the kernel TLS handover can take the
/// session keys; early data stays off because 0-RTT data is replayable and
/// cannot be handed to the kernel.
///
/// Client chains are checked through `cache`, shared by every listener and
/// kept across reloads; each build starts a new cache generation, so a
/// reloaded trust store never sees verdicts made under the old one.
///
/// Resumption is by stateless tickets from `ticketer` (TLS 1.2 and 1.3), so
/// any worker, and any instance sharing the ticket keys, can resume a
/// session another one started. Client certificates are admitted through
/// `throttle`'s tiers as they are verified, so a throttled client is refused
/// with an alert.
pub fn build(
    settings: &TlsSettings,
    cache: &Arc<VerifyCache>,
    ticketer: &Arc<dyn ProducesTickets>,
    throttle: &Arc<Throttle>,
) -> Result<Arc<ServerConfig>, ServerConfigError> {
    let provider = Arc::new(provider_for(&settings.cipher_suites, &settings.versions)?);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = settings
        .versions
        .iter()
        .map(|v| match v {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        })
        .collect();

    let verifier: Arc<dyn ClientCertVerifier> = match settings.client_auth {
        ClientAuth::Off => WebPkiClientVerifier::no_client_auth(),
        mode => {
            let mode = match mode {
                ClientAuth::Optional => ClientAuthMode::Optional,
                _ => ClientAuthMode::Required,
            };
            let mut trust = TrustSettings::new(mode, settings.client_ca.clone());
            trust.crls = settings.crls.clone();
            trust.allowlist = settings.allowlist.clone();
            trust.throttle = Some(throttle.clone());
            trust.ocsp = settings.client_ocsp.clone();
            let verifier =
                TrustVerifier::new(&trust, provider.clone(), cache.clone(), UnixTime::now())?;
            for warning in verifier.warnings() {
                tracing::warn!("{warning}");
            }
            Arc::new(verifier)
        }
    };

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)?
        .with_client_cert_verifier(verifier)
        .with_single_cert_with_ocsp(
            settings.cert_chain.clone(),
            settings.key.clone_key(),
            settings.ocsp_staple.clone().unwrap_or_default(),
        )?;
    config.alpn_protocols = settings.alpn.clone();
    config.ticketer = Arc::new(ScopedTicketer::new(ticketer.clone(), trust_scope(settings)));
    config.enable_secret_extraction = true;
    config.max_early_data_size = 0;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Digest of everything that decides whether a client is admitted: a
/// session resumed from a ticket skips client verification, so it may only
/// resume under the policy that admitted it.
fn trust_scope(settings: &TlsSettings) -> [u8; 32] {
    let mut digest = ::aws_lc_rs::digest::Context::new(&::aws_lc_rs::digest::SHA256);
    let mut field = |bytes: &[u8]| {
        digest.update(&(bytes.len() as u64).to_be_bytes());
        digest.update(bytes);
    };
    field(format!("{:?}", settings.client_auth).as_bytes());
    for ca in &settings.client_ca {
        field(ca);
    }
    for crl in &settings.crls {
        field(crl.der());
    }
    // The allowlist's rules, as their (deterministic) debug form.
    field(format!("{:?}", settings.allowlist).as_bytes());
    let mut scope = [0; 32];
    scope.copy_from_slice(digest.finish().as_ref());
    scope
}

/// aws-lc-rs with only the enabled suites, in the configured order.
fn provider_for(
    suites: &[CipherSuite],
    versions: &[TlsVersion],
) -> Result<CryptoProvider, ServerConfigError> {
    let mut provider = aws_lc_rs::default_provider();
    let all = std::mem::take(&mut provider.cipher_suites);
    let wanted: &[CipherSuite] = if suites.is_empty() {
        &[
            CipherSuite::Aes128Gcm,
            CipherSuite::Aes256Gcm,
            CipherSuite::Chacha20Poly1305,
        ]
    } else {
        suites
    };
    for want in wanted {
        for suite in &all {
            if cipher_family(suite.suite()) == Some(*want) && version_enabled(*suite, versions) {
                provider.cipher_suites.push(*suite);
            }
        }
    }
    if provider.cipher_suites.is_empty() {
        return Err(ServerConfigError::NoSuites);
    }
    Ok(provider)
}

/// The configurable cipher a rustls suite belongs to (TLS 1.3 suite or one
/// of the TLS 1.2 ECDHE ones); `None` for suites tlsplice does not offer.
pub fn cipher_family(suite: Suite) -> Option<CipherSuite> {
    match suite {
        Suite::TLS13_AES_128_GCM_SHA256
        | Suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | Suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(CipherSuite::Aes128Gcm),
        Suite::TLS13_AES_256_GCM_SHA384
        | Suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | Suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(CipherSuite::Aes256Gcm),
        Suite::TLS13_CHACHA20_POLY1305_SHA256
        | Suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | Suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(CipherSuite::Chacha20Poly1305),
        _ => None,
    }
}

fn version_enabled(suite: SupportedCipherSuite, versions: &[TlsVersion]) -> bool {
    match suite {
        SupportedCipherSuite::Tls13(_) => versions.contains(&TlsVersion::Tls13),
        SupportedCipherSuite::Tls12(_) => versions.contains(&TlsVersion::Tls12),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_follow_configured_order_and_versions() {
        let p = provider_for(&[CipherSuite::Chacha20Poly1305], &[TlsVersion::Tls13]).unwrap();
        let ids: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(ids, vec![Suite::TLS13_CHACHA20_POLY1305_SHA256]);

        let p = provider_for(&[], &[TlsVersion::Tls12, TlsVersion::Tls13]).unwrap();
        assert_eq!(p.cipher_suites.len(), 9);
        assert_eq!(p.cipher_suites[0].suite(), Suite::TLS13_AES_128_GCM_SHA256);
    }
}
