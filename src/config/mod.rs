//! The TOML configuration: its types, their defaults, and validation.
//!
//! One file configures everything. Every key has a default a mail admin can live with, so the
//! shipped `mailwarden.toml` stays short. Unknown keys are errors (a typo must not silently fall
//! back to a default), and every error names the file and line, plus what to write instead.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod attachments;
mod auth;
mod blocklist;
mod clamav;
mod classifier;
mod filter;
mod milter;
mod state;
pub use attachments::AttachmentsConfig;
pub use auth::{AuthConfig, DnsConfig};
pub use blocklist::{BlockListConfig, default_blocked_codes};
pub use clamav::{ClamavConfig, ClamdAddress, OnError, OnVirus};
pub use classifier::ClassifierConfig;
pub use milter::MilterConfig;
pub use state::{
    GreylistConfig, Rate, RateAction, RateKey, RatelimitConfig, StateConfig, StateOnError,
    StateTarget, StateUrl,
};
/// A `[[dnsbl]]` table.
pub type DnsblConfig = BlockListConfig;
/// A `[[uribl]]` table (the same keys as `[[dnsbl]]`).
pub type UriblConfig = BlockListConfig;
pub use filter::{Action, DomainPolicy, MultiRecipient, PolicyConfig, RuleAction, RulesConfig};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// STARTTLS towards clients; absent means STARTTLS is not offered.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub log: LogConfig,
    /// `[metrics]`: the Prometheus/health endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub rules: RulesConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[[dnsbl]]`: block lists asked about the client IP (none by default).
    #[serde(default)]
    pub dnsbl: Vec<DnsblConfig>,
    /// `[[uribl]]`: block lists asked about the registrable domains of the message's links
    /// (none by default).
    #[serde(default)]
    pub uribl: Vec<UriblConfig>,
    /// `[clamav]`: virus scanning with clamd (off by default).
    #[serde(default)]
    pub clamav: ClamavConfig,
    /// `[attachments]`: the attachment policy (blocked extensions, zip archives).
    #[serde(default)]
    pub attachments: AttachmentsConfig,
    /// `[classifier]`: the learning classifier (Bayes) and its model file.
    #[serde(default)]
    pub classifier: ClassifierConfig,
    /// `[milter]`: the milter front end (off by default).
    #[serde(default)]
    pub milter: MilterConfig,
    /// `[state]`: where greylisting, rate limits (and optionally the classifier) keep their
    /// state — embedded for one node, Redis for several.
    #[serde(default)]
    pub state: StateConfig,
    /// `[greylist]`: greylisting (off by default).
    #[serde(default)]
    pub greylist: GreylistConfig,
    /// `[[ratelimit]]`: token-bucket rate limits (none by default).
    #[serde(default)]
    pub ratelimit: Vec<RatelimitConfig>,
}

