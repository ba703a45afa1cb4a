//! Client-certificate verification cost: full mutual-TLS handshakes in
//! memory (rustls client and server through buffers, no sockets) with the
//! verdict cache hit and missed, for a 2-certificate client chain (leaf +
//! root anchor) and a 3-certificate one (leaf + intermediate + root); the
//! chain validation alone; and cache lookups from every core at once.
//!
//! `cargo bench --bench verify -- --quick` for a short run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use tlsplice::tls::verify::{
    load_crls, AllowEntry, Allowlist, CacheConfig, CacheKey, ClientAuthMode, TrustSettings,
    TrustVerifier, VerifyCache,
};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

struct Issuer {
    cert: Certificate,
    key: KeyPair,
}

fn ca(name: &str, parent: Option<&Issuer>) -> Issuer {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = match parent {
        None => params.self_signed(&key).unwrap(),
        Some(p) => params.signed_by(&key, &p.cert, &p.key).unwrap(),
    };
    Issuer { cert, key }
}

fn end_entity(
    name: &str,
    issuer: &Issuer,
    client: bool,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    if client {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    let cert = params.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// The certificates of one benchmark world.
struct World {
    server_root: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    client_root: CertificateDer<'static>,
    /// Leaf issued by the root: the client sends 1 certificate.
    short_chain: Vec<CertificateDer<'static>>,
    short_key: PrivateKeyDer<'static>,
    /// Leaf issued by an intermediate: the client sends 2.
    long_chain: Vec<CertificateDer<'static>>,
    long_key: PrivateKeyDer<'static>,
}

impl World {
    fn new() -> Self {
        let server_ca = ca("bench server CA", None);
        let (server_cert, server_key) = end_entity("localhost", &server_ca, false);
        let root = ca("bench client root", None);
        let intermediate = ca("bench client intermediate", Some(&root));
        let (short, short_key) = end_entity("client-short", &root, true);
        let (long, long_key) = end_entity("client-long", &intermediate, true);
        World {
            server_root: server_ca.cert.der().clone(),
            server_chain: vec![server_cert],
            server_key,
            client_root: root.cert.der().clone(),
            short_chain: vec![short],
            short_key,
            long_chain: vec![long, intermediate.cert.der().clone()],
            long_key,
        }
    }

    fn verifier(&self, cache: &Arc<VerifyCache>) -> Arc<TrustVerifier> {
        let mut settings =
            TrustSettings::new(ClientAuthMode::Required, vec![self.client_root.clone()]);
        // A realistic policy: a few name rules, the match last.
        settings.allowlist = Allowlist::new(vec![
            AllowEntry::subject_cn("ops-*").unwrap(),
            AllowEntry::dns_san("*.internal.example").unwrap(),
            AllowEntry::subject_cn("client-*").unwrap(),
        ]);
        Arc::new(TrustVerifier::new(&settings, provider(), cache.clone(), UnixTime::now()).unwrap())
    }

    fn server_config(&self, verifier: Arc<TrustVerifier>) -> Arc<ServerConfig> {
        Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
                .unwrap(),
        )
    }

    fn client_config(&self, long: bool) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.server_root.clone()).unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        let (chain, key) = if long {
            (self.long_chain.clone(), self.long_key.clone_key())
        } else {
            (self.short_chain.clone(), self.short_key.clone_key())
        };
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .unwrap();
        // Every handshake full: no resumption to hide the verification.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

/// One full handshake; returns the time spent in the server's calls.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> Duration {
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut c = ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut buf = Vec::with_capacity(8192);
    let mut server_time = Duration::ZERO;
    loop {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let to_server = !buf.is_empty();
        if to_server {
            let start = Instant::now();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
                s.process_new_packets().expect("server accepts the client");
            }
            server_time += start.elapsed();
        }
        buf.clear();
        let start = Instant::now();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        server_time += start.elapsed();
        let to_client = !buf.is_empty();
        if to_client {
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
        }
        if !to_server && !to_client {
            break;
        }
    }
    assert!(!s.is_handshaking() && !c.is_handshaking());
    server_time
}

