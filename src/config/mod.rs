//! Configuration: the TOML schema, the drop-in CLI flags, and validation.
//!
//! Both sources produce the same validated [`Config`]. Every problem found is
//! reported with its [`Location`] (file, line, column and field, or the flag),
//! and validation collects all problems instead of stopping at the first.
//! Certificate, key and CA files are loaded here (through [`crate::tls::certs`])
//! so that a broken file is reported against the field that named it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
    /// The listeners.
    pub listeners: Vec<ListenerConfig>,
    /// File this config was read from; `None` when built from flags.
    pub source: Option<PathBuf>,
    pub warnings: Vec<ConfigError>,
}

/// One listening service: addresses, TLS identity and policy, backends.
#[derive(Debug)]
pub struct ListenerConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// Addresses to listen on (IPv4 and/or IPv6).
    pub listen: Vec<SocketAddr>,
    /// Accept backlog.
    pub backlog: u32,
    /// Server TLS settings.
    pub tls: TlsSettings,
    /// Backends, tried round-robin.
    pub backends: Vec<Backend>,
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
// STUB
#[derive(Debug, Clone, Default)]
pub struct Flags { pub listen: Vec<String>, pub cert: Option<PathBuf>, pub key: Option<PathBuf>, pub client_ca: Option<PathBuf>, pub client_auth: Option<String>, pub backends: Vec<String>, pub workers: Option<usize>, pub alpn: Vec<String>, pub handshake_timeout: Option<String>, pub idle_timeout: Option<String>, pub connect_timeout: Option<String>, pub drain_timeout: Option<String>, pub max_connections: Option<usize> }
pub fn load_file(_p: &std::path::Path) -> Result<Config, ConfigErrors> { todo!() }
pub fn from_flags(_f: &Flags) -> Result<Config, ConfigErrors> { todo!() }
