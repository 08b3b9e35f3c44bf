//! The SMTP client side: one connection to the upstream MTA.
//!
//! It speaks just enough SMTP to be a transparent before-queue proxy: EHLO, STARTTLS
//! (opportunistic), XCLIENT/XFORWARD so the upstream sees the real client, MAIL/RCPT with
//! their parameters, the message by BDAT (RFC 3030) or DATA (dot-stuffed), RSET and QUIT.
//! Every read has a timeout; every failure is an `UpstreamError` that the session turns into
//! a 4xx for the client — never a 250.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::Xclient;
use crate::envelope::ClientInfo;
use crate::envelope::UNAVAILABLE;
use crate::smtp::connection::Io;
use crate::smtp::data::dot_stuff;
use crate::smtp::reply::Reply;

/// How to reach and talk to the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub address: String,
    pub helo_name: String,
    pub xclient: Xclient,
    pub xforward: bool,
    pub starttls: bool,
    pub chunking: bool,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
}

/// What went wrong talking to the upstream.
#[derive(Debug)]
pub enum UpstreamError {
    /// Could not connect, or the connection broke.
    Io(io::Error),
    /// No reply within the timeout.
    Timeout(&'static str),
    /// The upstream said something that is not SMTP.
    Protocol(String),
    /// The upstream refused us before any transaction (greeting, EHLO, XCLIENT): its reply.
    Refused(&'static str, Reply),
    /// `xclient = "always"` but the upstream does not offer XCLIENT to us.
    XclientMissing,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Io(e) => write!(f, "{e}"),
            UpstreamError::Timeout(stage) => write!(f, "timeout waiting for reply to {stage}"),
            UpstreamError::Protocol(what) => write!(f, "protocol error: {what}"),
            UpstreamError::Refused(stage, reply) => write!(f, "{stage} refused: {reply}"),
            UpstreamError::XclientMissing => write!(
                f,
                "upstream does not offer XCLIENT to us (upstream.xclient = \"always\"); in Postfix set smtpd_authorized_xclient_hosts to this host's address, or set upstream.xclient = \"auto\""
            ),
        }
    }
}

/// With `xclient = "auto"` and an upstream that does not offer XCLIENT, the upstream judges
/// mailwarden's own address instead of the client's: if that address is trusted there
/// (Postfix's `mynetworks` includes localhost by default), it relays for anyone. Said once,
/// loudly, with the fix.
fn warn_no_xclient(address: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            upstream = %address,
            "the upstream does not offer XCLIENT to us, so it sees mailwarden's address as the client: if that address is in its mynetworks, mailwarden is an OPEN RELAY. Authorize XCLIENT (Postfix: smtpd_authorized_xclient_hosts = this host) and set upstream.xclient = \"always\" (logged once)"
        );
    }
}

impl From<io::Error> for UpstreamError {
    fn from(e: io::Error) -> Self {
        UpstreamError::Io(e)
    }
}

/// What the upstream offered in its EHLO reply.
#[derive(Debug, Default, Clone)]
struct Capabilities {
    pipelining: bool,
    chunking: bool,
    starttls: bool,
    /// XCLIENT attribute names it accepts, upper-cased.
    xclient: Option<Vec<String>>,
    xforward: Option<Vec<String>>,
}

impl Capabilities {
    fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines().iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let args = || {
                words
                    .clone()
                    .map(|w| w.to_ascii_uppercase())
                    .collect::<Vec<_>>()
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "CHUNKING" => caps.chunking = true,
                "STARTTLS" => caps.starttls = true,
                "XCLIENT" => caps.xclient = Some(args()),
                "XFORWARD" => caps.xforward = Some(args()),
                _ => {}
            }
        }
        caps
    }
}

