//! The one validation path shared by the TOML file and the CLI flags.
//!
//! Each source turns its input into a [`RawConfig`]: every value still
//! unchecked, tagged with the [`Site`] to report it at. [`validate`] checks
//! everything, loads the key material, and returns either a [`Config`] or
//! every problem found, never just the first.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::duration::{format_duration, parse_duration};
use super::{
    Backend, CipherSuite, ClientAuth, Config, ConfigError, ConfigErrors, KtlsMode, ListenerConfig,
    Location, ProxyProtocol, TlsSettings, TlsVersion,
};
use crate::tls::certs;
use crate::tls::verify::{load_crls, load_pkcs12, AllowEntry, Allowlist, Crl};

/// Whether a certificate file is a PKCS#12 bundle, by its extension.
fn is_pkcs12(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("p12") || e.eq_ignore_ascii_case("pfx"))
}

/// Defaults, shared by the file and the flags (and quoted in `docs/config.md`).
pub(crate) mod defaults {
    use std::time::Duration;

    /// Time allowed from accept to a finished handshake.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Idle time after which a connection is closed.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// Time allowed to connect to one backend.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Time open connections get to finish on shutdown.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// Concurrent connections per worker.
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// Handshakes in flight per worker.
    pub const MAX_HANDSHAKES: usize = 1024;
    /// Listen backlog.
    pub const BACKLOG: u32 = 1024;
}

/// Upper bound for every timeout: far beyond any sensible setting, and small
/// enough that adding it to an `Instant` can never overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_WORKERS: i64 = 1024;
const MAX_CONNECTIONS: i64 = 10_000_000;
const MAX_BACKLOG: i64 = 65_535;

/// Which input a [`RawConfig`] came from; decides field names and hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A TOML file: fields are dotted keys (`listener[0].cert`).
    File,
    /// Command-line flags: fields are flag names (`--cert`).
    Flags,
}

impl Source {
    /// The name to report for `key`, at top level or in listener `listener`.
    pub fn field(self, listener: Option<usize>, key: &str) -> String {
        match (self, listener) {
            (Source::File, None) => key.to_string(),
            (Source::File, Some(i)) => format!("listener[{i}].{key}"),
            // The flag is singular because it is given once per backend.
            (Source::Flags, _) if key == "backends" => "--backend".to_string(),
            (Source::Flags, _) => format!("--{}", key.replace('_', "-")),
        }
    }
}

/// Where a value is, and the field name to report it under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Site {
    /// File position or flag.
    pub location: Location,
    /// Dotted field or flag name.
    pub field: String,
}

impl Site {
    /// A problem at this site.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            location: self.location.clone(),
            field: self.field.clone(),
            message: message.into(),
        }
    }
}

/// A value with the site it came from.
#[derive(Debug, Clone)]
pub(crate) struct At<T> {
    /// The value as given.
    pub value: T,
    /// Where it was given.
    pub site: Site,
}

/// A duration as written: text, or an integer number of seconds (TOML).
#[derive(Debug, Clone)]
pub(crate) enum RawDuration {
    /// `"1m30s"`, `"10"`.
    Text(String),
    /// `10` (a TOML integer).
    Seconds(i64),
}

/// A string list; its items carry their own sites.
pub(crate) type RawList = At<Vec<At<String>>>;

