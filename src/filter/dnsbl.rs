//! DNS block lists (`[[dnsbl]]`) asked about the client's IP address.
//!
//! Each list is an A query for the reversed address under the list's zone
//! (`2.0.0.127.zen.spamhaus.org.` for 127.0.0.2; reversed nibbles for IPv6), through the same
//! resolver as the sender authentication, by the mechanism shared with `[[uribl]]`
//! (`blocklist.rs`: concurrency, timeout, codes). A listing sets the list's symbol with its
//! configured score.

use std::net::IpAddr;
use std::time::Duration;

use mail_auth::hickory_resolver::TokioResolver;
use serde_json::json;

use super::blocklist::{ListHit, Lists, reversed, unmapped};
use crate::config::DnsblConfig;

/// A listing of the client IP.
pub type DnsblHit = ListHit;

impl ListHit {
    /// The `"dnsbl"` entry of `scan --json`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({"zone": self.zone, "symbol": self.symbol, "code": self.code.to_string()})
    }
}

/// The configured block lists, shared by all sessions.
pub struct Dnsbl {
    lists: Lists,
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
            lists: Lists::new("DNSBL", resolver, timeout, lists),
            trusted,
        }
    }

    /// Blocked-resolver answers so far, per zone (for metrics).
    pub fn blocked_counts(&self) -> Vec<(String, u64)> {
        self.lists.blocked_counts()
    }

    /// Asks every list about `ip` (concurrently); returns the listings. Trusted clients
    /// (`[auth] trusted_networks`) are not looked up.
    pub async fn check(&self, ip: IpAddr) -> Vec<DnsblHit> {
        let ip = unmapped(ip);
        if self.trusted.iter().any(|net| net.contains(&ip)) {
            return Vec::new();
        }
        self.lists.check(&[reversed(ip)]).await
    }
}
