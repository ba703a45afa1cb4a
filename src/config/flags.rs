//! The drop-in command-line flags, translated into a [`RawConfig`] so they
//! are validated exactly like a config file with one listener.

use std::path::PathBuf;

use super::validate::{At, RawConfig, RawDuration, RawList, RawListener, Site, Source};
use super::Location;

/// The drop-in flags, filled by the CLI (clap lives in `main.rs`, not here).
///
/// They describe one listener; each field mirrors the config key of the
/// same name (`--backend` is given once per backend, `--listen` and
/// `--alpn` may repeat). Unset fields take the config file defaults.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--listen ADDR`, at least once.
    pub listen: Vec<String>,
    /// `--cert FILE`: server certificate chain.
    pub cert: Option<PathBuf>,
    /// `--key FILE`: server private key.
    pub key: Option<PathBuf>,
    /// `--client-ca FILE`: CA bundle for client certificates.
    pub client_ca: Option<PathBuf>,
    /// `--client-auth required|optional|off` (default `required`).
    pub client_auth: Option<String>,
    /// `--backend HOST:PORT`, at least once.
    pub backends: Vec<String>,
    /// `--workers N`.
    pub workers: Option<usize>,
    /// `--alpn PROTO`, repeatable.
    pub alpn: Vec<String>,
    /// `--crl FILE`, repeatable.
    pub crl: Vec<PathBuf>,
    /// `--allow RULE`, repeatable.
    pub allow: Vec<String>,
    /// `--ocsp-staple FILE`.
    pub ocsp_staple: Option<PathBuf>,
    /// `--cert-password-file FILE`, for a PKCS#12 `--cert`.
    pub cert_password_file: Option<PathBuf>,
    /// `--cert-password-env VAR`.
    pub cert_password_env: Option<String>,
    /// `--handshake-timeout DURATION`.
    pub handshake_timeout: Option<String>,
    /// `--idle-timeout DURATION`.
    pub idle_timeout: Option<String>,
    /// `--connect-timeout DURATION`.
    pub connect_timeout: Option<String>,
    /// `--drain-timeout DURATION`.
    pub drain_timeout: Option<String>,
    /// `--max-connections N` (per worker).
    pub max_connections: Option<usize>,
    /// `--max-handshakes N` (in flight, per worker).
    pub max_handshakes: Option<usize>,
    /// `--ktls auto|require|off`.
    pub ktls: Option<String>,
    /// `--admin ADDR`.
    pub admin: Option<String>,
    /// `--proxy-protocol v1|v2|off`.
    pub proxy_protocol: Option<String>,
}

fn at<T>(key: &str, value: T) -> At<T> {
    At {
        value,
        site: Site {
            location: Location::Flag,
            field: Source::Flags.field(None, key),
        },
    }
}

/// A repeatable flag; an empty one counts as not given.
fn list(key: &str, values: &[String]) -> Option<RawList> {
    (!values.is_empty()).then(|| at(key, values.iter().map(|v| at(key, v.clone())).collect()))
}

/// Paths from flags are used as given (relative to the working directory).
fn path(key: &str, p: &Option<PathBuf>) -> Option<At<PathBuf>> {
    p.as_ref().map(|p| at(key, p.clone()))
}

fn count(key: &str, n: Option<usize>) -> Option<At<i64>> {
    n.map(|n| at(key, i64::try_from(n).unwrap_or(i64::MAX)))
}

fn duration(key: &str, d: &Option<String>) -> Option<At<RawDuration>> {
    d.as_ref().map(|d| at(key, RawDuration::Text(d.clone())))
}

impl Flags {
    /// The flags as an unchecked configuration with one listener.
    pub(crate) fn to_raw(&self) -> RawConfig {
        let listener = RawListener {
            location: Location::Flag,
            name: None,
            listen: list("listen", &self.listen),
            backlog: None,
            cert: path("cert", &self.cert),
            key: path("key", &self.key),
            client_auth: self
                .client_auth
                .as_ref()
                .map(|v| at("client_auth", v.clone())),
            client_ca: path("client_ca", &self.client_ca),
            alpn: list("alpn", &self.alpn),
            crl: list(
                "crl",
                &self
                    .crl
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>(),
            ),
            allow: list("allow", &self.allow),
            proxy_protocol: self
                .proxy_protocol
                .as_ref()
                .map(|v| at("proxy_protocol", v.clone())),
            ocsp_staple: path("ocsp_staple", &self.ocsp_staple),
            cert_password_file: path("cert_password_file", &self.cert_password_file),
            cert_password_env: self
                .cert_password_env
                .as_ref()
                .map(|v| at("cert_password_env", v.clone())),
            tls_versions: None,
            cipher_suites: None,
            backends: list("backends", &self.backends),
        };
        RawConfig {
            source: Source::Flags,
            path: None,
            base_dir: None,
            origin: Location::Flag,
            workers: count("workers", self.workers),
            handshake_timeout: duration("handshake_timeout", &self.handshake_timeout),
            idle_timeout: duration("idle_timeout", &self.idle_timeout),
            connect_timeout: duration("connect_timeout", &self.connect_timeout),
            drain_timeout: duration("drain_timeout", &self.drain_timeout),
            max_connections: count("max_connections", self.max_connections),
            max_handshakes: count("max_handshakes", self.max_handshakes),
            ktls: self.ktls.as_ref().map(|v| at("ktls", v.clone())),
            admin: self.admin.as_ref().map(|v| at("admin", v.clone())),
            listeners: vec![listener],
        }
    }
}
