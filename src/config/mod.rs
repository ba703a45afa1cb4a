//! Configuration: the TOML schema, the drop-in CLI flags, and validation.
//!
//! Both sources produce the same validated [`Config`]. Every problem found is
//! reported with its [`Location`] (file, line, column and field, or the flag),
//! and validation collects all problems instead of stopping at the first.
//! Certificate, key and CA files are loaded here (through [`crate::tls::certs`])
//! so that a broken file is reported against the field that named it.
//!
//! - [`load_file`] reads a TOML file (schema: [`mod@file`], user reference:
//!   `docs/config.md`);
//! - [`from_flags`] builds the same from the drop-in [`Flags`];
//! - both go through one validator (`validate.rs`), so the same rules
//!   and messages apply to both.

use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::admit::Tiers;
use crate::tls::route::ServerNamePattern;
use crate::tls::tickets::TicketKey;
use crate::tls::verify::{Allowlist, Crl, OcspSettings};

pub use crate::close::AccessLogFormat;
pub use crate::connect::cert_header::{CertHeader, Format as CertHeaderFormat};
pub use crate::connect::proxy_protocol::{CertTlv, CertTlvContent, Version as ProxyProtocol};
pub use crate::ktls::policy::OffloadPolicy;

pub mod duration;
pub mod file;
mod flags;
mod validate;

pub use duration::{format_duration, parse_duration, DurationError};
pub use flags::Flags;

/// Largest config file read; real ones are a few KiB.
const MAX_CONFIG_SIZE: u64 = 4 * 1024 * 1024;

/// Loads and validates a TOML config file.
///
/// Relative certificate paths in it resolve against the file's directory.
/// On failure every problem found is returned, each with its
/// `file:line:column` and dotted field.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read_config(path)?;
    load_text(path, &text)
}

/// Parses and validates `text` as if it were the contents of `path`.
///
/// [`load_file`] without the read, so the fuzz tests can drive the parser
/// and validator with many texts without writing each to a file. Relative
/// paths in `text` resolve against `path`'s directory.
pub fn load_text(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let (raw, unknown) = file::parse(path, text).map_err(|e| ConfigErrors(vec![e]))?;
    match (
        validate::validate(raw, SystemTime::now()),
        unknown.is_empty(),
    ) {
        (Ok(config), true) => Ok(config),
        (Ok(_), false) => Err(ConfigErrors(unknown)),
        (Err(ConfigErrors(errors)), _) => {
            Err(ConfigErrors(unknown.into_iter().chain(errors).collect()))
        }
    }
}

/// Validates the drop-in flags as a configuration with one listener.
pub fn from_flags(flags: &Flags) -> Result<Config, ConfigErrors> {
    validate::validate(flags.to_raw(), SystemTime::now())
}

/// Reads the config file as UTF-8 text; problems are reported at the
/// file's start (or at the first invalid byte).
fn read_config(path: &Path) -> Result<String, ConfigErrors> {
    let fail = |line, column, message: String| {
        ConfigErrors(vec![ConfigError {
            location: Location::File {
                path: path.to_path_buf(),
                line,
                column,
            },
            field: "(file)".to_string(),
            message,
        }])
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_SIZE + 1).read_to_end(&mut bytes))
        .map_err(|e| {
            let text = e.to_string();
            // Drop the "(os error N)" suffix, as certificate errors do.
            let reason = text.split(" (os error ").next().unwrap_or(&text);
            fail(1, 1, format!("cannot read {}: {reason}", path.display()))
        })?;
    if bytes.len() as u64 > MAX_CONFIG_SIZE {
        return Err(fail(
            1,
            1,
            format!("file is larger than {} MiB", MAX_CONFIG_SIZE >> 20),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(&e.as_bytes()[..valid]);
        let (line, column) = file::line_column(&text, valid);
        fail(line, column, "file is not valid UTF-8".to_string())
    })
}

