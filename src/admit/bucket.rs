//! The token bucket: a rate and a capacity (burst), refilled from the time
//! passed in, so every decision is a pure function of its inputs.

use std::time::{Duration, Instant};

/// A rate limit: `rate` tokens a second, at most `capacity` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second; greater than zero.
    pub per_second: f64,
    /// Most tokens held; a full bucket lets this many through at once.
    pub capacity: f64,
}

/// Tokens and when they were last counted. The limits are not stored:
/// they are passed to each call, so a reloaded tier applies at once to the
/// buckets it keeps.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// What a paced transfer may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Send up to this many bytes now.
    Now(u64),
    /// Nothing may be sent before this much time has passed.
    Wait(Duration),
}

impl Bucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Self {
        Bucket {
            tokens: rate.capacity,
            updated: now,
        }
    }

    /// Adds what accrued since the last call, up to the capacity. A clock
    /// that went backwards (an older `now`) adds nothing.
    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.capacity);
        if now > self.updated {
            self.updated = now;
        }
    }

    /// Takes one token if there is one: the new-connection check.
    pub fn try_take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Charges `n` tokens that are spent regardless (bytes already read):
    /// the bucket may go into debt, and the answer is how long the caller
    /// must wait before sending them so the rate holds.
    pub fn charge(&mut self, n: u64, rate: Rate, now: Instant) -> Duration {
        self.refill(rate, now);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate.per_second)
        }
    }

    /// How much may be sent now, at most `max`: the tokens held, once they
    /// reach `quantum` (or `max`, if smaller), so a paced transfer moves in
    /// useful pieces rather than a byte at a time. Takes nothing; the
    /// caller [`Bucket::charge`]s what it really sent.
    pub fn allowance(&mut self, max: u64, quantum: u64, rate: Rate, now: Instant) -> Allowance {
        self.refill(rate, now);
        let need = quantum.min(max) as f64;
        if self.tokens >= need {
            Allowance::Now((self.tokens as u64).min(max))
        } else {
            Allowance::Wait(Duration::from_secs_f64(
                (need - self.tokens) / rate.per_second,
            ))
        }
    }

    /// Whether the bucket is full again at `now`: forgetting it then loses
    /// nothing, since a new bucket starts full.
    pub fn is_full_at(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * rate.per_second >= rate.capacity
    }

    /// When the bucket was last used.
    pub fn updated(&self) -> Instant {
        self.updated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIFTY: Rate = Rate {
        per_second: 50.0,
        capacity: 10.0,
    };

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(FIFTY, t0);
        let burst = (0..100).filter(|_| b.try_take(FIFTY, t0)).count();
        assert_eq!(burst, 10);
        // One token every 20 ms: over one second, 50 more.
        let admitted = (1..=1000)
            .filter(|ms| b.try_take(FIFTY, at(t0, *ms)))
            .count();
        assert_eq!(admitted, 50);
    }

    #[test]
    fn refill_stops_at_capacity() {
        let t0 = Instant::now();
        let mut b = Bucket::full(FIFTY, t0);
        assert!(b.try_take(FIFTY, t0));
        assert!(!b.is_full_at(FIFTY, t0));
        assert!(b.is_full_at(FIFTY, at(t0, 20)));
        let later = at(t0, 60_000);
        let n = (0..100).filter(|_| b.try_take(FIFTY, later)).count();
        assert_eq!(n, 10, "an hour idle still only saves the burst");
    }

    #[test]
    fn clock_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = Bucket::full(FIFTY, t0);
        while b.try_take(FIFTY, t0) {}
        assert!(!b.try_take(FIFTY, t0 - Duration::from_secs(5)));
        assert_eq!(b.updated(), t0);
    }

    #[test]
    fn charge_goes_into_debt_and_says_how_long_to_wait() {
        let rate = Rate {
            per_second: 1000.0,
            capacity: 1000.0,
        };
        let t0 = Instant::now();
        let mut b = Bucket::full(rate, t0);
        assert_eq!(b.charge(1000, rate, t0), Duration::ZERO);
        assert_eq!(b.charge(500, rate, t0), Duration::from_millis(500));
        // The debt is paid back before anything else goes through.
        assert_eq!(b.charge(500, rate, at(t0, 500)), Duration::from_millis(500));
        assert_eq!(b.charge(0, rate, at(t0, 1000)), Duration::ZERO);
    }

    #[test]
    fn allowance_waits_for_a_quantum_and_caps_at_max() {
        let rate = Rate {
            per_second: 1000.0,
            capacity: 4000.0,
        };
        let t0 = Instant::now();
        let mut b = Bucket::full(rate, t0);
        assert_eq!(b.allowance(1500, 100, rate, t0), Allowance::Now(1500));
        assert_eq!(b.allowance(10_000, 100, rate, t0), Allowance::Now(4000));
        b.charge(3950, rate, t0);
        // 50 held, 100 needed: 50 ms more.
        assert_eq!(
            b.allowance(10_000, 100, rate, t0),
            Allowance::Wait(Duration::from_millis(50))
        );
        // A small request needs only itself.
        assert_eq!(b.allowance(40, 100, rate, t0), Allowance::Now(40));
        assert_eq!(
            b.allowance(10_000, 100, rate, at(t0, 50)),
            Allowance::Now(100)
        );
    }
}
