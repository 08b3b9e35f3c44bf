//! Checks over the whole loaded rule set, in the spirit of SpamAssassin's `--lint`: a
//! `score`, `describe`, `tflags` or `action` line for a name nothing defines is most likely a
//! typo (the score never counts), so it gets a warning with file:line and, when one is close,
//! the defined name that was probably meant.
//!
//! Defined means: a rule in the loaded files (a skipped one too: an eval test or a plugin's
//! rule is defined, mailwarden only does not run it), a rule in a false `if`/`ifplugin`
//! section (defined for a setup with that plugin or version), a symbol one of mailwarden's
//! checks sets ([`crate::filter::symbols`]), or one the caller names (block list symbols).

use std::collections::HashSet;

use super::Diagnostic;
use super::parse::Defs;

/// The diagnostic reason of these warnings.
pub const UNDEFINED: &str = "undefined rule";

/// Warns about every mention of a name that is not defined.
pub fn undefined_names(defs: &Defs, extra: &[String], warnings: &mut Vec<Diagnostic>) {
    let known = |name: &str| {
        defs.rules.contains_key(name)
            || defs.inactive.contains(name)
            || crate::filter::symbols::is_builtin(name)
            || extra.iter().any(|s| s == name)
    };
    let mut candidates: Option<Vec<&str>> = None;
    let mut reported: HashSet<(&str, &str, usize)> = HashSet::new();
    for m in &defs.mentions {
        if known(&m.name) || !reported.insert((&m.name, m.directive, m.loc.line)) {
            continue;
        }
        let candidates = candidates.get_or_insert_with(|| {
            let mut c: Vec<&str> = defs.rules.keys().map(String::as_str).collect();
            for s in crate::filter::symbols::builtin() {
                c.push(s);
            }
            c.extend(extra.iter().map(String::as_str));
            c
        });
        let hint = match closest(&m.name, candidates) {
            Some(near) => format!("; did you mean {near}?"),
            None => " (no rule defines it and no mailwarden check sets it)".to_string(),
        };
        warnings.push(Diagnostic {
            file: m.loc.file.as_ref().clone(),
            line: m.loc.line,
            rule: Some(m.name.clone()),
            reason: UNDEFINED.to_string(),
            message: format!("{} for undefined rule {}{hint}", m.directive, m.name),
        });
    }
}

/// The candidate nearest to `name` in edit distance (case ignored), if it is close enough
/// to be a typo of it: a third of the name's length in edits, at least 1 and at most 2.
fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let name = name.to_ascii_uppercase();
    let limit = (name.len() / 3).clamp(1, 2);
    candidates
        .iter()
        .filter(|c| c.len().abs_diff(name.len()) <= limit)
        .filter_map(|c| {
            let d = distance(name.as_bytes(), c.to_ascii_uppercase().as_bytes());
            (d <= limit).then_some((d, *c))
        })
        .min()
        .map(|(_, c)| c)
}

/// Levenshtein distance.
fn distance(a: &[u8], b: &[u8]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &x) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &y) in b.iter().enumerate() {
            let next = if x == y {
                diag
            } else {
                1 + diag.min(row[j]).min(row[j + 1])
            };
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::rules::{LoadOptions, RuleSet};

    fn warnings(text: &str, options: &LoadOptions) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("local.cf");
        std::fs::write(&p, text).expect("write");
        let set = match RuleSet::load(&[p], options) {
            Ok(set) => set,
            Err(r) => panic!("{:?}", r.errors),
        };
        set.report()
            .warnings
            .iter()
            .filter(|w| w.reason == UNDEFINED)
            .map(|w| {
                let s = w.to_string();
                s.rsplit_once("local.cf:")
                    .map_or(s.clone(), |(_, t)| format!("local.cf:{t}"))
            })
            .collect()
    }

    #[test]
    fn score_describe_tflags_action_for_unknown_names_warn() {
        let got = warnings(
            "body GTUBE_LIKE /x/\nscore GTUBE_LIKE 1\nscore GTUBE_LIKEE 2\n\
             describe NOTHING_LIKE_IT x\ntflags GTUBE_LKE nice\naction GTUBE_LIKE reject\n\
             score spf_pass 1\n",
            &LoadOptions::default(),
        );
        assert_eq!(
            got,
            [
                "local.cf:3: score for undefined rule GTUBE_LIKEE; did you mean GTUBE_LIKE?",
                "local.cf:4: describe for undefined rule NOTHING_LIKE_IT (no rule defines it and \
                 no mailwarden check sets it)",
                "local.cf:5: tflags for undefined rule GTUBE_LKE; did you mean GTUBE_LIKE?",
                "local.cf:7: score for undefined rule spf_pass; did you mean SPF_PASS?",
            ]
        );
    }

    /// Mailwarden's own symbols, the caller's, eval and plugin rules (skipped but defined)
    /// and rules of false sections are all defined.
    #[test]
    fn preset_skipped_and_inactive_names_are_defined() {
        let options = LoadOptions {
            symbols: vec!["RBL_ZEN".into()],
            ..LoadOptions::default()
        };
        let got = warnings(
            "score SPF_PASS -0.1\ndescribe DKIM_VALID ok\nscore BAYES_99 3\nscore ATT_BLOCKED_EXT 9\n\
             score RBL_ZEN 2\nbody EVAL_RULE eval:check_something()\nscore EVAL_RULE 1\n\
             askdns ASK_RULE example.org A 1\nscore ASK_RULE 1\n\
             ifplugin Mail::SpamAssassin::Plugin::Nope\nbody IN_PLUGIN /x/\nendif\n\
             score IN_PLUGIN 1\nif (version < 3.0)\nmeta OLD_META A\nendif\ntflags OLD_META net\n",
            &options,
        );
        assert!(got.is_empty(), "{got:#?}");
        let got = warnings("score RBL_ZEN 2\n", &LoadOptions::default());
        assert_eq!(got.len(), 1, "{got:?}");
    }

    #[test]
    fn typos_are_found_within_two_edits() {
        let c = ["GTUBE", "MISSING_DATE", "HTML_MESSAGE"];
        assert_eq!(closest("GTUBEE", &c), Some("GTUBE"));
        assert_eq!(closest("MISING_DATE", &c), Some("MISSING_DATE"));
        assert_eq!(closest("HTML_MSG", &c), None);
        assert_eq!(closest("AB", &["AC"]), Some("AC"));
        assert_eq!(closest("X", &["YZ"]), None);
        assert_eq!(distance(b"kitten", b"sitting"), 3);
    }
}
