//! The classifier's Redis store (`[classifier] store = "redis"`) against a real redis-server:
//! the same learn/forget/relearn semantics as the embedded store, two nodes sharing one model,
//! a FLUSHALL, Redis stopped and started again, the `max_tokens` prune, and `mailwarden learn`
//! end to end.
//!
//! Each test starts its own private redis-server (`tests/support/redis.rs`: a free loopback
//! port, no persistence, a temporary directory; killed when the test ends). Without
//! redis-server the tests fail and say how to install it: they are never skipped.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::redis::{Redis, RedisCluster};

use mailwarden::config::{ClassifierConfig, StateConfig, StateTarget, StateUrl};
use mailwarden::filter::classifier::{
    Answer, Class, Classifier, Item, Op, RedisStore, Source, Store, StoreError,
};
use mailwarden::filter::message::Message;

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

fn target(redis: &Redis) -> StateTarget {
    StateTarget::Standalone(redis.url())
}

fn store(redis: &Redis, max_seen: u64, max_tokens: u64) -> RedisStore {
    RedisStore::open(
        &target(redis),
        Duration::from_millis(500),
        max_seen,
        max_tokens,
    )
    .expect("open the Redis store")
}

fn item(n: u8, op: Op, hashes: &[u64]) -> Item {
    Item {
        digest: [n; 32],
        op,
        hashes: hashes.to_vec(),
    }
}

fn state(redis: &Redis) -> StateConfig {
    StateConfig {
        url: StateUrl(vec![redis.url()]),
        ..StateConfig::default()
    }
}

fn classifier_config(min_learns: u64) -> ClassifierConfig {
    ClassifierConfig {
        store: "redis".into(),
        min_learns,
        autolearn: false,
        ..ClassifierConfig::default()
    }
}

fn node(redis: &Redis, min_learns: u64) -> Classifier {
    Classifier::open_with(&classifier_config(min_learns), &state(redis), true)
        .expect("open a classifier on Redis")
}

fn message(spam: bool, n: usize) -> Message {
    let (subject, body) = if spam {
        ("cheap pills", "buy viagra casino lottery prize now")
    } else {
        ("meeting notes", "agenda for the quarterly project review")
    };
    Message::parse(
        format!("Message-ID: <{n}-{spam}@t>\r\nSubject: {subject}\r\n\r\n{body} {n}\r\n")
            .into_bytes(),
    )
}

/// `count` spam and `count` ham items (numbered from `from`), as `on` sees them.
fn corpus(on: &Classifier, from: usize, count: usize) -> Vec<Item> {
    let mut items = Vec::new();
    for n in from..from + count {
        for (spam, class) in [(true, Class::Spam), (false, Class::Ham)] {
            let m = message(spam, n);
            items.push(on.classify(&m, false).item(m.raw(), class));
        }
    }
    items
}

// ---------------------------------------------------------------------------------------------
// The store's semantics (as the SQLite store's tests).
// ---------------------------------------------------------------------------------------------

#[test]
fn learn_twice_counts_once_relearn_moves_forget_undoes() {
    let redis = Redis::start();
    let store = store(&redis, 10_000, 1_000_000);
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
    assert!(c.whole);
    assert_eq!((meta.spam, meta.ham, c.tokens.len()), (1, 0, 2));
    let moved = store
        .apply(&[item(1, Op::Learn(Class::Ham), &[10, 11])], Source::Cli)
        .expect("apply");
    assert_eq!(moved.moved, 1);
    let c = store.changes(meta.generation).expect("changes");
    assert!(!c.whole);
    assert_eq!((c.meta.spam, c.meta.ham), (0, 1));
    assert!(
        c.tokens.iter().all(|(_, c)| c.spam == 0 && c.ham == 1) && c.tokens.len() == 2,
        "{:?}",
        c.tokens
    );
    let before = c.meta.generation;
    let f = store
        .apply(
            &[item(1, Op::Forget, &[10, 11]), item(2, Op::Forget, &[1])],
            Source::Cli,
        )
        .expect("apply");
    assert_eq!((f.forgotten, f.unknown), (1, 1));
    // A reader of the changed blocks sees the forgotten features go (as zero counts).
    let c = store.changes(before).expect("changes");
    assert!(!c.whole);
    assert_eq!(c.tokens.len(), 2);
    assert!(c.tokens.iter().all(|(_, c)| c.spam == 0 && c.ham == 0));
    let stats = store.stats().expect("stats");
    assert_eq!(
        (stats.meta.spam, stats.meta.ham, stats.seen, stats.tokens),
        (0, 0, 0, 0)
    );
    assert_eq!(stats.learns.get(&(Source::Cli, Class::Spam)), Some(&1));
    assert_eq!(stats.learns.get(&(Source::Cli, Class::Ham)), Some(&1));
    assert_eq!(stats.forgets, 1);
    assert_eq!(stats.location, redis.url());
    assert!(stats.bytes > 0);
    // A whole read leaves the forgotten features out.
    assert!(store.changes(0).expect("changes").tokens.is_empty());
}

