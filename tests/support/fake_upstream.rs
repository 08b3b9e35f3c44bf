//! A scriptable SMTP server standing in for the upstream MTA in fault tests.
//!
//! It listens on 127.0.0.1:0, serves each connection in a thread, answers according to a
//! [`Script`] that the test can change at any time, and records every command line and
//! every message it *accepted* (a 2xx end-of-data reply actually sent while the client
//! was still connected). It speaks DATA (with dot-unstuffing; only CRLF.CRLF ends the
//! data) and BDAT (CHUNKING), and optionally XCLIENT.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the server does at a stage.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send this reply. CRLF is appended to each line; `\r\n` separates lines of a
    /// multi-line reply. `{n}` is replaced by the chunk size (BDAT), `{id}` by a queue id.
    Reply(String),
    /// Close the connection without replying.
    Close,
    /// Never reply; keep the connection open until the client goes away or the fake stops.
    Hang,
    /// Wait, then reply (if the client is still connected; otherwise just close).
    Delay(Duration, String),
}

impl Action {
    pub fn reply(s: &str) -> Action {
        Action::Reply(s.to_string())
    }
}

/// How the fake upstream behaves. Change it with [`FakeUpstream::update`]; each command
/// reads the current script, so a change applies to open connections too.
#[derive(Clone, Debug)]
pub struct Script {
    pub greeting: Action,
    pub hostname: String,
    /// EHLO keywords, one per line after the hostname line.
    pub extensions: Vec<String>,
    /// Overrides the whole EHLO reply when set.
    pub ehlo: Option<Action>,
    /// Reply to XCLIENT (only accepted when "XCLIENT" is among `extensions`).
    pub xclient: Action,
    pub mail: Action,
    /// Default RCPT reply.
    pub rcpt: Action,
    /// Per-address RCPT replies (address without angle brackets, compared
    /// case-insensitively).
    pub rcpt_by_addr: Vec<(String, Action)>,
    /// Reply to the DATA command (354 continues).
    pub data: Action,
    /// Close the connection as soon as message content starts to arrive (after the 354, or
    /// on a BDAT command before reading its chunk).
    pub close_in_body: bool,
    /// Reply to a non-LAST BDAT chunk.
    pub bdat_chunk: Action,
    /// Reply after the whole message (CRLF.CRLF or BDAT LAST).
    pub end_of_data: Action,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: Action::reply("220 fake.example.test ESMTP fake upstream"),
            hostname: "fake.example.test".into(),
            extensions: [
                "PIPELINING",
                "SIZE 52428800",
                "8BITMIME",
                "SMTPUTF8",
                "ENHANCEDSTATUSCODES",
                "DSN",
                "CHUNKING",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            ehlo: None,
            xclient: Action::reply("220 fake.example.test ESMTP fake upstream"),
            mail: Action::reply("250 2.1.0 Ok"),
            rcpt: Action::reply("250 2.1.5 Ok"),
            rcpt_by_addr: Vec::new(),
            data: Action::reply("354 End data with <CR><LF>.<CR><LF>"),
            close_in_body: false,
            bdat_chunk: Action::reply("250 2.0.0 {n} octets received"),
            end_of_data: Action::reply("250 2.0.0 Ok: queued as {id}"),
        }
    }
}

impl Script {
    /// Advertise CHUNKING or not.
    pub fn chunking(self, on: bool) -> Self {
        self.extension("CHUNKING", on)
    }

    /// Advertise XCLIENT or not.
    pub fn xclient(self, on: bool) -> Self {
        self.extension(
            "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT",
            on,
        )
    }

    fn extension(mut self, ext: &str, on: bool) -> Self {
        let key = ext.split(' ').next().unwrap_or(ext).to_string();
        self.extensions
            .retain(|e| e.split(' ').next().unwrap_or(e) != key);
        if on {
            self.extensions.push(ext.to_string());
        }
        self
    }

    fn advertises(&self, keyword: &str) -> bool {
        self.extensions.iter().any(|e| {
            e.split(' ')
                .next()
                .unwrap_or(e)
                .eq_ignore_ascii_case(keyword)
        })
    }
}

