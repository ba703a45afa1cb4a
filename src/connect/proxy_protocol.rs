//! PROXY protocol headers (HAProxy's specification, v1 and v2) telling the
//! backend who the client is: its address, and in v2 the TLS details and
//! client certificate identity as TLVs.
//!
//! Sans-IO: this only encodes bytes; the connect stage writes them first.

use std::net::SocketAddr;

/// Which PROXY protocol version a listener sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Text header.
    V1,
    /// Binary header with TLVs.
    V2,
}

/// What the backend is told about one connection.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo<'a> {
    /// Negotiated ALPN protocol.
    pub alpn: Option<&'a [u8]>,
    /// Server name the client asked for.
    pub sni: Option<&'a str>,
    /// Protocol version, e.g. `TLSv1.3`.
    pub tls_version: Option<&'a str>,
    /// Cipher suite name.
    pub cipher: Option<&'a str>,
    /// Client certificate subject CN.
    pub cn: Option<&'a str>,
    /// Whether the client presented a certificate.
    pub cert_presented: bool,
    /// SHA-256 of the client's end-entity certificate.
    pub cert_sha256: Option<[u8; 32]>,
    /// The client's end-entity certificate (DER).
    pub cert_der: Option<&'a [u8]>,
    /// Which custom TLV carries the client certificate, and how.
    pub cert_tlv: Option<CertTlv>,
    /// The identity (allowlist alias or rule) the client matched.
    pub identity: Option<&'a str>,
}

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;
/// Largest certificate sent in a DER TLV: the 16-bit header length must
/// still hold the addresses and the other TLVs.
const MAX_DER_TLV: usize = 60 * 1024;
/// Default custom TLV (0xE0..=0xEF range) for the client certificate.
pub const TLV_CLIENT_CERT: u8 = 0xE0;
/// Custom TLV with the client's identity (alias or matched rule).
pub const TLV_CLIENT_IDENTITY: u8 = 0xE1;
/// The custom TLV range of the specification (PP2_TYPE_MIN/MAX_CUSTOM).
pub const CUSTOM_TLVS: std::ops::RangeInclusive<u8> = 0xE0..=0xEF;

/// What the client-certificate TLV holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertTlvContent {
    /// The SHA-256 of the end-entity certificate (32 bytes).
    Sha256,
    /// The end-entity certificate itself, DER.
    Der,
}

/// The client-certificate TLV of a listener (`proxy_protocol_cert_tlv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertTlv {
    /// The TLV type, in [`CUSTOM_TLVS`] and not [`TLV_CLIENT_IDENTITY`].
    pub kind: u8,
    /// What it carries.
    pub content: CertTlvContent,
}

impl Default for CertTlv {
    fn default() -> Self {
        Self {
            kind: TLV_CLIENT_CERT,
            content: CertTlvContent::Sha256,
        }
    }
}

/// Encodes the header for a connection from `client` to `local`.
pub fn encode(
    version: Version,
    client: SocketAddr,
    local: SocketAddr,
    info: &ClientInfo<'_>,
) -> Vec<u8> {
    match version {
        Version::V1 => v1(client, local),
        Version::V2 => v2(client, local, info),
    }
}

fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    // Mixed families (an IPv4 peer on an IPv6-only pair) go as TCP6 with
    // the IPv4 address mapped: one family per line (spec 2.1).
    let (family, client_ip, local_ip) = if client.is_ipv4() && local.is_ipv4() {
        ("TCP4", client.ip(), local.ip())
    } else {
        ("TCP6", as_v6(client).into(), as_v6(local).into())
    };
    format!(
        "PROXY {family} {client_ip} {local_ip} {} {}\r\n",
        client.port(),
        local.port()
    )
    .into_bytes()
}

/// The address as IPv6 (IPv4 mapped).
fn as_v6(a: SocketAddr) -> std::net::Ipv6Addr {
    match a {
        SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
        SocketAddr::V6(v6) => *v6.ip(),
    }
}

/// Both addresses in one family: an IPv4 client on a dual-stack socket
/// shows up as IPv4-mapped IPv6 on one side only.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (c, l) = (canonical(client), canonical(local));
    if c.is_ipv4() == l.is_ipv4() {
        (c, l)
    } else {
        (client, local)
    }
}

