//! The TOML file schema and its translation into the unchecked form that the shared validator checks.
//!
//! The schema (every key is optional unless marked required):
//!
//! ```toml
//! workers = 2                 # default: available cores; 1..=1024
//! handshake_timeout = "10s"   # default 10s
//! idle_timeout = "5m"         # default 300s
//! connect_timeout = "5s"      # default 5s
//! drain_timeout = "30s"       # default 30s (0 allowed)
//! max_connections = 10000     # per worker, default 10000
//! max_handshakes = 1024       # handshakes in flight per worker, default 1024
//! ktls = "auto"               # kernel TLS offload: auto | require | off
//! ktls_offload = { after_bytes = "64KiB", after = "50ms" }  # default: at once
//!
//! [[listener]]                # at least one
//! name = "main"               # default "listener<N>"
//! listen = ["127.0.0.1:8443", "[::1]:8443"]   # required; string or array
//! backlog = 1024              # default 1024
//! cert = "pki/server.crt"     # required; relative to this file's directory
//! key = "pki/server.key"      # required
//! client_auth = "required"    # "required" | "optional" | "off"; default "required"
//! client_ca = "pki/ca.crt"    # required unless client_auth = "off"
//! alpn = ["http/1.1"]         # default []
//! crl = ["pki/clients.crl"]   # client certificate CRLs, PEM or DER; default []
//! allow = ["alias:billing=clients/billing.crt", "cn:batch-*", "spiffe://prod/ns/*/sa/api"]
//! tls_versions = ["1.2", "1.3"]   # default both
//! cipher_suites = ["AES_128_GCM", "AES_256_GCM", "CHACHA20_POLY1305"]  # default all
//! backends = ["127.0.0.1:8080"]   # required; host:port, resolved at load
//! # TLS to those backends; ca required unless verify = false, cert/key optional
//! # (a [[pool]] takes the same table for its own backends)
//! backend_tls = { ca = "pki/backend-ca.crt", cert = "pki/to-backend.crt", key = "pki/to-backend.key",
//!                 server_name = "api.internal", verify = true, alpn = ["h2"] }
//! proxy_protocol = "v2"           # "v1" | "v2" | "off"; default off
//! proxy_protocol_cert_tlv = "der:0xE2"  # "sha256[:TYPE]" | "der[:TYPE]" | "off"; default "sha256:0xE0"
//! # or, for HTTP/1.1 backends (not together with proxy_protocol):
//! client_cert_header = { format = "rfc9440", name = "Client-Cert", max_head = 65536 }
//! client_ocsp = { mode = "check", responder = "http://127.0.0.1:8888", timeout = "2s", fail = "closed", cache_ttl = "5m" }
//!
//! [[listener.clients]]        # a named client certificate (allowlist alias)
//! alias = "billing"           # required
//! cert = "clients/billing.p12"    # required; PEM, DER or PKCS#12
//! password_file = "clients/billing.pass"  # or password_env = "VAR"; PKCS#12 only
//!
//! default_tier = "free"       # top level; default: the tier named "default", if any
//!
//! [[tier]]                    # throttling tiers, tried in order; default none
//! name = "partner"            # required; letters, digits, `_`, `-`, `.`
//! clients = ["alias:acme=clients/acme.crt", "cn:partner-*"]  # allowlist rule syntax
//! new_connections_per_second = 50   # per client; default unlimited
//! burst = 100                 # default: new_connections_per_second
//! max_connections = 20        # open at once per client, all workers; default unlimited
//! bytes_per_second = 1048576  # per client, each direction; default unlimited
//! ```
//!
//! and at top level `access_log = { format = "json" }` ("text" by default).
//!
//! Durations are strings such as `"1m30s"` or integers (seconds). List
//! values accept a single string too. Unknown keys are errors.
//!
//! Values are kept with their spans (`toml::Spanned`) so every problem found
//! later can be reported as `file:line:column`. Types and unknown keys are
//! checked by serde, which stops at the first problem; everything else is
//! checked by the shared validator (`validate.rs`), which reports all of them.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::validate::{
    At, RawBackendTls, RawCertHeader, RawClient, RawConfig, RawDuration, RawHealthCheck, RawList,
    RawListener, RawOcsp, RawPool, RawPoolBackend, RawRoute, RawSize, RawTier, RawTls, Scope, Site,
    Source,
};
use super::{ConfigError, Location};

/// Top level of the config file. Unknown keys are not a parse error
/// (that would stop at the first); [`parse`] reports each of them instead.
#[derive(Debug, Deserialize)]
struct FileConfig {
    /// Worker threads; default: available cores.
    workers: Option<Spanned<i64>>,
    /// Accept-to-handshake-done limit; default 10s.
    handshake_timeout: Option<Spanned<RawDuration>>,
    /// Idle connection limit; default 5m.
    idle_timeout: Option<Spanned<RawDuration>>,
    /// Backend connect limit; default 5s.
    connect_timeout: Option<Spanned<RawDuration>>,
    /// Shutdown grace period; default 30s.
    drain_timeout: Option<Spanned<RawDuration>>,
    /// Concurrent connections per worker; default 10000.
    max_connections: Option<Spanned<i64>>,
    /// Handshakes in flight per worker; default 1024.
    max_handshakes: Option<Spanned<i64>>,
    /// Kernel TLS offload: "auto", "require" or "off"; default "auto".
    ktls: Option<Spanned<String>>,
    /// `ktls_offload = { after_bytes = SIZE, after = DURATION }`.
    ktls_offload: Option<Spanned<FileKtlsOffload>>,
    /// Admin listener address; default none.
    admin: Option<Spanned<String>>,
    /// `access_log = { format = "text" | "json" }`.
    access_log: Option<Spanned<FileAccessLog>>,
    /// Session ticket key file shared by a fleet; default: keys in memory.
    ticket_keys: Option<Spanned<PathBuf>>,
    /// Lifetime clients are told for session tickets; default 1h.
    ticket_lifetime: Option<Spanned<RawDuration>>,
    /// `[[listener]]` tables; at least one.
    #[serde(default)]
    listener: Vec<Spanned<FileListener>>,
    /// `[[pool]]` tables.
    #[serde(default)]
    pool: Vec<Spanned<FilePool>>,
    /// Tier of clients no tier's rules match; default: the tier named "default".
    default_tier: Option<Spanned<String>>,
    /// `[[tier]]` tables; default none (no throttling).
    #[serde(default)]
    tier: Vec<Spanned<FileTier>>,
}

