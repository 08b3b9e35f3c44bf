//! The learning classifier: a statistical model of the site's own spam and ham, as a vote in
//! the scan (SpamAssassin's `BAYES_*` symbols, scored in `rules/45_bayes.cf`).
//!
//! `tokens` turns a parsed message into feature hashes, `bayes` is the model and its
//! arithmetic, `store` keeps the model (embedded SQLite file), `redis_store` keeps it in the
//! shared Redis of `[state] url` for several nodes (`store = "redis"`), behind the same trait. This file is the handle the rest of mailwarden uses: classify a message
//! (blocking, inside the scan's time budget, from an in-memory copy of the model — no I/O per
//! message), learn or forget messages (written to the store), and keep the in-memory copy in
//! step with the store so that a `mailwarden learn` run while `serve` runs is seen within
//! `refresh_secs`.
//!
//! The classifier says nothing until `min_learns` spam and ham each are learned. When the store
//! cannot be read while serving, messages get `BAYES_FAIL` (scored 0 by default) and flow on;
//! the failure is counted and logged, and the classifier recovers by itself when the store
//! reads again.

pub mod bayes;
mod redis_store;
pub mod store;
pub mod tokens;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::json;

use crate::config::{ClassifierConfig, StateConfig};
use crate::filter::message::Message;
use crate::metrics::metrics;
pub use bayes::{Model, SYMBOLS};
pub use redis_store::RedisStore;
pub use store::{Applied, Changes, Class, Item, Op, Source, SqliteStore, Stats, Store, StoreError};

/// The symbol for "the store could not be read".
pub const SYMBOL_FAIL: &str = "BAYES_FAIL";

/// Messages waiting to be autolearned, at most (more are dropped and counted).
const AUTOLEARN_QUEUE: usize = 1000;
/// Autolearned messages written to the store in one transaction, at most.
const AUTOLEARN_BATCH: usize = 200;

/// The digest that makes "learned twice counts once": SHA-256 of the Message-ID and the body
/// (everything after the header block) with carriage returns removed — so headers that
/// filters and mailboxes add on the way, line-ending conversions and a subject prefix do not
/// make the same message look new.
pub fn digest(raw: &[u8]) -> [u8; 32] {
    let mut message_id = header_value(raw, "message-id");
    if message_id.is_empty() {
        // No Message-ID: sender and date tell apart two notifications with one body.
        message_id = format!(
            "from:{}\0date:{}",
            header_value(raw, "from"),
            header_value(raw, "date")
        );
    }
    let body = body_of(raw);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(message_id.as_bytes());
    ctx.update(b"\0");
    for chunk in body.split(|&b| b == b'\r') {
        ctx.update(chunk);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn body_of(raw: &[u8]) -> &[u8] {
    let crlf = memchr::memmem::find(raw, b"\r\n\r\n").map(|i| i + 4);
    let lf = memchr::memmem::find(raw, b"\n\n").map(|i| i + 2);
    let start = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(raw.len()),
    };
    &raw[start..]
}

/// The first `name:` field's value (unfolded, trimmed), "" when absent.
fn header_value(raw: &[u8], field: &str) -> String {
    let head = &raw[..raw.len() - body_of(raw).len()];
    let text = String::from_utf8_lossy(head);
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with([' ', '\t']) {
            continue; // a continuation of another field
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case(field) {
            let mut v = value.trim().to_string();
            while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
                v.push_str(next.trim());
                lines.next();
            }
            return v;
        }
    }
    String::new()
}

/// What the classifier said about one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Fewer than `min_learns` spam or ham learned: no vote.
    Untrained { spam: u64, ham: u64 },
    /// The spam probability and the band symbols it gives.
    Scored {
        probability: f64,
        symbols: Vec<&'static str>,
    },
    /// The store could not be read: `BAYES_FAIL`.
    Failed(String),
}

/// The classifier's result for one message, with what it takes to learn that message.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub answer: Answer,
    /// The most telling features (text, f(w)), for `scan --explain`; empty unless asked for.
    pub clues: Vec<(String, f64)>,
    /// The message's features (autolearn reuses them).
    pub hashes: Vec<u64>,
    /// The message's digest, when the scan computed it already (off the async threads, for
    /// a message that autolearn may take).
    pub digest: Option<[u8; 32]>,
}

