//! The end-of-data stage: every check that reads the message, and the policy, in one step
//! with no side effects, returning a [`Verdict`].
//!
//! Every front end — the SMTP proxy, the milter, `mailwarden scan` — calls
//! [`Filter::evaluate`] with the same [`Input`] and gets the same verdict for the same
//! message. What happens next (keeping a quarantine copy, autolearning, counting, the log
//! line, the client's reply) is the act step (`act.rs`), so evaluating a message never
//! changes anything.
//!
//! Order: sender authentication (SPF/DKIM/DMARC/ARC), the DNS block lists, the message parse
//! with the URI block lists, and clamd run at the same time; then the rules (off the async
//! threads, within `[rules] scan_timeout_ms`) and the score; then the sender policy (DMARC,
//! SPF fail, DNS tempfail) and last the virus policy, which overrides the score and the allow
//! list.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::auth::{AuthInput, AuthResults};
use super::blocklist::ListHit;
use super::engine::{SYMBOL_ALLOWLIST, Scan, ScanContext, Symbol};
use super::header_ops::{self, HeaderOp};
use super::headers::{self, HeaderEdits, SPAM_HEADERS};
use super::message::Message;
use super::rdns::ClientNames;
use super::record::{self, Findings, Timings};
use super::uribl::{self, Uribl};
use super::{Filter, clamav};
use crate::config::Action as PolicyAction;
use crate::envelope::Envelope;
use crate::smtp::reply::{self, Reply};

/// What the end-of-data checks know of the transaction besides the message.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Our id for the message (logs).
    pub id: String,
    /// The client's address; `None` for `scan` without `--ip` (then no DNS block list and,
    /// without a sender either, no sender authentication).
    pub ip: Option<IpAddr>,
    pub helo: Option<String>,
    /// The client's host names as the connect stage found them (`None`: not looked up, as
    /// for `scan`).
    pub client_names: Option<ClientNames>,
    /// The envelope sender (`""`: the null sender).
    pub from: String,
    pub recipients: Vec<String>,
    /// Keep the classifier's telling features (`scan --explain`).
    pub explain: bool,
}

impl Input {
    /// What the proxy and the milter know at end of data.
    pub fn from_envelope(envelope: &Envelope) -> Input {
        Input {
            id: envelope.id.clone(),
            ip: Some(envelope.client.addr.ip()),
            helo: envelope.client.helo.clone(),
            client_names: Some(envelope.client.names()),
            from: envelope.mail_from.address.clone(),
            recipients: envelope
                .recipients
                .iter()
                .map(|r| r.address.clone())
                .collect(),
            explain: false,
        }
    }
}

/// What the checks other than the rules found (inputs of the rules and of the policy).
#[derive(Debug, Clone, Default)]
pub struct Checks {
    pub auth: Option<AuthResults>,
    pub dnsbl: Vec<ListHit>,
    pub uribl: Vec<ListHit>,
    /// The virus scan's outcome and how long it took; `None` when `[clamav]` is off.
    pub av: Option<(clamav::Outcome, Duration)>,
}

/// The filter's decision for one message, before anything is done about it.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// accept, tag, reject, tempfail, quarantine or discard.
    pub action: PolicyAction,
    /// The reply a refusal (reject, tempfail) gives the client; `None` for the others.
    pub reply: Option<Reply>,
    /// Header changes for a message that goes on, against the message as received.
    pub headers: Vec<HeaderOp>,
    /// For the log line: action, score, the rules that hit.
    pub summary: String,
    /// What the filter found, for the log line and the metrics.
    pub findings: Findings,
    /// The rules' result: symbols, score, the policy decision.
    pub scan: Scan,
    pub checks: Checks,
    /// The virus scan failed and `[clamav] on_error` decided: "tempfail" or "accept".
    pub av_failure_handling: Option<&'static str>,
}

impl Verdict {
    /// A verdict without a scan: the checks could not run (a crashed scan task). Deferred.
    fn failed(reason: &str) -> Verdict {
        Verdict {
            action: PolicyAction::Tempfail,
            reply: Some(reply::local_error()),
            headers: Vec::new(),
            summary: format!("action=tempfail {reason}"),
            findings: Findings {
                action: "tempfail",
                ..Findings::default()
            },
            scan: Scan {
                symbols: Vec::new(),
                score: 0.0,
                decision: super::policy::Decision {
                    action: PolicyAction::Tempfail,
                    score: 0.0,
                    required: 0.0,
                    reason: reason.to_string(),
                    forced_by: Vec::new(),
                    subject_prefix: None,
                },
                timed_out: false,
                elapsed: Duration::ZERO,
                classifier: None,
            },
            checks: Checks::default(),
            av_failure_handling: None,
        }
    }
}

