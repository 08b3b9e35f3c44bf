//! The one-node state store: greylisting triplets and rate-limit buckets in one SQLite file,
//! `<[state] dir>/state.db`.
//!
//! SQLite for the same reasons as the classifier's model (`filter::classifier::store`): every
//! call is one crash-safe transaction (a `kill -9` leaves the state as it was before or after
//! it), and several processes can use one file — `serve` and a CLI — with SQLite's locks
//! ordering them (WAL mode; `-wal` and `-shm` beside the file while it is in use). Each call
//! takes the write lock first (`BEGIN IMMEDIATE`), so two processes answering the same client
//! cannot both see a "first attempt" or both take the last token.
//!
//! The file is ours when its header says so (`application_id` [`APP_ID`], `user_version`
//! [`FORMAT`]); anything else — not SQLite, damaged, another application's database, the
//! classifier's model — is refused at start-up rather than adopted. Rows carry their expiry
//! (ms since the epoch); an expired row counts as absent, and expired rows are deleted a bounded
//! batch at a time, at most once a minute (more often while a backlog remains), so the file
//! holds only what is live.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, params};

use super::{BoxFuture, Bucket, Grey, GreyPolicy, StateError, StateStore, Take, Triplet};

/// The file's name inside `[state] dir`.
const FILE: &str = "state.db";
/// `PRAGMA application_id` of a state file ("MWST").
const APP_ID: i64 = 0x4d57_5354;
/// The on-disk format this code reads and writes (`PRAGMA user_version`).
const FORMAT: i64 = 1;
/// How long a call waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Expired rows are deleted at most this often…
const PURGE_EVERY_MS: i64 = 60_000;
/// …and at most this many per table at once (the call that purges stays quick).
const PURGE_LIMIT: i64 = 1000;

const SCHEMA: &str = "
    CREATE TABLE triplets (net TEXT NOT NULL, digest TEXT NOT NULL,
        first_seen INTEGER NOT NULL, passed INTEGER NOT NULL, expires INTEGER NOT NULL,
        PRIMARY KEY (net, digest));
    CREATE INDEX triplets_expires ON triplets(expires);
    CREATE TABLE networks (net TEXT PRIMARY KEY, passed INTEGER NOT NULL,
        allowed_until INTEGER NOT NULL, expires INTEGER NOT NULL);
    CREATE INDEX networks_expires ON networks(expires);
    CREATE TABLE buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, at INTEGER NOT NULL,
        expires INTEGER NOT NULL);
    CREATE INDEX buckets_expires ON buckets(expires);";

/// The embedded store: one SQLite file, one connection per process.
pub struct EmbeddedStore {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

/// What the connection's lock guards.
struct Inner {
    conn: Connection,
    /// (device, inode) of the file `conn` has open: a file moved away and replaced (or removed
    /// to start over) is followed instead of written on unseen.
    identity: Option<(u64, u64)>,
    /// When expired rows were last deleted (ms; 0: not yet).
    purged: i64,
}

/// The local wall clock, ms since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, ms)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn millis(n: i64) -> Duration {
    Duration::from_millis(u64::try_from(n).unwrap_or(0))
}

/// (device, inode) of `path`: an open SQLite file moved away and replaced is noticed (also
/// the classifier's model file).
#[cfg(unix)]
pub fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
pub fn file_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.len(), 0))
}

/// SQLite says the file is not a database or a damaged one (not a permission or disk error).
pub fn sqlite_says_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

fn classify_error(path: &Path, e: &rusqlite::Error) -> StateError {
    let detail = e.to_string();
    let path = path.to_path_buf();
    if sqlite_says_corrupt(e) {
        StateError::Corrupt { path, detail }
    } else {
        StateError::Io { path, detail }
    }
}

fn io_error(path: &Path, detail: String) -> StateError {
    StateError::Io {
        path: path.to_path_buf(),
        detail,
    }
}

