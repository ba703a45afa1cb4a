//! The client's TLS: configuration from the command line, a session store
//! sized for the run, and a sans-IO driver: rustls' unbuffered API for the
//! handshake, then tlsplice's own record layer (`tls::traffic`), which
//! seals straight into our output buffer and opens in place, so a
//! request/response loop reuses the same buffers for the life of a
//! connection and the generator spends as little as the terminator per
//! byte.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{
    ClientConnectionData, ClientSessionStore, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue, UnbufferedClientConnection, WebPkiServerVerifier,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    CipherSuite, ClientConfig, HandshakeKind, NamedGroup, ProtocolVersion, RootCertStore,
    SupportedProtocolVersion,
};
use tlsplice::tls::records::TlsOut;
use tlsplice::tls::traffic::{Traffic, TrafficError};
use tlsplice::tls::unbuffered::{drive, Progress};

/// Which symmetric cipher family to offer (`--cipher`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cipher {
    /// AES-128-GCM (TLS 1.3 and ECDHE TLS 1.2 suites).
    Aes128,
    /// AES-256-GCM.
    Aes256,
    /// ChaCha20-Poly1305.
    Chacha20,
}

impl Cipher {
    /// Whether `suite` uses this cipher.
    fn matches(self, suite: CipherSuite) -> bool {
        use CipherSuite as S;
        match self {
            Self::Aes128 => matches!(
                suite,
                S::TLS13_AES_128_GCM_SHA256
                    | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                    | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            ),
            Self::Aes256 => matches!(
                suite,
                S::TLS13_AES_256_GCM_SHA384
                    | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                    | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
            ),
            Self::Chacha20 => matches!(
                suite,
                S::TLS13_CHACHA20_POLY1305_SHA256
                    | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            ),
        }
    }
}

/// Which protocol versions to offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 and 1.2 (the server picks).
    Both,
    /// `--tls13-only`.
    Tls13,
    /// `--tls12-only`.
    Tls12,
}

/// Everything the client configuration is built from. Certificates are
/// loaded once by the caller; each worker thread builds its own
/// `ClientConfig` from this so session stores stay per core.
pub struct ClientSetup {
    /// Trust anchors for the server certificate.
    pub roots: Vec<CertificateDer<'static>>,
    /// Client certificate chain and key, when the run authenticates.
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// Protocol versions to offer.
    pub versions: Versions,
    /// Restrict cipher suites to one family.
    pub cipher: Option<Cipher>,
    /// Restrict key exchange groups (in preference order); empty = provider default.
    pub kx_groups: Vec<NamedGroup>,
    /// Resume sessions; `Some(capacity)` sizes the TLS 1.3 ticket store.
    pub resume: Option<usize>,
}

impl fmt::Debug for ClientSetup {
    // Hand-written so a debug print can never show the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSetup")
            .field("roots", &self.roots.len())
            .field("identity", &self.identity.is_some())
            .field("versions", &self.versions)
            .field("cipher", &self.cipher)
            .field("kx_groups", &self.kx_groups)
            .field("resume", &self.resume)
            .finish()
    }
}

/// Parses a `--kx` group name.
pub fn parse_group(name: &str) -> Result<NamedGroup, String> {
    match name.to_ascii_lowercase().as_str() {
        "x25519" => Ok(NamedGroup::X25519),
        "p256" | "secp256r1" | "p-256" => Ok(NamedGroup::secp256r1),
        "p384" | "secp384r1" | "p-384" => Ok(NamedGroup::secp384r1),
        "x25519mlkem768" | "mlkem" => Ok(NamedGroup::X25519MLKEM768),
        "mlkem768" => Ok(NamedGroup::MLKEM768),
        other => Err(format!(
            "unknown key exchange group {other:?} (x25519, p256, p384, x25519mlkem768, mlkem768)"
        )),
    }
}

