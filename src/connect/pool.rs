//! Backend pools, shared by every worker.
//!
//! What workers must agree on lives in atomics: each backend's health (set
//! by the health-check thread), passive ejection after consecutive connect
//! failures, and its open connections (least-connections and
//! `max_connections` count across workers). The decisions themselves are
//! in [`super::balance`] and [`super::health`].
//!
//! Backend state is kept in a [`PoolRegistry`] by pool name and address, so
//! a reload that keeps a backend keeps its health, counts and ejections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::balance::{self, Candidate};
use crate::config::{Backend, Balance, HealthCheck, PoolConfig};
use crate::upstream::{ConfigCache, UpstreamConfigError, UpstreamTls};

/// One backend's shared state.
#[derive(Debug)]
pub struct BackendState {
    /// Address and configured name.
    pub backend: Backend,
    /// Stable hash of the address, for consistent hashing.
    id_hash: u64,
    /// The health checks' verdict (true when the pool has none).
    healthy: AtomicBool,
    /// Passively ejected until this many milliseconds after the registry's
    /// epoch; 0 when not ejected.
    ejected_until_ms: AtomicU64,
    /// Connect failures since the last success.
    consecutive_failures: AtomicU32,
    /// Connections open to it now, across workers.
    open: AtomicU64,
    /// Times it was ejected.
    ejections: AtomicU64,
}

