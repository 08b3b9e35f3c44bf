//! The classifier's model in Redis (`[classifier] store = "redis"`): learned once, seen by every
//! node that points `[state] url` at the same Redis (standalone or Cluster).
//!
//! It implements the same [`Store`] trait as the embedded SQLite file, with the same semantics
//! (once-only digests, relearning moves, autolearn never moves what was learned, forgetting
//! undoes, bounded `max_seen` and `max_tokens`), so the classifier does not know which it has.
//!
//! Layout. Every key carries the one hash tag `{bayes}`, so every key lives in one Cluster slot
//! and each Lua script can touch all of them (the model lives on one master; it is bounded by
//! `max_tokens` and `max_seen`, so it fits one):
//! - `mw:{bayes}:meta` hash: `format`, `created` (nanoseconds at creation: a new model after a
//!   FLUSHALL is told apart from the old one), `generation`, `spam`, `ham`, `updated`,
//!   `tokens` (feature entries) and `zeros` (entries counting nothing), `pruned` (generation of
//!   the last prune), `seq` (learn order), `forgets`, `learns:<source>:<class>`;
//! - `mw:{bayes}:gen` sorted set: block → generation that last changed it (a block is the top
//!   `64 - BLOCK_SHIFT` bits of the feature hash, as in the SQLite store), so a reader fetches
//!   only the blocks changed since its generation (`ZRANGEBYSCORE`, no scan of all blocks);
//! - `mw:{bayes}:b:<block hex>` hash: feature hash (16 hex digits) → `"spam ham generation"`.
//!   Small hashes (about 12 entries at the default bound) that Redis keeps compactly;
//! - `mw:{bayes}:seen` hash: message digest (hex) → class learned; `mw:{bayes}:seen:order`
//!   sorted set: digest → learn sequence, for dropping the oldest beyond `max_seen` (a sorted set
//!   rather than a list: a relearn or forget updates one member in O(log n), a list needs O(n)).
//!
//! A feature whose counts fall to 0 leaves the model at once (readers get it as 0 and drop it,
//! `stats` does not count it) but its entry stays as `"0 0 g"` until the next prune: a reader
//! that re-reads a changed block must see it go, and entries that simply vanished could not be
//! seen. A prune makes every reader reload whole, so it can delete them.
//!
//! What is atomic: each run of up to 50 messages of an `apply` is ONE Lua script (digests,
//! counts, totals, generation, block generations, the `max_seen` bound), so a learn never holds
//! the Redis that greylisting and the rate limits share for more than milliseconds; a learn cut
//! short (Redis gone mid-way) has learned whole runs, and learning it again counts each message
//! once. The `max_tokens` prune is a second step after an apply
//! that crossed the bound: the rarest, least recently changed entries are read, then deleted
//! by a script in chunks, each entry only if it is still what was read (a learn in between
//! keeps it); the last chunk bumps `generation` and sets `pruned`, so readers reload whole.
//! `changes` reads meta and the changed blocks' list in one script, then the blocks by a
//! read-only script, 512 per round trip (a Cluster connection does not pipeline). Counts are
//! absolute values, so a block read newer than the meta is harmless: it is read again next
//! time.
//!
//! Redis must keep these keys: with `maxmemory`, use `noeviction` or a `volatile-*` policy (the
//! keys have no expiry). A FLUSHALL (or a restart without persistence) is a new, empty model:
//! readers see `meta` missing or another `created` and reload whole; the next learn creates it.
//! The connection is made on first use and remade once per call after an error (Redis
//! restarted); while Redis is down the classifier answers `BAYES_FAIL`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use redis::{ConnectionLike, RedisError, RedisResult, Script};

use super::bayes::Counts;
use super::store::{
    Applied, BLOCK_SHIFT, Changes, Class, FORMAT, Item, Meta, Op, Source, Stats, Store, StoreError,
};
use crate::config::StateTarget;
use crate::state::StateError;
use crate::state::redis_store::{SyncConnection, describe_target as describe, sync_connection};

