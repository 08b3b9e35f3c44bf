//! The milter wire codec: packets between an MTA (Postfix >= 2.6, Sendmail 8.14) and us.
//!
//! There is no RFC for the milter protocol; this follows the protocol as Sendmail's libmilter
//! documents it (`mfdef.h` constant values, protocol version 6) and as Postfix's MTA side
//! (`milter8.c`, MILTER_README) speaks it. Every packet, in both directions, is
//!
//! ```text
//! uint32 length (big-endian, counts the command byte and the data) | command byte | data
//! ```
//!
//! Strings are NUL-terminated; numbers are big-endian `uint32` (ports `uint16`). Decoding
//! refuses a packet longer than [`MAX_PACKET_SIZE`] before allocating anything for it, so a
//! hostile or confused peer cannot make us allocate gigabytes.

use std::net::IpAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::smtp::reply::Reply;

/// The protocol version we speak (Sendmail 8.14 / Postfix >= 2.6).
pub const PROTOCOL_VERSION: u32 = 6;

/// Largest packet we accept (length field value). Postfix sends body chunks of at most
/// 65535 bytes (more only with the SMFIP_MDS_* flags, which we never request).
pub const MAX_PACKET_SIZE: usize = 1024 * 1024;

// --- Commands, MTA → milter (SMFIC_*). ---
pub const SMFIC_ABORT: u8 = b'A';
pub const SMFIC_BODY: u8 = b'B';
pub const SMFIC_CONNECT: u8 = b'C';
pub const SMFIC_MACRO: u8 = b'D';
pub const SMFIC_BODYEOB: u8 = b'E';
pub const SMFIC_HELO: u8 = b'H';
pub const SMFIC_QUIT_NC: u8 = b'K';
pub const SMFIC_HEADER: u8 = b'L';
pub const SMFIC_MAIL: u8 = b'M';
pub const SMFIC_EOH: u8 = b'N';
pub const SMFIC_OPTNEG: u8 = b'O';
pub const SMFIC_QUIT: u8 = b'Q';
pub const SMFIC_RCPT: u8 = b'R';
pub const SMFIC_DATA: u8 = b'T';
pub const SMFIC_UNKNOWN: u8 = b'U';

// --- Replies, milter → MTA (SMFIR_*). ---
pub const SMFIR_ACCEPT: u8 = b'a';
pub const SMFIR_CONTINUE: u8 = b'c';
pub const SMFIR_DISCARD: u8 = b'd';
pub const SMFIR_ADDHEADER: u8 = b'h';
pub const SMFIR_INSHEADER: u8 = b'i';
pub const SMFIR_SETSYMLIST: u8 = b'l';
pub const SMFIR_CHGHEADER: u8 = b'm';
pub const SMFIR_PROGRESS: u8 = b'p';
pub const SMFIR_QUARANTINE: u8 = b'q';
pub const SMFIR_REJECT: u8 = b'r';
pub const SMFIR_TEMPFAIL: u8 = b't';
pub const SMFIR_REPLYCODE: u8 = b'y';
pub const SMFIR_OPTNEG: u8 = b'O';

// --- Actions the milter may take (SMFIF_*), negotiated in OptNeg. ---
pub const SMFIF_ADDHDRS: u32 = 0x001;
pub const SMFIF_CHGBODY: u32 = 0x002;
pub const SMFIF_ADDRCPT: u32 = 0x004;
pub const SMFIF_DELRCPT: u32 = 0x008;
pub const SMFIF_CHGHDRS: u32 = 0x010;
pub const SMFIF_QUARANTINE: u32 = 0x020;
pub const SMFIF_CHGFROM: u32 = 0x040;
pub const SMFIF_ADDRCPT_PAR: u32 = 0x080;
pub const SMFIF_SETSYMLIST: u32 = 0x100;

