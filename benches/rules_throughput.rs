//! Rules-engine throughput: mailwarden's engine over the dev corpus, one thread.
//!
//! Needs in Cargo.toml:
//!
//! ```toml
//! [[bench]]
//! name = "rules_throughput"
//! harness = false
//! ```
//!
//! Run: `cargo bench --bench rules_throughput` (see benches/README.md). Options after `--`:
//!
//! - `--rules DIR` (repeatable): rule sets to measure; default: Debian's stock SpamAssassin rules
//!   (`/usr/share/spamassassin`, if installed) and the project's `rules/`;
//! - `--corpus DIR` (repeatable): message folders; default `target/corpus/spam-1` and
//!   `target/corpus/easy-ham-1` (`*.txt`; run `scripts/fetch-corpus.sh` first);
//! - `--files LIST`: scan only the files named in LIST (one path a line) instead;
//! - `--rounds N`: passes over the corpus per rule set (default 1; the best pass is reported);
//! - `--budget-ms N`: per-message deadline as in production (default: none);
//! - `--dump DIR`: also write, for the first rule set, `DIR/hits.tsv` (file, tab, comma-separated
//!   scored hits) and `DIR/comparable.txt` (see `comparable_rules`) — used by
//!   `benches/rules/agreement.sh`;
//! - `--json`: one JSON line per rule set at the end (for scripts).
//!
//! Files are read into memory before timing. The time per message covers `Message::parse` and
//! `RuleSet::evaluate` (the message's views are built lazily inside `evaluate`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailwarden::filter::message::Message;
use mailwarden::filter::rules::parse::{self, BUILTIN_PLUGINS, Defs, RuleKind};
use mailwarden::filter::rules::{LoadOptions, RuleSet, meta};

const STOCK: &str = "/usr/share/spamassassin";

struct Args {
    rules: Vec<PathBuf>,
    corpus: Vec<PathBuf>,
    files: Option<PathBuf>,
    rounds: usize,
    budget: Option<Duration>,
    dump: Option<PathBuf>,
    json: bool,
}

fn args() -> Args {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        rules: vec![],
        corpus: vec![],
        files: None,
        rounds: 1,
        budget: None,
        dump: None,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--rules" => a.rules.push(PathBuf::from(val("--rules"))),
            "--corpus" => a.corpus.push(PathBuf::from(val("--corpus"))),
            "--files" => a.files = Some(PathBuf::from(val("--files"))),
            "--rounds" => a.rounds = val("--rounds").parse().expect("--rounds N"),
            "--budget-ms" => {
                a.budget = Some(Duration::from_millis(
                    val("--budget-ms").parse().expect("--budget-ms N"),
                ))
            }
            "--dump" => a.dump = Some(PathBuf::from(val("--dump"))),
            "--json" => a.json = true,
            // cargo bench passes `--bench`; libtest-style filters are ignored too
            _ => {}
        }
    }
    if a.rules.is_empty() {
        if Path::new(STOCK).is_dir() {
            a.rules.push(PathBuf::from(STOCK));
        } else {
            eprintln!(
                "note: {STOCK} not found (apt-get install spamassassin); stock rules skipped"
            );
        }
        a.rules.push(root.join("rules"));
    }
    if a.corpus.is_empty() {
        a.corpus = vec![
            root.join("target/corpus/spam-1"),
            root.join("target/corpus/easy-ham-1"),
        ];
    }
    a.rounds = a.rounds.max(1);
    a
}

fn messages(a: &Args) -> Vec<(PathBuf, Vec<u8>)> {
    let mut paths: Vec<PathBuf> = Vec::new();
    if let Some(list) = &a.files {
        let text = std::fs::read_to_string(list).expect("read --files list");
        paths.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(PathBuf::from),
        );
    } else {
        for dir in &a.corpus {
            let rd = std::fs::read_dir(dir).unwrap_or_else(|e| {
                panic!("{}: {e} (run scripts/fetch-corpus.sh first)", dir.display())
            });
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "txt"))
                .collect();
            v.sort();
            paths.extend(v);
        }
    }
    paths
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, b)
        })
        .collect()
}

