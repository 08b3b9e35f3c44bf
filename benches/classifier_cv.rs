//! Which classifier, and what it costs: cross-validation of the two candidate models on the dev
//! corpus, and the classifier's share of a message's scan time.
//!
//! Models, over the same hashed features (`filter::classifier::tokens`):
//! - Robinson–Fisher chi-square naive Bayes over a token table keyed by the full hash (what
//!   mailwarden ships, `filter::classifier::bayes`);
//! - FTRL-Proximal online logistic regression over 2^21 weight slots (McMahan et al. 2013, as
//!   Stalwart 0.15 does), binary features, α = 0.2, one pass in a fixed interleaved order
//!   (the best of the settings tried: α 0.05–1.0, 1/sqrt(count) scaling, L1 up to 0.01).
//!
//! Folding: 5 folds, message i of each folder in fold i % 5, so every fold has the same mix of
//! spam, easy ham and hard ham; a model is trained on four folds and scores the fifth; each
//! message is scored once, by a model that never saw it. Reported per model: ROC AUC (spam vs
//! all ham), and at the SpamAssassin band edges (p ≥ 0.95 → BAYES_95+, ≥ 0.99 → BAYES_99) spam
//! recall and easy-/hard-ham false positives, plus spam that scored below 0.05 (BAYES_00/05:
//! the classifier vouching for spam).
//!
//! Cost: on one thread, the shipped rules' scan of every dev message (parse included) without
//! and with a trained classifier attached (as the proxy runs it), alternating rounds.
//!
//! Run: `scripts/fetch-corpus.sh && cargo bench --bench classifier_cv` (about a minute).
//! Options via env: `CORPUS=target/corpus`, `FOLDS=5`, `RULES=DIR` (the rules the cost is
//! measured against; default the shipped `rules/`), `SKIP_COST=1`, and the models' constants
//! (`NB_S`, `NB_MIN`, `NB_CLUES`, `FTRL_ALPHA`, `FTRL_L1`, `FTRL_L2`, `FTRL_SCALE=sqrt`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailwarden::cli::sources;
use mailwarden::config::{AttachmentsConfig, ClassifierConfig, PolicyConfig, RulesConfig};
use mailwarden::filter::classifier::bayes::{Model, Params};
use mailwarden::filter::classifier::{Class, Classifier, Item, Op, Source, digest, tokens};
use mailwarden::filter::message::Message;
use mailwarden::filter::{Engine, ScanContext};

/// One dev message: its features, class and folder.
struct Sample {
    hashes: Vec<u64>,
    spam: bool,
    folder: usize,
    fold: usize,
}

/// FTRL's weights live in a fixed array of hashed slots (as in Stalwart).
const SLOTS: usize = 1 << 21;

fn slot(hash: u64) -> usize {
    (hash & (SLOTS as u64 - 1)) as usize
}

fn env_f32(key: &str, default: f32) -> f32 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// FTRL-Proximal over hashed slots.
struct Ftrl {
    z: Vec<f32>,
    n: Vec<f32>,
    alpha: f32,
    beta: f32,
    l1: f32,
    l2: f32,
}

impl Ftrl {
    fn new() -> Ftrl {
        Ftrl {
            z: vec![0.0; SLOTS],
            n: vec![0.0; SLOTS],
            alpha: env_f32("FTRL_ALPHA", 0.2),
            beta: 1.0,
            l1: env_f32("FTRL_L1", 0.0005),
            l2: env_f32("FTRL_L2", 0.0001),
        }
    }

    fn weight(&self, i: usize) -> f32 {
        let z = self.z[i];
        if z.abs() <= self.l1 {
            return 0.0;
        }
        -(z - z.signum() * self.l1) / ((self.beta + self.n[i].sqrt()) / self.alpha + self.l2)
    }

    fn slots(hashes: &[u64]) -> Vec<usize> {
        let mut s: Vec<usize> = hashes.iter().map(|&h| slot(h)).collect();
        s.push(0); // the bias
        s.sort_unstable();
        s.dedup();
        s
    }

    fn predict(&self, hashes: &[u64]) -> f64 {
        let slots = Ftrl::slots(hashes);
        let x = scale(slots.len());
        let wx: f32 = slots.iter().map(|&i| self.weight(i) * x).sum();
        1.0 / (1.0 + f64::from(-wx).exp())
    }

    fn learn(&mut self, hashes: &[u64], spam: bool) {
        let p = self.predict(hashes) as f32;
        let y = if spam { 1.0 } else { 0.0 };
        let slots = Ftrl::slots(hashes);
        let x = scale(slots.len());
        for i in slots {
            let g = (p - y) * x;
            let w = self.weight(i);
            let sigma = ((self.n[i] + g * g).sqrt() - self.n[i].sqrt()) / self.alpha;
            self.z[i] += g - sigma * w;
            self.n[i] += g * g;
        }
    }
}