/// A live connection to the upstream, greeted and ready for MAIL.
pub struct UpstreamConnection {
    stream: BufReader<Box<dyn Io>>,
    caps: Capabilities,
    settings: Arc<UpstreamSettings>,
    /// Whether XFORWARD must be sent before each MAIL.
    use_xforward: bool,
    /// The XCLIENT attributes the upstream offered and was told (address, names, HELO …),
    /// if any. The offer is kept: after XCLIENT, Postfix no longer offers it to us.
    xclient_for: Option<(Vec<String>, Vec<String>)>,
}

/// Longest reply line and most lines we accept from the upstream.
const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 100;

impl UpstreamConnection {
    /// Connects, reads the greeting, says EHLO, and introduces the real client.
    pub async fn open(
        settings: Arc<UpstreamSettings>,
        client: &ClientInfo,
    ) -> Result<UpstreamConnection, UpstreamError> {
        let tcp = tokio::time::timeout(
            settings.connect_timeout,
            TcpStream::connect(&settings.address),
        )
        .await
        .map_err(|_| UpstreamError::Timeout("connect"))??;
        tcp.set_nodelay(true)?;
        let mut conn = UpstreamConnection {
            stream: BufReader::new(Box::new(tcp)),
            caps: Capabilities::default(),
            settings,
            use_xforward: false,
            xclient_for: None,
        };
        conn.expect_greeting("greeting").await?;
        conn.ehlo().await?;
        if conn.settings.starttls && conn.caps.starttls {
            conn.starttls().await?;
        }
        conn.introduce(client).await?;
        Ok(conn)
    }

    async fn expect_greeting(&mut self, stage: &'static str) -> Result<(), UpstreamError> {
        let reply = self
            .read_reply(self.settings.command_timeout, stage)
            .await?;
        if reply.code() != 220 {
            return Err(UpstreamError::Refused(stage, reply));
        }
        Ok(())
    }

    async fn ehlo(&mut self) -> Result<(), UpstreamError> {
        let name = self.settings.helo_name.clone();
        self.ehlo_as(&name).await
    }

    async fn ehlo_as(&mut self, name: &str) -> Result<(), UpstreamError> {
        let line = format!("EHLO {name}");
        let reply = self.command(&line, "EHLO").await?;
        if !reply.is_positive() {
            return Err(UpstreamError::Refused("EHLO", reply));
        }
        self.caps = Capabilities::from_ehlo(&reply);
        Ok(())
    }

    async fn starttls(&mut self) -> Result<(), UpstreamError> {
        let reply = self.command("STARTTLS", "STARTTLS").await?;
        if reply.code() != 220 {
            // Opportunistic: carry on in the clear, as Postfix's "may" level does.
            tracing::warn!(reply = %reply, "upstream refused STARTTLS; continuing without TLS");
            return Ok(());
        }
        if !self.stream.buffer().is_empty() {
            return Err(UpstreamError::Protocol(
                "upstream sent data before the TLS handshake".into(),
            ));
        }
        let placeholder: Box<dyn Io> = Box::new(tokio::io::duplex(1).0);
        let plain = std::mem::replace(&mut self.stream, BufReader::new(placeholder)).into_inner();
        let tls = super::tls::connect_opportunistic(plain, &self.settings.address).await?;
        self.stream = BufReader::new(tls);
        self.ehlo().await
    }

