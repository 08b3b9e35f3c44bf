//! `[state]`, `[greylist]` and `[[ratelimit]]`: the state several nodes share (greylisting
//! triplets, rate-limit buckets, the classifier model) and the two checks that live on it.
//!
//! One node needs nothing but itself: with `url = ""` (the default) the state is an embedded
//! file under `dir` that survives restarts. Several nodes point `url` at one Redis (standalone,
//! Sentinel or Cluster) and see each other's triplets, buckets and learns.

use std::time::Duration;

use serde::Deserialize;

use super::Interval;

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Where the shared state lives: `""` (embedded, one node), `redis://host:port/db`,
    /// `rediss://…` (TLS), `redis+sentinel://host:port,host:port/master/db`, or a Redis Cluster
    /// as several seeds (`"redis://h1:7000,redis://h2:7000"`, `redis+cluster://h1:7000,h2:7000`
    /// or a list of URLs).
    pub url: StateUrl,
    /// The embedded store's directory (one node; `url = ""`).
    pub dir: String,
    /// What a check does when the store cannot answer (Redis down, slow, flushed mid-answer).
    pub on_error: StateOnError,
    /// Longest wait for one answer from the store (`"500ms"`, `"2s"`); past it the check
    /// fails per `on_error`.
    pub timeout: Interval,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            url: StateUrl::default(),
            dir: "state".to_string(),
            on_error: StateOnError::Tempfail,
            timeout: Interval(Duration::from_millis(500)),
        }
    }
}

/// Where the state lives, as parsed from `[state]` (no client library types: `state::` turns
/// it into connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateTarget {
    /// The embedded store in this directory.
    Embedded { dir: std::path::PathBuf },
    /// One Redis server: a `redis://`, `rediss://` or `unix://` URL.
    Standalone(String),
    /// A Redis Cluster: the seed URLs (`redis://` or `rediss://`, any of the masters).
    Cluster(Vec<String>),
    /// Redis Sentinel: the sentinels (`host:port`) and the monitored master's name.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        db: i64,
        /// `rediss+sentinel://`: TLS to the master.
        tls: bool,
        /// `user:password@` before the hosts: for the master (and the sentinels).
        username: Option<String>,
        password: Option<String>,
    },
}

impl StateConfig {
    /// Parses `url` (and `dir`) and checks `timeout`; the error says what to write.
    pub fn target(&self) -> Result<StateTarget, String> {
        if self.timeout.0 < Duration::from_millis(10) {
            return Err(format!(
                "state.timeout = {:?} leaves no time for an answer: write at least \"10ms\" (default \"500ms\")",
                self.timeout.0
            ));
        }
        let urls = &self.url.0;
        if urls.is_empty() {
            if self.dir.trim().is_empty() {
                return Err("state.dir is empty: name a directory for the embedded state (dir = \"state\") or set state.url".into());
            }
            return Ok(StateTarget::Embedded {
                dir: std::path::PathBuf::from(&self.dir),
            });
        }
        let example = "write e.g. url = \"redis://127.0.0.1:6379/0\", \"rediss://redis.example:6380/0\", \"redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/0\" or a Cluster's seeds \"redis+cluster://10.0.0.1:7000,10.0.0.2:7000\"";
        if urls.len() == 1 {
            let url = &urls[0];
            if let Some(rest) = url
                .strip_prefix("redis+sentinel://")
                .map(|r| (r, false))
                .or_else(|| url.strip_prefix("rediss+sentinel://").map(|r| (r, true)))
            {
                return parse_sentinel(rest.0, rest.1)
                    .map_err(|e| format!("state.url = {url:?}: {e}; {example}"));
            }
            if let Some(rest) = url
                .strip_prefix("redis+cluster://")
                .map(|r| ("redis://", r))
                .or_else(|| {
                    url.strip_prefix("rediss+cluster://")
                        .map(|r| ("rediss://", r))
                })
            {
                let seeds = split_seeds(rest.1, rest.0);
                return check_seeds(seeds)
                    .map(StateTarget::Cluster)
                    .map_err(|e| format!("state.url = {url:?}: {e}; {example}"));
            }
            if url.contains(',') {
                let scheme = if url.starts_with("rediss://") {
                    "rediss://"
                } else {
                    "redis://"
                };
                let seeds = split_seeds(url.strip_prefix(scheme).unwrap_or(url), scheme);
                return check_seeds(seeds)
                    .map(StateTarget::Cluster)
                    .map_err(|e| format!("state.url = {url:?}: {e}; {example}"));
            }
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
            {
                return Err(format!(
                    "state.url = {url:?} is not a Redis URL; {example} (or url = \"\" for the embedded store)"
                ));
            }
            return Ok(StateTarget::Standalone(url.clone()));
        }
        check_seeds(urls.clone())
            .map(StateTarget::Cluster)
            .map_err(|e| format!("state.url: {e}; {example}"))
    }
}

