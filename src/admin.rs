//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/ready`
//! and `POST /reload`, on its own address (loopback by default) and its own
//! thread, away from the workers.
//!
//! Requests are tiny and rare, so a blocking accept loop with one request
//! per connection is enough; the routing and the metrics text are sans-IO.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use crate::admit::{RefusalReason, Throttle};
use crate::close::{Counters, RouteCounters, HANDSHAKE_BUCKETS_MS, REASON_CODES};
use crate::connect::pool::{Pool, PoolRegistry};
use crate::tls::verify::{CacheStats, VerifyCache};

/// What the admin endpoints read and drive.
pub struct AdminState {
    /// Each worker's counters.
    pub counters: Vec<Arc<Counters>>,
    /// The client verification cache.
    pub cache: Arc<VerifyCache>,
    /// The throttling tiers' state.
    pub throttle: Arc<Throttle>,
    /// The backend pools (health, ejections, open connections).
    pub pools: Arc<PoolRegistry>,
    /// Connections per route.
    pub routes: Arc<RouteCounters>,
    /// Set once shutdown began: `/ready` turns 503 so load balancers stop
    /// sending new connections.
    pub draining: AtomicBool,
    /// Reloads applied and refused, whatever asked for them.
    pub reloads: ReloadCounts,
    /// Asks the main thread to reload (it answers on the given channel);
    /// false when the main thread is gone.
    pub reload: Box<dyn Fn(ReloadRequest) -> bool + Send + Sync>,
}

/// How many reloads were applied and how many were refused (the previous
/// configuration kept serving).
#[derive(Debug, Default)]
pub struct ReloadCounts {
    /// Reloads swapped in.
    pub applied: std::sync::atomic::AtomicU64,
    /// Reloads refused.
    pub failed: std::sync::atomic::AtomicU64,
}

impl ReloadCounts {
    /// Counts one reload's outcome.
    pub fn record(&self, applied: bool) {
        let which = if applied { &self.applied } else { &self.failed };
        which.fetch_add(1, Ordering::Relaxed);
    }
}

/// The Prometheus text of the reload counts.
pub fn render_reload_metrics(reloads: &ReloadCounts) -> String {
    let mut out = String::new();
    write_family(
        &mut out,
        (
            "tlsplice_reloads_total",
            "counter",
            "Configuration reloads, by result (failed: the previous configuration kept serving).",
        ),
        vec![
            (
                "result=\"applied\"".to_string(),
                reloads.applied.load(Ordering::Relaxed),
            ),
            (
                "result=\"failed\"".to_string(),
                reloads.failed.load(Ordering::Relaxed),
            ),
        ],
    );
    out
}

/// A reload asked over the admin listener, with where to send the outcome.
pub type ReloadRequest = mpsc::Sender<Result<(), String>>;

/// An HTTP answer: status line and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// Status code and reason, e.g. `200 OK`.
    pub status: &'static str,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Answer {
    fn text(status: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Routes one request line (`METHOD PATH`) to its answer.
pub fn route(method: &str, path: &str, state: &AdminState) -> Answer {
    match (method, path) {
        ("GET", "/healthz") => Answer::text("200 OK", "ok\n"),
        ("GET", "/ready") if state.draining.load(Ordering::Relaxed) => {
            Answer::text("503 Service Unavailable", "draining\n")
        }
        ("GET", "/ready") => Answer::text("200 OK", "ready\n"),
        ("GET", "/metrics") => Answer {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: render_metrics(
                state.counters.iter().map(|c| &**c),
                &state.cache.stats(),
                state.draining.load(Ordering::Relaxed),
            ) + &render_upstream_metrics(&state.pools.current(), &state.routes)
                + &render_throttle_metrics(&state.throttle)
                + &render_reload_metrics(&state.reloads),
        },
        ("POST", "/reload") => {
            let (tx, rx) = mpsc::channel();
            if !(state.reload)(tx) {
                return Answer::text("503 Service Unavailable", "shutting down\n");
            }
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok(())) => Answer::text("200 OK", "reloaded\n"),
                Ok(Err(e)) => Answer::text(
                    "422 Unprocessable Entity",
                    format!("reload failed, still serving the previous configuration: {e}\n"),
                ),
                Err(_) => Answer::text("504 Gateway Timeout", "reload did not answer\n"),
            }
        }
        (_, "/healthz" | "/ready" | "/metrics" | "/reload") => {
            Answer::text("405 Method Not Allowed", "method not allowed\n")
        }
        _ => Answer::text("404 Not Found", "not found\n"),
    }
}

