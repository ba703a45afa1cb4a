//! What one worker thread measured, and how threads' results merge.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies are recorded in nanoseconds; anything above this is clamped
/// (an operation is bounded by `--timeout` long before).
pub const MAX_LATENCY_NS: u64 = 3_600 * 1_000_000_000;
/// Three significant digits: 0.1% resolution at every magnitude.
pub const SIGFIG: u8 = 3;

/// A fresh latency histogram in nanoseconds.
pub fn new_histogram() -> Histogram<u64> {
    // Bounds and sigfig are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIGFIG).expect("valid histogram bounds")
}

/// Categories failures are counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The TCP connection could not be opened.
    Connect,
    /// A local TLS failure (certificate verification, protocol error).
    Tls,
    /// The server sent a fatal alert (e.g. it refused the client certificate).
    Alert,
    /// The server closed or reset the connection too early.
    Closed,
    /// Any other socket error.
    Io,
    /// The operation did not finish within `--timeout`.
    Timeout,
    /// The answer was wrong: echo mismatch, HTTP status or framing.
    Response,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [Self; 7] = [
        Self::Connect,
        Self::Tls,
        Self::Alert,
        Self::Closed,
        Self::Io,
        Self::Timeout,
        Self::Response,
    ];

    /// The name used in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Alert => "alert",
            Self::Closed => "closed",
            Self::Io => "io",
            Self::Timeout => "timeout",
            Self::Response => "response",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Failure counts by kind, with the first message of each kind so a run
/// full of errors says why.
#[derive(Debug, Clone, Default)]
pub struct Errors {
    counts: [u64; ErrorKind::ALL.len()],
    first: [Option<String>; ErrorKind::ALL.len()],
}

impl Errors {
    /// Counts one failure.
    pub fn record(&mut self, kind: ErrorKind, detail: &str) {
        let i = kind.index();
        self.counts[i] += 1;
        if self.first[i].is_none() {
            self.first[i] = Some(detail.to_owned());
        }
    }

    /// Failures of `kind`.
    pub fn count(&self, kind: ErrorKind) -> u64 {
        self.counts[kind.index()]
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The first message seen for `kind`.
    pub fn first(&self, kind: ErrorKind) -> Option<&str> {
        self.first[kind.index()].as_deref()
    }

    /// Adds another thread's counts; keeps our first messages.
    pub fn merge(&mut self, other: &Self) {
        for kind in ErrorKind::ALL {
            let i = kind.index();
            self.counts[i] += other.counts[i];
            if self.first[i].is_none() {
                self.first[i].clone_from(&other.first[i]);
            }
        }
    }
}

/// How handshakes went, from `ClientConnection::handshake_kind()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handshakes {
    /// Full handshakes.
    pub full: u64,
    /// Full handshakes that needed a HelloRetryRequest (key share guess missed).
    pub full_hrr: u64,
    /// Resumed handshakes (tickets or session IDs).
    pub resumed: u64,
}

impl Handshakes {
    /// All completed handshakes.
    pub fn total(&self) -> u64 {
        self.full + self.full_hrr + self.resumed
    }

    /// Share of handshakes that resumed, 0..=1.
    pub fn resumed_share(&self) -> f64 {
        ratio(self.resumed, self.total())
    }

    fn merge(&mut self, other: &Self) {
        self.full += other.full;
        self.full_hrr += other.full_hrr;
        self.resumed += other.resumed;
    }
}

/// How the server ended connections the client closed (handshake mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Closes {
    /// The server answered our close_notify with its own.
    pub close_notify: u64,
    /// The server closed the TCP connection without close_notify.
    pub eof: u64,
}

/// What the first successful handshake negotiated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Negotiated {
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher_suite: String,
    /// e.g. `X25519MLKEM768`.
    pub key_exchange: String,
}

/// CPU time from getrusage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    /// User seconds.
    pub user: f64,
    /// System seconds.
    pub system: f64,
}

impl CpuTime {
    /// The calling thread's CPU time so far.
    pub fn thread() -> Self {
        Self::getrusage(libc::RUSAGE_THREAD)
    }

    /// The whole process's CPU time so far.
    pub fn process() -> Self {
        Self::getrusage(libc::RUSAGE_SELF)
    }

    fn getrusage(who: libc::c_int) -> Self {
        // SAFETY: getrusage only writes the struct we pass; zeroed is a valid rusage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable rusage.
        if unsafe { libc::getrusage(who, &mut usage) } != 0 {
            return Self::default();
        }
        let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        Self {
            user: secs(usage.ru_utime),
            system: secs(usage.ru_stime),
        }
    }

    /// User plus system.
    pub fn total(&self) -> f64 {
        self.user + self.system
    }