/// `a:1,b:2` or `redis://a:1,redis://b:2` → full URLs.
fn split_seeds(list: &str, scheme: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.starts_with("redis://") || s.starts_with("rediss://") {
                s.to_string()
            } else {
                format!("{scheme}{s}")
            }
        })
        .collect()
}

fn check_seeds(seeds: Vec<String>) -> Result<Vec<String>, String> {
    if seeds.is_empty() {
        return Err("no Cluster seed given".into());
    }
    for s in &seeds {
        if !(s.starts_with("redis://") || s.starts_with("rediss://")) {
            return Err(format!(
                "Cluster seed {s:?} is not a redis:// or rediss:// URL"
            ));
        }
        let host = s.split_once("://").map_or("", |(_, h)| h);
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        if host.is_empty() || host.starts_with('/') {
            return Err(format!("Cluster seed {s:?} names no host"));
        }
    }
    Ok(seeds)
}

/// `[user:password@]host:port[,host:port…]/master[/db]`.
fn parse_sentinel(rest: &str, tls: bool) -> Result<StateTarget, String> {
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (Some(auth), rest),
        None => (None, rest),
    };
    let (username, password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
            None => (None, Some(a.to_string())),
        },
    };
    let mut parts = rest.splitn(3, '/');
    let hosts = parts.next().unwrap_or("");
    let master = parts.next().unwrap_or("").trim();
    let db = match parts.next().map(str::trim) {
        None | Some("") => 0,
        Some(d) => d
            .parse::<i64>()
            .map_err(|_| format!("database {d:?} is not a number"))?,
    };
    let sentinels: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.contains(':') {
                h.to_string()
            } else {
                format!("{h}:26379")
            }
        })
        .collect();
    if sentinels.is_empty() {
        return Err("no sentinel host given".into());
    }
    if master.is_empty() {
        return Err("no master name given (…/mymaster)".into());
    }
    Ok(StateTarget::Sentinel {
        sentinels,
        master: master.to_string(),
        db,
        tls,
        username,
        password,
    })
}

/// `[state] url`: one URL (possibly several comma-separated Cluster seeds) or a list of seeds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateUrl(pub Vec<String>);

impl<'de> Deserialize<'de> for StateUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(s) if s.trim().is_empty() => StateUrl(Vec::new()),
            Raw::One(s) => StateUrl(vec![s.trim().to_string()]),
            Raw::Many(v) => StateUrl(
                v.into_iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            ),
        })
    }
}

impl StateUrl {
    /// No URL: the embedded store.
    pub fn is_embedded(&self) -> bool {
        self.0.is_empty()
    }
}

/// `[state] on_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateOnError {
    /// Defer (451 4.3.0): the client retries, nothing passes unchecked.
    Tempfail,
    /// Skip the check (mail flows without greylisting and rate limits while the store is down).
    Accept,
}

impl StateOnError {
    pub fn as_str(self) -> &'static str {
        match self {
            StateOnError::Tempfail => "tempfail",
            StateOnError::Accept => "accept",
        }
    }
}

/// `[greylist]` (RFC 6647).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GreylistConfig {
    pub enabled: bool,
    /// A retry sooner than this after the first attempt is deferred again.
    pub delay: Interval,
    /// A retry later than this after the first attempt starts over (a new first attempt).
    pub retry_window: Interval,
    /// After this many triplets passed from one client network, the network is let through
    /// without greylisting for `allow_for` (0: never).
    pub auto_allow_after: u64,
    pub allow_for: Interval,
    /// Above 0: greylist only messages scoring at least this (decided at end of data, so the
    /// message is received before it is deferred); 0: at RCPT, every triplet.
    pub min_score: f64,
    /// The client network of a triplet: IPv4 prefix length (24: one /24 is one sender farm).
    pub ipv4_prefix: u8,
    /// IPv6 prefix length (64: one end site).
    pub ipv6_prefix: u8,
    /// Big senders never greylisted when they authenticate: a domain here (or a subdomain of
    /// it) whose MAIL FROM passes SPF (at RCPT), or whose DKIM signature aligns (at end of
    /// data, `min_score > 0`), skips greylisting. They retry from other addresses, which a
    /// triplet cannot follow.
    pub allowlist: Vec<String>,
}

