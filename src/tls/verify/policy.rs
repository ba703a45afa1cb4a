//! The allowlist: which verified client certificates are admitted, and the
//! identity each one is known by afterwards.
//!
//! The policy runs after the chain has verified, on the end-entity
//! certificate alone. Entries are tried in order and the first match names
//! the client; an empty allowlist admits every verified chain. Everything
//! here is a pure function of the policy and the certificate bytes, so a
//! connection can learn its client's identity after the handshake with
//! [`identify`] on `peer_certificates()`, without the verifier keeping any
//! per-connection state.

use std::cell::OnceCell;
use std::fmt;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use super::glob::{Glob, Syntax};
use crate::tls::certs::{cert_names, CertNames};

/// Why an allowlist entry could not be built. The caller adds where the
/// entry came from (file, line); the error says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A fingerprint is not 32 bytes of hex.
    #[error("fingerprint {value:?} is not a SHA-256 fingerprint: {reason}")]
    Fingerprint {
        /// The fingerprint as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A pattern is empty.
    #[error("{kind} pattern is empty")]
    EmptyPattern {
        /// Which kind of entry.
        kind: RuleKind,
    },
    /// A pattern or label contains a control character, which no certificate
    /// name legitimately has and which would corrupt log lines.
    #[error("{kind} {value:?} contains a control character")]
    ControlCharacter {
        /// Which kind of entry.
        kind: RuleKind,
        /// The text as written.
        value: String,
    },
    /// A SPIFFE pattern does not have the `spiffe://trust-domain/path` form.
    #[error("SPIFFE ID pattern {value:?} must look like spiffe://trust-domain/path")]
    Spiffe {
        /// The pattern as written.
        value: String,
    },
    /// An alias or label is empty.
    #[error("{kind} label is empty")]
    EmptyLabel {
        /// Which kind of entry.
        kind: RuleKind,
    },
}

/// The kinds of allowlist entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// A named client certificate (exact end-entity certificate).
    Alias,
    /// A SHA-256 fingerprint of the end-entity certificate.
    Fingerprint,
    /// The subject common name.
    SubjectCn,
    /// A DNS name in the subject alternative names.
    DnsSan,
    /// A URI in the subject alternative names.
    UriSan,
    /// The SPIFFE ID (the certificate's single URI SAN, `spiffe://...`).
    Spiffe,
    /// No entry: the allowlist is empty and admits every verified chain.
    AnyVerified,
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleKind::Alias => "alias",
            RuleKind::Fingerprint => "fingerprint",
            RuleKind::SubjectCn => "subject CN",
            RuleKind::DnsSan => "DNS SAN",
            RuleKind::UriSan => "URI SAN",
            RuleKind::Spiffe => "SPIFFE ID",
            RuleKind::AnyVerified => "any verified",
        })
    }
}