/// A fully validated configuration, ready to start workers from.
#[derive(Debug)]
pub struct Config {
    /// Number of worker threads (one monoio runtime each, pinned to a core).
    pub workers: usize,
    /// Longest time from accept to a completed handshake.
    pub handshake_timeout: Duration,
    /// A connection with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Longest time to establish the TCP connection to one backend.
    pub connect_timeout: Duration,
    /// On SIGTERM/SIGINT, how long open connections may finish before being closed.
    pub drain_timeout: Duration,
    /// Maximum concurrent client connections per worker.
    pub max_connections_per_worker: usize,
    /// Maximum handshakes in flight per worker; a connection beyond it is
    /// closed at accept.
    pub max_handshakes_per_worker: usize,
    /// Kernel TLS offload policy.
    pub ktls: KtlsMode,
    /// With `ktls = "auto"`: when a connection moves to the kernel (at once
    /// by default).
    pub ktls_offload: OffloadPolicy,
    /// Address of the admin listener (/metrics, /healthz, /ready, /reload).
    pub admin: Option<SocketAddr>,
    /// How access-log lines are written.
    pub access_log: AccessLogFormat,
    /// Session tickets: shared keys and lifetime.
    pub tickets: TicketSettings,
    /// The listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Backend pools: the `[[pool]]` tables, then one implicit round-robin
    /// pool for each route that lists its `backends` inline.
    pub pools: Vec<PoolConfig>,
    /// Throttling tiers, applied on every listener; empty: no throttling.
    pub tiers: Tiers,
    /// Certificate files the tiers' alias rules name.
    pub tier_cert_paths: Vec<PathBuf>,
    /// File this config was read from; `None` when built from flags.
    pub source: Option<PathBuf>,
    /// Non-fatal problems, such as an expired server certificate or a
    /// client CA given while client authentication is off. The caller logs
    /// them; they do not stop the configuration from being used.
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// Every file this configuration was built from: the config file, and
    /// each listener's certificate, key, client CA, CRLs and allowlist
    /// alias certificates, and each pool's backend TLS files. A change to any
    /// of them is worth a reload.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.source.iter().cloned().collect();
        for t in self
            .listeners
            .iter()
            .flat_map(|l| l.all_routes())
            .map(|r| &r.tls)
        {
            files.push(t.cert_path.clone());
            files.push(t.key_path.clone());
            files.extend(t.client_ca_path.iter().cloned());
            files.extend(t.crl_paths.iter().cloned());
            files.extend(t.client_cert_paths.iter().cloned());
        }
        for b in self.pools.iter().filter_map(|p| p.tls.as_ref()) {
            files.extend(b.ca_path.iter().cloned());
            if let Some(id) = &b.identity {
                files.push(id.cert_path.clone());
                files.push(id.key_path.clone());
            }
        }
        files.extend(self.tickets.keys.iter().map(|k| k.path.clone()));
        files.extend(self.tier_cert_paths.iter().cloned());
        files.sort();
        files.dedup();
        files
    }
}

/// How session tickets are sealed and how long clients keep them.
#[derive(Debug)]
pub struct TicketSettings {
    /// Keys shared with the rest of the fleet; `None` keeps rotating keys in
    /// memory, private to this process.
    pub keys: Option<TicketKeyFile>,
    /// Lifetime announced with each ticket.
    pub lifetime: Duration,
}

/// A ticket key file as loaded.
#[derive(Debug)]
pub struct TicketKeyFile {
    /// Where the keys came from (watched for rotation).
    pub path: PathBuf,
    /// The keys, newest (sealing) first.
    pub keys: Vec<TicketKey>,
}

