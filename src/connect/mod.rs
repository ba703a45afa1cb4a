//! Choosing and reaching a backend.
//!
//! The choice is sans-IO ([`balance`], over the shared state of a
//! [`pool::Pool`]); [`connect`] only walks that order with a timeout per
//! attempt, runs what must succeed on the new connection (a PROXY header,
//! upstream TLS), and reports each outcome back to the pool (passive
//! ejection).

use std::fmt;
use std::future::Future;
use std::io;
use std::time::Duration;

use monoio::net::TcpStream;

pub mod balance;
pub mod cert_header;
pub mod health;
pub mod pool;
pub mod proxy_protocol;

use crate::config::Backend;
use pool::{Lease, Pool};

/// One failed attempt.
#[derive(Debug)]
pub struct Attempt {
    /// The backend as configured.
    pub backend: String,
    /// Why it failed.
    pub error: io::Error,
}

/// No backend of the pool took the connection.
#[derive(Debug, thiserror::Error)]
pub struct ConnectError {
    /// The pool.
    pub pool: String,
    /// Each attempt, in order; empty when no backend was in service.
    pub attempts: Vec<Attempt>,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.attempts.is_empty() {
            return write!(f, "no healthy backend in pool {}", self.pool);
        }
        write!(f, "no backend reachable in pool {}:", self.pool)?;
        for a in &self.attempts {
            write!(f, " {} ({})", a.backend, a.error)?;
        }
        Ok(())
    }
}

/// Connects to the first backend of the pool's order that answers within
/// `timeout`, trying each backend in service at most once. An attempt only
/// succeeds once `establish` (a PROXY header, an upstream TLS handshake)
/// succeeded on the new stream, within the same `timeout`; its failure
/// counts like a refused connection and moves on to the next backend. The
/// returned lease counts the connection against its backend until dropped.
pub async fn connect<T, F, Fut>(
    pool: &Pool,
    client_key: &[u8],
    timeout: Duration,
    mut establish: F,
) -> Result<(T, Lease), ConnectError>
where
    F: FnMut(TcpStream, &Backend) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let mut attempts = Vec::new();
    for member in pool.attempt_order(client_key) {
        // Another worker may have taken its last slot since the order was made.
        let Some(lease) = pool.lease(member) else {
            continue;
        };
        let backend = &member.state.backend;
        let attempt = async {
            let stream = TcpStream::connect_addr(backend.addr).await?;
            // Small writes (request heads, handshakes of nested protocols)
            // must not wait for Nagle.
            let _ = stream.set_nodelay(true);
            establish(stream, backend).await
        };
        let error = match monoio::time::timeout(timeout, attempt).await {
            Ok(Ok(established)) => {
                pool.connected(member);
                return Ok((established, lease));
            }
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        if pool.connect_failed(member) {
            tracing::warn!(
                pool = %pool.name,
                backend = %member.state.backend.name,
                "backend ejected for {:?} after consecutive connect failures (last: {error})",
                pool.eject_for()
            );
        }
        attempts.push(Attempt {
            backend: member.state.backend.name.clone(),
            error,
        });
    }
    Err(ConnectError {
        pool: pool.name.clone(),
        attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_the_pool_and_every_attempt() {
        let none = ConnectError {
            pool: "api".into(),
            attempts: Vec::new(),
        };
        assert_eq!(none.to_string(), "no healthy backend in pool api");
        let err = ConnectError {
            pool: "api".into(),
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
            s.starts_with("no backend reachable in pool api: a:1 (")
                && s.contains("b:2 (connect timed out)"),
            "{s}"
        );
    }
}