/// The SHA-256 digest of a certificate's DER encoding, as `openssl x509
/// -fingerprint -sha256` prints it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// Parses 64 hex digits, upper or lower case, with or without `:`
    /// between bytes (both forms are what tools print).
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let bad = |reason| PolicyError::Fingerprint {
            value: text.to_string(),
            reason,
        };
        let digits: Vec<u8> = text.bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 {
            return Err(bad("expected 64 hex digits (colons optional)"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(|| bad("not a hex digit"))?;
            let lo = hex_value(pair[1]).ok_or_else(|| bad("not a hex digit"))?;
            out[i] = hi << 4 | lo;
        }
        Ok(Fingerprint(out))
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first `bytes` bytes in lower-case hex, for short labels.
    fn short_hex(&self, bytes: usize) -> String {
        self.0[..bytes].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Fingerprint {
    /// Lower-case hex without separators.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short_hex(32))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Certificate(Fingerprint),
    Fingerprint(Fingerprint),
    SubjectCn(Glob),
    DnsSan(Glob),
    UriSan(Glob),
    Spiffe(Glob),
}

impl Rule {
    fn kind(&self) -> RuleKind {
        match self {
            Rule::Certificate(_) => RuleKind::Alias,
            Rule::Fingerprint(_) => RuleKind::Fingerprint,
            Rule::SubjectCn(_) => RuleKind::SubjectCn,
            Rule::DnsSan(_) => RuleKind::DnsSan,
            Rule::UriSan(_) => RuleKind::UriSan,
            Rule::Spiffe(_) => RuleKind::Spiffe,
        }
    }
}

/// One allowlist entry: a rule, and optionally the label clients matching
/// it are known by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    rule: Rule,
    label: Option<Arc<str>>,
}

impl AllowEntry {
    /// A named client certificate: admits exactly this end-entity
    /// certificate (compared by SHA-256 of its DER), known as `alias`.
    pub fn alias(alias: &str, cert: &CertificateDer<'_>) -> Result<Self, PolicyError> {
        Self {
            rule: Rule::Certificate(Fingerprint::of(cert)),
            label: None,
        }
        .with_label(alias)
    }

    /// An end-entity certificate with this SHA-256 fingerprint (64 hex
    /// digits, colons optional, any case).
    pub fn fingerprint(hex: &str) -> Result<Self, PolicyError> {
        Ok(Self {
            rule: Rule::Fingerprint(Fingerprint::parse(hex)?),
            label: None,
        })
    }

    /// A subject common name, exact or with `*` matching any run.
    pub fn subject_cn(pattern: &str) -> Result<Self, PolicyError> {
        check_text(RuleKind::SubjectCn, pattern)?;
        Ok(Self::from_rule(Rule::SubjectCn(Glob::new(
            pattern,
            Syntax::Text,
        ))))
    }

    /// A DNS name SAN; `*` matches within one label, `**` across labels;
    /// compared case-insensitively.
    pub fn dns_san(pattern: &str) -> Result<Self, PolicyError> {
        check_text(RuleKind::DnsSan, pattern)?;
        Ok(Self::from_rule(Rule::DnsSan(Glob::new(
            pattern,
            Syntax::Dns,
        ))))
    }

    /// A URI SAN; `*` matches within one path segment, `**` across them;
    /// compared exactly.
    pub fn uri_san(pattern: &str) -> Result<Self, PolicyError> {
        check_text(RuleKind::UriSan, pattern)?;
        Ok(Self::from_rule(Rule::UriSan(Glob::new(
            pattern,
            Syntax::Uri,
        ))))
    }

    /// A SPIFFE ID, `spiffe://trust-domain/path`, with the same wildcards as
    /// [`AllowEntry::uri_san`]. Only certificates with exactly one URI SAN
    /// can match, as the X509-SVID specification requires of an SVID.
    pub fn spiffe_id(pattern: &str) -> Result<Self, PolicyError> {
        check_text(RuleKind::Spiffe, pattern)?;
        let domain = pattern
            .strip_prefix("spiffe://")
            .map(|rest| rest.split('/').next().unwrap_or(""));
        if domain.is_none_or(str::is_empty) {
            return Err(PolicyError::Spiffe {
                value: pattern.to_string(),
            });
        }
        Ok(Self::from_rule(Rule::Spiffe(Glob::new(
            pattern,
            Syntax::Uri,
        ))))
    }

    /// Names the clients this entry admits; without a label, the identity is
    /// generated from what matched (`cn:NAME`, `fp:HEX`, ...).
    pub fn with_label(mut self, label: &str) -> Result<Self, PolicyError> {
        let kind = self.rule.kind();
        if label.is_empty() {
            return Err(PolicyError::EmptyLabel { kind });
        }
        if label.chars().any(char::is_control) {
            return Err(PolicyError::ControlCharacter {
                kind,
                value: label.to_string(),
            });
        }
        self.label = Some(Arc::from(label));
        Ok(self)
    }

    /// The kind of rule.
    pub fn kind(&self) -> RuleKind {
        self.rule.kind()
    }

    fn from_rule(rule: Rule) -> Self {
        Self { rule, label: None }
    }

    /// The matched value when this entry admits the certificate.
    fn matches(&self, cert: &Presented<'_>) -> Option<Matched> {
        match &self.rule {
            Rule::Certificate(fp) | Rule::Fingerprint(fp) => {
                (cert.fingerprint() == *fp).then_some(Matched::Fingerprint(*fp))
            }
            Rule::SubjectCn(g) => first_match(g, &cert.names()?.common_names),
            Rule::DnsSan(g) => first_match(g, &cert.names()?.dns),
            Rule::UriSan(g) => first_match(g, &cert.names()?.uris),
            Rule::Spiffe(g) => match cert.names()?.uris.as_slice() {
                [only] if only.starts_with("spiffe://") && g.matches(only) => {
                    Some(Matched::Name(only.clone()))
                }
                _ => None,
            },
        }
    }
}

fn check_text(kind: RuleKind, pattern: &str) -> Result<(), PolicyError> {
    if pattern.is_empty() {
        return Err(PolicyError::EmptyPattern { kind });
    }
    if pattern.chars().any(char::is_control) {
        return Err(PolicyError::ControlCharacter {
            kind,
            value: pattern.to_string(),
        });
    }
    Ok(())
}

fn first_match(glob: &Glob, names: &[String]) -> Option<Matched> {
    names
        .iter()
        .find(|n| glob.matches(n))
        .map(|n| Matched::Name(n.clone()))
}

enum Matched {
    Fingerprint(Fingerprint),
    Name(String),
}

/// Who a client is, once its certificate has been admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    label: Arc<str>,
    kind: RuleKind,
}

impl Identity {
    /// The label for logs and routing: an alias or entry label as
    /// configured, or one generated from what matched: `fp:` and the first
    /// 8 bytes of the fingerprint in hex, `cn:NAME`, `dns:NAME`, `uri:URI`,
    /// or the SPIFFE ID itself. Control characters from certificate names
    /// are escaped, so a hostile name cannot forge log lines.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Which kind of entry admitted the client.
    pub fn kind(&self) -> RuleKind {
        self.kind
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// The ordered allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<AllowEntry>,
}

impl Allowlist {
    /// An allowlist of these entries, tried in order. No entries admits every
    /// verified chain.
    pub fn new(entries: Vec<AllowEntry>) -> Self {
        Self { entries }
    }

    /// Whether the allowlist admits every verified chain.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[AllowEntry] {
        &self.entries
    }

    /// Whether a verified end-entity certificate is admitted. Cheaper than
    /// [`Allowlist::identify`]: no label is built.
    pub fn admits(&self, end_entity: &CertificateDer<'_>) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        let cert = Presented::new(end_entity);
        self.entries.iter().any(|e| e.matches(&cert).is_some())
    }

    /// The identity of a verified end-entity certificate, or `None` when no
    /// entry admits it. With an empty allowlist every certificate has one:
    /// `cn:` its first subject CN, or `fp:` its fingerprint when it has none.
    pub fn identify(&self, end_entity: &CertificateDer<'_>) -> Option<Identity> {
        let cert = Presented::new(end_entity);
        if self.entries.is_empty() {
            let label = match cert.names().and_then(|n| n.common_names.first()) {
                Some(cn) => format!("cn:{}", escaped(cn)),
                None => format!("fp:{}", cert.fingerprint().short_hex(8)),
            };
            return Some(Identity {
                label: Arc::from(label),
                kind: RuleKind::AnyVerified,
            });
        }
        self.entries.iter().find_map(|entry| {
            let matched = entry.matches(&cert)?;
            let label = match (&entry.label, matched) {
                (Some(label), _) => label.clone(),
                (None, Matched::Fingerprint(fp)) => Arc::from(format!("fp:{}", fp.short_hex(8))),
                (None, Matched::Name(name)) => {
                    let prefix = match entry.rule.kind() {
                        RuleKind::SubjectCn => "cn:",
                        RuleKind::DnsSan => "dns:",
                        RuleKind::UriSan => "uri:",
                        // A SPIFFE ID names itself: `spiffe://` is the prefix.
                        _ => "",
                    };
                    Arc::from(format!("{prefix}{}", escaped(&name)))
                }
            };
            Some(Identity {
                label,
                kind: entry.rule.kind(),
            })
        })
    }
}

/// The identity of a connection's client, from what rustls reports after
/// the handshake (`conn.peer_certificates()`): `None` when the client sent
/// no certificate (optional mode) or the allowlist does not admit it (which
/// the verifier has already refused, so only a policy changed since the
/// handshake gets here).
pub fn identify(
    policy: &Allowlist,
    peer_certificates: Option<&[CertificateDer<'_>]>,
) -> Option<Identity> {
    policy.identify(peer_certificates?.first()?)
}

/// The end-entity certificate with its derived facts computed on demand,
/// so an allowlist of fingerprints never parses X.509 and one of names
/// never hashes.
struct Presented<'a> {
    der: &'a CertificateDer<'a>,
    fingerprint: OnceCell<Fingerprint>,
    names: OnceCell<Option<CertNames>>,
}

impl<'a> Presented<'a> {
    fn new(der: &'a CertificateDer<'a>) -> Self {
        Self {
            der,
            fingerprint: OnceCell::new(),
            names: OnceCell::new(),
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        *self.fingerprint.get_or_init(|| Fingerprint::of(self.der))
    }

    /// `None` when the certificate does not parse: then no name rule
    /// matches (webpki accepted the chain, so this does not happen with
    /// well-formed X.509).
    fn names(&self) -> Option<&CertNames> {
        self.names.get_or_init(|| cert_names(self.der)).as_ref()
    }
}

/// Escapes control characters as `\xNN`; the rest is kept as is.
fn escaped(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{leaf, Ca, LeafSpec};
    use super::*;

    #[test]
    fn fingerprint_parsing() {
        let hex = "AB".repeat(32);
        let with_colons = vec!["ab"; 32].join(":");
        assert_eq!(
            Fingerprint::parse(&hex).unwrap(),
            Fingerprint::parse(&with_colons).unwrap()
        );
        assert_eq!(Fingerprint::parse(&hex).unwrap().as_bytes(), &[0xab; 32]);
        let e = Fingerprint::parse("abcd").unwrap_err();
        assert_eq!(
            e.to_string(),
            "fingerprint \"abcd\" is not a SHA-256 fingerprint: expected 64 hex digits (colons optional)"
        );
        let e = Fingerprint::parse(&"zz".repeat(32)).unwrap_err();
        assert!(e.to_string().ends_with("not a hex digit"), "{e}");
    }

    #[test]
    fn entry_validation() {
        assert_eq!(
            AllowEntry::subject_cn("").unwrap_err(),
            PolicyError::EmptyPattern {
                kind: RuleKind::SubjectCn
            }
        );
        assert!(matches!(
            AllowEntry::dns_san("a\nb").unwrap_err(),
            PolicyError::ControlCharacter { .. }
        ));
        for bad in ["https://x/y", "spiffe://", "spiffe:///path", "spiffe:/x"] {
            assert!(
                matches!(
                    AllowEntry::spiffe_id(bad).unwrap_err(),
                    PolicyError::Spiffe { .. }
                ),
                "{bad}"
            );
        }
        let ca = Ca::root("policy CA");
        let cert = leaf(&ca, &LeafSpec::cn("a")).cert;
        assert!(matches!(
            AllowEntry::alias("", &cert).unwrap_err(),
            PolicyError::EmptyLabel { .. }
        ));
        assert_eq!(
            AllowEntry::alias("a", &cert).unwrap().kind(),
            RuleKind::Alias
        );
    }

    #[test]
    fn empty_allowlist_admits_and_names_by_cn_or_fingerprint() {
        let ca = Ca::root("policy CA");
        let list = Allowlist::default();
        let with_cn = leaf(&ca, &LeafSpec::cn("web-1")).cert;
        assert!(list.admits(&with_cn));
        let id = list.identify(&with_cn).unwrap();
        assert_eq!(id.label(), "cn:web-1");
        assert_eq!(id.kind(), RuleKind::AnyVerified);

        let no_cn = leaf(&ca, &LeafSpec::default()).cert;
        let id = list.identify(&no_cn).unwrap();
        assert_eq!(
            id.label(),
            format!("fp:{}", &Fingerprint::of(&no_cn).to_string()[..16])
        );
    }

    #[test]
    fn each_rule_kind_matches_and_labels() {
        let ca = Ca::root("policy CA");
        let spec = LeafSpec {
            cn: Some("svc-billing".into()),
            dns: vec!["billing.prod.example.com".into()],
            uris: vec!["spiffe://prod.example/ns/billing/sa/api".into()],
            ..LeafSpec::default()
        };
        let cert = leaf(&ca, &spec).cert;
        let fp = Fingerprint::of(&cert);
        let fp_label = format!("fp:{}", &fp.to_string()[..16]);
        let cases: Vec<(AllowEntry, &str, RuleKind)> = vec![
            (
                AllowEntry::alias("billing", &cert).unwrap(),
                "billing",
                RuleKind::Alias,
            ),
            (
                AllowEntry::fingerprint(&fp.to_string().to_uppercase()).unwrap(),
                &fp_label,
                RuleKind::Fingerprint,
            ),
            (
                AllowEntry::subject_cn("svc-*").unwrap(),
                "cn:svc-billing",
                RuleKind::SubjectCn,
            ),
            (
                AllowEntry::dns_san("*.PROD.example.com").unwrap(),
                "dns:billing.prod.example.com",
                RuleKind::DnsSan,
            ),
            (
                AllowEntry::uri_san("spiffe://prod.example/**").unwrap(),
                "uri:spiffe://prod.example/ns/billing/sa/api",
                RuleKind::UriSan,
            ),
            (
                AllowEntry::spiffe_id("spiffe://prod.example/ns/*/sa/api").unwrap(),
                "spiffe://prod.example/ns/billing/sa/api",
                RuleKind::Spiffe,
            ),
            (
                AllowEntry::subject_cn("svc-billing")
                    .unwrap()
                    .with_label("team-billing")
                    .unwrap(),
                "team-billing",
                RuleKind::SubjectCn,
            ),
        ];
        for (entry, label, kind) in cases {
            let list = Allowlist::new(vec![entry]);
            assert!(list.admits(&cert), "{label}");
            let id = list.identify(&cert).unwrap();
            assert_eq!(id.label(), label);
            assert_eq!(id.kind(), kind);
        }

        // Near misses.
        let misses = vec![
            AllowEntry::subject_cn("svc-billing-2").unwrap(),
            AllowEntry::dns_san("*.example.com").unwrap(),
            AllowEntry::uri_san("spiffe://prod.example/ns/*").unwrap(),
            AllowEntry::spiffe_id("spiffe://staging.example/**").unwrap(),
            AllowEntry::fingerprint(&"00".repeat(32)).unwrap(),
        ];
        let list = Allowlist::new(misses);
        assert!(!list.admits(&cert));
        assert_eq!(list.identify(&cert), None);
    }

    #[test]
    fn first_matching_entry_wins() {
        let ca = Ca::root("policy CA");
        let cert = leaf(&ca, &LeafSpec::cn("worker")).cert;
        let list = Allowlist::new(vec![
            AllowEntry::subject_cn("nobody").unwrap(),
            AllowEntry::subject_cn("work*")
                .unwrap()
                .with_label("first")
                .unwrap(),
            AllowEntry::alias("second", &cert).unwrap(),
        ]);
        assert_eq!(list.identify(&cert).unwrap().label(), "first");
    }

    #[test]
    fn spiffe_needs_exactly_one_uri_san() {
        let ca = Ca::root("policy CA");
        let spec = LeafSpec {
            uris: vec!["spiffe://td/a".into(), "spiffe://td/b".into()],
            ..LeafSpec::default()
        };
        let cert = leaf(&ca, &spec).cert;
        let list = Allowlist::new(vec![AllowEntry::spiffe_id("spiffe://td/*").unwrap()]);
        assert!(!list.admits(&cert));
        // The URI rule has no such restriction.
        let list = Allowlist::new(vec![AllowEntry::uri_san("spiffe://td/b").unwrap()]);
        assert!(list.admits(&cert));
    }

    #[test]
    fn identify_from_peer_certificates() {
        let ca = Ca::root("policy CA");
        let cert = leaf(&ca, &LeafSpec::cn("peer")).cert;
        let chain = vec![cert, ca.cert.clone()];
        let list = Allowlist::new(vec![AllowEntry::subject_cn("peer").unwrap()]);
        assert_eq!(identify(&list, Some(&chain)).unwrap().label(), "cn:peer");
        assert_eq!(identify(&list, None), None);
        assert_eq!(identify(&list, Some(&[])), None);
    }

    #[test]
    fn control_characters_in_names_are_escaped() {
        assert_eq!(escaped("a\nb\u{7f}"), "a\\x0ab\\x7f");
        assert_eq!(escaped("plain é"), "plain é");
    }
}
