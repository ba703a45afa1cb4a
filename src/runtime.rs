//! Workers and the process lifecycle.
//!
//! One thread per worker, each running its own monoio runtime (io_uring, or
//! epoll where io_uring is refused) pinned to one core, with its own
//! SO_REUSEPORT listening sockets: nothing on the connection path is shared
//! between workers. The main thread only waits for signals: the first
//! SIGTERM/SIGINT stops accepting and starts the drain, a second one (or the
//! drain timeout) closes what is left with close_notify.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use futures_channel::oneshot;
use futures_util::FutureExt as _;
use monoio::io::Canceller;
use monoio::net::{TcpListener, TcpStream};
use rustls::server::ProducesTickets;
use rustls::ServerConfig;

use crate::admin::{AdminState, ReloadCounts, ReloadRequest};
use crate::admit::{self, Client, ClientKey, Throttle, Verdict};
use crate::close::{
    AccessLogFormat, AccessRecord, CloseReason, Counters, RouteCount, RouteCounters,
};
use crate::config::{
    CertHeader, CertTlv, Config, KtlsMode, ListenerConfig, OffloadPolicy, ProxyProtocol,
    RouteConfig,
};
use crate::connect::pool::{Pool, PoolRegistry};
use crate::connect::proxy_protocol::{self, ClientInfo};
use crate::connect::{self};
use crate::handshake::{self, HandshakeError, Refusal};
use crate::ktls::handover::{
    handover, handover_backend, kernel_can_take, BackendHandover, Handover,
};
use crate::ktls::probe::{self, Capabilities};
use crate::pool::Buffers;
use crate::relay::http_head::HeadRewriter;
use crate::relay::userspace::{Pause, Relayed};
use crate::relay::{splice, userspace, RelayOutcome};
use crate::tls::client_hello::ClientHello;
use crate::tls::route::{RouteMatch, RouteTable, Selected};
use crate::tls::tickets::Ticketers;
use crate::tls::verify::{
    identify, Allowlist, CacheConfig, Fingerprint, Identity, RuleKind, VerifyCache,
};
use crate::tls::{certs, server_config};
use crate::trigger::Trigger;
use crate::upstream::{self, leg::BackendLeg};

/// Entries in each worker's io_uring submission queue.
const RING_ENTRIES: u32 = 4096;
/// How long workers wait for connections to finish after the drain expired.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How often the files a configuration names are checked for changes (a
/// change reloads once they have been quiet for twice this).
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Idle buffers each worker keeps per size class (about 5 MiB in all).
const BUFFERS_KEPT: usize = 64;
/// Pause before accepting again when the process is out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Timeouts and limits every worker applies.
#[derive(Debug, Clone, Copy)]
struct Limits {
    handshake_timeout: Duration,
    idle_timeout: Duration,
    connect_timeout: Duration,
    drain_timeout: Duration,
    max_connections: usize,
    max_handshakes: usize,
    ktls: KtlsMode,
    ktls_offload: OffloadPolicy,
    access_log: AccessLogFormat,
}

/// What a listener serves new connections with. Replaced whole on reload;
/// a connection keeps the one it started with.
#[derive(Debug)]
pub struct Served {
    /// Which route a ClientHello gets.
    pub table: RouteTable,
    /// The routes, in the table's order.
    pub routes: Vec<ServedRoute>,
    /// The listener's own route, for clients no route matches.
    pub default_route: Option<ServedRoute>,
    /// PROXY protocol header for backends.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// The process-wide throttle (its tiers are reloaded with the rest).
    pub throttle: Arc<Throttle>,
    /// The v2 header's client-certificate TLV, if any.
    pub proxy_protocol_cert_tlv: Option<CertTlv>,
    /// HTTP header mode: the client certificate in every request head.
    pub client_cert_header: Option<CertHeader>,
}

/// How one route serves its connections.
#[derive(Debug)]
pub struct ServedRoute {
    /// Name in the access log and metrics.
    pub name: String,
    /// TLS identity and client policy.
    pub tls: Arc<ServerConfig>,
    /// The allowlist, to name the client after its handshake.
    pub allowlist: Allowlist,
    /// Where its connections go.
    pub pool: Arc<Pool>,
    /// Its connection counts.
    pub count: Arc<RouteCount>,
}

/// A listener's current [`Served`], shared by all workers.
type SharedServed = Arc<ArcSwap<Served>>;

/// One listener as the main thread sets it up.
struct ListenerPlan {
    name: Arc<str>,
    listen: Vec<SocketAddr>,
    served: SharedServed,
    /// Per worker, that worker's sockets (one per listen address).
    sockets: Vec<Vec<std::net::TcpListener>>,
}