// --- Protocol flags (SMFIP_*): steps not to send (NO*), steps not to answer (NR_*). ---
pub const SMFIP_NOCONNECT: u32 = 0x0000_0001;
pub const SMFIP_NOHELO: u32 = 0x0000_0002;
pub const SMFIP_NOMAIL: u32 = 0x0000_0004;
pub const SMFIP_NORCPT: u32 = 0x0000_0008;
pub const SMFIP_NOBODY: u32 = 0x0000_0010;
pub const SMFIP_NOHDRS: u32 = 0x0000_0020;
pub const SMFIP_NOEOH: u32 = 0x0000_0040;
pub const SMFIP_NR_HDR: u32 = 0x0000_0080;
pub const SMFIP_NOUNKNOWN: u32 = 0x0000_0100;
pub const SMFIP_NODATA: u32 = 0x0000_0200;
pub const SMFIP_SKIP: u32 = 0x0000_0400;
pub const SMFIP_RCPT_REJ: u32 = 0x0000_0800;
pub const SMFIP_NR_CONN: u32 = 0x0000_1000;
pub const SMFIP_NR_HELO: u32 = 0x0000_2000;
pub const SMFIP_NR_MAIL: u32 = 0x0000_4000;
pub const SMFIP_NR_RCPT: u32 = 0x0000_8000;
pub const SMFIP_NR_DATA: u32 = 0x0001_0000;
pub const SMFIP_NR_UNKN: u32 = 0x0002_0000;
pub const SMFIP_NR_EOH: u32 = 0x0004_0000;
pub const SMFIP_NR_BODY: u32 = 0x0008_0000;
pub const SMFIP_HDR_LEADSPC: u32 = 0x0010_0000;

// --- Macro stages (SMFIM_*), the indexes of SETSYMLIST lists in the OptNeg reply. ---
pub const SMFIM_CONNECT: u32 = 0;
pub const SMFIM_HELO: u32 = 1;
pub const SMFIM_ENVFROM: u32 = 2;
pub const SMFIM_ENVRCPT: u32 = 3;
pub const SMFIM_DATA: u32 = 4;
pub const SMFIM_EOM: u32 = 5;
pub const SMFIM_EOH: u32 = 6;

/// Why a packet could not be read, decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the MTA closed the connection in the middle of a packet")]
    Truncated,
    #[error("packet of length 0 (it must at least hold the command byte)")]
    Empty,
    #[error("packet of {0} bytes exceeds our maximum of {MAX_PACKET_SIZE} bytes")]
    TooLarge(usize),
    #[error("unknown milter command 0x{0:02x}")]
    UnknownCommand(u8),
    #[error("command '{}': string without its NUL terminator", char::from(*.0))]
    BadString(u8),
    #[error("command '{}': packet too short for its fields", char::from(*.0))]
    Short(u8),
    #[error("command '{}': unexpected data after its fields", char::from(*.0))]
    TrailingData(u8),
    #[error("connect: unknown address family 0x{0:02x} (expected '4', '6', 'L' or 'U')")]
    BadFamily(u8),
    #[error("cannot encode a string containing NUL in a '{}' reply", char::from(*.0))]
    EmbeddedNul(u8),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Address family of the SMTP client, from the Connect packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// '4'
    Inet,
    /// '6'
    Inet6,
    /// 'L': a unix-domain socket (the address is its path)
    Unix,
    /// 'U': unknown (no port, no address follow)
    Unknown,
}

