//! `tlsplice-load`: a mutual-TLS load generator on a thread-per-core
//! runtime. See `loadtest/README.md` for usage.
//!
//! This file is the binary's edge: parse flags, load certificates, start
//! the workers, show progress, merge and report. The measuring logic lives
//! in the modules beside it.

mod cli;
mod conn;
mod hgrm;
mod http;
mod progress;
mod schedule;
mod stats;
mod summary;
mod svg;
mod tls;
mod worker;

use std::io::IsTerminal as _;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use rustls::pki_types::ServerName;

use crate::cli::{Cli, Mode, Settings};
use crate::progress::{Counters, Reading};
use crate::schedule::{split_connections, split_ops, Gate};
use crate::stats::{CpuTime, Stats};
use crate::summary::{RunInfo, Summary};
use crate::tls::{ClientSetup, Versions};
use crate::worker::{Work, WorkerPlan};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often the progress line is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often the main thread checks whether the workers are done.
const POLL: Duration = Duration::from_millis(50);
/// Slack beyond duration + timeout before the run is declared stuck.
const STUCK_SLACK: Duration = Duration::from_secs(10);
/// Kept-alive connections get this long to close after the last operation.
const FINAL_SLACK_FOR_CLOSE: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(summary) if summary.ops > 0 => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("tlsplice-load: no operation succeeded");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tlsplice-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<Summary> {
    let settings = cli.settings().map_err(anyhow::Error::msg)?;
    let addr = resolve(&cli.target)?;
    let name = cli
        .server_name
        .clone()
        .unwrap_or_else(|| cli.target_host().to_owned());
    let server_name = ServerName::try_from(name.clone())
        .with_context(|| format!("--server-name {name:?} is not a DNS name or IP address"))?;

    raise_fd_limit(settings.connections);
    let threads = cli.threads;
    let max_per_thread = split_connections(settings.connections, threads, 0);
    let setup = Arc::new(client_setup(cli, &settings, max_per_thread)?);
    // Fail on a bad combination (e.g. --cipher with --tls12-only) before any thread starts.
    tls::client_config(&setup)?;

    let work = match cli.mode {
        Mode::Handshake => Work::Handshake {
            echo: settings.echo,
        },
        Mode::Rr if cli.http => Work::Http {
            request: http::get_request(&name, &cli.path).into(),
        },
        Mode::Rr => Work::Echo {
            size: settings.size,
        },
        Mode::Bulk => Work::Bulk {
            size: settings.size,
            direction: settings.direction,
        },
    };
    let cpus = cli.cpus.as_ref().map(|c| c.0.clone()).unwrap_or_default();
    let info = run_info(cli, &settings, &name, &cpus, &setup);

    let barrier = Arc::new(Barrier::new(threads + 1));
    let counters: Vec<Arc<Counters>> = (0..threads).map(|_| Arc::default()).collect();
    let mut handles = Vec::with_capacity(threads);
    for id in 0..threads {
        let gate = {
            let ops = settings.ops.map(|n| split_ops(n, threads, id));
            match cli.rate {
                Some(rate) => Gate::open(ops, settings.duration, rate, threads, id),
                None => Gate::closed(ops, settings.duration),
            }
        };
        let plan = WorkerPlan {
            id,
            cpu: (!cpus.is_empty()).then(|| cpus[id % cpus.len()]),
            addr,
            server_name: server_name.clone(),
            setup: setup.clone(),
            work: work.clone(),
            connections: split_connections(settings.connections, threads, id),
            gate,
            timeout: cli.timeout,
            counters: counters[id].clone(),
            barrier: barrier.clone(),
        };
        let handle = thread::Builder::new()
            .name(format!("load-w{id}"))
            .spawn(move || worker::run(plan))
            .context("cannot start a worker thread")?;
        handles.push(handle);
    }

    barrier.wait();
    let started = Instant::now();
    let cpu_before = CpuTime::process();
    let show_progress = cli.progress || std::io::stderr().is_terminal();
    let deadline = settings
        .duration
        // Initial connects and the last operation may each take a timeout.
        .map(|d| d + 2 * cli.timeout + FINAL_SLACK_FOR_CLOSE + STUCK_SLACK);
    wait_for_workers(&handles, &counters, started, show_progress, deadline);
    let cpu_after = CpuTime::process();

    let mut merged = Stats::default();
    let mut per_thread = Vec::with_capacity(threads);
    for h in handles {
        let stats = h
            .join()
            .map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
        per_thread.push(stats.cpu.total());
        merged.merge(&stats);
    }
    let summary = Summary::new(info, &merged, cpu_after.since(&cpu_before), &per_thread);
    print!("{}", summary.table());
    write_outputs(cli, &summary, &merged)?;
    Ok(summary)
}

