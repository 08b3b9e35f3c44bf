//! Where the classifier's model lives: one trait, and the embedded SQLite store behind it.
//!
//! The trait is what the classifier needs from any store — the features changed since the last
//! look, and an atomic "apply these learned and forgotten messages" — so a Redis store for
//! several nodes can implement the same two calls (with a Lua script for the atomic part).
//!
//! The embedded store is one SQLite file (WAL mode: `-wal` and `-shm` beside it while it is in
//! use). `mailwarden learn` writes it while `serve` reads it from another process; SQLite's locks
//! order them, and each batch of learned messages is one transaction, so a `kill -9` at any
//! moment leaves the model as it was before or after that batch, with its seen-digests in step.
//! Features are rows keyed by their 64-bit hash; each block of the hash space (1/1024th of it)
//! remembers the generation that last changed it, so a running proxy reads only what changed
//! since its last look. The file holds at most `max_tokens` features (the rarest, least recently
//! learned go first when a learn crosses it; a reader then reloads whole)
//! and `max_seen` digests (oldest dropped first).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::bayes::{Counts, TokenMap};

/// Spam or ham.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Spam,
    Ham,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Spam => "spam",
            Class::Ham => "ham",
        }
    }

    fn code(self) -> i64 {
        match self {
            Class::Spam => 1,
            Class::Ham => 0,
        }
    }

    fn from_code(code: i64) -> Class {
        if code == 1 { Class::Spam } else { Class::Ham }
    }
}

/// Who asked for a learn (`mailwarden_classifier_learns_total{source}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// `mailwarden learn`.
    Cli,
    /// The proxy, for a message that scored clearly one way.
    Autolearn,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cli => "cli",
            Source::Autolearn => "autolearn",
        }
    }

    pub const ALL: [Source; 2] = [Source::Cli, Source::Autolearn];
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Learn(Class),
    Forget,
}

/// One message to learn or forget: its digest (for "once only") and its feature hashes.
#[derive(Debug, Clone)]
pub struct Item {
    pub digest: [u8; 32],
    pub op: Op,
    pub hashes: Vec<u64>,
}

/// What a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Learned for the first time.
    pub learned: u64,
    /// Learned before as the same class: nothing changed.
    pub already: u64,
    /// Learned before as the other class: moved.
    pub moved: u64,
    pub forgotten: u64,
    /// Asked to forget but never learned.
    pub unknown: u64,
}

/// The model's totals and version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// Increases with every change; a reader asks for what changed after the one it has.
    pub generation: u64,
    /// Identifies this store file (a new file starts again at generation 0).
    pub created: u64,
    pub spam: u64,
    pub ham: u64,
    /// Unix time of the last change (0: never).
    pub updated: u64,
}

/// `learn --stats`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub meta: Meta,
    /// Features held (at most `max_tokens`).
    pub tokens: u64,
    pub seen: u64,
    /// Size of the store on disk (with its WAL), bytes.
    pub bytes: u64,
    pub learns: BTreeMap<(Source, Class), u64>,
    pub forgets: u64,
    pub location: String,
}

