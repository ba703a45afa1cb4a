//! Choosing and reaching a backend.
//!
//! The choice is sans-IO ([`BackendPool::attempt_order`]); [`connect`] only
//! walks that order with a timeout per attempt.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;

use crate::config::Backend;

/// A worker's view of a listener's backends: round-robin, per worker.
#[derive(Debug)]
pub struct BackendPool {
    backends: Arc<[Backend]>,
    next: Cell<usize>,
}

impl BackendPool {
    /// A pool whose round-robin starts at `start` (workers start at different
    /// offsets so short-lived workloads still spread).
    pub fn new(backends: Arc<[Backend]>, start: usize) -> Self {
        let next = Cell::new(if backends.is_empty() {
            0
        } else {
            start % backends.len()
        });
        Self { backends, next }
    }

    /// The backends to try for one new connection, in order: the round-robin
    /// pick first, then the others, each once. Advances the round robin.
    pub fn attempt_order(&self) -> impl Iterator<Item = &Backend> {
        let len = self.backends.len();
        let first = self.next.get();
        if len > 0 {
            self.next.set((first + 1) % len);
        }
        (0..len).map(move |i| &self.backends[(first + i) % len])
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
pub async fn connect(
    pool: &BackendPool,
    timeout: Duration,
) -> Result<(TcpStream, &Backend), ConnectError> {
    let mut attempts = Vec::new();
    for backend in pool.attempt_order() {
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

    fn pool(n: usize, start: usize) -> BackendPool {
        let backends: Vec<Backend> = (0..n)
            .map(|i| Backend {
                name: format!("b{i}"),
                addr: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
            })
            .collect();
        BackendPool::new(backends.into(), start)
    }

    fn names(p: &BackendPool) -> Vec<String> {
        p.attempt_order().map(|b| b.name.clone()).collect()
    }

    #[test]
    fn round_robin_rotates_and_tries_each_once() {
        let p = pool(3, 0);
        assert_eq!(names(&p), ["b0", "b1", "b2"]);
        assert_eq!(names(&p), ["b1", "b2", "b0"]);
        assert_eq!(names(&p), ["b2", "b0", "b1"]);
        assert_eq!(names(&p), ["b0", "b1", "b2"]);
    }

    #[test]
    fn start_offset_and_empty_pool() {
        assert_eq!(names(&pool(3, 4)), ["b1", "b2", "b0"]);
        assert!(names(&pool(0, 4)).is_empty());
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