    /// Makes sure the upstream knows the real client before a transaction: on a connection
    /// reused for another client (or after a new EHLO), XCLIENT is sent again. XCLIENT is
    /// allowed outside a transaction and restarts the upstream session (Postfix XCLIENT_README).
    pub async fn introduce_if_needed(&mut self, client: &ClientInfo) -> Result<(), UpstreamError> {
        match &self.xclient_for {
            Some((offered, told)) => {
                if *told != client_attributes(client, offered, Verb::Xclient) {
                    return self.introduce(client).await;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// XCLIENT (once per client) or XFORWARD (before each MAIL), per configuration.
    async fn introduce(&mut self, client: &ClientInfo) -> Result<(), UpstreamError> {
        let want_xclient = self.settings.xclient != Xclient::Never;
        self.xclient_for = None;
        match (self.caps.xclient.clone(), want_xclient) {
            (Some(offered), true) => {
                let attrs = client_attributes(client, &offered, Verb::Xclient);
                let reply = self.send_attributes(Verb::Xclient, &attrs).await?;
                // Postfix answers 220 (a new greeting), smtp-sink 250; either way the session
                // restarts and wants a new EHLO.
                // The EHLO after XCLIENT speaks for the client: Postfix takes the HELO name
                // from it, overriding XCLIENT's HELO= (XCLIENT_README's example does the same).
                if reply.is_positive() {
                    let helo = client
                        .helo
                        .as_deref()
                        .unwrap_or(&self.settings.helo_name)
                        .to_string();
                    self.ehlo_as(&helo).await?;
                    self.xclient_for = Some((offered, attrs));
                    return Ok(());
                }
                if self.settings.xclient == Xclient::Always {
                    return Err(UpstreamError::Refused("XCLIENT", reply));
                }
                tracing::warn!(reply = %reply, "upstream refused XCLIENT; it will see the proxy as the client");
            }
            (None, true) if self.settings.xclient == Xclient::Always => {
                return Err(UpstreamError::XclientMissing);
            }
            (None, true) => warn_no_xclient(&self.settings.address),
            _ => {}
        }
        self.use_xforward = self.settings.xforward && self.caps.xforward.is_some();
        Ok(())
    }

    /// Starts a transaction: XFORWARD if used, then MAIL. Returns the upstream's MAIL reply.
    pub async fn mail(&mut self, client: &ClientInfo, line: &str) -> Result<Reply, UpstreamError> {
        if self.use_xforward {
            let offered = self.caps.xforward.clone().unwrap_or_default();
            let attrs = client_attributes(client, &offered, Verb::Xforward);
            let reply = self.send_attributes(Verb::Xforward, &attrs).await?;
            if !reply.is_positive() {
                tracing::warn!(reply = %reply, "upstream refused XFORWARD");
            }
        }
        self.command(line, "MAIL").await
    }

    /// Sends XCLIENT or XFORWARD with `attrs`, in as many commands as the line length needs;
    /// the first refusal, or the last reply.
    async fn send_attributes(
        &mut self,
        verb: Verb,
        attrs: &[String],
    ) -> Result<Reply, UpstreamError> {
        let mut last = None;
        for line in command_lines(verb, attrs) {
            let reply = self.command(&line, verb.as_str()).await?;
            if !reply.is_positive() {
                return Ok(reply);
            }
            last = Some(reply);
        }
        last.ok_or_else(|| {
            UpstreamError::Protocol(format!("no {} attributes to send", verb.as_str()))
        })
    }

    /// Sends one command and reads its reply.
    pub async fn command(
        &mut self,
        line: &str,
        stage: &'static str,
    ) -> Result<Reply, UpstreamError> {
        let mut out = Vec::with_capacity(line.len() + 2);
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.send(&out).await?;
        self.read_reply(self.settings.command_timeout, stage).await
    }

    /// Sends the message (canonical CRLF) and returns the upstream's final reply.
    pub async fn send_message(&mut self, message: &[u8]) -> Result<Reply, UpstreamError> {
        if self.settings.chunking && self.caps.chunking {
            // One BDAT LAST: the whole message in one write and one round trip.
            let mut out = Vec::with_capacity(message.len() + 32);
            out.extend_from_slice(format!("BDAT {} LAST\r\n", message.len()).as_bytes());
            out.extend_from_slice(message);
            self.send(&out).await?;
        } else {
            let reply = self.command("DATA", "DATA").await?;
            if reply.code() != 354 {
                return Ok(reply);
            }
            let mut out = Vec::new();
            dot_stuff(message, &mut out);
            self.send(&out).await?;
        }
        self.read_reply(self.settings.data_timeout, "end of data")
            .await
    }

    /// Aborts the current transaction, if any.
    pub async fn rset(&mut self) -> Result<(), UpstreamError> {
        let reply = self.command("RSET", "RSET").await?;
        if !reply.is_positive() {
            return Err(UpstreamError::Refused("RSET", reply));
        }
        Ok(())
    }

    /// Says goodbye; errors do not matter any more at this point.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            if self.send(b"QUIT\r\n").await.is_ok() {
                let _ = self.read_reply(self.settings.command_timeout, "QUIT").await;
            }
        })
        .await;
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        let write = async {
            let stream = self.stream.get_mut();
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        tokio::time::timeout(self.settings.command_timeout, write)
            .await
            .map_err(|_| UpstreamError::Timeout("sending"))??;
        Ok(())
    }

    /// Reads one (multi-line) reply (RFC 5321 §4.2).
    async fn read_reply(
        &mut self,
        timeout: Duration,
        stage: &'static str,
    ) -> Result<Reply, UpstreamError> {
        let read = async {
            let mut lines = Vec::new();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = (&mut self.stream)
                    .take(MAX_REPLY_LINE as u64)
                    .read_until(b'\n', &mut buf)
                    .await?;
                if n == 0 {
                    return Err(UpstreamError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "upstream closed the connection while we waited for the reply to {stage}"
                        ),
                    )));
                }
                let line = buf.strip_suffix(b"\n").ok_or_else(|| {
                    UpstreamError::Protocol(format!("reply line too long after {stage}"))
                })?;
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let (code, last, text) = parse_reply_line(line).ok_or_else(|| {
                    UpstreamError::Protocol(format!(
                        "malformed reply to {stage}: {:?}",
                        String::from_utf8_lossy(line)
                    ))
                })?;
                if let Some((first, _)) = lines.first()
                    && *first != code
                {
                    return Err(UpstreamError::Protocol(format!(
                        "reply codes differ within one reply to {stage}"
                    )));
                }
                lines.push((code, text));
                if last {
                    let code = lines[0].0;
                    return Ok(Reply::from_lines(
                        code,
                        lines.into_iter().map(|(_, t)| t).collect(),
                    ));
                }
                if lines.len() >= MAX_REPLY_LINES {
                    return Err(UpstreamError::Protocol(format!(
                        "reply to {stage} has too many lines"
                    )));
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| UpstreamError::Timeout(stage))?
    }
}

