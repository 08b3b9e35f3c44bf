//! `mailwarden rules fit --spam PATH... --ham PATH... > rules/90_scores.cf`: learns rule
//! scores from the admin's own labelled mail, so a site can refit the shipped rules (or its
//! own) to the mail it really receives instead of trusting hand-set numbers.
//!
//! Every message is scanned once with the configured rules (zero-scored rules included, so
//! they can earn a score); the hits then feed the fitter in [`crate::filter::rules::fit`]:
//! k-fold cross-validation first (figures per fold and pooled, for the spam and for each
//! `--ham` path on its own, on stderr and in the output's header), then one fit on everything
//! for the scores written to stdout as `score NAME value` lines.
//!
//! Not fitted (their rule-file scores stand, and only shift the sums): rules named with
//! `--fixed`, rules with |score| ≥ 20 (GTUBE, allow/deny lists), rules with an `action`, and
//! symbols that mailwarden's own checks set (no rule text: SPF/DKIM/DMARC, virus, attachment
//! policy, MIME_MALFORMED), whose meaning is policy rather than corpus evidence.
//!
//! Exit code: 0 done; 2 an error (unreadable path, no spam or no ham, rules that do not load).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::filter::classifier::bayes::{Model, band_symbols};
use crate::filter::classifier::{self as classifier_symbols, tokens};
use crate::filter::message::Message;
use crate::filter::rules::fit::{self, CrossValidation, Example, Fit, Origin, Params, Rule};
use crate::filter::rules::{LoadOptions, RuleSet};
use crate::filter::{Engine, ScanContext};

use super::sources;

/// The classifier's bands below 0.5 (fitted with `--classifier`, allowed negative scores).
const HAM_BANDS: [&str; 4] = ["BAYES_00", "BAYES_05", "BAYES_20", "BAYES_40"];

/// A score at least this large (either sign) marks a rule as certainty: not fitted.
pub const FIXED_MAGNITUDE: f64 = 20.0;

/// Options of `rules fit` (also its command line).
#[derive(Debug, Clone, clap::Args)]
pub struct FitOptions {
    /// Configuration file (default: mailwarden.toml if present, else built-in defaults):
    /// its [rules] paths are the rules fitted, its [policy] tag_score the threshold.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Spam: message files, directories, Maildirs or mbox files.
    #[arg(long, num_args = 1.., required = true)]
    pub spam: Vec<PathBuf>,
    /// Ham (legitimate mail), same forms; each path is reported on its own.
    #[arg(long, num_args = 1.., required = true)]
    pub ham: Vec<PathBuf>,
    /// Cross-validation folds (1: no cross-validation).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Largest score a fitted rule may get.
    #[arg(long, default_value_t = Params::default().cap)]
    pub cap: f64,
    /// Largest magnitude of a negative score (only `tflags nice` rules go below 0).
    #[arg(long, default_value_t = Params::default().nice_cap)]
    pub nice_cap: f64,
    /// How many spam one ham message weighs (higher: fewer false positives, lower recall).
    #[arg(long, default_value_t = Params::default().ham_weight)]
    pub ham_weight: f64,
    /// L2 penalty per squared score point, in messages (higher: smaller, safer scores).
    #[arg(long, default_value_t = Params::default().l2)]
    pub l2: f64,
    /// Rules hitting fewer training messages keep their current score.
    #[arg(long, default_value_t = Params::default().min_hits)]
    pub min_hits: usize,
    /// Log-odds per score point: higher fits the decision at the threshold more sharply.
    #[arg(long, default_value_t = Params::default().sharpness)]
    pub sharpness: f64,
    /// Threshold the scores are fitted for (default: [policy] tag_score).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Also keep this rule's current score (repeat for several).
    #[arg(long)]
    pub fixed: Vec<String>,
    /// Fit the classifier's BAYES_* scores, with every rule's score kept as the rule files
    /// have it: each message gets the band of a classifier trained (in memory) on the other
    /// folds, never on itself. (One score set must also serve while the classifier is not
    /// voting yet, so the rules are fitted without it first, then the bands on top.)
    #[arg(long)]
    pub classifier: bool,
}

