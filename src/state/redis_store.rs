//! The shared state on Redis, so that every node sees every other node's greylisting triplets
//! and rate-limit buckets: a client deferred by one node passes at another after the delay,
//! and a limit counts the messages of all nodes together.
//!
//! Standalone (`redis://`, `rediss://`, `unix://`), Sentinel and Cluster. Nothing connects when
//! the store is built (a node starts while Redis is down and answers per `[state] on_error`);
//! the first call connects, and the store reconnects by itself after a restart or, with
//! Sentinel, after a failover (it asks the sentinels for the master on every reconnect, and
//! at least once a second).
//!
//! Every decision is one Lua script on the server (read, decide, write, in one step), using
//! the server's clock (`TIME`) so nodes with skewed clocks agree. The scripts of one call
//! travel in one pipeline (standalone, Sentinel) or concurrently (Cluster: their keys live in
//! different slots, so on different nodes). Every key written gets an expiry.
//!
//! [`sync_connection`] is a blocking connection for the classifier's own threads (not on the
//! tokio runtime) to the same target.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ErrorKind, RedisError, RedisResult, Script,
    ScriptInvocation, ServerErrorKind, TlsMode, Value,
};
use tokio::sync::{Mutex, OnceCell};

use super::{BoxFuture, Bucket, Grey, GreyPolicy, StateError, StateStore, Take, Triplet};
use crate::config::StateTarget;

/// Greylisting of one triplet (RFC 6647 §2.1–2.3): network auto-allow, first attempt, early
/// retry, pass after the delay, known triplet. KEYS: triplet, network. ARGV: delay, retry
/// window and allow-for in ms, auto-allow count, peek (1/0). Returns {code, retry_in ms}:
/// 0 deferred first, 1 deferred early, 2 passed, 3 known, 4 network allowed.
const GREYLIST_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local delay, window, allow = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local after, peek = tonumber(ARGV[4]), ARGV[5] == '1'
local allowed_until = tonumber(redis.call('HGET', KEYS[2], 'allowed_until') or '0') or 0
if allowed_until > now then
  -- An allowed network stays allowed while it keeps sending (postgrey's sliding window).
  if not peek then
    redis.call('HSET', KEYS[2], 'allowed_until', now + allow)
    redis.call('PEXPIRE', KEYS[2], math.max(allow, 1))
  end
  return {4, 0}
end
local tr = redis.call('HMGET', KEYS[1], 'first', 'passed')
if tr[2] then
  if not peek then redis.call('PEXPIRE', KEYS[1], math.max(allow, 1)) end
  return {3, 0}
end
local first = tonumber(tr[1])
if first == nil or now > first + window then
  if not peek then
    redis.call('HSET', KEYS[1], 'first', now)
    redis.call('PEXPIRE', KEYS[1], math.max(window, 1))
  end
  return {0, delay}
end
if now < first + delay then return {1, first + delay - now} end
if peek then return {2, 0} end
redis.call('HSET', KEYS[1], 'passed', now)
redis.call('PEXPIRE', KEYS[1], math.max(allow, 1))
local n = redis.call('HINCRBY', KEYS[2], 'passed', 1)
if after > 0 and n >= after then
  redis.call('HSET', KEYS[2], 'allowed_until', now + allow)
end
redis.call('PEXPIRE', KEYS[2], math.max(allow, 1))
return {2, 0}
"#;

/// One token bucket. KEYS: the bucket. ARGV: rate (tokens/s), burst, cost, peek (1/0), expiry
/// in ms. Returns {taken (or, peeking, would be) 1/0, tokens left after it as a string,
/// retry_in ms} (a Lua number in a reply becomes an integer, so the fraction travels as text).
const BUCKET_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local peek = ARGV[4] == '1'
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) / 1000 * rate) end
if tokens >= cost then
  local left = tokens - cost
  if not peek then
    redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', left), 'ts', now)
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
  end
  return {1, string.format('%.17g', left), 0}
end
return {0, string.format('%.17g', tokens), math.ceil((cost - tokens) / rate * 1000)}
"#;

const EXAMPLE: &str = "write e.g. url = \"redis://127.0.0.1:6379/0\", \"rediss://redis.example:6380/0\", \"redis+sentinel://10.0.0.1:26379/mymaster/0\" or \"redis+cluster://10.0.0.1:7000,10.0.0.2:7000\"";

