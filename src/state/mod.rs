//! The state that outlives one message and is shared by every node: greylisting triplets and
//! rate-limit buckets (the classifier's model has its own store trait, with a Redis backend
//! built on [`redis_store`] here).
//!
//! One trait, [`StateStore`], two stores: [`embedded`] (one SQLite file under `[state] dir`,
//! one node, survives restarts) and [`redis_store`] (standalone, Sentinel or Cluster; every node sees
//! every other's state). Each operation is what one check needs for one message, in one round
//! trip — the whole read-decide-write runs inside the store (a Lua script on Redis, one
//! transaction in SQLite), so two nodes answering the same client at once cannot both take the
//! last token or both see a "first attempt".
//!
//! [`State`] wraps a store with what every caller needs the same way: a timeout on each call,
//! the error counters, and the "is it answering" status `/readyz` reports. It knows nothing of
//! SMTP; the checks (`filter::greylist`, `filter::ratelimit`) turn its answers into replies.
//!
//! Keys (Redis) are namespaced `mw:`, carry their expiry, and put everything one operation
//! touches in one hash slot (`{…}` tags), so a Cluster runs every script on one node:
//! - `mw:{g:<net>}:t:<digest>` a triplet (first seen, passed), expires after the retry window
//!   or, once passed, after `allow_for`;
//! - `mw:{g:<net>}:n` the client network's passed-triplet count and auto-allow time;
//! - `mw:{r:<limit>:<value>}` one token bucket, expires when it would be full again.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{StateConfig, StateOnError, StateTarget};

pub mod embedded;
pub mod redis_store;

/// A boxed future, for the object-safe store trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the store did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// Cannot reach it (refused, down, Cluster slots not served, Sentinel knows no master).
    Unavailable(String),
    /// No answer within `[state] timeout`.
    Timeout(Duration),
    /// It answered something this version cannot read (a key of another type, a script error).
    Reply(String),
    /// The embedded file is not a state file, or a damaged one.
    Corrupt { path: PathBuf, detail: String },
    /// The embedded file cannot be opened, read or written.
    Io { path: PathBuf, detail: String },
}

impl StateError {
    /// For the `kind` label of `mailwarden_state_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            StateError::Unavailable(_) => "unavailable",
            StateError::Timeout(_) => "timeout",
            StateError::Reply(_) => "reply",
            StateError::Corrupt { .. } => "corrupt",
            StateError::Io { .. } => "io",
        }
    }
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Unavailable(d) => write!(f, "state store unavailable: {d}"),
            StateError::Timeout(t) => write!(
                f,
                "state store did not answer within {t:?} (raise [state] timeout if it is only slow)"
            ),
            StateError::Reply(d) => write!(f, "state store answered unexpectedly: {d}"),
            StateError::Corrupt { path, detail } => write!(
                f,
                "{}: not a mailwarden state file or damaged ({detail}); move it away to start with empty state (greylisting starts over)",
                path.display()
            ),
            StateError::Io { path, detail } => write!(f, "{}: {detail}", path.display()),
        }
    }
}

impl std::error::Error for StateError {}

/// What greylisting needs from `[greylist]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreyPolicy {
    pub delay: Duration,
    pub retry_window: Duration,
    /// Passed triplets after which the network is allowed (0: never).
    pub auto_allow_after: u64,
    pub allow_for: Duration,
}

/// One greylisting triplet (RFC 6647 §2.2). The parts are normalised by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Triplet {
    /// The client network, e.g. `192.0.2.0/24`.
    pub net: String,
    /// The envelope sender, lowercased, VERP/SRS tags removed; `""` for the null sender.
    pub sender: String,
    /// The recipient, lowercased.
    pub recipient: String,
}

