//! The verifier end to end: real certificates from rcgen and full rustls
//! handshakes in memory, checking what the server decides and which alert
//! the client receives.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use rustls::{AlertDescription, CertificateError, Error, SignatureScheme};

use super::fixtures::{at, handshake, leaf, Ca, Leaf, LeafSpec, Outcome, ServerIdentity};
use super::*;

const BOTH: [&[&rustls::SupportedProtocolVersion]; 2] = [&[&TLS13], &[&TLS12]];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

fn cache() -> Arc<VerifyCache> {
    Arc::new(VerifyCache::new(CacheConfig::default()))
}

fn build(settings: &TrustSettings, cache: &Arc<VerifyCache>) -> Arc<TrustVerifier> {
    Arc::new(TrustVerifier::new(settings, provider(), cache.clone(), UnixTime::now()).unwrap())
}

fn chain_of(
    leaf: &Leaf,
    intermediates: &[&Ca],
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let mut chain = vec![leaf.cert.clone()];
    chain.extend(intermediates.iter().map(|ca| ca.cert.clone()));
    (chain, leaf.key())
}

/// One handshake presenting `leaf` (+ intermediates) to `verifier`.
fn connect(
    server: &ServerIdentity,
    verifier: &Arc<TrustVerifier>,
    client: Option<(&Leaf, &[&Ca])>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Outcome {
    let server_config = server.server_config(verifier.clone());
    let client_config =
        server.client_config(client.map(|(leaf, ints)| chain_of(leaf, ints)), versions);
    handshake(&server_config, &client_config)
}

fn refused_with(outcome: &Outcome, error: CertificateError, alert: AlertDescription) {
    assert_eq!(
        outcome.server_error,
        Some(Error::InvalidCertificate(error)),
        "server side"
    );
    assert_eq!(
        outcome.client_got_alert(),
        Some(alert),
        "client side: {:?}",
        outcome.client_error
    );
}

fn now_plus(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(UnixTime::now().as_secs() + secs))
}

#[test]
fn allowlisted_alias_is_admitted_with_its_identity() {
    let server = ServerIdentity::new();
    let root = Ca::root("clients");
    let alice = leaf(&root, &LeafSpec::cn("alice"));
    let mut settings = TrustSettings::new(ClientAuthMode::Required, vec![root.cert.clone()]);
    settings.allowlist =
        Allowlist::new(vec![AllowEntry::alias("alice-laptop", &alice.cert).unwrap()]);
    let verifier = build(&settings, &cache());
    for versions in BOTH {
        let out = connect(&server, &verifier, Some((&alice, &[])), versions);
        assert!(out.ok(), "{out:?}");
        let id = identify(verifier.allowlist(), out.server.peer_certificates()).unwrap();
        assert_eq!(id.label(), "alice-laptop");
        assert_eq!(id.kind(), RuleKind::Alias);
    }
}

#[test]
fn verified_but_unlisted_client_gets_access_denied() {
    let server = ServerIdentity::new();
    let root = Ca::root("clients");
    let alice = leaf(&root, &LeafSpec::cn("alice"));
    let mallory = leaf(&root, &LeafSpec::cn("mallory"));
    let mut settings = TrustSettings::new(ClientAuthMode::Required, vec![root.cert.clone()]);
    settings.allowlist = Allowlist::new(vec![AllowEntry::alias("alice", &alice.cert).unwrap()]);
    let verifier = build(&settings, &cache());
    for versions in BOTH {
        let out = connect(&server, &verifier, Some((&mallory, &[])), versions);
        refused_with(
            &out,
            CertificateError::ApplicationVerificationFailure,
            AlertDescription::AccessDenied,
        );
    }
    // The chain itself verified, so the cache holds it as trusted: the
    // allowlist is applied after the cache, on every handshake.
    let s = verifier.cache().stats();
    assert_eq!((s.misses, s.hits, s.negative_hits), (1, 1, 0));
}

