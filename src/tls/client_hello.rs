//! Sans-IO inspection of the first flight of a TLS connection.
//!
//! The server must know which name (SNI) and protocols (ALPN) a client asks
//! for before it picks the rustls `ServerConfig` (each name may have its own
//! client-certificate policy). [`parse`] looks at the bytes read so far,
//! without consuming them, so the caller can hand the very same bytes to
//! rustls afterwards.
//!
//! Layout follows RFC 8446 §5.1 (records) and §4.1.2 (ClientHello), which
//! keep the RFC 5246 wire format; extensions from RFC 6066 §3 (server_name),
//! RFC 7301 §3.1 (ALPN) and RFC 8446 §4.2.1 (supported_versions).

use std::borrow::Cow;

use rustls::pki_types::ServerName;

/// TLS record header: content type, legacy version, length.
const RECORD_HEADER_LEN: usize = 5;
/// Handshake message header: type and 24-bit length.
const HANDSHAKE_HEADER_LEN: usize = 4;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_TYPE_CLIENT_HELLO: u8 = 1;

const EXTENSION_SERVER_NAME: u16 = 0;
const EXTENSION_ALPN: u16 = 16;
const EXTENSION_SUPPORTED_VERSIONS: u16 = 43;
const SERVER_NAME_TYPE_HOST_NAME: u8 = 0;

/// Largest record payload accepted.
///
/// Plaintext records may carry 2^14 bytes; the 2048 bytes of slack are the
/// RFC 5246 ciphertext allowance that rustls also tolerates, so nothing that
/// rustls would accept is refused here first.
pub const MAX_RECORD_PAYLOAD: usize = (1 << 14) + 2048;

/// Largest ClientHello body accepted (rustls' own handshake message limit).
pub const MAX_HANDSHAKE_LEN: usize = 0xffff;

/// Most records one ClientHello may be split across.
///
/// Bounds the header overhead so that [`MAX_CLIENT_HELLO_BYTES`] holds even
/// for a peer that fragments the message into tiny records.
pub const MAX_RECORDS: usize = 256;

/// Upper bound on bytes [`parse`] will ever need; callers stop reading beyond it.
///
/// `parse` never answers `Ok(None)` for a buffer this long: by then it has
/// either found a complete ClientHello or an error.
pub const MAX_CLIENT_HELLO_BYTES: usize =
    MAX_RECORDS * RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + MAX_HANDSHAKE_LEN;

/// What the peeked ClientHello offers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The SNI `host_name`, ASCII lower-cased and without a trailing dot.
    ///
    /// `None` when the client sent no SNI or (against RFC 6066, as some
    /// clients do) an IP address literal; rustls treats both the same way.
    pub server_name: Option<String>,
    /// ALPN protocol names in the client's order of preference.
    pub alpn: Vec<Vec<u8>>,
    /// The `supported_versions` extension (TLS 1.3 clients), client order.
    /// Empty when absent: the client then speaks `legacy_version` at most.
    pub supported_versions: Vec<u16>,
    /// Version field of the first record header (often 0x0301 for compatibility).
    pub record_version: u16,
    /// The ClientHello's `legacy_version` (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
}

/// Why the first bytes of a connection are not a usable ClientHello.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientHelloError {
    /// The first record is not a handshake record (type 22).
    #[error("{}", not_handshake_message(.content_type))]
    NotHandshake {
        /// The content type byte found, i.e. the connection's first byte.
        content_type: u8,
    },
    /// The first handshake message is not a ClientHello (type 1).
    #[error("first handshake message has type {msg_type}, expected ClientHello (1)")]
    NotClientHello {
        /// The handshake type found.
        msg_type: u8,
    },
    /// The ClientHello announces a body longer than [`MAX_HANDSHAKE_LEN`].
    #[error("ClientHello of {len} bytes exceeds the limit of {max} bytes", max = MAX_HANDSHAKE_LEN)]
    TooLarge {
        /// The announced body length.
        len: usize,
    },
    /// The bytes violate the record or ClientHello format; names the field.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