/// `[server]`: the inbound SMTP listener and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses to listen on (`host:port`; port 0 picks a free port).
    pub listen: Vec<SocketAddr>,
    /// Our name in the banner, the EHLO reply and the Received header.
    pub hostname: String,
    /// Largest message accepted, in bytes; advertised in `SIZE` (RFC 1870).
    pub max_message_size: usize,
    /// Most recipients per transaction; more get `452 4.5.3` (RFC 5321 §4.5.3.1.8).
    pub max_recipients: usize,
    /// Most concurrent client sessions; more get `421 4.7.0` at the greeting.
    pub max_sessions: usize,
    /// Most concurrent sessions from one client IP address.
    pub max_sessions_per_ip: usize,
    /// Longest command line accepted, CRLF included (RFC 5321 §4.5.3.1.4: 512).
    /// MAIL and RCPT may be longer by the room their ESMTP parameters need (RFC 1870 §3,
    /// RFC 3461 §5: up to 512 more octets).
    pub max_command_line: usize,
    /// Longest message text line, CRLF included (RFC 5321 §4.5.3.1.6: 1000).
    pub max_text_line: usize,
    /// Time allowed for one command line to arrive (RFC 5321 §4.5.3.2.7: at least 5 minutes);
    /// a line trickled in byte by byte counts from its start (slowloris).
    pub command_timeout_secs: u64,
    /// Time allowed for each line of message data to arrive.
    pub data_timeout_secs: u64,
    /// What to do with a bare LF or bare CR (a line ending that is not CRLF).
    pub bare_newline: BareNewline,
    /// Expect a PROXY protocol header (HAProxy v1 or v2) from `trusted_proxies`: mailwarden
    /// runs behind a TCP load balancer and takes the client address from the header.
    pub proxy_protocol: bool,
    /// Hosts allowed to tell mailwarden who the real client is: by a PROXY protocol header
    /// (when `proxy_protocol = true`) and by the XCLIENT command (Postfix's protocol, as
    /// `smtpd_authorized_xclient_hosts`). CIDRs or addresses; empty by default (nobody).
    pub trusted_proxies: Vec<String>,
    /// How long sessions in a transaction may take to finish after SIGTERM/SIGINT before
    /// they get `421` and are closed: seconds (`30`) or a duration (`"30s"`, `"500ms"`).
    pub shutdown_grace: Interval,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            hostname: "mx.example.test".to_string(),
            max_message_size: 26_214_400,
            max_recipients: 100,
            max_sessions: 1000,
            max_sessions_per_ip: 50,
            max_command_line: 512,
            max_text_line: 1000,
            command_timeout_secs: 300,
            data_timeout_secs: 300,
            bare_newline: BareNewline::Reject,
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
            shutdown_grace: Interval(std::time::Duration::from_secs(30)),
        }
    }
}

impl ServerConfig {
    /// `trusted_proxies`, parsed.
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        parse_networks(&self.trusted_proxies)
    }
}

/// Parses a list of CIDRs or single addresses (`"192.0.2.0/24"`, `"2001:db8::1"`).
pub fn parse_networks(list: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    list.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{s:?} is not an IP address or CIDR (e.g. \"192.0.2.0/24\")"))
        })
        .collect()
}

/// Whether `ip` is in one of `nets`; an IPv4-mapped IPv6 address counts as its IPv4 address.
pub fn in_networks(nets: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// Policy for bare LF / bare CR, as Postfix's `smtpd_forbid_bare_newline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareNewline {
    /// Refuse with `550 5.5.2` and close the connection (the smuggling-safe default).
    Reject,
    /// Turn each bare LF / bare CR into CRLF and carry on.
    Normalize,
}

/// `[upstream]`: where accepted mail goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `maildir:DIR` (embedded delivery) or `smtp://host:port`.
    pub url: String,
    /// Pass the real client to the upstream with XCLIENT (Postfix).
    pub xclient: Xclient,
    /// Pass the real client with XFORWARD when XCLIENT is not used and the upstream offers it.
    pub xforward: bool,
    /// Use STARTTLS towards the upstream when it offers it (opportunistic, certificate not
    /// verified: RFC 7435 semantics; the upstream is normally on the same host).
    pub starttls: bool,
    /// Name we give in EHLO to the upstream (default: `server.hostname`).
    pub helo_name: Option<String>,
    pub connect_timeout_secs: u64,
    /// Time to wait for the upstream's reply to a command (RFC 5321 §4.5.3.2: 5 minutes).
    pub command_timeout_secs: u64,
    /// Time to wait for the upstream's reply after the message data (RFC 5321 §4.5.3.2.6: 10 minutes).
    pub data_timeout_secs: u64,
    /// Send the message with BDAT when the upstream offers CHUNKING (saves a round trip).
    pub chunking: bool,
    /// Idle upstream connections kept for reuse by later sessions (0: none).
    pub pool_size: usize,
    /// How long an idle upstream connection is kept.
    pub pool_idle_secs: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: "maildir:./mail".to_string(),
            xclient: Xclient::Auto,
            xforward: true,
            starttls: false,
            helo_name: None,
            connect_timeout_secs: 30,
            command_timeout_secs: 300,
            data_timeout_secs: 600,
            chunking: true,
            pool_size: 16,
            pool_idle_secs: 10,
        }
    }
}

/// When to use XCLIENT towards the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Xclient {
    /// Use it when the upstream advertises it.
    Auto,
    /// Require it: without it the transaction is tempfailed (misconfigured upstream).
    Always,
    /// Never use it.
    Never,
}

