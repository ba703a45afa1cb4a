//! When operations start: the closed-loop budget and the open-loop
//! schedule, as plain arithmetic on time offsets from the run's start.
//!
//! Open loop follows wrk2: operations are due at fixed intervals whether or
//! not the server kept up, and latency is measured from when an operation
//! was *due*, so time spent queued behind a slow server counts (no
//! coordinated omission). All connections of a worker draw from one
//! schedule, so a free connection takes the next due operation.

use std::time::Duration;

/// One operation's place in the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Sequence number within this worker, from 0.
    pub index: u64,
    /// Open loop: when it is due, as an offset from the start.
    pub due: Option<Duration>,
}

/// Decides whether another operation starts, for one worker.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Operations this worker may start (`None` = no limit).
    ops: Option<u64>,
    /// Stop starting operations at this offset (`None` = no limit).
    duration: Option<Duration>,
    /// Open loop: nanoseconds between due times, and this worker's phase.
    pacing: Option<Pacing>,
    started: u64,
}

#[derive(Debug, Clone, Copy)]
struct Pacing {
    interval_ns: f64,
    phase_ns: f64,
}

impl Gate {
    /// Closed loop: start as fast as connections free up.
    pub fn closed(ops: Option<u64>, duration: Option<Duration>) -> Self {
        Self {
            ops,
            duration,
            pacing: None,
            started: 0,
        }
    }

    /// Open loop: this worker is one of `workers` sharing `rate` ops/s;
    /// worker `id`'s due times are offset so the workers interleave.
    pub fn open(
        ops: Option<u64>,
        duration: Option<Duration>,
        rate: f64,
        workers: usize,
        id: usize,
    ) -> Self {
        let per_worker = rate / workers.max(1) as f64;
        let interval_ns = 1e9 / per_worker;
        Self {
            ops,
            duration,
            pacing: Some(Pacing {
                interval_ns,
                phase_ns: id as f64 * 1e9 / rate,
            }),
            started: 0,
        }
    }

    /// The next operation to start at `now` (offset from the start), or
    /// `None` when the run is over for this worker.
    pub fn next(&mut self, now: Duration) -> Option<Slot> {
        if self.ops.is_some_and(|ops| self.started >= ops) {
            return None;
        }
        if self.duration.is_some_and(|d| now >= d) {
            return None;
        }
        let due = match self.pacing {
            None => None,
            Some(p) => {
                let due = self.due_at(p, self.started);
                if self.duration.is_some_and(|d| due >= d) {
                    return None;
                }
                Some(due)
            }
        };
        let slot = Slot {
            index: self.started,
            due,
        };
        self.started += 1;
        Some(slot)
    }

    /// Whether operations are paced by a rate.
    pub fn is_open_loop(&self) -> bool {
        self.pacing.is_some()
    }

    /// Operations started so far.
    #[cfg(test)]
    pub fn started(&self) -> u64 {
        self.started
    }

    /// Open loop: operations that were due before the end but never
    /// started because every connection was still busy when time ran out.
    pub fn unsent(&self) -> u64 {
        let (Some(p), Some(duration)) = (self.pacing, self.duration) else {
            return 0;
        };
        let span = duration.as_nanos() as f64 - p.phase_ns;
        let mut due = if span <= 0.0 {
            0
        } else {
            (span / p.interval_ns).ceil() as u64
        };
        if let Some(ops) = self.ops {
            due = due.min(ops);
        }
        due.saturating_sub(self.started)
    }

    fn due_at(&self, p: Pacing, index: u64) -> Duration {
        Duration::from_nanos((p.phase_ns + index as f64 * p.interval_ns) as u64)
    }
}

/// Where an open-loop operation's latency is measured from.
///
/// `ready` is when the connection became free to take the slot, `sent`
/// when the operation actually started. A connection that was still busy
/// when the slot fell due was held up by the server, so the wait counts:
/// measure from `due`. A connection that was free and waited for the slot
/// is late only by the client's timer (monoio's resolution is 1 ms), which
/// is not the server's doing: measure from `sent`.
pub fn latency_origin(due: Duration, ready: Duration, sent: Duration) -> Duration {
    if ready > due {
        due
    } else {
        sent
    }
}

