//! One milter connection from the MTA, driving a [`Handler`] stage by stage.
//!
//! A connection carries one SMTP session of the MTA (Postfix opens a new milter connection
//! per SMTP client); 'K' (SMFIC_QUIT_NC, protocol version 6) ends the session and starts a
//! fresh one on the same socket. Within a session the MTA sends, each preceded by its
//! macros ('D'): Connect, Helo, then per transaction Mail, Rcpt…, Header…, EOH, Body…, EOM
//! (or Abort). We answer every command with exactly one reply, except the ones that never get
//! one (Macros, Abort, Quit, QuitNewConnection) and those negotiated as "no reply"
//! (SMFIP_NR_HDR / NR_EOH / NR_BODY), which is what keeps headers and body chunks free of
//! round trips.
//!
//! The handler sees the whole message once, at end of message, rebuilt byte for byte as the
//! client sent it (minus the Received: header Postfix adds and hides from milters).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tracing::{debug, info, warn};

use super::protocol::{
    Command, Family, PROTOCOL_VERSION, ProtocolError, Response, SMFIF_ADDHDRS, SMFIF_CHGHDRS,
    SMFIF_QUARANTINE, SMFIF_SETSYMLIST, SMFIM_CONNECT, SMFIM_ENVFROM, SMFIM_ENVRCPT, SMFIM_EOM,
    SMFIM_HELO, SMFIP_HDR_LEADSPC, SMFIP_NODATA, SMFIP_NOUNKNOWN, SMFIP_NR_BODY, SMFIP_NR_DATA,
    SMFIP_NR_EOH, SMFIP_NR_HDR, SMFIP_NR_UNKN, client_ip, read_command, reply_code_text,
    write_replies, write_reply,
};
use crate::smtp::reply::{self, Reply};

/// Tunables of the milter front end.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often to send SMFIR_PROGRESS while the handler works on a message, so that the
    /// MTA's `milter_content_timeout` (Postfix default 300 s) does not fire on a long scan.
    pub progress_interval: Duration,
    /// Past this many bytes (headers + body as rebuilt), the message is no longer buffered
    /// and is refused with 552 5.3.4 at end of message.
    pub max_message_size: usize,
    /// How long `serve` waits for open connections after being told to stop.
    pub stop_grace: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            progress_interval: Duration::from_secs(10),
            max_message_size: 64 * 1024 * 1024,
            stop_grace: Duration::from_secs(30),
        }
    }
}

/// The macros the MTA sent on this connection; the latest value of a name wins.
///
/// Names are stored without braces: `get("{client_name}")`, `get("client_name")` and
/// `get("j")` all work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Macros(HashMap<String, String>);

impl Macros {
    fn key(name: &str) -> &str {
        name.strip_prefix('{')
            .and_then(|n| n.strip_suffix('}'))
            .unwrap_or(name)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(Self::key(name)).map(String::as_str)
    }

    /// A macro's value, unless absent or empty (Postfix sends "" for unset ones).
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    pub fn insert(&mut self, name: &str, value: String) {
        self.0.insert(Self::key(name).to_string(), value);
    }

    fn remove(&mut self, name: &str) {
        self.0.remove(Self::key(name));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// One SMTP session of the MTA, as the milter protocol describes it.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Ours, unique in this process (a 'K' restart gets a new one).
    pub id: u64,
    pub family: Family,
    pub client_ip: Option<IpAddr>,
    pub client_port: u16,
    /// The address text as sent (a socket path for a unix-domain client).
    pub client_address: String,
    /// Postfix's verified client name, or "[192.0.2.1]" when there is none.
    pub hostname: String,
    pub helo: Option<String>,
    pub macros: Macros,
    /// `{tls_version}`, once the MTA sent it (helo stage).
    pub tls_version: Option<String>,
    /// `{auth_authen}`, once the MTA sent it (mail stage).
    pub auth_user: Option<String>,
}

impl Connection {
    fn new() -> Connection {
        Connection {
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            family: Family::Unknown,
            client_ip: None,
            client_port: 0,
            client_address: String::new(),
            hostname: String::new(),
            helo: None,
            macros: Macros::default(),
            tls_version: None,
            auth_user: None,
        }
    }
}

/// One mail transaction, from MAIL on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    /// Without the angle brackets; "" for the null sender.
    pub mail_from: String,
    /// ESMTP parameters of MAIL, e.g. "SIZE=1234".
    pub mail_args: Vec<String>,
    /// Recipients the handler let through, without angle brackets.
    pub rcpts: Vec<String>,
    /// Macro `i`, as soon as the MTA sent it (mail or end-of-message stage).
    pub queue_id: Option<String>,
}

/// The handler's verdict for one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Continue,
    /// Accept without further filtering (of the connection at connect/helo, else the message).
    Accept,
    /// A 5xx reply: refuses the connection (connect), HELO, the transaction (mail, end of
    /// message) or this one recipient (rcpt).
    Reject(Reply),
    /// A 4xx reply, with the same scope as `Reject`.
    TempFail(Reply),
    /// Accept the message and drop it (not allowed at connect/helo: answered as Continue).
    Discard,
}

/// The handler's answer at end of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndOfMessage {
    pub decision: Decision,
    /// Sent before the decision, in this order.
    pub modifications: Vec<Modification>,
}

impl EndOfMessage {
    pub fn new(decision: Decision) -> EndOfMessage {
        EndOfMessage {
            decision,
            modifications: Vec::new(),
        }
    }
}

/// A change to the message, applied by the MTA. Values are given without the space after the
/// colon (we add it where the MTA expects it); continuation lines separated by "\n" or "\r\n".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modification {
    /// Appended after the last header.
    AddHeader { name: String, value: String },
    /// Inserted before the header at `index` (0 = at the top).
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// Replaces the `index`th (1-based) header of that name; an empty value deletes it.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// Puts the message on hold in the MTA's queue (Postfix: the hold queue), with a reason.
    Quarantine(String),
}