/// One `[[tier]]` table.
#[derive(Debug, Deserialize)]
struct FileTier {
    /// Name in logs and metrics; required.
    name: Option<Spanned<String>>,
    /// Allowlist-syntax rules picking the tier's clients; default none.
    clients: Option<Spanned<StringList>>,
    /// New connections a second per client; default unlimited.
    new_connections_per_second: Option<Spanned<i64>>,
    /// Connections a quiet client may open at once; default the rate.
    burst: Option<Spanned<i64>>,
    /// Open connections per client; default unlimited.
    max_connections: Option<Spanned<i64>>,
    /// Bytes a second per client in each direction; default unlimited.
    bytes_per_second: Option<Spanned<i64>>,
}

/// Declares a table holding the keys a listener and a route share (name,
/// TLS identity and client policy, backends or pool) and its own `extra`
/// keys. One declaration keeps the two tables' shared keys identical.
macro_rules! tls_table {
    ($(#[$meta:meta])* struct $name:ident { $($extra:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize)]
        struct $name {
            /// Name in logs and metrics.
            name: Option<Spanned<String>>,
            /// Server certificate chain file (or PKCS#12 bundle).
            cert: Option<Spanned<String>>,
            /// Server private key file.
            key: Option<Spanned<String>>,
            /// `required`, `optional` or `off`; default `required`.
            client_auth: Option<Spanned<String>>,
            /// CA bundle for client certificates; required unless `client_auth = "off"`.
            client_ca: Option<Spanned<String>>,
            /// ALPN protocols; default none.
            alpn: Option<Spanned<StringList>>,
            /// `"1.2"`, `"1.3"`; default both.
            tls_versions: Option<Spanned<StringList>>,
            /// Cipher suite names; default all.
            cipher_suites: Option<Spanned<StringList>>,
            /// Backends as `host:port` (an implicit round-robin pool).
            backends: Option<Spanned<StringList>>,
            /// A `[[pool]]` name, instead of `backends`.
            pool: Option<Spanned<String>>,
            /// TLS toward `backends`; default none (plaintext).
            backend_tls: Option<Spanned<FileBackendTls>>,
            /// CRL files (PEM or DER) for client certificates; default none.
            crl: Option<Spanned<StringList>>,
            /// DER OCSP response stapled to the server certificate.
            ocsp_staple: Option<Spanned<String>>,
            /// File whose first line is the password of a PKCS#12 `cert`.
            cert_password_file: Option<Spanned<String>>,
            /// Environment variable holding that password.
            cert_password_env: Option<Spanned<String>>,
            /// Allowlist rules; default none (every verified client admitted).
            allow: Option<Spanned<StringList>>,
            /// OCSP checking of client certificates; default off.
            client_ocsp: Option<Spanned<FileOcsp>>,
            /// `[[...clients]]`: named client certificates.
            #[serde(default)]
            clients: Vec<Spanned<FileClient>>,
            $($extra)*
        }
    };
}

tls_table! {
    /// One `[[listener]]` table; its own TLS keys and backends make the
    /// default route.
    struct FileListener {
        /// Socket addresses; required.
        listen: Option<Spanned<StringList>>,
        /// Accept backlog; default 1024.
        backlog: Option<Spanned<i64>>,
        /// PROXY protocol to backends: "v1", "v2" or "off"; default off.
        proxy_protocol: Option<Spanned<String>>,
        /// v2 client-certificate TLV: `sha256[:TYPE]`, `der[:TYPE]` or `off`.
        proxy_protocol_cert_tlv: Option<Spanned<String>>,
        /// HTTP header mode: `{ format, name, max_head }`; default off.
        client_cert_header: Option<Spanned<FileCertHeader>>,
        /// `[[listener.route]]` tables.
        #[serde(default)]
        route: Vec<Spanned<FileRoute>>,
    }
}

tls_table! {
    /// One `[[listener.route]]` table.
    struct FileRoute {
        /// Server names served (exact or `*.` wildcard); required.
        server_names: Option<Spanned<StringList>>,
    }
}

/// One `[[pool]]` table.
#[derive(Debug, Deserialize)]
struct FilePool {
    /// Name routes refer to; required.
    name: Option<Spanned<String>>,
    /// `round-robin`, `least-connections` or `hash`; default `round-robin`.
    balance: Option<Spanned<String>>,
    /// Backends: `"host:port"` or `{ address, weight, max_connections }`.
    backends: Option<Spanned<Vec<Spanned<FilePoolBackend>>>>,
    /// `{ interval, timeout, rise, fall }`; default: no active checks.
    health_check: Option<Spanned<FileHealthCheck>>,
    /// Consecutive connect failures that eject a backend; 0 never ejects.
    eject_after: Option<Spanned<i64>>,
    /// How long an ejected backend is left out.
    eject_for: Option<Spanned<RawDuration>>,
    /// TLS toward the pool's backends; default none (plaintext).
    backend_tls: Option<Spanned<FileBackendTls>>,
}

/// A `backend_tls` table.
#[derive(Debug, Deserialize)]
struct FileBackendTls {
    /// CA bundle for the backends' certificates.
    ca: Option<Spanned<String>>,
    /// Client certificate chain (PEM) or PKCS#12 bundle.
    cert: Option<Spanned<String>>,
    /// Client private key.
    key: Option<Spanned<String>>,
    /// File whose first line is the password of a PKCS#12 `cert`.
    cert_password_file: Option<Spanned<String>>,
    /// Environment variable holding that password.
    cert_password_env: Option<Spanned<String>>,
    /// SNI and verified name; default: each backend's host.
    server_name: Option<Spanned<String>>,
    /// Verify the backend's certificate; default true.
    verify: Option<Spanned<bool>>,
    /// ALPN offered to backends; default: the client's negotiated protocol.
    alpn: Option<Spanned<StringList>>,
    /// Resume sessions with the backends; default true.
    session_reuse: Option<Spanned<bool>>,
}

/// A pool backend: its address alone, or a table.
#[derive(Debug)]
enum FilePoolBackend {
    Address(String),
    Table(FileBackendTable),
}

/// A pool backend written as a table.
#[derive(Debug, Deserialize)]
struct FileBackendTable {
    /// `host:port`; required.
    address: Option<Spanned<String>>,
    /// Relative share; default 1.
    weight: Option<Spanned<i64>>,
    /// Most open connections; default unlimited.
    max_connections: Option<Spanned<i64>>,
}

impl<'de> Deserialize<'de> for FilePoolBackend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FilePoolBackend;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"host:port\" or a table { address = \"host:port\", weight = N, max_connections = N }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FilePoolBackend, E> {
                Ok(FilePoolBackend::Address(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<FilePoolBackend, A::Error> {
                FileBackendTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(FilePoolBackend::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// A listener's or route's `client_ocsp` table.
#[derive(Debug, Deserialize)]
struct FileOcsp {
    /// "check" (default) or "off".
    mode: Option<Spanned<String>>,
    /// Responder URL; default: the certificate's AIA OCSP URL.
    responder: Option<Spanned<String>>,
    /// Query time limit; default 2s.
    timeout: Option<Spanned<RawDuration>>,
    /// "closed" (default) or "open".
    fail: Option<Spanned<String>>,
    /// Longest a good answer is reused; default 5m.
    cache_ttl: Option<Spanned<RawDuration>>,
}

/// One `[[listener.clients]]` (or route `clients`) table.
#[derive(Debug, Deserialize)]
struct FileClient {
    /// The client's name in logs.
    alias: Option<Spanned<String>>,
    /// Its certificate: PEM, DER or PKCS#12.
    cert: Option<Spanned<String>>,
    /// File whose first line is the PKCS#12 password.
    password_file: Option<Spanned<String>>,
    /// Environment variable holding it.
    password_env: Option<Spanned<String>>,
}

/// The `access_log` table.
#[derive(Debug, Deserialize)]
struct FileAccessLog {
    /// `"text"` (default) or `"json"`.
    format: Option<Spanned<String>>,
}

/// The `ktls_offload` table.
#[derive(Debug, Deserialize)]
struct FileKtlsOffload {
    /// Relayed bytes before the kernel takes over; default 0 (unused).
    after_bytes: Option<Spanned<RawSize>>,
    /// Connection age before the kernel takes over; default 0 (unused).
    after: Option<Spanned<RawDuration>>,
}

/// A listener's `client_cert_header` table.
#[derive(Debug, Deserialize)]
struct FileCertHeader {
    /// `"rfc9440"` (default), `"xfcc"` or `"escaped-pem"`.
    format: Option<Spanned<String>>,
    /// Header name; default per format.
    name: Option<Spanned<String>>,
    /// Largest request head in bytes; default 64 KiB.
    max_head: Option<Spanned<i64>>,
}

/// A pool's `health_check` table.
#[derive(Debug, Deserialize)]
struct FileHealthCheck {
    /// Time between checks; default 2s.
    interval: Option<Spanned<RawDuration>>,
    /// Connect timeout; default 1s.
    timeout: Option<Spanned<RawDuration>>,
    /// Successes to become healthy; default 2.
    rise: Option<Spanned<i64>>,
    /// Failures to become unhealthy; default 3.
    fall: Option<Spanned<i64>>,
}

/// The TLS keys of a listener or route table as a [`RawTls`]; `$field`
/// names a key in that table.
macro_rules! raw_tls {
    ($loc:expr, $t:expr, $field:expr) => {{
        let (loc, t, field) = ($loc, $t, $field);
        RawTls {
            cert: t.cert.as_ref().map(|v| loc.path(v, field("cert"))),
            key: t.key.as_ref().map(|v| loc.path(v, field("key"))),
            client_auth: t
                .client_auth
                .as_ref()
                .map(|v| loc.at(v, field("client_auth"))),
            client_ca: t
                .client_ca
                .as_ref()
                .map(|v| loc.path(v, field("client_ca"))),
            alpn: t.alpn.as_ref().map(|v| loc.list(v, field("alpn"))),
            crl: t.crl.as_ref().map(|v| loc.list(v, field("crl"))),
            ocsp_staple: t
                .ocsp_staple
                .as_ref()
                .map(|v| loc.path(v, field("ocsp_staple"))),
            cert_password_file: t
                .cert_password_file
                .as_ref()
                .map(|v| loc.path(v, field("cert_password_file"))),
            cert_password_env: t
                .cert_password_env
                .as_ref()
                .map(|v| loc.at(v, field("cert_password_env"))),
            allow: t.allow.as_ref().map(|v| loc.list(v, field("allow"))),
            client_ocsp: t.client_ocsp.as_ref().map(|o| {
                let sub = |key: &str| field(&format!("client_ocsp.{key}"));
                let t = o.get_ref();
                RawOcsp {
                    site: Site {
                        location: loc.location(o.span()),
                        field: field("client_ocsp"),
                    },
                    mode: t.mode.as_ref().map(|v| loc.at(v, sub("mode"))),
                    responder: t.responder.as_ref().map(|v| loc.at(v, sub("responder"))),
                    timeout: t.timeout.as_ref().map(|v| loc.at(v, sub("timeout"))),
                    fail: t.fail.as_ref().map(|v| loc.at(v, sub("fail"))),
                    cache_ttl: t.cache_ttl.as_ref().map(|v| loc.at(v, sub("cache_ttl"))),
                }
            }),
            clients: t
                .clients
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    let table = field(&format!("clients[{j}]"));
                    let sub = |key: &str| format!("{table}.{key}");
                    let t = c.get_ref();
                    RawClient {
                        site: Site {
                            location: loc.location(c.span()),
                            field: table.clone(),
                        },
                        alias: t.alias.as_ref().map(|v| loc.at(v, sub("alias"))),
                        cert: t.cert.as_ref().map(|v| loc.path(v, sub("cert"))),
                        password_file: t
                            .password_file
                            .as_ref()
                            .map(|v| loc.path(v, sub("password_file"))),
                        password_env: t
                            .password_env
                            .as_ref()
                            .map(|v| loc.at(v, sub("password_env"))),
                    }
                })
                .collect(),
            tls_versions: t
                .tls_versions
                .as_ref()
                .map(|v| loc.list(v, field("tls_versions"))),
            cipher_suites: t
                .cipher_suites
                .as_ref()
                .map(|v| loc.list(v, field("cipher_suites"))),
        }
    }};
}

/// A list of strings, or one string standing for a list of one.
#[derive(Debug)]
enum StringList {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringList, E> {
                Ok(StringList::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(StringList::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration such as \"10s\" or \"1m30s\", or an integer number of seconds",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

/// 1-based line and column (in characters) of a byte offset in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    // A span can never split a character, but be safe rather than panic.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Turns spans into locations in one file.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn location(&self, span: Range<usize>) -> Location {
        let (line, column) = line_column(self.text, span.start);
        Location::File {
            path: self.path.to_path_buf(),
            line,
            column,
        }
    }

    fn at<T: Clone>(&self, v: &Spanned<T>, field: String) -> At<T> {
        At {
            value: v.get_ref().clone(),
            site: Site {
                location: self.location(v.span()),
                field,
            },
        }
    }

    fn path(&self, v: &Spanned<String>, field: String) -> At<PathBuf> {
        let At { value, site } = self.at(v, field);
        At {
            value: PathBuf::from(value),
            site,
        }
    }

    fn backend_tls(&self, v: &Spanned<FileBackendTls>, field: String) -> RawBackendTls {
        let t = v.get_ref();
        let f = |key: &str| format!("{field}.{key}");
        RawBackendTls {
            site: Site {
                location: self.location(v.span()),
                field: field.clone(),
            },
            ca: t.ca.as_ref().map(|v| self.path(v, f("ca"))),
            cert: t.cert.as_ref().map(|v| self.path(v, f("cert"))),
            key: t.key.as_ref().map(|v| self.path(v, f("key"))),
            cert_password_file: t
                .cert_password_file
                .as_ref()
                .map(|v| self.path(v, f("cert_password_file"))),
            cert_password_env: t
                .cert_password_env
                .as_ref()
                .map(|v| self.at(v, f("cert_password_env"))),
            server_name: t.server_name.as_ref().map(|v| self.at(v, f("server_name"))),
            verify: t.verify.as_ref().map(|v| self.at(v, f("verify"))),
            alpn: t.alpn.as_ref().map(|v| self.list(v, f("alpn"))),
            session_reuse: t
                .session_reuse
                .as_ref()
                .map(|v| self.at(v, f("session_reuse"))),
        }
    }

    fn list(&self, v: &Spanned<StringList>, field: String) -> RawList {
        let items = match v.get_ref() {
            // A lone string is its own item; report it under the field itself.
            StringList::One(s) => vec![At {
                value: s.clone(),
                site: Site {
                    location: self.location(v.span()),
                    field: field.clone(),
                },
            }],
            StringList::Many(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.at(item, format!("{field}[{i}]")))
                .collect(),
        };
        At {
            value: items,
            site: Site {
                location: self.location(v.span()),
                field,
            },
        }
    }
}

/// Parses config text read from `path` into a [`RawConfig`]. Relative paths
/// in it will resolve against `path`'s directory.
///
/// Unknown keys come back beside the configuration, one error each, so they
/// are reported together with every other problem.
pub(crate) fn parse(path: &Path, text: &str) -> Result<(RawConfig, Vec<ConfigError>), ConfigError> {
    let mut unknown_keys = Vec::new();
    let file: FileConfig = serde_ignored::deserialize(toml::Deserializer::new(text), |key| {
        unknown_keys.push(key.to_string());
    })
    .map_err(|e| parser_error(path, text, &e))?;
    let unknown = unknown_keys
        .iter()
        .map(|key| unknown_key_error(path, text, key))
        .collect();
    let loc = Locator { path, text };
    let f = |key: &str| Source::File.field(Scope::Top, key);

    let listeners = file
        .listener
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let field = |key: &str| Source::File.field(Scope::Listener(i), key);
            let inner = l.get_ref();
            let routes = inner
                .route
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    let field = |key: &str| Source::File.field(Scope::Route(i, j), key);
                    let route = r.get_ref();
                    RawRoute {
                        location: loc.location(r.span()),
                        name: route.name.as_ref().map(|v| loc.at(v, field("name"))),
                        server_names: route
                            .server_names
                            .as_ref()
                            .map(|v| loc.list(v, field("server_names"))),
                        tls: raw_tls!(&loc, route, &field),
                        backends: route
                            .backends
                            .as_ref()
                            .map(|v| loc.list(v, field("backends"))),
                        pool: route.pool.as_ref().map(|v| loc.at(v, field("pool"))),
                        backend_tls: route
                            .backend_tls
                            .as_ref()
                            .map(|v| loc.backend_tls(v, field("backend_tls"))),
                    }
                })
                .collect();
            RawListener {
                location: loc.location(l.span()),
                name: inner.name.as_ref().map(|v| loc.at(v, field("name"))),
                listen: inner.listen.as_ref().map(|v| loc.list(v, field("listen"))),
                backlog: inner.backlog.as_ref().map(|v| loc.at(v, field("backlog"))),
                tls: raw_tls!(&loc, inner, &field),
                proxy_protocol: inner
                    .proxy_protocol
                    .as_ref()
                    .map(|v| loc.at(v, field("proxy_protocol"))),
                proxy_protocol_cert_tlv: inner
                    .proxy_protocol_cert_tlv
                    .as_ref()
                    .map(|v| loc.at(v, field("proxy_protocol_cert_tlv"))),
                client_cert_header: inner.client_cert_header.as_ref().map(|h| {
                    let sub = |key: &str| field(&format!("client_cert_header.{key}"));
                    let t = h.get_ref();
                    RawCertHeader {
                        site: Site {
                            location: loc.location(h.span()),
                            field: field("client_cert_header"),
                        },
                        format: t.format.as_ref().map(|v| loc.at(v, sub("format"))),
                        name: t.name.as_ref().map(|v| loc.at(v, sub("name"))),
                        max_head: t.max_head.as_ref().map(|v| loc.at(v, sub("max_head"))),
                    }
                }),
                backends: inner
                    .backends
                    .as_ref()
                    .map(|v| loc.list(v, field("backends"))),
                pool: inner.pool.as_ref().map(|v| loc.at(v, field("pool"))),
                backend_tls: inner
                    .backend_tls
                    .as_ref()
                    .map(|v| loc.backend_tls(v, field("backend_tls"))),
                routes,
            }
        })
        .collect();

    let pools = file
        .pool
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let field = |key: &str| Source::File.field(Scope::Pool(i), key);
            let inner = p.get_ref();
            RawPool {
                location: loc.location(p.span()),
                name: inner.name.as_ref().map(|v| loc.at(v, field("name"))),
                balance: inner.balance.as_ref().map(|v| loc.at(v, field("balance"))),
                backends: inner.backends.as_ref().map(|list| At {
                    value: list
                        .get_ref()
                        .iter()
                        .enumerate()
                        .map(|(j, b)| {
                            let field = |key: &str| format!("{}[{j}]{key}", field("backends"));
                            match b.get_ref() {
                                FilePoolBackend::Address(a) => RawPoolBackend {
                                    location: loc.location(b.span()),
                                    address: Some(At {
                                        value: a.clone(),
                                        site: Site {
                                            location: loc.location(b.span()),
                                            field: field(""),
                                        },
                                    }),
                                    weight: None,
                                    max_connections: None,
                                },
                                FilePoolBackend::Table(t) => RawPoolBackend {
                                    location: loc.location(b.span()),
                                    address: t
                                        .address
                                        .as_ref()
                                        .map(|v| loc.at(v, field(".address"))),
                                    weight: t.weight.as_ref().map(|v| loc.at(v, field(".weight"))),
                                    max_connections: t
                                        .max_connections
                                        .as_ref()
                                        .map(|v| loc.at(v, field(".max_connections"))),
                                },
                            }
                        })
                        .collect(),
                    site: Site {
                        location: loc.location(list.span()),
                        field: field("backends"),
                    },
                }),
                health_check: inner.health_check.as_ref().map(|h| {
                    let field = |key: &str| format!("{}.{key}", field("health_check"));
                    let h = h.get_ref();
                    RawHealthCheck {
                        interval: h.interval.as_ref().map(|v| loc.at(v, field("interval"))),
                        timeout: h.timeout.as_ref().map(|v| loc.at(v, field("timeout"))),
                        rise: h.rise.as_ref().map(|v| loc.at(v, field("rise"))),
                        fall: h.fall.as_ref().map(|v| loc.at(v, field("fall"))),
                    }
                }),
                eject_after: inner
                    .eject_after
                    .as_ref()
                    .map(|v| loc.at(v, field("eject_after"))),
                eject_for: inner
                    .eject_for
                    .as_ref()
                    .map(|v| loc.at(v, field("eject_for"))),
                backend_tls: inner
                    .backend_tls
                    .as_ref()
                    .map(|v| loc.backend_tls(v, field("backend_tls"))),
            }
        })
        .collect();

    let tiers = file
        .tier
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let field = |key: &str| format!("tier[{i}].{key}");
            let inner = t.get_ref();
            RawTier {
                location: loc.location(t.span()),
                field: format!("tier[{i}]"),
                name: inner.name.as_ref().map(|v| loc.at(v, field("name"))),
                clients: inner
                    .clients
                    .as_ref()
                    .map(|v| loc.list(v, field("clients"))),
                new_connections_per_second: inner
                    .new_connections_per_second
                    .as_ref()
                    .map(|v| loc.at(v, field("new_connections_per_second"))),
                burst: inner.burst.as_ref().map(|v| loc.at(v, field("burst"))),
                max_connections: inner
                    .max_connections
                    .as_ref()
                    .map(|v| loc.at(v, field("max_connections"))),
                bytes_per_second: inner
                    .bytes_per_second
                    .as_ref()
                    .map(|v| loc.at(v, field("bytes_per_second"))),
            }
        })
        .collect();

    let offload = file.ktls_offload.as_ref().map(|t| t.get_ref());
    let raw = RawConfig {
        source: Source::File,
        path: Some(path.to_path_buf()),
        base_dir: Some(path.parent().unwrap_or(Path::new("")).to_path_buf()),
        origin: loc.location(0..0),
        workers: file.workers.as_ref().map(|v| loc.at(v, f("workers"))),
        handshake_timeout: file
            .handshake_timeout
            .as_ref()
            .map(|v| loc.at(v, f("handshake_timeout"))),
        idle_timeout: file
            .idle_timeout
            .as_ref()
            .map(|v| loc.at(v, f("idle_timeout"))),
        connect_timeout: file
            .connect_timeout
            .as_ref()
            .map(|v| loc.at(v, f("connect_timeout"))),
        drain_timeout: file
            .drain_timeout
            .as_ref()
            .map(|v| loc.at(v, f("drain_timeout"))),
        max_connections: file
            .max_connections
            .as_ref()
            .map(|v| loc.at(v, f("max_connections"))),
        max_handshakes: file
            .max_handshakes
            .as_ref()
            .map(|v| loc.at(v, f("max_handshakes"))),
        ktls: file.ktls.as_ref().map(|v| loc.at(v, f("ktls"))),
        admin: file.admin.as_ref().map(|v| loc.at(v, f("admin"))),
        access_log_format: file
            .access_log
            .as_ref()
            .and_then(|a| a.get_ref().format.as_ref())
            .map(|v| loc.at(v, f("access_log.format"))),
        ticket_keys: file
            .ticket_keys
            .as_ref()
            .map(|v| loc.at(v, f("ticket_keys"))),
        ticket_lifetime: file
            .ticket_lifetime
            .as_ref()
            .map(|v| loc.at(v, f("ticket_lifetime"))),
        ktls_offload_after_bytes: offload
            .and_then(|t| t.after_bytes.as_ref())
            .map(|v| loc.at(v, f("ktls_offload.after_bytes"))),
        ktls_offload_after: offload
            .and_then(|t| t.after.as_ref())
            .map(|v| loc.at(v, f("ktls_offload.after"))),
        listeners,
        pools,
        default_tier: file
            .default_tier
            .as_ref()
            .map(|v| loc.at(v, f("default_tier"))),
        tiers,
    };
    Ok((raw, unknown))
}