/// `NNN-text` / `NNN text` / `NNN` → (code, is last line, text).
fn parse_reply_line(line: &[u8]) -> Option<(u16, bool, String)> {
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code: u16 = std::str::from_utf8(&line[..3]).ok()?.parse().ok()?;
    if !(200..600).contains(&code) {
        return None;
    }
    let (last, text) = match line.get(3) {
        None => (true, &[][..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return None,
    };
    // Text is relayed to our client: keep it printable.
    let text = String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some((code, last, text))
}

/// Which of the two commands the attributes are for: XFORWARD has no `REVERSE_NAME` and no
/// `[TEMPUNAVAIL]` (Postfix XFORWARD_README; its smtpd refuses an unknown NAME value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Xclient,
    Xforward,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Xclient => "XCLIENT",
            Verb::Xforward => "XFORWARD",
        }
    }
}

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4; XCLIENT_README Note 1).
const MAX_COMMAND_LINE: usize = 512;

/// XCLIENT/XFORWARD attributes for the real client, limited to what the upstream accepts.
/// Values are xtext-encoded (Postfix XCLIENT_README). `NAME=` is the verified (FCrDNS) name,
/// `REVERSE_NAME=` the PTR name; unknown ones are `[UNAVAILABLE]`, or `[TEMPUNAVAIL]` after a
/// temporary lookup failure, so that Postfix's `reject_unknown_client_hostname` answers as it
/// would to the client directly.
fn client_attributes(client: &ClientInfo, offered: &[String], verb: Verb) -> Vec<String> {
    let addr = match client.addr.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("IPV6:{ip}"),
        },
    };
    let names = client.names();
    let proto = if client.esmtp { "ESMTP" } else { "SMTP" };
    let mut attrs: Vec<(&str, String)> = Vec::with_capacity(6);
    match verb {
        Verb::Xclient => {
            attrs.push(("NAME", names.xclient_name().to_string()));
            attrs.push(("REVERSE_NAME", names.xclient_reverse_name().to_string()));
        }
        Verb::Xforward => attrs.push((
            "NAME",
            names
                .name
                .clone()
                .unwrap_or_else(|| UNAVAILABLE.to_string()),
        )),
    }
    attrs.push(("ADDR", addr));
    attrs.push(("PORT", client.addr.port().to_string()));
    attrs.push(("PROTO", proto.to_string()));
    if let Some(helo) = &client.helo {
        attrs.push(("HELO", helo.clone()));
    }
    attrs
        .into_iter()
        // Without a list, all but REVERSE_NAME (newer, and not an XFORWARD attribute).
        .filter(|(name, _)| match offered.is_empty() {
            true => *name != "REVERSE_NAME",
            false => offered.iter().any(|o| o == name),
        })
        .map(|(name, value)| format!("{name}={}", xtext(&value)))
        .collect()
}

