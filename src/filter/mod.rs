//! The filter: one verdict per message from the checks that look at it.
//!
//! The SMTP session hands over the envelope and the decoded message once the client has sent
//! its end of data, and relays nothing until the verdict is in. The session does not know what
//! a rule is, and the filter does not know what a socket is.
//!
//! A scan: allow/deny lists → parse the message once → rules (off the async reactor, within a
//! time budget) → score → policy → action and header edits. The rule set and policy live in
//! one `Engine` that reloads swap atomically; a scan keeps the engine it started with.
//! The clamd virus scan (`clamav`) runs alongside the sender checks and block lists; its
//! outcome is applied last, so a virus overrides the score and the allow list.

pub mod attachments;
pub mod auth;
pub mod blocklist;
pub mod clamav;
pub mod classifier;
pub mod dnsbl;
pub mod engine;
pub mod headers;
pub mod message;
pub mod policy;
pub mod quarantine;
pub mod rdns;
pub mod record;
pub mod reload;
pub mod rules;
pub mod symbols;
pub mod uribl;

pub use engine::{
    Engine, SYMBOL_ALLOWLIST, SYMBOL_DENYLIST, SYMBOL_MIME_MALFORMED, SYMBOL_SCAN_TIMEOUT, Scan,
    ScanContext, Symbol,
};

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::config::{Action as PolicyAction, AuthConfig, Config, PolicyConfig, RulesConfig};
use crate::envelope::Envelope;
use crate::smtp::reply::Reply;
use auth::{AuthInput, AuthResults, Authenticator};
use dnsbl::Dnsbl;
use headers::{HeaderEdits, SPAM_HEADERS};
use message::Message;
use quarantine::Quarantine;
use rules::{LoadReport, RuleSet};
use uribl::Uribl;

/// What the session does with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Relay it upstream with `Verdict::edits` applied.
    Accept,
    /// Refuse it permanently with this 5xx reply; the upstream never sees it.
    Reject(Reply),
    /// Refuse it for now with this 4xx reply; the client retries later.
    TempFail(Reply),
    /// The filter kept it (quarantine) or dropped it (discard), durably: give this 2xx reply
    /// and abort the upstream transaction.
    Drop(Reply),
}

/// The filter's decision for one message.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub action: Action,
    /// Header changes for a relayed message.
    pub edits: HeaderEdits,
    /// For the log line: action, score and the rules that hit.
    pub summary: String,
    /// What the filter found, for the per-message log line and the metrics.
    pub findings: record::Findings,
}

impl Verdict {
    pub fn accept() -> Verdict {
        Verdict {
            action: Action::Accept,
            edits: HeaderEdits::default(),
            summary: "action=accept".to_string(),
            findings: record::Findings {
                action: "accept",
                ..record::Findings::default()
            },
        }
    }
}

/// The state of the last (re)load, for logs, `/readyz` and metrics.
#[derive(Debug, Clone)]
pub struct LoadStatus {
    pub at: SystemTime,
    pub ok: bool,
    pub rules: usize,
    pub skipped: usize,
    pub errors: Vec<String>,
}

/// The configured checks, shared by all sessions.
pub struct Filter {
    engine: ArcSwap<Engine>,
    rules_config: RulesConfig,
    policy_config: PolicyConfig,
    quarantine: Option<Quarantine>,
    /// Sender authentication; `None` when `[auth] enabled = false`.
    auth: Option<Authenticator>,
    auth_config: AuthConfig,
    /// The `[[dnsbl]]` lists; `None` when there are none.
    dnsbl: Option<Dnsbl>,
    /// The `[[uribl]]` lists; `None` when there are none.
    uribl: Option<Uribl>,
    /// The clamd virus scanner; `None` when `[clamav] enabled = false`.
    clamav: Option<clamav::Scanner>,
    /// The learning classifier; `None` when off (attached by the caller, which decides
    /// whether its store may be created).
    classifier: Option<Arc<classifier::Classifier>>,
    /// Our authserv-id (`server.hostname`).
    hostname: String,
    /// Bounds concurrent scans to the CPU count, so a burst queues instead of thrashing.
    scan_slots: Semaphore,
    status: Mutex<LoadStatus>,
}