/// Keys of the top level, for "expected one of" hints.
const TOP_LEVEL_KEYS: &[&str] = &[
    "workers",
    "handshake_timeout",
    "idle_timeout",
    "connect_timeout",
    "drain_timeout",
    "max_connections",
    "max_handshakes",
    "ktls",
    "ktls_offload",
    "admin",
    "access_log",
    "ticket_keys",
    "ticket_lifetime",
    "listener",
    "pool",
    "default_tier",
    "tier",
];

/// Keys of a `[[tier]]` table.
const TIER_KEYS: &[&str] = &[
    "name",
    "clients",
    "new_connections_per_second",
    "burst",
    "max_connections",
    "bytes_per_second",
];

/// Keys of a `[[listener]]` table.
const LISTENER_KEYS: &[&str] = &[
    "name",
    "listen",
    "backlog",
    "cert",
    "key",
    "client_auth",
    "client_ca",
    "alpn",
    "tls_versions",
    "cipher_suites",
    "backends",
    "pool",
    "crl",
    "allow",
    "cert_password_file",
    "cert_password_env",
    "ocsp_staple",
    "proxy_protocol",
    "proxy_protocol_cert_tlv",
    "client_cert_header",
    "client_ocsp",
    "clients",
    "route",
    "backend_tls",
];

