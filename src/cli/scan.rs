//! `mailwarden scan [--json] [--explain] [--ip A --helo H --from S --rcpt R] FILE... | -`:
//! the verdict the proxy would give each message, without sending anything anywhere (rate
//! limits and greylisting are shown as they stand, never consumed or recorded).
//!
//! Exit code: 0 all accepted, 1 some tagged, 2 some refused (reject, tempfail, quarantine,
//! discard), 3 an error (unreadable file, broken rules).

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::config::Action;
use std::sync::Arc;

use crate::filter::auth::AuthResults;
use crate::filter::clamav::Outcome;
use crate::filter::classifier::{Answer, Classifier};
use crate::filter::{Filter, Input, Scan};

/// Options of one `scan` run (also its command line).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ScanOptions {
    /// Configuration file (default: mailwarden.toml if present, else built-in defaults).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// One JSON object per message.
    #[arg(long)]
    pub json: bool,
    /// List every rule that hit, with score and description.
    #[arg(long)]
    pub explain: bool,
    /// Client IP address (for allow/deny lists and sender checks).
    #[arg(long)]
    pub ip: Option<IpAddr>,
    /// Client HELO name.
    #[arg(long)]
    pub helo: Option<String>,
    /// Envelope sender (MAIL FROM).
    #[arg(long)]
    pub from: Option<String>,
    /// Envelope recipient (RCPT TO); repeat for several. Chooses per-domain policy.
    #[arg(long)]
    pub rcpt: Vec<String>,
    /// Message files; "-" reads standard input.
    pub files: Vec<PathBuf>,
}

/// Runs the scan; returns the process exit code.
pub fn run(opts: &ScanOptions) -> u8 {
    let config = match super::load_config(opts.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mailwarden: configuration error: {e}");
            return 3;
        }
    };
    let mut filter = match Filter::load(&config) {
        Ok(filter) => filter,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "mailwarden: the rules or the resolver do not load; `mailwarden rules check` shows all rule problems"
            );
            return 3;
        }
    };
    // The classifier votes when its store exists (scan never creates one).
    if config.classifier.enabled {
        match Classifier::open_existing_with(&config.classifier, &config.state) {
            Ok(Some(c)) => filter.attach_classifier(Arc::new(c)),
            Ok(None) => {}
            Err(e) => {
                eprintln!("mailwarden: {e}");
                return 3;
            }
        }
    }
    // Greylisting and rate limits: shown (read only) with --explain and --json.
    let state_note = if opts.explain || opts.json {
        match super::state_explain::attach(&config, &mut filter) {
            Ok(note) => note,
            Err(e) => {
                eprintln!("mailwarden: {e}");
                return 3;
            }
        }
    } else {
        None
    };
    // The sender checks are async (DNS): a small runtime of their own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mailwarden: cannot start the async runtime: {e}");
            return 3;
        }
    };
    // The same input the proxy and the milter give the pipeline at end of data.
    let input = Input {
        id: "scan".to_string(),
        ip: opts.ip,
        helo: opts.helo.clone(),
        from: opts.from.clone().unwrap_or_default(),
        recipients: opts.rcpt.clone(),
        explain: opts.explain,
        ..Input::default()
    };
    let files = if opts.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        opts.files.clone()
    };
    let mut code = 0u8;
    for file in &files {
        let raw = match read(file) {
            Ok(raw) => raw,
            Err(e) => {
                eprintln!("mailwarden: {}: {e}", file.display());
                code = 3;
                continue;
            }
        };
        // The sender checks need an envelope: they run when --ip or --from is given.
        let verdict = runtime.block_on(filter.evaluate(&input, &raw));
        let (scan, checks) = (&verdict.scan, &verdict.checks);
        let (auth, dnsbl_hits, uribl_hits, av) = (
            checks.auth.as_ref(),
            &checks.dnsbl,
            &checks.uribl,
            checks.av.as_ref(),
        );
        let name = file.display().to_string();
        let (state_lines, state_json) = runtime.block_on(super::state_explain::report(
            &filter,
            opts.ip,
            opts.helo.as_deref(),
            &input.from,
            &opts.rcpt,
        ));
        if opts.json {
            let mut value = to_json(&name, scan);
            if let Some(obj) = value.as_object_mut() {
                if let Some(a) = auth {
                    obj.insert("auth".into(), a.to_json());
                }
                if filter.dnsbl().is_some() && opts.ip.is_some() {
                    let hits: Vec<_> = dnsbl_hits.iter().map(|h| h.to_json()).collect();
                    obj.insert("dnsbl".into(), hits.into());
                }
                if filter.uribl().is_some() {
                    let hits: Vec<_> = uribl_hits.iter().map(|h| h.to_uribl_json()).collect();
                    obj.insert("uribl".into(), hits.into());
                }
                insert_av(obj, av);
                let vote = scan
                    .classifier
                    .as_ref()
                    .map_or(serde_json::Value::Null, |c| c.to_json());
                obj.insert("classifier".into(), vote);
                obj.extend(state_json);
            }
            println!("{value}");
        } else {
            print_human(&name, scan, opts.explain, auth);
            if opts.explain {
                print_classifier(
                    scan,
                    filter.classifier().is_some(),
                    config.classifier.enabled,
                );
            }
            print_av(av, opts.explain);
            if opts.explain {
                for line in state_note.iter().chain(&state_lines) {
                    println!("{line}");
                }
            }
        }
        code = code.max(exit_code(scan.decision.action));
    }
    code
}