/// The Redis state store (see the module documentation).
pub struct RedisStore {
    backend: Backend,
    described: String,
    timeout: Duration,
    greylist: Script,
    bucket: Script,
}

/// The client for each kind of target, and its connection once made.
enum Backend {
    Single {
        client: Client,
        manager: OnceCell<ConnectionManager>,
    },
    Cluster {
        client: ClusterClient,
        conn: OnceCell<redis::cluster_async::ClusterConnection>,
    },
    Sentinel {
        client: Mutex<SentinelClient>,
        /// The master's connection, its address and when the sentinels last named it; `None`
        /// until the first call and after a failure, so the next call asks them again.
        conn: Mutex<Option<Master>>,
    },
}

/// The master the sentinels named.
#[derive(Clone)]
struct Master {
    conn: MultiplexedConnection,
    addr: String,
    named: Instant,
}

/// How long a Sentinel master is used before the sentinels are asked again: a failover is
/// followed within this even while the old master still accepts writes (before the sentinels
/// demote it, or when it is cut off from them).
const MASTER_RECHECK: Duration = Duration::from_secs(1);

/// A connection to use for one call (cheap clones of the shared ones).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
    Master(MultiplexedConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Master(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Master(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Master(c) => c.get_db(),
        }
    }
}

/// One script run: its keys and arguments.
struct Call {
    keys: Vec<String>,
    args: Vec<String>,
}

impl RedisStore {
    /// Builds the client for `target` (no connection yet). `timeout` bounds each connection
    /// attempt and each answer.
    pub fn new(target: &StateTarget, timeout: Duration) -> Result<RedisStore, StateError> {
        install_crypto_provider();
        let timeout = timeout.max(Duration::from_millis(1));
        let backend = match target {
            StateTarget::Standalone(url) => Backend::Single {
                client: open_client(url)?,
                manager: OnceCell::new(),
            },
            // Each seed gets half the call's time to connect: the first connection waits for
            // every seed, and one that drops packets must not cancel it every time.
            StateTarget::Cluster(seeds) => Backend::Cluster {
                client: cluster_client(seeds, timeout / 2)?,
                conn: OnceCell::new(),
            },
            StateTarget::Sentinel { .. } => Backend::Sentinel {
                client: Mutex::new(sentinel_client(target)?),
                conn: Mutex::new(None),
            },
            StateTarget::Embedded { .. } => return Err(not_redis()),
        };
        Ok(RedisStore {
            backend,
            described: describe_target(target),
            timeout,
            greylist: Script::new(GREYLIST_LUA),
            bucket: Script::new(BUCKET_LUA),
        })
    }

    /// The connection, connecting (or asking the sentinels) first when there is none.
    async fn conn(&self) -> Result<Conn, StateError> {
        match &self.backend {
            Backend::Single { client, manager } => {
                let m = manager
                    .get_or_try_init(|| async {
                        ConnectionManager::new_lazy_with_config(
                            client.clone(),
                            manager_config(self.timeout),
                        )
                    })
                    .await
                    .map_err(|e| self.error(e))?;
                Ok(Conn::Single(m.clone()))
            }
            Backend::Cluster { client, conn } => {
                let c = conn
                    .get_or_try_init(|| client.get_async_connection())
                    .await
                    .map_err(|e| self.error(e))?;
                Ok(Conn::Cluster(c.clone()))
            }
            Backend::Sentinel { client, conn } => {
                let mut slot = conn.lock().await;
                if let Some(m) = slot.as_ref().filter(|m| m.named.elapsed() < MASTER_RECHECK) {
                    return Ok(Conn::Master(m.conn.clone()));
                }
                // The periodic re-check gets half the call's time: a sentinel that does not
                // answer must not cost the call, nor the master already known.
                let known = slot.clone();
                let asked =
                    tokio::time::timeout(self.timeout / 2, self.master(client, known.clone()));
                let m = match (asked.await, known) {
                    (Ok(Ok(m)), _) => m,
                    (_, Some(m)) => Master {
                        named: Instant::now(),
                        ..m
                    },
                    (Ok(Err(e)), None) => return Err(self.error(e)),
                    (Err(_), None) => {
                        return Err(StateError::Unavailable(
                            "no sentinel named the master in time".into(),
                        ));
                    }
                };
                let c = m.conn.clone();
                *slot = Some(m);
                Ok(Conn::Master(c))
            }
        }
    }

