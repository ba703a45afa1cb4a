//! SNI routes: which of a listener's routes serves a ClientHello.
//!
//! Sans-IO: [`RouteTable::select`] looks only at the parsed ClientHello.
//! The runtime turns the answer into a `ServerConfig` (each route has its
//! own certificate and client policy) or into a refusal with the alert
//! [`NoRoute::alert`] names.

use std::fmt;

use rustls::AlertDescription;

use crate::tls::client_hello::ClientHello;

/// A server name a route serves: exact (`api.example.com`) or a wildcard
/// of one label (`*.example.com` serves `a.example.com`, neither
/// `example.com` nor `a.b.example.com`). Compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerNamePattern {
    /// The name itself, lower-cased.
    Exact(String),
    /// The suffix after `*`, lower-cased, with its leading dot.
    Wildcard(String),
}

/// Why a `server_names` entry is not a usable pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Not a DNS name (empty label, bad character, too long).
    #[error(
        "{0:?} is not a DNS name (letters, digits, '-' and '.'; labels of 1 to 63 characters)"
    )]
    NotDnsName(String),
    /// A `*` anywhere but as the whole first label.
    #[error("{0:?}: a wildcard must be the whole first label, as in \"*.example.com\"")]
    BadWildcard(String),
}

impl ServerNamePattern {
    /// Parses `api.example.com` or `*.example.com` (a trailing dot is
    /// dropped, case is ignored).
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let name = text.trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, rest) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name.as_str()),
        };
        if rest.contains('*') {
            return Err(PatternError::BadWildcard(text.to_string()));
        }
        let valid = !rest.is_empty()
            && rest.len() <= 253
            && rest.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(PatternError::NotDnsName(text.to_string()));
        }
        Ok(if wildcard {
            Self::Wildcard(format!(".{rest}"))
        } else {
            Self::Exact(rest.to_string())
        })
    }

    /// Whether `name` (lower-cased, as the ClientHello parser gives it) is served.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => name == exact,
            Self::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }

    fn is_exact(&self) -> bool {
        matches!(self, Self::Exact(_))
    }
}

impl fmt::Display for ServerNamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// What one route matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// Name in refusal reasons.
    pub name: String,
    /// Server names the route serves.
    pub server_names: Vec<ServerNamePattern>,
    /// When not empty, the client must offer one of these ALPN protocols.
    pub alpn: Vec<Vec<u8>>,
}

/// The routes of one listener, and whether it has a default route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<RouteMatch>,
    has_default: bool,
}

/// The route a ClientHello gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    /// The route at this index of the table.
    Route(usize),
    /// The listener's default route.
    Default,
}

/// Why no route serves a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    /// No SNI, and no default route.
    #[error("client sent no server name and the listener has no default route")]
    NoServerName,
    /// No route serves the name, and no default route.
    #[error("no route for server name {0:?}")]
    UnknownName(String),
    /// Routes serve the name, but the client offers none of their ALPN
    /// protocols (and there is no default route).
    #[error("route {route} serves {name:?}, but the client offers none of its ALPN protocols")]
    NoProtocol {
        /// The server name asked for.
        name: String,
        /// The first route serving it.
        route: String,
    },
}

impl NoRoute {
    /// The TLS alert the client gets.
    pub fn alert(&self) -> AlertDescription {
        match self {
            Self::NoServerName | Self::UnknownName(_) => AlertDescription::UnrecognisedName,
            Self::NoProtocol { .. } => AlertDescription::NoApplicationProtocol,
        }
    }
}

impl RouteTable {
    /// A table of `routes`, tried in order, and an optional default route.
    pub fn new(routes: Vec<RouteMatch>, has_default: bool) -> Self {
        Self {
            routes,
            has_default,
        }
    }