/// One command from the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    /// Macros for the command `stage` (its command byte, e.g. b'C') that follows.
    Macros {
        stage: u8,
        pairs: Vec<(String, String)>,
    },
    Connect {
        hostname: String,
        family: Family,
        port: u16,
        /// As sent: "192.0.2.1", "2001:db8::1" or "IPv6:2001:db8::1", a socket path; "" for 'U'.
        address: String,
    },
    Helo(String),
    /// `<sender>` then the ESMTP parameters.
    Mail(Vec<String>),
    /// `<recipient>` then the ESMTP parameters.
    Rcpt(Vec<String>),
    /// Header name and value as bytes: header values may carry 8-bit text, and the message
    /// is rebuilt from them byte for byte. Continuation lines are separated by a bare "\n".
    Header {
        name: Vec<u8>,
        value: Vec<u8>,
    },
    EndOfHeaders,
    Body(Vec<u8>),
    /// End of message; Sendmail may attach a last body chunk (Postfix never does).
    EndOfMessage(Vec<u8>),
    Abort,
    Quit,
    QuitNewConnection,
    Data,
    Unknown(String),
}

/// The client address of a Connect packet as an IP, if it is one ("IPv6:" prefix or not).
pub fn client_ip(family: Family, address: &str) -> Option<IpAddr> {
    match family {
        Family::Inet => address.parse().ok(),
        Family::Inet6 => {
            let bare = match address.get(..5) {
                Some(p) if p.eq_ignore_ascii_case("IPv6:") => &address[5..],
                _ => address,
            };
            bare.parse().ok()
        }
        Family::Unix | Family::Unknown => None,
    }
}

/// A cursor over a packet's data that yields its fields.
struct Fields<'a> {
    cmd: u8,
    data: &'a [u8],
}

impl<'a> Fields<'a> {
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let (head, rest) = self
            .data
            .split_first_chunk::<4>()
            .ok_or(ProtocolError::Short(self.cmd))?;
        self.data = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        let (head, rest) = self
            .data
            .split_first_chunk::<2>()
            .ok_or(ProtocolError::Short(self.cmd))?;
        self.data = rest;
        Ok(u16::from_be_bytes(*head))
    }

    fn byte(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self
            .data
            .split_first()
            .ok_or(ProtocolError::Short(self.cmd))?;
        self.data = rest;
        Ok(b)
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let end = memchr::memchr(0, self.data).ok_or(ProtocolError::BadString(self.cmd))?;
        let s = &self.data[..end];
        self.data = &self.data[end + 1..];
        Ok(s)
    }

    /// A string; invalid UTF-8 (8-bit junk from a client) is replaced, not refused.
    fn string(&mut self) -> Result<String, ProtocolError> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn end(&self) -> Result<(), ProtocolError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingData(self.cmd))
        }
    }

    /// All remaining NUL-terminated strings (an argv).
    fn strings(&mut self) -> Result<Vec<String>, ProtocolError> {
        let mut out = Vec::new();
        while !self.is_empty() {
            out.push(self.string()?);
        }
        Ok(out)
    }
}

impl Command {
    /// Decodes one packet's command byte and data.
    pub fn decode(cmd: u8, data: &[u8]) -> Result<Command, ProtocolError> {
        let mut f = Fields { cmd, data };
        let command = match cmd {
            SMFIC_OPTNEG => Command::OptNeg {
                version: f.u32()?,
                actions: f.u32()?,
                protocol: f.u32()?,
            },
            SMFIC_MACRO => {
                let stage = f.byte()?;
                let mut pairs = Vec::new();
                while !f.is_empty() {
                    let name = f.string()?;
                    // A name without a value (never sent by Postfix) is dropped.
                    if f.is_empty() {
                        break;
                    }
                    pairs.push((name, f.string()?));
                }
                Command::Macros { stage, pairs }
            }
            SMFIC_CONNECT => decode_connect(&mut f)?,
            SMFIC_HELO => Command::Helo(f.string()?),
            SMFIC_MAIL => Command::Mail(f.strings()?),
            SMFIC_RCPT => Command::Rcpt(f.strings()?),
            SMFIC_HEADER => Command::Header {
                name: f.bytes()?.to_vec(),
                value: f.bytes()?.to_vec(),
            },
            SMFIC_BODY => return Ok(Command::Body(data.to_vec())),
            SMFIC_BODYEOB => return Ok(Command::EndOfMessage(data.to_vec())),
            SMFIC_UNKNOWN => Command::Unknown(f.string()?),
            SMFIC_EOH => Command::EndOfHeaders,
            SMFIC_ABORT => Command::Abort,
            SMFIC_QUIT => Command::Quit,
            SMFIC_QUIT_NC => Command::QuitNewConnection,
            SMFIC_DATA => Command::Data,
            other => return Err(ProtocolError::UnknownCommand(other)),
        };
        f.end()?;
        Ok(command)
    }

