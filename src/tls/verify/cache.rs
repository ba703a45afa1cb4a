//! The verification cache: chain-validation verdicts shared by every worker.
//!
//! Validating a client chain (parsing, path building, one signature check
//! per link, CRL lookups) is the largest part of a full handshake's
//! verification cost, and most handshakes present a chain the server has
//! seen moments ago. The cache remembers the verdict per presented chain so
//! the next handshake skips the validation. The client's proof of
//! possession of the key (the CertificateVerify signature) is never
//! cached: a cached verdict says only that the chain is good.
//!
//! Design, and why:
//! - **Key**: SHA-256 over the end-entity certificate and each intermediate
//!   (each length-prefixed), plus the trust configuration's generation. The
//!   verdict authorises a connection, so two different chains must never
//!   share a key: a fast keyed 64-bit hash (SipHash, aHash) leaves a
//!   collision to chance or to a clever attacker, while SHA-256 collisions
//!   are out of reach, and with the CPU's SHA extensions it costs about a
//!   microsecond for a typical chain, next to tens of microseconds for
//!   validation. The intermediates are in the key because the same leaf
//!   with a different (say, revoked) intermediate is a different chain. The
//!   generation is in the key because a reload changes what verifies: a new
//!   verifier gets a fresh generation from [`VerifyCache::next_generation`],
//!   and entries of older generations are simply never hit again.
//! - **Expiry**: a trusted verdict lives until the earliest of the chain's
//!   `notAfter`, the CRLs' `nextUpdate` and the configured TTL; a refusal
//!   lives for the short negative TTL, so a flood of one bad certificate
//!   costs one validation per negative TTL while a fixed problem (a new
//!   intermediate, a clock corrected) is noticed quickly.
//! - **Shards**: a power-of-two number of independently locked shards,
//!   picked by the key's first bytes (uniform, being SHA-256), so workers on
//!   different cores rarely wait for each other. Each shard sits on its own
//!   cache lines with its own counters, so neither the locks nor the
//!   statistics bounce one line between cores.
//! - **Bound and eviction**: each shard holds at most its share of the
//!   capacity and evicts by CLOCK (second chance): a hit sets a bit, and the
//!   eviction hand skips an entry once if its bit is set. That is close to
//!   LRU without reordering a list on every hit; it keeps hot chains through
//!   a churn of one-off chains (a scan, an attacker's junk certificates),
//!   and entries of old generations, never hit again, go first.
//!
//! The cache is sans-IO: callers pass the current time (rustls hands the
//! verifier one per handshake), so tests drive expiry with any clock.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::CertificateError;

/// Sizes and lifetimes of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries held, all shards together (rounded up to a multiple of
    /// the shard count). Zero disables caching.
    pub capacity: usize,
    /// Number of shards; rounded up to a power of two.
    pub shards: usize,
    /// Longest a trusted verdict is kept, whatever the chain's validity.
    pub ttl: Duration,
    /// How long a refusal is kept.
    pub negative_ttl: Duration,
}

impl Default for CacheConfig {
    /// 64Ki entries (a few MiB) in 64 shards; trusted verdicts for 5
    /// minutes, refusals for 10 seconds.
    fn default() -> Self {
        CacheConfig {
            capacity: 64 * 1024,
            shards: 64,
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(10),
        }
    }
}

/// Identifies one presented chain under one trust configuration.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey {
    digest: [u8; 32],
    generation: u64,
}

impl CacheKey {
    /// The key of `end_entity` followed by `intermediates`, as the client
    /// sent them, under trust configuration `generation`.
    pub fn new(
        generation: u64,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Self {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        // Length prefixes make the encoding unambiguous on its own, without
        // relying on DER being self-delimiting.
        for cert in std::iter::once(end_entity).chain(intermediates) {
            ctx.update(&(cert.len() as u64).to_be_bytes());
            ctx.update(cert.as_ref());
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ctx.finish().as_ref());
        CacheKey { digest, generation }
    }

    /// The trust configuration generation this key belongs to.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn shard_bits(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.digest[..8]);
        u64::from_le_bytes(b)
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheKey(gen {}, ", self.generation)?;
        for b in &self.digest[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…)")
    }
}

/// What chain validation concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The chain leads to a trust anchor and nothing in it is revoked.
    Trusted,
    /// The chain was refused, and why; the handshake sends the alert rustls
    /// maps this error to.
    Refused(CertificateError),
}

