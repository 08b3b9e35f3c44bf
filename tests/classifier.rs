//! The learning classifier through the real binary: `mailwarden learn` (files, Maildirs,
//! directories, mbox files; once-only learning, relearning, forgetting, `--stats`), the votes
//! `mailwarden scan` and `mailwarden serve` give with the model (`BAYES_*` symbols), a `learn`
//! run while `serve` runs, a `learn` killed with SIGKILL, damaged stores, and autolearn.
//!
//! Every test makes its own small synthetic corpus in a temporary directory — spam and ham with
//! vocabularies of their own and unique Message-IDs — and a config with `min_learns = 20`, so
//! 30 messages of each class make the classifier vote. The proxy delivers into a Maildir, so
//! nothing outside this machine (no MTA, no clamd, no DNS) is needed; what the classifier said
//! about a relayed message is read from the delivered copy's `X-Spam-Status` `tests=` list.
//! Waits poll with a bounded deadline.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Proxy, Reply, SmtpClient};

// ---------------------------------------------------------------------------------------------
// Corpora.
// ---------------------------------------------------------------------------------------------

const SPAM_WORDS: &[&str] = &[
    "cheap",
    "pills",
    "viagra",
    "discount",
    "casino",
    "winner",
    "lottery",
    "prize",
    "bitcoin",
    "guaranteed",
    "pharmacy",
    "replica",
    "watches",
    "loans",
    "credit",
    "bonus",
    "jackpot",
    "unclaimed",
    "exclusive",
    "miracle",
];

const HAM_WORDS: &[&str] = &[
    "meeting",
    "agenda",
    "project",
    "quarterly",
    "budget",
    "report",
    "schedule",
    "review",
    "minutes",
    "colleagues",
    "deadline",
    "milestone",
    "presentation",
    "thursday",
    "office",
    "lunch",
    "invoice",
    "contract",
    "proposal",
    "roadmap",
];