/// Why the store cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Not a model file, or a damaged one.
    Corrupt { path: PathBuf, detail: String },
    /// A model made by another version (different format).
    Incompatible { path: PathBuf, detail: String },
    /// Cannot be opened, read or written (permissions, disk full, locked too long).
    Io { path: PathBuf, detail: String },
    /// The model in the shared state store (Redis): unreachable, of another format, or its
    /// keys damaged; `detail` says what to do.
    Shared { location: String, detail: String },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Corrupt { path, detail } => write!(
                f,
                "classifier store {p} is damaged or not a model file ({detail}): stop mailwarden, move it away with its -wal and -shm files where they exist (mv {p} {p}.broken; mv {p}-wal {p}-wal.broken; mv {p}-shm {p}-shm.broken) and start again to begin with an empty model, then relearn with `mailwarden learn`; or set [classifier] enabled = false",
                p = path.display()
            ),
            StoreError::Incompatible { path, detail } => write!(
                f,
                "classifier store {p} was made by another version of mailwarden ({detail}): stop mailwarden, move it away with its -wal and -shm files where they exist (mv {p} {p}.old; mv {p}-wal {p}-wal.old; mv {p}-shm {p}-shm.old) and relearn with `mailwarden learn`",
                p = path.display()
            ),
            StoreError::Io { path, detail } => write!(
                f,
                "classifier store {}: {detail} (check that the file and its directory are readable and writable by mailwarden, and the disk has space)",
                path.display()
            ),
            StoreError::Shared { location, detail } => {
                write!(f, "classifier model in {location}: {detail}")
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// A model store: the embedded file here; Redis for several nodes.
pub trait Store: Send + Sync {
    /// The totals and every feature changed after generation `since`; all of them when
    /// `since` is 0 or the store was pruned since (then `Changes::whole` is set).
    fn changes(&self, since: u64) -> Result<Changes, StoreError>;
    /// Learns and forgets `items` in one atomic step.
    fn apply(&self, items: &[Item], source: Source) -> Result<Applied, StoreError>;
    fn stats(&self) -> Result<Stats, StoreError>;
}

/// The on-disk format this code reads and writes.
pub(super) const FORMAT: i64 = 1;
/// Features are marked changed per block of the hash space: a block is the top 16 bits of the
/// hash (a reader re-reads changed blocks). A per-feature generation index would cost every
/// learn as much again as the counts.
pub(super) const BLOCK_SHIFT: u32 = 48;

/// What changed in the store since a generation.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub meta: Meta,
    /// The whole table, not a delta: replace the model with it.
    pub whole: bool,
    pub tokens: Vec<(u64, Counts)>,
}

/// The embedded store: one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// (device, inode) of the file the connection has open: an admin who moves the file away
    /// and lets a new one be made must not leave us writing to the old one (and SQLite's WAL
    /// files, named after the path, shared between the two).
    identity: Mutex<Option<(u64, u64)>>,
    max_seen: u64,
    max_tokens: u64,
}

use crate::state::embedded::{file_identity, sqlite_says_corrupt};

fn classify_error(path: &Path, e: &rusqlite::Error) -> StoreError {
    let detail = e.to_string();
    let path = path.to_path_buf();
    if sqlite_says_corrupt(e) {
        StoreError::Corrupt { path, detail }
    } else {
        StoreError::Io { path, detail }
    }
}

