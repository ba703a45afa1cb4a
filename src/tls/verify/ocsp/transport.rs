//! Asking a responder: one HTTP/1.0 POST over plain TCP (RFC 6960 appendix
//! A), bounded by a deadline for the whole exchange. The URL and the
//! response framing are parsed without I/O; [`post`] is the thin part.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest response body accepted; real ones are a few KiB.
const MAX_RESPONSE: usize = 64 * 1024;

/// A responder's `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponderUrl {
    host: String,
    port: u16,
    path: String,
    text: String,
}

/// Why a responder URL is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("OCSP responder URL {url:?} {reason}")]
pub struct UrlError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ResponderUrl {
    /// Parses an `http://` URL. HTTPS is refused: OCSP responses are signed,
    /// so responders serve them over plain HTTP (TLS to the responder would
    /// itself need revocation checking).
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let bad = |reason| UrlError {
            url: text.to_string(),
            reason,
        };
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some(_) => {
                return Err(bad(
                    "must use http:// (OCSP responses are signed; https is not supported)",
                ))
            }
            None => return Err(bad("must start with http://")),
        };
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("contains whitespace or control characters"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("must not contain user information"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed '['"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("has an invalid port"))?,
            None => 80,
        };
        Ok(ResponderUrl {
            host: host.to_string(),
            port,
            path: path.to_string(),
            text: text.to_string(),
        })
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The `Host` header value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for ResponderUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a responder could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The host name resolves to nothing.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host.
        host: String,
    },
    /// Connecting, sending or receiving failed, or the deadline passed.
    #[error("{stage}: {cause}")]
    Io {
        /// What was being done.
        stage: &'static str,
        /// The error.
        cause: io::Error,
    },
    /// The reply is not a usable HTTP response.
    #[error("bad HTTP response: {0}")]
    Http(String),
}

/// The POST request bytes for `body`.
pub fn encode_post(url: &ResponderUrl, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/ocsp-request\r\n\
         Accept: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.path,
        url.host_header(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// What a (possibly partial) reply amounts to so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// More bytes are needed (the body is still arriving, or its length is
    /// only known at end of stream).
    Incomplete,
    /// The whole body.
    Body(&'a [u8]),
}

/// Frames an HTTP/1.x reply: `at_eof` says the peer closed. Only `200`
/// with an identity body (Content-Length, or until close) is accepted.
pub fn parse_reply(buf: &[u8], at_eof: bool) -> Result<Reply<'_>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if at_eof {
            Err("connection closed before the end of the headers".into())
        } else {
            Ok(Reply::Incomplete)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "headers are not text".to_string())?;
    let body = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split_whitespace().nth(1);
    if !status.starts_with("HTTP/1.") || code.is_none() {
        return Err(format!("not an HTTP/1 status line: {status:?}"));
    }
    if code != Some("200") {
        return Err(format!("status {status:?}"));
    }
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(format!("unsupported Transfer-Encoding {value:?}"));
        }
    }
    match length {
        Some(n) if n > MAX_RESPONSE => Err(format!("body of {n} bytes is too large")),
        Some(n) if body.len() >= n => Ok(Reply::Body(&body[..n])),
        Some(_) if at_eof => Err("connection closed before the end of the body".into()),
        None if at_eof => Ok(Reply::Body(body)),
        _ => Ok(Reply::Incomplete),
    }
}

