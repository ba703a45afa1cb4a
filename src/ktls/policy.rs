//! When a connection moves to kernel TLS: at once after the handshake, or
//! once it has relayed enough bytes or lived long enough on the userspace
//! relay (`ktls_offload`). Plain decisions, no I/O.

use std::time::Duration;

/// The `ktls_offload` thresholds. A zero threshold is not used; with both
/// zero (the default) a connection is offloaded right after its handshake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadPolicy {
    /// Offload once this many plaintext bytes (both directions together)
    /// were relayed in userspace; 0: bytes do not decide.
    pub after_bytes: u64,
    /// Offload once the connection has lived this long (from accept);
    /// zero: time does not decide.
    pub after: Duration,
}

/// Why a connection left the userspace relay for the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadTrigger {
    /// `after_bytes` was reached.
    Bytes,
    /// `after` was reached.
    Time,
}

impl OffloadTrigger {
    /// The name in the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            OffloadTrigger::Bytes => "bytes",
            OffloadTrigger::Time => "time",
        }
    }
}

impl OffloadPolicy {
    /// Offload right after the handshake (no threshold set).
    pub fn at_once(&self) -> bool {
        self.after_bytes == 0 && self.after.is_zero()
    }

    /// Whether a connection that relayed `relayed` bytes and lived `lived`
    /// should move to the kernel now, and which threshold says so.
    pub fn due(&self, relayed: u64, lived: Duration) -> Option<OffloadTrigger> {
        if self.at_once() {
            return Some(OffloadTrigger::Bytes);
        }
        if self.after_bytes > 0 && relayed >= self.after_bytes {
            Some(OffloadTrigger::Bytes)
        } else if !self.after.is_zero() && lived >= self.after {
            Some(OffloadTrigger::Time)
        } else {
            None
        }
    }

    /// How long after accept the time threshold falls, if there is one.
    pub fn deadline(&self) -> Option<Duration> {
        (!self.after.is_zero()).then_some(self.after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn default_is_at_once() {
        let p = OffloadPolicy::default();
        assert!(p.at_once());
        assert_eq!(p.due(0, Duration::ZERO), Some(OffloadTrigger::Bytes));
        assert_eq!(p.deadline(), None);
    }

    #[test]
    fn bytes_threshold() {
        let p = OffloadPolicy {
            after_bytes: 1024,
            after: Duration::ZERO,
        };
        assert!(!p.at_once());
        assert_eq!(p.due(1023, 3600 * 1000 * MS), None);
        assert_eq!(p.due(1024, Duration::ZERO), Some(OffloadTrigger::Bytes));
        assert_eq!(p.deadline(), None);
    }

    #[test]
    fn time_threshold() {
        let p = OffloadPolicy {
            after_bytes: 0,
            after: 50 * MS,
        };
        assert_eq!(p.due(u64::MAX, 49 * MS), None);
        assert_eq!(p.due(0, 50 * MS), Some(OffloadTrigger::Time));
        assert_eq!(p.deadline(), Some(50 * MS));
    }

    #[test]
    fn whichever_comes_first() {
        let p = OffloadPolicy {
            after_bytes: 64 * 1024,
            after: 50 * MS,
        };
        assert_eq!(p.due(10, 10 * MS), None);
        assert_eq!(p.due(64 * 1024, 10 * MS), Some(OffloadTrigger::Bytes));
        assert_eq!(p.due(10, 60 * MS), Some(OffloadTrigger::Time));
        // Both reached: bytes is named.
        assert_eq!(p.due(1 << 20, 60 * MS), Some(OffloadTrigger::Bytes));
    }
}
