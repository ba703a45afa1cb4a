//! Backend pools: distribution of each balancing policy over 1,000
//! connections, active health checks ejecting a killed backend and
//! readmitting it, and no client-visible failure while a backend dies under
//! load (the connect moves on to the next backend).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rustls::ClientConfig;

/// A server whose one listener sends everything to pool `p` (given as the
/// `[[pool]]` table body), with the admin listener on.
fn serve_pool(pki: &Pki, pool: &str, listener_extra: &str) -> (Server, SocketAddr) {
    let text = format!(
        r#"workers = 2
admin = "127.0.0.1:0"

[[pool]]
name = "p"
{pool}

[[listener]]
listen = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
pool = "p"
{listener_extra}
"#,
        cert = pki.server.cert_path.display(),
        key = pki.server.key_path.display(),
        ca = pki.ca_path.display(),
    );
    let file = write_file(pki.path(), "pools.toml", text);
    let server = Server::spawn_args(
        &["serve".into(), "-c".into(), file.display().to_string()],
        1,
    );
    let admin = admin_addr(&server);
    (server, admin)
}

/// `n` backends greeting with their ids `b0`, `b1`, ...
fn backends_with_ids(n: usize) -> Vec<Backend> {
    (0..n).map(|i| Backend::with_id(&format!("b{i}"))).collect()
}