impl ClientHelloError {
    /// Whether the connection looks like plaintext HTTP sent to a TLS port.
    ///
    /// A caller may answer such a peer with a plaintext HTTP 400 instead of
    /// a TLS alert it cannot read.
    pub fn is_plaintext_http(&self) -> bool {
        matches!(self, Self::NotHandshake { content_type } if starts_http_method(*content_type))
    }
}

/// First letters of the HTTP methods (GET, POST, PUT, PATCH, PRI, HEAD,
/// DELETE, OPTIONS, CONNECT, TRACE); none is a TLS content type.
fn starts_http_method(byte: u8) -> bool {
    matches!(byte, b'G' | b'P' | b'H' | b'D' | b'O' | b'C' | b'T')
}

fn not_handshake_message(content_type: &u8) -> String {
    let content_type = *content_type;
    if starts_http_method(content_type) {
        format!(
            "first byte is {content_type:#04x} ('{}'), not a TLS handshake record: \
             this looks like plaintext HTTP sent to a TLS port (use https://)",
            char::from(content_type)
        )
    } else if content_type & 0x80 != 0 {
        // SSL 2.0 framing sets the high bit of the first length byte.
        format!(
            "first byte is {content_type:#04x}, not a TLS handshake record \
             (an SSLv2-format ClientHello is not supported)"
        )
    } else {
        format!("first record has content type {content_type}, expected handshake (22)")
    }
}

/// Parses the ClientHello at the start of `buf`, the bytes read so far.
///
/// `Ok(None)`: the bytes are a valid beginning but the message is not
/// complete; read more (at most up to [`MAX_CLIENT_HELLO_BYTES`] in total)
/// and call again. `Ok(Some)`: the complete ClientHello; any bytes after it
/// are ignored. Errors are reported as soon as the bytes seen prove them,
/// so plaintext on a TLS port fails on its first byte.
pub fn parse(buf: &[u8]) -> Result<Option<ClientHello>, ClientHelloError> {
    match reassemble(buf)? {
        None => Ok(None),
        Some(hello) => parse_body(hello.record_version, &hello.body).map(Some),
    }
}

/// A ClientHello body gathered from its records.
struct Reassembled<'a> {
    /// Version field of the first record header.
    record_version: u16,
    /// Borrowed when the message sits in one record, the common case.
    body: Cow<'a, [u8]>,
}

/// Collects the handshake message from consecutive handshake records;
/// `Ok(None)` until all of the ClientHello body is present.
fn reassemble(buf: &[u8]) -> Result<Option<Reassembled<'_>>, ClientHelloError> {
    let mut rest = buf;
    let mut record_version = 0;
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut records = 0;
    loop {
        let Some(&content_type) = rest.first() else {
            return Ok(None);
        };
        if content_type != CONTENT_TYPE_HANDSHAKE {
            return Err(if records == 0 {
                ClientHelloError::NotHandshake { content_type }
            } else {
                // RFC 8446 §5.1: handshake messages must not be interleaved
                // with other record types.
                ClientHelloError::Malformed("non-handshake record inside the ClientHello")
            });
        }
        if records == MAX_RECORDS {
            return Err(ClientHelloError::Malformed(
                "ClientHello fragmented into too many records",
            ));
        }
        // Only major version 3 exists (SSL 3.0 up to TLS 1.3); check it as
        // soon as the byte is here.
        if rest.get(1).is_some_and(|&major| major != 3) {
            return Err(ClientHelloError::Malformed("record version is not 3.x"));
        }
        let Some(header) = rest.get(..RECORD_HEADER_LEN) else {
            return Ok(None);
        };
        let version = u16::from_be_bytes([header[1], header[2]]);
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            return Err(ClientHelloError::Malformed("empty handshake record"));
        }
        if len > MAX_RECORD_PAYLOAD {
            return Err(ClientHelloError::Malformed(
                "record longer than 2^14 + 2048 bytes",
            ));
        }
        if records == 0 {
            record_version = version;
        }
        records += 1;

        let payload = &rest[RECORD_HEADER_LEN..];
        let fragment = &payload[..len.min(payload.len())];
        if message.is_empty() {
            message = Cow::Borrowed(fragment);
        } else {
            message.to_mut().extend_from_slice(fragment);
        }

        // Look at the message after every fragment so errors surface early
        // and a complete message needs no more bytes, even if its record
        // continues.
        if let Some(body_len) = check_message_header(&message)? {
            let end = HANDSHAKE_HEADER_LEN + body_len;
            if message.len() >= end {
                let body = match message {
                    Cow::Borrowed(bytes) => Cow::Borrowed(&bytes[HANDSHAKE_HEADER_LEN..end]),
                    Cow::Owned(mut bytes) => {
                        bytes.truncate(end);
                        bytes.drain(..HANDSHAKE_HEADER_LEN);
                        Cow::Owned(bytes)
                    }
                };
                return Ok(Some(Reassembled {
                    record_version,
                    body,
                }));
            }
        }
        if fragment.len() < len {
            return Ok(None);
        }
        rest = &payload[len..];
    }
}