/// Keys of a `[[listener.route]]` table.
const ROUTE_KEYS: &[&str] = &[
    "name",
    "server_names",
    "cert",
    "key",
    "client_auth",
    "client_ca",
    "alpn",
    "tls_versions",
    "cipher_suites",
    "backends",
    "pool",
    "crl",
    "allow",
    "cert_password_file",
    "cert_password_env",
    "ocsp_staple",
    "client_ocsp",
    "clients",
    "backend_tls",
];

/// Keys of the `access_log` table.
const ACCESS_LOG_KEYS: &[&str] = &["format"];

/// Keys of the `ktls_offload` table.
const KTLS_OFFLOAD_KEYS: &[&str] = &["after_bytes", "after"];

/// Keys of a listener's `client_cert_header` table.
const CERT_HEADER_KEYS: &[&str] = &["format", "name", "max_head"];

/// Keys of a `client_ocsp` table.
const CLIENT_OCSP_KEYS: &[&str] = &["mode", "responder", "timeout", "fail", "cache_ttl"];

/// Keys of a `[[listener.clients]]` table.
const CLIENT_KEYS: &[&str] = &["alias", "cert", "password_file", "password_env"];

/// Keys of a `[[pool]]` table.
const POOL_KEYS: &[&str] = &[
    "name",
    "balance",
    "backends",
    "health_check",
    "eject_after",
    "eject_for",
    "backend_tls",
];

