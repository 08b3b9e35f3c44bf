//! Greylisting (RFC 6647): the first attempt of an unknown (client network, sender,
//! recipient) triplet gets `451 4.7.1`; a real MTA retries after a few minutes and passes,
//! most spam-sending software never comes back.
//!
//! The triplets live in the state store (`state::`), so every node behind the MX records
//! sees the same first attempt: a client deferred by node A passes on node B after the delay.
//! The check runs at RCPT (each recipient its own triplet) unless `min_score > 0`: then it
//! runs at end of data on the messages that score at least `min_score`, so only the doubtful
//! ones wait (rspamd's way) — the message is then received and deferred, and the retry is
//! scanned again.
//!
//! Never greylisted: trusted networks (`[auth] trusted_networks`), authenticated clients, and
//! the big senders of `[greylist] allowlist` when they authenticate (SPF pass for MAIL FROM;
//! at end of data also an aligned DKIM signature) — they retry from other addresses, which a
//! triplet cannot follow (RFC 6647 §4.1).

use std::sync::Arc;

use super::auth::{AuthResults, Authenticator};
use super::stage::{EnvelopeCheck, Stage, StageInput, StageResult};
use crate::config::{GreylistConfig, StateOnError};
use crate::envelope::ClientInfo;
use crate::metrics::metrics;
use crate::smtp::reply::{self, Reply};
use crate::state::{BoxFuture, GreyPolicy, State, Triplet};

/// The greylisting check.
pub struct Greylist {
    state: Arc<State>,
    config: GreylistConfig,
    policy: GreyPolicy,
    trusted: Vec<ipnet::IpNet>,
    /// `[greylist] allowlist`, lowercased, without trailing dots (normalised once).
    allowlist: Vec<String>,
    /// For the allowlist's SPF check at RCPT (none: the allowlist applies at end of data only).
    auth: Option<Arc<Authenticator>>,
}

/// What greylisting says about a message or recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not greylisted (`skipped` says why), or the triplets passed.
    Pass(&'static str),
    /// Deferred: the reply to give.
    Defer(Reply),
}

impl Greylist {
    pub fn new(
        state: Arc<State>,
        config: &GreylistConfig,
        trusted: Vec<ipnet::IpNet>,
        auth: Option<Arc<Authenticator>>,
    ) -> Greylist {
        Greylist {
            state,
            policy: GreyPolicy {
                delay: config.delay.0,
                retry_window: config.retry_window.0,
                auto_allow_after: config.auto_allow_after,
                allow_for: config.allow_for.0,
            },
            allowlist: config
                .allowlist
                .iter()
                .map(|a| a.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|a| !a.is_empty())
                .collect(),
            config: config.clone(),
            trusted,
            auth,
        }
    }

    /// Greylisting decided at end of data (`min_score > 0`) rather than at RCPT.
    pub fn after_data(&self) -> bool {
        self.config.min_score > 0.0
    }

    pub fn min_score(&self) -> f64 {
        self.config.min_score
    }

    /// The triplet of `sender` → `recipient` from `client`.
    pub fn triplet(&self, client: &ClientInfo, sender: &str, recipient: &str) -> Triplet {
        Triplet {
            net: crate::state::network_of(
                client.addr.ip(),
                self.config.ipv4_prefix,
                self.config.ipv6_prefix,
            ),
            sender: normalise_sender(sender),
            recipient: recipient.trim().to_ascii_lowercase(),
        }
    }