#[test]
fn autolearn_never_moves_what_was_learned() {
    let redis = Redis::start();
    let store = store(&redis, 10_000, 1_000_000);
    store
        .apply(&[item(1, Op::Learn(Class::Ham), &[5])], Source::Cli)
        .expect("apply");
    let a = store
        .apply(&[item(1, Op::Learn(Class::Spam), &[5])], Source::Autolearn)
        .expect("apply");
    assert_eq!((a.moved, a.already), (0, 1));
    let c = store.changes(0).expect("changes");
    assert_eq!((c.meta.spam, c.meta.ham), (0, 1));
    // The CLI may move it.
    let m = store
        .apply(&[item(1, Op::Learn(Class::Spam), &[5])], Source::Cli)
        .expect("apply");
    assert_eq!(m.moved, 1);
}

#[test]
fn seen_digests_are_bounded_oldest_first() {
    let redis = Redis::start();
    let store = store(&redis, 3, 1_000_000);
    let items: Vec<Item> = (0..5)
        .map(|n| item(n, Op::Learn(Class::Spam), &[1]))
        .collect();
    store.apply(&items, Source::Cli).expect("apply");
    assert_eq!(store.stats().expect("stats").seen, 3);
    // The newest are remembered, the oldest were dropped (learning one again counts anew).
    let again = store
        .apply(
            &[
                item(4, Op::Learn(Class::Spam), &[1]),
                item(0, Op::Learn(Class::Spam), &[1]),
            ],
            Source::Cli,
        )
        .expect("apply");
    assert_eq!((again.already, again.learned), (1, 1));
}

#[test]
fn negative_and_large_hashes_round_trip() {
    let redis = Redis::start();
    let store = store(&redis, 10_000, 1_000_000);
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
    store
        .apply(&[item(2, Op::Learn(Class::Ham), &hashes)], Source::Cli)
        .expect("apply");
    let delta = store.changes(base.meta.generation).expect("changes");
    assert!(!delta.whole);
    let mut got: Vec<u64> = delta.tokens.iter().map(|(h, _)| *h).collect();
    got.sort_unstable();
    assert_eq!(got, want);
    assert!(delta.tokens.iter().all(|(_, c)| c.spam == 1 && c.ham == 1));
    // Nothing changed: an empty delta.
    let none = store.changes(delta.meta.generation).expect("changes");
    assert!(!none.whole && none.tokens.is_empty());
}

#[test]
fn tokens_are_bounded_and_a_prune_makes_readers_reload_whole() {
    let redis = Redis::start();
    let writer = store(&redis, 10_000, 100);
    let reader = store(&redis, 10_000, 100);
    let first: Vec<u64> = (0..60).collect();
    writer
        .apply(&[item(1, Op::Learn(Class::Spam), &first)], Source::Cli)
        .expect("apply");
    let before = reader.changes(0).expect("changes").meta.generation;
    // 60 more: 120 > 100, pruned to 90 — the features seen once, oldest first.
    let more: Vec<u64> = (1000..1060).collect();
    writer
        .apply(&[item(2, Op::Learn(Class::Ham), &more)], Source::Cli)
        .expect("apply");
    assert_eq!(writer.stats().expect("stats").tokens, 90);
    let c = reader.changes(before).expect("changes");
    assert!(c.whole, "a prune must make readers reload whole");
    assert_eq!(c.tokens.len(), 90);
    // The newest features were all kept; 30 of the older, equally rare ones went.
    let kept_new = c.tokens.iter().filter(|(h, _)| *h >= 1000).count();
    assert_eq!(kept_new, 60);
    // After the whole read, deltas again.
    writer
        .apply(&[item(3, Op::Learn(Class::Spam), &[1059])], Source::Cli)
        .expect("apply");
    let d = reader.changes(c.meta.generation).expect("changes");
    assert!(!d.whole);
}