/// Builds one worker's client configuration.
pub fn client_config(setup: &ClientSetup) -> anyhow::Result<Arc<ClientConfig>> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(cipher) = setup.cipher {
        provider.cipher_suites.retain(|s| cipher.matches(s.suite()));
    }
    if !setup.kx_groups.is_empty() {
        let all = std::mem::take(&mut provider.kx_groups);
        for want in &setup.kx_groups {
            let found = all.iter().find(|g| g.name() == *want).ok_or_else(|| {
                anyhow::anyhow!("key exchange group {want:?} is not offered by aws-lc-rs")
            })?;
            provider.kx_groups.push(*found);
        }
    }
    let versions: &[&SupportedProtocolVersion] = match setup.versions {
        Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Tls13 => &[&rustls::version::TLS13],
        Versions::Tls12 => &[&rustls::version::TLS12],
    };
    let usable = provider
        .cipher_suites
        .iter()
        .any(|s| versions.iter().any(|v| s.version() == *v));
    if !usable {
        anyhow::bail!("no cipher suite left for the chosen --cipher and protocol version");
    }
    let provider = Arc::new(provider);

    let mut roots = RootCertStore::empty();
    for (i, cert) in setup.roots.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| anyhow::anyhow!("--ca certificate {}: {e}", i + 1))?;
    }
    let verifier: Arc<dyn ServerCertVerifier> =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;

    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &setup.identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.resumption = match setup.resume {
        // rustls resumes by default; a handshake benchmark must not, unless asked.
        None => Resumption::disabled(),
        Some(capacity) => Resumption::store(Arc::new(TicketStore::new(capacity))),
    };
    // Once open, the record layer takes the session from rustls.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// A client session store that keeps up to `capacity` TLS 1.3 tickets per
/// server name.
///
/// rustls' `ClientSessionMemoryCache` caps TLS 1.3 tickets at 8 per server
/// name whatever size it is given (the size bounds the number of *server
/// names*), so a run with more than a handful of concurrent connections to
/// one server would find the store empty and silently fall back to full
/// handshakes. Each worker has its own store, so the mutex is uncontended.
#[derive(Debug)]
pub struct TicketStore {
    capacity: usize,
    servers: Mutex<HashMap<ServerName<'static>, ServerSessions>>,
}

