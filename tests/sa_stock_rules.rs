//! Compatibility test: SpamAssassin's stock rules (Debian package `spamassassin`, read where
//! the package installs them, never copied into the repository) load, ≥ 99% of their active
//! regex rules compile, and evaluation works end to end.
//!
//! Throughput over the development corpus (`scripts/fetch-corpus.sh` → `target/corpus/`):
//! `cargo test --release --test sa_stock_rules -- --nocapture throughput`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mailwarden::filter::message::Message;
use mailwarden::filter::rules::{LoadOptions, RuleSet};

const SA_RULES: &str = "/usr/share/spamassassin";

fn stock() -> &'static RuleSet {
    static SET: OnceLock<RuleSet> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = Path::new(SA_RULES);
        assert!(
            dir.join("50_scores.cf").is_file(),
            "SpamAssassin's stock rules are missing at {SA_RULES}: install the Debian package \
             `spamassassin` (apt-get install -y spamassassin)"
        );
        match RuleSet::load(&[dir.to_path_buf()], &LoadOptions::default()) {
            Ok(set) => set,
            Err(report) => {
                for e in &report.errors {
                    eprintln!("error: {e}");
                }
                panic!("stock rules failed to load: {} errors", report.errors.len());
            }
        }
    })
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/rules")
        .join(name)
}

fn message(name: &str) -> Message {
    let path = data(name);
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Message::parse(raw)
}

fn hit_names(set: &RuleSet, msg: &Message, preset: &[&str]) -> Vec<String> {
    set.evaluate(msg, preset, None)
        .hits
        .into_iter()
        .map(|h| h.name)
        .collect()
}

#[test]
fn stock_rules_load_and_compile() {
    let set = stock();
    let report = set.report();
    let compiled: usize = report.engines.values().sum();
    let unsupported: Vec<_> = report
        .skipped
        .iter()
        .filter(|d| d.reason == "regex unsupported")
        .collect();
    let total = compiled + unsupported.len();
    let pct = 100.0 * compiled as f64 / total.max(1) as f64;

    println!(
        "loaded {} files in {:.2?}; {} active rules",
        report.files, report.load_time, report.rules
    );
    println!("active rules by kind: {:?}", report.by_kind);
    println!(
        "regex rules: {compiled}/{total} compiled ({pct:.2}%): {:?}",
        report.engines
    );
    println!("skipped by reason:");
    for (reason, n) in report.skipped_by_reason() {
        println!("  {n:5}  {reason}");
    }
    let mut by_reason: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for d in &report.skipped {
        if d.reason != "plugin directive" && d.reason != "setting ignored" {
            by_reason.entry(&d.reason).or_default().push(d.to_string());
        }
    }
    for (reason, list) in &by_reason {
        println!("skipped: {reason} ({})", list.len());
        for line in list.iter().take(if *reason == "regex unsupported" {
            100
        } else {
            8
        }) {
            println!("    {line}");
        }
    }
    println!("warnings: {}", report.warnings.len());
    for w in report.warnings.iter().take(10) {
        println!("    {w}");
    }

    assert!(report.files >= 50, "only {} rule files read", report.files);
    assert!(total > 1000, "only {total} regex rules found");
    assert!(
        pct >= 99.0,
        "only {pct:.2}% of the active regex rules compile"
    );
    assert!(report.errors.is_empty());
    assert!(set.score("GTUBE").is_some_and(|s| s >= 100.0));
    assert_eq!(
        set.description("GTUBE"),
        Some("Generic Test for Unsolicited Bulk Email")
    );
    assert!(set.rule_names().any(|n| n == "GTUBE"));
    assert!(!set.rule_names().any(|n| n.starts_with("__")));
}

#[test]
fn stock_rules_evaluate_messages() {
    let set = stock();

    let gtube = set.evaluate(&message("gtube.eml"), &[], None);
    let names: Vec<&str> = gtube.hits.iter().map(|h| h.name.as_str()).collect();
    println!("gtube.eml: {:.1} {names:?}", gtube.score());
    assert!(names.contains(&"GTUBE"), "GTUBE did not hit: {names:?}");
    assert!(gtube.score() >= 100.0);
    assert!(!gtube.timed_out);
    assert!(gtube.rules_run > 1000);

    let missing = hit_names(set, &message("missing-headers.eml"), &[]);
    println!("missing-headers.eml: {missing:?}");
    for rule in ["MISSING_DATE", "MISSING_MID", "MISSING_SUBJECT"] {
        assert!(
            missing.iter().any(|n| n == rule),
            "{rule} did not hit: {missing:?}"
        );
    }

    let ham = set.evaluate(&message("ham.eml"), &["SPF_PASS"], None);
    let names: Vec<&str> = ham.hits.iter().map(|h| h.name.as_str()).collect();
    println!("ham.eml: {:.2} {names:?}", ham.score());
    assert!(!names.contains(&"GTUBE"));
    for rule in ["MISSING_DATE", "MISSING_MID", "MISSING_SUBJECT"] {
        assert!(!names.contains(&rule), "{rule} hit on ham");
    }
    // a preset symbol counts as a hit with its `score` line
    let spf = ham.hits.iter().find(|h| h.name == "SPF_PASS");
    assert!(spf.is_some_and(|h| h.score == set.score("SPF_PASS").unwrap_or(f64::NAN)));
    assert!(ham.score() < 5.0, "ham scored {}", ham.score());

    // deterministic: same hits, sorted by name
    let again = set.evaluate(&message("ham.eml"), &["SPF_PASS"], None);
    assert_eq!(ham.hits, again.hits);
    assert!(ham.hits.windows(2).all(|w| w[0].name < w[1].name));

    // a deadline already passed: nothing runs, and that is reported
    let late = set.evaluate(&message("gtube.eml"), &[], Some(Instant::now()));
    assert!(late.timed_out);
    assert_eq!(late.rules_run, 0);
}