/// Opens (creating when missing) the file at `path` and checks that it is an intact state file
/// of this format.
fn open_conn(path: &Path) -> Result<Connection, StateError> {
    let err = |e: rusqlite::Error| classify_error(path, &e);
    let side = |suffix: &str| PathBuf::from(format!("{}{suffix}", path.display()));
    if !path.exists() && (side("-wal").exists() || side("-shm").exists()) {
        return Err(io_error(
            path,
            format!(
                "the file is missing but {p}-wal / {p}-shm are there (moved away while in use?): move those too, or stop the process that has it open, then start again",
                p = path.display()
            ),
        ));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(err)?;
    // `serve` and a CLI wait for each other's write locks instead of failing at once.
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    if conn.is_readonly(rusqlite::MAIN_DB).map_err(err)? {
        return Err(io_error(
            path,
            "opened read-only: make the file and its directory writable by mailwarden".into(),
        ));
    }
    let integrity: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(err)?;
    if integrity != "ok" {
        return Err(StateError::Corrupt {
            path: path.to_path_buf(),
            detail: integrity,
        });
    }
    set_pragmas(&conn, path)?;
    init(&mut conn, path)?;
    Ok(conn)
}

fn set_pragmas(conn: &Connection, path: &Path) -> Result<(), StateError> {
    let err = |e: rusqlite::Error| classify_error(path, &e);
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(store = %path.display(), mode, "state store is not in WAL mode; processes sharing it may wait on each other longer");
    }
    // NORMAL in WAL mode: a crash of the process never loses a commit; a power cut may lose
    // the last ones (a client greylisted once more), never corrupts.
    conn.execute_batch("PRAGMA synchronous=NORMAL;")
        .map_err(err)
}

/// Creates the tables of a new (empty) file; checks that an existing one is ours.
fn init(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
    let err = |e: rusqlite::Error| classify_error(path, &e);
    let corrupt = |detail: String| StateError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err)?;
    let app: i64 = tx
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(err)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    let tables: i64 = tx
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if app == 0 && tables == 0 {
        tx.execute_batch(SCHEMA).map_err(err)?;
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APP_ID}; PRAGMA user_version = {FORMAT};"
        ))
        .map_err(err)?;
    } else if app != APP_ID {
        // Another application's file is not adopted (we would add our tables to it).
        return Err(corrupt(format!(
            "a SQLite database of something else (application_id {app}, {tables} tables), not a mailwarden state file"
        )));
    } else if version != FORMAT {
        return Err(corrupt(format!(
            "format is {version}, this version uses {FORMAT}"
        )));
    }
    tx.commit().map_err(err)
}

impl EmbeddedStore {
    /// Opens `<dir>/state.db`, creating the directory and the file when missing. A file that
    /// is not an intact state file of this version is [`StateError::Corrupt`]; one that cannot
    /// be created, read or written is [`StateError::Io`].
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StateError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_error(dir, format!("cannot create the state directory: {e}")))?;
        let path = dir.join(FILE);
        let conn = open_conn(&path)?;
        let inner = Inner {
            identity: file_identity(&path),
            conn,
            purged: 0,
        };
        Ok(EmbeddedStore {
            path,
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Runs `op` in one transaction on a blocking thread: a write transaction (`BEGIN
    /// IMMEDIATE`, expired rows purged when due) unless `peek`, which reads only.
    async fn run<T, F>(&self, now: i64, peek: bool, op: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let path = self.path.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.follow_replacement(&path)?;
            inner
                .transact(now, peek, op)
                .map_err(|e| classify_error(&path, &e))
        });
        match task.await {
            Ok(result) => result,
            Err(e) => Err(io_error(
                &self.path,
                format!("the store's thread failed: {e}"),
            )),
        }
    }

    /// [`StateStore::greylist`] at `now` (ms since the epoch).
    pub(crate) async fn greylist_at(
        &self,
        triplets: &[Triplet],
        policy: &GreyPolicy,
        peek: bool,
        now: i64,
    ) -> Result<Vec<Grey>, StateError> {
        let (triplets, policy) = (triplets.to_vec(), *policy);
        self.run(now, peek, move |tx| {
            triplets
                .iter()
                .map(|t| grey_one(tx, t, &policy, peek, now))
                .collect()
        })
        .await
    }

    /// [`StateStore::take`] at `now` (ms since the epoch).
    pub(crate) async fn take_at(
        &self,
        buckets: &[Bucket],
        peek: bool,
        now: i64,
    ) -> Result<Vec<Take>, StateError> {
        let buckets = buckets.to_vec();
        self.run(now, peek, move |tx| {
            buckets.iter().map(|b| take_one(tx, b, peek, now)).collect()
        })
        .await
    }
}

