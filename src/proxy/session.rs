//! One client session: the SMTP state machine (RFC 5321 §4.1.4 ordering).
//!
//! greeting → EHLO/HELO → MAIL → RCPT* → DATA | BDAT* → (filter → relay) → MAIL … → QUIT
//!
//! The session owns the client's connection and a `RelaySession`. MAIL and RCPT go upstream as
//! they arrive; the message goes to the filter and then upstream once complete; the client's
//! reply at each step is the upstream's. Pipelined commands are read from the same buffer as
//! message data, by this one state machine, so nothing the client sends can be parsed twice
//! or out of step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Services;
use super::xclient;
use crate::config::BareNewline;
use crate::envelope::{ClientInfo, Envelope};
use crate::filter::header_ops::{self, HeaderOp};
use crate::filter::record::{self, Ending, Refusal};
use crate::filter::stage::StageInput;
use crate::filter::{Action, Input, Keeper, Stage, StageResult};
use crate::relay::RelaySession;
use crate::relay::received::{now_rfc5322, received_header};
use crate::shutdown::Shutdown;
use crate::smtp::command::{self, Command, MailFrom, RcptTo};
use crate::smtp::connection::{Connection, Io, ReadError};
use crate::smtp::data::{DataDecoder, Problem};
use crate::smtp::reply::{self, Reply};

/// After this many errors the session is closed (Postfix's `smtpd_hard_error_limit`).
const MAX_ERRORS: u32 = 20;
/// Policy refusals (greylisting, rate limits) in one session before it is closed like one
/// with `MAX_ERRORS`: a rate-limited client looping MAIL/RCPT costs a store round trip each.
const MAX_REFUSALS: u32 = 100;

/// How long a client may take for the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// The transaction in progress after an accepted MAIL.
struct Transaction {
    /// Our id for the message (logs, the Received header, the quarantine).
    id: String,
    /// A stage check said discard: accept the message, relay nothing.
    discard: bool,
    /// The client as this transaction knows it (with XFORWARD attributes applied).
    client: ClientInfo,
    mail: MailFrom,
    recipients: Vec<RcptTo>,
    /// RCPT commands seen (accepted or not), for the recipient limit.
    rcpt_attempts: usize,
}

impl Transaction {
    /// The envelope of this transaction, as the filter and the relay see it.
    fn into_envelope(self) -> Envelope {
        Envelope {
            id: self.id,
            client: self.client,
            mail_from: self.mail,
            recipients: self.recipients,
        }
    }
}

/// What the session does after a command.
#[derive(PartialEq, Eq)]
enum Next {
    Continue,
    Close,
}

pub struct Session {
    /// Our id for this session, in every log line about it.
    id: String,
    conn: Connection,
    services: Arc<Services>,
    client: ClientInfo,
    relay: RelaySession,
    txn: Option<Transaction>,
    /// The message being received by BDAT, between the first chunk and LAST.
    bdat: Option<DataDecoder>,
    errors: u32,
    /// Policy refusals so far (see `refuse`).
    refusals: u32,
    shutdown: Shutdown,
    /// XFORWARD attributes from a trusted proxy, for the next transaction only.
    forwarded: Option<xclient::Update>,
}

impl Session {
    pub fn new(
        stream: Box<dyn Io>,
        client: ClientInfo,
        services: Arc<Services>,
        shutdown: Shutdown,
    ) -> Session {
        let relay = RelaySession::new(services.relay.clone());
        Session {
            id: new_queue_id(),
            conn: Connection::new(stream).with_stop(shutdown.stop.clone()),
            services,
            client,
            relay,
            txn: None,
            bdat: None,
            errors: 0,
            refusals: 0,
            shutdown,
            forwarded: None,
        }
    }

    fn hostname(&self) -> &str {
        &self.services.config.server.hostname
    }