impl Default for GreylistConfig {
    fn default() -> Self {
        GreylistConfig {
            enabled: false,
            delay: Interval(Duration::from_secs(5 * 60)),
            retry_window: Interval(Duration::from_secs(2 * 86_400)),
            auto_allow_after: 5,
            allow_for: Interval(Duration::from_secs(35 * 86_400)),
            min_score: 0.0,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            allowlist: Vec::new(),
        }
    }
}

impl GreylistConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.delay.0 >= self.retry_window.0 {
            return Err(format!(
                "greylist.delay ({:?}) must be shorter than greylist.retry_window ({:?}), e.g. delay = \"5m\", retry_window = \"2d\"",
                self.delay.0, self.retry_window.0
            ));
        }
        if self.ipv4_prefix > 32 || self.ipv4_prefix == 0 {
            return Err(format!(
                "greylist.ipv4_prefix = {}: write 1 to 32 (24 is usual)",
                self.ipv4_prefix
            ));
        }
        if self.ipv6_prefix > 128 || self.ipv6_prefix == 0 {
            return Err(format!(
                "greylist.ipv6_prefix = {}: write 1 to 128 (64 is usual)",
                self.ipv6_prefix
            ));
        }
        if !self.min_score.is_finite() || self.min_score < 0.0 {
            return Err(format!(
                "greylist.min_score = {}: write 0 (greylist at RCPT) or a positive score",
                self.min_score
            ));
        }
        if self.allow_for.0 < self.retry_window.0 {
            return Err(format!(
                "greylist.allow_for ({:?}) is shorter than greylist.retry_window ({:?}): a sender that passed would be greylisted again soon after; write e.g. allow_for = \"35d\"",
                self.allow_for.0, self.retry_window.0
            ));
        }
        Ok(())
    }
}

/// `[[ratelimit]]`: one token bucket per value of `key`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatelimitConfig {
    /// Names the limit in metrics, logs and `scan --explain`; unique.
    pub name: String,
    pub key: RateKey,
    /// Messages (or recipients) per period: `"100/h"`, `"10/min"`, `"5/s"`, `"1000/d"`.
    pub rate: Rate,
    /// The bucket's size: this many may come at once before the rate applies.
    #[serde(default = "default_burst")]
    pub burst: u64,
    /// Count recipients instead of messages.
    #[serde(default)]
    pub recipients: bool,
    #[serde(default)]
    pub action: RateAction,
}

fn default_burst() -> u64 {
    1
}

/// What a limit is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    ClientIp,
    /// The client's network (the greylist prefixes: /24, /64).
    ClientNet,
    Helo,
    Sender,
    SenderDomain,
    Recipient,
    RecipientDomain,
    /// The authenticated user (AUTH, or the MTA's `{auth_authen}` through the milter);
    /// clients that did not authenticate are not counted.
    User,
}

impl RateKey {
    pub fn as_str(self) -> &'static str {
        match self {
            RateKey::ClientIp => "client_ip",
            RateKey::ClientNet => "client_net",
            RateKey::Helo => "helo",
            RateKey::Sender => "sender",
            RateKey::SenderDomain => "sender_domain",
            RateKey::Recipient => "recipient",
            RateKey::RecipientDomain => "recipient_domain",
            RateKey::User => "user",
        }
    }

    /// Known only per recipient (answered at RCPT).
    pub fn per_recipient(self) -> bool {
        matches!(self, RateKey::Recipient | RateKey::RecipientDomain)
    }
}

/// `[[ratelimit]] action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateAction {
    /// 451 4.7.0: come back later.
    #[default]
    Tempfail,
    /// 550 5.7.1.
    Reject,
}

