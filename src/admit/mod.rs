//! Admission: throttling tiers per client identity.
//!
//! A client is assigned a [`Tier`] (first tier whose rules match its
//! certificate, else the default tier) and counted under its identity label,
//! or its address when it presented no certificate. Per client and tier the
//! shared [`Throttle`] keeps a new-connection token bucket, a count of open
//! connections and two byte buckets (one per direction). Every worker uses
//! the same state: it sits in lock-striped shards chosen by a hash of the
//! key, bounded in size, forgetting idle clients first.
//!
//! Everything here is sans-IO: time is a parameter, and the relays turn the
//! waits [`Pacer`] computes into sleeps.
//!
//! Where the decision is made: for a client certificate, inside the
//! handshake, by the certificate verifier right after the allowlist
//! (`TrustVerifier::verify_client_cert`). That is the only place a refusal
//! still reaches the client as a TLS alert (`access_denied`, as for the
//! allowlist): once the handshake is done, rustls' unbuffered API can send
//! only close_notify. The verifier cannot reach the connection, but it runs
//! synchronously on the worker thread driving that connection, so it hands
//! its [`Verdict`] over through a per-thread slot ([`hand_over`]) that the
//! handshake driver empties ([`take_handed_over`]) right after each call
//! into rustls, before any other connection can run. Clients without a
//! certificate, and resumed sessions (no certificate is verified), are
//! decided after the handshake and refused with close_notify.

mod bucket;
mod table;
mod tier;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;

pub use bucket::{Allowance, Bucket, Rate};
pub use table::{ClientKey, Key};
pub use tier::{ConnectionRate, Limits, Tier, Tiers, MIN_BYTE_BURST};

use table::{bucket, Table};

/// Shards of the client table: enough that workers rarely meet on a lock.
const SHARDS: usize = 64;
/// Clients remembered at once (each entry is a few hundred bytes).
pub const DEFAULT_CAPACITY: usize = 64 * 1024;
/// The piece a paced splice waits for: one full TLS record.
const PACE_QUANTUM: u64 = 16 * 1024;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RefusalReason {
    /// Over `new_connections_per_second` (and its burst).
    Rate,
    /// `max_connections` already open.
    Concurrency,
}

impl RefusalReason {
    /// A stable token for logs and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            RefusalReason::Rate => "rate",
            RefusalReason::Concurrency => "max_connections",
        }
    }
}

/// A refused connection: its tier and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tier {tier}: {detail}")]
pub struct Refusal {
    /// The client's tier.
    pub tier: Arc<str>,
    /// Who was refused.
    pub client: ClientKey,
    /// Which limit.
    pub reason: RefusalReason,
    /// The limit in words, for the log.
    pub detail: String,
}

/// The outcome of [`Throttle::admit`].
#[derive(Debug)]
pub enum Verdict {
    /// No tier applies to this client: no limits.
    Unthrottled,
    /// Admitted; the connection holds this until it closes.
    Admitted(Admission),
    /// Refused.
    Refused(Refusal),
}

/// The client being admitted.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// Its verified end-entity certificate, when it presented one.
    pub end_entity: Option<&'a CertificateDer<'a>>,
    /// Its identity label (from the allowlist), when it has one.
    pub identity: Option<&'a str>,
    /// Its address, when known (the verifier does not know it).
    pub address: Option<IpAddr>,
}

/// Throttle counters, read by `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    by_tier: Mutex<BTreeMap<Arc<str>, TierCounts>>,
    /// Times a relay had to wait for a client's byte budget.
    pub pacing_waits: AtomicU64,
    /// Total time relays waited for byte budget, microseconds.
    pub pacing_wait_us: AtomicU64,
    /// Bytes that were held back before being forwarded.
    pub paced_bytes: AtomicU64,
}

/// Admissions and refusals of one tier.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TierCounts {
    /// Connections admitted.
    pub admitted: u64,
    /// Refused for the connection rate.
    pub refused_rate: u64,
    /// Refused for `max_connections`.
    pub refused_concurrency: u64,
}

impl Stats {
    fn count(&self, tier: &Arc<str>, f: impl FnOnce(&mut TierCounts)) {
        let mut by_tier = self.by_tier.lock().unwrap_or_else(PoisonError::into_inner);
        f(by_tier.entry(tier.clone()).or_default());
    }

