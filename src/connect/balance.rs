//! Balancing decisions, sans-IO: given what each backend of a pool looks
//! like now, the order in which to try them for one new connection.

use crate::config::Balance;

/// One backend as the balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Relative share (at least 1).
    pub weight: u32,
    /// Connections open to it now, across workers.
    pub open: u64,
    /// Healthy, not ejected and below its connection limit.
    pub available: bool,
    /// A stable hash of the backend's identity (its address), for
    /// consistent hashing.
    pub id_hash: u64,
}

/// The smooth weighted round-robin order of one cycle (nginx's algorithm):
/// each backend appears `weight` times, spread out rather than in runs.
pub fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += i64::from(*w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best);
    }
    order
}

/// The available candidates in the order to try them: the policy's pick
/// first, then the others (each once) as fallbacks.
///
/// `turn` is the pool's counter of new connections (it rotates
/// round-robin and breaks least-connections ties); `schedule` is
/// [`smooth_schedule`] of the weights; `client_key` is the client identity
/// that consistent hashing keys on.
pub fn attempt_order(
    policy: Balance,
    candidates: &[Candidate],
    schedule: &[usize],
    turn: usize,
    client_key: &[u8],
) -> Vec<usize> {
    let n = candidates.len();
    let mut order: Vec<usize> = Vec::with_capacity(n);
    match policy {
        Balance::RoundRobin => {
            // Walk one cycle of the schedule from this turn: every backend
            // appears in it, so every available one ends up in the order.
            let len = schedule.len();
            for k in 0..len {
                let i = schedule[(turn + k) % len];
                if candidates[i].available && !order.contains(&i) {
                    order.push(i);
                }
            }
        }
        Balance::LeastConnections => {
            order.extend((0..n).filter(|&i| candidates[i].available));
            // open/weight ascending (cross-multiplied: no division), ties
            // rotating with the turn so equal backends share the load.
            order.sort_by(|&a, &b| {
                let (ca, cb) = (&candidates[a], &candidates[b]);
                let load_a = u128::from(ca.open) * u128::from(cb.weight);
                let load_b = u128::from(cb.open) * u128::from(ca.weight);
                load_a
                    .cmp(&load_b)
                    .then_with(|| ((a + n - turn % n) % n).cmp(&((b + n - turn % n) % n)))
            });
        }
        Balance::Hash => {
            // Weighted rendezvous hashing: each backend scores the key on its
            // own, so removing one moves only the keys it had.
            let key = fnv1a(client_key);
            let score = |c: &Candidate| {
                let h = mix(key ^ c.id_hash);
                // A uniform value in (0, 1).
                let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                f64::from(c.weight) / -u.ln()
            };
            let mut scored: Vec<(f64, usize)> = (0..n)
                .filter(|&i| candidates[i].available)
                .map(|i| (score(&candidates[i]), i))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            order.extend(scored.into_iter().map(|(_, i)| i));
        }
    }
    order
}

/// A stable 64-bit hash (FNV-1a): the same on every run and platform, so a
/// client keeps its backend across restarts too.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Spreads the bits of a hash (splitmix64's finalizer).
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Candidate {
                weight: *w,
                open: 0,
                available: true,
                id_hash: fnv1a(format!("10.0.0.{i}:80").as_bytes()),
            })
            .collect()
    }

    fn picks(
        policy: Balance,
        c: &[Candidate],
        turns: usize,
        key: impl Fn(usize) -> Vec<u8>,
    ) -> Vec<usize> {
        let weights: Vec<u32> = c.iter().map(|c| c.weight).collect();
        let schedule = smooth_schedule(&weights);
        let mut count = vec![0; c.len()];
        for t in 0..turns {
            count[attempt_order(policy, c, &schedule, t, &key(t))[0]] += 1;
        }
        count
    }

    #[test]
    fn smooth_schedule_spreads_by_weight() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1]), [0, 1]);
        assert!(smooth_schedule(&[]).is_empty());
    }

    #[test]
    fn round_robin_follows_weights_and_skips_the_unavailable() {
        let mut c = candidates(&[3, 1, 2]);
        assert_eq!(
            picks(Balance::RoundRobin, &c, 600, |_| vec![]),
            [300, 100, 200]
        );
        c[0].available = false;
        assert_eq!(
            picks(Balance::RoundRobin, &c, 600, |_| vec![]),
            [0, 200, 400]
        );
        // Every available backend is in the order, each once.
        let order = attempt_order(
            Balance::RoundRobin,
            &c,
            &smooth_schedule(&[3, 1, 2]),
            0,
            &[],
        );
        assert_eq!(order.len(), 2);
        assert!(order.contains(&1) && order.contains(&2));
    }

    #[test]
    fn least_connections_weighs_open_connections() {
        let mut c = candidates(&[1, 1, 2]);
        c[0].open = 5;
        c[1].open = 1;
        c[2].open = 3; // 1.5 per weight unit: more than b1's 1
        let order = attempt_order(Balance::LeastConnections, &c, &[], 0, &[]);
        assert_eq!(order, [1, 2, 0]);
        // Ties rotate with the turn.
        let even = candidates(&[1, 1, 1]);
        assert_eq!(
            picks(Balance::LeastConnections, &even, 300, |_| vec![]),
            [100, 100, 100]
        );
    }

    #[test]
    fn hash_is_stable_and_moves_only_the_removed_backends_keys() {
        let c = candidates(&[1, 1, 1, 1]);
        let key = |i: usize| format!("client-{i}").into_bytes();
        let first = |c: &[Candidate], k: &[u8]| attempt_order(Balance::Hash, c, &[], 0, k)[0];
        let before: Vec<usize> = (0..1000).map(|i| first(&c, &key(i))).collect();
        // Same key, same backend, whatever the turn.
        for i in 0..50 {
            assert_eq!(
                attempt_order(Balance::Hash, &c, &[], i, &key(7))[0],
                before[7]
            );
        }
        // Roughly even spread.
        for b in 0..4 {
            let n = before.iter().filter(|&&x| x == b).count();
            assert!((150..350).contains(&n), "backend {b} got {n} of 1000");
        }
        // Take backend 2 out: only its keys move.
        let mut without = c.clone();
        without[2].available = false;
        for (i, was) in before.iter().enumerate() {
            let now = first(&without, &key(i));
            if *was != 2 {
                assert_eq!(now, *was, "key {i} moved although its backend stayed");
            } else {
                assert_ne!(now, 2);
            }
        }
    }

    #[test]
    fn hash_follows_weights() {
        let c = candidates(&[3, 1]);
        let n = picks(Balance::Hash, &c, 4000, |i| format!("k{i}").into_bytes());
        assert!((2700..3300).contains(&n[0]), "{n:?}");
    }
}