/// `[tls]`: certificate for STARTTLS towards clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `mailwarden=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// `"human"` (one readable line per event) or `"json"` (one JSON object per line, for
    /// log shippers).
    pub format: LogFormat,
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `[metrics]`: where `/metrics`, `/healthz` and `/readyz` are served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port`; `""` turns the endpoint off. Loopback by default: the metrics say a lot
    /// about the mail flow, so expose them further only on purpose.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl MetricsConfig {
    /// The address to serve on; `None` when the endpoint is off.
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| {
            format!("{listen:?} is not host:port (e.g. \"127.0.0.1:9464\", or \"\" for off)")
        })
    }
}

/// A duration in the config: whole seconds (`30`) or a string with a unit (`"30s"`,
/// `"500ms"`, `"2m"`, `"1h"`, `"35d"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub std::time::Duration);

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        let parsed = match Raw::deserialize(d)? {
            Raw::Secs(s) => Some(std::time::Duration::from_secs(s)),
            Raw::Text(t) => parse_duration(&t),
        };
        parsed.map(Interval).ok_or_else(|| {
            serde::de::Error::custom(
                "expected seconds (30) or a duration with a unit (\"500ms\", \"30s\", \"2m\", \"1h\", \"2d\")",
            )
        })
    }
}

fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(std::time::Duration::from_millis(n)),
        "s" => Some(std::time::Duration::from_secs(n)),
        "m" | "min" => Some(std::time::Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(std::time::Duration::from_secs(n.checked_mul(3600)?)),
        "d" => Some(std::time::Duration::from_secs(n.checked_mul(86_400)?)),
        _ => None,
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Human,
        }
    }
}

/// Where accepted mail goes, parsed from `upstream.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    Maildir(PathBuf),
    Smtp(String),
}

/// The problems found while validating, each `origin: key: what to do`.
struct Problems<'a> {
    origin: &'a str,
    list: Vec<String>,
}

impl Problems<'_> {
    fn add(&mut self, key: &str, what: String) {
        self.list.push(format!("{}: {key}: {what}", self.origin));
    }
}