/// The Prometheus text exposition of all workers' counters.
pub fn render_metrics<'a>(
    counters: impl IntoIterator<Item = &'a Counters> + Clone,
    cache: &CacheStats,
    draining: bool,
) -> String {
    let sum = |f: &dyn Fn(&Counters) -> u64| counters.clone().into_iter().map(f).sum::<u64>();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v.to_string())];

    metric(
        "tlsplice_connections_open",
        "gauge",
        "Client connections accepted and not yet closed.",
        &one(sum(&|c| load(&c.open))),
    );
    let closed: Vec<_> = REASON_CODES
        .iter()
        .map(|code| {
            (
                format!("{{reason=\"{code}\"}}"),
                sum(&|c| c.reason(code)).to_string(),
            )
        })
        .collect();
    metric(
        "tlsplice_connections_closed_total",
        "counter",
        "Client connections ended, by close reason.",
        &closed,
    );
    metric(
        "tlsplice_connections_relayed_total",
        "counter",
        "Connections relayed to a backend, by data path.",
        &[
            (
                "{path=\"ktls\"}".into(),
                sum(&|c| load(&c.ktls)).to_string(),
            ),
            (
                "{path=\"userspace\"}".into(),
                sum(&|c| load(&c.userspace)).to_string(),
            ),
        ],
    );
    metric(
        "tlsplice_ktls_fallback_total",
        "counter",
        "Connections that stayed in userspace although kernel TLS was enabled.",
        &one(sum(&|c| load(&c.ktls_fallback))),
    );
    metric(
        "tlsplice_upstream_handshakes_total",
        "counter",
        "TLS handshakes with backends, full or resumed.",
        &[
            (
                "{kind=\"full\"}".into(),
                sum(&|c| load(&c.upstream_full)).to_string(),
            ),
            (
                "{kind=\"resumed\"}".into(),
                sum(&|c| load(&c.upstream_resumed)).to_string(),
            ),
        ],
    );
    metric(
        "tlsplice_ktls_offload_total",
        "counter",
        "Connections under ktls_offload thresholds: moved to the kernel late (by bytes or time) or ended in userspace below them.",
        &[
            (
                "{when=\"bytes\"}".into(),
                sum(&|c| load(&c.ktls_late_bytes)).to_string(),
            ),
            (
                "{when=\"time\"}".into(),
                sum(&|c| load(&c.ktls_late_time)).to_string(),
            ),
            (
                "{when=\"below_threshold\"}".into(),
                sum(&|c| load(&c.ktls_below_threshold)).to_string(),
            ),
        ],
    );
    metric(
        "tlsplice_bytes_total",
        "counter",
        "Plaintext bytes relayed, by direction.",
        &[
            (
                "{direction=\"up\"}".into(),
                sum(&|c| load(&c.bytes_up)).to_string(),
            ),
            (
                "{direction=\"down\"}".into(),
                sum(&|c| load(&c.bytes_down)).to_string(),
            ),
        ],
    );

    let mut buckets = [0u64; HANDSHAKE_BUCKETS_MS.len() + 1];
    let mut seconds = 0.0;
    for c in counters.clone() {
        for (b, n) in buckets.iter_mut().zip(c.handshake_buckets()) {
            *b += n;
        }
        seconds += c.handshake_seconds();
    }
    let mut cumulative = 0;
    let mut samples = Vec::new();
    for (i, n) in buckets.iter().enumerate() {
        cumulative += n;
        let le = HANDSHAKE_BUCKETS_MS
            .get(i)
            .map_or("+Inf".to_string(), |ms| format!("{}", *ms as f64 / 1000.0));
        samples.push((format!("_bucket{{le=\"{le}\"}}"), cumulative.to_string()));
    }
    samples.push(("_sum".into(), format!("{seconds}")));
    samples.push(("_count".into(), cumulative.to_string()));
    let _ = writeln!(
        out,
        "# HELP tlsplice_handshake_seconds Time from accept to a completed handshake."
    );
    let _ = writeln!(out, "# TYPE tlsplice_handshake_seconds histogram");
    for (suffix, value) in samples {
        let _ = writeln!(out, "tlsplice_handshake_seconds{suffix} {value}");
    }

    let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {v}");
    };
    metric(
        "tlsplice_verify_cache_hits_total",
        "counter",
        "Client chains found trusted in the cache.",
        cache.hits,
    );
    metric(
        "tlsplice_verify_cache_negative_hits_total",
        "counter",
        "Client chains found refused in the cache.",
        cache.negative_hits,
    );
    metric(
        "tlsplice_verify_cache_misses_total",
        "counter",
        "Client chains verified in full.",
        cache.misses,
    );
    metric(
        "tlsplice_verify_cache_evictions_total",
        "counter",
        "Cache entries pushed out to make room.",
        cache.evictions,
    );
    metric(
        "tlsplice_verify_cache_entries",
        "gauge",
        "Entries in the verification cache.",
        cache.entries,
    );
    metric(
        "tlsplice_draining",
        "gauge",
        "1 while shutting down.",
        u64::from(draining),
    );
    out
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one metric family: its HELP and TYPE lines and a sample per
/// `(labels, value)`, the labels written without their braces.
fn write_family<V: std::fmt::Display>(
    out: &mut String,
    (name, kind, help): (&str, &str, &str),
    samples: impl IntoIterator<Item = (String, V)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// The Prometheus text of routes and pools: connections by route, and each
/// backend's health, ejections and open connections.
pub fn render_upstream_metrics(pools: &[Arc<Pool>], routes: &RouteCounters) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        write_family(&mut out, (name, kind, help), samples);
    };
    let routes = routes.snapshot();
    let route_labels =
        |l: &str, r: &str| format!("listener=\"{}\",route=\"{}\"", label(l), label(r));
    family(
        "tlsplice_route_connections_total",
        "counter",
        "Connections served, by listener and route.",
        routes
            .iter()
            .map(|(l, r, total, _)| (route_labels(l, r), *total))
            .collect(),
    );
    family(
        "tlsplice_route_connections_open",
        "gauge",
        "Connections open now, by listener and route.",
        routes
            .iter()
            .map(|(l, r, _, open)| (route_labels(l, r), *open))
            .collect(),
    );
    let backends = || {
        pools.iter().flat_map(|p| {
            p.members().iter().map(move |m| {
                let labels = format!(
                    "pool=\"{}\",backend=\"{}\"",
                    label(&p.name),
                    label(&m.state.backend.name)
                );
                (p, m, labels)
            })
        })
    };
    family(
        "tlsplice_backend_healthy",
        "gauge",
        "1 while the backend takes new connections (healthy and not ejected).",
        backends()
            .map(|(p, m, l)| (l, u64::from(p.in_service(m))))
            .collect(),
    );
    family(
        "tlsplice_backend_ejections_total",
        "counter",
        "Times the backend was ejected after consecutive connect failures.",
        backends()
            .map(|(_, m, l)| (l, m.state.ejections()))
            .collect(),
    );
    family(
        "tlsplice_backend_connections_open",
        "gauge",
        "Connections open to the backend now, across workers.",
        backends().map(|(_, m, l)| (l, m.state.open())).collect(),
    );
    out
}

