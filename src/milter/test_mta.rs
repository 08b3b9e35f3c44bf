//! Test-only: an MTA side of the milter protocol that talks like Postfix 3.x with
//! `milter_protocol = 6` (its OptNeg masks, its macro stages, headers with their leading
//! space, folded headers joined by "\n"), and a handler that records what it is told.

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};

use super::protocol::{Command, Family, read_packet};
use super::session::{Connection, Decision, EndOfMessage, Handler, Transaction};

/// Postfix's OptNeg: version 6, every action it implements, its version-6 event mask.
pub const POSTFIX_VERSION: u32 = 6;
pub const POSTFIX_ACTIONS: u32 = 0x1ff;
pub const POSTFIX_PROTOCOL: u32 = 0x1f_ffff;

pub struct Mta<S> {
    reader: BufReader<ReadHalf<S>>,
    writer: WriteHalf<S>,
}

impl<S: AsyncRead + AsyncWrite> Mta<S> {
    pub fn new(stream: S) -> Mta<S> {
        let (r, w) = tokio::io::split(stream);
        Mta {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn send(&mut self, command: Command) {
        self.writer.write_all(&command.encode()).await.unwrap();
        self.writer.flush().await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
        self.writer.flush().await.unwrap();
    }

    pub async fn shutdown_write(&mut self) {
        self.writer.shutdown().await.unwrap();
    }

    /// The next reply packet (command byte, data); `None` if the milter closed.
    pub async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(Duration::from_secs(10), read_packet(&mut self.reader))
            .await
            .expect("milter reply within 10 s")
            .ok()
            .flatten()
    }

    /// The next reply's command byte; panics if it carries data.
    pub async fn recv_code(&mut self) -> u8 {
        let (code, data) = self.recv().await.expect("a reply");
        assert!(
            data.is_empty(),
            "reply {} with data {data:?}",
            char::from(code)
        );
        code
    }

    /// Asserts that nothing arrives within `wait`.
    pub async fn expect_nothing(&mut self, wait: Duration) {
        if let Ok(r) = tokio::time::timeout(wait, read_packet(&mut self.reader)).await {
            panic!("unexpected packet or close: {r:?}");
        }
    }

    pub async fn macros(&mut self, stage: u8, pairs: &[(&str, &str)]) {
        let pairs = pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        self.send(Command::Macros { stage, pairs }).await;
    }

    /// OptNeg as Postfix sends it; returns the milter's answer (version, actions, protocol,
    /// macro lists).
    pub async fn negotiate(&mut self) -> (u32, u32, u32, Vec<(u32, String)>) {
        self.negotiate_with(POSTFIX_VERSION, POSTFIX_ACTIONS, POSTFIX_PROTOCOL)
            .await
    }

    pub async fn negotiate_with(
        &mut self,
        version: u32,
        actions: u32,
        protocol: u32,
    ) -> (u32, u32, u32, Vec<(u32, String)>) {
        self.send(Command::OptNeg {
            version,
            actions,
            protocol,
        })
        .await;
        let (code, data) = self.recv().await.expect("OptNeg reply");
        assert_eq!(code, b'O');
        let n = |i: usize| u32::from_be_bytes(data[i..i + 4].try_into().unwrap());
        let mut lists = Vec::new();
        let mut rest = &data[12..];
        while !rest.is_empty() {
            let stage = u32::from_be_bytes(rest[..4].try_into().unwrap());
            let end = rest[4..].iter().position(|&b| b == 0).unwrap() + 4;
            lists.push((stage, String::from_utf8(rest[4..end].to_vec()).unwrap()));
            rest = &rest[end + 1..];
        }
        (n(0), n(4), n(8), lists)
    }

    /// Connect (with connect macros) from 192.0.2.10:40001; returns the reply code.
    pub async fn connect(&mut self) -> (u8, Vec<u8>) {
        self.macros(
            b'C',
            &[
                ("j", "mx.example.net"),
                ("{daemon_name}", "smtpd"),
                ("{client_addr}", "192.0.2.10"),
                ("{client_name}", "client.example.org"),
            ],
        )
        .await;
        self.send(Command::Connect {
            hostname: "client.example.org".into(),
            family: Family::Inet,
            port: 40001,
            address: "192.0.2.10".into(),
        })
        .await;
        self.recv().await.expect("connect reply")
    }

    pub async fn helo(&mut self, name: &str) -> (u8, Vec<u8>) {
        self.macros(
            b'H',
            &[("{tls_version}", "TLSv1.3"), ("{cipher}", "TLS_AES_256")],
        )
        .await;
        self.send(Command::Helo(name.into())).await;
        self.recv().await.expect("helo reply")
    }

    pub async fn mail(&mut self, args: &[&str]) -> (u8, Vec<u8>) {
        self.macros(
            b'M',
            &[
                ("i", "4XyZ1"),
                ("{auth_authen}", "alice"),
                ("{mail_addr}", "a@b"),
            ],
        )
        .await;
        self.send(Command::Mail(args.iter().map(|s| s.to_string()).collect()))
            .await;
        self.recv().await.expect("mail reply")
    }

    pub async fn rcpt(&mut self, addr: &str) -> (u8, Vec<u8>) {
        self.macros(b'R', &[("{rcpt_addr}", addr.trim_matches(['<', '>']))])
            .await;
        self.send(Command::Rcpt(vec![addr.into()])).await;
        self.recv().await.expect("rcpt reply")
    }

    pub async fn header(&mut self, name: &str, value: &str) {
        self.send(Command::Header {
            name: name.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        })
        .await;
    }

    /// Headers (leading-space values, one folded), EOH, two body chunks — no replies
    /// expected with the no-reply flags negotiated.
    pub async fn content(&mut self) {
        self.header("From", " Alice <a@b.example>").await;
        self.header("Subject", " a folded\n\tsubject line").await;
        self.header("X-Tab", "\tvalue").await;
        self.send(Command::EndOfHeaders).await;
        self.send(Command::Body(b"first line\r\n".to_vec())).await;
        self.send(Command::Body(b"second line\r\n".to_vec())).await;
    }

    /// The message `content` describes, as the client sent it.
    pub const CONTENT: &'static [u8] = b"From: Alice <a@b.example>\r\n\
        Subject: a folded\r\n\tsubject line\r\n\
        X-Tab:\tvalue\r\n\
        \r\n\
        first line\r\nsecond line\r\n";

    pub async fn end_of_message(&mut self) {
        self.macros(b'E', &[("i", "4XyZ1")]).await;
        self.send(Command::EndOfMessage(Vec::new())).await;
    }
}

/// What the recording handler answers, per stage.
#[derive(Clone)]
pub struct Script {
    pub connect: Decision,
    pub helo: Decision,
    pub mail: Decision,
    /// Recipients containing "reject" get this; others Continue.
    pub rcpt_reject: Decision,
    pub eom: EndOfMessage,
    pub eom_delay: Duration,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            connect: Decision::Continue,
            helo: Decision::Continue,
            mail: Decision::Continue,
            rcpt_reject: Decision::Continue,
            eom: EndOfMessage::new(Decision::Continue),
            eom_delay: Duration::ZERO,
        }
    }
}

