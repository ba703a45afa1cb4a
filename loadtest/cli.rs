//! Command line: flags, their parsers, and the checks that combine them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use rustls::NamedGroup;

use crate::tls::{parse_group, Cipher, Versions};

/// Load generator for TLS servers and terminators (mutual TLS capable).
///
/// Runs a closed loop (--connections as fast as possible) or an open loop
/// (--rate, latency measured from each operation's due time, so queueing
/// behind a slow server is counted). Always stops on its own: --duration
/// (default 10s when neither bound is given) and/or --ops, and every
/// operation is bounded by --timeout.
#[derive(Debug, Parser)]
#[command(name = "tlsplice-load", version)]
pub struct Cli {
    /// handshake: a new connection per operation; rr: request/response on
    /// kept-alive connections; bulk: throughput.
    #[arg(value_enum)]
    pub mode: Mode,

    /// Server address, HOST:PORT.
    #[arg(long)]
    pub target: String,
    /// SNI and the name the server certificate must match (default: the target's host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// CA certificate(s) the server certificate must chain to (PEM or DER).
    #[arg(long)]
    pub ca: PathBuf,
    /// Client certificate chain (PEM or DER); without it no client certificate is sent.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM or DER).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Offer TLS 1.3 only.
    #[arg(long, conflicts_with = "tls12_only")]
    pub tls13_only: bool,
    /// Offer TLS 1.2 only.
    #[arg(long)]
    pub tls12_only: bool,
    /// Offer only this cipher family.
    #[arg(long, value_enum)]
    pub cipher: Option<Cipher>,
    /// Key exchange groups to offer, in order (x25519, p256, p384, x25519mlkem768).
    #[arg(long, value_delimiter = ',', value_parser = parse_group)]
    pub kx: Vec<NamedGroup>,

    /// Worker threads, each with its own io_uring runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pin worker i to the i-th CPU of this list (e.g. 1,2 or 2-3).
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<CpuList>,
    /// Concurrent connections over all threads (default: one per thread).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Open loop: operations per second over all threads.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop starting operations after this long (e.g. 10s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many operations (successful or not).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Limit for one operation (connect + handshake, one exchange, one write).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,

    /// rr: request bytes, echoed back (default 64); bulk: bytes per write (default 64k).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<usize>,
    /// handshake: echo this many bytes after the handshake (default 0: none).
    #[arg(long, value_parser = parse_size)]
    pub echo: Option<usize>,
    /// handshake: resume sessions (tickets), and report how many really resumed.
    #[arg(long)]
    pub resume: bool,
    /// rr: send HTTP/1.1 GET requests instead of echo payloads.
    #[arg(long)]
    pub http: bool,
    /// rr --http: the path requested.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// bulk: up (client writes), down (client only reads) or both.
    #[arg(long, value_enum)]
    pub direction: Option<Direction>,

    /// Write the summary as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the latency percentile distribution (.hgrm, milliseconds) here.
    #[arg(long)]
    pub hdr: Option<PathBuf>,
    /// Write a latency-by-percentile plot (SVG) here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Print the progress line even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,
}

/// What one operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Connect, full (or resumed) handshake, optional echo, close.
    Handshake,
    /// One request/response on a kept-alive connection.
    Rr,
    /// One write (or read) of --size bytes in a stream.
    Bulk,
}

impl Mode {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Rr => "rr",
            Self::Bulk => "bulk",
        }
    }
}

/// Bulk transfer direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    /// The client writes; whatever comes back is read and counted too.
    Up,
    /// The client only reads (the server must send on its own).
    Down,
    /// The client writes and reads (with an echo backend: the same as up).
    Both,
}

impl Direction {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Both => "both",
        }
    }
}

/// A parsed `--cpus` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// The settings derived from the flags, after every cross-flag check.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Total connections.
    pub connections: usize,
    /// Bytes per operation (rr request, bulk chunk); 0 in handshake mode.
    pub size: usize,
    /// Echo bytes after each handshake.
    pub echo: usize,
    /// Bulk direction.
    pub direction: Direction,
    /// Run length bound.
    pub duration: Option<Duration>,
    /// Operation count bound.
    pub ops: Option<u64>,
    /// Protocol versions to offer.
    pub versions: Versions,
}

/// Default run length when neither --duration nor --ops is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