/// The Prometheus text of the throttle: admissions and refusals per tier,
/// pacing, clients remembered.
pub fn render_throttle_metrics(throttle: &Throttle) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        write_family(&mut out, (name, kind, help), samples);
    };
    let by_tier = throttle.stats().by_tier();
    // Tier names are validated to [A-Za-z0-9_.-]: safe as label values.
    family(
        "tlsplice_throttle_admitted_total",
        "counter",
        "Connections admitted by a throttling tier.",
        by_tier
            .iter()
            .map(|(tier, c)| (format!("tier=\"{tier}\""), c.admitted.to_string()))
            .collect(),
    );
    family(
        "tlsplice_throttle_refused_total",
        "counter",
        "Connections refused by a throttling tier, by limit.",
        by_tier
            .iter()
            .flat_map(|(tier, c)| {
                [
                    (RefusalReason::Rate, c.refused_rate),
                    (RefusalReason::Concurrency, c.refused_concurrency),
                ]
                .map(|(reason, n)| {
                    (
                        format!("tier=\"{tier}\",reason=\"{}\"", reason.code()),
                        n.to_string(),
                    )
                })
            })
            .collect(),
    );
    let stats = throttle.stats();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let one = |v: String| vec![(String::new(), v)];
    family(
        "tlsplice_throttle_pacing_waits_total",
        "counter",
        "Times a relay waited for a client's bytes_per_second budget.",
        one(load(&stats.pacing_waits).to_string()),
    );
    family(
        "tlsplice_throttle_pacing_wait_seconds_total",
        "counter",
        "Time relays waited for clients' bytes_per_second budget.",
        one(format!("{}", load(&stats.pacing_wait_us) as f64 / 1e6)),
    );
    family(
        "tlsplice_throttle_paced_bytes_total",
        "counter",
        "Bytes held back before forwarding to keep a client within its tier.",
        one(load(&stats.paced_bytes).to_string()),
    );
    let (clients, evictions) = throttle.entries();
    family(
        "tlsplice_throttle_clients",
        "gauge",
        "Clients the throttle keeps state for.",
        one(clients.to_string()),
    );
    family(
        "tlsplice_throttle_evictions_total",
        "counter",
        "Idle clients forgotten to make room.",
        one(evictions.to_string()),
    );
    out
}