    /// The route serving `hello`.
    ///
    /// Exact names win over wildcards, whatever the order of the routes;
    /// among routes matching the same way the first one listed wins. A
    /// route with ALPN protocols serves only clients offering one of them.
    /// Anything else goes to the default route, or is refused.
    pub fn select(&self, hello: &ClientHello) -> Result<Selected, NoRoute> {
        let Some(name) = hello.server_name.as_deref() else {
            return self.fallback(NoRoute::NoServerName);
        };
        let mut name_matched: Option<&RouteMatch> = None;
        for exact in [true, false] {
            for (i, route) in self.routes.iter().enumerate() {
                let hit = route
                    .server_names
                    .iter()
                    .any(|p| p.is_exact() == exact && p.matches(name));
                if !hit {
                    continue;
                }
                if route.alpn.is_empty() || route.alpn.iter().any(|p| hello.alpn.contains(p)) {
                    return Ok(Selected::Route(i));
                }
                name_matched.get_or_insert(route);
            }
        }
        self.fallback(match name_matched {
            Some(route) => NoRoute::NoProtocol {
                name: name.to_string(),
                route: route.name.clone(),
            },
            None => NoRoute::UnknownName(name.to_string()),
        })
    }

    fn fallback(&self, refusal: NoRoute) -> Result<Selected, NoRoute> {
        if self.has_default {
            Ok(Selected::Default)
        } else {
            Err(refusal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> ServerNamePattern {
        ServerNamePattern::parse(s).unwrap()
    }

    fn route(name: &str, names: &[&str], alpn: &[&str]) -> RouteMatch {
        RouteMatch {
            name: name.into(),
            server_names: names.iter().map(|n| pattern(n)).collect(),
            alpn: alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
        }
    }

    fn hello(sni: Option<&str>, alpn: &[&str]) -> ClientHello {
        ClientHello {
            server_name: sni.map(str::to_string),
            alpn: alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
            ..ClientHello::default()
        }
    }

    #[test]
    fn patterns_parse_and_match_case_insensitively() {
        assert_eq!(
            pattern("API.Example.com."),
            ServerNamePattern::Exact("api.example.com".into())
        );
        let w = pattern("*.Example.COM");
        assert_eq!(w.to_string(), "*.example.com");
        assert!(w.matches("a.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("a.b.example.com"));
        assert!(!w.matches("aexample.com"));
        for bad in [
            "",
            "*",
            "a.*.com",
            "*a.example.com",
            "a..b",
            "a b.com",
            "**.x",
        ] {
            assert!(ServerNamePattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exact_beats_wildcard_and_first_listed_wins() {
        let table = RouteTable::new(
            vec![
                route("wild", &["*.example.com"], &[]),
                route("api", &["api.example.com"], &[]),
                route("api2", &["api.example.com"], &[]),
            ],
            false,
        );
        let pick = |sni| table.select(&hello(Some(sni), &[]));
        assert_eq!(pick("api.example.com"), Ok(Selected::Route(1)));
        assert_eq!(pick("www.example.com"), Ok(Selected::Route(0)));
        assert_eq!(
            pick("example.org"),
            Err(NoRoute::UnknownName("example.org".into()))
        );
        assert_eq!(table.select(&hello(None, &[])), Err(NoRoute::NoServerName));
        assert_eq!(
            NoRoute::NoServerName.alert(),
            AlertDescription::UnrecognisedName
        );
    }

    #[test]
    fn alpn_selects_among_routes_of_one_name() {
        let table = RouteTable::new(
            vec![
                route("grpc", &["api.example.com"], &["h2"]),
                route("legacy", &["api.example.com"], &["http/1.1"]),
            ],
            false,
        );
        let pick = |alpn: &[&str]| table.select(&hello(Some("api.example.com"), alpn));
        assert_eq!(pick(&["h2", "http/1.1"]), Ok(Selected::Route(0)));
        assert_eq!(pick(&["http/1.1"]), Ok(Selected::Route(1)));
        let refused = pick(&["smtp"]).unwrap_err();
        assert_eq!(refused.alert(), AlertDescription::NoApplicationProtocol);
        assert!(refused.to_string().contains("route grpc"), "{refused}");
    }

    #[test]
    fn default_route_takes_what_no_route_serves() {
        let table = RouteTable::new(vec![route("api", &["api.example.com"], &["h2"])], true);
        assert_eq!(
            table.select(&hello(Some("api.example.com"), &["h2"])),
            Ok(Selected::Route(0))
        );
        for h in [
            hello(None, &[]),
            hello(Some("other.example.com"), &[]),
            hello(Some("api.example.com"), &["http/1.1"]),
        ] {
            assert_eq!(table.select(&h), Ok(Selected::Default), "{h:?}");
        }
    }
}
