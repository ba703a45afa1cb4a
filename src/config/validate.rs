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
    Backend, BackendTls, Balance, CipherSuite, ClientAuth, ClientIdentity, Config, ConfigError,
    ConfigErrors, HealthCheck, KtlsMode, ListenerConfig, Location, PoolBackend, PoolConfig,
    ProxyProtocol, RouteConfig, TicketKeyFile, TicketSettings, TlsSettings, TlsVersion,
    DEFAULT_ROUTE,
};
use crate::admit::{ConnectionRate, Limits, Tier, Tiers};
use crate::close::AccessLogFormat;
use crate::connect::cert_header::{CertHeader, Format as CertHeaderFormat};
use crate::connect::proxy_protocol::{CertTlv, CertTlvContent, CUSTOM_TLVS, TLV_CLIENT_IDENTITY};
use crate::ktls::policy::OffloadPolicy;
use crate::relay::http_head::{is_token_byte, DEFAULT_MAX_HEAD};
use crate::tls::certs;
use crate::tls::route::ServerNamePattern;
use crate::tls::tickets::parse_key_file;
use crate::tls::verify::{
    load_crls, load_pkcs12, load_pkcs12_certificate, AllowEntry, Allowlist, Crl, OcspSettings,
    ResponderUrl,
};

/// Whether a certificate file is a PKCS#12 bundle, by its extension.
fn is_pkcs12(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("p12") || e.eq_ignore_ascii_case("pfx"))
}

/// The one client certificate in a file named by an alias: PEM or DER (the
/// first certificate), or PKCS#12 (the key's certificate, or the only one).
fn client_certificate(path: &Path, password: &str) -> Result<CertificateDer<'static>, String> {
    if is_pkcs12(path) {
        return load_pkcs12_certificate(path, password).map_err(|e| e.to_string());
    }
    let mut chain = certs::load_certs(path).map_err(|e| e.to_string())?;
    Ok(chain.swap_remove(0))
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
    /// How long clients are told to keep a session ticket.
    pub const TICKET_LIFETIME: Duration = Duration::from_secs(3600);
    /// Time between health checks of one backend.
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
    /// Longest health-check connect.
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    /// Successes that make a backend healthy again.
    pub const HEALTH_RISE: u32 = 2;
    /// Failures that make a backend unhealthy.
    pub const HEALTH_FALL: u32 = 3;
    /// Consecutive connect failures that eject a backend of a `[[pool]]`.
    pub const EJECT_AFTER: u32 = 3;
    /// How long an ejected backend is left out.
    pub const EJECT_FOR: Duration = Duration::from_secs(10);
}

/// TLS 1.3 caps a ticket's lifetime at seven days (RFC 8446, 4.6.1).
const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest OCSP query: the worker running it waits this long at most.
const MAX_OCSP_TIMEOUT: Duration = Duration::from_secs(30);

/// Upper bound for every timeout: far beyond any sensible setting, and small
/// enough that adding it to an `Instant` can never overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_WORKERS: i64 = 1024;
const MAX_CONNECTIONS: i64 = 10_000_000;
const MAX_BACKLOG: i64 = 65_535;
/// Highest tier connection rate and burst: past any single client's need.
const MAX_TIER_RATE: i64 = 1_000_000;
/// Highest tier byte rate: 1 TiB/s, i.e. unlimited in practice.
const MAX_TIER_BYTES: i64 = 1 << 40;
/// The tier that is the default when `default_tier` is not set.
const DEFAULT_TIER_NAME: &str = "default";
/// Bounds of `client_cert_header.max_head`: room for our own header, and
/// no more memory per connection than a few records.
const MIN_HEAD: i64 = 4 * 1024;
const MAX_HEAD: i64 = 1024 * 1024;
const MAX_WEIGHT: i64 = 1000;

/// Which input a [`RawConfig`] came from; decides field names and hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A TOML file: fields are dotted keys (`listener[0].cert`).
    File,
    /// Command-line flags: fields are flag names (`--cert`).
    Flags,
}

/// The table a key belongs to, for naming it in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The top level.
    Top,
    /// `listener[i]`.
    Listener(usize),
    /// `listener[i].route[j]`.
    Route(usize, usize),
    /// `pool[i]`.
    Pool(usize),
}

