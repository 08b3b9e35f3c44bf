//! A small blocking SMTP client for tests.
//!
//! It is deliberately dumb: it sends exactly the bytes it is given (so tests can send bare
//! LF, pipelined commands or broken chunks) and reads replies line by line, keeping a
//! transcript that is added to every panic message.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// How long a single reply may take before the test fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// One SMTP reply, possibly multi-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Text of each line after the `NNN-` / `NNN ` prefix, without CRLF.
    pub lines: Vec<String>,
}

impl Reply {
    /// All lines' text joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The enhanced status code (`x.y.z`) at the start of the first line, if any.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.lines.first()?.split(' ').next()?;
        let parts: Vec<&str> = first.split('.').collect();
        let ok = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then_some(first)
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The reply as it appeared on the wire (lines joined with CRLF, final CRLF included).
    pub fn wire(&self) -> String {
        let mut out = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == self.lines.len() { ' ' } else { '-' };
            out.push_str(&format!("{}{}{}\r\n", self.code, sep, line));
        }
        out
    }

    /// Parses a reply given as wire text (`"550-a\r\n550 b"`, final CRLF optional).
    pub fn parse_wire(s: &str) -> Reply {
        let mut code = 0;
        let mut lines = Vec::new();
        for line in s.split("\r\n").filter(|l| !l.is_empty()) {
            code = line[..3].parse().expect("reply code is 3 digits");
            lines.push(line.get(4..).unwrap_or("").to_string());
        }
        Reply { code, lines }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.wire().trim_end().replace("\r\n", " | "))
    }
}

/// A blocking SMTP client connection.
pub struct SmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    transcript: Vec<String>,
    pub peer: SocketAddr,
}

impl SmtpClient {
    /// Connects (10 s timeout) without reading the greeting.
    pub fn connect(addr: SocketAddr) -> SmtpClient {
        Self::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<SmtpClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        Self::wrap(stream, addr)
    }

    /// Connects from the local address `source` (any of 127.0.0.0/8 works on Linux), so a
    /// test can tell the real client's address from the proxy's 127.0.0.1. No greeting read.
    pub fn connect_from(source: IpAddr, addr: SocketAddr) -> SmtpClient {
        let connect = || -> io::Result<SmtpClient> {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.bind(&SocketAddr::new(source, 0).into())?;
            socket.connect_timeout(&addr.into(), Duration::from_secs(10))?;
            Self::wrap(socket.into(), addr)
        };
        connect().unwrap_or_else(|e| panic!("connect from {source} to {addr}: {e}"))
    }

    fn wrap(stream: TcpStream, addr: SocketAddr) -> io::Result<SmtpClient> {
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        Ok(SmtpClient {
            reader: BufReader::new(stream),
            writer,
            transcript: Vec::new(),
            peer: addr,
        })
    }

    /// Connects and reads the greeting, which must be 220.
    pub fn connect_greeted(addr: SocketAddr) -> SmtpClient {
        let mut c = Self::connect(addr);
        let greeting = c.reply();
        assert_eq!(greeting.code, 220, "greeting from {addr}: {greeting}");
        c
    }

    /// Connects, expects a 220 greeting, sends EHLO and expects 250.
    pub fn connect_ehlo(addr: SocketAddr, helo: &str) -> SmtpClient {
        let mut c = Self::connect_greeted(addr);
        let r = c.cmd(&format!("EHLO {helo}"));
        c.expect_code(&r, 250, "EHLO");
        c
    }