#[test]
fn name_rules_admit_through_an_intermediate() {
    let server = ServerIdentity::new();
    let root = Ca::root("root");
    let issuing = root.intermediate("issuing");
    let svc = leaf(
        &issuing,
        &LeafSpec {
            cn: Some("svc-7".into()),
            dns: vec!["svc-7.internal.example".into()],
            uris: vec!["spiffe://example.org/ns/prod/sa/svc".into()],
            ..LeafSpec::default()
        },
    );
    let fp = Fingerprint::of(&svc.cert).to_string();
    let entries = [
        (
            AllowEntry::fingerprint(&fp).unwrap(),
            format!("fp:{}", &fp[..16]),
        ),
        (AllowEntry::subject_cn("svc-*").unwrap(), "cn:svc-7".into()),
        (
            AllowEntry::dns_san("*.internal.example").unwrap(),
            "dns:svc-7.internal.example".into(),
        ),
        (
            AllowEntry::spiffe_id("spiffe://example.org/ns/prod/sa/*").unwrap(),
            "spiffe://example.org/ns/prod/sa/svc".into(),
        ),
    ];
    for (entry, label) in entries {
        let mut settings = TrustSettings::new(ClientAuthMode::Required, vec![root.cert.clone()]);
        settings.allowlist = Allowlist::new(vec![entry]);
        let verifier = build(&settings, &cache());
        let out = connect(&server, &verifier, Some((&svc, &[&issuing])), &[&TLS13]);
        assert!(out.ok(), "{label}: {out:?}");
        let id = identify(verifier.allowlist(), out.server.peer_certificates()).unwrap();
        assert_eq!(id.label(), label);
    }
}

#[test]
fn unknown_issuer_gets_unknown_ca_and_is_remembered() {
    let server = ServerIdentity::new();
    let trusted = Ca::root("trusted");
    let stranger = leaf(&Ca::root("stranger"), &LeafSpec::cn("x"));
    let settings = TrustSettings::new(ClientAuthMode::Required, vec![trusted.cert.clone()]);
    let verifier = build(&settings, &cache());
    for _ in 0..3 {
        let out = connect(&server, &verifier, Some((&stranger, &[])), &[&TLS13]);
        refused_with(
            &out,
            CertificateError::UnknownIssuer,
            AlertDescription::UnknownCA,
        );
    }
    // One validation; the flood after it is answered from the cache.
    let s = verifier.cache().stats();
    assert_eq!((s.misses, s.negative_hits, s.hits), (1, 2, 0));
}

#[test]
fn revoked_client_is_refused_then_admitted_with_a_new_crl() {
    let server = ServerIdentity::new();
    let root = Ca::root("clients");
    let bob = leaf(
        &root,
        &LeafSpec {
            serial: Some(4242),
            ..LeafSpec::cn("bob")
        },
    );
    let cache = cache();
    let mut settings = TrustSettings::new(ClientAuthMode::Required, vec![root.cert.clone()]);
    settings.crls = vec![Crl::from_der(root.crl(&[1, 4242, 9999], at(3_600))).unwrap()];
    let first = build(&settings, &cache);
    for versions in BOTH {
        let out = connect(&server, &first, Some((&bob, &[])), versions);
        refused_with(
            &out,
            CertificateError::Revoked,
            AlertDescription::CertificateRevoked,
        );
    }

    // Reload: a CRL without bob. The new verifier has a new generation, so
    // the remembered refusal does not apply.
    settings.crls = vec![Crl::from_der(root.crl(&[1, 9999], at(3_600))).unwrap()];
    let second = build(&settings, &cache);
    assert_ne!(first.generation(), second.generation());
    let out = connect(&server, &second, Some((&bob, &[])), &[&TLS13]);
    assert!(out.ok(), "{out:?}");
    // The old verifier still refuses from the cache.
    let out = connect(&server, &first, Some((&bob, &[])), &[&TLS13]);
    refused_with(
        &out,
        CertificateError::Revoked,
        AlertDescription::CertificateRevoked,
    );
}

#[test]
fn revoked_intermediate_depends_on_revocation_scope() {
    let server = ServerIdentity::new();
    let root = Ca::root("root");
    let issuing = root.intermediate_with_serial("issuing", Some(77));
    let carol = leaf(&issuing, &LeafSpec::cn("carol"));
    let mut settings = TrustSettings::new(ClientAuthMode::Required, vec![root.cert.clone()]);
    // The root revokes the intermediate; no CRL covers the leaf, and an
    // unknown status is allowed by default.
    settings.crls = vec![Crl::from_der(root.crl(&[77], at(3_600))).unwrap()];
    let full = build(&settings, &cache());
    let out = connect(&server, &full, Some((&carol, &[&issuing])), &[&TLS13]);
    refused_with(
        &out,
        CertificateError::Revoked,
        AlertDescription::CertificateRevoked,
    );

    settings.revocation_scope = RevocationScope::EndEntity;
    let end_entity_only = build(&settings, &cache());
    let out = connect(
        &server,
        &end_entity_only,
        Some((&carol, &[&issuing])),
        &[&TLS13],
    );
    assert!(out.ok(), "{out:?}");
}

