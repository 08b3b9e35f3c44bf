//! `mailwarden learn (--spam | --ham | --forget) PATH...` and `mailwarden learn --stats`: train
//! the classifier on the site's own mail, undo it, or show what the model holds.
//!
//! Paths are message files, Maildirs, plain directories or mbox files (`sources`). Messages are
//! parsed and turned into features on every core, then written in batches, one transaction
//! each: a run that is stopped (Ctrl-C, `kill -9`) keeps every batch written before, and running
//! it again learns only what is missing (each message is remembered by its digest, so learning
//! it twice counts once; learning it as the other class moves it). A running `serve` sees the
//! new model within `[classifier] refresh_secs`.
//!
//! Exit code: 0 done, 2 an error (config, store, unreadable path, nothing to learn).

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use super::sources::{self, SourceMessage};
use crate::filter::classifier::{self, Applied, Class, Classifier, Item, Op, Source, tokens};
use crate::filter::message::Message;

/// Messages per transaction.
const BATCH: usize = 1000;

/// `learn`'s command line.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["spam", "ham", "forget", "stats"])))]
pub struct LearnOptions {
    /// Configuration file (default: mailwarden.toml if present, else built-in defaults).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Learn the messages as spam.
    #[arg(long)]
    pub spam: bool,
    /// Learn the messages as ham (legitimate mail).
    #[arg(long)]
    pub ham: bool,
    /// Unlearn messages learned before (as whichever class they were learned).
    #[arg(long)]
    pub forget: bool,
    /// Show what the model holds: counts, size, last update.
    #[arg(long)]
    pub stats: bool,
    /// With --stats: one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Message files, Maildirs, directories or mbox files.
    pub paths: Vec<PathBuf>,
}

/// Runs `learn`; returns the process exit code.
pub fn run(opts: &LearnOptions) -> u8 {
    let config = match super::load_config(opts.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mailwarden: configuration error: {e}");
            return 2;
        }
    };
    if !config.classifier.enabled {
        eprintln!(
            "mailwarden: the classifier is off ([classifier] enabled = false); turn it on to learn"
        );
        return 2;
    }
    if opts.stats && !config.classifier.uses_redis() && !config.classifier.path().exists() {
        // Looking must not create a store.
        let store = config.classifier.store.clone();
        if opts.json {
            let value = json!({"store": store, "exists": false, "spam": 0, "ham": 0,
                "voting": false, "min_learns": config.classifier.min_learns, "tokens": 0,
                "seen": 0, "bytes": 0, "updated": "never"});
            println!("{value}");
        } else {
            println!(
                "store:        {store} (not created yet: `mailwarden learn --spam|--ham PATH...` or `serve` create it)"
            );
        }
        return 0;
    }
    let classifier = match Classifier::open_with(&config.classifier, &config.state, true) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mailwarden: {e}");
            return 2;
        }
    };
    if opts.stats {
        return stats(&classifier, opts.json);
    }
    let op = match (opts.spam, opts.ham, opts.forget) {
        (true, false, false) => Op::Learn(Class::Spam),
        (false, true, false) => Op::Learn(Class::Ham),
        (false, false, true) => Op::Forget,
        _ => {
            eprintln!("mailwarden: give exactly one of --spam, --ham, --forget (or --stats)");
            return 2;
        }
    };
    if opts.paths.is_empty() {
        eprintln!("mailwarden: name the messages: files, Maildirs, directories or mbox files");
        return 2;
    }
    learn(&classifier, op, &opts.paths)
}

/// Features of a batch of messages, on every core.
fn items_of(batch: Vec<SourceMessage>, op: Op) -> Vec<Item> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = batch.len().div_ceil(threads).max(1);
    let mut out = Vec::with_capacity(batch.len());
    std::thread::scope(|scope| {
        let workers: Vec<_> = batch
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|m| {
                            let digest = classifier::digest(&m.raw);
                            let message = Message::parse(m.raw.clone());
                            Item {
                                digest,
                                op,
                                hashes: tokens::features(&message, false).hashes,
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(items) => out.extend(items),
                Err(_) => tracing::error!("a feature worker panicked; its messages are skipped"),
            }
        }
    });
    out
}