const META: &str = "mw:{bayes}:meta";
const GEN: &str = "mw:{bayes}:gen";
const SEEN: &str = "mw:{bayes}:seen";
const SEEN_ORDER: &str = "mw:{bayes}:seen:order";
const BLOCK_PREFIX: &str = "mw:{bayes}:b:";
/// Hex digits of a block name (the top `64 - BLOCK_SHIFT` bits of a feature hash).
const BLOCK_HEX: usize = ((64 - BLOCK_SHIFT) / 4) as usize;
const _: () = assert!(
    (64 - BLOCK_SHIFT).is_multiple_of(4),
    "blocks must be whole hex digits"
);
/// Shortest wait for one answer: a prune or a whole-model read on a busy Redis takes longer
/// than `[state] timeout` is meant for.
const MIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages learned per script (about 1 ms each): see `apply`.
const APPLY_CHUNK: usize = 50;
/// Blocks read per round trip, entries deleted per prune script.
const READ_CHUNK: usize = 512;
const PRUNE_CHUNK: usize = 5000;
/// Block keys sampled with MEMORY USAGE for `stats().bytes`.
const SIZE_SAMPLES: usize = 32;

/// One batch of learns and forgets (see the module doc). KEYS: meta, gen, seen, seen order,
/// block prefix. ARGV: source, now, max_seen, block hex digits, created-if-new, format, then
/// per item: digest, op (`spam`, `ham`, `forget`), its distinct hashes as 16-hex-digit runs.
const APPLY: &str = r"
local meta, gen, seen, order, prefix = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local source, now, max_seen, width = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local format = redis.call('HGET', meta, 'format')
if not format then
  redis.call('HSET', meta, 'format', ARGV[6], 'created', ARGV[5], 'generation', 0, 'spam', 0,
    'ham', 0, 'updated', 0, 'tokens', 0, 'zeros', 0, 'pruned', 0, 'seq', 0, 'forgets', 0)
elseif format ~= ARGV[6] then
  return redis.error_reply('MWFORMAT format is ' .. format .. ', this version uses ' .. ARGV[6])
end
local r = {0, 0, 0, 0, 0} -- learned, already, moved, forgotten, unknown
local delta, totals, learns = {}, {spam = 0, ham = 0}, {spam = 0, ham = 0}
local seq = tonumber(redis.call('HGET', meta, 'seq') or '0')
local function add(hashes, class, sign)
  local i = 2
  if class == 'spam' then i = 1 end
  for p = 1, #hashes, 16 do
    local h = string.sub(hashes, p, p + 15)
    local d = delta[h]
    if not d then d = {0, 0}; delta[h] = d end
    d[i] = d[i] + sign
  end
  totals[class] = totals[class] + sign
end
local function remember(digest, class)
  seq = seq + 1
  redis.call('HSET', seen, digest, class)
  redis.call('ZADD', order, seq, digest)
end
for k = 7, #ARGV, 3 do
  local digest, op, hashes = ARGV[k], ARGV[k + 1], ARGV[k + 2]
  local was = redis.call('HGET', seen, digest)
  if op == 'forget' then
    if was then
      add(hashes, was, -1)
      redis.call('HDEL', seen, digest)
      redis.call('ZREM', order, digest)
      r[4] = r[4] + 1
    else r[5] = r[5] + 1 end
  elseif not was then
    add(hashes, op, 1); remember(digest, op)
    r[1] = r[1] + 1; learns[op] = learns[op] + 1
  elseif was == op or source == 'autolearn' then
    r[2] = r[2] + 1
  else
    add(hashes, was, -1); add(hashes, op, 1); remember(digest, op)
    r[3] = r[3] + 1; learns[op] = learns[op] + 1
  end
end
local function num(field) return tonumber(redis.call('HGET', meta, field) or '0') end
if r[1] + r[3] + r[4] == 0 then
  return {r[1], r[2], r[3], r[4], r[5], num('tokens'), num('zeros'), num('generation')}
