//! Choosing and reaching a backend.
//!
//! The choice is sans-IO ([`BackendPool::attempt_order`]); [`connect`] only
//! walks that order with a timeout per attempt.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::time::Duration;

use monoio::net::TcpStream;

pub mod cert_header;
pub mod proxy_protocol;

use crate::config::Backend;

/// A worker's round-robin position over a listener's backends.
///
/// The backend list itself is passed per connection (it can change on
/// reload); the position is per worker, so workers never contend.
#[derive(Debug)]
pub struct BackendPool {
    next: Cell<usize>,
}

impl BackendPool {
    /// A pool whose round-robin starts at `start` (workers start at different
    /// offsets so short-lived workloads still spread).
    pub fn new(start: usize) -> Self {
        Self {
            next: Cell::new(start),
        }
    }

    /// The backends to try for one new connection, in order: the round-robin
    /// pick first, then the others, each once. Advances the round robin.
    pub fn attempt_order<'b>(&self, backends: &'b [Backend]) -> impl Iterator<Item = &'b Backend> {
        let len = backends.len();
        let first = if len == 0 { 0 } else { self.next.get() % len };
        self.next.set(first + 1);
        (0..len).map(move |i| &backends[(first + i) % len])
    }
}

/// One failed attempt.
#[derive(Debug)]
pub struct Attempt {
    /// The backend as configured.
    pub backend: String,
    /// Why it failed.
    pub error: io::Error,
}

/// Every backend of the pool failed.
#[derive(Debug, thiserror::Error)]
pub struct ConnectError {
    /// Each attempt, in order.
    pub attempts: Vec<Attempt>,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.attempts.is_empty() {
            return f.write_str("no backend configured");
        }
        f.write_str("no backend reachable:")?;
        for a in &self.attempts {
            write!(f, " {} ({})", a.backend, a.error)?;
        }
        Ok(())
    }
}

/// Connects to the first backend that answers within `timeout`, trying each
/// backend of the pool at most once.
pub async fn connect<'b>(
    pool: &BackendPool,
    backends: &'b [Backend],
    timeout: Duration,
) -> Result<(TcpStream, &'b Backend), ConnectError> {
    let mut attempts = Vec::new();
    for backend in pool.attempt_order(backends) {
        let error =
            match monoio::time::timeout(timeout, TcpStream::connect_addr(backend.addr)).await {
                Ok(Ok(stream)) => {
                    // Small writes (request heads, handshakes of nested protocols)
                    // must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, backend));
                }
                Ok(Err(e)) => e,
                Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            };
        attempts.push(Attempt {
            backend: backend.name.clone(),
            error,
        });
    }
    Err(ConnectError { attempts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<Backend> {
        (0..n)
            .map(|i| Backend {
                name: format!("b{i}"),
                addr: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
            })
            .collect()
    }

    fn names(p: &BackendPool, b: &[Backend]) -> Vec<String> {
        p.attempt_order(b).map(|b| b.name.clone()).collect()
    }

    #[test]
    fn round_robin_rotates_and_tries_each_once() {
        let (p, b) = (BackendPool::new(0), backends(3));
        assert_eq!(names(&p, &b), ["b0", "b1", "b2"]);
        assert_eq!(names(&p, &b), ["b1", "b2", "b0"]);
        assert_eq!(names(&p, &b), ["b2", "b0", "b1"]);
        assert_eq!(names(&p, &b), ["b0", "b1", "b2"]);
    }

    #[test]
    fn start_offset_empty_pool_and_a_shrinking_list() {
        assert_eq!(
            names(&BackendPool::new(4), &backends(3)),
            ["b1", "b2", "b0"]
        );
        assert!(names(&BackendPool::new(4), &[]).is_empty());
        // After a reload removes backends the position wraps into range.
        let p = BackendPool::new(0);
        names(&p, &backends(5));
        names(&p, &backends(5));
        names(&p, &backends(5));
        assert_eq!(names(&p, &backends(2)), ["b1", "b0"]);
    }

    #[test]
    fn error_lists_every_attempt() {
        let err = ConnectError {
            attempts: vec![
                Attempt {
                    backend: "a:1".into(),
                    error: io::ErrorKind::ConnectionRefused.into(),
                },
                Attempt {
                    backend: "b:2".into(),
                    error: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                },
            ],
        };
        let s = err.to_string();
        assert!(
            s.contains("a:1 (") && s.contains("b:2 (connect timed out)"),
            "{s}"
        );
    }
}