#[test]
fn unknown_revocation_status_is_allowed_unless_denied() {
    let server = ServerIdentity::new();
    let root = Ca::root("root");
    let dave = leaf(&root, &LeafSpec::cn("dave"));
    let mut settings = TrustSettings::new(ClientAuthMode::Required, vec![root.cert.clone()]);
    // A CRL from another issuer says nothing about dave.
    settings.crls = vec![Crl::from_der(Ca::root("elsewhere").crl(&[1], at(3_600))).unwrap()];
    let lenient = build(&settings, &cache());
    assert!(connect(&server, &lenient, Some((&dave, &[])), &[&TLS13]).ok());

    settings.deny_unknown_revocation = true;
    let strict = build(&settings, &cache());
    let out = connect(&server, &strict, Some((&dave, &[])), &[&TLS13]);
    refused_with(
        &out,
        CertificateError::UnknownRevocationStatus,
        AlertDescription::UnknownCA,
    );
}

#[test]
fn second_handshake_hits_the_cache_and_other_intermediates_do_not() {
    let server = ServerIdentity::new();
    let root = Ca::root("root");
    let issuing = root.intermediate("issuing");
    let other = root.intermediate("issuing"); // same name, different key
    let erin = leaf(&issuing, &LeafSpec::cn("erin"));
    let settings = TrustSettings::new(ClientAuthMode::Required, vec![root.cert.clone()]);
    let verifier = build(&settings, &cache());

    assert!(connect(&server, &verifier, Some((&erin, &[&issuing])), &[&TLS13]).ok());
    assert!(connect(&server, &verifier, Some((&erin, &[&issuing])), &[&TLS12]).ok());
    let s = verifier.cache().stats();
    assert_eq!((s.misses, s.hits), (1, 1));

    // The same leaf with an intermediate that did not sign it is a new
    // key, validated afresh, and refused.
    let out = connect(&server, &verifier, Some((&erin, &[&other])), &[&TLS13]);
    assert!(
        matches!(
            out.server_error,
            Some(Error::InvalidCertificate(
                CertificateError::BadSignature | CertificateError::UnknownIssuer
            ))
        ),
        "{out:?}"
    );
    let s = verifier.cache().stats();
    assert_eq!((s.misses, s.hits), (2, 1));
}

#[test]
fn trusted_verdict_ends_when_the_certificate_expires() {
    let root = Ca::root("root");
    let expires = at(600);
    let short = leaf(
        &root,
        &LeafSpec {
            not_after: Some(expires),
            ..LeafSpec::cn("short")
        },
    );
    let settings = TrustSettings::new(ClientAuthMode::Required, vec![root.cert.clone()]);
    // A TTL longer than the certificate's life, so only notAfter ends it.
    let cache = Arc::new(VerifyCache::new(CacheConfig {
        ttl: Duration::from_secs(3_600),
        ..CacheConfig::default()
    }));
    let verifier = build(&settings, &cache);
    let verify = |now: UnixTime| verifier.verify_client_cert(&short.cert, &[], now).map(drop);

    assert_eq!(verify(now_plus(0)), Ok(()));
    assert_eq!(verify(now_plus(590)), Ok(()));
    assert_eq!(verifier.cache().stats().hits, 1);
    // Past notAfter, well inside the TTL: the cache must not answer.
    let late = now_plus(601);
    assert!(matches!(
        verify(late),
        Err(Error::InvalidCertificate(
            CertificateError::ExpiredContext { .. }
        ))
    ));
    let s = verifier.cache().stats();
    assert_eq!((s.hits, s.misses), (1, 2));
}

#[test]
fn trusted_verdict_ends_at_the_crl_next_update() {
    let root = Ca::root("root");
    let frank = leaf(&root, &LeafSpec::cn("frank"));
    let mut settings = TrustSettings::new(ClientAuthMode::Required, vec![root.cert.clone()]);
    settings.crls = vec![Crl::from_der(root.crl(&[], at(120))).unwrap()];
    let verifier = build(&settings, &cache());
    let verify = |now: UnixTime| verifier.verify_client_cert(&frank.cert, &[], now).map(drop);
    assert_eq!(verify(now_plus(0)), Ok(()));
    assert_eq!(verify(now_plus(60)), Ok(()));
    // Past nextUpdate: validated again (and, expiry not being enforced,
    // still admitted).
    assert_eq!(verify(now_plus(180)), Ok(()));
    let s = verifier.cache().stats();
    assert_eq!((s.hits, s.misses), (1, 2));
}