/// Feature value: 1 (binary, the default: the best of the settings tried) or 1/sqrt(count)
/// (FTRL_SCALE=sqrt).
fn scale(count: usize) -> f32 {
    if std::env::var("FTRL_SCALE").is_ok_and(|v| v == "sqrt") {
        1.0 / (count as f32).sqrt()
    } else {
        1.0
    }
}

/// Area under the ROC curve: the chance a random spam scores above a random ham.
fn auc(scored: &[(f64, bool)]) -> f64 {
    let mut v = scored.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut spam) = (0.0, 0.0);
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0;
        for item in &v[i..j] {
            if item.1 {
                rank_sum += avg_rank;
                spam += 1.0;
            }
        }
        i = j;
    }
    let ham = v.len() as f64 - spam;
    (rank_sum - spam * (spam + 1.0) / 2.0) / (spam * ham)
}

fn report(name: &str, samples: &[Sample], predictions: &[f64], folders: &[&str]) {
    let scored: Vec<(f64, bool)> = predictions
        .iter()
        .zip(samples)
        .map(|(p, s)| (*p, s.spam))
        .collect();
    println!("{name}: AUC {:.5}", auc(&scored));
    for edge in [0.95, 0.99] {
        let mut line = format!("  p >= {edge}:");
        for (f, folder) in folders.iter().enumerate() {
            let of: Vec<f64> = samples
                .iter()
                .zip(predictions)
                .filter(|(s, _)| s.folder == f)
                .map(|(_, p)| *p)
                .collect();
            let hit = of.iter().filter(|p| **p >= edge).count();
            line.push_str(&format!(
                "  {folder} {hit}/{} ({:.2}%)",
                of.len(),
                100.0 * hit as f64 / of.len().max(1) as f64
            ));
        }
        println!("{line}");
    }
    let spam_low = samples
        .iter()
        .zip(predictions)
        .filter(|(s, p)| s.spam && **p < 0.05)
        .count();
    let ham_mid = samples
        .iter()
        .zip(predictions)
        .filter(|(s, p)| !s.spam && (0.05..0.95).contains(*p))
        .count();
    println!("  spam below 0.05: {spam_low}; ham unsure (0.05-0.95): {ham_mid}");
}