    /// The MTA side's encoding, for the test MTA.
    #[cfg(test)]
    pub(crate) fn encode(&self) -> Vec<u8> {
        fn s(out: &mut Vec<u8>, v: &[u8]) {
            out.extend_from_slice(v);
            out.push(0);
        }
        let mut d = Vec::new();
        let cmd = match self {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => {
                for v in [version, actions, protocol] {
                    d.extend_from_slice(&v.to_be_bytes());
                }
                SMFIC_OPTNEG
            }
            Command::Macros { stage, pairs } => {
                d.push(*stage);
                for (n, v) in pairs {
                    s(&mut d, n.as_bytes());
                    s(&mut d, v.as_bytes());
                }
                SMFIC_MACRO
            }
            Command::Connect {
                hostname,
                family,
                port,
                address,
            } => {
                s(&mut d, hostname.as_bytes());
                let fam = match family {
                    Family::Inet => b'4',
                    Family::Inet6 => b'6',
                    Family::Unix => b'L',
                    Family::Unknown => b'U',
                };
                d.push(fam);
                if *family != Family::Unknown {
                    d.extend_from_slice(&port.to_be_bytes());
                    s(&mut d, address.as_bytes());
                }
                SMFIC_CONNECT
            }
            Command::Helo(h) => {
                s(&mut d, h.as_bytes());
                SMFIC_HELO
            }
            Command::Mail(args) | Command::Rcpt(args) => {
                for a in args {
                    s(&mut d, a.as_bytes());
                }
                if matches!(self, Command::Mail(_)) {
                    SMFIC_MAIL
                } else {
                    SMFIC_RCPT
                }
            }
            Command::Header { name, value } => {
                s(&mut d, name);
                s(&mut d, value);
                SMFIC_HEADER
            }
            Command::EndOfHeaders => SMFIC_EOH,
            Command::Body(b) => {
                d.extend_from_slice(b);
                SMFIC_BODY
            }
            Command::EndOfMessage(b) => {
                d.extend_from_slice(b);
                SMFIC_BODYEOB
            }
            Command::Abort => SMFIC_ABORT,
            Command::Quit => SMFIC_QUIT,
            Command::QuitNewConnection => SMFIC_QUIT_NC,
            Command::Data => SMFIC_DATA,
            Command::Unknown(u) => {
                s(&mut d, u.as_bytes());
                SMFIC_UNKNOWN
            }
        };
        packet(cmd, &d)
    }
}

fn decode_connect(f: &mut Fields<'_>) -> Result<Command, ProtocolError> {
    let hostname = f.string()?;
    let family = match f.byte()? {
        b'4' => Family::Inet,
        b'6' => Family::Inet6,
        b'L' => Family::Unix,
        b'U' => Family::Unknown,
        other => return Err(ProtocolError::BadFamily(other)),
    };
    let (port, address) = if family == Family::Unknown {
        (0, String::new())
    } else {
        (f.u16()?, f.string()?)
    };
    Ok(Command::Connect {
        hostname,
        family,
        port,
        address,
    })
}

/// One reply to the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
        /// (SMFIM_* stage, space-separated macro names): SETSYMLIST, version 6 only.
        macros: Vec<(u32, String)>,
    },
    Continue,
    Accept,
    Reject,
    TempFail,
    Discard,
    Progress,
    /// The full SMTP reply text (see [`reply_code_text`]), sent NUL-terminated.
    ReplyCode(String),
    AddHeader {
        name: String,
        value: String,
    },
    /// `index` 0 = before the first header (Postfix adds one: 1-based internally).
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// `index` = the Nth header of that name, 1-based; an empty value deletes it.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    Quarantine(String),
}

