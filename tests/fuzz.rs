//! Mutation fuzzing on the stable toolchain (cargo-fuzz needs nightly).
//!
//! Each target starts from real inputs (the example configs, ClientHellos
//! from rustls and `openssl s_client`, PROXY headers), mutates them with a
//! seeded RNG and checks properties: no panic, and where the input has a
//! meaning, the meaning (round trips, prefix behaviour, error locations).
//!
//! Bounds: `TLSPLICE_FUZZ_SECS` (seconds per target; default a few) and
//! `TLSPLICE_FUZZ_ITERS` (iterations per target). The base seed is random
//! per run and printed on failure with the failing iteration; rerun it with
//! `TLSPLICE_FUZZ_SEED=S TLSPLICE_FUZZ_FROM=I TLSPLICE_FUZZ_ITERS=1`.
//! A longer local run: `TLSPLICE_FUZZ_SECS=600 cargo test --test fuzz`.

mod common;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::proxy_header::{self, DecodeError};
use common::*;
use tlsplice::config::{self, Location, ProxyProtocol};
use tlsplice::connect::proxy_protocol::{self as pp, ClientInfo};
use tlsplice::ktls::handover::bytes_to_record_boundary;
use tlsplice::tls::client_hello::{self, MAX_CLIENT_HELLO_BYTES};

// ---------------------------------------------------------------------------
// The engine: seeded RNG, budget, mutations
// ---------------------------------------------------------------------------

/// splitmix64: tiny, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// How long a target runs and from which seed.
struct Budget {
    seed: u64,
    from: u64,
    iters: u64,
    time: Duration,
}

impl Budget {
    fn from_env(default_secs: u64, default_iters: u64) -> Budget {
        let seed = env_u64("TLSPLICE_FUZZ_SEED").unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32
        });
        let secs = env_u64("TLSPLICE_FUZZ_SECS");
        // A longer run asked for by time is bounded by time only.
        let iters = env_u64("TLSPLICE_FUZZ_ITERS").unwrap_or(match secs {
            Some(_) => u64::MAX,
            None => default_iters,
        });
        let time = Duration::from_secs(secs.unwrap_or(default_secs));
        Budget {
            seed,
            from: env_u64("TLSPLICE_FUZZ_FROM").unwrap_or(0),
            iters,
            time,
        }
    }

    /// The RNG of iteration `i`: reproducible from the seed alone.
    fn rng(&self, i: u64) -> Rng {
        Rng(self.seed ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }
}

/// Runs `one` for each iteration within the budget; a panic names the
/// target, seed and iteration. Returns the iterations run.
fn run_target(
    target: &str,
    default_secs: u64,
    default_iters: u64,
    mut one: impl FnMut(&mut Rng),
) -> u64 {
    let b = Budget::from_env(default_secs, default_iters);
    let start = Instant::now();
    let mut i = b.from;
    while i - b.from < b.iters && start.elapsed() < b.time {
        let mut rng = b.rng(i);
        if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| one(&mut rng))) {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "fuzz target `{target}` failed at iteration {i}: {what}\n\
                 reproduce: TLSPLICE_FUZZ_SEED={:#x} TLSPLICE_FUZZ_FROM={i} TLSPLICE_FUZZ_ITERS=1 \
                 cargo test --test fuzz {target}",
                b.seed
            );
        }
        i += 1;
    }
    eprintln!(
        "fuzz target `{target}`: {} iterations, seed {:#x}",
        i - b.from,
        b.seed
    );
    i - b.from
}

/// Values that break parsers: boundaries of lengths and integers.
const INTERESTING: &[u8] = &[0, 1, 0x7f, 0x80, 0xfe, 0xff, 0x16, 0x03, 0x17, 0x15];

