//! The throttle end to end without sockets: tiers, identities, limits,
//! release on close, reload and pacing, with time passed in.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;

use super::*;
use crate::tls::verify::fixtures::{leaf, Ca, LeafSpec};
use crate::tls::verify::{AllowEntry, Allowlist};

fn tier(name: &str, rule: Option<&str>, limits: Limits) -> Tier {
    Tier {
        name: Arc::from(name),
        limits,
        clients: Allowlist::new(
            rule.map(|r| AllowEntry::subject_cn(r).unwrap())
                .into_iter()
                .collect(),
        ),
    }
}

/// A throttle whose only tier, `name`, is the default.
fn only_tier(name: &str, limits: Limits) -> Arc<Throttle> {
    Throttle::new(Tiers::new(vec![tier(name, None, limits)], Some(0)), 64)
}

/// A client certificate with subject CN `c`.
fn cert() -> CertificateDer<'static> {
    leaf(&Ca::root("admit CA"), &LeafSpec::cn("c")).cert
}

fn rate(per_second: u32, burst: u32) -> Limits {
    Limits {
        new_connections: Some(ConnectionRate { per_second, burst }),
        ..Limits::default()
    }
}

fn with_cert<'a>(cert: &'a CertificateDer<'a>, label: &'a str) -> Client<'a> {
    Client {
        end_entity: Some(cert),
        identity: Some(label),
        address: None,
    }
}

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

/// Admissions of `client` at each millisecond in `range`, dropping each.
fn admitted(
    throttle: &Arc<Throttle>,
    client: &Client<'_>,
    t0: Instant,
    range: std::ops::Range<u64>,
) -> usize {
    range
        .filter(|ms| matches!(throttle.admit(client, at(t0, *ms)), Verdict::Admitted(_)))
        .count()
}

#[test]
fn rate_and_burst_per_identity_and_others_unaffected() {
    let ca = Ca::root("admit CA");
    let bronze = leaf(&ca, &LeafSpec::cn("bronze-1")).cert;
    let gold = leaf(&ca, &LeafSpec::cn("gold-1")).cert;
    let throttle = Throttle::new(
        Tiers::new(
            vec![
                tier("bronze", Some("bronze-*"), rate(50, 5)),
                tier("gold", Some("gold-*"), Limits::default()),
            ],
            None,
        ),
        1024,
    );
    let t0 = Instant::now();
    // An attempt every millisecond for 2.01 s: the burst of 5, then one
    // every 20 ms.
    let b = with_cert(&bronze, "cn:bronze-1");
    let n = admitted(&throttle, &b, t0, 0..2010);
    assert_eq!(n, 105);
    // Another identity in the same tier has its own bucket.
    let b2 = with_cert(&bronze, "cn:bronze-2");
    assert_eq!(admitted(&throttle, &b2, t0, 0..5), 5);
    // A tier without limits admits everything.
    let g = with_cert(&gold, "cn:gold-1");
    assert_eq!(admitted(&throttle, &g, t0, 0..2000), 2000);

    let counts = throttle.stats().by_tier();
    assert_eq!(counts["bronze"].admitted, 110);
    assert_eq!(counts["bronze"].refused_rate, 2010 - 105);
    assert_eq!(counts["gold"].admitted, 2000);
}

#[test]
fn refusal_names_tier_and_limit() {
    let cert = cert();
    let throttle = only_tier("free", rate(1, 1));
    let t0 = Instant::now();
    let c = with_cert(&cert, "cn:c");
    let first = throttle.admit(&c, t0);
    assert!(matches!(&first, Verdict::Admitted(a) if a.tier() == "free"));
    match throttle.admit(&c, t0) {
        Verdict::Refused(r) => {
            assert_eq!(r.reason, RefusalReason::Rate);
            assert_eq!(
                r.to_string(),
                "tier free: over 1 new connections/s (burst 1)"
            );
        }
        other => panic!("{other:?}"),
    }
    // Refilled after one second.
    assert!(matches!(
        throttle.admit(&c, at(t0, 1000)),
        Verdict::Admitted(_)
    ));
}

#[test]
fn max_connections_released_when_admission_drops() {
    let cert = cert();
    let limits = Limits {
        max_connections: Some(2),
        ..Limits::default()
    };
    let throttle = only_tier("t", limits);
    let t0 = Instant::now();
    let c = with_cert(&cert, "cn:c");
    let a1 = throttle.admit(&c, t0);
    let a2 = throttle.admit(&c, t0);
    assert!(matches!(a1, Verdict::Admitted(_)));
    assert!(matches!(a2, Verdict::Admitted(_)));
    match throttle.admit(&c, t0) {
        Verdict::Refused(r) => {
            assert_eq!(r.reason, RefusalReason::Concurrency);
            assert_eq!(r.reason.code(), "max_connections");
        }
        other => panic!("{other:?}"),
    }
    // Another identity is counted on its own.
    let other = with_cert(&cert, "cn:other");
    assert!(matches!(throttle.admit(&other, t0), Verdict::Admitted(_)));
    drop(a1);
    assert!(matches!(throttle.admit(&c, t0), Verdict::Admitted(_)));
    assert_eq!(throttle.stats().by_tier()["t"].refused_concurrency, 1);
}