    /// Asks the sentinels for the master; keeps the connection to `known` when it is still
    /// the one, else connects to the new one.
    async fn master(
        &self,
        client: &Mutex<SentinelClient>,
        known: Option<Master>,
    ) -> RedisResult<Master> {
        let master = client.lock().await.async_get_client().await?;
        let addr = master.get_connection_info().addr().to_string();
        if let Some(m) = known.filter(|m| m.addr == addr) {
            return Ok(Master {
                named: Instant::now(),
                ..m
            });
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = master
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Master {
            conn,
            addr,
            named: Instant::now(),
        })
    }

    /// After a failed call: with Sentinel, forget the master's connection when it is broken
    /// or no longer the master, so the next call asks the sentinels again.
    async fn failed(&self, e: &RedisError) {
        if let Backend::Sentinel { conn, .. } = &self.backend {
            let stale = e.is_unrecoverable_error()
                || e.is_io_error()
                || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly);
            if stale {
                *conn.lock().await = None;
            }
        }
    }

    /// Runs `script` once per call, in one round trip, and returns the replies in order.
    async fn run(&self, script: &Script, calls: &[Call]) -> Result<Vec<Value>, StateError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let result = match &conn {
            Conn::Cluster(c) => concurrently(c, script, calls).await,
            _ => pipelined(&mut conn, script, calls).await,
        };
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                self.failed(&e).await;
                Err(self.error(e))
            }
        }
    }

    fn error(&self, e: RedisError) -> StateError {
        state_error(&e, &self.described, self.timeout)
    }

    async fn grey(
        &self,
        triplets: &[Triplet],
        policy: &GreyPolicy,
        peek: bool,
    ) -> Result<Vec<Grey>, StateError> {
        let calls: Vec<Call> = triplets
            .iter()
            .map(|t| grey_call(t, policy, peek))
            .collect();
        let replies = self.run(&self.greylist, &calls).await?;
        replies.into_iter().map(parse_grey).collect()
    }

    async fn draw(&self, buckets: &[Bucket], peek: bool) -> Result<Vec<Take>, StateError> {
        let calls = buckets
            .iter()
            .map(|b| bucket_call(b, peek))
            .collect::<Result<Vec<Call>, StateError>>()?;
        let replies = self.run(&self.bucket, &calls).await?;
        replies.into_iter().map(parse_take).collect()
    }

    async fn pong(&self) -> Result<String, StateError> {
        let mut conn = self.conn().await?;
        let reply: RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        match reply {
            Ok(_) => Ok(format!("{} answers PING", self.described)),
            Err(e) => {
                self.failed(&e).await;
                Err(self.error(e))
            }
        }
    }
}

impl StateStore for RedisStore {
    fn greylist<'a>(
        &'a self,
        triplets: &'a [Triplet],
        policy: &'a GreyPolicy,
        peek: bool,
    ) -> BoxFuture<'a, Result<Vec<Grey>, StateError>> {
        Box::pin(self.grey(triplets, policy, peek))
    }

    fn take<'a>(
        &'a self,
        buckets: &'a [Bucket],
        peek: bool,
    ) -> BoxFuture<'a, Result<Vec<Take>, StateError>> {
        Box::pin(self.draw(buckets, peek))
    }

    fn ping(&self) -> BoxFuture<'_, Result<String, StateError>> {
        Box::pin(self.pong())
    }

    fn describe(&self) -> String {
        self.described.clone()
    }
}

/// The keys (`mw:{g:<net>}:t:<digest>`, `mw:{g:<net>}:n`: one hash slot) and arguments of one
/// triplet's script.
fn grey_call(t: &Triplet, p: &GreyPolicy, peek: bool) -> Call {
    let ms = |d: Duration| d.as_millis().min(i64::MAX as u128).to_string();
    Call {
        keys: vec![
            format!("mw:{{g:{}}}:t:{}", t.net, t.digest()),
            format!("mw:{{g:{}}}:n", t.net),
        ],
        args: vec![
            ms(p.delay),
            ms(p.retry_window),
            ms(p.allow_for),
            p.auto_allow_after.to_string(),
            flag(peek),
        ],
    }
}

