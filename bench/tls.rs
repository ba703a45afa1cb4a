//! Server-side TLS cost in memory (no sockets): full and resumed TLS 1.3
//! handshakes with ECDSA P-256 and RSA-2048 server keys, with and without a
//! client certificate; record encryption and decryption of 16 KiB, by
//! rustls' own record layer and by ours (`tls::traffic`, the userspace
//! relay's path); PROXY v2 encoding.
//!
//! Only the server's work is timed in the handshake benches: the client's
//! messages are produced outside the measured section.
//!
//! `cargo bench --bench tls -- --quick` for a short run.

use std::hint::black_box;
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};
use rustls::client::Resumption;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection, WebPkiClientVerifier};
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, RootCertStore, ServerConfig, ServerConnection,
};
use tlsplice::connect::proxy_protocol::{self, ClientInfo, Version};
use tlsplice::relay::http_head::{HeadRewriter, DEFAULT_MAX_HEAD};
use tlsplice::tls::records::TlsOut;
use tlsplice::tls::traffic::Traffic;
use tlsplice::tls::unbuffered::{drive, Progress};

struct Pki {
    ca: CertificateDer<'static>,
    server: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
}

fn pki(server_alg: &'static rcgen::SignatureAlgorithm) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>, eku, alg| {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    };
    Pki {
        ca: ca_cert.der().clone(),
        server: leaf(
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            server_alg,
        ),
        client: leaf(
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
            &PKCS_ECDSA_P256_SHA256,
        ),
    }
}

fn configs(pki: &Pki, client_auth: bool) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let roots = Arc::new(roots);
    let verifier = if client_auth {
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .unwrap()
    } else {
        WebPkiClientVerifier::no_client_auth()
    };
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server.0.clone(), pki.server.1.clone_key())
        .unwrap();
    // As tlsplice configures it: the record layer takes the secrets.
    server.enable_secret_extraction = true;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut client = if client_auth {
        client
            .with_client_auth_cert(pki.client.0.clone(), pki.client.1.clone_key())
            .unwrap()
    } else {
        client.with_no_client_auth()
    };
    client.resumption = Resumption::in_memory_sessions(64);
    (Arc::new(server), Arc::new(client))
}

/// Moves everything `from` wants to send into `to`; returns the time `to`
/// spent processing it.
fn transfer<A, B, DA, DB>(from: &mut A, to: &mut B) -> Duration
where
    A: DerefMut<Target = ConnectionCommon<DA>>,
    B: DerefMut<Target = ConnectionCommon<DB>>,
{
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    if buf.is_empty() {
        return Duration::ZERO;
    }
    let start = Instant::now();
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets().unwrap();
    }
    start.elapsed()
}

/// A handshake between fresh connections; returns the server's time (its
/// processing of client flights and production of its own).
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> Duration {
    let mut c =
        ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut server_time = Duration::ZERO;
    while c.is_handshaking() || s.is_handshaking() || s.wants_write() {
        server_time += transfer(&mut c, &mut s);
        let start = Instant::now();
        let mut out = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut out).unwrap();
        }
        server_time += start.elapsed();
        let mut rd = &out[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
    }
    server_time
}

fn handshakes(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_handshake_tls13");
    for (key_name, alg) in [
        ("ecdsa_p256", &PKCS_ECDSA_P256_SHA256),
        ("rsa2048", &PKCS_RSA_SHA256),
    ] {
        let pki = pki(alg);
        for client_auth in [false, true] {
            let (server, client) = configs(&pki, client_auth);
            let auth = if client_auth {
                "mtls"
            } else {
                "no_client_cert"
            };
            group.bench_function(
                BenchmarkId::new(format!("{key_name}/{auth}"), "full"),
                |b| {
                    let fresh = Arc::new(ClientConfig::clone(&client));
                    b.iter_custom(|n| {
                        (0..n)
                            .map(|_| {
                                // A client without stored tickets: always full.
                                let mut cfg = ClientConfig::clone(&fresh);
                                cfg.resumption = Resumption::disabled();
                                handshake(&server, &Arc::new(cfg))
                            })
                            .sum()
                    })
                },
            );
            group.bench_function(
                BenchmarkId::new(format!("{key_name}/{auth}"), "resumed"),
                |b| {
                    // Prime the ticket store, then every iteration resumes.
                    handshake(&server, &client);
                    b.iter_custom(|n| (0..n).map(|_| handshake(&server, &client)).sum())
                },
            );
        }
    }
    group.finish();
}

/// Our server side of a finished handshake with `client`, in our record
/// layer (as the relay runs it).
fn traffic_server(
    server_cfg: &Arc<ServerConfig>,
    client: &mut ClientConnection,
) -> Traffic<ServerConnectionData> {
    let mut server = UnbufferedServerConnection::new(server_cfg.clone()).unwrap();
    let (mut incoming, mut out, mut plain) = (Vec::new(), TlsOut::with_capacity(0), Vec::new());
    loop {
        while client.wants_write() {
            client.write_tls(&mut incoming).unwrap();
        }
        let progress = drive(&mut server, &mut incoming, &mut out, &mut plain).unwrap();
        let mut rd = out.pending();
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
        }
        out.take();
        if matches!(progress, Progress::Complete) && !client.is_handshaking() {
            return Traffic::from_rustls(server).unwrap();
        }
    }
}

