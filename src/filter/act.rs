//! The act step: what is done about a verdict, the same way for every front end.
//!
//! [`Filter::evaluate`](super::Filter::evaluate) decides and changes nothing; [`Filter::act`]
//! carries the decision out — a quarantine copy (ours, or the MTA's hold queue when a milter
//! asks for it), autolearning, the scan's metrics — and tells the front end what to do
//! with the message ([`Action`]). The front end then answers its client (an SMTP reply,
//! SMFIR_* packets) and writes the transaction's one log line with
//! [`record::transaction`](super::record::transaction).

use super::Filter;
use super::clamav;
use super::classifier;
use super::quarantine::Quarantine;
use super::record;
use super::verdict::Verdict;
use crate::config::Action as PolicyAction;
use crate::envelope::Envelope;
use crate::smtp::reply::{self, Reply};

/// What the front end does with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Let it through with the verdict's header changes (relay it, or tell the MTA to go on).
    Accept,
    /// Refuse it permanently with this 5xx reply; the upstream never sees it.
    Reject(Reply),
    /// Refuse it for now with this 4xx reply; the client retries later.
    TempFail(Reply),
    /// The filter kept it (quarantine) or dropped it (discard), durably: give this 2xx reply
    /// and relay nothing.
    Drop(Reply),
    /// Let the MTA keep it in its hold queue (milter: SMFIR_QUARANTINE) with this reason.
    Hold(String),
}

/// Who keeps a quarantined message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keeper {
    /// Our `[policy] quarantine_dir` (the proxy, which relays the message itself).
    Filter,
    /// The MTA's hold queue (the milter: Postfix `hold`, `postqueue -p` shows it).
    Mta,
}

impl Filter {
    /// Carries out `verdict` for the message: keeps a quarantine copy where the policy asks
    /// for one, queues autolearning, counts the scan; returns what the front end does. A
    /// quarantine that cannot be written defers the message (4xx) rather than lose it; the
    /// verdict's findings then say "tempfail".
    pub async fn act(
        &self,
        envelope: &Envelope,
        message: &[u8],
        verdict: &mut Verdict,
        keeper: Keeper,
    ) -> Action {
        self.greylist_after_data(envelope, verdict).await;
        self.autolearn(verdict, message);
        let action = match verdict.action {
            PolicyAction::Accept | PolicyAction::Tag => Action::Accept,
            PolicyAction::Reject => {
                if let Err(e) = self.quarantine_copy(envelope, message, verdict).await {
                    tracing::warn!(id = %envelope.id, error = %e, "could not keep a copy of the rejected message");
                }
                Action::Reject(verdict.reply.clone().unwrap_or_else(reply::local_error))
            }
            PolicyAction::Tempfail => {
                Action::TempFail(verdict.reply.clone().unwrap_or_else(reply::local_error))
            }
            PolicyAction::Quarantine if keeper == Keeper::Mta => {
                Action::Hold(format!("mailwarden: {}", verdict.scan.decision.reason))
            }
            PolicyAction::Quarantine => {
                match self.quarantine_copy(envelope, message, verdict).await {
                    Ok(true) => Action::Drop(reply::accepted(&envelope.id)),
                    Ok(false) | Err(_) => {
                        tracing::error!(id = %envelope.id, "quarantine unavailable; message deferred");
                        verdict.findings.action = "tempfail";
                        Action::TempFail(reply::local_error())
                    }
                }
            }
            PolicyAction::Discard => Action::Drop(reply::accepted(&envelope.id)),
        };
        let c = &verdict.checks;
        record::count(
            &verdict.findings,
            c.auth.as_ref(),
            &c.dnsbl,
            &c.uribl,
            c.av.as_ref().map(|(o, _)| o),
            verdict.av_failure_handling,
        );
        action
    }

    /// Score-based greylisting (`[greylist] min_score > 0`): a message that would go on but
    /// scored at least `min_score` is deferred the first time its triplets are seen. Decided
    /// here, not in `evaluate`, because it records the triplets (a side effect).
    async fn greylist_after_data(&self, envelope: &Envelope, verdict: &mut Verdict) {
        let Some(g) = self.greylist.as_ref().filter(|g| g.after_data()) else {
            return;
        };
        if !matches!(
            verdict.action,
            PolicyAction::Accept | PolicyAction::Tag | PolicyAction::Quarantine
        ) {
            return;
        }
        let recipients: Vec<String> = envelope
            .recipients
            .iter()
            .map(|r| r.address.clone())
            .collect();
        let outcome = g
            .at_end_of_data(
                &envelope.client,
                &envelope.mail_from.address,
                &recipients,
                verdict.scan.score,
                verdict.checks.auth.as_ref(),
            )
            .await;
        if let super::greylist::Outcome::Defer(reply) = outcome {
            verdict.action = PolicyAction::Tempfail;
            verdict.summary = format!(
                "action=tempfail greylisted (score {:.1} >= min_score {:.1}); {}",
                verdict.scan.score,
                g.min_score(),
                verdict.summary
            );
            verdict.findings.action = "tempfail";
            verdict.headers.clear();
            verdict.reply = Some(reply);
        }
    }

    /// Queues a scanned message for autolearning when its score is clearly spam or ham, after
    /// the sender and virus policies had their say. Never for a virus, a list hit (no vote
    /// then) or a deferred message (it comes again).
    fn autolearn(&self, verdict: &Verdict, message: &[u8]) {
        let scan = &verdict.scan;
        let (Some(c), Some(vote)) = (&self.classifier, &scan.classifier) else {
            return;
        };
        let av = verdict.checks.av.as_ref().map(|(o, _)| o);
        if matches!(vote.answer, classifier::Answer::Failed(_))
            || av.and_then(clamav::Outcome::virus).is_some()
            || scan.decision.action == PolicyAction::Tempfail
            || verdict.action == PolicyAction::Tempfail
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

    /// Keeps a copy in the quarantine directory, if one is configured. Ok(false): none is.
    async fn quarantine_copy(
        &self,
        envelope: &Envelope,
        message: &[u8],
        verdict: &Verdict,
    ) -> std::io::Result<bool> {
        let Some(q) = &self.quarantine else {
            return Ok(false);
        };
        let dir = q.dir().to_path_buf();
        let (envelope, message, scan) = (envelope.clone(), message.to_vec(), verdict.scan.clone());
        tokio::task::spawn_blocking(move || Quarantine::new(&dir).store(&envelope, &message, &scan))
            .await
            .map_err(std::io::Error::other)?
            .map(|path| {
                tracing::info!(file = %path.display(), "message kept in quarantine");
                true
            })
    }
}
