//! The end of a connection: why it ended and the access-log line.

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

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
    /// The client's throttling tier refused the connection; the detail
    /// names the tier and the limit.
    Throttled(String),
    /// No route serves the client's SNI (or ALPN); it got the alert.
    NoRoute(String),
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
            Self::Throttled(_) => "throttled",
            Self::NoRoute(_) => "no_route",
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
            | Self::Throttled(d)
            | Self::NoRoute(d)
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

/// How access-log lines are written (`access_log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    /// `key=value` fields through the log (target `access`).
    #[default]
    Text,
    /// One JSON object per line on stderr.
    Json,
}

/// What the access log records about one connection. Filled in along the
/// connection's path and emitted once, at close. Never holds key material.
#[derive(Debug)]
pub struct AccessRecord {
    /// Client address.
    pub client: SocketAddr,
    /// Listener name.
    pub listener: String,
    /// Route that served the connection (`default` for the listener's own).
    pub route: Option<String>,
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
    /// The client's throttling tier.
    pub tier: Option<String>,
    /// Backend the connection was relayed to.
    pub backend: Option<String>,
    /// The TLS handshake with the backend: `full` or `resumed` (none: plaintext).
    pub upstream: Option<&'static str>,
    /// Data path: `userspace` (`tls::traffic` records) or `ktls`.
    pub path: &'static str,
    /// Why a connection that could have used kernel TLS did not.
    pub ktls_fallback: Option<String>,
    /// Under `ktls_offload` thresholds: which one moved the connection to
    /// the kernel (`bytes`, `time`), or `below_threshold` when it ended in
    /// userspace first. `None` when offload is at once or off.
    pub ktls_offload: Option<&'static str>,
    /// Plaintext bytes relayed in userspace before a late offload.
    pub ktls_after_bytes: Option<u64>,
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
            route: None,
            sni: None,
            alpn: None,
            version: None,
            suite: None,
            subject: None,
            identity: None,
            tier: None,
            backend: None,
            upstream: None,
            path: "userspace",
            ktls_fallback: None,
            ktls_offload: None,
            ktls_after_bytes: None,
            bytes_up: 0,
            bytes_down: 0,
            handshake: None,
            started: Instant::now(),
        }
    }

    /// Writes the access-log line: through the log (target `access`) as
    /// text, or as one JSON object on its own line of stderr.
    pub fn emit(&self, reason: &CloseReason, format: AccessLogFormat) {
        match format {
            AccessLogFormat::Text => self.emit_text(reason),
            AccessLogFormat::Json => {
                let mut line = self.json(reason, SystemTime::now()).to_string();
                line.push('\n');
                // One write per line, so lines from several workers never interleave.
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }

    fn emit_text(&self, reason: &CloseReason) {
        fn opt(v: &Option<String>) -> &str {
            v.as_deref().unwrap_or("-")
        }
        tracing::info!(
            target: "access",
            client = %self.client,
            listener = %self.listener,
            route = %opt(&self.route),
            sni = %opt(&self.sni),
            subject = %opt(&self.subject),
            identity = %opt(&self.identity),
            tier = %opt(&self.tier),
            alpn = %opt(&self.alpn),
            version = %opt(&self.version),
            suite = %opt(&self.suite),
            backend = %opt(&self.backend),
            upstream = %self.upstream.unwrap_or("-"),
            path = %self.path,
            ktls_fallback = %opt(&self.ktls_fallback),
            ktls_offload = %self.ktls_offload.unwrap_or("-"),
            ktls_after_bytes = %self.ktls_after_bytes.map_or("-".into(), |n| n.to_string()),
            bytes_up = self.bytes_up,
            bytes_down = self.bytes_down,
            handshake_ms = self.handshake.map(|d| d.as_millis() as u64).unwrap_or(0),
            duration_ms = self.started.elapsed().as_millis() as u64,
            reason = %reason,
            "access"
        );
    }

    /// The record as a JSON object; absent values are `null`, durations
    /// are milliseconds with microsecond precision.
    pub fn json(&self, reason: &CloseReason, now: SystemTime) -> serde_json::Value {
        let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
        serde_json::json!({
            "time": crate::tls::certs::format_time(now),
            "client": self.client.to_string(),
            "listener": self.listener,
            "sni": self.sni,
            "route": self.route,
            "subject": self.subject,
            "identity": self.identity,
            "tier": self.tier,
            "alpn": self.alpn,
            "version": self.version,
            "suite": self.suite,
            "backend": self.backend,
            "upstream": self.upstream,
            "path": self.path,
            "ktls_fallback": self.ktls_fallback,
            "ktls_offload": self.ktls_offload,
            "ktls_after_bytes": self.ktls_after_bytes,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "handshake_ms": self.handshake.map(ms),
            "duration_ms": ms(self.started.elapsed()),
            "reason": reason.code(),
            "reason_detail": reason.detail(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_record_has_every_field() {
        let mut r = AccessRecord::new("127.0.0.1:4000".parse().unwrap(), "main");
        r.sni = Some("a.example".into());
        r.route = Some("api".into());
        r.identity = Some("alias:billing".into());
        r.tier = Some("gold".into());
        r.bytes_up = 7;
        r.handshake = Some(Duration::from_micros(1500));
        let reason = CloseReason::BackendError("write: reset \"x\"".into());
        let line = r.json(&reason, SystemTime::UNIX_EPOCH).to_string();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00Z");
        assert_eq!(v["client"], "127.0.0.1:4000");
        assert_eq!(v["sni"], "a.example");
        assert_eq!(v["route"], "api");
        assert_eq!(v["identity"], "alias:billing");
        assert_eq!(v["tier"], "gold");
        assert_eq!(v["backend"], serde_json::Value::Null);
        assert_eq!(v["bytes_up"], 7);
        assert_eq!(v["handshake_ms"], 1.5);
        assert_eq!(v["reason"], "backend_error");
        assert_eq!(v["reason_detail"], "write: reset \"x\"");
    }

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
    /// Connections moved to the kernel late, by the `ktls_offload` byte
    /// threshold.
    pub ktls_late_bytes: AtomicU64,
    /// ... by its time threshold.
    pub ktls_late_time: AtomicU64,
    /// Connections that ended in userspace below the `ktls_offload`
    /// thresholds.
    pub ktls_below_threshold: AtomicU64,
    /// Full TLS handshakes with backends.
    pub upstream_full: AtomicU64,
    /// Resumed TLS handshakes with backends.
    pub upstream_resumed: AtomicU64,
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
pub const REASON_CODES: [&str; 15] = [
    "done",
    "max_connections",
    "max_handshakes",
    "handshake_timeout",
    "not_tls",
    "handshake_failed",
    "client_gone_in_handshake",
    "throttled",
    "no_route",
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
        match record.upstream {
            Some("resumed") => add(&self.upstream_resumed, 1),
            Some(_) => add(&self.upstream_full, 1),
            None => {}
        }
        match record.ktls_offload {
            Some("bytes") => add(&self.ktls_late_bytes, 1),
            Some("time") => add(&self.ktls_late_time, 1),
            Some(_) => add(&self.ktls_below_threshold, 1),
            None => {}
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
            CloseReason::Throttled(String::new()),
            CloseReason::NoRoute(String::new()),
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
        assert!(s.contains("ktls=16 "), "{s}");
        assert!(s.contains("bytes_up=80 "), "{s}");
        assert!(s.contains(" done=2"), "{s}");
        assert!(s.contains(" backend_error=1"), "{s}");
    }
}

/// Connections per route, shared by every worker and kept across reloads
/// (by listener and route name) so the counters only grow.
#[derive(Debug, Default)]
pub struct RouteCounters {
    routes: std::sync::Mutex<Vec<(String, String, std::sync::Arc<RouteCount>)>>,
}

/// One route's connection counts.
#[derive(Debug, Default)]
pub struct RouteCount {
    /// Connections the route took.
    pub total: AtomicU64,
    /// Of those, still open.
    pub open: AtomicU64,
}

/// One connection counted as open on its route until dropped.
#[derive(Debug)]
pub struct RouteGuard(std::sync::Arc<RouteCount>);

impl RouteCount {
    /// Counts a new connection on this route.
    pub fn enter(self: &std::sync::Arc<Self>) -> RouteGuard {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        RouteGuard(self.clone())
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RouteCounters {
    /// The counts of `route` on `listener`, created at first use.
    pub fn get(&self, listener: &str, route: &str) -> std::sync::Arc<RouteCount> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, c)) = routes.iter().find(|(l, r, _)| l == listener && r == route) {
            return c.clone();
        }
        let c = std::sync::Arc::<RouteCount>::default();
        routes.push((listener.to_owned(), route.to_owned(), c.clone()));
        c
    }

    /// Every route counted so far: (listener, route, total, open).
    pub fn snapshot(&self) -> Vec<(String, String, u64, u64)> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .iter()
            .map(|(l, r, c)| {
                (
                    l.clone(),
                    r.clone(),
                    c.total.load(Ordering::Relaxed),
                    c.open.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}