/// Checks the handshake header as far as it has arrived; returns the body
/// length once all four header bytes are present.
fn check_message_header(message: &[u8]) -> Result<Option<usize>, ClientHelloError> {
    if let Some(&msg_type) = message.first() {
        if msg_type != HANDSHAKE_TYPE_CLIENT_HELLO {
            return Err(ClientHelloError::NotClientHello { msg_type });
        }
    }
    let Some(header) = message.get(..HANDSHAKE_HEADER_LEN) else {
        return Ok(None);
    };
    let len =
        (usize::from(header[1]) << 16) | (usize::from(header[2]) << 8) | usize::from(header[3]);
    if len > MAX_HANDSHAKE_LEN {
        return Err(ClientHelloError::TooLarge { len });
    }
    Ok(Some(len))
}

/// Parses a complete ClientHello body (RFC 8446 §4.1.2).
fn parse_body(record_version: u16, body: &[u8]) -> Result<ClientHello, ClientHelloError> {
    let mut r = Reader::new(body);
    let mut hello = ClientHello {
        record_version,
        legacy_version: r.u16("truncated legacy_version")?,
        ..ClientHello::default()
    };
    r.take(32, "truncated random")?;

    let session_id = r.vec_u8("truncated legacy_session_id")?;
    if session_id.len() > 32 {
        return Err(ClientHelloError::Malformed(
            "legacy_session_id longer than 32 bytes",
        ));
    }
    let suites = r.vec_u16("truncated cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(ClientHelloError::Malformed(
            "cipher_suites length is zero or odd",
        ));
    }
    let compression = r.vec_u8("truncated legacy_compression_methods")?;
    if compression.is_empty() {
        return Err(ClientHelloError::Malformed("no legacy_compression_methods"));
    }
    // A TLS 1.2-and-earlier hello may end here: extensions are optional there.
    if r.is_empty() {
        return Ok(hello);
    }
    let mut extensions = r.sub_u16("truncated extensions")?;
    if !r.is_empty() {
        return Err(ClientHelloError::Malformed("bytes after the extensions"));
    }

    // Each type at most once (RFC 8446 §4.2); rustls enforces the same.
    let mut seen = Vec::new();
    while !extensions.is_empty() {
        let ext_type = extensions.u16("truncated extension type")?;
        let data = extensions.sub_u16("truncated extension data")?;
        seen.push(ext_type);
        match ext_type {
            EXTENSION_SERVER_NAME => hello.server_name = parse_server_name(data)?,
            EXTENSION_ALPN => hello.alpn = parse_alpn(data)?,
            EXTENSION_SUPPORTED_VERSIONS => {
                hello.supported_versions = parse_supported_versions(data)?;
            }
            _ => {}
        }
    }
    seen.sort_unstable();
    if seen.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(ClientHelloError::Malformed("duplicate extension"));
    }
    Ok(hello)
}