/// A configuration error, worded for the admin who has to fix the file.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read config file {}: {e} (pass --config PATH, or run from the directory holding mailwarden.toml)",
                path.display()
            ))
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let place = match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    format!("{origin}:{line}:{col}")
                }
                None => origin.to_string(),
            };
            ConfigError(format!("{place}: {}", e.message()))
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks every value; all problems are reported at once, one per line.
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let mut p = Problems {
            origin,
            list: Vec::new(),
        };
        self.validate_server(&mut p);
        if let Err(e) = self.upstream_target() {
            p.list.push(format!("{origin}: {e}"));
        }
        self.validate_policy(&mut p);
        self.validate_auth(&mut p);
        if let Err(e) = self.clamav.validate() {
            p.list.push(format!("{origin}: {e}"));
        }
        if let Err(e) = self.classifier.validate() {
            p.list.push(format!("{origin}: {e}"));
        }
        if let Err(e) = self.milter.validate() {
            p.list.push(format!("{origin}: {e}"));
        }
        if let Err(e) = self.state.target() {
            p.list.push(format!("{origin}: {e}"));
        }
        if let Err(e) = self.greylist.validate() {
            p.list.push(format!("{origin}: {e}"));
        }
        if let Err(e) = state::validate_ratelimits(&self.ratelimit) {
            p.list.push(format!("{origin}: {e}"));
        }
        if self.classifier.enabled && self.classifier.uses_redis() && self.state.url.is_embedded() {
            p.list.push(format!(
                "{origin}: classifier.store = \"redis\" keeps the model in the shared state store, but [state] url is empty: set url = \"redis://127.0.0.1:6379/0\" or give the classifier a file (store = \"classifier.db\")"
            ));
        }
        if p.list.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(p.list.join("\n")))
        }
    }

    fn validate_server(&self, p: &mut Problems) {
        let s = &self.server;
        if s.listen.is_empty() && !self.milter.enabled() {
            p.add(
                "server.listen",
                "needs at least one address, e.g. [\"127.0.0.1:2525\"] (an empty list is for a milter-only node: then set [milter] listen)".into(),
            );
        }
        if !is_valid_hostname(&s.hostname) {
            p.add(
                "server.hostname",
                format!(
                    "{:?} is not a host name (letters, digits, '-' and '.', e.g. \"mx.example.org\")",
                    s.hostname
                ),
            );
        }
        if s.max_message_size < 1024 {
            p.add(
                "server.max_message_size",
                "must be at least 1024 bytes".into(),
            );
        }
        if s.max_recipients == 0 {
            p.add("server.max_recipients", "must be at least 1".into());
        }
        if s.max_sessions == 0 || s.max_sessions_per_ip == 0 {
            p.add(
                "server.max_sessions / server.max_sessions_per_ip",
                "must be at least 1".into(),
            );
        }
        if s.max_command_line < 512 {
            p.add(
                "server.max_command_line",
                "must be at least 512 (RFC 5321 §4.5.3.1.4)".into(),
            );
        }
        if s.max_text_line < 1000 {
            p.add(
                "server.max_text_line",
                "must be at least 1000 (RFC 5321 §4.5.3.1.6)".into(),
            );
        }
        if s.command_timeout_secs == 0 || s.data_timeout_secs == 0 {
            p.add("server.*_timeout_secs", "must be at least 1 second".into());
        }
        if let Err(e) = self.metrics.address() {
            p.add("metrics.listen", e);
        }
        match s.trusted_proxy_nets() {
            Err(e) => p.add("server.trusted_proxies", e),
            Ok(nets) if s.proxy_protocol && nets.is_empty() => {
                p.add(
                    "server.proxy_protocol",
                    "is true but server.trusted_proxies is empty: list the load balancers' addresses (e.g. [\"10.0.0.5\"]), or set proxy_protocol = false".into(),
                );
            }
            Ok(_) => {}
        }
        let u = &self.upstream;
        if u.connect_timeout_secs == 0 || u.command_timeout_secs == 0 || u.data_timeout_secs == 0 {
            p.add(
                "upstream.*_timeout_secs",
                "must be at least 1 second".into(),
            );
        }
        if let Some(name) = &u.helo_name
            && !is_valid_hostname(name)
        {
            p.add("upstream.helo_name", format!("{name:?} is not a host name"));
        }
    }

    fn validate_auth(&self, p: &mut Problems) {
        if self.dns.timeout_ms == 0 || self.dns.timeout_ms > 60_000 {
            p.add(
                "dns.timeout_ms",
                "must be between 1 and 60000 (milliseconds)".into(),
            );
        }
        if let Err(e) = self.dns.nameserver_addrs() {
            p.add("dns.nameservers", e);
        }
        if let Err(e) = self.auth.trusted_nets() {
            p.add("auth.trusted_networks", e);
        }
        for (i, list) in self.dnsbl.iter().enumerate() {
            if let Err(e) = list.validate() {
                p.add(&format!("[[dnsbl]] #{}", i + 1), e);
            }
        }
        for (i, list) in self.uribl.iter().enumerate() {
            if let Err(e) = list.validate() {
                p.add(&format!("[[uribl]] #{}", i + 1), e);
            }
        }
    }

    fn validate_policy(&self, problems: &mut Problems) {
        let p = &self.policy;
        if self.rules.score_set > 3 {
            problems.add("rules.score_set", "must be 0, 1, 2 or 3".into());
        }
        if self.rules.scan_timeout_ms == 0 {
            problems.add("rules.scan_timeout_ms", "must be at least 1".into());
        }
        let check = |problems: &mut Problems, key: &str, tag: f64, reject: f64| {
            if !tag.is_finite() || !reject.is_finite() || tag > reject {
                problems.add(
                    key,
                    format!("tag_score ({tag}) must not be above reject_score ({reject})"),
                );
            }
        };
        check(problems, "policy", p.tag_score, p.reject_score);
        // Only a pair the admin wrote together must be ordered: a domain that sets just
        // reject_score = 3 under a global tag_score of 5 simply rejects from 3 on.
        for (domain, d) in &p.domains {
            if let (Some(tag), Some(reject)) = (d.tag_score, d.reject_score) {
                check(
                    problems,
                    &format!("policy.domains.\"{domain}\""),
                    tag,
                    reject,
                );
            }
        }
        let quarantines = p.rules.values().any(|r| r.action == Action::Quarantine);
        if quarantines && p.quarantine_dir.is_empty() {
            problems.add(
                "policy.rules",
                "an action = \"quarantine\" needs policy.quarantine_dir (where to keep the messages)".into(),
            );
        }
    }

    /// Parses `upstream.url`.
    pub fn upstream_target(&self) -> Result<UpstreamTarget, ConfigError> {
        parse_upstream_url(&self.upstream.url)
    }

    /// The name we use in EHLO towards the upstream.
    pub fn upstream_helo(&self) -> &str {
        self.upstream
            .helo_name
            .as_deref()
            .unwrap_or(&self.server.hostname)
    }
}

