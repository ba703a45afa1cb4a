//! The per-client state every worker shares: lock-striped shards chosen by
//! a hash of the key, each a bounded map that forgets idle clients first.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::bucket::{Bucket, Rate};

/// Who a client is, for counting: its identity when it presented a
/// certificate, else its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// The identity label of a verified certificate (alias, rule label,
    /// `cn:NAME`, ...): all its connections share the limits.
    Identity(Arc<str>),
    /// The address of a client without a certificate.
    Address(IpAddr),
}

/// A client within a tier: a client's state is per tier, so a tier that
/// keeps its name across a reload keeps its clients' buckets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The tier's name.
    pub tier: Arc<str>,
    /// The client.
    pub client: ClientKey,
}

/// What is known about one client of one tier.
#[derive(Debug)]
pub struct Entry {
    /// New connections, with the rate last applied.
    pub connections: Option<(Bucket, Rate)>,
    /// Bytes client -> backend, with the rate last applied.
    pub up: Option<(Bucket, Rate)>,
    /// Bytes backend -> client, with the rate last applied.
    pub down: Option<(Bucket, Rate)>,
    /// Connections open now.
    pub open: u32,
    /// Last time anything used this entry.
    pub used: Instant,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Entry {
            connections: None,
            up: None,
            down: None,
            open: 0,
            used: now,
        }
    }

    /// Whether forgetting this entry loses nothing: no open connection,
    /// and every bucket full again (a new entry starts full).
    fn is_idle(&self, now: Instant) -> bool {
        self.open == 0
            && [&self.connections, &self.up, &self.down]
                .into_iter()
                .flatten()
                .all(|(bucket, rate)| bucket.is_full_at(*rate, now))
    }
}

/// The bucket in `slot` for `rate`, created full on first use.
pub fn bucket(slot: &mut Option<(Bucket, Rate)>, rate: Rate, now: Instant) -> &mut Bucket {
    let (bucket, last) = slot.get_or_insert_with(|| (Bucket::full(rate, now), rate));
    *last = rate;
    bucket
}

struct Shard {
    entries: HashMap<Key, Entry>,
}

/// The sharded, bounded table.
pub struct Table {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: std::hash::RandomState,
    evictions: AtomicU64,
}

impl Table {
    /// A table of `shards` shards holding about `capacity` clients in all.
    pub fn new(shards: usize, capacity: usize) -> Self {
        let shards = shards.max(1);
        Table {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::new(),
                    })
                })
                .collect(),
            per_shard: capacity.div_ceil(shards).max(1),
            hasher: std::hash::RandomState::new(),
            evictions: AtomicU64::new(0),
        }
    }

    /// Runs `f` on the entry of `key`, created when missing. Making room
    /// first drops every idle entry of the shard; when none is idle, the
    /// least recently used entry without open connections goes (its client
    /// may then get a fresh burst). Entries with open connections stay, so
    /// a shard may exceed its share by the connections open.
    pub fn with<R>(&self, key: &Key, now: Instant, f: impl FnOnce(&mut Entry) -> R) -> R {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % self.shards.len()];
        // A panic elsewhere while holding the lock leaves counters that are
        // still usable: carry on rather than take every worker down.
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if !shard.entries.contains_key(key) && shard.entries.len() >= self.per_shard {
            let before = shard.entries.len();
            shard.entries.retain(|_, e| !e.is_idle(now));
            if shard.entries.len() == before {
                let oldest = shard
                    .entries
                    .iter()
                    .filter(|(_, e)| e.open == 0)
                    .min_by_key(|(_, e)| e.used)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    shard.entries.remove(&k);
                }
            }
            let evicted = before.saturating_sub(shard.entries.len());
            self.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
        }
        let entry = shard
            .entries
            .entry(key.clone())
            .or_insert_with(|| Entry::new(now));
        entry.used = entry.used.max(now);
        f(entry)
    }

    /// Entries dropped to make room so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Clients known now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entries
                    .len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(i: u32) -> Key {
        Key {
            tier: Arc::from("t"),
            client: ClientKey::Identity(Arc::from(format!("c{i}"))),
        }
    }

    const RATE: Rate = Rate {
        per_second: 10.0,
        capacity: 2.0,
    };

    #[test]
    fn evicts_idle_entries_and_keeps_busy_ones() {
        let t0 = Instant::now();
        let table = Table::new(1, 4);
        // Two busy clients (an open connection each), two with drained buckets.
        for i in 0..2 {
            table.with(&key(i), t0, |e| e.open = 1);
        }
        for i in 2..4 {
            table.with(&key(i), t0, |e| {
                let b = bucket(&mut e.connections, RATE, t0);
                while b.try_take(RATE, t0) {}
            });
        }
        // Full, nothing idle yet: the least recently used unbusy entry goes.
        let t1 = t0 + Duration::from_millis(10);
        table.with(&key(2), t1, |_| {});
        table.with(&key(10), t1, |_| {});
        assert_eq!(table.evictions(), 1);
        assert_eq!(table.len(), 4);
        let kept = table.with(&key(2), t1, |e| e.connections.is_some());
        assert!(kept, "the recently used entry stays");
        // Later every bucket has refilled: all idle entries go at once.
        let later = t0 + Duration::from_secs(5);
        table.with(&key(11), later, |_| {});
        assert_eq!(table.evictions(), 3);
        for i in 0..2 {
            assert_eq!(table.with(&key(i), later, |e| e.open), 1, "busy kept");
        }
    }

    #[test]
    fn busy_entries_are_never_evicted() {
        let t0 = Instant::now();
        let table = Table::new(1, 2);
        for i in 0..5 {
            table.with(&key(i), t0, |e| e.open = 1);
        }
        assert_eq!(table.len(), 5);
        assert_eq!(table.evictions(), 0);
    }

    #[test]
    fn shards_spread_keys() {
        let table = Table::new(8, 8 * 1024);
        let t0 = Instant::now();
        for i in 0..1000 {
            table.with(&key(i), t0, |_| {});
        }
        let used = table
            .shards
            .iter()
            .filter(|s| !s.lock().unwrap().entries.is_empty())
            .count();
        assert_eq!(used, 8);
        assert_eq!(table.len(), 1000);
    }
}