/// Applies 1 to 8 random mutations to `data`: bit flips, random and
/// boundary bytes, +-1 (length fields), inserts, deletes, duplicated
/// ranges, truncation, crossover with another corpus entry, dictionary
/// tokens.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>], dict: &[&[u8]]) {
    for _ in 0..1 + rng.below(8) {
        let len = data.len();
        let at = rng.below(len + 1);
        match rng.below(11) {
            0 if len > 0 => data[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => data[at.min(len - 1)] = rng.byte(),
            2 if len > 0 => data[at.min(len - 1)] = *rng.pick(INTERESTING),
            3 if len > 0 => {
                let b = &mut data[at.min(len - 1)];
                *b = if rng.chance(2) {
                    b.wrapping_add(1)
                } else {
                    b.wrapping_sub(1)
                };
            }
            4 => {
                let n = 1 + rng.below(16);
                let bytes = rng.bytes(n);
                data.splice(at..at, bytes);
            }
            5 if len > 0 => {
                let end = (at + 1 + rng.below(32)).min(len);
                data.drain(at.min(end)..end);
            }
            6 if len > 0 => {
                let start = at.min(len - 1);
                let end = (start + 1 + rng.below(64)).min(len);
                let copy = data[start..end].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, copy);
            }
            7 => data.truncate(at),
            8 if !corpus.is_empty() => {
                let other = rng.pick(corpus);
                if !other.is_empty() {
                    let s = rng.below(other.len());
                    let e = (s + 1 + rng.below(128)).min(other.len());
                    data.splice(at..at, other[s..e].iter().copied());
                }
            }
            9 if !dict.is_empty() => {
                let token = *rng.pick(dict);
                data.splice(at..at, token.iter().copied());
            }
            10 if len >= 2 => {
                // A 16-bit big-endian length field set to a boundary value.
                let p = at.min(len - 2);
                let v: u16 = *rng.pick(&[0, 1, 0x3fff, 0x4000, 0x4001, 0x7fff, 0xffff]);
                data[p..p + 2].copy_from_slice(&v.to_be_bytes());
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Config text -> config::load_text (parse + validate)
// ---------------------------------------------------------------------------

const CONFIG_DICT: &[&[u8]] = &[
    b"\n[[listener]]\n",
    b"\n[listener]\n",
    b"\n[admin]\n",
    b" = ",
    b"=",
    b"\"",
    b"'''",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b"#",
    b"\\u0000",
    b"\n",
    b"workers = ",
    b"handshake_timeout = ",
    b"idle_timeout = ",
    b"max_connections = ",
    b"ktls = ",
    b"admin = ",
    b"name = ",
    b"listen = ",
    b"backlog = ",
    b"cert = ",
    b"key = ",
    b"client_auth = ",
    b"client_ca = ",
    b"alpn = ",
    b"tls_versions = ",
    b"cipher_suites = ",
    b"backends = ",
    b"crl = ",
    b"allow = ",
    b"proxy_protocol = ",
    b"no_such_key = ",
    b"0",
    b"-1",
    b"18446744073709551616",
    b"9223372036854775807",
    b"1e309",
    b"nan",
    b"inf",
    b"true",
    b"\"\"",
    b"\"0s\"",
    b"\"-1s\"",
    b"\"1.5h\"",
    b"\"99999999999999999999h\"",
    b"\"18446744073709551615s\"",
    b"\"1ms\"",
    b"\"[::1]:0\"",
    b"\"127.0.0.1:99999\"",
    b"\"256.0.0.1:1\"",
    b"\"localhost:0\"",
    b"\"pki/ca.crt\"",
    b"\"pki/server.key\"",
    b"\"/dev/null\"",
    b"\"/nonexistent\"",
    b"\"pki\"",
    b"\"1.1\"",
    b"\"1.3\"",
    b"\"required\"",
    b"\"optional\"",
    b"\"off\"",
    b"\"v2\"",
    b"\"require\"",
    b"[\"h2\", \"\"]",
    b"1979-05-27T07:32:00Z",
];

fn example_configs() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    ["quickstart.toml", "sidecar.toml", "edge.toml"]
        .iter()
        .map(|name| std::fs::read(dir.join(name)).unwrap())
        .collect()
}

/// Every error must point into the file it came from, at a real line, and
/// name a field.
fn check_config_errors(path: &Path, text: &str, errors: &config::ConfigErrors) {
    assert!(!errors.0.is_empty(), "an Err with no error in it");
    let lines = text.split('\n').count();
    for e in &errors.0 {
        match &e.location {
            Location::File {
                path: p,
                line,
                column,
            } => {
                assert_eq!(p, path, "error names another file: {e}");
                assert!(
                    (1..=lines + 1).contains(line) && *column >= 1,
                    "line/column {line}:{column} outside a {lines}-line text: {e}"
                );
            }
            Location::Flag => panic!("a file error located at a flag: {e}"),
        }
        assert!(!e.field.trim().is_empty(), "error without a field: {e}");
        assert!(!e.message.trim().is_empty(), "error without a message: {e}");
    }
}

#[test]
fn config_text_parse_and_validate() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki.write_standard_files(&pki_dir);
    add_edge_files(&pki_dir);
    let path = dir.path().join("fuzz.toml");
    let corpus = example_configs();
    // The seeds themselves are valid: mutations start from accepted texts.
    for seed in &corpus {
        let text = String::from_utf8(seed.clone()).unwrap();
        if let Err(e) = config::load_text(&path, &text) {
            panic!("example config rejected:\n{e}");
        }
    }
    let accepted = AtomicU64::new(0);
    let iters = run_target("config_text_parse_and_validate", 4, 20_000, |rng| {
        let mut data = rng.pick(&corpus).clone();
        mutate(rng, &mut data, &corpus, CONFIG_DICT);
        let text = String::from_utf8_lossy(&data);
        match config::load_text(&path, &text) {
            Ok(c) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                assert!(!c.listeners.is_empty(), "accepted with no listener");
            }
            Err(errors) => {
                let checked = panic::catch_unwind(|| check_config_errors(&path, &text, &errors));
                if let Err(p) = checked {
                    eprintln!("---- mutated config ----\n{text}\n------------------------");
                    panic::resume_unwind(p);
                }
            }
        }
    });
    // Some mutations (comments, reordering) keep the file valid: the target
    // reaches the validator's accepting paths, not only the parser's errors.
    if iters >= 1000 {
        assert!(accepted.load(Ordering::Relaxed) > 0, "no mutant accepted");
    }
}

