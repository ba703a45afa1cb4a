//! Relaying bytes once the handshake is done: the userspace path (rustls
//! records) and the kernel path (kTLS sockets and splice).

pub mod http_head;
pub mod splice;
pub mod userspace;

use std::cell::Cell;
use std::time::{Duration, Instant};

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