    /// Runs the session to its end.
    pub async fn run(mut self) {
        // The connect stage: the client's host names, and any check that answers at connect.
        match self.services.filter.at_connect(&mut self.client).await {
            StageResult::Continue | StageResult::Discard => {}
            StageResult::Reject(r) | StageResult::TempFail(r) => {
                // RFC 5321 §3.1: a server that will not serve the client says so at once.
                tracing::info!(client = %self.client.addr, reply = %r, "connection refused at connect");
                count_rejection(&r);
                self.conn.reply(&r);
                let _ = tokio::time::timeout(Duration::from_secs(10), self.conn.shutdown()).await;
                return;
            }
        }
        let greeting = reply::greeting(self.hostname());
        self.conn.reply(&greeting);
        let command_timeout = Duration::from_secs(self.services.config.server.command_timeout_secs);
        // MAIL and RCPT may be longer by the room their ESMTP parameters need (RFC 1870 §3,
        // RFC 3461 §5); other commands are checked against the base limit below.
        let base_limit = self.services.config.server.max_command_line;
        let hard_limit = base_limit + 512;
        loop {
            let idle = self.txn.is_none() && self.bdat.is_none();
            if idle && *self.shutdown.draining.borrow() {
                let r = reply::shutting_down(self.hostname());
                self.conn.reply(&r);
                break;
            }
            let read = if idle {
                let mut shutdown = self.shutdown.draining.clone();
                tokio::select! {
                    r = self.conn.read_line(hard_limit, command_timeout) => Some(r),
                    _ = shutdown.changed() => None,
                }
            } else {
                Some(self.conn.read_line(hard_limit, command_timeout).await)
            };
            let Some(read) = read else {
                // Shutdown while waiting for a command outside a transaction.
                let r = reply::shutting_down(self.hostname());
                self.conn.reply(&r);
                break;
            };
            let line = match read {
                Ok(line) => line,
                Err(e) => {
                    self.read_failed(e, "command");
                    break;
                }
            };
            if let Some(kind) = line.bare
                && self.services.config.server.bare_newline == BareNewline::Reject
            {
                tracing::info!(client = %self.client.addr, "bare {kind} in a command; closing");
                let r = reply::bare_newline(kind);
                count_rejection(&r);
                self.conn.reply(&r);
                break;
            }
            let result = if line.too_long {
                Err(reply::line_too_long(hard_limit))
            } else {
                command::parse(&line.bytes).and_then(|cmd| {
                    let long_allowed = matches!(cmd, Command::Mail(_) | Command::Rcpt(_));
                    if !long_allowed && line.bytes.len() + 2 > base_limit {
                        Err(reply::line_too_long(base_limit))
                    } else {
                        Ok(cmd)
                    }
                })
            };
            let next = match result {
                Ok(cmd) => self.handle(cmd).await,
                Err(r) => {
                    self.error(&r);
                    Next::Continue
                }
            };
            if next == Next::Close || self.errors >= MAX_ERRORS {
                if self.errors >= MAX_ERRORS {
                    let r = Reply::new(
                        421,
                        "4.7.0",
                        format!("{} Too many errors, closing connection", self.hostname()),
                    );
                    self.conn.reply(&r);
                }
                break;
            }
        }
        self.abandon("disconnect");
        let _ = tokio::time::timeout(Duration::from_secs(10), self.conn.shutdown()).await;
        self.relay.quit().await;
    }

    /// Queues an error reply and counts it.
    fn error(&mut self, r: &Reply) {
        self.errors += 1;
        count_rejection(r);
        self.conn.reply(r);
    }

    /// A policy refusal (a stage check: greylisting, a rate limit): counted, but not a
    /// client error towards `MAX_ERRORS` — a greylisted 50-recipient message is not abuse.
    /// A client that keeps trying after `MAX_REFUSALS` of them in one session is closed.
    fn refuse(&mut self, r: &Reply) {
        self.refusals += 1;
        if self.refusals >= MAX_REFUSALS {
            self.errors = MAX_ERRORS;
        }
        crate::metrics::metrics()
            .commands_rejected
            .with_label_values(&["policy"])
            .inc();
        self.conn.reply(r);
    }

