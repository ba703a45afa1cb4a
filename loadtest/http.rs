//! Just enough HTTP/1.1 for `rr --http`: one GET request built once per
//! connection, and an incremental parser for its response that reuses its
//! buffer from request to request.

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// The GET request sent on every operation.
pub fn get_request(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tlsplice-load\r\n\r\n").into_bytes()
}

/// Why a response was not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The status line or a header could not be parsed.
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
    /// The head exceeded the size limit.
    #[error("HTTP response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// Chunked bodies are not supported.
    #[error("chunked HTTP responses are not supported; serve a Content-Length body")]
    Chunked,
    /// The status was not 2xx.
    #[error("HTTP status {0}")]
    Status(u16),
    /// Bytes arrived after the response although only one request was outstanding.
    #[error("{0} unexpected bytes after the HTTP response")]
    Trailing(usize),
}

/// Where the parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body { left: u64 },
    UntilClose,
    Done,
}

/// What a complete response looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// Body bytes.
    pub body: u64,
    /// The server will close the connection after it.
    pub close: bool,
}

/// Incremental parser for one response at a time.
#[derive(Debug)]
pub struct ResponseParser {
    head: Vec<u8>,
    state: State,
    body: u64,
    close: bool,
}

impl Default for ResponseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseParser {
    /// A parser awaiting a response head.
    pub fn new() -> Self {
        Self {
            head: Vec::with_capacity(1024),
            state: State::Head,
            body: 0,
            close: false,
        }
    }

    /// Prepares for the next response, keeping the buffer.
    pub fn reset(&mut self) {
        self.head.clear();
        self.state = State::Head;
        self.body = 0;
        self.close = false;
    }

    /// Feeds received bytes; `Some` once the response is complete.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<Option<Response>, HttpError> {
        while !data.is_empty() {
            match self.state {
                State::Head => {
                    // The blank line may straddle chunks: look just before the new bytes too.
                    let from = self.head.len().saturating_sub(3);
                    self.head.extend_from_slice(data);
                    let Some(end) = find(&self.head[from..], b"\r\n\r\n").map(|i| from + i + 4)
                    else {
                        if self.head.len() > MAX_HEAD {
                            return Err(HttpError::HeadTooLarge);
                        }
                        return Ok(None);
                    };
                    let rest = self.head.len() - end;
                    self.state = self.parse_head(end)?;
                    // Continue with the bytes after the head (they are at the
                    // tail of `data`, which `head` copied).
                    data = &data[data.len() - rest..];
                }
                State::Body { left } => {
                    let take = (data.len() as u64).min(left);
                    self.body += take;
                    data = &data[take as usize..];
                    self.state = if take == left {
                        State::Done
                    } else {
                        State::Body { left: left - take }
                    };
                }
                State::UntilClose => {
                    self.body += data.len() as u64;
                    data = &[];
                }
                State::Done => return Err(HttpError::Trailing(data.len())),
            }
        }
        Ok(self.finished())
    }

    /// The connection closed: completes a body that runs until close.
    pub fn closed(&mut self) -> Option<Response> {
        if self.state == State::UntilClose {
            self.state = State::Done;
            self.close = true;
        }
        self.finished()
    }

    fn finished(&self) -> Option<Response> {
        (self.state == State::Done).then_some(Response {
            body: self.body,
            close: self.close,
        })
    }

    fn parse_head(&mut self, end: usize) -> Result<State, HttpError> {
        let head = &self.head[..end - 4];
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let status_line = lines.next().ok_or(HttpError::Malformed("empty head"))?;
        let mut parts = status_line.splitn(3, |&b| b == b' ');
        let version = parts.next().unwrap_or_default();
        let minor = match version {
            b"HTTP/1.1" => 1,
            b"HTTP/1.0" => 0,
            _ => return Err(HttpError::Malformed("not an HTTP/1.x status line")),
        };
        let status = parts
            .next()
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or(HttpError::Malformed("bad status code"))?;
        let mut length = None;
        let mut close = minor == 0;
        for line in lines {
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or(HttpError::Malformed("header without colon"))?;
            let name = &line[..colon];
            let value = std::str::from_utf8(&line[colon + 1..])
                .map_err(|_| HttpError::Malformed("header value is not UTF-8"))?
                .trim();
            if name.eq_ignore_ascii_case(b"content-length") {
                length = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| HttpError::Malformed("bad Content-Length"))?,
                );
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                return Err(HttpError::Chunked);
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        close = false;
                    }
                }
            }
        }
        if !(200..300).contains(&status) {
            return Err(HttpError::Status(status));
        }
        self.close = close;
        // 204 and 304 never have a body.
        let bodiless = status == 204 || status == 304;
        Ok(match length {
            _ if bodiless => State::Done,
            Some(0) => State::Done,
            Some(n) => State::Body { left: n },
            None => State::UntilClose,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello";

    #[test]
    fn whole_response_in_one_chunk() {
        let mut p = ResponseParser::new();
        let r = p.feed(OK).unwrap().unwrap();
        assert_eq!(
            r,
            Response {
                body: 5,
                close: false
            }
        );
    }

    #[test]
    fn response_split_at_every_byte() {
        let mut p = ResponseParser::new();
        for (i, b) in OK.iter().enumerate() {
            let r = p.feed(std::slice::from_ref(b)).unwrap();
            assert_eq!(r.is_some(), i == OK.len() - 1, "at byte {i}");
        }
        // Reuse for the next response.
        p.reset();
        assert!(p.feed(OK).unwrap().is_some());
    }

    #[test]
    fn non_2xx_is_an_error() {
        let mut p = ResponseParser::new();
        let err = p
            .feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            .unwrap_err();
        assert_eq!(err, HttpError::Status(404));
    }

    #[test]
    fn chunked_is_refused_clearly() {
        let mut p = ResponseParser::new();
        let err = p
            .feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap_err();
        assert_eq!(err, HttpError::Chunked);
    }

    #[test]
    fn body_until_close() {
        let mut p = ResponseParser::new();
        assert_eq!(p.feed(b"HTTP/1.0 200 OK\r\n\r\nabc").unwrap(), None);
        assert_eq!(p.feed(b"de").unwrap(), None);
        assert_eq!(
            p.closed(),
            Some(Response {
                body: 5,
                close: true
            })
        );
    }

    #[test]
    fn connection_close_is_reported() {
        let mut p = ResponseParser::new();
        let r = p
            .feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx")
            .unwrap()
            .unwrap();
        assert!(r.close);
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut p = ResponseParser::new();
        let mut data = OK.to_vec();
        data.extend_from_slice(b"junk");
        assert_eq!(p.feed(&data).unwrap_err(), HttpError::Trailing(4));
    }

    #[test]
    fn malformed_status_line() {
        let mut p = ResponseParser::new();
        assert!(matches!(
            p.feed(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn request_has_host_and_path() {
        let r = get_request("localhost", "/x");
        assert!(r.starts_with(b"GET /x HTTP/1.1\r\nHost: localhost\r\n"));
        assert!(r.ends_with(b"\r\n\r\n"));
    }
}