/// State the main thread builds routes from and the admin endpoint reads:
/// shared by every listener and kept across reloads.
struct Shared {
    cache: Arc<VerifyCache>,
    pools: Arc<PoolRegistry>,
    routes: Arc<RouteCounters>,
    throttle: Arc<Throttle>,
}

impl Served {
    fn build(
        listener: &ListenerConfig,
        pools: &[Arc<Pool>],
        shared: &Shared,
        ticketer: &Arc<dyn ProducesTickets>,
    ) -> anyhow::Result<Self> {
        let route = |r: &RouteConfig| -> anyhow::Result<ServedRoute> {
            let tls = server_config::build(&r.tls, &shared.cache, ticketer, &shared.throttle)
                .with_context(|| format!("listener {} route {}", listener.name, r.name))?;
            let pool = pools
                .iter()
                .find(|p| p.name == r.pool)
                .cloned()
                .with_context(|| format!("route {} names an unknown pool {}", r.name, r.pool))?;
            Ok(ServedRoute {
                name: r.name.clone(),
                tls,
                allowlist: r.tls.allowlist.clone(),
                pool,
                count: shared.routes.get(&listener.name, &r.name),
            })
        };
        let table = RouteTable::new(
            listener
                .routes
                .iter()
                .map(|r| RouteMatch {
                    name: r.name.clone(),
                    server_names: r.server_names.clone(),
                    alpn: r.tls.alpn.clone(),
                })
                .collect(),
            listener.default_route.is_some(),
        );
        Ok(Self {
            table,
            routes: listener
                .routes
                .iter()
                .map(route)
                .collect::<anyhow::Result<_>>()?,
            default_route: listener.default_route.as_ref().map(route).transpose()?,
            proxy_protocol: listener.proxy_protocol,
            throttle: shared.throttle.clone(),
            proxy_protocol_cert_tlv: listener.proxy_protocol_cert_tlv,
            client_cert_header: listener.client_cert_header.clone(),
        })
    }

    /// The route for a ClientHello, or the refusal; any route for one that
    /// did not parse (rustls then refuses it with its own alert).
    fn select(&self, hello: Option<&ClientHello>) -> Result<&ServedRoute, Refusal> {
        let Some(hello) = hello else {
            return self
                .default_route
                .as_ref()
                .or(self.routes.first())
                .ok_or_else(|| Refusal {
                    alert: rustls::AlertDescription::InternalError,
                    reason: "listener has no route".into(),
                });
        };
        match self.table.select(hello) {
            Ok(Selected::Route(i)) => Ok(&self.routes[i]),
            Ok(Selected::Default) => self.default_route.as_ref().ok_or_else(|| Refusal {
                alert: rustls::AlertDescription::InternalError,
                reason: "listener has no default route".into(),
            }),
            Err(no) => Err(Refusal {
                alert: no.alert(),
                reason: no.to_string(),
            }),
        }
    }
}

/// Applies a reloaded configuration: every listener's routes and the pools
/// are built first, and only if all succeed are they swapped in, with the
/// throttling tiers. Listener names and addresses, workers and timeouts
/// need a restart.
fn apply_reload(
    plans: &[ListenerPlan],
    config: &Config,
    shared: &Shared,
    ticketers: &mut Ticketers,
) -> anyhow::Result<()> {
    let same_listeners = plans.len() == config.listeners.len()
        && plans
            .iter()
            .zip(&config.listeners)
            .all(|(p, l)| *p.name == *l.name && p.listen == l.listen);
    if !same_listeners {
        anyhow::bail!("listener names or addresses changed; restart to apply that");
    }
    let ticketer = ticketers
        .for_settings(&config.tickets)
        .context("session tickets")?;
    let pools = shared.pools.build(&config.pools)?;
    let built = config
        .listeners
        .iter()
        .map(|l| Served::build(l, &pools, shared, &ticketer))
        .collect::<anyhow::Result<Vec<_>>>()?;
    shared.pools.install(pools);
    shared.throttle.set_tiers(config.tiers.clone());
    for (plan, served) in plans.iter().zip(built) {
        plan.served.store(Arc::new(served));
    }
    Ok(())
}

