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
//! ```
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

use super::validate::{At, RawConfig, RawDuration, RawList, RawListener, Site, Source};
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
    /// Admin listener address; default none.
    admin: Option<Spanned<String>>,
    /// `[[listener]]` tables; at least one.
    #[serde(default)]
    listener: Vec<Spanned<FileListener>>,
}

/// One `[[listener]]` table.
#[derive(Debug, Deserialize)]
struct FileListener {
    /// Name in logs and metrics; default `listener<N>`.
    name: Option<Spanned<String>>,
    /// Socket addresses; required.
    listen: Option<Spanned<StringList>>,
    /// Accept backlog; default 1024.
    backlog: Option<Spanned<i64>>,
    /// Server certificate chain file; required.
    cert: Option<Spanned<String>>,
    /// Server private key file; required.
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
    /// Backends as `host:port`; required.
    backends: Option<Spanned<StringList>>,
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
    /// PROXY protocol to backends: "v1", "v2" or "off"; default off.
    proxy_protocol: Option<Spanned<String>>,
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
    let f = |key: &str| Source::File.field(None, key);

    let listeners = file
        .listener
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let field = |key: &str| Source::File.field(Some(i), key);
            let inner = l.get_ref();
            RawListener {
                location: loc.location(l.span()),
                name: inner.name.as_ref().map(|v| loc.at(v, field("name"))),
                listen: inner.listen.as_ref().map(|v| loc.list(v, field("listen"))),
                backlog: inner.backlog.as_ref().map(|v| loc.at(v, field("backlog"))),
                cert: inner.cert.as_ref().map(|v| loc.path(v, field("cert"))),
                key: inner.key.as_ref().map(|v| loc.path(v, field("key"))),
                client_auth: inner
                    .client_auth
                    .as_ref()
                    .map(|v| loc.at(v, field("client_auth"))),
                client_ca: inner
                    .client_ca
                    .as_ref()
                    .map(|v| loc.path(v, field("client_ca"))),
                alpn: inner.alpn.as_ref().map(|v| loc.list(v, field("alpn"))),
                crl: inner.crl.as_ref().map(|v| loc.list(v, field("crl"))),
                ocsp_staple: inner
                    .ocsp_staple
                    .as_ref()
                    .map(|v| loc.path(v, field("ocsp_staple"))),
                cert_password_file: inner
                    .cert_password_file
                    .as_ref()
                    .map(|v| loc.path(v, field("cert_password_file"))),
                cert_password_env: inner
                    .cert_password_env
                    .as_ref()
                    .map(|v| loc.at(v, field("cert_password_env"))),
                allow: inner.allow.as_ref().map(|v| loc.list(v, field("allow"))),
                proxy_protocol: inner
                    .proxy_protocol
                    .as_ref()
                    .map(|v| loc.at(v, field("proxy_protocol"))),
                tls_versions: inner
                    .tls_versions
                    .as_ref()
                    .map(|v| loc.list(v, field("tls_versions"))),
                cipher_suites: inner
                    .cipher_suites
                    .as_ref()
                    .map(|v| loc.list(v, field("cipher_suites"))),
                backends: inner
                    .backends
                    .as_ref()
                    .map(|v| loc.list(v, field("backends"))),
            }
        })
        .collect();

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
        listeners,
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
    "admin",
    "listener",
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
    "crl",
    "allow",
    "cert_password_file",
    "cert_password_env",
    "ocsp_staple",
    "proxy_protocol",
];

/// An error for a key the schema does not have. `key` is serde_ignored's
/// path (`tls_versoin`, `listener.0.tls_versoin`); its position is found in
/// the text: the key's line inside the right table.
fn unknown_key_error(path: &Path, text: &str, key: &str) -> ConfigError {
    // Spanned values add a private path segment of their own.
    let parts: Vec<&str> = key.split('.').filter(|p| !p.starts_with("$__")).collect();
    let (table, name, field, known) = match parts.as_slice() {
        [table, index, name] => {
            let index: usize = index.parse().unwrap_or(0);
            let field = format!("{table}[{index}].{name}");
            (Some((*table, index)), *name, field, LISTENER_KEYS)
        }
        _ => (None, key, key.to_string(), TOP_LEVEL_KEYS),
    };
    let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
    let offset = locate_key(text, table, name).unwrap_or(0);
    let (line, column) = line_column(text, offset);
    ConfigError {
        location: Location::File {
            path: path.to_path_buf(),
            line,
            column,
        },
        field,
        message: format!(
            "unknown field `{name}`, expected one of {}",
            expected.join(", ")
        ),
    }
}

/// Byte offset of the line assigning `key`, at top level (`table` None) or
/// inside the `index`-th `[[table]]`.
fn locate_key(text: &str, table: Option<(&str, usize)>, key: &str) -> Option<usize> {
    let mut offset = 0;
    let mut current: Option<(String, usize)> = None;
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(header_name) {
            let n = seen.entry(name.to_string()).or_insert(0);
            current = Some((name.to_string(), *n));
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(header_name) {
            current = Some((name.to_string(), usize::MAX));
        } else if key_of(t) == Some(key) && current.as_ref().map(|(n, i)| (n.as_str(), *i)) == table
        {
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
    let field = field_at(text, offset).unwrap_or_else(|| "(syntax)".to_string());
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
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut key_line: Option<&str> = None;
    for line in lines.iter().take(line_no) {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[") {
            table = header_name(name).map(|name| {
                let n = seen.entry(name.to_string()).or_insert(0);
                *n += 1;
                format!("{name}[{}]", *n - 1)
            });
            key_line = None;
        } else if let Some(name) = t.strip_prefix('[') {
            table = header_name(name).map(str::to_string);
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

    #[test]
    fn unknown_keys_are_each_located() {
        let text = "workers = 2\nbogus = 1\n[[listener]]\nname = \"a\"\n[[listener]]\ncert = \"x\"\ntls_versoin = \"1.3\"\n";
        let (_, unknown) = parse(Path::new("x.toml"), text).unwrap();
        let got: Vec<(String, usize)> = unknown
            .iter()
            .map(|e| match &e.location {
                Location::File { line, .. } => (e.field.clone(), *line),
                Location::Flag => (e.field.clone(), 0),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("bogus".to_string(), 2),
                ("listener[1].tls_versoin".to_string(), 7)
            ]
        );
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
