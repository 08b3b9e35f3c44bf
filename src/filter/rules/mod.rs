//! The rules engine: SpamAssassin `.cf` rule files, compiled once, evaluated per message.
//!
//! - [`parse`] reads the files (`if`/`ifplugin` sections, later definitions override earlier
//!   ones, everything mailwarden does not run is recorded with file, line and reason);
//! - [`replace`] expands ReplaceTags placeholders;
//! - [`perl`] turns Perl regexes into `regex`/`fancy-regex` syntax where the meaning is exact;
//! - [`compile`] builds each rule's matcher (gate + literal prefilter for backtracking rules);
//! - [`meta`] parses and evaluates `meta` expressions, run in dependency order;
//! - [`keywords`] matches word lists (a mailwarden extension) in one pass per view;
//! - `build` compiles the parsed definitions into a [`RuleSet`], one step per function;
//! - [`eval`] runs everything over one `Message`.
//!
//! Hits are reported sorted by rule name.

mod build;
pub mod compile;
pub mod eval;
pub mod fit;
pub mod keywords;
pub mod lint;
pub mod meta;
pub mod parse;
pub mod perl;
pub mod regex_error;
pub mod replace;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use self::compile::{LiteralIndex, Matcher};
use self::keywords::KeywordSet;
use self::parse::{AttachField, BUILTIN_PLUGINS, Defs, HeaderSource, KeywordTarget, RuleDef};

/// How to load a rule set.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Which of the four `score` columns to use (0..=3; SpamAssassin: bit 0 = network tests,
    /// bit 1 = Bayes).
    pub score_set: usize,
    /// Plugins (short `X` or full `Mail::SpamAssassin::Plugin::X` names) whose results other
    /// parts of mailwarden provide, so `ifplugin` sections for them are read. ReplaceTags and
    /// MIMEHeader are always provided (implemented here).
    pub plugins: Vec<String>,
    /// Also run rules whose score is 0 (normally not run, as in SpamAssassin), so that
    /// `rules fit` sees every rule's hits; their hits score 0.
    pub run_zero_scored: bool,
    /// Symbols set on messages besides the ones mailwarden's checks set (those are always
    /// known, [`crate::filter::symbols`]): the block lists' `symbol`s from the config. Their
    /// `score` and `describe` lines are not "undefined rule" warnings.
    pub symbols: Vec<String>,
}

/// A problem found while loading, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub rule: Option<String>,
    /// Short category: "eval test", "plugin directive", "regex unsupported", …
    pub reason: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// What a load did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub files: usize,
    /// Rules compiled and active (regex, keyword, attachment and meta rules).
    pub rules: usize,
    /// Active rules per kind ("header", "body", "rawbody", "uri", "full", "mimeheader",
    /// "meta", "keywords", "attachment").
    pub by_kind: BTreeMap<String, usize>,
    /// Rules and directives not run, one entry each, with the reason.
    pub skipped: Vec<Diagnostic>,
    /// Other problems that did not stop the load (undefined names in meta rules, cycles, …).
    pub warnings: Vec<Diagnostic>,
    /// Problems that stop the load.
    pub errors: Vec<Diagnostic>,
    /// Regex rules that compiled, by engine: "regex" or "fancy" (for the compatibility report).
    pub engines: BTreeMap<String, usize>,
    /// How long loading took.
    pub load_time: Duration,
}

