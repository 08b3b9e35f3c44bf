//! The client's host names: reverse DNS (PTR) and its forward confirmation (FCrDNS), looked up
//! once per connection, the way Postfix's smtpd does before it applies
//! `reject_unknown_client_hostname` and `reject_unknown_reverse_client_hostname` (postconf(5)).
//!
//! mailwarden sits in front of Postfix, so Postfix only learns the client's names from our
//! XCLIENT `NAME=` / `REVERSE_NAME=` (Postfix XCLIENT_README). Without this lookup every client
//! is `unknown` there, and a restriction on the client hostname refuses mail that would pass
//! directly. The names are also rule inputs (`RDNS_NONE`) and go into our Received header's
//! TCP-info (RFC 5321 §4.4).
//!
//! The rules, after Postfix (`smtpd_peer.c`): the PTR names of the address (RFC 1035 §3.5,
//! RFC 3596 §2.5 for IPv6) are the *reverse* names; a reverse name whose A (IPv4) or AAAA
//! (IPv6) records contain the address is the *verified* name. Names that are not valid host
//! names, or look like an address, count as no name. Names are lowercased, without the
//! trailing dot. An IPv4-mapped IPv6 address is looked up as IPv4. A timeout, SERVFAIL or an
//! unreachable resolver is a *temporary* failure: the client is unknown for now, and Postfix is
//! told `[TEMPUNAVAIL]` so that it answers 450, never 5xx. The whole lookup is bounded by the
//! DNS timeout. Loopback addresses are `localhost` without a lookup (what /etc/hosts says).

use std::net::IpAddr;
use std::time::Duration;

use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::net::NetError;
use mail_auth::hickory_resolver::proto::rr::RData;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use crate::envelope::{ClientNames, TEMPUNAVAIL, UNAVAILABLE};

/// Preset symbol: the client address has no PTR name at all (a permanent answer).
pub const SYMBOL_RDNS_NONE: &str = "RDNS_NONE";
/// Preset symbol: the client has a PTR name, but none of them resolves back to its address.
pub const SYMBOL_RDNS_UNVERIFIED: &str = "RDNS_UNVERIFIED";

/// The symbols this module's results set (for `filter::symbols`).
pub const SYMBOLS: [&str; 2] = [SYMBOL_RDNS_NONE, SYMBOL_RDNS_UNVERIFIED];

/// At most this many PTR names are checked (a hostile zone may list hundreds).
pub const MAX_PTR_NAMES: usize = 10;

/// The rule symbol for a client's names, if any: `RDNS_NONE` when DNS says there is no PTR
/// name, `RDNS_UNVERIFIED` when no PTR name resolves back. Nothing after a temporary failure
/// (the client is not to blame for our resolver).
pub fn symbol(names: &ClientNames) -> Option<&'static str> {
    match (&names.reverse_name, &names.name, names.temporary) {
        (_, _, true) | (_, Some(_), false) => None,
        (None, None, false) => Some(SYMBOL_RDNS_NONE),
        (Some(_), None, false) => Some(SYMBOL_RDNS_UNVERIFIED),
    }
}

/// How a DNS lookup failed, as Postfix tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// NXDOMAIN or no records of the type: DNS says there is none.
    Permanent,
    /// Timeout, SERVFAIL, REFUSED, no server reachable: try again later.
    Temporary,
}

impl From<&NetError> for Failure {
    fn from(e: &NetError) -> Failure {
        if e.is_no_records_found() {
            Failure::Permanent
        } else {
            Failure::Temporary
        }
    }
}

/// The resolver and the time one client's lookup may take, shared by all sessions.
#[derive(Clone)]
pub struct Rdns {
    resolver: TokioResolver,
    timeout: Duration,
}

impl Rdns {
    /// `resolver`: the sender checks' (`auth::build_resolver(&config.dns)`, one cache);
    /// `timeout`: `auth::lookup_timeout(&config.dns)`.
    pub fn new(resolver: TokioResolver, timeout: Duration) -> Rdns {
        Rdns { resolver, timeout }
    }

    /// The names of the client at `ip`, within the timeout.
    pub async fn lookup(&self, ip: IpAddr) -> ClientNames {
        lookup(&self.resolver, ip, self.timeout).await
    }
}

/// The connect stage's client names: looked up once per client, unless someone who knows
/// them already told us (the MTA's macros in the milter).
impl super::stage::EnvelopeCheck for Rdns {
    fn name(&self) -> &'static str {
        "client names (FCrDNS)"
    }

    fn stages(&self) -> &'static [super::Stage] {
        &[super::Stage::Connect]
    }

    fn check<'a>(
        &'a self,
        _stage: super::Stage,
        input: &'a mut super::stage::StageInput<'_>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = super::StageResult> + Send + 'a>> {
        Box::pin(async move {
            let client = &mut *input.client;
            if client.name.is_none() && client.reverse_name.is_none() && !client.names_temporary {
                client.set_names(self.lookup(client.addr.ip()).await);
            }
            super::StageResult::Continue
        })
    }
}