/// Keys of a `backend_tls` table.
const BACKEND_TLS_KEYS: &[&str] = &[
    "ca",
    "cert",
    "key",
    "cert_password_file",
    "cert_password_env",
    "server_name",
    "verify",
    "alpn",
    "session_reuse",
];

/// Keys of a pool's `health_check` table.
const HEALTH_CHECK_KEYS: &[&str] = &["interval", "timeout", "rise", "fall"];

/// Keys of a pool backend written as a table.
const POOL_BACKEND_KEYS: &[&str] = &["address", "weight", "max_connections"];

/// An error for a key the schema does not have. `key` is serde_ignored's
/// path (`tls_versoin`, `listener.0.route.1.tls_versoin`); its position is
/// found in the text: the key's line inside the right table, or the line
/// of the inline table holding it.
fn unknown_key_error(path: &Path, text: &str, key: &str) -> ConfigError {
    // Spanned values add a private path segment of their own, and
    // optional values a `?`.
    let parts: Vec<&str> = key
        .split('.')
        .filter(|p| !p.starts_with("$__") && *p != "?")
        .collect();
    // (table path, key, keys known there, key of the inline table holding it)
    let (table, name, known, holder) = match parts.as_slice() {
        ["listener", i, "route", j, "client_ocsp", name] => (
            format!("listener[{i}].route[{j}]"),
            *name,
            CLIENT_OCSP_KEYS,
            Some("client_ocsp"),
        ),
        ["listener", i, "route", j, "clients", k, name] => (
            format!("listener[{i}].route[{j}].clients[{k}]"),
            *name,
            CLIENT_KEYS,
            None,
        ),
        ["listener", i, "route", j, "backend_tls", name] => (
            format!("listener[{i}].route[{j}]"),
            *name,
            BACKEND_TLS_KEYS,
            Some("backend_tls"),
        ),
        ["listener", i, "route", j, name] => {
            (format!("listener[{i}].route[{j}]"), *name, ROUTE_KEYS, None)
        }
        ["listener", i, "client_ocsp", name] => (
            format!("listener[{i}]"),
            *name,
            CLIENT_OCSP_KEYS,
            Some("client_ocsp"),
        ),
        ["listener", i, "client_cert_header", name] => (
            format!("listener[{i}]"),
            *name,
            CERT_HEADER_KEYS,
            Some("client_cert_header"),
        ),
        ["listener", i, "backend_tls", name] => (
            format!("listener[{i}]"),
            *name,
            BACKEND_TLS_KEYS,
            Some("backend_tls"),
        ),
        ["listener", i, "clients", j, name] => (
            format!("listener[{i}].clients[{j}]"),
            *name,
            CLIENT_KEYS,
            None,
        ),
        ["listener", i, name] => (format!("listener[{i}]"), *name, LISTENER_KEYS, None),
        ["pool", i, "health_check", name] => (
            format!("pool[{i}]"),
            *name,
            HEALTH_CHECK_KEYS,
            Some("health_check"),
        ),
        ["pool", i, "backends", j, name] => (
            format!("pool[{i}].backends[{j}]"),
            *name,
            POOL_BACKEND_KEYS,
            Some("backends"),
        ),
        ["pool", i, "backend_tls", name] => (
            format!("pool[{i}]"),
            *name,
            BACKEND_TLS_KEYS,
            Some("backend_tls"),
        ),
        ["pool", i, name] => (format!("pool[{i}]"), *name, POOL_KEYS, None),
        ["tier", i, name] => (format!("tier[{i}]"), *name, TIER_KEYS, None),
        ["access_log", name] => (String::new(), *name, ACCESS_LOG_KEYS, Some("access_log")),
        ["ktls_offload", name] => (
            String::new(),
            *name,
            KTLS_OFFLOAD_KEYS,
            Some("ktls_offload"),
        ),
        _ => (String::new(), key, TOP_LEVEL_KEYS, None),
    };
    let field = match (table.as_str(), holder) {
        ("", Some(inline)) => format!("{inline}.{name}"),
        ("", None) => name.to_string(),
        (
            t,
            Some(inline @ ("health_check" | "client_ocsp" | "client_cert_header" | "backend_tls")),
        ) => {
            format!("{t}.{inline}.{name}")
        }
        (t, _) => format!("{t}.{name}"),
    };
    // A pool backend's section is its pool's.
    let section = table.split(".backends[").next().unwrap_or("");
    let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
    let offset = locate_key(text, section, name)
        .or_else(|| holder.and_then(|h| locate_key(text, section, h)))
        .unwrap_or(0);
    let (line, column) = line_column(text, offset);
    // TOML puts a key written after a table header into that table.
    let hint = if !table.is_empty() && TOP_LEVEL_KEYS.contains(&name) {
        format!("; `{name}` is a top-level key: write it above the first [[table]]")
    } else {
        String::new()
    };
    ConfigError {
        location: Location::File {
            path: path.to_path_buf(),
            line,
            column,
        },
        field,
        message: format!(
            "unknown field `{name}`, expected one of {}{hint}",
            expected.join(", ")
        ),
    }
}