/// Top-level settings, unchecked.
#[derive(Debug)]
pub(crate) struct RawConfig {
    /// Which input this is.
    pub source: Source,
    /// The config file, if any (becomes [`Config::source`]).
    pub path: Option<PathBuf>,
    /// Relative paths resolve against this (the config file's directory).
    pub base_dir: Option<PathBuf>,
    /// Where problems with the configuration as a whole are reported.
    pub origin: Location,
    /// `workers`.
    pub workers: Option<At<i64>>,
    /// `handshake_timeout`.
    pub handshake_timeout: Option<At<RawDuration>>,
    /// `idle_timeout`.
    pub idle_timeout: Option<At<RawDuration>>,
    /// `connect_timeout`.
    pub connect_timeout: Option<At<RawDuration>>,
    /// `drain_timeout`.
    pub drain_timeout: Option<At<RawDuration>>,
    /// `max_connections`.
    pub max_connections: Option<At<i64>>,
    /// `max_handshakes`.
    pub max_handshakes: Option<At<i64>>,
    /// `ktls`.
    pub ktls: Option<At<String>>,
    /// `admin`.
    pub admin: Option<At<String>>,
    /// The listeners, in order.
    pub listeners: Vec<RawListener>,
}

/// One listener, unchecked.
#[derive(Debug)]
pub(crate) struct RawListener {
    /// Where the listener starts; missing keys are reported here.
    pub location: Location,
    /// `name`.
    pub name: Option<At<String>>,
    /// `listen`.
    pub listen: Option<RawList>,
    /// `backlog`.
    pub backlog: Option<At<i64>>,
    /// `cert`, as written (not yet resolved).
    pub cert: Option<At<PathBuf>>,
    /// `key`.
    pub key: Option<At<PathBuf>>,
    /// `client_auth`.
    pub client_auth: Option<At<String>>,
    /// `client_ca`.
    pub client_ca: Option<At<PathBuf>>,
    /// `alpn`.
    pub alpn: Option<RawList>,
    /// `tls_versions`.
    pub tls_versions: Option<RawList>,
    /// `cipher_suites`.
    pub cipher_suites: Option<RawList>,
    /// `backends`.
    pub backends: Option<RawList>,
    /// `crl`.
    pub crl: Option<RawList>,
    /// `ocsp_staple`: DER OCSP response file for the server certificate.
    pub ocsp_staple: Option<At<PathBuf>>,
    /// `cert_password_file`: password of a PKCS#12 `cert`.
    pub cert_password_file: Option<At<PathBuf>>,
    /// `cert_password_env`: environment variable holding it.
    pub cert_password_env: Option<At<String>>,
    /// `allow`.
    pub allow: Option<RawList>,
    /// `proxy_protocol`.
    pub proxy_protocol: Option<At<String>>,
}