/// The command lines that carry `attrs`: one when it fits in 512 bytes, else several, with
/// `NAME` and `ADDR` in the last one (XCLIENT_README Note 1: once ADDR is sent, the client may
/// no longer be authorized; names and a HELO of 255 characters each do not fit one line).
fn command_lines(verb: Verb, attrs: &[String]) -> Vec<String> {
    let fits = |line: &str, attr: &str| line.len() + 1 + attr.len() + 2 <= MAX_COMMAND_LINE;
    let (last, first): (Vec<&String>, Vec<&String>) = attrs
        .iter()
        .partition(|a| a.starts_with("NAME=") || a.starts_with("ADDR="));
    let mut lines: Vec<String> = Vec::new();
    let mut line = verb.as_str().to_string();
    for attr in first.into_iter().chain(last) {
        if line.len() > verb.as_str().len() && !fits(&line, attr) {
            lines.push(std::mem::replace(&mut line, verb.as_str().to_string()));
        }
        line.push(' ');
        line.push_str(attr);
    }
    if line.len() > verb.as_str().len() {
        lines.push(line);
    }
    // In the usual case (everything fits one line) keep the attributes in their own order.
    if lines.len() == 1 {
        return vec![format!("{} {}", verb.as_str(), attrs.join(" "))];
    }
    lines
}