/// Runs the server until SIGTERM/SIGINT and the drain that follows.
///
/// `reload` re-reads the configuration's sources on SIGHUP. `on_ready` is
/// called once every socket is bound, with their addresses.
pub fn run(
    config: Config,
    reload: impl Fn() -> anyhow::Result<Config>,
    on_ready: impl FnOnce(&[SocketAddr]),
) -> anyhow::Result<()> {
    let workers = config.workers.max(1);
    let limits = Limits {
        handshake_timeout: config.handshake_timeout,
        idle_timeout: config.idle_timeout,
        connect_timeout: config.connect_timeout,
        drain_timeout: config.drain_timeout,
        max_connections: config.max_connections_per_worker,
        max_handshakes: config.max_handshakes_per_worker,
        ktls: config.ktls,
        ktls_offload: config.ktls_offload,
        access_log: config.access_log,
    };
    let caps = Arc::new(match config.ktls {
        KtlsMode::Off => Capabilities::none("ktls = off"),
        KtlsMode::Auto | KtlsMode::Require => probe::probe(),
    });
    tracing::info!("kernel TLS: {caps}");
    if config.ktls == KtlsMode::Require && !caps.any() {
        anyhow::bail!("ktls = require, but kernel TLS is {caps}");
    }

    // Before anything is announced: a signal that arrives once the caller
    // has seen `on_ready` (or the listening log) must start a clean drain,
    // not kill the process with the default disposition.
    let (events, signals) = mpsc::channel();
    spawn_signal_forwarder(events.clone())?;
    let watch_events = events.clone();
    crate::watch::spawn(config.files(), WATCH_INTERVAL, move || {
        watch_events.send(Event::Reload(None)).is_ok()
    })
    .context("cannot start the file watcher")?;
    // One verification cache for the process: workers share verdicts, and
    // reloads start new generations in it.
    let shared = Shared {
        cache: Arc::new(VerifyCache::new(CacheConfig::default())),
        pools: Arc::default(),
        routes: Arc::default(),
        // Limits hold across workers and listeners, and client buckets
        // outlive reloads.
        throttle: Throttle::new(config.tiers.clone(), admit::DEFAULT_CAPACITY),
    };
    let mut ticketers = Ticketers::default();
    let ticketer = ticketers
        .for_settings(&config.tickets)
        .context("session tickets")?;
    if let Some(file) = &config.tickets.keys {
        tracing::info!(
            "session tickets: {} key(s) from {}, sealing with key {}",
            file.keys.len(),
            file.path.display(),
            file.keys[0].name_hex()
        );
    }
    let pools = shared.pools.build(&config.pools)?;
    let mut plans = Vec::new();
    let mut bound = Vec::new();
    for listener in &config.listeners {
        let served = Served::build(listener, &pools, &shared, &ticketer)?;
        let mut sockets: Vec<Vec<std::net::TcpListener>> =
            (0..workers).map(|_| Vec::new()).collect();
        for addr in &listener.listen {
            let per_worker = crate::accept::bind_reuseport(*addr, workers, listener.backlog)?;
            let local = per_worker[0].local_addr()?;
            tracing::info!(listener = %listener.name, "listening on {local}");
            bound.push(local);
            for (w, socket) in per_worker.into_iter().enumerate() {
                sockets[w].push(socket);
            }
        }
        plans.push(ListenerPlan {
            name: listener.name.as_str().into(),
            listen: listener.listen.clone(),
            served: Arc::new(ArcSwap::from_pointee(served)),
            sockets,
        });
    }

    shared.pools.install(pools);
    crate::connect::health::spawn(shared.pools.clone())
        .context("cannot start the health-check thread")?;

    if std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "0")
    {
        tracing::info!(
            "net.ipv4.tcp_migrate_req is 0: when this process stops beside a newer one, \
             connections still in its accept queues are reset instead of moved (README, Restarts)"
        );
    }
    if !monoio::utils::detect_uring() {
        tracing::warn!("io_uring is not available here; workers use the epoll driver");
    }
    let cores = allowed_cpus();
    let (done_tx, done_rx) = mpsc::channel::<usize>();
    let mut controls = Vec::new();
    let mut handles = Vec::new();
    let counters: Vec<Arc<Counters>> = (0..workers).map(|_| Arc::default()).collect();
    for (id, worker_counters) in counters.iter().enumerate() {
        let worker_counters = worker_counters.clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (force_tx, force_rx) = oneshot::channel::<()>();
        let listeners: Vec<WorkerListener> = plans
            .iter_mut()
            .map(|p| WorkerListener {
                name: p.name.clone(),
                served: p.served.clone(),
                sockets: std::mem::take(&mut p.sockets[id]),
            })
            .collect();
        let done_tx = done_tx.clone();
        let caps = caps.clone();
        let cpu = cores[id % cores.len()];
        let handle = thread::Builder::new()
            .name(format!("tlsplice-w{id}"))
            .spawn(move || {
                // Reports the end even if the worker unwinds.
                let _done = DoneSignal(done_tx, id);
                let result = worker_thread(WorkerSetup {
                    id,
                    core: cpu,
                    listeners,
                    limits,
                    ktls: caps,
                    counters: worker_counters,
                    stop: stop_rx,
                    force: force_rx,
                });
                if let Err(e) = result {
                    tracing::error!(worker = id, "worker failed: {e:#}");
                }
            })
            .context("cannot start worker thread")?;
        controls.push((stop_tx, force_tx));
        handles.push(handle);
    }
    drop(done_tx);
    let admin = match config.admin {
        Some(addr) => {
            let admin_events = events.clone();
            let state = Arc::new(AdminState {
                counters: counters.clone(),
                cache: shared.cache.clone(),
                pools: shared.pools.clone(),
                routes: shared.routes.clone(),
                throttle: shared.throttle.clone(),
                draining: AtomicBool::new(false),
                reloads: ReloadCounts::default(),
                reload: Box::new(move |reply| {
                    admin_events.send(Event::Reload(Some(reply))).is_ok()
                }),
            });
            let local = crate::admin::spawn(addr, state.clone())
                .with_context(|| format!("cannot start the admin listener on {addr}"))?;
            tracing::info!("admin listening on {local}");
            Some(state)
        }
        None => None,
    };
    tracing::info!(workers, "serving");
    on_ready(&bound);

    let mut stops = Vec::new();
    let mut forces = Vec::new();
    for (s, f) in controls {
        stops.push(s);
        forces.push(f);
    }
    let mut remaining = workers;
    let mut stopping = false;
    while remaining > 0 {
        match signals.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Reload(reply)) => {
                let result = reload()
                    .and_then(|config| apply_reload(&plans, &config, &shared, &mut ticketers));
                // One log line per event, whatever the error spans.
                let result = result.map_err(|e| format!("{e:#}").replace('\n', "; "));
                if let Some(admin) = &admin {
                    admin.reloads.record(result.is_ok());
                }
                match &result {
                    Ok(()) => tracing::info!("reloaded: new connections use the new configuration"),
                    Err(e) => tracing::error!(
                        "reload failed, still serving the previous configuration: {e}"
                    ),
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Ok(Event::Signal(sig)) if !stopping => {
                tracing::info!(signal = sig, drain_timeout = ?limits.drain_timeout, "stopping: no new connections, draining");
                stopping = true;
                if let Some(admin) = &admin {
                    admin.draining.store(true, Ordering::Relaxed);
                }
                for s in stops.drain(..) {
                    let _ = s.send(());
                }
            }
            Ok(Event::Signal(sig)) => {
                tracing::info!(signal = sig, "second signal: closing open connections now");
                for f in forces.drain(..) {
                    let _ = f.send(());
                }
            }
            Err(_) => {}
        }
        while done_rx.try_recv().is_ok() {
            remaining -= 1;
        }
    }
    for h in handles {
        let _ = h.join();
    }
    let cache = shared.cache.stats();
    tracing::info!(
        "stopped: {}; verify cache hits={} negative_hits={} misses={} evictions={}",
        Counters::summary(counters.iter().map(|c| &**c)),
        cache.hits,
        cache.negative_hits,
        cache.misses,
        cache.evictions
    );
    Ok(())
}

