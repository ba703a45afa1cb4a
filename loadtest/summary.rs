//! The run's summary: computed from merged [`Stats`], printed as a table
//! and serialised as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{Closes, CpuTime, ErrorKind, Negotiated, Stats};

/// Bytes per MB in every MB/s figure (decimal, like network rates).
pub const BYTES_PER_MB: f64 = 1e6;

/// How the run was set up, repeated in the summary so a JSON file stands
/// on its own.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// `handshake`, `rr` or `bulk`.
    pub mode: &'static str,
    /// The address connected to.
    pub target: String,
    /// SNI and the name the server certificate is checked against.
    pub server_name: String,
    /// Worker threads.
    pub threads: usize,
    /// CPUs the workers were pinned to (empty: not pinned).
    pub cpus: Vec<usize>,
    /// Concurrent connections, all threads together.
    pub connections: usize,
    /// `closed` or `open` loop.
    pub load: &'static str,
    /// Open loop: target operations per second.
    pub rate: Option<f64>,
    /// `--duration`, seconds.
    pub duration_limit_s: Option<f64>,
    /// `--ops`.
    pub ops_limit: Option<u64>,
    /// rr: request bytes; bulk: bytes per write.
    pub size: Option<usize>,
    /// handshake: echo bytes after the handshake (0: none).
    pub echo: Option<usize>,
    /// bulk: `up`, `down` or `both`.
    pub direction: Option<&'static str>,
    /// rr --http: the path requested.
    pub http_path: Option<String>,
    /// Session resumption enabled.
    pub resume: bool,
    /// A client certificate was presented.
    pub client_certificate: bool,
    /// Protocol versions offered.
    pub versions: &'static str,
    /// Cipher family restriction.
    pub cipher: Option<&'static str>,
}

/// Handshake kinds.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeSummary {
    /// Full handshakes.
    pub full: u64,
    /// Full handshakes after a HelloRetryRequest.
    pub full_hrr: u64,
    /// Resumed handshakes.
    pub resumed: u64,
    /// Share resumed, 0..=1.
    pub resumed_share: f64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub stdev: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99.99th percentile.
    pub p9999: f64,
    /// Largest.
    pub max: f64,
}

/// The client's own CPU use, to judge whether it was the bottleneck.
#[derive(Debug, Clone, Serialize)]
pub struct CpuSummary {
    /// User seconds, whole process.
    pub user_s: f64,
    /// System seconds, whole process.
    pub system_s: f64,
    /// User plus system.
    pub total_s: f64,
    /// Each worker thread's CPU seconds.
    pub per_thread_s: Vec<f64>,
    /// CPU seconds over (elapsed seconds x threads): 1.0 means every worker
    /// core was saturated.
    pub utilization: f64,
    /// Client CPU microseconds per successful operation.
    pub us_per_op: f64,
}

/// Everything the run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `tlsplice-load`.
    pub tool: &'static str,
    /// This binary's version.
    pub version: &'static str,
    /// The setup.
    pub run: RunInfo,
    /// Wall seconds from start to the last operation's end.
    pub elapsed_s: f64,
    /// What the first successful handshake negotiated.
    pub tls: Option<Negotiated>,
    /// Successful operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Failed operations by kind (kinds with none are left out).
    pub errors_by_kind: BTreeMap<&'static str, u64>,
    /// The first message of each kind.
    pub first_errors: BTreeMap<&'static str, String>,
    /// Open loop: due operations never started (every connection busy).
    pub unsent: u64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Plaintext bytes sent.
    pub bytes_up: u64,
    /// Plaintext bytes received.
    pub bytes_down: u64,
    /// MB/s sent.
    pub mb_per_s_up: f64,
    /// MB/s received.
    pub mb_per_s_down: f64,
    /// Both directions.
    pub mb_per_s: f64,
    /// Handshake kinds over every connection opened.
    pub handshakes: HandshakeSummary,
    /// Handshake mode: how the server ended each successful operation's
    /// connection (absent in other modes).
    pub closes: Option<Closes>,
    /// Operation latency (absent in bulk mode and when nothing succeeded).
    pub latency_us: Option<LatencySummary>,
    /// Client CPU.
    pub client_cpu: CpuSummary,
}

