//! The client-facing SMTP session, tested end to end over real TCP on loopback.
//!
//! Every test starts its own `mailwarden serve` process (the binary Cargo built) with a config
//! file in a fresh temporary directory: `listen = ["127.0.0.1:0"]`, so the kernel picks the
//! port, which is read back from the `listening on 127.0.0.1:PORT` log line; and
//! `[upstream] url = "maildir:<tempdir>/mail"`, so no MTA is needed and every accepted message
//! can be read back from `mail/new/` (LF line endings, `Return-Path:` first, then our
//! `Received:` header, then the message as the client sent it).
//!
//! The client here is deliberately raw: it writes exactly the bytes a test gives it (pipelined
//! commands, bare LF, smuggling sequences, half a chunk) and parses replies line by line,
//! keeping a transcript that is printed with every failure, together with the proxy's log.
//!
//! Each protocol rule sits next to the test that checks it. Reply codes and enhanced status
//! codes (RFC 3463) are asserted exactly. Tests share nothing and can run in any order and in
//! parallel; timeouts are generous because the machine may be small and busy.
//!
//! The process is run by the shared `tests/support/proxy.rs`; the client and the Maildir reader
//! are private to this file on purpose (the shared `tests/support` client is blocking and
//! cannot do STARTTLS).

mod support;

use support::show;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

// ---------------------------------------------------------------------------------------------
// Helpers: the proxy process, the raw client, delivered messages.
// ---------------------------------------------------------------------------------------------

/// How long the proxy may take to exit on a bad config.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long any one reply (or the close of a connection) may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The hostname every test config uses.
const HOSTNAME: &str = "mx.example.test";

/// A running `mailwarden serve` delivering to the Maildir `<its temp dir>/mail`. The process
/// itself is `support::Proxy` (config in a fresh temporary directory, listener on a port the
/// kernel picks, killed on drop, config and log printed if the test failed).
struct Proxy {
    inner: support::Proxy,
    addr: SocketAddr,
    /// The self-signed certificate, when `[tls]` is configured.
    cert: Option<CertificateDer<'static>>,
}

impl Proxy {
    /// Starts a proxy delivering to a Maildir; `server_extra` is added to `[server]`.
    fn start(server_extra: &str) -> Proxy {
        Self::launch(server_extra, false)
    }

    /// Like `start`, with STARTTLS offered using a fresh self-signed certificate.
    fn start_tls(server_extra: &str) -> Proxy {
        Self::launch(server_extra, true)
    }

    fn launch(server_extra: &str, tls: bool) -> Proxy {
        let mut config = format!(
            "[server]\nhostname = \"{HOSTNAME}\"\n{server_extra}\n\n\
             [upstream]\nurl = \"maildir:@DIR@/mail\"\n"
        );
        let mut files = Vec::new();
        let mut cert = None;
        if tls {
            let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
                .expect("generate a self-signed certificate");
            files.push(("cert.pem", generated.cert.pem().into_bytes()));
            files.push(("key.pem", generated.key_pair.serialize_pem().into_bytes()));
            config.push_str("\n[tls]\ncert = \"@DIR@/cert.pem\"\nkey = \"@DIR@/key.pem\"\n");
            cert = Some(generated.cert.der().clone());
        }
        let files: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_slice())).collect();
        let inner = support::Proxy::start_with_files(&config, &files);
        Proxy {
            addr: inner.addr(),
            inner,
            cert,
        }
    }

    fn maildir(&self) -> PathBuf {
        self.inner.dir().join("mail")
    }

    /// Connects and checks the 220 greeting.
    async fn connect(&self) -> Client {
        let mut c = Client::connect(self.addr).await;
        c.expect(220, "").await;
        c
    }

    /// Connects, checks the greeting and says EHLO.
    async fn connect_ehlo(&self) -> Client {
        let mut c = self.connect().await;
        c.cmd("EHLO client.example", 250, "").await;
        c
    }

    /// The messages in `new/`, in delivery order.
    fn delivered(&self) -> Vec<Delivered> {
        let new = self.maildir().join("new");
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&new)
            .unwrap_or_else(|e| panic!("read {}: {e}", new.display()))
            .map(|entry| {
                let path = entry.expect("dir entry").path();
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .to_string();
                (delivery_counter(&name), path)
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, path)| Delivered {
                raw: std::fs::read(&path).expect("read a delivered file"),
            })
            .collect()
    }

    /// The one message in `new/`; fails if there is not exactly one.
    fn only_delivered(&self) -> Delivered {
        let mut all = self.delivered();
        assert_eq!(all.len(), 1, "expected exactly one delivered message");
        all.remove(0)
    }

    fn assert_nothing_delivered(&self) {
        let all = self.delivered();
        assert!(
            all.is_empty(),
            "expected no delivery, found {}:\n{}",
            all.len(),
            all.iter()
                .map(|d| show(&d.raw))
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
    }

    fn tls_connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert.clone().expect("proxy started with start_tls"))
            .expect("add the self-signed certificate as a root");
        let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The per-process counter in a Maildir name `secs.M<us>P<pid>Q<n>.host`, for ordering.