/// A loaded client CA bundle and the file it came from.
type CaBundle = (Option<PathBuf>, Vec<CertificateDer<'static>>);

/// Accumulates problems so that validation can go on after the first.
struct Checker {
    source: Source,
    base_dir: Option<PathBuf>,
    now: SystemTime,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

/// Checks a raw configuration, loads its key material and resolves its
/// backends. `now` decides which certificates count as expired.
pub(crate) fn validate(raw: RawConfig, now: SystemTime) -> Result<Config, ConfigErrors> {
    let mut c = Checker {
        source: raw.source,
        base_dir: raw.base_dir.clone(),
        now,
        errors: Vec::new(),
        warnings: Vec::new(),
    };

    let workers = match &raw.workers {
        Some(w) => c.int_in(w, 1, MAX_WORKERS).unwrap_or(1),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let handshake_timeout = c.duration(&raw.handshake_timeout, defaults::HANDSHAKE_TIMEOUT, false);
    let idle_timeout = c.duration(&raw.idle_timeout, defaults::IDLE_TIMEOUT, false);
    let connect_timeout = c.duration(&raw.connect_timeout, defaults::CONNECT_TIMEOUT, false);
    // Zero is meaningful here: close at once on shutdown.
    let drain_timeout = c.duration(&raw.drain_timeout, defaults::DRAIN_TIMEOUT, true);
    let max_connections_per_worker = match &raw.max_connections {
        Some(m) => c.int_in(m, 1, MAX_CONNECTIONS).unwrap_or(1),
        None => defaults::MAX_CONNECTIONS,
    };
    let max_handshakes_per_worker = match &raw.max_handshakes {
        Some(m) => c.int_in(m, 1, MAX_CONNECTIONS).unwrap_or(1),
        None => defaults::MAX_HANDSHAKES,
    };

    let ktls = match &raw.ktls {
        None => KtlsMode::Auto,
        Some(v) => match v.value.as_str() {
            "auto" => KtlsMode::Auto,
            "require" => KtlsMode::Require,
            "off" => KtlsMode::Off,
            other => {
                c.errors.push(v.site.error(format!(
                    "must be \"auto\", \"require\" or \"off\", not {other:?}"
                )));
                KtlsMode::Auto
            }
        },
    };

    let admin = raw
        .admin
        .as_ref()
        .and_then(|v| match v.value.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                c.errors.push(v.site.error(format!(
                    "{:?} is not IP:port (e.g. \"127.0.0.1:9901\")",
                    v.value
                )));
                None
            }
        });

    if raw.listeners.is_empty() {
        let field = match raw.source {
            Source::File => "listener",
            Source::Flags => "--listen",
        };
        let hint = match raw.source {
            Source::File => "no [[listener]] table; at least one is required",
            Source::Flags => "at least one --listen address is required",
        };
        c.errors.push(
            Site {
                location: raw.origin.clone(),
                field: field.to_string(),
            }
            .error(hint),
        );
    }

    // Names and addresses must be unique across listeners: two listeners on
    // one address would silently share it through SO_REUSEPORT.
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        if let Some(listener) = c.listener(i, l, &mut names, &mut addrs) {
            listeners.push(listener);
        }
    }

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok(Config {
        workers,
        handshake_timeout,
        idle_timeout,
        connect_timeout,
        drain_timeout,
        max_connections_per_worker,
        max_handshakes_per_worker,
        ktls,
        admin,
        listeners,
        source: raw.path,
        warnings: c.warnings,
    })
}

impl Checker {
    fn site(&self, listener: usize, key: &str, location: &Location) -> Site {
        Site {
            location: location.clone(),
            field: self.source.field(Some(listener), key),
        }
    }

    /// An integer within `min..=max`, or an error naming the range.
    fn int_in(&mut self, v: &At<i64>, min: i64, max: i64) -> Option<usize> {
        if (min..=max).contains(&v.value) {
            usize::try_from(v.value).ok()
        } else {
            self.errors.push(
                v.site
                    .error(format!("must be between {min} and {max}, not {}", v.value)),
            );
            None
        }
    }

    fn duration(
        &mut self,
        v: &Option<At<RawDuration>>,
        default: Duration,
        zero_ok: bool,
    ) -> Duration {
        let Some(v) = v else { return default };
        let parsed = match &v.value {
            RawDuration::Text(t) => parse_duration(t).map_err(|e| e.to_string()),
            RawDuration::Seconds(s) => u64::try_from(*s)
                .map(Duration::from_secs)
                .map_err(|_| format!("must not be negative, not {s}")),
        };
        match parsed {
            Err(message) => self.errors.push(v.site.error(message)),
            Ok(d) if d.is_zero() && !zero_ok => {
                self.errors.push(v.site.error("must be greater than zero"));
            }
            Ok(d) if d > MAX_TIMEOUT => self.errors.push(v.site.error(format!(
                "must be at most {} (30 days)",
                format_duration(MAX_TIMEOUT)
            ))),
            Ok(d) => return d,
        }
        default
    }

    /// Resolves a configured path against the config file's directory.
    fn path(&mut self, v: &At<PathBuf>) -> Option<PathBuf> {
        if v.value.as_os_str().is_empty() {
            self.errors.push(v.site.error("path is empty"));
            return None;
        }
        Some(match &self.base_dir {
            Some(base) if v.value.is_relative() => base.join(&v.value),
            _ => v.value.clone(),
        })
    }