impl Triplet {
    /// A fixed-size name for the sender and recipient pair (keys stay small whatever the
    /// addresses): hex of the first 16 bytes of SHA-256(sender NUL recipient).
    pub fn digest(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(self.sender.as_bytes());
        ctx.update(&[0]);
        ctx.update(self.recipient.as_bytes());
        let d = ctx.finish();
        d.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The store's answer for one triplet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grey {
    /// Deferred: a first attempt (`first`), or a retry before the delay is over. The client
    /// may pass from `retry_in` on.
    Deferred { retry_in: Duration, first: bool },
    /// A retry after the delay: passes now, and the triplet is remembered for `allow_for`.
    Passed,
    /// A triplet that passed before (within `allow_for`).
    Known,
    /// The client network passed `auto_allow_after` triplets and is let through.
    NetworkAllowed,
}

impl Grey {
    pub fn passes(self) -> bool {
        !matches!(self, Grey::Deferred { .. })
    }

    /// For the `result` label of `mailwarden_greylist_total` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Grey::Deferred { first: true, .. } => "deferred_new",
            Grey::Deferred { first: false, .. } => "deferred_early",
            Grey::Passed => "passed",
            Grey::Known => "known",
            Grey::NetworkAllowed => "network_allowed",
        }
    }
}

/// One token bucket to draw from.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// `<limit name>:<key value>` (the caller normalises the value).
    pub key: String,
    /// Tokens added per second.
    pub rate: f64,
    /// The bucket's size (a full bucket lets `burst` through at once).
    pub burst: u64,
    /// Tokens this message (or recipient) costs.
    pub cost: u64,
}

/// The store's answer for one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Take {
    /// Taken (or, when peeking, would be); `left` tokens remain.
    Allowed { left: f64 },
    /// Not enough tokens: nothing taken; enough are there again in `retry_in`.
    Limited { left: f64, retry_in: Duration },
}

impl Take {
    pub fn allowed(&self) -> bool {
        matches!(self, Take::Allowed { .. })
    }
}

/// A state store. Every call is one round trip; `peek` answers without changing anything
/// (`scan --explain`).
pub trait StateStore: Send + Sync {
    /// Looks up (and, unless `peek`, records) each triplet.
    fn greylist<'a>(
        &'a self,
        triplets: &'a [Triplet],
        policy: &'a GreyPolicy,
        peek: bool,
    ) -> BoxFuture<'a, Result<Vec<Grey>, StateError>>;

    /// Draws from each bucket independently (a limited one is left as it is).
    fn take<'a>(
        &'a self,
        buckets: &'a [Bucket],
        peek: bool,
    ) -> BoxFuture<'a, Result<Vec<Take>, StateError>>;

    /// Is it answering? `Ok` with a short description (for `/readyz`).
    fn ping(&self) -> BoxFuture<'_, Result<String, StateError>>;

    /// Where it is, without secrets (`redis://127.0.0.1:6379/0`, `embedded state/state.db`).
    fn describe(&self) -> String;
}

/// Plain-value hooks the state layer feeds (the metrics module sits beside it, not below).
#[derive(Clone, Copy)]
pub struct Hooks {
    /// An operation (`greylist`, `take`, `ping`) failed, with its [`StateError::kind`].
    pub error: fn(op: &'static str, kind: &'static str),
    /// An operation took this long (answered or not).
    pub timing: fn(op: &'static str, seconds: f64),
    /// The store answers (true) or not (false), after each call.
    pub up: fn(bool),
}

impl Hooks {
    pub const NONE: Hooks = Hooks {
        error: |_, _| {},
        timing: |_, _| {},
        up: |_| {},
    };
}

/// A store with the timeout, counters and status every caller shares.
pub struct State {
    store: Box<dyn StateStore>,
    timeout: Duration,
    on_error: StateOnError,
    hooks: Hooks,
    /// The last failure and when, while failing; `None` once a call succeeds again.
    failing: Mutex<Option<(String, Instant)>>,
}

impl State {
    /// Opens the configured store: the embedded file (created when missing; a damaged one is
    /// an error here, at start-up) or the Redis client (connected on first use, so a node
    /// starts while Redis is down and answers per `on_error` until it is back).
    pub fn open(config: &StateConfig, hooks: Hooks) -> Result<State, StateError> {
        let target = config
            .target()
            .map_err(|e| StateError::Unavailable(e.to_string()))?;
        let store: Box<dyn StateStore> = match &target {
            StateTarget::Embedded { dir } => Box::new(embedded::EmbeddedStore::open(dir)?),
            _ => Box::new(redis_store::RedisStore::new(&target, config.timeout.0)?),
        };
        Ok(State::with_store(
            store,
            config.timeout.0,
            config.on_error,
            hooks,
        ))
    }

