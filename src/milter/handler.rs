//! The milter front end's link to the pipeline: each milter event becomes the filter's stage
//! call, and the verdict goes back to the MTA as milter replies.
//!
//! The milter protocol code (`protocol`, `session`, `listener`) knows nothing of the filter;
//! this file is the only one that knows both. It drives the same stages as the SMTP proxy —
//! [`Filter::at_stage`] at connect, HELO, MAIL and each RCPT, then [`Filter::evaluate`] and
//! [`Filter::act`] at end of message — so a message gets the same verdict whichever way it
//! came in. Differences, all because the MTA does the SMTP and the queueing:
//! - the client's host names are the MTA's (`{client_name}`: forward-confirmed, `{client_ptr}`:
//!   the PTR name), not looked up again;
//! - header changes are sent as SMFIR_* operations, the MTA writes its own Received header;
//! - quarantine is the MTA's hold queue (SMFIR_QUARANTINE; Postfix: `postqueue -p`,
//!   released with `postsuper -H`), not our quarantine directory;
//! - the log line's upstream id is the MTA's queue id (macro `i`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use super::session::{Connection, Decision, EndOfMessage, Handler, Modification, Transaction};
use crate::envelope::{ClientInfo, Envelope};
use crate::filter::header_ops::HeaderOp;
use crate::filter::record::{self, Ending};
use crate::filter::stage::StageInput;
use crate::filter::{Action, Filter, Input, Keeper, Stage, StageResult};
use crate::smtp::command::{self, Command, MailFrom, MailParams, RcptTo};
use crate::smtp::reply;

/// The pipeline behind the milter.
pub struct PipelineHandler {
    filter: Arc<Filter>,
}

impl PipelineHandler {
    pub fn new(filter: Arc<Filter>) -> PipelineHandler {
        PipelineHandler { filter }
    }
}

/// Postfix's word for a name it does not have.
fn known(name: Option<&str>) -> Option<String> {
    name.filter(|n| !n.is_empty() && *n != "unknown" && !n.starts_with('['))
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
}

/// The client as the filter knows it, from what the MTA told us. Mail submitted locally
/// (Postfix `sendmail`, `non_smtpd_milters`) has no client address: it is 127.0.0.1.
fn client_info(conn: &Connection) -> ClientInfo {
    let ip = conn
        .client_ip
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .to_canonical();
    let m = &conn.macros;
    ClientInfo {
        addr: SocketAddr::new(ip, conn.client_port),
        local: SocketAddr::from(([0, 0, 0, 0], 0)),
        helo: conn.helo.clone(),
        esmtp: true,
        tls: conn.tls_version.clone(),
        name: known(m.get("client_name")).or_else(|| known(Some(&conn.hostname))),
        reverse_name: known(m.get("client_ptr")),
        // Postfix: OK, FAIL, FORGED or TEMP (a temporary DNS failure).
        names_temporary: m.get("client_resolve") == Some("TEMP"),
        auth: m
            .get("auth_authen")
            .filter(|u| !u.is_empty())
            .map(str::to_string),
    }
}

/// The envelope sender as our SMTP parser reads it (parameters included: SMTPUTF8, SIZE…).
fn mail_from(tx: &Transaction) -> MailFrom {
    let line = format!("MAIL FROM:<{}> {}", tx.mail_from, tx.mail_args.join(" "));
    match command::parse(line.trim_end().as_bytes()) {
        Ok(Command::Mail(mail)) => mail,
        // Parameters we do not know are the MTA's business: keep the address.
        _ => MailFrom {
            address: tx.mail_from.clone(),
            params: MailParams::default(),
        },
    }
}

/// A recipient as our SMTP parser reads it.
fn rcpt_to(address: &str) -> RcptTo {
    match command::parse(format!("RCPT TO:<{address}>").as_bytes()) {
        Ok(Command::Rcpt(rcpt)) => rcpt,
        _ => RcptTo {
            address: address.to_string(),
            notify: None,
            orcpt: None,
        },
    }
}

/// The milter answer for a stage's result.
fn decision(result: StageResult) -> Decision {
    match result {
        StageResult::Continue => Decision::Continue,
        StageResult::Reject(r) => Decision::Reject(r),
        StageResult::TempFail(r) => Decision::TempFail(r),
        StageResult::Discard => Decision::Discard,
    }
}

/// Our header operations as milter modifications. Values lose the one space after the colon
/// (the session puts it back where the MTA expects it).
fn modifications(ops: &[HeaderOp]) -> Vec<Modification> {
    let value = |v: &str| v.strip_prefix(' ').unwrap_or(v).to_string();
    ops.iter()
        .map(|op| match op {
            HeaderOp::Insert {
                index,
                name,
                value: v,
            } => Modification::InsertHeader {
                index: u32::try_from(*index).unwrap_or(u32::MAX),
                name: name.clone(),
                value: value(v),
            },
            HeaderOp::Change {
                name,
                nth,
                value: v,
            } => Modification::ChangeHeader {
                index: u32::try_from(*nth).unwrap_or(u32::MAX),
                name: name.clone(),
                value: value(v),
            },
            HeaderOp::Delete { name, nth } => Modification::ChangeHeader {
                index: u32::try_from(*nth).unwrap_or(u32::MAX),
                name: name.clone(),
                value: String::new(),
            },
            HeaderOp::Append { name, value: v } => Modification::AddHeader {
                name: name.clone(),
                value: value(v),
            },
        })
        .collect()
}