/// xtext encoding (RFC 3461 §4): `+XX` for '+', '=', and anything outside 33..=126.
fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        assert_eq!(
            parse_reply_line(b"250-PIPELINING"),
            Some((250, false, "PIPELINING".into()))
        );
        assert_eq!(
            parse_reply_line(b"250 2.0.0 Ok"),
            Some((250, true, "2.0.0 Ok".into()))
        );
        assert_eq!(parse_reply_line(b"354"), Some((354, true, String::new())));
        assert_eq!(parse_reply_line(b"25"), None);
        assert_eq!(parse_reply_line(b"250x"), None);
        assert_eq!(parse_reply_line(b"999 no"), None);
    }

    #[test]
    fn capabilities_from_postfix_ehlo() {
        let reply = Reply::from_lines(
            250,
            [
                "upstream.example.org",
                "PIPELINING",
                "SIZE 10240000",
                "XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT",
                "CHUNKING",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
        let caps = Capabilities::from_ehlo(&reply);
        assert!(caps.pipelining && caps.chunking && !caps.starttls);
        assert!(
            caps.xclient
                .as_ref()
                .is_some_and(|a| a.contains(&"HELO".to_string()))
        );
        assert!(caps.xforward.is_none());
    }

    fn client(helo: &str) -> ClientInfo {
        ClientInfo {
            helo: Some(helo.into()),
            esmtp: true,
            ..ClientInfo::connected(
                "192.0.2.7:4000".parse().expect("addr"),
                "127.0.0.1:25".parse().expect("addr"),
            )
        }
    }

    /// Postfix 3.7's EHLO keyword line, parsed as `Capabilities` does.
    fn postfix_offer() -> Vec<String> {
        "NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN"
            .split(' ')
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn xclient_attributes_are_xtext_and_filtered() {
        let client = client("a+b=c");
        let offered: Vec<String> = ["ADDR", "HELO", "NAME"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            command_lines(
                Verb::Xclient,
                &client_attributes(&client, &offered, Verb::Xclient)
            ),
            ["XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.7 HELO=a+2Bb+3Dc"]
        );
    }

    #[test]
    fn xclient_names_verified_unverified_and_temporary() {
        let mut c = client("mx.example.test");
        c.name = Some("mx.example.test".into());
        c.reverse_name = Some("mx.example.test".into());
        assert_eq!(
            command_lines(
                Verb::Xclient,
                &client_attributes(&c, &postfix_offer(), Verb::Xclient)
            ),
            [
                "XCLIENT NAME=mx.example.test REVERSE_NAME=mx.example.test ADDR=192.0.2.7 PORT=4000 PROTO=ESMTP HELO=mx.example.test"
            ]
        );
        c.name = None;
        let attrs = client_attributes(&c, &postfix_offer(), Verb::Xclient);
        assert_eq!(
            attrs[..2],
            ["NAME=[UNAVAILABLE]", "REVERSE_NAME=mx.example.test"]
        );
        c.names_temporary = true;
        let attrs = client_attributes(&c, &postfix_offer(), Verb::Xclient);
        assert_eq!(
            attrs[..2],
            ["NAME=[TEMPUNAVAIL]", "REVERSE_NAME=mx.example.test"]
        );
        c.reverse_name = None;
        let attrs = client_attributes(&c, &postfix_offer(), Verb::Xclient);
        assert_eq!(
            attrs[..2],
            ["NAME=[TEMPUNAVAIL]", "REVERSE_NAME=[TEMPUNAVAIL]"]
        );
    }

    #[test]
    fn xforward_sends_the_verified_name_or_unavailable_only() {
        let offered: Vec<String> = "NAME ADDR PROTO HELO SOURCE PORT IDENT"
            .split(' ')
            .map(str::to_string)
            .collect();
        let mut c = client("h.example");
        c.reverse_name = Some("ptr.example.test".into());
        c.names_temporary = true;
        assert_eq!(
            client_attributes(&c, &offered, Verb::Xforward).join(" "),
            "NAME=[UNAVAILABLE] ADDR=192.0.2.7 PORT=4000 PROTO=ESMTP HELO=h.example"
        );
        c.name = Some("ptr.example.test".into());
        assert_eq!(
            client_attributes(&c, &offered, Verb::Xforward)[0],
            "NAME=ptr.example.test"
        );
        // An upstream that lists no attributes gets no REVERSE_NAME.
        assert!(
            !client_attributes(&c, &[], Verb::Xclient)
                .iter()
                .any(|a| a.starts_with("REVERSE_NAME="))
        );
    }

    #[test]
    fn long_attributes_are_split_with_name_and_addr_last() {
        // The longest host name there is (RFC 1035 §2.3.4), as NAME, REVERSE_NAME and HELO.
        let name = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(name.len(), 253);
        let mut c = client(&name);
        c.name = Some(name.clone());
        c.reverse_name = Some(name.clone());
        let lines = command_lines(
            Verb::Xclient,
            &client_attributes(&c, &postfix_offer(), Verb::Xclient),
        );
        assert!(lines.len() > 1, "{lines:?}");
        for line in &lines {
            assert!(
                line.starts_with("XCLIENT ") && line.len() + 2 <= MAX_COMMAND_LINE,
                "{line}"
            );
        }
        let last = lines.last().map(String::as_str).unwrap_or_default();
        assert!(
            last.contains(&format!("NAME={name} ")) && last.contains("ADDR=192.0.2.7"),
            "{lines:?}"
        );
        let all: Vec<&str> = lines.iter().flat_map(|l| l.split(' ').skip(1)).collect();
        assert_eq!(all.len(), 6, "every attribute once: {all:?}");
    }
}