/// The names of the client at `ip`: PTR lookup, then forward confirmation of each PTR name
/// (at most [`MAX_PTR_NAMES`]), all within `timeout`.
pub async fn lookup(resolver: &TokioResolver, ip: IpAddr, timeout: Duration) -> ClientNames {
    let ip = ip.to_canonical();
    if ip.is_loopback() {
        return ClientNames::localhost();
    }
    let deadline = Instant::now() + timeout;
    let ptr = match tokio::time::timeout_at(deadline, resolver.reverse_lookup(ip)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            tracing::debug!(client = %ip, error = %e, "PTR lookup failed");
            return ClientNames {
                temporary: Failure::from(&e) == Failure::Temporary,
                ..ClientNames::default()
            };
        }
        Err(_) => {
            tracing::debug!(client = %ip, "PTR lookup timed out");
            return ClientNames {
                temporary: true,
                ..ClientNames::default()
            };
        }
    };
    let mut names: Vec<String> = Vec::new();
    for record in ptr.answers() {
        let RData::PTR(target) = &record.data else {
            continue;
        };
        match host_name(&target.0.to_ascii()) {
            Some(name) if !names.contains(&name) => names.push(name),
            Some(_) => {}
            None => {
                tracing::debug!(client = %ip, ptr = %target.0, "PTR name is not a host name; ignored")
            }
        }
        if names.len() == MAX_PTR_NAMES {
            break;
        }
    }
    let Some(first) = names.first().cloned() else {
        return ClientNames::default();
    };
    let (name, temporary) = confirm(resolver, ip, &names, deadline).await;
    ClientNames {
        reverse_name: Some(first),
        temporary: name.is_none() && temporary,
        name,
    }
}

/// Forward-confirms `names` at once: the first (in PTR order) whose A/AAAA records contain
/// `ip`, and whether some lookup failed temporarily (or the deadline came first).
async fn confirm(
    resolver: &TokioResolver,
    ip: IpAddr,
    names: &[String],
    deadline: Instant,
) -> (Option<String>, bool) {
    let mut lookups = JoinSet::new();
    for (index, name) in names.iter().enumerate() {
        let resolver = resolver.clone();
        let query = format!("{name}.");
        lookups.spawn(async move { (index, resolves_to(&resolver, &query, ip).await) });
    }
    let mut verified: Option<usize> = None;
    let mut temporary = false;
    loop {
        match tokio::time::timeout_at(deadline, lookups.join_next()).await {
            Ok(Some(Ok((index, Ok(true))))) => {
                verified = Some(verified.map_or(index, |v| v.min(index)));
                // An earlier name may still confirm; once the first one does, stop.
                if index == 0 {
                    break;
                }
            }
            Ok(Some(Ok((_, Ok(false))))) | Ok(Some(Ok((_, Err(Failure::Permanent))))) => {}
            Ok(Some(Ok((_, Err(Failure::Temporary))))) | Ok(Some(Err(_))) => temporary = true,
            Ok(None) => break,
            Err(_) => {
                tracing::debug!(client = %ip, "forward confirmation timed out");
                temporary = true;
                break;
            }
        }
    }
    // Dropping the set aborts the lookups still running.
    (verified.and_then(|i| names.get(i).cloned()), temporary)
}

/// Whether `query`'s A (for IPv4) or AAAA (for IPv6) records contain `ip`.
async fn resolves_to(resolver: &TokioResolver, query: &str, ip: IpAddr) -> Result<bool, Failure> {
    let answer = match ip {
        IpAddr::V4(_) => resolver.ipv4_lookup(query).await,
        IpAddr::V6(_) => resolver.ipv6_lookup(query).await,
    };
    match answer {
        Ok(answer) => Ok(answer.answers().iter().any(|r| match &r.data {
            RData::A(a) => IpAddr::V4(a.0) == ip,
            RData::AAAA(a) => IpAddr::V6(a.0) == ip,
            _ => false,
        })),
        Err(e) => {
            tracing::debug!(query, error = %e, "forward lookup failed");
            Err(Failure::from(&e))
        }
    }
}