/// The key (`mw:{r:<key>}`) and arguments of one bucket's script; the key expires when the
/// bucket would be full again (at least 1 s).
fn bucket_call(b: &Bucket, peek: bool) -> Result<Call, StateError> {
    if !(b.rate.is_finite() && b.rate > 0.0) {
        return Err(StateError::Reply(format!(
            "rate limit {:?}: rate {} is not a positive number of tokens per second",
            b.key, b.rate
        )));
    }
    let refill_s = (b.burst as f64 / b.rate).ceil().clamp(1.0, 1e12) as u64;
    Ok(Call {
        keys: vec![format!("mw:{{r:{}}}", b.key)],
        args: vec![
            format!("{:e}", b.rate),
            b.burst.to_string(),
            b.cost.to_string(),
            flag(peek),
            (refill_s * 1000).to_string(),
        ],
    })
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

fn parse_grey(v: Value) -> Result<Grey, StateError> {
    let (code, retry_ms): (i64, i64) = redis::from_redis_value(v)
        .map_err(|e| StateError::Reply(format!("greylist script: {e}")))?;
    let retry_in = Duration::from_millis(retry_ms.max(0) as u64);
    match code {
        0 => Ok(Grey::Deferred {
            retry_in,
            first: true,
        }),
        1 => Ok(Grey::Deferred {
            retry_in,
            first: false,
        }),
        2 => Ok(Grey::Passed),
        3 => Ok(Grey::Known),
        4 => Ok(Grey::NetworkAllowed),
        other => Err(StateError::Reply(format!(
            "greylist script answered {other}"
        ))),
    }
}

fn parse_take(v: Value) -> Result<Take, StateError> {
    let (taken, left, retry_ms): (i64, String, i64) = redis::from_redis_value(v)
        .map_err(|e| StateError::Reply(format!("token bucket script: {e}")))?;
    let left: f64 = left
        .parse()
        .map_err(|_| StateError::Reply(format!("token bucket script: tokens {left:?}")))?;
    if taken == 1 {
        return Ok(Take::Allowed { left });
    }
    Ok(Take::Limited {
        left,
        retry_in: Duration::from_millis(retry_ms.max(0) as u64),
    })
}

/// Standalone and Sentinel: every script in one pipeline (EVALSHA). Scripts the server does
/// not have (restarted, `SCRIPT FLUSH`) are loaded and only those runs sent again, so no run
/// is applied twice.
async fn pipelined(conn: &mut Conn, script: &Script, calls: &[Call]) -> RedisResult<Vec<Value>> {
    let invocations: Vec<ScriptInvocation<'_>> =
        calls.iter().map(|c| invocation(script, c)).collect();
    let all: Vec<&ScriptInvocation<'_>> = invocations.iter().collect();
    let mut results = send_pipeline(conn, &all).await?;
    let missing: Vec<usize> = (0..results.len())
        .filter(|&i| matches!(&results[i], Err(e) if is_noscript(e)))
        .collect();
    if !missing.is_empty() {
        script.load_async(conn).await?;
        let again: Vec<&ScriptInvocation<'_>> = missing.iter().map(|&i| &invocations[i]).collect();
        let replies = send_pipeline(conn, &again).await?;
        for (i, r) in missing.into_iter().zip(replies) {
            results[i] = r;
        }
    }
    results.into_iter().collect()
}

async fn send_pipeline(
    conn: &mut Conn,
    invocations: &[&ScriptInvocation<'_>],
) -> RedisResult<Vec<RedisResult<Value>>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for i in invocations {
        pipe.invoke_script(i);
    }
    pipe.query_async(conn).await
}

/// Cluster: the scripts at once, each to the node of its slot (EVALSHA, loading the script
/// where it is missing).
async fn concurrently(
    conn: &redis::cluster_async::ClusterConnection,
    script: &Script,
    calls: &[Call],
) -> RedisResult<Vec<Value>> {
    let runs = calls.iter().map(|c| {
        let mut conn = conn.clone();
        async move { invocation(script, c).invoke_async(&mut conn).await }
    });
    join_all(runs.collect()).await.into_iter().collect()
}

fn invocation<'s>(script: &'s Script, call: &Call) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    for k in &call.keys {
        inv.key(k);
    }
    for a in &call.args {
        inv.arg(a);
    }
    inv
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// Polls every future until all are done; the outputs in order (no `futures` crate here).
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Redis errors as the state layer's: cannot reach (refused, I/O, Cluster or master down,
/// Sentinel knows no master, authentication) → `Unavailable`; too slow → `Timeout`; anything
/// else it answered (script or type errors) → `Reply`.
fn state_error(e: &RedisError, described: &str, timeout: Duration) -> StateError {
    if e.is_timeout() {
        return StateError::Timeout(timeout);
    }
    let unavailable = matches!(
        e.kind(),
        ErrorKind::Io
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::MasterNameNotFoundBySentinel
            | ErrorKind::NoValidReplicasFoundBySentinel
            | ErrorKind::EmptySentinelList
            | ErrorKind::AuthenticationFailed
            | ErrorKind::InvalidClientConfig
            | ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
                    | ServerErrorKind::NoPerm
            )
    );
    if unavailable {
        StateError::Unavailable(format!("{described}: {e}"))
    } else {
        StateError::Reply(format!("{described}: {e}"))
    }
}