/// POSTs `body` to the responder and returns the response body. Every step
/// (resolving aside) shares one deadline, `timeout` from now.
pub fn post(url: &ResponderUrl, body: &[u8], timeout: Duration) -> Result<Vec<u8>, TransportError> {
    let deadline = Instant::now() + timeout;
    let io = |stage| move |cause| TransportError::Io { stage, cause };
    let left = |stage| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| TransportError::Io {
                stage,
                cause: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ),
            })
    };
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|_| TransportError::Resolve {
            host: url.host.clone(),
        })?
        .collect();
    let addr = *addrs.first().ok_or_else(|| TransportError::Resolve {
        host: url.host.clone(),
    })?;
    let mut stream = TcpStream::connect_timeout(&addr, left("connect")?).map_err(io("connect"))?;
    stream.set_nodelay(true).map_err(io("connect"))?;
    stream
        .set_write_timeout(Some(left("send")?))
        .map_err(io("send"))?;
    stream
        .write_all(&encode_post(url, body))
        .map_err(io("send"))?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        stream
            .set_read_timeout(Some(left("receive")?))
            .map_err(io("receive"))?;
        let n = match stream.read(&mut chunk) {
            // A signal delivered to this thread (reload, drain) is no answer.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other,
        }
        .map_err(|cause| match cause.kind() {
            // What a read timeout looks like on Unix.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TransportError::Io {
                stage: "receive",
                cause: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ),
            },
            _ => TransportError::Io {
                stage: "receive",
                cause,
            },
        })?;
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE + 16 * 1024 {
            return Err(TransportError::Http("response is too large".into()));
        }
        match parse_reply(&buf, n == 0).map_err(TransportError::Http)? {
            Reply::Body(body) => return Ok(body.to_vec()),
            Reply::Incomplete => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = ResponderUrl::parse("http://127.0.0.1:8888").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8888, "/")
        );
        let u = ResponderUrl::parse("http://ocsp.example/a/b").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("ocsp.example", 80, "/a/b")
        );
        assert_eq!(u.host_header(), "ocsp.example");
        let u = ResponderUrl::parse("HTTP://[::1]:9/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert_eq!(u.host_header(), "[::1]:9");
        for (bad, why) in [
            ("https://x", "must use http://"),
            ("x:80", "must start with http://"),
            ("http://:80/", "has no host"),
            ("http://x:0/", "has an invalid port"),
            ("http://x:99999/", "has an invalid port"),
            ("http://u@x/", "must not contain user information"),
            ("http://x/a b", "contains whitespace"),
        ] {
            let e = ResponderUrl::parse(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn request_bytes() {
        let u = ResponderUrl::parse("http://127.0.0.1:8888/ocsp").unwrap();
        let req = encode_post(&u, b"\x30\x00");
        let text = String::from_utf8_lossy(&req);
        assert!(
            text.starts_with("POST /ocsp HTTP/1.0\r\nHost: 127.0.0.1:8888\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(req.ends_with(b"\r\n\r\n\x30\x00"));
    }

    #[test]
    fn reply_framing() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabcdef";
        assert_eq!(parse_reply(ok, false), Ok(Reply::Body(b"abc")));
        assert_eq!(parse_reply(&ok[..40], false), Ok(Reply::Incomplete));
        assert!(parse_reply(&ok[..40], true).is_err());
        let unframed = b"HTTP/1.1 200 OK\r\n\r\nxyz";
        assert_eq!(parse_reply(unframed, false), Ok(Reply::Incomplete));
        assert_eq!(parse_reply(unframed, true), Ok(Reply::Body(b"xyz")));
        assert!(parse_reply(b"HTTP/1.0 404 Not Found\r\n\r\n", true)
            .unwrap_err()
            .contains("404"));
        assert!(parse_reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        )
        .is_err());
        assert!(parse_reply(b"SSH-2.0\r\n\r\n", false).is_err());
        assert!(parse_reply(b"HTTP/1.0 200 OK\r\nContent-Length: 999999\r\n\r\n", false).is_err());
        assert!(parse_reply(b"HTTP/1.0 200", true).is_err());
    }

    #[test]
    fn deadline_bounds_a_silent_responder() {
        // Accepts and never answers: post must give up at the deadline.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url =
            ResponderUrl::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let e = post(&url, b"\x30\x00", Duration::from_millis(200)).unwrap_err();
        assert!(
            matches!(
                e,
                TransportError::Io {
                    stage: "receive",
                    ..
                }
            ),
            "{e}"
        );
        drop(listener);
    }
}
