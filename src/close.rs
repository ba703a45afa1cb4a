//! The end of a connection: why it ended and the access-log line.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a connection ended. Each connection gets exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions finished (close_notify or FIN on each side).
    Done,
    /// The worker already serves its maximum number of connections.
    MaxConnections,
    /// The worker already runs its maximum number of handshakes.
    MaxHandshakes,
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
    /// A bug: the connection's task panicked. The worker survives it.
    Internal(String),
}

impl CloseReason {
    /// A short stable token for logs and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::MaxConnections => "max_connections",
            Self::MaxHandshakes => "max_handshakes",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::NotTls(_) => "not_tls",
            Self::HandshakeFailed(_) => "handshake_failed",
            Self::ClientGoneInHandshake => "client_gone_in_handshake",
            Self::BackendUnavailable(_) => "backend_unavailable",
            Self::IdleTimeout => "idle_timeout",
            Self::Shutdown => "shutdown",
            Self::ClientError(_) => "client_error",
            Self::BackendError(_) => "backend_error",
            Self::Internal(_) => "internal_error",
        }
    }

    fn detail(&self) -> Option<&str> {
        match self {
            Self::NotTls(d)
            | Self::HandshakeFailed(d)
            | Self::BackendUnavailable(d)
            | Self::ClientError(d)
            | Self::BackendError(d)
            | Self::Internal(d) => Some(d),
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
    /// The client's identity: the allowlist entry it matched (alias or rule).
    pub identity: Option<String>,
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
            identity: None,
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
            identity = %opt(&self.identity),
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

/// Connection counters of one worker. Each worker writes only its own (so
/// the atomics are uncontended); readers sum all workers when they report.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections ended, by [`CloseReason::code`], in [`REASON_CODES`] order.
    by_reason: [AtomicU64; REASON_CODES.len()],
    /// Connections relayed on the kernel path.
    pub ktls: AtomicU64,
    /// Connections relayed in userspace.
    pub userspace: AtomicU64,
    /// Connections that could have used kTLS (auto mode) but did not.
    pub ktls_fallback: AtomicU64,
    /// Plaintext bytes client -> backend.
    pub bytes_up: AtomicU64,
    /// Plaintext bytes backend -> client.
    pub bytes_down: AtomicU64,
    /// Connections accepted and not yet closed.
    pub open: AtomicU64,
    /// Completed handshakes by duration, in [`HANDSHAKE_BUCKETS_MS`]
    /// buckets (non-cumulative; the last counts everything slower).
    handshake_ms: [AtomicU64; HANDSHAKE_BUCKETS_MS.len() + 1],
    /// Sum of completed handshake durations, microseconds.
    handshake_us_sum: AtomicU64,
}

/// Upper bounds (milliseconds) of the handshake latency histogram.
pub const HANDSHAKE_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// Every close reason code, in counter order.
pub const REASON_CODES: [&str; 13] = [
    "done",
    "max_connections",
    "max_handshakes",
    "handshake_timeout",
    "not_tls",
    "handshake_failed",
    "client_gone_in_handshake",
    "backend_unavailable",
    "idle_timeout",
    "shutdown",
    "client_error",
    "backend_error",
    "internal_error",
];

impl Counters {
    /// Counts one finished connection.
    pub fn record(&self, record: &AccessRecord, reason: &CloseReason) {
        let add = |c: &AtomicU64, n: u64| {
            c.fetch_add(n, Ordering::Relaxed);
        };
        if let Some(i) = REASON_CODES.iter().position(|c| *c == reason.code()) {
            add(&self.by_reason[i], 1);
        }
        if record.backend.is_some() {
            match record.path {
                "ktls" => add(&self.ktls, 1),
                _ => add(&self.userspace, 1),
            }
        }
        if record.ktls_fallback.is_some() {
            add(&self.ktls_fallback, 1);
        }
        add(&self.bytes_up, record.bytes_up);
        add(&self.bytes_down, record.bytes_down);
        if let Some(d) = record.handshake {
            let ms = d.as_millis() as u64;
            let bucket = HANDSHAKE_BUCKETS_MS
                .iter()
                .position(|b| ms <= *b)
                .unwrap_or(HANDSHAKE_BUCKETS_MS.len());
            add(&self.handshake_ms[bucket], 1);
            add(&self.handshake_us_sum, d.as_micros() as u64);
        }
    }

    /// Completed handshakes per histogram bucket (non-cumulative).
    pub fn handshake_buckets(&self) -> [u64; HANDSHAKE_BUCKETS_MS.len() + 1] {
        std::array::from_fn(|i| self.handshake_ms[i].load(Ordering::Relaxed))
    }

    /// Sum of completed handshake durations in seconds.
    pub fn handshake_seconds(&self) -> f64 {
        self.handshake_us_sum.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Connections ended with `code`.
    pub fn reason(&self, code: &str) -> u64 {
        REASON_CODES
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.by_reason[i].load(Ordering::Relaxed))
    }

    /// One line summing several workers' counters, for the log.
    pub fn summary<'a>(all: impl IntoIterator<Item = &'a Counters> + Clone) -> String {
        let sum = |f: &dyn Fn(&Counters) -> u64| all.clone().into_iter().map(f).sum::<u64>();
        let mut s = format!(
            "ktls={} userspace={} ktls_fallback={} bytes_up={} bytes_down={}",
            sum(&|c| c.ktls.load(Ordering::Relaxed)),
            sum(&|c| c.userspace.load(Ordering::Relaxed)),
            sum(&|c| c.ktls_fallback.load(Ordering::Relaxed)),
            sum(&|c| c.bytes_up.load(Ordering::Relaxed)),
            sum(&|c| c.bytes_down.load(Ordering::Relaxed)),
        );
        for code in REASON_CODES {
            let n = sum(&|c| c.reason(code));
            if n > 0 {
                s.push_str(&format!(" {code}={n}"));
            }
        }
        s
    }
}

#[cfg(test)]
mod counter_tests {
    use super::*;

    #[test]
    fn every_reason_has_a_counter_and_sums_across_workers() {
        let reasons = [
            CloseReason::Done,
            CloseReason::MaxConnections,
            CloseReason::MaxHandshakes,
            CloseReason::HandshakeTimeout,
            CloseReason::NotTls(String::new()),
            CloseReason::HandshakeFailed(String::new()),
            CloseReason::ClientGoneInHandshake,
            CloseReason::BackendUnavailable(String::new()),
            CloseReason::IdleTimeout,
            CloseReason::Shutdown,
            CloseReason::ClientError(String::new()),
            CloseReason::BackendError(String::new()),
            CloseReason::Internal(String::new()),
        ];
        let (a, b) = (Counters::default(), Counters::default());
        let mut rec = AccessRecord::new("127.0.0.1:1".parse().unwrap(), "l");
        rec.backend = Some("b".into());
        rec.path = "ktls";
        rec.bytes_up = 5;
        for r in &reasons {
            assert!(REASON_CODES.contains(&r.code()), "{r}");
            a.record(&rec, r);
        }
        b.record(&rec, &CloseReason::Done);
        let s = Counters::summary([&a, &b]);
        assert!(s.contains("ktls=14 "), "{s}");
        assert!(s.contains("bytes_up=70 "), "{s}");
        assert!(s.contains(" done=2"), "{s}");
        assert!(s.contains(" backend_error=1"), "{s}");
    }
}