impl Filter {
    /// Runs every end-of-data check and the policy on `message`. No side effects: nothing is
    /// kept, learnt, counted or logged (see [`Filter::act`](super::Filter::act)).
    pub async fn evaluate(&self, input: &Input, message: &[u8]) -> Verdict {
        let started = Instant::now();
        let (checks, parsed, mut timings) = self.gather(input, message).await;
        let ctx = self.scan_context(input, &checks);
        let engine = self.engine();
        let budget = Duration::from_millis(self.rules_config.scan_timeout_ms);
        // Parsed already (for the URI block lists), or parsed in the scan task: never here.
        let parsed = parsed.ok_or_else(|| message.to_vec());
        let _slot = self.scan_slots.acquire().await;
        let scan = tokio::task::spawn_blocking(move || {
            let (parsed, reparse) = match parsed {
                Ok(parsed) => (parsed, None),
                Err(raw) => {
                    let (parsed, took) = timed_sync(|| Message::parse(raw));
                    (parsed, Some(took))
                }
            };
            (engine.scan_message(parsed, &ctx, budget), reparse)
        })
        .await;
        let scan = match scan {
            Ok((scan, reparse)) => {
                timings.parse = timings.parse.or(reparse);
                scan
            }
            Err(e) => {
                tracing::error!(id = %input.id, error = %e, "scan failed; message deferred");
                return Verdict::failed("scan-failed");
            }
        };
        timings.rules = Some(scan.elapsed);
        let mut verdict = self.decide(input, message, scan, checks);
        timings.total = started.elapsed();
        verdict.findings.timings = timings;
        verdict
    }

    /// The checks that run before the rules, all at once: sender authentication, the DNS
    /// block lists, the parse with the URI block lists, clamd. Returns them, the parsed
    /// message (`None` if the parse task failed) and their timings.
    async fn gather(&self, input: &Input, message: &[u8]) -> (Checks, Option<Message>, Timings) {
        let auth_fut = async {
            // Without a client address or a sender there is nothing to authenticate (`scan`).
            match &self.auth {
                Some(a) if input.ip.is_some() || !input.from.is_empty() => {
                    let auth_input = AuthInput {
                        ip: input.ip,
                        helo: input.helo.clone(),
                        mail_from: input.from.clone(),
                    };
                    Some(timed(a.check(&auth_input, message)).await)
                }
                _ => None,
            }
        };
        let dnsbl_fut = async {
            match (&self.dnsbl, input.ip) {
                (Some(d), Some(ip)) => Some(timed(d.check(ip)).await),
                _ => None,
            }
        };
        // Without URI block lists nothing needs the parse before the rules: the scan task
        // parses, one hand-off to the blocking pool instead of two.
        let parse_fut = async {
            match &self.uribl {
                Some(u) => self.parse_and_check_links(u, &input.id, message).await,
                None => (None, None),
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
            tokio::join!(auth_fut, dnsbl_fut, parse_fut, av_fut);
        let timings = Timings {
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
            ..Timings::default()
        };
        let checks = Checks {
            auth: auth.map(|(a, _)| a),
            dnsbl: dnsbl.map(|(h, _)| h).unwrap_or_default(),
            uribl: uribl.map(|(h, _)| h).unwrap_or_default(),
            av,
        };
        (checks, parsed.map(|(p, _)| p), timings)
    }

    /// Parses the message once, off the async threads (a 25 MB message takes a while), and
    /// asks the URI block lists about its links; the scan reuses the parse.
    #[allow(clippy::type_complexity)]
    async fn parse_and_check_links(
        &self,
        uribl: &Uribl,
        id: &str,
        message: &[u8],
    ) -> (
        Option<(Message, Duration)>,
        Option<(Vec<ListHit>, Duration)>,
    ) {
        let raw = message.to_vec();
        let parsed = tokio::task::spawn_blocking(move || {
            let (parsed, took) = timed_sync(|| Message::parse(raw));
            let domains = uribl::domains(parsed.uris());
            (parsed, took, domains)
        })
        .await;
        match parsed {
            Ok((parsed, took, domains)) => {
                let (hits, dns) = timed(uribl.check(&domains)).await;
                (Some((parsed, took)), Some((hits, dns)))
            }
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "message parse failed; links not checked, the scan parses again");
                (None, None)
            }
        }
    }

