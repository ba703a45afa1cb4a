//! The live progress line on stderr.
//!
//! Workers bump their own counters (one cache line each, relaxed atomics:
//! the main thread reads them once a second and exactness is not needed);
//! the main thread turns two readings into rates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One worker's running totals.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Counters {
    ops: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    /// Counts a successful operation.
    pub fn op(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed operation.
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts transferred plaintext bytes.
    pub fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The current totals.
    pub fn read(&self) -> Reading {
        Reading {
            ops: self.ops.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Totals at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// Successful operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Plaintext bytes, both directions.
    pub bytes: u64,
}

impl Reading {
    /// Sums the workers' readings.
    pub fn sum(all: impl IntoIterator<Item = Self>) -> Self {
        all.into_iter().fold(Self::default(), |a, b| Self {
            ops: a.ops + b.ops,
            errors: a.errors + b.errors,
            bytes: a.bytes + b.bytes,
        })
    }
}

/// The progress line for `now` (since start), from the previous reading
/// taken `interval` ago.
pub fn line(now: Duration, current: Reading, previous: Reading, interval: Duration) -> String {
    let secs = interval.as_secs_f64().max(1e-9);
    let ops_rate = current.ops.saturating_sub(previous.ops) as f64 / secs;
    let mb_rate = current.bytes.saturating_sub(previous.bytes) as f64 / secs / 1e6;
    format!(
        "[{:6.1}s] {} ok, {} failed | {:.0} ops/s, {:.2} MB/s",
        now.as_secs_f64(),
        current.ops,
        current.errors,
        ops_rate,
        mb_rate
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_rates_over_the_interval() {
        let prev = Reading {
            ops: 100,
            errors: 0,
            bytes: 1_000_000,
        };
        let cur = Reading {
            ops: 600,
            errors: 2,
            bytes: 3_000_000,
        };
        let l = line(
            Duration::from_secs(3),
            cur,
            prev,
            Duration::from_millis(500),
        );
        assert_eq!(l, "[   3.0s] 600 ok, 2 failed | 1000 ops/s, 4.00 MB/s");
    }

    #[test]
    fn counters_sum() {
        let a = Counters::default();
        let b = Counters::default();
        a.op();
        a.bytes(10);
        b.op();
        b.error();
        let total = Reading::sum([a.read(), b.read()]);
        assert_eq!(
            total,
            Reading {
                ops: 2,
                errors: 1,
                bytes: 10
            }
        );
    }
}