impl Inner {
    fn transact<T>(
        &mut self,
        now: i64,
        peek: bool,
        op: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let behavior = if peek {
            rusqlite::TransactionBehavior::Deferred
        } else {
            rusqlite::TransactionBehavior::Immediate
        };
        let tx = self.conn.transaction_with_behavior(behavior)?;
        let purge = !peek && now.saturating_sub(self.purged) >= PURGE_EVERY_MS;
        let done = if purge {
            purge_expired(&tx, now)?
        } else {
            false
        };
        let out = op(&tx)?;
        tx.commit()?;
        // A backlog left (a full batch deleted): purge again on the next call.
        if done {
            self.purged = now;
        }
        Ok(out)
    }

    /// Reopens the file at `path` when it is not the one we have open: moved away and
    /// replaced, or removed (then a new, empty one is made — greylisting starts over).
    fn follow_replacement(&mut self, path: &Path) -> Result<(), StateError> {
        let now = file_identity(path);
        if now.is_some() && now == self.identity {
            return Ok(());
        }
        // Close the old file first: SQLite's last connection to a database checkpoints and
        // deletes `<path>-wal` by name, which is the new file's WAL once we have opened it.
        let placeholder = Connection::open_in_memory().map_err(|e| classify_error(path, &e))?;
        drop(std::mem::replace(&mut self.conn, placeholder));
        self.conn = open_conn(path)?;
        self.identity = file_identity(path);
        self.purged = 0;
        tracing::warn!(store = %path.display(), "state file replaced or removed while in use; using the one at its path now");
        Ok(())
    }
}

/// Deletes a bounded batch of expired rows from each table; true when none are left.
fn purge_expired(tx: &Transaction<'_>, now: i64) -> rusqlite::Result<bool> {
    let mut done = true;
    for table in ["triplets", "networks", "buckets"] {
        let deleted = tx.execute(
            &format!(
                "DELETE FROM {table} WHERE rowid IN
                     (SELECT rowid FROM {table} WHERE expires < ?1 LIMIT ?2)"
            ),
            params![now, PURGE_LIMIT],
        )?;
        done &= (deleted as i64) < PURGE_LIMIT;
    }
    Ok(done)
}

/// Is the network auto-allowed at `now`?
fn network_allowed(tx: &Transaction<'_>, net: &str, now: i64) -> rusqlite::Result<bool> {
    let until: Option<i64> = tx
        .prepare_cached("SELECT allowed_until FROM networks WHERE net = ?1 AND expires >= ?2")?
        .query_row(params![net, now], |r| r.get(0))
        .optional()?;
    Ok(until.is_some_and(|u| u > now))
}

