//! Several mailwarden nodes, one memory: two real `mailwarden serve` processes share one real
//! Redis (standalone, and a 3-master Cluster) for greylisting, rate limits and the classifier,
//! and each fault of the store — stopped, slow, restarted under load, flushed — is answered per
//! `[state] on_error`, counted, and shown by `/readyz`, with every 250 delivered exactly once.
//! One node without Redis keeps its state in the embedded store across restarts.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::redis::{Redis, RedisCluster};
use support::{Proxy, SmtpClient};

/// A node's config: Maildir delivery into `mail` (shared by the nodes), state on `url`.
fn node_config(url: &str, mail: &Path, extra: &str) -> String {
    format!(
        "[server]\nhostname = \"mx.example.test\"\n\n[upstream]\nurl = \"maildir:{}\"\n\n[state]\nurl = \"{url}\"\ndir = \"@DIR@/state\"\ntimeout = \"300ms\"\n{extra}\n",
        mail.display()
    )
}

/// The RCPT reply for one attempt of `from` → `to` from 127.0.0.1; QUITs after it.
fn rcpt_attempt(node: &Proxy, from: &str, to: &str) -> support::Reply {
    let mut c = SmtpClient::connect_ehlo(node.addr(), "client.example.org");
    let mail = c.cmd(&format!("MAIL FROM:<{from}>"));
    if !mail.is_positive() {
        return mail;
    }
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    let _ = c.try_cmd("QUIT");
    r
}

/// One whole message; the final reply (MAIL's, RCPT's or the end of data's).
fn send(node: &Proxy, from: &str, to: &str, id: &str) -> support::Reply {
    let mut c = SmtpClient::connect_ehlo(node.addr(), "client.example.org");
    for line in [format!("MAIL FROM:<{from}>"), format!("RCPT TO:<{to}>")] {
        let r = c.cmd(&line);
        if !r.is_positive() {
            return r;
        }
    }
    let message = format!(
        "Message-ID: <{id}>\r\nFrom: {from}\r\nTo: {to}\r\nSubject: {id}\r\n\r\nHello {id}\r\n"
    );
    let r = c.data(message.as_bytes());
    let _ = c.try_cmd("QUIT");
    r
}

fn expect(r: &support::Reply, code: u16, enhanced: &str, what: &str) {
    assert!(
        r.code == code && r.enhanced() == Some(enhanced),
        "{what}: expected {code} {enhanced}, got {}",
        r.wire()
    );
}

/// Message-IDs of the messages in a Maildir, with how often each is there.
fn delivered(mail: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(mail.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("Message-ID:")) {
                ids.push(line["Message-ID:".len()..].trim().to_string());
            }
        }
    }
    ids.sort();
    ids
}

fn metric(node: &Proxy, name_and_labels: &str) -> f64 {
    let (_, text) = node.http_get("/metrics");
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const GREYLIST: &str = "[greylist]\nenabled = true\ndelay = \"1s\"\nretry_window = \"1h\"\n";

fn greylist_passes_on_the_other_node(url: &str) {
    let mail = tempfile::tempdir().expect("tempdir");
    let a = Proxy::start(&node_config(url, mail.path(), GREYLIST));
    let b = Proxy::start(&node_config(url, mail.path(), GREYLIST));
    let first = rcpt_attempt(&a, "alice@sender.example", "bob@example.org");
    expect(&first, 451, "4.7.1", "first attempt on node A");
    assert!(
        first.text().contains("retry"),
        "the reply tells the sender to retry: {}",
        first.wire()
    );
    // Node B knows the triplet: too early there too (not a new first attempt).
    let early = rcpt_attempt(&b, "alice@sender.example", "bob@example.org");
    expect(&early, 451, "4.7.1", "early retry on node B");
    std::thread::sleep(Duration::from_millis(1300));
    let r = send(&b, "alice@sender.example", "bob@example.org", "grey-1@test");
    assert_eq!(r.code, 250, "retry after the delay on node B: {}", r.wire());
    assert_eq!(delivered(mail.path()), vec!["<grey-1@test>"]);
    assert!(metric(&a, "mailwarden_greylist_total{result=\"deferred_new\"}") >= 1.0);
    assert!(metric(&b, "mailwarden_greylist_total{result=\"passed\"}") >= 1.0);
}

const LIMIT: &str =
    "[[ratelimit]]\nname = \"per-client\"\nkey = \"client_ip\"\nrate = \"3/min\"\nburst = 3\n";

fn rate_limit_holds_across_both_nodes(url: &str) {
    let mail = tempfile::tempdir().expect("tempdir");
    let a = Proxy::start(&node_config(url, mail.path(), LIMIT));
    let b = Proxy::start(&node_config(url, mail.path(), LIMIT));
    let nodes = [&a, &b, &a, &b];
    let mut replies = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        replies.push(send(
            node,
            "s@example.org",
            "u@example.org",
            &format!("rl-{n}@test"),
        ));
    }
    for (n, r) in replies.iter().take(3).enumerate() {
        assert_eq!(r.code, 250, "message {n}: {}", r.wire());
    }
    expect(
        &replies[3],
        451,
        "4.7.0",
        "the fourth message in a minute, on node B",
    );
    assert!(
        replies[3].text().contains("per-client"),
        "{}",
        replies[3].wire()
    );
    assert_eq!(delivered(mail.path()).len(), 3);
    assert_eq!(
        metric(&b, "mailwarden_ratelimit_hits_total{name=\"per-client\"}"),
        1.0
    );
}