#[derive(Debug, Default)]
struct ServerSessions {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl TicketStore {
    /// A store keeping up to `capacity` TLS 1.3 tickets per server name.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            servers: Mutex::new(HashMap::new()),
        }
    }

    fn with<R>(&self, name: ServerName<'static>, f: impl FnOnce(&mut ServerSessions) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-update of a
        // cache; the data is still usable for a benchmark.
        let mut servers = self
            .servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(servers.entry(name).or_default())
    }

    fn get<R>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut ServerSessions) -> R) -> Option<R> {
        let mut servers = self
            .servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        servers.get_mut(&name.to_owned()).map(f)
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with(server_name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.get(server_name, |s| s.kx_hint).flatten()
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(server_name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.get(server_name, |s| s.tls12.clone()).flatten()
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.get(server_name, |s| s.tls12 = None);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let capacity = self.capacity;
        self.with(server_name, |s| {
            if s.tls13.len() >= capacity {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        // Newest first: it has the most lifetime left.
        self.get(server_name, |s| s.tls13.pop_back()).flatten()
    }
}

/// Where a connection stands after all buffered input was processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The handshake needs more bytes from the server (send `out` first).
    Handshaking,
    /// Application data can flow; everything complete was processed.
    Open,
    /// The server sent close_notify.
    PeerClosed,
}

/// Upper bound of ciphertext for `len` plaintext bytes: full records of
/// 2^14 bytes, each with a header, a nonce or content type and a tag.
pub fn ciphertext_bound(len: usize) -> usize {
    const RECORD: usize = 1 << 14;
    const OVERHEAD: usize = 5 + 8 + 16 + 1 + 34;
    len + len.div_ceil(RECORD).max(1) * OVERHEAD
}

/// What the handshake settled, kept once rustls hands over the session.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    /// Full, resumed, or full after a HelloRetryRequest.
    pub kind: Option<HandshakeKind>,
    /// The protocol version.
    pub version: Option<ProtocolVersion>,
    /// The cipher suite.
    pub suite: Option<CipherSuite>,
    /// The key exchange group.
    pub group: Option<NamedGroup>,
}

enum State {
    /// rustls runs the handshake.
    Handshaking(Box<UnbufferedClientConnection>),
    /// tlsplice's record layer (`tls::traffic`, as the terminator runs it)
    /// seals and opens, straight into and out of our buffers.
    Open(Box<Traffic<ClientConnectionData>>),
    /// Handed over failed or the session ended in error.
    Failed,
}

/// One client connection's TLS state, without I/O.
///
/// The caller owns the buffers: `incoming` holds ciphertext read but not yet
/// consumed (its length is what is filled), `out` collects records to send.
pub struct Engine {
    state: State,
    negotiated: Negotiated,
    /// Plaintext opened but not yet handed to a sink.
    plain: Vec<u8>,
}

impl Engine {
    /// Starts a handshake with `name`; the ClientHello is queued on the
    /// first [`Engine::advance`].
    pub fn new(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Self, rustls::Error> {
        Ok(Self {
            state: State::Handshaking(Box::new(UnbufferedClientConnection::new(config, name)?)),
            negotiated: Negotiated {
                kind: None,
                version: None,
                suite: None,
                group: None,
            },
            plain: Vec::new(),
        })
    }

    /// What the handshake settled (known once it is done).
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// Processes everything complete in `incoming`, queues what must be
    /// sent in `out` and hands decrypted application data to `sink`.
    pub fn advance(
        &mut self,
        incoming: &mut Vec<u8>,
        out: &mut TlsOut,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<Step, rustls::Error> {
        match &mut self.state {
            State::Handshaking(conn) => {
                let mut early = Vec::new();
                let progress = loop {
                    // `out` is written before the next read: keep going.
                    match drive(conn.as_mut(), incoming, out, &mut early)? {
                        Progress::Transmit => continue,
                        other => break other,
                    }
                };
                if !early.is_empty() {
                    sink(&early);
                }
                match progress {
                    Progress::NeedInput => Ok(Step::Handshaking),
                    Progress::PeerClosed => Ok(Step::PeerClosed),
                    Progress::Complete | Progress::Transmit => {
                        self.open()?;
                        // Records that came with the server's last flight.
                        self.advance(incoming, out, sink)
                    }
                }
            }
            State::Open(traffic) => {
                let mut control = Vec::new();
                self.plain.clear();
                let opened = traffic.open(incoming, &mut self.plain, &mut control);
                out.extend_from_slice(&control);
                let closed = opened.map_err(traffic_error)?;
                if !self.plain.is_empty() {
                    sink(&self.plain);
                }
                Ok(if closed { Step::PeerClosed } else { Step::Open })
            }
            State::Failed => Err(rustls::Error::HandshakeNotComplete),
        }
    }

    /// Moves a finished handshake to the record layer.
    fn open(&mut self) -> Result<(), rustls::Error> {
        let State::Handshaking(conn) = std::mem::replace(&mut self.state, State::Failed) else {
            return Err(rustls::Error::HandshakeNotComplete);
        };
        self.negotiated = Negotiated {
            kind: conn.handshake_kind(),
            version: conn.protocol_version(),
            suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
            group: conn.negotiated_key_exchange_group().map(|g| g.name()),
        };
        let traffic = Traffic::from_rustls(*conn).map_err(traffic_error)?;
        self.state = State::Open(Box::new(traffic));
        Ok(())
    }

    /// Encrypts `data` into `out`. Call only once the connection is open.
    pub fn encrypt(
        &mut self,
        _incoming: &mut Vec<u8>,
        out: &mut TlsOut,
        data: &[u8],
    ) -> Result<(), rustls::Error> {
        let State::Open(traffic) = &mut self.state else {
            return Err(rustls::Error::HandshakeNotComplete);
        };
        let room = traffic.sealed_len(data.len());
        out.append_with(room, |buf| traffic.seal_into(data, buf))
            .map_err(traffic_error)
    }

    /// Queues a close_notify alert in `out`.
    pub fn close_notify(
        &mut self,
        _incoming: &mut Vec<u8>,
        out: &mut TlsOut,
    ) -> Result<(), rustls::Error> {
        let State::Open(traffic) = &mut self.state else {
            return Err(rustls::Error::HandshakeNotComplete);
        };
        let room = traffic.sealed_len(0);
        out.append_with(room, |buf| traffic.close_notify_into(buf))
            .map_err(traffic_error)
    }
}

fn traffic_error(e: TrafficError) -> rustls::Error {
    match e {
        TrafficError::Rustls(e) => e,
        TrafficError::PeerAlert(alert) => rustls::Error::AlertReceived(alert),
        other => rustls::Error::General(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256,
    };
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use rustls::server::WebPkiClientVerifier;
    use rustls::{HandshakeKind, ProtocolVersion, ServerConfig, ServerConnection};

    use super::*;

    struct Pki {
        ca: CertificateDer<'static>,
        server: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
        client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    }

    fn pki() -> Pki {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            (vec![cert.der().clone()], der)
        };
        Pki {
            ca: ca.der().clone(),
            server: leaf(vec!["localhost".into()]),
            client: leaf(vec!["client".into()]),
        }
    }

    fn server_config(pki: &Pki) -> Arc<ServerConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let (chain, key) = &pki.server;
        let mut config = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .unwrap();
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(64);
        Arc::new(config)
    }

    fn setup(pki: &Pki, versions: Versions, with_cert: bool) -> ClientSetup {
        ClientSetup {
            roots: vec![pki.ca.clone()],
            identity: with_cert.then(|| (pki.client.0.clone(), pki.client.1.clone_key())),
            versions,
            cipher: None,
            kx_groups: Vec::new(),
            resume: Some(64),
        }
    }

    /// A client engine and a buffered rustls server joined in memory.
    struct Pair {
        engine: Engine,
        incoming: Vec<u8>,
        out: TlsOut,
        server: ServerConnection,
        received: Vec<u8>,
    }

    impl Pair {
        fn new(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Self {
            Self {
                engine: Engine::new(client, ServerName::try_from("localhost").unwrap()).unwrap(),
                incoming: Vec::new(),
                out: TlsOut::with_capacity(64),
                server: ServerConnection::new(server).unwrap(),
                received: Vec::new(),
            }
        }

        /// Moves bytes both ways until neither side has anything to say;
        /// returns the client's last step or the first error on either side.
        fn run(&mut self) -> Result<Step, String> {
            for _ in 0..32 {
                let received = &mut self.received;
                let step = self
                    .engine
                    .advance(&mut self.incoming, &mut self.out, |p| {
                        received.extend_from_slice(p)
                    })
                    .map_err(|e| format!("client: {e}"))?;
                let mut moved = false;
                if !self.out.is_empty() {
                    let mut pending = self.out.pending();
                    self.server.read_tls(&mut pending).unwrap();
                    self.out.clear();
                    let state = self.server.process_new_packets();
                    // Let the alert reach the client before reporting.
                    let alert = state.err().map(|e| format!("server: {e}"));
                    let mut echo = Vec::new();
                    let _ = self.server.reader().read_to_end(&mut echo);
                    if !echo.is_empty() {
                        self.server.writer().write_all(&echo).unwrap();
                    }
                    self.drain_server();
                    if let Some(alert) = alert {
                        let _ = self
                            .engine
                            .advance(&mut self.incoming, &mut self.out, |_| {});
                        return Err(alert);
                    }
                    moved = true;
                }
                if self.server.wants_write() {
                    self.drain_server();
                    moved = true;
                }
                if !moved {
                    return Ok(step);
                }
            }
            panic!("no progress");
        }

        fn drain_server(&mut self) {
            while self.server.wants_write() {
                self.server.write_tls(&mut self.incoming).unwrap();
            }
        }
    }

    #[test]
    fn handshake_echo_and_resumption_tls13() {
        let pki = pki();
        let server = server_config(&pki);
        let client = client_config(&setup(&pki, Versions::Tls13, true)).unwrap();

        let mut first = Pair::new(client.clone(), server.clone());
        assert_eq!(first.run().unwrap(), Step::Open);
        assert_eq!(
            first.engine.negotiated().version,
            Some(ProtocolVersion::TLSv1_3)
        );
        assert_eq!(first.engine.negotiated().kind, Some(HandshakeKind::Full));
        first
            .engine
            .encrypt(&mut first.incoming, &mut first.out, b"ping")
            .unwrap();
        first.run().unwrap();
        assert_eq!(first.received, b"ping");

        // The tickets arrived with the echo; the next connection resumes.
        let mut second = Pair::new(client, server);
        assert_eq!(second.run().unwrap(), Step::Open);
        assert_eq!(
            second.engine.negotiated().kind,
            Some(HandshakeKind::Resumed)
        );
    }

    #[test]
    fn tls12_only_negotiates_tls12() {
        let pki = pki();
        let client = client_config(&setup(&pki, Versions::Tls12, true)).unwrap();
        let mut pair = Pair::new(client, server_config(&pki));
        assert_eq!(pair.run().unwrap(), Step::Open);
        assert_eq!(
            pair.engine.negotiated().version,
            Some(ProtocolVersion::TLSv1_2)
        );
    }

    #[test]
    fn missing_client_certificate_is_refused_by_the_server() {
        let pki = pki();
        let client = client_config(&setup(&pki, Versions::Tls13, false)).unwrap();
        let mut pair = Pair::new(client, server_config(&pki));
        // TLS 1.3: the client believes it is done before the server decides.
        let err = pair.run().unwrap_err();
        assert!(err.contains("server"), "{err}");
    }

    #[test]
    fn close_notify_is_answered() {
        let pki = pki();
        let client = client_config(&setup(&pki, Versions::Both, true)).unwrap();
        let mut pair = Pair::new(client, server_config(&pki));
        pair.run().unwrap();
        pair.engine
            .close_notify(&mut pair.incoming, &mut pair.out)
            .unwrap();
        pair.server.send_close_notify();
        let step = pair.run().unwrap();
        assert!(matches!(step, Step::PeerClosed), "{step:?}");
    }

    #[test]
    fn cipher_filter_keeps_only_the_family() {
        let pki = pki();
        let mut s = setup(&pki, Versions::Tls13, true);
        s.cipher = Some(Cipher::Chacha20);
        let client = client_config(&s).unwrap();
        let mut pair = Pair::new(client, server_config(&pki));
        pair.run().unwrap();
        assert_eq!(
            pair.engine.negotiated().suite,
            Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
        );
    }

    #[test]
    fn ticket_store_keeps_more_than_eight_tickets() {
        let pki = pki();
        let server = server_config(&pki);
        let client = client_config(&setup(&pki, Versions::Tls13, true)).unwrap();
        // Twenty connections, each leaving its tickets behind.
        for _ in 0..20 {
            let mut p = Pair::new(client.clone(), server.clone());
            p.run().unwrap();
            p.engine.encrypt(&mut p.incoming, &mut p.out, b"x").unwrap();
            p.run().unwrap();
        }
        // Twenty concurrent openers all find a ticket.
        let mut resumed = 0;
        let mut pairs: Vec<Pair> = (0..20)
            .map(|_| Pair::new(client.clone(), server.clone()))
            .collect();
        for p in &mut pairs {
            // The ClientHello (and with it the ticket) is taken at the first advance.
            p.engine
                .advance(&mut p.incoming, &mut p.out, |_| {})
                .unwrap();
        }
        for p in &mut pairs {
            p.run().unwrap();
            if p.engine.negotiated().kind == Some(HandshakeKind::Resumed) {
                resumed += 1;
            }
        }
        assert_eq!(resumed, 20);
    }

    #[test]
    fn parse_group_names() {
        assert_eq!(parse_group("X25519").unwrap(), NamedGroup::X25519);
        assert_eq!(parse_group("p256").unwrap(), NamedGroup::secp256r1);
        assert!(parse_group("p521x").is_err());
    }

    #[test]
    fn ciphertext_bound_covers_records() {
        assert!(ciphertext_bound(0) >= 5 + 16);
        assert!(ciphertext_bound(1 << 14) >= (1 << 14) + 22);
        assert!(ciphertext_bound((1 << 14) + 1) >= (1 << 14) + 1 + 2 * 22);
    }
}