// ---------------------------------------------------------------------------
// PROXY protocol: encode -> independent decoder
// ---------------------------------------------------------------------------

fn random_addr(rng: &mut Rng) -> SocketAddr {
    let ip = if rng.chance(2) {
        if rng.chance(4) {
            // IPv4-mapped: the encoder must write it as IPv4 when it can.
            IpAddr::V6(Ipv4Addr::from(rng.next() as u32).to_ipv6_mapped())
        } else {
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(rng.next()) << 64) | u128::from(rng.next()),
            ))
        }
    } else {
        IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
    };
    SocketAddr::new(ip, rng.next() as u16)
}

/// A field of a realistic size, sometimes empty, rarely huge.
fn random_field(rng: &mut Rng, printable: bool) -> Vec<u8> {
    let n = match rng.below(20) {
        0 => 0,
        1 => 1000 + rng.below(4000),
        // Past what fits a 16-bit length when several add up.
        2 if rng.chance(20) => 20_000 + rng.below(50_000),
        _ => 1 + rng.below(64),
    };
    let mut v = rng.bytes(n);
    if printable {
        for b in &mut v {
            *b = b'a' + *b % 26;
        }
    }
    v
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[test]
fn proxy_protocol_round_trip() {
    run_target("proxy_protocol_round_trip", 3, 50_000, |rng| {
        let client = random_addr(rng);
        let local = random_addr(rng);
        let alpn = random_field(rng, false);
        let sni = String::from_utf8(random_field(rng, true)).unwrap();
        let version = String::from_utf8(random_field(rng, true)).unwrap();
        let cipher = String::from_utf8(random_field(rng, true)).unwrap();
        let cn = String::from_utf8_lossy(&random_field(rng, false)).into_owned();
        let identity = String::from_utf8(random_field(rng, true)).unwrap();
        let sha: [u8; 32] = rng.bytes(32).try_into().unwrap();
        let info = ClientInfo {
            alpn: rng.chance(2).then_some(&alpn[..]),
            sni: rng.chance(2).then_some(&sni[..]),
            tls_version: rng.chance(2).then_some(&version[..]),
            cipher: rng.chance(2).then_some(&cipher[..]),
            cn: rng.chance(2).then_some(&cn[..]),
            cert_presented: rng.chance(2),
            cert_sha256: rng.chance(2).then_some(sha),
            identity: rng.chance(2).then_some(&identity[..]),
            cert_der: None,
            cert_tlv: Some(pp::CertTlv::default()),
        };
        let v = if rng.chance(2) {
            ProxyProtocol::V1
        } else {
            ProxyProtocol::V2
        };
        let wire = pp::encode(v, client, local, &info);

        // What follows the header stays the application's.
        let mut stream = wire.clone();
        stream.extend_from_slice(b"\x16\x03\x01application bytes");
        let h = proxy_header::decode(&stream).unwrap_or_else(|e| {
            let head = &wire[..wire.len().min(64)];
            panic!(
                "{v:?} header of {} bytes does not decode: {e:?}; starts {head:02x?}",
                wire.len()
            )
        });
        assert_eq!(h.len, wire.len(), "decoder and encoder disagree on length");
        let same_family = canonical(client).is_ipv4() == canonical(local).is_ipv4();
        if same_family {
            assert_eq!(h.source, canonical(client));
            assert_eq!(h.destination, canonical(local));
        } else {
            assert_eq!(h.source.port(), client.port());
            assert_eq!(h.destination.port(), local.port());
        }
        // A cut header is incomplete, never misread.
        let cut = rng.below(wire.len());
        assert_eq!(
            proxy_header::decode(&wire[..cut]),
            Err(DecodeError::Incomplete),
            "prefix of {cut} bytes"
        );
        if v == ProxyProtocol::V1 {
            assert!(wire.len() <= proxy_header::V1_MAX_LEN);
            return;
        }
        // Every TLV is there with its exact value, or left out because it
        // could not fit the 16-bit length beside the others.
        let body = h.len - 16;
        let fits = |got: Option<&[u8]>, want: Option<&[u8]>| match (got, want) {
            (None, Some(w)) => body + 3 + w.len() > 0xffff,
            (got, want) => got == want,
        };
        for (kind, want) in [
            (0x01, info.alpn),
            (0x02, info.sni.map(str::as_bytes)),
            (
                pp::TLV_CLIENT_CERT,
                info.cert_sha256.as_ref().map(|s| &s[..]),
            ),
            (pp::TLV_CLIENT_IDENTITY, info.identity.map(str::as_bytes)),
        ] {
            assert!(fits(h.tlv(kind), want), "TLV {kind:#04x}");
        }
        let subs = [
            (0x21, info.tls_version.map(str::as_bytes)),
            (0x22, info.cn.map(str::as_bytes)),
            (0x23, info.cipher.map(str::as_bytes)),
        ];
        let Some(ssl) = h.tlv(0x20) else {
            let full: usize = 5 + subs
                .iter()
                .flat_map(|(_, v)| v.map(|v| 3 + v.len()))
                .sum::<usize>();
            assert!(
                body + 3 + full > 0xffff,
                "PP2_TYPE_SSL left out though it fits"
            );
            return;
        };
        let ssl = proxy_header::decode_ssl(ssl).unwrap();
        let want_client = if info.cert_presented { 0x07 } else { 0x01 };
        assert_eq!(ssl.client, want_client);
        assert_eq!(ssl.verify, 0);
        for (kind, want) in subs {
            assert!(fits(ssl.sub(kind), want), "SSL sub-TLV {kind:#04x}");
        }
    });
}

// ---------------------------------------------------------------------------
// ClientHello parser
// ---------------------------------------------------------------------------

/// ClientHellos from rustls clients of several shapes.
fn rustls_hellos(pki: &Pki) -> Vec<Vec<u8>> {
    let mut out = vec![client_hello_bytes(pki)];
    for (tls12, alpn, name) in [
        (
            true,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            "localhost",
        ),
        (
            false,
            vec![b"x".repeat(255)],
            "a.very.long.name.example.com",
        ),
        (false, Vec::new(), "127.0.0.1"),
    ] {
        let mut opts = ClientOpts::new(pki);
        if tls12 {
            opts = opts.tls12();
        }
        opts.alpn = alpn;
        let cfg = opts.build();
        let mut conn = rustls::ClientConnection::new(
            cfg,
            rustls::pki_types::ServerName::try_from(name).unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut hello).unwrap();
        }
        out.push(hello);
    }
    out
}