end
local generation = redis.call('HINCRBY', meta, 'generation', 1)
local added, zeroed, blocks = 0, 0, {}
for h, d in pairs(delta) do
  if d[1] ~= 0 or d[2] ~= 0 then
    local block = string.sub(h, 1, width)
    local key = prefix .. block
    local old = redis.call('HGET', key, h)
    local s, n = 0, 0
    if old then
      local a, b = string.match(old, '^(%d+) (%d+)')
      s, n = tonumber(a) or 0, tonumber(b) or 0
    end
    local s2, n2 = math.max(0, s + d[1]), math.max(0, n + d[2])
    if old or s2 + n2 > 0 then
      redis.call('HSET', key, h, s2 .. ' ' .. n2 .. ' ' .. generation)
      if not old then added = added + 1 end
      if old and s + n == 0 then zeroed = zeroed - 1 end
      if s2 + n2 == 0 then zeroed = zeroed + 1 end
    end
    blocks[block] = true
  end
end
for b in pairs(blocks) do redis.call('ZADD', gen, generation, b) end
redis.call('HSET', meta, 'spam', math.max(0, num('spam') + totals.spam),
  'ham', math.max(0, num('ham') + totals.ham), 'updated', now, 'seq', seq)
local tokens = redis.call('HINCRBY', meta, 'tokens', added)
local zeros = redis.call('HINCRBY', meta, 'zeros', zeroed)
for c, n in pairs(learns) do
  if n > 0 then redis.call('HINCRBY', meta, 'learns:' .. source .. ':' .. c, n) end
end
if r[4] > 0 then redis.call('HINCRBY', meta, 'forgets', r[4]) end
local excess = redis.call('ZCARD', order) - max_seen
if excess > 0 then
  for _, d in ipairs(redis.call('ZRANGE', order, 0, excess - 1)) do redis.call('HDEL', seen, d) end
  redis.call('ZREMRANGEBYRANK', order, 0, excess - 1)
end
return {r[1], r[2], r[3], r[4], r[5], tokens, zeros, generation}
";

/// The meta and the blocks a reader at generation ARGV[1] (of model ARGV[2]) must read, with
/// whether that is all of them. KEYS: meta, gen.
const CHANGES: &str = r"
local m = redis.call('HGETALL', KEYS[1])
if #m == 0 then return {m, 1, {}} end
local f = {}
for i = 1, #m, 2 do f[m[i]] = m[i + 1] end
local since = tonumber(ARGV[1])
local g = tonumber(f.generation or '0')
if since == 0 or f.created ~= ARGV[2] or tonumber(f.pruned or '0') > since or g < since then
  return {m, 1, redis.call('ZRANGE', KEYS[2], 0, -1)}