impl Source {
    /// The name to report for `key` inside `scope`.
    pub fn field(self, scope: Scope, key: &str) -> String {
        match (self, scope) {
            (Source::File, Scope::Top) => key.to_string(),
            (Source::File, Scope::Listener(i)) => format!("listener[{i}].{key}"),
            (Source::File, Scope::Route(i, j)) => format!("listener[{i}].route[{j}].{key}"),
            (Source::File, Scope::Pool(i)) => format!("pool[{i}].{key}"),
            // The flag is singular because it is given once per backend.
            (Source::Flags, _) if key == "backends" => "--backend".to_string(),
            (Source::Flags, _) => format!("--{}", key.replace(['_', '.'], "-")),
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

/// A byte count as written: `"64KiB"`, `"1MiB"`, `"65536"`, or a TOML
/// integer.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    /// A TOML integer.
    Bytes(i64),
    /// A number with an optional `KiB`, `MiB` or `GiB` suffix.
    Text(String),
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
    /// `access_log.format`.
    pub access_log_format: Option<At<String>>,
    /// `ticket_keys`.
    pub ticket_keys: Option<At<PathBuf>>,
    /// `ticket_lifetime`.
    pub ticket_lifetime: Option<At<RawDuration>>,
    /// `ktls_offload.after_bytes`.
    pub ktls_offload_after_bytes: Option<At<RawSize>>,
    /// `ktls_offload.after`.
    pub ktls_offload_after: Option<At<RawDuration>>,
    /// The listeners, in order.
    pub listeners: Vec<RawListener>,
    /// The `[[pool]]` tables, in order.
    pub pools: Vec<RawPool>,
    /// `default_tier`.
    pub default_tier: Option<At<String>>,
    /// The `[[tier]]` tables, in order.
    pub tiers: Vec<RawTier>,
}

/// One throttling tier, unchecked.
#[derive(Debug)]
pub(crate) struct RawTier {
    /// Where the tier starts; a missing name is reported here.
    pub location: Location,
    /// The table's field (`tier[0]`).
    pub field: String,
    /// `name`.
    pub name: Option<At<String>>,
    /// `clients`: allowlist-syntax rules.
    pub clients: Option<RawList>,
    /// `new_connections_per_second`.
    pub new_connections_per_second: Option<At<i64>>,
    /// `burst`.
    pub burst: Option<At<i64>>,
    /// `max_connections`.
    pub max_connections: Option<At<i64>>,
    /// `bytes_per_second`.
    pub bytes_per_second: Option<At<i64>>,
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
    /// The listener's own TLS settings: its default route.
    pub tls: RawTls,
    /// `backends` of the default route.
    pub backends: Option<RawList>,
    /// `pool` of the default route.
    pub pool: Option<At<String>>,
    /// `backend_tls` of the default route's `backends`.
    pub backend_tls: Option<RawBackendTls>,
    /// `proxy_protocol`.
    pub proxy_protocol: Option<At<String>>,
    /// `client_cert_header`.
    pub client_cert_header: Option<RawCertHeader>,
    /// `proxy_protocol_cert_tlv`: `CONTENT[:TYPE]` or `off`.
    pub proxy_protocol_cert_tlv: Option<At<String>>,
    /// `[[listener.route]]` tables, in order.
    pub routes: Vec<RawRoute>,
}

/// The TLS keys shared by a listener and its routes, unchecked.
#[derive(Debug, Default)]
pub(crate) struct RawTls {
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
    /// `client_ocsp`.
    pub client_ocsp: Option<RawOcsp>,
    /// `[[listener.clients]]`: named client certificates.
    pub clients: Vec<RawClient>,
}

/// The `client_ocsp` settings, unchecked.
#[derive(Debug)]
pub(crate) struct RawOcsp {
    /// The table (or the flags), for problems with the settings as a whole.
    pub site: Site,
    /// `mode`: "check" or "off"; "check" when omitted.
    pub mode: Option<At<String>>,
    /// `responder`: URL overriding the certificate's AIA URL.
    pub responder: Option<At<String>>,
    /// `timeout`.
    pub timeout: Option<At<RawDuration>>,
    /// `fail`: "closed" or "open".
    pub fail: Option<At<String>>,
    /// `cache_ttl`.
    pub cache_ttl: Option<At<RawDuration>>,
}

/// One `[[listener.clients]]` table, unchecked.
#[derive(Debug)]
pub(crate) struct RawClient {
    /// The table, for missing keys.
    pub site: Site,
    /// `alias`.
    pub alias: Option<At<String>>,
    /// `cert`: PEM, DER or PKCS#12 file.
    pub cert: Option<At<PathBuf>>,
    /// `password_file`: password of a PKCS#12 `cert`.
    pub password_file: Option<At<PathBuf>>,
    /// `password_env`: environment variable holding it.
    pub password_env: Option<At<String>>,
}

impl RawTls {
    /// The sites of the keys given.
    fn given(&self) -> Vec<&Site> {
        let paths = [
            &self.cert,
            &self.key,
            &self.client_ca,
            &self.ocsp_staple,
            &self.cert_password_file,
        ];
        let lists = [
            &self.alpn,
            &self.tls_versions,
            &self.cipher_suites,
            &self.crl,
            &self.allow,
        ];
        let texts = [&self.client_auth, &self.cert_password_env];
        paths
            .into_iter()
            .flatten()
            .map(|v| &v.site)
            .chain(lists.into_iter().flatten().map(|v| &v.site))
            .chain(texts.into_iter().flatten().map(|v| &v.site))
            .chain(self.client_ocsp.iter().map(|o| &o.site))
            .chain(self.clients.iter().map(|c| &c.site))
            .collect()
    }
}

/// One `[[listener.route]]`, unchecked.
#[derive(Debug)]
pub(crate) struct RawRoute {
    /// Where the route starts; missing keys are reported here.
    pub location: Location,
    /// `name`.
    pub name: Option<At<String>>,
    /// `server_names`.
    pub server_names: Option<RawList>,
    /// The route's TLS settings (`alpn` also selects the route).
    pub tls: RawTls,
    /// `backends`.
    pub backends: Option<RawList>,
    /// `pool`.
    pub pool: Option<At<String>>,
    /// `backend_tls` of `backends`.
    pub backend_tls: Option<RawBackendTls>,
}

/// One `[[pool]]`, unchecked.
#[derive(Debug)]
pub(crate) struct RawPool {
    /// Where the pool starts; missing keys are reported here.
    pub location: Location,
    /// `name`.
    pub name: Option<At<String>>,
    /// `balance`.
    pub balance: Option<At<String>>,
    /// `backends`: strings or tables.
    pub backends: Option<At<Vec<RawPoolBackend>>>,
    /// `health_check`.
    pub health_check: Option<RawHealthCheck>,
    /// `eject_after`.
    pub eject_after: Option<At<i64>>,
    /// `eject_for`.
    pub eject_for: Option<At<RawDuration>>,
    /// `backend_tls`.
    pub backend_tls: Option<RawBackendTls>,
}

/// A `backend_tls` table (or the `--backend-tls-*` flags), unchecked. It
/// is validated on its own, so any table holding one can reuse it.
#[derive(Debug)]
pub(crate) struct RawBackendTls {
    /// Where the table is; missing keys are reported here.
    pub site: Site,
    /// `ca`: trust anchors for the backends' certificates.
    pub ca: Option<At<PathBuf>>,
    /// `cert`: client certificate chain (PEM), or a PKCS#12 bundle.
    pub cert: Option<At<PathBuf>>,
    /// `key`: the client certificate's private key.
    pub key: Option<At<PathBuf>>,
    /// `cert_password_file`: password of a PKCS#12 `cert`.
    pub cert_password_file: Option<At<PathBuf>>,
    /// `cert_password_env`: environment variable holding it.
    pub cert_password_env: Option<At<String>>,
    /// `server_name`: SNI and the name verified in the backend's certificate.
    pub server_name: Option<At<String>>,
    /// `verify`: whether the backend's certificate is verified.
    pub verify: Option<At<bool>>,
    /// `alpn`: protocols offered to backends instead of the client's.
    pub alpn: Option<RawList>,
    /// `session_reuse`: whether sessions with backends are resumed.
    pub session_reuse: Option<At<bool>>,
}

/// The fields naming a certificate chain and its key, in whichever table.
struct RawIdentity<'a> {
    cert: Option<&'a At<PathBuf>>,
    key: Option<&'a At<PathBuf>>,
    password_file: &'a Option<At<PathBuf>>,
    password_env: &'a Option<At<String>>,
}

/// A loaded chain and key, each with the file it came from.
type Identity = (
    (PathBuf, Vec<CertificateDer<'static>>),
    (PathBuf, PrivateKeyDer<'static>),
);

/// One entry of a pool's `backends`.
#[derive(Debug)]
pub(crate) struct RawPoolBackend {
    /// Where the entry is; a missing address is reported here.
    pub location: Location,
    /// `address` (or the entry itself when it is a string).
    pub address: Option<At<String>>,
    /// `weight`.
    pub weight: Option<At<i64>>,
    /// `max_connections`.
    pub max_connections: Option<At<i64>>,
}

/// A pool's `health_check` table, unchecked.
#[derive(Debug)]
pub(crate) struct RawHealthCheck {
    /// `interval`.
    pub interval: Option<At<RawDuration>>,
    /// `timeout`.
    pub timeout: Option<At<RawDuration>>,
    /// `rise`.
    pub rise: Option<At<i64>>,
    /// `fall`.
    pub fall: Option<At<i64>>,
}

/// A listener's `client_cert_header` table (or its flags), unchecked.
#[derive(Debug)]
pub(crate) struct RawCertHeader {
    /// Where the table is; problems with it as a whole are reported here.
    pub site: Site,
    /// `format`.
    pub format: Option<At<String>>,
    /// `name`.
    pub name: Option<At<String>>,
    /// `max_head`.
    pub max_head: Option<At<i64>>,
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

    let ktls_offload = OffloadPolicy {
        after_bytes: raw
            .ktls_offload_after_bytes
            .as_ref()
            .map_or(0, |v| c.size(v)),
        after: c.duration(&raw.ktls_offload_after, Duration::ZERO, true),
    };
    if let (Some(v), false) = (&raw.ktls, ktls_offload.at_once()) {
        if ktls == KtlsMode::Off {
            c.warnings.push(
                v.site
                    .error("ktls = \"off\": the ktls_offload thresholds have no effect"),
            );
        }
    }

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

    let access_log = match &raw.access_log_format {
        None => AccessLogFormat::Text,
        Some(v) => match v.value.as_str() {
            "text" => AccessLogFormat::Text,
            "json" => AccessLogFormat::Json,
            other => {
                c.errors.push(
                    v.site
                        .error(format!("must be \"text\" or \"json\", not {other:?}")),
                );
                AccessLogFormat::Text
            }
        },
    };
    let tickets = c.tickets(&raw);

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

    // Pools first: routes refer to them by name.
    let mut pool_names = HashMap::new();
    let mut pools: Vec<PoolConfig> = Vec::new();
    for (i, p) in raw.pools.iter().enumerate() {
        if let Some(pool) = c.pool(i, p, &mut pool_names) {
            pools.push(pool);
        }
    }
    let declared = pools.len();

    // Names and addresses must be unique across listeners: two listeners on
    // one address would silently share it through SO_REUSEPORT.
    let mut names = HashMap::new();
    let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        if let Some(listener) = c.listener(i, l, &mut names, &mut addrs, &mut pools) {
            listeners.push(listener);
        }
    }
    for (pool, raw_pool) in pools[..declared].iter().zip(&raw.pools) {
        let used = listeners
            .iter()
            .flat_map(|l| l.all_routes())
            .any(|r| r.pool == pool.name);
        if !used && c.errors.is_empty() {
            let site = raw_pool.name.as_ref().map_or_else(
                || c.site(Scope::Top, "pool", &raw_pool.location),
                |n| n.site.clone(),
            );
            c.warnings
                .push(site.error(format!("pool {:?} is not used by any route", pool.name)));
        }
    }

    let (tiers, tier_cert_paths) = c.tiers(&raw);

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
        ktls_offload,
        admin,
        access_log,
        tickets,
        listeners,
        pools,
        tiers,
        tier_cert_paths,
        source: raw.path,
        warnings: c.warnings,
    })
}

