//! `mailwarden rules check [--config F] [PATH...]`: compiles the rule files as the proxy
//! would and prints every error and warning with file:line, then a summary. Exit 1 on any
//! error, so it can guard a deployment (`mailwarden rules check && systemctl reload ...`).

use std::path::PathBuf;

use crate::filter::rules::{LoadOptions, LoadReport, RuleSet};

/// Runs the check; returns the process exit code.
pub fn check(config: Option<&std::path::Path>, paths: &[PathBuf], verbose: bool) -> u8 {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mailwarden: configuration error: {e}");
            return 2;
        }
    };
    let paths = if paths.is_empty() {
        config.rules.paths.clone()
    } else {
        paths.to_vec()
    };
    let options = LoadOptions {
        score_set: config.rules.score_set,
        symbols: crate::filter::symbols::from_config(&config),
        ..LoadOptions::default()
    };
    let started = std::time::Instant::now();
    let (report, ok) = match RuleSet::load(&paths, &options) {
        Ok(set) => (set.report().clone(), true),
        Err(report) => (report, false),
    };
    print_report(&report, verbose);
    println!(
        "{} file(s), {} rule(s) loaded, {} skipped, {} warning(s), {} error(s) in {:.0} ms",
        report.files,
        report.rules,
        report.skipped.len(),
        report.warnings.len(),
        report.errors.len(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    if ok && report.errors.is_empty() { 0 } else { 1 }
}

fn print_report(report: &LoadReport, verbose: bool) {
    for e in &report.errors {
        println!("error: {e}");
    }
    for w in &report.warnings {
        println!("warning: {w}");
    }
    if verbose {
        for s in &report.skipped {
            println!("skipped: {s}");
        }
    }
    if !report.by_kind.is_empty() {
        let kinds: Vec<String> = report
            .by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("rules by kind: {}", kinds.join(", "));
    }
    let by_reason = report.skipped_by_reason();
    if !by_reason.is_empty() {
        let reasons: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
        println!(
            "skipped by reason: {}{}",
            reasons.join(", "),
            if verbose {
                ""
            } else {
                " (--verbose lists them)"
            }
        );
    }
}
