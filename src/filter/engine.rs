//! The engine: the loaded rule set and policy, and the scan of one message with them.
//!
//! Blocking and CPU-bound: the filter calls it off the async reactor. It takes the symbols the
//! network checks set before it (sender authentication, block lists, the virus scan) as
//! presets, adds its own (attachments, malformed MIME), runs the rules within a time budget and
//! asks the policy for the action. Reloads build a new `Engine` and swap it in whole.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::attachments;
use super::blocklist::ListHit;
use super::classifier::{self, Classifier};
use super::message::Message;
use super::policy::{Decision, Policy};
use super::rdns::ClientNames;
use super::rules::{LoadOptions, RuleSet};
use crate::config::{Action as PolicyAction, AttachmentsConfig, PolicyConfig, RulesConfig};

/// One rule symbol that counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Symbol {
    pub name: String,
    pub score: f64,
    pub description: String,
}

/// The result of scanning one message.
#[derive(Debug, Clone)]
pub struct Scan {
    pub symbols: Vec<Symbol>,
    pub score: f64,
    pub decision: Decision,
    pub timed_out: bool,
    pub elapsed: Duration,
    /// The classifier's vote; `None` when it is off or did not run (allow/deny lists).
    pub classifier: Option<classifier::Outcome>,
}

impl Scan {
    pub fn symbols_json(&self) -> serde_json::Value {
        self.symbols
            .iter()
            .map(
                |s| json!({"name": s.name, "score": round2(s.score), "description": s.description}),
            )
            .collect()
    }

    pub fn hit_names(&self) -> Vec<&str> {
        self.symbols.iter().map(|s| s.name.as_str()).collect()
    }

    /// The score without the classifier's own symbols (what autolearn judges by, as in
    /// SpamAssassin: the classifier must not teach itself).
    pub fn score_without_classifier(&self) -> f64 {
        self.symbols
            .iter()
            .filter(|s| !classifier::SYMBOLS.contains(&s.name.as_str()))
            .map(|s| s.score)
            .sum::<f64>()
            + 0.0
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Who sent a message, as far as the policy cares, and the checks that run inside the scan.
#[derive(Clone, Default)]
pub struct ScanContext {
    pub ip: Option<IpAddr>,
    pub helo: Option<String>,
    pub from: String,
    pub recipients: Vec<String>,
    /// Symbols already set before the rules run (e.g. the sender authentication results).
    pub preset: Vec<String>,
    /// Scores for preset symbols given by the check that set them (e.g. a `[[dnsbl]]` or
    /// `[[uribl]]` list's `score`); they win over the rule files' score.
    pub preset_scores: HashMap<String, f64>,
    /// The learning classifier, when enabled: it votes before the rules run, so meta rules
    /// can use its `BAYES_*` symbols.
    pub classifier: Option<Arc<Classifier>>,
    /// Keep the classifier's telling features for `scan --explain`.
    pub explain: bool,
    /// The client's host names from the connect-time lookup (`filter::rdns`); `None` when
    /// not looked up (no client, loopback or a trusted network): then no `RDNS_*` symbol.
    pub client_names: Option<ClientNames>,
}

impl std::fmt::Debug for ScanContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanContext")
            .field("ip", &self.ip)
            .field("helo", &self.helo)
            .field("from", &self.from)
            .field("recipients", &self.recipients)
            .field("preset", &self.preset)
            .field("client_names", &self.client_names)
            .field("classifier", &self.classifier.is_some())
            .finish_non_exhaustive()
    }
}

impl ScanContext {
    /// Adds the DNS block list hits (`[[dnsbl]]`, `[[uribl]]`) as preset symbols with their
    /// configured scores.
    pub fn add_list_hits(&mut self, hits: &[ListHit]) {
        for hit in hits {
            if !self.preset.contains(&hit.symbol) {
                self.preset.push(hit.symbol.clone());
            }
            if let Some(score) = hit.score {
                self.preset_scores.insert(hit.symbol.clone(), score);
            }
        }
    }
}