/// One listening service: addresses, and the routes that pick the TLS
/// identity, client policy and backend pool of each connection.
#[derive(Debug)]
pub struct ListenerConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// Addresses to listen on (IPv4 and/or IPv6).
    pub listen: Vec<SocketAddr>,
    /// Accept backlog.
    pub backlog: u32,
    /// Routes chosen by the client's SNI (and ALPN), in configured order.
    pub routes: Vec<RouteConfig>,
    /// The listener's own certificate and backends: the route for clients
    /// no route matches. Without one, those clients are refused with the
    /// `unrecognized_name` alert.
    pub default_route: Option<RouteConfig>,
    /// PROXY protocol header sent to backends, if any.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// The v2 header's client-certificate TLV; `None` when turned off.
    pub proxy_protocol_cert_tlv: Option<CertTlv>,
    /// HTTP header mode: the client certificate in every request head.
    pub client_cert_header: Option<CertHeader>,
}

impl ListenerConfig {
    /// The routes, then the default route if any.
    pub fn all_routes(&self) -> impl Iterator<Item = &RouteConfig> {
        self.routes.iter().chain(self.default_route.as_ref())
    }
}

/// Name of the route made of a listener's own certificate and backends.
pub const DEFAULT_ROUTE: &str = "default";

/// One route: which clients it serves, and how.
#[derive(Debug)]
pub struct RouteConfig {
    /// Name in the access log (`route=`) and metrics; [`DEFAULT_ROUTE`]
    /// for the listener's own.
    pub name: String,
    /// Server names it serves (exact or `*.` one-label wildcards); empty
    /// for the default route.
    pub server_names: Vec<ServerNamePattern>,
    /// TLS identity and client policy. For a route (not the default), a
    /// non-empty `alpn` also selects it: the client must offer one of them.
    pub tls: TlsSettings,
    /// Name of its pool in [`Config::pools`].
    pub pool: String,
}

/// How a pool picks the backend for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// In turn, in proportion to the weights.
    RoundRobin,
    /// The backend with the fewest open connections for its weight.
    LeastConnections,
    /// Consistent (rendezvous) hashing on the client identity: the alias
    /// when the allowlist names one, else the certificate fingerprint, else
    /// the client IP.
    Hash,
}

/// A group of interchangeable backends.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Name in logs and metrics. Implicit pools are named after their
    /// listener and route (`main/api`), which no `[[pool]]` name can be.
    pub name: String,
    /// Balancing policy.
    pub balance: Balance,
    /// The backends, in configured order.
    pub backends: Vec<PoolBackend>,
    /// Active TCP health checks, if configured.
    pub health_check: Option<HealthCheck>,
    /// Consecutive connect failures that eject a backend; `None` never ejects.
    pub eject_after: Option<u32>,
    /// How long an ejected backend is left out.
    pub eject_for: Duration,
    /// TLS toward the backends; `None` relays plaintext.
    pub tls: Option<BackendTls>,
}

/// TLS toward backends (upstream TLS), with its key material loaded.
#[derive(Debug, Clone)]
pub struct BackendTls {
    /// Trust anchors for the backends' certificates; empty when `verify` is off.
    pub ca: Vec<CertificateDer<'static>>,
    /// Where the CA bundle came from.
    pub ca_path: Option<PathBuf>,
    /// Client certificate presented to backends that ask for one.
    pub identity: Option<ClientIdentity>,
    /// Server name sent as SNI and verified; `None` uses each backend's host.
    pub server_name: Option<ServerName<'static>>,
    /// Whether the backend's certificate is verified.
    pub verify: bool,
    /// ALPN offered to backends; `None` passes on what the client negotiated.
    pub alpn: Option<Vec<Vec<u8>>>,
    /// Whether sessions with backends are resumed (HAProxy's `no-ssl-reuse`
    /// and nginx's `proxy_ssl_session_reuse off` turn it off).
    pub session_reuse: bool,
}

/// A client certificate chain and its key, for backends.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The chain, end entity first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: Arc<PrivateKeyDer<'static>>,
    /// Where the chain came from.
    pub cert_path: PathBuf,
    /// Where the key came from (the same file for PKCS#12).
    pub key_path: PathBuf,
}