/// Splits `total` operations over `workers`: the first `total % workers`
/// get one more.
pub fn split_ops(total: u64, workers: usize, id: usize) -> u64 {
    let workers = workers.max(1) as u64;
    total / workers + u64::from((id as u64) < total % workers)
}

/// Splits `connections` over `workers` the same way.
pub fn split_connections(connections: usize, workers: usize, id: usize) -> usize {
    let workers = workers.max(1);
    connections / workers + usize::from(id < connections % workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn closed_loop_stops_at_ops() {
        let mut g = Gate::closed(Some(3), None);
        for i in 0..3 {
            assert_eq!(g.next(Duration::ZERO).unwrap().index, i);
        }
        assert_eq!(g.next(Duration::ZERO), None);
        assert_eq!(g.started(), 3);
        assert_eq!(g.unsent(), 0);
    }

    #[test]
    fn closed_loop_stops_at_duration() {
        let mut g = Gate::closed(None, Some(10 * MS));
        assert!(g.next(9 * MS).is_some());
        assert_eq!(g.next(10 * MS), None);
    }

    #[test]
    fn open_loop_spaces_slots_evenly() {
        // 1000 ops/s on one worker: one every millisecond.
        let mut g = Gate::open(None, Some(5 * MS), 1000.0, 1, 0);
        let dues: Vec<_> = std::iter::from_fn(|| g.next(Duration::ZERO))
            .map(|s| s.due.unwrap())
            .collect();
        assert_eq!(dues, vec![Duration::ZERO, MS, 2 * MS, 3 * MS, 4 * MS]);
    }

    #[test]
    fn open_loop_workers_interleave() {
        // 2000 ops/s over two workers: each every 1 ms, offset by 0.5 ms.
        let mut a = Gate::open(None, None, 2000.0, 2, 0);
        let mut b = Gate::open(None, None, 2000.0, 2, 1);
        let first_a = a.next(Duration::ZERO).unwrap().due.unwrap();
        let first_b = b.next(Duration::ZERO).unwrap().due.unwrap();
        let second_a = a.next(Duration::ZERO).unwrap().due.unwrap();
        assert_eq!(first_a, Duration::ZERO);
        assert_eq!(first_b, Duration::from_micros(500));
        assert_eq!(second_a, MS);
    }

    #[test]
    fn open_loop_counts_slots_missed_at_the_end() {
        let mut g = Gate::open(None, Some(10 * MS), 1000.0, 1, 0);
        // Only three operations got started before time ran out.
        for _ in 0..3 {
            g.next(Duration::ZERO).unwrap();
        }
        assert_eq!(g.next(10 * MS), None);
        assert_eq!(g.unsent(), 7);
    }

    #[test]
    fn open_loop_unsent_is_bounded_by_ops() {
        let mut g = Gate::open(Some(4), Some(10 * MS), 1000.0, 1, 0);
        g.next(Duration::ZERO).unwrap();
        assert_eq!(g.unsent(), 3);
    }

    #[test]
    fn late_connection_is_charged_from_due_time() {
        // Busy until 5 ms, slot due at 2 ms: the 3 ms wait counts.
        assert_eq!(latency_origin(2 * MS, 5 * MS, 5 * MS), 2 * MS);
        // Free at 1 ms, slot due at 2 ms, timer fired at 2.9 ms: not counted.
        let sent = Duration::from_micros(2900);
        assert_eq!(latency_origin(2 * MS, MS, sent), sent);
    }

    #[test]
    fn splits_cover_everything() {
        let ops: u64 = (0..3).map(|id| split_ops(10, 3, id)).sum();
        assert_eq!(ops, 10);
        assert_eq!(split_ops(10, 3, 0), 4);
        assert_eq!(split_ops(10, 3, 2), 3);
        let conns: usize = (0..4).map(|id| split_connections(6, 4, id)).sum();
        assert_eq!(conns, 6);
    }
}