/// What mailwarden does at each stage of the milter conversation.
pub trait Handler: Send + Sync + 'static {
    fn connect(&self, conn: &Connection) -> impl Future<Output = Decision> + Send;
    fn helo(&self, conn: &Connection) -> impl Future<Output = Decision> + Send;
    /// Every call is followed, for that transaction, by exactly one `end_of_message` or
    /// `abort`, whatever `mail` and `rcpt` decide.
    fn mail(&self, conn: &Connection, tx: &Transaction) -> impl Future<Output = Decision> + Send;
    fn rcpt(
        &self,
        conn: &Connection,
        tx: &Transaction,
        rcpt: &str,
    ) -> impl Future<Output = Decision> + Send;
    /// The whole message, rebuilt as the client sent it (header lines CRLF-terminated, blank
    /// line, body).
    fn end_of_message(
        &self,
        conn: &Connection,
        tx: &Transaction,
        message: Vec<u8>,
    ) -> impl Future<Output = EndOfMessage> + Send;
    /// The MTA aborted the transaction before end of message (or the connection vanished
    /// mid-transaction, or the message was over `Settings::max_message_size`).
    fn abort(&self, conn: &Connection, tx: &Transaction);
    /// The SMTP session is over (called only if `connect` was).
    fn close(&self, conn: &Connection);
}

/// What was agreed in option negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub version: u32,
    pub actions: u32,
    pub protocol: u32,
}

/// The actions we may ask for: header edits and quarantine, macro lists.
pub const WANTED_ACTIONS: u32 = SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE | SMFIF_SETSYMLIST;

/// Steps we do not need (DATA, unknown commands), header values with their leading space,
/// and no replies for headers, end of headers and body chunks.
pub const WANTED_PROTOCOL: u32 = SMFIP_NOUNKNOWN
    | SMFIP_NODATA
    | SMFIP_HDR_LEADSPC
    | SMFIP_NR_HDR
    | SMFIP_NR_EOH
    | SMFIP_NR_BODY;

/// The macros we ask for per stage (SETSYMLIST). Once a milter sends any list, Postfix sends
/// no macros at all for the stages it left out.
pub const MACRO_LISTS: [(u32, &str); 5] = [
    (
        SMFIM_CONNECT,
        "{client_addr} {client_name} {client_ptr} {client_resolve} {daemon_name} j _",
    ),
    (SMFIM_HELO, "{tls_version} {cipher}"),
    (SMFIM_ENVFROM, "{auth_authen} {mail_addr} i"),
    (SMFIM_ENVRCPT, "{rcpt_addr}"),
    (SMFIM_EOM, "i"),
];

/// Our answer to the MTA's OptNeg: never more than it offers (Postfix drops a milter whose
/// version or actions exceed its own), degrading with a log line where it offers less.
pub fn negotiate(version: u32, actions: u32, protocol: u32) -> (Negotiated, Response) {
    let version_ours = version.min(PROTOCOL_VERSION);
    if version < PROTOCOL_VERSION {
        info!(
            mta_version = version,
            "milter: the MTA speaks milter protocol version {version}, not 6; set \
             milter_protocol = 6 in Postfix's main.cf for macro lists and no-reply steps"
        );
    }
    let mut actions_ours = WANTED_ACTIONS & actions;
    if version_ours < 6 {
        actions_ours &= !SMFIF_SETSYMLIST;
    }
    let missing = (WANTED_ACTIONS & !SMFIF_SETSYMLIST) & !actions_ours;
    if missing != 0 {
        warn!(
            mta_actions = actions,
            "milter: the MTA does not allow header edits or quarantine (missing action mask \
             0x{missing:x}); such modifications will be dropped"
        );
    }
    if actions_ours & SMFIF_SETSYMLIST == 0 {
        info!(
            "milter: the MTA does not take macro lists (SETSYMLIST); relying on its default milter_*_macros"
        );
    }
    let protocol_ours = WANTED_PROTOCOL & protocol;
    if protocol_ours & SMFIP_HDR_LEADSPC == 0 {
        debug!("milter: no HDR_LEADSPC; assuming one space after each header colon");
    }
    let macros = if actions_ours & SMFIF_SETSYMLIST != 0 {
        MACRO_LISTS
            .iter()
            .map(|(stage, names)| (*stage, names.to_string()))
            .collect()
    } else {
        Vec::new()
    };
    let neg = Negotiated {
        version: version_ours,
        actions: actions_ours,
        protocol: protocol_ours,
    };
    let response = Response::OptNeg {
        version: version_ours,
        actions: actions_ours,
        protocol: protocol_ours,
        macros,
    };
    (neg, response)
}

/// The transaction being received, and the message rebuilt so far.
struct OpenTx {
    tx: Transaction,
    message: Vec<u8>,
    size: usize,
    oversize: bool,
    eoh_seen: bool,
}

/// Dropping it (also when `serve` gives up on it at stop) still tells the handler: an open
/// transaction is aborted and the session closed.
struct Session<'h, H: Handler, W> {
    handler: &'h H,
    settings: &'h Settings,
    writer: W,
    neg: Negotiated,
    conn: Connection,
    /// `connect` was called, so `close` is owed.
    connected: bool,
    tx: Option<OpenTx>,
}

/// Whether the session goes on after a command.
enum Flow {
    Next,
    End,
}