#[test]
fn concurrency_refusal_spends_no_rate_token() {
    let cert = cert();
    let limits = Limits {
        max_connections: Some(1),
        ..rate(1, 2)
    };
    let throttle = only_tier("t", limits);
    let t0 = Instant::now();
    let c = with_cert(&cert, "cn:c");
    let held = throttle.admit(&c, t0);
    for _ in 0..10 {
        assert!(matches!(throttle.admit(&c, t0), Verdict::Refused(_)));
    }
    drop(held);
    // The second burst token is still there.
    assert!(matches!(throttle.admit(&c, t0), Verdict::Admitted(_)));
}

#[test]
fn clients_without_certificate_get_the_default_tier_by_address() {
    let throttle = Throttle::new(
        Tiers::new(
            vec![
                tier("gold", Some("gold"), Limits::default()),
                tier("anon", None, rate(1, 1)),
            ],
            Some(1),
        ),
        64,
    );
    let t0 = Instant::now();
    let ip = |s: &str| Client {
        end_entity: None,
        identity: None,
        address: Some(s.parse::<IpAddr>().unwrap()),
    };
    match throttle.admit(&ip("127.0.0.1"), t0) {
        Verdict::Admitted(a) => assert_eq!(a.tier(), "anon"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        throttle.admit(&ip("127.0.0.1"), t0),
        Verdict::Refused(_)
    ));
    assert!(matches!(
        throttle.admit(&ip("::1"), t0),
        Verdict::Admitted(_)
    ));
}

#[test]
fn no_tier_no_limits() {
    let cert = cert();
    let throttle = Throttle::new(Tiers::new(vec![tier("x", Some("x"), rate(1, 1))], None), 64);
    assert!(throttle.is_active());
    let c = with_cert(&cert, "cn:c");
    assert!(matches!(
        throttle.admit(&c, Instant::now()),
        Verdict::Unthrottled
    ));
    let off = Throttle::new(Tiers::default(), 64);
    assert!(!off.is_active());
    assert!(matches!(
        off.admit(&c, Instant::now()),
        Verdict::Unthrottled
    ));
}

#[test]
fn reload_keeps_buckets_of_a_tier_that_keeps_its_name() {
    let cert = cert();
    let throttle = only_tier("t", rate(1, 3));
    let t0 = Instant::now();
    let c = with_cert(&cert, "cn:c");
    assert_eq!(admitted(&throttle, &c, t0, 0..3), 3);
    // Same name, new limits: the empty bucket stays empty.
    throttle.set_tiers(Tiers::new(vec![tier("t", None, rate(2, 3))], Some(0)));
    assert!(matches!(throttle.admit(&c, t0), Verdict::Refused(_)));
    // The new rate applies: a token every 500 ms.
    assert!(matches!(
        throttle.admit(&c, at(t0, 510)),
        Verdict::Admitted(_)
    ));
    // A renamed tier starts afresh.
    throttle.set_tiers(Tiers::new(vec![tier("t2", None, rate(1, 3))], Some(0)));
    assert_eq!(admitted(&throttle, &c, at(t0, 510), 0..3), 3);
}

#[test]
fn pacing_shares_the_byte_budget_per_direction() {
    let cert = cert();
    let limits = Limits {
        bytes_per_second: Some(100_000),
        ..Limits::default()
    };
    let throttle = only_tier("t", limits);
    let t0 = Instant::now();
    let c = with_cert(&cert, "cn:c");
    let (Verdict::Admitted(a1), Verdict::Admitted(a2)) =
        (throttle.admit(&c, t0), throttle.admit(&c, t0))
    else {
        panic!("both admitted");
    };
    let (p1, p2) = (a1.pacer().unwrap(), a2.pacer().unwrap());
    // One second of burst, then the two connections share the rate.
    assert_eq!(p1.charge(Direction::Up, 100_000, t0), Duration::ZERO);
    assert_eq!(
        p2.charge(Direction::Up, 50_000, t0),
        Duration::from_millis(500)
    );
    // The other direction has its own budget.
    assert_eq!(p2.charge(Direction::Down, 100_000, t0), Duration::ZERO);
    assert_eq!(
        p1.allowance(Direction::Down, 64 * 1024, t0),
        Allowance::Wait(Duration::from_secs_f64(16384.0 / 100_000.0))
    );
    let stats = throttle.stats();
    assert_eq!(stats.pacing_waits.load(Ordering::Relaxed), 2);
    assert_eq!(stats.paced_bytes.load(Ordering::Relaxed), 50_000);
    // A tier without a byte limit has no pacer.
    let unpaced = only_tier("t", rate(5, 5));
    let Verdict::Admitted(a) = unpaced.admit(&c, t0) else {
        panic!("admitted")
    };
    assert!(a.pacer().is_none());
}

#[test]
fn handed_over_verdict_is_taken_once() {
    assert!(take_handed_over().is_none());
    hand_over(Verdict::Unthrottled);
    assert!(matches!(take_handed_over(), Some(Verdict::Unthrottled)));
    assert!(take_handed_over().is_none());
}
