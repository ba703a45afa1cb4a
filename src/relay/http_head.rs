//! Rewriting HTTP/1.1 request heads on their way to the backend, for the
//! client certificate header mode (`client_cert_header`).
//!
//! Sans-IO: [`HeadRewriter::feed`] takes decrypted client bytes in whatever
//! pieces the reads return (a head split across reads, pipelined requests)
//! and appends what the backend must receive. For each request head it
//! removes every header the client sent under one of the configured names
//! (so a client cannot spoof its identity) and appends ours. It follows the
//! body framing (Content-Length, chunked with extensions and trailers, or no
//! body) so the next head is found; body bytes pass through untouched. After
//! a CONNECT or a `Connection: upgrade` request everything passes through.
//!
//! A head it cannot frame safely is refused ([`Rejection`]): the relay
//! answers 400 (431 for an oversized head) and closes, since guessing would
//! let a request be smuggled past the header rewrite.

use std::fmt;

/// Default limit on one request head (request line and headers).
pub const DEFAULT_MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a request was refused, and the response the client gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Rejection {
    /// HTTP status: 400, or 431 when the head is too large.
    pub status: u16,
    /// What was wrong, for the log and the response body.
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

impl Rejection {
    fn bad(reason: impl Into<String>) -> Self {
        Self {
            status: 400,
            reason: reason.into(),
        }
    }

    /// The complete HTTP/1.1 response to send the client before closing.
    pub fn response(&self) -> Vec<u8> {
        let phrase = match self.status {
            431 => "Request Header Fields Too Large",
            _ => "Bad Request",
        };
        let body = format!("{}\n", self.reason);
        format!(
            "HTTP/1.1 {} {phrase}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.status,
            body.len()
        )
        .into_bytes()
    }
}

/// Where the rewriter is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// Passing this many more bytes of a Content-Length body.
    Body(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// After CONNECT or an upgrade: everything passes untouched.
    Tunnel,
    /// A request was refused; nothing more is accepted.
    Failed,
}

/// Position inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line (`1a;ext=v\r\n`).
    Size,
    /// Passing this many more bytes of chunk data.
    Data(u64),
    /// Expecting the CRLF after chunk data (`true` once the CR was seen).
    DataEnd(bool),
    /// Reading trailer lines after the last chunk, up to an empty line.
    Trailers,
}

/// What one head says about what follows it.
enum Framing {
    None,
    Length(u64),
    Chunked,
    Tunnel,
}

/// Rewrites the request heads of one client connection.
#[derive(Debug)]
pub struct HeadRewriter {
    /// Header names to remove, lower case.
    strip: Vec<String>,
    /// Header lines to insert into every head, each ending in CRLF.
    insert: Vec<u8>,
    max_head: usize,
    state: State,
    /// The head (or chunk-size or trailer line) collected so far.
    pending: Vec<u8>,
}

impl HeadRewriter {
    /// A rewriter that removes headers named `strip` (any case) and inserts
    /// `insert` (complete `Name: value\r\n` lines) into every request head
    /// no larger than `max_head` bytes.
    pub fn new(strip: &[String], insert: Vec<u8>, max_head: usize) -> Self {
        Self {
            strip: strip.iter().map(|n| n.to_ascii_lowercase()).collect(),
            insert,
            max_head,
            state: State::Head,
            pending: Vec::new(),
        }
    }