/// Why a fit run failed.
#[derive(Debug)]
pub enum FitRunError {
    Config(String),
    Rules(Vec<String>),
    Source(sources::SourceError),
    NoMessages(PathBuf),
    Fit(fit::FitError),
}

impl std::fmt::Display for FitRunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FitRunError::Config(e) => write!(f, "configuration error: {e}"),
            FitRunError::Rules(errors) => write!(
                f,
                "the rules do not load (`mailwarden rules check` shows all):\n  {}",
                errors.join("\n  ")
            ),
            FitRunError::Source(e) => write!(f, "{e}"),
            FitRunError::NoMessages(p) => write!(f, "{}: no messages found", p.display()),
            FitRunError::Fit(e) => write!(f, "{e}"),
        }
    }
}

/// One labelled corpus: a `--spam` or `--ham` path and its scanned messages.
struct Group {
    path: PathBuf,
    spam: bool,
    /// Per message: names of the (non-`__`) rules that hit.
    hits: Vec<Vec<String>>,
    /// Per message: the classifier's features (with `--classifier`).
    features: Vec<Vec<u64>>,
    timeouts: usize,
}

/// Runs the fit; returns the process exit code.
pub fn run(opts: &FitOptions) -> u8 {
    match fit_to_cf(opts) {
        Ok(cf) => {
            print!("{cf}");
            0
        }
        Err(e) => {
            eprintln!("mailwarden: rules fit: {e}");
            2
        }
    }
}

/// Everything but the printing: scans, cross-validates, fits; returns the .cf text.
pub fn fit_to_cf(opts: &FitOptions) -> Result<String, FitRunError> {
    let config = super::load_config(opts.config.as_deref()).map_err(FitRunError::Config)?;
    let engine = load_engine(&config)?;
    let params = Params {
        threshold: opts.threshold.unwrap_or(config.policy.tag_score),
        cap: opts.cap,
        nice_cap: opts.nice_cap,
        ham_weight: opts.ham_weight,
        l2: opts.l2,
        min_hits: opts.min_hits,
        sharpness: opts.sharpness,
        ..Params::default()
    };
    let budget = Duration::from_millis(config.rules.scan_timeout_ms.max(10_000));
    let started = Instant::now();
    let mut groups = Vec::new();
    for (paths, spam) in [(&opts.spam, true), (&opts.ham, false)] {
        for path in paths {
            let group = scan_group(&engine, path, spam, budget, opts.classifier)?;
            eprintln!(
                "scanned {} {} message(s) in {} ({:.1} s so far{})",
                group.hits.len(),
                if spam { "spam" } else { "ham" },
                path.display(),
                started.elapsed().as_secs_f64(),
                if group.timeouts > 0 {
                    format!(", {} hit the scan time limit", group.timeouts)
                } else {
                    String::new()
                }
            );
            groups.push(group);
        }
    }
    if opts.classifier {
        add_classifier_bands(&mut groups, opts.folds);
    }
    let (rules, examples, group_of) =
        build_problem(&engine.rules, &groups, &opts.fixed, opts.classifier);
    let cv = if opts.folds > 1 {
        Some(
            fit::cross_validate(&rules, &examples, &group_of, opts.folds, &params)
                .map_err(FitRunError::Fit)?,
        )
    } else {
        None
    };
    let mut fitted = fit::fit(&rules, &examples, &params).map_err(FitRunError::Fit)?;
    if opts.classifier {
        monotone_bands(&rules, &mut fitted.scores);
    }
    let report = Report {
        groups: &groups,
        rules: &rules,
        fit: &fitted,
        cv: cv.as_ref(),
        params: &params,
        folds: opts.folds,
        examples: &examples,
        group_of: &group_of,
        command: command_line(),
    };
    eprint!("{}", report.figures());
    Ok(report.render())
}