fn delivery_counter(name: &str) -> u64 {
    name.split('.')
        .nth(1)
        .and_then(|unique| unique.rsplit_once('Q'))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// One reply as the client saw it.
#[derive(Debug, Clone)]
struct Reply {
    code: u16,
    /// The text after `NNN-` / `NNN ` of each line.
    lines: Vec<String>,
}

impl Reply {
    /// The enhanced status code (`x.y.z`) opening the first line, if any.
    fn enhanced(&self) -> Option<&str> {
        let word = self.lines.first()?.split(' ').next()?;
        let parts: Vec<&str> = word.split('.').collect();
        let ok = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then_some(word)
    }

    fn text(&self) -> String {
        self.lines.join("\n")
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while STARTTLS swaps the stream.
    Gone,
}

/// A raw SMTP client: exact bytes out, replies in, transcript kept.
struct Client {
    stream: Stream,
    /// Received bytes not yet parsed into a reply.
    buf: Vec<u8>,
    transcript: String,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr}: timed out"))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Self::wrap(stream)
    }

    /// Connects from a given loopback source address (127.0.0.0/8 is all ours on Linux).
    async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> Client {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .unwrap_or_else(|e| panic!("bind {source}: {e}"));
        let stream = tokio::time::timeout(REPLY_TIMEOUT, socket.connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr}: timed out"))
            .unwrap_or_else(|e| panic!("connect from {source} to {addr}: {e}"));
        Self::wrap(stream)
    }

    fn wrap(stream: TcpStream) -> Client {
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream: Stream::Plain(stream),
            buf: Vec::new(),
            transcript: String::new(),
        }
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!("{what}\n--- transcript ---\n{}", self.transcript)
    }

    fn note(&mut self, who: &str, bytes: &[u8]) {
        const MAX: usize = 300;
        let shown = show(&bytes[..bytes.len().min(MAX)]);
        let more = if bytes.len() > MAX {
            format!(" ... ({} bytes in all)", bytes.len())
        } else {
            String::new()
        };
        self.transcript.push_str(&format!("{who} {shown}{more}\n"));
    }

    /// Writes exactly `bytes`, in one write call.
    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        self.note("C:", bytes);
        let result = match &mut self.stream {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => match s.write_all(bytes).await {
                Ok(()) => s.flush().await,
                Err(e) => Err(e),
            },
            Stream::Gone => unreachable!("stream in use"),
        };
        if let Err(e) = result {
            self.fail(format!("write failed: {e}"));
        }
    }

    /// Reads more bytes into `buf`; `Ok(0)` at end of stream.
    async fn read_more(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = match &mut self.stream {
            Stream::Plain(s) => s.read(&mut chunk).await?,
            Stream::Tls(s) => s.read(&mut chunk).await?,
            Stream::Gone => unreachable!("stream in use"),
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one complete (possibly multi-line) reply.
    async fn reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let line = &raw[..end];
                self.note("S:", line);
                let text = String::from_utf8_lossy(line).to_string();
                let code = text.get(..3).and_then(|c| c.parse::<u16>().ok());
                let sep = text.as_bytes().get(3).copied();
                let Some(code) = code.filter(|_| matches!(sep, None | Some(b' ') | Some(b'-')))
                else {
                    self.fail(format!("not an SMTP reply line: {text:?}"));
                };
                lines.push((code, text.get(4..).unwrap_or("").to_string()));
                if sep != Some(b'-') {
                    if lines.iter().any(|(c, _)| *c != code) {
                        self.fail("reply lines with different codes");
                    }
                    return Reply {
                        code,
                        lines: lines.into_iter().map(|(_, t)| t).collect(),
                    };
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read_more()).await {
                Err(_) => self.fail(format!("no reply within {REPLY_TIMEOUT:?}")),
                Ok(Ok(0)) => self.fail("connection closed while waiting for a reply"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => self.fail(format!("read failed while waiting for a reply: {e}")),
            }
        }
    }

    /// Reads the next reply and checks its code and enhanced code (`""`: must have none).
    async fn expect(&mut self, code: u16, enhanced: &str) -> Reply {
        let r = self.reply().await;
        let want = (!enhanced.is_empty()).then_some(enhanced);
        if r.code != code || r.enhanced() != want {
            self.fail(format!(
                "expected {code} {enhanced}, got {} {:?}",
                r.code,
                r.text()
            ));
        }
        r
    }

    /// Sends `line` + CRLF and checks the reply.
    async fn cmd(&mut self, line: &str, code: u16, enhanced: &str) -> Reply {
        self.send(format!("{line}\r\n")).await;
        self.expect(code, enhanced).await
    }

    /// MAIL, RCPT for each recipient, DATA; then `data` verbatim (it must carry its own
    /// `<CRLF>.<CRLF>`). Returns the reply to the end of data.
    async fn send_message(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> Reply {
        self.cmd(&format!("MAIL FROM:<{from}>"), 250, "2.1.0").await;
        for rcpt in rcpts {
            self.cmd(&format!("RCPT TO:<{rcpt}>"), 250, "2.1.5").await;
        }
        self.cmd("DATA", 354, "").await;
        self.send(data).await;
        self.reply().await
    }

    /// Checks that the server closes the connection without sending anything more.
    async fn expect_closed(&mut self) {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if !self.buf.is_empty() {
                let extra = show(&self.buf);
                self.fail(format!("expected the connection to close, got {extra:?}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read_more()).await {
                Err(_) => self.fail(format!("connection still open after {REPLY_TIMEOUT:?}")),
                Ok(Ok(0)) => return,
                Ok(Ok(_)) => {}
                // A reset is a close too (we may have had unread bytes in flight).
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Ok(Err(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof
                        && matches!(self.stream, Stream::Tls(_)) =>
                {
                    self.fail(format!(
                        "the TLS connection was closed without a close_notify alert: {e}"
                    ))
                }
                Ok(Err(e)) => self.fail(format!("read failed: {e}")),
            }
        }
    }

    /// Runs the TLS handshake on the plain connection (after a 220 to STARTTLS).
    async fn handshake(&mut self, connector: &TlsConnector) {
        if !self.buf.is_empty() {
            let extra = show(&self.buf);
            self.fail(format!(
                "bytes after the 220 to STARTTLS, in clear: {extra:?}"
            ));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            self.fail("TLS is already active");
        };
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = tokio::time::timeout(REPLY_TIMEOUT, connector.connect(name, tcp)).await;
        match tls {
            Ok(Ok(tls)) => {
                self.note("--", b"TLS handshake done");
                self.stream = Stream::Tls(Box::new(tls));
            }
            Ok(Err(e)) => self.fail(format!("TLS handshake failed: {e}")),
            Err(_) => self.fail("TLS handshake timed out"),
        }
    }

    /// The protocol version after the handshake, e.g. `TLSv1_3`.
    fn tls_version(&self) -> String {
        match &self.stream {
            Stream::Tls(s) => format!("{:?}", s.get_ref().1.protocol_version()),
            _ => "none".to_string(),
        }
    }
}

/// One file from `new/`: `Return-Path:` line, our `Received:` header, the message.
struct Delivered {
    raw: Vec<u8>,
}

impl Delivered {
    /// (Return-Path line, Received header with its continuation lines, the rest).
    fn parts(&self) -> (String, String, &[u8]) {
        let raw = &self.raw[..];
        let first = raw
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or_else(|| panic!("no line in {:?}", show(raw)));
        let return_path = String::from_utf8_lossy(&raw[..first]).to_string();
        let mut at = first + 1;
        // The filter's result headers (X-Spam-*) come first; our Received header is the
        // last field we add, right above the message as the client sent it.
        while raw[at..].starts_with(b"X-Spam-") {
            loop {
                at = raw[at..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(raw.len(), |n| at + n + 1);
                if at >= raw.len() || !matches!(raw[at], b'\t' | b' ') {
                    break;
                }
            }
        }
        assert!(
            raw[at..].starts_with(b"Received: "),
            "no Received header after Return-Path in {:?}",
            show(raw)
        );
        let start = at;
        loop {
            let end = raw[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(raw.len(), |n| at + n + 1);
            at = end;
            if at >= raw.len() || !matches!(raw[at], b'\t' | b' ') {
                break;
            }
        }
        let received = String::from_utf8_lossy(&raw[start..at]).to_string();
        (return_path, received, &raw[at..])
    }

    fn return_path(&self) -> String {
        self.parts().0
    }

    fn received(&self) -> String {
        self.parts().1
    }

    /// The message as the client sent it (with LF line ends, as stored).
    fn message(&self) -> Vec<u8> {
        self.parts().2.to_vec()
    }

    /// The message's own header section (up to the first empty line).
    fn message_headers(&self) -> String {
        let message = self.message();
        let end = message
            .windows(2)
            .position(|w| w == b"\n\n")
            .unwrap_or(message.len());
        String::from_utf8_lossy(&message[..end]).to_string()
    }
}

/// `a\r\nb\r\n` → `a\nb\n`: what the Maildir stores for a canonical message.
fn lf(crlf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(crlf.len());
    let mut i = 0;
    while i < crlf.len() {
        if crlf[i..].starts_with(b"\r\n") {
            out.push(b'\n');
            i += 2;
        } else {
            out.push(crlf[i]);
            i += 1;
        }
    }
    out
}

/// A short test message, terminated for DATA.
fn simple_data(subject: &str) -> Vec<u8> {
    format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n.\r\n").into_bytes()
}

/// `simple_data(subject)` as the Maildir stores it.
fn simple_stored(subject: &str) -> Vec<u8> {
    let data = lf(&simple_data(subject));
    data[..data.len() - 2].to_vec() // without the ".\n" end-of-data line
}

// ---------------------------------------------------------------------------------------------
// Greeting, EHLO/HELO, the simple commands.
// ---------------------------------------------------------------------------------------------

/// The ESMTP keywords every EHLO reply carries, with the default SIZE.
const BASE_KEYWORDS: [&str; 7] = [
    "PIPELINING",
    "SIZE 26214400",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "CHUNKING",
    "DSN",
];

/// The keywords of an EHLO reply (every line after the first), sorted.
fn keywords(r: &Reply) -> Vec<String> {
    let mut k: Vec<String> = r.lines[1..].to_vec();
    k.sort();
    k
}

fn sorted(words: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    k.sort();
    k
}

/// RFC 5321 §4.2, §4.1.1.1: the server greets with 220 (no enhanced code, RFC 2034 §3) and
/// answers EHLO with 250, its name on the first line and one ESMTP keyword per further line.
/// SIZE carries the configured limit (RFC 1870); STARTTLS only appears when `[tls]` is set,
/// and without it STARTTLS gets `454 4.7.0` (RFC 3207 §4).
#[tokio::test]
async fn greeting_and_ehlo_keywords() {
    let proxy = Proxy::start("max_message_size = 26214400");
    let mut c = Client::connect(proxy.addr).await;
    let greeting = c.expect(220, "").await;
    assert_eq!(greeting.lines, vec![format!("{HOSTNAME} ESMTP mailwarden")]);
    let ehlo = c.cmd("EHLO client.example", 250, "").await;
    assert_eq!(ehlo.lines[0], format!("{HOSTNAME} greets client.example"));
    assert_eq!(keywords(&ehlo), sorted(&BASE_KEYWORDS), "{ehlo:?}");
    c.cmd("STARTTLS", 454, "4.7.0").await;
    // A second EHLO is fine and gives the same answer.
    let again = c.cmd("EHLO client.example", 250, "").await;
    assert_eq!(keywords(&again), keywords(&ehlo));
    c.cmd("QUIT", 221, "2.0.0").await;
    c.expect_closed().await;
}

/// SIZE advertises the configured value, whatever it is (RFC 1870 §4).
#[tokio::test]
async fn ehlo_size_follows_config() {
    let proxy = Proxy::start("max_message_size = 2048");
    let mut c = proxy.connect().await;
    let ehlo = c.cmd("EHLO client.example", 250, "").await;
    assert!(ehlo.lines.contains(&"SIZE 2048".to_string()), "{ehlo:?}");
    assert!(!ehlo.lines.iter().any(|l| l == "SIZE 26214400"), "{ehlo:?}");
}

/// RFC 5321 §4.1.1.1: HELO (plain SMTP) is answered with a one-line 250 and a transaction
/// can follow; the Received header then says `with SMTP` (RFC 3848).
#[tokio::test]
async fn helo_works() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect().await;
    let r = c.cmd("HELO old.example", 250, "").await;
    assert_eq!(r.lines, vec![format!("{HOSTNAME} greets old.example")]);
    let r = c
        .send_message("a@example.test", &["b@example.org"], &simple_data("helo"))
        .await;
    assert_eq!((r.code, r.enhanced()), (250, Some("2.0.0")), "{r:?}");
    let received = proxy.only_delivered().received();
    assert!(
        received.starts_with("Received: from old.example (localhost [127.0.0.1])\n"),
        "{received}"
    );
    assert!(received.contains(" with SMTP id "), "{received}");
}

/// RFC 5321 §4.1.1.5-§4.1.1.10, §3.5.3 and §4.2.4: VRFY 252 (cannot verify, will attempt delivery),
/// HELP 214, NOOP 250 (with or without an argument), RSET 250, unknown command
/// `500 5.5.1`, known but not offered (AUTH, EXPN) `502 5.5.1`, QUIT 221 and close.
#[tokio::test]
async fn simple_commands() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    c.cmd("VRFY postmaster", 252, "2.5.0").await;
    // No [tls]: HELP does not list STARTTLS (EHLO does not offer it either).
    let help = c.cmd("HELP", 214, "2.0.0").await;
    assert!(help.text().contains("MAIL"), "{help:?}");
    assert!(!help.text().contains("STARTTLS"), "{help:?}");
    c.cmd("NOOP", 250, "2.0.0").await;
    c.cmd("NOOP ignored argument", 250, "2.0.0").await;
    c.cmd("noop", 250, "2.0.0").await;
    c.cmd("FROBNICATE now", 500, "5.5.1").await;
    c.cmd("AUTH PLAIN AGFAAGI=", 502, "5.5.1").await;
    c.cmd("EXPN staff", 502, "5.5.1").await;
    c.cmd("RSET", 250, "2.0.0").await;
    c.cmd("QUIT", 221, "2.0.0").await;
    c.expect_closed().await;
}

// ---------------------------------------------------------------------------------------------
// Command order.
// ---------------------------------------------------------------------------------------------

/// RFC 5321 §4.1.4, §3.3: MAIL needs EHLO/HELO first, RCPT needs MAIL, DATA needs MAIL and
/// an accepted RCPT, MAIL may not be nested: `503 5.5.1`. DATA after MAIL with no accepted
/// recipient is answered `554 5.5.1 No valid recipients` (§3.3 allows 503 or 554). None of
/// these refusals enters data mode: the next command is a command.
#[tokio::test]
async fn bad_sequence() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect().await;
    c.cmd("MAIL FROM:<a@example.test>", 503, "5.5.1").await;
    c.cmd("RCPT TO:<b@example.org>", 503, "5.5.1").await;
    c.cmd("DATA", 503, "5.5.1").await;
    c.cmd("EHLO client.example", 250, "").await;
    c.cmd("RCPT TO:<b@example.org>", 503, "5.5.1").await;
    c.cmd("DATA", 503, "5.5.1").await;
    c.cmd("NOOP", 250, "2.0.0").await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    let r = c.cmd("DATA", 554, "5.5.1").await;
    assert!(r.text().contains("No valid recipients"), "{r:?}");
    c.cmd("NOOP", 250, "2.0.0").await;
    c.cmd("MAIL FROM:<other@example.test>", 503, "5.5.1").await;
    // The first transaction is still open and completes normally.
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    c.cmd("DATA", 354, "").await;
    c.send(simple_data("after errors")).await;
    c.expect(250, "2.0.0").await;
    assert_eq!(
        proxy.only_delivered().return_path(),
        "Return-Path: <a@example.test>"
    );
}

// ---------------------------------------------------------------------------------------------
// DATA delivery, several transactions, pipelining.
// ---------------------------------------------------------------------------------------------

/// RFC 5321 §4.5.2: the client doubles a leading dot, the server removes one; everything
/// else, 8-bit bytes included (RFC 6152), is delivered unchanged. The Maildir file starts
/// with `Return-Path:` and our `Received:` header (RFC 5321 §4.4) naming the HELO, the
/// client's address literal, the protocol and the single recipient.
#[tokio::test]
async fn data_delivery_is_intact() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    let sent: &[u8] = b"From: a@example.test\r\nTo: b@example.org\r\nSubject: plain\r\n\r\n\
        Hello\r\n..leading dot\r\n..\r\n...two dots\r\nend.\r\n. \r\n\
        caf\xc3\xa9 latin1 \xe9 and \xff\x80\r\n\ttab line  \r\n\r\nlast\r\n.\r\n";
    c.cmd("MAIL FROM:<a@example.test> BODY=8BITMIME", 250, "2.1.0")
        .await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    c.cmd("DATA", 354, "").await;
    c.send(sent).await;
    let r = c.expect(250, "2.0.0").await;
    assert!(r.text().contains("queued as"), "{r:?}");
    let d = proxy.only_delivered();
    let want: &[u8] = b"From: a@example.test\nTo: b@example.org\nSubject: plain\n\n\
        Hello\n.leading dot\n.\n..two dots\nend.\n \n\
        caf\xc3\xa9 latin1 \xe9 and \xff\x80\n\ttab line  \n\nlast\n";
    assert_eq!(show(&d.message()), show(want));
    assert_eq!(d.return_path(), "Return-Path: <a@example.test>");
    let received = d.received();
    assert!(
        received.starts_with(&format!(
            "Received: from client.example (localhost [127.0.0.1])\n\tby {HOSTNAME} (mailwarden) with ESMTP id "
        )),
        "{received}"
    );
    assert!(received.contains("\n\tfor <b@example.org>; "), "{received}");
    c.cmd("QUIT", 221, "2.0.0").await;
    c.expect_closed().await;
}

/// The end-of-data line is found whatever TCP does to it: here every byte of the message is
/// its own write, so `<CR>`, `<LF>` and `.` arrive in separate reads.
#[tokio::test]
async fn data_split_into_single_bytes() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    c.cmd("DATA", 354, "").await;
    let data = b"Subject: bytes\r\n\r\n..x\r\n.\r\n";
    for b in data {
        c.send([*b]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    c.expect(250, "2.0.0").await;
    c.cmd("NOOP", 250, "2.0.0").await;
    assert_eq!(
        show(&proxy.only_delivered().message()),
        show(b"Subject: bytes\n\n.x\n")
    );
}

/// RFC 5321 §3.3: after the end of data (or RSET, §4.1.1.5) a new transaction may start in
/// the same session; each message is delivered once with its own envelope, including the
/// null reverse-path `<>` (§4.5.5).
#[tokio::test]
async fn several_transactions_in_one_session() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    for (i, from) in ["one@example.test", "", "three@example.test"]
        .iter()
        .enumerate()
    {
        let r = c
            .send_message(from, &["b@example.org"], &simple_data(&format!("msg{i}")))
            .await;
        assert_eq!((r.code, r.enhanced()), (250, Some("2.0.0")), "{r:?}");
        assert_eq!(proxy.delivered().len(), i + 1);
    }
    // An abandoned transaction delivers nothing, and MAIL after RSET is not "nested".
    c.cmd("MAIL FROM:<dropped@example.test>", 250, "2.1.0")
        .await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    c.cmd("RSET", 250, "2.0.0").await;
    let r = c
        .send_message(
            "four@example.test",
            &["b@example.org"],
            &simple_data("msg3"),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let all = proxy.delivered();
    let paths: Vec<String> = all.iter().map(|d| d.return_path()).collect();
    assert_eq!(
        paths,
        [
            "Return-Path: <one@example.test>",
            "Return-Path: <>",
            "Return-Path: <three@example.test>",
            "Return-Path: <four@example.test>",
        ]
    );
    for (i, d) in all.iter().enumerate() {
        assert_eq!(show(&d.message()), show(&simple_stored(&format!("msg{i}"))));
    }
}

/// RFC 2920 §3.1: a client may send MAIL, RCPT... and DATA in one go; the server answers
/// each in order (§3.2) and only then waits for the message.
#[tokio::test]
async fn pipelined_batch() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    c.send(
        "MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.org>\r\n\
         RCPT TO:<c@example.org>\r\nDATA\r\n",
    )
    .await;
    c.expect(250, "2.1.0").await;
    c.expect(250, "2.1.5").await;
    c.expect(250, "2.1.5").await;
    c.expect(354, "").await;
    c.send(simple_data("pipelined")).await;
    c.expect(250, "2.0.0").await;
    let d = proxy.only_delivered();
    // Two recipients: the Received header names neither (as Postfix does).
    assert!(!d.received().contains("for <"), "{}", d.received());
    assert_eq!(show(&d.message()), show(&simple_stored("pipelined")));
}

/// RFC 2920 §3.1: QUIT may follow the end of data in the same packet. It must be read as a
/// command after the message (250 then 221) and the message delivered exactly once.
#[tokio::test]
async fn quit_pipelined_after_end_of_data() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    c.cmd("DATA", 354, "").await;
    c.send("Subject: q\r\n\r\nbye\r\n.\r\nQUIT\r\n").await;
    c.expect(250, "2.0.0").await;
    c.expect(221, "2.0.0").await;
    c.expect_closed().await;
    let d = proxy.only_delivered();
    assert_eq!(show(&d.message()), show(b"Subject: q\n\nbye\n"));
}

/// The whole transaction in one write, message and QUIT included (what a fully pipelining
/// client that does not wait for 354 looks like): still one message, replies in order.
#[tokio::test]
async fn whole_transaction_in_one_write() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect().await;
    c.send(
        "EHLO client.example\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.org>\r\n\
         DATA\r\nSubject: all\r\n\r\nat once\r\n.\r\nNOOP\r\nQUIT\r\n",
    )
    .await;
    c.expect(250, "").await;
    c.expect(250, "2.1.0").await;
    c.expect(250, "2.1.5").await;
    c.expect(354, "").await;
    c.expect(250, "2.0.0").await;
    c.expect(250, "2.0.0").await;
    c.expect(221, "2.0.0").await;
    c.expect_closed().await;
    assert_eq!(
        show(&proxy.only_delivered().message()),
        show(b"Subject: all\n\nat once\n")
    );
}

