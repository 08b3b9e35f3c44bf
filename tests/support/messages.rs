//! Test messages and delivered-message parsing.
//!
//! Files in `tests/data/*.eml` are stored with LF line endings (so they stay readable and
//! immune to editors and git settings) and turned into wire format (CRLF) by [`load`].

use std::path::PathBuf;

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Reads `tests/data/<name>` and converts its LF line endings to CRLF. The files must not
/// contain CR themselves.
pub fn load(name: &str) -> Vec<u8> {
    let path = data_dir().join(name);
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("read test message {path:?}: {e}"));
    assert!(
        !raw.contains(&b'\r'),
        "{path:?} must use LF line endings only (converted to CRLF at load time)"
    );
    lf_to_crlf(&raw)
}

pub fn lf_to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    for &b in raw {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// CRLF → LF (what Postfix's Maildir delivery stores).
pub fn crlf_to_lf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\r' && raw.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

/// What a sent message should look like in Postfix's Maildir: LF line endings, and a final
/// newline (Postfix stores records as lines, so a message that did not end in CRLF gets
/// one).
pub fn expected_in_maildir(sent: &[u8]) -> Vec<u8> {
    let mut out = crlf_to_lf(sent);
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

/// A delivered Maildir file split at the proxy's Received header.
#[derive(Debug)]
pub struct Delivered {
    /// Header fields above the proxy's (Return-Path, Delivered-To, Postfix's Received, ...),
    /// each with its continuation lines, LF-terminated.
    pub added_above: Vec<String>,
    /// The proxy's `Received:` field including continuation lines.
    pub proxy_received: String,
    /// Everything after the proxy's Received header: the message as the client sent it.
    pub message: Vec<u8>,
}

/// Splits a delivered file (LF endings). The proxy's header is the first field whose text
/// (with continuation lines) contains `(mailwarden)`; its first line must start with
/// `Received: from `.
pub fn split_delivered(raw: &[u8]) -> Result<Delivered, String> {
    let mut pos = 0;
    let mut added_above = Vec::new();
    while pos < raw.len() {
        // One header field: a line plus the following lines starting with SP or TAB.
        let mut end = line_end(raw, pos);
        while end < raw.len() && matches!(raw[end], b' ' | b'\t') {
            end = line_end(raw, end);
        }
        let field = &raw[pos..end];
        if field == b"\n" {
            return Err(
                "reached the end of the header section without a (mailwarden) \
                        Received header"
                    .into(),
            );
        }
        let text = String::from_utf8_lossy(field).into_owned();
        if text.contains("(mailwarden)") {
            if !text.starts_with("Received: from ") {
                return Err(format!(
                    "the header mentioning (mailwarden) is not a Received: from header: {text:?}"
                ));
            }
            return Ok(Delivered {
                added_above,
                proxy_received: text,
                message: raw[end..].to_vec(),
            });
        }
        added_above.push(text);
        pos = end;
    }
    Err("no (mailwarden) Received header found".into())
}

/// Index just past the LF that ends the line starting at `pos` (or the end of `raw`).
fn line_end(raw: &[u8], pos: usize) -> usize {
    match raw[pos..].iter().position(|&b| b == b'\n') {
        Some(i) => pos + i + 1,
        None => raw.len(),
    }
}

/// The header fields (unfolded, one string each) of a message with LF or CRLF endings.
pub fn header_fields(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let mut fields: Vec<String> = Vec::new();
    for line in text.split('\n') {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            fields.push(line.to_string());
        }
    }
    fields
}

/// The value of the first header field `name` (case-insensitive), unfolded.
pub fn header(raw: &[u8], name: &str) -> Option<String> {
    header_fields(raw).into_iter().find_map(|f| {
        let (n, v) = f.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// True if `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Header fields Postfix's `virtual` delivery puts above a message: Return-Path,
/// X-Original-To, Delivered-To, then the Received header of Postfix's smtpd.
pub const POSTFIX_ADDED: &[&str] = &["Return-Path", "X-Original-To", "Delivered-To", "Received"];

/// Splits a file Postfix delivered from a *direct* SMTP session (no proxy) into the fields
/// Postfix added (see [`POSTFIX_ADDED`]; exactly one Received) and the message as sent.
pub fn strip_postfix_added(raw: &[u8]) -> Result<(Vec<String>, Vec<u8>), String> {
    let mut pos = 0;
    let mut added = Vec::new();
    loop {
        let mut end = line_end(raw, pos);
        while end < raw.len() && matches!(raw[end], b' ' | b'\t') {
            end = line_end(raw, end);
        }
        let text = String::from_utf8_lossy(&raw[pos..end]).into_owned();
        let name = text.split(':').next().unwrap_or("").to_string();
        if !POSTFIX_ADDED.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            return Err(format!(
                "unexpected field {text:?} before Postfix's Received header"
            ));
        }
        added.push(text);
        pos = end;
        if name.eq_ignore_ascii_case("Received") {
            return Ok((added, raw[pos..].to_vec()));
        }
    }
}

/// Checks that `fields` are only headers Postfix adds, with exactly one Received.
/// The filter's result headers, which the proxy adds above its own Received header.
pub const PROXY_RESULT_HEADERS: [&str; 4] = [
    "X-Spam-Flag",
    "X-Spam-Score",
    "X-Spam-Level",
    "X-Spam-Status",
];

pub fn check_postfix_added(fields: &[String]) -> Result<(), String> {
    let names: Vec<&str> = fields
        .iter()
        .map(|f| f.split(':').next().unwrap_or(""))
        .collect();
    let unexpected: Vec<&&str> = names
        .iter()
        .filter(|n| {
            !POSTFIX_ADDED.iter().any(|p| p.eq_ignore_ascii_case(n))
                && !PROXY_RESULT_HEADERS
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(n))
        })
        .collect();
    let received = names
        .iter()
        .filter(|n| n.eq_ignore_ascii_case("Received"))
        .count();
    if !unexpected.is_empty() || received != 1 {
        return Err(format!(
            "expected only {POSTFIX_ADDED:?} (one Received) above the proxy's header, got {fields:?}"
        ));
    }
    Ok(())
}

/// Index of the first differing byte, for mismatch messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))
}

/// A small CRLF message with a unique Message-ID.
pub fn simple(id: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: sender@example.test\r\nTo: user@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <{id}@example.test>\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// Base64 (RFC 4648) on one line, e.g. for a DKIM key record.
pub fn base64(data: &[u8]) -> String {
    base64_wrapped(data, usize::MAX)
}

/// Base64 in 76-character lines joined by CRLF, as a MIME body part wants it
/// (RFC 2045 §6.8).
pub fn base64_mime(data: &[u8]) -> String {
    base64_wrapped(data, 19)
}

fn base64_wrapped(data: &[u8], groups_per_line: usize) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for (i, chunk) in data.chunks(3).enumerate() {
        if i > 0 && i % groups_per_line == 0 {
            out.push_str("\r\n");
        }
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