    /// Warns about certificates in `certs` that are outside their validity
    /// period now; they still load, since the operator may be mid-rotation.
    fn check_validity(&mut self, site: &Site, path: &Path, certs: &[CertificateDer<'_>]) {
        for (i, cert) in certs.iter().enumerate() {
            let Ok((not_before, not_after)) = certs::validity(cert) else {
                continue;
            };
            let problem = if self.now > not_after {
                format!("expired at {}", certs::format_time(not_after))
            } else if self.now < not_before {
                format!("not valid before {}", certs::format_time(not_before))
            } else {
                continue;
            };
            self.warnings.push(site.error(format!(
                "{}: certificate #{} ({}) {problem}",
                path.display(),
                i + 1,
                certs::subject(cert)
            )));
        }
    }

    fn listener(
        &mut self,
        i: usize,
        l: &RawListener,
        names: &mut HashMap<String, usize>,
        addrs: &mut HashMap<SocketAddr, usize>,
    ) -> Option<ListenerConfig> {
        let errors_before = self.errors.len();
        let missing = |c: &Self, key: &str| c.site(i, key, &l.location);

        let name = match &l.name {
            Some(n) => {
                let ok = !n.value.is_empty()
                    && n.value
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
                if !ok {
                    self.errors.push(n.site.error(format!(
                        "{:?} is not a valid name; use letters, digits, '-', '_' or '.'",
                        n.value
                    )));
                }
                if let Some(first) = names.insert(n.value.clone(), i) {
                    self.errors.push(n.site.error(format!(
                        "name {:?} is already used by {}",
                        n.value,
                        self.source.field(Some(first), "name")
                    )));
                }
                n.value.clone()
            }
            None => format!("listener{i}"),
        };

        let listen = self.listen(i, l, addrs);
        let backlog = match &l.backlog {
            Some(b) => self
                .int_in(b, 1, MAX_BACKLOG)
                .and_then(|b| u32::try_from(b).ok())
                .unwrap_or(defaults::BACKLOG),
            None => defaults::BACKLOG,
        };
        let tls = self.tls(i, l);
        let backends = match &l.backends {
            None => {
                self.errors.push(
                    missing(self, "backends")
                        .error("missing; at least one backend (host:port) is required"),
                );
                Vec::new()
            }
            Some(list) => {
                if list.value.is_empty() {
                    self.errors.push(
                        list.site
                            .error("at least one backend (host:port) is required"),
                    );
                }
                list.value.iter().filter_map(|b| self.backend(b)).collect()
            }
        };
        let proxy_protocol = match &l.proxy_protocol {
            None => None,
            Some(v) => match v.value.as_str() {
                "v1" => Some(ProxyProtocol::V1),
                "v2" => Some(ProxyProtocol::V2),
                "off" => None,
                other => {
                    self.errors.push(
                        v.site
                            .error(format!("must be \"v1\", \"v2\" or \"off\", not {other:?}")),
                    );
                    None
                }
            },
        };

        if self.errors.len() > errors_before {
            return None;
        }
        Some(ListenerConfig {
            name,
            listen,
            backlog,
            tls: tls?,
            backends,
            proxy_protocol,
        })
    }

    fn listen(
        &mut self,
        i: usize,
        l: &RawListener,
        addrs: &mut HashMap<SocketAddr, usize>,
    ) -> Vec<SocketAddr> {
        let Some(list) = &l.listen else {
            let hint = match self.source {
                Source::File => {
                    "missing; at least one address such as \"127.0.0.1:8443\" is required"
                }
                Source::Flags => "missing; pass --listen ADDR (e.g. 127.0.0.1:8443) at least once",
            };
            self.errors
                .push(self.site(i, "listen", &l.location).error(hint));
            return Vec::new();
        };
        if list.value.is_empty() {
            self.errors
                .push(list.site.error("at least one address is required"));
        }
        let mut out = Vec::new();
        for a in &list.value {
            match a.value.trim().parse::<SocketAddr>() {
                Ok(addr) => {
                    if let Some(first) = addrs.insert(addr, i) {
                        let whom = if first == i {
                            "listed twice".to_string()
                        } else {
                            format!("already used by {}", self.source.field(Some(first), "listen"))
                        };
                        self.errors
                            .push(a.site.error(format!("address {addr} is {whom}")));
                    }
                    out.push(addr);
                }
                Err(_) => self.errors.push(a.site.error(format!(
                    "{:?} is not an IP address with a port (e.g. \"127.0.0.1:8443\" or \"[::1]:8443\")",
                    a.value
                ))),
            }
        }
        out
    }

    fn backend(&mut self, b: &At<String>) -> Option<Backend> {
        let text = b.value.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Some(Backend {
                name: text.to_string(),
                addr,
            });
        }
        let has_port = text
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !has_port {
            self.errors.push(b.site.error(format!(
                "backend {text:?} is not host:port (e.g. \"127.0.0.1:8080\" or \"app.internal:8080\")"
            )));
            return None;
        }
        match text.to_socket_addrs().map(|mut it| it.next()) {
            Ok(Some(addr)) => Some(Backend {
                name: text.to_string(),
                addr,
            }),
            Ok(None) => {
                self.errors.push(
                    b.site
                        .error(format!("backend {text:?} resolves to no address")),
                );
                None
            }
            Err(e) => {
                self.errors.push(
                    b.site
                        .error(format!("cannot resolve backend {text:?}: {e}")),
                );
                None
            }
        }
    }