// ---------------------------------------------------------------------------------------------
// BDAT (CHUNKING, RFC 3030).
// ---------------------------------------------------------------------------------------------

/// RFC 3030 §2: each `BDAT n` is followed by exactly n octets, taken verbatim (no dot
/// handling, a CRLF may be split between chunks); each non-LAST chunk gets 250, the LAST
/// chunk the reply for the whole message. Chunks may be pipelined with their commands.
#[tokio::test]
async fn bdat_several_chunks() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    let chunks: [&[u8]; 3] = [b"Subject: bdat\r\n\r\n.dot\r", b"\n..two\r\n", b"."];
    c.send(format!("BDAT {}\r\n", chunks[0].len())).await;
    c.send(chunks[0]).await;
    let r = c.expect(250, "2.0.0").await;
    assert!(r.text().contains(&format!("{} octets", chunks[0].len())));
    // Command and chunk in one write.
    let mut second = format!("BDAT {}\r\n", chunks[1].len()).into_bytes();
    second.extend_from_slice(chunks[1]);
    c.send(second).await;
    c.expect(250, "2.0.0").await;
    let mut last = format!("BDAT {} LAST\r\n", chunks[2].len()).into_bytes();
    last.extend_from_slice(chunks[2]);
    last.extend_from_slice(b"NOOP\r\n");
    c.send(last).await;
    let r = c.expect(250, "2.0.0").await;
    assert!(r.text().contains("queued as"), "{r:?}");
    c.expect(250, "2.0.0").await;
    let d = proxy.only_delivered();
    // The message did not end in CRLF; mailwarden ends its last line.
    assert_eq!(
        show(&d.message()),
        show(b"Subject: bdat\n\n.dot\n..two\n.\n")
    );
}