/// Symbols the filter sets itself.
pub const SYMBOL_MIME_MALFORMED: &str = "MIME_MALFORMED";
pub const SYMBOL_SCAN_TIMEOUT: &str = "SCAN_TIMEOUT";
pub const SYMBOL_ALLOWLIST: &str = "MW_ALLOWLIST";
pub const SYMBOL_DENYLIST: &str = "MW_DENYLIST";

/// The swappable part: a compiled rule set and the policy with its lists.
pub struct Engine {
    pub rules: RuleSet,
    pub policy: Policy,
    /// `[attachments]`: what the attachment checks look for (their symbols are preset).
    pub attachments: AttachmentsConfig,
}

impl Engine {
    /// Loads rules and lists; errors are file:line lines for the admin.
    pub fn load(
        rules: &RulesConfig,
        policy: &PolicyConfig,
        attachments: &AttachmentsConfig,
    ) -> Result<Engine, Vec<String>> {
        let options = LoadOptions {
            score_set: rules.score_set,
            ..LoadOptions::default()
        };
        // The default `rules` directory may be absent (the binary run from elsewhere than
        // the source tree): then no rules run, loudly. A path the admin wrote must exist.
        let default_paths = RulesConfig::default().paths;
        let paths: Vec<PathBuf> = if rules.paths == default_paths
            && rules.paths.iter().all(|p| !p.exists())
        {
            tracing::warn!(
                "no rules loaded: the default rules directory ./rules does not exist here; set [rules] paths in the config (every message scores 0 until then)"
            );
            Vec::new()
        } else {
            rules.paths.clone()
        };
        let set = RuleSet::load(&paths, &options).map_err(|report| {
            report
                .errors
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
        })?;
        let policy = Policy::new(policy.clone()).map_err(|e| vec![e])?;
        Ok(Engine {
            rules: set,
            policy,
            attachments: attachments.clone(),
        })
    }

    /// Scans one message. Blocking (CPU-bound): call it off the async reactor.
    pub fn scan(&self, raw: Vec<u8>, ctx: &ScanContext, budget: Duration) -> Scan {
        self.scan_message(Message::parse(raw), ctx, budget)
    }