/// `count` words of `words`, a different selection for each `n`.
fn pick(words: &[&str], n: usize, count: usize) -> String {
    (0..count)
        .map(|k| words[(n * 7 + k * 3 + k * k) % words.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// A spam-like message (CRLF), Message-ID `<tag-n@deals.example>`; `extra` goes in the body.
fn spam_message(tag: &str, n: usize, extra: &str) -> Vec<u8> {
    format!(
        "From: Prize Team <promo{m}@deals.example>\r\nTo: user@example.org\r\n\
         Subject: {subject}\r\nMessage-ID: <{tag}-{n}@deals.example>\r\n\
         Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n\
         Dear customer, {body}.\r\nAct now: {more} {n} {extra}\r\n",
        m = n % 5,
        subject = pick(SPAM_WORDS, n, 3),
        body = pick(SPAM_WORDS, n + 1, 12),
        more = pick(SPAM_WORDS, n + 2, 6),
    )
    .into_bytes()
}

/// A ham-like message (CRLF), Message-ID `<tag-n@work.example>`; `extra` goes in the body.
fn ham_message(tag: &str, n: usize, extra: &str) -> Vec<u8> {
    format!(
        "From: Colleague {m} <colleague{m}@work.example>\r\nTo: user@example.org\r\n\
         Subject: {subject}\r\nMessage-ID: <{tag}-{n}@work.example>\r\n\
         Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n\
         Hi, {body}.\r\nThanks, see you {more} {n} {extra}\r\n",
        m = n % 5,
        subject = pick(HAM_WORDS, n, 3),
        body = pick(HAM_WORDS, n + 1, 12),
        more = pick(HAM_WORDS, n + 2, 6),
    )
    .into_bytes()
}

/// Writes `count` messages from `make(n)` as `dir/NNNNN.eml`; returns the paths.
fn write_corpus(dir: &Path, count: usize, make: impl Fn(usize) -> Vec<u8>) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
    (0..count)
        .map(|n| {
            let path = dir.join(format!("{n:05}.eml"));
            std::fs::write(&path, make(n)).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
            path
        })
        .collect()
}

fn write(path: &Path, contents: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {parent:?}: {e}"));
    }
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

/// The rule every test loads beside the shipped `45_bayes.cf`: a marker word worth 10 points
/// (tags, does not reject: reject_score is 15) and one worth 2 (between the autolearn
/// thresholds used below).
const LOCAL_RULES: &str = "body MW_T_MARKER /\\bzzqmarker\\b/\n\
describe MW_T_MARKER Test marker word\n\
score MW_T_MARKER 10.0\n\
body MW_T_MEDIUM /\\bzzqmedium\\b/\n\
describe MW_T_MEDIUM Test word of middling weight\n\
score MW_T_MEDIUM 2.0\n";

// ---------------------------------------------------------------------------------------------
// The command line.
// ---------------------------------------------------------------------------------------------

/// What a finished `mailwarden` command did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A site: a directory with a config (`mailwarden.toml`: rules in `rules/`, the store
/// `classifier.db` relative to the directory, `min_learns = 20`), where the commands run.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        Site::with_classifier("")
    }

    /// `extra`: more `[classifier]` lines.
    fn with_classifier(extra: &str) -> Site {
        let dir = tempfile::Builder::new()
            .prefix("mailwarden-classifier-")
            .tempdir()
            .expect("tempdir");
        let site = Site { dir };
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/45_bayes.cf");
        let bayes = std::fs::read(&shipped).unwrap_or_else(|e| panic!("read {shipped:?}: {e}"));
        write(&site.path("rules/45_bayes.cf"), &bayes);
        write(&site.path("rules/local.cf"), LOCAL_RULES.as_bytes());
        let config = format!(
            "[rules]\npaths = [\"{rules}\"]\n\n[auth]\nenabled = false\n\n\
             [classifier]\nstore = \"classifier.db\"\nmin_learns = 20\n{extra}\n",
            rules = site.path("rules").display(),
        );
        write(&site.path("mailwarden.toml"), config.as_bytes());
        site
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn store(&self) -> PathBuf {
        self.path("classifier.db")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailwarden"));
        cmd.arg(args[0])
            .args(["--config", "mailwarden.toml"])
            .args(&args[1..])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// `mailwarden ARGS[0] --config mailwarden.toml ARGS[1..]` in the site's directory.
    fn run(&self, args: &[&str]) -> Run {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("run mailwarden {args:?}: {e}"));
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `learn FLAG PATHS...`, which must succeed.
    fn learn(&self, flag: &str, paths: &[PathBuf]) -> Run {
        let mut args = vec!["learn".to_string(), flag.to_string()];
        args.extend(paths.iter().map(|p| p.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = self.run(&args);
        assert_eq!(
            run.code,
            Some(0),
            "mailwarden {args:?}:\n{}",
            run.describe()
        );
        run
    }

    /// `learn --stats --json`.
    fn stats(&self) -> serde_json::Value {
        let run = self.run(&["learn", "--stats", "--json"]);
        assert_eq!(
            run.code,
            Some(0),
            "learn --stats --json:\n{}",
            run.describe()
        );
        serde_json::from_str(run.stdout.trim())
            .unwrap_or_else(|e| panic!("learn --stats --json is not JSON ({e}):\n{}", run.stdout))
    }

    /// `scan --json FILE`: the one object printed.
    fn scan_json(&self, file: &Path) -> serde_json::Value {
        let run = self.run(&["scan", "--json", &file.display().to_string()]);
        assert!(
            matches!(run.code, Some(0..=2)),
            "scan --json {file:?}:\n{}",
            run.describe()
        );
        serde_json::from_str(run.stdout.trim())
            .unwrap_or_else(|e| panic!("scan --json is not JSON ({e}):\n{}", run.describe()))
    }

    /// A `serve` config for this site's store (absolute path: the proxy runs elsewhere),
    /// delivering into `DIR/mail`; `extra` are more `[classifier]` lines.
    fn serve_config(&self, extra: &str) -> String {
        format!(
            "[server]\nhostname = \"mx.example.test\"\n\n\
             [upstream]\nurl = \"maildir:{mail}\"\n\n\
             [rules]\npaths = [\"{rules}\"]\n\n\
             [classifier]\nstore = \"{store}\"\nmin_learns = 20\nrefresh_secs = 1\n{extra}\n",
            mail = self.maildir().display(),
            rules = self.path("rules").display(),
            store = self.store().display(),
        )
    }

    fn maildir(&self) -> PathBuf {
        self.path("mail")
    }
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {v}"))
}

/// (spam, ham, seen) of `learn --stats --json`.
fn counts(v: &serde_json::Value) -> (u64, u64, u64) {
    (num(v, "spam"), num(v, "ham"), num(v, "seen"))
}

/// The `BAYES_*` symbols in a `scan --json` object.
fn bayes_symbols(scan: &serde_json::Value) -> Vec<String> {
    scan["symbols"]
        .as_array()
        .unwrap_or_else(|| panic!("no symbols array in {scan}"))
        .iter()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| n.starts_with("BAYES_"))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The proxy.
// ---------------------------------------------------------------------------------------------

const SENDER: &str = "sender@deals.example";
const RCPT: &str = "user@example.org";

/// One message in a session of its own: the end-of-data reply (or the first refusal).
fn send(addr: std::net::SocketAddr, message: &[u8]) -> Reply {
    let mut c = SmtpClient::connect_ehlo(addr, "client.example.test");
    for cmd in [format!("MAIL FROM:<{SENDER}>"), format!("RCPT TO:<{RCPT}>")] {
        let r = c.cmd(&cmd);
        if r.code != 250 {
            return r;
        }
    }
    let r = c.data(message);
    c.quit();
    r
}

/// Every delivered message (`new/` and `cur/` of the Maildir).
fn delivered(maildir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(maildir.join(sub)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("read the Maildir").path();
            let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
            out.push((path, raw));
        }
    }
    out
}

fn message_id(raw: &[u8]) -> String {
    support::messages::header(raw, "Message-ID").unwrap_or_default()
}

/// The delivered copy of the message with this Message-ID (polled: at most 5 s).
fn delivered_copy(maildir: &Path, id: &str) -> (PathBuf, Vec<u8>) {
    support::wait_until(Duration::from_secs(5), || {
        delivered(maildir)
            .into_iter()
            .find(|(_, raw)| message_id(raw) == id)
    })
    .unwrap_or_else(|| panic!("{id} was not delivered into {maildir:?}"))
}

/// The `tests=` list of a delivered message's X-Spam-Status header.
fn tests_of(raw: &[u8]) -> Vec<String> {
    let status = support::messages::header(raw, "X-Spam-Status").unwrap_or_else(|| {
        panic!(
            "no X-Spam-Status in the delivered message:\n{}",
            support::show(raw)
        )
    });
    let tests = status
        .split_once("tests=")
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("no tests= in X-Spam-Status: {status}"));
    tests
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty() && t != "none")
        .collect()
}

/// Sends `message`, expects 250, and returns the delivered copy's `tests=` list.
fn relay(proxy: &Proxy, maildir: &Path, message: &[u8]) -> Vec<String> {
    let reply = send(proxy.addr(), message);
    assert_eq!(reply.code, 250, "end of data: {reply}");
    let (_, raw) = delivered_copy(maildir, &message_id(message));
    tests_of(&raw)
}

fn has_high_bayes(tests: &[String]) -> bool {
    tests
        .iter()
        .any(|t| t == "BAYES_95" || t == "BAYES_99" || t == "BAYES_999")
}

/// Waits (bounded) for a child process; kills it when it does not end in time.
fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mailwarden did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Votes.
// ---------------------------------------------------------------------------------------------

/// No store, then a store with fewer than `min_learns` of one class: `scan --json` says
/// `"classifier": null` and sets no `BAYES_*` symbol (and `scan` does not create the store).
/// With `min_learns` of each learned, a new spam-like message gets BAYES_99 (probability
/// > 0.9), a new ham-like one BAYES_00 or BAYES_05, and `--explain` prints the probability.
#[test]
fn votes_only_once_trained_spam_high_ham_low() {
    let site = Site::new();
    let spam = write_corpus(&site.path("spam"), 30, |n| spam_message("s", n, ""));
    let ham = write_corpus(&site.path("ham"), 30, |n| ham_message("h", n, ""));
    let spam_probe = site.path("probe-spam.eml");
    write(&spam_probe, &spam_message("probe", 1000, ""));
    let ham_probe = site.path("probe-ham.eml");
    write(&ham_probe, &ham_message("probe", 1000, ""));

    let untouched = site.scan_json(&spam_probe);
    assert!(untouched["classifier"].is_null(), "{untouched}");
    assert_eq!(bayes_symbols(&untouched), Vec::<String>::new());
    assert!(!site.store().exists(), "scan created the store");

    // 19 spam (one short of min_learns) and 30 ham: still no vote.
    site.learn("--spam", &spam[..19]);
    site.learn("--ham", &ham);
    assert_eq!(counts(&site.stats()), (19, 30, 49));
    assert_eq!(site.stats()["voting"], false);
    for probe in [&spam_probe, &ham_probe] {
        let scan = site.scan_json(probe);
        assert!(scan["classifier"].is_null(), "{scan}");
        assert_eq!(bayes_symbols(&scan), Vec::<String>::new(), "{scan}");
    }

    let run = site.learn("--spam", &spam);
    assert!(
        run.stdout.contains("model: 30 spam, 30 ham"),
        "{}",
        run.describe()
    );
    assert_eq!(site.stats()["voting"], true);

    let scan = site.scan_json(&spam_probe);
    let vote = &scan["classifier"];
    let p = vote["probability"]
        .as_f64()
        .unwrap_or_else(|| panic!("no probability: {scan}"));
    assert!(p > 0.9, "spam-like probe: {scan}");
    let symbols = bayes_symbols(&scan);
    assert!(symbols.contains(&"BAYES_99".to_string()), "{scan}");
    assert_eq!(
        vote["symbols"],
        serde_json::json!(symbols),
        "the vote's symbols are the scan's BAYES_ symbols: {scan}"
    );
    assert_eq!(vote["symbol"].as_str(), symbols.last().map(String::as_str));
    let bayes_99 = scan["symbols"]
        .as_array()
        .expect("symbols")
        .iter()
        .find(|s| s["name"] == "BAYES_99")
        .expect("BAYES_99");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/45_bayes.cf"))
            .expect("rules/45_bayes.cf");
    let want: f64 = shipped
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("score") && w.next() == Some("BAYES_99"))
                .then(|| w.next().and_then(|v| v.parse().ok()))
                .flatten()
        })
        .expect("a score for BAYES_99 in rules/45_bayes.cf");
    assert_eq!(
        bayes_99["score"].as_f64(),
        Some(want),
        "scored by rules/45_bayes.cf: {scan}"
    );

    let scan = site.scan_json(&ham_probe);
    let p = scan["classifier"]["probability"]
        .as_f64()
        .unwrap_or_else(|| panic!("no probability: {scan}"));
    assert!(p < 0.05, "ham-like probe: {scan}");
    let symbols = bayes_symbols(&scan);
    assert!(
        symbols == ["BAYES_00"] || symbols == ["BAYES_05"],
        "ham-like probe: {scan}"
    );

    let run = site.run(&["scan", "--explain", &spam_probe.display().to_string()]);
    let line = run
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("classifier: probability "))
        .unwrap_or_else(|| panic!("no probability line:\n{}", run.describe()));
    let value: f64 = line
        .trim_start()
        .trim_start_matches("classifier: probability ")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"));
    assert!(value > 0.9 && line.contains("BAYES_99"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// 2. Once only.
// ---------------------------------------------------------------------------------------------

/// Learning the same directory twice changes nothing the second time ("30 already known");
/// the same message as a mailbox keeps it — other header fields added on the way, LF line
/// endings, a subject prefix — is the same message.
#[test]
fn learning_the_same_messages_twice_counts_once() {
    let site = Site::new();
    let spam = write_corpus(&site.path("spam"), 30, |n| spam_message("s", n, ""));
    let ham = write_corpus(&site.path("ham"), 30, |n| ham_message("h", n, ""));
    let first = site.learn("--spam", &[site.path("spam")]);
    assert!(
        first
            .stdout
            .contains("learned 30 message(s) as spam (0 already known"),
        "{}",
        first.describe()
    );
    site.learn("--ham", &[site.path("ham")]);
    let before = site.stats();
    assert_eq!(counts(&before), (30, 30, 60));

    let again = site.learn("--spam", &[site.path("spam")]);
    assert!(
        again
            .stdout
            .contains("learned 0 message(s) as spam (30 already known"),
        "{}",
        again.describe()
    );
    let after = site.stats();
    assert_eq!(counts(&after), (30, 30, 60));
    assert_eq!(after["tokens"], before["tokens"]);
    assert_eq!(after["learns"], before["learns"]);
    assert_eq!(
        after["generation"], before["generation"],
        "nothing was written"
    );

    // As a mailbox keeps it: a Received and a result header above, LF line endings, a
    // subject prefix.
    let original = std::fs::read(&spam[7]).expect("read");
    let mut copy = b"Received: from mx.example.test by mail.example.org; Mon, 1 Jan 2024\n\
X-Spam-Status: Yes, score=12.0 required=5.0 tests=MW_T_MARKER\nX-Spam-Flag: YES\n"
        .to_vec();
    let lf = support::messages::crlf_to_lf(&original);
    let lf = String::from_utf8(lf)
        .expect("utf-8")
        .replacen("Subject: ", "Subject: [SPAM] ", 1);
    copy.extend_from_slice(lf.as_bytes());
    let copy_path = site.path("mailbox-copy.eml");
    write(&copy_path, &copy);
    let run = site.learn("--spam", std::slice::from_ref(&copy_path));
    assert!(
        run.stdout
            .contains("learned 0 message(s) as spam (1 already known"),
        "{}",
        run.describe()
    );
    // Also when learned as the same file twice in one run.
    let run = site.learn("--ham", &[ham[3].clone(), ham[3].clone()]);
    assert!(
        run.stdout.contains("(2 already known"),
        "{}",
        run.describe()
    );
    assert_eq!(counts(&site.stats()), (30, 30, 60));

    // The same Message-ID with another body is another message.
    let other = site.path("other-body.eml");
    let text = String::from_utf8(original)
        .expect("utf-8")
        .replace("Act now", "Hurry");
    write(&other, text.as_bytes());
    let run = site.learn("--spam", &[other]);
    assert!(
        run.stdout
            .contains("learned 1 message(s) as spam (0 already known"),
        "{}",
        run.describe()
    );
    assert_eq!(counts(&site.stats()), (31, 30, 61));
}

// ---------------------------------------------------------------------------------------------
// 3. Relearn and forget.
// ---------------------------------------------------------------------------------------------

/// Relearning a message as the other class moves it (spam −1, ham +1); `--forget` undoes
/// learning exactly (the counts and the used slots are those of a model that never learned
/// the forgotten messages, and they are no longer remembered); forgetting a message never
/// learned says so and changes nothing.
#[test]
fn relearning_moves_and_forgetting_undoes() {
    let site = Site::new();
    let spam = write_corpus(&site.path("spam"), 30, |n| spam_message("s", n, ""));
    write_corpus(&site.path("ham"), 30, |n| ham_message("h", n, ""));
    site.learn("--ham", &[site.path("ham")]);
    let ham_only = site.stats();
    assert_eq!(counts(&ham_only), (0, 30, 30));
    site.learn("--spam", &[site.path("spam")]);
    let trained = site.stats();
    assert_eq!(counts(&trained), (30, 30, 60));

    let one = spam[4].clone();
    let run = site.learn("--ham", std::slice::from_ref(&one));
    assert!(
        run.stdout.contains(
            "learned 1 message(s) as ham (0 already known, 1 moved from the other class)"
        ),
        "{}",
        run.describe()
    );
    let moved = site.stats();
    assert_eq!(counts(&moved), (29, 31, 60));
    assert_eq!(moved["learns"]["cli_ham"], 31);

    let run = site.learn("--spam", std::slice::from_ref(&one));
    assert!(run.stdout.contains("1 moved"), "{}", run.describe());
    let back = site.stats();
    assert_eq!(counts(&back), (30, 30, 60));
    assert_eq!(back["tokens"], trained["tokens"]);

    // Forget one message, then learn it again: it is new again.
    let run = site.learn("--forget", std::slice::from_ref(&one));
    assert!(
        run.stdout
            .contains("forgot 1 message(s) (0 were never learned)"),
        "{}",
        run.describe()
    );
    let forgot_one = site.stats();
    assert_eq!(counts(&forgot_one), (29, 30, 59));
    assert_eq!(forgot_one["forgets"], 1);
    let run = site.learn("--forget", std::slice::from_ref(&one));
    assert!(
        run.stdout
            .contains("forgot 0 message(s) (1 were never learned)"),
        "{}",
        run.describe()
    );
    assert_eq!(counts(&site.stats()), (29, 30, 59));
    let run = site.learn("--spam", std::slice::from_ref(&one));
    assert!(
        run.stdout
            .contains("learned 1 message(s) as spam (0 already known, 0 moved"),
        "{}",
        run.describe()
    );
    assert_eq!(counts(&site.stats()), (30, 30, 60));

    // Forget all the spam: the model is the ham-only one again.
    let run = site.learn("--forget", &[site.path("spam")]);
    assert!(
        run.stdout
            .contains("forgot 30 message(s) (0 were never learned)"),
        "{}",
        run.describe()
    );
    let undone = site.stats();
    assert_eq!(counts(&undone), (0, 30, 30));
    assert_eq!(
        undone["tokens"], ham_only["tokens"],
        "forgetting did not undo the learning exactly: {undone} vs {ham_only}"
    );

    // A message that was never learned at all.
    let stranger = site.path("stranger.eml");
    write(&stranger, &spam_message("never", 1, ""));
    let run = site.learn("--forget", &[stranger]);
    assert!(
        run.stdout
            .contains("forgot 0 message(s) (1 were never learned)"),
        "{}",
        run.describe()
    );
    assert_eq!(counts(&site.stats()), (0, 30, 30));
}

// ---------------------------------------------------------------------------------------------
// 4. Sources.
// ---------------------------------------------------------------------------------------------

/// A Maildir is read from `cur/` and `new/` (never `tmp/`); an mbox file gives its messages
/// (split at `From ` lines, `>From ` unquoted: the same digests as the messages on their own);
/// a plain directory's non-message file is passed over and reported; a missing path is an
/// error naming it.
#[test]
fn maildir_mbox_and_plain_directory_sources() {
    let site = Site::new();
    let md = site.path("Junk");
    write(
        &md.join("cur/1704100000.1.host:2,S"),
        &spam_message("md", 1, ""),
    );
    write(
        &md.join("cur/1704100000.2.host:2,RS"),
        &spam_message("md", 2, ""),
    );
    write(
        &md.join("cur/1704100000.3.host:2,"),
        &spam_message("md", 3, ""),
    );
    write(
        &md.join("new/1704100000.4.host"),
        &spam_message("md", 4, ""),
    );
    write(
        &md.join("new/1704100000.5.host"),
        &spam_message("md", 5, ""),
    );
    let tmp = [
        md.join("tmp/1704100000.6.host"),
        md.join("tmp/1704100000.7.host"),
    ];
    write(&tmp[0], &spam_message("md", 6, ""));
    write(&tmp[1], &spam_message("md", 7, ""));
    let run = site.learn("--spam", std::slice::from_ref(&md));
    assert!(
        run.stdout.contains("learned 5 message(s) as spam"),
        "{}",
        run.describe()
    );
    assert_eq!(counts(&site.stats()), (5, 0, 5));
    // tmp/ was not read: its messages are new.
    let run = site.learn("--spam", &tmp);
    assert!(
        run.stdout
            .contains("learned 2 message(s) as spam (0 already known"),
        "{}",
        run.describe()
    );

    // An mbox with 3 messages; the second has a body line starting with "From " (quoted in
    // the mbox as ">From "), the standalone files hold the messages as they were.
    let singles: Vec<Vec<u8>> = (0..3)
        .map(|n| {
            let text = String::from_utf8(ham_message("mbox", n, "")).expect("utf-8");
            let text = if n == 1 {
                text.replace("Thanks, see you", "From the office, see you")
            } else {
                text
            };
            support::messages::crlf_to_lf(text.as_bytes())
        })
        .collect();
    let mut mbox = Vec::new();
    for (n, single) in singles.iter().enumerate() {
        mbox.extend_from_slice(
            format!("From colleague{n}@work.example Mon Jan  1 10:00:00 2024\n").as_bytes(),
        );
        let quoted = String::from_utf8(single.clone())
            .expect("utf-8")
            .replace("\nFrom the office", "\n>From the office");
        mbox.extend_from_slice(quoted.as_bytes());
        mbox.extend_from_slice(b"\n");
    }
    let mbox_path = site.path("archive.mbox");
    write(&mbox_path, &mbox);
    let run = site.learn("--ham", std::slice::from_ref(&mbox_path));
    assert!(
        run.stdout
            .contains("learned 3 message(s) as ham (0 already known"),
        "{}",
        run.describe()
    );
    assert_eq!(counts(&site.stats()), (7, 3, 10));
    let single_paths: Vec<PathBuf> = singles
        .iter()
        .enumerate()
        .map(|(n, raw)| {
            let path = site.path(&format!("singles/{n}.eml"));
            write(&path, raw);
            path
        })
        .collect();
    let run = site.learn("--ham", &single_paths);
    assert!(
        run.stdout
            .contains("learned 0 message(s) as ham (3 already known"),
        "the mbox messages are not the messages on their own:\n{}",
        run.describe()
    );

    // A plain directory with an index file that is not a message.
    let plain = site.path("export");
    write(&plain.join("00001.txt"), &ham_message("plain", 1, ""));
    write(&plain.join("00002.txt"), &ham_message("plain", 2, ""));
    write(&plain.join("index.json"), b"{\"messages\": [1, 2]}\n");
    let run = site.learn("--ham", std::slice::from_ref(&plain));
    assert!(
        run.stdout.contains("learned 2 message(s) as ham"),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("1 file(s) passed over"),
        "the non-message file is not reported:\n{}",
        run.describe()
    );
    assert_eq!(counts(&site.stats()), (7, 5, 12));

    let missing = site.path("no-such-folder");
    let run = site.run(&["learn", "--spam", &missing.display().to_string()]);
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert!(run.stderr.contains("no-such-folder"), "{}", run.describe());
    assert_eq!(counts(&site.stats()), (7, 5, 12));
}

// ---------------------------------------------------------------------------------------------
// 5. learn while serve runs.
// ---------------------------------------------------------------------------------------------

/// `serve` starts with an empty model (creating the store); a spam-like message gets no
/// `BAYES_*` symbol. `mailwarden learn` then trains the same store while mail keeps flowing;
/// within a few seconds (`refresh_secs = 1`) a new spam-like message gets BAYES_95/99. Every
/// message sent meanwhile got 250, was delivered exactly once and never got BAYES_FAIL.
#[test]
fn learn_while_serving_is_seen_within_refresh_secs() {
    let site = Site::new();
    write_corpus(&site.path("spam"), 60, |n| spam_message("s", n, ""));
    write_corpus(&site.path("ham"), 60, |n| ham_message("h", n, ""));
    let proxy = Proxy::start(&site.serve_config("autolearn = false"));
    let maildir = site.maildir();
    assert!(site.store().exists(), "serve did not create the store");

    let tests = relay(&proxy, &maildir, &spam_message("before", 0, ""));
    assert!(
        tests.iter().all(|t| !t.starts_with("BAYES_")),
        "an untrained model voted: {tests:?}"
    );

    // Mail keeps flowing during the learn runs.
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Mutex<Vec<(String, Reply)>>> = Arc::default();
    let sender = {
        let (stop, sent, addr) = (stop.clone(), sent.clone(), proxy.addr());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let message = spam_message("during", n, "");
                let reply = send(addr, &message);
                sent.lock()
                    .expect("lock")
                    .push((message_id(&message), reply));
                n += 1;
            }
        })
    };
    support::wait_until(support::LONG, || {
        (!sent.lock().expect("lock").is_empty()).then_some(())
    })
    .expect("the sender sends");
    let learned_at = Instant::now();
    site.learn("--spam", &[site.path("spam")]);
    site.learn("--ham", &[site.path("ham")]);
    assert_eq!(counts(&site.stats()), (60, 60, 120));
    let sent_by_learn_end = sent.lock().expect("lock").len();

    let mut probes = 0;
    let seen = support::wait_until(Duration::from_secs(15), || {
        probes += 1;
        let tests = relay(&proxy, &maildir, &spam_message("probe", probes, ""));
        if has_high_bayes(&tests) {
            return Some(tests);
        }
        std::thread::sleep(Duration::from_millis(150));
        None
    });
    let took = learned_at.elapsed();
    stop.store(true, Ordering::SeqCst);
    sender.join().expect("the sender thread panicked");
    let tests = seen.unwrap_or_else(|| {
        panic!(
            "no BAYES_9x within 15 s of the learn ({probes} probes); log:\n{}",
            proxy.log()
        )
    });
    eprintln!("the learn was seen after {took:?} ({probes} probes): {tests:?}");

    let sent = sent.lock().expect("lock").clone();
    assert!(
        sent.len() > sent_by_learn_end,
        "the sender kept sending after the learn"
    );
    let refused: Vec<_> = sent.iter().filter(|(_, r)| r.code != 250).collect();
    assert!(refused.is_empty(), "not accepted: {refused:?}");
    let all = delivered(&maildir);
    for (id, _) in &sent {
        let copies: Vec<_> = all
            .iter()
            .filter(|(_, raw)| message_id(raw) == *id)
            .collect();
        assert_eq!(copies.len(), 1, "{id} delivered {} times", copies.len());
        let tests = tests_of(&copies[0].1);
        assert!(
            !tests.contains(&"BAYES_FAIL".to_string()),
            "{id}: {tests:?}"
        );
    }
    assert_eq!(
        all.len(),
        sent.len() + probes + 1,
        "delivered files: one per message sent"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. kill -9.
// ---------------------------------------------------------------------------------------------

/// Spam messages in one mbox for the kill test: small, from a vocabulary of 150 words.
fn kill_corpus(path: &Path, count: usize) {
    let mut out = String::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for n in 0..count {
        let mut words = Vec::new();
        for _ in 0..10 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            words.push(format!("w{:03}x", x % 150));
        }
        out.push_str(&format!(
            "From promo@deals.example Mon Jan  1 10:00:00 2024\nFrom: promo{}@deals.example\n\
             Subject: offer {}\nMessage-ID: <bulk-{n}@deals.example>\n\n{}\n\n",
            n % 7,
            words[0],
            words.join(" ")
        ));
    }
    write(path, out.as_bytes());
}