/// RFC 3030 §2: `BDAT 0 LAST` ends a message whose content came in earlier chunks; alone
/// it sends an empty message.
#[tokio::test]
async fn bdat_zero_last() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    let chunk = b"Subject: zero\r\n\r\nbody\r\n";
    let mut first = format!("BDAT {}\r\n", chunk.len()).into_bytes();
    first.extend_from_slice(chunk);
    c.send(first).await;
    c.expect(250, "2.0.0").await;
    c.cmd("BDAT 0 LAST", 250, "2.0.0").await;
    assert_eq!(
        show(&proxy.only_delivered().message()),
        show(b"Subject: zero\n\nbody\n")
    );
    c.cmd("MAIL FROM:<empty@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    c.cmd("BDAT 0 LAST", 250, "2.0.0").await;
    let all = proxy.delivered();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].return_path(), "Return-Path: <empty@example.test>");
    assert_eq!(all[1].message(), b"");
}

/// RFC 3030 §2: the chunk follows its BDAT command whether or not the server accepts it, so
/// a refused BDAT (no MAIL: 503 5.5.1; no recipient: 554 5.5.1) still consumes its n octets.
/// Here the chunks look like commands; were they parsed as such, QUIT would close the session.
#[tokio::test]
async fn bdat_refused_chunk_is_consumed() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    c.send("BDAT 6\r\nQUIT\r\n").await;
    c.expect(503, "5.5.1").await;
    c.cmd("NOOP", 250, "2.0.0").await;
    c.send("BDAT 12 LAST\r\nRSET\r\nQUIT\r\n").await;
    c.expect(503, "5.5.1").await;
    c.cmd("NOOP", 250, "2.0.0").await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.send("BDAT 6 LAST\r\nQUIT\r\n").await;
    c.expect(554, "5.5.1").await;
    c.cmd("NOOP", 250, "2.0.0").await;
    proxy.assert_nothing_delivered();
}