#[test]
fn standalone_redis_greylisting_is_shared_between_nodes() {
    let redis = Redis::start();
    greylist_passes_on_the_other_node(&redis.url());
}

#[test]
fn standalone_redis_rate_limit_is_enforced_across_nodes() {
    let redis = Redis::start();
    rate_limit_holds_across_both_nodes(&redis.url());
}

#[test]
fn redis_cluster_shares_greylisting_and_rate_limits() {
    let cluster = RedisCluster::start();
    let url = format!("redis+cluster://{}", cluster.seeds().join(","));
    greylist_passes_on_the_other_node(&url);
    rate_limit_holds_across_both_nodes(&url);
}

/// `mailwarden` with `args`; (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .args(args)
        .output()
        .expect("run mailwarden");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_corpus(dir: &Path, class: &str, words: &str, n: usize) -> PathBuf {
    let d = dir.join(class);
    std::fs::create_dir_all(&d).expect("corpus dir");
    for i in 0..n {
        let text = format!(
            "Message-ID: <{class}-{i}@corpus.test>\r\nFrom: x{i}@corpus.test\r\nSubject: {class} {i}\r\n\r\n{words} number{i}\r\n"
        );
        std::fs::write(d.join(format!("{i}.eml")), text).expect("corpus file");
    }
    d
}

#[test]
fn a_message_learned_on_one_node_changes_the_answer_on_the_other() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |name: &str| {
        let path = dir.path().join(name);
        let text = format!(
            "[state]\nurl = \"{}\"\n[classifier]\nstore = \"redis\"\nmin_learns = 5\nautolearn = false\n[auth]\nenabled = false\n",
            redis.url()
        );
        std::fs::write(&path, text).expect("config");
        path.display().to_string()
    };
    let (node_a, node_b) = (config("a.toml"), config("b.toml"));
    let probe = dir.path().join("probe.eml");
    std::fs::write(
        &probe,
        "Message-ID: <probe@corpus.test>\r\nFrom: p@corpus.test\r\nSubject: cheap pills\r\n\r\ncheap pills casino viagra winner\r\n",
    )
    .expect("probe");
    let scan_b = || {
        let (code, out, err) = cli(&[
            "scan",
            "--json",
            "--config",
            &node_b,
            &probe.display().to_string(),
        ]);
        assert!(code <= 2, "scan on B failed: {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("scan JSON");
        v["classifier"].clone()
    };
    let before = scan_b();
    assert!(
        before.is_null() || before["symbol"].is_null(),
        "untrained on B: {before}"
    );
    let spam = write_corpus(dir.path(), "spam", "cheap pills casino viagra winner", 8);
    let ham = write_corpus(
        dir.path(),
        "ham",
        "meeting agenda minutes project schedule",
        8,
    );
    for (flag, path) in [("--spam", &spam), ("--ham", &ham)] {
        let (code, out, err) = cli(&[
            "learn",
            "--config",
            &node_a,
            flag,
            &path.display().to_string(),
        ]);
        assert_eq!(code, 0, "learn on A: {out}{err}");
    }
    let after = scan_b();
    let symbol = after["symbol"].as_str().unwrap_or("");
    assert!(
        symbol.starts_with("BAYES_") && after["probability"].as_f64().unwrap_or(0.0) > 0.9,
        "learned on A, seen on B: {after}"
    );
}