impl PipelineHandler {
    /// Runs the checks of a stage before the message for this client and transaction.
    async fn stage(
        &self,
        stage: Stage,
        conn: &Connection,
        tx: Option<&Transaction>,
        rcpt: Option<&str>,
    ) -> Decision {
        let mut client = client_info(conn);
        let mail = tx.map(mail_from);
        let rcpt = rcpt.map(rcpt_to);
        // The recipients accepted so far matter at RCPT only: not parsed at every stage.
        let recipients: Vec<RcptTo> = match tx {
            Some(t) if stage == Stage::Rcpt => t.rcpts.iter().map(|r| rcpt_to(r)).collect(),
            _ => Vec::new(),
        };
        let mut input = StageInput {
            client: &mut client,
            mail_from: mail.as_ref(),
            rcpt: rcpt.as_ref(),
            recipients: &recipients,
        };
        decision(self.filter.at_stage(stage, &mut input).await)
    }

    /// The envelope of a transaction at end of message (or abort).
    fn envelope(conn: &Connection, tx: &Transaction) -> Envelope {
        Envelope {
            id: tx
                .queue_id
                .clone()
                .or_else(|| conn.macros.get("i").map(str::to_string))
                .unwrap_or_else(|| format!("milter-{}", conn.id)),
            client: client_info(conn),
            mail_from: mail_from(tx),
            recipients: tx.rcpts.iter().map(|r| rcpt_to(r)).collect(),
        }
    }
}

impl Handler for PipelineHandler {
    async fn connect(&self, conn: &Connection) -> Decision {
        let m = crate::metrics::metrics();
        m.milter_sessions.inc();
        m.milter_sessions_active.inc();
        self.stage(Stage::Connect, conn, None, None).await
    }

    async fn helo(&self, conn: &Connection) -> Decision {
        self.stage(Stage::Helo, conn, None, None).await
    }

    async fn mail(&self, conn: &Connection, tx: &Transaction) -> Decision {
        self.stage(Stage::Mail, conn, Some(tx), None).await
    }

    async fn rcpt(&self, conn: &Connection, tx: &Transaction, rcpt: &str) -> Decision {
        self.stage(Stage::Rcpt, conn, Some(tx), Some(rcpt)).await
    }

    async fn end_of_message(
        &self,
        conn: &Connection,
        tx: &Transaction,
        message: Vec<u8>,
    ) -> EndOfMessage {
        let envelope = Self::envelope(conn, tx);
        let filter = &self.filter;
        let mut verdict = filter
            .evaluate(&Input::from_envelope(&envelope), &message)
            .await;
        let action = filter
            .act(&envelope, &message, &mut verdict, Keeper::Mta)
            .await;
        // What the MTA will tell the client, for our log line.
        let accepted = reply::accepted(&envelope.id);
        let (answer, told, kept) = match action {
            Action::Accept => {
                let mut answer = EndOfMessage::new(Decision::Accept);
                answer.modifications = modifications(&verdict.headers);
                (answer, accepted, false)
            }
            Action::Hold(reason) => {
                let mut answer = EndOfMessage::new(Decision::Accept);
                answer.modifications = modifications(&verdict.headers);
                answer.modifications.push(Modification::Quarantine(reason));
                (answer, accepted, true)
            }
            Action::Reject(r) => (EndOfMessage::new(Decision::Reject(r.clone())), r, false),
            Action::TempFail(r) => (EndOfMessage::new(Decision::TempFail(r.clone())), r, false),
            Action::Drop(r) => (EndOfMessage::new(Decision::Discard), r, true),
        };
        record::transaction(&record::Transaction {
            session: &format!("milter-{}", conn.id),
            envelope: &envelope,
            size: message.len(),
            ending: Ending::Verdict {
                verdict: &verdict,
                kept,
            },
            reply: Some(&told),
        });
        answer
    }

    fn abort(&self, conn: &Connection, tx: &Transaction) {
        let envelope = Self::envelope(conn, tx);
        record::transaction(&record::Transaction {
            session: &format!("milter-{}", conn.id),
            envelope: &envelope,
            size: 0,
            ending: Ending::Abandoned("abort"),
            reply: None,
        });
    }

    fn close(&self, _conn: &Connection) {
        crate::metrics::metrics().milter_sessions_active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_operations_become_milter_modifications_without_the_leading_space() {
        let ops = vec![
            HeaderOp::Delete {
                name: "X-Spam-Flag".into(),
                nth: 2,
            },
            HeaderOp::Change {
                name: "Subject".into(),
                nth: 1,
                value: " [SPAM] hi".into(),
            },
            HeaderOp::Insert {
                index: 0,
                name: "X-Spam-Status".into(),
                value: " Yes, score=6.0\r\n\ttests=A".into(),
            },
            HeaderOp::Append {
                name: "Subject".into(),
                value: " [SPAM]".into(),
            },
        ];
        assert_eq!(
            modifications(&ops),
            vec![
                Modification::ChangeHeader {
                    index: 2,
                    name: "X-Spam-Flag".into(),
                    value: String::new()
                },
                Modification::ChangeHeader {
                    index: 1,
                    name: "Subject".into(),
                    value: "[SPAM] hi".into()
                },
                Modification::InsertHeader {
                    index: 0,
                    name: "X-Spam-Status".into(),
                    value: "Yes, score=6.0\r\n\ttests=A".into()
                },
                Modification::AddHeader {
                    name: "Subject".into(),
                    value: "[SPAM]".into()
                },
            ]
        );
    }

    #[test]
    fn postfix_unknown_names_are_none() {
        assert_eq!(known(Some("unknown")), None);
        assert_eq!(known(Some("[192.0.2.1]")), None);
        assert_eq!(known(Some("")), None);
        assert_eq!(
            known(Some("Mail.Example.ORG.")),
            Some("mail.example.org".into())
        );
    }
}