    /// Why this client is never greylisted, if it is not.
    fn exempt(&self, client: &ClientInfo) -> Option<&'static str> {
        if client.auth.is_some() {
            return Some("authenticated");
        }
        if crate::config::in_networks(&self.trusted, client.addr.ip()) {
            return Some("trusted");
        }
        None
    }

    /// The sender's domain is on the allowlist (itself or a parent).
    fn allowlisted_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.allowlist.iter().any(|a| in_domain(&domain, a))
    }

    /// At RCPT: an allowlisted sender whose MAIL FROM passes SPF.
    async fn allowlisted_by_spf(&self, client: &ClientInfo, sender: &str) -> bool {
        let (Some(auth), Some((_, domain))) = (&self.auth, sender.rsplit_once('@')) else {
            return false;
        };
        if !self.allowlisted_domain(domain) {
            return false;
        }
        auth.spf_mail_from_passes(
            client.addr.ip(),
            client.helo.as_deref().unwrap_or(""),
            sender,
        )
        .await
    }

    /// At end of data: an allowlisted sender that authenticated (SPF pass for MAIL FROM, or
    /// a passing DKIM signature of an allowlisted domain aligned with the From domain).
    pub fn allowlisted_by_auth(&self, sender: &str, auth: Option<&AuthResults>) -> bool {
        let Some(auth) = auth else { return false };
        let spf = auth.spf == Some("pass")
            && sender
                .rsplit_once('@')
                .is_some_and(|(_, d)| self.allowlisted_domain(d));
        let from = auth.dmarc_domain.to_ascii_lowercase();
        let dkim = auth.dkim.iter().any(|d| {
            let signer = d.domain.to_ascii_lowercase();
            d.result == "pass" && self.allowlisted_domain(&signer) && aligned(&signer, &from)
        });
        spf || dkim
    }

    /// Looks the triplets up (recording them) and answers for the whole set: deferred when
    /// any of them is. A store failure answers per `[state] on_error`.
    pub async fn decide(&self, triplets: &[Triplet]) -> Outcome {
        match self.state.greylist(triplets, &self.policy, false).await {
            Ok(answers) => {
                for a in &answers {
                    metrics().greylist.with_label_values(&[a.as_str()]).inc();
                }
                let wait = answers
                    .iter()
                    .filter_map(|a| match a {
                        crate::state::Grey::Deferred { retry_in, .. } => Some(*retry_in),
                        _ => None,
                    })
                    .max();
                match wait {
                    Some(wait) => Outcome::Defer(reply::greylisted(wait.as_secs().max(1))),
                    None => Outcome::Pass("passed"),
                }
            }
            Err(_) => match self.state.on_error() {
                StateOnError::Tempfail => {
                    metrics()
                        .greylist
                        .with_label_values(&["error_tempfail"])
                        .inc();
                    Outcome::Defer(reply::state_unavailable())
                }
                StateOnError::Accept => {
                    metrics()
                        .greylist
                        .with_label_values(&["error_accept"])
                        .inc();
                    Outcome::Pass("state store unavailable")
                }
            },
        }
    }

    /// For `scan --explain`: what the triplets' state is, without recording anything.
    pub async fn peek(&self, triplets: &[Triplet]) -> Result<Vec<crate::state::Grey>, String> {
        self.state
            .greylist(triplets, &self.policy, true)
            .await
            .map_err(|e| e.to_string())
    }

    /// The end-of-data decision for a message that scored `score` (`min_score > 0`).
    pub async fn at_end_of_data(
        &self,
        client: &ClientInfo,
        sender: &str,
        recipients: &[String],
        score: f64,
        auth: Option<&AuthResults>,
    ) -> Outcome {
        if score < self.config.min_score {
            return Outcome::Pass("below min_score");
        }
        if let Some(why) = self.exempt(client) {
            return Outcome::Pass(why);
        }
        if self.allowlisted_by_auth(sender, auth) {
            return Outcome::Pass("allowlisted sender");
        }
        let triplets: Vec<Triplet> = recipients
            .iter()
            .map(|r| self.triplet(client, sender, r))
            .collect();
        self.decide(&triplets).await
    }
}

impl EnvelopeCheck for Greylist {
    fn name(&self) -> &'static str {
        "greylist"
    }

    fn stages(&self) -> &'static [Stage] {
        &[Stage::Rcpt]
    }

    fn check<'a>(
        &'a self,
        _stage: Stage,
        input: &'a mut StageInput<'_>,
    ) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            let (Some(rcpt), false) = (input.rcpt, self.after_data()) else {
                return StageResult::Continue;
            };
            if self.exempt(input.client).is_some() {
                return StageResult::Continue;
            }
            let sender = input.mail_from.map_or("", |m| m.address.as_str());
            if self.allowlisted_by_spf(input.client, sender).await {
                return StageResult::Continue;
            }
            let triplet = self.triplet(input.client, sender, &rcpt.address);
            match self.decide(std::slice::from_ref(&triplet)).await {
                Outcome::Pass(_) => StageResult::Continue,
                Outcome::Defer(reply) => StageResult::TempFail(reply),
            }
        })
    }
}