    /// Like [`scan`](Self::scan), for a message parsed already (e.g. for its links).
    pub fn scan_message(&self, message: Message, ctx: &ScanContext, budget: Duration) -> Scan {
        let started = Instant::now();
        let symbol = |name: &str| Symbol {
            name: name.to_string(),
            score: self.rules.score(name).unwrap_or(0.0),
            description: self.rules.description(name).unwrap_or_default().to_string(),
        };
        if let Some((action, reason)) = self.policy.check_lists(ctx.ip, &ctx.from) {
            let name = if action == PolicyAction::Accept {
                SYMBOL_ALLOWLIST
            } else {
                SYMBOL_DENYLIST
            };
            let decision = Decision {
                action,
                score: 0.0,
                required: self.policy.config.tag_score,
                reason,
                forced_by: Vec::new(),
                subject_prefix: None,
            };
            return Scan {
                symbols: vec![symbol(name)],
                score: 0.0,
                decision,
                timed_out: false,
                elapsed: started.elapsed(),
                classifier: None,
            };
        }
        let mut preset: Vec<&str> = ctx.preset.iter().map(String::as_str).collect();
        let vote = ctx
            .classifier
            .as_ref()
            .map(|c| c.classify(&message, ctx.explain));
        if let Some(vote) = &vote {
            preset.extend(vote.symbols());
        }
        if !message.problems().is_empty() {
            preset.push(SYMBOL_MIME_MALFORMED);
        }
        if let Some(name) = ctx.client_names.as_ref().and_then(super::rdns::symbol) {
            preset.push(name);
        }
        let found = attachments::analyse(&message, &self.attachments);
        if !found.details.is_empty() {
            tracing::debug!(findings = ?found.details, "attachment policy");
        }
        preset.extend(found.symbols.iter().copied());
        let evaluation = self.rules.evaluate_with(
            &message,
            &preset,
            &found.archive_names,
            Some(started + budget),
        );
        let mut symbols: Vec<Symbol> = evaluation
            .hits
            .iter()
            .map(|h| Symbol {
                name: h.name.clone(),
                score: ctx.preset_scores.get(&h.name).copied().unwrap_or(h.score),
                description: h.description.clone(),
            })
            .collect();
        if evaluation.timed_out {
            symbols.push(symbol(SYMBOL_SCAN_TIMEOUT));
        }
        // `+ 0.0` turns the empty sum (-0.0) into 0.0.
        let score = round2(symbols.iter().map(|s| s.score).sum::<f64>() + 0.0);
        let names: Vec<&str> = symbols.iter().map(|s| s.name.as_str()).collect();
        let decision = self
            .policy
            .decide_with(score, &names, &ctx.recipients, &|name| {
                self.rules.action(name)
            });
        let mut scan = Scan {
            symbols,
            score,
            decision,
            timed_out: evaluation.timed_out,
            elapsed: started.elapsed(),
            classifier: vote,
        };
        // A message autolearn may take: its digest now, on this (blocking) thread.
        let learnable = ctx
            .classifier
            .as_ref()
            .is_some_and(|c| c.autolearn_class(scan.score_without_classifier()).is_some());
        if let Some(vote) = scan.classifier.as_mut().filter(|_| learnable) {
            vote.digest = Some(classifier::digest(message.raw()));
        }
        scan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(cf: &str) -> Result<Engine, Vec<String>> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("local.cf"), cf).expect("write");
        let rules = RulesConfig {
            paths: vec![dir.path().to_path_buf()],
            ..RulesConfig::default()
        };
        Engine::load(
            &rules,
            &PolicyConfig::default(),
            &AttachmentsConfig::default(),
        )
    }

    #[test]
    fn rule_file_action_forces_the_verdict() {
        let e =
            engine("body MARK /zzqmarker/\nscore MARK 0.1\naction MARK reject\n").expect("load");
        let ctx = ScanContext::default();
        let budget = Duration::from_secs(5);
        let hit = e.scan(b"Subject: x\r\n\r\nzzqmarker\r\n".to_vec(), &ctx, budget);
        assert_eq!(hit.decision.action, PolicyAction::Reject);
        assert_eq!(hit.decision.forced_by, vec!["MARK".to_string()]);
        let miss = e.scan(b"Subject: x\r\n\r\nhello\r\n".to_vec(), &ctx, budget);
        assert_eq!(miss.decision.action, PolicyAction::Accept);
    }

    #[test]
    fn client_names_set_the_rdns_symbols_only_when_looked_up() {
        let e =
            engine("score RDNS_NONE 0.7\ndescribe RDNS_NONE no PTR\nscore RDNS_UNVERIFIED 0.2\n")
                .expect("load");
        let budget = Duration::from_secs(5);
        let raw = b"Subject: x\r\n\r\nhello\r\n";
        let names = |ctx: &ScanContext| {
            let scan = e.scan(raw.to_vec(), ctx, budget);
            (scan.hit_names().join(","), scan.score)
        };
        assert_eq!(names(&ScanContext::default()), (String::new(), 0.0));
        let mut ctx = ScanContext {
            client_names: Some(ClientNames::default()),
            ..ScanContext::default()
        };
        assert_eq!(names(&ctx), ("RDNS_NONE".to_string(), 0.7));
        ctx.client_names = Some(ClientNames {
            reverse_name: Some("ptr.example.test".into()),
            ..ClientNames::default()
        });
        assert_eq!(names(&ctx), ("RDNS_UNVERIFIED".to_string(), 0.2));
        ctx.client_names = Some(ClientNames {
            temporary: true,
            ..ClientNames::default()
        });
        assert_eq!(
            names(&ctx),
            (String::new(), 0.0),
            "a DNS failure is not the client's"
        );
        ctx.client_names = Some(ClientNames::localhost());
        assert_eq!(names(&ctx), (String::new(), 0.0));
    }

    #[test]
    fn unknown_action_word_is_an_error_with_file_and_line() {
        let errors = engine("body MARK /x/\n\naction MARK bounce\n")
            .err()
            .expect("error");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("local.cf:3:") && e.contains("bounce")),
            "{errors:?}"
        );
    }
}
