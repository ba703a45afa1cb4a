//! TLS toward backends ("re-encrypt"): the client configuration built from a
//! pool's `backend_tls`, and the upstream handshake over rustls' unbuffered
//! client API.
//!
//! Each backend gets its own `ClientConfig`, hence its own session store:
//! tickets one backend issued are offered to that backend only, and later
//! connections to it resume instead of paying a full handshake. The store
//! is shared by the workers (rustls locks it briefly per handshake), and
//! kept across reloads that leave the backend's TLS material alone.
//!
//! A backend whose certificate does not verify fails the attempt like a
//! refused connection, with the reason (unknown CA, name mismatch, expired)
//! in the error; the connect loop then tries the next backend.

pub mod leg;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use monoio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

use crate::config::{Backend, BackendTls};
use crate::handshake::{read_more, write_out, INCOMING_CAPACITY};
use crate::tls::records::TlsOut;
use crate::tls::traffic::{Traffic, TrafficError};
use crate::tls::unbuffered::{drive, flush_alert, Progress};

/// Largest server flight buffered during the upstream handshake (large
/// certificate chains included).
const MAX_SERVER_FLIGHT: usize = 256 * 1024;

/// Room for the client's flights (its certificate chain included).
const OUTGOING_CAPACITY: usize = 16 * 1024;

/// A pool's TLS settings toward its backends, ready per backend.
#[derive(Debug)]
pub struct UpstreamTls {
    /// One configuration (and so one session store) per backend address.
    configs: HashMap<SocketAddr, Arc<ClientConfig>>,
    /// SNI and verified name; `None` uses the backend's host.
    server_name: Option<ServerName<'static>>,
    /// ALPN to offer; `None` passes on the client's negotiated protocol.
    alpn: Option<Vec<Vec<u8>>>,
}

/// Why the upstream TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    /// rustls refused the settings (a bad key, no usable version).
    #[error("backend_tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A CA certificate is not a usable trust anchor.
    #[error("backend_tls: CA certificate #{index}: {reason}")]
    TrustAnchor {
        /// 1-based position in the bundle.
        index: usize,
        /// What webpki said.
        reason: String,
    },
}

/// Client configurations by pool and backend, kept across reloads while a
/// backend's TLS material stays the same: its session store, and the
/// resumption it buys, survive a reload.
#[derive(Debug, Default)]
pub struct ConfigCache {
    entries: Mutex<HashMap<(String, SocketAddr), CachedConfig>>,
}

#[derive(Debug)]
struct CachedConfig {
    /// What the configuration was built from (see [`material`]).
    material: [u8; 32],
    config: Arc<ClientConfig>,
}

impl ConfigCache {
    /// The configuration for `addr` in `pool`: the cached one when it was
    /// built from the same material, else a new one (replacing it).
    fn get_or_build(
        &self,
        pool: &str,
        addr: SocketAddr,
        settings: &BackendTls,
    ) -> Result<Arc<ClientConfig>, UpstreamConfigError> {
        let material = material(settings);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = (pool.to_string(), addr);
        if let Some(cached) = entries.get(&key).filter(|c| c.material == material) {
            return Ok(cached.config.clone());
        }
        let config = Arc::new(client_config(settings)?);
        entries.insert(
            key,
            CachedConfig {
                material,
                config: config.clone(),
            },
        );
        Ok(config)
    }

    /// Forgets the configurations `keep` says are no longer in use.
    pub fn retain(&self, mut keep: impl FnMut(&str, SocketAddr) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(pool, addr), _| keep(pool, *addr));
    }
}

/// A digest of what a client configuration is built from: the trust
/// anchors, the client identity (chain and key), whether to verify and
/// whether to resume.
/// The server name and ALPN are chosen per connection.
fn material(settings: &BackendTls) -> [u8; 32] {
    let mut h = ::aws_lc_rs::digest::Context::new(&::aws_lc_rs::digest::SHA256);
    let mut item = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    item(&[u8::from(settings.verify), u8::from(settings.session_reuse)]);
    for ca in &settings.ca {
        item(ca);
    }
    if let Some(id) = &settings.identity {
        for cert in &id.cert_chain {
            item(cert);
        }
        item(id.key.secret_der());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

impl UpstreamTls {
    /// Builds the per-backend client configurations for `backends` of
    /// `pool`, reusing those in `cache` built from the same material.
    pub fn build<'b>(
        settings: &BackendTls,
        pool: &str,
        backends: impl IntoIterator<Item = &'b Backend>,
        cache: &ConfigCache,
    ) -> Result<Self, UpstreamConfigError> {
        let mut configs = HashMap::new();
        for backend in backends {
            if let std::collections::hash_map::Entry::Vacant(slot) = configs.entry(backend.addr) {
                slot.insert(cache.get_or_build(pool, backend.addr, settings)?);
            }
        }
        Ok(Self {
            configs,
            server_name: settings.server_name.clone(),
            alpn: settings.alpn.clone(),
        })
    }

    /// The configuration and server name for one backend.
    pub fn for_backend(
        &self,
        backend: &Backend,
    ) -> Option<(Arc<ClientConfig>, ServerName<'static>)> {
        let config = self.configs.get(&backend.addr)?.clone();
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| backend_host(backend));
        Some((config, name))
    }

    /// The ALPN list to offer a backend, given what the client negotiated.
    pub fn alpn_for(&self, client_alpn: Option<&[u8]>) -> Vec<Vec<u8>> {
        match &self.alpn {
            Some(list) => list.clone(),
            None => client_alpn.map(|p| vec![p.to_vec()]).unwrap_or_default(),
        }
    }
}

