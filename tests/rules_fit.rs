//! `mailwarden rules fit` as an admin runs it: the real binary on a tiny generated corpus
//! (a Maildir of spam, a directory and an mbox of ham) with its own rule files, checking the
//! exit codes, the `score` lines on stdout (fitted rules only, a spam rule positive, a
//! non-`nice` ham rule not negative, a certainty rule left alone) and the cross-validation
//! figures on stderr and in the header. Small and fast: the real corpus runs are
//! scripts/eval-rules.sh and the fit itself, not tests.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn mailwarden(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run mailwarden {args:?}: {e}"))
}

fn message(subject: &str, body: &str) -> String {
    format!(
        "From: a@example.test\r\nTo: b@example.org\r\nSubject: {subject}\r\n\
         Date: Mon, 2 Sep 2002 10:00:00 +0000\r\nMessage-Id: <{subject}@example.test>\r\n\r\n{body}\r\n"
    )
}

/// Rules, config and corpus in `dir`: 12 spam (Maildir), 10 + 5 ham (directory, mbox).
fn setup(dir: &Path) {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir rules");
    std::fs::write(
        rules.join("10_test.cf"),
        "body SPAMWORD /zzbuynow/\nscore SPAMWORD 0.5\n\
         body PITCH /zzpitch/\nscore PITCH 0\n\
         body HAMWORD /zzmeeting/\nscore HAMWORD -2\n\
         body THANKS /zzthanks/\ntflags THANKS nice\nscore THANKS -0.1\n\
         body GTUBE_LIKE /zzcertain/\nscore GTUBE_LIKE 1000\n\
         body NEVER /zznever/\nscore NEVER 2.5\n",
    )
    .expect("write rules");
    std::fs::write(
        dir.join("fit.toml"),
        "[rules]\npaths = [\"rules\"]\n[policy]\ntag_score = 5.0\n",
    )
    .expect("write config");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join("Spam").join(sub)).expect("mkdir maildir");
    }
    for i in 0..12 {
        let body = if i % 3 == 0 {
            "zzbuynow zzpitch"
        } else {
            "zzbuynow zzpitch zzmeeting"
        };
        let sub = if i % 2 == 0 { "cur" } else { "new" };
        std::fs::write(
            dir.join("Spam").join(sub).join(format!("{i}:2,S")),
            message(&format!("spam{i}"), body),
        )
        .expect("write spam");
    }
    // A message in tmp/ is a delivery in progress: never read.
    std::fs::write(
        dir.join("Spam/tmp/partial"),
        message("partial", "zzmeeting zzthanks"),
    )
    .expect("write tmp");
    std::fs::create_dir_all(dir.join("ham")).expect("mkdir ham");
    for i in 0..10 {
        std::fs::write(
            dir.join("ham").join(format!("{i:05}.eml")),
            message(&format!("ham{i}"), "zzmeeting zzthanks"),
        )
        .expect("write ham");
    }
    // A sidecar that is not a message is passed over.
    std::fs::write(dir.join("ham/00000.json"), "{\"label\": \"ham\"}\n").expect("write json");
    let mut mbox = String::new();
    for i in 0..5 {
        mbox.push_str("From a@example.test Mon Sep  2 10:00:00 2002\n");
        mbox.push_str(&message(&format!("list{i}"), "zzthanks zzpitch").replace("\r\n", "\n"));
        mbox.push('\n');
    }
    std::fs::write(dir.join("list.mbox"), mbox).expect("write mbox");
}

fn score_of(cf: &str, name: &str) -> Option<f64> {
    cf.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("score") && w.next() == Some(name))
            .then(|| w.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

#[test]
fn fit_prints_scores_and_cross_validation_for_a_small_corpus() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    let out = mailwarden(
        dir.path(),
        &[
            "rules",
            "fit",
            "-c",
            "fit.toml",
            "--spam",
            "Spam",
            "--ham",
            "ham",
            "list.mbox",
            "--folds",
            "3",
            "--min-hits",
            "2",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");

    // Figures: per fold and pooled, spam and each ham path apart, on stderr and in the header.
    for text in [&*stderr, &*stdout] {
        assert!(text.contains("fold 3: spam recall"), "{text}");
        assert!(text.contains("pooled: spam recall"), "{text}");
        assert!(text.contains("ham ham FP"), "{text}");
        assert!(text.contains("ham list.mbox FP"), "{text}");
    }
    assert!(stdout.contains("12 spam message(s): Spam"), "{stdout}");
    assert!(stdout.contains("10 ham message(s): ham"), "{stdout}");
    assert!(stdout.contains("5 ham message(s): list.mbox"), "{stdout}");

    // The spam rule earns a real score; the zero-scored PITCH ran and was fitted; HAMWORD
    // hits mostly ham but is not `nice`, so it cannot go below 0; THANKS is nice.
    let spamword = score_of(&stdout, "SPAMWORD").expect("SPAMWORD fitted");
    assert!(spamword > 2.0 && spamword <= 4.0, "{spamword}\n{stdout}");
    let pitch = score_of(&stdout, "PITCH").expect("PITCH fitted");
    assert!(pitch > 0.0, "{stdout}");
    assert!(
        score_of(&stdout, "HAMWORD").expect("HAMWORD") >= 0.0,
        "{stdout}"
    );
    let thanks = score_of(&stdout, "THANKS").expect("THANKS");
    assert!((-1.0..0.0).contains(&thanks), "{stdout}");
    // Certainty and never-hitting rules are not written: their file scores stand.
    assert_eq!(score_of(&stdout, "GTUBE_LIKE"), None, "{stdout}");
    assert_eq!(score_of(&stdout, "NEVER"), None, "{stdout}");
    assert!(stdout.contains("fewer than 2 hits"), "{stdout}");

    // The output is a rule file: loaded after the rules, it checks clean.
    std::fs::write(dir.path().join("rules/90_scores.cf"), stdout.as_bytes()).expect("write");
    let check = mailwarden(dir.path(), &["rules", "check", "-c", "fit.toml"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // Deterministic: the same run prints the same file.
    let again = mailwarden(
        dir.path(),
        &[
            "rules",
            "fit",
            "-c",
            "fit.toml",
            "--spam",
            "Spam",
            "--ham",
            "ham",
            "list.mbox",
            "--folds",
            "3",
            "--min-hits",
            "2",
        ],
    );
    let again = String::from_utf8_lossy(&again.stdout);
    let body = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with("score"))
            .map(String::from)
            .collect()
    };
    assert_eq!(body(&again), body(&stdout));
}

#[test]
fn unreadable_paths_and_empty_corpora_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    let out = mailwarden(
        dir.path(),
        &[
            "rules",
            "fit",
            "-c",
            "fit.toml",
            "--spam",
            "Spam",
            "--ham",
            "missing-dir",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing-dir"), "{stderr}");
    assert!(out.stdout.is_empty());

    std::fs::create_dir_all(dir.path().join("empty")).expect("mkdir");
    let out = mailwarden(
        dir.path(),
        &[
            "rules", "fit", "-c", "fit.toml", "--spam", "empty", "--ham", "ham",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("empty: no messages found"), "{stderr}");

    // --spam and --ham are both required.
    let out = mailwarden(dir.path(), &["rules", "fit", "--spam", "Spam"]);
    assert_ne!(out.status.code(), Some(0));
}
