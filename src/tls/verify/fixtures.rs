//! Test certificates and an in-memory handshake for the verifier's tests:
//! CAs that can issue intermediates, leaves and CRLs (rcgen, ECDSA P-256),
//! and a rustls client and server talking through `Vec` buffers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use rustls::server::danger::ClientCertVerifier;
use rustls::{
    AlertDescription, ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
};

/// A certificate authority: a root or an intermediate.
pub(crate) struct Ca {
    pub cert: CertificateDer<'static>,
    pub cert_pem: String,
    issuer: Certificate,
    key: KeyPair,
}

impl Ca {
    /// A self-signed root.
    pub fn root(name: &str) -> Self {
        let key = KeyPair::generate().expect("ca key");
        let issuer = ca_params(name).self_signed(&key).expect("ca cert");
        Ca {
            cert: issuer.der().clone(),
            cert_pem: issuer.pem(),
            issuer,
            key,
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Self {
        self.intermediate_with_serial(name, None)
    }

    /// An intermediate CA with a chosen serial number, to revoke it.
    pub fn intermediate_with_serial(&self, name: &str, serial: Option<u64>) -> Self {
        let key = KeyPair::generate().expect("intermediate key");
        let mut params = ca_params(name);
        params.serial_number = serial.map(SerialNumber::from);
        let issuer = params
            .signed_by(&key, &self.issuer, &self.key)
            .expect("intermediate cert");
        Ca {
            cert: issuer.der().clone(),
            cert_pem: issuer.pem(),
            issuer,
            key,
        }
    }

    /// The CA's private key (PKCS#8), to sign test OCSP responses.
    pub fn key_pkcs8(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// A CRL from this CA listing these serial numbers, valid until
    /// `next_update`.
    pub fn crl(
        &self,
        revoked: &[u64],
        next_update: SystemTime,
    ) -> CertificateRevocationListDer<'static> {
        self.crl_object(revoked, next_update).der().clone()
    }

    /// The same as [`Ca::crl`], as rcgen's object (for its PEM form).
    pub fn crl_object(
        &self,
        revoked: &[u64],
        next_update: SystemTime,
    ) -> rcgen::CertificateRevocationList {
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: time::OffsetDateTime::from(next_update),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: now - time::Duration::minutes(30),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer, &self.key).expect("crl")
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// What a client leaf certificate carries.
#[derive(Debug, Clone, Default)]
pub(crate) struct LeafSpec {
    pub cn: Option<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub serial: Option<u64>,
    pub not_after: Option<SystemTime>,
    /// An Authority Information Access OCSP URL.
    pub ocsp_url: Option<String>,
    /// The OCSP-signing extended key usage (a delegated responder) instead
    /// of clientAuth.
    pub ocsp_signing: bool,
}

impl LeafSpec {
    /// A leaf with only a subject CN.
    pub fn cn(cn: &str) -> Self {
        LeafSpec {
            cn: Some(cn.to_string()),
            ..LeafSpec::default()
        }
    }
}

/// A client certificate and its key.
pub(crate) struct Leaf {
    pub cert: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// Issues a client leaf from `ca`.
pub(crate) fn leaf(ca: &Ca, spec: &LeafSpec) -> Leaf {
    let key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(spec.dns.clone()).expect("leaf params");
    for uri in &spec.uris {
        params
            .subject_alt_names
            .push(SanType::URI(uri.as_str().try_into().expect("uri san")));
    }
    let mut dn = DistinguishedName::new();
    if let Some(cn) = &spec.cn {
        dn.push(DnType::CommonName, cn.as_str());
    }
    params.distinguished_name = dn;
    params.extended_key_usages = vec![if spec.ocsp_signing {
        ExtendedKeyUsagePurpose::OcspSigning
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    if let Some(serial) = spec.serial {
        params.serial_number = Some(SerialNumber::from(serial));
    }
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    if let Some(url) = &spec.ocsp_url {
        params.custom_extensions.push(aia_ocsp_extension(url));
    }
    if let Some(not_after) = spec.not_after {
        params.not_after = time::OffsetDateTime::from(not_after);
    }
    let cert = params
        .signed_by(&key, &ca.issuer, &ca.key)
        .expect("leaf cert");
    Leaf {
        cert: cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// An Authority Information Access extension naming one OCSP responder.
pub(crate) fn aia_ocsp_extension(url: &str) -> rcgen::CustomExtension {
    use super::der::{encode, implicit, sequence, OID};
    // AccessDescription { id-ad-ocsp, uniformResourceIdentifier [6] }
    let oid = encode(OID, &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01]);
    let description = sequence(&[&oid, &encode(implicit(6), url.as_bytes())]);
    rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 5, 5, 7, 1, 1],
        sequence(&[&description]),
    )
}

/// Seconds since the epoch, whole, as rcgen and X.509 store them.
pub(crate) fn at(secs_from_now: i64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(now.saturating_add_signed(secs_from_now))
}

/// The server side of the in-memory handshakes: a server certificate for
/// `localhost` and the trust root clients use to verify it.
pub(crate) struct ServerIdentity {
    ca: Ca,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl ServerIdentity {
    pub fn new() -> Self {
        let ca = Ca::root("server CA");
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params
            .signed_by(&key, &ca.issuer, &ca.key)
            .expect("server cert");
        ServerIdentity {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            ca,
        }
    }

    /// A server configuration using `verifier` for client certificates.
    pub fn server_config(&self, verifier: Arc<dyn ClientCertVerifier>) -> Arc<ServerConfig> {
        Arc::new(
            ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    self.chain.clone(),
                    PrivateKeyDer::Pkcs8(self.key.clone_key()),
                )
                .expect("server config"),
        )
    }

    /// A client configuration builder that trusts this server, ready for
    /// its client certificate.
    pub fn client_builder(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.cert.clone()).expect("server root");
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .expect("server verifier");
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_webpki_verifier(verifier)
    }

    /// A client configuration presenting `chain` (leaf first) with `key`,
    /// or no certificate.
    pub fn client_config(
        &self,
        client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let builder = self.client_builder(versions);
        Arc::new(match client {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        })
    }
}

/// How an in-memory handshake ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub server: ServerConnection,
    pub client_error: Option<rustls::Error>,
    pub server_error: Option<rustls::Error>,
}

impl Outcome {
    /// Both sides finished the handshake without error.
    pub fn ok(&self) -> bool {
        self.client_error.is_none() && self.server_error.is_none() && !self.server.is_handshaking()
    }

    /// The alert the client received, if it received one.
    pub fn client_got_alert(&self) -> Option<AlertDescription> {
        match &self.client_error {
            Some(rustls::Error::AlertReceived(a)) => Some(*a),
            _ => None,
        }
    }
}

/// Runs a full handshake between a new client and server connection,
/// moving bytes through buffers until neither side has anything to send.
pub(crate) fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> Outcome {
    let mut server = ServerConnection::new(server.clone()).expect("server conn");
    let mut client = ClientConnection::new(client.clone(), "localhost".try_into().unwrap())
        .expect("client conn");
    let mut client_error = None;
    let mut server_error = None;
    let mut buf = Vec::new();
    for _ in 0..32 {
        let mut moved = false;
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).expect("client write");
        }
        if !buf.is_empty() && server_error.is_none() {
            moved = true;
            server_error = feed(&mut *server, &buf);
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).expect("server write");
        }
        if !buf.is_empty() && client_error.is_none() {
            moved = true;
            client_error = feed(&mut *client, &buf);
        }
        if !moved {
            break;
        }
    }
    Outcome {
        server,
        client_error,
        server_error,
    }
}

fn feed<D>(conn: &mut rustls::ConnectionCommon<D>, mut bytes: &[u8]) -> Option<rustls::Error> {
    while !bytes.is_empty() {
        conn.read_tls(&mut bytes).expect("read_tls");
        if let Err(e) = conn.process_new_packets() {
            return Some(e);
        }
    }
    None
}