fn parse_upstream_url(url: &str) -> Result<UpstreamTarget, ConfigError> {
    if let Some(dir) = url.strip_prefix("maildir:") {
        if dir.is_empty() {
            return Err(ConfigError(
                "upstream.url: \"maildir:\" needs a directory, e.g. \"maildir:./mail\"".into(),
            ));
        }
        return Ok(UpstreamTarget::Maildir(PathBuf::from(dir)));
    }
    if let Some(rest) = url.strip_prefix("smtp://") {
        let hostport = rest.trim_end_matches('/');
        let valid = match hostport.rsplit_once(':') {
            Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
            None => false,
        };
        if !valid {
            return Err(ConfigError(format!(
                "upstream.url: {url:?} needs host and port, e.g. \"smtp://127.0.0.1:10025\""
            )));
        }
        return Ok(UpstreamTarget::Smtp(hostport.to_string()));
    }
    Err(ConfigError(format!(
        "upstream.url: {url:?} is not supported; use \"maildir:DIR\" or \"smtp://HOST:PORT\""
    )))
}

/// A DNS host name (or an address literal), as allowed in EHLO and our banner.
pub fn is_valid_hostname(name: &str) -> bool {
    if name.starts_with('[') && name.ends_with(']') {
        return name.len() > 2;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = before.len()
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../../mailwarden.toml");
        let config = Config::parse(text, "mailwarden.toml").expect("shipped config parses");
        assert_eq!(
            config.upstream_target().expect("target"),
            UpstreamTarget::Maildir(PathBuf::from("./mail"))
        );
    }

    #[test]
    fn empty_config_gets_defaults() {
        let config = Config::parse("", "x.toml").expect("empty is fine");
        assert_eq!(config.server.max_message_size, 26_214_400);
        assert_eq!(config.server.bare_newline, BareNewline::Reject);
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let err = Config::parse("[server]\nhostname = \"a.b\"\nlisten_on = []\n", "m.toml")
            .expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.starts_with("m.toml:3:"), "{msg}");
        assert!(msg.contains("listen_on"), "{msg}");
    }

    #[test]
    fn bad_upstream_url_says_what_works() {
        let err = Config::parse("[upstream]\nurl = \"ftp://x\"\n", "m.toml").expect_err("bad url");
        assert!(err.to_string().contains("smtp://HOST:PORT"), "{err}");
        let err =
            Config::parse("[upstream]\nurl = \"smtp://host\"\n", "m.toml").expect_err("no port");
        assert!(err.to_string().contains("host and port"), "{err}");
    }

    #[test]
    fn bad_enum_value_is_an_error() {
        let err =
            Config::parse("[server]\nbare_newline = \"allow\"\n", "m.toml").expect_err("enum");
        assert!(err.to_string().starts_with("m.toml:2:"), "{err}");
    }

    #[test]
    fn dns_and_auth_sections() {
        let config = Config::parse(
            "[dns]\nnameservers = [\"127.0.0.1:5353\"]\ntimeout_ms = 500\n[auth]\nenabled = true\ndmarc_enforce = false\nspf_reject_fail = true\ntempfail_on_dns_error = true\ntrusted_networks = [\"192.0.2.0/24\"]\n",
            "m.toml",
        )
        .expect("valid");
        assert_eq!(config.dns.timeout_ms, 500);
        assert!(!config.auth.dmarc_enforce && config.auth.spf_reject_fail);
        let defaults = Config::parse("", "m.toml").expect("empty");
        assert!(defaults.auth.enabled && defaults.auth.dmarc_enforce);
        assert!(!defaults.auth.spf_reject_fail && !defaults.auth.tempfail_on_dns_error);
        assert_eq!(defaults.dns.timeout_ms, 2000);
        assert!(defaults.dns.nameservers.is_empty());
        let e = Config::parse("[dns]\nnameservers = [\"resolver\"]\n", "m.toml").expect_err("bad");
        assert!(e.to_string().contains("dns.nameservers"), "{e}");
        let e = Config::parse("[auth]\ntrusted_networks = [\"x\"]\n", "m.toml").expect_err("bad");
        assert!(e.to_string().contains("auth.trusted_networks"), "{e}");
        let e = Config::parse("[auth]\nspf_reject = true\n", "m.toml").expect_err("unknown");
        assert!(e.to_string().starts_with("m.toml:2:"), "{e}");
    }

    #[test]
    fn dnsbl_tables() {
        let config = Config::parse(
            "[[dnsbl]]\nzone = \"zen.spamhaus.org\"\nsymbol = \"RBL_SPAMHAUS\"\nscore = 4.0\n[[dnsbl]]\nzone = \"bl.test\"\nsymbol = \"RBL_X\"\ncodes = [\"127.0.0.2\", \"127.0.0.3\"]\n",
            "m.toml",
        )
        .expect("valid");
        assert_eq!(config.dnsbl.len(), 2);
        assert_eq!(config.dnsbl[0].score, Some(4.0));
        assert_eq!(config.dnsbl[0].blocked_codes, default_blocked_codes());
        assert_eq!(config.dnsbl[1].codes.len(), 2);
        assert!(Config::parse("", "m.toml").expect("empty").dnsbl.is_empty());
        let config = Config::parse(
            "[[uribl]]\nzone = \"multi.surbl.org\"\nsymbol = \"URIBL_SURBL\"\nscore = 4.0\n",
            "m.toml",
        )
        .expect("uribl");
        assert_eq!(config.uribl.len(), 1);
        assert_eq!(config.uribl[0].score, Some(4.0));
        assert_eq!(config.uribl[0].blocked_codes, default_blocked_codes());
        let e = Config::parse("[[uribl]]\nzone = \"bl\"\nsymbol = \"X\"\n", "m.toml")
            .expect_err("bad uribl zone");
        assert!(e.to_string().contains("[[uribl]] #1"), "{e}");
        let e = Config::parse(
            "[[dnsbl]]\nzone = \"bl.test\"\nsymbol = \"rbl\"\n",
            "m.toml",
        )
        .expect_err("lower-case symbol");
        assert!(
            e.to_string().contains("[[dnsbl]] #1") && e.to_string().contains("symbol"),
            "{e}"
        );
        let e = Config::parse("[[dnsbl]]\nzone = \"bl\"\nsymbol = \"X\"\n", "m.toml")
            .expect_err("bad zone");
        assert!(e.to_string().contains("zone"), "{e}");
        let e = Config::parse("[[dnsbl]]\nzone = \"bl.test\"\n", "m.toml").expect_err("no symbol");
        assert!(e.to_string().contains("symbol"), "{e}");
        let e = Config::parse(
            "[[dnsbl]]\nzone = \"bl.test\"\nsymbol = \"X\"\ncodes = [\"x\"]\n",
            "m.toml",
        )
        .expect_err("bad code");
        assert!(e.to_string().starts_with("m.toml:4:"), "{e}");
    }

    #[test]
    fn hostname_validation() {
        assert!(is_valid_hostname("mx.example.test"));
        assert!(is_valid_hostname("[192.0.2.1]"));
        assert!(!is_valid_hostname("bad name"));
        assert!(!is_valid_hostname("a..b"));
        assert!(!is_valid_hostname("evil\r\nX-Injected: 1"));
    }
}
