//! Compiling parsed rule definitions ([`Defs`]) into a [`RuleSet`], one step per function.
//!
//! [`RuleSet::build`] was one long function; its steps are separate here so each can be read
//! (and changed) on its own: naming every rule, compiling each rule by kind, ordering the tests
//! and sharing their literal prefilters, parsing and ordering meta rules, building keyword
//! automata, and the per-name tables (scores, `multiple`, `nice`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use super::compile::{LiteralIndex, Matcher, Scope};
use super::keywords::KeywordSet;
use super::parse::{Defs, HeaderSource, KeywordTarget, RuleDef, RuleKind};
use super::regex_error::RegexError;
use super::{
    Diagnostic, LITERAL_VIEWS, LoadOptions, LoadReport, RuleSet, Test, TestKind, diag, meta,
    order_metas, perl, show_regex, tflags,
};

/// Rule and symbol names and their ids (an id is an index into `names`).
#[derive(Default)]
struct NameTable {
    names: Vec<String>,
    ids: HashMap<String, usize>,
}

impl NameTable {
    /// The id of `name`, giving it the next one if it has none yet.
    fn intern(&mut self, name: &str) -> usize {
        if let Some(&i) = self.ids.get(name) {
            return i;
        }
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), self.names.len() - 1);
        self.names.len() - 1
    }
}

/// A test waiting to be ordered: (priority, kind order, name, test).
type PendingTest = (i32, u8, String, Test);