/// The CPUs this process may run on (its affinity mask, as `taskset` sets
/// it), in order; worker N is pinned to the N-th of them.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity writes at most
    // its size, and CPU_ISSET reads within it.
    let allowed: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .collect()
        } else {
            Vec::new()
        }
    };
    if allowed.is_empty() {
        (0..thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        allowed
    }
}

/// Tells the main thread a worker ended, on drop (so also on unwind).
struct DoneSignal(mpsc::Sender<usize>, usize);

impl Drop for DoneSignal {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

/// Forwards SIGTERM, SIGINT and SIGHUP to a channel the main thread polls.
/// What the main thread acts on.
enum Event {
    /// SIGTERM or SIGINT: drain (a second one: close now).
    Signal(i32),
    /// SIGHUP, a watched file changed, or `POST /reload` (which waits for
    /// the outcome on the given channel).
    Reload(Option<ReloadRequest>),
}

fn spawn_signal_forwarder(tx: mpsc::Sender<Event>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    thread::Builder::new()
        .name("tlsplice-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let event = if sig == SIGHUP {
                    Event::Reload(None)
                } else {
                    Event::Signal(sig)
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        })
        .context("cannot start signal thread")?;
    Ok(())
}

/// A listener's share of one worker.
struct WorkerListener {
    name: Arc<str>,
    served: SharedServed,
    sockets: Vec<std::net::TcpListener>,
}

