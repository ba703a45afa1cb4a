//! The record layer against rustls' own, for every suite and version we
//! negotiate: rustls seals, we open; we seal, rustls opens.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{self, cipher_suite};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, RootCertStore, ServerConfig,
    ServerConnection, SupportedCipherSuite, SupportedProtocolVersion,
};

use super::*;
use crate::noise::Noise;
use crate::tls::records::TlsOut;
use crate::tls::unbuffered::{drive, Progress};
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;

fn every_suite() -> Vec<(&'static SupportedProtocolVersion, SupportedCipherSuite)> {
    vec![
        (
            &rustls::version::TLS13,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            &rustls::version::TLS13,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
        ),
        (
            &rustls::version::TLS13,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (
            &rustls::version::TLS12,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            &rustls::version::TLS12,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            &rustls::version::TLS12,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ]
}

fn configs(
    version: &'static SupportedProtocolVersion,
    suite: SupportedCipherSuite,
) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["traffic.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_der = CertificateDer::from(cert.der().to_vec());
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites = vec![suite];
    let provider = Arc::new(provider);
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    server.enable_secret_extraction = true;
    let mut roots = RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.enable_secret_extraction = true;
    (Arc::new(client), Arc::new(server))
}

fn name() -> ServerName<'static> {
    ServerName::try_from("traffic.test").unwrap()
}

/// Runs the handshake between our unbuffered side and a buffered rustls
/// peer, then hands our side to the record layer.
fn handshake<C, P>(mut ours: C, peer: &mut ConnectionCommon<P>) -> Traffic<C::Data>
where
    C: Unbuffered,
    KernelConnection<C::Data>: PostHandshake,
{
    let (mut incoming, mut out, mut plain) = (Vec::new(), TlsOut::with_capacity(0), Vec::new());
    for _ in 0..20 {
        while peer.wants_write() {
            peer.write_tls(&mut incoming).unwrap();
        }
        loop {
            let progress = drive(&mut ours, &mut incoming, &mut out, &mut plain).unwrap();
            let mut rd = out.pending();
            while !rd.is_empty() {
                peer.read_tls(&mut rd).unwrap();
                peer.process_new_packets().unwrap();
            }
            out.take();
            match progress {
                Progress::Transmit => continue,
                Progress::Complete if !peer.is_handshaking() && !peer.wants_write() => {
                    assert!(plain.is_empty() && incoming.is_empty());
                    return Traffic::from_rustls(ours).unwrap();
                }
                _ => break,
            }
        }
    }
    panic!("handshake did not finish");
}

/// A rustls client and our server-side layer, past the handshake.
fn pair(
    version: &'static SupportedProtocolVersion,
    suite: SupportedCipherSuite,
) -> (ClientConnection, Traffic<ServerConnectionData>) {
    let (client, server) = configs(version, suite);
    let mut client = ClientConnection::new(client, name()).unwrap();
    let ours = handshake(
        UnbufferedServerConnection::new(server).unwrap(),
        &mut client,
    );
    (client, ours)
}

/// What the rustls client sends for `plain`, as wire bytes.
fn client_sends(client: &mut ClientConnection, plain: &[u8]) -> Vec<u8> {
    client.writer().write_all(plain).unwrap();
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    wire
}

/// Feeds `wire` to the rustls client; returns the plaintext it reads.
fn client_receives(client: &mut ClientConnection, wire: &[u8]) -> Result<Vec<u8>, rustls::Error> {
    let mut plain = Vec::new();
    // A record at a time: rustls holds at most 16 KiB of unread plaintext.
    for record in wire.chunks(MAX_PLAINTEXT) {
        let mut rd = record;
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets()?;
            match client.reader().read_to_end(&mut plain) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    Ok(plain)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn opens_what_rustls_seals_in_any_split() {
    for (version, suite) in every_suite() {
        let (mut client, mut ours) = pair(version, suite);
        let sent = pattern(40_000);
        let wire = client_sends(&mut client, &sent);
        // Arrives in uneven pieces: records are opened only once complete.
        let (mut incoming, mut plain, mut control) = (Vec::new(), Vec::new(), Vec::new());
        for piece in wire.chunks(4093) {
            incoming.extend_from_slice(piece);
            let closed = ours.open(&mut incoming, &mut plain, &mut control).unwrap();
            assert!(!closed);
            assert!(incoming.len() < MAX_PLAINTEXT + 256 + HEADER, "{suite:?}");
        }
        assert!(incoming.is_empty());
        assert!(control.is_empty());
        assert!(plain == sent, "{version:?} {suite:?}");
    }
}

#[test]
fn rustls_opens_what_we_seal() {
    for (version, suite) in every_suite() {
        let (mut client, mut ours) = pair(version, suite);
        for len in [1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 64 * 1024] {
            let sent = pattern(len);
            let mut out = Vec::new();
            ours.seal(&sent, &mut out).unwrap();
            let records = len.div_ceil(MAX_PLAINTEXT);
            assert!(out.len() <= len + records * RECORD_OVERHEAD);
            let got = client_receives(&mut client, &out).unwrap();
            assert!(got == sent, "{version:?} {suite:?} {len}");
        }
    }
}

#[test]
fn close_notify_both_ways() {
    for (version, suite) in every_suite() {
        let (mut client, mut ours) = pair(version, suite);
        client.writer().write_all(b"last words").unwrap();
        client.send_close_notify();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let (mut plain, mut control) = (Vec::new(), Vec::new());
        assert!(ours.open(&mut wire, &mut plain, &mut control).unwrap());
        assert_eq!(plain, b"last words");
        assert!(ours.peer_closed());

        // The room the relay reserves when it has no data, only the close.
        let mut out = vec![0; ours.sealed_len(0)];
        let n = ours.close_notify_into(&mut out).unwrap();
        let mut rd = &out[..n];
        client.read_tls(&mut rd).unwrap();
        let state = client.process_new_packets().unwrap();
        assert!(state.peer_has_closed(), "{version:?} {suite:?}");
    }
}

#[test]
fn key_update_requested_by_the_peer_is_answered() {
    for (version, suite) in every_suite()
        .into_iter()
        .filter(|(v, _)| v.version == ProtocolVersion::TLSv1_3)
    {
        let (mut client, mut ours) = pair(version, suite);
        client.refresh_traffic_keys().unwrap();
        let mut wire = client_sends(&mut client, b"under the new key");
        let (mut plain, mut control) = (Vec::new(), Vec::new());
        ours.open(&mut wire, &mut plain, &mut control).unwrap();
        assert_eq!(plain, b"under the new key");
        assert_eq!(ours.rx.seq, 1, "rx re-keyed after the KeyUpdate");
        assert!(!control.is_empty(), "our KeyUpdate answer is owed");
        assert_eq!(ours.tx.seq, 0, "tx re-keyed after the answer");
        // The answer first, then data under our new key.
        ours.seal(b"answered", &mut control).unwrap();
        assert_eq!(client_receives(&mut client, &control).unwrap(), b"answered");
        // And the client's next records still open.
        let mut wire = client_sends(&mut client, b"again");
        plain.clear();
        ours.open(&mut wire, &mut plain, &mut Vec::new()).unwrap();
        assert_eq!(plain, b"again");
    }
}

#[test]
fn re_keys_before_the_confidentiality_limit() {
    for (version, suite) in every_suite() {
        let (mut client, mut ours) = pair(version, suite);
        // Three more records under this key, then a KeyUpdate.
        ours.limit = ours.tx.seq + 3;
        let sent = pattern(5 * MAX_PLAINTEXT);
        let mut out = Vec::new();
        let sealed = ours.seal(&sent, &mut out);
        if version.version == ProtocolVersion::TLSv1_3 {
            sealed.unwrap();
            assert_eq!(ours.tx.seq, 2, "two records under the next key");
            assert!(client_receives(&mut client, &out).unwrap() == sent);
        } else {
            assert!(matches!(sealed, Err(TrafficError::Exhausted)));
        }
    }
}

#[test]
fn a_tampered_record_fails_with_bad_record_mac_and_the_alert_reaches_the_peer() {
    for (version, suite) in every_suite() {
        let (mut client, mut ours) = pair(version, suite);
        let mut wire = client_sends(&mut client, b"intact?");
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let (mut plain, mut control) = (Vec::new(), Vec::new());
        let e = ours.open(&mut wire, &mut plain, &mut control).unwrap_err();
        assert!(matches!(e, TrafficError::BadRecordMac), "{e}");
        assert!(plain.is_empty());
        let seen = client_receives(&mut client, &control).unwrap_err();
        assert_eq!(
            seen,
            rustls::Error::AlertReceived(AlertDescription::BadRecordMac),
            "{version:?} {suite:?}"
        );
    }
}

#[test]
fn malformed_and_unexpected_records_are_refused_with_their_alerts() {
    let (_, mut ours) = pair(&rustls::version::TLS13, every_suite()[0].1);
    let cases: [(&[u8], AlertDescription); 4] = [
        (
            &[22, 3, 3, 0, 4, 1, 0, 0, 0],
            AlertDescription::UnexpectedMessage,
        ),
        (&[20, 3, 3, 0, 1, 1], AlertDescription::UnexpectedMessage),
        (&[23, 2, 0, 0, 1, 0], AlertDescription::DecodeError),
        (&[23, 3, 3, 0x41, 0x01], AlertDescription::RecordOverflow),
    ];
    for (record, alert) in cases {
        let mut incoming = record.to_vec();
        let e = ours
            .open(&mut incoming, &mut Vec::new(), &mut Vec::new())
            .unwrap_err();
        assert_eq!(e.alert(), Some(alert), "{record:?}: {e}");
    }
    // A header alone is not yet a record.
    let mut incoming = vec![23, 3, 3, 0x40];
    assert!(!ours
        .open(&mut incoming, &mut Vec::new(), &mut Vec::new())
        .unwrap());
    assert_eq!(incoming.len(), 4);
}

#[test]
fn a_peer_alert_ends_the_session_without_an_answer() {
    for (version, suite) in every_suite() {
        let (mut client, mut ours) = pair(version, suite);
        // rustls sends a fatal alert when it fails; a record it cannot open
        // is the simplest way to make it.
        let mut bad = Vec::new();
        ours.seal(b"x", &mut bad).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        client_receives(&mut client, &bad).unwrap_err();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut control = Vec::new();
        let e = ours
            .open(&mut wire, &mut Vec::new(), &mut control)
            .unwrap_err();
        assert!(
            matches!(e, TrafficError::PeerAlert(AlertDescription::BadRecordMac)),
            "{version:?} {suite:?}: {e}"
        );
        assert!(control.is_empty());
    }
}

#[test]
fn client_side_takes_data_and_secrets_continue_into_the_kernel_layout() {
    for (version, suite) in every_suite() {
        let (client, server) = configs(version, suite);
        let mut server = ServerConnection::new(server).unwrap();
        let client = UnbufferedClientConnection::new(client, name()).unwrap();
        let mut ours = handshake(client, &mut server);
        server.writer().write_all(b"from the backend").unwrap();
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        let mut plain = Vec::new();
        let (rx, tx) = (ours.rx.seq, ours.tx.seq);
        ours.open(&mut wire, &mut plain, &mut Vec::new()).unwrap();
        assert_eq!(plain, b"from the backend");
        let (secrets, _) = ours.into_secrets();
        assert_eq!(secrets.rx.0, rx + 1, "{version:?} {suite:?}");
        assert_eq!(secrets.tx.0, tx);
    }
}

#[test]
fn nothing_a_peer_sends_makes_it_panic() {
    let mut noise = Noise(0x7153_9a2c_0bd1_e6f3);
    for (version, suite) in every_suite() {
        let (mut client, mut ours) = pair(version, suite);
        let valid = client_sends(&mut client, &pattern(40_000));
        for case in 0..400 {
            let mut wire = if case % 4 == 3 {
                // Headers that look like records, bodies of noise.
                let mut w = Vec::new();
                for _ in 0..1 + noise.below(4) {
                    let len = noise.below(MAX_PLAINTEXT + 400);
                    w.extend_from_slice(&[20 + noise.below(5) as u8, 3, noise.below(5) as u8]);
                    w.extend_from_slice(&(len as u16).to_be_bytes());
                    w.extend((0..len).map(|_| noise.next() as u8));
                }
                w
            } else {
                // Valid records with a few bytes changed, or cut short.
                let mut w = valid.clone();
                for _ in 0..1 + noise.below(3) {
                    let at = noise.below(w.len());
                    w[at] = noise.next() as u8;
                }
                w.truncate(noise.below(w.len() + 1));
                w
            };
            // Arrives in pieces of any size, as reads deliver it.
            let (mut incoming, mut plain, mut control) = (Vec::new(), Vec::new(), Vec::new());
            while !wire.is_empty() {
                let n = 1 + noise.below(wire.len().min(20_000));
                incoming.extend(wire.drain(..n));
                if ours.open(&mut incoming, &mut plain, &mut control).is_err() {
                    break;
                }
            }
        }
        // Sealing still works after all of it.
        let mut out = Vec::new();
        ours.seal(b"still here", &mut out).unwrap();
        assert!(!out.is_empty(), "{version:?} {suite:?}");
    }
}

/// Both ends in our record layer: ours (server) and a peer whose sealing
/// the test controls fully, inner content type included.
fn both_ours(
    version: &'static SupportedProtocolVersion,
    suite: SupportedCipherSuite,
) -> (Traffic<ClientConnectionData>, Traffic<ServerConnectionData>) {
    let (client_cfg, server_cfg) = configs(version, suite);
    let mut client = UnbufferedClientConnection::new(client_cfg, name()).unwrap();
    let mut server = UnbufferedServerConnection::new(server_cfg).unwrap();
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let (mut out, mut plain) = (TlsOut::with_capacity(0), Vec::new());
    let (mut client_done, mut server_done) = (false, false);
    for _ in 0..20 {
        let c = drive(&mut client, &mut to_client, &mut out, &mut plain).unwrap();
        to_server.extend_from_slice(out.pending());
        out.take();
        let s = drive(&mut server, &mut to_server, &mut out, &mut plain).unwrap();
        to_client.extend_from_slice(out.pending());
        out.take();
        client_done |= matches!(c, Progress::Complete);
        server_done |= matches!(s, Progress::Complete);
        if client_done && server_done && to_client.is_empty() && to_server.is_empty() {
            return (
                Traffic::from_rustls(client).unwrap(),
                Traffic::from_rustls(server).unwrap(),
            );
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn nothing_inside_a_sealed_record_makes_it_panic() {
    let mut noise = Noise(0x0dd5_eed5_1234_5678);
    for (version, suite) in every_suite() {
        // Both outcomes must occur, or the cases miss half the code.
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..60 {
            let (mut peer, mut ours) = both_ours(version, suite);
            let mut wire = vec![0; 4 * (MAX_PLAINTEXT + RECORD_OVERHEAD)];
            let mut at = 0;
            for _ in 0..1 + noise.below(4) {
                // Any inner type, and content shaped like what each type
                // carries: alerts, handshake headers, KeyUpdate values.
                let kind = [20, 21, 22, 23, 23, 23, 23, 23, 24, 0, 255][noise.below(11)];
                let len = [0, 1, 2, 3, 4, 5, 6, 100, MAX_PLAINTEXT][noise.below(9)];
                let mut payload: Vec<u8> = (0..len).map(|_| noise.next() as u8).collect();
                if len >= 4 && noise.below(2) == 0 {
                    payload[0] =
                        [HANDSHAKE_KEY_UPDATE, HANDSHAKE_NEW_SESSION_TICKET][noise.below(2)];
                    payload[1..4].copy_from_slice(&[0, 0, noise.below(4) as u8]);
                }
                at += peer.seal_one(kind, &payload, &mut wire[at..]);
            }
            wire.truncate(at);
            let (mut plain, mut control) = (Vec::new(), Vec::new());
            match ours.open(&mut wire, &mut plain, &mut control) {
                Ok(_) => accepted += 1,
                Err(e) => {
                    assert!(!matches!(e, TrafficError::BadRecordMac), "{e}");
                    refused += 1;
                    // Every refusal but the peer's own alert answers with one.
                    assert_eq!(
                        control.is_empty(),
                        matches!(e, TrafficError::PeerAlert(_)),
                        "{e}"
                    );
                }
            }
            let mut out = Vec::new();
            let _ = ours.seal(b"after", &mut out);
        }
        assert!(
            accepted > 0 && refused > 0,
            "{version:?} {suite:?}: {accepted} {refused}"
        );
    }
}