/// `name` is `domain` or one of its subdomains (both lowercase, no trailing dot).
fn in_domain(name: &str, domain: &str) -> bool {
    name.strip_suffix(domain)
        .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
}

/// Relaxed DMARC alignment (RFC 7489 §3.1.1): the same organisational domain.
fn aligned(signer: &str, from: &str) -> bool {
    let org = |d: &str| psl::domain_str(d).unwrap_or(d).to_string();
    !from.is_empty() && org(signer) == org(from)
}

/// The sender as greylisting compares it: lowercased, the original address of an SRS
/// rewrite, without BATV (`prvs=`) tags, `+extensions` or the per-message numbers of VERP
/// bounce addresses (`bounce-12345-67@…` → `bounce-#-#@…`), so each retry of a newsletter
/// run is the same triplet.
pub fn normalise_sender(sender: &str) -> String {
    let sender = sender.trim().to_ascii_lowercase();
    let Some((local, domain)) = sender.rsplit_once('@') else {
        return sender;
    };
    let (local, domain) = match srs_original(local) {
        Some((l, d)) => (l, d),
        None => (local.to_string(), domain.to_string()),
    };
    let local = strip_batv(&local);
    let local = local.split('+').next().unwrap_or(local);
    let mut out = String::with_capacity(local.len() + domain.len() + 1);
    let mut in_digits = false;
    for c in local.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out.push('@');
    out.push_str(&domain);
    out
}

/// `SRS0=hash=tt=domain=local` (and SRS1's last hop) → (local, domain).
fn srs_original(local: &str) -> Option<(String, String)> {
    let rest = if let Some(r) = local.strip_prefix("srs0=").or(local.strip_prefix("srs0+")) {
        r
    } else if local.starts_with("srs1=") || local.starts_with("srs1+") {
        // SRS1=hash=forwarder==hash=tt=domain=local: the part after "==" is an SRS0 body.
        local.split_once("==")?.1
    } else {
        return None;
    };
    let mut parts = rest.splitn(4, '=');
    let (_hash, _tt) = (parts.next()?, parts.next()?);
    let (domain, local) = (parts.next()?, parts.next()?);
    (!domain.is_empty() && !local.is_empty()).then(|| (local.to_string(), domain.to_string()))
}

/// `prvs=tag=local` / `btv1==tag==local` (BATV) → `local`.
fn strip_batv(local: &str) -> &str {
    for prefix in ["prvs=", "msprvs1="] {
        if let Some(rest) = local.strip_prefix(prefix) {
            return rest.split_once('=').map_or(local, |(_, l)| l);
        }
    }
    if let Some(rest) = local.strip_prefix("btv1==") {
        return rest.split_once("==").map_or(local, |(_, l)| l);
    }
    local
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_domains_match_subdomains_and_dkim_aligns_by_organisation() {
        assert!(in_domain("mail.google.com", "google.com"));
        assert!(in_domain("google.com", "google.com"));
        assert!(!in_domain("notgoogle.com", "google.com"));
        assert!(aligned("bounce.example.co.uk", "news.example.co.uk"));
        assert!(!aligned("example.co.uk", "other.co.uk"));
        assert!(!aligned("example.org", ""));
    }

    #[test]
    fn senders_normalise_across_verp_srs_and_batv() {
        assert_eq!(normalise_sender("Alice@Example.ORG"), "alice@example.org");
        assert_eq!(
            normalise_sender("list-bounces+bob=example.com@lists.example.org"),
            "list-bounces@lists.example.org"
        );
        assert_eq!(
            normalise_sender("bounce-12345-678@news.example.com"),
            normalise_sender("bounce-99-1@news.example.com")
        );
        assert_eq!(
            normalise_sender("SRS0=HHH=TT=example.org=alice@forwarder.example"),
            "alice@example.org"
        );
        assert_eq!(
            normalise_sender("SRS1=X=fwd.example==HHH=TT=example.org=alice@other.example"),
            "alice@example.org"
        );
        assert_eq!(
            normalise_sender("prvs=1234abcd=alice@example.org"),
            normalise_sender("prvs=9999ffff=alice@example.org")
        );
        assert_eq!(normalise_sender(""), "");
    }
}