impl Outcome {
    /// The symbols this outcome adds to the scan.
    pub fn symbols(&self) -> Vec<&'static str> {
        match &self.answer {
            Answer::Scored { symbols, .. } => symbols.clone(),
            Answer::Failed(_) => vec![SYMBOL_FAIL],
            Answer::Untrained { .. } => Vec::new(),
        }
    }

    /// `scan --json`'s `"classifier"`: `{"probability", "symbol"}`, `null` when untrained.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.answer {
            Answer::Untrained { .. } => serde_json::Value::Null,
            Answer::Scored {
                probability,
                symbols,
            } => json!({
                "probability": (probability * 1000.0).round() / 1000.0,
                "symbol": symbols.last().copied().unwrap_or("BAYES_50"),
                "symbols": symbols,
            }),
            Answer::Failed(error) => json!({
                "probability": null,
                "symbol": SYMBOL_FAIL,
                "error": error,
            }),
        }
    }

    /// The message (`raw`: the one classified) as an item to learn as `class`.
    pub fn item(&self, raw: &[u8], class: Class) -> Item {
        Item {
            digest: self.digest.unwrap_or_else(|| digest(raw)),
            op: Op::Learn(class),
            hashes: self.hashes.clone(),
        }
    }
}

/// The in-memory copy of the model and which store version it is.
struct Snapshot {
    model: Model,
    generation: u64,
    created: u64,
}

/// The classifier: the store, the in-memory model, the autolearn queue.
pub struct Classifier {
    config: ClassifierConfig,
    store: Box<dyn Store>,
    snapshot: RwLock<Snapshot>,
    /// The last refresh failed: answers are `Failed` until one succeeds.
    failing: Mutex<Option<String>>,
    autolearn_tx: Mutex<Option<SyncSender<Item>>>,
    started: AtomicBool,
    /// The learn totals already exported to the metrics.
    exported: Mutex<std::collections::BTreeMap<(Source, Class), u64>>,
    /// Held by the refresh in progress.
    refreshing: Mutex<()>,
}

impl Classifier {
    /// Opens (creating when `create`) the configured store and reads the model.
    pub fn open(config: &ClassifierConfig, create: bool) -> Result<Classifier, StoreError> {
        let store = SqliteStore::open(&config.path(), create, config.max_seen, config.max_tokens)?;
        Classifier::with_store(config, Box::new(store))
    }

    /// Opens the configured store: the file (as [`Classifier::open`]) or, with
    /// `store = "redis"`, the model in `[state] url`'s Redis. A Redis that is down does not
    /// stop this: the classifier answers `BAYES_FAIL` until it is back (learns fail meanwhile).
    pub fn open_with(
        config: &ClassifierConfig,
        state: &StateConfig,
        create: bool,
    ) -> Result<Classifier, StoreError> {
        if !config.uses_redis() {
            return Classifier::open(config, create);
        }
        let target = state.target().map_err(|detail| StoreError::Shared {
            location: "[state] url".into(),
            detail,
        })?;
        let store = RedisStore::open(&target, state.timeout.0, config.max_seen, config.max_tokens)?;
        let classifier = Classifier::unread(config, Box::new(store));
        // A failure is recorded (logged once, BAYES_FAIL) and retried by every refresh.
        let _ = classifier.refresh();
        Ok(classifier)
    }

    /// For `scan`: the classifier when its store exists, `None` when it was never created
    /// (untrained; nothing is written).
    pub fn open_existing(config: &ClassifierConfig) -> Result<Option<Classifier>, StoreError> {
        if !Path::new(&config.store).exists() {
            return Ok(None);
        }
        Classifier::open(config, false).map(Some)
    }

    /// [`Classifier::open_existing`] that also knows `[state]`: a Redis model is always
    /// opened (Redis has no "not created yet" to skip; an empty model is untrained anyway).
    pub fn open_existing_with(
        config: &ClassifierConfig,
        state: &StateConfig,
    ) -> Result<Option<Classifier>, StoreError> {
        if config.uses_redis() {
            return Classifier::open_with(config, state, false).map(Some);
        }
        Classifier::open_existing(config)
    }