/// Binds the admin listener and serves it on a thread of its own.
pub fn spawn(addr: SocketAddr, state: Arc<AdminState>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    thread::Builder::new()
        .name("tlsplice-admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &state) {
                    tracing::debug!("admin request: {e}");
                }
            }
        })?;
    Ok(local)
}

/// Reads one request head (bounded in size and time) and answers it.
fn answer(stream: TcpStream, state: &AdminState) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?.take(16 * 1024));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers; nothing here needs them or a body.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let a = route(method, path, state);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        a.status,
        a.content_type,
        a.body.len(),
        a.body
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admit::Tiers;
    use crate::close::{AccessRecord, CloseReason};
    use crate::tls::verify::CacheConfig;

    /// Fails unless every one of `lines` is a whole line of `text`.
    fn assert_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(
                text.lines().any(|l| l == *line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    fn state() -> (AdminState, mpsc::Receiver<ReloadRequest>) {
        let (tx, rx) = mpsc::channel();
        let state = AdminState {
            counters: vec![Arc::default(), Arc::default()],
            cache: Arc::new(VerifyCache::new(CacheConfig::default())),
            throttle: Throttle::new(Tiers::default(), 16),
            pools: Arc::default(),
            routes: Arc::default(),
            draining: AtomicBool::new(false),
            reloads: ReloadCounts::default(),
            reload: Box::new(move |r| tx.send(r).is_ok()),
        };
        (state, rx)
    }

    #[test]
    fn metrics_sum_workers_and_form_a_histogram() {
        let (state, _rx) = state();
        let mut rec = AccessRecord::new("127.0.0.1:1".parse().unwrap(), "l");
        rec.backend = Some("b".into());
        rec.bytes_up = 10;
        rec.handshake = Some(Duration::from_millis(3));
        state.counters[0].record(&rec, &CloseReason::Done);
        rec.handshake = Some(Duration::from_millis(30));
        state.counters[1].record(&rec, &CloseReason::IdleTimeout);
        let text = route("GET", "/metrics", &state).body;
        assert_lines(
            &text,
            &[
                "tlsplice_connections_closed_total{reason=\"done\"} 1",
                "tlsplice_connections_closed_total{reason=\"idle_timeout\"} 1",
                "tlsplice_connections_relayed_total{path=\"userspace\"} 2",
                "tlsplice_bytes_total{direction=\"up\"} 20",
                "tlsplice_handshake_seconds_bucket{le=\"0.002\"} 0",
                "tlsplice_handshake_seconds_bucket{le=\"0.005\"} 1",
                "tlsplice_handshake_seconds_bucket{le=\"0.05\"} 2",
                "tlsplice_handshake_seconds_bucket{le=\"+Inf\"} 2",
                "tlsplice_handshake_seconds_count 2",
                "tlsplice_draining 0",
            ],
        );
    }

    #[test]
    fn throttle_metrics_by_tier_and_reason() {
        use crate::admit::{Client, ConnectionRate, Limits, Tier, Verdict};
        let (mut state, _rx) = state();
        let limits = Limits {
            new_connections: Some(ConnectionRate {
                per_second: 1,
                burst: 1,
            }),
            ..Limits::default()
        };
        let tier = Tier {
            name: "free".into(),
            limits,
            clients: Default::default(),
        };
        state.throttle = Throttle::new(Tiers::new(vec![tier], Some(0)), 16);
        let client = Client {
            end_entity: None,
            identity: None,
            address: Some("127.0.0.1".parse().unwrap()),
        };
        let now = std::time::Instant::now();
        let admitted = state.throttle.admit(&client, now);
        assert!(matches!(admitted, Verdict::Admitted(_)));
        assert!(matches!(
            state.throttle.admit(&client, now),
            Verdict::Refused(_)
        ));
        let text = route("GET", "/metrics", &state).body;
        assert_lines(
            &text,
            &[
                "tlsplice_throttle_admitted_total{tier=\"free\"} 1",
                "tlsplice_throttle_refused_total{tier=\"free\",reason=\"rate\"} 1",
                "tlsplice_throttle_refused_total{tier=\"free\",reason=\"max_connections\"} 0",
                "tlsplice_throttle_clients{} 1",
                "tlsplice_throttle_pacing_waits_total{} 0",
            ],
        );
    }

    #[test]
    fn ready_turns_503_while_draining_and_unknowns_are_404() {
        let (state, _rx) = state();
        assert_eq!(route("GET", "/ready", &state).status, "200 OK");
        state.draining.store(true, Ordering::Relaxed);
        assert_eq!(
            route("GET", "/ready", &state).status,
            "503 Service Unavailable"
        );
        assert_eq!(route("GET", "/healthz", &state).status, "200 OK");
        assert_eq!(route("GET", "/nope", &state).status, "404 Not Found");
        assert_eq!(
            route("GET", "/reload", &state).status,
            "405 Method Not Allowed"
        );
    }

    #[test]
    fn reload_reports_the_main_threads_verdict() {
        let (state, rx) = state();
        let main = thread::spawn(move || {
            let reply = rx.recv().unwrap();
            reply.send(Err("listener[0].cert: bad".into())).unwrap();
        });
        let a = route("POST", "/reload", &state);
        main.join().unwrap();
        assert_eq!(a.status, "422 Unprocessable Entity");
        assert!(a.body.contains("listener[0].cert: bad"), "{}", a.body);
    }
}