impl LoadReport {
    pub fn skipped_by_reason(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for d in &self.skipped {
            *m.entry(d.reason.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// One hit of one rule on one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub name: String,
    /// Already multiplied by `count` for `multiple` rules.
    pub score: f64,
    pub description: String,
    pub count: u32,
}

/// The result of evaluating a rule set on a message.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Sorted by rule name; `__` rules are not included.
    pub hits: Vec<Hit>,
    /// The deadline passed before every rule ran (meta rules are not run then).
    pub timed_out: bool,
    /// Rules that ran (regex, exists, keyword, attachment and meta rules).
    pub rules_run: usize,
    /// Backtracking regex runs that hit the backtrack limit (counted as no match).
    pub regex_errors: usize,
    /// Backtracking regex runs (after their gate matched).
    pub fancy_runs: usize,
}

impl Evaluation {
    /// Sum of the hit scores.
    pub fn score(&self) -> f64 {
        self.hits.iter().map(|h| h.score).sum()
    }
}

pub(crate) enum TestKind {
    Header {
        src: usize,
        neg: bool,
        if_unset: Option<Vec<u8>>,
        m: Matcher,
    },
    Exists {
        header: String,
    },
    Body(Matcher),
    RawBody(Matcher),
    Uri(Matcher),
    Full(Matcher),
    MimeHeader {
        header: String,
        raw: bool,
        neg: bool,
        m: Matcher,
    },
    Attachment {
        field: AttachField,
        m: Matcher,
    },
}

pub(crate) struct Test {
    pub id: usize,
    pub kind: TestKind,
    /// 1, or the `maxhits` of a `multiple` rule (u32::MAX without maxhits).
    pub max: u32,
    pub nosubject: bool,
    /// For body, rawbody and full rules: ids of the rule's required literals in the view's
    /// shared [`LiteralIndex`] (the rule cannot match unless one of them occurs).
    pub literals: Option<Vec<usize>>,
}

/// The views that get one shared literal pass: body, rawbody, full.
pub(crate) const LITERAL_VIEWS: usize = 3;

pub(crate) struct MetaRule {
    pub id: usize,
    pub expr: meta::Expr,
}

/// A loaded, compiled rule set. Immutable; share it between threads.
pub struct RuleSet {
    report: LoadReport,
    /// id → name: rules, score-only symbols, names only meta rules mention.
    names: Vec<String>,
    ids: HashMap<String, usize>,
    /// id → score of one hit (0 for `__` rules).
    scores: Vec<f64>,
    descriptions: HashMap<String, String>,
    actions: HashMap<String, crate::config::Action>,
    /// Scored, active rules (not `__`), sorted.
    scored: Vec<String>,
    /// Names with `tflags NAME nice` (their hits are evidence of ham).
    nice: HashSet<String>,
    tests: Vec<Test>,
    metas: Vec<MetaRule>,
    sources: Vec<HeaderSource>,
    keyword_sets: Vec<(KeywordTarget, KeywordSet)>,
    keyword_rules: usize,
    /// id → it is a `multiple` rule (score × count)
    multiple: Vec<bool>,
    /// Shared literal prefilter per large view (body, rawbody, full).
    literal_index: [Option<LiteralIndex>; LITERAL_VIEWS],
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.report.rules)
            .field("files", &self.report.files)
            .finish_non_exhaustive()
    }
}

fn diag(def: &RuleDef, name: &str, reason: &str, message: String) -> Diagnostic {
    Diagnostic {
        file: def.loc.file.as_ref().clone(),
        line: def.loc.line,
        rule: Some(name.to_string()),
        reason: reason.to_string(),
        message,
    }
}

struct Tflags {
    nice: bool,
    multiple: bool,
    maxhits: Option<u32>,
    nosubject: bool,
}

fn tflags(defs: &Defs, name: &str) -> Tflags {
    let mut t = Tflags {
        nice: false,
        multiple: false,
        maxhits: None,
        nosubject: false,
    };
    if let Some(s) = defs.tflags.get(name) {
        for w in s.split_whitespace() {
            match w {
                "nice" => t.nice = true,
                "multiple" => t.multiple = true,
                "nosubject" => t.nosubject = true,
                _ => {
                    if let Some(n) = w.strip_prefix("maxhits=") {
                        t.maxhits = n.parse().ok();
                    }
                }
            }
        }
    }
    t
}

fn show_regex(re: &perl::Delimited) -> String {
    let p = String::from_utf8_lossy(&re.pattern);
    let p: String = if p.chars().count() > 120 {
        p.chars().take(120).collect::<String>() + "…"
    } else {
        p.into_owned()
    };
    format!("/{p}/{}", re.flags)
}

impl RuleSet {
    /// Loads rule files. Errors (unreadable file, unparseable directive syntax, missing keyword
    /// file, bad score number, unbalanced if/endif, a regex Perl refuses) make the load fail:
    /// `Err(report)`. A valid Perl regex that mailwarden cannot run is not an error: the rule is
    /// skipped ("regex unsupported").
    // The report is the error: callers print every diagnostic in it (loads are rare).
    #[allow(clippy::result_large_err)]
    pub fn load(paths: &[PathBuf], options: &LoadOptions) -> Result<RuleSet, LoadReport> {
        let started = std::time::Instant::now();
        let mut plugins: HashSet<String> = BUILTIN_PLUGINS.iter().map(|s| s.to_string()).collect();
        for p in &options.plugins {
            plugins.insert(
                p.trim()
                    .trim_start_matches("Mail::SpamAssassin::Plugin::")
                    .to_string(),
            );
        }
        let mut defs = Defs::default();
        parse::read_paths(paths, &plugins, &mut defs);
        let mut report = LoadReport {
            files: defs.files,
            skipped: std::mem::take(&mut defs.skipped),
            warnings: std::mem::take(&mut defs.warnings),
            errors: std::mem::take(&mut defs.errors),
            ..LoadReport::default()
        };
        if options.score_set > 3 {
            report.errors.push(Diagnostic {
                file: PathBuf::new(),
                line: 0,
                rule: None,
                reason: "bad option".into(),
                message: format!("score_set must be 0..=3, not {}", options.score_set),
            });
        }
        if !report.errors.is_empty() {
            report.load_time = started.elapsed();
            return Err(report);
        }
        replace::apply(&mut defs);
        lint::undefined_names(&defs, &options.symbols, &mut report.warnings);
        let mut set = Self::build(defs, options, report, started);
        if !set.report.errors.is_empty() {
            // regexes are compiled in rule-name order: report them in file order
            set.report
                .errors
                .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            return Err(set.report);
        }
        Ok(set)
    }

    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// The score of one hit of `name` (rules and score-only symbols); `None` for unknown names.
    pub fn score(&self, name: &str) -> Option<f64> {
        self.ids
            .get(name)
            .and_then(|&i| self.scores.get(i))
            .copied()
    }