end
if g == since then return {m, 0, {}} end
return {m, 0, redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')}
";

/// Deletes prune victims that are still as read. KEYS: meta, gen, block prefix. ARGV: the
/// model's `created`, last chunk (`1`/`0`), then (block, feature, value) triples.
const PRUNE: &str = r"
if redis.call('HGET', KEYS[1], 'created') ~= ARGV[1] then return {0, 0} end
local live, zero = 0, 0
for k = 3, #ARGV, 3 do
  local key = KEYS[3] .. ARGV[k]
  if redis.call('HGET', key, ARGV[k + 1]) == ARGV[k + 2] then
    redis.call('HDEL', key, ARGV[k + 1])
    if string.match(ARGV[k + 2], '^0 0 ') then zero = zero + 1 else live = live + 1 end
    if redis.call('EXISTS', key) == 0 then redis.call('ZREM', KEYS[2], ARGV[k]) end
  end
end
-- 0 - n, not -n: Lua's -0 is sent as the string '-0', which HINCRBY refuses.
redis.call('HINCRBY', KEYS[1], 'tokens', 0 - (live + zero))
redis.call('HINCRBY', KEYS[1], 'zeros', 0 - zero)
if ARGV[2] == '1' then
  local g = redis.call('HINCRBY', KEYS[1], 'generation', 1)
  redis.call('HSET', KEYS[1], 'pruned', g)
end
return {live, zero}
";

/// The entries of blocks ARGV (hex names), one flat HGETALL reply each. KEYS: block prefix.
/// A script, not a pipeline: a Cluster connection does not pipeline, and the blocks share
/// the `{bayes}` slot, so one script reads them in one round trip there too.
const READ_BLOCKS: &str = r"
local out = {}
for i = 1, #ARGV do out[i] = redis.call('HGETALL', KEYS[1] .. ARGV[i]) end
return out
";

/// For `stats`: meta, digests held, blocks, and MEMORY USAGE of the fixed keys and of a sample
/// of blocks (-1 where MEMORY is refused). KEYS: meta, seen, seen order, gen, block prefix.
/// ARGV: blocks to sample.
const STATS: &str = r"
local function usage(key)
  local ok, n = pcall(redis.call, 'MEMORY', 'USAGE', key)
  if ok and type(n) == 'number' then return n end
  if ok then return 0 end
  return -1
end
local fixed = 0
for i = 1, 4 do
  local n = usage(KEYS[i])
  if n < 0 then fixed = -1; break end
  fixed = fixed + n
end
local sample = redis.call('ZRANDMEMBER', KEYS[4], tonumber(ARGV[1]))
local sampled = 0
if fixed >= 0 then
  for _, b in ipairs(sample) do sampled = sampled + math.max(0, usage(KEYS[5] .. b)) end
end
return {redis.call('HGETALL', KEYS[1]), redis.call('HLEN', KEYS[2]),
  redis.call('ZCARD', KEYS[4]), fixed, sampled, #sample}
";

/// One feature entry as stored: its hash, counts and the generation that last changed it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    hash: u64,
    spam: u32,
    ham: u32,
    generation: u64,
}

impl Entry {
    fn parse(field: &str, value: &str) -> Option<Entry> {
        let hash = u64::from_str_radix(field, 16).ok()?;
        let mut parts = value.split(' ');
        let mut next = || parts.next().and_then(|p| p.parse::<u64>().ok());
        let (spam, ham, generation) = (next()?, next()?, next().unwrap_or(0));
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Some(Entry {
            hash,
            spam: clamp(spam),
            ham: clamp(ham),
            generation,
        })
    }

    /// The value as the scripts write it (to delete only an entry unchanged since read).
    fn value(&self) -> String {
        format!("{} {} {}", self.spam, self.ham, self.generation)
    }

    fn field(&self) -> String {
        format!("{:016x}", self.hash)
    }
}

/// The classifier's store in Redis (see the module doc).
pub struct RedisStore {
    target: StateTarget,
    location: String,
    timeout: Duration,
    conn: Mutex<Option<SyncConnection>>,
    /// `created` of the model the last `changes` read: another one means reload whole.
    last_created: Mutex<u64>,
    max_seen: u64,
    max_tokens: u64,
    apply_script: Script,
    changes_script: Script,
    prune_script: Script,
    read_script: Script,
    stats_script: Script,
}

impl RedisStore {
    /// A store on `target` (not connected yet: the first call connects, so a node starts while
    /// Redis is down). `timeout` is `[state] timeout`; calls wait at least 30 s (a prune or a
    /// whole read of a large model). The model is created by the first learn; until then it reads as empty.
    pub fn open(
        target: &StateTarget,
        timeout: Duration,
        max_seen: u64,
        max_tokens: u64,
    ) -> Result<RedisStore, StoreError> {
        let location = describe(target);
        if matches!(target, StateTarget::Embedded { .. }) {
            return Err(StoreError::Shared {
                location: "[state] url".into(),
                detail: "[classifier] store = \"redis\" keeps the model in Redis, but [state] url is empty: set url = \"redis://127.0.0.1:6379/0\" or give the classifier a file (store = \"classifier.db\")".into(),
            });
        }
        Ok(RedisStore {
            target: target.clone(),
            location,
            timeout: timeout.max(MIN_TIMEOUT),
            conn: Mutex::new(None),
            last_created: Mutex::new(0),
            max_seen,
            max_tokens,
            apply_script: Script::new(APPLY),
            changes_script: Script::new(CHANGES),
            prune_script: Script::new(PRUNE),
            read_script: Script::new(READ_BLOCKS),
            stats_script: Script::new(STATS),
        })
    }

    /// Runs `f` on the connection (made when there is none). After an error of the connection
    /// (Redis restarted, network) it is dropped and, if it was an old one, `f` runs once more
    /// on a new one; a learn run twice is harmless (its digests make it "already known").
    fn with_conn<T>(
        &self,
        mut f: impl FnMut(&mut SyncConnection) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut fresh = false;
        for _ in 0..2 {
            if slot.is_none() {
                let conn = sync_connection(&self.target, self.timeout).map_err(|e| match e {
                    StateError::Unavailable(detail) => self.unavailable(&detail),
                    other => self.unavailable(&other.to_string()),
                })?;
                *slot = Some(conn);
                fresh = true;
            }
            let Some(conn) = slot.as_mut() else { break };
            match f(conn) {
                Ok(v) => return Ok(v),
                Err(e) if connection_lost(&e) || !conn.is_open() => {
                    *slot = None;
                    if fresh {
                        return Err(self.error(&e));
                    }
                }
                Err(e) => return Err(self.error(&e)),
            }
        }
        Err(self.unavailable("the connection failed twice"))
    }

    fn unavailable(&self, detail: &str) -> StoreError {
        StoreError::Shared {
            location: self.location.clone(),
            detail: format!(
                "Redis unavailable: {detail}; the classifier answers BAYES_FAIL until it is back"
            ),
        }
    }

    fn error(&self, e: &RedisError) -> StoreError {
        let location = self.location.clone();
        match e.code() {
            Some("MWFORMAT") => StoreError::Shared {
                location,
                detail: format!(
                    "made by another version of mailwarden: {} in {META}; delete the mw:{{bayes}}:* keys to start an empty model",
                    e.detail().unwrap_or("another format")
                ),
            },
            Some("WRONGTYPE") => StoreError::Shared {
                location,
                detail: format!(
                    "a key under mw:{{bayes}}: is not what mailwarden writes ({e}); delete the mw:{{bayes}}:* keys to start an empty model"
                ),
            },
            _ => self.unavailable(&e.to_string()),
        }
    }

    /// The entries of `blocks` (block hex names), `READ_CHUNK` blocks per round trip.
    fn read_blocks(&self, blocks: &[String]) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        for chunk in blocks.chunks(READ_CHUNK) {
            let replies: Vec<Vec<String>> = self.with_conn(|c| {
                let mut inv = self.read_script.prepare_invoke();
                inv.key(BLOCK_PREFIX);
                for b in chunk {
                    inv.arg(b);
                }
                inv.invoke(c)
            })?;
            for flat in replies {
                let mut it = flat.iter();
                while let (Some(f), Some(v)) = (it.next(), it.next()) {
                    out.extend(Entry::parse(f, v));
                }
            }
        }
        Ok(out)
    }
}

