//! The filter: the one pipeline every front end drives, stage by stage.
//!
//! Front ends (the SMTP proxy, the milter, `mailwarden scan`) speak their protocol and call
//! the filter at each SMTP stage: connect, HELO, MAIL and each RCPT ([`stage`]: checks that
//! declare those stages may answer early), then end of data ([`verdict`]: every check that
//! reads the message and the policy, one step without side effects, returning a
//! [`Verdict`]). Acting on the verdict — quarantine, autolearning, metrics — is one separate
//! step ([`act`]), and every transaction ends with one log line ([`record`]). The front ends
//! do not know what a rule is, and the filter does not know what a socket is.
//!
//! At end of data: allow/deny lists → parse the message once → rules (off the async reactor,
//! within a time budget) → score → policy → action and header operations ([`header_ops`]).
//! The rule set and policy live in one `Engine` that reloads swap atomically; a scan keeps the
//! engine it started with. The clamd virus scan (`clamav`) runs alongside the sender checks
//! and block lists; its outcome is applied last, so a virus overrides the score and the allow
//! list.

pub mod act;
pub mod attachments;
pub mod auth;
pub mod blocklist;
pub mod clamav;
pub mod classifier;
pub mod dnsbl;
pub mod engine;
pub mod greylist;
pub mod header_ops;
pub mod headers;
pub mod message;
pub mod policy;
pub mod quarantine;
pub mod ratelimit;
pub mod rdns;
pub mod record;
pub mod reload;
pub mod rules;
pub mod stage;
#[cfg(test)]
mod state_checks_tests;
pub mod symbols;
pub mod uribl;
pub mod verdict;

pub use act::{Action, Keeper};
pub use stage::{Stage, StageResult};
pub use verdict::{Input, Verdict};

pub use engine::{
    Engine, SYMBOL_ALLOWLIST, SYMBOL_DENYLIST, SYMBOL_MIME_MALFORMED, SYMBOL_SCAN_TIMEOUT, Scan,
    ScanContext, Symbol,
};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::config::{AuthConfig, Config, PolicyConfig, RulesConfig};
use auth::Authenticator;
use dnsbl::Dnsbl;
use quarantine::Quarantine;
use rules::{LoadReport, RuleSet};
use stage::EnvelopeCheck;
use uribl::Uribl;

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
    auth: Option<Arc<Authenticator>>,
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
    /// The checks that run before the message (connect, HELO, MAIL, RCPT), in order.
    envelope_checks: Vec<Box<dyn EnvelopeCheck>>,
    /// Greylisting, when `[greylist]` is on and a state store is attached (also decides at
    /// end of data with `min_score > 0`, and answers `scan --explain`).
    greylist: Option<Arc<greylist::Greylist>>,
    /// The `[[ratelimit]]`s, when there are any and a state store is attached.
    ratelimit: Option<Arc<ratelimit::Ratelimit>>,
    /// The state store the two use (for `/readyz`).
    state: Option<Arc<crate::state::State>>,
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
            Some(Arc::new(
                Authenticator::new(&config.dns, &config.auth, &config.server.hostname)
                    .map_err(|e| vec![e])?,
            ))
        } else {
            None
        };
        // One resolver (one cache) for the sender checks, the block lists and the client
        // names: the sender checks' when they run.
        let lists = !config.dnsbl.is_empty() || !config.uribl.is_empty();
        let resolver = match &auth {
            Some(a) => Some(a.resolver().clone()),
            None if lists || config.dns.reverse_lookup => match auth::build_resolver(&config.dns) {
                Ok(a) => Some(a.resolver().clone()),
                // The block lists cannot run without one; the client names can (unknown).
                Err(e) if lists => return Err(vec![e]),
                Err(e) => {
                    tracing::warn!(error = %e, "client host names are not looked up (set [dns] nameservers, or [dns] reverse_lookup = false to silence this)");
                    None
                }
            },
            None => None,
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
        let mut envelope_checks: Vec<Box<dyn EnvelopeCheck>> = Vec::new();
        if config.dns.reverse_lookup
            && let Some(resolver) = &resolver
        {
            envelope_checks.push(Box::new(rdns::Rdns::new(resolver.clone(), timeout)));
        }
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
            envelope_checks,
            greylist: None,
            ratelimit: None,
            state: None,
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
        self.auth.as_deref()
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

    /// Whether the config has checks that need the state store (greylisting, rate limits).
    pub fn needs_state(config: &Config) -> bool {
        config.greylist.enabled || !config.ratelimit.is_empty()
    }

    /// Turns on greylisting and the rate limits of `config` on `state`, after the checks
    /// loaded with the filter: greylisting first, so a deferred first attempt (which comes
    /// again) costs no rate-limit tokens.
    pub fn attach_state(&mut self, state: Arc<crate::state::State>, config: &Config) {
        let prefixes = (config.greylist.ipv4_prefix, config.greylist.ipv6_prefix);
        if config.greylist.enabled {
            let trusted = config.auth.trusted_nets().unwrap_or_default();
            let g = Arc::new(greylist::Greylist::new(
                state.clone(),
                &config.greylist,
                trusted,
                self.auth.clone(),
            ));
            self.envelope_checks.push(Box::new(g.clone()));
            self.greylist = Some(g);
        }
        if !config.ratelimit.is_empty() {
            let r = Arc::new(ratelimit::Ratelimit::new(
                state.clone(),
                &config.ratelimit,
                prefixes,
            ));
            self.envelope_checks.push(Box::new(r.clone()));
            self.ratelimit = Some(r);
        }
        self.state = Some(state);
    }

    /// The state store, if one is attached.
    pub fn state(&self) -> Option<&Arc<crate::state::State>> {
        self.state.as_ref()
    }

    pub fn greylist(&self) -> Option<&Arc<greylist::Greylist>> {
        self.greylist.as_ref()
    }

    pub fn ratelimit(&self) -> Option<&Arc<ratelimit::Ratelimit>> {
        self.ratelimit.as_ref()
    }

    /// The learning classifier, if one is attached.
    pub fn classifier(&self) -> Option<&Arc<classifier::Classifier>> {
        self.classifier.as_ref()
    }
}

/// Opens the configured state store with its metrics wired (what `serve` and `scan` use).
pub fn open_state(
    config: &crate::config::StateConfig,
) -> Result<crate::state::State, crate::state::StateError> {
    crate::state::State::open(config, state_hooks())
}

/// The hooks through which the state layer feeds the metrics (it sits below them).
fn state_hooks() -> crate::state::Hooks {
    use crate::metrics::metrics;
    crate::state::Hooks {
        error: |op, kind| metrics().state_errors.with_label_values(&[op, kind]).inc(),
        timing: |op, secs| {
            metrics()
                .state_duration
                .with_label_values(&[op])
                .observe(secs)
        },
        up: |up| metrics().state_up.set(i64::from(up)),
    }
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