    fn tls(&mut self, i: usize, l: &RawListener) -> Option<TlsSettings> {
        let errors_before = self.errors.len();
        let missing = |c: &Self, key: &str, what: &str| {
            let hint = match c.source {
                Source::File => format!("missing; {what} is required"),
                Source::Flags => format!(
                    "missing; {what} is required (pass {})",
                    c.source.field(None, key)
                ),
            };
            c.site(i, key, &l.location).error(hint)
        };

        // A PKCS#12 bundle holds the chain and the key together.
        if let Some(v) = l.cert.as_ref().filter(|v| is_pkcs12(&v.value)) {
            if let Some(k) = &l.key {
                self.errors.push(
                    k.site.error(
                        "not used: the PKCS#12 cert already holds the private key".to_string(),
                    ),
                );
            }
            let password = self.pkcs12_password(l);
            let loaded = self.path(v).and_then(|path| {
                match load_pkcs12(&path, password.as_deref().unwrap_or("")) {
                    Ok((chain, key)) => {
                        self.check_validity(&v.site, &path, &chain);
                        Some((path, chain, key))
                    }
                    Err(e) => {
                        self.errors.push(v.site.error(e.to_string()));
                        None
                    }
                }
            });
            return self.tls_rest(
                i,
                l,
                errors_before,
                loaded.map(|(p, c, k)| ((p.clone(), c), (p, k))),
            );
        }

        // Certificate chain.
        let cert = match &l.cert {
            None => {
                self.errors
                    .push(missing(self, "cert", "the server certificate chain file"));
                None
            }
            Some(v) => self
                .path(v)
                .and_then(|path| match certs::load_certs(&path) {
                    Ok(chain) => {
                        self.check_validity(&v.site, &path, &chain);
                        Some((path, chain))
                    }
                    Err(e) => {
                        self.errors.push(v.site.error(e.to_string()));
                        None
                    }
                }),
        };

        // Private key, and whether it belongs to the certificate.
        let key = match &l.key {
            None => {
                self.errors
                    .push(missing(self, "key", "the server private key file"));
                None
            }
            Some(v) => self
                .path(v)
                .and_then(|path| match certs::load_private_key(&path) {
                    Ok(key) => Some((path, key, &v.site)),
                    Err(e) => {
                        self.errors.push(v.site.error(e.to_string()));
                        None
                    }
                }),
        };
        if let (Some((cert_path, chain)), Some((key_path, key, key_site))) = (&cert, &key) {
            if let Err(e) = certs::check_key_pair(cert_path, chain, key_path, key) {
                self.errors.push(key_site.error(e.to_string()));
            }
        }
        let identity = match (cert, key) {
            (Some(cert), Some((key_path, key, _))) => Some((cert, (key_path, key))),
            _ => None,
        };
        self.tls_rest(i, l, errors_before, identity)
    }