/// Names the table each header line opens, as a field path:
/// `[[listener]]` -> `listener[1]`, then `[[listener.route]]` ->
/// `listener[1].route[0]` (route indices restart in each listener).
#[derive(Default)]
struct Headers {
    /// Entries seen of each array of tables, by dotted header name, since
    /// its parent's current entry began.
    counts: std::collections::HashMap<String, usize>,
}

impl Headers {
    /// The path of the table a trimmed line opens, if it is a header
    /// (even a malformed one such as `[[listener]`).
    fn visit(&mut self, line: &str) -> Option<String> {
        let (name, array) = match line.strip_prefix("[[") {
            Some(rest) => (header_name(rest)?, true),
            None => (header_name(line.strip_prefix('[')?)?, false),
        };
        if array {
            *self.counts.entry(name.to_string()).or_insert(0) += 1;
            let children = format!("{name}.");
            self.counts.retain(|k, _| !k.starts_with(&children));
        }
        let mut path = String::new();
        let mut prefix = String::new();
        for segment in name.split('.') {
            if !prefix.is_empty() {
                prefix.push('.');
                path.push('.');
            }
            prefix.push_str(segment);
            path.push_str(segment);
            if let Some(n) = self.counts.get(&prefix) {
                path.push_str(&format!("[{}]", n - 1));
            }
        }
        Some(path)
    }
}

