//! Active health checks: a TCP connect to each backend of every pool that
//! has `health_check`, on one thread for the whole process (not per
//! worker). Connects are non-blocking and polled together, so one dead
//! backend's timeout does not delay the others' checks.
//!
//! The rise/fall logic is sans-IO ([`Tracker`]); the thread only connects
//! and reports.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::pool::{BackendState, PoolRegistry};

/// Longest sleep between looks at the pool list (a reload may add pools).
const IDLE_TICK: Duration = Duration::from_millis(250);

/// One backend's health as the checks see it: healthy until `fall`
/// consecutive failures, then unhealthy until `rise` consecutive successes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracker {
    healthy: bool,
    streak: u32,
}

impl Default for Tracker {
    /// A backend starts healthy: a new pool serves at once.
    fn default() -> Self {
        Self {
            healthy: true,
            streak: 0,
        }
    }
}

impl Tracker {
    /// A tracker starting in the given state.
    pub fn new(healthy: bool) -> Self {
        Self { healthy, streak: 0 }
    }

    /// Records one check; returns the new verdict when it changed.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { rise } else { fall };
        if self.streak >= needed.max(1) {
            self.healthy = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

/// What the checker keeps per backend: next due time and its tracker.
struct Scheduled {
    due: Instant,
    tracker: Tracker,
}

/// Starts the health-check thread. It runs for the life of the process,
/// checking whichever pools the registry holds at each round.
pub fn spawn(registry: Arc<PoolRegistry>) -> io::Result<()> {
    thread::Builder::new()
        .name("tlsplice-health".into())
        .spawn(move || {
            let mut schedule: HashMap<(String, SocketAddr), Scheduled> = HashMap::new();
            loop {
                let wait = round(&registry, &mut schedule);
                thread::sleep(wait);
            }
        })?;
    Ok(())
}

/// Runs the checks that are due; returns how long to sleep before the next.
fn round(
    registry: &PoolRegistry,
    schedule: &mut HashMap<(String, SocketAddr), Scheduled>,
) -> Duration {
    let pools = registry.current();
    let now = Instant::now();
    let mut due: Vec<(String, Arc<BackendState>, crate::config::HealthCheck)> = Vec::new();
    let mut live = Vec::new();
    for pool in pools.iter() {
        let Some(check) = pool.health_check else {
            continue;
        };
        for m in pool.members() {
            let key = (pool.name.clone(), m.state.backend.addr);
            let entry = schedule.entry(key.clone()).or_insert_with(|| Scheduled {
                due: now,
                tracker: Tracker::new(m.state.healthy()),
            });
            if entry.due <= now {
                entry.due = now + check.interval;
                due.push((pool.name.clone(), m.state.clone(), check));
            }
            live.push(key);
        }
    }
    schedule.retain(|k, _| live.contains(k));

    let targets: Vec<(SocketAddr, Duration)> = due
        .iter()
        .map(|(_, s, c)| (s.backend.addr, c.timeout))
        .collect();
    let results = probe_all(&targets);
    for ((pool, state, check), ok) in due.iter().zip(results) {
        let key = (pool.clone(), state.backend.addr);
        let Some(entry) = schedule.get_mut(&key) else {
            continue;
        };
        if let Some(healthy) = entry.tracker.observe(ok, check.rise, check.fall) {
            state.set_healthy(healthy);
            if healthy {
                tracing::info!(pool = %pool, backend = %state.backend.name, "backend is healthy again");
            } else {
                tracing::warn!(pool = %pool, backend = %state.backend.name, "backend failed {} health checks: out of service", check.fall);
            }
        }
    }
    let next = schedule.values().map(|s| s.due).min();
    next.map_or(IDLE_TICK, |t| {
        t.saturating_duration_since(Instant::now()).min(IDLE_TICK)
    })
}

/// Connects to every target at once; each result is whether its connect
/// completed within its timeout.
fn probe_all(targets: &[(SocketAddr, Duration)]) -> Vec<bool> {
    let start = Instant::now();
    let mut results = vec![false; targets.len()];
    // Sockets still connecting, with their index and deadline.
    let mut pending: Vec<(usize, Socket, Instant)> = Vec::new();
    for (i, (addr, timeout)) in targets.iter().enumerate() {
        let Ok(socket) = Socket::new(Domain::for_address(*addr), Type::STREAM, None) else {
            continue;
        };
        if socket.set_nonblocking(true).is_err() {
            continue;
        }
        match socket.connect(&(*addr).into()) {
            Ok(()) => results[i] = true,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                pending.push((i, socket, start + *timeout));
            }
            Err(_) => {}
        }
    }
    while !pending.is_empty() {
        let now = Instant::now();
        pending.retain(|(_, _, deadline)| *deadline > now);
        let Some(wait) = pending
            .iter()
            .map(|(_, _, d)| d.saturating_duration_since(now))
            .min()
        else {
            break;
        };
        let mut fds: Vec<libc::pollfd> = pending
            .iter()
            .map(|(_, s, _)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs, and
        // the sockets they name stay open (in `pending`) during the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        let mut still = Vec::new();
        for ((i, socket, deadline), fd) in pending.into_iter().zip(&fds) {
            if fd.revents == 0 {
                still.push((i, socket, deadline));
            } else {
                results[i] = matches!(socket.take_error(), Ok(None));
            }
        }
        pending = still;
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        // A success in between restarts the count.
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), Some(false));
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), Some(true));
    }

    #[test]
    fn probes_tell_a_listener_from_a_closed_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let t = Duration::from_secs(2);
        assert_eq!(probe_all(&[(open, t), (closed, t)]), [true, false]);
    }
}