/// rustls needs a process-wide crypto provider for `rediss://`: ring (as the rest of the
/// tree), unless one is installed already.
fn install_crypto_provider() {
    if tokio_rustls::rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err: another thread installed one meanwhile, which is as good.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    }
}

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    // No retry loop inside a call: a call fails fast while Redis is down, and the next one
    // tries to connect again.
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(0)
}

fn open_client(url: &str) -> Result<Client, StateError> {
    Client::open(url).map_err(|e| {
        StateError::Unavailable(format!(
            "state.url = {:?} cannot be used ({e}); {EXAMPLE}",
            redact(url)
        ))
    })
}

fn cluster_client(seeds: &[String], timeout: Duration) -> Result<ClusterClient, StateError> {
    ClusterClient::builder(seeds.iter().map(String::as_str))
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(100)
        .build()
        .map_err(|e| {
            let shown: Vec<String> = seeds.iter().map(|s| redact(s)).collect();
            StateError::Unavailable(format!(
                "state.url Cluster seeds {shown:?} cannot be used ({e}); {EXAMPLE}"
            ))
        })
}

fn sentinel_client(target: &StateTarget) -> Result<SentinelClient, StateError> {
    let StateTarget::Sentinel {
        sentinels,
        master,
        db,
        tls,
        username,
        password,
    } = target
    else {
        return Err(not_redis());
    };
    let addrs = sentinels
        .iter()
        .map(|s| sentinel_addr(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
        .map_err(|e| bad_sentinel(target, &e))?
        .set_client_to_redis_db(*db);
    if *tls {
        b = b.set_client_to_redis_tls_mode(TlsMode::Secure);
    }
    if let Some(u) = username {
        b = b
            .set_client_to_redis_username(u)
            .set_client_to_sentinel_username(u);
    }
    if let Some(p) = password {
        b = b
            .set_client_to_redis_password(p)
            .set_client_to_sentinel_password(p);
    }
    b.build().map_err(|e| bad_sentinel(target, &e))
}

fn sentinel_addr(s: &str) -> Result<ConnectionAddr, StateError> {
    let (host, port) = s.rsplit_once(':').unwrap_or((s, "26379"));
    let port = port.parse::<u16>().map_err(|_| {
        StateError::Unavailable(format!(
            "sentinel {s:?}: the port is not a number; {EXAMPLE}"
        ))
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(ConnectionAddr::Tcp(host.to_string(), port))
}

fn bad_sentinel(target: &StateTarget, e: &RedisError) -> StateError {
    StateError::Unavailable(format!(
        "state.url {} cannot be used ({e}); {EXAMPLE}",
        describe_target(target)
    ))
}

fn not_redis() -> StateError {
    StateError::Unavailable(format!(
        "state.url is empty (the embedded store), not a Redis server; {EXAMPLE}"
    ))
}

/// The target's URL(s) without password (also the classifier's model location).
pub fn describe_target(target: &StateTarget) -> String {
    match target {
        StateTarget::Standalone(url) => redact(url),
        StateTarget::Cluster(seeds) => seeds
            .iter()
            .map(|s| redact(s))
            .collect::<Vec<_>>()
            .join(","),
        StateTarget::Sentinel {
            sentinels,
            master,
            db,
            tls,
            username,
            ..
        } => {
            let scheme = if *tls { "rediss" } else { "redis" };
            let user = username.as_ref().map_or(String::new(), |u| format!("{u}@"));
            format!(
                "{scheme}+sentinel://{user}{}/{master}/{db}",
                sentinels.join(",")
            )
        }
        StateTarget::Embedded { dir } => format!("embedded {}", dir.display()),
    }
}

/// `redis://user:secret@host/0` → `redis://user:***@host/0`; a `unix://` URL loses a
/// `pass=`/`password=` parameter.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    if scheme == "unix" {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("pass=") && !p.starts_with("password="))
            .collect();
        if kept.is_empty() {
            return format!("unix://{path}");
        }
        return format!("unix://{path}?{}", kept.join("&"));
    }
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) if !user.is_empty() => format!("{scheme}://{user}:***@{host}"),
        _ => format!("{scheme}://***@{host}"),
    }
}