/// Largest v2 body, and so largest TLV value: lengths are 16 bits.
const MAX_LEN: usize = u16::MAX as usize;

/// Appends a TLV if `out` stays within [`MAX_LEN`]. One that does not fit
/// (a certificate CN of tens of KiB, say) is left out: a cut value could
/// name the wrong client, a missing one names none.
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    if out.len() + 3 + value.len() > MAX_LEN {
        return;
    }
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

fn v2(client: SocketAddr, local: SocketAddr, info: &ClientInfo<'_>) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    let mut body = Vec::with_capacity(128);
    let family = match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => {
            body.extend_from_slice(&c.ip().octets());
            body.extend_from_slice(&l.ip().octets());
            body.extend_from_slice(&c.port().to_be_bytes());
            body.extend_from_slice(&l.port().to_be_bytes());
            0x11
        }
        (c, l) => {
            body.extend_from_slice(&as_v6(c).octets());
            body.extend_from_slice(&as_v6(l).octets());
            body.extend_from_slice(&c.port().to_be_bytes());
            body.extend_from_slice(&l.port().to_be_bytes());
            0x21
        }
    };
    if let Some(alpn) = info.alpn {
        tlv(&mut body, PP2_TYPE_ALPN, alpn);
    }
    if let Some(sni) = info.sni {
        tlv(&mut body, PP2_TYPE_AUTHORITY, sni.as_bytes());
    }
    let mut ssl = Vec::new();
    let mut client_bits = PP2_CLIENT_SSL;
    if info.cert_presented {
        client_bits |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS;
    }
    ssl.push(client_bits);
    // verify: 0 means the client certificate verified (or none was needed);
    // tlsplice never relays a connection whose certificate failed.
    ssl.extend_from_slice(&0u32.to_be_bytes());
    if let Some(v) = info.tls_version {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, v.as_bytes());
    }
    if let Some(cn) = info.cn {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_CN, cn.as_bytes());
    }
    if let Some(c) = info.cipher {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_CIPHER, c.as_bytes());
    }
    tlv(&mut body, PP2_TYPE_SSL, &ssl);
    if let Some(cert_tlv) = info.cert_tlv {
        let value = match cert_tlv.content {
            CertTlvContent::Sha256 => info.cert_sha256.as_ref().map(|f| &f[..]),
            // The whole header must fit its 16-bit length: a certificate
            // too large to leave room for the rest is left out.
            CertTlvContent::Der => info.cert_der.filter(|d| d.len() <= MAX_DER_TLV),
        };
        if let Some(value) = value {
            tlv(&mut body, cert_tlv.kind, value);
        }
    }
    if let Some(id) = info.identity {
        tlv(&mut body, TLV_CLIENT_IDENTITY, id.as_bytes());
    }

    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    out.push(family); // TCP over IPv4 (0x11) or IPv6 (0x21)
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder written from the specification, independent of `encode`.
    fn decode_tlvs(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 3 {
            let len = u16::from_be_bytes([b[1], b[2]]) as usize;
            out.push((b[0], b[3..3 + len].to_vec()));
            b = &b[3 + len..];
        }
        assert!(b.is_empty(), "trailing bytes");
        out
    }

    #[test]
    fn v1_text_and_mapped_addresses() {
        let h = encode(
            Version::V1,
            "[::ffff:10.0.0.1]:5000".parse().unwrap(),
            "127.0.0.1:8443".parse().unwrap(),
            &ClientInfo::default(),
        );
        assert_eq!(h, b"PROXY TCP4 10.0.0.1 127.0.0.1 5000 8443\r\n");
        let h = encode(
            Version::V1,
            "[2001:db8::1]:5000".parse().unwrap(),
            "[::1]:8443".parse().unwrap(),
            &ClientInfo::default(),
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::1 5000 8443\r\n");
        // Found by the round-trip fuzz target: mixed families used to
        // write an IPv6 address on a TCP4 line.
        let h = encode(
            Version::V1,
            "10.0.0.1:5000".parse().unwrap(),
            "[2001:db8::2]:8443".parse().unwrap(),
            &ClientInfo::default(),
        );
        assert_eq!(h, b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::2 5000 8443\r\n");
    }

    #[test]
    fn v2_layout_per_specification() {
        let info = ClientInfo {
            alpn: Some(b"h2"),
            sni: Some("api.example"),
            tls_version: Some("TLSv1.3"),
            cipher: Some("TLS_AES_128_GCM_SHA256"),
            cn: Some("billing"),
            cert_presented: true,
            cert_sha256: Some([7; 32]),
            cert_der: Some(b"not used"),
            cert_tlv: Some(CertTlv::default()),
            identity: Some("billing"),
        };
        let h = encode(
            Version::V2,
            "192.0.2.1:40000".parse().unwrap(),
            "127.0.0.1:8443".parse().unwrap(),
            &info,
        );
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        let len = u16::from_be_bytes([h[14], h[15]]) as usize;
        assert_eq!(h.len(), 16 + len);
        assert_eq!(&h[16..20], &[192, 0, 2, 1]);
        assert_eq!(&h[20..24], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 40000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 8443);
        let tlvs = decode_tlvs(&h[28..]);
        assert_eq!(tlvs[0], (0x01, b"h2".to_vec()));
        assert_eq!(tlvs[1], (0x02, b"api.example".to_vec()));
        let (kind, ssl) = &tlvs[2];
        assert_eq!(*kind, 0x20);
        assert_eq!(ssl[0], 0x07, "client: SSL | CERT_CONN | CERT_SESS");
        assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verify: success");
        let subs = decode_tlvs(&ssl[5..]);
        assert_eq!(subs[0], (0x21, b"TLSv1.3".to_vec()));
        assert_eq!(subs[1], (0x22, b"billing".to_vec()));
        assert_eq!(subs[2], (0x23, b"TLS_AES_128_GCM_SHA256".to_vec()));
        assert_eq!(tlvs[3], (0xE0, vec![7; 32]));
        assert_eq!(tlvs[4], (0xE1, b"billing".to_vec()));
    }

    /// Found by the round-trip fuzz target: TLVs adding up to more than
    /// 64 KiB wrapped the header's 16-bit length.
    #[test]
    fn v2_leaves_out_what_does_not_fit() {
        let cn = "c".repeat(40_000);
        let identity = "i".repeat(30_000);
        let info = ClientInfo {
            cn: Some(&cn),
            identity: Some(&identity),
            ..ClientInfo::default()
        };
        let h = encode(
            Version::V2,
            "192.0.2.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            &info,
        );
        let len = u16::from_be_bytes([h[14], h[15]]) as usize;
        assert_eq!(h.len(), 16 + len);
        let tlvs = decode_tlvs(&h[28..]);
        assert_eq!(tlvs.len(), 1, "the SSL TLV fits, the identity does not");
        assert_eq!(tlvs[0].0, 0x20);
    }

    #[test]
    fn v2_certificate_der_in_a_chosen_tlv() {
        let der = vec![0x30; 1500];
        let info = ClientInfo {
            cert_presented: true,
            cert_sha256: Some([7; 32]),
            cert_der: Some(&der),
            cert_tlv: Some(CertTlv {
                kind: 0xE7,
                content: CertTlvContent::Der,
            }),
            ..ClientInfo::default()
        };
        let local = "127.0.0.1:2".parse().unwrap();
        let h = encode(Version::V2, "127.0.0.1:1".parse().unwrap(), local, &info);
        let tlvs = decode_tlvs(&h[28..]);
        assert_eq!(tlvs.last().unwrap(), &(0xE7, der.clone()));
        assert!(!tlvs.iter().any(|(k, _)| *k == 0xE0));
        // Off: no certificate TLV at all.
        let info = ClientInfo {
            cert_tlv: None,
            ..info
        };
        let h = encode(Version::V2, "127.0.0.1:1".parse().unwrap(), local, &info);
        assert_eq!(decode_tlvs(&h[28..]).len(), 1, "only PP2_TYPE_SSL");
    }

    #[test]
    fn v2_ipv6_without_client_certificate() {
        let h = encode(
            Version::V2,
            "[2001:db8::1]:1".parse().unwrap(),
            "[::1]:2".parse().unwrap(),
            &ClientInfo::default(),
        );
        assert_eq!(h[13], 0x21);
        let len = u16::from_be_bytes([h[14], h[15]]) as usize;
        assert_eq!(len, 36 + 3 + 5);
        let tlvs = decode_tlvs(&h[16 + 36..]);
        assert_eq!(tlvs, vec![(0x20, vec![0x01, 0, 0, 0, 0])]);
    }
}
