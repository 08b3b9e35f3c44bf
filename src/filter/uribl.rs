//! URI block lists (`[[uribl]]`, e.g. SURBL) asked about the domains a message links to.
//!
//! The links are `Message::uris()` (text and HTML parts, `mailto:` addresses included). Each
//! host is reduced to its registrable domain with the public suffix list
//! (`www.spam.example.co.uk` → `spam.example.co.uk`'s registrable part `example.co.uk`), and
//! `<domain>.<zone>.` is asked as an A query, by the mechanism shared with `[[dnsbl]]`
//! (`blocklist.rs`: one resolver, everything at once, each within `[dns] timeout_ms`, blocked
//! codes). IP-literal hosts (`http://192.0.2.1/`) are asked reversed, as DNSBLs are (SURBL's
//! convention). At most [`MAX_DOMAINS`] distinct domains per message are asked, the first
//! ones in the message. Hosts that are not DNS names (non-ASCII, odd characters) or are a
//! public suffix themselves are skipped.

use std::net::IpAddr;
use std::time::Duration;

use mail_auth::hickory_resolver::TokioResolver;
use serde_json::json;

use super::blocklist::{ListHit, Lists, reversed, unmapped};
use crate::config::UriblConfig;

/// Most distinct domains looked up per message (each one query per list).
pub const MAX_DOMAINS: usize = 20;

/// A listing of a linked domain (`item`: the domain, or the reversed IP of an IP literal).
pub type UriblHit = ListHit;

impl ListHit {
    /// The `"uribl"` entry of `scan --json`.
    pub fn to_uribl_json(&self) -> serde_json::Value {
        json!({
            "zone": self.zone,
            "symbol": self.symbol,
            "code": self.code.to_string(),
            "domain": self.item,
        })
    }
}

/// The configured URI block lists, shared by all sessions.
pub struct Uribl {
    lists: Lists,
}

impl Uribl {
    /// `resolver`: the sender authentication's (shared cache).
    pub fn new(resolver: TokioResolver, timeout: Duration, lists: &[UriblConfig]) -> Uribl {
        Uribl {
            lists: Lists::new("URIBL", resolver, timeout, lists),
        }
    }

    /// Blocked-resolver answers so far, per zone (for metrics).
    pub fn blocked_counts(&self) -> Vec<(String, u64)> {
        self.lists.blocked_counts()
    }

    /// Asks every list about `domains` (from [`domains`]), all at once; returns the listings.
    pub async fn check(&self, domains: &[String]) -> Vec<UriblHit> {
        if domains.is_empty() {
            return Vec::new();
        }
        self.lists.check(domains).await
    }
}

/// The first [`MAX_DOMAINS`] distinct names to look up for `uris`: registrable domains, and
/// reversed addresses for IP-literal hosts.
pub fn domains(uris: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for uri in uris {
        if out.len() >= MAX_DOMAINS {
            break;
        }
        let Some(name) = host(uri).and_then(|h| lookup_name(&h)) else {
            continue;
        };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// The host of `uri` (`scheme://[userinfo@]host[:port]/…` or `mailto:local@host?…`),
/// lowercase, without brackets or a final dot.
fn host(uri: &str) -> Option<String> {
    let authority = if let Some((_, rest)) = uri.split_once("://") {
        let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
        let authority = &rest[..end];
        // Userinfo ends at the last '@' (`http://user@evil.example/`).
        authority.rsplit_once('@').map_or(authority, |(_, h)| h)
    } else {
        let (scheme, rest) = uri.split_once(':')?;
        if !scheme.eq_ignore_ascii_case("mailto") {
            return None;
        }
        let address = rest.split(['?', '#']).next().unwrap_or("");
        address.rsplit_once('@')?.1
    };
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// What to query for `host`: its registrable domain, or its reversed address.
fn lookup_name(host: &str) -> Option<String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(reversed(unmapped(ip)));
    }
    let is_dns_name = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !is_dns_name {
        return None;
    }
    psl::domain_str(host).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(uris: &[&str]) -> Vec<String> {
        let uris: Vec<String> = uris.iter().map(|u| u.to_string()).collect();
        domains(&uris)
    }

    #[test]
    fn registrable_domains() {
        assert_eq!(
            names(&[
                "http://www.spam-domain.test/x",
                "https://a.b.Example.CO.UK:8080/path?q#f",
                "http://user:pw@evil.example.com./",
                "mailto:someone@mail.spam-domain.test?subject=hi",
                "http://SPAM-DOMAIN.test",
            ]),
            ["spam-domain.test", "example.co.uk", "example.com"]
        );
    }

    #[test]
    fn ip_literals_reversed_and_odd_hosts_skipped() {
        assert_eq!(
            names(&["http://192.0.2.7/", "http://[2001:db8::1]:80/"]),
            [
                "7.2.0.192",
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
            ]
        );
        // A public suffix alone, a non-DNS host, no host, another scheme.
        assert!(
            names(&[
                "http://co.uk/",
                "http://bad host.example/",
                "http:///x",
                "http://ex\u{e4}mple.com/",
                "news:comp.lang.rust",
                "mailto:nobody",
            ])
            .is_empty()
        );
    }

    #[test]
    fn at_most_max_domains() {
        let uris: Vec<String> = (0..MAX_DOMAINS + 5)
            .map(|i| format!("http://www.d{i}.example/"))
            .collect();
        let d = domains(&uris);
        assert_eq!(d.len(), MAX_DOMAINS);
        assert_eq!(d[0], "d0.example");
    }
}