/// One triplet's answer (RFC 6647), recorded unless `peek`.
fn grey_one(
    tx: &Transaction<'_>,
    t: &Triplet,
    policy: &GreyPolicy,
    peek: bool,
    now: i64,
) -> rusqlite::Result<Grey> {
    if network_allowed(tx, &t.net, now)? {
        return Ok(Grey::NetworkAllowed);
    }
    let digest = t.digest();
    let row: Option<(i64, bool)> = tx
        .prepare_cached(
            "SELECT first_seen, passed FROM triplets
             WHERE net = ?1 AND digest = ?2 AND expires >= ?3",
        )?
        .query_row(params![t.net, digest, now], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let pass_at = |first: i64| first.saturating_add(ms(policy.delay));
    let grey = match row {
        Some((_, true)) => Grey::Known,
        Some((first, false)) if now < pass_at(first) => Grey::Deferred {
            retry_in: millis(pass_at(first) - now),
            first: false,
        },
        Some((first, false)) if now <= first.saturating_add(ms(policy.retry_window)) => {
            Grey::Passed
        }
        // Never seen, expired, or retried after the window: a first attempt again.
        _ => Grey::Deferred {
            retry_in: policy.delay,
            first: true,
        },
    };
    if !peek {
        record(tx, t, &digest, policy, grey, now)?;
    }
    Ok(grey)
}

/// Writes what `grey` means for the triplet and its network.
fn record(
    tx: &Transaction<'_>,
    t: &Triplet,
    digest: &str,
    policy: &GreyPolicy,
    grey: Grey,
    now: i64,
) -> rusqlite::Result<()> {
    let allow_until = now.saturating_add(ms(policy.allow_for));
    match grey {
        Grey::Deferred { first: true, .. } => {
            tx.prepare_cached(
                "INSERT INTO triplets (net, digest, first_seen, passed, expires)
                 VALUES (?1, ?2, ?3, 0, ?4)
                 ON CONFLICT(net, digest) DO UPDATE SET first_seen = excluded.first_seen,
                     passed = 0, expires = excluded.expires",
            )?
            .execute(params![
                t.net,
                digest,
                now,
                now.saturating_add(ms(policy.retry_window))
            ])?;
        }
        Grey::Passed | Grey::Known => {
            tx.prepare_cached(
                "UPDATE triplets SET passed = 1, expires = ?3 WHERE net = ?1 AND digest = ?2",
            )?
            .execute(params![t.net, digest, allow_until])?;
            if grey == Grey::Passed {
                count_pass(tx, &t.net, policy, now)?;
            }
        }
        // An allowed network stays allowed while it keeps sending (a sliding window).
        Grey::NetworkAllowed => {
            tx.prepare_cached(
                "UPDATE networks SET allowed_until = ?2, expires = ?2 WHERE net = ?1",
            )?
            .execute(params![t.net, allow_until])?;
        }
        Grey::Deferred { first: false, .. } => {}
    }
    Ok(())
}

/// Counts a passed triplet for its network; allows the network at `auto_allow_after`.
fn count_pass(
    tx: &Transaction<'_>,
    net: &str,
    policy: &GreyPolicy,
    now: i64,
) -> rusqlite::Result<()> {
    let until = now.saturating_add(ms(policy.allow_for));
    let passed: i64 = tx
        .prepare_cached(
            "INSERT INTO networks (net, passed, allowed_until, expires) VALUES (?1, 1, 0, ?2)
             ON CONFLICT(net) DO UPDATE SET
                 passed = CASE WHEN expires >= ?3 THEN passed + 1 ELSE 1 END,
                 allowed_until = CASE WHEN expires >= ?3 THEN allowed_until ELSE 0 END,
                 expires = excluded.expires
             RETURNING passed",
        )?
        .query_row(params![net, until, now], |r| r.get(0))?;
    let after = i64::try_from(policy.auto_allow_after).unwrap_or(i64::MAX);
    if after > 0 && passed >= after {
        tx.prepare_cached("UPDATE networks SET allowed_until = ?2 WHERE net = ?1")?
            .execute(params![net, until])?;
    }
    Ok(())
}

/// One token bucket: refilled to `now`, drawn from unless `peek` or short.
fn take_one(tx: &Transaction<'_>, b: &Bucket, peek: bool, now: i64) -> rusqlite::Result<Take> {
    let (burst, cost, rate) = (b.burst as f64, b.cost as f64, b.rate.max(0.0));
    let row: Option<(f64, i64)> = tx
        .prepare_cached("SELECT tokens, at FROM buckets WHERE key = ?1 AND expires >= ?2")?
        .query_row(params![b.key, now], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    // A new (or expired: full again) bucket starts full.
    let tokens = row.map_or(burst, |(tokens, at)| {
        let elapsed = now.saturating_sub(at).max(0) as f64 / 1000.0;
        (tokens + elapsed * rate).min(burst)
    });
    // A hair of slack: 20 s at 3/min is one token even when the float product is 0.999….
    if tokens + 1e-9 < cost {
        let retry_in = Duration::try_from_secs_f64((cost - tokens) / rate).unwrap_or(Duration::MAX);
        return Ok(Take::Limited {
            left: tokens,
            retry_in,
        });
    }
    let left = (tokens - cost).max(0.0);
    if !peek {
        // Kept until it would be full again (then a missing row means the same).
        let full_in = ((burst - left) / rate * 1000.0).ceil() as i64;
        tx.prepare_cached(
            "INSERT INTO buckets (key, tokens, at, expires) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(key) DO UPDATE SET tokens = excluded.tokens, at = excluded.at,
                 expires = excluded.expires",
        )?
        .execute(params![b.key, left, now, now.saturating_add(full_in)])?;
    }
    Ok(Take::Allowed { left })
}

impl StateStore for EmbeddedStore {
    fn greylist<'a>(
        &'a self,
        triplets: &'a [Triplet],
        policy: &'a GreyPolicy,
        peek: bool,
    ) -> BoxFuture<'a, Result<Vec<Grey>, StateError>> {
        Box::pin(self.greylist_at(triplets, policy, peek, now_ms()))
    }

    fn take<'a>(
        &'a self,
        buckets: &'a [Bucket],
        peek: bool,
    ) -> BoxFuture<'a, Result<Vec<Take>, StateError>> {
        Box::pin(self.take_at(buckets, peek, now_ms()))
    }

    fn ping(&self) -> BoxFuture<'_, Result<String, StateError>> {
        Box::pin(async move {
            self.run(now_ms(), true, |tx| {
                tx.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .await?;
            Ok(self.describe())
        })
    }

    fn describe(&self) -> String {
        format!("embedded {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Some moment, ms since the epoch.
    const T0: i64 = 1_800_000_000_000;
    const MIN: i64 = 60_000;

    fn policy(auto_allow_after: u64) -> GreyPolicy {
        GreyPolicy {
            delay: Duration::from_secs(300),
            retry_window: Duration::from_secs(4 * 3600),
            auto_allow_after,
            allow_for: Duration::from_secs(86_400),
        }
    }

    fn triplet(net: &str, sender: &str) -> Triplet {
        Triplet {
            net: net.into(),
            sender: sender.into(),
            recipient: "rcpt@example.org".into(),
        }
    }

    fn bucket() -> Bucket {
        Bucket {
            key: "per-client:192.0.2.1".into(),
            rate: 3.0 / 60.0,
            burst: 3,
            cost: 1,
        }
    }

    fn store(dir: &tempfile::TempDir) -> EmbeddedStore {
        EmbeddedStore::open(dir.path()).expect("open")
    }

    async fn grey(s: &EmbeddedStore, t: &Triplet, p: &GreyPolicy, peek: bool, now: i64) -> Grey {
        let got = s
            .greylist_at(std::slice::from_ref(t), p, peek, now)
            .await
            .expect("greylist");
        got[0]
    }

    async fn take(s: &EmbeddedStore, peek: bool, now: i64) -> Take {
        s.take_at(&[bucket()], peek, now).await.expect("take")[0]
    }

    fn rows(s: &EmbeddedStore, table: &str) -> i64 {
        let inner = s.inner.lock().expect("lock");
        inner
            .conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .expect("count")
    }

    fn deferred(retry_in: Duration, first: bool) -> Grey {
        Grey::Deferred { retry_in, first }
    }

    #[tokio::test]
    async fn first_early_passed_known() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(&dir);
        let (t, p) = (triplet("192.0.2.0/24", "a@b"), policy(0));
        let five = Duration::from_secs(300);
        assert_eq!(grey(&s, &t, &p, false, T0).await, deferred(five, true));
        let early = grey(&s, &t, &p, false, T0 + MIN).await;
        assert_eq!(early, deferred(Duration::from_secs(240), false));
        assert_eq!(grey(&s, &t, &p, false, T0 + 5 * MIN).await, Grey::Passed);
        assert_eq!(grey(&s, &t, &p, false, T0 + 6 * MIN).await, Grey::Known);
        // Known extends the triplet's life: still known a day after the last use.
        let later = T0 + 6 * MIN + 86_400_000;
        assert_eq!(grey(&s, &t, &p, false, later).await, Grey::Known);
        assert_eq!(s.describe(), format!("embedded {}", s.path.display()));
        assert!(s.ping().await.expect("ping").ends_with("state.db"));
    }

    #[tokio::test]
    async fn a_retry_after_the_window_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(&dir);
        let (t, p) = (triplet("192.0.2.0/24", "a@b"), policy(0));
        grey(&s, &t, &p, false, T0).await;
        let late = T0 + 4 * 60 * MIN + 1;
        let again = grey(&s, &t, &p, false, late).await;
        assert_eq!(again, deferred(p.delay, true));
        assert_eq!(grey(&s, &t, &p, false, late + 5 * MIN).await, Grey::Passed);
    }

    #[tokio::test]
    async fn a_network_is_allowed_after_n_passed_triplets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(&dir);
        let p = policy(2);
        let (a, b) = (
            triplet("192.0.2.0/24", "a@b"),
            triplet("192.0.2.0/24", "c@d"),
        );
        let c = triplet("192.0.2.0/24", "e@f");
        for t in [&a, &b] {
            grey(&s, t, &p, false, T0).await;
            assert_eq!(grey(&s, t, &p, false, T0 + 5 * MIN).await, Grey::Passed);
        }
        let now = T0 + 6 * MIN;
        assert_eq!(grey(&s, &c, &p, false, now).await, Grey::NetworkAllowed);
        let other = triplet("198.51.100.0/24", "e@f");
        assert!(!grey(&s, &other, &p, false, now).await.passes());
        // Only for allow_for.
        let after = T0 + 5 * MIN + 86_400_000 + 1;
        assert!(!grey(&s, &c, &p, false, after).await.passes());
    }

    #[tokio::test]
    async fn peeking_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(&dir);
        let (t, p) = (triplet("192.0.2.0/24", "a@b"), policy(0));
        for _ in 0..2 {
            assert_eq!(grey(&s, &t, &p, true, T0).await, deferred(p.delay, true));
        }
        for _ in 0..5 {
            assert!(take(&s, true, T0).await.allowed());
        }
        assert_eq!(
            (
                rows(&s, "triplets"),
                rows(&s, "buckets"),
                rows(&s, "networks")
            ),
            (0, 0, 0)
        );
        // A peek answers as the real call would.
        grey(&s, &t, &p, false, T0).await;
        assert_eq!(grey(&s, &t, &p, true, T0 + 5 * MIN).await, Grey::Passed);
        assert_eq!(grey(&s, &t, &p, true, T0 + 5 * MIN).await, Grey::Passed);
        assert_eq!(rows(&s, "networks"), 0);
    }

    #[tokio::test]
    async fn three_per_minute_burst_three() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(&dir);
        for left in [2.0, 1.0, 0.0] {
            assert_eq!(take(&s, false, T0).await, Take::Allowed { left });
        }
        let Take::Limited { left, retry_in } = take(&s, false, T0).await else {
            panic!("the fourth was allowed");
        };
        assert_eq!(left, 0.0);
        assert!((retry_in.as_secs_f64() - 20.0).abs() < 0.01, "{retry_in:?}");
        // Limited takes nothing: 20 s on, one token is there.
        assert!(take(&s, false, T0 + 20_000).await.allowed());
        assert!(!take(&s, false, T0 + 20_000).await.allowed());
        // Full again (and no more than burst) after a minute.
        let full = take(&s, true, T0 + 10 * MIN).await;
        assert_eq!(full, Take::Allowed { left: 2.0 });
    }

    #[tokio::test]
    async fn reopening_keeps_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (t, p) = (triplet("192.0.2.0/24", "a@b"), policy(0));
        {
            let s = store(&dir);
            grey(&s, &t, &p, false, T0).await;
            for _ in 0..3 {
                take(&s, false, T0).await;
            }
        }
        let s = store(&dir);
        assert!(!take(&s, true, T0 + 1000).await.allowed());
        assert_eq!(grey(&s, &t, &p, false, T0 + 5 * MIN).await, Grey::Passed);
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_corrupt_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        std::fs::write(&path, b"not a database").expect("write");
        let err = EmbeddedStore::open(dir.path()).err().expect("error");
        assert!(
            matches!(&err, StateError::Corrupt { path: p, .. } if *p == path),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("state.db") && text.contains("move it away"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn another_applications_database_is_not_adopted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch("CREATE TABLE users (name TEXT);")
                .expect("create");
        }
        let err = EmbeddedStore::open(dir.path()).err().expect("error");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
        let c = Connection::open(&path).expect("open");
        let ours: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'triplets'",
                [],
                |r| r.get(0),
            )
            .expect("query");
        assert_eq!(ours, 0, "our tables were added to someone else's file");
    }

    #[tokio::test]
    async fn another_format_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(store(&dir));
        {
            let c = Connection::open(dir.path().join("state.db")).expect("open");
            c.execute_batch("PRAGMA user_version = 99;").expect("set");
        }
        let err = EmbeddedStore::open(dir.path()).err().expect("error");
        assert!(err.to_string().contains("format is 99"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_directory_is_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("a/b");
        let s = EmbeddedStore::open(&nested).expect("open");
        assert!(nested.join("state.db").exists());
        assert!(s.ping().await.is_ok());
    }

    #[tokio::test]
    async fn two_processes_see_each_others_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (serve, cli) = (store(&dir), store(&dir));
        let (t, p) = (triplet("192.0.2.0/24", "a@b"), policy(0));
        assert_eq!(
            grey(&serve, &t, &p, false, T0).await,
            deferred(p.delay, true)
        );
        let seen = grey(&cli, &t, &p, false, T0 + MIN).await;
        assert_eq!(seen, deferred(Duration::from_secs(240), false));
        take(&serve, false, T0).await;
        take(&serve, false, T0).await;
        take(&cli, false, T0).await;
        assert!(!take(&serve, false, T0).await.allowed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_first_attempts_from_two_processes_count_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stores = [Arc::new(store(&dir)), Arc::new(store(&dir))];
        let calls: Vec<_> = (0..20)
            .map(|n| {
                let s = Arc::clone(&stores[n % 2]);
                tokio::spawn(async move {
                    let (t, p) = (triplet("192.0.2.0/24", "a@b"), policy(0));
                    let g = grey(&s, &t, &p, false, T0).await;
                    let b = take(&s, false, T0).await;
                    (g, b)
                })
            })
            .collect();
        let (mut firsts, mut allowed) = (0, 0);
        for call in calls {
            let (g, b) = call.await.expect("join");
            firsts += i32::from(matches!(g, Grey::Deferred { first: true, .. }));
            allowed += i32::from(b.allowed());
        }
        assert_eq!((firsts, allowed), (1, 3));
    }

    #[tokio::test]
    async fn expired_rows_are_purged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(&dir);
        let p = policy(1);
        let t = triplet("192.0.2.0/24", "a@b");
        let gone = triplet("198.51.100.0/24", "a@b");
        grey(&s, &t, &p, false, T0).await;
        grey(&s, &t, &p, false, T0 + 5 * MIN).await;
        grey(&s, &gone, &p, false, T0).await;
        take(&s, false, T0).await;
        assert_eq!(
            (
                rows(&s, "triplets"),
                rows(&s, "networks"),
                rows(&s, "buckets")
            ),
            (2, 1, 1)
        );
        // Past the retry window (the unpassed triplet) and the bucket's refill, within
        // allow_for (the passed one and its network).
        let later = T0 + 5 * 60 * MIN;
        assert_eq!(grey(&s, &t, &p, true, later).await, Grey::NetworkAllowed);
        take(&s, true, later).await;
        assert_eq!(rows(&s, "triplets"), 2, "a peek purged");
        s.take_at(&[], false, later).await.expect("take");
        assert_eq!(
            (
                rows(&s, "triplets"),
                rows(&s, "networks"),
                rows(&s, "buckets")
            ),
            (1, 1, 0)
        );
        s.take_at(&[], false, T0 + 3 * 86_400_000)
            .await
            .expect("take");
        assert_eq!((rows(&s, "triplets"), rows(&s, "networks")), (0, 0));
    }

    #[tokio::test]
    async fn a_purge_is_bounded_and_a_backlog_goes_on_the_next_calls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(&dir);
        let many: Vec<Triplet> = (0..PURGE_LIMIT + 500)
            .map(|n| triplet("192.0.2.0/24", &format!("s{n}@example.com")))
            .collect();
        s.greylist_at(&many, &policy(0), false, T0)
            .await
            .expect("greylist");
        let later = T0 + 5 * 60 * MIN;
        s.take_at(&[], false, later).await.expect("take");
        assert_eq!(rows(&s, "triplets"), 500);
        // Within the minute, but a full batch went: the rest goes on the next call.
        s.take_at(&[], false, later + 1).await.expect("take");
        assert_eq!(rows(&s, "triplets"), 0);
    }

    #[tokio::test]
    async fn a_file_removed_while_in_use_is_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(&dir);
        let (t, p) = (triplet("192.0.2.0/24", "a@b"), policy(0));
        grey(&s, &t, &p, false, T0).await;
        for f in ["state.db", "state.db-wal", "state.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        assert_eq!(
            grey(&s, &t, &p, false, T0 + 5 * MIN).await,
            deferred(p.delay, true)
        );
        assert!(dir.path().join("state.db").exists());
        drop(s);
        let s = store(&dir);
        assert!(!grey(&s, &t, &p, false, T0 + 6 * MIN).await.passes());
    }
}
