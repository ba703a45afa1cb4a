//! One worker thread: its own monoio runtime (io_uring, epoll where
//! io_uring is refused), optionally pinned to a CPU, running its share of
//! the connections. Nothing is shared with other workers but the progress
//! counters; results are merged after the run.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};

use crate::cli::Direction;
use crate::conn::{BufSizes, OpError, TlsConn};
use crate::http::ResponseParser;
use crate::progress::Counters;
use crate::schedule::{latency_origin, Gate};
use crate::stats::{CpuTime, ErrorKind, Negotiated, Stats};
use crate::tls::{self, ciphertext_bound, ClientSetup};

/// Entries in each worker's io_uring submission queue.
const RING_ENTRIES: u32 = 1024;
/// Closed loop: pause after a failed connect so a refused port is not
/// hammered in a tight loop (the run still ends on time).
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// How long the final close of a kept-alive connection may take.
const FINAL_CLOSE: Duration = Duration::from_secs(1);

/// What each operation does.
#[derive(Debug, Clone)]
pub enum Work {
    /// New connection, handshake, optional echo of `echo` bytes, close.
    Handshake {
        /// Bytes echoed after the handshake (0: none).
        echo: usize,
    },
    /// `size` bytes sent and echoed back on a kept-alive connection.
    Echo {
        /// Request bytes.
        size: usize,
    },
    /// One HTTP GET on a kept-alive connection.
    Http {
        /// The request, built once.
        request: Arc<[u8]>,
    },
    /// One `size`-byte write (or read, downwards) of a continuous stream.
    Bulk {
        /// Bytes per operation.
        size: usize,
        /// Which way data flows.
        direction: Direction,
    },
}

/// Everything one worker needs.
pub struct WorkerPlan {
    /// Worker number, from 0.
    pub id: usize,
    /// CPU to pin to.
    pub cpu: Option<usize>,
    /// Server address.
    pub addr: SocketAddr,
    /// SNI / certificate name.
    pub server_name: ServerName<'static>,
    /// TLS settings (each worker builds its own `ClientConfig` from them).
    pub setup: Arc<ClientSetup>,
    /// What an operation is.
    pub work: Work,
    /// This worker's connections.
    pub connections: usize,
    /// This worker's schedule and bounds.
    pub gate: Gate,
    /// Per-operation limit.
    pub timeout: Duration,
    /// Live counters for the progress line.
    pub counters: Arc<Counters>,
    /// All workers start together.
    pub barrier: Arc<Barrier>,
}

/// Runs one worker to completion on the calling thread.
pub fn run(plan: WorkerPlan) -> anyhow::Result<Stats> {
    let prepared = prepare(&plan);
    // Wait even when preparing failed, or the other workers would wait forever.
    plan.barrier.wait();
    let (mut rt, config) = prepared?;
    let cpu_before = CpuTime::thread();
    let mut stats = rt.block_on(drive(plan, config));
    stats.cpu = CpuTime::thread().since(&cpu_before);
    Ok(stats)
}

type Runtime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

fn prepare(plan: &WorkerPlan) -> anyhow::Result<(Runtime, Arc<ClientConfig>)> {
    if let Some(cpu) = plan.cpu {
        monoio::utils::bind_to_cpu_set([cpu])
            .map_err(|e| anyhow::anyhow!("cannot pin worker {} to cpu {cpu}: {e:?}", plan.id))?;
    }
    let config = tls::client_config(&plan.setup)?;
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .with_entries(RING_ENTRIES)
        .uring_builder(tlsplice::runtime::ring())
        .build()
        .context("cannot start the worker runtime")?;
    Ok((rt, config))
}

/// A worker's state shared by its connection tasks (one thread, no locks;
/// no borrow is held across an await).
struct Shared {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    work: Work,
    timeout: Duration,
    sizes: BufSizes,
    open_loop: bool,
    start: Cell<Instant>,
    last_end: Cell<Instant>,
    gate: RefCell<Gate>,
    stats: RefCell<Stats>,
    counters: Arc<Counters>,
}

