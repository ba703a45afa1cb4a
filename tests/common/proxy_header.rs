//! A PROXY protocol decoder written from HAProxy's specification
//! (`proxy-protocol.txt`, versions 1 and 2), independent of tlsplice's
//! encoder: tests read tlsplice's headers with it, and the fuzz tests check
//! encode -> decode round trips, so it doubles as the check that the
//! encoder follows the specification.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature (spec 2.2).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 line, CRLF included (spec 2.1: 107 bytes).
pub const V1_MAX_LEN: usize = 107;

/// A decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: u8,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// v2 TLVs in order (type, value); empty for v1.
    pub tlvs: Vec<(u8, Vec<u8>)>,
    /// Bytes the header took.
    pub len: usize,
}

impl ProxyHeader {
    /// The value of the first TLV of `kind`.
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        first_of(&self.tlvs, kind)
    }
}

/// The content of a PP2_TYPE_SSL TLV (spec 2.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslTlv {
    pub client: u8,
    pub verify: u32,
    pub subs: Vec<(u8, Vec<u8>)>,
}

impl SslTlv {
    /// The value of the first sub-TLV of `kind`.
    pub fn sub(&self, kind: u8) -> Option<&[u8]> {
        first_of(&self.subs, kind)
    }
}

fn first_of(tlvs: &[(u8, Vec<u8>)], kind: u8) -> Option<&[u8]> {
    tlvs.iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.as_slice())
}

/// Why bytes are not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A valid beginning: more bytes are needed.
    Incomplete,
    /// The bytes break the specification; says where.
    Invalid(String),
}

fn invalid<T>(why: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError::Invalid(why.into()))
}

/// Decodes the header at the start of `b` (v1 or v2).
pub fn decode(b: &[u8]) -> Result<ProxyHeader, DecodeError> {
    if b.starts_with(b"PROXY ") || b"PROXY ".starts_with(b) && !b.is_empty() {
        decode_v1(b)
    } else if b.len() >= V2_SIGNATURE.len() {
        if b[..12] != V2_SIGNATURE {
            return invalid("neither `PROXY ` nor the v2 signature");
        }
        decode_v2(b)
    } else if V2_SIGNATURE.starts_with(b) {
        Err(DecodeError::Incomplete)
    } else {
        invalid("neither `PROXY ` nor the v2 signature")
    }
}

fn decode_v1(b: &[u8]) -> Result<ProxyHeader, DecodeError> {
    let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
        return if b.len() >= V1_MAX_LEN {
            invalid("v1 line longer than 107 bytes")
        } else {
            Err(DecodeError::Incomplete)
        };
    };
    let len = end + 2;
    if len > V1_MAX_LEN {
        return invalid("v1 line longer than 107 bytes");
    }
    let Ok(line) = std::str::from_utf8(&b[..end]) else {
        return invalid("v1 line is not ASCII");
    };
    // Exactly one space between fields (spec 2.1).
    let fields: Vec<&str> = line.split(' ').collect();
    let [_, family, src, dst, sport, dport] = fields[..] else {
        return invalid(format!("v1 line has {} fields, expected 6", fields.len()));
    };
    let ip = |s: &str| -> Result<IpAddr, DecodeError> {
        match family {
            "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => s.parse::<Ipv6Addr>().map(IpAddr::V6),
            _ => return invalid(format!("v1 family {family:?}")),
        }
        .or_else(|_| invalid(format!("v1 address {s:?} is not {family}")))
    };
    // Ports are decimal without leading zeros (spec 2.1).
    let port = |s: &str| -> Result<u16, DecodeError> {
        if s.len() > 1 && s.starts_with('0') {
            return invalid(format!("v1 port {s:?} has a leading zero"));
        }
        s.parse().or_else(|_| invalid(format!("v1 port {s:?}")))
    };
    Ok(ProxyHeader {
        version: 1,
        source: SocketAddr::new(ip(src)?, port(sport)?),
        destination: SocketAddr::new(ip(dst)?, port(dport)?),
        tlvs: Vec::new(),
        len,
    })
}

fn decode_v2(b: &[u8]) -> Result<ProxyHeader, DecodeError> {
    if b.len() < 16 {
        return Err(DecodeError::Incomplete);
    }
    if b[12] >> 4 != 2 {
        return invalid(format!("v2 version nibble {}", b[12] >> 4));
    }
    if b[12] & 0x0f != 1 {
        return invalid(format!(
            "v2 command {} (tlsplice sends PROXY)",
            b[12] & 0x0f
        ));
    }
    let body_len = u16::from_be_bytes([b[14], b[15]]) as usize;
    let len = 16 + body_len;
    if b.len() < len {
        return Err(DecodeError::Incomplete);
    }
    let body = &b[16..len];
    // Address family and transport (spec 2.2): TCP over IPv4 or IPv6.
    let (family, n) = match b[13] {
        0x11 => ("TCP4", 4),
        0x21 => ("TCP6", 16),
        other => return invalid(format!("v2 family/protocol byte {other:#04x}")),
    };
    if body.len() < 2 * n + 4 {
        return invalid(format!("v2 {family} body shorter than its addresses"));
    }
    let ip = |o: usize| match n {
        4 => IpAddr::from(<[u8; 4]>::try_from(&body[o..o + 4]).unwrap()),
        _ => IpAddr::from(<[u8; 16]>::try_from(&body[o..o + 16]).unwrap()),
    };
    let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
    let (source, destination, rest) = (
        SocketAddr::new(ip(0), port(2 * n)),
        SocketAddr::new(ip(n), port(2 * n + 2)),
        &body[2 * n + 4..],
    );
    Ok(ProxyHeader {
        version: 2,
        source,
        destination,
        tlvs: decode_tlvs(rest)?,
        len,
    })
}

/// Type-length-value entries filling `b` exactly (spec 2.2).
pub fn decode_tlvs(mut b: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, DecodeError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 3 {
            return invalid("v2 TLV header cut short");
        }
        let len = u16::from_be_bytes([b[1], b[2]]) as usize;
        let Some(value) = b.get(3..3 + len) else {
            return invalid(format!("v2 TLV {:#04x} longer than the header", b[0]));
        };
        out.push((b[0], value.to_vec()));
        b = &b[3 + len..];
    }
    Ok(out)
}

/// Decodes a PP2_TYPE_SSL value: client bits, verify result, sub-TLVs.
pub fn decode_ssl(v: &[u8]) -> Result<SslTlv, DecodeError> {
    if v.len() < 5 {
        return invalid("PP2_TYPE_SSL shorter than 5 bytes");
    }
    Ok(SslTlv {
        client: v[0],
        verify: u32::from_be_bytes([v[1], v[2], v[3], v[4]]),
        subs: decode_tlvs(&v[5..])?,
    })
}