impl Filter {
    /// Loads the rules and lists named in the config; errors are fatal at start-up.
    pub fn load(config: &Config) -> Result<Filter, Vec<String>> {
        let engine = Engine::load(&config.rules, &config.policy, &config.attachments)?;
        let status = status_of(&engine.rules);
        let quarantine = (!config.policy.quarantine_dir.is_empty())
            .then(|| Quarantine::new(std::path::Path::new(&config.policy.quarantine_dir)));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let auth = if config.auth.enabled {
            Some(
                Authenticator::new(&config.dns, &config.auth, &config.server.hostname)
                    .map_err(|e| vec![e])?,
            )
        } else {
            None
        };
        // The block lists use the sender checks' resolver when they run (one cache), else
        // one of their own.
        let resolver = if config.dnsbl.is_empty() && config.uribl.is_empty() {
            None
        } else {
            Some(match &auth {
                Some(a) => a.resolver().clone(),
                None => auth::build_resolver(&config.dns)
                    .map_err(|e| vec![e])?
                    .resolver()
                    .clone(),
            })
        };
        let timeout = auth::lookup_timeout(&config.dns);
        let dnsbl = match &resolver {
            Some(resolver) if !config.dnsbl.is_empty() => {
                let trusted = config.auth.trusted_nets().map_err(|e| vec![e])?;
                Some(Dnsbl::new(
                    resolver.clone(),
                    timeout,
                    &config.dnsbl,
                    trusted,
                ))
            }
            _ => None,
        };
        let uribl = match &resolver {
            Some(resolver) if !config.uribl.is_empty() => {
                Some(Uribl::new(resolver.clone(), timeout, &config.uribl))
            }
            _ => None,
        };
        let clamav =
            clamav::Scanner::load(&config.clamav, quarantine.is_some()).map_err(|e| vec![e])?;
        Ok(Filter {
            engine: ArcSwap::from_pointee(engine),
            rules_config: config.rules.clone(),
            policy_config: config.policy.clone(),
            quarantine,
            auth,
            auth_config: config.auth.clone(),
            dnsbl,
            uribl,
            clamav,
            classifier: None,
            hostname: config.server.hostname.clone(),
            scan_slots: Semaphore::new(cpus),
            status: Mutex::new(status),
        })
    }