fn main() {
    let corpus = PathBuf::from(std::env::var("CORPUS").unwrap_or_else(|_| "target/corpus".into()));
    let folds: usize = std::env::var("FOLDS")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or(5);
    let folders = ["spam-1", "easy-ham-1", "hard-ham-1"];
    let mut samples = Vec::new();
    let mut raws = Vec::new();
    let started = Instant::now();
    for (f, folder) in folders.iter().enumerate() {
        let (messages, _) = match sources::read_all(&[corpus.join(folder)]) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{e}: run scripts/fetch-corpus.sh first");
                std::process::exit(2);
            }
        };
        for (i, m) in messages.into_iter().enumerate() {
            let message = Message::parse(m.raw.clone());
            samples.push(Sample {
                hashes: tokens::features(&message, false).hashes,
                spam: f == 0,
                folder: f,
                fold: i % folds,
            });
            raws.push(m.raw);
        }
    }
    let feature_time = started.elapsed();
    println!(
        "{} messages, features in {:.2} s ({:.0} msgs/s, mean {:.0} features)",
        samples.len(),
        feature_time.as_secs_f64(),
        samples.len() as f64 / feature_time.as_secs_f64(),
        samples.iter().map(|s| s.hashes.len()).sum::<usize>() as f64 / samples.len() as f64
    );
    // Training order: interleave the folders (as mail arrives), deterministic.
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| (i * 7919) % samples.len());

    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let defaults = Params::default();
    let nb_params = Params {
        strength: env("NB_S", defaults.strength),
        min_strength: env("NB_MIN", defaults.min_strength),
        max_clues: env("NB_CLUES", defaults.max_clues as f64) as usize,
        ..defaults
    };
    println!("Bayes constants: {nb_params:?}");
    let mut nb = vec![0.0; samples.len()];
    let mut ftrl = vec![0.0; samples.len()];
    let (mut nb_learn, mut ftrl_learn) = (Duration::ZERO, Duration::ZERO);
    for k in 0..folds {
        let t = Instant::now();
        let mut model = Model::default();
        for &i in &order {
            if samples[i].fold != k {
                model.learn(&samples[i].hashes, samples[i].spam, 1);
            }
        }
        nb_learn += t.elapsed();
        let t = Instant::now();
        let mut f = Ftrl::new();
        for &i in &order {
            if samples[i].fold != k {
                f.learn(&samples[i].hashes, samples[i].spam);
            }
        }
        ftrl_learn += t.elapsed();
        for (i, s) in samples.iter().enumerate().filter(|(_, s)| s.fold == k) {
            nb[i] = model.probability_with(&s.hashes, &nb_params).0;
            ftrl[i] = f.predict(&s.hashes);
        }
    }
    println!("\n{folds}-fold cross-validation (each message scored by a model that never saw it)");
    report("chi-square naive Bayes", &samples, &nb, &folders);
    report(
        "FTRL-Proximal logistic regression",
        &samples,
        &ftrl,
        &folders,
    );
    let learned = (samples.len() * (folds - 1)) as f64;
    println!(
        "  in-memory learning: Bayes {:.0} msgs/s, FTRL {:.0} msgs/s",
        learned / nb_learn.as_secs_f64(),
        learned / ftrl_learn.as_secs_f64()
    );

    if std::env::var("SKIP_COST").is_ok() {
        return;
    }
    // Cost: the shipped rules' scan vs the classifier's part, one thread.
    // RULES=/usr/share/spamassassin measures against SpamAssassin's stock rules instead.
    let rules = match std::env::var("RULES") {
        Ok(path) => RulesConfig {
            paths: vec![PathBuf::from(path)],
            ..RulesConfig::default()
        },
        Err(_) => RulesConfig::default(),
    };
    let engine = match Engine::load(
        &rules,
        &PolicyConfig::default(),
        &AttachmentsConfig::default(),
    ) {
        Ok(e) => e,
        Err(errors) => {
            eprintln!("rules do not load: {errors:?} (run from the repository root)");
            std::process::exit(2);
        }
    };
    // A real classifier (store in a temporary directory) trained on everything.
    let dir = std::env::temp_dir().join(format!("mailwarden-cv-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let config = ClassifierConfig {
        store: dir.join("classifier.db").display().to_string(),
        ..ClassifierConfig::default()
    };
    let classifier = match Classifier::open(&config, true) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let items: Vec<Item> = samples
        .iter()
        .zip(&raws)
        .map(|(s, raw)| Item {
            digest: digest(raw),
            op: Op::Learn(if s.spam { Class::Spam } else { Class::Ham }),
            hashes: s.hashes.clone(),
        })
        .collect();
    if let Err(e) = classifier.apply(&items, Source::Cli) {
        eprintln!("{e}");
        std::process::exit(2);
    }
    let plain = ScanContext::default();
    let with = ScanContext {
        classifier: Some(classifier.clone()),
        ..ScanContext::default()
    };
    let budget = Duration::from_secs(10);
    // Warm up, then alternate rounds so drift on a shared machine hits both alike.
    let mut scan_time = Duration::ZERO;
    let mut classify_time = Duration::ZERO;
    for round in 0..4 {
        for (ctx, total) in [(&plain, &mut scan_time), (&with, &mut classify_time)] {
            let t = Instant::now();
            for raw in &raws {
                std::hint::black_box(engine.scan(raw.clone(), ctx, budget));
            }
            if round > 0 {
                *total += t.elapsed();
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Where the classifier's time goes, on messages whose views the rules built already.
    let parsed: Vec<Message> = raws
        .iter()
        .map(|r| {
            let m = Message::parse(r.clone());
            let _ = (m.body(), m.uris(), m.attachments(), m.headers());
            m
        })
        .collect();
    let t = Instant::now();
    let feats: Vec<_> = parsed.iter().map(|m| tokens::features(m, false)).collect();
    let t_features = t.elapsed();
    let t = Instant::now();
    for raw in &raws {
        std::hint::black_box(digest(raw));
    }
    let t_digest = t.elapsed();
    let (spam_n, ham_n) = classifier.counts();
    let mut model = Model::default();
    for s in &samples {
        model.learn(&s.hashes, s.spam, 1);
    }
    let t = Instant::now();
    for f in &feats {
        std::hint::black_box(model.probability(&f.hashes));
    }
    let t_prob = t.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / raws.len() as f64;
    println!(
        "classifier parts per message ({spam_n} spam, {ham_n} ham learned): features {:.1} µs, digest {:.1} µs, probability {:.1} µs",
        per(t_features),
        per(t_digest),
        per(t_prob)
    );

    let n = raws.len() as f64;
    let n = n * 3.0;
    println!(
        "\ncost per message, one thread, 3 rounds each: scan without the classifier {:.3} ms, with it {:.3} ms: the classifier adds {:.1}%",
        scan_time.as_secs_f64() * 1000.0 / n,
        classify_time.as_secs_f64() * 1000.0 / n,
        100.0 * (classify_time.as_secs_f64() / scan_time.as_secs_f64() - 1.0)
    );
}