impl BackendState {
    fn new(backend: Backend) -> Self {
        Self {
            id_hash: balance::fnv1a(backend.addr.to_string().as_bytes()),
            backend,
            healthy: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            open: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    /// The health checks' verdict.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a health-check verdict change.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Connections open to this backend now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Times this backend was ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }
}

/// A backend of a pool with its share and limit.
#[derive(Debug)]
pub struct Member {
    /// The shared state.
    pub state: Arc<BackendState>,
    weight: u32,
    max_connections: Option<u64>,
}

/// An open connection counted against a backend; uncounted on drop.
#[derive(Debug)]
pub struct Lease(Arc<BackendState>);

impl Lease {
    /// The backend this lease counts against.
    pub fn backend(&self) -> &Backend {
        &self.0.backend
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pool as the workers use it.
#[derive(Debug)]
pub struct Pool {
    /// Name in logs and metrics.
    pub name: String,
    balance: Balance,
    members: Vec<Member>,
    /// One round-robin cycle in smooth weighted order.
    schedule: Vec<usize>,
    /// New connections so far: the round-robin position.
    turn: AtomicUsize,
    /// Active health checks, if any.
    pub health_check: Option<HealthCheck>,
    eject_after: Option<u32>,
    eject_for: Duration,
    epoch: Instant,
    /// TLS toward the backends, with a session store per backend.
    pub tls: Option<UpstreamTls>,
}

impl Pool {
    /// The members, in configured order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether a member can take a new connection now.
    fn available(&self, m: &Member, now_ms: u64) -> bool {
        m.state.healthy()
            && m.state.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
            && m.max_connections.is_none_or(|max| m.state.open() < max)
    }

    /// Whether a member is healthy and not ejected (for metrics).
    pub fn in_service(&self, m: &Member) -> bool {
        m.state.healthy() && m.state.ejected_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    fn now_ms(&self) -> u64 {
        // Never 0, so that 0 can mean "not ejected".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// The members to try for one new connection, in order; empty when
    /// none is available. `client_key` matters to hash balancing only.
    pub fn attempt_order(&self, client_key: &[u8]) -> Vec<&Member> {
        let now = self.now_ms();
        let candidates: Vec<Candidate> = self
            .members
            .iter()
            .map(|m| Candidate {
                weight: m.weight,
                open: m.state.open(),
                available: self.available(m, now),
                id_hash: m.state.id_hash,
            })
            .collect();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        balance::attempt_order(self.balance, &candidates, &self.schedule, turn, client_key)
            .into_iter()
            .map(|i| &self.members[i])
            .collect()
    }

    /// Counts a connection to `m` about to be made; `None` when that would
    /// pass its `max_connections` (another worker took the last slot).
    pub fn lease(&self, m: &Member) -> Option<Lease> {
        let before = m.state.open.fetch_add(1, Ordering::Relaxed);
        let lease = Lease(m.state.clone());
        match m.max_connections {
            Some(max) if before >= max => None,
            _ => Some(lease),
        }
    }

    /// A connect to `m` succeeded.
    pub fn connected(&self, m: &Member) {
        m.state.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// A connect to `m` failed; returns true when this ejected it.
    pub fn connect_failed(&self, m: &Member) -> bool {
        let failures = m.state.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        match self.eject_after {
            Some(limit) if failures >= limit => {
                m.state.consecutive_failures.store(0, Ordering::Relaxed);
                let until = self.now_ms() + self.eject_for.as_millis() as u64;
                m.state.ejected_until_ms.store(until, Ordering::Relaxed);
                m.state.ejections.fetch_add(1, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// How long an ejection lasts.
    pub fn eject_for(&self) -> Duration {
        self.eject_for
    }
}

/// Every pool of the running configuration, and the backend state (health,
/// ejection, TLS session stores) that outlives reloads.
#[derive(Debug)]
pub struct PoolRegistry {
    epoch: Instant,
    states: Mutex<HashMap<(String, SocketAddr), Arc<BackendState>>>,
    current: ArcSwap<Vec<Arc<Pool>>>,
    /// TLS client configurations (session stores) that outlive reloads.
    tls_configs: ConfigCache,
}

impl Default for PoolRegistry {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            states: Mutex::default(),
            current: ArcSwap::from_pointee(Vec::new()),
            tls_configs: ConfigCache::default(),
        }
    }
}

impl PoolRegistry {
    /// Builds the pools of a configuration, reusing the state of backends
    /// already known under the same pool name and address. Nothing is
    /// installed: see [`PoolRegistry::install`]. Fails when a pool's
    /// `backend_tls` cannot become a TLS client configuration.
    pub fn build(&self, configs: &[PoolConfig]) -> Result<Vec<Arc<Pool>>, UpstreamConfigError> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        configs
            .iter()
            .map(|c| {
                let tls = c
                    .tls
                    .as_ref()
                    .map(|t| {
                        let backends = c.backends.iter().map(|b| &b.backend);
                        UpstreamTls::build(t, &c.name, backends, &self.tls_configs)
                    })
                    .transpose()?;
                let members: Vec<Member> = c
                    .backends
                    .iter()
                    .map(|b| {
                        let state = states
                            .entry((c.name.clone(), b.backend.addr))
                            .or_insert_with(|| Arc::new(BackendState::new(b.backend.clone())))
                            .clone();
                        if c.health_check.is_none() {
                            // Nothing would ever mark it healthy again.
                            state.set_healthy(true);
                        }
                        Member {
                            state,
                            weight: b.weight.max(1),
                            max_connections: b.max_connections,
                        }
                    })
                    .collect();
                let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
                Ok(Arc::new(Pool {
                    name: c.name.clone(),
                    balance: c.balance,
                    schedule: balance::smooth_schedule(&weights),
                    members,
                    turn: AtomicUsize::new(0),
                    health_check: c.health_check,
                    eject_after: c.eject_after,
                    eject_for: c.eject_for,
                    epoch: self.epoch,
                    tls,
                }))
            })
            .collect()
    }

    /// Makes `pools` the current ones (for health checks and metrics) and
    /// forgets backends no longer in any pool.
    pub fn install(&self, pools: Vec<Arc<Pool>>) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let in_use = |pool: &str, addr: SocketAddr| {
            pools
                .iter()
                .any(|p| p.name == pool && p.members.iter().any(|m| m.state.backend.addr == addr))
        };
        states.retain(|(pool, addr), _| in_use(pool, *addr));
        self.tls_configs.retain(|pool, addr| {
            in_use(pool, addr) && pools.iter().any(|p| p.name == pool && p.tls.is_some())
        });
        self.current.store(Arc::new(pools));
    }

    /// The current pools.
    pub fn current(&self) -> Arc<Vec<Arc<Pool>>> {
        self.current.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolBackend;

    fn config(name: &str, addrs: &[&str], eject_after: Option<u32>) -> PoolConfig {
        PoolConfig {
            name: name.into(),
            balance: Balance::RoundRobin,
            backends: addrs
                .iter()
                .map(|a| PoolBackend {
                    backend: Backend {
                        name: a.to_string(),
                        addr: a.parse().unwrap(),
                    },
                    weight: 1,
                    max_connections: Some(1),
                })
                .collect(),
            health_check: None,
            eject_after,
            eject_for: Duration::from_secs(60),
            tls: None,
        }
    }

    fn names(order: &[&Member]) -> Vec<String> {
        order.iter().map(|m| m.state.backend.name.clone()).collect()
    }

    #[test]
    fn leases_enforce_max_connections_and_release_on_drop() {
        let reg = PoolRegistry::default();
        let pool = &reg
            .build(&[config("p", &["127.0.0.1:1", "127.0.0.1:2"], None)])
            .unwrap()[0];
        let m = &pool.members()[0];
        let lease = pool.lease(m).expect("first connection fits");
        assert!(pool.lease(m).is_none(), "max_connections = 1");
        assert_eq!(names(&pool.attempt_order(b"")), ["127.0.0.1:2"]);
        drop(lease);
        assert_eq!(m.state.open(), 0);
        assert_eq!(pool.attempt_order(b"").len(), 2);
    }

    #[test]
    fn consecutive_failures_eject_and_success_resets() {
        let reg = PoolRegistry::default();
        let pool = &reg
            .build(&[config("p", &["127.0.0.1:1", "127.0.0.1:2"], Some(2))])
            .unwrap()[0];
        let m = &pool.members()[0];
        assert!(!pool.connect_failed(m));
        pool.connected(m);
        assert!(!pool.connect_failed(m));
        assert!(pool.connect_failed(m), "second consecutive failure ejects");
        assert_eq!(m.state.ejections(), 1);
        assert!(!pool.in_service(m));
        for _ in 0..4 {
            assert_eq!(names(&pool.attempt_order(b"")), ["127.0.0.1:2"]);
        }
    }

    #[test]
    fn state_survives_a_rebuild_of_the_same_pool() {
        let reg = PoolRegistry::default();
        let first = reg
            .build(&[config("p", &["127.0.0.1:1"], Some(1))])
            .unwrap();
        reg.install(first.clone());
        first[0].connect_failed(&first[0].members()[0]);
        let again = reg
            .build(&[config("p", &["127.0.0.1:1", "127.0.0.1:3"], Some(1))])
            .unwrap();
        reg.install(again.clone());
        assert_eq!(again[0].members()[0].state.ejections(), 1);
        assert_eq!(again[0].members()[1].state.ejections(), 0);
        // A pool of another name starts fresh.
        let other = reg
            .build(&[config("q", &["127.0.0.1:1"], Some(1))])
            .unwrap();
        assert_eq!(other[0].members()[0].state.ejections(), 0);
    }
}