/// RFC 6066 §3: `ServerName server_name_list<1..2^16-1>`.
fn parse_server_name(mut data: Reader<'_>) -> Result<Option<String>, ClientHelloError> {
    let mut list = data.sub_u16("truncated server_name list")?;
    if !data.is_empty() {
        return Err(ClientHelloError::Malformed(
            "bytes after the server_name list",
        ));
    }
    if list.is_empty() {
        return Err(ClientHelloError::Malformed("empty server_name list"));
    }
    let mut host_name: Option<&[u8]> = None;
    while !list.is_empty() {
        if list.u8("truncated server_name entry")? != SERVER_NAME_TYPE_HOST_NAME {
            // Other name types have no defined encoding, so what follows
            // cannot be skipped; like rustls, stop at the first one.
            break;
        }
        let name = list.vec_u16("truncated host_name")?;
        if name.is_empty() {
            return Err(ClientHelloError::Malformed("empty host_name"));
        }
        if host_name.replace(name).is_some() {
            return Err(ClientHelloError::Malformed("more than one host_name"));
        }
    }
    let Some(name) = host_name else {
        return Err(ClientHelloError::Malformed(
            "server_name without a host_name",
        ));
    };
    // Same classification as rustls, so routing sees the name rustls sees.
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(dns)) => {
            let mut name = dns.as_ref().to_ascii_lowercase();
            // "example.com." and "example.com" are one name; route them alike.
            if name.len() > 1 && name.ends_with('.') {
                name.pop();
            }
            Ok(Some(name))
        }
        Ok(ServerName::IpAddress(_)) => Ok(None),
        Ok(_) | Err(_) => Err(ClientHelloError::Malformed(
            "host_name is not a valid DNS name",
        )),
    }
}

/// RFC 7301 §3.1: `ProtocolName protocol_name_list<2..2^16-1>`, names `<1..2^8-1>`.
fn parse_alpn(mut data: Reader<'_>) -> Result<Vec<Vec<u8>>, ClientHelloError> {
    let mut list = data.sub_u16("truncated ALPN list")?;
    if !data.is_empty() {
        return Err(ClientHelloError::Malformed("bytes after the ALPN list"));
    }
    if list.is_empty() {
        return Err(ClientHelloError::Malformed("empty ALPN list"));
    }
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let name = list.vec_u8("truncated ALPN protocol name")?;
        if name.is_empty() {
            return Err(ClientHelloError::Malformed("empty ALPN protocol name"));
        }
        protocols.push(name.to_vec());
    }
    Ok(protocols)
}

/// RFC 8446 §4.2.1: `ProtocolVersion versions<2..254>` in a ClientHello.
fn parse_supported_versions(mut data: Reader<'_>) -> Result<Vec<u16>, ClientHelloError> {
    let mut list = data.sub_u8("truncated supported_versions")?;
    if !data.is_empty() {
        return Err(ClientHelloError::Malformed(
            "bytes after supported_versions",
        ));
    }
    if list.is_empty() || list.remaining() % 2 != 0 {
        return Err(ClientHelloError::Malformed(
            "supported_versions length is zero or odd",
        ));
    }
    let mut versions = Vec::with_capacity(list.remaining() / 2);
    while !list.is_empty() {
        versions.push(list.u16("truncated supported_versions")?);
    }
    Ok(versions)
}

