//! Tiers: named limits, and which clients each one applies to.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use super::bucket::Rate;
use crate::tls::verify::Allowlist;

/// Smallest byte bucket: one full TLS record, so a paced transfer can
/// always make progress in record-sized pieces.
pub const MIN_BYTE_BURST: u64 = 16 * 1024;

/// The limits of one tier; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// New connections a second per client, with the burst allowed.
    pub new_connections: Option<ConnectionRate>,
    /// Connections open at once per client, across all workers.
    pub max_connections: Option<u32>,
    /// Plaintext bytes a second per client, in each direction, shared by
    /// all of its connections.
    pub bytes_per_second: Option<u64>,
}

/// `new_connections_per_second` and its `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionRate {
    /// Sustained rate; at least 1.
    pub per_second: u32,
    /// Connections a client may open at once after being quiet; at least 1.
    pub burst: u32,
}

impl Limits {
    /// The new-connection bucket's rate.
    pub(crate) fn connection_rate(&self) -> Option<Rate> {
        self.new_connections.map(|r| Rate {
            per_second: f64::from(r.per_second),
            capacity: f64::from(r.burst),
        })
    }

    /// The byte buckets' rate: one second's worth of burst, at least one
    /// record.
    pub(crate) fn byte_rate(&self) -> Option<Rate> {
        self.bytes_per_second.map(|r| Rate {
            per_second: r as f64,
            capacity: r.max(MIN_BYTE_BURST) as f64,
        })
    }
}

/// One named tier and the rules assigning clients to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Name in logs and metrics.
    pub name: Arc<str>,
    /// What it allows.
    pub limits: Limits,
    /// Which client certificates it applies to, with the allowlist's rule
    /// syntax and matcher; empty matches no certificate (a tier only
    /// reached as the default).
    pub clients: Allowlist,
}

/// Every configured tier, in order, and the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tiers {
    tiers: Vec<Arc<Tier>>,
    default: Option<usize>,
}

impl Tiers {
    /// Tiers tried in order; `default` (an index into `tiers`) is the tier
    /// of clients no rule matches and of clients without a certificate.
    /// Without one, those clients are not throttled.
    pub fn new(tiers: Vec<Tier>, default: Option<usize>) -> Self {
        Tiers {
            default: default.filter(|i| *i < tiers.len()),
            tiers: tiers.into_iter().map(Arc::new).collect(),
        }
    }

    /// Whether any tier is configured (no tiers: throttling is off).
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// The tiers, in order.
    pub fn tiers(&self) -> &[Arc<Tier>] {
        &self.tiers
    }

    /// The default tier.
    pub fn default_tier(&self) -> Option<&Arc<Tier>> {
        self.default.map(|i| &self.tiers[i])
    }

    /// The tier of a client: the first whose rules match its verified
    /// end-entity certificate, else the default.
    pub fn assign(&self, end_entity: Option<&CertificateDer<'_>>) -> Option<&Arc<Tier>> {
        end_entity
            .and_then(|cert| {
                self.tiers
                    .iter()
                    .find(|t| !t.clients.is_empty() && t.clients.admits(cert))
            })
            .or_else(|| self.default_tier())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::verify::fixtures::{leaf, Ca, LeafSpec};
    use crate::tls::verify::AllowEntry;

    fn tier(name: &str, rules: Vec<AllowEntry>) -> Tier {
        Tier {
            name: Arc::from(name),
            limits: Limits::default(),
            clients: Allowlist::new(rules),
        }
    }

    #[test]
    fn first_matching_tier_wins_then_default() {
        let ca = Ca::root("tier CA");
        let gold = leaf(&ca, &LeafSpec::cn("gold-client")).cert;
        let both = leaf(&ca, &LeafSpec::cn("gold-and-batch")).cert;
        let other = leaf(&ca, &LeafSpec::cn("someone")).cert;
        let tiers = Tiers::new(
            vec![
                tier("gold", vec![AllowEntry::subject_cn("gold-*").unwrap()]),
                tier("batch", vec![AllowEntry::subject_cn("*batch").unwrap()]),
                tier("free", vec![]),
            ],
            Some(2),
        );
        let name = |c: Option<&CertificateDer<'_>>| tiers.assign(c).map(|t| t.name.to_string());
        assert_eq!(name(Some(&gold)).as_deref(), Some("gold"));
        assert_eq!(name(Some(&both)).as_deref(), Some("gold"));
        assert_eq!(name(Some(&other)).as_deref(), Some("free"));
        assert_eq!(name(None).as_deref(), Some("free"));
    }

    #[test]
    fn without_default_unmatched_clients_have_no_tier() {
        let ca = Ca::root("tier CA");
        let other = leaf(&ca, &LeafSpec::cn("someone")).cert;
        let tiers = Tiers::new(
            vec![tier("gold", vec![AllowEntry::subject_cn("gold").unwrap()])],
            None,
        );
        assert!(tiers.assign(Some(&other)).is_none());
        assert!(tiers.assign(None).is_none());
        // An empty rule list matches no certificate (unlike an empty allowlist).
        let tiers = Tiers::new(vec![tier("empty", vec![])], None);
        assert!(tiers.assign(Some(&other)).is_none());
    }

    #[test]
    fn byte_burst_is_at_least_one_record() {
        let limits = Limits {
            bytes_per_second: Some(1000),
            ..Limits::default()
        };
        assert_eq!(limits.byte_rate().unwrap().capacity, MIN_BYTE_BURST as f64);
        let limits = Limits {
            new_connections: Some(ConnectionRate {
                per_second: 50,
                burst: 5,
            }),
            ..Limits::default()
        };
        let r = limits.connection_rate().unwrap();
        assert_eq!((r.per_second, r.capacity), (50.0, 5.0));
    }
}