    fn read_failed(&mut self, e: ReadError, stage: &str) {
        match e {
            ReadError::Timeout => {
                tracing::info!(client = %self.client.addr, stage, "client timed out");
                let r = reply::timeout(self.hostname());
                self.conn.reply(&r);
            }
            ReadError::Closed => {
                tracing::debug!(client = %self.client.addr, stage, "client closed the connection");
            }
            ReadError::Io(e) => {
                tracing::debug!(client = %self.client.addr, stage, error = %e, "client connection error");
            }
            ReadError::Stopped => {
                tracing::info!(client = %self.client.addr, stage, "shutdown grace period over; session closed with 421");
                let r = reply::shutting_down(self.hostname());
                self.conn.reply(&r);
            }
        }
    }

    async fn handle(&mut self, cmd: Command) -> Next {
        match cmd {
            Command::Ehlo(name) => self.helo(name, true).await,
            Command::Helo(name) => self.helo(name, false).await,
            Command::Mail(mail) => self.mail(mail).await,
            Command::Rcpt(rcpt) => self.rcpt(rcpt).await,
            Command::Data => return self.data().await,
            Command::Bdat { size, last } => return self.bdat(size, last).await,
            Command::Rset => {
                self.reset("rset").await;
                self.conn.reply(&reply::reset_ok());
            }
            Command::Noop => self.conn.reply(&reply::ok()),
            Command::Vrfy => self.conn.reply(&reply::vrfy()),
            Command::Help => {
                let starttls = self.services.tls.is_some() && self.client.tls.is_none();
                self.conn.reply(&reply::help(starttls));
            }
            Command::Expn => self.error(&reply::not_implemented("EXPN")),
            Command::NotImplemented(verb) => self.error(&reply::not_implemented(&verb)),
            Command::Quit => {
                self.abandon("quit");
                let r = reply::closing(self.hostname());
                self.conn.reply(&r);
                return Next::Close;
            }
            Command::StartTls => return Box::pin(self.starttls()).await,
            Command::Xclient(args) => self.xclient(&args).await,
            Command::Xforward(args) => self.xforward(&args),
        }
        Next::Continue
    }

    /// Forgets the transaction here and upstream; a transaction still open ends with its log
    /// line, abandoned for `why`.
    async fn reset(&mut self, why: &'static str) {
        self.abandon(why);
        self.forwarded = None;
        self.bdat = None;
        self.relay.rset().await;
    }