/// RFC 3030 §2: DATA and BDAT may not be mixed in one transaction; DATA after BDAT gets
/// `503 5.5.1`, is not a DATA (no 354, no data mode) and leaves the transaction as it was.
#[tokio::test]
async fn data_after_bdat_is_refused() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    c.send("BDAT 10\r\nSubject: m").await;
    c.expect(250, "2.0.0").await;
    c.cmd("DATA", 503, "5.5.1").await;
    c.cmd("NOOP", 250, "2.0.0").await;
    c.send("BDAT 11 LAST\r\nixed\r\n\r\nx\r\n").await;
    c.expect(250, "2.0.0").await;
    assert_eq!(
        show(&proxy.only_delivered().message()),
        show(b"Subject: mixed\n\nx\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Limits.
// ---------------------------------------------------------------------------------------------

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF. Longer ones get
/// `500 5.5.2` and the session goes on; a 100 KB line is read to its end (not parsed in
/// pieces) and refused the same way.
#[tokio::test]
async fn command_line_limit() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    // 510 + CRLF = 512: allowed.
    c.cmd(&format!("NOOP {}", "x".repeat(505)), 250, "2.0.0")
        .await;
    // 511 + CRLF = 513: too long.
    c.cmd(&format!("NOOP {}", "x".repeat(506)), 500, "5.5.2")
        .await;
    c.cmd("NOOP", 250, "2.0.0").await;
    c.cmd(&format!("NOOP {}", "y".repeat(700)), 500, "5.5.2")
        .await;
    c.cmd("NOOP", 250, "2.0.0").await;
    // 100 KB, ending in something that would be a command if the line were split.
    let mut huge = "z".repeat(100 * 1024 - 6);
    huge.push_str("\r\nQUIT");
    c.send(format!("{huge}\r\n")).await;
    c.expect(500, "5.5.2").await;
    // "QUIT" after a CRLF in the same write is a line of its own, and is read as one.
    c.expect(221, "2.0.0").await;
    c.expect_closed().await;

    let mut c = proxy.connect_ehlo().await;
    let huge = "MAIL FROM:<".to_string() + &"a".repeat(100 * 1024) + "@example.test>";
    c.cmd(&huge, 500, "5.5.2").await;
    c.cmd("NOOP", 250, "2.0.0").await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
}

/// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with its CRLF. A longer line is
/// read through; at the end of data the message is refused with `500 5.5.2`, nothing is
/// delivered, and the session goes on with no transaction.
#[tokio::test]
async fn text_line_limit() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    // 998 + CRLF = 1000: allowed. So is a line of 1001 octets on the wire whose first octet
    // is the dot added for transparency, which does not count.
    let ok = format!(
        "Subject: ok\r\n\r\n{}\r\n..{}\r\n.\r\n",
        "x".repeat(998),
        "y".repeat(997)
    );
    let r = c
        .send_message("a@example.test", &["b@example.org"], ok.as_bytes())
        .await;
    assert_eq!((r.code, r.enhanced()), (250, Some("2.0.0")), "{r:?}");
    let want = format!("Subject: ok\n\n{}\n.{}\n", "x".repeat(998), "y".repeat(997));
    assert_eq!(
        show(&proxy.only_delivered().message()),
        show(want.as_bytes())
    );

    let long = format!("Subject: long\r\n\r\n{}\r\nafter\r\n.\r\n", "x".repeat(999));
    let r = c
        .send_message("a@example.test", &["b@example.org"], long.as_bytes())
        .await;
    assert_eq!((r.code, r.enhanced()), (500, Some("5.5.2")), "{r:?}");
    c.cmd("NOOP", 250, "2.0.0").await;
    // The refused transaction is over: MAIL is not nested.
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    assert_eq!(
        proxy.delivered().len(),
        1,
        "the long-line message was delivered"
    );

    // The same with BDAT.
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    let body = format!("Subject: long\r\n\r\n{}\r\n", "y".repeat(2000));
    c.send(format!("BDAT {} LAST\r\n{body}", body.len())).await;
    c.expect(500, "5.5.2").await;
    c.cmd("NOOP", 250, "2.0.0").await;
    assert_eq!(
        proxy.delivered().len(),
        1,
        "the long-line message was delivered"
    );
}

/// `n` octets of message (CRLF lines of at most 100 octets), terminated for DATA.
fn message_of_size(n: usize) -> Vec<u8> {
    let mut m = b"Subject: size\r\n\r\n".to_vec();
    while m.len() < n {
        let room = n - m.len();
        let line = room.clamp(2, 100);
        m.extend_from_slice(&vec![b'x'; line - 2]);
        m.extend_from_slice(b"\r\n");
    }
    assert_eq!(m.len(), n);
    m.extend_from_slice(b".\r\n");
    m
}

/// RFC 1870 §6.1, RFC 3463: a message over the configured maximum gets `552 5.3.4`, whether
/// it is announced too big in `MAIL ... SIZE=` or turns out too big in DATA or BDAT. The
/// limit itself is allowed. A refused DATA message is still read to its end, so the session
/// stays in sync; a BDAT chunk announced bigger than the limit is refused and the session
/// closed, since reading it is what the limit is there to avoid.
#[tokio::test]
async fn message_size_limit() {
    let proxy = Proxy::start("max_message_size = 2048");
    let mut c = proxy.connect_ehlo().await;
    c.cmd("MAIL FROM:<a@example.test> SIZE=2049", 552, "5.3.4")
        .await;
    c.cmd("RCPT TO:<b@example.org>", 503, "5.5.1").await;
    c.cmd("MAIL FROM:<a@example.test> SIZE=2048", 250, "2.1.0")
        .await;
    c.cmd("RSET", 250, "2.0.0").await;

    let r = c
        .send_message("a@example.test", &["b@example.org"], &message_of_size(2048))
        .await;
    assert_eq!((r.code, r.enhanced()), (250, Some("2.0.0")), "{r:?}");
    let r = c
        .send_message("a@example.test", &["b@example.org"], &message_of_size(2049))
        .await;
    assert_eq!((r.code, r.enhanced()), (552, Some("5.3.4")), "{r:?}");
    c.cmd("NOOP", 250, "2.0.0").await;
    let r = c
        .send_message("a@example.test", &["b@example.org"], &message_of_size(5000))
        .await;
    assert_eq!((r.code, r.enhanced()), (552, Some("5.3.4")), "{r:?}");
    c.cmd("NOOP", 250, "2.0.0").await;
    assert_eq!(proxy.delivered().len(), 1);

    // BDAT: two chunks that together pass the limit.
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    let chunk = "x".repeat(98) + "\r\n";
    let chunk = chunk.repeat(15);
    c.send(format!("BDAT {}\r\n{chunk}", chunk.len())).await;
    c.expect(250, "2.0.0").await;
    c.send(format!("BDAT {} LAST\r\n{chunk}", chunk.len()))
        .await;
    c.expect(552, "5.3.4").await;
    c.cmd("NOOP", 250, "2.0.0").await;
    assert_eq!(proxy.delivered().len(), 1);

    // BDAT: one chunk announced over the limit.
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    c.cmd("BDAT 4096 LAST", 552, "5.3.4").await;
    c.expect_closed().await;
    assert_eq!(proxy.delivered().len(), 1);
}