    /// The password of a PKCS#12 `cert`: from `cert_password_file` (first
    /// line), or the variable `cert_password_env` names; none means empty.
    fn pkcs12_password(&mut self, l: &RawListener) -> Option<String> {
        if let Some(v) = &l.cert_password_file {
            let path = self.path(v)?;
            return match std::fs::read_to_string(&path) {
                Ok(text) => Some(text.lines().next().unwrap_or("").to_string()),
                Err(e) => {
                    self.errors
                        .push(v.site.error(format!("cannot read {}: {e}", path.display())));
                    None
                }
            };
        }
        if let Some(v) = &l.cert_password_env {
            return match std::env::var(&v.value) {
                Ok(password) => Some(password),
                Err(_) => {
                    self.errors.push(
                        v.site
                            .error(format!("environment variable {} is not set", v.value)),
                    );
                    None
                }
            };
        }
        None
    }

    /// Everything of a listener's TLS settings after its identity (chain
    /// and key) was loaded, or failed to load.
    #[allow(clippy::type_complexity)]
    fn tls_rest(
        &mut self,
        i: usize,
        l: &RawListener,
        errors_before: usize,
        identity: Option<(
            (PathBuf, Vec<CertificateDer<'static>>),
            (PathBuf, PrivateKeyDer<'static>),
        )>,
    ) -> Option<TlsSettings> {
        // `None` when the mode is invalid: whether a CA is needed is then
        // unknown, so only a given CA file is checked.
        let client_auth = match &l.client_auth {
            None => Some(ClientAuth::Required),
            Some(v) => match v.value.as_str() {
                "required" => Some(ClientAuth::Required),
                "optional" => Some(ClientAuth::Optional),
                "off" => Some(ClientAuth::Off),
                other => {
                    self.errors.push(v.site.error(format!(
                        "must be \"required\", \"optional\" or \"off\", not {other:?}"
                    )));
                    None
                }
            },
        };
        let client_ca = match client_auth {
            Some(auth) => self.client_ca(i, l, auth),
            None if l.client_ca.is_some() => self.client_ca(i, l, ClientAuth::Required),
            None => None,
        };
        let alpn = self.alpn(l);
        let (crl_paths, crls) = self.crls(l);
        let ocsp_staple = self.ocsp_staple(l);
        let allowlist = self.allowlist(l);
        let versions = self.versions(l);
        let cipher_suites = self.cipher_suites(l);

        if self.errors.len() > errors_before {
            return None;
        }
        let ((cert_path, cert_chain), (key_path, key)) = identity?;
        let (client_ca_path, client_ca) = client_ca?;
        Some(TlsSettings {
            cert_chain,
            key: Arc::new(key),
            client_auth: client_auth?,
            client_ca,
            alpn,
            versions,
            cipher_suites,
            cert_path,
            key_path,
            client_ca_path,
            ocsp_staple,
            crls,
            crl_paths,
            allowlist,
        })
    }

    /// The OCSP response to staple: read as is (DER), since the operator
    /// refreshes the file and reloads; an empty file staples nothing.
    fn ocsp_staple(&mut self, l: &RawListener) -> Option<Vec<u8>> {
        let v = l.ocsp_staple.as_ref()?;
        let path = self.path(v)?;
        match std::fs::read(&path) {
            Ok(der) if der.is_empty() => None,
            // An OCSPResponse is a DER SEQUENCE; anything else (PEM, text)
            // would be stapled as garbage and break strict clients.
            Ok(der) if der[0] == 0x30 => Some(der),
            Ok(_) => {
                self.errors.push(v.site.error(format!(
                    "{} is not a DER OCSP response (openssl ocsp -respout writes one)",
                    path.display()
                )));
                None
            }
            Err(e) => {
                self.errors
                    .push(v.site.error(format!("cannot read {}: {e}", path.display())));
                None
            }
        }
    }

    /// CRL files, each loaded (and checked) now.
    fn crls(&mut self, l: &RawListener) -> (Vec<PathBuf>, Vec<Crl>) {
        let (mut paths, mut crls) = (Vec::new(), Vec::new());
        for item in l.crl.iter().flat_map(|list| &list.value) {
            let path_at = At {
                value: PathBuf::from(&item.value),
                site: item.site.clone(),
            };
            let Some(path) = self.path(&path_at) else {
                continue;
            };
            match load_crls(&path) {
                Ok(loaded) => {
                    crls.extend(loaded);
                    paths.push(path);
                }
                Err(e) => self.errors.push(item.site.error(e.to_string())),
            }
        }
        (paths, crls)
    }

    /// Allowlist rules: `alias:NAME=CERT_FILE`, `sha256:HEX`, `cn:GLOB`,
    /// `dns:GLOB`, `uri:GLOB`, `spiffe://...` (a SPIFFE ID glob).
    fn allowlist(&mut self, l: &RawListener) -> Allowlist {
        let mut entries: Vec<AllowEntry> = Vec::new();
        for item in l.allow.iter().flat_map(|list| &list.value) {
            let rule = item.value.as_str();
            let entry = match rule.split_once(':') {
                Some(("alias", rest)) => match rest.split_once('=') {
                    Some((name, file)) => {
                        let file_at = At {
                            value: PathBuf::from(file),
                            site: item.site.clone(),
                        };
                        let Some(path) = self.path(&file_at) else { continue };
                        certs::load_certs(&path)
                            .map_err(|e| e.to_string())
                            .and_then(|chain| {
                                AllowEntry::alias(name, &chain[0]).map_err(|e| e.to_string())
                            })
                    }
                    None => Err("an alias rule is alias:NAME=CERT_FILE".to_string()),
                },
                Some(("sha256", hex)) => AllowEntry::fingerprint(hex).map_err(|e| e.to_string()),
                Some(("cn", glob)) => AllowEntry::subject_cn(glob).map_err(|e| e.to_string()),
                Some(("dns", glob)) => AllowEntry::dns_san(glob).map_err(|e| e.to_string()),
                Some(("uri", glob)) => AllowEntry::uri_san(glob).map_err(|e| e.to_string()),
                Some(("spiffe", _)) => AllowEntry::spiffe_id(rule).map_err(|e| e.to_string()),
                _ => Err(format!(
                    "unknown rule {rule:?}; use alias:NAME=CERT_FILE, sha256:HEX, cn:GLOB, dns:GLOB, uri:GLOB or spiffe://ID"
                )),
            };
            match entry {
                Ok(e) if entries.contains(&e) => self
                    .errors
                    .push(item.site.error(format!("{rule:?} is listed twice"))),
                Ok(e) => entries.push(e),
                Err(m) => self.errors.push(item.site.error(m)),
            }
        }
        Allowlist::new(entries)
    }

    /// The client CA bundle and its path; `(None, [])` when not needed,
    /// `None` after reporting a problem.
    fn client_ca(&mut self, i: usize, l: &RawListener, auth: ClientAuth) -> Option<CaBundle> {
        match (&l.client_ca, auth) {
            (Some(v), ClientAuth::Off) => {
                self.warnings.push(v.site.error(match self.source {
                    Source::File => "ignored because client_auth = \"off\"",
                    Source::Flags => "ignored because --client-auth is off",
                }));
                Some((None, Vec::new()))
            }
            (None, ClientAuth::Off) => Some((None, Vec::new())),
            (None, _) => {
                let mode = if auth == ClientAuth::Required {
                    "required"
                } else {
                    "optional"
                };
                let (message, location) = match self.source {
                    Source::File => (
                        format!(
                            "missing; client_auth = \"{mode}\"{} needs the CA bundle that signs client certificates; set client_ca, or set client_auth = \"off\"",
                            if l.client_auth.is_none() { " (the default)" } else { "" }
                        ),
                        // Point at client_auth when it was written, else at the listener.
                        l.client_auth
                            .as_ref()
                            .map_or(l.location.clone(), |a| a.site.location.clone()),
                    ),
                    Source::Flags => (
                        format!(
                            "missing; client certificates are {mode}{} and need a CA bundle; pass --client-ca FILE, or --client-auth off",
                            if l.client_auth.is_none() { " by default" } else { "" }
                        ),
                        Location::Flag,
                    ),
                };
                self.errors
                    .push(self.site(i, "client_ca", &location).error(message));
                None
            }
            (Some(v), _) => {
                let path = self.path(v)?;
                match certs::load_client_ca(&path) {
                    Ok(ca) => {
                        self.check_validity(&v.site, &path, &ca);
                        Some((Some(path), ca))
                    }
                    Err(e) => {
                        self.errors.push(v.site.error(e.to_string()));
                        None
                    }
                }
            }
        }
    }

    /// Parses each item of an optional list with `parse`, refusing
    /// duplicates and (when given) an empty list.
    fn list<T: PartialEq>(
        &mut self,
        list: &Option<RawList>,
        empty_message: Option<&str>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let list = list.as_ref()?;
        if list.value.is_empty() {
            if let Some(m) = empty_message {
                self.errors.push(list.site.error(m));
            }
        }
        let mut out = Vec::new();
        for item in &list.value {
            match parse(&item.value) {
                Ok(v) if out.contains(&v) => self
                    .errors
                    .push(item.site.error(format!("{:?} is listed twice", item.value))),
                Ok(v) => out.push(v),
                Err(m) => self.errors.push(item.site.error(m)),
            }
        }
        Some(out)
    }

    fn alpn(&mut self, l: &RawListener) -> Vec<Vec<u8>> {
        self.list(&l.alpn, None, |p| {
            if p.is_empty() || p.len() > 255 {
                Err(format!("ALPN protocol {p:?} must be 1 to 255 bytes long"))
            } else {
                Ok(p.as_bytes().to_vec())
            }
        })
        .unwrap_or_default()
    }

    fn versions(&mut self, l: &RawListener) -> Vec<TlsVersion> {
        self.list(
            &l.tls_versions,
            Some("at least one TLS version is required"),
            |v| match v {
                "1.2" => Ok(TlsVersion::Tls12),
                "1.3" => Ok(TlsVersion::Tls13),
                other => Err(format!(
                    "unknown TLS version {other:?}; use \"1.2\" or \"1.3\""
                )),
            },
        )
        .unwrap_or_else(|| vec![TlsVersion::Tls12, TlsVersion::Tls13])
    }

    fn cipher_suites(&mut self, l: &RawListener) -> Vec<CipherSuite> {
        self.list(
            &l.cipher_suites,
            Some("at least one cipher suite is required"),
            |s| match s.to_ascii_uppercase().as_str() {
                "AES_128_GCM" => Ok(CipherSuite::Aes128Gcm),
                "AES_256_GCM" => Ok(CipherSuite::Aes256Gcm),
                "CHACHA20_POLY1305" => Ok(CipherSuite::Chacha20Poly1305),
                _ => Err(format!(
                    "unknown cipher suite {s:?}; use \"AES_128_GCM\", \"AES_256_GCM\" or \"CHACHA20_POLY1305\""
                )),
            },
        )
        .unwrap_or_else(|| {
            vec![
                CipherSuite::Aes128Gcm,
                CipherSuite::Aes256Gcm,
                CipherSuite::Chacha20Poly1305,
            ]
        })
    }
}