    /// The action a rule file forces when rule `name` hits (`action NAME reject`).
    pub fn action(&self, name: &str) -> Option<crate::config::Action> {
        self.actions.get(name).copied()
    }

    pub fn description(&self, name: &str) -> Option<&str> {
        self.descriptions.get(name).map(String::as_str)
    }

    /// Whether `name` has `tflags nice` (a sign of ham: the only rules that may score < 0).
    pub fn is_nice(&self, name: &str) -> bool {
        self.nice.contains(name)
    }

    /// Scored (non-`__`), active rules, sorted by name.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.scored.iter().map(String::as_str)
    }
}

/// Orders meta rules so each runs after the meta rules it names; rules in a cycle are
/// skipped with a warning.
fn order_metas(
    parsed: Vec<(String, &RuleDef, meta::Expr)>,
    ids: &HashMap<String, usize>,
    report: &mut LoadReport,
) -> Vec<MetaRule> {
    let index: HashMap<usize, usize> = parsed
        .iter()
        .enumerate()
        .filter_map(|(k, (name, _, _))| ids.get(name).map(|&id| (id, k)))
        .collect();
    let deps: Vec<Vec<usize>> = parsed
        .iter()
        .map(|(_, _, e)| {
            let mut v = Vec::new();
            meta::vars(e, &mut v);
            v.into_iter()
                .filter_map(|id| index.get(&id).copied())
                .collect()
        })
        .collect();
    // 0 = unvisited, 1 = in progress, 2 = done, 3 = broken (in or behind a cycle)
    let mut state = vec![0u8; parsed.len()];
    let mut order: Vec<usize> = Vec::new();
    for root in 0..parsed.len() {
        if state[root] != 0 {
            continue;
        }
        // iterative DFS: (node, next dep index)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        state[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&dep) = deps[node].get(*next) {
                *next += 1;
                match state[dep] {
                    0 => {
                        state[dep] = 1;
                        stack.push((dep, 0));
                    }
                    1 => {
                        // a cycle: every node on the stack from dep up is in it
                        let from = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        for &(n, _) in &stack[from..] {
                            state[n] = 3;
                        }
                    }
                    _ => {}
                }
            } else {
                stack.pop();
                if state[node] == 1 {
                    state[node] = 2;
                    order.push(node);
                }
            }
        }
    }
    let mut parsed: Vec<Option<(String, &RuleDef, meta::Expr)>> =
        parsed.into_iter().map(Some).collect();
    for (k, s) in state.iter().enumerate() {
        if *s == 3
            && let Some((name, def, _)) = &parsed[k]
        {
            report.warnings.push(diag(
                def,
                name,
                "meta cycle",
                format!("{name}: meta rules depend on each other in a cycle; skipped"),
            ));
        }
    }
    let mut out = Vec::with_capacity(order.len());
    for k in order {
        if let Some((name, _, expr)) = parsed[k].take()
            && let Some(&id) = ids.get(&name)
        {
            out.push(MetaRule { id, expr });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn rule_set_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RuleSet>();
    }

    #[test]
    fn load_errors_are_reported_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "bad.cf", "body A /a/\nscore A x\n");
        let err = match RuleSet::load(&[p], &LoadOptions::default()) {
            Ok(_) => panic!("loaded a bad file"),
            Err(r) => r,
        };
        assert_eq!(err.errors.len(), 1);
        let shown = err.errors[0].to_string();
        assert!(
            shown.ends_with("bad.cf:2: score A: expected 1 or 4 numbers, got 'x'"),
            "{shown}"
        );
        let missing = RuleSet::load(&[dir.path().join("nope.cf")], &LoadOptions::default());
        assert!(missing.is_err());
        let bad_set = RuleSet::load(
            &[],
            &LoadOptions {
                score_set: 4,
                ..LoadOptions::default()
            },
        );
        assert!(bad_set.is_err());
    }

    /// A regex Perl refuses stops the load with file:line and what to fix; valid Perl that
    /// cannot run is skipped with file:line and the rest loads.
    #[test]
    fn invalid_regex_is_an_error_unsupported_one_a_skip() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "local.cf",
            "body GOOD /fine/\n\nbody BROKEN /unclosed(/\nbody LATER /\\Gx/\n",
        );
        let err = match RuleSet::load(std::slice::from_ref(&p), &LoadOptions::default()) {
            Ok(_) => panic!("loaded an invalid regex"),
            Err(r) => r,
        };
        assert_eq!(err.errors.len(), 1, "{:?}", err.errors);
        assert_eq!(err.errors[0].reason, "invalid regex");
        assert_eq!(err.errors[0].rule.as_deref(), Some("BROKEN"));
        let shown = err.errors[0].to_string();
        assert!(
            shown.ends_with(
                "local.cf:3: rule BROKEN: invalid regex /unclosed(/: unclosed group at offset 8: \
                 close the '(' with ')', or write \\( for a literal '('"
            ),
            "{shown}"
        );
        let p = write(
            dir.path(),
            "local.cf",
            "body GOOD /fine/\nbody LATER /\\Gx/\n",
        );
        let set = RuleSet::load(&[p], &LoadOptions::default()).unwrap();
        let skipped: Vec<String> = set.report().skipped.iter().map(|d| d.to_string()).collect();
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].ends_with("local.cf:2: LATER: \\G anchor: /\\Gx/"),
            "{skipped:?}"
        );
        assert_eq!(set.rule_names().collect::<Vec<_>>(), ["GOOD"]);
    }

    #[test]
    fn scores_defaults_cycles_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "10_a.cf",
            "body A /a/\nbody T_B /b/\nbody N /n/\ntflags N nice\nscore A 1 2 3 4\n\
             meta C1 C2 && A\nmeta C2 C1\nbody Z /zzz\\G/\n",
        );
        write(dir.path(), "20_b.cf", "score A 5\nscore SYMBOL 0.5\n");
        write(dir.path(), "ignored.txt", "body IGNORED /x/\n");
        let set = RuleSet::load(&[dir.path().to_path_buf()], &LoadOptions::default()).unwrap();
        assert_eq!(set.report().files, 2);
        assert_eq!(set.score("A"), Some(5.0)); // the later file wins
        assert_eq!(set.score("T_B"), Some(0.01));
        assert_eq!(set.score("N"), Some(-1.0));
        assert_eq!(set.score("SYMBOL"), Some(0.5));
        assert_eq!(set.score("IGNORED"), None);
        let reasons = set.report().skipped_by_reason();
        assert_eq!(reasons.get("regex unsupported"), Some(&1));
        let cycles = set
            .report()
            .warnings
            .iter()
            .filter(|w| w.reason == "meta cycle")
            .count();
        assert_eq!(cycles, 2);
        let names: Vec<&str> = set.rule_names().collect();
        assert_eq!(names, ["A", "N", "T_B"]);

        let set = RuleSet::load(
            &[dir.path().join("10_a.cf")],
            &LoadOptions {
                score_set: 2,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        assert_eq!(set.score("A"), Some(3.0));
    }

    #[test]
    fn zero_scored_rules_run_only_when_asked_and_nice_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.cf",
            "body Z /zz/
score Z 0
meta M Z
score M 1
body N /nn/
tflags N nice
",
        );
        let message =
            crate::filter::message::Message::parse(b"Subject: x\r\n\r\nzz nn\r\n".to_vec());
        let names = |set: &RuleSet| -> Vec<String> {
            set.evaluate(&message, &[], None)
                .hits
                .into_iter()
                .map(|h| h.name)
                .collect()
        };
        let normal = RuleSet::load(std::slice::from_ref(&p), &LoadOptions::default()).unwrap();
        assert_eq!(names(&normal), ["N"]);
        let all = LoadOptions {
            run_zero_scored: true,
            ..LoadOptions::default()
        };
        let fit = RuleSet::load(&[p], &all).unwrap();
        assert_eq!(names(&fit), ["M", "N", "Z"]);
        assert_eq!(fit.score("Z"), Some(0.0));
        assert!(fit.is_nice("N") && !fit.is_nice("Z"));
    }
}