impl Summary {
    /// Computes the summary. `process_cpu` is the whole process's CPU time
    /// during the run; `thread_cpu` each worker's.
    pub fn new(run: RunInfo, stats: &Stats, process_cpu: CpuTime, thread_cpu: &[f64]) -> Self {
        let elapsed = stats.elapsed.as_secs_f64();
        let per_s = |n: f64| if elapsed > 0.0 { n / elapsed } else { 0.0 };
        let mut errors_by_kind = BTreeMap::new();
        let mut first_errors = BTreeMap::new();
        for kind in ErrorKind::ALL {
            let n = stats.errors.count(kind);
            if n > 0 {
                errors_by_kind.insert(kind.name(), n);
            }
            if let Some(first) = stats.errors.first(kind) {
                first_errors.insert(kind.name(), first.to_owned());
            }
        }
        let h = &stats.latency;
        let latency_us = (run.mode != "bulk" && !h.is_empty()).then(|| {
            let us = |ns: u64| ns as f64 / 1e3;
            LatencySummary {
                count: h.len(),
                min: us(h.min()),
                mean: h.mean() / 1e3,
                stdev: h.stdev() / 1e3,
                p50: us(h.value_at_quantile(0.5)),
                p90: us(h.value_at_quantile(0.9)),
                p99: us(h.value_at_quantile(0.99)),
                p999: us(h.value_at_quantile(0.999)),
                p9999: us(h.value_at_quantile(0.9999)),
                max: us(h.max()),
            }
        });
        let threads = run.threads.max(1) as f64;
        let cpu_total = process_cpu.total();
        Self {
            tool: "tlsplice-load",
            version: env!("CARGO_PKG_VERSION"),
            elapsed_s: elapsed,
            tls: stats.negotiated.clone(),
            ops: stats.ok,
            errors: stats.errors.total(),
            errors_by_kind,
            first_errors,
            unsent: stats.unsent,
            ops_per_s: per_s(stats.ok as f64),
            bytes_up: stats.bytes_up,
            bytes_down: stats.bytes_down,
            mb_per_s_up: per_s(stats.bytes_up as f64) / BYTES_PER_MB,
            mb_per_s_down: per_s(stats.bytes_down as f64) / BYTES_PER_MB,
            mb_per_s: per_s((stats.bytes_up + stats.bytes_down) as f64) / BYTES_PER_MB,
            handshakes: HandshakeSummary {
                full: stats.handshakes.full,
                full_hrr: stats.handshakes.full_hrr,
                resumed: stats.handshakes.resumed,
                resumed_share: stats.handshakes.resumed_share(),
            },
            closes: (run.mode == "handshake").then_some(stats.closes),
            latency_us,
            client_cpu: CpuSummary {
                user_s: process_cpu.user,
                system_s: process_cpu.system,
                total_s: cpu_total,
                per_thread_s: thread_cpu.to_vec(),
                utilization: if elapsed > 0.0 {
                    cpu_total / (elapsed * threads)
                } else {
                    0.0
                },
                us_per_op: if stats.ok > 0 {
                    cpu_total * 1e6 / stats.ok as f64
                } else {
                    0.0
                },
            },
            run,
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let r = &self.run;
        let mut t = String::new();
        // `write!` into a String cannot fail.
        let _ = writeln!(
            t,
            "tlsplice-load {} -> {} (server name {})",
            r.mode, r.target, r.server_name
        );
        let load = match r.rate {
            Some(rate) => format!("open loop at {rate} ops/s"),
            None => "closed loop".to_owned(),
        };
        let pinned = if r.cpus.is_empty() {
            String::new()
        } else {
            format!(
                " on cpus {}",
                r.cpus
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let _ = writeln!(
            t,
            "  load         {load}, {} thread(s){pinned}, {} connection(s), {:.2} s",
            r.threads, r.connections, self.elapsed_s
        );
        let mut what = Vec::new();
        if let Some(size) = r.size {
            what.push(format!("size {size} B"));
        }
        if let Some(echo) = r.echo.filter(|e| *e > 0) {
            what.push(format!("echo {echo} B"));
        }
        if let Some(dir) = r.direction {
            what.push(format!("direction {dir}"));
        }
        if let Some(path) = &r.http_path {
            what.push(format!("HTTP GET {path}"));
        }
        if r.resume {
            what.push("resumption on".into());
        }
        if !what.is_empty() {
            let _ = writeln!(t, "  workload     {}", what.join(", "));
        }
        let cert = if r.client_certificate {
            "client certificate"
        } else {
            "no client certificate"
        };
        match &self.tls {
            Some(n) => {
                let _ = writeln!(
                    t,
                    "  tls          {} {} {}, {cert}",
                    n.version, n.cipher_suite, n.key_exchange
                );
            }
            None => {
                let _ = writeln!(t, "  tls          (no handshake completed), {cert}");
            }
        }
        let _ = writeln!(
            t,
            "  operations   {} ok, {} failed{}",
            self.ops,
            self.errors,
            if self.unsent > 0 {
                format!(
                    ", {} due but never started (client connections all busy)",
                    self.unsent
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(t, "  throughput   {:.1} ops/s", self.ops_per_s);
        let _ = writeln!(
            t,
            "  data         up {:.2} MB/s, down {:.2} MB/s, total {:.2} MB/s (plaintext, MB = 10^6 B)",
            self.mb_per_s_up, self.mb_per_s_down, self.mb_per_s
        );
        let hs = &self.handshakes;
        if hs.full + hs.full_hrr + hs.resumed > 0 {
            let _ = writeln!(
                t,
                "  handshakes   {} full, {} full after HelloRetryRequest, {} resumed ({:.1}% resumed)",
                hs.full,
                hs.full_hrr,
                hs.resumed,
                hs.resumed_share * 100.0
            );
        }
        if self.closes.is_some() {
            let tls13_cert = r.client_certificate
                && self.tls.as_ref().is_some_and(|n| n.version.contains("1_3"));
            if r.echo == Some(0) && tls13_cert {
                let _ = writeln!(
                    t,
                    "  note         no --echo: a TLS 1.3 server that refuses the client certificate \
                     by closing without an alert (nginx stream does) goes unnoticed"
                );
            }
        }
        match &self.latency_us {
            Some(l) => {
                let f = |us: f64| format_latency_ns(us * 1e3);
                let _ = writeln!(
                    t,
                    "  latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, n={})",
                    f(l.p50),
                    f(l.p90),
                    f(l.p99),
                    f(l.p999),
                    f(l.max),
                    f(l.mean),
                    l.count
                );
            }
            None if r.mode == "bulk" => {}
            None => {
                let _ = writeln!(t, "  latency      (no successful operation)");
            }
        }
        let c = &self.client_cpu;
        let per_thread = c
            .per_thread_s
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" + ");
        let _ = writeln!(
            t,
            "  client cpu   {:.2} s (user {:.2}, sys {:.2}; threads {per_thread}) = {:.0}% of {} core(s), {:.0} µs per op",
            c.total_s,
            c.user_s,
            c.system_s,
            c.utilization * 100.0,
            r.threads,
            c.us_per_op
        );
        if self.errors_by_kind.is_empty() {
            let _ = writeln!(t, "  errors       none");
        } else {
            for (i, (kind, n)) in self.errors_by_kind.iter().enumerate() {
                let label = if i == 0 { "errors" } else { "" };
                let first = self.first_errors.get(kind).map_or("", String::as_str);
                let _ = writeln!(t, "  {label:<12} {kind} {n} (first: {first})");
            }
        }
        t
    }
}

/// 412 ns -> "412ns", 41_200 -> "41.2µs", 1_234_000 -> "1.23ms".
pub fn format_latency_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0}ns")
    } else if ns < 1e4 {
        format!("{:.2}µs", ns / 1e3)
    } else if ns < 1e5 {
        format!("{:.1}µs", ns / 1e3)
    } else if ns < 1e6 {
        format!("{:.0}µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2}ms", ns / 1e6)
    } else {
        format!("{:.2}s", ns / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::ErrorKind;

    fn run(mode: &'static str) -> RunInfo {
        RunInfo {
            mode,
            target: "127.0.0.1:8443".into(),
            server_name: "localhost".into(),
            threads: 2,
            cpus: vec![1],
            connections: 4,
            load: "closed",
            rate: None,
            duration_limit_s: Some(2.0),
            ops_limit: None,
            size: Some(64),
            echo: None,
            direction: None,
            http_path: None,
            resume: false,
            client_certificate: true,
            versions: "1.3,1.2",
            cipher: None,
        }
    }

    fn stats() -> Stats {
        let mut s = Stats::default();
        for us in 1..=100u64 {
            s.record_ok(Duration::from_micros(us * 10));
        }
        s.elapsed = Duration::from_secs(2);
        s.bytes_up = 2_000_000;
        s.bytes_down = 4_000_000;
        s.handshakes.full = 3;
        s.handshakes.resumed = 1;
        s.errors
            .record(ErrorKind::Alert, "received fatal alert: BadCertificate");
        s
    }

    #[test]
    fn rates_and_percentiles() {
        let cpu = CpuTime {
            user: 1.5,
            system: 0.5,
        };
        let s = Summary::new(run("rr"), &stats(), cpu, &[1.0, 0.9]);
        assert!((s.ops_per_s - 50.0).abs() < 1e-9);
        assert!((s.mb_per_s_up - 1.0).abs() < 1e-9);
        assert!((s.mb_per_s_down - 2.0).abs() < 1e-9);
        assert!((s.mb_per_s - 3.0).abs() < 1e-9);
        let l = s.latency_us.as_ref().unwrap();
        assert_eq!(l.count, 100);
        assert!((l.p50 - 500.0).abs() <= 1.0, "{}", l.p50);
        assert!((l.p99 - 990.0).abs() <= 1.0, "{}", l.p99);
        assert!((l.max - 1000.0).abs() <= 1.0, "{}", l.max);
        // 2 CPU seconds over 2 s on 2 threads.
        assert!((s.client_cpu.utilization - 0.5).abs() < 1e-9);
        assert!((s.client_cpu.us_per_op - 20_000.0).abs() < 1e-6);
        assert_eq!(s.errors_by_kind.get("alert"), Some(&1));
        assert!((s.handshakes.resumed_share - 0.25).abs() < 1e-9);
    }

    #[test]
    fn table_mentions_the_essentials() {
        let s = Summary::new(run("rr"), &stats(), CpuTime::default(), &[0.0, 0.0]);
        let t = s.table();
        for needle in [
            "tlsplice-load rr -> 127.0.0.1:8443",
            "closed loop, 2 thread(s) on cpus 1, 4 connection(s)",
            "100 ok, 1 failed",
            "50.0 ops/s",
            "up 1.00 MB/s, down 2.00 MB/s",
            "p50 500µs",
            "errors       alert 1 (first: received fatal alert: BadCertificate)",
            "25.0% resumed",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
    }

    #[test]
    fn bulk_has_no_latency_line() {
        let s = Summary::new(run("bulk"), &stats(), CpuTime::default(), &[]);
        assert!(s.latency_us.is_none());
        assert!(!s.table().contains("latency"));
    }

    #[test]
    fn json_has_stable_field_names() {
        let s = Summary::new(run("rr"), &stats(), CpuTime::default(), &[]);
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        for key in [
            "ops_per_s",
            "mb_per_s",
            "latency_us",
            "client_cpu",
            "errors_by_kind",
            "handshakes",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["run"]["mode"], "rr");
        assert!(v["latency_us"]["p999"].is_number());
    }

    #[test]
    fn latency_formatting() {
        assert_eq!(format_latency_ns(412.0), "412ns");
        assert_eq!(format_latency_ns(4_120.0), "4.12µs");
        assert_eq!(format_latency_ns(41_200.0), "41.2µs");
        assert_eq!(format_latency_ns(412_000.0), "412µs");
        assert_eq!(format_latency_ns(1_234_000.0), "1.23ms");
        assert_eq!(format_latency_ns(2_500_000_000.0), "2.50s");
    }
}