fn handshakes(c: &mut Criterion) {
    let world = World::new();
    // Hit: one cache shared by all iterations, warmed by the first.
    let hit_cache = Arc::new(VerifyCache::new(CacheConfig::default()));
    // Miss: a cache that stores nothing, so every handshake validates.
    let miss_cache = Arc::new(VerifyCache::new(CacheConfig {
        capacity: 0,
        ..CacheConfig::default()
    }));
    let mut group = c.benchmark_group("handshake");
    for (label, long) in [("chain2", false), ("chain3", true)] {
        let client = world.client_config(long);
        for (cache_label, cache) in [("hit", &hit_cache), ("miss", &miss_cache)] {
            let server = world.server_config(world.verifier(cache));
            handshake(&server, &client);
            group.bench_function(
                BenchmarkId::new(format!("{label}/{cache_label}"), "both"),
                |b| b.iter(|| handshake(&server, &client)),
            );
            group.bench_function(
                BenchmarkId::new(format!("{label}/{cache_label}"), "server"),
                |b| b.iter_custom(|iters| (0..iters).map(|_| handshake(&server, &client)).sum()),
            );
        }
    }
    group.finish();
    let s = hit_cache.stats();
    eprintln!("hit cache: {s:?}");
}

fn chain_validation(c: &mut Criterion) {
    let world = World::new();
    let hit_cache = Arc::new(VerifyCache::new(CacheConfig::default()));
    let miss_cache = Arc::new(VerifyCache::new(CacheConfig {
        capacity: 0,
        ..CacheConfig::default()
    }));
    let mut group = c.benchmark_group("verify_client_cert");
    for (label, chain) in [
        ("chain2", &world.short_chain),
        ("chain3", &world.long_chain),
    ] {
        for (cache_label, cache) in [("hit", &hit_cache), ("miss", &miss_cache)] {
            let verifier = world.verifier(cache);
            let now = UnixTime::now();
            verifier
                .verify_client_cert(&chain[0], &chain[1..], now)
                .unwrap();
            group.bench_function(BenchmarkId::new(label, cache_label), |b| {
                b.iter(|| {
                    verifier
                        .verify_client_cert(black_box(&chain[0]), black_box(&chain[1..]), now)
                        .unwrap()
                })
            });
        }
        group.bench_function(BenchmarkId::new(label, "cache_key"), |b| {
            b.iter(|| CacheKey::new(1, black_box(&chain[0]), black_box(&chain[1..])))
        });
    }
    group.finish();
}

fn contention(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cache = Arc::new(VerifyCache::new(CacheConfig::default()));
    let now = UnixTime::now();
    let later = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() + 3_600));
    // A hot set of 1,024 chains, every one cached.
    let keys: Vec<CacheKey> = (0..1_024u32)
        .map(|i| CacheKey::new(1, &CertificateDer::from(i.to_be_bytes().to_vec()), &[]))
        .collect();
    for k in &keys {
        cache.insert_trusted(*k, later, now);
    }
    let mut group = c.benchmark_group("cache_lookup");
    for n in [1, threads] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("threads", n), |b| {
            // One iteration: every thread does one lookup, all at once.
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for t in 0..n {
                        let cache = &cache;
                        let keys = &keys;
                        scope.spawn(move || {
                            for i in 0..iters as usize {
                                let k = &keys[(i * 7 + t * 131) % keys.len()];
                                black_box(cache.get(k, now));
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    group.finish();
}

/// Loading a 100,000-entry CRL from a DER file (read and full parse), and
/// building a verifier from it (rustls turns it into webpki's lookup map).
fn crl_load(c: &mut Criterion) {
    let root = ca("bench CRL issuer", None);
    let now = time::OffsetDateTime::now_utc();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(7),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: (1..=100_000u64)
            .map(|n| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(n * 3),
                revocation_time: now - time::Duration::hours(2),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&root.cert, &root.key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.crl");
    std::fs::write(&path, crl.der().as_ref()).unwrap();
    let cache = Arc::new(VerifyCache::new(CacheConfig::default()));

    let mut group = c.benchmark_group("crl_100k");
    group.sample_size(10);
    group.bench_function("load", |b| b.iter(|| load_crls(&path).unwrap()));
    group.bench_function("load_and_build_verifier", |b| {
        b.iter(|| {
            let mut settings =
                TrustSettings::new(ClientAuthMode::Required, vec![root.cert.der().clone()]);
            settings.crls = load_crls(&path).unwrap();
            TrustVerifier::new(&settings, provider(), cache.clone(), UnixTime::now()).unwrap()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = handshakes, chain_validation, contention, crl_load
}
criterion_main!(benches);