impl Cli {
    /// Checks the combination of flags and fills in mode-dependent defaults.
    pub fn settings(&self) -> Result<Settings, String> {
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        let connections = self.connections.unwrap_or(self.threads);
        if connections < self.threads {
            return Err(format!(
                "--connections {connections} is fewer than --threads {}: every thread needs a connection",
                self.threads
            ));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("--rate must be a positive number of operations per second".into());
            }
            if self.mode == Mode::Bulk {
                return Err("--rate does not apply to bulk mode (it measures throughput)".into());
            }
        }
        if self.ops == Some(0) {
            return Err("--ops must be at least 1".into());
        }
        if self.duration == Some(Duration::ZERO) {
            return Err("--duration must be longer than 0".into());
        }
        if self.timeout == Duration::ZERO {
            return Err("--timeout must be longer than 0".into());
        }
        if self.resume && self.mode != Mode::Handshake {
            return Err("--resume applies to handshake mode".into());
        }
        if self.echo.is_some() && self.mode != Mode::Handshake {
            return Err("--echo applies to handshake mode (rr uses --size)".into());
        }
        if self.http && self.mode != Mode::Rr {
            return Err("--http applies to rr mode".into());
        }
        if self.direction.is_some() && self.mode != Mode::Bulk {
            return Err("--direction applies to bulk mode".into());
        }
        let size = match self.mode {
            Mode::Handshake if self.size.is_some() => {
                return Err("--size does not apply to handshake mode (use --echo)".into())
            }
            Mode::Handshake => 0,
            Mode::Rr if self.http && self.size.is_some() => {
                return Err("--size does not apply to rr --http (the response decides)".into())
            }
            Mode::Rr => self.size.unwrap_or(64),
            Mode::Bulk => self.size.unwrap_or(64 * 1024),
        };
        if size == 0 && self.mode != Mode::Handshake && !self.http {
            return Err("--size must be at least 1".into());
        }
        let duration = match (self.duration, self.ops) {
            (None, None) => Some(DEFAULT_DURATION),
            (d, _) => d,
        };
        let versions = match (self.tls13_only, self.tls12_only) {
            (true, _) => Versions::Tls13,
            (_, true) => Versions::Tls12,
            _ => Versions::Both,
        };
        Ok(Settings {
            connections,
            size,
            echo: self.echo.unwrap_or(0),
            direction: self.direction.unwrap_or(Direction::Both),
            duration,
            ops: self.ops,
            versions,
        })
    }

    /// The host part of `--target` (brackets of an IPv6 literal removed).
    pub fn target_host(&self) -> &str {
        host_of(&self.target)
    }
}

/// `host:port` -> `host`; `[::1]:443` -> `::1`.
pub fn host_of(target: &str) -> &str {
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Parses `10s`, `500ms`, `2m`, `1h`, `250us` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use us, ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses `64`, `16k`, `1m` (binary multiples: k = 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (number, shift) = match s.to_ascii_lowercase().chars().last() {
        Some('k') => (&s[..s.len() - 1], 10),
        Some('m') => (&s[..s.len() - 1], 20),
        Some('g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: usize = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64, 16k, 1m)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses `1,2`, `0-3` or a mix (`0,2-3`).
pub fn parse_cpus(s: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a CPU number or range (e.g. 1,2 or 0-3)");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        return Err("--cpus needs at least one CPU".into());
    }
    Ok(CpuList(cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut full = vec!["tlsplice-load"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).unwrap()
    }

    const BASE: [&str; 4] = ["--target", "127.0.0.1:8443", "--ca", "ca.crt"];

    fn with(mode: &str, extra: &[&str]) -> Cli {
        let mut args = vec![mode];
        args.extend_from_slice(&BASE);
        args.extend_from_slice(extra);
        cli(&args)
    }

    #[test]
    fn defaults_per_mode() {
        let rr = with("rr", &[]).settings().unwrap();
        assert_eq!(rr.size, 64);
        assert_eq!(rr.connections, 1);
        assert_eq!(rr.duration, Some(DEFAULT_DURATION));
        let bulk = with("bulk", &[]).settings().unwrap();
        assert_eq!(bulk.size, 65536);
        assert_eq!(bulk.direction, Direction::Both);
        let hs = with("handshake", &["--ops", "100"]).settings().unwrap();
        assert_eq!(hs.size, 0);
        assert_eq!(hs.duration, None, "--ops alone bounds the run");
        assert_eq!(hs.ops, Some(100));
    }

    #[test]
    fn mode_specific_flags_are_refused_elsewhere() {
        assert!(with("rr", &["--resume"]).settings().is_err());
        assert!(with("bulk", &["--rate", "100"]).settings().is_err());
        assert!(with("handshake", &["--size", "10"]).settings().is_err());
        assert!(with("rr", &["--echo", "10"]).settings().is_err());
        assert!(with("handshake", &["--http"]).settings().is_err());
        assert!(with("rr", &["--direction", "up"]).settings().is_err());
        assert!(with("rr", &["--http", "--size", "5"]).settings().is_err());
        assert!(with("rr", &["--threads", "2", "--connections", "1"])
            .settings()
            .is_err());
        assert!(with("rr", &["--rate", "0"]).settings().is_err());
    }

    #[test]
    fn versions_and_conflicts() {
        assert_eq!(
            with("rr", &["--tls13-only"]).settings().unwrap().versions,
            Versions::Tls13
        );
        let mut args = vec!["rr"];
        args.extend_from_slice(&BASE);
        args.extend_from_slice(&["--tls13-only", "--tls12-only"]);
        let mut full = vec!["tlsplice-load"];
        full.extend_from_slice(&args);
        assert!(Cli::try_parse_from(full).is_err());
        // --cert needs --key.
        let mut full = vec!["tlsplice-load", "rr"];
        full.extend_from_slice(&BASE);
        full.extend_from_slice(&["--cert", "c.pem"]);
        assert!(Cli::try_parse_from(full).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64").unwrap(), 64);
        assert_eq!(parse_size("16k").unwrap(), 16384);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("1,2").unwrap(), CpuList(vec![1, 2]));
        assert_eq!(parse_cpus("0-2,5").unwrap(), CpuList(vec![0, 1, 2, 5]));
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("").is_err());
        assert!(parse_cpus("x").is_err());
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("localhost:8443"), "localhost");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
    }

    #[test]
    fn kx_list_parses() {
        let c = with("handshake", &["--kx", "x25519,p256"]);
        assert_eq!(c.kx, vec![NamedGroup::X25519, NamedGroup::secp256r1]);
    }
}