/// A message the fake upstream saw completely.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    /// Which connection (1-based) it came on.
    pub connection: usize,
    /// The whole MAIL command line.
    pub mail_from: String,
    /// Accepted RCPT addresses (inside the angle brackets).
    pub rcpts: Vec<String>,
    /// The message content: DATA unstuffed (CRLF kept, terminator removed) or the BDAT
    /// chunks concatenated.
    pub body: Vec<u8>,
    /// What was on the wire: for DATA the dot-stuffed text incl. the terminator; for BDAT
    /// the chunks.
    pub raw: Vec<u8>,
    pub via_bdat: bool,
}

#[derive(Default)]
struct Record {
    connections: usize,
    /// (connection, command line without CRLF; a line that did not end in CRLF is
    /// marked with a trailing `<no CRLF>`).
    commands: Vec<(usize, String)>,
    messages: Vec<ReceivedMessage>,
    /// Messages read completely whose 2xx end-of-data reply could not be delivered
    /// (client gone) or was not 2xx.
    not_accepted: Vec<ReceivedMessage>,
    events: Vec<String>,
}

struct Shared {
    script: Mutex<Script>,
    record: Mutex<Record>,
    stop: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
    queue_ids: AtomicUsize,
}

/// The scriptable upstream. Stops (and closes every connection) on drop.
pub struct FakeUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listening: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl FakeUpstream {
    pub fn start(script: Script) -> FakeUpstream {
        Self::start_at(super::loopback(0), script)
    }

    /// Starts on a specific port (e.g. one the proxy already failed to reach).
    pub fn start_on(port: u16, script: Script) -> FakeUpstream {
        Self::start_at(super::loopback(port), script)
    }