/// One node with `on_error` on a Redis the test controls.
fn faulty_node(redis: &Redis, on_error: &str, mail: &Path) -> Proxy {
    Proxy::start(&node_config(
        &redis.url(),
        mail,
        &format!("on_error = \"{on_error}\"\n{GREYLIST}\n{LIMIT_HIGH}"),
    ))
}

/// A limit that never limits these tests: the check still runs on every message.
const LIMIT_HIGH: &str =
    "[[ratelimit]]\nname = \"high\"\nkey = \"sender\"\nrate = \"10000/s\"\nburst = 10000\n";

/// Passes the greylisting of `from` → `to` on `node` (first attempt, wait, retry).
fn pass_greylist(node: &Proxy, from: &str, to: &str) {
    let _ = rcpt_attempt(node, from, to);
    std::thread::sleep(Duration::from_millis(1100));
}

#[test]
fn redis_stopped_tempfails_is_counted_and_unready_then_recovers() {
    let mut redis = Redis::start();
    let mail = tempfile::tempdir().expect("tempdir");
    let node = faulty_node(&redis, "tempfail", mail.path());
    let (code, report) = node.http_get("/readyz");
    assert_eq!(code, 200, "{report}");
    redis.stop();
    let started = Instant::now();
    let r = rcpt_attempt(&node, "a@sender.example", "b@example.org");
    expect(&r, 451, "4.3.0", "Redis stopped, on_error = tempfail");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered quickly"
    );
    let (code, report) = node.http_get("/readyz");
    assert_eq!(code, 503, "not ready while Redis is down: {report}");
    assert!(report.contains("state: FAILED"), "{report}");
    assert!(metric(&node, "mailwarden_state_up") == 0.0);
    let (_, text) = node.http_get("/metrics");
    assert!(
        text.lines()
            .any(|l| l.starts_with("mailwarden_state_errors_total{") && !l.ends_with(" 0")),
        "errors counted"
    );
    redis.start_again();
    // Back: the node reconnects by itself (the empty Redis makes it a first attempt again).
    let r = support::wait_until(Duration::from_secs(10), || {
        let r = rcpt_attempt(&node, "a@sender.example", "b@example.org");
        (r.code == 451 && r.enhanced() == Some("4.7.1")).then_some(r)
    });
    assert!(r.is_some(), "greylisting works again after the restart");
    let (code, report) = node.http_get("/readyz");
    assert_eq!(code, 200, "{report}");
    assert!(delivered(mail.path()).is_empty());
}

#[test]
fn redis_stopped_with_on_error_accept_lets_mail_through_and_says_so() {
    let mut redis = Redis::start();
    let mail = tempfile::tempdir().expect("tempdir");
    let node = faulty_node(&redis, "accept", mail.path());
    redis.stop();
    let r = send(&node, "a@sender.example", "b@example.org", "accepted@test");
    assert_eq!(r.code, 250, "{}", r.wire());
    assert_eq!(delivered(mail.path()), vec!["<accepted@test>"]);
    let (code, report) = node.http_get("/readyz");
    assert_eq!(code, 200, "{report}");
    assert!(
        report.contains("DOWN") && report.contains("on_error = accept"),
        "{report}"
    );
    assert!(metric(&node, "mailwarden_greylist_total{result=\"error_accept\"}") >= 1.0);
}

#[test]
fn a_slow_redis_is_a_timeout_answered_per_on_error() {
    let redis = Redis::start();
    let mail = tempfile::tempdir().expect("tempdir");
    let node = faulty_node(&redis, "tempfail", mail.path());
    // Warm the connection, then pause every client of Redis longer than [state] timeout.
    let _ = rcpt_attempt(&node, "w@sender.example", "b@example.org");
    redis.cli(&["CLIENT", "PAUSE", "2500"]);
    let started = Instant::now();
    let r = rcpt_attempt(&node, "a@sender.example", "b@example.org");
    expect(&r, 451, "4.3.0", "Redis slower than the timeout");
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "the timeout answered, not Redis: {:?}",
        started.elapsed()
    );
    let (_, text) = node.http_get("/metrics");
    assert!(
        text.contains("mailwarden_state_errors_total{kind=\"timeout\"")
            || text.contains("kind=\"timeout\",op="),
        "timeouts counted"
    );
}