#[test]
fn refusal_is_forgotten_after_the_negative_ttl() {
    let trusted = Ca::root("trusted");
    let stranger = leaf(&Ca::root("stranger"), &LeafSpec::cn("s"));
    let cache = Arc::new(VerifyCache::new(CacheConfig {
        negative_ttl: Duration::from_secs(10),
        ..CacheConfig::default()
    }));
    let verifier = build(
        &TrustSettings::new(ClientAuthMode::Required, vec![trusted.cert.clone()]),
        &cache,
    );
    for offset in [0, 5, 9, 10] {
        let r = verifier.verify_client_cert(&stranger.cert, &[], now_plus(offset));
        assert_eq!(
            r.map(drop),
            Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
        );
    }
    let s = cache.stats();
    assert_eq!((s.misses, s.negative_hits), (2, 2));
}

#[test]
fn garbage_certificates_are_not_remembered() {
    let root = Ca::root("root");
    let verifier = build(
        &TrustSettings::new(ClientAuthMode::Required, vec![root.cert.clone()]),
        &cache(),
    );
    let junk = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
    for _ in 0..3 {
        assert_eq!(
            verifier
                .verify_client_cert(&junk, &[], UnixTime::now())
                .map(drop),
            Err(Error::InvalidCertificate(CertificateError::BadEncoding))
        );
    }
    assert!(verifier.cache().is_empty());
}

/// Presents a certificate with someone else's key.
#[derive(Debug)]
struct WrongKey(Arc<CertifiedKey>);