/// One handler call, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connect(Connection),
    Helo(Option<String>),
    Mail(Transaction),
    Rcpt(String),
    /// The connection as it was at end of message, the transaction, the message.
    Eom(Box<Connection>, Transaction, Vec<u8>),
    Abort(Transaction),
    Close(u64),
}

impl PartialEq for Connection {
    fn eq(&self, other: &Connection) -> bool {
        self.id == other.id
    }
}
impl Eq for Connection {}

#[derive(Default)]
pub struct Recorder {
    pub script: Script,
    pub events: Mutex<Vec<Event>>,
}

impl Recorder {
    pub fn new(script: Script) -> Recorder {
        Recorder {
            script,
            events: Mutex::new(Vec::new()),
        }
    }

    fn push(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

impl Handler for Recorder {
    async fn connect(&self, conn: &Connection) -> Decision {
        self.push(Event::Connect(conn.clone()));
        self.script.connect.clone()
    }

    async fn helo(&self, conn: &Connection) -> Decision {
        self.push(Event::Helo(conn.helo.clone()));
        self.script.helo.clone()
    }

    async fn mail(&self, _conn: &Connection, tx: &Transaction) -> Decision {
        self.push(Event::Mail(tx.clone()));
        self.script.mail.clone()
    }

    async fn rcpt(&self, _conn: &Connection, _tx: &Transaction, rcpt: &str) -> Decision {
        self.push(Event::Rcpt(rcpt.to_string()));
        if rcpt.contains("reject") {
            self.script.rcpt_reject.clone()
        } else {
            Decision::Continue
        }
    }

    async fn end_of_message(
        &self,
        conn: &Connection,
        tx: &Transaction,
        message: Vec<u8>,
    ) -> EndOfMessage {
        self.push(Event::Eom(Box::new(conn.clone()), tx.clone(), message));
        tokio::time::sleep(self.script.eom_delay).await;
        self.script.eom.clone()
    }

    fn abort(&self, _conn: &Connection, tx: &Transaction) {
        self.push(Event::Abort(tx.clone()));
    }

    fn close(&self, conn: &Connection) {
        self.push(Event::Close(conn.id));
    }
}