    /// Takes the next bytes from the client and appends what goes to the
    /// backend to `out`. On a rejection, `out` may hold earlier complete
    /// requests; the connection must answer with [`Rejection::response`]
    /// and close, and every later call fails too.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Rejection> {
        while !input.is_empty() {
            let used = match self.state {
                State::Failed => return Err(Rejection::bad("connection already refused")),
                State::Tunnel => {
                    out.extend_from_slice(input);
                    input.len()
                }
                State::Body(left) => {
                    let n = pass(input, left, out);
                    self.state = if n as u64 == left {
                        State::Head
                    } else {
                        State::Body(left - n as u64)
                    };
                    n
                }
                State::Head => match self.head(input, out) {
                    Ok(n) => n,
                    Err(e) => {
                        self.state = State::Failed;
                        return Err(e);
                    }
                },
                State::Chunked(chunk) => match self.chunked(chunk, input, out) {
                    Ok(n) => n,
                    Err(e) => {
                        self.state = State::Failed;
                        return Err(e);
                    }
                },
            };
            input = &input[used..];
        }
        Ok(())
    }

    /// How many of the next bytes pass through untouched, whatever they are:
    /// the rest of a Content-Length body or of a chunk's data, or (after an
    /// upgrade) everything. The kernel path splices these instead of
    /// reading them; it then reports them with [`HeadRewriter::skip`].
    pub fn verbatim(&self) -> u64 {
        match self.state {
            State::Body(n) | State::Chunked(Chunk::Data(n)) => n,
            State::Tunnel => u64::MAX,
            State::Head | State::Chunked(_) | State::Failed => 0,
        }
    }

    /// Accounts for `n` bytes, at most [`HeadRewriter::verbatim`], that
    /// went to the backend without passing through [`HeadRewriter::feed`].
    pub fn skip(&mut self, n: u64) {
        let n = n.min(self.verbatim());
        self.state = match self.state {
            State::Body(left) if n == left => State::Head,
            State::Body(left) => State::Body(left - n),
            State::Chunked(Chunk::Data(left)) if n == left => State::Chunked(Chunk::DataEnd(false)),
            State::Chunked(Chunk::Data(left)) => State::Chunked(Chunk::Data(left - n)),
            other => other,
        };
    }

    /// Collects head bytes; once the head is complete, writes it rewritten
    /// and moves to its body. Returns the input bytes used.
    fn head(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Rejection> {
        // Empty lines before a request line are ignored (RFC 9112 §2.2).
        let mut skipped = 0;
        if self.pending.is_empty() {
            skipped = input
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if skipped == input.len() {
                return Ok(skipped);
            }
        }
        let input = &input[skipped..];
        // The end may straddle the previous piece: search from 3 bytes back.
        let from = self.pending.len().saturating_sub(3);
        let before = self.pending.len();
        let room = self.max_head.saturating_sub(before);
        let take = input.len().min(room.saturating_add(1));
        self.pending.extend_from_slice(&input[..take]);
        let end = find(&self.pending[from..], b"\r\n\r\n").map(|i| from + i + 4);
        let searched = end.unwrap_or(self.pending.len());
        if find(&self.pending[from.saturating_sub(1)..searched], b"\n\n").is_some() {
            return Err(Rejection::bad("line not ended by CRLF"));
        }
        let Some(end) = end else {
            if self.pending.len() > self.max_head {
                return Err(Rejection {
                    status: 431,
                    reason: format!("request head larger than {} bytes", self.max_head),
                });
            }
            return Ok(skipped + take);
        };
        if end > self.max_head {
            return Err(Rejection {
                status: 431,
                reason: format!("request head larger than {} bytes", self.max_head),
            });
        }
        let head = std::mem::take(&mut self.pending);
        let framing = self.rewrite(&head[..end], out)?;
        self.state = match framing {
            Framing::None | Framing::Length(0) => State::Head,
            Framing::Length(n) => State::Body(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::Tunnel => State::Tunnel,
        };
        Ok(skipped + (end - before))
    }

    /// Checks one complete head, writes it without the stripped headers and
    /// with ours, and says how its body is framed.
    fn rewrite(&self, head: &[u8], out: &mut Vec<u8>) -> Result<Framing, Rejection> {
        // Without the empty line's CRLF and the last line's LF, every line
        // ends in a CR.
        let text = &head[..head.len() - 3];
        let mut lines = text.split(|&b| b == b'\n').map(|l| {
            l.strip_suffix(b"\r")
                .ok_or_else(|| Rejection::bad("line not ended by CRLF"))
        });
        let request_line = lines.next().unwrap_or(Ok(b""))?;
        let method = request_line_method(request_line)?;

        let mut length: Option<u64> = None;
        let mut transfer_encoding: Vec<String> = Vec::new();
        let mut upgrade_token = false;
        let mut upgrade_header = false;
        let mut rewritten = Vec::with_capacity(head.len() + self.insert.len());
        rewritten.extend_from_slice(request_line);
        rewritten.extend_from_slice(b"\r\n");
        for line in lines {
            let line = line?;
            let (name, value) = header_field(line)?;
            let lower = name.to_ascii_lowercase();
            match lower.as_str() {
                "content-length" => {
                    let n = parse_length(value)?;
                    if length.is_some_and(|l| l != n) {
                        return Err(Rejection::bad("conflicting Content-Length headers"));
                    }
                    length = Some(n);
                }
                "transfer-encoding" => transfer_encoding.extend(tokens(value)),
                "connection" => upgrade_token |= tokens(value).any(|t| t == "upgrade"),
                "upgrade" => upgrade_header = true,
                _ => {}
            }
            if !self.strip.contains(&lower) {
                rewritten.extend_from_slice(line);
                rewritten.extend_from_slice(b"\r\n");
            }
        }
        rewritten.extend_from_slice(&self.insert);
        rewritten.extend_from_slice(b"\r\n");

        let framing = if !transfer_encoding.is_empty() {
            if length.is_some() {
                return Err(Rejection::bad("both Content-Length and Transfer-Encoding"));
            }
            // Only a final chunked coding frames a request body (RFC 9112 §6.3).
            if transfer_encoding.last().map(String::as_str) != Some("chunked")
                || transfer_encoding.iter().filter(|t| *t == "chunked").count() > 1
            {
                return Err(Rejection::bad(
                    "Transfer-Encoding must end in a single chunked",
                ));
            }
            Framing::Chunked
        } else if method == b"CONNECT" || (upgrade_token && upgrade_header) {
            Framing::Tunnel
        } else {
            length.map_or(Framing::None, Framing::Length)
        };
        out.extend_from_slice(&rewritten);
        Ok(framing)
    }

    /// Follows a chunked body, passing it through. Returns input bytes used.
    fn chunked(
        &mut self,
        chunk: Chunk,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, Rejection> {
        match chunk {
            Chunk::Data(left) => {
                let n = pass(input, left, out);
                self.state = State::Chunked(if n as u64 == left {
                    Chunk::DataEnd(false)
                } else {
                    Chunk::Data(left - n as u64)
                });
                Ok(n)
            }
            Chunk::DataEnd(cr_seen) => {
                let b = input[0];
                out.push(b);
                self.state = match (cr_seen, b) {
                    (false, b'\r') => State::Chunked(Chunk::DataEnd(true)),
                    (true, b'\n') => State::Chunked(Chunk::Size),
                    _ => return Err(Rejection::bad("chunk data not followed by CRLF")),
                };
                Ok(1)
            }
            Chunk::Size | Chunk::Trailers => {
                let limit = if chunk == Chunk::Size {
                    MAX_CHUNK_LINE
                } else {
                    self.max_head
                };
                let Some(line_end) = input.iter().position(|&b| b == b'\n') else {
                    if self.pending.len() + input.len() > limit {
                        return Err(Rejection::bad("chunk-size or trailer line too long"));
                    }
                    self.pending.extend_from_slice(input);
                    out.extend_from_slice(input);
                    return Ok(input.len());
                };
                let used = line_end + 1;
                self.pending.extend_from_slice(&input[..used]);
                out.extend_from_slice(&input[..used]);
                let line = std::mem::take(&mut self.pending);
                let Some(line) = line.strip_suffix(b"\r\n") else {
                    return Err(Rejection::bad("chunk line not ended by CRLF"));
                };
                if chunk == Chunk::Trailers {
                    self.state = if line.is_empty() {
                        State::Head
                    } else {
                        header_field(line)?;
                        State::Chunked(Chunk::Trailers)
                    };
                    return Ok(used);
                }
                let size = chunk_size(line)?;
                self.state = State::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(used)
            }
        }
    }
}

/// Copies up to `left` bytes of `input` to `out`; returns how many.
fn pass(input: &[u8], left: u64, out: &mut Vec<u8>) -> usize {
    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
    out.extend_from_slice(&input[..n]);
    n
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `b` may appear in a token (tchar of RFC 9110 §5.6.2), such as
/// a header name.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks `METHOD SP target SP HTTP/1.x`; returns the method.
fn request_line_method(line: &[u8]) -> Result<&[u8], Rejection> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::bad("malformed request line"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_token_byte(b)) {
        return Err(Rejection::bad("malformed request method"));
    }
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(Rejection::bad("malformed request target"));
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(Rejection::bad("not an HTTP/1.0 or HTTP/1.1 request"));
    }
    Ok(method)
}

/// Splits `name: value`; the name must be a token with no space before
/// the colon, the value free of control characters but tab.
fn header_field(line: &[u8]) -> Result<(&str, &[u8]), Rejection> {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return Err(Rejection::bad("obsolete line folding"));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| Rejection::bad("header line without a colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
        return Err(Rejection::bad("malformed header name"));
    }
    if value.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err(Rejection::bad("control character in a header value"));
    }
    let name = std::str::from_utf8(name).map_err(|_| Rejection::bad("malformed header name"))?;
    Ok((name, value.trim_ascii()))
}

/// A Content-Length value: digits only (a list of equal values is allowed).
fn parse_length(value: &[u8]) -> Result<u64, Rejection> {
    let bad = || Rejection::bad("invalid Content-Length");
    let mut found: Option<u64> = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 18 || !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(bad());
        }
        found = Some(n);
    }
    found.ok_or_else(bad)
}

/// The comma-separated tokens of a list header, lower case.
fn tokens(value: &[u8]) -> impl Iterator<Item = String> + '_ {
    value
        .split(|&b| b == b',')
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// The size of a chunk-size line, ignoring its extensions.
fn chunk_size(line: &[u8]) -> Result<u64, Rejection> {
    let digits = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .map_or(line, |i| &line[..i]);
    let rest = &line[digits.len()..];
    let bad = || Rejection::bad("invalid chunk size");
    if digits.is_empty() || digits.len() > 15 {
        return Err(bad());
    }
    if rest.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err(bad());
    }
    let mut n = 0u64;
    for &d in digits {
        let v = (d as char).to_digit(16).ok_or_else(bad)?;
        n = n * 16 + u64::from(v);
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