impl RedisStore {
    /// One atomic script for `items`: what it did, and the model's entries and zero entries
    /// after it.
    fn apply_chunk(
        &self,
        items: &[Item],
        source: Source,
    ) -> Result<(Applied, u64, u64), StoreError> {
        let created = new_created().to_string();
        let runs: Vec<(String, &str, String)> = items
            .iter()
            .map(|item| {
                let op = match item.op {
                    Op::Learn(class) => class.as_str(),
                    Op::Forget => "forget",
                };
                (hex(&item.digest), op, hash_run(&item.hashes))
            })
            .collect();
        let r: Vec<i64> = self.with_conn(|c| {
            let mut inv = self.apply_script.prepare_invoke();
            inv.key(META)
                .key(GEN)
                .key(SEEN)
                .key(SEEN_ORDER)
                .key(BLOCK_PREFIX);
            inv.arg(source.as_str()).arg(now_secs()).arg(self.max_seen);
            inv.arg(BLOCK_HEX).arg(&created).arg(FORMAT);
            for (digest, op, run) in &runs {
                inv.arg(digest).arg(*op).arg(run);
            }
            inv.invoke(c)
        })?;
        let get = |i: usize| r.get(i).copied().unwrap_or(0).max(0) as u64;
        let applied = Applied {
            learned: get(0),
            already: get(1),
            moved: get(2),
            forgotten: get(3),
            unknown: get(4),
        };
        Ok((applied, get(5), get(6)))
    }
}

/// The connection itself failed (as opposed to Redis answering an error).
fn connection_lost(e: &RedisError) -> bool {
    // READONLY: still connected to a master Sentinel has since demoted.
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.is_cluster_error()
}