    /// Counts per tier, by name.
    pub fn by_tier(&self) -> BTreeMap<Arc<str>, TierCounts> {
        self.by_tier
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn waited(&self, wait: Duration, bytes: u64) {
        if !wait.is_zero() {
            self.pacing_waits.fetch_add(1, Ordering::Relaxed);
            self.pacing_wait_us
                .fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
            self.paced_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// The process-wide throttle: the configured tiers (replaced on reload)
/// and the per-client state (kept across reloads).
pub struct Throttle {
    tiers: ArcSwap<Tiers>,
    table: Table,
    stats: Stats,
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("tiers", &self.tiers.load().tiers().len())
            .finish_non_exhaustive()
    }
}

impl Throttle {
    /// A throttle with these tiers remembering about `capacity` clients.
    pub fn new(tiers: Tiers, capacity: usize) -> Arc<Self> {
        Arc::new(Throttle {
            tiers: ArcSwap::from_pointee(tiers),
            table: Table::new(SHARDS, capacity),
            stats: Stats::default(),
        })
    }

    /// Applies reloaded tiers to new connections. A tier that keeps its
    /// name keeps its clients' buckets and open counts, under its new limits.
    pub fn set_tiers(&self, tiers: Tiers) {
        self.tiers.store(Arc::new(tiers));
    }

    /// Whether any tier is configured.
    pub fn is_active(&self) -> bool {
        !self.tiers.load().is_empty()
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Clients remembered now, and how many were forgotten to make room.
    pub fn entries(&self) -> (usize, u64) {
        (self.table.len(), self.table.evictions())
    }

    /// Decides whether `client` may open a connection at `now`: first
    /// `max_connections` (so a refused attempt spends no rate token), then
    /// the connection rate. An admitted connection counts as open until its
    /// [`Admission`] is dropped.
    pub fn admit(self: &Arc<Self>, client: &Client<'_>, now: Instant) -> Verdict {
        let tiers = self.tiers.load();
        let Some(tier) = tiers.assign(client.end_entity) else {
            return Verdict::Unthrottled;
        };
        let key_client = match (client.end_entity, client.identity, client.address) {
            (Some(_), Some(label), _) => ClientKey::Identity(Arc::from(label)),
            (_, _, Some(ip)) => ClientKey::Address(ip),
            // A certificate without an identity and no address: nothing to
            // count it under (the allowlist refuses such clients anyway).
            _ => return Verdict::Unthrottled,
        };
        let key = Key {
            tier: tier.name.clone(),
            client: key_client,
        };
        let limits = tier.limits;
        let refused = self.table.with(&key, now, |entry| {
            if let Some(max) = limits.max_connections {
                if entry.open >= max {
                    return Some((
                        RefusalReason::Concurrency,
                        format!("{max} connections already open (max_connections = {max})"),
                    ));
                }
            }
            if let (Some(rate), Some(r)) = (limits.connection_rate(), limits.new_connections) {
                if !bucket(&mut entry.connections, rate, now).try_take(rate, now) {
                    return Some((
                        RefusalReason::Rate,
                        format!(
                            "over {} new connections/s (burst {})",
                            r.per_second, r.burst
                        ),
                    ));
                }
            }
            entry.open += 1;
            None
        });
        match refused {
            Some((reason, detail)) => {
                self.stats.count(&tier.name, |c| match reason {
                    RefusalReason::Rate => c.refused_rate += 1,
                    RefusalReason::Concurrency => c.refused_concurrency += 1,
                });
                Verdict::Refused(Refusal {
                    tier: tier.name.clone(),
                    client: key.client,
                    reason,
                    detail,
                })
            }
            None => {
                self.stats.count(&tier.name, |c| c.admitted += 1);
                Verdict::Admitted(Admission {
                    throttle: self.clone(),
                    key,
                    tier: tier.clone(),
                })
            }
        }
    }
}

/// An admitted connection's place in its tier: counts as open until dropped.
pub struct Admission {
    throttle: Arc<Throttle>,
    key: Key,
    tier: Arc<Tier>,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// The tier's name.
    pub fn tier(&self) -> &str {
        &self.tier.name
    }

    /// The pacer for this connection's bytes, when its tier limits them.
    /// The tier's limits are those the connection was admitted under.
    pub fn pacer(&self) -> Option<Pacer> {
        Some(Pacer {
            throttle: self.throttle.clone(),
            key: self.key.clone(),
            rate: self.tier.limits.byte_rate()?,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.throttle.table.with(&self.key, Instant::now(), |e| {
            e.open = e.open.saturating_sub(1)
        });
    }
}

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to backend.
    Up,
    /// Backend to client.
    Down,
}

/// Paces one connection's bytes against its client's byte buckets, shared
/// with the client's other connections in the same tier.
pub struct Pacer {
    throttle: Arc<Throttle>,
    key: Key,
    rate: Rate,
}

impl fmt::Debug for Pacer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pacer")
            .field("key", &self.key)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl Pacer {
    fn with<R>(&self, dir: Direction, now: Instant, f: impl FnOnce(&mut Bucket) -> R) -> R {
        let rate = self.rate;
        self.throttle.table.with(&self.key, now, |e| {
            let slot = match dir {
                Direction::Up => &mut e.up,
                Direction::Down => &mut e.down,
            };
            f(bucket(slot, rate, now))
        })
    }

    /// Charges `n` bytes already read; returns how long to hold them back
    /// before forwarding so the client stays within its rate.
    pub fn charge(&self, dir: Direction, n: u64, now: Instant) -> Duration {
        let rate = self.rate;
        let wait = self.with(dir, now, |b| b.charge(n, rate, now));
        self.throttle.stats.waited(wait, n);
        wait
    }

    /// How many bytes may be moved now, at most `max`, or how long until a
    /// record's worth may. Charge what was really moved with
    /// [`Pacer::charge`] afterwards.
    pub fn allowance(&self, dir: Direction, max: u64, now: Instant) -> Allowance {
        let rate = self.rate;
        let allowance = self.with(dir, now, |b| b.allowance(max, PACE_QUANTUM, rate, now));
        if let Allowance::Wait(wait) = allowance {
            self.throttle.stats.waited(wait, 0);
        }
        allowance
    }
}

thread_local! {
    /// The verdict the verifier reached for the handshake this thread is
    /// driving; see the module documentation.
    static HANDED_OVER: RefCell<Option<Verdict>> = const { RefCell::new(None) };
}

/// Leaves the verdict reached inside the handshake for the connection.
pub fn hand_over(verdict: Verdict) {
    HANDED_OVER.with(|slot| *slot.borrow_mut() = Some(verdict));
}

/// Takes the verdict left by [`hand_over`] during the last call into
/// rustls on this thread, if any.
pub fn take_handed_over() -> Option<Verdict> {
    HANDED_OVER.with(|slot| slot.borrow_mut().take())
}

#[cfg(test)]
mod tests;