/// Scored rules whose result mailwarden computes the same way SpamAssassin does without
/// network tests, eval code or plugins mailwarden does not implement:
///
/// - regex rules (header, body, rawbody, uri, full, mimeheader) and `exists:` header tests
///   that mailwarden loaded and compiled (not skipped for any reason);
/// - meta rules whose every input is, recursively, such a rule or such a meta rule — a meta
///   that names an eval rule, a skipped rule, a rule defined only in a section mailwarden did
///   not read (undefined here), or `local_tests_only` (a mode flag: 1 under `-L` in SA) is out.
///
/// `__` rules are left out of the returned set (SpamAssassin never reports them) but count
/// as inputs. Score-0 rules are not run by either side and are not returned.
fn comparable_rules(paths: &[PathBuf], set: &RuleSet) -> BTreeSet<String> {
    let plugins: HashSet<String> = BUILTIN_PLUGINS.iter().map(|s| s.to_string()).collect();
    let mut defs = Defs::default();
    parse::read_paths(paths, &plugins, &mut defs);
    let not_run: HashSet<&str> = set
        .report()
        .skipped
        .iter()
        .chain(&set.report().warnings)
        .filter_map(|d| d.rule.as_deref())
        .collect();
    let mut memo: HashMap<String, bool> = HashMap::new();
    fn ok(
        name: &str,
        defs: &Defs,
        not_run: &HashSet<&str>,
        memo: &mut HashMap<String, bool>,
        depth: usize,
    ) -> bool {
        if let Some(&v) = memo.get(name) {
            return v;
        }
        if depth > 64 {
            return false;
        }
        memo.insert(name.to_string(), false); // cycles: not comparable
        let v = match defs.rules.get(name) {
            None => false,
            Some(_) if not_run.contains(name) => false,
            Some(def) => match &def.kind {
                RuleKind::Header { .. }
                | RuleKind::Exists { .. }
                | RuleKind::Body(_)
                | RuleKind::RawBody(_)
                | RuleKind::Uri(_)
                | RuleKind::Full(_)
                | RuleKind::MimeHeader { .. } => true,
                RuleKind::Meta(src) => meta::names(src)
                    .iter()
                    .all(|n| ok(n, defs, not_run, memo, depth + 1)),
                _ => false,
            },
        };
        memo.insert(name.to_string(), v);
        v
    }
    set.rule_names()
        .filter(|n| set.score(n).is_some_and(|s| s != 0.0))
        .filter(|n| ok(n, &defs, &not_run, &mut memo, 0))
        .map(str::to_string)
        .collect()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it,
    // and a test run must not spend minutes benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "rules_throughput: a benchmark; run it with `cargo bench --bench rules_throughput`"
        );
        return;
    }
    let a = args();
    let msgs = messages(&a);
    let bytes: usize = msgs.iter().map(|m| m.1.len()).sum();
    println!(
        "corpus: {} messages, {:.1} MB (read into memory before timing)",
        msgs.len(),
        bytes as f64 / 1e6
    );
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at start: {}", l.trim());
    }
    let mut json_lines = Vec::new();
    for (k, rules) in a.rules.iter().enumerate() {
        println!("\n== rules: {}", rules.display());
        let t0 = Instant::now();
        let set = match RuleSet::load(std::slice::from_ref(rules), &LoadOptions::default()) {
            Ok(s) => s,
            Err(r) => {
                eprintln!("load failed:");
                for e in &r.errors {
                    eprintln!("  {e}");
                }
                std::process::exit(1);
            }
        };
        let load = t0.elapsed();
        let r = set.report();
        println!(
            "load: {:.0} ms ({} files, {} active rules, {:?}, engines {:?}, {} skipped)",
            ms(load),
            r.files,
            r.rules,
            r.by_kind,
            r.engines,
            r.skipped.len()
        );
        let comparable = if k == 0 && a.dump.is_some() {
            Some(comparable_rules(std::slice::from_ref(rules), &set))
        } else {
            None
        };

        let mut best: Option<(Duration, Vec<Duration>)> = None;
        let mut hits_out: Vec<(PathBuf, Vec<String>)> = Vec::new();
        let (mut timed_out, mut regex_errors, mut fancy_runs, mut total_hits) = (0, 0, 0, 0);
        for round in 0..a.rounds {
            let mut times = Vec::with_capacity(msgs.len());
            let start = Instant::now();
            for (path, raw) in &msgs {
                let t = Instant::now();
                let m = Message::parse(raw.clone());
                let ev = set.evaluate(&m, &[], a.budget.map(|b| t + b));
                times.push(t.elapsed());
                if round == 0 {
                    timed_out += ev.timed_out as usize;
                    regex_errors += ev.regex_errors;
                    fancy_runs += ev.fancy_runs;
                    total_hits += ev.hits.len();
                    if comparable.is_some() {
                        hits_out.push((
                            path.clone(),
                            ev.hits.iter().map(|h| h.name.clone()).collect(),
                        ));
                    }
                }
                std::hint::black_box(&ev);
            }
            let wall = start.elapsed();
            println!(
                "  pass {}: {:.2} s, {:.1} msgs/s",
                round + 1,
                wall.as_secs_f64(),
                msgs.len() as f64 / wall.as_secs_f64()
            );
            if best.as_ref().is_none_or(|b| wall < b.0) {
                best = Some((wall, times));
            }
        }
        let (wall, mut times) = best.expect("one round");
        times.sort();
        let rate = msgs.len() as f64 / wall.as_secs_f64();
        println!(
            "throughput (1 thread = per core): {:.1} msgs/s, {:.2} MB/s",
            rate,
            bytes as f64 / 1e6 / wall.as_secs_f64()
        );
        println!(
            "per message: median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            ms(pct(&times, 0.5)),
            ms(pct(&times, 0.9)),
            ms(pct(&times, 0.99)),
            ms(*times.last().unwrap_or(&Duration::ZERO))
        );
        println!(
            "first pass: {} hits, {:.1} backtracking runs/msg, {} backtrack-limit errors, {} timed out",
            total_hits,
            fancy_runs as f64 / msgs.len().max(1) as f64,
            regex_errors,
            timed_out
        );
        if let (Some(dir), Some(comp)) = (&a.dump, &comparable) {
            std::fs::create_dir_all(dir).expect("create --dump dir");
            let mut s = String::new();
            for (p, h) in &hits_out {
                s.push_str(&format!("{}\t{}\n", p.display(), h.join(",")));
            }
            std::fs::write(dir.join("hits.tsv"), s).expect("write hits.tsv");
            let c: Vec<&str> = comp.iter().map(String::as_str).collect();
            std::fs::write(dir.join("comparable.txt"), c.join("\n") + "\n")
                .expect("write comparable.txt");
            println!(
                "dumped hits and {} comparable scored rules to {}",
                comp.len(),
                dir.display()
            );
        }
        json_lines.push(format!(
            "{{\"rules\":{:?},\"messages\":{},\"load_ms\":{:.1},\"msgs_per_s\":{:.2},\"median_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"timed_out\":{},\"regex_errors\":{}}}",
            rules.display().to_string(),
            msgs.len(),
            ms(load),
            rate,
            ms(pct(&times, 0.5)),
            ms(pct(&times, 0.99)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
            timed_out,
            regex_errors
        ));
    }
    if a.json {
        for l in json_lines {
            println!("JSON {l}");
        }
    }
}