/// Waits for every worker, drawing the progress line; gives up (exiting the
/// process) if they overrun `deadline` by far, so a run always ends.
fn wait_for_workers(
    handles: &[thread::JoinHandle<anyhow::Result<Stats>>],
    counters: &[Arc<Counters>],
    started: Instant,
    show_progress: bool,
    deadline: Option<Duration>,
) {
    let mut previous = Reading::default();
    let mut previous_at = started;
    let mut drew = false;
    while !handles.iter().all(|h| h.is_finished()) {
        thread::sleep(POLL);
        let now = Instant::now();
        if show_progress && now - previous_at >= PROGRESS_EVERY {
            let current = Reading::sum(counters.iter().map(|c| c.read()));
            let line = progress::line(now - started, current, previous, now - previous_at);
            eprint!("\r{line}\x1b[K");
            drew = true;
            previous = current;
            previous_at = now;
        }
        if deadline.is_some_and(|d| now - started > d) {
            eprintln!("\ntlsplice-load: workers did not stop in time; exiting without a summary");
            std::process::exit(2);
        }
    }
    if drew {
        eprintln!();
    }
}

/// Raises the soft open-file limit to the hard limit when the run may need
/// more descriptors than the usual 1024, so many connections fail with
/// "connect" errors only where the system really is out of them.
fn raise_fd_limit(connections: usize) {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let wanted = (connections as libc::rlim_t).saturating_mul(2) + 64;
        if limit.rlim_cur < wanted && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max.min(wanted.max(limit.rlim_cur));
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    target
        .to_socket_addrs()
        .with_context(|| format!("--target {target:?}: expected HOST:PORT"))?
        .next()
        .with_context(|| format!("--target {target:?} resolves to no address"))
}

fn client_setup(cli: &Cli, settings: &Settings, per_thread: usize) -> anyhow::Result<ClientSetup> {
    use tlsplice::tls::certs;
    let roots = certs::load_certs(&cli.ca).context("--ca")?;
    let identity = match (&cli.cert, &cli.key) {
        (Some(cert), Some(key)) => Some((
            certs::load_certs(cert).context("--cert")?,
            certs::load_private_key(key).context("--key")?,
        )),
        _ => None,
    };
    Ok(ClientSetup {
        roots,
        identity,
        versions: settings.versions,
        cipher: cli.cipher,
        kx_groups: cli.kx.clone(),
        // Room for every connection's tickets several times over.
        resume: cli.resume.then(|| (per_thread * 4).max(64)),
    })
}

fn run_info(
    cli: &Cli,
    settings: &Settings,
    name: &str,
    cpus: &[usize],
    setup: &ClientSetup,
) -> RunInfo {
    RunInfo {
        mode: cli.mode.name(),
        target: cli.target.clone(),
        server_name: name.to_owned(),
        threads: cli.threads,
        cpus: cpus.iter().take(cli.threads).copied().collect(),
        connections: settings.connections,
        load: if cli.rate.is_some() { "open" } else { "closed" },
        rate: cli.rate,
        duration_limit_s: settings.duration.map(|d| d.as_secs_f64()),
        ops_limit: settings.ops,
        size: (cli.mode != Mode::Handshake && !cli.http).then_some(settings.size),
        echo: (cli.mode == Mode::Handshake).then_some(settings.echo),
        direction: (cli.mode == Mode::Bulk).then(|| settings.direction.name()),
        http_path: cli.http.then(|| cli.path.clone()),
        resume: cli.resume,
        client_certificate: setup.identity.is_some(),
        versions: match settings.versions {
            Versions::Both => "TLS 1.3, TLS 1.2",
            Versions::Tls13 => "TLS 1.3",
            Versions::Tls12 => "TLS 1.2",
        },
        cipher: cli.cipher.map(|c| match c {
            tls::Cipher::Aes128 => "aes128",
            tls::Cipher::Aes256 => "aes256",
            tls::Cipher::Chacha20 => "chacha20",
        }),
    }
}

fn write_outputs(cli: &Cli, summary: &Summary, stats: &Stats) -> anyhow::Result<()> {
    if let Some(path) = &cli.json {
        let mut json = serde_json::to_string_pretty(summary)?;
        json.push('\n');
        write(path, &json)?;
    }
    if let Some(path) = &cli.hdr {
        write(path, &hgrm::percentile_distribution(&stats.latency))?;
    }
    if let Some(path) = &cli.svg {
        let r = &summary.run;
        let title = format!(
            "tlsplice-load {} {} - {} ops at {:.0} ops/s, {} connection(s){}",
            r.mode,
            r.target,
            summary.ops,
            summary.ops_per_s,
            r.connections,
            r.rate
                .map_or(String::new(), |rate| format!(", open loop {rate}/s"))
        );
        let points = svg::points(&stats.latency);
        write(
            path,
            &svg::latency_plot(&points, stats.latency.len(), &title),
        )?;
    }
    Ok(())
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}