    pub fn with_store(
        config: &ClassifierConfig,
        store: Box<dyn Store>,
    ) -> Result<Classifier, StoreError> {
        let classifier = Classifier::unread(config, store);
        classifier.refresh()?;
        Ok(classifier)
    }

    /// The handle with an empty in-memory model, before the first refresh.
    fn unread(config: &ClassifierConfig, store: Box<dyn Store>) -> Classifier {
        Classifier {
            config: config.clone(),
            store,
            snapshot: RwLock::new(Snapshot {
                model: Model::default(),
                generation: 0,
                created: 0,
            }),
            failing: Mutex::new(None),
            autolearn_tx: Mutex::new(None),
            started: AtomicBool::new(false),
            exported: Mutex::new(std::collections::BTreeMap::new()),
            refreshing: Mutex::new(()),
        }
    }

    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    /// Brings the in-memory model up to date with the store (only what changed).
    pub fn refresh(&self) -> Result<bool, StoreError> {
        // One refresh at a time (the refresh thread and the autolearn writer both call it): an
        // older read must never be applied over a newer one.
        let _one = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, created) = {
            let s = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
            (s.generation, s.created)
        };
        let result = self.store.changes(generation).and_then(|c| {
            // Another store file than the one we read (replaced): all of it.
            if c.meta.created != created && !c.whole {
                self.store.changes(0)
            } else {
                Ok(c)
            }
        });
        let result = result.map(|c| {
            if c.meta.generation == generation && c.meta.created == created && !c.whole {
                return false;
            }
            if c.whole || c.meta.created != created {
                // Pruned, new, or another store file than the one we read: read it whole,
                // built outside the lock so scans go on meanwhile.
                let mut model = Model::default();
                for (hash, counts) in c.tokens {
                    model.set(hash, counts);
                }
                let mut s = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
                s.model = model;
                s.model.spam = c.meta.spam;
                s.model.ham = c.meta.ham;
                s.generation = c.meta.generation;
                s.created = c.meta.created;
                return true;
            }
            let mut s = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
            for (hash, counts) in c.tokens {
                s.model.set(hash, counts);
            }
            s.model.spam = c.meta.spam;
            s.model.ham = c.meta.ham;
            s.generation = c.meta.generation;
            s.created = c.meta.created;
            true
        });
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => {
                if failing.take().is_some() {
                    tracing::info!("classifier store readable again; the classifier votes again");
                }
            }
            Err(e) => {
                if failing.is_none() {
                    tracing::error!(error = %e, "classifier store unreadable; messages get BAYES_FAIL until it reads again");
                }
                *failing = Some(e.to_string());
            }
        }
        result
    }

    /// Learned spam and ham in the in-memory model.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        (s.model.spam, s.model.ham)
    }

    /// Classifies a parsed message. With `explain`, the outcome lists the telling features.
    pub fn classify(&self, message: &Message, explain: bool) -> Outcome {
        let features = tokens::features(message, explain);
        let failing = self
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(error) = failing {
            metrics().classifier_failures.inc();
            return Outcome {
                answer: Answer::Failed(error),
                clues: Vec::new(),
                hashes: features.hashes,
                digest: None,
            };
        }
        let s = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        let min = self.config.min_learns;
        if s.model.spam < min || s.model.ham < min {
            return Outcome {
                answer: Answer::Untrained {
                    spam: s.model.spam,
                    ham: s.model.ham,
                },
                clues: Vec::new(),
                hashes: features.hashes,
                digest: None,
            };
        }
        let (probability, clues) = s.model.probability(&features.hashes);
        drop(s);
        metrics().classifier_probability.observe(probability);
        let clues = match &features.texts {
            Some(texts) => clues
                .iter()
                .take(20)
                .map(|c| {
                    let text = texts.get(&c.hash).cloned().unwrap_or_default();
                    (text, c.probability)
                })
                .collect(),
            None => Vec::new(),
        };
        Outcome {
            answer: Answer::Scored {
                probability,
                symbols: bayes::band_symbols(probability),
            },
            clues,
            hashes: features.hashes,
            digest: None,
        }
    }

    /// Learns or forgets messages, in one transaction; the in-memory model follows at once.
    pub fn apply(&self, items: &[Item], source: Source) -> Result<Applied, StoreError> {
        let applied = self.store.apply(items, source)?;
        // Written: a failed re-read is the refresh's own failure (recorded, BAYES_FAIL until
        // the store reads again), not a failed learn.
        let _ = self.refresh();
        Ok(applied)
    }

    pub fn stats(&self) -> Result<Stats, StoreError> {
        self.store.stats()
    }

    /// Queues a message for autolearning (written by the background learner); a full queue
    /// drops it (counted) rather than slow the scan.
    pub fn autolearn(&self, item: Item) {
        let tx = self.autolearn_tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else {
            return;
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(item) {
            metrics().classifier_autolearn_dropped.inc();
        }
    }

    /// Which class a scored message should be autolearned as, if any: `score` without the
    /// classifier's own symbols against `autolearn_spam` / `autolearn_ham`.
    pub fn autolearn_class(&self, score_without_bayes: f64) -> Option<Class> {
        if !self.config.autolearn {
            return None;
        }
        if score_without_bayes >= self.config.autolearn_spam {
            Some(Class::Spam)
        } else if score_without_bayes <= self.config.autolearn_ham {
            Some(Class::Ham)
        } else {
            None
        }
    }

    /// Starts the background threads of a serving process: the refresher (every
    /// `refresh_secs`) and the autolearn writer. Once.
    pub fn start(self: &Arc<Classifier>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let every = Duration::from_secs(self.config.refresh_secs);
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("classifier-refresh".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(c) = weak.upgrade() else { return };
                    if let Ok(true) = c.refresh() {
                        tracing::debug!("classifier model refreshed from the store");
                    }
                    c.export_size();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the classifier refresh thread; `learn` runs are seen after a restart only");
        }
        if self.config.autolearn {
            let (tx, rx) = std::sync::mpsc::sync_channel(AUTOLEARN_QUEUE);
            *self.autolearn_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("classifier-autolearn".into())
                .spawn(move || autolearn_loop(&rx, &weak));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the autolearn thread; autolearn is off");
                *self.autolearn_tx.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
        self.export_size();
    }

    /// Exports the store's size and counters. Learns are counted in the store (so that a
    /// `mailwarden learn` run by another process shows in this one's metrics); the counter
    /// follows the store's monotonic totals.
    fn export_size(&self) {
        if let Ok(stats) = self.store.stats() {
            let m = metrics();
            let mut exported = self.exported.lock().unwrap_or_else(|p| p.into_inner());
            for (&(source, class), &total) in &stats.learns {
                let key = (source, class);
                let before = exported.get(&key).copied().unwrap_or(0);
                if total > before {
                    m.classifier_learns
                        .with_label_values(&[class.as_str(), source.as_str()])
                        .inc_by(total - before);
                }
                exported.insert(key, total.max(before));
            }
            m.classifier_tokens.set(stats.tokens as i64);
            m.classifier_store_bytes.set(stats.bytes as i64);
            m.classifier_learned
                .with_label_values(&["spam"])
                .set(stats.meta.spam as i64);
            m.classifier_learned
                .with_label_values(&["ham"])
                .set(stats.meta.ham as i64);
        }
    }
}

/// Writes queued autolearns in batches until the classifier is gone.
fn autolearn_loop(rx: &Receiver<Item>, classifier: &std::sync::Weak<Classifier>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < AUTOLEARN_BATCH {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let Some(c) = classifier.upgrade() else {
            return;
        };
        if let Err(e) = c.apply(&batch, Source::Autolearn) {
            tracing::warn!(error = %e, messages = batch.len(), "autolearn failed; those messages were not learned");
            metrics().classifier_failures.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ignores_added_headers_line_endings_and_subject() {
        let a = digest(b"Message-ID: <1@x>\r\nSubject: hi\r\n\r\nbody\r\nline\r\n");
        let b = digest(
            b"Received: from y\nX-Spam-Flag: YES\nMessage-ID: <1@x>\nSubject: [SPAM] hi\n\nbody\nline\n",
        );
        assert_eq!(a, b);
        let other = digest(b"Message-ID: <2@x>\r\nSubject: hi\r\n\r\nbody\r\nline\r\n");
        assert_ne!(a, other);
        let changed = digest(b"Message-ID: <1@x>\r\n\r\nbody!\r\n");
        assert_ne!(a, changed);
        // Without a Message-ID, sender and date tell the same body apart.
        let n1 = digest(b"From: a@x\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nAlert\r\n");
        let n2 = digest(b"From: a@x\r\nDate: Tue, 2 Jan 2024 00:00:00 +0000\r\n\r\nAlert\r\n");
        assert_ne!(n1, n2);
        // A folded line holding a colon is not a field.
        let folded = digest(b"Received: from x\r\n message-id: <9@y>\r\nMessage-ID: <1@x>\r\nSubject: hi\r\n\r\nbody\r\nline\r\n");
        assert_eq!(folded, a);
    }

    fn config(dir: &Path, min_learns: u64) -> ClassifierConfig {
        ClassifierConfig {
            store: dir.join("c.db").display().to_string(),
            min_learns,
            ..ClassifierConfig::default()
        }
    }

    fn msg(subject: &str, body: &str, n: usize) -> Message {
        Message::parse(
            format!("Message-ID: <{n}@t>\r\nSubject: {subject}\r\n\r\n{body} {n}\r\n").into_bytes(),
        )
    }

    #[test]
    fn untrained_then_trained_bands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Classifier::open(&config(dir.path(), 5), true).expect("open");
        let first = c.classify(&msg("cheap pills", "buy viagra now", 0), false);
        assert_eq!(first.answer, Answer::Untrained { spam: 0, ham: 0 });
        assert!(first.symbols().is_empty());
        assert!(first.to_json().is_null());
        let mut items = Vec::new();
        for n in 0..10 {
            let m = msg("cheap pills", "buy viagra now cheap", n);
            items.push(c.classify(&m, false).item(m.raw(), Class::Spam));
            let m = msg("meeting notes", "agenda for the project meeting", n);
            items.push(c.classify(&m, false).item(m.raw(), Class::Ham));
        }
        let applied = c.apply(&items, Source::Cli).expect("apply");
        assert_eq!(applied.learned, 20);
        let spam = c.classify(&msg("cheap pills", "buy viagra now cheap", 99), true);
        let Answer::Scored { probability, .. } = spam.answer else {
            panic!("not scored: {:?}", spam.answer);
        };
        assert!(probability > 0.95, "{probability}");
        assert!(spam.symbols().contains(&"BAYES_99"), "{:?}", spam.symbols());
        assert!(!spam.clues.is_empty());
        assert_eq!(spam.to_json()["symbol"], "BAYES_999");
        let ham = c.classify(
            &msg("meeting notes", "agenda for the project meeting", 99),
            false,
        );
        assert_eq!(ham.symbols(), vec!["BAYES_00"]);
    }

    #[test]
    fn another_handle_sees_learning_after_refresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let serving = Classifier::open(&config(dir.path(), 1), true).expect("open");
        let learner = Classifier::open(&config(dir.path(), 1), false).expect("open");
        let m = msg("x", "hello world", 1);
        let item = learner.classify(&m, false).item(m.raw(), Class::Spam);
        learner.apply(&[item], Source::Cli).expect("apply");
        assert_eq!(serving.counts(), (0, 0));
        assert_eq!(serving.refresh(), Ok(true));
        assert_eq!(serving.counts(), (1, 0));
    }

    #[test]
    fn autolearn_thresholds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Classifier::open(&config(dir.path(), 1), true).expect("open");
        assert_eq!(c.autolearn_class(12.0), Some(Class::Spam));
        assert_eq!(c.autolearn_class(0.1), Some(Class::Ham));
        assert_eq!(c.autolearn_class(5.0), None);
    }
}
