//! The end of a connection: why it ended and the access-log line.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Why a connection ended. Each connection gets exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions finished (close_notify or FIN on each side).
    Done,
    /// The worker already serves its maximum number of connections.
    MaxConnections,
    /// The client did not complete the handshake in time.
    HandshakeTimeout,
    /// The first bytes were not a TLS ClientHello.
    NotTls(String),
    /// The handshake failed; the detail names the TLS error (and alert).
    HandshakeFailed(String),
    /// The client went away before finishing the handshake.
    ClientGoneInHandshake,
    /// No backend accepted the connection.
    BackendUnavailable(String),
    /// No bytes moved in either direction for the idle timeout.
    IdleTimeout,
    /// The server shut down and the drain timeout ran out.
    Shutdown,
    /// The client side failed (I/O error, TLS error, or truncation).
    ClientError(String),
    /// The backend side failed (I/O error or reset).
    BackendError(String),
}

impl CloseReason {
    /// A short stable token for logs and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::MaxConnections => "max_connections",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::NotTls(_) => "not_tls",
            Self::HandshakeFailed(_) => "handshake_failed",
            Self::ClientGoneInHandshake => "client_gone_in_handshake",
            Self::BackendUnavailable(_) => "backend_unavailable",
            Self::IdleTimeout => "idle_timeout",
            Self::Shutdown => "shutdown",
            Self::ClientError(_) => "client_error",
            Self::BackendError(_) => "backend_error",
        }
    }

    fn detail(&self) -> Option<&str> {
        match self {
            Self::NotTls(d)
            | Self::HandshakeFailed(d)
            | Self::BackendUnavailable(d)
            | Self::ClientError(d)
            | Self::BackendError(d) => Some(d),
            _ => None,
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail() {
            Some(d) => write!(f, "{}: {d}", self.code()),
            None => f.write_str(self.code()),
        }
    }
}

/// What the access log records about one connection. Filled in along the
/// connection's path and emitted once, at close. Never holds key material.
#[derive(Debug)]
pub struct AccessRecord {
    /// Client address.
    pub client: SocketAddr,
    /// Listener name.
    pub listener: String,
    /// Server name the client asked for.
    pub sni: Option<String>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// Negotiated protocol version, e.g. `TLSv1_3`.
    pub version: Option<String>,
    /// Negotiated cipher suite.
    pub suite: Option<String>,
    /// Subject of the client certificate, when one was presented.
    pub subject: Option<String>,
    /// Backend the connection was relayed to.
    pub backend: Option<String>,
    /// Data path: `userspace` (rustls records) or `ktls`.
    pub path: &'static str,
    /// Why a connection that could have used kernel TLS did not.
    pub ktls_fallback: Option<String>,
    /// Plaintext bytes client -> backend.
    pub bytes_up: u64,
    /// Plaintext bytes backend -> client.
    pub bytes_down: u64,
    /// Time from accept to handshake completion.
    pub handshake: Option<Duration>,
    /// When the connection was accepted.
    pub started: Instant,
}

impl AccessRecord {
    /// A record for a connection just accepted.
    pub fn new(client: SocketAddr, listener: &str) -> Self {
        Self {
            client,
            listener: listener.to_owned(),
            sni: None,
            alpn: None,
            version: None,
            suite: None,
            subject: None,
            backend: None,
            path: "userspace",
            ktls_fallback: None,
            bytes_up: 0,
            bytes_down: 0,
            handshake: None,
            started: Instant::now(),
        }
    }

    /// Writes the access-log line (target `access`).
    pub fn emit(&self, reason: &CloseReason) {
        fn opt(v: &Option<String>) -> &str {
            v.as_deref().unwrap_or("-")
        }
        tracing::info!(
            target: "access",
            client = %self.client,
            listener = %self.listener,
            sni = %opt(&self.sni),
            subject = %opt(&self.subject),
            alpn = %opt(&self.alpn),
            version = %opt(&self.version),
            suite = %opt(&self.suite),
            backend = %opt(&self.backend),
            path = %self.path,
            ktls_fallback = %opt(&self.ktls_fallback),
            bytes_up = self.bytes_up,
            bytes_down = self.bytes_down,
            handshake_ms = self.handshake.map(|d| d.as_millis() as u64).unwrap_or(0),
            duration_ms = self.started.elapsed().as_millis() as u64,
            reason = %reason,
            "access"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_display_carries_code_and_detail() {
        assert_eq!(CloseReason::Done.to_string(), "done");
        assert_eq!(
            CloseReason::BackendUnavailable("b:1 (refused)".into()).to_string(),
            "backend_unavailable: b:1 (refused)"
        );
    }
}