/// RFC 5321 §4.5.3.1.10: recipients beyond the server's limit get `452 4.5.3` (temporary:
/// the client sends the rest in another transaction); the ones accepted still get the mail.
#[tokio::test]
async fn recipient_limit() {
    let proxy = Proxy::start("max_recipients = 3");
    let mut c = proxy.connect_ehlo().await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    for i in 1..=3 {
        c.cmd(&format!("RCPT TO:<r{i}@example.org>"), 250, "2.1.5")
            .await;
    }
    c.cmd("RCPT TO:<r4@example.org>", 452, "4.5.3").await;
    c.cmd("RCPT TO:<r5@example.org>", 452, "4.5.3").await;
    c.cmd("DATA", 354, "").await;
    c.send(simple_data("three")).await;
    c.expect(250, "2.0.0").await;
    assert_eq!(proxy.delivered().len(), 1);
    // The limit is per transaction.
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<r4@example.org>", 250, "2.1.5").await;
}

/// RFC 5321 §4.5.3.2.7: a server may time out an idle client; mailwarden then says
/// `421 4.4.2` and closes. Only idleness counts: a client that keeps talking is not cut off.
#[tokio::test]
async fn command_timeout() {
    let proxy = Proxy::start("command_timeout_secs = 1");
    let mut c = proxy.connect().await;
    // Busy for two timeouts, never idle for one.
    c.cmd("EHLO client.example", 250, "").await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        c.cmd("NOOP", 250, "2.0.0").await;
    }
    let idle = Instant::now();
    c.expect(421, "4.4.2").await;
    assert!(
        idle.elapsed() >= Duration::from_millis(500),
        "timed out after {:?}",
        idle.elapsed()
    );
    c.expect_closed().await;
}

/// The same during DATA (`data_timeout_secs`) and inside a BDAT chunk: `421 4.4.2`, close,
/// and the unfinished message is not delivered.
#[tokio::test]
async fn data_timeout() {
    let proxy = Proxy::start("command_timeout_secs = 60\ndata_timeout_secs = 1");
    let mut c = proxy.connect_ehlo().await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    c.cmd("DATA", 354, "").await;
    c.send("Subject: slow\r\n\r\nhalf a mess").await;
    let idle = Instant::now();
    c.expect(421, "4.4.2").await;
    assert!(
        idle.elapsed() >= Duration::from_millis(500),
        "{:?}",
        idle.elapsed()
    );
    c.expect_closed().await;

    let mut c = proxy.connect_ehlo().await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    c.send("BDAT 100 LAST\r\nSubject: slow\r\n").await;
    c.expect(421, "4.4.2").await;
    c.expect_closed().await;
    proxy.assert_nothing_delivered();
}