/// Byte offset of the line assigning `key` in the table `section` (a path
/// as [`Headers`] names it; empty for the top level).
fn locate_key(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut offset = 0;
    let mut current = String::new();
    let mut headers = Headers::default();
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if let Some(path) = headers.visit(t) {
            current = path;
        } else if current == section && key_of(t) == Some(key) {
            return Some(offset + (line.len() - line.trim_start().len()));
        }
        offset += line.len();
    }
    None
}

/// Converts the parser's single error (syntax, type, unknown key) into a
/// [`ConfigError`] at its position.
fn parser_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map_or(0, |s| s.start);
    let (line, column) = line_column(text, offset);
    let field = field_at(text, offset)
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| "(syntax)".to_string());
    // The parser's messages may span lines; one problem, one line.
    let mut message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if message.is_empty() {
        // The parser names no reason for some bytes (control characters).
        message = match text.get(offset..).and_then(|t| t.chars().next()) {
            Some(c) if c.is_control() => {
                format!(
                    "control character U+{:04X} is not allowed here",
                    u32::from(c)
                )
            }
            _ => "invalid TOML syntax".to_string(),
        };
    }
    if field == "listener" && message.contains("expected a sequence") {
        message.push_str("; write each listener as a [[listener]] table (double brackets)");
    }
    ConfigError {
        location: Location::File {
            path: path.to_path_buf(),
            line,
            column,
        },
        field,
        message,
    }
}