/// The configured rules, with zero-scored rules run too (so they can earn a score).
fn load_engine(config: &Config) -> Result<Engine, FitRunError> {
    let options = LoadOptions {
        score_set: config.rules.score_set,
        run_zero_scored: true,
        ..LoadOptions::default()
    };
    let rules = RuleSet::load(&config.rules.paths, &options).map_err(|report| {
        FitRunError::Rules(report.errors.iter().map(|d| d.to_string()).collect())
    })?;
    let policy = crate::filter::policy::Policy::new(config.policy.clone())
        .map_err(|e| FitRunError::Config(e.to_string()))?;
    Ok(Engine {
        rules,
        policy,
        attachments: config.attachments.clone(),
    })
}

/// Reads and scans the messages under one path (all cores, each message once).
fn scan_group(
    engine: &Engine,
    path: &PathBuf,
    spam: bool,
    budget: Duration,
    features: bool,
) -> Result<Group, FitRunError> {
    let (messages, _) =
        sources::read_all(std::slice::from_ref(path)).map_err(FitRunError::Source)?;
    if messages.is_empty() {
        return Err(FitRunError::NoMessages(path.clone()));
    }
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(messages.len());
    let ctx = ScanContext::default();
    let mut results: Vec<(usize, Vec<String>, bool, Vec<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (messages, ctx) = (&messages, &ctx);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for (i, m) in messages.iter().enumerate().skip(w).step_by(workers) {
                        let message = Message::parse(m.raw.clone());
                        let hashes = if features {
                            tokens::features(&message, false).hashes
                        } else {
                            Vec::new()
                        };
                        let scan = engine.scan_message(message, ctx, budget);
                        let names = scan.symbols.into_iter().map(|s| s.name).collect();
                        out.push((i, names, scan.timed_out, hashes));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    if results.len() != messages.len() {
        // A worker panicked: its messages are missing. Say so rather than fit on a part.
        return Err(FitRunError::Config(format!(
            "{}: scanning failed for {} message(s)",
            path.display(),
            messages.len() - results.len()
        )));
    }
    results.sort_by_key(|(i, _, _, _)| *i);
    let timeouts = results.iter().filter(|r| r.2).count();
    let (hits, features) = results.into_iter().map(|(_, n, _, f)| (n, f)).unzip();
    Ok(Group {
        path: path.clone(),
        spam,
        hits,
        features,
        timeouts,
    })
}

/// A higher band never scores less than a lower one (a few messages in the middle bands can fit
/// otherwise, and no admin could defend "80–95% counts less than 60–80%"): running maximum up
/// from BAYES_50, running minimum down from BAYES_40.
fn monotone_bands(rules: &[Rule], scores: &mut [f64]) {
    let index = |name: &str| rules.iter().position(|r| r.name == name);
    let mut floor = f64::NEG_INFINITY;
    for name in ["BAYES_50", "BAYES_60", "BAYES_80", "BAYES_95", "BAYES_99"] {
        if let Some(i) = index(name) {
            scores[i] = scores[i].max(floor);
            floor = scores[i];
        }
    }
    let mut ceiling = f64::INFINITY;
    for name in HAM_BANDS.iter().rev() {
        if let Some(i) = index(name) {
            scores[i] = scores[i].min(ceiling);
            ceiling = scores[i];
        }
    }
}

/// Gives every message the classifier band of a model trained on the other folds (the same
/// folds as the cross-validation: spam is group 0, each ham path its own group).
fn add_classifier_bands(groups: &mut [Group], folds: usize) {
    let mut group_of = Vec::new();
    let mut ham_group = 0;
    for g in groups.iter() {
        let gid = if g.spam {
            0
        } else {
            ham_group += 1;
            ham_group
        };
        group_of.extend(std::iter::repeat_n(gid, g.hits.len()));
    }
    let fold_of = fit::folds(&group_of, folds.max(2));
    for k in 0..folds.max(2) {
        let mut model = Model::default();
        let mut i = 0;
        for g in groups.iter() {
            for f in &g.features {
                if fold_of[i] != k {
                    model.learn(f, g.spam, 1);
                }
                i += 1;
            }
        }
        let mut i = 0;
        for g in groups.iter_mut() {
            for (hits, f) in g.hits.iter_mut().zip(&g.features) {
                if fold_of[i] == k {
                    let (p, _) = model.probability(f);
                    hits.extend(band_symbols(p).into_iter().map(str::to_string));
                }
                i += 1;
            }
        }
    }
}

/// The fitter's view: one [`Rule`] per scored rule (and per symbol seen in a hit), one
/// [`Example`] per message, and each message's group index.
fn build_problem(
    set: &RuleSet,
    groups: &[Group],
    fixed_names: &[String],
    classifier: bool,
) -> (Vec<Rule>, Vec<Example>, Vec<usize>) {
    let with_text: BTreeSet<&str> = set.rule_names().collect();
    let mut names: BTreeSet<&str> = with_text.clone();
    for g in groups {
        for hits in &g.hits {
            names.extend(hits.iter().map(String::as_str));
        }
    }
    let rules: Vec<Rule> = names
        .iter()
        .map(|&name| {
            let current = set.score(name).unwrap_or(0.0);
            let fitted_symbol = classifier && classifier_symbols::SYMBOLS.contains(&name);
            // With --classifier only its symbols are fitted; else every rule with text.
            let fitted_kind = if classifier {
                fitted_symbol
            } else {
                with_text.contains(name)
            };
            let fixed = !fitted_kind
                || current.abs() >= FIXED_MAGNITUDE
                || set.action(name).is_some()
                || fixed_names.iter().any(|f| f == name);
            Rule {
                name: name.to_string(),
                // The classifier's ham bands may go negative: a spammer cannot set them.
                nice: set.is_nice(name) || (fitted_symbol && HAM_BANDS.contains(&name)),
                fixed: fixed.then_some(current),
                current,
            }
        })
        .collect();
    let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut examples = Vec::new();
    let mut group_of = Vec::new();
    // Group 0 is all the spam (one recall figure); each ham path is its own group.
    let mut ham_group = 0;
    for g in groups {
        let gid = if g.spam {
            0
        } else {
            ham_group += 1;
            ham_group
        };
        for hits in &g.hits {
            let hits = hits
                .iter()
                .filter_map(|h| index.get(h.as_str()).map(|&i| (i, 1.0)))
                .collect();
            examples.push(Example { hits, spam: g.spam });
            group_of.push(gid);
        }
    }
    (rules, examples, group_of)
}

/// What the run found, for stderr and the output header.
struct Report<'a> {
    groups: &'a [Group],
    rules: &'a [Rule],
    fit: &'a Fit,
    cv: Option<&'a CrossValidation>,
    params: &'a Params,
    folds: usize,
    examples: &'a [Example],
    group_of: &'a [usize],
    /// The command line that made this, for the header.
    command: String,
}

impl Report<'_> {
    /// Group names in group-index order: "spam", then each ham path.
    fn group_names(&self) -> Vec<String> {
        let mut names = vec!["spam".to_string()];
        names.extend(
            self.groups
                .iter()
                .filter(|g| !g.spam)
                .map(|g| format!("ham {}", g.path.display())),
        );
        names
    }

    fn tally_line(&self, tallies: &[fit::Tally]) -> String {
        self.group_names()
            .iter()
            .zip(tallies)
            .map(|(name, t)| {
                let what = if name == "spam" { "recall" } else { "FP" };
                format!(
                    "{name} {what} {:.2}% ({}/{})",
                    t.percent(),
                    t.flagged,
                    t.messages
                )
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// The cross-validation and training figures, one per line.
    fn figures(&self) -> String {
        let mut out = String::new();
        if let Some(cv) = self.cv {
            let _ = writeln!(
                out,
                "cross-validation, {} folds (round-robin by file order within each path), flagged at >= {}:",
                self.folds, self.params.threshold
            );
            for (f, tallies) in cv.per_fold.iter().enumerate() {
                let _ = writeln!(out, "  fold {}: {}", f + 1, self.tally_line(tallies));
            }
            let _ = writeln!(out, "  pooled: {}", self.tally_line(&cv.pooled));
        }
        let n_groups = self.group_names().len();
        let mut train = vec![fit::Tally::default(); n_groups];
        for (e, &g) in self.examples.iter().zip(self.group_of) {
            train[g].messages += 1;
            if fit::score(&self.fit.scores, e) >= self.params.threshold {
                train[g].flagged += 1;
            }
        }
        let _ = writeln!(
            out,
            "final fit on everything ({} iterations; figures on its own training data): {}",
            self.fit.iterations,
            self.tally_line(&train)
        );
        out
    }

    /// The .cf text: a comment header, then one `score` line per fitted or kept rule.
    fn render(&self) -> String {
        let p = self.params;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Rule scores fitted by `mailwarden rules fit` (generated: do not edit by hand;\n\
             # put overrides in a later file such as 99_local.cf, or refit).\n#\n# regenerate with: {}\n# corpus:",
            self.command
        );
        for g in self.groups {
            let _ = writeln!(
                out,
                "#   {} {} message(s): {}",
                g.hits.len(),
                if g.spam { "spam" } else { "ham" },
                g.path.display()
            );
        }
        let _ = writeln!(
            out,
            "# method: logistic regression on rule hits, P(spam) = sigmoid({} * (sum of scores - {})),\n\
             #   ham weight {}, L2 {} per squared point, scores 0..{} ({}..0 for tflags nice),\n\
             #   rules with fewer than {} hits keep their score; fixed rules are not fitted.",
            p.sharpness, p.threshold, p.ham_weight, p.l2, p.cap, -p.nice_cap, p.min_hits
        );
        for line in self.figures().lines() {
            let _ = writeln!(out, "# {line}");
        }
        let fixed: Vec<String> = self
            .rules
            .iter()
            .zip(&self.fit.origins)
            .filter(|(_, o)| **o == Origin::Fixed)
            .map(|(r, _)| format!("{} {}", r.name, r.current))
            .collect();
        if !fixed.is_empty() {
            let _ = writeln!(
                out,
                "# fixed (their rule-file scores stand): {}",
                fixed.join(", ")
            );
        }
        let kept: Vec<&str> = self
            .rules
            .iter()
            .zip(&self.fit.origins)
            .filter(|(_, o)| **o == Origin::Kept)
            .map(|(r, _)| r.name.as_str())
            .collect();
        if !kept.is_empty() {
            let _ = writeln!(
                out,
                "# not fitted, fewer than {} hits (their rule-file scores stand): {}",
                p.min_hits,
                kept.join(", ")
            );
        }
        let _ = writeln!(out);
        out.push_str(&self.score_lines());
        out
    }

    /// `score NAME value   # spam and ham hits` for every fitted rule.
    fn score_lines(&self) -> String {
        let mut spam_hits = vec![0usize; self.rules.len()];
        let mut ham_hits = vec![0usize; self.rules.len()];
        for e in self.examples {
            for &(i, _) in &e.hits {
                if e.spam {
                    spam_hits[i] += 1;
                } else {
                    ham_hits[i] += 1;
                }
            }
        }
        let mut out = String::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if self.fit.origins[i] != Origin::Fitted {
                continue;
            }
            let _ = writeln!(
                out,
                "score {:<28} {:>7}   # spam {}, ham {}",
                rule.name,
                format_score(self.fit.scores[i], rule.nice),
                spam_hits[i],
                ham_hits[i]
            );
        }
        out
    }
}

/// `mailwarden rules fit ARGS` as run (arguments with spaces quoted), then `> FILE`.
fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| {
            if a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect();
    format!("mailwarden {} > rules/90_scores.cf", args.join(" "))
}

/// Three decimals, as SpamAssassin writes them; a 0 becomes ±0.001 because a rule scored 0
/// is not run at all (and could then no longer take part in meta rules).
fn format_score(v: f64, nice: bool) -> String {
    let rounded = (v * 1000.0).round() / 1000.0;
    if rounded == 0.0 {
        if nice { "-0.001" } else { "0.001" }.to_string()
    } else {
        format!("{rounded:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_scores_stay_running() {
        assert_eq!(format_score(0.0, false), "0.001");
        assert_eq!(format_score(-0.0001, true), "-0.001");
        assert_eq!(format_score(1.23456, false), "1.235");
        assert_eq!(format_score(-0.5, true), "-0.500");
    }
}
