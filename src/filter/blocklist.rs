//! The mechanism shared by the DNS block lists: `[[dnsbl]]` (the client IP, `dnsbl.rs`) and
//! `[[uribl]]` (the domains of the message's links, `uribl.rs`).
//!
//! A lookup is an A query for `<item>.<zone>.` through the sender authentication's resolver.
//! Every (item, list) pair is asked at once, each within the `[dns] timeout_ms`, so a check
//! takes at most one timeout; a DNS error or timeout is "not listed", never a hang. Answers
//! meaning "query refused / blocked resolver" (`blocked_codes`) are not listings: they are
//! counted and logged once per list.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::proto::rr::RData;

use crate::config::BlockListConfig;

/// A listing: `item` (a reversed IP or a domain, as queried) is on the list `zone`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListHit {
    pub zone: String,
    pub symbol: String,
    /// The configured score; `None`: the rule files' score applies.
    pub score: Option<f64>,
    /// The answer that counted.
    pub code: Ipv4Addr,
    /// What was looked up, without the zone (e.g. `"spam-domain.example"`).
    pub item: String,
}

/// One configured list with its counters.
pub(crate) struct List {
    config: BlockListConfig,
    /// The zone as queried: lowercase, no final dot.
    zone: String,
    /// "DNSBL" or "URIBL", for the logs.
    kind: &'static str,
    /// Whether the blocked-resolver warning was logged already.
    warned: AtomicBool,
    /// Answers with a blocked-resolver code (for metrics).
    blocked: AtomicU64,
}

/// A set of configured lists of one kind and the resolver they are asked through.
pub struct Lists {
    resolver: TokioResolver,
    timeout: Duration,
    lists: Vec<Arc<List>>,
}

impl Lists {
    /// `kind`: "DNSBL" or "URIBL" (logs).
    pub fn new(
        kind: &'static str,
        resolver: TokioResolver,
        timeout: Duration,
        lists: &[BlockListConfig],
    ) -> Lists {
        Lists {
            resolver,
            timeout,
            lists: lists.iter().map(|c| Arc::new(List::new(kind, c))).collect(),
        }
    }

    /// Blocked-resolver answers so far, per zone (for metrics).
    pub fn blocked_counts(&self) -> Vec<(String, u64)> {
        self.lists
            .iter()
            .map(|l| (l.zone.clone(), l.blocked.load(Ordering::Relaxed)))
            .collect()
    }

    /// Asks every list about every item, all at once; returns the listings (in item order,
    /// then list order).
    pub async fn check(&self, items: &[String]) -> Vec<ListHit> {
        let mut handles = Vec::with_capacity(items.len() * self.lists.len());
        for item in items {
            for list in &self.lists {
                let list = Arc::clone(list);
                let resolver = self.resolver.clone();
                let item = item.clone();
                let timeout = self.timeout;
                handles.push(tokio::spawn(async move {
                    let name = format!("{item}.{}.", list.zone);
                    let codes = lookup(&resolver, &name, timeout, list.kind).await;
                    list.outcome(&item, &codes)
                }));
            }
        }
        let mut hits = Vec::new();
        for handle in handles {
            if let Ok(Some(hit)) = handle.await {
                hits.push(hit);
            }
        }
        hits
    }
}

/// The A records for `name`; none on an error or after `timeout`.
async fn lookup(
    resolver: &TokioResolver,
    name: &str,
    timeout: Duration,
    kind: &str,
) -> Vec<Ipv4Addr> {
    match tokio::time::timeout(timeout, resolver.ipv4_lookup(name)).await {
        Ok(Ok(lookup)) => lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
        Ok(Err(e)) => {
            tracing::debug!(query = %name, error = %e, "{kind} lookup: not listed");
            Vec::new()
        }
        Err(_) => {
            tracing::debug!(query = %name, "{kind} lookup timed out: not listed");
            Vec::new()
        }
    }
}

impl List {
    fn new(kind: &'static str, config: &BlockListConfig) -> List {
        List {
            zone: config.zone.trim_end_matches('.').to_ascii_lowercase(),
            config: config.clone(),
            kind,
            warned: AtomicBool::new(false),
            blocked: AtomicU64::new(0),
        }
    }

    /// What the answer `codes` for `item` mean for this list.
    fn outcome(&self, item: &str, codes: &[Ipv4Addr]) -> Option<ListHit> {
        if let Some(code) = codes.iter().find(|c| self.config.is_blocked(**c)) {
            self.blocked.fetch_add(1, Ordering::Relaxed);
            crate::metrics::metrics()
                .blocklist_refused
                .with_label_values(&[&self.zone])
                .inc();
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    zone = %self.zone,
                    code = %code,
                    "{} {} refuses our queries (blocked-resolver code {code}): its answers are ignored; query it through your own resolver ([dns] nameservers) or register with the list (logged once)",
                    self.kind,
                    self.zone
                );
            }
        }
        let code = codes.iter().copied().find(|c| self.config.is_listed(*c))?;
        Some(ListHit {
            zone: self.zone.clone(),
            symbol: self.config.symbol.clone(),
            score: self.config.score,
            code,
            item: item.to_string(),
        })
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The query labels for `ip`: reversed octets (IPv4) or reversed nibbles (IPv6).
pub fn reversed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => {
            let mut labels = Vec::with_capacity(32);
            for byte in v6.octets().iter().rev() {
                labels.push(format!("{:x}", byte & 0x0f));
                labels.push(format!("{:x}", byte >> 4));
            }
            labels.join(".")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        assert_eq!(reversed("192.0.2.99".parse().expect("ip")), "99.2.0.192");
        assert_eq!(
            reversed("2001:db8::1".parse().expect("ip")),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        );
        assert_eq!(
            unmapped("::ffff:127.0.0.2".parse().expect("ip")),
            "127.0.0.2".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn blocked_code_is_counted_and_not_a_listing() {
        let config = BlockListConfig {
            zone: "bl.test".into(),
            symbol: "RBL_TEST".into(),
            score: Some(2.0),
            codes: Vec::new(),
            blocked_codes: crate::config::default_blocked_codes(),
        };
        let list = List::new("DNSBL", &config);
        assert_eq!(
            list.outcome("x", &[Ipv4Addr::new(127, 255, 255, 254)]),
            None
        );
        assert_eq!(
            list.outcome("x", &[Ipv4Addr::new(127, 255, 255, 255)]),
            None
        );
        assert_eq!(list.blocked.load(Ordering::Relaxed), 2);
        assert!(list.warned.load(Ordering::Relaxed));
        let hit = list
            .outcome("x", &[Ipv4Addr::new(127, 0, 0, 2)])
            .expect("listed");
        assert_eq!(hit.symbol, "RBL_TEST");
        assert_eq!(hit.score, Some(2.0));
        assert_eq!(hit.item, "x");
        assert_eq!(list.outcome("x", &[]), None);
    }
}