fn learn(classifier: &Classifier, op: Op, paths: &[PathBuf]) -> u8 {
    let started = Instant::now();
    let mut total = Applied::default();
    let mut pending: Vec<SourceMessage> = Vec::with_capacity(BATCH);
    let mut failed: Option<String> = None;
    let mut flush = |pending: &mut Vec<SourceMessage>, total: &mut Applied| -> bool {
        if pending.is_empty() {
            return true;
        }
        let items = items_of(std::mem::take(pending), op);
        match classifier.apply(&items, Source::Cli) {
            Ok(a) => {
                total.learned += a.learned;
                total.already += a.already;
                total.moved += a.moved;
                total.forgotten += a.forgotten;
                total.unknown += a.unknown;
                true
            }
            Err(e) => {
                failed = Some(e.to_string());
                false
            }
        }
    };
    let mut ok = true;
    let walk = sources::for_each_message(paths, |m| {
        if !ok {
            return;
        }
        pending.push(m);
        if pending.len() >= BATCH {
            ok = flush(&mut pending, &mut total);
        }
    });
    if ok {
        ok = flush(&mut pending, &mut total);
    }
    let walk = match walk {
        Ok(w) => w,
        Err(e) => {
            eprintln!("mailwarden: {e}");
            report(op, &total, started);
            return 2;
        }
    };
    if let Some(e) = failed.filter(|_| !ok) {
        eprintln!("mailwarden: {e}");
        eprintln!("mailwarden: the batches written before the error are kept; run again to finish");
        report(op, &total, started);
        return 2;
    }
    if walk.not_messages > 0 {
        eprintln!(
            "mailwarden: {} file(s) passed over: they do not start like a message",
            walk.not_messages
        );
    }
    if walk.messages == 0 {
        eprintln!("mailwarden: no messages found in the paths given");
        return 2;
    }
    report(op, &total, started);
    let (spam, ham) = classifier.counts();
    let min = classifier.config().min_learns;
    println!("model: {spam} spam, {ham} ham learned");
    if spam < min || ham < min {
        println!(
            "the classifier votes once it has learned {min} spam and {min} ham ([classifier] min_learns)"
        );
    }
    0
}

fn report(op: Op, total: &Applied, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    let handled = total.learned + total.already + total.moved + total.forgotten + total.unknown;
    let rate = if secs > 0.0 {
        handled as f64 / secs
    } else {
        0.0
    };
    match op {
        Op::Learn(class) => println!(
            "learned {} message(s) as {} ({} already known, {} moved from the other class) in {secs:.2} s ({rate:.0} msgs/s)",
            total.learned + total.moved,
            class.as_str(),
            total.already,
            total.moved,
        ),
        Op::Forget => println!(
            "forgot {} message(s) ({} were never learned) in {secs:.2} s",
            total.forgotten, total.unknown
        ),
    }
}

fn stats(classifier: &Classifier, as_json: bool) -> u8 {
    let stats = match classifier.stats() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mailwarden: {e}");
            return 2;
        }
    };
    let m = &stats.meta;
    let updated = if m.updated == 0 {
        "never".to_string()
    } else {
        chrono::DateTime::from_timestamp(m.updated as i64, 0)
            .map_or_else(|| m.updated.to_string(), |t| t.to_rfc3339())
    };
    let min = classifier.config().min_learns;
    let voting = m.spam >= min && m.ham >= min;
    let learns: serde_json::Map<String, serde_json::Value> = stats
        .learns
        .iter()
        .map(|((source, class), n)| (format!("{}_{}", source.as_str(), class.as_str()), json!(n)))
        .collect();
    if as_json {
        let value = json!({
            "store": stats.location,
            "exists": true,
            "spam": m.spam,
            "ham": m.ham,
            "voting": voting,
            "min_learns": min,
            "tokens": stats.tokens,
            "max_tokens": classifier.config().max_tokens,
            "seen": stats.seen,
            "bytes": stats.bytes,
            "updated": updated,
            "generation": m.generation,
            "learns": learns,
            "forgets": stats.forgets,
        });
        println!("{value}");
        return 0;
    }
    println!("store:        {}", stats.location);
    println!(
        "learned:      {} spam, {} ham ({})",
        m.spam,
        m.ham,
        if voting {
            "the classifier votes".to_string()
        } else {
            format!("not voting until {min} of each")
        }
    );
    let place = if classifier.config().uses_redis() {
        "in Redis (estimated)"
    } else {
        "on disk"
    };
    println!(
        "model:        {} features (at most {}, [classifier] max_tokens), {:.1} MiB {place}",
        stats.tokens,
        classifier.config().max_tokens,
        stats.bytes as f64 / (1024.0 * 1024.0)
    );
    println!("remembered:   {} message digests", stats.seen);
    println!("last update:  {updated}");
    let by_source: Vec<String> = stats
        .learns
        .iter()
        .map(|((source, class), n)| format!("{} {}: {n}", source.as_str(), class.as_str()))
        .collect();
    println!(
        "learns:       {}; forgets: {}",
        by_source.join(", "),
        stats.forgets
    );
    0
}