/// Serves one connection from the MTA until it quits, closes, or sends a malformed packet
/// (logged as one warning with the connection id; the error is returned too).
pub async fn serve_connection<S, H>(
    stream: S,
    handler: &H,
    settings: &Settings,
) -> Result<(), ProtocolError>
where
    S: AsyncRead + AsyncWrite + Send,
    H: Handler,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = BufReader::new(read_half);
    let mut session = Session {
        handler,
        settings,
        writer: write_half,
        // Until the MTA negotiates: answer every step, make no modifications.
        neg: Negotiated {
            version: PROTOCOL_VERSION,
            actions: 0,
            protocol: 0,
        },
        conn: Connection::new(),
        connected: false,
        tx: None,
    };
    let result = loop {
        let command = match read_command(&mut reader).await {
            Ok(Some(command)) => command,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match session.step(command).await {
            Ok(Flow::Next) => {}
            Ok(Flow::End) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    session.finish();
    if let Err(e) = &result {
        warn!(
            connection = session.conn.id,
            error = %e,
            "milter: dropping the connection to the MTA"
        );
    }
    result
}

impl<H: Handler, W: AsyncWrite + Unpin + Send> Session<'_, H, W> {
    async fn step(&mut self, command: Command) -> Result<Flow, ProtocolError> {
        match command {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => {
                let (neg, response) = negotiate(version, actions, protocol);
                self.neg = neg;
                self.send(&[response]).await?;
            }
            Command::Macros { pairs, .. } => self.set_macros(pairs),
            Command::Connect {
                hostname,
                family,
                port,
                address,
            } => self.on_connect(hostname, family, port, address).await?,
            Command::Helo(helo) => {
                self.conn.helo = Some(helo);
                let decision = self.handler.helo(&self.conn).await;
                let response = self.decision_response(&decision, "helo");
                self.send(&[response]).await?;
            }
            Command::Mail(args) => self.on_mail(args).await?,
            Command::Rcpt(args) => self.on_rcpt(args).await?,
            Command::Header { name, value } => {
                self.on_header(&name, &value);
                self.ack_unless(SMFIP_NR_HDR).await?;
            }
            Command::EndOfHeaders => {
                if let Some(open) = &mut self.tx {
                    open.eoh_seen = true;
                }
                self.append(b"\r\n");
                self.ack_unless(SMFIP_NR_EOH).await?;
            }
            Command::Body(chunk) => {
                self.append_body(&chunk);
                self.ack_unless(SMFIP_NR_BODY).await?;
            }
            Command::EndOfMessage(chunk) => self.on_end_of_message(chunk).await?,
            Command::Abort => {
                self.abort_tx();
                self.forget_queue_id();
            }
            Command::Quit => return Ok(Flow::End),
            Command::QuitNewConnection => {
                self.finish();
                self.conn = Connection::new();
            }
            Command::Data => self.ack_unless(SMFIP_NR_DATA).await?,
            Command::Unknown(_) => self.ack_unless(SMFIP_NR_UNKN).await?,
        }
        Ok(Flow::Next)
    }

    async fn send(&mut self, responses: &[Response]) -> Result<(), ProtocolError> {
        write_replies(&mut self.writer, responses).await
    }

    /// Answers 'c' unless the step was negotiated as no-reply.
    async fn ack_unless(&mut self, no_reply_flag: u32) -> Result<(), ProtocolError> {
        if self.neg.protocol & no_reply_flag == 0 {
            self.send(&[Response::Continue]).await?;
        }
        Ok(())
    }

    fn set_macros(&mut self, pairs: Vec<(String, String)>) {
        for (name, value) in pairs {
            self.conn.macros.insert(&name, value);
        }
        let macros = &self.conn.macros;
        self.conn.tls_version = macros.non_empty("tls_version").map(str::to_string);
        self.conn.auth_user = macros.non_empty("auth_authen").map(str::to_string);
        if let Some(open) = &mut self.tx
            && let Some(id) = macros.non_empty("i")
        {
            open.tx.queue_id = Some(id.to_string());
        }
    }

    async fn on_connect(
        &mut self,
        hostname: String,
        family: Family,
        port: u16,
        address: String,
    ) -> Result<(), ProtocolError> {
        if self.connected {
            // A second Connect without 'K' in between: treat it as one.
            let macros = std::mem::take(&mut self.conn.macros);
            self.finish();
            self.conn = Connection::new();
            self.conn.macros = macros;
        }
        self.conn.client_ip = client_ip(family, &address);
        self.conn.family = family;
        self.conn.client_port = port;
        self.conn.client_address = address;
        self.conn.hostname = hostname;
        self.connected = true;
        let decision = self.handler.connect(&self.conn).await;
        let response = self.decision_response(&decision, "connect");
        self.send(&[response]).await
    }

    async fn on_mail(&mut self, args: Vec<String>) -> Result<(), ProtocolError> {
        self.abort_tx();
        let mut args = args.into_iter();
        let tx = Transaction {
            mail_from: strip_brackets(&args.next().unwrap_or_default()),
            mail_args: args.collect(),
            rcpts: Vec::new(),
            queue_id: self.conn.macros.non_empty("i").map(str::to_string),
        };
        let decision = self.handler.mail(&self.conn, &tx).await;
        self.tx = Some(OpenTx {
            tx,
            message: Vec::new(),
            size: 0,
            oversize: false,
            eoh_seen: false,
        });
        let response = self.decision_response(&decision, "mail");
        self.send(&[response]).await
    }

    async fn on_rcpt(&mut self, args: Vec<String>) -> Result<(), ProtocolError> {
        let rcpt = strip_brackets(args.first().map(String::as_str).unwrap_or(""));
        let Some(open) = &mut self.tx else {
            debug!(
                connection = self.conn.id,
                "milter: RCPT without MAIL, ignored"
            );
            return self.send(&[Response::Continue]).await;
        };
        let decision = self.handler.rcpt(&self.conn, &open.tx, &rcpt).await;
        if matches!(decision, Decision::Continue | Decision::Accept) {
            open.tx.rcpts.push(rcpt);
        }
        let response = self.decision_response(&decision, "rcpt");
        self.send(&[response]).await
    }

    /// `name:value CRLF`, continuation lines CRLF-terminated.
    fn on_header(&mut self, name: &[u8], value: &[u8]) {
        let mut line = Vec::with_capacity(name.len() + value.len() + 4);
        line.extend_from_slice(name);
        line.push(b':');
        if self.neg.protocol & SMFIP_HDR_LEADSPC == 0 {
            line.push(b' ');
        }
        let mut prev = 0u8;
        for &b in value {
            if b == b'\n' && prev != b'\r' {
                line.push(b'\r');
            }
            line.push(b);
            prev = b;
        }
        line.extend_from_slice(b"\r\n");
        self.append(&line);
    }

    fn append_body(&mut self, chunk: &[u8]) {
        if let Some(open) = &mut self.tx
            && !open.eoh_seen
        {
            open.eoh_seen = true;
            self.append(b"\r\n");
        }
        self.append(chunk);
    }

    /// Adds to the message, or only counts once it is over the size limit.
    fn append(&mut self, bytes: &[u8]) {
        let Some(open) = &mut self.tx else { return };
        open.size = open.size.saturating_add(bytes.len());
        if open.size > self.settings.max_message_size {
            if !open.oversize {
                open.oversize = true;
                open.message = Vec::new();
            }
        } else {
            open.message.extend_from_slice(bytes);
        }
    }

    /// The queue id belongs to one transaction: without this, a MAIL whose macros lack `i`
    /// (Postfix assigns it after the first valid RCPT by default) would get the last one.
    fn forget_queue_id(&mut self) {
        self.conn.macros.remove("i");
    }

    async fn on_end_of_message(&mut self, chunk: Vec<u8>) -> Result<(), ProtocolError> {
        let result = self.end_of_message_reply(chunk).await;
        self.forget_queue_id();
        result
    }

    async fn end_of_message_reply(&mut self, chunk: Vec<u8>) -> Result<(), ProtocolError> {
        if !chunk.is_empty() {
            self.append_body(&chunk);
        }
        let Some(mut open) = self.tx.take() else {
            debug!(
                connection = self.conn.id,
                "milter: end of message without MAIL"
            );
            return self.send(&[Response::Continue]).await;
        };
        if let Some(id) = self.conn.macros.non_empty("i") {
            open.tx.queue_id = Some(id.to_string());
        }
        if open.oversize {
            info!(
                connection = self.conn.id,
                size = open.size,
                limit = self.settings.max_message_size,
                "milter: message over the size limit, refused"
            );
            self.handler.abort(&self.conn, &open.tx);
            let too_big = Decision::Reject(reply::message_too_big(self.settings.max_message_size));
            let response = self.decision_response(&too_big, "eom");
            return self.send(&[response]).await;
        }
        let message = std::mem::take(&mut open.message);
        let outcome = self.run_end_of_message(&open.tx, message).await;
        let mut responses: Vec<Response> = outcome
            .modifications
            .into_iter()
            .filter_map(|m| self.modification_response(m))
            .collect();
        responses.push(self.decision_response(&outcome.decision, "eom"));
        self.send(&responses).await
    }

    /// Runs the handler, sending SMFIR_PROGRESS every `progress_interval` meanwhile.
    async fn run_end_of_message(&mut self, tx: &Transaction, message: Vec<u8>) -> EndOfMessage {
        let interval = self
            .settings
            .progress_interval
            .max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fut = std::pin::pin!(self.handler.end_of_message(&self.conn, tx, message));
        let mut writer_ok = true;
        loop {
            tokio::select! {
                outcome = &mut fut => return outcome,
                _ = ticker.tick(), if writer_ok => {
                    if let Err(e) = write_reply(&mut self.writer, &Response::Progress).await {
                        // The final reply will fail the same way and end the session.
                        debug!(connection = self.conn.id, error = %e, "milter: progress not sent");
                        writer_ok = false;
                    }
                }
            }
        }
    }

    /// The reply packet for a decision; `stage` only for logs.
    fn decision_response(&self, decision: &Decision, stage: &str) -> Response {
        let coded = |r: &Reply, class: u16, plain: Response| match reply_code_text(r, class) {
            Some(text) => Response::ReplyCode(text),
            None => {
                warn!(
                    connection = self.conn.id,
                    stage,
                    reply = %r,
                    "milter: reply is not a {class}xx reply with {class}.x.x codes; sending the MTA's default"
                );
                plain
            }
        };
        match decision {
            Decision::Continue => Response::Continue,
            Decision::Accept => Response::Accept,
            Decision::Reject(r) => coded(r, 5, Response::Reject),
            Decision::TempFail(r) => coded(r, 4, Response::TempFail),
            Decision::Discard if matches!(stage, "connect" | "helo") => {
                warn!(
                    connection = self.conn.id,
                    stage, "milter: Discard is not allowed at connect/helo; continuing"
                );
                Response::Continue
            }
            Decision::Discard => Response::Discard,
        }
    }

    /// The packet for a modification, or `None` (logged) if the MTA did not allow that kind
    /// or it cannot be expressed.
    fn modification_response(&self, m: Modification) -> Option<Response> {
        let (needed, response) = match m {
            Modification::AddHeader { name, value } => (
                SMFIF_ADDHDRS,
                Response::AddHeader {
                    value: self.header_value(&value),
                    name,
                },
            ),
            Modification::InsertHeader { index, name, value } => (
                SMFIF_ADDHDRS,
                Response::InsertHeader {
                    index,
                    value: self.header_value(&value),
                    name,
                },
            ),
            Modification::ChangeHeader { index, name, value } => (
                SMFIF_CHGHDRS,
                Response::ChangeHeader {
                    index: index.max(1),
                    value: self.header_value(&value),
                    name,
                },
            ),
            Modification::Quarantine(reason) => {
                let reason = if reason.is_empty() {
                    "quarantined by mailwarden".to_string()
                } else {
                    reason.replace(['\r', '\n', '\0'], " ")
                };
                (SMFIF_QUARANTINE, Response::Quarantine(reason))
            }
        };
        let name_ok = match &response {
            Response::AddHeader { name, value }
            | Response::InsertHeader { name, value, .. }
            | Response::ChangeHeader { name, value, .. } => {
                valid_header_name(name) && !value.contains('\0')
            }
            _ => true,
        };
        if self.neg.actions & needed == 0 || !name_ok {
            warn!(
                connection = self.conn.id,
                modification = ?response,
                "milter: modification dropped (the MTA did not allow it, or the header name is invalid)"
            );
            return None;
        }
        Some(response)
    }

    /// A header value as the MTA wants it: "\n" between lines, and (with HDR_LEADSPC, where
    /// the MTA adds no space itself) one space after the colon.
    fn header_value(&self, value: &str) -> String {
        let value = value.replace("\r\n", "\n");
        let leadspc = self.neg.protocol & SMFIP_HDR_LEADSPC != 0;
        if leadspc && !value.is_empty() && !value.starts_with([' ', '\t']) {
            format!(" {value}")
        } else {
            value
        }
    }
}

impl<H: Handler, W> Session<'_, H, W> {
    fn abort_tx(&mut self) {
        if let Some(open) = self.tx.take() {
            self.handler.abort(&self.conn, &open.tx);
        }
    }

    /// Ends the SMTP session: aborts an open transaction, then `close`. Idempotent.
    fn finish(&mut self) {
        self.abort_tx();
        if self.connected {
            self.connected = false;
            self.handler.close(&self.conn);
        }
    }
}