/// Connects until the greeting is 220 again (a freed slot is released just after the close).
async fn connect_when_free(proxy: &Proxy, source: Ipv4Addr) -> Client {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let mut c = Client::connect_from(source, proxy.addr).await;
        let r = c.reply().await;
        if r.code == 220 {
            return c;
        }
        if Instant::now() > deadline {
            c.fail("the session slot was never freed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// RFC 5321 §3.1: a server that cannot take a session greets with 421 and closes. With
/// `max_sessions_per_ip = 2` the third concurrent connection from one address gets
/// `421 4.7.0`; another address is not affected; a slot frees up when a session ends.
#[tokio::test]
async fn sessions_per_ip_limit() {
    let proxy = Proxy::start("max_sessions_per_ip = 2");
    let local = Ipv4Addr::new(127, 0, 0, 1);
    let mut a = Client::connect_from(local, proxy.addr).await;
    a.expect(220, "").await;
    let mut b = Client::connect_from(local, proxy.addr).await;
    b.expect(220, "").await;
    let mut third = Client::connect_from(local, proxy.addr).await;
    let r = third.expect(421, "4.7.0").await;
    assert!(r.text().contains("from your address"), "{r:?}");
    third.expect_closed().await;
    // The limit is per address.
    let mut other = Client::connect_from(Ipv4Addr::new(127, 0, 0, 2), proxy.addr).await;
    other.expect(220, "").await;
    other.cmd("EHLO other.example", 250, "").await;
    // The sessions that were let in work normally.
    a.cmd("EHLO client.example", 250, "").await;
    b.cmd("NOOP", 250, "2.0.0").await;
    a.cmd("QUIT", 221, "2.0.0").await;
    a.expect_closed().await;
    let mut again = connect_when_free(&proxy, local).await;
    again.cmd("NOOP", 250, "2.0.0").await;
}

/// `max_sessions` counts all clients together: with 2, a third concurrent connection gets
/// `421 4.7.0` even from a new address.
#[tokio::test]
async fn sessions_total_limit() {
    let proxy = Proxy::start("max_sessions = 2");
    let mut a = Client::connect_from(Ipv4Addr::new(127, 0, 0, 1), proxy.addr).await;
    a.expect(220, "").await;
    let mut b = Client::connect_from(Ipv4Addr::new(127, 0, 0, 2), proxy.addr).await;
    b.expect(220, "").await;
    let mut third = Client::connect_from(Ipv4Addr::new(127, 0, 0, 3), proxy.addr).await;
    let r = third.expect(421, "4.7.0").await;
    assert!(r.text().contains("Too many concurrent sessions"), "{r:?}");
    assert!(!r.text().contains("from your address"), "{r:?}");
    third.expect_closed().await;
    a.cmd("NOOP", 250, "2.0.0").await;
    b.cmd("QUIT", 221, "2.0.0").await;
    b.expect_closed().await;
    let mut again = connect_when_free(&proxy, Ipv4Addr::new(127, 0, 0, 3)).await;
    again.cmd("NOOP", 250, "2.0.0").await;
}

// ---------------------------------------------------------------------------------------------
// Bare newlines and SMTP smuggling.
// ---------------------------------------------------------------------------------------------

/// RFC 5321 §2.3.8: lines end with CRLF only. Under `bare_newline = "reject"` (the default)
/// a command ending in a bare LF, or holding a bare CR, gets `550 5.5.2` and the connection
/// is closed, as Postfix's `smtpd_forbid_bare_newline` does.
#[tokio::test]
async fn bare_newline_in_command_is_rejected() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect().await;
    c.send("EHLO client.example\n").await;
    c.expect(550, "5.5.2").await;
    c.expect_closed().await;

    let mut c = proxy.connect_ehlo().await;
    c.send("NOOP\r\nNO\rOP\r\nNOOP\r\n").await;
    c.expect(250, "2.0.0").await;
    let r = c.expect(550, "5.5.2").await;
    assert!(r.text().contains("<CR>"), "{r:?}");
    c.expect_closed().await;
}

/// Under `reject`, a bare LF or CR inside DATA refuses the message with `550 5.5.2` as soon as
/// the client pauses — a legacy client that ends its message with `<LF>.<LF>` and waits gets
/// its answer (and a bounce with the reason) instead of nothing until the data timeout — and
/// the connection is closed; nothing is delivered, whatever follows. A client that goes on
/// sending is read to its real end (`<CRLF>.<CRLF>`) first, so the reply is not lost to a reset.
/// Issue 12 §3.
#[tokio::test]
async fn bare_newline_in_data_is_rejected() {
    for (bad, kind) in [
        (&b"Subject: x\r\n\r\nbare\nLF\r\n"[..], "<LF>"),
        (b"Subject: x\r\n\r\nbare\rCR\r\n", "<CR>"),
        (b"Subject: legacy\n\nends with LF dot LF\n.\n", "<LF>"),
    ] {
        let proxy = Proxy::start("bare_newline = \"reject\"\ndata_timeout_secs = 30");
        let mut c = proxy.connect_ehlo().await;
        c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
        c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
        c.cmd("DATA", 354, "").await;
        let sent = Instant::now();
        c.send(bad).await;
        let r = c.expect(550, "5.5.2").await;
        assert!(r.text().contains(kind), "{r:?}");
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "answered only after {:?}",
            sent.elapsed()
        );
        c.expect_closed().await;
        proxy.assert_nothing_delivered();
    }
    // A client that keeps sending after the bare LF: read to the real end, then refused.
    let proxy = Proxy::start("bare_newline = \"reject\"");
    let mut c = proxy.connect_ehlo().await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    c.cmd("DATA", 354, "").await;
    let mut data = b"Subject: x\r\n\r\nbare\nLF\r\n".to_vec();
    for i in 0..2000 {
        data.extend_from_slice(format!("line {i} of a long message\r\n").as_bytes());
    }
    data.extend_from_slice(b".\r\nQUIT\r\n");
    c.send(data).await;
    c.expect(550, "5.5.2").await;
    c.expect_closed().await;
    proxy.assert_nothing_delivered();
}

/// Under `reject`, a bare LF or CR in BDAT chunks: the message is refused with `550 5.5.2`
/// once complete (LAST), the connection closed, nothing delivered.
#[tokio::test]
async fn bare_newline_in_bdat_is_rejected() {
    for chunk in [
        &b"Subject: x\r\n\r\nbare\nLF\r\n"[..],
        b"Subject: x\r\n\r\nbare\rCR\r\n",
    ] {
        let proxy = Proxy::start("");
        let mut c = proxy.connect_ehlo().await;
        c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
        c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
        let mut first = format!("BDAT {}\r\n", chunk.len()).into_bytes();
        first.extend_from_slice(chunk);
        c.send(first).await;
        c.expect(250, "2.0.0").await;
        c.send("BDAT 7 LAST\r\nend\r\n\r\n").await;
        c.expect(550, "5.5.2").await;
        c.expect_closed().await;
        proxy.assert_nothing_delivered();
    }
    // A bare CR as the very last octet of the message.
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    c.send("BDAT 16 LAST\r\nSubject: x\r\n\r\nx\r").await;
    c.expect(550, "5.5.2").await;
    c.expect_closed().await;
    proxy.assert_nothing_delivered();
}

/// Under `bare_newline = "normalize"` each bare LF and bare CR becomes a line break and the
/// message is delivered, by DATA and by BDAT.
#[tokio::test]
async fn bare_newline_normalized() {
    let proxy = Proxy::start("bare_newline = \"normalize\"");
    let mut c = proxy.connect_ehlo().await;
    let r = c
        .send_message(
            "a@example.test",
            &["b@example.org"],
            b"Subject: n\r\n\r\none\ntwo\rthree\r\r\nfour\r\n.\r\n",
        )
        .await;
    assert_eq!((r.code, r.enhanced()), (250, Some("2.0.0")), "{r:?}");
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
    let chunk = b"Subject: n\n\none\ntwo\rthree\r\r\nfour\n";
    let mut bdat = format!("BDAT {} LAST\r\n", chunk.len()).into_bytes();
    bdat.extend_from_slice(chunk);
    c.send(bdat).await;
    c.expect(250, "2.0.0").await;
    let all = proxy.delivered();
    assert_eq!(all.len(), 2);
    for d in all {
        assert_eq!(
            show(&d.message()),
            show(b"Subject: n\n\none\ntwo\nthree\n\nfour\n")
        );
    }
}

/// Sequences that some MTAs take for the end of data (SMTP smuggling, CVE-2023-51764 and
/// friends). None of them ends the message here: only `<CRLF>.<CRLF>` does.
const SMUGGLING: [&str; 6] = [
    "\n.\n",
    "\n.\r\n",
    "\r\n.\n",
    "\r.\r",
    "\r\n.\r\r\n",
    "\r.\r\n",
];

/// The smuggled second message, after the smuggling sequence.
const SMUGGLED: &str = "MAIL FROM:<evil@example.test>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n\
                        Subject: smuggled\r\n\r\nx\r\n.\r\n";

/// One message carrying `seq` and a smuggled message, all in one write.
fn smuggling_data(seq: &str) -> String {
    format!("Subject: legit\r\n\r\nlegit body{seq}{SMUGGLED}")
}

/// Under `normalize` each smuggling attempt is one message (the smuggled text is its body)
/// and gets one reply: the next reply is to our own NOOP, not to a smuggled MAIL.
#[tokio::test]
async fn smuggling_with_normalize() {
    let proxy = Proxy::start("bare_newline = \"normalize\"");
    let mut c = proxy.connect_ehlo().await;
    for (i, seq) in SMUGGLING.iter().enumerate() {
        let r = c
            .send_message(
                "good@example.test",
                &["b@example.org"],
                smuggling_data(seq).as_bytes(),
            )
            .await;
        assert_eq!(
            (r.code, r.enhanced()),
            (250, Some("2.0.0")),
            "{seq:?}: {r:?}"
        );
        let r = c.cmd("NOOP", 250, "2.0.0").await;
        assert_eq!(r.lines, ["2.0.0 OK"], "{seq:?}");
        let all = proxy.delivered();
        assert_eq!(all.len(), i + 1, "{seq:?}: one file per transaction");
        let d = &all[i];
        assert_eq!(
            d.return_path(),
            "Return-Path: <good@example.test>",
            "{seq:?}"
        );
        let headers = d.message_headers();
        assert_eq!(headers, "Subject: legit", "{seq:?}");
        let text = String::from_utf8_lossy(&d.message()).to_string();
        assert!(
            text.contains("MAIL FROM:<evil@example.test>"),
            "{seq:?}: {text:?}"
        );
        assert!(text.contains("Subject: smuggled"), "{seq:?}: {text:?}");
        assert!(!text.contains('\r'), "{seq:?}: not normalized: {text:?}");
    }
    for d in proxy.delivered() {
        assert!(!d.return_path().contains("evil"));
        assert!(!d.message_headers().contains("smuggled"));
    }
}

/// Under `reject` each smuggling attempt is refused as a whole (`550 5.5.2`, close): no
/// reply to any smuggled command, nothing delivered.
#[tokio::test]
async fn smuggling_with_reject() {
    let proxy = Proxy::start("");
    for seq in SMUGGLING {
        let mut c = proxy.connect_ehlo().await;
        c.cmd("MAIL FROM:<good@example.test>", 250, "2.1.0").await;
        c.cmd("RCPT TO:<b@example.org>", 250, "2.1.5").await;
        c.cmd("DATA", 354, "").await;
        c.send(smuggling_data(seq)).await;
        let r = c.reply().await;
        if (r.code, r.enhanced()) != (550, Some("5.5.2")) {
            c.fail(format!("{seq:?}: expected 550 5.5.2, got {r:?}"));
        }
        c.expect_closed().await;
        proxy.assert_nothing_delivered();
    }
}

// ---------------------------------------------------------------------------------------------
// STARTTLS (RFC 3207).
// ---------------------------------------------------------------------------------------------

/// RFC 3207: STARTTLS is advertised when a certificate is configured and answered
/// `220 2.0.0`; after the handshake the session starts over (§4.2: EHLO again, MAIL before
/// it is `503 5.5.1`), STARTTLS is no longer offered or accepted, and the Received header
/// says `ESMTPS` with the TLS version (RFC 3848).
#[tokio::test]
async fn starttls() {
    let proxy = Proxy::start_tls("");
    let connector = proxy.tls_connector();
    let mut c = proxy.connect().await;
    let ehlo = c.cmd("EHLO client.example", 250, "").await;
    let mut want = BASE_KEYWORDS.to_vec();
    want.push("STARTTLS");
    assert_eq!(keywords(&ehlo), sorted(&want), "{ehlo:?}");
    let help = c.cmd("HELP", 214, "2.0.0").await;
    assert!(help.text().contains("STARTTLS"), "{help:?}");
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("STARTTLS", 503, "5.5.1").await;
    c.cmd("RSET", 250, "2.0.0").await;
    c.cmd("STARTTLS", 220, "2.0.0").await;
    c.handshake(&connector).await;
    assert_eq!(c.tls_version(), "Some(TLSv1_3)");
    c.cmd("MAIL FROM:<a@example.test>", 503, "5.5.1").await;
    let ehlo = c.cmd("EHLO client.example", 250, "").await;
    assert_eq!(keywords(&ehlo), sorted(&BASE_KEYWORDS), "{ehlo:?}");
    c.cmd("STARTTLS", 503, "5.5.1").await;
    let r = c
        .send_message("a@example.test", &["b@example.org"], &simple_data("tls"))
        .await;
    assert_eq!((r.code, r.enhanced()), (250, Some("2.0.0")), "{r:?}");
    c.cmd("QUIT", 221, "2.0.0").await;
    let received = proxy.only_delivered().received();
    assert!(received.contains(" with ESMTPS id "), "{received}");
    assert!(received.contains("(using TLSv1.3)"), "{received}");
}

/// CVE-2011-0411: commands pipelined after STARTTLS arrive in clear text and must not be
/// executed inside the TLS session. The first reply after the handshake must be the one to
/// our own EHLO, not a `250` for the injected NOOP.
#[tokio::test]
async fn starttls_command_injection() {
    let proxy = Proxy::start_tls("");
    let connector = proxy.tls_connector();
    let mut c = proxy.connect_ehlo().await;
    c.send("STARTTLS\r\nNOOP\r\n").await;
    c.expect(220, "2.0.0").await;
    c.handshake(&connector).await;
    let r = c.cmd("EHLO client.example", 250, "").await;
    assert_eq!(
        r.lines[0],
        format!("{HOSTNAME} greets client.example"),
        "the first reply inside TLS is not the EHLO reply: {r:?}"
    );
    c.cmd("NOOP", 250, "2.0.0").await;
    c.cmd("QUIT", 221, "2.0.0").await;

    // The same with a whole injected transaction: nothing of it is delivered.
    let mut c = proxy.connect_ehlo().await;
    c.send(
        "STARTTLS\r\nMAIL FROM:<evil@example.test>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n\
         Subject: injected\r\n\r\nx\r\n.\r\n",
    )
    .await;
    c.expect(220, "2.0.0").await;
    c.handshake(&connector).await;
    c.cmd("MAIL FROM:<a@example.test>", 503, "5.5.1").await;
    c.cmd("EHLO client.example", 250, "").await;
    c.cmd("QUIT", 221, "2.0.0").await;
    proxy.assert_nothing_delivered();
}

/// RFC 8446 §6.1 (and RFC 5246 §7.2.1): each side MUST send a `close_notify` alert before
/// closing its write side, so the peer can tell an orderly end from a truncation. After QUIT
/// in a TLS session the 221 must be followed by `close_notify`, then the close.
#[tokio::test]
async fn starttls_session_ends_with_close_notify() {
    let proxy = Proxy::start_tls("");
    let connector = proxy.tls_connector();
    let mut c = proxy.connect_ehlo().await;
    c.cmd("STARTTLS", 220, "2.0.0").await;
    c.handshake(&connector).await;
    c.cmd("EHLO client.example", 250, "").await;
    c.cmd("QUIT", 221, "2.0.0").await;
    c.expect_closed().await;
}

// ---------------------------------------------------------------------------------------------
// SMTPUTF8 (RFC 6531).
// ---------------------------------------------------------------------------------------------

/// RFC 6531 §3.4: UTF-8 addresses need the SMTPUTF8 parameter on MAIL; without it they are
/// refused with `553 5.6.7` (the enhanced code RFC 6531 registers for this). With it they are
/// accepted and the Received header says `UTF8SMTP` (RFC 6531 §3.7.4).
#[tokio::test]
async fn smtputf8() {
    let proxy = Proxy::start("");
    let mut c = proxy.connect_ehlo().await;
    c.cmd("MAIL FROM:<José@exämple.org>", 553, "5.6.7").await;
    c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0").await;
    c.cmd("RCPT TO:<ü@exämple.org>", 553, "5.6.7").await;
    c.cmd("RSET", 250, "2.0.0").await;
    c.cmd("MAIL FROM:<José@exämple.org> SMTPUTF8", 250, "2.1.0")
        .await;
    c.cmd("RCPT TO:<ü@exämple.org>", 250, "2.1.5").await;
    c.cmd("DATA", 354, "").await;
    c.send("Subject: Grüße\r\n\r\nÜber\r\n.\r\n").await;
    c.expect(250, "2.0.0").await;
    let d = proxy.only_delivered();
    assert_eq!(d.return_path(), "Return-Path: <José@exämple.org>");
    let received = d.received();
    assert!(received.contains(" with UTF8SMTP id "), "{received}");
    assert!(received.contains("for <ü@exämple.org>"), "{received}");
    assert_eq!(
        String::from_utf8_lossy(&d.message()),
        "Subject: Grüße\n\nÜber\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration errors.
// ---------------------------------------------------------------------------------------------

/// A typo in the config must stop `serve` (non-zero exit) with the file and line in the
/// message, instead of silently running with a default.
#[test]
fn bad_config_is_refused_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"{HOSTNAME}\"\nmax_recipient = 3\n\n\
             [upstream]\nurl = {}\n",
            toml_string(&format!("maildir:{}", dir.path().join("mail").display()))
        ),
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mailwarden");
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mailwarden kept running with an unknown config key");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(
        !status.success(),
        "exit status {status:?}; stderr: {stderr}"
    );
    let place = format!("{}:4:", path.display());
    assert!(stderr.contains(&place), "no {place:?} in: {stderr}");
    assert!(stderr.contains("max_recipient"), "{stderr}");
}