fn num(fields: &HashMap<String, String>, key: &str) -> u64 {
    fields.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn meta_of(fields: &HashMap<String, String>) -> Meta {
    Meta {
        generation: num(fields, "generation"),
        created: num(fields, "created"),
        spam: num(fields, "spam"),
        ham: num(fields, "ham"),
        updated: num(fields, "updated"),
    }
}

/// A flat HGETALL reply (field, value, field, value…) as a map.
fn pairs(flat: Vec<String>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        map.insert(k, v);
    }
    map
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An item's distinct hashes as one run of 16-hex-digit names (what the script reads).
fn hash_run(hashes: &[u64]) -> String {
    let mut unique = hashes.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut out = String::with_capacity(unique.len() * 16);
    for h in unique {
        out.push_str(&format!("{h:016x}"));
    }
    out
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `created` of a new model: nanoseconds now (never 0, which reads as "no model").
fn new_created() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        .max(1)
}

impl RedisStore {
    /// Checks the meta's format (a model of another version is not read as this one).
    fn check_format(&self, fields: &HashMap<String, String>) -> Result<(), StoreError> {
        match fields.get("format") {
            Some(f) if *f != FORMAT.to_string() => Err(StoreError::Shared {
                location: self.location.clone(),
                detail: format!(
                    "made by another version of mailwarden: format is {f}, this version uses {FORMAT}; delete the mw:{{bayes}}:* keys to start an empty model"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Drops the rarest, least recently changed entries down to 90% of `max_tokens` (see the
    /// module doc for what is atomic).
    fn prune(&self, created: &str) -> Result<(), StoreError> {
        let blocks: Vec<String> =
            self.with_conn(|c| redis::cmd("ZRANGE").arg(GEN).arg(0).arg(-1).query(c))?;
        let mut entries = self.read_blocks(&blocks)?;
        let keep = (self.max_tokens - self.max_tokens / 10) as usize;
        if entries.len() <= keep {
            return Ok(());
        }
        entries.sort_unstable_by_key(|e| (u64::from(e.spam) + u64::from(e.ham), e.generation));
        let victims = &entries[..entries.len() - keep];
        let chunks: Vec<&[Entry]> = victims.chunks(PRUNE_CHUNK).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            let last = if n + 1 == chunks.len() { "1" } else { "0" };
            self.with_conn(|c| {
                let mut inv = self.prune_script.prepare_invoke();
                inv.key(META)
                    .key(GEN)
                    .key(BLOCK_PREFIX)
                    .arg(created)
                    .arg(last);
                for e in chunk.iter() {
                    let field = e.field();
                    inv.arg(&field[..BLOCK_HEX]).arg(&field).arg(e.value());
                }
                inv.invoke::<Vec<i64>>(c)
            })?;
        }
        tracing::info!(
            store = %self.location,
            dropped = victims.len(),
            kept = keep,
            "classifier model pruned: the rarest, least recently learned features went ([classifier] max_tokens)"
        );
        Ok(())
    }

    /// Bytes the model takes in Redis: MEMORY USAGE of the meta, seen and gen keys plus that of
    /// a sample of block keys scaled to all of them — an estimate (Redis samples big hashes
    /// too). Where MEMORY is refused (some managed Redis), ~40 bytes per feature and ~100 per
    /// digest.
    fn bytes(
        tokens: u64,
        seen: u64,
        blocks: u64,
        (fixed, sampled, samples): (i64, u64, u64),
    ) -> u64 {
        if fixed < 0 {
            return tokens * 40 + seen * 100;
        }
        let scaled = sampled
            .saturating_mul(blocks)
            .checked_div(samples)
            .unwrap_or(0);
        fixed as u64 + scaled
    }
}

impl Store for RedisStore {
    fn changes(&self, since: u64) -> Result<Changes, StoreError> {
        let known = *self.last_created.lock().unwrap_or_else(|p| p.into_inner());
        let (flat, whole, blocks): (Vec<String>, i64, Vec<String>) = self.with_conn(|c| {
            self.changes_script
                .key(META)
                .key(GEN)
                .arg(since)
                .arg(known)
                .invoke(c)
        })?;
        let fields = pairs(flat);
        self.check_format(&fields)?;
        let meta = meta_of(&fields);
        let whole = whole == 1;
        let entries = self.read_blocks(&blocks)?;
        let tokens = entries
            .into_iter()
            .filter(|e| !whole || e.spam > 0 || e.ham > 0)
            .map(|e| {
                let counts = Counts {
                    spam: e.spam,
                    ham: e.ham,
                };
                (e.hash, counts)
            })
            .collect();
        *self.last_created.lock().unwrap_or_else(|p| p.into_inner()) = meta.created;
        Ok(Changes {
            meta,
            whole,
            tokens,
        })
    }

    fn apply(&self, items: &[Item], source: Source) -> Result<Applied, StoreError> {
        // Redis runs one script at a time, and greylisting and the rate limits share it: a
        // learn goes in scripts of APPLY_CHUNK messages (each atomic, milliseconds long), so
        // a 1,000-message `mailwarden learn` never holds Redis past `[state] timeout`.
        let mut total = Applied::default();
        let (mut entries, mut zeros) = (0, 0);
        for chunk in items.chunks(APPLY_CHUNK) {
            let (applied, e, z) = self.apply_chunk(chunk, source)?;
            total.learned += applied.learned;
            total.already += applied.already;
            total.moved += applied.moved;
            total.forgotten += applied.forgotten;
            total.unknown += applied.unknown;
            (entries, zeros) = (e, z);
        }
        let max = self.max_tokens;
        if entries.saturating_sub(zeros) > max || entries > max + max / 10 {
            let created: Option<String> =
                self.with_conn(|c| redis::cmd("HGET").arg(META).arg("created").query(c))?;
            if let Some(created) = created {
                self.prune(&created)?;
            }
        }
        Ok(total)
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        type Reply = (Vec<String>, u64, u64, i64, u64, u64);
        let (flat, seen, blocks, fixed, sampled, samples): Reply = self.with_conn(|c| {
            let mut inv = self.stats_script.prepare_invoke();
            inv.key(META)
                .key(SEEN)
                .key(SEEN_ORDER)
                .key(GEN)
                .key(BLOCK_PREFIX);
            inv.arg(SIZE_SAMPLES).invoke(c)
        })?;
        let fields = pairs(flat);
        self.check_format(&fields)?;
        let tokens = num(&fields, "tokens").saturating_sub(num(&fields, "zeros"));
        let mut learns = BTreeMap::new();
        for source in Source::ALL {
            for class in [Class::Spam, Class::Ham] {
                let key = format!("learns:{}:{}", source.as_str(), class.as_str());
                learns.insert((source, class), num(&fields, &key));
            }
        }
        Ok(Stats {
            meta: meta_of(&fields),
            tokens,
            seen,
            bytes: Self::bytes(tokens, seen, blocks, (fixed, sampled, samples)),
            learns,
            forgets: num(&fields, "forgets"),
            location: self.location.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_left_out_of_the_location() {
        let cluster =
            StateTarget::Cluster(vec!["redis://:pw@a:7000".into(), "redis://b:7001".into()]);
        let shown = describe(&cluster);
        assert!(!shown.contains("pw") && shown.contains("a:7000") && shown.contains("b:7001"));
        let unix = StateTarget::Standalone("unix:///run/redis.sock?pass=secret&db=1".into());
        assert!(!describe(&unix).contains("secret"), "{}", describe(&unix));
    }

    #[test]
    fn entries_round_trip_and_blocks_are_the_top_bits() {
        let e = Entry::parse(&format!("{:016x}", u64::MAX), "3 4 9").expect("parse");
        assert_eq!((e.hash, e.spam, e.ham, e.generation), (u64::MAX, 3, 4, 9));
        assert_eq!(e.value(), "3 4 9");
        let h: u64 = 0xabcd_0000_0000_0001;
        assert_eq!(
            &format!("{h:016x}")[..BLOCK_HEX],
            format!("{:x}", h >> BLOCK_SHIFT)
        );
        assert_eq!(hash_run(&[2, 1, 2]), format!("{:016x}{:016x}", 1, 2));
    }
}