/// The ClientHello `openssl s_client` sends (a client nobody here wrote).
fn openssl_hello() -> Vec<u8> {
    require_tool("openssl");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "fuzz.example", "-alpn", "h2,http/1.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn openssl s_client");
    let (mut sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut hello = Vec::new();
    let mut buf = [0u8; 4096];
    while !matches!(client_hello::parse(&hello), Ok(Some(_)) | Err(_)) {
        let n = sock.read(&mut buf).expect("read openssl's ClientHello");
        assert!(n > 0, "openssl closed before its ClientHello was complete");
        hello.extend_from_slice(&buf[..n]);
    }
    drop(sock);
    let _ = child.kill();
    let _ = child.wait();
    let parsed = client_hello::parse(&hello).unwrap().unwrap();
    assert_eq!(parsed.server_name.as_deref(), Some("fuzz.example"));
    hello
}

/// Splits the first record's body into records of random sizes.
fn fragment(rng: &mut Rng, hello: &[u8]) -> Vec<u8> {
    let (header, body) = hello.split_at(5.min(hello.len()));
    if header.len() < 5 {
        return hello.to_vec();
    }
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let n = (1 + rng.below(300)).min(rest.len());
        out.extend_from_slice(&header[..3]);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

#[test]
fn client_hello_parser() {
    let pki = Pki::new();
    let mut corpus = rustls_hellos(&pki);
    corpus.push(openssl_hello());
    let complete = AtomicU64::new(0);
    run_target("client_hello_parser", 4, 40_000, |rng| {
        let mut buf = rng.pick(&corpus).clone();
        if rng.chance(4) {
            buf = fragment(rng, &buf);
        }
        if !rng.chance(8) {
            mutate(rng, &mut buf, &corpus, &[]);
        }
        match client_hello::parse(&buf) {
            Ok(Some(hello)) => {
                complete.fetch_add(1, Ordering::Relaxed);
                // Bytes after the hello are ignored.
                let mut longer = buf.clone();
                let extra = rng.below(64);
                longer.extend(rng.bytes(extra));
                assert_eq!(client_hello::parse(&longer), Ok(Some(hello.clone())));
                // A prefix is a valid beginning (or already the same hello),
                // never an error: errors are proven by the bytes seen.
                let cut = rng.below(buf.len());
                match client_hello::parse(&buf[..cut]) {
                    Ok(None) => {}
                    Ok(Some(h)) => assert_eq!(h, hello),
                    Err(e) => panic!("prefix of {cut} bytes fails ({e}) but the whole parses"),
                }
            }
            Ok(None) => {
                assert!(buf.len() < MAX_CLIENT_HELLO_BYTES, "Ok(None) at the bound");
            }
            Err(e) => {
                // More bytes cannot repair a proven error.
                let mut longer = buf.clone();
                let extra = 1 + rng.below(64);
                longer.extend(rng.bytes(extra));
                assert!(
                    client_hello::parse(&longer).is_err(),
                    "error {e} went away with more bytes"
                );
            }
        }
    });
    assert!(
        complete.load(Ordering::Relaxed) > 0,
        "no input parsed whole"
    );
}

// ---------------------------------------------------------------------------
// Record-boundary tracker (kTLS handover)
// ---------------------------------------------------------------------------

#[test]
fn record_boundary_tracker() {
    run_target("record_boundary_tracker", 2, 100_000, |rng| {
        // A stream of records with random lengths, cut anywhere.
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let len = match rng.below(4) {
                0 => rng.below(0x10000),
                _ => rng.below(300),
            };
            stream.extend_from_slice(&[*rng.pick(&[20u8, 21, 22, 23, 24]), 3, 3]);
            stream.extend_from_slice(&(len as u16).to_be_bytes());
            stream.extend(std::iter::repeat_n(0u8, len));
            ends.push(stream.len());
        }
        let cut = rng.below(stream.len() + 1);
        let mut have = stream[..cut].to_vec();
        // Reading exactly what the tracker asks for, repeatedly, lands on
        // the first record's end (or stays put when there is nothing or a
        // whole record already), and never reads past it.
        for _ in 0..3 {
            let need = bytes_to_record_boundary(&have);
            if need == 0 {
                break;
            }
            let end = (have.len() + need).min(stream.len());
            assert!(end <= ends[0], "reads past the first record's end");
            have.extend_from_slice(&stream[have.len()..end]);
        }
        if cut == 0 {
            assert!(have.is_empty());
        } else {
            assert_eq!(have.len(), cut.max(ends[0]), "stopped off the boundary");
            assert_eq!(bytes_to_record_boundary(&have), 0);
        }
    });
}