impl<H: Handler, W> Drop for Session<'_, H, W> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// RFC 5322 §3.6.8: printable US-ASCII except colon.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// "<a@b>" → "a@b", "<>" → "".
fn strip_brackets(addr: &str) -> String {
    let addr = addr.trim();
    addr.strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(addr)
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::DuplexStream;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::milter::protocol::{SMFIP_NR_CONN, SMFIP_RCPT_REJ};
    use crate::milter::test_mta::{Event, Mta, Recorder, Script};

    type Running = (
        Mta<DuplexStream>,
        Arc<Recorder>,
        JoinHandle<Result<(), ProtocolError>>,
    );

    fn start(script: Script, settings: Settings) -> Running {
        let (client, server) = tokio::io::duplex(1 << 20);
        let recorder = Arc::new(Recorder::new(script));
        let handler = Arc::clone(&recorder);
        let task =
            tokio::spawn(async move { serve_connection(server, &*handler, &settings).await });
        (Mta::new(client), recorder, task)
    }

    /// Negotiated (like Postfix), connected, HELO, MAIL and one RCPT, all continued.
    async fn start_in_transaction(script: Script, settings: Settings) -> Running {
        let (mut mta, rec, task) = start(script, settings);
        mta.negotiate().await;
        assert_eq!(mta.connect().await, (b'c', vec![]));
        assert_eq!(mta.helo("client.example.org").await, (b'c', vec![]));
        assert_eq!(
            mta.mail(&["<a@b.example>", "SIZE=100"]).await,
            (b'c', vec![])
        );
        assert_eq!(mta.rcpt("<c@d.example>").await, (b'c', vec![]));
        (mta, rec, task)
    }

    fn nul(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn eom_of(events: &[Event]) -> (Connection, Transaction, Vec<u8>) {
        events
            .iter()
            .find_map(|e| match e {
                Event::Eom(c, t, m) => Some(((**c).clone(), t.clone(), m.clone())),
                _ => None,
            })
            .expect("end_of_message was called")
    }

    #[tokio::test]
    async fn negotiates_what_we_need_from_postfix_masks() {
        let (mut mta, _rec, _task) = start(Script::default(), Settings::default());
        let (version, actions, protocol, lists) = mta.negotiate().await;
        assert_eq!(version, 6);
        assert_eq!(
            actions,
            SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE | SMFIF_SETSYMLIST
        );
        assert_eq!(
            protocol,
            SMFIP_NOUNKNOWN
                | SMFIP_NODATA
                | SMFIP_HDR_LEADSPC
                | SMFIP_NR_HDR
                | SMFIP_NR_EOH
                | SMFIP_NR_BODY
        );
        assert_eq!(protocol & (SMFIP_NR_CONN | SMFIP_RCPT_REJ), 0);
        let expected: Vec<(u32, String)> = MACRO_LISTS
            .iter()
            .map(|(s, n)| (*s, n.to_string()))
            .collect();
        assert_eq!(lists, expected);
        assert_eq!(
            lists[0].1,
            "{client_addr} {client_name} {client_ptr} {client_resolve} {daemon_name} j _"
        );
    }

    #[tokio::test]
    async fn rebuilds_the_message_byte_exact_without_replies_for_content() {
        let (mut mta, rec, task) =
            start_in_transaction(Script::default(), Settings::default()).await;
        mta.content().await;
        mta.end_of_message().await;
        // The first packet after RCPT's reply is EOM's: no header/EOH/body replies.
        assert_eq!(mta.recv_code().await, b'c');
        mta.send(Command::Quit).await;
        assert!(mta.recv().await.is_none());
        assert!(task.await.unwrap().is_ok());

        let events = rec.events();
        let Event::Connect(c) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(c.client_ip, Some("192.0.2.10".parse().unwrap()));
        assert_eq!(c.client_port, 40001);
        assert_eq!(c.hostname, "client.example.org");
        assert_eq!(c.macros.get("j"), Some("mx.example.net"));
        assert_eq!(c.macros.get("{daemon_name}"), Some("smtpd"));
        assert_eq!(c.macros.get("client_name"), Some("client.example.org"));
        assert_eq!(events[1], Event::Helo(Some("client.example.org".into())));
        let (conn, tx, message) = eom_of(&events);
        assert_eq!(message, Mta::<DuplexStream>::CONTENT);
        assert_eq!(tx.mail_from, "a@b.example");
        assert_eq!(tx.mail_args, vec!["SIZE=100".to_string()]);
        assert_eq!(tx.rcpts, vec!["c@d.example".to_string()]);
        assert_eq!(tx.queue_id.as_deref(), Some("4XyZ1"));
        assert_eq!(conn.tls_version.as_deref(), Some("TLSv1.3"));
        assert_eq!(conn.auth_user.as_deref(), Some("alice"));
        assert_eq!(events.last(), Some(&Event::Close(conn.id)));
        assert!(!events.iter().any(|e| matches!(e, Event::Abort(_))));
    }

    #[tokio::test]
    async fn version_2_mta_gets_replies_for_every_step_and_no_macro_lists() {
        let (mut mta, rec, _task) = start(Script::default(), Settings::default());
        let (version, actions, protocol, lists) = mta.negotiate_with(2, 0x3f, 0x7f).await;
        assert_eq!((version, actions, protocol), (2, 0x31, 0));
        assert!(lists.is_empty());
        assert_eq!(mta.connect().await.0, b'c');
        assert_eq!(mta.mail(&["<>"]).await.0, b'c');
        assert_eq!(mta.rcpt("<c@d.example>").await.0, b'c');
        // Without HDR_LEADSPC the MTA ate the space after the colon; we put it back.
        mta.header("Subject", "hi").await;
        assert_eq!(mta.recv_code().await, b'c');
        mta.send(Command::EndOfHeaders).await;
        assert_eq!(mta.recv_code().await, b'c');
        mta.send(Command::Body(b"body\r\n".to_vec())).await;
        assert_eq!(mta.recv_code().await, b'c');
        mta.end_of_message().await;
        assert_eq!(mta.recv_code().await, b'c');
        let (_, tx, message) = eom_of(&rec.events());
        assert_eq!(message, b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(tx.mail_from, "");
    }

    #[tokio::test]
    async fn connect_and_helo_decisions() {
        let cases = [
            (
                Decision::Reject(Reply::new(554, "5.7.1", "go away, 100% sure")),
                b'y',
                nul("554 5.7.1 go away, 100%% sure"),
            ),
            (
                Decision::TempFail(reply::local_error()),
                b'y',
                nul("451 4.3.0 Local error in processing, try again later"),
            ),
            // A 4xx reply given as Reject: the class does not match, plain 'r'.
            (Decision::Reject(reply::local_error()), b'r', vec![]),
            (Decision::Accept, b'a', vec![]),
            (Decision::Discard, b'c', vec![]),
        ];
        for (decision, code, data) in cases {
            let script = Script {
                connect: decision.clone(),
                ..Script::default()
            };
            let (mut mta, _rec, _task) = start(script, Settings::default());
            mta.negotiate().await;
            assert_eq!(mta.connect().await, (code, data.clone()), "{decision:?}");

            let script = Script {
                helo: decision.clone(),
                ..Script::default()
            };
            let (mut mta, _rec, _task) = start(script, Settings::default());
            mta.negotiate().await;
            mta.connect().await;
            assert_eq!(mta.helo("x").await, (code, data), "{decision:?}");
        }
    }

    #[tokio::test]
    async fn mail_decisions() {
        let cases = [
            (Decision::Discard, b'd', vec![]),
            (Decision::Accept, b'a', vec![]),
            (
                Decision::TempFail(Reply::new(450, "4.7.1", "greylisted")),
                b'y',
                nul("450 4.7.1 greylisted"),
            ),
            (
                Decision::TempFail(reply::no_valid_recipients()),
                b't',
                vec![],
            ),
        ];
        for (decision, code, data) in cases {
            let script = Script {
                mail: decision.clone(),
                ..Script::default()
            };
            let (mut mta, rec, _task) = start(script, Settings::default());
            mta.negotiate().await;
            mta.connect().await;
            assert_eq!(mta.mail(&["<a@b>"]).await, (code, data), "{decision:?}");
            // Whatever MAIL decided, the MTA's abort reaches the handler.
            mta.send(Command::Abort).await;
            mta.send(Command::Quit).await;
            assert!(mta.recv().await.is_none());
            let events = rec.events();
            assert!(
                matches!(events[events.len() - 2], Event::Abort(_)),
                "{events:?}"
            );
        }
    }

    #[tokio::test]
    async fn rcpt_reject_refuses_only_that_recipient() {
        let script = Script {
            rcpt_reject: Decision::Reject(Reply::from_lines(
                550,
                vec!["5.1.1 no such user".into(), "5.1.1 really".into()],
            )),
            ..Script::default()
        };
        let (mut mta, rec, _task) = start_in_transaction(script, Settings::default()).await;
        assert_eq!(
            mta.rcpt("<reject@d.example>").await,
            (b'y', nul("550-5.1.1 no such user\r\n550 5.1.1 really"))
        );
        assert_eq!(mta.rcpt("<e@d.example>").await, (b'c', vec![]));
        mta.content().await;
        mta.end_of_message().await;
        assert_eq!(mta.recv_code().await, b'c');
        let (_, tx, _) = eom_of(&rec.events());
        assert_eq!(
            tx.rcpts,
            vec!["c@d.example".to_string(), "e@d.example".to_string()]
        );
    }

    #[tokio::test]
    async fn end_of_message_decisions() {
        let cases = [
            (Decision::Accept, b'a', vec![]),
            (Decision::Discard, b'd', vec![]),
            (
                Decision::Reject(Reply::new(550, "5.7.1", "spam")),
                b'y',
                nul("550 5.7.1 spam"),
            ),
            (
                Decision::TempFail(reply::upstream_unavailable()),
                b'y',
                nul("451 4.4.1 Upstream mail server unavailable, try again later"),
            ),
        ];
        for (decision, code, data) in cases {
            let script = Script {
                eom: EndOfMessage::new(decision.clone()),
                ..Script::default()
            };
            let (mut mta, _rec, _task) = start_in_transaction(script, Settings::default()).await;
            mta.content().await;
            mta.end_of_message().await;
            assert_eq!(mta.recv().await, Some((code, data)), "{decision:?}");
        }
    }

    fn modifications() -> Vec<Modification> {
        vec![
            Modification::AddHeader {
                name: "X-Spam-Score".into(),
                value: "7.1".into(),
            },
            Modification::InsertHeader {
                index: 0,
                name: "X-First".into(),
                value: "one\r\n\ttwo".into(),
            },
            Modification::ChangeHeader {
                index: 1,
                name: "Subject".into(),
                value: String::new(),
            },
            Modification::Quarantine("held: suspicious".into()),
        ]
    }

    #[tokio::test]
    async fn modifications_precede_the_decision_in_order() {
        let script = Script {
            eom: EndOfMessage {
                decision: Decision::Accept,
                modifications: modifications(),
            },
            ..Script::default()
        };
        let (mut mta, _rec, _task) = start_in_transaction(script, Settings::default()).await;
        mta.content().await;
        mta.end_of_message().await;
        assert_eq!(
            mta.recv().await,
            Some((b'h', [nul("X-Spam-Score"), nul(" 7.1")].concat()))
        );
        assert_eq!(
            mta.recv().await,
            Some((
                b'i',
                [vec![0, 0, 0, 0], nul("X-First"), nul(" one\n\ttwo")].concat()
            ))
        );
        assert_eq!(
            mta.recv().await,
            Some((b'm', [vec![0, 0, 0, 1], nul("Subject"), nul("")].concat()))
        );
        assert_eq!(mta.recv().await, Some((b'q', nul("held: suspicious"))));
        assert_eq!(mta.recv_code().await, b'a');
    }

    #[tokio::test]
    async fn modifications_the_mta_does_not_allow_are_dropped() {
        let script = Script {
            eom: EndOfMessage {
                decision: Decision::Continue,
                modifications: modifications(),
            },
            ..Script::default()
        };
        let (mut mta, _rec, _task) = start(script, Settings::default());
        // ADDHDRS only, and version 2: no leading space handling, the MTA adds it.
        mta.negotiate_with(2, SMFIF_ADDHDRS, 0x7f).await;
        mta.connect().await;
        mta.mail(&["<a@b>"]).await;
        mta.rcpt("<c@d>").await;
        mta.end_of_message().await;
        assert_eq!(
            mta.recv().await,
            Some((b'h', [nul("X-Spam-Score"), nul("7.1")].concat()))
        );
        assert_eq!(
            mta.recv().await,
            Some((
                b'i',
                [vec![0, 0, 0, 0], nul("X-First"), nul("one\n\ttwo")].concat()
            ))
        );
        assert_eq!(mta.recv_code().await, b'c');
    }

    #[tokio::test]
    async fn progress_while_the_handler_is_slow() {
        let script = Script {
            eom_delay: Duration::from_millis(450),
            ..Script::default()
        };
        let settings = Settings {
            progress_interval: Duration::from_millis(100),
            ..Settings::default()
        };
        let (mut mta, _rec, _task) = start_in_transaction(script, settings).await;
        mta.content().await;
        mta.end_of_message().await;
        let mut progress = 0;
        let last = loop {
            match mta.recv_code().await {
                b'p' => progress += 1,
                other => break other,
            }
        };
        assert_eq!(last, b'c');
        // 4 at 100, 200, 300, 400 ms; a loaded machine may delay one.
        assert!((2..=5).contains(&progress), "{progress} progress packets");
    }

    #[tokio::test]
    async fn oversize_message_is_refused_without_the_handler() {
        let settings = Settings {
            max_message_size: 40,
            ..Settings::default()
        };
        let (mut mta, rec, _task) = start_in_transaction(Script::default(), settings).await;
        mta.content().await;
        mta.end_of_message().await;
        assert_eq!(
            mta.recv().await,
            Some((
                b'y',
                nul("552 5.3.4 Message size exceeds fixed maximum message size of 40 bytes")
            ))
        );
        let events = rec.events();
        assert!(!events.iter().any(|e| matches!(e, Event::Eom(..))));
        assert!(matches!(events.last(), Some(Event::Abort(_))), "{events:?}");
    }

    #[tokio::test]
    async fn abort_then_a_second_transaction_on_the_same_connection() {
        let (mut mta, rec, _task) =
            start_in_transaction(Script::default(), Settings::default()).await;
        mta.header("Subject", " first").await;
        mta.send(Command::Abort).await;
        // This MAIL comes without an `i` macro: the first transaction's must not stick.
        mta.send(Command::Mail(vec!["<second@b.example>".into()]))
            .await;
        assert_eq!(mta.recv_code().await, b'c');
        assert_eq!(mta.rcpt("<r2@d.example>").await, (b'c', vec![]));
        mta.content().await;
        mta.end_of_message().await;
        assert_eq!(mta.recv_code().await, b'c');
        let events = rec.events();
        let aborted: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Abort(tx) => Some(tx.mail_from.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(aborted, vec!["a@b.example".to_string()]);
        let second_mail = events.iter().rev().find_map(|e| match e {
            Event::Mail(tx) => Some(tx.clone()),
            _ => None,
        });
        assert_eq!(second_mail.unwrap().queue_id, None);
        let (_, tx, message) = eom_of(&events);
        assert_eq!(tx.queue_id.as_deref(), Some("4XyZ1"));
        assert_eq!(tx.mail_from, "second@b.example");
        assert_eq!(tx.rcpts, vec!["r2@d.example".to_string()]);
        assert_eq!(message, Mta::<DuplexStream>::CONTENT);
    }

    #[tokio::test]
    async fn quit_new_connection_starts_a_fresh_session() {
        let (mut mta, rec, task) = start(Script::default(), Settings::default());
        mta.negotiate().await;
        mta.connect().await;
        mta.helo("one.example").await;
        mta.mail(&["<a@b>"]).await;
        mta.send(Command::QuitNewConnection).await;
        // 'K' gets no reply; the next Connect does.
        mta.expect_nothing(Duration::from_millis(100)).await;
        mta.send(Command::Connect {
            hostname: "[2001:db8::5]".into(),
            family: Family::Inet6,
            port: 2525,
            address: "IPv6:2001:db8::5".into(),
        })
        .await;
        assert_eq!(mta.recv_code().await, b'c');
        mta.send(Command::Quit).await;
        assert!(mta.recv().await.is_none());
        assert!(task.await.unwrap().is_ok());
        let events = rec.events();
        let conns: Vec<&Connection> = events
            .iter()
            .filter_map(|e| match e {
                Event::Connect(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(conns.len(), 2);
        assert_ne!(conns[0].id, conns[1].id);
        assert_eq!(conns[1].client_ip, Some("2001:db8::5".parse().unwrap()));
        assert!(
            conns[1].macros.is_empty(),
            "macros of the old session leaked"
        );
        assert_eq!(conns[1].helo, None);
        let tail: Vec<&Event> = events
            .iter()
            .filter(|e| !matches!(e, Event::Connect(_)))
            .collect();
        assert!(
            matches!(tail[tail.len() - 3], Event::Abort(_)),
            "{events:?}"
        );
        assert_eq!(tail[tail.len() - 2], &Event::Close(conns[0].id));
        assert_eq!(tail[tail.len() - 1], &Event::Close(conns[1].id));
    }

    #[tokio::test]
    async fn eof_mid_body_aborts_and_closes() {
        let (mut mta, rec, task) =
            start_in_transaction(Script::default(), Settings::default()).await;
        mta.header("Subject", " x").await;
        mta.send(Command::EndOfHeaders).await;
        mta.send(Command::Body(b"partial".to_vec())).await;
        drop(mta);
        assert!(task.await.unwrap().is_ok());
        let events = rec.events();
        let n = events.len();
        assert!(matches!(&events[n - 2], Event::Abort(tx) if tx.mail_from == "a@b.example"));
        assert!(matches!(events[n - 1], Event::Close(_)));
    }

    #[tokio::test]
    async fn truncated_packet_mid_transaction_aborts_and_reports() {
        let (mut mta, rec, task) =
            start_in_transaction(Script::default(), Settings::default()).await;
        mta.send_raw(&[0, 0, 0, 9, b'B', b'x']).await;
        mta.shutdown_write().await;
        assert!(matches!(task.await.unwrap(), Err(ProtocolError::Truncated)));
        let events = rec.events();
        assert!(matches!(events[events.len() - 2], Event::Abort(_)));
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// A valid Postfix-like transcript to mutate.
    fn transcript() -> Vec<u8> {
        let cmds = [
            Command::OptNeg {
                version: 6,
                actions: 0x1ff,
                protocol: 0x1f_ffff,
            },
            Command::Macros {
                stage: b'C',
                pairs: vec![("j".into(), "mx".into())],
            },
            Command::Connect {
                hostname: "h".into(),
                family: Family::Inet6,
                port: 1,
                address: "::1".into(),
            },
            Command::Helo("h".into()),
            Command::Mail(vec!["<a@b>".into(), "SIZE=1".into()]),
            Command::Rcpt(vec!["<c@d>".into()]),
            Command::Header {
                name: b"From".to_vec(),
                value: b" a\n b".to_vec(),
            },
            Command::EndOfHeaders,
            Command::Body(b"x\r\n".to_vec()),
            Command::EndOfMessage(Vec::new()),
            Command::Abort,
            Command::Data,
            Command::Unknown("X".into()),
            Command::QuitNewConnection,
            Command::Quit,
        ];
        cmds.iter().flat_map(|c| c.encode()).collect()
    }

    #[tokio::test]
    async fn random_and_mutated_streams_never_panic() {
        let base = transcript();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let settings = Settings {
            max_message_size: 64,
            ..Settings::default()
        };
        let handler = Recorder::new(Script::default());
        for round in 0..2000 {
            let input: Vec<u8> = if round % 4 == 0 {
                (0..rng.below(200)).map(|_| rng.next() as u8).collect()
            } else {
                let mut v = base.clone();
                for _ in 0..1 + rng.below(4) {
                    if v.is_empty() {
                        break;
                    }
                    let at = rng.below(v.len());
                    match rng.below(4) {
                        0 => v[at] = rng.next() as u8,
                        1 => v.truncate(at),
                        2 => v.insert(at, rng.next() as u8),
                        _ => {
                            v.drain(at..(at + rng.below(8)).min(v.len()));
                        }
                    }
                }
                v
            };
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let session = serve_connection(server, &handler, &settings);
            let feed = async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = client.write_all(&input).await;
                let _ = client.shutdown().await;
                let mut sink = Vec::new();
                let _ = client.read_to_end(&mut sink).await;
            };
            let done = tokio::time::timeout(Duration::from_secs(5), async {
                tokio::join!(session, feed)
            })
            .await;
            assert!(done.is_ok(), "round {round}: session hung");
        }
        // Every transaction the handler saw was finished one way or the other.
        let events = handler.events();
        let mails = events
            .iter()
            .filter(|e| matches!(e, Event::Mail(_)))
            .count();
        let ends = events
            .iter()
            .filter(|e| matches!(e, Event::Eom(..) | Event::Abort(_)))
            .count();
        assert_eq!(mails, ends);
        assert!(
            mails > 100,
            "mutations too destructive: {mails} transactions"
        );
    }
}