fn read(file: &Path) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    if file == Path::new("-") {
        std::io::stdin().read_to_end(&mut raw)?;
    } else {
        raw = std::fs::read(file)?;
    }
    Ok(raw)
}

fn exit_code(action: Action) -> u8 {
    match action {
        Action::Accept => 0,
        Action::Tag => 1,
        _ => 2,
    }
}

/// One JSON object per message (the fields external tools rely on: file, action, score,
/// required, symbols[name, score, description]).
pub fn to_json(file: &str, scan: &Scan) -> serde_json::Value {
    json!({
        "file": file,
        "action": scan.decision.action.as_str(),
        "score": scan.score,
        "required": scan.decision.required,
        "reason": scan.decision.reason,
        "timed_out": scan.timed_out,
        "elapsed_ms": (scan.elapsed.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
        "symbols": scan.symbols_json(),
    })
}

/// `"virus"`: the signature name or null; `"av"`: clean, found, failed, skipped or disabled
/// (`[clamav] enabled = false`); `"av_elapsed_ms"` when clamd was asked.
fn insert_av(
    obj: &mut serde_json::Map<String, serde_json::Value>,
    av: Option<&(Outcome, Duration)>,
) {
    let virus = av.and_then(|(o, _)| o.virus());
    obj.insert("virus".into(), virus.into());
    let status = av.map_or("disabled", |(o, _)| o.status());
    obj.insert("av".into(), status.into());
    if let Some((outcome, elapsed)) = av {
        obj.insert("av_elapsed_ms".into(), json!(ms(*elapsed)));
        if let Outcome::Failed(failure) = outcome {
            obj.insert("av_error".into(), failure.reason.as_str().into());
        }
    }
}

fn print_av(av: Option<&(Outcome, Duration)>, explain: bool) {
    let Some((outcome, elapsed)) = av else {
        if explain {
            println!("  virus scan: disabled ([clamav] enabled = false)");
        }
        return;
    };
    let what = match outcome {
        Outcome::Clean => "clean".to_string(),
        Outcome::Virus(name) => format!("virus={name}"),
        Outcome::Skipped(size) => format!("skipped ({size} bytes > clamav.max_size)"),
        Outcome::Failed(reason) => format!("failed: {reason}"),
    };
    if explain {
        println!("  virus scan: {what} in {:.1} ms", ms(*elapsed));
    } else if !matches!(outcome, Outcome::Clean) {
        println!("  {what}");
    }
}

/// `--explain`: the classifier's probability and the features that weighed most.
fn print_classifier(scan: &Scan, attached: bool, enabled: bool) {
    let Some(vote) = &scan.classifier else {
        if !enabled {
            println!("  classifier: disabled ([classifier] enabled = false)");
        } else if !attached {
            println!("  classifier: no model yet (train it with `mailwarden learn`)");
        }
        return;
    };
    match &vote.answer {
        Answer::Untrained { spam, ham } => println!(
            "  classifier: not voting yet ({spam} spam, {ham} ham learned; [classifier] min_learns of each needed)"
        ),
        Answer::Failed(e) => println!("  classifier: failed ({e})"),
        Answer::Scored {
            probability,
            symbols,
        } => {
            println!(
                "  classifier: probability {probability:.4} ({})",
                symbols.join(", ")
            );
            for (text, p) in &vote.clues {
                let leaning = if *p >= 0.5 { "spam" } else { "ham" };
                println!("    {p:.3} {leaning:<4}  {text}");
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

fn print_human(file: &str, scan: &Scan, explain: bool, auth: Option<&AuthResults>) {
    let d = &scan.decision;
    println!(
        "{file}: {} score={:.1} required={:.1} ({}){}",
        d.action.as_str(),
        scan.score,
        d.required,
        d.reason,
        if scan.timed_out {
            " [scan timed out]"
        } else {
            ""
        }
    );
    if explain {
        let mut symbols = scan.symbols.clone();
        symbols.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.name.cmp(&b.name)));
        for s in &symbols {
            println!("  {:>6.2}  {:<28} {}", s.score, s.name, s.description);
        }
        if let Some(a) = auth {
            for h in &a.headers {
                println!("  {}", h.replace("\r\n\t", "\n      "));
            }
            println!(
                "  sender checks in {:.1} ms",
                a.elapsed.as_secs_f64() * 1000.0
            );
        }
        println!("  scanned in {:.1} ms", scan.elapsed.as_secs_f64() * 1000.0);
    } else if !scan.symbols.is_empty() {
        println!("  tests={}", scan.hit_names().join(","));
    }
}