/// Bounds-checked cursor over a byte slice; every read names what it reads
/// so a short input becomes a precise `Malformed`.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        if n > self.bytes.len() {
            return Err(ClientHelloError::Malformed(what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ClientHelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ClientHelloError> {
        let bytes = self.take(2, what)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec_u8(&mut self, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let len = self.u8(what)?;
        self.take(usize::from(len), what)
    }

    /// A vector with a two-byte length prefix.
    fn vec_u16(&mut self, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    fn sub_u8(&mut self, what: &'static str) -> Result<Reader<'a>, ClientHelloError> {
        self.vec_u8(what).map(Reader::new)
    }

    fn sub_u16(&mut self, what: &'static str) -> Result<Reader<'a>, ClientHelloError> {
        self.vec_u16(what).map(Reader::new)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    use super::*;

    /// The first flight a real rustls client sends for `server_name`.
    fn rustls_hello(server_name: ServerName<'static>, alpn: &[&[u8]]) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default versions")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut conn = ClientConnection::new(Arc::new(config), server_name).expect("client");
        let mut wire = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut wire).expect("write_tls");
        }
        wire
    }

    fn example_hello() -> Vec<u8> {
        let name = ServerName::try_from("Example.COM").expect("name");
        rustls_hello(name, &[b"h2", b"http/1.1"])
    }

    /// Re-frames one record's payload into records split at `cuts`.
    fn split_records(wire: &[u8], cuts: &[usize]) -> Vec<u8> {
        let payload = &wire[RECORD_HEADER_LEN..];
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&payload.len())) {
            let chunk = &payload[start..end];
            out.extend_from_slice(&wire[..3]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
            start = end;
        }
        out
    }

    fn u16_vec(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// A ClientHello body with the given raw extensions block (None: no block).
    fn body_with_extensions(extensions: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        if let Some(ext) = extensions {
            body.extend_from_slice(&u16_vec(ext));
        }
        body
    }

    fn extension(ext_type: u16, data: &[u8]) -> Vec<u8> {
        let mut out = ext_type.to_be_bytes().to_vec();
        out.extend_from_slice(&u16_vec(data));
        out
    }

    fn sni_data(name: &[u8]) -> Vec<u8> {
        let mut entry = vec![SERVER_NAME_TYPE_HOST_NAME];
        entry.extend_from_slice(&u16_vec(name));
        u16_vec(&entry)
    }

    /// Wraps a body in a handshake header and one record.
    fn record(body: &[u8]) -> Vec<u8> {
        let mut message = vec![HANDSHAKE_TYPE_CLIENT_HELLO];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(body);
        let mut out = vec![CONTENT_TYPE_HANDSHAKE, 3, 1];
        out.extend_from_slice(&u16_vec(&message));
        out
    }

    fn parse_extensions(ext: &[u8]) -> Result<Option<ClientHello>, ClientHelloError> {
        parse(&record(&body_with_extensions(Some(ext))))
    }

    #[test]
    fn parses_rustls_client_hello() {
        let hello = parse(&example_hello()).expect("valid").expect("complete");
        assert_eq!(hello.server_name.as_deref(), Some("example.com"));
        assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(hello.supported_versions.contains(&0x0304));
        assert!(hello.supported_versions.contains(&0x0303));
        assert_eq!(hello.legacy_version, 0x0303);
        assert!(hello.record_version >> 8 == 3);
    }

    #[test]
    fn every_prefix_needs_more_bytes() {
        let wire = example_hello();
        for len in 0..wire.len() {
            assert_eq!(parse(&wire[..len]), Ok(None), "prefix of {len} bytes");
        }
        assert!(parse(&wire).expect("valid").is_some());
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let mut wire = example_hello();
        let expected = parse(&wire).expect("valid");
        wire.extend_from_slice(&[23, 3, 3, 0, 5, 1, 2, 3]);
        assert_eq!(parse(&wire).expect("valid"), expected);
    }

    #[test]
    fn reassembles_across_records() {
        let wire = example_hello();
        let expected = parse(&wire).expect("valid");
        // Inside the body, and inside the 4-byte handshake header.
        for cuts in [&[100][..], &[2], &[1, 3, 50, 51]] {
            let split = split_records(&wire, cuts);
            assert_eq!(parse(&split).expect("valid"), expected, "cuts {cuts:?}");
            for len in 0..split.len() {
                assert_eq!(parse(&split[..len]), Ok(None), "cuts {cuts:?} len {len}");
            }
        }
    }

    #[test]
    fn ip_address_server_name_sends_no_sni() {
        let name = ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().unwrap().into());
        let hello = parse(&rustls_hello(name, &[]))
            .expect("valid")
            .expect("complete");
        assert_eq!(hello.server_name, None);
        assert!(hello.alpn.is_empty());
    }

    #[test]
    fn ip_literal_in_sni_counts_as_no_sni() {
        let ext = extension(EXTENSION_SERVER_NAME, &sni_data(b"10.0.0.1"));
        let hello = parse_extensions(&ext).expect("valid").expect("complete");
        assert_eq!(hello.server_name, None);
    }

    #[test]
    fn sni_trailing_dot_is_dropped() {
        let ext = extension(EXTENSION_SERVER_NAME, &sni_data(b"API.Example.com."));
        let hello = parse_extensions(&ext).expect("valid").expect("complete");
        assert_eq!(hello.server_name.as_deref(), Some("api.example.com"));
    }

    #[test]
    fn hello_without_extensions() {
        let hello = parse(&record(&body_with_extensions(None)))
            .expect("valid")
            .expect("complete");
        assert_eq!(hello.legacy_version, 0x0303);
        assert_eq!(hello.server_name, None);
        assert!(hello.supported_versions.is_empty());
    }

    #[test]
    fn plaintext_http_is_not_handshake() {
        let err = parse(b"GET / HTTP/1.1\r\n").unwrap_err();
        assert_eq!(err, ClientHelloError::NotHandshake { content_type: b'G' });
        assert!(err.is_plaintext_http());
        assert!(err.to_string().contains("plaintext HTTP"), "{err}");
        // The first byte decides.
        assert_eq!(
            parse(b"P"),
            Err(ClientHelloError::NotHandshake { content_type: b'P' })
        );

        let err = parse(&[21, 3, 3, 0, 2, 2, 40]).unwrap_err();
        assert!(!err.is_plaintext_http());
        assert!(!err.to_string().contains("HTTP"), "{err}");
    }

    #[test]
    fn other_handshake_message_is_not_client_hello() {
        // A ServerHello (type 2) in the first record.
        assert_eq!(
            parse(&[22, 3, 3, 0, 1, 2]),
            Err(ClientHelloError::NotClientHello { msg_type: 2 })
        );
    }

    #[test]
    fn bad_record_headers_are_malformed() {
        let malformed = |buf: &[u8]| matches!(parse(buf), Err(ClientHelloError::Malformed(_)));
        assert!(malformed(&[22, 3, 1, 0xff, 0xff]), "record too long");
        assert!(malformed(&[22, 3, 1, 0x48, 0x01]), "just over the limit");
        assert!(malformed(&[22, 3, 1, 0, 0]), "empty record");
        assert!(malformed(&[22, 2, 0]), "version 2.0");
        // A change_cipher_spec record in the middle of the hello.
        let wire = example_hello();
        let mut split = split_records(&wire, &[10]);
        let second = RECORD_HEADER_LEN + 10;
        split[second] = 20;
        assert!(malformed(&split));
    }

    #[test]
    fn oversized_hello_is_too_large() {
        assert_eq!(
            parse(&[22, 3, 1, 0, 4, 1, 1, 0, 0]),
            Err(ClientHelloError::TooLarge { len: 0x10000 })
        );
    }

    #[test]
    fn inconsistent_lengths_are_malformed() {
        let malformed = |buf: &[u8]| matches!(parse(buf), Err(ClientHelloError::Malformed(_)));
        let body = body_with_extensions(Some(&[]));
        // Truncated body: the handshake length is honest, the content is short.
        assert!(malformed(&record(&body[..20])));
        // Session id longer than 32.
        let mut bad = body.clone();
        bad[34] = 33;
        assert!(malformed(&record(&bad)));
        // Cipher suites length overruns the body.
        let mut bad = body.clone();
        bad[35..37].copy_from_slice(&[0xff, 0xf0]);
        assert!(malformed(&record(&bad)));
        // Odd cipher suites length.
        let mut bad = body.clone();
        bad[36] = 3;
        assert!(malformed(&record(&bad)));
        // Extensions block longer than what is left.
        let mut bad = body.clone();
        let n = bad.len();
        bad[n - 1] = 4;
        assert!(malformed(&record(&bad)));
        // Bytes after the extensions block.
        let mut bad = body.clone();
        bad.push(0);
        assert!(malformed(&record(&bad)));
        // An extension whose data runs past the block.
        assert!(malformed(&record(&body_with_extensions(Some(&[
            0, 99, 0, 9, 1
        ])))));
        // SNI list length longer than the extension.
        let mut sni = sni_data(b"example.com");
        sni[1] += 1;
        assert!(malformed(&record(&body_with_extensions(Some(&extension(
            0, &sni
        ))))));
        // ALPN name longer than its list.
        let alpn = u16_vec(&[5, b'h', b'2']);
        assert!(malformed(&record(&body_with_extensions(Some(&extension(
            16, &alpn
        ))))));
        // Odd supported_versions.
        let versions = [3, 3, 4, 3];
        assert!(malformed(&record(&body_with_extensions(Some(&extension(
            43, &versions
        ))))));
    }

    #[test]
    fn bad_extension_contents_are_malformed() {
        let malformed =
            |ext: Vec<u8>| matches!(parse_extensions(&ext), Err(ClientHelloError::Malformed(_)));
        let sni = extension(EXTENSION_SERVER_NAME, &sni_data(b"a.example"));
        assert!(
            malformed([sni.clone(), sni.clone()].concat()),
            "duplicate extension"
        );
        assert!(malformed(extension(0, &sni_data(b"bad name!"))));
        assert!(malformed(extension(0, &sni_data(b""))));
        assert!(malformed(extension(0, &u16_vec(&[]))));
        assert!(malformed(extension(0, &[])));
        let two_names = u16_vec(&[[0, 0, 1, b'a'], [0, 0, 1, b'b']].concat());
        assert!(malformed(extension(0, &two_names)));
        assert!(malformed(extension(16, &u16_vec(&[]))));
        assert!(malformed(extension(16, &u16_vec(&[0]))));
        assert!(malformed(extension(43, &[0])));
    }

    #[test]
    fn unknown_extensions_and_name_types_are_tolerated() {
        let mut names = vec![SERVER_NAME_TYPE_HOST_NAME];
        names.extend_from_slice(&u16_vec(b"svc.internal"));
        names.extend_from_slice(&[9, 0xde, 0xad]); // unknown name type: rest skipped
        let ext = [
            extension(0xfe0d, &[1, 2, 3]),
            extension(EXTENSION_SERVER_NAME, &u16_vec(&names)),
            extension(0xaaaa, &[]),
            extension(EXTENSION_SUPPORTED_VERSIONS, &[4, 3, 4, 3, 3]),
            extension(EXTENSION_ALPN, &u16_vec(&[2, b'h', b'2'])),
        ]
        .concat();
        let hello = parse_extensions(&ext).expect("valid").expect("complete");
        assert_eq!(hello.server_name.as_deref(), Some("svc.internal"));
        assert_eq!(hello.supported_versions, vec![0x0304, 0x0303]);
        assert_eq!(hello.alpn, vec![b"h2".to_vec()]);
    }

    #[test]
    fn too_many_records_fail_before_the_bound() {
        // One byte per record: the hello never completes within MAX_RECORDS.
        let wire = example_hello();
        let cuts: Vec<usize> = (1..wire.len() - RECORD_HEADER_LEN).collect();
        let split = split_records(&wire, &cuts);
        assert!(split.len() > MAX_RECORDS * (RECORD_HEADER_LEN + 1));
        assert!(matches!(parse(&split), Err(ClientHelloError::Malformed(_))));
    }

    /// Deterministic xorshift64 so failures reproduce.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let seeds = [
            example_hello(),
            split_records(&example_hello(), &[2, 60]),
            rustls_hello(
                ServerName::IpAddress(std::net::IpAddr::from([10, 0, 0, 1]).into()),
                &[b"x"],
            ),
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut completes = 0;
        for round in 0..20_000 {
            let buf = if round % 4 == 0 {
                // Pure noise, sometimes behind a plausible record header.
                let len = rng.below(700);
                let mut buf: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                if rng.below(2) == 0 && buf.len() > 9 {
                    buf[..6].copy_from_slice(&[22, 3, 1, 0, 0, 1]);
                    buf[3] = rng.below(3) as u8;
                }
                buf
            } else {
                let mut buf = seeds[rng.below(seeds.len())].clone();
                for _ in 0..1 + rng.below(6) {
                    let at = rng.below(buf.len());
                    match rng.below(5) {
                        0 => buf[at] = rng.byte(),
                        1 => buf[at] ^= 1 << rng.below(8),
                        // Length fields are the interesting targets: nudge them.
                        2 => buf[at] = buf[at].wrapping_add(1),
                        3 => buf[at] = buf[at].wrapping_sub(1),
                        _ => buf.truncate(at),
                    }
                    if buf.is_empty() {
                        break;
                    }
                }
                buf
            };
            match parse(&buf) {
                Ok(Some(_)) => completes += 1,
                Ok(None) => assert!(buf.len() < MAX_CLIENT_HELLO_BYTES),
                Err(_) => {}
            }
        }
        // The mutations must not all be fatal, or the test explores little.
        assert!(completes > 100, "only {completes} complete parses");
    }
}