/// A blocking connection (the classifier's threads are not on the tokio runtime).
// Unboxed on purpose: one per thread, and the classifier's store matches on these variants.
#[allow(clippy::large_enum_variant)]
pub enum SyncConnection {
    Single(redis::Connection),
    Cluster(redis::cluster::ClusterConnection),
}

impl redis::ConnectionLike for SyncConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            SyncConnection::Single(c) => c.req_packed_command(cmd),
            SyncConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self {
            SyncConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            SyncConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> RedisResult<Value> {
        match self {
            SyncConnection::Single(c) => c.req_command(cmd),
            SyncConnection::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            SyncConnection::Single(c) => c.get_db(),
            SyncConnection::Cluster(c) => c.get_db(),
        }
    }

    fn supports_pipelining(&self) -> bool {
        match self {
            SyncConnection::Single(c) => c.supports_pipelining(),
            SyncConnection::Cluster(c) => c.supports_pipelining(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            SyncConnection::Single(c) => c.check_connection(),
            SyncConnection::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            SyncConnection::Single(c) => c.is_open(),
            SyncConnection::Cluster(c) => c.is_open(),
        }
    }
}

/// Connects now, blocking, to `target` (standalone, `rediss://`, Cluster, or the master the
/// sentinels name); `timeout` bounds the connection and each answer.
pub fn sync_connection(
    target: &StateTarget,
    timeout: Duration,
) -> Result<SyncConnection, StateError> {
    install_crypto_provider();
    let timeout = timeout.max(Duration::from_millis(1));
    let described = describe_target(target);
    let fail = |e: RedisError| state_error(&e, &described, timeout);
    match target {
        StateTarget::Standalone(url) => single_sync(&open_client(url)?, timeout).map_err(fail),
        StateTarget::Cluster(seeds) => cluster_client(seeds, timeout)?
            .get_connection()
            .map(SyncConnection::Cluster)
            .map_err(fail),
        StateTarget::Sentinel { .. } => {
            let master = sentinel_client(target)?.get_client().map_err(fail)?;
            single_sync(&master, timeout).map_err(fail)
        }
        StateTarget::Embedded { .. } => Err(not_redis()),
    }
}

fn single_sync(client: &Client, timeout: Duration) -> RedisResult<SyncConnection> {
    let c = client.get_connection_with_timeout(timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    Ok(SyncConnection::Single(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_described() {
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("rediss://:pw@h:1/0"), "rediss://***@h:1/0");
        assert_eq!(
            redact("unix:///run/redis.sock?db=1&pass=pw"),
            "unix:///run/redis.sock?db=1"
        );
    }

    #[test]
    fn a_bad_url_says_what_to_write() {
        let e = RedisStore::new(
            &StateTarget::Standalone("redis://[::1".into()),
            Duration::from_millis(100),
        )
        .err();
        assert!(matches!(e, Some(StateError::Unavailable(m)) if m.contains("write e.g.")));
    }
}