impl Checker {
    fn site(&self, scope: Scope, key: &str, location: &Location) -> Site {
        Site {
            location: location.clone(),
            field: self.source.field(scope, key),
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

    /// A byte count; an error (and 0) for a bad one.
    fn size(&mut self, v: &At<RawSize>) -> u64 {
        let parsed = match &v.value {
            RawSize::Bytes(n) => {
                u64::try_from(*n).map_err(|_| format!("must not be negative, not {n}"))
            }
            RawSize::Text(t) => parse_size(t),
        };
        parsed.unwrap_or_else(|message| {
            self.errors.push(v.site.error(message));
            0
        })
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

    /// The session ticket settings; a key file is read and checked now, and
    /// a bad line in it is reported at that line of the key file.
    fn tickets(&mut self, raw: &RawConfig) -> TicketSettings {
        let mut lifetime = self.duration(&raw.ticket_lifetime, defaults::TICKET_LIFETIME, false);
        if let Some(v) = raw
            .ticket_lifetime
            .as_ref()
            .filter(|_| lifetime > MAX_TICKET_LIFETIME)
        {
            self.errors.push(
                v.site
                    .error("must be at most 7d (TLS 1.3's limit for tickets)"),
            );
            lifetime = defaults::TICKET_LIFETIME;
        }
        let keys = raw.ticket_keys.as_ref().and_then(|v| {
            let path = self.path(v)?;
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    self.errors
                        .push(v.site.error(format!("cannot read {}: {e}", path.display())));
                    return None;
                }
            };
            match parse_key_file(&text) {
                Ok(keys) => Some(TicketKeyFile { path, keys }),
                Err(e) => {
                    self.errors.push(ConfigError {
                        location: Location::File {
                            path: path.clone(),
                            line: e.line,
                            column: 1,
                        },
                        field: v.site.field.clone(),
                        message: e.message,
                    });
                    None
                }
            }
        });
        TicketSettings { keys, lifetime }
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

    /// A name for logs and metrics: letters, digits, '-', '_' or '.', and
    /// unique among `taken` (which maps names to the field that took them).
    fn name(&mut self, n: &At<String>, taken: &mut HashMap<String, String>) {
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
        match taken.get(&n.value) {
            Some(first) => self.errors.push(
                n.site
                    .error(format!("name {:?} is already used by {first}", n.value)),
            ),
            None => {
                taken.insert(n.value.clone(), n.site.field.clone());
            }
        }
    }

    fn listener(
        &mut self,
        i: usize,
        l: &RawListener,
        names: &mut HashMap<String, String>,
        addrs: &mut HashMap<SocketAddr, usize>,
        pools: &mut Vec<PoolConfig>,
    ) -> Option<ListenerConfig> {
        let errors_before = self.errors.len();
        let scope = Scope::Listener(i);

        let name = match &l.name {
            Some(n) => {
                self.name(n, names);
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
        let proxy_protocol_cert_tlv = match &l.proxy_protocol_cert_tlv {
            None => Some(CertTlv::default()),
            Some(v) => {
                if proxy_protocol != Some(ProxyProtocol::V2) {
                    self.warnings.push(v.site.error(format!(
                        "has no effect without {} = \"v2\"",
                        self.source.field(scope, "proxy_protocol")
                    )));
                }
                self.cert_tlv(v)
            }
        };
        let client_cert_header = l
            .client_cert_header
            .as_ref()
            .and_then(|h| self.cert_header(h));
        if let (Some(h), Some(pp), Some(_)) =
            (&l.client_cert_header, &l.proxy_protocol, proxy_protocol)
        {
            self.errors.push(h.site.error(format!(
                "cannot be combined with {} = {:?} on the same listener; \
                 a backend gets the client's identity one way",
                pp.site.field, pp.value
            )));
        }

        let mut route_names = HashMap::new();
        let mut routes = Vec::new();
        for (j, r) in l.routes.iter().enumerate() {
            if let Some(route) = self.route(&name, (i, j), r, &mut route_names, pools) {
                routes.push(route);
            }
        }
        // With routes, the listener's own certificate and backends are
        // optional: they make the default route when given.
        let has_default = l.routes.is_empty()
            || l.tls.cert.is_some()
            || l.tls.key.is_some()
            || l.backends.is_some()
            || l.pool.is_some();
        let default_route = if has_default {
            let tls = self.tls(scope, &l.location, &l.tls);
            let pool = self.upstream(
                scope,
                &l.location,
                format!("{name}/{DEFAULT_ROUTE}"),
                (&l.backends, &l.pool, &l.backend_tls),
                pools,
            );
            tls.zip(pool).map(|(tls, pool)| RouteConfig {
                name: DEFAULT_ROUTE.to_string(),
                server_names: Vec::new(),
                tls,
                pool,
            })
        } else {
            for site in l.tls.given() {
                self.errors.push(site.error(
                    "not used: this listener has routes and no default route (no cert, key or backends of its own); set it on a [[listener.route]]",
                ));
            }
            None
        };

        if self.errors.len() > errors_before {
            return None;
        }
        Some(ListenerConfig {
            name,
            listen,
            backlog,
            routes,
            default_route,
            proxy_protocol,
            proxy_protocol_cert_tlv,
            client_cert_header,
        })
    }

    /// Parses `sha256[:TYPE]`, `der[:TYPE]` or `off`; TYPE is a custom TLV
    /// type (0xE0..=0xEF, hex or decimal) other than the identity's 0xE1.
    fn cert_tlv(&mut self, v: &At<String>) -> Option<CertTlv> {
        let (content, kind) = match v.value.split_once(':') {
            Some((c, k)) => (c, Some(k)),
            None => (v.value.as_str(), None),
        };
        let content = match content {
            "off" if kind.is_none() => return None,
            "sha256" => CertTlvContent::Sha256,
            "der" => CertTlvContent::Der,
            _ => {
                self.errors.push(v.site.error(format!(
                    "{:?} is not \"sha256[:TYPE]\", \"der[:TYPE]\" or \"off\"",
                    v.value
                )));
                return None;
            }
        };
        let Some(kind) = kind else {
            return Some(CertTlv {
                content,
                ..CertTlv::default()
            });
        };
        let parsed = match kind.strip_prefix("0x").or_else(|| kind.strip_prefix("0X")) {
            Some(hex) => u8::from_str_radix(hex, 16).ok(),
            None => kind.parse::<u8>().ok(),
        };
        match parsed {
            Some(k) if CUSTOM_TLVS.contains(&k) && k != TLV_CLIENT_IDENTITY => {
                Some(CertTlv { kind: k, content })
            }
            _ => {
                self.errors.push(v.site.error(format!(
                    "TLV type {kind:?} must be a custom type 0xE0..=0xEF other than 0xE1 (the identity TLV)"
                )));
                None
            }
        }
    }

    /// Checks a `client_cert_header` table: a known format, a header name
    /// that is an HTTP token, a sane head limit.
    fn cert_header(&mut self, h: &RawCertHeader) -> Option<CertHeader> {
        let errors_before = self.errors.len();
        let format = match &h.format {
            None => CertHeaderFormat::Rfc9440,
            Some(v) => match CertHeaderFormat::NAMES.iter().find(|(n, _)| *n == v.value) {
                Some((_, f)) => *f,
                None => {
                    let known: Vec<String> = CertHeaderFormat::NAMES
                        .iter()
                        .map(|(n, _)| format!("{n:?}"))
                        .collect();
                    self.errors.push(v.site.error(format!(
                        "must be one of {}, not {:?}",
                        known.join(", "),
                        v.value
                    )));
                    CertHeaderFormat::Rfc9440
                }
            },
        };
        let name = match &h.name {
            None => format.default_name().to_string(),
            Some(v) => {
                let token = !v.value.is_empty() && v.value.bytes().all(is_token_byte);
                if !token {
                    self.errors.push(v.site.error(format!(
                        "{:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
                        v.value
                    )));
                }
                v.value.clone()
            }
        };
        let max_head = match &h.max_head {
            None => DEFAULT_MAX_HEAD,
            Some(v) => self
                .int_in(v, MIN_HEAD, MAX_HEAD)
                .unwrap_or(DEFAULT_MAX_HEAD),
        };
        (self.errors.len() == errors_before).then_some(CertHeader {
            format,
            name,
            max_head,
        })
    }

    /// One `[[listener.route]]` of the listener named `listener`.
    fn route(
        &mut self,
        listener: &str,
        (i, j): (usize, usize),
        r: &RawRoute,
        names: &mut HashMap<String, String>,
        pools: &mut Vec<PoolConfig>,
    ) -> Option<RouteConfig> {
        let errors_before = self.errors.len();
        let scope = Scope::Route(i, j);
        let name = match &r.name {
            Some(n) if n.value == DEFAULT_ROUTE => {
                self.errors.push(n.site.error(format!(
                    "{DEFAULT_ROUTE:?} names the listener's own route; choose another name"
                )));
                n.value.clone()
            }
            Some(n) => {
                self.name(n, names);
                n.value.clone()
            }
            None => format!("route{j}"),
        };
        let server_names = match &r.server_names {
            None => {
                self.errors.push(self.site(scope, "server_names", &r.location).error(
                    "missing; the names this route serves are required, e.g. [\"api.example.com\", \"*.example.com\"]",
                ));
                Vec::new()
            }
            Some(_) => self
                .list(
                    &r.server_names,
                    Some("at least one server name is required"),
                    |n| ServerNamePattern::parse(n).map_err(|e| e.to_string()),
                )
                .unwrap_or_default(),
        };
        let tls = self.tls(scope, &r.location, &r.tls);
        let pool = self.upstream(
            scope,
            &r.location,
            format!("{listener}/{name}"),
            (&r.backends, &r.pool, &r.backend_tls),
            pools,
        );
        if self.errors.len() > errors_before {
            return None;
        }
        Some(RouteConfig {
            name,
            server_names,
            tls: tls?,
            pool: pool?,
        })
    }

    /// The pool a route sends to: a `[[pool]]` by name, or an implicit
    /// round-robin pool (added to `pools` as `implicit_name`) of inline
    /// `backends`. Returns the pool's name.
    fn upstream(
        &mut self,
        scope: Scope,
        location: &Location,
        implicit_name: String,
        (backends, pool, backend_tls): (
            &Option<RawList>,
            &Option<At<String>>,
            &Option<RawBackendTls>,
        ),
        pools: &mut Vec<PoolConfig>,
    ) -> Option<String> {
        if let (Some(tls), Some(p)) = (backend_tls, pool) {
            self.errors.push(tls.site.error(format!(
                "not used with pool = {:?}: set backend_tls in that [[pool]]",
                p.value
            )));
            return None;
        }
        match (backends, pool) {
            (Some(_), Some(p)) => {
                self.errors
                    .push(p.site.error("give either backends or pool, not both"));
                None
            }
            (None, Some(p)) => {
                if pools.iter().any(|known| known.name == p.value) {
                    Some(p.value.clone())
                } else {
                    let known: Vec<String> = pools
                        .iter()
                        .filter(|k| !k.name.contains('/'))
                        .map(|k| format!("{:?}", k.name))
                        .collect();
                    self.errors.push(p.site.error(format!(
                        "no [[pool]] is named {:?}; defined: {}",
                        p.value,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )));
                    None
                }
            }
            (None, None) => {
                let message = match self.source {
                    Source::File => "missing; at least one backend (host:port) is required, or a pool = \"NAME\"",
                    Source::Flags => "missing; at least one backend (host:port) is required",
                };
                self.errors
                    .push(self.site(scope, "backends", location).error(message));
                None
            }
            (Some(list), None) => {
                if list.value.is_empty() {
                    self.errors.push(
                        list.site
                            .error("at least one backend (host:port) is required"),
                    );
                }
                let backends: Vec<PoolBackend> = list
                    .value
                    .iter()
                    .filter_map(|b| self.backend(b))
                    .map(|backend| PoolBackend {
                        backend,
                        weight: 1,
                        max_connections: None,
                    })
                    .collect();
                let errors_before = self.errors.len();
                let tls = backend_tls.as_ref().and_then(|t| self.backend_tls(t));
                if self.errors.len() > errors_before {
                    return None;
                }
                pools.push(PoolConfig {
                    name: implicit_name.clone(),
                    balance: Balance::RoundRobin,
                    backends,
                    health_check: None,
                    eject_after: None,
                    eject_for: defaults::EJECT_FOR,
                    tls,
                });
                Some(implicit_name)
            }
        }
    }

    /// One `[[pool]]`.
    fn pool(
        &mut self,
        i: usize,
        p: &RawPool,
        names: &mut HashMap<String, String>,
    ) -> Option<PoolConfig> {
        let errors_before = self.errors.len();
        let scope = Scope::Pool(i);
        let name = match &p.name {
            Some(n) => {
                self.name(n, names);
                n.value.clone()
            }
            None => {
                self.errors.push(
                    self.site(scope, "name", &p.location)
                        .error("missing; routes refer to a pool by its name"),
                );
                String::new()
            }
        };
        let balance = match p.balance.as_ref().map(|b| (b, b.value.as_str())) {
            None | Some((_, "round-robin")) => Balance::RoundRobin,
            Some((_, "least-connections")) => Balance::LeastConnections,
            Some((_, "hash")) => Balance::Hash,
            Some((b, other)) => {
                self.errors.push(b.site.error(format!(
                    "must be \"round-robin\", \"least-connections\" or \"hash\", not {other:?}"
                )));
                Balance::RoundRobin
            }
        };
        let mut backends: Vec<PoolBackend> = Vec::new();
        match &p.backends {
            None => self.errors.push(
                self.site(scope, "backends", &p.location)
                    .error("missing; at least one backend (host:port) is required"),
            ),
            Some(list) if list.value.is_empty() => self.errors.push(
                list.site
                    .error("at least one backend (host:port) is required"),
            ),
            Some(list) => {
                for b in &list.value {
                    let weight = b
                        .weight
                        .as_ref()
                        .map_or(Some(1), |w| self.int_in(w, 1, MAX_WEIGHT));
                    let max_connections = b
                        .max_connections
                        .as_ref()
                        .map(|m| self.int_in(m, 1, MAX_CONNECTIONS));
                    let Some(address) = &b.address else {
                        self.errors.push(
                            Site {
                                location: b.location.clone(),
                                field: list.site.field.clone(),
                            }
                            .error("missing; address = \"host:port\" is required"),
                        );
                        continue;
                    };
                    let Some(backend) = self.backend(address) else {
                        continue;
                    };
                    if backends
                        .iter()
                        .any(|known| known.backend.addr == backend.addr)
                    {
                        self.errors.push(
                            address
                                .site
                                .error(format!("backend {} is listed twice", backend.name)),
                        );
                        continue;
                    }
                    backends.push(PoolBackend {
                        backend,
                        weight: weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(1),
                        max_connections: max_connections.flatten().map(|m| m as u64),
                    });
                }
            }
        }
        let health_check = p.health_check.as_ref().map(|h| {
            let count = |c: &mut Self, v: &Option<At<i64>>, default: u32| {
                v.as_ref()
                    .map_or(Some(default as usize), |v| c.int_in(v, 1, 100))
                    .map_or(default, |n| n as u32)
            };
            HealthCheck {
                interval: self.duration(&h.interval, defaults::HEALTH_INTERVAL, false),
                timeout: self.duration(&h.timeout, defaults::HEALTH_TIMEOUT, false),
                rise: count(self, &h.rise, defaults::HEALTH_RISE),
                fall: count(self, &h.fall, defaults::HEALTH_FALL),
            }
        });
        let eject_after = match &p.eject_after {
            None => Some(defaults::EJECT_AFTER),
            Some(v) => self
                .int_in(v, 0, 1000)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0),
        };
        let eject_for = self.duration(&p.eject_for, defaults::EJECT_FOR, false);
        let tls = p.backend_tls.as_ref().and_then(|t| self.backend_tls(t));
        if self.errors.len() > errors_before {
            return None;
        }
        Some(PoolConfig {
            name,
            balance,
            backends,
            health_check,
            eject_after,
            eject_for,
            tls,
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
            self.errors.push(
                self.site(Scope::Listener(i), "listen", &l.location)
                    .error(hint),
            );
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
                            format!("already used by {}", self.source.field(Scope::Listener(first), "listen"))
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

    fn tls(&mut self, scope: Scope, location: &Location, t: &RawTls) -> Option<TlsSettings> {
        let errors_before = self.errors.len();
        let missing = |c: &Self, key: &str, what: &str| {
            let hint = match c.source {
                Source::File => format!("missing; {what} is required"),
                Source::Flags => format!(
                    "missing; {what} is required (pass {})",
                    c.source.field(Scope::Top, key)
                ),
            };
            c.site(scope, key, location).error(hint)
        };

        let identity = self.identity(
            RawIdentity {
                cert: t.cert.as_ref(),
                key: t.key.as_ref(),
                password_file: &t.cert_password_file,
                password_env: &t.cert_password_env,
            },
            |c| missing(c, "cert", "the server certificate chain file"),
            |c| missing(c, "key", "the server private key file"),
        );
        self.tls_rest(scope, location, t, errors_before, identity)
    }

    /// Loads a certificate chain and its key (PEM files, or one PKCS#12
    /// bundle), checking that they belong together. `missing_cert` and
    /// `missing_key` report an absent field.
    fn identity(
        &mut self,
        id: RawIdentity<'_>,
        missing_cert: impl FnOnce(&Self) -> ConfigError,
        missing_key: impl FnOnce(&Self) -> ConfigError,
    ) -> Option<Identity> {
        // A PKCS#12 bundle holds the chain and the key together.
        if let Some(v) = id.cert.filter(|v| is_pkcs12(&v.value)) {
            if let Some(k) = id.key {
                self.errors.push(
                    k.site.error(
                        "not used: the PKCS#12 cert already holds the private key".to_string(),
                    ),
                );
            }
            let password = self.pkcs12_password(id.password_file, id.password_env);
            return self.path(v).and_then(|path| {
                match load_pkcs12(&path, password.as_deref().unwrap_or("")) {
                    Ok((chain, key)) => {
                        self.check_validity(&v.site, &path, &chain);
                        Some(((path.clone(), chain), (path, key)))
                    }
                    Err(e) => {
                        self.errors.push(v.site.error(e.to_string()));
                        None
                    }
                }
            });
        }

        // Certificate chain.
        let cert = match id.cert {
            None => {
                let e = missing_cert(self);
                self.errors.push(e);
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
        let key = match id.key {
            None => {
                let e = missing_key(self);
                self.errors.push(e);
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
        match (cert, key) {
            (Some(cert), Some((key_path, key, _))) => Some((cert, (key_path, key))),
            _ => None,
        }
    }

    /// Checks a `backend_tls` table (or the `--backend-tls-*` flags) and
    /// loads its CA and client identity.
    fn backend_tls(&mut self, raw: &RawBackendTls) -> Option<BackendTls> {
        let errors_before = self.errors.len();
        let source = self.source;
        let field = |key: &str| Site {
            location: raw.site.location.clone(),
            field: match source {
                Source::File => format!("{}.{key}", raw.site.field),
                Source::Flags if key == "server_name" => "--backend-tls-name".to_string(),
                Source::Flags => format!("--backend-tls-{}", key.replace('_', "-")),
            },
        };
        let verify = raw.verify.as_ref().is_none_or(|v| v.value);
        if let Some(v) = raw.verify.as_ref().filter(|v| !v.value) {
            self.warnings.push(v.site.error(
                "backend certificates are not verified: anyone on the path can impersonate a backend",
            ));
        }
        let ca = match &raw.ca {
            Some(v) => self
                .path(v)
                .and_then(|path| match certs::load_client_ca(&path) {
                    Ok(ca) => {
                        self.check_validity(&v.site, &path, &ca);
                        Some((Some(path), ca))
                    }
                    Err(e) => {
                        self.errors.push(v.site.error(e.to_string()));
                        None
                    }
                }),
            None if verify => {
                self.errors.push(field("ca").error(
                    "missing; the CA bundle that signs the backends' certificates is required (or verify = false)",
                ));
                None
            }
            None => Some((None, Vec::new())),
        };
        let identity = if raw.cert.is_some() || raw.key.is_some() {
            let missing = |what: &str, key: &str| {
                field(key).error(format!(
                    "missing; {what} is required when a client certificate is given"
                ))
            };
            let (missing_cert, missing_key) = (
                missing("the client certificate chain file", "cert"),
                missing("the client private key file", "key"),
            );
            self.identity(
                RawIdentity {
                    cert: raw.cert.as_ref(),
                    key: raw.key.as_ref(),
                    password_file: &raw.cert_password_file,
                    password_env: &raw.cert_password_env,
                },
                |_| missing_cert,
                |_| missing_key,
            )
            .map(
                |((cert_path, cert_chain), (key_path, key))| ClientIdentity {
                    cert_chain,
                    key: Arc::new(key),
                    cert_path,
                    key_path,
                },
            )
        } else {
            None
        };
        let server_name = raw.server_name.as_ref().and_then(|v| {
            match rustls::pki_types::ServerName::try_from(v.value.clone()) {
                Ok(name) => Some(name),
                Err(_) => {
                    self.errors.push(
                        v.site
                            .error(format!("{:?} is not a DNS name or IP address", v.value)),
                    );
                    None
                }
            }
        });
        let alpn = raw.alpn.as_ref().map(|_| self.alpn_list(&raw.alpn));
        if self.errors.len() > errors_before {
            return None;
        }
        let (ca_path, ca) = ca?;
        Some(BackendTls {
            ca,
            ca_path,
            identity,
            server_name,
            verify,
            alpn,
            session_reuse: raw.session_reuse.as_ref().is_none_or(|v| v.value),
        })
    }

    /// The password of a PKCS#12 file: from a password file (first line),
    /// or the environment variable named; none means empty.
    fn pkcs12_password(
        &mut self,
        file: &Option<At<PathBuf>>,
        env: &Option<At<String>>,
    ) -> Option<String> {
        if let Some(v) = file {
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
        if let Some(v) = env {
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
    fn tls_rest(
        &mut self,
        scope: Scope,
        location: &Location,
        t: &RawTls,
        errors_before: usize,
        identity: Option<Identity>,
    ) -> Option<TlsSettings> {
        // `None` when the mode is invalid: whether a CA is needed is then
        // unknown, so only a given CA file is checked.
        let client_auth = match &t.client_auth {
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
            Some(auth) => self.client_ca(scope, location, t, auth),
            None if t.client_ca.is_some() => {
                self.client_ca(scope, location, t, ClientAuth::Required)
            }
            None => None,
        };
        let alpn = self.alpn(t);
        let (crl_paths, crls) = self.crls(t);
        let ocsp_staple = self.ocsp_staple(t);
        let (allowlist, client_cert_paths) = self.allowlist(t);
        let client_ocsp = self.client_ocsp(t, client_auth);
        let versions = self.versions(t);
        let cipher_suites = self.cipher_suites(t);

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
            client_cert_paths,
            client_ocsp,
        })
    }

    /// The OCSP response to staple: read as is (DER), since the operator
    /// refreshes the file and reloads; an empty file staples nothing.
    fn ocsp_staple(&mut self, t: &RawTls) -> Option<Vec<u8>> {
        let v = t.ocsp_staple.as_ref()?;
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
    fn crls(&mut self, t: &RawTls) -> (Vec<PathBuf>, Vec<Crl>) {
        let (mut paths, mut crls) = (Vec::new(), Vec::new());
        for item in t.crl.iter().flat_map(|list| &list.value) {
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

    /// Allowlist rules (see [`Checker::client_rules`]), then the `clients`
    /// aliases; with the certificate files read.
    fn allowlist(&mut self, t: &RawTls) -> (Allowlist, Vec<PathBuf>) {
        let mut paths = Vec::new();
        let mut entries = self.client_rules(t.allow.as_ref(), &mut paths);
        for client in &t.clients {
            let Some(entry) = self.client_alias(client, &mut paths) else {
                continue;
            };
            if entries.contains(&entry) {
                self.errors.push(
                    client.site.error(
                        "this alias and certificate are already in the allowlist".to_string(),
                    ),
                );
            } else {
                entries.push(entry);
            }
        }
        (Allowlist::new(entries), paths)
    }

    /// Client rules, for the allowlist and the tiers alike:
    /// `alias:NAME=CERT_FILE`, `sha256:HEX`, `cn:GLOB`, `dns:GLOB`,
    /// `uri:GLOB`, `spiffe://...` (a SPIFFE ID glob); the certificate files
    /// read go to `paths`.
    fn client_rules(
        &mut self,
        list: Option<&RawList>,
        paths: &mut Vec<PathBuf>,
    ) -> Vec<AllowEntry> {
        let mut entries: Vec<AllowEntry> = Vec::new();
        for item in list.iter().flat_map(|list| &list.value) {
            let rule = item.value.as_str();
            let entry = match rule.split_once(':') {
                Some(("alias", rest)) => match rest.split_once('=') {
                    Some((name, file)) => {
                        let file_at = At {
                            value: PathBuf::from(file),
                            site: item.site.clone(),
                        };
                        let Some(path) = self.path(&file_at) else { continue };
                        paths.push(path.clone());
                        client_certificate(&path, "").and_then(|cert| {
                            AllowEntry::alias(name, &cert).map_err(|e| e.to_string())
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
        entries
    }

    /// One `[[listener.clients]]` table: an alias for a certificate file
    /// (PEM, DER, or PKCS#12 with its password).
    fn client_alias(&mut self, c: &RawClient, paths: &mut Vec<PathBuf>) -> Option<AllowEntry> {
        let missing = |key: &str, what: &str| {
            Site {
                location: c.site.location.clone(),
                field: format!("{}.{key}", c.site.field),
            }
            .error(format!("missing; {what} is required"))
        };
        let Some(alias) = &c.alias else {
            self.errors
                .push(missing("alias", "the name this client is known by"));
            return None;
        };
        let Some(cert) = &c.cert else {
            self.errors
                .push(missing("cert", "the client's certificate file"));
            return None;
        };
        let path = self.path(cert)?;
        let has_password = c.password_file.is_some() || c.password_env.is_some();
        if has_password && !is_pkcs12(&path) {
            let site = c.password_file.as_ref().map_or_else(
                || &c.password_env.as_ref().expect("one is set").site,
                |v| &v.site,
            );
            self.errors.push(site.error(format!(
                "not used: {} is not a PKCS#12 file (.p12/.pfx)",
                path.display()
            )));
            return None;
        }
        let password = self.pkcs12_password(&c.password_file, &c.password_env);
        paths.push(path.clone());
        let loaded = client_certificate(&path, password.as_deref().unwrap_or(""))
            .and_then(|der| AllowEntry::alias(&alias.value, &der).map_err(|e| e.to_string()));
        match loaded {
            Ok(entry) => Some(entry),
            Err(m) => {
                self.errors.push(cert.site.error(m));
                None
            }
        }
    }

    /// OCSP checking of client certificates; `None` when off.
    fn client_ocsp(&mut self, t: &RawTls, auth: Option<ClientAuth>) -> Option<OcspSettings> {
        let o = t.client_ocsp.as_ref()?;
        let check = match &o.mode {
            None => true,
            Some(v) => match v.value.as_str() {
                "check" => true,
                "off" => false,
                other => {
                    self.errors.push(
                        v.site
                            .error(format!("must be \"check\" or \"off\", not {other:?}")),
                    );
                    false
                }
            },
        };
        let responder = o.responder.as_ref().and_then(|v| {
            ResponderUrl::parse(&v.value)
                .map_err(|e| self.errors.push(v.site.error(e.to_string())))
                .ok()
        });
        let defaults = OcspSettings::default();
        let timeout = self.duration(&o.timeout, defaults.timeout, false);
        if let Some(v) = o.timeout.as_ref().filter(|_| timeout > MAX_OCSP_TIMEOUT) {
            self.errors.push(v.site.error(format!(
                "must be at most {}: a query holds up its worker's handshakes that long",
                format_duration(MAX_OCSP_TIMEOUT)
            )));
        }
        let fail_open = match &o.fail {
            None => false,
            Some(v) => match v.value.as_str() {
                "closed" => false,
                "open" => true,
                other => {
                    self.errors.push(
                        v.site
                            .error(format!("must be \"closed\" or \"open\", not {other:?}")),
                    );
                    false
                }
            },
        };
        // Zero is meaningful: never reuse a good answer.
        let cache_ttl = self.duration(&o.cache_ttl, defaults.cache_ttl, true);
        if !check {
            return None;
        }
        if auth == Some(ClientAuth::Off) {
            self.warnings.push(o.site.error(match self.source {
                Source::File => "ignored because client_auth = \"off\"",
                Source::Flags => "ignored because --client-auth is off",
            }));
            return None;
        }
        Some(OcspSettings {
            responder,
            timeout,
            fail_open,
            cache_ttl,
        })
    }

    /// The `[[tier]]` tables and the default tier.
    /// With the certificate files the tiers' alias rules read.
    fn tiers(&mut self, raw: &RawConfig) -> (Tiers, Vec<PathBuf>) {
        let mut tiers: Vec<Tier> = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        let mut paths = Vec::new();
        for t in &raw.tiers {
            if let Some(tier) = self.tier(t, &names, &mut paths) {
                tiers.push(tier);
            }
            names.extend(t.name.as_ref().map(|n| n.value.as_str()));
        }
        let default = match &raw.default_tier {
            Some(d) => {
                let found = tiers.iter().position(|t| *t.name == *d.value);
                if found.is_none() && !raw.tiers.is_empty() {
                    names.dedup();
                    let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
                    self.errors.push(d.site.error(format!(
                        "no tier is named {:?}; the tiers are {}",
                        d.value,
                        names.join(", ")
                    )));
                } else if raw.tiers.is_empty() {
                    self.errors
                        .push(d.site.error("set, but no [[tier]] table is defined"));
                }
                found
            }
            None => tiers.iter().position(|t| &*t.name == DEFAULT_TIER_NAME),
        };
        for (i, (t, raw_tier)) in tiers.iter().zip(&raw.tiers).enumerate() {
            if t.clients.is_empty() && default != Some(i) {
                self.warnings.push(
                    Site {
                        location: raw_tier.location.clone(),
                        field: raw_tier.field.clone(),
                    }
                    .error(format!(
                        "tier {:?} has no clients rules and is not the default tier: no client is ever in it",
                        &*t.name
                    )),
                );
            }
        }
        (Tiers::new(tiers, default), paths)
    }

    /// One tier; `None` after reporting its problems.
    fn tier(&mut self, t: &RawTier, earlier: &[&str], paths: &mut Vec<PathBuf>) -> Option<Tier> {
        let errors_before = self.errors.len();
        let name = match &t.name {
            None => {
                self.errors.push(
                    Site {
                        location: t.location.clone(),
                        field: format!("{}.name", t.field),
                    }
                    .error("missing; every tier needs a name for logs and metrics"),
                );
                None
            }
            Some(n)
                if n.value.is_empty()
                    || !n
                        .value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) =>
            {
                self.errors.push(n.site.error(format!(
                    "{:?} is not a tier name: use letters, digits, `_`, `-` and `.`",
                    n.value
                )));
                None
            }
            Some(n) if earlier.contains(&n.value.as_str()) => {
                self.errors
                    .push(n.site.error(format!("tier {:?} is defined twice", n.value)));
                None
            }
            Some(n) => Some(n.value.clone()),
        };
        let rate = t
            .new_connections_per_second
            .as_ref()
            .and_then(|v| self.int_in(v, 1, MAX_TIER_RATE));
        let burst = t
            .burst
            .as_ref()
            .and_then(|v| self.int_in(v, 1, MAX_TIER_RATE));
        if let (Some(b), None) = (&t.burst, &t.new_connections_per_second) {
            self.errors.push(
                b.site
                    .error("burst needs new_connections_per_second in the same tier"),
            );
        }
        let max_connections = t
            .max_connections
            .as_ref()
            .and_then(|v| self.int_in(v, 1, MAX_CONNECTIONS));
        let bytes_per_second = t
            .bytes_per_second
            .as_ref()
            .and_then(|v| self.int_in(v, 1, MAX_TIER_BYTES));
        let clients = Allowlist::new(self.client_rules(t.clients.as_ref(), paths));
        if self.errors.len() > errors_before {
            return None;
        }
        // The ranges above fit every target; `as` cannot truncate here.
        let new_connections = rate.map(|per_second| ConnectionRate {
            per_second: per_second as u32,
            burst: burst.unwrap_or(per_second) as u32,
        });
        Some(Tier {
            name: Arc::from(name?),
            limits: Limits {
                new_connections,
                max_connections: max_connections.map(|m| m as u32),
                bytes_per_second: bytes_per_second.map(|b| b as u64),
            },
            clients,
        })
    }

    /// The client CA bundle and its path; `(None, [])` when not needed,
    /// `None` after reporting a problem.
    fn client_ca(
        &mut self,
        scope: Scope,
        location: &Location,
        t: &RawTls,
        auth: ClientAuth,
    ) -> Option<CaBundle> {
        match (&t.client_ca, auth) {
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
                            if t.client_auth.is_none() { " (the default)" } else { "" }
                        ),
                        // Point at client_auth when it was written, else at the listener.
                        t.client_auth
                            .as_ref()
                            .map_or(location.clone(), |a| a.site.location.clone()),
                    ),
                    Source::Flags => (
                        format!(
                            "missing; client certificates are {mode}{} and need a CA bundle; pass --client-ca FILE, or --client-auth off",
                            if t.client_auth.is_none() { " by default" } else { "" }
                        ),
                        Location::Flag,
                    ),
                };
                self.errors
                    .push(self.site(scope, "client_ca", &location).error(message));
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

    fn alpn(&mut self, t: &RawTls) -> Vec<Vec<u8>> {
        self.alpn_list(&t.alpn)
    }

    fn alpn_list(&mut self, list: &Option<RawList>) -> Vec<Vec<u8>> {
        self.list(list, None, |p| {
            if p.is_empty() || p.len() > 255 {
                Err(format!("ALPN protocol {p:?} must be 1 to 255 bytes long"))
            } else {
                Ok(p.as_bytes().to_vec())
            }
        })
        .unwrap_or_default()
    }

    fn versions(&mut self, t: &RawTls) -> Vec<TlsVersion> {
        self.list(
            &t.tls_versions,
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

    fn cipher_suites(&mut self, t: &RawTls) -> Vec<CipherSuite> {
        self.list(
            &t.cipher_suites,
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

/// Parses a byte count: digits with an optional `KiB`, `MiB` or `GiB`
/// suffix (`"64KiB"`, `"1MiB"`, `"65536"`).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    const EXPECTED: &str = "expected e.g. \"64KiB\", \"1MiB\" or a number of bytes";
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let scale: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?}; {EXPECTED}")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; {EXPECTED}"))?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}