/// A `learn` of a few thousand messages killed with SIGKILL after its first batch (of 1000,
/// one transaction each) leaves a usable store holding whole batches only (spam + ham ==
/// seen), and running the learn again completes it to exactly what an uninterrupted run
/// gives in a fresh store.
#[test]
fn learn_killed_mid_way_keeps_whole_batches_and_resumes() {
    const COUNT: u64 = 6000;
    const BATCH: u64 = 1000;
    let killed = Site::new();
    let fresh = Site::new();
    write_corpus(&killed.path("ham"), 30, |n| ham_message("h", n, ""));
    let mbox = killed.path("bulk.mbox");
    kill_corpus(&mbox, COUNT as usize);

    // The uninterrupted run, for comparison (and to see that a run takes a while).
    fresh.learn("--ham", &[killed.path("ham")]);
    let started = Instant::now();
    fresh.learn("--spam", std::slice::from_ref(&mbox));
    let full_run = started.elapsed();
    let want = fresh.stats();
    assert_eq!(counts(&want), (COUNT, 30, COUNT + 30));
    eprintln!("an uninterrupted learn of {COUNT} messages took {full_run:?}");

    killed.learn("--ham", &[killed.path("ham")]);
    let mut child = killed
        .command(&["learn", "--spam", &mbox.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn learn");
    // `learn --stats` from another process, until the first batch is in.
    let mut polls = 0;
    let first_batch = support::wait_until(support::LONG, || {
        polls += 1;
        let stats = killed.stats();
        (num(&stats, "spam") >= BATCH).then_some(stats)
    });
    let still_running = child.try_wait().expect("try_wait").is_none();
    child.kill().expect("kill -9 the learn");
    let status = child.wait().expect("wait");
    let first_batch = first_batch.expect("the first batch was never written");
    assert!(
        still_running,
        "the learn finished before it was killed ({polls} polls, {first_batch}); a full run took {full_run:?}: make the corpus bigger"
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );

    let after = killed.stats();
    let (spam, ham, seen) = counts(&after);
    eprintln!("killed after {polls} polls with {spam} spam learned");
    assert_eq!(ham, 30);
    assert_eq!(
        spam + ham,
        seen,
        "counts and remembered digests disagree: {after}"
    );
    assert!(
        (BATCH..COUNT).contains(&spam) && spam % BATCH == 0,
        "not whole batches, or not killed mid-way: {after}"
    );

    let run = killed.learn("--spam", std::slice::from_ref(&mbox));
    assert!(
        run.stdout.contains(&format!(
            "learned {} message(s) as spam ({spam} already known",
            COUNT - spam
        )),
        "{}",
        run.describe()
    );
    let resumed = killed.stats();
    for key in ["spam", "ham", "seen", "tokens"] {
        assert_eq!(
            resumed[key], want[key],
            "{key}: resumed {resumed} vs uninterrupted {want}"
        );
    }
    assert_eq!(resumed["learns"], want["learns"]);
}

// ---------------------------------------------------------------------------------------------
// 7. A damaged store.
// ---------------------------------------------------------------------------------------------

/// A store that is not a model file: `serve` refuses to start naming the file and the fix
/// (`mv …`), `learn` exits 2 and `scan` 3 with the same message, and the file is left as it
/// was. Following the advice (moving it away) makes everything work again.
#[test]
fn damaged_store_is_named_with_the_fix() {
    let site = Site::new();
    let garbage = "this is not a classifier model, just some text\n".repeat(200);
    write(&site.store(), garbage.as_bytes());
    let probe = site.path("probe.eml");
    write(&probe, &spam_message("probe", 1, ""));

    let config = site.path("serve.toml");
    let body = Proxy::complete_config(&site.serve_config(""));
    write(&config, body.as_bytes());
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let status = wait_child(&mut child, Duration::from_secs(10));
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "serve started with a damaged store");
    let store = site.store().display().to_string();
    assert!(
        stderr.contains(&store) && stderr.contains(&format!("mv {store} ")),
        "serve's error does not name the store and the fix:\n{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "serve listened"
    );

    for args in [
        vec!["learn", "--stats"],
        vec!["learn", "--stats", "--json"],
        vec!["learn", "--spam", "probe.eml"],
        vec!["learn", "--forget", "probe.eml"],
    ] {
        let run = site.run(&args);
        assert_eq!(run.code, Some(2), "{args:?}:\n{}", run.describe());
        assert!(
            run.stderr.contains("classifier.db") && run.stderr.contains("mv classifier.db "),
            "{args:?}:\n{}",
            run.describe()
        );
    }
    let run = site.run(&["scan", "--json", "probe.eml"]);
    assert_eq!(run.code, Some(3), "scan:\n{}", run.describe());
    assert!(
        run.stderr.contains("classifier.db") && run.stderr.contains("mv classifier.db "),
        "scan:\n{}",
        run.describe()
    );
    assert_eq!(
        std::fs::read_to_string(site.store()).expect("read the store"),
        garbage,
        "the damaged file was changed"
    );

    // The advice works.
    std::fs::rename(site.store(), site.path("classifier.db.broken")).expect("mv");
    assert_eq!(counts(&site.stats()), (0, 0, 0));
    let scan = site.scan_json(&probe);
    assert!(scan["classifier"].is_null(), "{scan}");
}

// ---------------------------------------------------------------------------------------------
// 8. The store fails while serving.
// ---------------------------------------------------------------------------------------------

/// The store becomes unreadable while `serve` runs (overwritten in place with a short piece
/// of garbage): messages are still accepted and get BAYES_FAIL instead of a band, the log
/// says why; once the file is back, the classifier votes again by itself.
///
/// The serving process keeps the model's pages in SQLite's cache, and a file changed in place
/// behind its back is only read again when the WAL tells it something changed, or — with an
/// empty WAL, as here — when the file's size no longer fits the database header (SQLite then
/// reports corruption on the next read). So the store is trained before `serve` starts
/// (the last connection of `learn` checkpoints and removes the WAL), autolearn is off (the
/// proxy writes nothing), and the file is cut short, not just overwritten.
#[test]
fn store_failing_while_serving_gives_bayes_fail_and_mail_flows() {
    let site = Site::new();
    write_corpus(&site.path("spam"), 30, |n| spam_message("s", n, ""));
    write_corpus(&site.path("ham"), 30, |n| ham_message("h", n, ""));
    site.learn("--spam", &[site.path("spam")]);
    site.learn("--ham", &[site.path("ham")]);
    let proxy = Proxy::start(&site.serve_config("autolearn = false"));
    let maildir = site.maildir();
    let tests = relay(&proxy, &maildir, &spam_message("probe", 0, ""));
    assert!(
        has_high_bayes(&tests),
        "the trained model does not vote: {tests:?}"
    );

    let wal = PathBuf::from(format!("{}-wal", site.store().display()));
    let wal_len = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(
        wal_len, 0,
        "precondition: the proxy wrote to the store's WAL, so a change of the file may go unseen"
    );
    let good = std::fs::read(site.store()).expect("read the store");
    std::fs::write(site.store(), vec![0x5a; 4096]).expect("overwrite the store");

    let mut n = 0;
    let failed = support::wait_until(Duration::from_secs(10), || {
        n += 1;
        let tests = relay(&proxy, &maildir, &spam_message("broken", n, ""));
        if tests.contains(&"BAYES_FAIL".to_string()) {
            return Some(tests);
        }
        assert!(
            has_high_bayes(&tests),
            "neither the old vote nor BAYES_FAIL: {tests:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        None
    })
    .unwrap_or_else(|| panic!("no BAYES_FAIL within 10 s; log:\n{}", proxy.log()));
    assert!(
        failed
            .iter()
            .all(|t| t == "BAYES_FAIL" || !t.starts_with("BAYES_")),
        "BAYES_FAIL comes alone: {failed:?}"
    );
    let log = proxy.wait_for_log("classifier store unreadable");
    assert!(log.contains("classifier store unreadable"), "{log}");
    assert!(
        log.contains(&site.store().display().to_string()),
        "the log does not name the store:\n{log}"
    );
    // Still failing for the next message (not a one-off).
    let tests = relay(&proxy, &maildir, &spam_message("broken", 1000, ""));
    assert!(tests.contains(&"BAYES_FAIL".to_string()), "{tests:?}");

    // The file back as it was: the classifier recovers by itself.
    std::fs::write(site.store(), &good).expect("restore the store");
    let mut n = 0;
    support::wait_until(Duration::from_secs(10), || {
        n += 1;
        let tests = relay(&proxy, &maildir, &spam_message("restored", n, ""));
        if has_high_bayes(&tests) {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(100));
        None
    })
    .unwrap_or_else(|| panic!("no recovery within 10 s; log:\n{}", proxy.log()));
}

// ---------------------------------------------------------------------------------------------
// 9. Autolearn.
// ---------------------------------------------------------------------------------------------

/// With autolearn on (autolearn_spam = 5, autolearn_ham = 0.1), a message scoring 10 is
/// learned as spam and one scoring 0 as ham (`learns.autolearn_*`), one scoring 2 not at all;
/// the delivered copies can be forgotten with `learn --forget`, which undoes the autolearning
/// exactly. With autolearn off, nothing is learned.
#[test]
fn autolearn_learns_clear_cases_only_when_on() {
    let on = Site::new();
    let off = Site::new();
    let on_proxy = Proxy::start(
        &on.serve_config("autolearn = true\nautolearn_spam = 5.0\nautolearn_ham = 0.1"),
    );
    let off_proxy = Proxy::start(
        &off.serve_config("autolearn = false\nautolearn_spam = 5.0\nautolearn_ham = 0.1"),
    );
    let messages: Vec<Vec<u8>> = (0..3)
        .map(|n| spam_message("auto", n, "zzqmarker"))
        .chain((0..2).map(|n| ham_message("auto", n, "")))
        .chain(std::iter::once(ham_message("auto-middle", 0, "zzqmedium")))
        .collect();
    for (site, proxy) in [(&on, &on_proxy), (&off, &off_proxy)] {
        for m in &messages {
            relay(proxy, &site.maildir(), m);
        }
    }
    let (_, tagged) = delivered_copy(&on.maildir(), &message_id(&messages[0]));
    assert!(tests_of(&tagged).contains(&"MW_T_MARKER".to_string()));

    let learned = support::wait_until(Duration::from_secs(10), || {
        let stats = on.stats();
        (num(&stats, "spam") + num(&stats, "ham") >= 5).then_some(stats)
    })
    .unwrap_or_else(|| panic!("nothing autolearned; log:\n{}", on_proxy.log()));
    // The writer has nothing more queued: the counts stay.
    let learned = support::wait_until(Duration::from_secs(1), || {
        let stats = on.stats();
        (stats["generation"] != learned["generation"]).then_some(stats)
    })
    .unwrap_or(learned);
    assert_eq!(counts(&learned), (3, 2, 5), "{learned}");
    assert_eq!(learned["learns"]["autolearn_spam"], 3, "{learned}");
    assert_eq!(learned["learns"]["autolearn_ham"], 2, "{learned}");
    assert_eq!(learned["learns"]["cli_spam"], 0, "{learned}");

    let off_stats = off.stats();
    assert_eq!(counts(&off_stats), (0, 0, 0), "learned with autolearn off");
    for source in ["autolearn_spam", "autolearn_ham"] {
        assert_eq!(off_stats["learns"][source], 0, "{off_stats}");
    }

    // The delivered copies (result headers added, LF line endings) are the messages learned.
    let copies: Vec<PathBuf> = delivered(&on.maildir())
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(copies.len(), messages.len());
    let run = on.learn("--forget", &copies);
    assert!(
        run.stdout
            .contains("forgot 5 message(s) (1 were never learned)"),
        "{}",
        run.describe()
    );
    let undone = on.stats();
    assert_eq!(counts(&undone), (0, 0, 0), "{undone}");
    assert_eq!(
        undone["tokens"], 0,
        "forgetting the delivered copies did not undo the autolearning: {undone}"
    );
}
