//! DNS block lists (`[[dnsbl]]`) asked about the client's IP address.
//!
//! Each list is an A query for the reversed address under the list's zone
//! (`2.0.0.127.zen.spamhaus.org.` for 127.0.0.2; reversed nibbles for IPv6), through the same
//! resolver as the sender authentication. All lists are asked at once, each within the
//! `[dns] timeout_ms`; a DNS error or timeout is "not listed", never a hang. A listing sets the
//! list's symbol with its configured score. Answers meaning "query refused / blocked resolver"
//! (`blocked_codes`) are not listings: they are counted and logged once per list.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::proto::rr::RData;
use serde_json::json;

use crate::config::DnsblConfig;

/// One configured list with its counters.
struct List {
    config: DnsblConfig,
    /// The zone as queried: lowercase, no final dot.
    zone: String,
    /// Whether the blocked-resolver warning was logged already.
    warned: AtomicBool,
    /// Answers with a blocked-resolver code (for metrics).
    blocked: AtomicU64,
}

/// A listing of the client IP.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsblHit {
    pub zone: String,
    pub symbol: String,
    /// The configured score; `None`: the rule files' score applies.
    pub score: Option<f64>,
    /// The answer that counted.
    pub code: Ipv4Addr,
}

impl DnsblHit {
    pub fn to_json(&self) -> serde_json::Value {
        json!({"zone": self.zone, "symbol": self.symbol, "code": self.code.to_string()})
    }
}

/// The configured block lists, shared by all sessions.
pub struct Dnsbl {
    resolver: TokioResolver,
    timeout: Duration,
    lists: Vec<Arc<List>>,
    trusted: Vec<ipnet::IpNet>,
}

impl Dnsbl {
    /// `resolver`: the sender authentication's (shared cache); `trusted`: clients never looked up.
    pub fn new(
        resolver: TokioResolver,
        timeout: Duration,
        lists: &[DnsblConfig],
        trusted: Vec<ipnet::IpNet>,
    ) -> Dnsbl {
        Dnsbl {
            resolver,
            timeout,
            lists: lists
                .iter()
                .map(|c| {
                    Arc::new(List {
                        zone: c.zone.trim_end_matches('.').to_ascii_lowercase(),
                        config: c.clone(),
                        warned: AtomicBool::new(false),
                        blocked: AtomicU64::new(0),
                    })
                })
                .collect(),
            trusted,
        }
    }

    /// Blocked-resolver answers so far, per zone (for metrics).
    pub fn blocked_counts(&self) -> Vec<(String, u64)> {
        self.lists
            .iter()
            .map(|l| (l.zone.clone(), l.blocked.load(Ordering::Relaxed)))
            .collect()
    }

    /// Asks every list about `ip` (concurrently); returns the listings. Trusted clients
    /// (`[auth] trusted_networks`) are not looked up.
    pub async fn check(&self, ip: IpAddr) -> Vec<DnsblHit> {
        let ip = unmapped(ip);
        if self.trusted.iter().any(|net| net.contains(&ip)) {
            return Vec::new();
        }
        let reversed = reversed(ip);
        let lookups = self.lists.iter().map(|list| {
            let list = Arc::clone(list);
            let resolver = self.resolver.clone();
            let name = format!("{reversed}.{}.", list.zone);
            let timeout = self.timeout;
            tokio::spawn(async move {
                let answer = tokio::time::timeout(timeout, resolver.ipv4_lookup(name.as_str()));
                let codes: Vec<Ipv4Addr> = match answer.await {
                    Ok(Ok(lookup)) => lookup
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::A(a) => Some(a.0),
                            _ => None,
                        })
                        .collect(),
                    Ok(Err(e)) => {
                        tracing::debug!(query = %name, error = %e, "DNSBL lookup: not listed");
                        Vec::new()
                    }
                    Err(_) => {
                        tracing::debug!(query = %name, "DNSBL lookup timed out: not listed");
                        Vec::new()
                    }
                };
                list.outcome(&codes)
            })
        });
        let handles: Vec<_> = lookups.collect();
        let mut hits = Vec::new();
        for handle in handles {
            if let Ok(Some(hit)) = handle.await {
                hits.push(hit);
            }
        }
        hits
    }
}

impl List {
    /// What the answer `codes` mean for this list.
    fn outcome(&self, codes: &[Ipv4Addr]) -> Option<DnsblHit> {
        if let Some(code) = codes.iter().find(|c| self.config.is_blocked(**c)) {
            self.blocked.fetch_add(1, Ordering::Relaxed);
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    zone = %self.zone,
                    code = %code,
                    "DNSBL {} refuses our queries (blocked-resolver code {code}): its answers are ignored; query it through your own resolver ([dns] nameservers) or register with the list (logged once)",
                    self.zone
                );
            }
        }
        let code = codes.iter().copied().find(|c| self.config.is_listed(*c))?;
        Some(DnsblHit {
            zone: self.zone.clone(),
            symbol: self.config.symbol.clone(),
            score: self.config.score,
            code,
        })
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The query labels for `ip`: reversed octets (IPv4) or reversed nibbles (IPv6).
fn reversed(ip: IpAddr) -> String {
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
        let config = DnsblConfig {
            zone: "bl.test".into(),
            symbol: "RBL_TEST".into(),
            score: Some(2.0),
            codes: Vec::new(),
            blocked_codes: crate::config::default_blocked_codes(),
        };
        let list = List {
            zone: "bl.test".into(),
            config,
            warned: AtomicBool::new(false),
            blocked: AtomicU64::new(0),
        };
        assert_eq!(list.outcome(&[Ipv4Addr::new(127, 255, 255, 254)]), None);
        assert_eq!(list.outcome(&[Ipv4Addr::new(127, 255, 255, 255)]), None);
        assert_eq!(list.blocked.load(Ordering::Relaxed), 2);
        assert!(list.warned.load(Ordering::Relaxed));
        let hit = list
            .outcome(&[Ipv4Addr::new(127, 0, 0, 2)])
            .expect("listed");
        assert_eq!(hit.symbol, "RBL_TEST");
        assert_eq!(hit.score, Some(2.0));
        assert_eq!(list.outcome(&[]), None);
    }
}