    fn start_at(addr: SocketAddr, script: Script) -> FakeUpstream {
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            record: Mutex::new(Record::default()),
            stop: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
            queue_ids: AtomicUsize::new(0),
        });
        let mut fake = FakeUpstream {
            addr,
            shared,
            listening: None,
        };
        fake.listen_on(addr);
        fake
    }

    fn listen_on(&mut self, addr: SocketAddr) {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("fake upstream bind {addr}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("fake upstream listener nonblocking");
        self.addr = listener.local_addr().expect("fake upstream local_addr");
        let flag = Arc::new(AtomicBool::new(true));
        let handle = {
            let flag = flag.clone();
            let shared = self.shared.clone();
            std::thread::spawn(move || accept_loop(listener, flag, shared))
        };
        self.listening = Some((flag, handle));
    }

    /// Closes the listening socket: new connections are refused (open ones stay).
    pub fn stop_listening(&mut self) {
        if let Some((flag, handle)) = self.listening.take() {
            flag.store(false, Ordering::SeqCst);
            let _ = handle.join();
        }
    }

    /// Listens again on the same port.
    pub fn resume_listening(&mut self) {
        if self.listening.is_none() {
            self.listen_on(self.addr);
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Changes the script (applies to the next command on every connection).
    pub fn update(&self, f: impl FnOnce(&mut Script)) {
        f(&mut lock(&self.shared.script));
    }

    pub fn set_script(&self, script: Script) {
        *lock(&self.shared.script) = script;
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        lock(&self.shared.record).connections
    }

    /// All command lines received (across connections), without CRLF.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.shared.record)
            .commands
            .iter()
            .map(|c| c.1.clone())
            .collect()
    }

    /// Messages accepted with a 2xx end-of-data reply that reached the client.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        lock(&self.shared.record).messages.clone()
    }

    /// Messages read completely but not accepted (error reply, or client gone before the
    /// reply could be sent).
    pub fn not_accepted(&self) -> Vec<ReceivedMessage> {
        lock(&self.shared.record).not_accepted.clone()
    }

    /// A readable log of everything that happened, for failure messages.
    pub fn transcript(&self) -> String {
        lock(&self.shared.record).events.join("\n")
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.stop_listening();
        for s in lock(&self.shared.streams).iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if std::thread::panicking() {
            super::dump_log(
                &format!("fake upstream transcript ({})", self.addr),
                &self.transcript(),
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn accept_loop(listener: TcpListener, listening: Arc<AtomicBool>, shared: Arc<Shared>) {
    while listening.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                let id = {
                    let mut r = lock(&shared.record);
                    r.connections += 1;
                    let id = r.connections;
                    r.events.push(format!("#{id} connect from {peer}"));
                    id
                };
                if let Ok(clone) = stream.try_clone() {
                    lock(&shared.streams).push(clone);
                }
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let mut conn = Conn::new(id, stream, shared.clone());
                    let result = conn.serve();
                    let mut r = lock(&shared.record);
                    r.events
                        .push(format!("#{id} end ({})", describe_end(&result)));
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn describe_end(r: &io::Result<()>) -> String {
    match r {
        Ok(()) => "closed".into(),
        Err(e) => format!("error: {e}"),
    }
}

enum Outcome {
    /// A reply with this code was sent.
    Replied(u16),
    /// The connection is to be closed (or the client already went away).
    Closed,
}

struct Transaction {
    mail_from: String,
    rcpts: Vec<String>,
    bdat_body: Vec<u8>,
    bdat_failed: bool,
}

struct Conn {
    id: usize,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    shared: Arc<Shared>,
    txn: Option<Transaction>,
    /// A complete message waiting for its end-of-data reply.
    pending: Option<ReceivedMessage>,
}

impl Conn {
    fn new(id: usize, stream: TcpStream, shared: Arc<Shared>) -> Conn {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
        let writer = stream.try_clone().expect("clone fake upstream stream");
        Conn {
            id,
            reader: BufReader::new(stream),
            writer,
            shared,
            txn: None,
            pending: None,
        }
    }

    fn script(&self) -> Script {
        lock(&self.shared.script).clone()
    }

    fn event(&self, text: String) {
        lock(&self.shared.record)
            .events
            .push(format!("#{} {text}", self.id));
    }

    fn serve(&mut self) -> io::Result<()> {
        let greeting = self.script().greeting;
        if let Outcome::Closed = self.act(&greeting, 0)? {
            return Ok(());
        }
        loop {
            let mut line = Vec::new();
            if self.reader.read_until(b'\n', &mut line)? == 0 {
                self.event("client closed".into());
                return Ok(());
            }
            let crlf = line.ends_with(b"\r\n");
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            let shown = if crlf {
                text.clone()
            } else {
                format!("{text}<no CRLF>")
            };
            self.event(format!("C: {shown}"));
            lock(&self.shared.record).commands.push((self.id, shown));
            let script = self.script();
            let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
            let outcome = match verb.as_str() {
                "EHLO" => {
                    self.txn = None;
                    let action = script.ehlo.clone().unwrap_or_else(|| {
                        let mut lines = vec![script.hostname.clone()];
                        lines.extend(script.extensions.iter().cloned());
                        let n = lines.len();
                        let wire: Vec<String> = lines
                            .iter()
                            .enumerate()
                            .map(|(i, l)| format!("250{}{l}", if i + 1 == n { ' ' } else { '-' }))
                            .collect();
                        Action::Reply(wire.join("\r\n"))
                    });
                    self.act(&action, 0)?
                }
                "HELO" => {
                    self.txn = None;
                    self.act(&Action::Reply(format!("250 {}", script.hostname)), 0)?
                }
                "XCLIENT" if script.advertises("XCLIENT") => {
                    self.txn = None;
                    self.act(&script.xclient, 0)?
                }
                "MAIL" => {
                    let o = self.act(&script.mail, 0)?;
                    if let Outcome::Replied(200..=299) = o {
                        self.txn = Some(Transaction {
                            mail_from: text.clone(),
                            rcpts: Vec::new(),
                            bdat_body: Vec::new(),
                            bdat_failed: false,
                        });
                    }
                    o
                }
                "RCPT" => {
                    let addr = angle_addr(&text);
                    let action = script
                        .rcpt_by_addr
                        .iter()
                        .find(|(a, _)| a.eq_ignore_ascii_case(&addr))
                        .map(|(_, act)| act.clone())
                        .unwrap_or_else(|| script.rcpt.clone());
                    if self.txn.is_none() {
                        self.act(&Action::reply("503 5.5.1 Error: need MAIL command"), 0)?
                    } else {
                        let o = self.act(&action, 0)?;
                        if let (Outcome::Replied(200..=299), Some(t)) = (&o, self.txn.as_mut()) {
                            t.rcpts.push(addr);
                        }
                        o
                    }
                }
                "DATA" => self.data(&script)?,
                "BDAT" => self.bdat(&script, &text)?,
                "RSET" => {
                    self.txn = None;
                    self.act(&Action::reply("250 2.0.0 Ok"), 0)?
                }
                "NOOP" => self.act(&Action::reply("250 2.0.0 Ok"), 0)?,
                "QUIT" => {
                    self.act(&Action::reply("221 2.0.0 Bye"), 0)?;
                    return Ok(());
                }
                _ => self.act(&Action::reply("502 5.5.2 Error: command not recognized"), 0)?,
            };
            if let Outcome::Closed = outcome {
                return Ok(());
            }
        }
    }

    fn data(&mut self, script: &Script) -> io::Result<Outcome> {
        let ready = self
            .txn
            .as_ref()
            .map(|t| !t.rcpts.is_empty())
            .unwrap_or(false);
        if !ready {
            return self.act(&Action::reply("554 5.5.1 Error: no valid recipients"), 0);
        }
        let o = self.act(&script.data, 0)?;
        if !matches!(o, Outcome::Replied(354)) {
            return Ok(o);
        }
        // Read up to CRLF.CRLF (the 354 counts as if a CRLF preceded the data).
        let mut raw = Vec::new();
        loop {
            let start = raw.len();
            if self.reader.read_until(b'\n', &mut raw)? == 0 {
                self.event(format!(
                    "client closed during DATA after {} bytes",
                    raw.len()
                ));
                return Ok(Outcome::Closed);
            }
            if script.close_in_body {
                self.event(format!(
                    "closing during DATA after {} bytes (scripted)",
                    raw.len()
                ));
                // Really close: the clone kept for Drop would otherwise hold the socket open.
                let _ = self.writer.shutdown(Shutdown::Both);
                return Ok(Outcome::Closed);
            }
            let line = &raw[start..];
            let after_crlf = start == 0 || raw[..start].ends_with(b"\r\n");
            if line == b".\r\n" && after_crlf {
                break;
            }
        }
        let content = &raw[..raw.len() - 3];
        let body = unstuff(content);
        self.event(format!(
            "DATA body: {} bytes raw, {} unstuffed",
            raw.len(),
            body.len()
        ));
        self.finish_message(script, body, raw, false)
    }

    fn bdat(&mut self, script: &Script, line: &str) -> io::Result<Outcome> {
        let mut parts = line.split_whitespace().skip(1);
        let size: Option<usize> = parts.next().and_then(|s| s.parse().ok());
        let last = parts
            .next()
            .map(|s| s.eq_ignore_ascii_case("LAST"))
            .unwrap_or(false);
        let Some(size) = size else {
            return self.act(&Action::reply("501 5.5.4 Syntax: BDAT count [LAST]"), 0);
        };
        if script.close_in_body {
            self.event("closing on BDAT before reading the chunk (scripted)".into());
            let _ = self.writer.shutdown(Shutdown::Both);
            return Ok(Outcome::Closed);
        }
        let mut chunk = vec![0u8; size];
        if let Err(e) = self.reader.read_exact(&mut chunk) {
            self.event(format!("client closed during a BDAT chunk: {e}"));
            return Ok(Outcome::Closed);
        }
        let ready = self
            .txn
            .as_ref()
            .map(|t| !t.rcpts.is_empty() && !t.bdat_failed)
            .unwrap_or(false);
        if !ready {
            return self.act(&Action::reply("503 5.5.1 Error: no valid transaction"), 0);
        }
        if let Some(t) = self.txn.as_mut() {
            t.bdat_body.extend_from_slice(&chunk);
        }
        self.event(format!("BDAT chunk {size} bytes last={last}"));
        if last {
            let body = self
                .txn
                .as_mut()
                .map(|t| std::mem::take(&mut t.bdat_body))
                .unwrap_or_default();
            let raw = body.clone();
            return self.finish_message(script, body, raw, true);
        }
        let o = self.act(&script.bdat_chunk, size)?;
        if !matches!(o, Outcome::Replied(200..=299))
            && let Some(t) = self.txn.as_mut()
        {
            t.bdat_failed = true;
        }
        Ok(o)
    }

    fn finish_message(
        &mut self,
        script: &Script,
        body: Vec<u8>,
        raw: Vec<u8>,
        via_bdat: bool,
    ) -> io::Result<Outcome> {
        let txn = self.txn.take();
        let msg = ReceivedMessage {
            connection: self.id,
            mail_from: txn
                .as_ref()
                .map(|t| t.mail_from.clone())
                .unwrap_or_default(),
            rcpts: txn.map(|t| t.rcpts).unwrap_or_default(),
            body,
            raw,
            via_bdat,
        };
        // send_reply records the message as accepted *before* its 2xx reply leaves, so a
        // test that saw the 250 always finds the message recorded.
        self.pending = Some(msg);
        let o = self.act(&script.end_of_data, 0)?;
        if let Some(msg) = self.pending.take() {
            let mut r = lock(&self.shared.record);
            r.events.push(format!(
                "#{} message NOT accepted ({} bytes)",
                self.id,
                msg.body.len()
            ));
            r.not_accepted.push(msg);
        }
        Ok(o)
    }

    /// Performs an action. `n` fills `{n}` in the reply text.
    fn act(&mut self, action: &Action, n: usize) -> io::Result<Outcome> {
        match action {
            Action::Reply(text) => self.send_reply(text, n),
            Action::Close => {
                self.event("closing (scripted)".into());
                let _ = self.writer.shutdown(Shutdown::Both);
                Ok(Outcome::Closed)
            }
            Action::Hang => {
                self.event("hanging (scripted)".into());
                while !self.shared.stop.load(Ordering::SeqCst) {
                    if !self.peer_alive() {
                        self.event("client went away while we hung".into());
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(Outcome::Closed)
            }
            Action::Delay(d, text) => {
                self.event(format!("delaying {d:?} (scripted)"));
                let until = Instant::now() + *d;
                while Instant::now() < until {
                    if self.shared.stop.load(Ordering::SeqCst) {
                        return Ok(Outcome::Closed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if !self.peer_alive() {
                    self.event("client went away before the delayed reply".into());
                    return Ok(Outcome::Closed);
                }
                self.send_reply(text, n)
            }
        }
    }

    fn send_reply(&mut self, text: &str, n: usize) -> io::Result<Outcome> {
        let id = self.shared.queue_ids.fetch_add(1, Ordering::SeqCst) + 1;
        let text = text
            .replace("{n}", &n.to_string())
            .replace("{id}", &format!("FAKE{id:04}"));
        let mut wire = text.trim_end_matches(['\r', '\n']).to_string();
        wire.push_str("\r\n");
        self.event(format!("S: {}", wire.trim_end().replace("\r\n", " | ")));
        let code: u16 = wire
            .get(..3)
            .and_then(|c| c.parse().ok())
            .expect("scripted replies start with a 3-digit code");
        let accepted_index = match self.pending.take() {
            Some(msg) if (200..300).contains(&code) => {
                let mut r = lock(&self.shared.record);
                r.events.push(format!(
                    "#{} message accepted ({} bytes)",
                    self.id,
                    msg.body.len()
                ));
                r.messages.push(msg);
                Some(r.messages.len() - 1)
            }
            other => {
                self.pending = other;
                None
            }
        };
        match self.writer.write_all(wire.as_bytes()) {
            Ok(()) => Ok(Outcome::Replied(code)),
            Err(e) => {
                self.event(format!("could not send reply: {e}"));
                if let Some(i) = accepted_index {
                    let mut r = lock(&self.shared.record);
                    let msg = r.messages.remove(i);
                    r.events
                        .push(format!("#{} message NOT accepted after all", self.id));
                    r.not_accepted.push(msg);
                }
                Ok(Outcome::Closed)
            }
        }
    }

    /// False if the peer has closed the connection (EOF or error on a non-blocking peek).
    /// Pending data counts as alive.
    fn peer_alive(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let stream = self.reader.get_ref();
        if stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        let alive = match stream.peek(&mut b) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
        let _ = stream.set_nonblocking(false);
        alive
    }
}

/// The address between `<` and `>` in a MAIL/RCPT line.
fn angle_addr(line: &str) -> String {
    match (line.find('<'), line.find('>')) {
        (Some(a), Some(b)) if b > a => line[a + 1..b].to_string(),
        _ => String::new(),
    }
}

/// Removes the extra leading dot of CRLF-separated lines (RFC 5321 4.5.2).
pub fn unstuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len());
    let mut at_line_start = true;
    let mut i = 0;
    while i < content.len() {
        let b = content[i];
        if at_line_start && b == b'.' {
            i += 1;
            at_line_start = false;
            continue;
        }
        out.push(b);
        at_line_start = b == b'\n' && i > 0 && content[i - 1] == b'\r';
        i += 1;
    }
    out
}
