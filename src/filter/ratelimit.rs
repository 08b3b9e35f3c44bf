//! Rate limits (`[[ratelimit]]`): token buckets per client, HELO name, sender, recipient or
//! authenticated user, shared by every node through the state store.
//!
//! Each limit is answered at the earliest stage that knows its key and what it counts: a
//! message-counted limit on the client, HELO, sender or user at MAIL (the start of a
//! message); a recipient-counted limit, or one keyed on the recipient, at each RCPT. A
//! message-counted limit keyed on the recipient counts a message once per distinct value (two
//! recipients at one domain are one message to that domain). All the limits of one stage are
//! drawn in one round trip; a limited bucket is left as it is (the refused attempt costs
//! nothing), the others keep what they took.

use std::sync::Arc;

use super::stage::{EnvelopeCheck, Stage, StageInput, StageResult};
use crate::config::{RateAction, RateKey, RatelimitConfig, StateOnError};
use crate::envelope::ClientInfo;
use crate::metrics::metrics;
use crate::smtp::command::{MailFrom, RcptTo};
use crate::smtp::reply;
use crate::state::{BoxFuture, Bucket, State, Take};

/// The `[[ratelimit]]` tables as one check.
pub struct Ratelimit {
    state: Arc<State>,
    limits: Vec<RatelimitConfig>,
    /// The client network's prefix lengths (`client_net`), as greylisting's.
    prefixes: (u8, u8),
}

/// One limit's state for `scan --explain`.
#[derive(Debug, Clone)]
pub struct Peeked {
    pub name: String,
    pub key: &'static str,
    /// The key's value for this message; `None`: the limit does not apply (no user, say).
    pub value: Option<String>,
    pub rate: String,
    pub burst: u64,
    /// Tokens left, or why the store did not say.
    pub result: Option<Result<Take, String>>,
}

impl Ratelimit {
    pub fn new(state: Arc<State>, limits: &[RatelimitConfig], prefixes: (u8, u8)) -> Ratelimit {
        Ratelimit {
            state,
            limits: limits.to_vec(),
            prefixes,
        }
    }

    /// The stage a limit is answered at.
    fn stage_of(limit: &RatelimitConfig) -> Stage {
        if limit.recipients || limit.key.per_recipient() {
            Stage::Rcpt
        } else {
            Stage::Mail
        }
    }

    /// The value of `key` for this client and transaction, normalised; `None` when unknown.
    fn value(
        &self,
        key: RateKey,
        client: &ClientInfo,
        mail_from: Option<&MailFrom>,
        rcpt: Option<&str>,
    ) -> Option<String> {
        let domain = |a: &str| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
        let sender = mail_from.map(|m| m.address.to_ascii_lowercase());
        match key {
            RateKey::ClientIp => Some(client.addr.ip().to_canonical().to_string()),
            RateKey::ClientNet => Some(crate::state::network_of(
                client.addr.ip(),
                self.prefixes.0,
                self.prefixes.1,
            )),
            RateKey::Helo => client.helo.as_ref().map(|h| h.to_ascii_lowercase()),
            // The null sender (bounces) is one sender: "<>".
            RateKey::Sender => sender.map(|s| if s.is_empty() { "<>".into() } else { s }),
            RateKey::SenderDomain => sender.as_deref().and_then(domain),
            RateKey::Recipient => rcpt.map(str::to_ascii_lowercase),
            RateKey::RecipientDomain => rcpt.and_then(domain),
            RateKey::User => client.auth.clone(),
        }
    }

    fn bucket(limit: &RatelimitConfig, value: &str) -> Bucket {
        Bucket {
            key: format!("{}:{value}", limit.name),
            rate: limit.rate.per_second(),
            burst: limit.burst,
            cost: 1,
        }
    }

    /// The buckets to draw from at `stage`, with the limit each belongs to.
    fn buckets_at(&self, stage: Stage, input: &StageInput<'_>) -> Vec<(&RatelimitConfig, Bucket)> {
        let rcpt = input.rcpt.map(|r| r.address.as_str());
        self.limits
            .iter()
            .filter(|l| Self::stage_of(l) == stage)
            .filter_map(|l| {
                let value = self.value(l.key, input.client, input.mail_from, rcpt)?;
                if !l.recipients && l.key.per_recipient() && self.seen(l, input, &value) {
                    return None;
                }
                Some((l, Self::bucket(l, &value)))
            })
            .collect()
    }

    /// An earlier recipient of this transaction had the same value (message counted once).
    fn seen(&self, limit: &RatelimitConfig, input: &StageInput<'_>, value: &str) -> bool {
        input.recipients.iter().any(|r: &RcptTo| {
            self.value(limit.key, input.client, input.mail_from, Some(&r.address))
                .as_deref()
                == Some(value)
        })
    }

    /// Draws from the buckets; the first limited one answers.
    async fn draw(&self, buckets: Vec<(&RatelimitConfig, Bucket)>) -> StageResult {
        if buckets.is_empty() {
            return StageResult::Continue;
        }
        let list: Vec<Bucket> = buckets.iter().map(|(_, b)| b.clone()).collect();
        let answers = match self.state.take(&list, false).await {
            Ok(a) => a,
            Err(_) => {
                return match self.state.on_error() {
                    StateOnError::Tempfail => StageResult::TempFail(reply::state_unavailable()),
                    StateOnError::Accept => StageResult::Continue,
                };
            }
        };
        let mut result = StageResult::Continue;
        for ((limit, bucket), answer) in buckets.iter().zip(answers) {
            let Take::Limited { retry_in, .. } = answer else {
                continue;
            };
            metrics()
                .ratelimit_hits
                .with_label_values(&[limit.name.as_str()])
                .inc();
            tracing::info!(limit = %limit.name, bucket = %bucket.key, rate = %limit.rate, burst = limit.burst, ?retry_in, "rate limit exceeded");
            if result == StageResult::Continue {
                result = match limit.action {
                    RateAction::Tempfail => StageResult::TempFail(reply::rate_limited(
                        &limit.name,
                        retry_in.as_secs().max(1),
                    )),
                    RateAction::Reject => {
                        StageResult::Reject(reply::rate_limit_rejected(&limit.name))
                    }
                };
            }
        }
        result
    }

    /// For `scan --explain`: each limit, its key for this message and the tokens left,
    /// without taking any.
    pub async fn peek(
        &self,
        client: &ClientInfo,
        mail_from: Option<&MailFrom>,
        recipients: &[String],
    ) -> Vec<Peeked> {
        let mut out = Vec::new();
        for l in &self.limits {
            let rcpt = recipients.first().map(String::as_str);
            let value = self.value(l.key, client, mail_from, rcpt);
            let result = match &value {
                Some(v) => Some(
                    self.state
                        .take(&[Self::bucket(l, v)], true)
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|t| t.into_iter().next().ok_or_else(|| "no answer".into())),
                ),
                None => None,
            };
            out.push(Peeked {
                name: l.name.clone(),
                key: l.key.as_str(),
                value,
                rate: l.rate.to_string(),
                burst: l.burst,
                result,
            });
        }
        out
    }
}

impl EnvelopeCheck for Ratelimit {
    fn name(&self) -> &'static str {
        "ratelimit"
    }

    fn stages(&self) -> &'static [Stage] {
        &[Stage::Mail, Stage::Rcpt]
    }

    fn check<'a>(
        &'a self,
        stage: Stage,
        input: &'a mut StageInput<'_>,
    ) -> BoxFuture<'a, StageResult> {
        let buckets = self.buckets_at(stage, input);
        Box::pin(self.draw(buckets))
    }
}