    /// What the rules see of the transaction and of the other checks.
    fn scan_context(&self, input: &Input, checks: &Checks) -> ScanContext {
        let mut ctx = ScanContext {
            ip: input.ip,
            helo: input.helo.clone(),
            from: input.from.clone(),
            recipients: input.recipients.clone(),
            classifier: self.classifier.clone(),
            explain: input.explain,
            ..ScanContext::default()
        };
        if let Some(a) = &checks.auth {
            ctx.preset = a.symbols.clone();
        }
        // A trusted relay's names say nothing about the sender.
        let trusted = self.is_trusted(input.ip);
        ctx.client_names = input.client_names.clone().filter(|_| !trusted);
        ctx.add_list_hits(&checks.dnsbl);
        ctx.add_list_hits(&checks.uribl);
        if let Some(name) = checks.av.as_ref().and_then(|(o, _)| o.symbol()) {
            ctx.preset.push(name.to_string());
        }
        ctx
    }

    /// The policy on top of the score: sender authentication, then the virus scan; the
    /// refusal's reply and the header changes.
    fn decide(&self, input: &Input, message: &[u8], mut scan: Scan, checks: Checks) -> Verdict {
        let auth_reply = checks
            .auth
            .as_ref()
            .and_then(|a| self.apply_auth_policy(&mut scan, a, input.ip));
        // The virus scan last: a virus overrides the score, the allow list and milder policies.
        let av_outcome = checks.av.as_ref().map(|(o, _)| o);
        let av = self.apply_clamav_policy(&mut scan, av_outcome);
        let names: Vec<String> = scan.hit_names().iter().map(|n| n.to_string()).collect();
        let d = &scan.decision;
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
        let reply = match d.action {
            PolicyAction::Reject => Some(av.reply.clone().or(auth_reply).unwrap_or_else(|| {
                Reply::new(
                    550,
                    "5.7.1",
                    self.refusal_text(&scan, "Message rejected as spam"),
                )
            })),
            PolicyAction::Tempfail => Some(av.reply.clone().or(auth_reply).unwrap_or_else(|| {
                Reply::new(
                    451,
                    "4.7.1",
                    self.refusal_text(&scan, "Message deferred by policy, try again later"),
                )
            })),
            _ => None,
        };
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut add = checks
            .auth
            .as_ref()
            .map(|a| a.headers.clone())
            .unwrap_or_default();
        add.extend(headers::spam_headers(d, &name_refs));
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
        let findings = Findings {
            action: d.action.as_str(),
            score: scan.score,
            rules: names,
            auth: checks
                .auth
                .as_ref()
                .map(record::auth_summary)
                .unwrap_or_default(),
            virus: av_outcome
                .and_then(clamav::Outcome::virus)
                .map(str::to_string),
            av: av_outcome.map(clamav::Outcome::metric_result),
            ..Findings::default()
        };
        let av_failure_handling = match (av_outcome, &self.clamav) {
            (Some(clamav::Outcome::Failed(_)), Some(scanner)) => {
                Some(match scanner.config().on_error {
                    crate::config::OnError::Tempfail => "tempfail",
                    crate::config::OnError::Accept => "accept",
                })
            }
            _ => None,
        };
        Verdict {
            action: scan.decision.action,
            reply,
            headers: header_ops::plan(message, &edits),
            summary,
            findings,
            scan,
            checks,
            av_failure_handling,
        }
    }

    /// What the sender learns of a refusal: which policy refused, never which rules (unless
    /// `[policy] reveal_rules`), nor what matched a list.
    fn refusal_text(&self, scan: &Scan, what: &str) -> String {
        let d = &scan.decision;
        let names = scan.hit_names();
        let listed = d.reason.starts_with("denylist");
        let mut text = if listed {
            "Message rejected by local policy (denylist)".to_string()
        } else if !d.forced_by.is_empty() && !self.policy_config.reveal_rules {
            format!("{what} (content policy)")
        } else {
            format!("{what} ({})", d.reason)
        };
        if self.policy_config.reveal_rules && !names.is_empty() {
            text.push_str(&format!("; rules: {}", names.join(",")));
        }
        text
    }

    /// Whether the client is in `[auth] trusted_networks` (a relay of ours, not the sender).
    fn is_trusted(&self, ip: Option<IpAddr>) -> bool {
        self.auth
            .as_ref()
            .zip(ip)
            .is_some_and(|(a, ip)| a.is_trusted(ip))
    }

    /// What the sender authentication results demand, stricter than the score's decision
    /// or not: (action, reply for a refusal, reason). Allowlisted mail is exempt.
    fn auth_policy(
        &self,
        auth: &AuthResults,
        ip: Option<IpAddr>,
    ) -> Option<(PolicyAction, Option<Reply>, String)> {
        let cfg = &self.auth_config;
        let trusted = self.is_trusted(ip);
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
    fn apply_auth_policy(
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
    fn apply_clamav_policy(
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
