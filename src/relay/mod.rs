//! Relaying bytes once the handshake is done: the userspace path (records
//! sealed and opened by `tls::traffic`) and the kernel path (kTLS sockets
//! and splice).

pub mod http_head;
pub mod splice;
pub mod userspace;

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::admit::{Allowance, Direction, Pacer};
use crate::close::CloseReason;
use crate::trigger::Trigger;

/// Totals of a relayed connection.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Plaintext bytes client -> backend.
    pub bytes_up: u64,
    /// Plaintext bytes backend -> client.
    pub bytes_down: u64,
    /// Why the connection ended.
    pub reason: CloseReason,
    /// Which path carried the data: `userspace` or `ktls`.
    pub path: &'static str,
}

/// Waits until the connection must end: returns the reason when it idled
/// for `idle_timeout` or the drain ran out, `None` once `finished` fires.
pub(crate) async fn watchdog(
    activity: &Cell<Instant>,
    idle_timeout: Duration,
    drain_expired: &Trigger,
    finished: &Trigger,
) -> Option<CloseReason> {
    loop {
        let deadline = activity.get() + idle_timeout;
        monoio::select! {
            _ = finished.wait() => return None,
            _ = drain_expired.wait() => return Some(CloseReason::Shutdown),
            _ = monoio::time::sleep_until(deadline.into()) => {
                if activity.get() + idle_timeout <= Instant::now() {
                    return Some(CloseReason::IdleTimeout);
                }
            }
        }
    }
}

/// Holds `n` bytes already read back until the client's byte budget
/// (its tier's `bytes_per_second`) allows them: delayed, never dropped.
pub(crate) async fn pace(pacer: Option<&Pacer>, dir: Direction, n: usize) {
    if let Some(pacer) = pacer {
        let wait = pacer.charge(dir, n as u64, Instant::now());
        if !wait.is_zero() {
            monoio::time::sleep(wait).await;
        }
    }
}

/// How many bytes the next splice may move, at most `max`, once the
/// client's byte budget has some; charge what it moved with [`spent`].
pub(crate) async fn paced_len(pacer: Option<&Pacer>, dir: Direction, max: u32) -> u32 {
    let Some(pacer) = pacer else { return max };
    loop {
        match pacer.allowance(dir, u64::from(max), Instant::now()) {
            Allowance::Now(n) => return u32::try_from(n).unwrap_or(max).min(max),
            Allowance::Wait(wait) => monoio::time::sleep(wait).await,
        }
    }
}

/// Charges bytes a splice moved against the client's byte budget; any
/// debt (other connections of the client spent it too) is waited out by
/// the next [`paced_len`].
pub(crate) fn spent(pacer: Option<&Pacer>, dir: Direction, n: u32) {
    if let Some(pacer) = pacer {
        pacer.charge(dir, u64::from(n), Instant::now());
    }
}