/// A backend of a pool with its share and limit.
#[derive(Debug, Clone)]
pub struct PoolBackend {
    /// Address.
    pub backend: Backend,
    /// Relative share of new connections (1..=1000).
    pub weight: u32,
    /// Most connections open to it at once, across workers; `None`: no limit.
    pub max_connections: Option<u64>,
}

/// Active health checking of a pool's backends (a TCP connect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between checks of one backend.
    pub interval: Duration,
    /// Longest time one connect may take.
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy backend healthy.
    pub rise: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    pub fall: u32,
}

/// Server-side TLS settings of a listener, with its key material loaded.
#[derive(Debug)]
pub struct TlsSettings {
    /// The server certificate chain, end entity first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The server private key.
    pub key: Arc<PrivateKeyDer<'static>>,
    /// Whether and how client certificates are required.
    pub client_auth: ClientAuth,
    /// Trust anchors for client certificates; empty when `client_auth` is `Off`.
    pub client_ca: Vec<CertificateDer<'static>>,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<Vec<u8>>,
    /// Enabled protocol versions.
    pub versions: Vec<TlsVersion>,
    /// Enabled cipher suites, in preference order; empty means all supported.
    pub cipher_suites: Vec<CipherSuite>,
    /// Paths the material came from, for logs and reload.
    pub cert_path: PathBuf,
    /// Path of the private key.
    pub key_path: PathBuf,
    /// Path of the client CA bundle, if any.
    pub client_ca_path: Option<PathBuf>,
    /// DER OCSP response stapled to the server certificate, if configured.
    pub ocsp_staple: Option<Vec<u8>>,
    /// Certificate revocation lists for client certificates.
    pub crls: Vec<Crl>,
    /// Paths of the CRL files.
    pub crl_paths: Vec<PathBuf>,
    /// Which verified clients are admitted; empty admits every verified one.
    pub allowlist: Allowlist,
    /// Certificate files of allowlist aliases, for reload.
    pub client_cert_paths: Vec<PathBuf>,
    /// OCSP checking of client certificates; `None` when off.
    pub client_ocsp: Option<OcspSettings>,
}

/// Whether connections move to kernel TLS after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KtlsMode {
    /// Offload when the kernel supports the negotiated version and cipher;
    /// otherwise continue in userspace.
    Auto,
    /// Refuse to start without kernel TLS; a connection that cannot be
    /// offloaded is closed rather than served in userspace.
    Require,
    /// Always relay in userspace.
    Off,
}

/// Client certificate policy of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A valid client certificate is mandatory.
    Required,
    /// A client may present no certificate; a presented one must be valid.
    Optional,
    /// Client certificates are not requested.
    Off,
}

/// A TLS protocol version that can be enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2
    Tls12,
    /// TLS 1.3
    Tls13,
}

/// A cipher suite that can be enabled (each maps to one or two rustls suites).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherSuite {
    /// AES-128-GCM (TLS 1.3 suite and the TLS 1.2 ECDHE suites).
    Aes128Gcm,
    /// AES-256-GCM.
    Aes256Gcm,
    /// CHACHA20-POLY1305.
    Chacha20Poly1305,
}

/// A backend address as configured and as resolved.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The text the operator wrote (`host:port`), for logs.
    pub name: String,
    /// The resolved address.
    pub addr: SocketAddr,
}

/// Where a configuration problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A position in a config file (line and column are 1-based).
    File {
        /// The config file.
        path: PathBuf,
        /// Line, 1-based.
        line: usize,
        /// Column, 1-based.
        column: usize,
    },
    /// A command-line flag.
    Flag,
}

/// One configuration problem: where, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the problem is.
    pub location: Location,
    /// Dotted field path (`listener[0].cert`) or flag (`--cert`).
    pub field: String,
    /// What is wrong, naming files involved.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::File { path, line, column } => write!(
                f,
                "{}:{line}:{column}: {}: {}",
                path.display(),
                self.field,
                self.message
            ),
            Location::Flag => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