#[test]
fn another_version_of_the_model_is_incompatible_not_overwritten() {
    let redis = Redis::start();
    let store = store(&redis, 10_000, 1_000_000);
    let _: i64 = redis.cmd(&["HSET", "mw:{bayes}:meta", "format", "99", "created", "5"]);
    let err = store.changes(0).expect_err("error");
    assert!(
        matches!(&err, StoreError::Shared { detail, .. } if detail.contains("another version")),
        "{err:?}"
    );
    let err = store
        .apply(&[item(1, Op::Learn(Class::Spam), &[1])], Source::Cli)
        .expect_err("error");
    assert!(
        matches!(&err, StoreError::Shared { detail, .. } if detail.contains("another version")),
        "{err:?}"
    );
    let format: String = redis.cmd(&["HGET", "mw:{bayes}:meta", "format"]);
    assert_eq!(format, "99");
}

// ---------------------------------------------------------------------------------------------
// Through the classifier: several nodes, FLUSHALL, Redis down.
// ---------------------------------------------------------------------------------------------

#[test]
fn two_nodes_share_one_model() {
    let redis = Redis::start();
    let a = node(&redis, 5);
    let b = node(&redis, 5);
    let probe = message(true, 999);
    assert!(matches!(
        b.classify(&probe, false).answer,
        Answer::Untrained { .. }
    ));
    // Four of each: still below min_learns on both.
    a.apply(&corpus(&a, 0, 4), Source::Cli).expect("apply");
    assert_eq!(b.refresh(), Ok(true));
    assert_eq!(b.counts(), (4, 4));
    assert!(matches!(
        b.classify(&probe, false).answer,
        Answer::Untrained { .. }
    ));
    a.apply(&corpus(&a, 4, 6), Source::Cli).expect("apply");
    assert_eq!(b.counts(), (4, 4), "B reads Redis only when it refreshes");
    assert_eq!(b.refresh(), Ok(true));
    assert_eq!(b.counts(), (10, 10));
    let Answer::Scored { probability, .. } = b.classify(&probe, false).answer else {
        panic!("B does not vote with 10 of each learned on A");
    };
    assert!(probability > 0.9, "{probability}");
    assert_eq!(b.refresh(), Ok(false), "nothing changed since");
    // What B learns, A sees.
    b.apply(&corpus(&b, 10, 2), Source::Cli).expect("apply");
    assert_eq!(a.refresh(), Ok(true));
    assert_eq!(a.counts(), (12, 12));
}

#[test]
fn a_flushall_is_a_new_empty_model_not_an_error() {
    let redis = Redis::start();
    let a = node(&redis, 1);
    let b = node(&redis, 1);
    a.apply(&corpus(&a, 0, 3), Source::Cli).expect("apply");
    assert_eq!(b.refresh(), Ok(true));
    assert_eq!(b.counts(), (3, 3));
    let _: String = redis.cmd(&["FLUSHALL"]);
    assert_eq!(b.refresh(), Ok(true));
    assert_eq!(b.counts(), (0, 0));
    let probe = message(true, 999);
    assert!(matches!(
        b.classify(&probe, false).answer,
        Answer::Untrained { spam: 0, ham: 0 }
    ));
    for _ in 0..3 {
        assert!(b.refresh().is_ok(), "an empty Redis must not be an error");
    }
    // A learns again (its snapshot is of the old model): a new model both see.
    a.apply(&corpus(&a, 100, 2), Source::Cli).expect("apply");
    assert_eq!(a.counts(), (2, 2));
    assert_eq!(b.refresh(), Ok(true));
    assert_eq!(b.counts(), (2, 2));
    assert!(matches!(
        b.classify(&probe, false).answer,
        Answer::Scored { .. }
    ));
}