// ---------------------------------------------------------------------------
// Raw sockets against a running tlsplice
// ---------------------------------------------------------------------------

/// Random records of any type and size, some lying about their length.
fn garbage_records(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let body = rng.below(600);
        let claimed = if rng.chance(4) {
            *rng.pick(&[0u16, 0x4001, 0x4100, 0xffff])
        } else {
            body as u16
        };
        out.push(*rng.pick(&[20u8, 21, 22, 23, 24, 0, 0xff]));
        out.extend_from_slice(&[3, *rng.pick(&[0u8, 1, 3, 4])]);
        out.extend_from_slice(&claimed.to_be_bytes());
        out.extend(rng.bytes(body));
    }
    out
}

/// What one fuzz connection sends, and how its reply may begin.
enum Attack {
    /// Raw bytes; `fin` closes the write side after them.
    Bytes { data: Vec<u8>, fin: bool },
    /// A real handshake, then garbage records (then FIN).
    AfterHandshake(Vec<u8>),
}

fn attack(rng: &mut Rng, corpus: &[Vec<u8>]) -> Attack {
    let hello = rng.pick(corpus).clone();
    let data = match rng.below(7) {
        0 => {
            let n = rng.below(2000);
            rng.bytes(n)
        }
        1 => {
            let mut h = hello;
            mutate(rng, &mut h, corpus, &[]);
            h
        }
        2 => {
            // Oversized length: a record header claiming up to 64 KiB, then
            // a little.
            let mut h = vec![22, 3, 1, 0xff, 0xff];
            h.extend_from_slice(&hello[5..5 + rng.below(hello.len() - 5)]);
            h
        }
        3 => hello[..rng.below(hello.len())].to_vec(),
        4 => {
            let mut h = hello;
            h.extend(garbage_records(rng));
            h
        }
        5 => {
            let mut h = fragment(rng, &hello);
            if rng.chance(2) {
                mutate(rng, &mut h, corpus, &[]);
            }
            h
        }
        _ => return Attack::AfterHandshake(garbage_records(rng)),
    };
    Attack::Bytes {
        fin: rng.chance(2),
        data,
    }
}