/// Counters since the cache was made, all shards together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found a trusted verdict.
    pub hits: u64,
    /// Lookups that found a refusal.
    pub negative_hits: u64,
    /// Lookups that found nothing, or only an expired verdict.
    pub misses: u64,
    /// Verdicts stored.
    pub insertions: u64,
    /// Live entries pushed out to make room.
    pub evictions: u64,
    /// Entries held now (expired ones included until replaced or evicted).
    pub entries: u64,
}

struct Slot {
    verdict: Verdict,
    /// Seconds since the epoch; the verdict is usable while `now < expires`.
    expires: u64,
    /// CLOCK's second-chance bit, set by a hit.
    referenced: bool,
}

#[derive(Default)]
struct ShardMap {
    slots: HashMap<CacheKey, Slot>,
    /// Every key in `slots`, once, in CLOCK order: the front is the hand.
    ring: VecDeque<CacheKey>,
}

/// One shard, alone on its cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    map: Mutex<ShardMap>,
    hits: AtomicU64,
    negative_hits: AtomicU64,
    misses: AtomicU64,
    insertions: AtomicU64,
    evictions: AtomicU64,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, ShardMap> {
        // A panic while holding the lock cannot leave a half-made entry
        // (each operation completes its map and ring updates before any
        // call that could panic), so a poisoned shard is still usable.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sharded, bounded verdict cache. Share one per process (`Arc`) across
/// workers and across reloads; see the module documentation.
pub struct VerifyCache {
    shards: Box<[Shard]>,
    mask: u64,
    per_shard: usize,
    config: CacheConfig,
    generations: AtomicU64,
}

impl std::fmt::Debug for VerifyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyCache")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl VerifyCache {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Self {
        let shards = config.shards.max(1).next_power_of_two();
        let per_shard = config.capacity.div_ceil(shards);
        VerifyCache {
            shards: (0..shards).map(|_| Shard::default()).collect(),
            mask: shards as u64 - 1,
            per_shard,
            config: CacheConfig { shards, ..config },
            generations: AtomicU64::new(0),
        }
    }

    /// The configuration in force, with the shard count as rounded.
    pub fn config(&self) -> CacheConfig {
        self.config
    }

    /// Most entries the cache holds: the per-shard bound times the shards.
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// A generation no key has used yet. Each verifier takes one when it is
    /// built, so a reload never sees verdicts made under the old trust
    /// anchors, CRLs or settings.
    pub fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn shard(&self, key: &CacheKey) -> &Shard {
        &self.shards[(key.shard_bits() & self.mask) as usize]
    }

    /// The live verdict for `key` at `now`, if any.
    pub fn get(&self, key: &CacheKey, now: UnixTime) -> Option<Verdict> {
        let shard = self.shard(key);
        let found = {
            let mut map = shard.lock();
            match map.slots.get_mut(key) {
                Some(slot) if now.as_secs() < slot.expires => {
                    slot.referenced = true;
                    Some(slot.verdict.clone())
                }
                // An expired slot stays until the insert that follows this
                // miss overwrites it in place, or the hand reaches it.
                _ => None,
            }
        };
        let counter = match &found {
            Some(Verdict::Trusted) => &shard.hits,
            Some(Verdict::Refused(_)) => &shard.negative_hits,
            None => &shard.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores a trusted verdict, usable until the earlier of `valid_until`
    /// (the chain's earliest `notAfter`, the CRLs' `nextUpdate`) and `now`
    /// plus the TTL.
    pub fn insert_trusted(&self, key: CacheKey, valid_until: UnixTime, now: UnixTime) {
        let ttl_end = now.as_secs().saturating_add(self.config.ttl.as_secs());
        self.insert(
            key,
            Verdict::Trusted,
            ttl_end.min(valid_until.as_secs()),
            now,
        );
    }

    /// Stores a refusal for the negative TTL.
    pub fn insert_refused(&self, key: CacheKey, error: CertificateError, now: UnixTime) {
        let end = now
            .as_secs()
            .saturating_add(self.config.negative_ttl.as_secs());
        self.insert(key, Verdict::Refused(error), end, now);
    }

    fn insert(&self, key: CacheKey, verdict: Verdict, expires: u64, now: UnixTime) {
        if self.per_shard == 0 || expires <= now.as_secs() {
            return;
        }
        let shard = self.shard(&key);
        let mut evicted = false;
        {
            let mut guard = shard.lock();
            let map = &mut *guard;
            match map.slots.entry(key) {
                Entry::Occupied(mut e) => {
                    // Replaces an expired verdict, or a concurrent miss's
                    // verdict for the same chain; the ring already has it.
                    let slot = e.get_mut();
                    slot.verdict = verdict;
                    slot.expires = expires;
                }
                Entry::Vacant(e) => {
                    e.insert(Slot {
                        verdict,
                        expires,
                        referenced: false,
                    });
                    map.ring.push_back(key);
                    if map.slots.len() > self.per_shard {
                        evicted = evict_one(map, now.as_secs(), &key);
                    }
                }
            }
        }
        shard.insertions.fetch_add(1, Ordering::Relaxed);
        if evicted {
            shard.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counters and size, summed over the shards.
    pub fn stats(&self) -> CacheStats {
        let mut s = CacheStats::default();
        for shard in self.shards.iter() {
            s.hits += shard.hits.load(Ordering::Relaxed);
            s.negative_hits += shard.negative_hits.load(Ordering::Relaxed);
            s.misses += shard.misses.load(Ordering::Relaxed);
            s.insertions += shard.insertions.load(Ordering::Relaxed);
            s.evictions += shard.evictions.load(Ordering::Relaxed);
            s.entries += shard.lock().slots.len() as u64;
        }
        s
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().slots.len()).sum()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes one entry by CLOCK, never `keep` (the entry just inserted).
/// Returns whether a live entry was evicted, as opposed to an expired one.
///
/// Terminates: every pass of the hand clears the bits it skips, so within
/// two turns of the ring it finds an unreferenced entry.
fn evict_one(map: &mut ShardMap, now: u64, keep: &CacheKey) -> bool {
    while let Some(key) = map.ring.pop_front() {
        if key == *keep {
            map.ring.push_back(key);
            continue;
        }
        let Some(slot) = map.slots.get_mut(&key) else {
            // The ring and the map hold the same keys; nothing to do if not.
            continue;
        };
        let live = now < slot.expires;
        if live && slot.referenced {
            slot.referenced = false;
            map.ring.push_back(key);
            continue;
        }
        map.slots.remove(&key);
        return live;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn t(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    fn cert(n: u32) -> CertificateDer<'static> {
        CertificateDer::from(format!("certificate {n}").into_bytes())
    }

    fn key(n: u32) -> CacheKey {
        CacheKey::new(1, &cert(n), &[])
    }

    fn small(capacity: usize, shards: usize) -> VerifyCache {
        VerifyCache::new(CacheConfig {
            capacity,
            shards,
            ttl: Duration::from_secs(100),
            negative_ttl: Duration::from_secs(5),
        })
    }

    #[test]
    fn key_covers_leaf_intermediates_and_generation() {
        let (leaf, a, b) = (cert(1), cert(2), cert(3));
        let base = CacheKey::new(1, &leaf, std::slice::from_ref(&a));
        assert_eq!(base, CacheKey::new(1, &leaf, std::slice::from_ref(&a)));
        assert_ne!(base, CacheKey::new(1, &leaf, std::slice::from_ref(&b)));
        assert_ne!(base, CacheKey::new(1, &leaf, &[]));
        assert_ne!(base, CacheKey::new(1, &leaf, &[a.clone(), b.clone()]));
        assert_ne!(base, CacheKey::new(2, &leaf, std::slice::from_ref(&a)));
        // Moving bytes between certificates changes the key.
        let joined = CertificateDer::from([leaf.as_ref(), a.as_ref()].concat());
        assert_ne!(base, CacheKey::new(1, &joined, &[]));
        assert_eq!(base.generation(), 1);
    }

    #[test]
    fn trusted_verdict_expires_at_valid_until_or_ttl() {
        let cache = small(16, 1);
        // Validity ends before the TTL.
        cache.insert_trusted(key(1), t(1_050), t(1_000));
        assert_eq!(cache.get(&key(1), t(1_049)), Some(Verdict::Trusted));
        assert_eq!(cache.get(&key(1), t(1_050)), None);
        // TTL ends before validity.
        cache.insert_trusted(key(2), t(9_999), t(1_000));
        assert_eq!(cache.get(&key(2), t(1_099)), Some(Verdict::Trusted));
        assert_eq!(cache.get(&key(2), t(1_100)), None);
        // Already past validity: not stored at all.
        cache.insert_trusted(key(3), t(900), t(1_000));
        assert_eq!(cache.len(), 2);
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.insertions), (2, 2, 2));
    }

    #[test]
    fn refusals_use_the_negative_ttl() {
        let cache = small(16, 1);
        cache.insert_refused(key(1), CertificateError::UnknownIssuer, t(1_000));
        for now in 1_000..1_005 {
            assert_eq!(
                cache.get(&key(1), t(now)),
                Some(Verdict::Refused(CertificateError::UnknownIssuer))
            );
        }
        assert_eq!(cache.get(&key(1), t(1_005)), None);
        let s = cache.stats();
        assert_eq!((s.negative_hits, s.hits, s.misses), (5, 0, 1));
    }

    #[test]
    fn expired_entry_is_replaced_in_place() {
        let cache = small(16, 1);
        cache.insert_refused(key(1), CertificateError::Revoked, t(1_000));
        assert_eq!(cache.get(&key(1), t(2_000)), None);
        cache.insert_trusted(key(1), t(9_999), t(2_000));
        assert_eq!(cache.get(&key(1), t(2_001)), Some(Verdict::Trusted));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn new_generation_misses() {
        let cache = small(16, 4);
        let g1 = cache.next_generation();
        let g2 = cache.next_generation();
        assert_ne!(g1, g2);
        let leaf = cert(7);
        cache.insert_trusted(CacheKey::new(g1, &leaf, &[]), t(9_999), t(1_000));
        assert!(cache
            .get(&CacheKey::new(g1, &leaf, &[]), t(1_001))
            .is_some());
        assert!(cache
            .get(&CacheKey::new(g2, &leaf, &[]), t(1_001))
            .is_none());
    }

    #[test]
    fn bound_holds_under_churn_and_hot_entries_survive() {
        let cache = small(64, 4);
        assert_eq!(cache.capacity(), 64);
        let hot: Vec<CacheKey> = (0..8).map(key).collect();
        for k in &hot {
            cache.insert_trusted(*k, t(9_999), t(1_000));
        }
        for n in 100..10_100 {
            cache.insert_trusted(key(n), t(9_999), t(1_000));
            // Keep the hot set referenced, as real traffic would.
            if n % 4 == 0 {
                for k in &hot {
                    let _ = cache.get(k, t(1_000));
                }
            }
            assert!(cache.len() <= 64);
        }
        for k in &hot {
            assert_eq!(cache.get(k, t(1_000)), Some(Verdict::Trusted), "{k:?}");
        }
        let s = cache.stats();
        assert_eq!(s.entries, 64);
        assert_eq!(s.insertions, 10_008);
        assert_eq!(s.evictions, 10_008 - 64);
    }

    #[test]
    fn expired_entries_are_evicted_before_live_ones() {
        let cache = small(2, 1);
        cache.insert_trusted(key(1), t(1_010), t(1_000));
        cache.insert_trusted(key(2), t(9_999), t(1_000));
        let _ = cache.get(&key(2), t(1_000));
        // At 1_020 key 1 is expired: evicting it is not a live eviction.
        cache.insert_trusted(key(3), t(9_999), t(1_020));
        assert_eq!(cache.stats().evictions, 0);
        assert!(cache.get(&key(2), t(1_020)).is_some());
        assert!(cache.get(&key(3), t(1_020)).is_some());
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = small(0, 8);
        cache.insert_trusted(key(1), t(9_999), t(1_000));
        assert!(cache.get(&key(1), t(1_000)).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn shards_are_a_power_of_two() {
        assert_eq!(small(100, 5).config().shards, 8);
        assert_eq!(small(100, 0).config().shards, 1);
        assert_eq!(small(100, 5).capacity(), 104);
    }

    #[test]
    fn many_threads_hammering_the_shards() {
        let cache = Arc::new(small(1_024, 16));
        let threads = 8;
        let per_thread = 20_000u32;
        let handles: Vec<_> = (0..threads)
            .map(|tid| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    let mut found = 0u64;
                    for i in 0..per_thread {
                        // A shared hot set plus a private churning set.
                        let k = if i % 2 == 0 {
                            key(i % 64)
                        } else {
                            key(1_000_000 * (tid + 1) + i)
                        };
                        match cache.get(&k, t(1_000)) {
                            Some(Verdict::Trusted) => found += 1,
                            Some(v) => panic!("unexpected {v:?}"),
                            None => cache.insert_trusted(k, t(9_999), t(1_000)),
                        }
                    }
                    found
                })
            })
            .collect();
        let found: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let s = cache.stats();
        let lookups = u64::from(threads) * u64::from(per_thread);
        assert_eq!(s.hits + s.misses + s.negative_hits, lookups);
        assert_eq!(s.hits, found);
        assert!(s.entries as usize <= cache.capacity());
        assert_eq!(s.insertions, s.misses);
        assert!(s.hits > lookups / 4, "hot set should mostly hit: {s:?}");
        // Every shard's map and ring agree.
        for shard in cache.shards.iter() {
            let map = shard.lock();
            assert_eq!(map.slots.len(), map.ring.len());
        }
    }
}