    /// The conversation so far, one line per entry (`C:` client, `S:` server).
    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }

    fn note(&mut self, dir: &str, bytes: &[u8]) {
        const MAX: usize = 400;
        let shown = super::show(&bytes[..bytes.len().min(MAX)]).replace("\\n\n", "\\n");
        let more = if bytes.len() > MAX {
            format!(" ...({} bytes)", bytes.len())
        } else {
            String::new()
        };
        self.transcript.push(format!("{dir} {shown}{more}"));
    }

    /// Reads one (possibly multi-line) reply.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n = self.reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                self.transcript.push("S: <connection closed>".into());
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed while reading a reply",
                ));
            }
            self.note("S:", &buf);
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\r', '\n']);
            if line.len() < 3 || !line.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("malformed reply line {line:?}"),
                ));
            }
            let code: u16 = line[..3].parse().expect("three digits");
            let sep = line.as_bytes().get(3).copied();
            lines.push((code, line.get(4..).unwrap_or("").to_string()));
            if sep != Some(b'-') {
                break;
            }
        }
        let code = lines.last().map(|l| l.0).expect("at least one line");
        if lines.iter().any(|l| l.0 != code) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("multi-line reply with mixed codes: {lines:?}"),
            ));
        }
        Ok(Reply {
            code,
            lines: lines.into_iter().map(|l| l.1).collect(),
        })
    }

    /// Reads one reply or panics with the transcript.
    pub fn reply(&mut self) -> Reply {
        match self.read_reply() {
            Ok(r) => r,
            Err(e) => panic!(
                "reading a reply from {}: {e}\ntranscript:\n{}",
                self.peer,
                self.transcript()
            ),
        }
    }

    /// Sends raw bytes.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.note("C:", bytes);
        self.writer.write_all(bytes)?;
        self.writer.flush()
    }

    /// Sends raw bytes or panics with the transcript.
    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send(bytes) {
            panic!(
                "sending to {}: {e}\ntranscript:\n{}",
                self.peer,
                self.transcript()
            );
        }
    }

    /// Sends `line` + CRLF and reads the reply.
    pub fn try_cmd(&mut self, line: &str) -> io::Result<Reply> {
        self.try_send(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// Sends `line` + CRLF and reads the reply, panicking on I/O errors.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Panics (with transcript) unless `reply.code == code`.
    pub fn expect_code(&self, reply: &Reply, code: u16, what: &str) {
        assert_eq!(
            reply.code,
            code,
            "{what}: expected {code}, got {reply}\ntranscript:\n{}",
            self.transcript()
        );
    }

    /// `DATA`, then (if the server said 354) the dot-stuffed message and `CRLF.CRLF`.
    /// Returns the DATA reply if it was not 354, otherwise the end-of-data reply.
    /// A message that does not end in CRLF gets one (DATA cannot express that).
    pub fn data(&mut self, message: &[u8]) -> Reply {
        let r = self.cmd("DATA");
        if r.code != 354 {
            return r;
        }
        self.send(&dot_terminated(message));
        self.reply()
    }

    /// Like [`data`](Self::data) but returns I/O errors (e.g. the server closed the
    /// connection) instead of panicking.
    pub fn try_data(&mut self, message: &[u8]) -> io::Result<Reply> {
        let r = self.try_cmd("DATA")?;
        if r.code != 354 {
            return Ok(r);
        }
        self.try_send(&dot_terminated(message))?;
        self.read_reply()
    }

    /// Sends `BDAT <len>[ LAST]` followed by the chunk and reads the reply.
    pub fn bdat(&mut self, chunk: &[u8], last: bool) -> Reply {
        self.send(&bdat_bytes(chunk, last));
        self.reply()
    }

    pub fn try_bdat(&mut self, chunk: &[u8], last: bool) -> io::Result<Reply> {
        self.try_send(&bdat_bytes(chunk, last))?;
        self.read_reply()
    }

    /// A whole transaction that must succeed: MAIL, RCPT(s), DATA; returns the end-of-data
    /// reply after asserting every step got a positive answer.
    pub fn send_mail(&mut self, from: &str, rcpts: &[&str], message: &[u8]) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        self.expect_code(&r, 250, "MAIL FROM");
        for rcpt in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            self.expect_code(&r, 250, &format!("RCPT TO:<{rcpt}>"));
        }
        let r = self.data(message);
        self.expect_code(&r, 250, "end of DATA");
        r
    }

    /// Sends QUIT and reads the reply if there is one (errors are ignored).
    pub fn quit(&mut self) {
        let _ = self.try_cmd("QUIT");
    }

    /// True if the server closes the connection within `within` (EOF or reset), without
    /// sending anything else first. Any data received counts as "not closed".
    pub fn is_closed_within(&mut self, within: Duration) -> bool {
        let _ = self.reader.get_ref().set_read_timeout(Some(within));
        let mut buf = [0u8; 512];
        let result = match self.reader.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                self.note("S: (unexpected)", &buf[..n]);
                false
            }
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        };
        let _ = self.reader.get_ref().set_read_timeout(Some(REPLY_TIMEOUT));
        result
    }

    /// Asserts the server sends nothing and keeps the connection open for `d`.
    pub fn expect_silence(&mut self, d: Duration, what: &str) {
        let _ = self.reader.get_ref().set_read_timeout(Some(d));
        let mut buf = [0u8; 512];
        let got = match self.reader.read(&mut buf) {
            Ok(0) => Some("the connection was closed".to_string()),
            Ok(n) => {
                self.note("S:", &buf[..n]);
                Some(format!("got {:?}", String::from_utf8_lossy(&buf[..n])))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => Some(format!("read error {e}")),
        };
        let _ = self.reader.get_ref().set_read_timeout(Some(REPLY_TIMEOUT));
        if let Some(got) = got {
            panic!(
                "{what}: expected no reply for {d:?}, but {got}\ntranscript:\n{}",
                self.transcript()
            );
        }
    }

    /// Asserts the server closes the connection within 10 s.
    pub fn expect_closed(&mut self, what: &str) {
        assert!(
            self.is_closed_within(Duration::from_secs(10)),
            "{what}: expected the server to close the connection\ntranscript:\n{}",
            self.transcript()
        );
    }

    /// Reads replies until none arrives for `quiet` (or the connection ends).
    pub fn replies_until_quiet(&mut self, quiet: Duration) -> Vec<Reply> {
        let _ = self.reader.get_ref().set_read_timeout(Some(quiet));
        let mut out = Vec::new();
        while let Ok(r) = self.read_reply() {
            out.push(r);
        }
        let _ = self.reader.get_ref().set_read_timeout(Some(REPLY_TIMEOUT));
        out
    }

    /// Half-closes our side.
    pub fn shutdown_write(&self) {
        let _ = self.writer.shutdown(Shutdown::Write);
    }
}

/// The bytes sent after a 354: dot-stuffed message, a CRLF if the message lacks a final
/// one, then `.CRLF`.
pub fn dot_terminated(message: &[u8]) -> Vec<u8> {
    let mut out = dot_stuff(message);
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Doubles a leading dot on every line (lines are CRLF-terminated; only dots right after a
/// CRLF or at the very start count, as RFC 5321 says).
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = prev == b'\r' && b == b'\n';
        prev = b;
    }
    out
}

/// `BDAT <len>[ LAST]\r\n<chunk>`.
pub fn bdat_bytes(chunk: &[u8], last: bool) -> Vec<u8> {
    let mut out = format!(
        "BDAT {}{}\r\n",
        chunk.len(),
        if last { " LAST" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(chunk);
    out
}