/// `name` lowercased without the trailing dot, if it is a valid host name (RFC 1123 §2.1
/// labels; `_` allowed, as Postfix's `valid_hostname` does) that does not look like an
/// address. None otherwise: such a PTR name counts as no name, as in Postfix.
fn host_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 || name.parse::<IpAddr>().is_ok() {
        return None;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let numeric = name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    (name.split('.').all(label_ok) && !numeric).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DnsConfig;
    use std::net::{SocketAddr, TcpStream, UdpSocket};
    use std::process::{Child, Command, Stdio};

    /// The test zone: PTR and A/AAAA records under `.test` and the 192.0.2.0/24 and
    /// 2001:db8::/32 reverse zones (undefined names there are NXDOMAIN; anything else,
    /// e.g. `elsewhere.example`, is REFUSED by a dnsmasq without upstream servers).
    const ZONE: &str = "\
local=/test/
local=/2.0.192.in-addr.arpa/
local=/8.b.d.0.1.0.0.2.ip6.arpa/
host-record=Mail.Example.TEST,192.0.2.7
ptr-record=8.2.0.192.in-addr.arpa,liar.example.test
host-record=liar.example.test,192.0.2.99
ptr-record=10.2.0.192.in-addr.arpa,other.example.test
ptr-record=10.2.0.192.in-addr.arpa,multi.example.test
host-record=other.example.test,192.0.2.98
host-record=multi.example.test,192.0.2.10
ptr-record=11.2.0.192.in-addr.arpa,host.elsewhere.example
host-record=v6.example.test,2001:db8::7
";

    /// A dnsmasq on 127.0.0.1:<free port> serving [`ZONE`]; killed on drop.
    struct Dns {
        child: Child,
        addr: SocketAddr,
        _dir: tempfile::TempDir,
    }

    impl Drop for Dns {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        udp.local_addr().expect("addr").port()
    }

    fn dnsmasq() -> Dns {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect(
                "dnsmasq is not installed: apt-get install dnsmasq-base (scripts/test.sh does)",
            );
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let conf = dir.path().join("dnsmasq.conf");
            std::fs::write(&conf, ZONE).expect("write dnsmasq.conf");
            let port = free_port();
            let child = Command::new(bin)
                .arg(format!("--port={port}"))
                .args([
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--keep-in-foreground",
                    "--log-facility=-",
                    "--user=root",
                    "--pid-file=",
                ])
                .arg(format!("--conf-file={}", conf.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dnsmasq");
            let mut dns = Dns {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                _dir: dir,
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if TcpStream::connect_timeout(&dns.addr, Duration::from_millis(200)).is_ok() {
                    return dns;
                }
                if let Ok(Some(_)) = dns.child.try_wait() {
                    break; // the port was taken meanwhile: another one
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("dnsmasq did not start");
    }

    /// The production resolver (`[dns]` with one name server), as the proxy builds it.
    fn resolver(ns: SocketAddr, timeout_ms: u64) -> Rdns {
        let dns = DnsConfig {
            nameservers: vec![ns.to_string()],
            timeout_ms,
            ..DnsConfig::default()
        };
        let auth = crate::filter::auth::build_resolver(&dns).expect("resolver");
        Rdns::new(
            auth.resolver().clone(),
            crate::filter::auth::lookup_timeout(&dns),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[tokio::test]
    async fn ptr_and_matching_a_is_verified_lowercased() {
        let dns = dnsmasq();
        let r = resolver(dns.addr, 2000);
        let names = r.lookup(ip("192.0.2.7")).await;
        assert_eq!(
            names,
            ClientNames {
                reverse_name: Some("mail.example.test".into()),
                name: Some("mail.example.test".into()),
                temporary: false,
            }
        );
        // An IPv4-mapped IPv6 address is the IPv4 client.
        assert_eq!(r.lookup(ip("::ffff:192.0.2.7")).await, names);
    }

    #[tokio::test]
    async fn ipv6_ptr_and_aaaa_is_verified() {
        let dns = dnsmasq();
        let names = resolver(dns.addr, 2000).lookup(ip("2001:db8::7")).await;
        assert_eq!(names.name.as_deref(), Some("v6.example.test"), "{names:?}");
        assert_eq!(symbol(&names), None);
    }

    #[tokio::test]
    async fn ptr_to_a_name_whose_a_differs_is_reverse_only() {
        let dns = dnsmasq();
        let names = resolver(dns.addr, 2000).lookup(ip("192.0.2.8")).await;
        assert_eq!(
            names,
            ClientNames {
                reverse_name: Some("liar.example.test".into()),
                name: None,
                temporary: false,
            }
        );
        assert_eq!(symbol(&names), Some(SYMBOL_RDNS_UNVERIFIED));
    }

    #[tokio::test]
    async fn every_ptr_name_is_tried() {
        let dns = dnsmasq();
        let names = resolver(dns.addr, 2000).lookup(ip("192.0.2.10")).await;
        assert_eq!(
            names.name.as_deref(),
            Some("multi.example.test"),
            "{names:?}"
        );
        assert!(
            matches!(
                names.reverse_name.as_deref(),
                Some("other.example.test" | "multi.example.test")
            ),
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn no_ptr_is_none_permanently() {
        let dns = dnsmasq();
        let names = resolver(dns.addr, 2000).lookup(ip("192.0.2.9")).await;
        assert_eq!(names, ClientNames::default());
        assert_eq!(symbol(&names), Some(SYMBOL_RDNS_NONE));
        assert_eq!(names.xclient_name(), UNAVAILABLE);
    }

    #[tokio::test]
    async fn refused_queries_are_temporary() {
        let dns = dnsmasq();
        let r = resolver(dns.addr, 2000);
        // The reverse zone is not served: REFUSED.
        let names = r.lookup(ip("198.51.100.1")).await;
        assert_eq!(
            names,
            ClientNames {
                temporary: true,
                ..ClientNames::default()
            }
        );
        assert_eq!(names.xclient_name(), TEMPUNAVAIL);
        // The PTR answers, its name's zone is not served: reverse name, no verdict yet.
        let names = r.lookup(ip("192.0.2.11")).await;
        assert_eq!(
            names,
            ClientNames {
                reverse_name: Some("host.elsewhere.example".into()),
                name: None,
                temporary: true,
            }
        );
        assert_eq!(symbol(&names), None);
    }

    #[tokio::test]
    async fn a_stopped_server_is_temporary() {
        let dns = dnsmasq();
        let addr = dns.addr;
        let r = resolver(addr, 500);
        assert!(
            r.lookup(ip("192.0.2.7")).await.name.is_some(),
            "served while up"
        );
        drop(dns);
        let started = Instant::now();
        // Another address: nothing cached for it.
        let names = r.lookup(ip("192.0.2.8")).await;
        assert!(names.temporary && names.reverse_name.is_none(), "{names:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_silent_server_is_temporary_within_the_timeout() {
        // A name server that reads queries and never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr");
        let r = resolver(addr, 300);
        let started = Instant::now();
        let names = r.lookup(ip("192.0.2.7")).await;
        let took = started.elapsed();
        assert_eq!(
            names,
            ClientNames {
                temporary: true,
                ..ClientNames::default()
            }
        );
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(800),
            "bounded by the 300 ms timeout: {took:?}"
        );
        drop(silent);
    }

    #[tokio::test]
    async fn loopback_is_localhost_without_asking() {
        // No server at all behind this address: a lookup would fail.
        let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let r = resolver(silent.local_addr().expect("addr"), 2000);
        let started = Instant::now();
        for client in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                r.lookup(ip(client)).await,
                ClientNames::localhost(),
                "{client}"
            );
        }
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn host_names_are_normalised_and_checked() {
        assert_eq!(
            host_name("Mail.Example.TEST."),
            Some("mail.example.test".into())
        );
        assert_eq!(host_name("a_b.example"), Some("a_b.example".into()));
        assert_eq!(host_name("1.2.3.4"), None);
        assert_eq!(host_name("1.2.3.4."), None);
        assert_eq!(host_name("bad..example"), None);
        assert_eq!(host_name("-bad.example"), None);
        assert_eq!(host_name("sp ace.example"), None);
        assert_eq!(host_name("paren(.example"), None);
        assert_eq!(host_name("."), None);
        assert_eq!(host_name(&format!("{}.example", "a".repeat(64))), None);
    }

    #[test]
    fn xclient_values_and_symbols() {
        let verified = ClientNames {
            reverse_name: Some("mx.example.test".into()),
            name: Some("mx.example.test".into()),
            temporary: false,
        };
        assert_eq!(verified.xclient_name(), "mx.example.test");
        assert_eq!(symbol(&verified), None);
        let unverified = ClientNames {
            name: None,
            ..verified.clone()
        };
        assert_eq!(unverified.xclient_name(), UNAVAILABLE);
        assert_eq!(unverified.xclient_reverse_name(), "mx.example.test");
        assert_eq!(symbol(&unverified), Some(SYMBOL_RDNS_UNVERIFIED));
        let none = ClientNames::default();
        assert_eq!(none.xclient_reverse_name(), UNAVAILABLE);
        assert_eq!(symbol(&none), Some(SYMBOL_RDNS_NONE));
        let temp = ClientNames {
            temporary: true,
            ..ClientNames::default()
        };
        assert_eq!(temp.xclient_name(), TEMPUNAVAIL);
        assert_eq!(temp.xclient_reverse_name(), TEMPUNAVAIL);
        assert_eq!(symbol(&temp), None);
        let temp_forward = ClientNames {
            temporary: true,
            ..unverified
        };
        assert_eq!(temp_forward.xclient_name(), TEMPUNAVAIL);
        assert_eq!(temp_forward.xclient_reverse_name(), "mx.example.test");
    }
}
