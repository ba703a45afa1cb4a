//! Choosing and reaching a backend.
//!
//! The choice is sans-IO ([`balance`], over the shared state of a
//! [`pool::Pool`]); [`connect`] only walks that order with a timeout per
//! attempt, and reports each outcome back to the pool (passive ejection).

use std::fmt;
use std::io;
use std::time::Duration;

use monoio::net::TcpStream;

pub mod balance;
pub mod cert_header;
pub mod health;
pub mod pool;
pub mod proxy_protocol;

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
/// `timeout`, trying each backend in service at most once. The returned
/// lease counts the connection against its backend until dropped.
pub async fn connect(
    pool: &Pool,
    client_key: &[u8],
    timeout: Duration,
) -> Result<(TcpStream, Lease), ConnectError> {
    let mut attempts = Vec::new();
    for member in pool.attempt_order(client_key) {
        // Another worker may have taken its last slot since the order was made.
        let Some(lease) = pool.lease(member) else {
            continue;
        };
        let addr = member.state.backend.addr;
        let error = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
            Ok(Ok(stream)) => {
                // Small writes (request heads, handshakes of nested protocols)
                // must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                pool.connected(member);
                return Ok((stream, lease));
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