/// Plays one attack; the connection must end (the server closes it) within
/// the read timeout. Returns the first byte the server sent, if any.
fn play(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>, a: Attack) -> io::Result<Option<u8>> {
    let mut sock = match a {
        Attack::Bytes { data, fin } => {
            let mut sock = tcp_connect(addr);
            // The server may close before taking everything: that is fine.
            if sock.write_all(&data).is_ok() && fin {
                let _ = sock.shutdown(Shutdown::Write);
            }
            sock
        }
        Attack::AfterHandshake(garbage) => {
            let mut tls = tls_connect(addr, cfg.clone())?;
            echo_round_trip(&mut tls, b"before garbage");
            let _ = tls.sock.write_all(&garbage);
            let _ = tls.sock.shutdown(Shutdown::Write);
            tls.sock
        }
    };
    let mut first = None;
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return Ok(first),
            Ok(_) => {
                first.get_or_insert(buf[0]);
            }
            Err(e) if is_timeout(&e) => return Err(e),
            // A reset is an end too.
            Err(_) => return Ok(first),
        }
    }
}

#[test]
fn raw_socket_fuzz_leaves_the_server_serving() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.flag("--handshake-timeout", "1s");
    let server = args.spawn();
    let addr = server.addr();
    let pid = server.pid();
    let cfg = ClientOpts::new(&pki).build();
    // One normal connection first, so lazily made state is in the baseline.
    let mut tls = tls_connect(addr, cfg.clone()).unwrap();
    echo_round_trip(&mut tls, b"warm-up");
    drop(tls);
    let fds_before = settled_fds(pid);
    let rss_before = rss_kib(pid);

    let mut corpus = rustls_hellos(&pki);
    corpus.push(openssl_hello());
    let b = Budget::from_env(12, 600);
    let next = Arc::new(AtomicU64::new(b.from));
    let start = Instant::now();
    let replies = thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let (next, corpus, cfg, b) = (next.clone(), &corpus, &cfg, &b);
                s.spawn(move || {
                    let mut firsts = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i - b.from >= b.iters || start.elapsed() >= b.time {
                            return firsts;
                        }
                        let mut rng = b.rng(i);
                        let a = attack(&mut rng, corpus);
                        match play(addr, cfg, a) {
                            Ok(first) => firsts.push(first),
                            Err(e) => panic!(
                                "connection {i} not ended by the server ({e}); reproduce: \
                                 TLSPLICE_FUZZ_SEED={:#x} TLSPLICE_FUZZ_FROM={i} TLSPLICE_FUZZ_ITERS=1",
                                b.seed
                            ),
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("fuzz client thread"))
            .collect::<Vec<_>>()
    });
    eprintln!(
        "raw socket fuzz: {} connections, seed {:#x}",
        replies.len(),
        b.seed
    );
    assert!(!replies.is_empty());
    // Whatever the server answered before the TLS session existed was TLS
    // (alert 0x15, handshake 0x16, application data 0x17 after the
    // handshake) or the plaintext-HTTP hint.
    for first in replies.iter().flatten() {
        assert!(
            matches!(first, 0x15 | 0x16 | 0x17 | b'H'),
            "server answered with a byte {first:#04x}"
        );
    }

    // Still serving a normal client, with what it held given back.
    let mut tls = tls_connect(addr, cfg).unwrap();
    echo_round_trip(&mut tls, b"after the fuzz");
    drop(tls);
    assert_fds_back(pid, fds_before);
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let log = server.log.text();
    assert!(!log.contains("panicked"), "a connection panicked:\n{log}");
}