fn backends_list(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which backend `n` sequential connections reached, counted by id.
fn distribution(server: &Server, cfg: &Arc<ClientConfig>, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..n {
        let (id, _, _) = greeting(server.addr(), cfg.clone(), "localhost")
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// The value of pool `p`'s backend `addr` sample in /metrics (parsed
/// with prometheus_client).
fn backend_metric(admin: SocketAddr, name: &str, addr: SocketAddr) -> f64 {
    let (status, text) = http(admin, "GET", "/metrics");
    assert_eq!(status, 200);
    let lines = parse_with_prometheus_client(&text);
    sample(&lines, &format!("{name}{{backend=\"{addr}\",pool=\"p\"}}"))
        .unwrap_or_else(|| panic!("no {name} for {addr} in\n{}", lines.join("\n")))
}

/// Waits (bounded) until a backend's metric has the value `want`.
fn wait_metric(admin: SocketAddr, name: &str, addr: SocketAddr, want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = backend_metric(admin, name, addr);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} of {addr} stayed {got}, not {want}, for {WAIT:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn round_robin_follows_weights_over_1000_connections() {
    let pki = Pki::new();
    let b = backends_with_ids(3);
    let pool = format!(
        "backends = [\"{}\", {{ address = \"{}\", weight = 2 }}, {{ address = \"{}\", weight = 5 }}]",
        b[0].addr, b[1].addr, b[2].addr
    );
    let (server, _) = serve_pool(&pki, &pool, "");
    let counts = distribution(&server, &ClientOpts::new(&pki).build(), 1000);
    // Weights 1:2:5 of 1,000 are 125, 250, 625; smooth weighted
    // round-robin over one shared counter hits them within a cycle.
    for (id, want) in [("b0", 125), ("b1", 250), ("b2", 625)] {
        let got = counts.get(id).copied().unwrap_or(0);
        assert!(
            got.abs_diff(want) <= 10,
            "{id}: {got} of 1000, want {want}: {counts:?}"
        );
    }
}

#[test]
fn least_connections_prefers_the_backend_with_fewer_open() {
    let pki = Pki::new();
    let b = backends_with_ids(2);
    let (b0, b1) = (&b[0], &b[1]);
    let pool = format!(
        "balance = \"least-connections\"\nbackends = [{}]",
        backends_list(&[b0, b1])
    );
    let (server, admin) = serve_pool(&pki, &pool, "");
    let cfg = ClientOpts::new(&pki).build();

    // Short connections: nothing stays open, so the load splits evenly.
    let counts = distribution(&server, &cfg, 1000);
    for id in ["b0", "b1"] {
        let got = counts.get(id).copied().unwrap_or(0);
        assert!(
            (400..=600).contains(&got),
            "{id}: {got} of 1000: {counts:?}"
        );
    }

    // Long-held connections: ten open split five and five...
    let mut held: Vec<(String, Tls)> = (0..10)
        .map(|_| {
            let (id, _, tls) = greeting(server.addr(), cfg.clone(), "localhost").unwrap();
            (id, tls)
        })
        .collect();
    let on_b0 = held.iter().filter(|(id, _)| id == "b0").count();
    assert_eq!(on_b0, 5, "ten open connections split evenly");
    wait_metric(admin, "tlsplice_backend_connections_open", b0.addr, 5.0);
    // ...then b0's five close: the next five all go to b0.
    held.retain(|(id, _)| id != "b0");
    wait_metric(admin, "tlsplice_backend_connections_open", b0.addr, 0.0);
    for i in 0..5 {
        let (id, _, tls) = greeting(server.addr(), cfg.clone(), "localhost").unwrap();
        assert_eq!(
            id, "b0",
            "new connection {i} with b0 at {i} open and b1 at 5"
        );
        held.push((id, tls));
    }
    assert_eq!(
        backend_metric(admin, "tlsplice_backend_connections_open", b1.addr),
        5.0
    );
}

#[test]
fn hash_keeps_each_identity_on_one_backend() {
    let pki = Pki::new();
    let backends = backends_with_ids(3);
    let pool = format!(
        "balance = \"hash\"\nbackends = [{}]\nhealth_check = {{ interval = \"100ms\", timeout = \"200ms\", rise = 1, fall = 1 }}",
        backends_list(&backends.iter().collect::<Vec<_>>())
    );
    // 16 identities, named by allowlist aliases (the hash key).
    let clients: Vec<Identity> = (0..16)
        .map(|i| pki.client_for(&format!("c{i}"), &format!("client {i}")))
        .collect();
    let allow: Vec<String> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| format!("\"alias:c{i}={}\"", c.cert_path.display()))
        .collect();
    let (server, admin) = serve_pool(&pki, &pool, &format!("allow = [{}]", allow.join(", ")));
    let configs: Vec<Arc<ClientConfig>> = clients
        .iter()
        .map(|c| ClientOpts::new(&pki).identity(Some(c)).build())
        .collect();

    // 1,000 connections in all; every identity always reaches one backend.
    let mut home: Vec<String> = Vec::new();
    for (i, cfg) in configs.iter().enumerate() {
        let n = if i < 8 { 63 } else { 62 };
        let counts = distribution(&server, cfg, n);
        assert_eq!(
            counts.len(),
            1,
            "identity c{i} moved between backends: {counts:?}"
        );
        home.push(counts.into_keys().next().unwrap());
    }
    let mut used = home.clone();
    used.sort();
    used.dedup();
    assert!(used.len() >= 2, "16 identities all hashed to {used:?}");

    // Take away a backend that has identities: only those identities move.
    let gone = used[0].clone();
    let index: usize = gone[1..].parse().unwrap();
    let mut backends = backends;
    let removed = backends.remove(index);
    let removed_addr = removed.addr;
    drop(removed);
    wait_metric(admin, "tlsplice_backend_healthy", removed_addr, 0.0);
    for (i, cfg) in configs.iter().enumerate() {
        let counts = distribution(&server, cfg, 3);
        assert_eq!(counts.len(), 1, "c{i}: {counts:?}");
        let now = counts.keys().next().unwrap();
        if home[i] == gone {
            assert_ne!(*now, gone, "c{i} still reached the removed backend");
        } else {
            assert_eq!(*now, home[i], "c{i} moved although its backend stayed");
        }
    }
}

#[test]
fn health_checks_eject_a_killed_backend_and_readmit_it() {
    let pki = Pki::new();
    let mut b = backends_with_ids(3);
    let pool = format!(
        "backends = [{}]\nhealth_check = {{ interval = \"100ms\", timeout = \"200ms\", rise = 2, fall = 2 }}\neject_after = 0",
        backends_list(&b.iter().collect::<Vec<_>>())
    );
    let (server, admin) = serve_pool(&pki, &pool, "");
    let cfg = ClientOpts::new(&pki).build();
    let b1_addr = b[1].addr;
    wait_metric(admin, "tlsplice_backend_healthy", b1_addr, 1.0);

    drop(b.remove(1));
    let down = Instant::now();
    // fall = 2 at a 100ms interval: two failed checks.
    wait_metric(admin, "tlsplice_backend_healthy", b1_addr, 0.0);
    let ejected_after = down.elapsed();
    assert!(ejected_after < WAIT, "{ejected_after:?}");
    let counts = distribution(&server, &cfg, 30);
    assert_eq!(counts.get("b1"), None, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 30);
    assert!(server
        .log
        .wait_line(WAIT, &["failed 2 health checks", &b1_addr.to_string()])
        .is_some());

    // It comes back on the same address: readmitted after two good checks.
    let _b1 = Backend::start_at(b1_addr, Mode::GreetThenHalfClose(b"b1".to_vec()));
    wait_metric(admin, "tlsplice_backend_healthy", b1_addr, 1.0);
    let counts = distribution(&server, &cfg, 30);
    assert_eq!(counts.get("b1"), Some(&10), "{counts:?}");
    assert!(server
        .log
        .wait_line(WAIT, &["healthy again", &b1_addr.to_string()])
        .is_some());
}

#[test]
fn no_client_sees_a_failure_while_a_backend_dies_under_load() {
    let pki = Pki::new();
    let backends = backends_with_ids(3);
    let pool = format!(
        "backends = [{}]\neject_after = 1\neject_for = \"1m\"",
        backends_list(&backends.iter().collect::<Vec<_>>())
    );
    let (server, admin) = serve_pool(&pki, &pool, "");
    let dying = backends[2].addr;
    let mut backends = backends;
    let done = Arc::new(AtomicUsize::new(0));
    const PER_CLIENT: usize = 150;

    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (cfg, addr, done) = (ClientOpts::new(&pki).build(), server.addr(), done.clone());
            thread::spawn(move || {
                let mut failures = Vec::new();
                let mut ids = Vec::new();
                for i in 0..PER_CLIENT {
                    match greeting(addr, cfg.clone(), "localhost") {
                        Ok((id, _, _)) => ids.push(id),
                        Err(e) => failures.push(format!("connection {i}: {e}")),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                (ids, failures)
            })
        })
        .collect();
    // Kill b2 a third of the way in, with clients still connecting.
    let deadline = Instant::now() + WAIT;
    while done.load(Ordering::SeqCst) < PER_CLIENT && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    drop(backends.remove(2));
    let at_kill = done.load(Ordering::SeqCst);

    let mut all_ids = Vec::new();
    for c in clients {
        let (ids, failures) = c.join().expect("client thread");
        assert!(failures.is_empty(), "client-visible failures: {failures:?}");
        all_ids.extend(ids);
    }
    assert_eq!(all_ids.len(), 3 * PER_CLIENT);
    assert!(
        at_kill < 3 * PER_CLIENT,
        "the backend died while clients were still connecting"
    );
    let b2 = all_ids.iter().filter(|id| *id == "b2").count();
    assert!(
        b2 > 0 && b2 <= at_kill,
        "b2 served {b2}, {at_kill} connections were done at the kill"
    );
    // The first refused connect ejected it.
    let key = format!("tlsplice_backend_ejections_total{{backend=\"{dying}\",pool=\"p\"}}");
    let (_, text) = http(admin, "GET", "/metrics");
    let lines = parse_with_prometheus_client(&text);
    assert_eq!(sample(&lines, &key), Some(1.0), "{}", lines.join("\n"));
    assert!(server
        .log
        .wait_line(WAIT, &["backend ejected", &dying.to_string()])
        .is_some());
}

#[test]
fn a_pool_with_no_backend_in_service_refuses_fast_with_a_reason() {
    let pki = Pki::new();
    let dead = unused_port();
    let pool = format!("backends = [\"{dead}\"]\neject_after = 1\neject_for = \"1m\"");
    let (server, _) = serve_pool(&pki, &pool, "");
    let cfg = ClientOpts::new(&pki).build();
    for _ in 0..2 {
        // The client gets no data and no clean close_notify.
        let result = greeting(server.addr(), cfg.clone(), "localhost");
        assert!(
            result.is_err(),
            "a dead pool answered: {:?}",
            result.map(|r| r.0)
        );
    }
    // The first connect failed (and ejected the backend); the second
    // connection found nothing in service and did not try.
    let first = server
        .log
        .wait_line(
            WAIT,
            &["reason=backend_unavailable: no backend reachable in pool p"],
        )
        .expect("first refusal logged");
    assert!(first.contains(&dead.to_string()), "{first}");
    assert!(server
        .log
        .wait_line(
            WAIT,
            &["reason=backend_unavailable: no healthy backend in pool p"]
        )
        .is_some());
}