/// The host part of a backend as configured (`host:port`), as a server
/// name; the address itself when the host is not a valid name.
fn backend_host(backend: &Backend) -> ServerName<'static> {
    let host = backend
        .name
        .rsplit_once(':')
        .map_or(backend.name.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(backend.addr.ip().into()))
}

fn client_config(settings: &BackendTls) -> Result<ClientConfig, UpstreamConfigError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if settings.verify {
        let mut roots = RootCertStore::empty();
        for (i, ca) in settings.ca.iter().enumerate() {
            roots
                .add(ca.clone())
                .map_err(|e| UpstreamConfigError::TrustAnchor {
                    index: i + 1,
                    reason: e.to_string(),
                })?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
    };
    let mut config = match &settings.identity {
        Some(id) => builder.with_client_auth_cert(id.cert_chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    // The backend leg may move to the kernel like the client's.
    config.enable_secret_extraction = true;
    if !settings.session_reuse {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(config)
}

/// `verify = false`: accepts any backend certificate, but still checks
/// the handshake signatures made with it.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A finished upstream handshake and what the relay continues with.
pub struct Upstream {
    /// The record layer, with rustls' remaining state (session tickets).
    pub traffic: Traffic<ClientConnectionData>,
    /// Ciphertext read but not yet opened.
    pub incoming: Vec<u8>,
    /// Application data the backend sent with its last handshake flight.
    pub early_plaintext: Vec<u8>,
    /// Whether the session was resumed (no full handshake).
    pub resumed: bool,
}

impl Upstream {
    /// `full` or `resumed`, for the access log and metrics.
    pub fn kind(&self) -> &'static str {
        if self.resumed {
            "resumed"
        } else {
            "full"
        }
    }
}

/// Why the upstream handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// rustls refused the backend (its certificate, or the handshake).
    #[error("backend TLS: {}", describe(.0))]
    Tls(#[from] rustls::Error),
    /// The finished session could not move to our record layer.
    #[error("backend TLS: {0}")]
    Traffic(#[from] TrafficError),
    /// The backend closed the connection during the handshake.
    #[error("backend TLS: connection closed during the handshake")]
    Closed,
    /// Reading from or writing to the backend failed.
    #[error("backend TLS: {0}")]
    Io(#[from] io::Error),
}

impl From<UpstreamError> for io::Error {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Io(e) => io::Error::new(e.kind(), UpstreamError::Io(e).to_string()),
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

/// Names the usual certificate failures in words an operator searches for.
fn describe(e: &rustls::Error) -> String {
    let what = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "certificate signed by an unknown CA",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "certificate name mismatch"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet"
            }
            CertificateError::Revoked => "certificate revoked",
            _ => "certificate invalid",
        },
        _ => return e.to_string(),
    };
    format!("{what} ({e})")
}

/// Runs the client side of a handshake with a backend on `stream`. The
/// caller bounds it (together with the TCP connect) by the connect timeout.
pub async fn handshake(
    stream: &mut TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    alpn: Vec<Vec<u8>>,
) -> Result<Upstream, UpstreamError> {
    let mut conn = UnbufferedClientConnection::new_with_alpn(config, name, alpn)?;
    let mut incoming = Vec::with_capacity(INCOMING_CAPACITY);
    let mut out = TlsOut::with_capacity(OUTGOING_CAPACITY);
    let mut early_plaintext = Vec::new();
    loop {
        match drive(&mut conn, &mut incoming, &mut out, &mut early_plaintext) {
            Ok(Progress::Transmit) => write_out(stream, &mut out).await?,
            Ok(Progress::NeedInput) => {
                if read_more(stream, &mut incoming, MAX_SERVER_FLIGHT).await? == 0 {
                    return Err(UpstreamError::Closed);
                }
            }
            Ok(Progress::Complete) => break,
            Ok(Progress::PeerClosed) => return Err(UpstreamError::Closed),
            Err(e) => {
                // The backend learns why (bad_certificate, unknown_ca, ...).
                flush_alert(&mut conn, &mut incoming, &mut out);
                let _ = write_out(stream, &mut out).await;
                return Err(e.into());
            }
        }
    }
    let resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    Ok(Upstream {
        traffic: Traffic::from_rustls(conn)?,
        incoming,
        early_plaintext,
        resumed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str) -> Backend {
        Backend {
            name: name.into(),
            addr: "127.0.0.1:9".parse().unwrap(),
        }
    }

    #[test]
    fn server_name_defaults_to_the_backend_host() {
        assert_eq!(
            backend_host(&backend("api.internal:443")),
            ServerName::try_from("api.internal").unwrap()
        );
        assert_eq!(
            backend_host(&backend("127.0.0.1:9")),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(
            backend_host(&backend("[::1]:9")),
            ServerName::try_from("::1").unwrap()
        );
    }

    #[test]
    fn certificate_failures_are_named() {
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(describe(&e).starts_with("certificate signed by an unknown CA"));
        let e = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert!(describe(&e).starts_with("certificate name mismatch"));
        let e = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert!(describe(&e).starts_with("certificate expired"));
    }

    #[test]
    fn alpn_passes_the_clients_protocol_unless_configured() {
        let mut up = UpstreamTls {
            configs: HashMap::new(),
            server_name: None,
            alpn: None,
        };
        assert_eq!(up.alpn_for(Some(b"h2")), vec![b"h2".to_vec()]);
        assert!(up.alpn_for(None).is_empty());
        up.alpn = Some(vec![b"http/1.1".to_vec()]);
        assert_eq!(up.alpn_for(Some(b"h2")), vec![b"http/1.1".to_vec()]);
    }
}