    async fn helo(&mut self, name: String, esmtp: bool) {
        // RFC 5321 §4.1.4: EHLO/HELO in a session resets any transaction.
        self.reset("ehlo").await;
        self.client.helo = Some(name.clone());
        self.client.esmtp = esmtp;
        let mut input = StageInput {
            client: &mut self.client,
            mail_from: None,
            rcpt: None,
            recipients: &[],
        };
        if let StageResult::Reject(r) | StageResult::TempFail(r) =
            self.services.filter.at_stage(Stage::Helo, &mut input).await
        {
            self.client.helo = None;
            return self.error(&r);
        }
        let server = &self.services.config.server;
        if !esmtp {
            let r = reply::helo_ok(&server.hostname, &name);
            self.conn.reply(&r);
            return;
        }
        let mut lines = vec![
            format!("{} greets {}", server.hostname, name),
            "PIPELINING".to_string(),
            format!("SIZE {}", server.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
            "DSN".to_string(),
        ];
        if self.services.tls.is_some() && self.client.tls.is_none() {
            lines.push("STARTTLS".to_string());
        }
        if self.services.is_trusted_proxy(self.client.addr.ip()) {
            lines.push(xclient::EHLO_KEYWORD.to_string());
            lines.push(xclient::XFORWARD_EHLO_KEYWORD.to_string());
        }
        self.conn.reply(&Reply::from_lines(250, lines));
    }

    /// Whether the client may use XCLIENT/XFORWARD (`[server] trusted_proxies`); refuses it
    /// with `550 5.7.0` (Postfix's reply) when not.
    fn may_name_the_client(&mut self, verb: &str) -> bool {
        if self.services.is_trusted_proxy(self.client.addr.ip()) {
            return true;
        }
        tracing::info!(client = %self.client.addr, "{verb} from a host not in [server] trusted_proxies; refused");
        self.error(&Reply::new(
            550,
            "5.7.0",
            "Error: insufficient authorization",
        ));
        false
    }

    /// XCLIENT from a trusted proxy: the real client's address and HELO replace the proxy's,
    /// and the session starts over with a greeting (Postfix's XCLIENT_README). The check
    /// uses the client as the session knows it now, so after one XCLIENT the named client
    /// must itself be trusted to send another (as in Postfix).
    async fn xclient(&mut self, args: &str) {
        if !self.may_name_the_client("XCLIENT") {
            return;
        }
        if self.txn.is_some() || self.bdat.is_some() {
            return self.error(&reply::bad_sequence("Error: MAIL transaction in progress"));
        }
        let update = match xclient::parse(args) {
            Ok(update) => update,
            Err(r) => return self.error(&r),
        };
        let proxy = self.client.addr;
        self.reset("xclient").await;
        update.apply(&mut self.client);
        tracing::debug!(proxy = %proxy, client = %self.client.addr, helo = ?self.client.helo, "XCLIENT");
        // A new client: its connect stage (host names) runs again.
        let greeting = match self.services.filter.at_connect(&mut self.client).await {
            StageResult::Reject(r) | StageResult::TempFail(r) => r,
            StageResult::Continue | StageResult::Discard => reply::greeting(self.hostname()),
        };
        self.conn.reply(&greeting);
    }

    /// Ends the open transaction (if any) with its one log line.
    fn end_transaction(&mut self, size: usize, ending: Ending<'_>, r: Option<&Reply>) {
        let Some(txn) = self.txn.take() else {
            return;
        };
        let envelope = txn.into_envelope();
        self.log(&envelope, size, ending, r);
    }

    /// Writes a transaction's log line and counts it (`filter::record`).
    fn log(&self, envelope: &Envelope, size: usize, ending: Ending<'_>, r: Option<&Reply>) {
        record::transaction(&record::Transaction {
            session: &self.id,
            envelope,
            size,
            ending,
            reply: r,
        });
    }

    /// The client left the transaction open (RSET, EHLO, QUIT, a closed connection).
    fn abandon(&mut self, why: &'static str) {
        self.end_transaction(0, Ending::Abandoned(why), None);
    }

    /// XFORWARD from a trusted proxy (Postfix's `smtpd_proxy_filter`): the client's identity
    /// for the next transaction, which starts with MAIL. Postfix's XFORWARD_README.
    fn xforward(&mut self, args: &str) {
        if !self.may_name_the_client("XFORWARD") {
            return;
        }
        if self.txn.is_some() {
            return self.error(&reply::bad_sequence("Error: MAIL transaction in progress"));
        }
        match xclient::parse_for(xclient::Verb::Xforward, args) {
            Ok(update) => {
                self.forwarded
                    .get_or_insert_with(Default::default)
                    .merge(update);
                self.conn.reply(&reply::ok());
            }
            Err(r) => self.error(&r),
        }
    }

    async fn mail(&mut self, mail: MailFrom) {
        if self.client.helo.is_none() {
            return self.error(&reply::bad_sequence("Send HELO/EHLO first"));
        }
        if self.txn.is_some() {
            return self.error(&reply::bad_sequence("Nested MAIL command"));
        }
        let max = self.services.config.server.max_message_size;
        if mail.params.size.is_some_and(|s| s > max as u64) {
            return self.error(&reply::message_too_big(max));
        }
        if !mail.params.smtputf8 && !mail.address.is_ascii() {
            return self.error(&non_ascii_address());
        }
        let mut client = self.client.clone();
        if let Some(forwarded) = &self.forwarded {
            forwarded.apply(&mut client);
            // The client a trusted proxy named: its host names, as at connect.
            if let StageResult::Reject(r) | StageResult::TempFail(r) =
                self.services.filter.at_connect(&mut client).await
            {
                return self.error(&r);
            }
        }
        let mut txn = Transaction {
            id: new_queue_id(),
            discard: false,
            client,
            mail,
            recipients: Vec::new(),
            rcpt_attempts: 0,
        };
        let mut input = StageInput {
            client: &mut txn.client,
            mail_from: Some(&txn.mail),
            rcpt: None,
            recipients: &[],
        };
        match self.services.filter.at_stage(Stage::Mail, &mut input).await {
            StageResult::Continue => {}
            StageResult::Discard => txn.discard = true,
            StageResult::Reject(r) | StageResult::TempFail(r) => {
                let envelope = txn.into_envelope();
                self.log(&envelope, 0, Ending::Refused(Refusal::Policy), Some(&r));
                return self.refuse(&r);
            }
        }
        let r = Box::pin(self.relay.mail(&txn.client, &txn.mail)).await;
        if r.is_positive() {
            self.txn = Some(txn);
        } else {
            self.errors += 1;
            let envelope = txn.into_envelope();
            self.log(
                &envelope,
                0,
                Ending::Refused(Refusal::SenderRefused),
                Some(&r),
            );
        }
        self.conn.reply(&r);
    }

    async fn rcpt(&mut self, rcpt: RcptTo) {
        let max = self.services.config.server.max_recipients;
        let Some(txn) = self.txn.as_mut() else {
            return self.error(&reply::bad_sequence("Need MAIL command"));
        };
        if self.bdat.is_some() {
            return self.error(&reply::bad_sequence("RCPT not allowed during BDAT"));
        }
        if txn.rcpt_attempts >= max {
            // Not counted as an error: RFC 5321 §4.5.3.1.10 expects clients to retry the rest.
            let r = reply::too_many_recipients();
            count_rejection(&r);
            self.conn.reply(&r);
            return;
        }
        if !txn.mail.params.smtputf8 && !rcpt.address.is_ascii() {
            return self.error(&non_ascii_address());
        }
        txn.rcpt_attempts += 1;
        let mut input = StageInput {
            client: &mut txn.client,
            mail_from: Some(&txn.mail),
            rcpt: Some(&rcpt),
            recipients: &txn.recipients,
        };
        match self.services.filter.at_stage(Stage::Rcpt, &mut input).await {
            StageResult::Continue => {}
            StageResult::Discard => txn.discard = true,
            // This recipient only; the transaction goes on.
            StageResult::Reject(r) | StageResult::TempFail(r) => return self.refuse(&r),
        }
        let r = self.relay.rcpt(&rcpt).await;
        if !self.relay.transaction_open() {
            self.txn = None;
        } else if r.is_positive()
            && let Some(txn) = self.txn.as_mut()
        {
            txn.recipients.push(rcpt);
        }
        self.conn.reply(&r);
    }

    /// Checks that a message may be sent now; on refusal returns the reply.
    fn ready_for_message(&self) -> Result<(), Reply> {
        match &self.txn {
            None => Err(reply::bad_sequence("Need MAIL command")),
            Some(txn) if txn.recipients.is_empty() => Err(reply::no_valid_recipients()),
            Some(_) => Ok(()),
        }
    }

    async fn data(&mut self) -> Next {
        if self.bdat.is_some() {
            self.error(&reply::bad_sequence("DATA not allowed after BDAT"));
            return Next::Continue;
        }
        if let Err(r) = self.ready_for_message() {
            self.error(&r);
            return Next::Continue;
        }
        let server = &self.services.config.server;
        let mut decoder = DataDecoder::dot(
            server.bare_newline,
            server.max_message_size,
            server.max_text_line,
        );
        let timeout = Duration::from_secs(server.data_timeout_secs);
        self.conn.reply(&reply::start_data());
        if let Err(e) = self.conn.read_data(&mut decoder, timeout).await {
            self.read_failed(e, "DATA");
            return Next::Close;
        }
        self.finish_message(decoder).await
    }

    async fn bdat(&mut self, size: u64, last: bool) -> Next {
        let server = &self.services.config.server;
        let timeout = Duration::from_secs(server.data_timeout_secs);
        let max = server.max_message_size;
        if size > max as u64 {
            // Too big to read just to stay in step: refuse and close (RFC 3030 §2 lets us).
            let r = reply::message_too_big(max);
            self.end_transaction(size as usize, Ending::Refused(Refusal::TooBig), Some(&r));
            self.reset("rset").await;
            self.conn.reply(&r);
            return Next::Close;
        }
        if let Err(r) = self.ready_for_message() {
            // The chunk follows the command whatever we answer: read and drop it.
            if let Err(e) = self.conn.read_chunk(size, None, timeout).await {
                self.read_failed(e, "BDAT");
                return Next::Close;
            }
            self.error(&r);
            return Next::Continue;
        }
        let decoder = self.bdat.get_or_insert_with(|| {
            DataDecoder::chunks(
                server.bare_newline,
                server.max_message_size,
                server.max_text_line,
            )
        });
        if let Err(e) = self.conn.read_chunk(size, Some(decoder), timeout).await {
            self.read_failed(e, "BDAT");
            return Next::Close;
        }
        if decoder.over_size_limit() {
            let r = reply::message_too_big(max);
            self.end_transaction(max, Ending::Refused(Refusal::TooBig), Some(&r));
            self.reset("rset").await;
            self.error(&r);
            return Next::Continue;
        }
        if !last {
            self.conn.reply(&reply::chunk_ok(size as usize));
            return Next::Continue;
        }
        match self.bdat.take() {
            Some(decoder) => self.finish_message(decoder).await,
            None => Next::Continue,
        }
    }

    /// After the end of data: refuse a bad message, or filter and relay a good one.
    async fn finish_message(&mut self, decoder: DataDecoder) -> Next {
        let server = &self.services.config.server;
        let (max_size, max_line) = (server.max_message_size, server.max_text_line);
        let size = decoder.len();
        let message = match decoder.finish() {
            Ok(message) => message,
            Err(problem) => {
                let (r, next, why) = match problem {
                    Problem::BareNewline(kind) => {
                        tracing::info!(client = %self.client.addr, "bare {kind} in message data; refused, closing");
                        (reply::bare_newline(kind), Next::Close, Refusal::BareNewline)
                    }
                    Problem::TooBig => (
                        reply::message_too_big(max_size),
                        Next::Continue,
                        Refusal::TooBig,
                    ),
                    Problem::LineTooLong => (
                        reply::text_line_too_long(max_line),
                        Next::Continue,
                        Refusal::LineTooLong,
                    ),
                };
                self.end_transaction(size, Ending::Refused(why), Some(&r));
                self.reset("rset").await;
                self.error(&r);
                return next;
            }
        };
        let Some(txn) = self.txn.take() else {
            self.error(&reply::bad_sequence("Need MAIL command"));
            return Next::Continue;
        };
        self.forwarded = None;
        let discard = txn.discard;
        let envelope = txn.into_envelope();
        // Boxed, as are the relay's and STARTTLS's futures: an idle session's task then holds
        // only the small command loop, not the filter's and relay's state (10,000 idle
        // sessions cost ~40 KiB each otherwise; tests/soak.rs measures it).
        let filter = &self.services.filter;
        let mut verdict =
            Box::pin(filter.evaluate(&Input::from_envelope(&envelope), &message)).await;
        let mut action =
            Box::pin(filter.act(&envelope, &message, &mut verdict, Keeper::Filter)).await;
        if discard && matches!(action, Action::Accept) {
            verdict.findings.action = "discard";
            action = Action::Drop(reply::accepted(&envelope.id));
        }
        let kept = matches!(action, Action::Drop(_) | Action::Hold(_));
        let r = match action {
            Action::Accept | Action::Hold(_) => {
                let received = received_header(
                    &envelope,
                    &self.services.config.server.hostname,
                    &now_rfc5322(),
                );
                // Our Received goes right above the message as the client sent it, below
                // the filter's result headers: everything after it is the client's bytes.
                let mut ops = verdict.headers.clone();
                let on_top = ops
                    .iter()
                    .filter(|op| matches!(op, HeaderOp::Insert { .. }))
                    .count();
                ops.push(header_ops::insert_field(on_top, &received));
                let full = header_ops::apply(&message, &ops);
                Box::pin(self.relay.data(&envelope, full)).await
            }
            Action::Reject(r) | Action::TempFail(r) | Action::Drop(r) => {
                self.relay.rset().await;
                r
            }
        };
        let ending = Ending::Verdict {
            verdict: &verdict,
            kept,
        };
        self.log(&envelope, message.len(), ending, Some(&r));
        self.conn.reply(&r);
        Next::Continue
    }

    async fn starttls(&mut self) -> Next {
        let Some(acceptor) = self.services.tls.clone() else {
            self.error(&reply::tls_unavailable());
            return Next::Continue;
        };
        if self.client.tls.is_some() {
            self.error(&reply::bad_sequence("TLS already active"));
            return Next::Continue;
        }
        if self.txn.is_some() {
            self.error(&reply::bad_sequence(
                "STARTTLS not allowed during a mail transaction",
            ));
            return Next::Continue;
        }
        self.conn.reply(&reply::ready_tls());
        if self.conn.flush().await.is_err() {
            return Next::Close;
        }
        // CVE-2011-0411: anything pipelined after STARTTLS was sent in the clear and must not
        // be executed inside the TLS session.
        let dropped = self.conn.discard_buffered_input();
        if dropped > 0 {
            tracing::warn!(client = %self.client.addr, bytes = dropped, "discarded input pipelined after STARTTLS");
        }
        let handshake = self.conn.upgrade(|plain| async move {
            let tls = acceptor.accept(plain).await?;
            let version = match tls.get_ref().1.protocol_version() {
                Some(v) => format!("{v:?}").replace("TLSv1_", "TLSv1."),
                None => "TLS".to_string(),
            };
            Ok((Box::new(tls) as Box<dyn Io>, version))
        });
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(version)) => {
                count_tls("ok");
                // RFC 3207 §4.2: forget everything learnt before the handshake.
                self.reset("starttls").await;
                self.client.helo = None;
                self.client.esmtp = false;
                self.client.tls = Some(version);
                Next::Continue
            }
            Ok(Err(e)) => {
                count_tls("failed");
                tracing::info!(client = %self.client.addr, error = %e, "TLS handshake failed");
                Next::Close
            }
            Err(_) => {
                count_tls("failed");
                tracing::info!(client = %self.client.addr, "TLS handshake timed out");
                Next::Close
            }
        }
    }
}