impl SqliteStore {
    /// Opens the store at `path`, creating it when `create` and it does not exist. Checks
    /// that it is an intact model of this version.
    pub fn open(
        path: &Path,
        create: bool,
        max_seen: u64,
        max_tokens: u64,
    ) -> Result<SqliteStore, StoreError> {
        let err = |e: rusqlite::Error| classify_error(path, &e);
        let side = |suffix: &str| PathBuf::from(format!("{}{suffix}", path.display()));
        if create && !path.exists() && (side("-wal").exists() || side("-shm").exists()) {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                detail: format!(
                    "the file is missing but {p}-wal / {p}-shm are there (the store was moved away while in use?): move those too, or stop the process that has it open, then start again",
                    p = path.display()
                ),
            });
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags).map_err(err)?;
        // Learn and serve wait for each other's write locks instead of failing (a CLI batch of
        // 1,000 messages can hold it for seconds).
        conn.busy_timeout(Duration::from_secs(60)).map_err(err)?;
        let integrity: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(err)?;
        if integrity != "ok" {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: integrity,
            });
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(store = %path.display(), mode, "classifier store is not in WAL mode; learning may briefly block scans");
        }
        // NORMAL in WAL mode: a crash of the process never loses a commit; a power cut may
        // lose the last ones, never corrupts.
        conn.execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(err)?;
        let store = SqliteStore {
            path: path.to_path_buf(),
            identity: Mutex::new(file_identity(path)),
            conn: Mutex::new(conn),
            max_seen,
            max_tokens,
        };
        store.init()?;
        Ok(store)
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        classify_error(&self.path, &e)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reopens the file at our path when it is not the one we have open (moved away and
    /// replaced, e.g. after a damaged store was set aside). Err when it cannot be opened.
    fn follow_replacement(&self) -> Result<(), StoreError> {
        let now = file_identity(&self.path);
        let mut identity = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        if now == *identity {
            return Ok(());
        }
        let Some(_) = now else {
            return Err(StoreError::Io {
                path: self.path.clone(),
                detail: "the file was removed while in use".into(),
            });
        };
        // Close the old file first: SQLite's last connection to a database checkpoints and
        // deletes `<path>-wal` by name, which is the new file's WAL once we have opened it.
        {
            let mut conn = self.conn();
            let placeholder = Connection::open_in_memory().map_err(|e| self.err(e))?;
            drop(std::mem::replace(&mut *conn, placeholder));
        }
        let fresh = SqliteStore::open(&self.path, false, self.max_seen, self.max_tokens)?;
        let conn = fresh.conn.into_inner().unwrap_or_else(|p| p.into_inner());
        *self.conn() = conn;
        tracing::warn!(store = %self.path.display(), "classifier store file replaced while serving; reading the new one");
        *identity = now;
        Ok(())
    }

    /// Creates the tables of a new store; checks the format of an existing one.
    fn init(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        // Another application's SQLite file is not adopted (we would add our tables to it).
        let (tables, ours): (i64, i64) = tx
            .query_row(
                "SELECT count(*), count(*) FILTER (WHERE name = 'meta') FROM sqlite_master WHERE type = 'table'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        if tables > 0 && ours == 0 {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: "a SQLite database of something else, not a mailwarden model".into(),
            });
        }
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS tokens (h INTEGER PRIMARY KEY, spam INTEGER NOT NULL,
                 ham INTEGER NOT NULL, gen INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS dirty (block INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS seen (digest BLOB PRIMARY KEY, class INTEGER NOT NULL,
                 at INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS seen_at ON seen(at);",
        )
        .map_err(|e| self.err(e))?;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as i64);
        for (key, value) in [
            ("format", FORMAT),
            ("tokens", 0),
            ("pruned", 0),
            ("generation", 0),
            ("created", created),
            ("spam", 0),
            ("ham", 0),
            ("updated", 0),
            ("seen", 0),
        ] {
            tx.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map_err(|e| self.err(e))?;
        }
        let meta = read_meta(&tx).map_err(|e| self.err(e))?;
        let have = meta.get("format").copied().unwrap_or(-1);
        if have != FORMAT {
            return Err(StoreError::Incompatible {
                path: self.path.clone(),
                detail: format!("format is {have}, this version uses {FORMAT}"),
            });
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

fn read_meta(conn: &Connection) -> rusqlite::Result<HashMap<String, i64>> {
    let mut stmt = conn.prepare_cached("SELECT key, value FROM meta")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    rows.collect()
}

fn meta_of(values: &HashMap<String, i64>) -> Meta {
    let get = |k: &str| values.get(k).copied().unwrap_or(0).max(0) as u64;
    Meta {
        generation: get("generation"),
        created: get("created"),
        spam: get("spam"),
        ham: get("ham"),
        updated: get("updated"),
    }
}

fn learns_key(source: Source, class: Class) -> String {
    format!("learns.{}.{}", source.as_str(), class.as_str())
}

/// Per-feature count changes of a batch.
#[derive(Default)]
struct Deltas {
    tokens: TokenMap<(i64, i64)>,
    totals: [i64; 2],
}

impl Deltas {
    fn add(&mut self, hashes: &[u64], class: Class, sign: i64) {
        let mut unique = hashes.to_vec();
        unique.sort_unstable();
        unique.dedup();
        for h in unique {
            let d = self.tokens.entry(h).or_default();
            match class {
                Class::Spam => d.0 += sign,
                Class::Ham => d.1 += sign,
            }
        }
        self.totals[class.code() as usize] += sign;
    }
}

/// The block of the hash space a feature is in, and the first and last key of a block (keys are
/// the hashes' bits as SQLite's signed integers).
fn block_of(h: u64) -> i64 {
    (h as i64) >> BLOCK_SHIFT
}

fn block_range(block: i64) -> (i64, i64) {
    let lo = block << BLOCK_SHIFT;
    (lo, lo | ((1i64 << BLOCK_SHIFT) - 1))
}

/// What a batch's items do to the seen-digests, the counts and the learn counters.
#[derive(Default)]
struct Effect {
    applied: Applied,
    deltas: Deltas,
    learns: BTreeMap<Class, i64>,
    seen_delta: i64,
}

impl SqliteStore {
    /// Decides per item (new, already known, moved, forgotten, unknown) and updates `seen`.
    fn record_items(
        &self,
        tx: &rusqlite::Transaction<'_>,
        items: &[Item],
        source: Source,
        now: i64,
    ) -> Result<Effect, StoreError> {
        let mut e = Effect::default();
        let mut find = tx
            .prepare_cached("SELECT class FROM seen WHERE digest = ?1")
            .map_err(|e| self.err(e))?;
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO seen (digest, class, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(digest) DO UPDATE SET class = excluded.class, at = excluded.at",
            )
            .map_err(|e| self.err(e))?;
        let mut delete = tx
            .prepare_cached("DELETE FROM seen WHERE digest = ?1")
            .map_err(|e| self.err(e))?;
        for item in items {
            let before: Option<Class> = find
                .query_row(params![&item.digest[..]], |r| r.get::<_, i64>(0))
                .optional()
                .map_err(|e| self.err(e))?
                .map(Class::from_code);
            match (item.op, before) {
                (Op::Learn(class), None) => {
                    e.deltas.add(&item.hashes, class, 1);
                    upsert
                        .execute(params![&item.digest[..], class.code(), now])
                        .map_err(|e| self.err(e))?;
                    e.applied.learned += 1;
                    e.seen_delta += 1;
                    *e.learns.entry(class).or_default() += 1;
                }
                (Op::Learn(class), Some(was)) if was == class => e.applied.already += 1,
                // A message someone learned already is never moved by autolearn: a person's
                // correction (`learn --ham` of a false positive) wins over the scores.
                (Op::Learn(_), Some(_)) if source == Source::Autolearn => e.applied.already += 1,
                (Op::Learn(class), Some(was)) => {
                    e.deltas.add(&item.hashes, was, -1);
                    e.deltas.add(&item.hashes, class, 1);
                    upsert
                        .execute(params![&item.digest[..], class.code(), now])
                        .map_err(|e| self.err(e))?;
                    e.applied.moved += 1;
                    *e.learns.entry(class).or_default() += 1;
                }
                (Op::Forget, Some(was)) => {
                    e.deltas.add(&item.hashes, was, -1);
                    delete
                        .execute(params![&item.digest[..]])
                        .map_err(|e| self.err(e))?;
                    e.applied.forgotten += 1;
                    e.seen_delta -= 1;
                }
                (Op::Forget, None) => e.applied.unknown += 1,
            }
        }
        Ok(e)
    }

    /// Writes the count changes (in key order: the B-tree is walked once) and marks their
    /// blocks; returns the change in rows and in rows counting nothing (forgotten features
    /// stay as zero rows until a prune, so a reader of changed blocks sees them go).
    fn write_tokens(
        &self,
        tx: &rusqlite::Transaction<'_>,
        deltas: &Deltas,
        generation: i64,
    ) -> Result<(i64, i64), StoreError> {
        let mut read = tx
            .prepare_cached("SELECT spam, ham FROM tokens WHERE h = ?1")
            .map_err(|e| self.err(e))?;
        let mut insert = tx
            .prepare_cached("INSERT INTO tokens (h, spam, ham, gen) VALUES (?1, ?2, ?3, ?4)")
            .map_err(|e| self.err(e))?;
        let mut update = tx
            .prepare_cached("UPDATE tokens SET spam = ?2, ham = ?3, gen = ?4 WHERE h = ?1")
            .map_err(|e| self.err(e))?;
        let mut mark = tx
            .prepare_cached(
                "INSERT INTO dirty (block, gen) VALUES (?1, ?2)
                 ON CONFLICT(block) DO UPDATE SET gen = excluded.gen",
            )
            .map_err(|e| self.err(e))?;
        let mut changed: Vec<(i64, (i64, i64))> = deltas
            .tokens
            .iter()
            .filter(|(_, (spam, ham))| *spam != 0 || *ham != 0)
            .map(|(h, d)| (*h as i64, *d))
            .collect();
        changed.sort_unstable_by_key(|(h, _)| *h);
        let (mut added, mut zeros) = (0, 0);
        let mut last_block = None;
        for (h, (spam, ham)) in changed {
            let old: Option<(i64, i64)> = read
                .query_row(params![h], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(|e| self.err(e))?;
            match old {
                Some((s, n)) => {
                    let (s2, n2) = ((s + spam).max(0), (n + ham).max(0));
                    zeros += i64::from(s2 + n2 == 0) - i64::from(s + n == 0);
                    update
                        .execute(params![h, s2, n2, generation])
                        .map_err(|e| self.err(e))?
                }
                None if spam > 0 || ham > 0 => {
                    added += 1;
                    insert
                        .execute(params![h, spam.max(0), ham.max(0), generation])
                        .map_err(|e| self.err(e))?
                }
                None => 0,
            };
            let block = block_of(h as u64);
            if last_block != Some(block) {
                mark.execute(params![block, generation])
                    .map_err(|e| self.err(e))?;
                last_block = Some(block);
            }
        }
        Ok((added, zeros))
    }

    /// Drops the rarest, least recently learned features beyond `max_tokens` (down to 90% of
    /// it, so this does not run on every learn); returns the row and zero-row counts after.
    fn prune(
        &self,
        tx: &rusqlite::Transaction<'_>,
        tokens: i64,
        zeros: i64,
        generation: i64,
    ) -> Result<(i64, i64), StoreError> {
        let max = self.max_tokens as i64;
        if tokens - zeros <= max && tokens <= max + max / 10 {
            return Ok((tokens, zeros));
        }
        let keep = max - max / 10;
        tx.execute(
            "DELETE FROM tokens WHERE h IN
                 (SELECT h FROM tokens ORDER BY spam + ham, gen LIMIT ?1)",
            params![tokens - keep],
        )
        .map_err(|e| self.err(e))?;
        set_meta(tx, "pruned", generation).map_err(|e| self.err(e))?;
        tracing::info!(
            store = %self.path.display(),
            dropped = tokens - keep,
            kept = keep,
            "classifier store pruned: the rarest, least recently learned features went ([classifier] max_tokens)"
        );
        // Zero rows sort first, so few if any are left; count them exactly (rare: a prune).
        let zeros: i64 = tx
            .query_row(
                "SELECT count(*) FROM tokens WHERE spam = 0 AND ham = 0",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok((keep, zeros))
    }
}

fn set_meta(tx: &Connection, key: &str, value: i64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map(|_| ())
}

impl Store for SqliteStore {
    fn changes(&self, since: u64) -> Result<Changes, StoreError> {
        self.follow_replacement()?;
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let values = read_meta(&tx).map_err(|e| self.err(e))?;
        let meta = meta_of(&values);
        let pruned = values.get("pruned").copied().unwrap_or(0);
        let whole = since == 0 || pruned > since as i64 || meta.generation < since;
        let mut out = Changes {
            meta,
            whole,
            tokens: Vec::new(),
        };
        let to_counts = |spam: i64, ham: i64| Counts {
            spam: spam.clamp(0, i64::from(u32::MAX)) as u32,
            ham: ham.clamp(0, i64::from(u32::MAX)) as u32,
        };
        // Rows changed after `since` (every row changed by a learn carries its generation;
        // rows only go in a prune, which makes the read whole).
        let read_since: i64 = if whole { -1 } else { since as i64 };
        // The key ranges to read: all of them, or the blocks changed since `since`.
        let ranges: Vec<(i64, i64)> = if whole {
            vec![(i64::MIN, i64::MAX)]
        } else if meta.generation != since {
            let mut stmt = tx
                .prepare_cached("SELECT block FROM dirty WHERE gen > ?1 ORDER BY block")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(params![since as i64], |r| r.get::<_, i64>(0))
                .map_err(|e| self.err(e))?;
            let blocks: Vec<i64> = rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
            blocks.into_iter().map(block_range).collect()
        } else {
            Vec::new()
        };
        let mut stmt = tx
            .prepare_cached(
                "SELECT h, spam, ham FROM tokens WHERE h BETWEEN ?1 AND ?2 AND gen > ?3",
            )
            .map_err(|e| self.err(e))?;
        for (lo, hi) in ranges {
            let rows = stmt
                .query_map(params![lo, hi, read_since], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (h, spam, ham) = row.map_err(|e| self.err(e))?;
                out.tokens.push((h as u64, to_counts(spam, ham)));
            }
        }
        drop(stmt);
        drop(tx);
        if whole {
            // A whole read filled SQLite's page cache with the entire table; the caller keeps
            // its own copy, so give that memory back.
            conn.execute_batch("PRAGMA shrink_memory;")
                .map_err(|e| self.err(e))?;
        }
        Ok(out)
    }

    fn apply(&self, items: &[Item], source: Source) -> Result<Applied, StoreError> {
        self.follow_replacement()?;
        let mut conn = self.conn();
        // A page cache that holds the pages a batch touches (with SQLite's default 2 MiB a
        // large batch writes pages out and reads them back), given back afterwards: a serving
        // process keeps its own copy of the model and needs no second one here.
        conn.execute_batch("PRAGMA cache_size=-65536;")
            .map_err(|e| self.err(e))?;
        let result = Self::apply_in(self, &mut conn, items, source);
        let shrink = conn.execute_batch("PRAGMA cache_size=-2000; PRAGMA shrink_memory;");
        let applied = result?;
        shrink.map_err(|e| self.err(e))?;
        Ok(applied)
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        self.stats_in(&self.conn())
    }
}

impl SqliteStore {
    /// [`Store::apply`] on the locked connection: one write transaction.
    fn apply_in(
        &self,
        conn: &mut Connection,
        items: &[Item],
        source: Source,
    ) -> Result<Applied, StoreError> {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let values = read_meta(&tx).map_err(|e| self.err(e))?;
        let meta = meta_of(&values);
        let generation = meta.generation as i64 + 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let Effect {
            applied,
            deltas,
            learns,
            seen_delta,
        } = self.record_items(&tx, items, source, now)?;
        let (added, zeroed) = self.write_tokens(&tx, &deltas, generation)?;
        let changed = applied.learned + applied.moved + applied.forgotten > 0;
        if changed {
            let set = |key: &str, value: i64| set_meta(&tx, key, value);
            let get = |key: &str| values.get(key).copied().unwrap_or(0);
            let seen = (get("seen") + seen_delta).max(0);
            set("generation", generation).map_err(|e| self.err(e))?;
            set("spam", (get("spam") + deltas.totals[1]).max(0)).map_err(|e| self.err(e))?;
            set("ham", (get("ham") + deltas.totals[0]).max(0)).map_err(|e| self.err(e))?;
            set("updated", now).map_err(|e| self.err(e))?;
            set("seen", seen).map_err(|e| self.err(e))?;
            let (tokens, zeros) = self.prune(
                &tx,
                get("tokens") + added,
                (get("zeros") + zeroed).max(0),
                generation,
            )?;
            set("tokens", tokens).map_err(|e| self.err(e))?;
            set("zeros", zeros).map_err(|e| self.err(e))?;
            for (class, n) in &learns {
                let key = learns_key(source, *class);
                set(&key, get(&key) + n).map_err(|e| self.err(e))?;
            }
            if applied.forgotten > 0 {
                set("forgets", get("forgets") + applied.forgotten as i64)
                    .map_err(|e| self.err(e))?;
            }
            // Bounded: the oldest digests go (those messages can no longer be forgotten, and
            // learning one of them again would count it twice — after max_seen newer ones).
            let excess = seen - self.max_seen as i64;
            if excess > 0 {
                tx.execute(
                    "DELETE FROM seen WHERE digest IN (SELECT digest FROM seen ORDER BY at, rowid LIMIT ?1)",
                    params![excess],
                )
                .map_err(|e| self.err(e))?;
                set("seen", self.max_seen as i64).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(applied)
    }

    fn stats_in(&self, conn: &Connection) -> Result<Stats, StoreError> {
        let values = read_meta(conn).map_err(|e| self.err(e))?;
        // Rows whose counts fell to 0 (forgotten) stay until a prune; they are not features.
        let get = |k: &str| values.get(k).copied().unwrap_or(0);
        let held = get("tokens") - get("zeros");
        let mut learns = BTreeMap::new();
        for source in Source::ALL {
            for class in [Class::Spam, Class::Ham] {
                let n = values.get(&learns_key(source, class)).copied().unwrap_or(0);
                learns.insert((source, class), n.max(0) as u64);
            }
        }
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let wal = PathBuf::from(format!("{}-wal", self.path.display()));
        Ok(Stats {
            meta: meta_of(&values),
            tokens: held.max(0) as u64,
            seen: values.get("seen").copied().unwrap_or(0).max(0) as u64,
            bytes: size(&self.path) + size(&wal),
            learns,
            forgets: values.get("forgets").copied().unwrap_or(0).max(0) as u64,
            location: self.path.display().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u8, op: Op, hashes: &[u64]) -> Item {
        Item {
            digest: [n; 32],
            op,
            hashes: hashes.to_vec(),
        }
    }

    #[test]
    fn learn_twice_counts_once_relearn_moves_forget_undoes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path, true, 10_000, 1_000_000).expect("open");
        let spam = Op::Learn(Class::Spam);
        let a = store
            .apply(
                &[item(1, spam, &[10, 11]), item(1, spam, &[10, 11])],
                Source::Cli,
            )
            .expect("apply");
        assert_eq!((a.learned, a.already), (1, 1));
        let c = store.changes(0).expect("changes");
        let meta = c.meta;
        assert_eq!((meta.spam, meta.ham, c.tokens.len()), (1, 0, 2));
        let moved = store
            .apply(&[item(1, Op::Learn(Class::Ham), &[10, 11])], Source::Cli)
            .expect("apply");
        assert_eq!(moved.moved, 1);
        let c = store.changes(meta.generation).expect("changes");
        assert!(!c.whole);
        assert_eq!((c.meta.spam, c.meta.ham), (0, 1));
        let rows = c.tokens;
        assert!(
            rows.iter().all(|(_, c)| c.spam == 0 && c.ham == 1),
            "{rows:?}"
        );
        let f = store
            .apply(
                &[item(1, Op::Forget, &[10, 11]), item(2, Op::Forget, &[1])],
                Source::Cli,
            )
            .expect("apply");
        assert_eq!((f.forgotten, f.unknown), (1, 1));
        let stats = store.stats().expect("stats");
        assert_eq!(
            (stats.meta.spam, stats.meta.ham, stats.seen, stats.tokens),
            (0, 0, 0, 0)
        );
        assert_eq!(stats.learns.get(&(Source::Cli, Class::Spam)), Some(&1));
        assert_eq!(stats.forgets, 1);
    }

    #[test]
    fn autolearn_never_moves_what_was_learned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("c.db"), true, 10_000, 1000).expect("open");
        store
            .apply(&[item(1, Op::Learn(Class::Ham), &[5])], Source::Cli)
            .expect("apply");
        let a = store
            .apply(&[item(1, Op::Learn(Class::Spam), &[5])], Source::Autolearn)
            .expect("apply");
        assert_eq!((a.moved, a.already), (0, 1));
        let c = store.changes(0).expect("changes");
        assert_eq!((c.meta.spam, c.meta.ham), (0, 1));
    }

    #[test]
    fn reopening_keeps_the_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        {
            let store = SqliteStore::open(&path, true, 10_000, 1_000_000).expect("open");
            store
                .apply(&[item(1, Op::Learn(Class::Ham), &[5])], Source::Autolearn)
                .expect("apply");
        }
        let store = SqliteStore::open(&path, false, 10_000, 1_000_000).expect("reopen");
        let c = store.changes(0).expect("changes");
        assert_eq!((c.meta.ham, c.tokens.len()), (1, 1));
    }

    #[test]
    fn a_file_that_is_not_a_model_is_corrupt_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        std::fs::write(&path, vec![0x42u8; 8192]).expect("write");
        let err = SqliteStore::open(&path, true, 10_000, 1_000_000)
            .err()
            .expect("error");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("c.db") && text.contains("mv "), "{text}");
    }

    #[test]
    fn another_applications_database_is_not_adopted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("other.db");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch("CREATE TABLE users (name TEXT);")
                .expect("create");
        }
        let err = SqliteStore::open(&path, true, 10_000, 1000)
            .err()
            .expect("error");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        let c = Connection::open(&path).expect("open");
        let meta: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'meta'",
                [],
                |r| r.get(0),
            )
            .expect("query");
        assert_eq!(meta, 0, "our tables were added to someone else's file");
    }

    #[test]
    fn a_missing_file_is_not_created_unless_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.db");
        assert!(SqliteStore::open(&path, false, 10_000, 1_000_000).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn seen_digests_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("c.db"), true, 3, 1_000_000).expect("open");
        let items: Vec<Item> = (0..5)
            .map(|n| item(n, Op::Learn(Class::Spam), &[1]))
            .collect();
        store.apply(&items, Source::Cli).expect("apply");
        assert_eq!(store.stats().expect("stats").seen, 3);
    }

    #[test]
    fn tokens_are_bounded_and_a_prune_makes_readers_reload_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("c.db"), true, 10_000, 100).expect("open");
        let first: Vec<u64> = (0..60).collect();
        store
            .apply(&[item(1, Op::Learn(Class::Spam), &first)], Source::Cli)
            .expect("apply");
        let before = store.changes(0).expect("changes").meta.generation;
        // 60 more: 120 > 100, pruned to 90 — the features seen once, oldest first.
        let more: Vec<u64> = (1000..1060).collect();
        store
            .apply(&[item(2, Op::Learn(Class::Ham), &more)], Source::Cli)
            .expect("apply");
        assert_eq!(store.stats().expect("stats").tokens, 90);
        let c = store.changes(before).expect("changes");
        assert!(c.whole);
        assert_eq!(c.tokens.len(), 90);
        // The newest features were kept.
        assert!(c.tokens.iter().any(|(h, _)| *h == 1059));
    }

    #[test]
    fn a_store_file_replaced_while_open_is_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let serving = SqliteStore::open(&path, true, 10_000, 1000).expect("open");
        serving
            .apply(&[item(1, Op::Learn(Class::Spam), &[1, 2])], Source::Cli)
            .expect("apply");
        let old = serving.changes(0).expect("changes").meta;
        // The admin moves it away; a new one is made and learns something else.
        std::fs::rename(&path, dir.path().join("c.db.old")).expect("rename");
        let _ = std::fs::remove_file(dir.path().join("c.db-wal"));
        let _ = std::fs::remove_file(dir.path().join("c.db-shm"));
        {
            let fresh = SqliteStore::open(&path, true, 10_000, 1000).expect("open new");
            fresh
                .apply(&[item(2, Op::Learn(Class::Ham), &[7])], Source::Cli)
                .expect("apply");
        }
        let now = serving.changes(old.generation).expect("changes");
        assert_ne!(now.meta.created, old.created);
        assert_eq!((now.meta.spam, now.meta.ham), (0, 1));
    }

    #[test]
    fn negative_and_large_hashes_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("c.db"), true, 10_000, 1000).expect("open");
        let hashes = [
            0u64,
            1,
            u64::MAX,
            1 << 63,
            (1 << 63) - 1,
            0xdead_beef_0000_0001,
        ];
        store
            .apply(&[item(1, Op::Learn(Class::Spam), &hashes)], Source::Cli)
            .expect("apply");
        let base = store.changes(0).expect("changes");
        let mut got: Vec<u64> = base.tokens.iter().map(|(h, _)| *h).collect();
        got.sort_unstable();
        let mut want = hashes.to_vec();
        want.sort_unstable();
        assert_eq!(got, want);
        // A delta read finds them in their blocks too.
        store
            .apply(&[item(2, Op::Learn(Class::Ham), &hashes)], Source::Cli)
            .expect("apply");
        let delta = store.changes(base.meta.generation).expect("changes");
        assert!(!delta.whole);
        let mut got: Vec<u64> = delta.tokens.iter().map(|(h, _)| *h).collect();
        got.sort_unstable();
        assert_eq!(got, want);
        assert!(delta.tokens.iter().all(|(_, c)| c.spam == 1 && c.ham == 1));
    }
}