#[test]
fn redis_down_is_bayes_fail_and_it_recovers_when_back() {
    let mut redis = Redis::start();
    let a = node(&redis, 1);
    a.apply(&corpus(&a, 0, 2), Source::Cli).expect("apply");
    let probe = message(true, 999);
    assert!(matches!(
        a.classify(&probe, false).answer,
        Answer::Scored { .. }
    ));
    redis.stop();
    let err = a.refresh().expect_err("refresh with Redis stopped");
    assert!(matches!(err, StoreError::Shared { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&redis.url()) && text.contains("BAYES_FAIL"),
        "{text}"
    );
    assert!(matches!(
        a.classify(&probe, false).answer,
        Answer::Failed(_)
    ));
    assert!(a.apply(&corpus(&a, 5, 1), Source::Cli).is_err());
    // A node started meanwhile starts (BAYES_FAIL), it does not refuse.
    let late = node(&redis, 1);
    assert!(matches!(
        late.classify(&probe, false).answer,
        Answer::Failed(_)
    ));
    redis.start_again();
    // Redis came back empty (no persistence): a new model, readable again.
    assert_eq!(a.refresh(), Ok(true));
    assert_eq!(a.counts(), (0, 0));
    a.apply(&corpus(&a, 10, 1), Source::Cli)
        .expect("apply after restart");
    assert_eq!(late.refresh(), Ok(true));
    assert_eq!(late.counts(), (1, 1));
}

#[test]
fn a_prune_on_one_node_makes_the_other_reload_whole() {
    let redis = Redis::start();
    let config = ClassifierConfig {
        max_tokens: 100,
        ..classifier_config(1)
    };
    let a = Classifier::open_with(&config, &state(&redis), true).expect("open");
    let b = Classifier::open_with(&config, &state(&redis), true).expect("open");
    a.apply(
        &[item(
            1,
            Op::Learn(Class::Spam),
            &(0..60).collect::<Vec<_>>(),
        )],
        Source::Cli,
    )
    .expect("apply");
    assert_eq!(b.refresh(), Ok(true));
    a.apply(
        &[item(
            2,
            Op::Learn(Class::Ham),
            &(1000..1060).collect::<Vec<_>>(),
        )],
        Source::Cli,
    )
    .expect("apply");
    assert_eq!(b.refresh(), Ok(true));
    assert_eq!(b.counts(), (1, 1));
    let stats = b.stats().expect("stats");
    assert_eq!(stats.tokens, 90);
    let whole = RedisStore::open(&target(&redis), Duration::from_secs(1), 10_000, 100)
        .expect("open")
        .changes(0)
        .expect("changes");
    assert_eq!(whole.tokens.len(), 90);
}

// ---------------------------------------------------------------------------------------------
// `mailwarden learn` with the model in Redis.
// ---------------------------------------------------------------------------------------------

fn mailwarden(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run mailwarden {args:?}: {e}"))
}

#[test]
fn mailwarden_learn_writes_the_model_into_redis() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mailwarden.toml");
    let text = format!(
        "[auth]\nenabled = false\n\n[state]\nurl = \"{}\"\n\n[classifier]\nstore = \"redis\"\nmin_learns = 1\n",
        redis.url()
    );
    std::fs::write(&config, text).expect("write config");
    let spam = dir.path().join("spam.eml");
    std::fs::write(&spam, message(true, 1).raw()).expect("write message");
    let config = config.display().to_string();
    let spam = spam.display().to_string();
    let out = mailwarden(dir.path(), &["learn", "--config", &config, "--spam", &spam]);
    let said = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("learned 1 message(s) as spam"), "{said}");
    assert!(
        !dir.path().join("redis").exists(),
        "no file named after the store"
    );
    let stats = store(&redis, 10_000, 1_000_000).stats().expect("stats");
    assert_eq!((stats.meta.spam, stats.meta.ham, stats.seen), (1, 0, 1));
    let out = mailwarden(
        dir.path(),
        &["learn", "--config", &config, "--stats", "--json"],
    );
    assert_eq!(out.status.code(), Some(0));
    let stats: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("learn --stats --json is JSON");
    assert_eq!(stats["spam"], 1, "{stats}");
    assert_eq!(stats["store"], redis.url(), "{stats}");
    // Learning it again counts once, across processes.
    let out = mailwarden(dir.path(), &["learn", "--config", &config, "--spam", &spam]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("learned 0 message(s) as spam (1 already known"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_redis_restart_between_calls_is_not_an_error() {
    let mut redis = Redis::start();
    let a = node(&redis, 1);
    a.apply(&corpus(&a, 0, 1), Source::Cli).expect("apply");
    // The connection a holds is to the old process: the next call remakes it, once.
    redis.start_again();
    assert_eq!(a.refresh(), Ok(true));
    assert_eq!(a.counts(), (0, 0));
    a.apply(&corpus(&a, 1, 1), Source::Cli).expect("apply");
    redis.start_again();
    let applied = a.apply(&corpus(&a, 2, 1), Source::Cli).expect("apply");
    assert_eq!(applied.learned, 2);
}

/// A `mailwarden learn` batch (1,000 messages of 200 features, 200,000 distinct features) goes
/// in short scripts: it must finish well within the store's wait, and a reader loads it whole.
#[test]
fn a_full_cli_batch_is_learned_within_the_wait() {
    let redis = Redis::start();
    let store = store(&redis, 500_000, 800_000);
    let items: Vec<Item> = (0..1000u64)
        .map(|n| {
            let hashes: Vec<u64> = (0..200u64)
                .map(|k| (n * 200 + k).wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect();
            Item {
                digest: {
                    let mut d = [0u8; 32];
                    d[..8].copy_from_slice(&n.to_be_bytes());
                    d
                },
                op: Op::Learn(if n % 2 == 0 { Class::Spam } else { Class::Ham }),
                hashes,
            }
        })
        .collect();
    let started = Instant::now();
    let applied = store.apply(&items, Source::Cli).expect("apply");
    let took = started.elapsed();
    assert_eq!(applied.learned, 1000);
    let started = Instant::now();
    let whole = store.changes(0).expect("changes");
    let read = started.elapsed();
    assert_eq!(whole.tokens.len(), 200_000);
    eprintln!("apply {took:?}, whole read {read:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    let stats = store.stats().expect("stats");
    eprintln!("bytes {}", stats.bytes);
    assert_eq!(stats.tokens, 200_000);
}

#[test]
fn the_model_lives_in_one_cluster_slot_and_nodes_share_it() {
    let cluster = RedisCluster::start();
    let nodes = &cluster.nodes;
    let seeds = cluster.seeds();
    let state = StateConfig {
        url: StateUrl(seeds.clone()),
        ..StateConfig::default()
    };
    let a = Classifier::open_with(&classifier_config(2), &state, true).expect("open a");
    let b = Classifier::open_with(&classifier_config(2), &state, true).expect("open b");
    a.apply(&corpus(&a, 0, 3), Source::Cli)
        .expect("apply on the cluster");
    assert_eq!(b.refresh(), Ok(true));
    assert_eq!(b.counts(), (3, 3));
    assert!(matches!(
        b.classify(&message(true, 999), false).answer,
        Answer::Scored { .. }
    ));
    // Forget one on B: A sees it go.
    let m = message(true, 0);
    let forget = Item {
        op: Op::Forget,
        ..b.classify(&m, false).item(m.raw(), Class::Spam)
    };
    assert_eq!(
        b.apply(&[forget], Source::Cli).expect("forget").forgotten,
        1
    );
    assert_eq!(a.refresh(), Ok(true));
    assert_eq!(a.counts(), (2, 3));
    let stats = a.stats().expect("stats");
    assert_eq!(stats.seen, 5);
    // The Cluster's seeds, as `[state] url` lists them.
    assert_eq!(stats.location.split(',').count(), 3, "{}", stats.location);
    // Every key is on the one master that serves the {bayes} slot.
    let slot: i64 = nodes[0].cmd(&["CLUSTER", "KEYSLOT", "mw:{bayes}:meta"]);
    let holding: Vec<i64> = nodes.iter().map(|n| n.cmd::<i64>(&["DBSIZE"])).collect();
    assert_eq!(
        holding.iter().filter(|n| **n > 0).count(),
        1,
        "{holding:?} (slot {slot})"
    );
}
