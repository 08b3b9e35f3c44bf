//! Transfer decoding (base64, quoted-printable) and charset decoding.
//!
//! Both transfer decoders are tolerant, like mail clients: base64 skips characters outside its
//! alphabet and decodes a final incomplete group as far as it goes; quoted-printable keeps an
//! `=` that starts no valid escape. What they had to tolerate is reported so that `problems()`
//! can say so.

use mail_parser::decoders::charsets::map::charset_decoder;
use memchr::memchr;

/// A part's Content-Transfer-Encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cte {
    /// 7bit, 8bit, binary or none: the body is the content.
    Identity,
    QuotedPrintable,
    Base64,
    /// Anything else (x-uuencode, typos): taken as identity, reported as a problem.
    Unknown,
}

impl Cte {
    /// From the decoded field value: the first token, case-insensitive.
    pub fn parse(value: &str) -> Cte {
        let token = value
            .split(|c: char| c.is_ascii_whitespace() || c == ';' || c == '(')
            .find(|t| !t.is_empty())
            .unwrap_or("");
        if token.is_empty()
            || ["7bit", "8bit", "binary"]
                .iter()
                .any(|t| token.eq_ignore_ascii_case(t))
        {
            Cte::Identity
        } else if token.eq_ignore_ascii_case("base64") {
            Cte::Base64
        } else if token.eq_ignore_ascii_case("quoted-printable") {
            Cte::QuotedPrintable
        } else {
            Cte::Unknown
        }
    }
}

/// Where decoded bytes go: all are counted in `total`, the first `limit` are kept in `buf`.
pub(super) struct Out {
    pub buf: Vec<u8>,
    pub total: usize,
    limit: usize,
    /// Decoders stop once `limit` bytes are kept (`total` is then not the full size).
    stop: bool,
}

impl Out {
    /// Keeps at most `limit` bytes; decoders stop there.
    pub fn keep(limit: usize) -> Out {
        Out {
            buf: Vec::new(),
            total: 0,
            limit,
            stop: true,
        }
    }

    /// Keeps the first `limit` bytes and counts them all (the decoded size).
    pub fn head(limit: usize) -> Out {
        Out {
            buf: Vec::new(),
            total: 0,
            limit,
            stop: false,
        }
    }

    /// Only counts.
    pub fn count() -> Out {
        Out::head(0)
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.total += bytes.len();
        let room = self.limit.saturating_sub(self.buf.len());
        if room > 0 {
            self.buf
                .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
        }
    }

    #[inline]
    fn full(&self) -> bool {
        self.stop && self.buf.len() >= self.limit
    }
}

/// Decodes `input` with `cte` into `out`.
pub(super) fn transfer(cte: Cte, input: &[u8], out: &mut Out) {
    match cte {
        Cte::Base64 => {
            base64(input, out);
        }
        Cte::QuotedPrintable => quoted_printable(input, out),
        Cte::Identity | Cte::Unknown => out.put(input),
    }
}

const INVALID: u8 = 0xff;

static BASE64: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 26 {
        table[b'A' as usize + i] = i as u8;
        table[b'a' as usize + i] = 26 + i as u8;
        i += 1;
    }
    let mut d = 0;
    while d < 10 {
        table[b'0' as usize + d] = 52 + d as u8;
        d += 1;
    }
    table[b'+' as usize] = 62;
    table[b'/' as usize] = 63;
    table
};

/// What the base64 decoder had to tolerate.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Base64Report {
    /// Bytes that are neither in the alphabet, nor whitespace, nor `=`.
    pub invalid: usize,
    /// Alphabet characters left over at the end or before a `=` that make no whole byte
    /// (a single character), or an unpadded final group: the data was cut short.
    pub truncated: bool,
}

/// Decodes base64, skipping whitespace and invalid characters; `=` ends a group.
pub(super) fn base64(input: &[u8], out: &mut Out) -> Base64Report {
    let mut report = Base64Report::default();
    let mut acc: u32 = 0;
    let mut n = 0u8;
    for &b in input {
        let v = BASE64[b as usize];
        if v != INVALID {
            acc = (acc << 6) | u32::from(v);
            n += 1;
            if n == 4 {
                out.put(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
                n = 0;
                acc = 0;
                if out.full() {
                    return report;
                }
            }
        } else if b == b'=' {
            flush(acc, n, out, &mut report);
            n = 0;
            acc = 0;
        } else if !b.is_ascii_whitespace() {
            report.invalid += 1;
        }
    }
    if n != 0 {
        // No padding: whatever the last group holds is decoded, but it was cut short.
        report.truncated = true;
        flush(acc, n, out, &mut report);
    }
    report
}

fn flush(acc: u32, n: u8, out: &mut Out, report: &mut Base64Report) {
    match n {
        1 => report.truncated = true,
        2 => out.put(&[(acc >> 4) as u8]),
        3 => out.put(&[(acc >> 10) as u8, (acc >> 2) as u8]),
        _ => {}
    }
}

/// Decodes quoted-printable: `=XX` escapes (either case), soft line breaks (`=` then optional
/// blanks then the line ending); any other `=` is kept as it is. Line endings are kept.
pub(super) fn quoted_printable(input: &[u8], out: &mut Out) {
    let mut i = 0;
    while i < input.len() {
        let Some(eq) = memchr(b'=', &input[i..]).map(|j| i + j) else {
            out.put(&input[i..]);
            return;
        };
        out.put(&input[i..eq]);
        if out.full() {
            return;
        }
        let mut j = eq + 1;
        while matches!(input.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        match input.get(j) {
            None => return,
            Some(b'\n') => {
                i = j + 1;
                continue;
            }
            Some(b'\r') if input.get(j + 1) == Some(&b'\n') => {
                i = j + 2;
                continue;
            }
            _ => {}
        }
        match (hex(input.get(eq + 1)), hex(input.get(eq + 2))) {
            (Some(hi), Some(lo)) => {
                out.put(&[(hi << 4) | lo]);
                i = eq + 3;
            }
            _ => {
                out.put(b"=");
                i = eq + 1;
            }
        }
    }
}

fn hex(b: Option<&u8>) -> Option<u8> {
    match *b? {
        b @ b'0'..=b'9' => Some(b - b'0'),
        b @ b'a'..=b'f' => Some(b - b'a' + 10),
        b @ b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `bytes` in `charset`, as UTF-8.
///
/// A declared UTF-8 is taken as UTF-8 (invalid sequences replaced). Without a charset, with an
/// ASCII one or with one mail-parser does not know, valid UTF-8 is taken as it is and anything
/// else as Windows-1252 (the Latin-1 superset mail clients assume), so 8-bit text stays
/// readable. Other charsets go through mail-parser's decoders.
pub(super) fn to_text(bytes: &[u8], charset: Option<&str>) -> String {
    let label = charset.map(str::trim).filter(|c| !c.is_empty());
    let utf8 =
        label.is_some_and(|c| c.eq_ignore_ascii_case("utf-8") || c.eq_ignore_ascii_case("utf8"));
    if utf8 {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let ascii = label.is_none_or(|c| {
        [
            "us-ascii",
            "ascii",
            "ansi_x3.4-1968",
            "us",
            "default",
            "unknown-8bit",
            "x-unknown",
        ]
        .iter()
        .any(|a| c.eq_ignore_ascii_case(a))
    });
    if !ascii && let Some(decode) = label.and_then(|c| charset_decoder(c.as_bytes())) {
        return decode(bytes);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => match charset_decoder(b"windows-1252") {
            Some(decode) => decode(bytes),
            None => String::from_utf8_lossy(bytes).into_owned(),
        },
    }
}