#[test]
fn mailwarden_extensions_end_to_end() {
    let set = match RuleSet::load(&[data("custom")], &LoadOptions::default()) {
        Ok(s) => s,
        Err(r) => panic!("{:?}", r.errors),
    };
    let report = set.report();
    assert_eq!(report.by_kind.get("keywords"), Some(&3));
    assert_eq!(report.by_kind.get("attachment"), Some(&2));
    assert_eq!(report.skipped_by_reason().get("score 0"), Some(&1));
    let undefined: Vec<String> = report.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        undefined
            .iter()
            .any(|w| w.contains("local.cf:20:") && w.contains("UNDEFINED_RULE")),
        "{undefined:?}"
    );

    let eval = set.evaluate(&message("custom.eml"), &[], None);
    let hits: BTreeMap<&str, (f64, u32)> = eval
        .hits
        .iter()
        .map(|h| (h.name.as_str(), (h.score, h.count)))
        .collect();
    println!("custom.eml: {hits:?}");
    assert_eq!(hits.get("KW_PHARMA"), Some(&(1.5, 1)));
    assert_eq!(hits.get("KW_SUBJ"), Some(&(0.5, 1)));
    assert!(hits.contains_key("KW_CAMPAIGN"));
    assert_eq!(hits.get("ATT_EXE"), Some(&(3.0, 1)));
    assert!(hits.contains_key("URI_BUY"));
    assert!(hits.contains_key("FROM_DEALS"));
    // multiple, capped by maxhits=2, score × count
    assert_eq!(hits.get("CLICK_HERE"), Some(&(0.5, 2)));
    assert_eq!(hits.get("PHARMA_EXE"), Some(&(4.0, 1)));
    assert!(hits.contains_key("NOT_RUN"), "undefined names count as 0");
    assert!(!hits.contains_key("DISABLED"));
    assert!(!hits.contains_key("__TO_VICTIM"));
    // the declared type is application/octet-stream: this is the sniffed type ("MZ")
    assert_eq!(hits.get("ATT_PE"), Some(&(2.0, 1)));

    let ham = hit_names(&set, &message("ham.eml"), &[]);
    assert!(ham.is_empty(), "{ham:?}");
}

/// msgs/s of the stock rules, one thread, over the development corpus.
#[test]
fn throughput() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/corpus");
    if !corpus.join("spam-1").is_dir() {
        println!(
            "no {} (scripts/fetch-corpus.sh): throughput not measured",
            corpus.display()
        );
        return;
    }
    if cfg!(debug_assertions) {
        println!("throughput is measured in release builds only (cargo test --release)");
        return;
    }
    let set = stock();
    let mut files: Vec<PathBuf> = Vec::new();
    for folder in ["spam-1", "easy-ham-1"] {
        let dir = corpus.join(folder);
        let mut list: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        list.sort();
        files.extend(list);
    }
    let raws: Vec<(PathBuf, Vec<u8>)> = files
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|r| (p, r)))
        .collect();
    let bytes: usize = raws.iter().map(|(_, r)| r.len()).sum();

    let mut slowest: Vec<(Duration, String)> = Vec::new();
    let mut total_hits = 0usize;
    let mut spam_over_5 = 0usize;
    let mut ham_over_5 = 0usize;
    let mut errors = 0usize;
    let mut fancy_runs = 0usize;
    let started = Instant::now();
    for (path, raw) in &raws {
        let t = Instant::now();
        let msg = Message::parse(raw.clone());
        let eval = set.evaluate(&msg, &[], None);
        let dt = t.elapsed();
        total_hits += eval.hits.len();
        errors += eval.regex_errors;
        fancy_runs += eval.fancy_runs;
        let spam = path.to_string_lossy().contains("spam-1");
        if eval.score() >= 5.0 {
            if spam {
                spam_over_5 += 1;
            } else {
                ham_over_5 += 1;
            }
        }
        slowest.push((
            dt,
            path.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ));
    }
    let elapsed = started.elapsed();
    let n = raws.len();
    slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
    println!(
        "{n} messages ({:.1} MB) in {elapsed:.2?}: {:.0} msgs/s single thread",
        bytes as f64 / 1e6,
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "hits {total_hits}, fancy runs {fancy_runs} ({:.1}/msg), backtrack-limit errors {errors}",
        fancy_runs as f64 / n.max(1) as f64
    );
    println!("score >= 5 (no network, no Bayes): spam {spam_over_5}/500, ham {ham_over_5}/2500");
    println!("slowest: {:?}", &slowest[..slowest.len().min(5)]);
    assert!(n >= 3000);
}
