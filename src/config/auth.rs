//! `[dns]` and `[auth]`: the resolver the sender checks use, and what their results mean.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// `[dns]`: the resolver for SPF, DKIM, DMARC and ARC lookups.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// `"IP:port"` (or just `"IP"` for port 53) of the recursive resolvers to ask; empty: the
    /// system's (`/etc/resolv.conf`).
    pub nameservers: Vec<String>,
    /// Time allowed for one DNS lookup, in milliseconds.
    pub timeout_ms: u64,
    /// Look up each client's host name at connect (PTR, then forward confirmation, as
    /// Postfix does), for XCLIENT `NAME=`/`REVERSE_NAME=`, the Received header and the
    /// `RDNS_*` rules. `false`: every client is `[UNAVAILABLE]` upstream.
    pub reverse_lookup: bool,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout_ms: 2000,
            reverse_lookup: true,
        }
    }
}

impl DnsConfig {
    /// The configured name servers as socket addresses; errors name the bad entry.
    pub fn nameserver_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        self.nameservers
            .iter()
            .map(|s| parse_nameserver(s))
            .collect()
    }
}

fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "{s:?} is not an address; write \"IP:port\" (e.g. \"127.0.0.1:53\" or \"[::1]:53\") or just \"IP\" for port 53"
    ))
}

/// `[auth]`: sender authentication (SPF, DKIM, ARC, DMARC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Run the checks at all (off: no auth symbols and no Authentication-Results header).
    pub enabled: bool,
    /// Refuse (550 5.7.1) mail failing DMARC whose domain publishes p=reject; p=quarantine
    /// quarantines it when `policy.quarantine_dir` is set, else tags it.
    pub dmarc_enforce: bool,
    /// Refuse (550 5.7.23) mail whose MAIL FROM fails SPF. Off by default: SPF breaks on
    /// plain forwarding (the forwarder's address is not in the original sender's record), so a
    /// hard SPF reject bounces legitimate forwarded mail. DMARC is the policy layer: a domain
    /// that wants failures refused says so with p=reject, and DMARC also passes on an aligned
    /// DKIM signature, which survives forwarding.
    pub spf_reject_fail: bool,
    /// A DNS failure during the checks (SPF/DMARC temperror) defers the message (451 4.x.x)
    /// instead of carrying on without that result.
    pub tempfail_on_dns_error: bool,
    /// Clients (IP or CIDR) whose mail skips SPF and DMARC, e.g. the admin's own submission
    /// hosts (DKIM and ARC are still checked and reported).
    pub trusted_networks: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: true,
            dmarc_enforce: true,
            spf_reject_fail: false,
            tempfail_on_dns_error: false,
            trusted_networks: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// The trusted networks; errors name the bad entry.
    pub fn trusted_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        super::parse_networks(&self.trusted_networks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_with_and_without_port() {
        let dns = DnsConfig {
            nameservers: vec!["127.0.0.1:5353".into(), "::1".into(), "[::1]:53".into()],
            timeout_ms: 1,
            ..DnsConfig::default()
        };
        let addrs = dns.nameserver_addrs().expect("valid");
        assert_eq!(
            addrs[0],
            "127.0.0.1:5353".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(addrs[1].port(), 53);
        assert_eq!(addrs[2].port(), 53);
        let bad = DnsConfig {
            nameservers: vec!["dns.example:53".into()],
            timeout_ms: 1,
            ..DnsConfig::default()
        };
        assert!(bad.nameserver_addrs().is_err());
    }

    #[test]
    fn trusted_networks_take_ips_and_cidrs() {
        let auth = AuthConfig {
            trusted_networks: vec!["192.0.2.0/24".into(), "2001:db8::1".into()],
            ..AuthConfig::default()
        };
        assert_eq!(auth.trusted_nets().expect("valid").len(), 2);
        let bad = AuthConfig {
            trusted_networks: vec!["192.0.2.0/33".into()],
            ..AuthConfig::default()
        };
        assert!(bad.trusted_nets().is_err());
    }
}