/// Frames one packet: length (command byte + data), command byte, data.
fn packet(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + data.len());
    let len = u32::try_from(data.len() + 1).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(cmd);
    out.extend_from_slice(data);
    out
}

impl Response {
    /// The command byte of this reply.
    pub fn code(&self) -> u8 {
        match self {
            Response::OptNeg { .. } => SMFIR_OPTNEG,
            Response::Continue => SMFIR_CONTINUE,
            Response::Accept => SMFIR_ACCEPT,
            Response::Reject => SMFIR_REJECT,
            Response::TempFail => SMFIR_TEMPFAIL,
            Response::Discard => SMFIR_DISCARD,
            Response::Progress => SMFIR_PROGRESS,
            Response::ReplyCode(_) => SMFIR_REPLYCODE,
            Response::AddHeader { .. } => SMFIR_ADDHEADER,
            Response::InsertHeader { .. } => SMFIR_INSHEADER,
            Response::ChangeHeader { .. } => SMFIR_CHGHEADER,
            Response::Quarantine(_) => SMFIR_QUARANTINE,
        }
    }

    /// Appends the packet to `out`; refuses strings that contain NUL (they would shift
    /// every later field on the MTA's side).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let code = self.code();
        let mut d = Vec::new();
        let s = |d: &mut Vec<u8>, v: &str| {
            if v.as_bytes().contains(&0) {
                return Err(ProtocolError::EmbeddedNul(code));
            }
            d.extend_from_slice(v.as_bytes());
            d.push(0);
            Ok(())
        };
        match self {
            Response::OptNeg {
                version,
                actions,
                protocol,
                macros,
            } => {
                for v in [version, actions, protocol] {
                    d.extend_from_slice(&v.to_be_bytes());
                }
                for (stage, names) in macros {
                    d.extend_from_slice(&stage.to_be_bytes());
                    s(&mut d, names)?;
                }
            }
            Response::ReplyCode(text) | Response::Quarantine(text) => s(&mut d, text)?,
            Response::AddHeader { name, value } => {
                s(&mut d, name)?;
                s(&mut d, value)?;
            }
            Response::InsertHeader { index, name, value }
            | Response::ChangeHeader { index, name, value } => {
                d.extend_from_slice(&index.to_be_bytes());
                s(&mut d, name)?;
                s(&mut d, value)?;
            }
            Response::Continue
            | Response::Accept
            | Response::Reject
            | Response::TempFail
            | Response::Discard
            | Response::Progress => {}
        }
        out.extend_from_slice(&packet(code, &d));
        Ok(())
    }
}

/// Reads one packet: `Ok(None)` at a clean end of stream (between packets).
///
/// `reader` should be buffered (`tokio::io::BufReader`): a packet is read in two steps.
pub async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<(u8, Vec<u8>)>, ProtocolError> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        let n = reader.read(&mut head[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(ProtocolError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(head) as usize;
    if len == 0 {
        return Err(ProtocolError::Empty);
    }
    if len > MAX_PACKET_SIZE {
        return Err(ProtocolError::TooLarge(len));
    }
    let truncated = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Truncated
        } else {
            ProtocolError::Io(e)
        }
    };
    let mut cmd = [0u8; 1];
    reader.read_exact(&mut cmd).await.map_err(truncated)?;
    let mut data = vec![0u8; len - 1];
    reader.read_exact(&mut data).await.map_err(truncated)?;
    Ok(Some((cmd[0], data)))
}