async fn drive(plan: WorkerPlan, config: Arc<ClientConfig>) -> Stats {
    let sizes = match &plan.work {
        Work::Bulk { size, .. } => BufSizes {
            incoming: (*size).max(64 * 1024) + 64 * 1024,
            outgoing: ciphertext_bound(*size),
        },
        Work::Echo { size } => BufSizes {
            incoming: 0,
            outgoing: ciphertext_bound(*size),
        },
        Work::Handshake { echo } => BufSizes {
            incoming: 0,
            outgoing: ciphertext_bound(*echo).max(8192),
        },
        Work::Http { request } => BufSizes {
            incoming: 0,
            outgoing: ciphertext_bound(request.len()),
        },
    };
    let now = Instant::now();
    let shared = Rc::new(Shared {
        addr: plan.addr,
        server_name: plan.server_name,
        config,
        open_loop: plan.gate.is_open_loop(),
        work: plan.work,
        timeout: plan.timeout,
        sizes,
        start: Cell::new(now),
        last_end: Cell::new(now),
        gate: RefCell::new(plan.gate),
        stats: RefCell::new(Stats::default()),
        counters: plan.counters,
    });

    // Kept-alive modes connect before the clock starts, so the first
    // operations are not charged with connection setup.
    let mut initial = Vec::with_capacity(plan.connections);
    if matches!(shared.work, Work::Handshake { .. }) {
        initial.resize_with(plan.connections, || None);
    } else {
        let handles: Vec<_> = (0..plan.connections)
            .map(|_| {
                let shared = shared.clone();
                monoio::spawn(async move {
                    match monoio::time::timeout(shared.timeout, connect(&shared)).await {
                        Ok(Ok(conn)) => Some(conn),
                        Ok(Err(e)) => {
                            shared.stats.borrow_mut().errors.record(e.kind, &e.detail);
                            None
                        }
                        Err(_) => {
                            shared
                                .stats
                                .borrow_mut()
                                .errors
                                .record(ErrorKind::Timeout, "connect and handshake timed out");
                            None
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            initial.push(h.await);
        }
    }

    let start = Instant::now();
    shared.start.set(start);
    shared.last_end.set(start);
    let tasks: Vec<_> = initial
        .into_iter()
        .map(|conn| monoio::spawn(connection_task(shared.clone(), conn)))
        .collect();
    for t in tasks {
        t.await;
    }

    let mut stats = shared.stats.take();
    stats.elapsed = shared.last_end.get().saturating_duration_since(start);
    stats.unsent = shared.gate.borrow().unsent();
    stats
}

/// What a successful operation measured.
struct Done {
    /// When the operation's answer was complete (for handshakes: before the close).
    at: Instant,
    up: u64,
    down: u64,
}

/// Per-task buffers, allocated once and reused by every operation.
struct TaskBufs {
    payload: Vec<u8>,
    parser: ResponseParser,
}

impl TaskBufs {
    fn new(work: &Work) -> Self {
        let len = match work {
            Work::Handshake { echo } => *echo,
            Work::Echo { size } | Work::Bulk { size, .. } => *size,
            Work::Http { .. } => 0,
        };
        Self {
            // Lowercase letters: an HTTP-sniffing echo backend sees no request line.
            payload: (0..len).map(|i| b'a' + (i % 26) as u8).collect(),
            parser: ResponseParser::new(),
        }
    }
}

async fn connection_task(shared: Rc<Shared>, mut conn: Option<TlsConn>) {
    let mut bufs = TaskBufs::new(&shared.work);
    loop {
        let start = shared.start.get();
        let ready = start.elapsed();
        let Some(slot) = shared.gate.borrow_mut().next(ready) else {
            break;
        };
        if let Some(due) = slot.due {
            if due > ready {
                monoio::time::sleep_until(monoio::time::Instant::from_std(start + due)).await;
            }
        }
        let sent = Instant::now();
        let origin = match slot.due {
            Some(due) => start + latency_origin(due, ready, sent - start),
            None => sent,
        };
        let result =
            monoio::time::timeout(shared.timeout, operation(&shared, &mut conn, &mut bufs)).await;
        let result = result.unwrap_or_else(|_| {
            Err(OpError::new(
                ErrorKind::Timeout,
                format!("operation took longer than {:?}", shared.timeout),
            ))
        });
        let end = Instant::now();
        if end > shared.last_end.get() {
            shared.last_end.set(end);
        }
        match result {
            Ok(done) => {
                let mut stats = shared.stats.borrow_mut();
                if !matches!(shared.work, Work::Bulk { .. }) {
                    stats.record_ok(done.at.saturating_duration_since(origin));
                } else {
                    stats.ok += 1;
                }
                stats.bytes_up += done.up;
                stats.bytes_down += done.down;
                shared.counters.op();
                shared.counters.bytes(done.up + done.down);
            }
            Err(e) => {
                // The connection's state is unknown after a failure: start afresh.
                conn = None;
                shared.stats.borrow_mut().errors.record(e.kind, &e.detail);
                shared.counters.error();
                if e.kind == ErrorKind::Connect && !shared.open_loop {
                    monoio::time::sleep(CONNECT_BACKOFF).await;
                }
            }
        }
    }
    if let Some(conn) = conn {
        // Polite end of a kept-alive connection; its outcome is not measured.
        let _ = monoio::time::timeout(FINAL_CLOSE, conn.close()).await;
    }
}

/// Opens a connection and notes how its handshake went.
async fn connect(shared: &Shared) -> Result<TlsConn, OpError> {
    let conn = TlsConn::connect(
        shared.addr,
        shared.config.clone(),
        shared.server_name.clone(),
        shared.sizes,
    )
    .await?;
    let tls = conn.engine().negotiated();
    let mut stats = shared.stats.borrow_mut();
    match tls.kind {
        Some(HandshakeKind::Resumed) => stats.handshakes.resumed += 1,
        Some(HandshakeKind::FullWithHelloRetryRequest) => stats.handshakes.full_hrr += 1,
        _ => stats.handshakes.full += 1,
    }
    if stats.negotiated.is_none() {
        stats.negotiated = Some(Negotiated {
            version: tls.version.map_or_else(|| "?".into(), |v| format!("{v:?}")),
            cipher_suite: tls.suite.map_or_else(|| "?".into(), |s| format!("{s:?}")),
            key_exchange: tls.group.map_or_else(|| "?".into(), |g| format!("{g:?}")),
        });
    }
    Ok(conn)
}

/// One operation of the configured kind.
async fn operation(
    shared: &Shared,
    conn: &mut Option<TlsConn>,
    bufs: &mut TaskBufs,
) -> Result<Done, OpError> {
    match &shared.work {
        Work::Handshake { echo } => {
            let mut c = connect(shared).await?;
            if *echo > 0 {
                echo_exchange(&mut c, &bufs.payload).await?;
            }
            let at = Instant::now();
            // The verdict on the client certificate (TLS 1.3) and the
            // session tickets arrive after the client's last flight: the
            // close reads up to the server's close, so both are seen.
            let close_notify = c.close().await?;
            let mut stats = shared.stats.borrow_mut();
            if close_notify {
                stats.closes.close_notify += 1;
            } else {
                stats.closes.eof += 1;
            }
            Ok(Done {
                at,
                up: *echo as u64,
                down: *echo as u64,
            })
        }
        Work::Echo { size } => {
            let c = connected(shared, conn).await?;
            echo_exchange(c, &bufs.payload).await?;
            Ok(Done {
                at: Instant::now(),
                up: *size as u64,
                down: *size as u64,
            })
        }
        Work::Http { request } => {
            let c = connected(shared, conn).await?;
            let parser = &mut bufs.parser;
            parser.reset();
            let mut received = 0u64;
            let mut outcome = None;
            let end = c
                .exchange(request, |p| {
                    received += p.len() as u64;
                    match parser.feed(p) {
                        Ok(None) => false,
                        Ok(Some(r)) => {
                            outcome = Some(Ok(r));
                            true
                        }
                        Err(e) => {
                            outcome = Some(Err(e));
                            true
                        }
                    }
                })
                .await?;
            let at = Instant::now();
            if end.is_closed() && outcome.is_none() {
                outcome = parser.closed().map(Ok);
            }
            let response = match outcome {
                Some(Ok(r)) => r,
                Some(Err(e)) => return Err(OpError::new(ErrorKind::Response, e.to_string())),
                None => {
                    return Err(OpError::new(
                        ErrorKind::Closed,
                        "server closed before the HTTP response was complete",
                    ))
                }
            };
            if response.close || end.is_closed() {
                *conn = None;
            }
            Ok(Done {
                at,
                up: request.len() as u64,
                down: received,
            })
        }
        Work::Bulk { size, direction } => {
            let c = connected(shared, conn).await?;
            let mut down = 0u64;
            match direction {
                Direction::Up | Direction::Both => {
                    c.pump(&bufs.payload, |p| down += p.len() as u64).await?;
                    Ok(Done {
                        at: Instant::now(),
                        up: *size as u64,
                        down,
                    })
                }
                Direction::Down => {
                    let want = *size as u64;
                    let end = c
                        .recv(|p| {
                            down += p.len() as u64;
                            down >= want
                        })
                        .await?;
                    if end.is_closed() {
                        // A finite source: open a new connection next time.
                        *conn = None;
                        if down == 0 {
                            return Err(OpError::new(
                                ErrorKind::Closed,
                                "server closed without sending anything (bulk down needs a server that sends)",
                            ));
                        }
                    }
                    Ok(Done {
                        at: Instant::now(),
                        up: 0,
                        down,
                    })
                }
            }
        }
    }
}

/// The kept-alive connection, opened first if needed.
async fn connected<'a>(
    shared: &Shared,
    conn: &'a mut Option<TlsConn>,
) -> Result<&'a mut TlsConn, OpError> {
    if conn.is_none() {
        *conn = Some(connect(shared).await?);
    }
    // Just filled above when it was empty.
    conn.as_mut()
        .ok_or_else(|| OpError::new(ErrorKind::Connect, "no connection"))
}

/// Sends `payload` and checks that exactly it comes back.
async fn echo_exchange(conn: &mut TlsConn, payload: &[u8]) -> Result<(), OpError> {
    let mut got = 0usize;
    let mut bad = false;
    let end = conn
        .exchange(payload, |p| {
            let fits = got + p.len() <= payload.len();
            if !fits || p != &payload[got..got + p.len()] {
                bad = true;
            }
            got += p.len();
            bad || got >= payload.len()
        })
        .await?;
    if bad {
        return Err(OpError::new(
            ErrorKind::Response,
            format!(
                "echo mismatch: sent {} bytes, received {got} differing bytes",
                payload.len()
            ),
        ));
    }
    if end.is_closed() {
        return Err(OpError::new(
            ErrorKind::Closed,
            format!(
                "server closed after {got} of {} echoed bytes",
                payload.len()
            ),
        ));
    }
    Ok(())
}
