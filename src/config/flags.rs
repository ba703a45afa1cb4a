//! The drop-in command-line flags, translated into a [`RawConfig`] so they
//! are validated exactly like a config file with one listener.

use std::path::PathBuf;

use super::validate::{
    At, RawBackendTls, RawCertHeader, RawConfig, RawDuration, RawList, RawListener, RawOcsp,
    RawSize, RawTls, Scope, Site, Source,
};
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
    /// `--ktls-offload-after-bytes SIZE` (`ktls_offload.after_bytes`).
    pub ktls_offload_after_bytes: Option<String>,
    /// `--ktls-offload-after DURATION` (`ktls_offload.after`).
    pub ktls_offload_after: Option<String>,
    /// `--admin ADDR`.
    pub admin: Option<String>,
    /// `--proxy-protocol v1|v2|off`.
    pub proxy_protocol: Option<String>,
    /// `--proxy-protocol-cert-tlv sha256[:TYPE]|der[:TYPE]|off`.
    pub proxy_protocol_cert_tlv: Option<String>,
    /// `--client-cert-header rfc9440|xfcc|escaped-pem`: HTTP header mode.
    pub client_cert_header: Option<String>,
    /// `--client-cert-header-name NAME` (needs `--client-cert-header`).
    pub client_cert_header_name: Option<String>,
    /// `--access-log text|json`.
    pub access_log: Option<String>,
    /// `--ticket-keys FILE`.
    pub ticket_keys: Option<PathBuf>,
    /// `--client-ocsp check|off` (`client_ocsp.mode`).
    pub client_ocsp: Option<String>,
    /// `--client-ocsp-responder URL`.
    pub client_ocsp_responder: Option<String>,
    /// `--client-ocsp-timeout DURATION`.
    pub client_ocsp_timeout: Option<String>,
    /// `--client-ocsp-fail closed|open`.
    pub client_ocsp_fail: Option<String>,
    /// `--client-ocsp-cache-ttl DURATION`.
    pub client_ocsp_cache_ttl: Option<String>,
    /// `--backend-tls-ca FILE`: TLS to every backend, trusting this CA.
    pub backend_tls_ca: Option<PathBuf>,
    /// `--backend-tls-cert FILE`: client certificate for the backends.
    pub backend_tls_cert: Option<PathBuf>,
    /// `--backend-tls-key FILE`: its private key.
    pub backend_tls_key: Option<PathBuf>,
    /// `--backend-tls-name NAME`: SNI and verified name for the backends.
    pub backend_tls_name: Option<String>,
    /// `--backend-tls-no-session-reuse`: a full handshake per backend connection.
    pub backend_tls_no_session_reuse: bool,
}

fn at<T>(key: &str, value: T) -> At<T> {
    At {
        value,
        site: Site {
            location: Location::Flag,
            field: Source::Flags.field(Scope::Top, key),
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
    /// The `--backend-tls-*` flags as a `backend_tls` table, when any is given.
    fn backend_tls(&self) -> Option<RawBackendTls> {
        let given = self.backend_tls_ca.is_some()
            || self.backend_tls_cert.is_some()
            || self.backend_tls_key.is_some()
            || self.backend_tls_name.is_some()
            || self.backend_tls_no_session_reuse;
        given.then(|| RawBackendTls {
            site: at("backend_tls_ca", ()).site,
            ca: path("backend_tls_ca", &self.backend_tls_ca),
            cert: path("backend_tls_cert", &self.backend_tls_cert),
            key: path("backend_tls_key", &self.backend_tls_key),
            cert_password_file: None,
            cert_password_env: None,
            server_name: self
                .backend_tls_name
                .as_ref()
                .map(|v| at("backend_tls_name", v.clone())),
            verify: None,
            alpn: None,
            session_reuse: self
                .backend_tls_no_session_reuse
                .then(|| at("backend_tls_no_session_reuse", false)),
        })
    }

    /// The header-mode flags as the listener's `client_cert_header` table;
    /// a name alone still turns the mode on (with the default format).
    fn cert_header(&self) -> Option<RawCertHeader> {
        if self.client_cert_header.is_none() && self.client_cert_header_name.is_none() {
            return None;
        }
        let format = self.client_cert_header.as_ref();
        Some(RawCertHeader {
            site: at("client_cert_header", ()).site,
            format: format.map(|v| at("client_cert_header", v.clone())),
            name: self
                .client_cert_header_name
                .as_ref()
                .map(|v| at("client_cert_header_name", v.clone())),
            max_head: None,
        })
    }

    /// The `--client-ocsp*` flags as a `client_ocsp` table, when any is given.
    fn client_ocsp(&self) -> Option<RawOcsp> {
        let text = |key: &str, v: &Option<String>| v.as_ref().map(|v| at(key, v.clone()));
        let raw = RawOcsp {
            site: at("client_ocsp", ()).site,
            mode: text("client_ocsp", &self.client_ocsp),
            responder: text("client_ocsp_responder", &self.client_ocsp_responder),
            timeout: duration("client_ocsp_timeout", &self.client_ocsp_timeout),
            fail: text("client_ocsp_fail", &self.client_ocsp_fail),
            cache_ttl: duration("client_ocsp_cache_ttl", &self.client_ocsp_cache_ttl),
        };
        let any = raw.mode.is_some()
            || raw.responder.is_some()
            || raw.timeout.is_some()
            || raw.fail.is_some()
            || raw.cache_ttl.is_some();
        any.then_some(raw)
    }

    /// The flags as an unchecked configuration with one listener.
    pub(crate) fn to_raw(&self) -> RawConfig {
        let listener = RawListener {
            location: Location::Flag,
            name: None,
            listen: list("listen", &self.listen),
            backlog: None,
            tls: RawTls {
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
                ocsp_staple: path("ocsp_staple", &self.ocsp_staple),
                cert_password_file: path("cert_password_file", &self.cert_password_file),
                cert_password_env: self
                    .cert_password_env
                    .as_ref()
                    .map(|v| at("cert_password_env", v.clone())),
                tls_versions: None,
                cipher_suites: None,
                client_ocsp: self.client_ocsp(),
                clients: Vec::new(),
            },
            proxy_protocol: self
                .proxy_protocol
                .as_ref()
                .map(|v| at("proxy_protocol", v.clone())),
            client_cert_header: self.cert_header(),
            proxy_protocol_cert_tlv: self
                .proxy_protocol_cert_tlv
                .as_ref()
                .map(|v| at("proxy_protocol_cert_tlv", v.clone())),
            backends: list("backends", &self.backends),
            pool: None,
            backend_tls: self.backend_tls(),
            routes: Vec::new(),
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
            access_log_format: self
                .access_log
                .as_ref()
                .map(|v| at("access_log", v.clone())),
            ticket_keys: self
                .ticket_keys
                .as_ref()
                .map(|v| at("ticket_keys", v.clone())),
            ticket_lifetime: None,
            ktls_offload_after_bytes: self
                .ktls_offload_after_bytes
                .as_ref()
                .map(|v| at("ktls_offload_after_bytes", RawSize::Text(v.clone()))),
            ktls_offload_after: duration("ktls_offload_after", &self.ktls_offload_after),
            listeners: vec![listener],
            pools: Vec::new(),
            // Tiers are tables of rules and limits: config file only.
            default_tier: None,
            tiers: Vec::new(),
        }
    }
}