/// What the per-rule pass over the definitions collects for the later steps.
#[derive(Default)]
struct Collected<'d> {
    tests: Vec<PendingTest>,
    /// Meta rules not yet parsed: (name, definition, expression source).
    metas_src: Vec<(String, &'d RuleDef, String)>,
    keyword_rules: BTreeMap<KeywordTarget, Vec<(usize, &'d [String])>>,
    sources: Vec<HeaderSource>,
    source_ids: HashMap<HeaderSource, usize>,
    active: HashSet<usize>,
    by_kind: BTreeMap<String, usize>,
}

impl<'d> Collected<'d> {
    /// Files one rule under its kind: a test, a meta rule to parse later or a keyword rule.
    fn add_rule(
        &mut self,
        defs: &Defs,
        options: &LoadOptions,
        id: usize,
        name: &String,
        def: &'d RuleDef,
        report: &mut LoadReport,
    ) {
        let score_set = options.score_set;
        let explicit_zero = !options.run_zero_scored
            && !name.starts_with("__")
            && defs.scores.get(name).is_some_and(|s| s[score_set] == 0.0);
        match &def.kind {
            RuleKind::Skipped { .. } => {}
            RuleKind::Meta(expr) => {
                if explicit_zero {
                    report.skipped.push(zero_score(def, name, score_set));
                } else {
                    self.metas_src.push((name.clone(), def, expr.clone()));
                }
            }
            RuleKind::Keywords { target, entries } => {
                if explicit_zero {
                    report.skipped.push(zero_score(def, name, score_set));
                } else {
                    self.keyword_rules
                        .entry(target.clone())
                        .or_default()
                        .push((id, entries.as_slice()));
                    self.active.insert(id);
                    *self.by_kind.entry("keywords".into()).or_insert(0) += 1;
                }
            }
            _ => {
                let Some((kind_order, kind)) = self.test_kind(name, def, report) else {
                    return;
                };
                if explicit_zero {
                    report.skipped.push(zero_score(def, name, score_set));
                    return;
                }
                let tf = tflags(defs, name);
                let max = if tf.multiple {
                    tf.maxhits.filter(|&m| m > 0).unwrap_or(u32::MAX)
                } else {
                    1
                };
                *self
                    .by_kind
                    .entry(def.kind.kind_name().to_string())
                    .or_insert(0) += 1;
                self.active.insert(id);
                let priority = defs.priority.get(name).copied().unwrap_or(0);
                self.tests.push((
                    priority,
                    kind_order,
                    name.clone(),
                    Test {
                        id,
                        kind,
                        max,
                        nosubject: tf.nosubject,
                        literals: None,
                    },
                ));
            }
        }
    }

    /// Compiles a regex, header-exists or attachment rule into its test and the order of its
    /// kind; `None` if its regex does not compile (reported) or it is not such a rule.
    fn test_kind(
        &mut self,
        name: &str,
        def: &RuleDef,
        report: &mut LoadReport,
    ) -> Option<(u8, TestKind)> {
        let compile = |re: &perl::Delimited, scope: Scope, report: &mut LoadReport| {
            compile_regex(name, def, re, scope, report)
        };
        Some(match &def.kind {
            RuleKind::Header {
                source,
                neg,
                if_unset,
                re,
            } => {
                let m = compile(re, Scope::Whole, report)?;
                let src = *self.source_ids.entry(source.clone()).or_insert_with(|| {
                    self.sources.push(source.clone());
                    self.sources.len() - 1
                });
                let if_unset = if_unset.clone();
                (
                    0,
                    TestKind::Header {
                        src,
                        neg: *neg,
                        if_unset,
                        m,
                    },
                )
            }
            RuleKind::Exists { header } => (
                0,
                TestKind::Exists {
                    header: header.clone(),
                },
            ),
            RuleKind::MimeHeader {
                header,
                raw,
                neg,
                re,
            } => {
                let m = compile(re, Scope::Whole, report)?;
                let (header, raw, neg) = (header.clone(), *raw, *neg);
                (
                    1,
                    TestKind::MimeHeader {
                        header,
                        raw,
                        neg,
                        m,
                    },
                )
            }
            RuleKind::Uri(re) => (2, TestKind::Uri(compile(re, Scope::Whole, report)?)),
            RuleKind::Body(re) => (3, TestKind::Body(compile(re, Scope::Lines, report)?)),
            RuleKind::RawBody(re) => (4, TestKind::RawBody(compile(re, Scope::Lines, report)?)),
            RuleKind::Full(re) => (5, TestKind::Full(compile(re, Scope::Whole, report)?)),
            RuleKind::Attachment { field, re } => {
                let m = compile(re, Scope::Whole, report)?;
                (6, TestKind::Attachment { field: *field, m })
            }
            RuleKind::Meta(_) | RuleKind::Keywords { .. } | RuleKind::Skipped { .. } => {
                return None;
            }
        })
    }
}

/// The skip diagnostic of a rule whose explicit score in this score set is 0.
fn zero_score(def: &RuleDef, name: &str, score_set: usize) -> Diagnostic {
    diag(
        def,
        name,
        "score 0",
        format!("{name}: score 0 in score set {score_set}: not run"),
    )
}

/// Compiles one rule's regex, counting its engine; a regex Perl refuses is a load error, one
/// mailwarden cannot run a skip (both reported, both `None`).
fn compile_regex(
    name: &str,
    def: &RuleDef,
    re: &perl::Delimited,
    scope: Scope,
    report: &mut LoadReport,
) -> Option<Matcher> {
    match Matcher::new(&re.pattern, &re.flags, scope) {
        Ok(m) => {
            let engine = if m.is_fancy() { "fancy" } else { "regex" };
            *report.engines.entry(engine.to_string()).or_insert(0) += 1;
            Some(m)
        }
        Err(RegexError::Invalid(e)) => {
            report.errors.push(diag(
                def,
                name,
                "invalid regex",
                format!("rule {name}: invalid regex {}: {e}", show_regex(re)),
            ));
            None
        }
        Err(RegexError::Unsupported(u)) => {
            report.skipped.push(diag(
                def,
                name,
                "regex unsupported",
                format!("{name}: {u}: {}", show_regex(re)),
            ));
            None
        }
    }
}

/// The score of one hit of `name`: explicit, else SpamAssassin's defaults (1.0, `T_` 0.01,
/// negative if `nice`); 0 for `__` rules and names that are neither rules nor scored.
fn score_of(defs: &Defs, score_set: usize, name: &str) -> f64 {
    if name.starts_with("__") {
        return 0.0;
    }
    if let Some(s) = defs.scores.get(name) {
        return s[score_set];
    }
    if !defs.rules.contains_key(name) {
        return 0.0;
    }
    let base = if name.starts_with("T_") { 0.01 } else { 1.0 };
    if tflags(defs, name).nice { -base } else { base }
}

/// Orders the tests by priority, kind and name.
fn sort_tests(mut tests: Vec<PendingTest>) -> Vec<Test> {
    tests.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    tests.into_iter().map(|t| t.3).collect()
}

/// Builds one literal automaton per large view, shared by its rules, and gives each body,
/// rawbody and full test the ids of its literals in it; if an automaton cannot be built, no
/// test uses literals.
fn index_literals(tests: &mut [Test]) -> [Option<LiteralIndex>; LITERAL_VIEWS] {
    let mut literal_lists: [Vec<Vec<u8>>; LITERAL_VIEWS] = Default::default();
    let mut literal_ids: [HashMap<Vec<u8>, usize>; LITERAL_VIEWS] = Default::default();
    for t in tests.iter_mut() {
        let (view, m) = match &t.kind {
            TestKind::Body(m) => (0, m),
            TestKind::RawBody(m) => (1, m),
            TestKind::Full(m) => (2, m),
            _ => continue,
        };
        let Some(lits) = m.literals() else { continue };
        let ids: Vec<usize> = lits
            .iter()
            .map(|l| {
                *literal_ids[view].entry(l.clone()).or_insert_with(|| {
                    literal_lists[view].push(l.clone());
                    literal_lists[view].len() - 1
                })
            })
            .collect();
        t.literals = Some(ids);
    }
    let literal_index = literal_lists.each_ref().map(|l| LiteralIndex::new(l));
    if literal_index
        .iter()
        .zip(&literal_lists)
        .any(|(i, l)| i.is_none() && !l.is_empty())
    {
        for t in tests.iter_mut() {
            t.literals = None;
        }
    }
    literal_index
}

/// Parses the meta expressions, giving names they mention but nothing defines an id (and a
/// warning); unparseable ones are skipped.
fn parse_metas<'d>(
    metas_src: &[(String, &'d RuleDef, String)],
    table: &mut NameTable,
    report: &mut LoadReport,
) -> Vec<(String, &'d RuleDef, meta::Expr)> {
    let mut parsed = Vec::new();
    for (name, def, src) in metas_src {
        let mut undefined: Vec<String> = Vec::new();
        let result = meta::parse(src, &mut |n: &str| {
            if let Some(&i) = table.ids.get(n) {
                return i;
            }
            if n != "local_tests_only" && !undefined.iter().any(|u| u == n) {
                undefined.push(n.to_string());
            }
            table.intern(n)
        });
        match result {
            Ok(expr) => {
                for u in undefined {
                    report.warnings.push(diag(
                        def,
                        name,
                        "meta undefined name",
                        format!("{name}: meta refers to undefined rule '{u}' (taken as 0)"),
                    ));
                }
                parsed.push((name.clone(), *def, expr));
            }
            Err(e) => report.skipped.push(diag(
                def,
                name,
                "meta unparseable",
                format!("{name}: cannot parse meta expression ({e}): {src}"),
            )),
        }
    }
    parsed
}

/// Builds one keyword automaton per target; returns them and the number of keyword rules.
fn keyword_sets(
    keyword_rules: BTreeMap<KeywordTarget, Vec<(usize, &[String])>>,
    report: &mut LoadReport,
) -> (Vec<(KeywordTarget, KeywordSet)>, usize) {
    let mut sets = Vec::new();
    let mut count = 0;
    for (target, rules) in keyword_rules {
        count += rules.len();
        match KeywordSet::new(&rules) {
            Ok(Some(set)) => sets.push((target, set)),
            Ok(None) => {}
            Err(e) => report.warnings.push(Diagnostic {
                file: PathBuf::new(),
                line: 0,
                rule: None,
                reason: "keywords".into(),
                message: format!("keyword automaton failed: {e}"),
            }),
        }
    }
    (sets, count)
}

impl RuleSet {
    /// Compiles parsed definitions into a rule set; problems go to `report`.
    pub(super) fn build(
        defs: Defs,
        options: &LoadOptions,
        mut report: LoadReport,
        started: std::time::Instant,
    ) -> RuleSet {
        let score_set = options.score_set;
        let mut table = NameTable::default();
        for name in defs.rules.keys() {
            table.intern(name);
        }
        let mut symbols: Vec<&String> = defs.scores.keys().collect();
        symbols.sort();
        for name in symbols {
            table.intern(name);
        }

        let mut c = Collected::default();
        for (name, def) in &defs.rules {
            let id = table.ids.get(name.as_str()).copied().unwrap_or(0);
            c.add_rule(&defs, options, id, name, def, &mut report);
        }
        let mut tests = sort_tests(c.tests);
        let literal_index = index_literals(&mut tests);

        let parsed = parse_metas(&c.metas_src, &mut table, &mut report);
        let metas = order_metas(parsed, &table.ids, &mut report);
        let mut active = c.active;
        let mut by_kind = c.by_kind;
        for m in &metas {
            active.insert(m.id);
        }
        *by_kind.entry("meta".into()).or_insert(0) += metas.len();
        by_kind.retain(|_, v| *v > 0);

        let (keyword_sets, keyword_count) = keyword_sets(c.keyword_rules, &mut report);

        let NameTable { names, ids } = table;
        let scores: Vec<f64> = names
            .iter()
            .map(|n| score_of(&defs, score_set, n))
            .collect();
        let multiple: Vec<bool> = names
            .iter()
            .map(|n| defs.rules.contains_key(n) && tflags(&defs, n).multiple)
            .collect();
        let mut scored: Vec<String> = active
            .iter()
            .filter_map(|&i| names.get(i))
            .filter(|n| !n.starts_with("__"))
            .cloned()
            .collect();
        scored.sort();
        let nice: HashSet<String> = defs
            .tflags
            .keys()
            .filter(|n| tflags(&defs, n).nice)
            .cloned()
            .collect();
        report.rules = tests.len() + metas.len() + keyword_count;
        report.by_kind = by_kind;
        report.load_time = started.elapsed();
        RuleSet {
            report,
            names,
            ids,
            scores,
            descriptions: defs.describe,
            actions: defs.actions,
            scored,
            nice,
            tests,
            metas,
            sources: c.sources,
            keyword_sets,
            keyword_rules: keyword_count,
            multiple,
            literal_index,
        }
    }
}