    /// CPU time spent between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            user: (self.user - earlier.user).max(0.0),
            system: (self.system - earlier.system).max(0.0),
        }
    }
}

/// Everything one worker thread measured.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency per successful operation, nanoseconds.
    pub latency: Histogram<u64>,
    /// Successful operations.
    pub ok: u64,
    /// Failed operations by kind.
    pub errors: Errors,
    /// Plaintext bytes sent.
    pub bytes_up: u64,
    /// Plaintext bytes received.
    pub bytes_down: u64,
    /// Handshake kinds of every connection opened.
    pub handshakes: Handshakes,
    /// Handshake mode: how the server closed.
    pub closes: Closes,
    /// Open loop: operations scheduled before the end that never started
    /// because every connection was still busy.
    pub unsent: u64,
    /// From the thread's start to its last operation's end.
    pub elapsed: Duration,
    /// The thread's CPU time during the run.
    pub cpu: CpuTime,
    /// What the first successful handshake negotiated.
    pub negotiated: Option<Negotiated>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            ok: 0,
            errors: Errors::default(),
            bytes_up: 0,
            bytes_down: 0,
            handshakes: Handshakes::default(),
            closes: Closes::default(),
            unsent: 0,
            elapsed: Duration::ZERO,
            cpu: CpuTime::default(),
            negotiated: None,
        }
    }
}

impl Stats {
    /// Records one successful operation that took `latency`.
    pub fn record_ok(&mut self, latency: Duration) {
        self.ok += 1;
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
    }

    /// Adds another thread's results. Elapsed time is the longest thread's;
    /// CPU time adds up.
    pub fn merge(&mut self, other: &Self) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.errors.merge(&other.errors);
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
        self.handshakes.merge(&other.handshakes);
        self.closes.close_notify += other.closes.close_notify;
        self.closes.eof += other.closes.eof;
        self.unsent += other.unsent;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.cpu.user += other.cpu.user;
        self.cpu.system += other.cpu.system;
        if self.negotiated.is_none() {
            self.negotiated.clone_from(&other.negotiated);
        }
    }
}

/// `num / den`, 0 when `den` is 0.
pub fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_count_and_keep_first_message() {
        let mut e = Errors::default();
        e.record(ErrorKind::Timeout, "first");
        e.record(ErrorKind::Timeout, "second");
        e.record(ErrorKind::Alert, "bad cert");
        assert_eq!(e.count(ErrorKind::Timeout), 2);
        assert_eq!(e.first(ErrorKind::Timeout), Some("first"));
        assert_eq!(e.total(), 3);

        let mut other = Errors::default();
        other.record(ErrorKind::Connect, "refused");
        other.record(ErrorKind::Timeout, "later");
        e.merge(&other);
        assert_eq!(e.count(ErrorKind::Timeout), 3);
        assert_eq!(e.first(ErrorKind::Timeout), Some("first"));
        assert_eq!(e.first(ErrorKind::Connect), Some("refused"));
    }

    #[test]
    fn merge_adds_counts_and_keeps_longest_elapsed() {
        let mut a = Stats::default();
        a.record_ok(Duration::from_micros(100));
        a.elapsed = Duration::from_secs(2);
        a.cpu = CpuTime {
            user: 1.0,
            system: 0.5,
        };
        a.handshakes.full = 1;
        let mut b = Stats::default();
        b.record_ok(Duration::from_micros(300));
        b.record_ok(Duration::from_micros(200));
        b.elapsed = Duration::from_secs(3);
        b.cpu = CpuTime {
            user: 2.0,
            system: 0.25,
        };
        b.handshakes.resumed = 3;
        a.merge(&b);
        assert_eq!(a.ok, 3);
        assert_eq!(a.latency.len(), 3);
        assert_eq!(a.elapsed, Duration::from_secs(3));
        assert!((a.cpu.total() - 3.75).abs() < 1e-9);
        assert_eq!(a.handshakes.total(), 4);
        assert!((a.handshakes.resumed_share() - 0.75).abs() < 1e-9);
    }

    #[test]
    fn latency_is_clamped_not_dropped() {
        let mut s = Stats::default();
        s.record_ok(Duration::ZERO);
        s.record_ok(Duration::from_secs(10_000));
        assert_eq!(s.latency.len(), 2);
        assert!(s.latency.max() >= MAX_LATENCY_NS / 2);
    }

    #[test]
    fn cpu_time_moves_forward() {
        let before = CpuTime::thread();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let spent = CpuTime::thread().since(&before);
        assert!(spent.total() >= 0.0);
        assert_eq!(ratio(1, 0), 0.0);
    }
}