    pub fn with_store(
        store: Box<dyn StateStore>,
        timeout: Duration,
        on_error: StateOnError,
        hooks: Hooks,
    ) -> State {
        State {
            store,
            timeout,
            on_error,
            hooks,
            failing: Mutex::new(None),
        }
    }

    pub fn on_error(&self) -> StateOnError {
        self.on_error
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }

    pub async fn greylist(
        &self,
        triplets: &[Triplet],
        policy: &GreyPolicy,
        peek: bool,
    ) -> Result<Vec<Grey>, StateError> {
        self.timed("greylist", self.store.greylist(triplets, policy, peek))
            .await
    }

    pub async fn take(&self, buckets: &[Bucket], peek: bool) -> Result<Vec<Take>, StateError> {
        self.timed("take", self.store.take(buckets, peek)).await
    }

    pub async fn ping(&self) -> Result<String, StateError> {
        self.timed("ping", self.store.ping()).await
    }

    /// The last failure while the store is failing (for `/readyz` between pings).
    pub fn failing(&self) -> Option<(String, Duration)> {
        let f = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        f.as_ref().map(|(e, at)| (e.clone(), at.elapsed()))
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        call: BoxFuture<'_, Result<T, StateError>>,
    ) -> Result<T, StateError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(StateError::Timeout(self.timeout)),
        };
        (self.hooks.timing)(op, started.elapsed().as_secs_f64());
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => {
                if let Some((e, at)) = failing.take() {
                    tracing::info!(store = %self.store.describe(), after = ?at.elapsed(), last_error = %e, "state store answers again");
                }
                (self.hooks.up)(true);
            }
            Err(e) => {
                (self.hooks.error)(op, e.kind());
                (self.hooks.up)(false);
                if failing.is_none() {
                    tracing::error!(store = %self.store.describe(), error = %e, on_error = self.on_error.as_str(), "state store failing; greylisting and rate limits answer per [state] on_error until it is back");
                }
                *failing = Some((e.to_string(), Instant::now()));
            }
        }
        result
    }
}

/// The client network of `ip`: the address masked to `v4`/`v6` bits, as `net/len`
/// (an IPv4-mapped IPv6 address counts as IPv4).
pub fn network_of(ip: std::net::IpAddr, v4: u8, v6: u8) -> String {
    let ip = match ip {
        std::net::IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        other => other,
    };
    let net = match ip {
        std::net::IpAddr::V4(a) => ipnet::Ipv4Net::new(a, v4.min(32))
            .map(|n| ipnet::IpNet::V4(n.trunc()))
            .unwrap_or(ipnet::IpNet::V4(ipnet::Ipv4Net::from(a))),
        std::net::IpAddr::V6(a) => ipnet::Ipv6Net::new(a, v6.min(128))
            .map(|n| ipnet::IpNet::V6(n.trunc()))
            .unwrap_or(ipnet::IpNet::V6(ipnet::Ipv6Net::from(a))),
    };
    net.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_masked_and_mapped_addresses_are_ipv4() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        assert_eq!(network_of(ip("192.0.2.77"), 24, 64), "192.0.2.0/24");
        assert_eq!(network_of(ip("::ffff:192.0.2.77"), 24, 64), "192.0.2.0/24");
        assert_eq!(
            network_of(ip("2001:db8:1:2:3:4:5:6"), 24, 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(network_of(ip("192.0.2.77"), 32, 64), "192.0.2.77/32");
    }

    #[test]
    fn triplet_digest_is_fixed_size_and_separates_the_parts() {
        let t = |s: &str, r: &str| Triplet {
            net: "n".into(),
            sender: s.into(),
            recipient: r.into(),
        };
        assert_eq!(t("a@b", "c@d").digest().len(), 32);
        assert_ne!(t("ab", "c").digest(), t("a", "bc").digest());
    }
}