/// Best guess at the dotted field an error offset falls in, from the text
/// alone: the parser's error does not say, and the document may not even be
/// valid TOML. Uses the nearest table header above (counting `[[listener]]`
/// headers for the index) and the key of the line holding the offset, or
/// of the `key = [` line opening a multi-line array around it.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let (line_no, _) = line_column(text, offset);
    let lines: Vec<&str> = text.lines().collect();
    let error_line = lines.get(line_no - 1).copied().unwrap_or("");

    // The enclosing table, and how many times each array-of-tables header
    // appeared up to it.
    let mut table: Option<String> = None;
    let mut headers = Headers::default();
    let mut key_line: Option<&str> = None;
    for line in lines.iter().take(line_no) {
        let t = line.trim();
        if t.starts_with('[') {
            table = headers.visit(t);
            key_line = None;
        } else if key_of(t).is_some() {
            key_line = Some(t);
        }
    }
    if error_line.trim_start().starts_with('[') {
        // The error is in a header itself.
        return table;
    }
    let key = key_of(error_line.trim()).or_else(|| key_line.and_then(key_of));
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k.to_string()),
        (t, None) => t,
    }
}

/// Characters of a bare (possibly dotted) TOML key.
fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'
}

/// The key of a `key = value` line, if it looks like one.
fn key_of(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && key.chars().all(is_key_char)).then_some(key)
}

/// The name in a table header after its opening bracket(s), even when the
/// header is malformed (`[[listener]`), if it looks like a key.
fn header_name(rest: &str) -> Option<&str> {
    let name = rest.split(']').next()?.trim();
    (!name.is_empty() && name.chars().all(is_key_char)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // Columns count characters, not bytes: "é" is two bytes.
        assert_eq!(line_column(text, 10), (2, 4));
        assert_eq!(line_column(text, 999), (3, 1));
    }

    #[test]
    fn field_guess() {
        let text =
            "workers = x\n[[listener]]\nname = 1\n[[listener]]\nbogus = 2\nalpn = [\n  3,\n]\n";
        let at = |needle: &str| field_at(text, text.find(needle).unwrap());
        assert_eq!(at("x").as_deref(), Some("workers"));
        assert_eq!(at("1").as_deref(), Some("listener[0].name"));
        assert_eq!(at("bogus").as_deref(), Some("listener[1].bogus"));
        assert_eq!(at("3").as_deref(), Some("listener[1].alpn"));
        let broken = "[[listener]\n";
        assert_eq!(field_at(broken, 11).as_deref(), Some("listener[0]"));
    }

    /// Each error's field and line.
    fn fields_and_lines(errors: &[ConfigError]) -> Vec<(String, usize)> {
        errors
            .iter()
            .map(|e| match &e.location {
                Location::File { line, .. } => (e.field.clone(), *line),
                Location::Flag => (e.field.clone(), 0),
            })
            .collect()
    }

    #[test]
    fn unknown_keys_are_each_located() {
        let text = "workers = 2\nbogus = 1\n[[listener]]\nname = \"a\"\n[[listener]]\ncert = \"x\"\ntls_versoin = \"1.3\"\n";
        let (_, unknown) = parse(Path::new("x.toml"), text).unwrap();
        let got = fields_and_lines(&unknown);
        assert_eq!(
            got,
            vec![
                ("bogus".to_string(), 2),
                ("listener[1].tls_versoin".to_string(), 7)
            ]
        );
    }

    #[test]
    fn unknown_keys_in_routes_and_pools_are_located() {
        let text = "[[listener]]\n[[listener.route]]\nname = \"a\"\n[[listener]]\n[[listener.route]]\n[[listener.route]]\nsever_names = []\n[[pool]]\nname = \"p\"\nhealth_check = { interval = \"1s\", rsie = 2 }\nbackends = [\"a:1\", { address = \"b:2\", wieght = 2 }]\nbalanse = \"hash\"\n";
        let (raw, unknown) = parse(Path::new("x.toml"), text).unwrap();
        let got = fields_and_lines(&unknown);
        assert_eq!(
            got,
            vec![
                ("listener[1].route[1].sever_names".to_string(), 7),
                ("pool[0].health_check.rsie".to_string(), 10),
                ("pool[0].backends[1].wieght".to_string(), 11),
                ("pool[0].balanse".to_string(), 12),
            ]
        );
        assert!(
            unknown[0].message.contains("`server_names`"),
            "{}",
            unknown[0].message
        );
        assert_eq!(raw.listeners[1].routes.len(), 2);
        let backends = &raw.pools[0].backends.as_ref().unwrap().value;
        assert_eq!(backends[0].address.as_ref().unwrap().value, "a:1");
        assert_eq!(
            backends[1].address.as_ref().unwrap().site.field,
            "pool[0].backends[1].address"
        );
    }

    #[test]
    fn parser_errors_name_route_tables() {
        let text = "[[listener]]\n[[listener]]\n[[listener.route]]\n[[listener.route]]\nname = 1\n";
        let at = field_at(text, text.find('1').unwrap());
        assert_eq!(at.as_deref(), Some("listener[1].route[1].name"));
    }

    #[test]
    fn spans_of_listeners_and_items() {
        let text = "[[listener]]\nlisten = [\"a\", \"b\"]\nbackends = \"c\"\n";
        let (raw, unknown) = parse(Path::new("x.toml"), text).unwrap();
        assert!(unknown.is_empty());
        let l = &raw.listeners[0];
        assert_eq!(
            l.location,
            Location::File {
                path: "x.toml".into(),
                line: 1,
                column: 1
            }
        );
        let listen = l.listen.as_ref().unwrap();
        assert_eq!(listen.value[1].site.field, "listener[0].listen[1]");
        assert_eq!(
            listen.value[1].site.location,
            Location::File {
                path: "x.toml".into(),
                line: 2,
                column: 16
            }
        );
        let backends = l.backends.as_ref().unwrap();
        assert_eq!(backends.value[0].value, "c");
        assert_eq!(backends.value[0].site.field, "listener[0].backends");
    }
}