/// A rate: `count` per `per`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: u64,
    pub per: Duration,
}

impl Rate {
    /// Tokens per second.
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }

    pub fn parse(text: &str) -> Option<Rate> {
        let (count, unit) = text.trim().split_once('/')?;
        let count: u64 = count.trim().parse().ok()?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return None,
        };
        (count > 0).then_some(Rate { count, per })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Rate::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "rate = {text:?}: write a count above 0 per period, e.g. \"100/h\", \"10/min\", \"5/s\" or \"1000/d\""
            ))
        })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Every problem with the `[[ratelimit]]` tables.
pub fn validate_ratelimits(limits: &[RatelimitConfig]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for l in limits {
        if l.name.trim().is_empty()
            || !l
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(format!(
                "ratelimit name {:?}: write letters, digits, '-', '_' or '.', e.g. name = \"per-client\"",
                l.name
            ));
        }
        if !seen.insert(l.name.as_str()) {
            return Err(format!(
                "ratelimit name {:?} is used twice: give each [[ratelimit]] its own name",
                l.name
            ));
        }
        if l.burst == 0 {
            return Err(format!(
                "ratelimit {:?}: burst = 0 lets nothing through; write 1 or more",
                l.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_every_unit() {
        assert_eq!(
            Rate::parse("100/h").map(|r| r.per_second()),
            Some(100.0 / 3600.0)
        );
        assert_eq!(Rate::parse("3/min").map(|r| r.count), Some(3));
        assert_eq!(Rate::parse(" 5 / s ").map(|r| r.per.as_secs()), Some(1));
        assert_eq!(Rate::parse("1000/d").map(|r| r.per.as_secs()), Some(86_400));
        assert!(Rate::parse("0/h").is_none());
        assert!(Rate::parse("100").is_none());
        assert!(Rate::parse("100/fortnight").is_none());
    }

    #[test]
    fn url_is_one_string_seeds_or_empty() {
        #[derive(Deserialize)]
        struct T {
            url: StateUrl,
        }
        let t: T = toml::from_str("url = \"\"").expect("empty");
        assert!(t.url.is_embedded());
        let t: T = toml::from_str("url = \"redis://127.0.0.1:6379/0\"").expect("one");
        assert_eq!(t.url.0, vec!["redis://127.0.0.1:6379/0"]);
        let t: T = toml::from_str("url = [\"redis://a:1\", \"redis://b:2\"]").expect("list");
        assert_eq!(t.url.0.len(), 2);
    }

    fn target(urls: &[&str]) -> Result<StateTarget, String> {
        StateConfig {
            url: StateUrl(urls.iter().map(|s| s.to_string()).collect()),
            ..StateConfig::default()
        }
        .target()
    }

    #[test]
    fn every_url_form_names_its_target() {
        assert_eq!(
            target(&[]),
            Ok(StateTarget::Embedded {
                dir: "state".into()
            })
        );
        assert_eq!(
            target(&["redis://127.0.0.1:6379/0"]),
            Ok(StateTarget::Standalone("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(
            target(&["redis+cluster://127.0.0.1:7000,127.0.0.1:7001"]),
            Ok(StateTarget::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ]))
        );
        assert_eq!(
            target(&["redis://127.0.0.1:7000,127.0.0.1:7001"]),
            target(&["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"])
        );
        assert_eq!(
            target(&["redis+sentinel://:pw@10.0.0.1,10.0.0.2:26380/mymaster/2"]),
            Ok(StateTarget::Sentinel {
                sentinels: vec!["10.0.0.1:26379".into(), "10.0.0.2:26380".into()],
                master: "mymaster".into(),
                db: 2,
                tls: false,
                username: None,
                password: Some("pw".into()),
            })
        );
        assert!(
            target(&["http://x"])
                .unwrap_err()
                .contains("not a Redis URL")
        );
        assert!(
            target(&["redis+sentinel://10.0.0.1"])
                .unwrap_err()
                .contains("master")
        );
    }

    #[test]
    fn greylist_delay_must_be_inside_the_window() {
        let g = GreylistConfig {
            delay: Interval(Duration::from_secs(3 * 86_400)),
            ..GreylistConfig::default()
        };
        assert!(g.validate().unwrap_err().contains("retry_window"));
        assert!(GreylistConfig::default().validate().is_ok());
    }
}