/// Reads and decodes one command: `Ok(None)` when the MTA closed the connection cleanly.
pub async fn read_command<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Command>, ProtocolError> {
    match read_packet(reader).await? {
        None => Ok(None),
        Some((cmd, data)) => Command::decode(cmd, &data).map(Some),
    }
}

/// Writes replies as one write (modifications and the final reply travel together), flushed.
pub async fn write_replies<W: AsyncWrite + Unpin>(
    writer: &mut W,
    replies: &[Response],
) -> Result<(), ProtocolError> {
    let mut out = Vec::new();
    for r in replies {
        r.encode(&mut out)?;
    }
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

/// Writes one reply, flushed.
pub async fn write_reply<W: AsyncWrite + Unpin>(
    writer: &mut W,
    reply: &Response,
) -> Result<(), ProtocolError> {
    write_replies(writer, std::slice::from_ref(reply)).await
}

/// The enhanced status code (RFC 3463 §2: class.subject.detail) that starts `line`, if any.
fn line_enhanced(line: &str) -> Option<&str> {
    let word = line.split(' ').next()?;
    let mut parts = word.split('.');
    let class = parts.next()?;
    let ok = matches!(class, "2" | "4" | "5")
        && parts.clone().count() == 2
        && parts.all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(word)
}

/// The text of an SMFIR_REPLYCODE packet for `reply`, or `None` if it cannot be one: the
/// code must be 4xx or 5xx (`class` 4 or 5, matching the decision) and every line's
/// enhanced code of that class.
///
/// What the MTA requires: Postfix (`milter8.c`) refuses — and then applies
/// `milter_default_action` to the whole session — a reply whose first line is not
/// `[45]NN[ -]` followed by an enhanced code whose first digit is the reply's; multi-line
/// replies are "550-5.7.1 a\r\n550 5.7.1 b". Sendmail uses the text as a printf format, so
/// '%' is sent doubled (Postfix undoes the doubling and drops single '%'). CR, LF and other
/// control characters inside a line become spaces. A line without an enhanced code gets the
/// first line's, or "N.0.0" (RFC 3463 §3.1, "other undefined status").
pub fn reply_code_text(reply: &Reply, class: u16) -> Option<String> {
    let code = reply.code();
    if !(100..1000).contains(&code) || code / 100 != class || !(class == 4 || class == 5) {
        return None;
    }
    let default_enhanced = reply
        .enhanced_code()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{class}.0.0"));
    if !default_enhanced.starts_with(char::from(b'0' + class as u8)) {
        return None;
    }
    let last = reply.lines().len().saturating_sub(1);
    let mut out = String::new();
    for (i, line) in reply.lines().iter().enumerate() {
        let clean: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let text = match line_enhanced(&clean) {
            Some(e) if !e.starts_with(char::from(b'0' + class as u8)) => return None,
            Some(_) => clean,
            None => format!("{default_enhanced} {clean}"),
        };
        if i > 0 {
            out.push_str("\r\n");
        }
        let sep = if i == last { ' ' } else { '-' };
        out.push_str(&format!("{code}{sep}"));
        out.push_str(&text.replace('%', "%%"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_bytes(bytes: &[u8]) -> Result<Command, ProtocolError> {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        Command::decode(bytes[4], &bytes[5..])
    }

    #[test]
    fn commands_round_trip_through_the_mta_encoding() {
        let cases = vec![
            Command::OptNeg {
                version: 6,
                actions: 0x1ff,
                protocol: 0x1f_ffff,
            },
            Command::Macros {
                stage: b'C',
                pairs: vec![
                    ("j".into(), "mx.example".into()),
                    ("{daemon_name}".into(), "smtpd".into()),
                ],
            },
            Command::Connect {
                hostname: "mail.example.org".into(),
                family: Family::Inet,
                port: 40000,
                address: "192.0.2.7".into(),
            },
            Command::Connect {
                hostname: "unknown".into(),
                family: Family::Unknown,
                port: 0,
                address: String::new(),
            },
            Command::Helo("client.example".into()),
            Command::Mail(vec![
                "<a@b.example>".into(),
                "SIZE=100".into(),
                "BODY=8BITMIME".into(),
            ]),
            Command::Rcpt(vec!["<c@d.example>".into()]),
            Command::Header {
                name: b"Subject".to_vec(),
                value: b" hi\n\tthere \xe9".to_vec(),
            },
            Command::EndOfHeaders,
            Command::Body(b"line\r\n".to_vec()),
            Command::EndOfMessage(Vec::new()),
            Command::Abort,
            Command::Quit,
            Command::QuitNewConnection,
            Command::Data,
            Command::Unknown("XFOO bar".into()),
        ];
        for c in cases {
            assert_eq!(decode_bytes(&c.encode()).unwrap(), c);
        }
    }

    #[test]
    fn connect_addresses_ipv4_ipv6_prefixed_and_bare_unix() {
        assert_eq!(
            client_ip(Family::Inet, "192.0.2.1"),
            Some("192.0.2.1".parse().unwrap())
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(client_ip(Family::Inet6, "2001:db8::1"), Some(v6));
        assert_eq!(client_ip(Family::Inet6, "IPv6:2001:db8::1"), Some(v6));
        assert_eq!(client_ip(Family::Inet6, "ipv6:2001:db8::1"), Some(v6));
        assert_eq!(client_ip(Family::Unix, "/run/x.sock"), None);
        assert_eq!(client_ip(Family::Inet, "garbage"), None);
        let c = Command::Connect {
            hostname: "h".into(),
            family: Family::Unix,
            port: 0,
            address: "/var/run/smtpd".into(),
        };
        assert_eq!(decode_bytes(&c.encode()).unwrap(), c);
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        assert!(matches!(
            Command::decode(b'Z', b""),
            Err(ProtocolError::UnknownCommand(b'Z'))
        ));
        assert!(matches!(
            Command::decode(b'H', b"no nul"),
            Err(ProtocolError::BadString(b'H'))
        ));
        assert!(matches!(
            Command::decode(b'O', &[0, 0, 0, 6]),
            Err(ProtocolError::Short(b'O'))
        ));
        assert!(matches!(
            Command::decode(b'A', b"x"),
            Err(ProtocolError::TrailingData(b'A'))
        ));
        assert!(matches!(
            Command::decode(b'H', b"a\0b\0"),
            Err(ProtocolError::TrailingData(b'H'))
        ));
        assert!(matches!(
            Command::decode(b'C', b"h\0X"),
            Err(ProtocolError::BadFamily(b'X'))
        ));
        assert!(matches!(
            Command::decode(b'C', &[b'h', 0, b'4', 1]),
            Err(ProtocolError::Short(b'C'))
        ));
        assert!(matches!(
            Command::decode(b'L', b"Subject\0"),
            Err(ProtocolError::BadString(b'L'))
        ));
        assert!(matches!(
            Command::decode(b'D', b""),
            Err(ProtocolError::Short(b'D'))
        ));
    }

    #[tokio::test]
    async fn read_packet_limits_and_truncation() {
        let mut r: &[u8] = &[];
        assert!(read_packet(&mut r).await.unwrap().is_none());
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_packet(&mut r).await,
            Err(ProtocolError::Truncated)
        ));
        let mut r: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            read_packet(&mut r).await,
            Err(ProtocolError::Empty)
        ));
        let big = (MAX_PACKET_SIZE as u32 + 1).to_be_bytes();
        let mut r: &[u8] = &big;
        assert!(matches!(
            read_packet(&mut r).await,
            Err(ProtocolError::TooLarge(_))
        ));
        let max = (MAX_PACKET_SIZE as u32).to_be_bytes();
        let mut r: &[u8] = &max;
        assert!(matches!(
            read_packet(&mut r).await,
            Err(ProtocolError::Truncated)
        ));
        let mut r: &[u8] = &[0, 0, 0, 3, b'H', b'x', 0, 0, 0, 0, 1, b'Q'];
        assert_eq!(
            read_command(&mut r).await.unwrap(),
            Some(Command::Helo("x".into()))
        );
        assert_eq!(read_command(&mut r).await.unwrap(), Some(Command::Quit));
        assert_eq!(read_command(&mut r).await.unwrap(), None);
    }

    fn enc(r: &Response) -> Vec<u8> {
        let mut out = Vec::new();
        r.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn replies_encode_as_the_mta_expects() {
        assert_eq!(enc(&Response::Continue), b"\0\0\0\x01c");
        assert_eq!(enc(&Response::Accept), b"\0\0\0\x01a");
        assert_eq!(enc(&Response::Reject), b"\0\0\0\x01r");
        assert_eq!(enc(&Response::TempFail), b"\0\0\0\x01t");
        assert_eq!(enc(&Response::Discard), b"\0\0\0\x01d");
        assert_eq!(enc(&Response::Progress), b"\0\0\0\x01p");
        assert_eq!(
            enc(&Response::ReplyCode("550 5.7.1 no".into())),
            b"\0\0\0\x0ey550 5.7.1 no\0"
        );
        assert_eq!(
            enc(&Response::AddHeader {
                name: "X-A".into(),
                value: " b".into()
            }),
            b"\0\0\0\x08hX-A\0 b\0"
        );
        assert_eq!(
            enc(&Response::InsertHeader {
                index: 0,
                name: "X".into(),
                value: "v".into()
            }),
            b"\0\0\0\x09i\0\0\0\0X\0v\0"
        );
        assert_eq!(
            enc(&Response::ChangeHeader {
                index: 2,
                name: "X".into(),
                value: String::new()
            }),
            b"\0\0\0\x08m\0\0\0\x02X\0\0"
        );
        assert_eq!(
            enc(&Response::Quarantine("spam".into())),
            b"\0\0\0\x06qspam\0"
        );
        let opt = Response::OptNeg {
            version: 6,
            actions: 0x131,
            protocol: 0x1c_0300,
            macros: vec![(SMFIM_EOM, "i".into())],
        };
        assert_eq!(
            enc(&opt),
            b"\0\0\0\x13O\0\0\0\x06\0\0\x01\x31\0\x1c\x03\0\0\0\0\x05i\0".to_vec()
        );
        let mut out = Vec::new();
        assert!(matches!(
            Response::Quarantine("a\0b".into()).encode(&mut out),
            Err(ProtocolError::EmbeddedNul(b'q'))
        ));
    }

    #[test]
    fn reply_code_text_follows_postfix_rules() {
        let r = Reply::new(550, "5.7.1", "Spam score 100% too high");
        assert_eq!(
            reply_code_text(&r, 5).unwrap(),
            "550 5.7.1 Spam score 100%% too high"
        );
        let r = Reply::from_lines(550, vec!["5.7.1 first".into(), "second\r\nline".into()]);
        assert_eq!(
            reply_code_text(&r, 5).unwrap(),
            "550-5.7.1 first\r\n550 5.7.1 second  line"
        );
        let r = Reply::from_lines(451, vec!["try later".into()]);
        assert_eq!(reply_code_text(&r, 4).unwrap(), "451 4.0.0 try later");
        // Class mismatches: the caller falls back to a plain 'r' / 't'.
        assert!(reply_code_text(&Reply::new(451, "4.7.1", "x"), 5).is_none());
        assert!(reply_code_text(&Reply::new(550, "4.7.1", "x"), 5).is_none());
        assert!(reply_code_text(&Reply::new(250, "2.0.0", "x"), 5).is_none());
        let mixed = Reply::from_lines(550, vec!["5.7.1 a".into(), "4.7.1 b".into()]);
        assert!(reply_code_text(&mixed, 5).is_none());
    }
}