fn records(c: &mut Criterion) {
    use std::io::{Read, Write};
    let pki = pki(&PKCS_ECDSA_P256_SHA256);
    let (server_cfg, client_cfg) = configs(&pki, false);
    let new_client = || {
        ClientConnection::new(
            client_cfg.clone(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap()
    };
    let mut client = new_client();
    let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
    while client.is_handshaking() || server.is_handshaking() {
        transfer(&mut client, &mut server);
        transfer(&mut server, &mut client);
    }
    let mut ours_client = new_client();
    let mut ours = traffic_server(&server_cfg, &mut ours_client);
    let payload = vec![0x5a_u8; 16 * 1024];
    // Each iteration's record comes from the client outside the timed
    // section; the server decrypts the stream in order.
    let client_records = |client: &mut ClientConnection, n: u64| {
        let mut wire = Vec::new();
        for _ in 0..n {
            client.writer().write_all(&payload).unwrap();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
        }
        wire
    };
    let mut group = c.benchmark_group("record_16k_tls13_aes128gcm");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("encrypt/rustls", |b| {
        let mut out = Vec::with_capacity(32 * 1024);
        b.iter(|| {
            server.writer().write_all(black_box(&payload)).unwrap();
            out.clear();
            while server.wants_write() {
                server.write_tls(&mut out).unwrap();
            }
            black_box(out.len())
        })
    });
    group.bench_function("encrypt/tlsplice", |b| {
        let mut out = Vec::with_capacity(32 * 1024);
        b.iter(|| {
            out.clear();
            ours.seal(black_box(&payload), &mut out).unwrap();
            black_box(out.len())
        })
    });
    group.bench_function("decrypt/rustls", |b| {
        let mut plain = vec![0u8; payload.len()];
        b.iter_custom(|n| {
            let wire = client_records(&mut client, n);
            let start = Instant::now();
            let mut rd = &wire[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().unwrap();
                while server.reader().read(&mut plain).is_ok_and(|n| n > 0) {}
            }
            start.elapsed()
        })
    });
    group.bench_function("decrypt/tlsplice", |b| {
        let (mut plain, mut control) = (Vec::with_capacity(payload.len()), Vec::new());
        b.iter_custom(|n| {
            let wire = client_records(&mut ours_client, n);
            // Four records per read, as the relay reads.
            let reads: Vec<Vec<u8>> = wire
                .chunks(4 * (payload.len() + 22))
                .map(<[u8]>::to_vec)
                .collect();
            let start = Instant::now();
            for mut chunk in reads {
                plain.clear();
                ours.open(&mut chunk, &mut plain, &mut control).unwrap();
                black_box(plain.len());
            }
            start.elapsed()
        })
    });
    group.finish();
}

fn proxy_v2(c: &mut Criterion) {
    let info = ClientInfo {
        alpn: Some(b"h2"),
        sni: Some("api.example.com"),
        tls_version: Some("TLSv1.3"),
        cipher: Some("TLS13_AES_128_GCM_SHA256"),
        cn: Some("billing-service"),
        cert_presented: true,
        cert_sha256: Some([7; 32]),
        cert_der: None,
        cert_tlv: Some(proxy_protocol::CertTlv::default()),
        identity: Some("billing"),
    };
    let (client, local) = (
        "192.0.2.10:40000".parse().unwrap(),
        "10.0.0.1:8443".parse().unwrap(),
    );
    c.bench_function("proxy_v2_encode", |b| {
        b.iter(|| {
            black_box(proxy_protocol::encode(
                Version::V2,
                client,
                local,
                black_box(&info),
            ))
        })
    });
}

/// Header mode: rewriting a typical request head (spoofed header removed,
/// an RFC 9440 header of a 600-byte certificate inserted) plus a small body.
fn http_head(c: &mut Criterion) {
    let insert = format!("Client-Cert: :{}:\r\n", "A".repeat(800)).into_bytes();
    let body = r#"{"order":1234567890,"items":[1,2,3,4,5,6,7,8,9],"note":"bench"}"#;
    let request = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\nContent-Type: application/json\r\nClient-Cert: :spoof:\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    let mut group = c.benchmark_group("http_head");
    group.throughput(Throughput::Bytes(request.len() as u64));
    group.bench_function("rewrite_request", |b| {
        let names = ["Client-Cert".to_string(), "Client-Cert-Chain".to_string()];
        let mut rewriter = HeadRewriter::new(&names, insert.clone(), DEFAULT_MAX_HEAD);
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            out.clear();
            rewriter.feed(black_box(&request), &mut out).unwrap();
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, handshakes, records, proxy_v2, http_head);
criterion_main!(benches);