impl ResolvesClientCert for WrongKey {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[test]
fn proof_of_possession_is_checked_even_on_a_cache_hit() {
    let server = ServerIdentity::new();
    let root = Ca::root("root");
    let grace = leaf(&root, &LeafSpec::cn("grace"));
    let thief = leaf(&root, &LeafSpec::cn("thief"));
    let verifier = build(
        &TrustSettings::new(ClientAuthMode::Required, vec![root.cert.clone()]),
        &cache(),
    );
    // Grace connects: her chain is now cached as trusted.
    assert!(connect(&server, &verifier, Some((&grace, &[])), &[&TLS13]).ok());

    let thief_key = provider()
        .key_provider
        .load_private_key(thief.key())
        .unwrap();
    let stolen = Arc::new(CertifiedKey::new(vec![grace.cert.clone()], thief_key));
    let server_config = server.server_config(verifier.clone());
    for versions in BOTH {
        let client_config = Arc::new(
            server
                .client_builder(versions)
                .with_client_cert_resolver(Arc::new(WrongKey(stolen.clone()))),
        );
        let out = handshake(&server_config, &client_config);
        refused_with(
            &out,
            CertificateError::BadSignature,
            AlertDescription::DecryptError,
        );
    }
    // The chain verdict came from the cache both times.
    assert_eq!(verifier.cache().stats().hits, 2);
}

#[test]
fn too_many_cas_send_no_hints_and_still_handshake() {
    let server = ServerIdentity::new();
    let roots: Vec<Ca> = (0..150)
        .map(|i| Ca::root(&format!("client CA {i:03}")))
        .collect();
    let henry = leaf(&roots[149], &LeafSpec::cn("henry"));
    let settings = TrustSettings::new(
        ClientAuthMode::Required,
        roots.iter().map(|ca| ca.cert.clone()).collect(),
    );
    let verifier = build(&settings, &cache());
    assert!(verifier.root_hint_subjects().is_empty());
    assert!(matches!(
        verifier.warnings(),
        [TrustWarning::HintsOmitted {
            cas: 150,
            max_cas: 100,
            ..
        }]
    ));
    println!("{}", verifier.warnings()[0]);
    for versions in BOTH {
        let out = connect(&server, &verifier, Some((&henry, &[])), versions);
        assert!(out.ok(), "{out:?}");
    }

    // Under the limits, every CA is named.
    let few = TrustSettings::new(
        ClientAuthMode::Required,
        roots[..3].iter().map(|ca| ca.cert.clone()).collect(),
    );
    let verifier = build(&few, &cache());
    assert_eq!(verifier.root_hint_subjects().len(), 3);
    assert!(verifier.warnings().is_empty());

    // The byte limit applies on its own.
    let mut tight = few.clone();
    tight.hint_limits.max_bytes = 40;
    let verifier = build(&tight, &cache());
    assert!(verifier.root_hint_subjects().is_empty());
    assert_eq!(verifier.warnings().len(), 1);
}

#[test]
fn optional_and_required_modes() {
    let server = ServerIdentity::new();
    let root = Ca::root("root");
    let ivy = leaf(&root, &LeafSpec::cn("ivy"));

    let mut settings = TrustSettings::new(ClientAuthMode::Optional, vec![root.cert.clone()]);
    settings.allowlist = Allowlist::new(vec![AllowEntry::subject_cn("ivy").unwrap()]);
    let optional = build(&settings, &cache());
    assert!(!optional.client_auth_mandatory());
    let anonymous = connect(&server, &optional, None, &[&TLS13]);
    assert!(anonymous.ok(), "{anonymous:?}");
    assert_eq!(
        identify(optional.allowlist(), anonymous.server.peer_certificates()),
        None
    );
    let named = connect(&server, &optional, Some((&ivy, &[])), &[&TLS13]);
    assert_eq!(
        identify(optional.allowlist(), named.server.peer_certificates())
            .unwrap()
            .label(),
        "cn:ivy"
    );
    // A presented certificate must still pass the allowlist.
    let other = leaf(&root, &LeafSpec::cn("jack"));
    let out = connect(&server, &optional, Some((&other, &[])), &[&TLS13]);
    refused_with(
        &out,
        CertificateError::ApplicationVerificationFailure,
        AlertDescription::AccessDenied,
    );

    settings.mode = ClientAuthMode::Required;
    let required = build(&settings, &cache());
    assert!(required.client_auth_mandatory());
    let out = connect(&server, &required, None, &[&TLS13]);
    assert_eq!(out.server_error, Some(Error::NoCertificatesPresented));
    assert_eq!(
        out.client_got_alert(),
        Some(AlertDescription::CertificateRequired)
    );
}

#[test]
fn build_errors_and_warnings() {
    let settings = TrustSettings::new(ClientAuthMode::Required, vec![]);
    let e = TrustVerifier::new(&settings, provider(), cache(), UnixTime::now()).unwrap_err();
    assert!(matches!(e, TrustError::NoRoots), "{e}");

    let root = Ca::root("root");
    let settings = TrustSettings::new(
        ClientAuthMode::Required,
        vec![root.cert.clone(), CertificateDer::from(vec![1, 2, 3])],
    );
    let e = TrustVerifier::new(&settings, provider(), cache(), UnixTime::now()).unwrap_err();
    assert!(matches!(e, TrustError::TrustAnchor { index: 2, .. }), "{e}");
    assert!(e
        .to_string()
        .starts_with("client CA certificate #2 cannot be used as a trust anchor"));

    let mut settings = TrustSettings::new(ClientAuthMode::Required, vec![root.cert.clone()]);
    settings.crls = vec![Crl::from_der(root.crl(&[], at(100))).unwrap()];
    let verifier = TrustVerifier::new(&settings, provider(), cache(), now_plus(160)).unwrap();
    assert!(
        matches!(
            verifier.warnings(),
            [TrustWarning::StaleCrl {
                index: 1,
                seconds_ago: 59..=61
            }]
        ),
        "{:?}",
        verifier.warnings()
    );
}

#[test]
fn throttled_client_gets_access_denied_and_the_verdict_is_handed_over() {
    use crate::admit::{self, ConnectionRate, Limits, Throttle, Tier, Tiers, Verdict};
    let server = ServerIdentity::new();
    let root = Ca::root("clients");
    let bob = leaf(&root, &LeafSpec::cn("bob"));
    let tier = Tier {
        name: Arc::from("one-shot"),
        limits: Limits {
            new_connections: Some(ConnectionRate {
                per_second: 1,
                burst: 1,
            }),
            ..Limits::default()
        },
        clients: Allowlist::new(vec![AllowEntry::subject_cn("*").unwrap()]),
    };
    let mut settings = TrustSettings::new(ClientAuthMode::Required, vec![root.cert.clone()]);
    settings.throttle = Some(Throttle::new(Tiers::new(vec![tier], None), 64));
    let verifier = build(&settings, &cache());
    for (i, versions) in BOTH.iter().enumerate() {
        // A client per version: each has one connection to spend.
        let alice = leaf(&root, &LeafSpec::cn(&format!("alice-{i}")));
        let _ = admit::take_handed_over();
        let first = connect(&server, &verifier, Some((&alice, &[])), versions);
        assert!(first.ok(), "{first:?}");
        match admit::take_handed_over() {
            Some(Verdict::Admitted(a)) => assert_eq!(a.tier(), "one-shot"),
            other => panic!("{other:?}"),
        }
        let again = connect(&server, &verifier, Some((&alice, &[])), versions);
        refused_with(
            &again,
            CertificateError::ApplicationVerificationFailure,
            AlertDescription::AccessDenied,
        );
        match admit::take_handed_over() {
            Some(Verdict::Refused(r)) => assert_eq!(&*r.tier, "one-shot"),
            other => panic!("{other:?}"),
        }
    }
    // Bob has his own bucket.
    let out = connect(&server, &verifier, Some((&bob, &[])), &[&TLS13]);
    assert!(out.ok(), "{out:?}");
}
