//! The client certificate as HTTP request headers, for backends that cannot
//! read the PROXY protocol (`client_cert_header`).
//!
//! Sans-IO: this builds the header lines once per connection; the relay's
//! [`crate::relay::http_head::HeadRewriter`] puts them into every request
//! head and removes any a client sent itself.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rustls::pki_types::CertificateDer;

use crate::tls::certs;
use crate::tls::verify::Fingerprint;

/// How the certificate is written into the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RFC 9440: `Client-Cert: :<base64 DER>:`, and the intermediates in
    /// `Client-Cert-Chain` as a list of the same.
    Rfc9440,
    /// Envoy's `X-Forwarded-Client-Cert`:
    /// `Hash=<sha256 hex>;Cert="<URL-escaped PEM>";Subject="...";URI=...;DNS=...`.
    Xfcc,
    /// The URL-escaped PEM, as nginx's `$ssl_client_escaped_cert`.
    EscapedPem,
}

impl Format {
    /// The config spelling of each format.
    pub const NAMES: [(&'static str, Format); 3] = [
        ("rfc9440", Format::Rfc9440),
        ("xfcc", Format::Xfcc),
        ("escaped-pem", Format::EscapedPem),
    ];

    /// The header name used when none is configured.
    pub fn default_name(self) -> &'static str {
        match self {
            Format::Rfc9440 => "Client-Cert",
            Format::Xfcc => "X-Forwarded-Client-Cert",
            Format::EscapedPem => "X-SSL-Client-Cert",
        }
    }
}

/// A listener's header mode: which format, under which name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertHeader {
    /// The encoding.
    pub format: Format,
    /// The header name, as configured (sent in this case).
    pub name: String,
    /// Largest request head accepted, in bytes.
    pub max_head: usize,
}

impl CertHeader {
    /// The name of the chain header (RFC 9440 only): `<name>-Chain`.
    fn chain_name(&self) -> Option<String> {
        (self.format == Format::Rfc9440).then(|| format!("{}-Chain", self.name))
    }

    /// Every header name a client must not set itself.
    pub fn reserved_names(&self) -> Vec<String> {
        std::iter::once(self.name.clone())
            .chain(self.chain_name())
            .collect()
    }

    /// The header lines (each ending in CRLF) describing `chain`, end entity
    /// first; empty when the client presented no certificate.
    pub fn lines(&self, chain: &[CertificateDer<'_>]) -> Vec<u8> {
        let Some(leaf) = chain.first() else {
            return Vec::new();
        };
        let value = match self.format {
            Format::Rfc9440 => format!(":{}:", BASE64.encode(leaf)),
            Format::EscapedPem => url_escape(&pem(leaf)),
            Format::Xfcc => xfcc(leaf),
        };
        let mut out = format!("{}: {value}\r\n", self.name);
        if let (Some(name), [_, intermediates @ ..]) = (self.chain_name(), chain) {
            if !intermediates.is_empty() {
                let list: Vec<String> = intermediates
                    .iter()
                    .map(|c| format!(":{}:", BASE64.encode(c)))
                    .collect();
                out.push_str(&format!("{name}: {}\r\n", list.join(", ")));
            }
        }
        out.into_bytes()
    }
}

/// One XFCC element for the client certificate (Envoy's key order).
fn xfcc(leaf: &CertificateDer<'_>) -> String {
    let hash: String = Fingerprint::of(leaf)
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut out = format!(
        "Hash={hash};Cert=\"{}\";Subject=\"{}\"",
        url_escape(&pem(leaf)),
        quoted(&certs::subject(leaf))
    );
    let names = certs::cert_names(leaf).unwrap_or_default();
    for uri in &names.uris {
        out.push_str(&format!(";URI={}", xfcc_value(uri)));
    }
    for dns in &names.dns {
        out.push_str(&format!(";DNS={}", xfcc_value(dns)));
    }
    out
}

/// An XFCC value: quoted when it holds a separator (`,`, `;`, `=`).
fn xfcc_value(v: &str) -> String {
    if v.contains([',', ';', '=', '"']) {
        format!("\"{}\"", quoted(v))
    } else {
        v.to_string()
    }
}

/// Escapes `"` and `\` for a quoted string, and drops control characters
/// (a header value must not hold them).
fn quoted(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The certificate in PEM, 64 base64 characters a line.
fn pem(cert: &CertificateDer<'_>) -> String {
    let b64 = BASE64.encode(cert);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so any
/// URL decoder restores the text.
fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};
    use rustls::pki_types::pem::PemObject;

    fn cert(cn: &str, sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        p.subject_alt_names = sans;
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().into()
    }

    fn header(format: Format) -> CertHeader {
        CertHeader {
            format,
            name: format.default_name().to_string(),
            max_head: 1024,
        }
    }

    #[test]
    fn rfc9440_carries_the_der_and_the_intermediates() {
        let (leaf, ca) = (cert("leaf", vec![]), cert("ca", vec![]));
        let text =
            String::from_utf8(header(Format::Rfc9440).lines(&[leaf.clone(), ca.clone()])).unwrap();
        let expected = format!(
            "Client-Cert: :{}:\r\nClient-Cert-Chain: :{}:\r\n",
            BASE64.encode(&leaf),
            BASE64.encode(&ca)
        );
        assert_eq!(text, expected);
        // No chain header without intermediates; nothing without a cert.
        let one = header(Format::Rfc9440).lines(std::slice::from_ref(&leaf));
        assert_eq!(one.split(|&b| b == b'\n').count(), 2);
        assert!(header(Format::Rfc9440).lines(&[]).is_empty());
        assert_eq!(
            header(Format::Rfc9440).reserved_names(),
            ["Client-Cert", "Client-Cert-Chain"]
        );
    }

    #[test]
    fn escaped_pem_decodes_to_the_pem() {
        let leaf = cert("leaf", vec![]);
        let text = String::from_utf8(header(Format::EscapedPem).lines(std::slice::from_ref(&leaf)))
            .unwrap();
        let value = text
            .strip_prefix("X-SSL-Client-Cert: ")
            .unwrap()
            .strip_suffix("\r\n")
            .unwrap();
        // Base64 and PEM framing are the only characters to escape.
        assert!(!value.contains(['\n', ' ', '+', '/', '=']));
        let pem_text = [
            ("%0A", "\n"),
            ("%20", " "),
            ("%2B", "+"),
            ("%2F", "/"),
            ("%3D", "="),
        ]
        .iter()
        .fold(value.to_string(), |t, (from, to)| t.replace(from, to));
        assert!(!pem_text.contains('%'));
        let parsed = CertificateDer::from_pem_slice(pem_text.as_bytes());
        assert_eq!(parsed.unwrap(), leaf);
    }

    #[test]
    fn xfcc_has_hash_cert_subject_and_names() {
        let leaf = cert(
            "svc \"a\"",
            vec![
                SanType::URI("spiffe://prod/ns/a/sa/b".try_into().unwrap()),
                SanType::DnsName("a.example".try_into().unwrap()),
            ],
        );
        let text =
            String::from_utf8(header(Format::Xfcc).lines(std::slice::from_ref(&leaf))).unwrap();
        let hash: String = Fingerprint::of(&leaf)
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            text.starts_with(&format!("X-Forwarded-Client-Cert: Hash={hash};Cert=\"")),
            "{text}"
        );
        assert!(
            text.trim_end().ends_with(
                // The RFC 4514 subject `CN=svc \"a\"`, as a quoted string.
                r#";Subject="CN=svc \\\"a\\\"";URI=spiffe://prod/ns/a/sa/b;DNS=a.example"#
            ),
            "{text}"
        );
    }
}