/// Per-listener state inside one worker.
struct ListenerState {
    name: Arc<str>,
    served: SharedServed,
}

/// Per-worker state shared by its tasks.
struct Worker {
    limits: Limits,
    ktls: Arc<Capabilities>,
    counters: Arc<Counters>,
    buffers: Buffers,
    active: Cell<usize>,
    /// Connections accepted whose handshake has not ended yet.
    handshaking: Rc<Cell<usize>>,
    stop_accepting: Trigger,
    drain_expired: Trigger,
}

/// What a worker thread starts from.
struct WorkerSetup {
    id: usize,
    core: usize,
    listeners: Vec<WorkerListener>,
    limits: Limits,
    ktls: Arc<Capabilities>,
    counters: Arc<Counters>,
    /// Stop accepting and start draining.
    stop: oneshot::Receiver<()>,
    /// End the drain now.
    force: oneshot::Receiver<()>,
}

fn worker_thread(setup: WorkerSetup) -> anyhow::Result<()> {
    if let Err(e) = monoio::utils::bind_to_cpu_set([setup.core]) {
        tracing::warn!(
            worker = setup.id,
            core = setup.core,
            "cannot pin worker: {e:?}"
        );
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .with_entries(RING_ENTRIES)
        .uring_builder(ring())
        .build()
        .context("cannot start the worker runtime")?;
    rt.block_on(worker(setup))
}

/// The io_uring setup of a worker's ring (the load generator's too).
///
/// With `COOP_TASKRUN` completions are collected when the worker next
/// enters the kernel, which it does after every turn of its loop, so the
/// kernel need not interrupt the thread to run io_uring's task work: about
/// a third less CPU per small request (docs/comparison.md).
pub fn ring() -> io_uring::Builder {
    let mut ring = io_uring::IoUring::builder();
    if coop_taskrun() {
        ring.setup_coop_taskrun();
    }
    ring
}

/// Whether this kernel takes `IORING_SETUP_COOP_TASKRUN` (Linux 5.19+).
/// Asked once with a small ring of its own: the runtime would fall back to
/// epoll, not to a plain ring, if the flag were refused.
fn coop_taskrun() -> bool {
    static COOP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *COOP.get_or_init(|| {
        io_uring::IoUring::<io_uring::squeue::Entry>::builder()
            .setup_coop_taskrun()
            .build(2)
            .is_ok()
    })
}

async fn worker(setup: WorkerSetup) -> anyhow::Result<()> {
    let WorkerSetup {
        id,
        listeners,
        limits,
        ktls,
        counters,
        stop,
        force,
        ..
    } = setup;
    let worker = Rc::new(Worker {
        limits,
        ktls,
        counters,
        buffers: Buffers::new(BUFFERS_KEPT),
        active: Cell::new(0),
        handshaking: Rc::new(Cell::new(0)),
        stop_accepting: Trigger::new(),
        drain_expired: Trigger::new(),
    });
    for l in listeners {
        let state = Rc::new(ListenerState {
            name: l.name,
            served: l.served,
        });
        for socket in l.sockets {
            let listener = TcpListener::from_std(socket).context("cannot register listener")?;
            monoio::spawn(accept_loop(worker.clone(), state.clone(), listener));
        }
    }

    // A dropped sender (the main thread is gone) also means stop.
    let _ = stop.await;
    worker.stop_accepting.fire();

    let drained = async {
        while worker.active.get() > 0 {
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    monoio::select! {
        _ = drained => {}
        _ = monoio::time::sleep(limits.drain_timeout) => {}
        _ = force => {}
    }
    worker.drain_expired.fire();
    let deadline = Instant::now() + CLOSE_GRACE;
    while worker.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if worker.active.get() > 0 {
        tracing::warn!(
            worker = id,
            open = worker.active.get(),
            "connections still open at exit"
        );
    }
    Ok(())
}

async fn accept_loop(worker: Rc<Worker>, listener_state: Rc<ListenerState>, listener: TcpListener) {
    // Stopping cancels the pending accept rather than dropping it: an accept
    // the kernel completed in the meantime still returns its connection,
    // which is served, instead of a socket nobody owns.
    let canceller = Canceller::new();
    let cancel = canceller.handle();
    let stopper = worker.clone();
    monoio::spawn(async move {
        stopper.stop_accepting.wait().await;
        canceller.cancel();
    });
    loop {
        match listener.cancelable_accept(cancel.clone()).await {
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => return,
            Ok((stream, peer)) => {
                let refused = if worker.active.get() >= worker.limits.max_connections {
                    Some(CloseReason::MaxConnections)
                } else if worker.handshaking.get() >= worker.limits.max_handshakes {
                    Some(CloseReason::MaxHandshakes)
                } else {
                    None
                };
                if let Some(reason) = refused {
                    let record = AccessRecord::new(peer, &listener_state.name);
                    record.emit(&reason, worker.limits.access_log);
                    worker.counters.record(&record, &reason);
                    drop(stream);
                    continue;
                }
                worker.active.set(worker.active.get() + 1);
                // Counted from accept, so a burst cannot overshoot the limit
                // before its tasks start.
                let slot = HandshakeSlot::take(&worker.handshaking);
                monoio::spawn(connection(
                    worker.clone(),
                    listener_state.clone(),
                    stream,
                    peer,
                    slot,
                ));
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning;
                // anything else is per-connection and already gone.
                tracing::warn!(listener = %listener_state.name, "accept failed: {e}");
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    monoio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

/// One handshake in flight, counted against `max_handshakes` until dropped
/// (also when the connection's task unwinds).
struct HandshakeSlot(Rc<Cell<usize>>);

impl HandshakeSlot {
    fn take(count: &Rc<Cell<usize>>) -> Self {
        count.set(count.get() + 1);
        Self(count.clone())
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// The PROXY protocol header describing this client to the backend.
fn proxy_header(
    version: ProxyProtocol,
    cert_tlv: Option<CertTlv>,
    stream: &TcpStream,
    record: &AccessRecord,
    established: &handshake::Established,
) -> Vec<u8> {
    let conn = &established.conn;
    let end_entity = conn.peer_certificates().and_then(|c| c.first());
    let cn = end_entity.and_then(certs::common_name);
    let info = ClientInfo {
        alpn: conn.alpn_protocol(),
        sni: established.hello.server_name.as_deref(),
        tls_version: conn.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            _ => "unknown",
        }),
        cipher: record.suite.as_deref(),
        cn: cn.as_deref(),
        cert_presented: end_entity.is_some(),
        cert_sha256: end_entity.map(|c| *Fingerprint::of(c).as_bytes()),
        cert_der: end_entity.map(|c| c.as_ref()),
        cert_tlv,
        identity: record.identity.as_deref(),
    };
    let local = stream.local_addr().unwrap_or(record.client);
    proxy_protocol::encode(version, record.client, local, &info)
}

/// What hash balancing keys a client on: the alias when the allowlist
/// names one, else the certificate fingerprint, else the client IP.
fn hash_key(
    identity: Option<&Identity>,
    peer_certificates: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    client: SocketAddr,
) -> Vec<u8> {
    if let Some(id) = identity.filter(|id| id.kind() == RuleKind::Alias) {
        return format!("alias:{}", id.label()).into_bytes();
    }
    if let Some(cert) = peer_certificates.and_then(|c| c.first()) {
        return Fingerprint::of(cert).as_bytes().to_vec();
    }
    client.ip().to_string().into_bytes()
}

/// One client connection, from accept to its access-log line.
async fn connection(
    worker: Rc<Worker>,
    listener: Rc<ListenerState>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: HandshakeSlot,
) {
    let mut record = AccessRecord::new(peer, &listener.name);
    worker.counters.open.fetch_add(1, Ordering::Relaxed);
    // A bug in one connection must not take the worker's other connections
    // down with it: contain the panic, log it, close this connection only.
    let served = AssertUnwindSafe(serve(&worker, &listener, stream, slot, &mut record))
        .catch_unwind()
        .await;
    let reason = served.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        tracing::error!(client = %peer, "connection task panicked: {what}");
        CloseReason::Internal(what)
    });
    // Counted before the log line, so whoever sees the line (a test, an
    // operator) finds it in /metrics too.
    worker.counters.record(&record, &reason);
    worker.counters.open.fetch_sub(1, Ordering::Relaxed);
    record.emit(&reason, worker.limits.access_log);
    worker.active.set(worker.active.get() - 1);
}

async fn serve(
    worker: &Worker,
    listener: &ListenerState,
    mut stream: TcpStream,
    in_flight: HandshakeSlot,
    record: &mut AccessRecord,
) -> CloseReason {
    let _ = stream.set_nodelay(true);
    let limits = worker.limits;
    // This connection keeps the configuration it started with, even if a
    // reload swaps the listener's while it runs.
    let served = listener.served.load_full();
    let mut route: Option<&ServedRoute> = None;
    let handshake = monoio::time::timeout(
        limits.handshake_timeout,
        handshake::accept(&mut stream, &worker.buffers, |hello| {
            let chosen = served.select(hello)?;
            route = Some(chosen);
            Ok(chosen.tls.clone())
        }),
    )
    .await;
    drop(in_flight);
    let mut established = match handshake {
        Err(_) => return CloseReason::HandshakeTimeout,
        Ok(Err(HandshakeError::NotTls(e))) => return CloseReason::NotTls(e.to_string()),
        Ok(Err(HandshakeError::ClientGone)) => return CloseReason::ClientGoneInHandshake,
        Ok(Err(HandshakeError::Throttled(refusal))) => {
            record.tier = Some(refusal.tier.to_string());
            if let ClientKey::Identity(label) = &refusal.client {
                record.identity = Some(label.to_string());
            }
            return CloseReason::Throttled(refusal.to_string());
        }
        Ok(Err(HandshakeError::Refused(r))) => return CloseReason::NoRoute(r.to_string()),
        // A reset is the client leaving too, not a failed handshake.
        Ok(Err(HandshakeError::Io(e)))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            return CloseReason::ClientGoneInHandshake
        }
        Ok(Err(e)) => return CloseReason::HandshakeFailed(e.to_string()),
        Ok(Ok(established)) => established,
    };
    let Some(route) = route else {
        return CloseReason::Internal("handshake completed without a route".into());
    };
    record.route = Some(route.name.clone());
    let _counted = route.count.enter();
    record.handshake = Some(record.started.elapsed());
    record.sni = established.hello.server_name.clone();
    let conn = &established.conn;
    record.alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    record.version = conn.protocol_version().map(|v| format!("{v:?}"));
    record.suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()));
    record.subject = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(certs::subject);
    let identity = identify(&route.allowlist, conn.peer_certificates());
    record.identity = identity.as_ref().map(|id| id.label().to_owned());

    let key = hash_key(identity.as_ref(), conn.peer_certificates(), record.client);

    // Clients the verifier did not see (no certificate, or a resumed
    // session) are decided now; a refusal can only be a close_notify.
    let verdict = match established.verdict.take() {
        Some(verdict) => verdict,
        None => served.throttle.admit(
            &Client {
                end_entity: conn.peer_certificates().and_then(|c| c.first()),
                identity: record.identity.as_deref(),
                address: Some(record.client.ip()),
            },
            Instant::now(),
        ),
    };
    let admission = match verdict {
        Verdict::Unthrottled => None,
        Verdict::Admitted(admission) => {
            record.tier = Some(admission.tier().to_owned());
            Some(admission)
        }
        Verdict::Refused(refusal) => {
            record.tier = Some(refusal.tier.to_string());
            let _ = handshake::close(&mut stream, &mut established).await;
            return CloseReason::Throttled(refusal.to_string());
        }
    };
    let pacer = admission.as_ref().and_then(admit::Admission::pacer);

    let header = served.proxy_protocol.map(|version| {
        let cert_tlv = served.proxy_protocol_cert_tlv;
        proxy_header(version, cert_tlv, &stream, record, &established)
    });
    let client_alpn = established.conn.alpn_protocol().map(<[u8]>::to_vec);
    let upstream_tls = route.pool.tls.as_ref();
    let connected = connect::connect(
        &route.pool,
        &key,
        limits.connect_timeout,
        |mut backend, chosen| {
            let header = header.clone();
            let tls = upstream_tls.and_then(|u| {
                let (config, name) = u.for_backend(chosen)?;
                Some((config, name, u.alpn_for(client_alpn.as_deref())))
            });
            async move {
                if let Some(header) = header {
                    let (res, _) =
                        monoio::io::AsyncWriteRentExt::write_all(&mut backend, header).await;
                    res.map_err(|e| io::Error::new(e.kind(), format!("PROXY header: {e}")))?;
                }
                let Some((config, name, alpn)) = tls else {
                    return Ok(BackendLeg::Plain(backend));
                };
                let session = upstream::handshake(&mut backend, config, name, alpn).await?;
                Ok(BackendLeg::Tls(backend, Box::new(session)))
            }
        },
    )
    .await;
    let (backend, lease) = match connected {
        Ok(ok) => ok,
        Err(e) => return CloseReason::BackendUnavailable(e.to_string()),
    };
    let chosen = lease.backend();
    record.backend = Some(chosen.name.clone());

    // Header mode rewrites request heads, so the client's plaintext must
    // pass through userspace: such connections stay off kernel TLS.
    let heads = served.client_cert_header.as_ref().map(|h| {
        let chain = established.conn.peer_certificates().unwrap_or_default();
        HeadRewriter::new(&h.reserved_names(), h.lines(chain), h.max_head)
    });
    // From here on records are ours to seal and open; rustls keeps only
    // what derives new secrets.
    let mut session = match established.into_session() {
        Ok(session) => session,
        Err(e) => return CloseReason::Internal(format!("record layer: {e}")),
    };
    let (idle, drain) = (limits.idle_timeout, &worker.drain_expired);
    let buffers = &worker.buffers;
    let offload = limits.ktls != KtlsMode::Off && worker.ktls.any();
    let caps = &worker.ktls;
    let (mut backend, upstream) = match backend {
        BackendLeg::Plain(stream) => (stream, None),
        BackendLeg::Tls(stream, upstream) => {
            record.upstream = Some(upstream.kind());
            (stream, Some(upstream))
        }
    };
    // With TLS to the backend both legs go to the kernel, or neither: no
    // relay mixes them. So the backend's session is checked first.
    let backend_unfit = upstream.as_ref().and_then(|u| {
        kernel_can_take(&u.traffic, caps)
            .err()
            .map(|why| format!("backend leg: {why}"))
    });
    // Under thresholds the connection starts in userspace and moves to the
    // kernel once one is reached. Header mode offloads at once: the
    // rewriter's state does not move across; so do TLS backends: the pause
    // cannot carry their session.
    if offload && heads.is_none() && upstream.is_none() && !limits.ktls_offload.at_once() {
        let pause = Pause {
            policy: limits.ktls_offload,
            since: record.started,
        };
        match userspace::run(
            session,
            stream,
            BackendLeg::Plain(backend),
            None,
            idle,
            drain,
            buffers,
            admission.as_ref().and_then(admit::Admission::pacer),
            Some(pause),
        )
        .await
        {
            Relayed::Closed(outcome) => {
                record.ktls_offload = Some("below_threshold");
                return relayed(record, outcome);
            }
            Relayed::Paused(paused) => {
                record.ktls_offload = Some(paused.trigger.as_str());
                record.ktls_after_bytes = Some(paused.bytes_up + paused.bytes_down);
                record.bytes_up = paused.bytes_up;
                record.bytes_down = paused.bytes_down;
                (session, stream, backend) = (paused.session, paused.client, paused.backend);
            }
        }
    }
    let session = if offload {
        let handed = match backend_unfit {
            Some(why) => Ok(Handover::Userspace(Box::new(session), why)),
            None => handover(session, &mut stream, caps).await,
        };
        match handed {
            Ok(Handover::Kernel(session)) => {
                let backend_tls = match upstream {
                    None => None,
                    Some(upstream) => match handover_backend(*upstream, &mut backend, caps).await {
                        Ok(BackendHandover::Kernel(b)) => Some(*b),
                        Ok(BackendHandover::Userspace(_, why)) => {
                            return CloseReason::BackendError(format!(
                                "backend TLS could not follow the client's into the kernel: {why}"
                            ))
                        }
                        Err(e) => return CloseReason::BackendError(e.to_string()),
                    },
                };
                record.path = "ktls";
                let pipes = &worker.buffers.pipes;
                let outcome = splice::run(
                    *session,
                    stream,
                    backend,
                    backend_tls,
                    heads,
                    idle,
                    drain,
                    pipes,
                    pacer,
                )
                .await;
                return relayed(record, outcome);
            }
            Ok(Handover::Userspace(_, why)) if limits.ktls == KtlsMode::Require => {
                return CloseReason::ClientError(format!("ktls = require, but {why}"));
            }
            Ok(Handover::Userspace(session, why)) => {
                record.ktls_fallback = Some(why);
                *session
            }
            Err(e) => return CloseReason::ClientError(e.to_string()),
        }
    } else {
        session
    };
    let leg = match upstream {
        None => BackendLeg::Plain(backend),
        Some(upstream) => BackendLeg::Tls(backend, upstream),
    };
    let relay = userspace::run(
        session, stream, leg, heads, idle, drain, buffers, pacer, None,
    );
    match relay.await {
        Relayed::Closed(outcome) => relayed(record, outcome),
        Relayed::Paused(_) => CloseReason::Internal("relay paused without a pause".into()),
    }
}

/// Adds a relay's totals to the record's (a late offload relayed some in
/// userspace first); returns why it ended.
fn relayed(record: &mut AccessRecord, outcome: RelayOutcome) -> CloseReason {
    record.bytes_up += outcome.bytes_up;
    record.bytes_down += outcome.bytes_down;
    outcome.reason
}