/// Pieces of HTTP/1.1 the head-rewriter mutations splice in.
const HTTP_DICT: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"GET / HTTP/1.1\r\n",
    b"POST /upload HTTP/1.1\r\n",
    b"Host: backend\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"5;ext=1\r\nhello\r\n",
    b"0\r\nTrailer: x\r\n\r\n",
    b"Client-Cert: :c3Bvb2Y=:\r\n",
    b"client-cert-chain: spoof\r\n",
    b"Connection: upgrade\r\nUpgrade: websocket\r\n",
    b"CONNECT backend:443 HTTP/1.1\r\n",
    b" folded\r\n",
    b"\n",
    b"\0",
];

/// Requests the rewriter accepts, as mutation seeds.
fn http_seeds() -> Vec<Vec<u8>> {
    [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /y HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nClient-Cert: :c3Bvb2Y=:\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

/// The header-mode request-head rewriter: no panic on any input, and the
/// same bytes give the same verdict and output whether they arrive at once
/// or split at random points (the client's segmentation must not matter).
#[test]
fn http_head_rewriter() {
    use tlsplice::relay::http_head::HeadRewriter;
    let corpus = http_seeds();
    let strip = vec!["Client-Cert".to_string(), "Client-Cert-Chain".to_string()];
    let insert = b"Client-Cert: :AAAA:\r\n".to_vec();
    run_target("http_head_rewriter", 3, 30_000, |rng| {
        let mut data = rng.pick(&corpus).clone();
        mutate(rng, &mut data, &corpus, HTTP_DICT);
        let max_head = 256 + rng.below(4096);

        let mut whole = HeadRewriter::new(&strip, insert.clone(), max_head);
        let mut out_whole = Vec::new();
        let verdict_whole = whole.feed(&data, &mut out_whole).is_ok();

        let mut pieces = HeadRewriter::new(&strip, insert.clone(), max_head);
        let mut out_pieces = Vec::new();
        let mut verdict_pieces = true;
        let mut rest = &data[..];
        while !rest.is_empty() && verdict_pieces {
            let n = 1 + rng.below(rest.len());
            verdict_pieces = pieces.feed(&rest[..n], &mut out_pieces).is_ok();
            rest = &rest[n..];
        }
        assert_eq!(
            verdict_whole,
            verdict_pieces,
            "verdict depends on segmentation for {:?}",
            String::from_utf8_lossy(&data)
        );
        if verdict_whole {
            assert_eq!(
                out_whole,
                out_pieces,
                "output depends on segmentation for {:?}",
                String::from_utf8_lossy(&data)
            );
        }
    });
}