fn count_tls(result: &str) {
    crate::metrics::metrics()
        .tls_handshakes
        .with_label_values(&[result])
        .inc();
}

/// Counts a refused command or message data in `mailwarden_commands_rejected_total` under
/// the reason an admin would look for.
fn count_rejection(r: &Reply) {
    let long = r
        .lines()
        .first()
        .is_some_and(|l| l.contains("too long") || l.contains("longer than"));
    let reason = match (r.code(), r.enhanced_code()) {
        (550, Some("5.5.2")) => "bare_newline",
        (500, Some("5.5.2")) if long => "line_too_long",
        (500, Some("5.5.1")) => "unknown_command",
        (500 | 501 | 553, _) => "syntax",
        (502, _) => "not_implemented",
        (503, _) => "sequence",
        (552, _) => "size",
        (452, _) => "recipients",
        (550, Some("5.7.0")) => "unauthorized",
        _ => "other",
    };
    crate::metrics::metrics()
        .commands_rejected
        .with_label_values(&[reason])
        .inc();
}

fn non_ascii_address() -> Reply {
    Reply::new(
        553,
        "5.6.7",
        "Address contains non-ASCII characters; use the SMTPUTF8 parameter (RFC 6531)",
    )
}

/// A short unique id for one message: microseconds since the epoch and a counter, in hex.
fn new_queue_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:011X}{:05X}", micros & 0xFFF_FFFF_FFFF, n & 0xF_FFFF)
}