    /// The engine in use now.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.load_full()
    }

    pub fn status(&self) -> LoadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Files whose change should trigger a reload: rule paths and list files.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        let mut paths = self.rules_config.paths.clone();
        for list in [&self.policy_config.allowlist, &self.policy_config.denylist] {
            if !list.is_empty() {
                paths.push(PathBuf::from(list));
            }
        }
        paths
    }

    /// Rebuilds the engine from the files and swaps it in; on error the old one keeps
    /// running. Blocking.
    pub fn reload(&self) -> Result<LoadStatus, LoadStatus> {
        // `[attachments]` is not reloaded (the config file is read at start-up only).
        let result = Engine::load(
            &self.rules_config,
            &self.policy_config,
            &self.engine().attachments,
        );
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(engine) => {
                *status = status_of(&engine.rules);
                self.engine.store(Arc::new(engine));
                Ok(status.clone())
            }
            Err(errors) => {
                status.at = SystemTime::now();
                status.ok = false;
                status.errors = errors;
                Err(status.clone())
            }
        }
    }

    /// The sender authentication checks, if enabled.
    pub fn authenticator(&self) -> Option<&Authenticator> {
        self.auth.as_ref()
    }

    /// The DNS block lists, if any are configured.
    pub fn dnsbl(&self) -> Option<&Dnsbl> {
        self.dnsbl.as_ref()
    }

    /// The URI block lists, if any are configured.
    pub fn uribl(&self) -> Option<&Uribl> {
        self.uribl.as_ref()
    }

    /// The clamd virus scanner, if `[clamav]` is enabled.
    pub fn clamav(&self) -> Option<&clamav::Scanner> {
        self.clamav.as_ref()
    }

    /// Lets the classifier vote in every scan (and autolearn, when configured).
    pub fn attach_classifier(&mut self, classifier: Arc<classifier::Classifier>) {
        self.classifier = Some(classifier);
    }

    /// The learning classifier, if one is attached.
    pub fn classifier(&self) -> Option<&Arc<classifier::Classifier>> {
        self.classifier.as_ref()
    }

    /// Queues a scanned message for autolearning when its score is clearly spam or ham, after
    /// the sender and virus policies had their say. Never for a virus, a list hit (no vote
    /// then) or a deferred message (it comes again).
    fn autolearn(&self, scan: &Scan, message: &[u8], av: Option<&clamav::Outcome>) {
        let (Some(c), Some(vote)) = (&self.classifier, &scan.classifier) else {
            return;
        };
        if matches!(vote.answer, classifier::Answer::Failed(_))
            || av.and_then(clamav::Outcome::virus).is_some()
            || scan.decision.action == PolicyAction::Tempfail
            || scan.timed_out
        {
            return;
        }
        match c.autolearn_class(scan.score_without_classifier()) {
            // Ham only when it is let through as it is (not refused by DMARC, say).
            Some(classifier::Class::Ham) if scan.decision.action != PolicyAction::Accept => {}
            Some(class) => c.autolearn(vote.item(message, class)),
            None => {}
        }
    }

    /// Scans a message for the proxy and turns the decision into a verdict.
    pub async fn check(&self, envelope: &Envelope, message: &[u8]) -> Verdict {
        let started = Instant::now();
        // Sender authentication first (async DNS, each stage time-bounded); its results are
        // rule symbols for the scan.
        // The DNS block lists run at the same time, and so do the URI block lists on the
        // message's links (parsed once, off the async threads; the scan reuses the parse).
        let client_ip = envelope.client.addr.ip();
        let auth_fut = async {
            match &self.auth {
                Some(a) => {
                    let input = AuthInput {
                        ip: Some(client_ip),
                        helo: envelope.client.helo.clone(),
                        mail_from: envelope.mail_from.address.clone(),
                    };
                    Some(timed(a.check(&input, message)).await)
                }
                None => None,
            }
        };
        let dnsbl_fut = async {
            match &self.dnsbl {
                Some(d) => Some(timed(d.check(client_ip)).await),
                None => None,
            }
        };
        // The message is parsed once, off the async threads (a 25 MB message takes a while);
        // the URI block lists need its links, and the scan reuses the parse.
        let uribl_fut = async {
            let raw = message.to_vec();
            let want_links = self.uribl.is_some();
            let parsed = tokio::task::spawn_blocking(move || {
                let (parsed, took) = timed_sync(|| Message::parse(raw));
                let domains = if want_links {
                    uribl::domains(parsed.uris())
                } else {
                    Vec::new()
                };
                (parsed, took, domains)
            })
            .await;
            match (parsed, &self.uribl) {
                (Ok((parsed, took, domains)), Some(u)) => {
                    let (hits, dns) = timed(u.check(&domains)).await;
                    (Some((parsed, took)), Some((hits, dns)))
                }
                (Ok((parsed, took, _)), None) => (Some((parsed, took)), None),
                (Err(e), _) => {
                    tracing::warn!(id = %envelope.id, error = %e, "message parse failed; links not checked, the scan parses again");
                    (None, None)
                }
            }
        };
        // clamd gets the message as it will be relayed, at the same time.
        let av_fut = async {
            match &self.clamav {
                Some(scanner) => Some(timed(scanner.scan(message)).await),
                None => None,
            }
        };
        let (auth, dnsbl, (parsed, uribl), av) =
            tokio::join!(auth_fut, dnsbl_fut, uribl_fut, av_fut);
        let mut timings = record::Timings {
            auth: auth.as_ref().map(|(_, t)| *t),
            dns: match (&dnsbl, &uribl) {
                (None, None) => None,
                (a, b) => Some(
                    a.as_ref()
                        .map_or(Duration::ZERO, |(_, t)| *t)
                        .max(b.as_ref().map_or(Duration::ZERO, |(_, t)| *t)),
                ),
            },
            clamav: av.as_ref().map(|(_, t)| *t),
            parse: parsed.as_ref().map(|(_, t)| *t),
            ..record::Timings::default()
        };
        let auth = auth.map(|(a, _)| a);
        let dnsbl_hits = dnsbl.map(|(h, _)| h).unwrap_or_default();
        let uribl_hits = uribl.map(|(h, _)| h).unwrap_or_default();
        let av = av.map(|(o, _)| o);
        let parsed = parsed.map(|(p, _)| p);
        let mut ctx = ScanContext {
            ip: Some(envelope.client.addr.ip()),
            helo: envelope.client.helo.clone(),
            from: envelope.mail_from.address.clone(),
            recipients: envelope
                .recipients
                .iter()
                .map(|r| r.address.clone())
                .collect(),
            classifier: self.classifier.clone(),
            ..ScanContext::default()
        };
        if let Some(a) = &auth {
            ctx.preset = a.symbols.clone();
        }
        ctx.add_list_hits(&dnsbl_hits);
        ctx.add_list_hits(&uribl_hits);
        if let Some(name) = av.as_ref().and_then(clamav::Outcome::symbol) {
            ctx.preset.push(name.to_string());
        }
        let engine = self.engine();
        let budget = Duration::from_millis(self.rules_config.scan_timeout_ms);
        // Parsed already, or (when that task failed) parsed in the scan task: never here.
        let input = parsed.ok_or_else(|| message.to_vec());
        let _slot = self.scan_slots.acquire().await;
        let scan = match tokio::task::spawn_blocking(move || {
            let (parsed, reparse) = match input {
                Ok(parsed) => (parsed, None),
                Err(raw) => {
                    let (parsed, took) = timed_sync(|| Message::parse(raw));
                    (parsed, Some(took))
                }
            };
            (engine.scan_message(parsed, &ctx, budget), reparse)
        })
        .await
        {
            Ok((scan, reparse)) => {
                timings.parse = timings.parse.or(reparse);
                scan
            }
            Err(e) => {
                tracing::error!(id = %envelope.id, error = %e, "scan failed; message deferred");
                return Verdict {
                    action: Action::TempFail(crate::smtp::reply::local_error()),
                    edits: HeaderEdits::default(),
                    summary: "action=tempfail scan-failed".into(),
                    findings: record::Findings {
                        action: "tempfail",
                        ..record::Findings::default()
                    },
                };
            }
        };
        timings.rules = Some(scan.elapsed);
        let mut verdict = self
            .verdict(envelope, message, scan, auth.as_ref(), av.as_ref())
            .await;
        timings.total = started.elapsed();
        verdict.findings.timings = timings;
        verdict.findings.auth = auth.as_ref().map(record::auth_summary).unwrap_or_default();
        let av_failure_handling = match (&av, &self.clamav) {
            (Some(clamav::Outcome::Failed(_)), Some(scanner)) => {
                Some(match scanner.config().on_error {
                    crate::config::OnError::Tempfail => "tempfail",
                    crate::config::OnError::Accept => "accept",
                })
            }
            _ => None,
        };
        record::count(
            &verdict.findings,
            auth.as_ref(),
            &dnsbl_hits,
            &uribl_hits,
            av.as_ref(),
            av_failure_handling,
        );
        verdict
    }

    /// What the sender authentication results demand, stricter than the score's decision
    /// or not: (action, reply for a refusal, reason). Allowlisted mail is exempt.
    fn auth_policy(
        &self,
        auth: &AuthResults,
        ip: Option<IpAddr>,
    ) -> Option<(PolicyAction, Option<Reply>, String)> {
        let cfg = &self.auth_config;
        let trusted = self
            .auth
            .as_ref()
            .zip(ip)
            .is_some_and(|(a, ip)| a.is_trusted(ip));
        if cfg.tempfail_on_dns_error && (auth.spf_temperror || auth.dmarc_temperror) {
            let (enhanced, what) = if auth.spf_temperror {
                ("4.7.24", "SPF")
            } else {
                ("4.4.3", "DMARC")
            };
            return Some((
                PolicyAction::Tempfail,
                Some(Reply::new(
                    451,
                    enhanced,
                    format!("Temporary DNS error during the {what} check, try again later"),
                )),
                format!("{} temperror", what.to_ascii_lowercase()),
            ));
        }
        if cfg.dmarc_enforce && !trusted && auth.dmarc_reject() {
            return Some((
                PolicyAction::Reject,
                Some(Reply::new(
                    550,
                    "5.7.1",
                    format!(
                        "Message rejected: it fails the DMARC policy (p=reject) of {}",
                        auth.dmarc_domain
                    ),
                )),
                format!("dmarc reject {}", auth.dmarc_domain),
            ));
        }
        if cfg.spf_reject_fail && !trusted && auth.spf == Some("fail") {
            return Some((
                PolicyAction::Reject,
                Some(Reply::new(
                    550,
                    "5.7.23",
                    "Message rejected: SPF check of the sender failed",
                )),
                "spf fail".into(),
            ));
        }
        if cfg.dmarc_enforce && !trusted && auth.dmarc_quarantine() {
            let action = if self.quarantine.is_some() {
                PolicyAction::Quarantine
            } else {
                PolicyAction::Tag
            };
            return Some((
                action,
                None,
                format!("dmarc quarantine {}", auth.dmarc_domain),
            ));
        }
        None
    }

    /// Makes the scan's decision stricter where the authentication results demand it
    /// (DMARC reject/quarantine, SPF fail, DNS tempfail; never for allowlisted mail); returns
    /// the reply a refusal should get.
    pub fn apply_auth_policy(
        &self,
        scan: &mut Scan,
        auth: &AuthResults,
        ip: Option<IpAddr>,
    ) -> Option<Reply> {
        if scan.hit_names().contains(&SYMBOL_ALLOWLIST) {
            return None;
        }
        let (action, reply, reason) = self.auth_policy(auth, ip)?;
        if action <= scan.decision.action {
            return None;
        }
        scan.decision.action = action;
        scan.decision.reason = reason;
        if action == PolicyAction::Tag && scan.decision.subject_prefix.is_none() {
            let prefix = &self.policy_config.subject_prefix;
            scan.decision.subject_prefix = (!prefix.is_empty()).then(|| prefix.clone());
        }
        reply
    }

    /// Applies the virus scan's outcome to the scan's decision (`[clamav] on_virus` and
    /// `on_error`; the allow list does not exempt a virus) and returns what it adds to the
    /// verdict. Nothing when scanning is off.
    pub fn apply_clamav_policy(
        &self,
        scan: &mut Scan,
        outcome: Option<&clamav::Outcome>,
    ) -> clamav::Effect {
        let (Some(scanner), Some(outcome)) = (&self.clamav, outcome) else {
            return clamav::Effect::default();
        };
        let engine = self.engine();
        let symbol = |name: &str| Symbol {
            name: name.to_string(),
            score: engine.rules.score(name).unwrap_or(0.0),
            description: engine
                .rules
                .description(name)
                .unwrap_or_default()
                .to_string(),
        };
        scanner.apply(
            outcome,
            scan,
            self.quarantine.is_some(),
            &self.policy_config.subject_prefix,
            &symbol,
        )
    }

    async fn verdict(
        &self,
        envelope: &Envelope,
        message: &[u8],
        mut scan: Scan,
        auth: Option<&AuthResults>,
        av: Option<&clamav::Outcome>,
    ) -> Verdict {
        let auth_reply = auth
            .and_then(|a| self.apply_auth_policy(&mut scan, a, Some(envelope.client.addr.ip())));
        // The virus scan last: a virus overrides the score, the allow list and milder policies.
        let av_outcome = av;
        let av = self.apply_clamav_policy(&mut scan, av);
        self.autolearn(&scan, message, av_outcome);
        let reply = av.reply.clone().or(auth_reply);
        let d = &scan.decision;
        let names = scan.hit_names();
        let summary = format!(
            "action={} score={:.1} required={:.1} reason=\"{}\" tests={}{}",
            d.action.as_str(),
            scan.score,
            d.required,
            d.reason,
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(",")
            },
            if scan.timed_out { " scan-timeout" } else { "" }
        ) + &av.summary;
        // What the sender learns: which policy refused, never which rules (unless
        // `reveal_rules`), nor what matched a list.
        let refusal_text = |what: &str| {
            let listed = d.reason.starts_with("denylist");
            let what = if listed {
                "Message rejected by local policy"
            } else {
                what
            };
            let mut text = if listed {
                format!("{what} (denylist)")
            } else if !d.forced_by.is_empty() && !self.policy_config.reveal_rules {
                format!("{what} (content policy)")
            } else {
                format!("{what} ({})", d.reason)
            };
            if self.policy_config.reveal_rules && !names.is_empty() {
                text.push_str(&format!("; rules: {}", names.join(",")));
            }
            text
        };
        let mut action_word = d.action.as_str();
        let action = match d.action {
            PolicyAction::Accept | PolicyAction::Tag => Action::Accept,
            PolicyAction::Reject => {
                if let Err(e) = self.quarantine_copy(envelope, message, &scan).await {
                    tracing::warn!(id = %envelope.id, error = %e, "could not keep a copy of the rejected message");
                }
                Action::Reject(reply.clone().unwrap_or_else(|| {
                    Reply::new(550, "5.7.1", refusal_text("Message rejected as spam"))
                }))
            }
            PolicyAction::Tempfail => Action::TempFail(reply.clone().unwrap_or_else(|| {
                Reply::new(
                    451,
                    "4.7.1",
                    refusal_text("Message deferred by policy, try again later"),
                )
            })),
            PolicyAction::Quarantine => {
                match self.quarantine_copy(envelope, message, &scan).await {
                    Ok(true) => Action::Drop(crate::smtp::reply::accepted(&envelope.id)),
                    Ok(false) | Err(_) => {
                        tracing::error!(id = %envelope.id, "quarantine unavailable; message deferred");
                        action_word = "tempfail";
                        Action::TempFail(crate::smtp::reply::local_error())
                    }
                }
            }
            PolicyAction::Discard => Action::Drop(crate::smtp::reply::accepted(&envelope.id)),
        };
        let mut add = auth.map(|a| a.headers.clone()).unwrap_or_default();
        add.extend(headers::spam_headers(d, &names));
        add.extend(av.headers.iter().cloned());
        // Incoming X-Virus-* copies go when we scan (a sender must not forge a clean result).
        let av_headers: &[&str] = if self.clamav.is_some() {
            &clamav::AV_HEADERS
        } else {
            &[]
        };
        let edits = HeaderEdits {
            remove: SPAM_HEADERS
                .iter()
                .chain(av_headers)
                .map(|s| s.to_string())
                .collect(),
            add,
            subject_prefix: d.subject_prefix.clone(),
            remove_auth_results_for: self.auth.as_ref().map(|_| self.hostname.clone()),
        };
        let findings = record::Findings {
            action: action_word,
            score: scan.score,
            rules: names.iter().map(|n| n.to_string()).collect(),
            virus: av_outcome
                .and_then(clamav::Outcome::virus)
                .map(str::to_string),
            av: av_outcome.map(clamav::Outcome::metric_result),
            ..record::Findings::default()
        };
        Verdict {
            action,
            edits,
            summary,
            findings,
        }
    }

    /// Keeps a copy in the quarantine directory, if one is configured. Ok(false): none is.
    async fn quarantine_copy(
        &self,
        envelope: &Envelope,
        message: &[u8],
        scan: &Scan,
    ) -> std::io::Result<bool> {
        let Some(q) = &self.quarantine else {
            return Ok(false);
        };
        let dir = q.dir().to_path_buf();
        let (envelope, message, scan) = (envelope.clone(), message.to_vec(), scan.clone());
        tokio::task::spawn_blocking(move || Quarantine::new(&dir).store(&envelope, &message, &scan))
            .await
            .map_err(std::io::Error::other)?
            .map(|path| {
                tracing::info!(file = %path.display(), "message kept in quarantine");
                true
            })
    }
}

/// Runs `f` and measures it.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

/// Runs `f` and measures it (blocking work).
fn timed_sync<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    (out, started.elapsed())
}

fn status_of(rules: &RuleSet) -> LoadStatus {
    let report: &LoadReport = rules.report();
    LoadStatus {
        at: SystemTime::now(),
        ok: true,
        rules: report.rules,
        skipped: report.skipped.len(),
        errors: Vec::new(),
    }
}
