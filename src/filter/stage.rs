//! The stages before the message: connect, HELO, MAIL and each RCPT, where a check can let
//! the transaction go on or answer it (reject, tempfail, discard) before any data is sent.
//!
//! Postfix runs one restriction list per SMTP stage (`smtpd_check.c`); maddy's checks declare
//! the stages they run at. Here too: an [`EnvelopeCheck`] says which [`Stage`]s it runs at,
//! and the filter runs, at each stage, the checks that declared it, in order; the first one
//! that does not say [`StageResult::Continue`] decides. Front ends (the proxy, the milter)
//! call [`Filter::at_stage`] at each stage and turn a refusal into their protocol. A check
//! may also learn about the client at connect (its host names) for the later stages, the
//! rules and the Received header. The end-of-data stage, where the message is read, is
//! [`Filter::evaluate`](super::Filter::evaluate).

use std::future::Future;
use std::pin::Pin;

use super::Filter;
use crate::envelope::ClientInfo;
use crate::smtp::command::{MailFrom, RcptTo};
use crate::smtp::reply::Reply;

/// An SMTP stage before the message (RFC 5321 §3.3: the order of a transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Helo,
    Mail,
    Rcpt,
}

/// A stage's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageResult {
    /// Go on to the next stage.
    Continue,
    /// Refuse (5xx): the connection (connect, HELO), the transaction (MAIL) or this recipient
    /// (RCPT).
    Reject(Reply),
    /// Refuse for now (4xx); the client retries later.
    TempFail(Reply),
    /// Accept, but throw the message away (2xx to the client, nothing relayed).
    Discard,
}

/// What a check sees at a stage: the client as known so far and the transaction so far.
#[derive(Debug)]
pub struct StageInput<'a> {
    /// The client; a connect check may fill in what it learns (e.g. its host names).
    pub client: &'a mut ClientInfo,
    /// The sender, from MAIL on.
    pub mail_from: Option<&'a MailFrom>,
    /// The recipient being checked, at RCPT.
    pub rcpt: Option<&'a RcptTo>,
    /// The recipients accepted so far in this transaction.
    pub recipients: &'a [RcptTo],
}

/// A check that runs before the message, at the stages it declares.
pub trait EnvelopeCheck: Send + Sync {
    /// For logs: what the check is.
    fn name(&self) -> &'static str;
    /// The stages it runs at.
    fn stages(&self) -> &'static [Stage];
    /// Runs at `stage` (one of [`stages`](Self::stages)).
    fn check<'a>(
        &'a self,
        stage: Stage,
        input: &'a mut StageInput<'_>,
    ) -> Pin<Box<dyn Future<Output = StageResult> + Send + 'a>>;
}

/// A shared check (the filter keeps a handle for end of data and `scan --explain`).
impl<T: EnvelopeCheck> EnvelopeCheck for std::sync::Arc<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn stages(&self) -> &'static [Stage] {
        (**self).stages()
    }
    fn check<'a>(
        &'a self,
        stage: Stage,
        input: &'a mut StageInput<'_>,
    ) -> Pin<Box<dyn Future<Output = StageResult> + Send + 'a>> {
        (**self).check(stage, input)
    }
}

impl Filter {
    /// Runs the checks that declared `stage`, in order; the first answer other than
    /// `Continue` decides.
    pub async fn at_stage(&self, stage: Stage, input: &mut StageInput<'_>) -> StageResult {
        for check in self.envelope_checks.iter() {
            if !check.stages().contains(&stage) {
                continue;
            }
            let result = check.check(stage, input).await;
            if result != StageResult::Continue {
                tracing::debug!(
                    check = check.name(),
                    ?stage,
                    ?result,
                    "stage check answered"
                );
                return result;
            }
        }
        StageResult::Continue
    }

    /// The connect stage for a client (a shorthand for front ends).
    pub async fn at_connect(&self, client: &mut ClientInfo) -> StageResult {
        let mut input = StageInput {
            client,
            mail_from: None,
            rcpt: None,
            recipients: &[],
        };
        self.at_stage(Stage::Connect, &mut input).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Refuses one recipient at RCPT and counts its calls (shared with the test).
    struct NoBob {
        calls: std::sync::Arc<AtomicUsize>,
    }

    impl EnvelopeCheck for NoBob {
        fn name(&self) -> &'static str {
            "no bob"
        }
        fn stages(&self) -> &'static [Stage] {
            &[Stage::Rcpt]
        }
        fn check<'a>(
            &'a self,
            _stage: Stage,
            input: &'a mut StageInput<'_>,
        ) -> Pin<Box<dyn Future<Output = StageResult> + Send + 'a>> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let bob = input.rcpt.is_some_and(|r| r.address == "bob@example.org");
            Box::pin(async move {
                if bob {
                    StageResult::Reject(Reply::new(550, "5.7.1", "not bob"))
                } else {
                    StageResult::Continue
                }
            })
        }
    }

    #[tokio::test]
    async fn a_check_runs_only_at_its_stages_and_its_answer_decides() {
        let mut config = Config::default();
        config.dns.reverse_lookup = false;
        let mut filter = Filter::load(&config).expect("the shipped rules load");
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        filter.envelope_checks.push(Box::new(NoBob {
            calls: calls.clone(),
        }));
        let envelope =
            crate::envelope::Envelope::example("t", &["bob@example.org", "al@example.org"]);
        let mut client = envelope.client.clone();
        assert_eq!(filter.at_connect(&mut client).await, StageResult::Continue);
        let mut input = StageInput {
            client: &mut client,
            mail_from: Some(&envelope.mail_from),
            rcpt: None,
            recipients: &[],
        };
        assert_eq!(
            filter.at_stage(Stage::Mail, &mut input).await,
            StageResult::Continue
        );
        assert_eq!(calls.load(Ordering::Relaxed), 0, "not at connect or MAIL");
        for (rcpt, refused) in [
            (&envelope.recipients[0], true),
            (&envelope.recipients[1], false),
        ] {
            let mut input = StageInput {
                client: &mut client,
                mail_from: Some(&envelope.mail_from),
                rcpt: Some(rcpt),
                recipients: &[],
            };
            let result = filter.at_stage(Stage::Rcpt, &mut input).await;
            assert_eq!(
                matches!(result, StageResult::Reject(ref r) if r.code() == 550),
                refused,
                "{rcpt:?}: {result:?}"
            );
        }
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}