#[test]
fn a_flushed_redis_starts_greylisting_over_without_errors() {
    let redis = Redis::start();
    let mail = tempfile::tempdir().expect("tempdir");
    let node = faulty_node(&redis, "tempfail", mail.path());
    pass_greylist(&node, "a@sender.example", "b@example.org");
    let r = send(
        &node,
        "a@sender.example",
        "b@example.org",
        "before-flush@test",
    );
    assert_eq!(r.code, 250, "{}", r.wire());
    redis.cli(&["FLUSHALL"]);
    redis.cli(&["SCRIPT", "FLUSH"]);
    let r = rcpt_attempt(&node, "a@sender.example", "b@example.org");
    expect(&r, 451, "4.7.1", "after FLUSHALL the triplet is new again");
    assert_eq!(delivered(mail.path()), vec!["<before-flush@test>"]);
}

#[test]
fn redis_restarted_under_load_loses_and_duplicates_nothing() {
    let mut redis = Redis::start();
    let mail = tempfile::tempdir().expect("tempdir");
    let node = Proxy::start(&node_config(&redis.url(), mail.path(), LIMIT_HIGH));
    let addr = node.addr();
    let sender = std::thread::spawn(move || {
        let mut accepted = Vec::new();
        let mut deferred = 0;
        for n in 0..120 {
            let id = format!("load-{n}@test");
            let mut c = SmtpClient::connect_ehlo(addr, "client.example.org");
            let ok = c.cmd("MAIL FROM:<s@example.org>").is_positive()
                && c.cmd("RCPT TO:<u@example.org>").is_positive();
            let r = if ok {
                c.data(format!("Message-ID: <{id}>\r\nSubject: {n}\r\n\r\nbody\r\n").as_bytes())
            } else {
                support::Reply::parse_wire("451 4.3.0 deferred\r\n")
            };
            let _ = c.try_cmd("QUIT");
            match r.code {
                250 => accepted.push(format!("<{id}>")),
                _ => deferred += 1,
            }
            std::thread::sleep(Duration::from_millis(15));
        }
        (accepted, deferred)
    });
    std::thread::sleep(Duration::from_millis(400));
    redis.stop();
    std::thread::sleep(Duration::from_millis(400));
    redis.start_again();
    let (accepted, deferred) = sender.join().expect("the sender thread");
    assert!(
        deferred > 0,
        "some messages were deferred while Redis was away"
    );
    assert!(accepted.len() > 60, "most went through: {}", accepted.len());
    let got = delivered(mail.path());
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "nothing delivered twice");
    let mut want = accepted.clone();
    want.sort();
    assert_eq!(got, want, "every 250 delivered, nothing else");
}

#[test]
fn the_embedded_store_keeps_greylisting_across_a_restart() {
    let state = tempfile::tempdir().expect("tempdir");
    let mail = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[server]\nhostname = \"mx.example.test\"\n[upstream]\nurl = \"maildir:{}\"\n[state]\ndir = \"{}\"\n{GREYLIST}",
        mail.path().display(),
        state.path().display()
    );
    let node = Proxy::start(&config);
    let first = rcpt_attempt(&node, "a@sender.example", "b@example.org");
    expect(&first, 451, "4.7.1", "first attempt");
    drop(node);
    std::thread::sleep(Duration::from_millis(1100));
    let node = Proxy::start(&config);
    let r = send(&node, "a@sender.example", "b@example.org", "embedded@test");
    assert_eq!(
        r.code,
        250,
        "the restarted node remembers the triplet: {}",
        r.wire()
    );
}

#[test]
fn a_corrupt_embedded_state_file_is_a_clear_start_up_error() {
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        state.path().join("state.db"),
        b"this is not a database, it is a note",
    )
    .expect("garbage");
    let config = format!(
        "[server]\nhostname = \"mx.example.test\"\nlisten = [\"127.0.0.1:0\"]\n[upstream]\nurl = \"maildir:{}/mail\"\n[state]\ndir = \"{}\"\n{GREYLIST}[auth]\nenabled = false\n[classifier]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        state.path().display(),
        state.path().display()
    );
    match Proxy::try_start_in_working_dir(&config) {
        Ok(_) => panic!("a damaged state file must stop the start"),
        Err(log) => assert!(
            log.contains("state.db") && log.contains("move it away"),
            "the error names the file and what to do: {log}"
        ),
    }
}
