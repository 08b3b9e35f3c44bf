//! Header blocks: where the fields are (byte ranges) and what they say (decoded text).
//!
//! Splitting follows SpamAssassin: a field starts with a name of printable ASCII other than
//! the colon, optional blanks and a colon; a line starting with a blank continues the field
//! before it; an empty line ends the block; any other line ends it too and is the first body
//! line (a missing header/body separator).

use std::ops::Range;

use mail_parser::HeaderValue;
use mail_parser::parsers::MessageStream;
use memchr::{memchr, memmem};

use super::HeaderField;

/// Where one field is: its name, and its raw value (after the colon, folding kept, the final
/// line ending excluded). Both are ranges into the buffer the block was split from.
#[derive(Debug, Clone)]
pub(super) struct FieldPos {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

#[derive(Debug)]
pub(super) struct HeaderBlock {
    pub fields: Vec<FieldPos>,
    /// Where the body starts (the end of `range` when there is none).
    pub body_start: usize,
    /// The block ended at a line that is neither a field nor empty.
    pub missing_separator: bool,
}

/// Splits the header block at the start of `data[range]`. With `skip_mbox_from`, a first line
/// starting with "From " (an mbox separator, not a header field) is skipped.
pub(super) fn split(data: &[u8], range: Range<usize>, skip_mbox_from: bool) -> HeaderBlock {
    let end = range.end.min(data.len());
    let mut pos = range.start.min(end);
    let mut fields = Vec::new();
    // The field being read: its name and where its value starts and (so far) ends.
    let mut current: Option<(Range<usize>, usize, usize)> = None;

    if skip_mbox_from && data[pos..end].starts_with(b"From ") {
        pos = memchr(b'\n', &data[pos..end]).map_or(end, |i| pos + i + 1);
    }

    let mut block = loop {
        if pos >= end {
            break HeaderBlock {
                fields: Vec::new(),
                body_start: end,
                missing_separator: false,
            };
        }
        let line_end = memchr(b'\n', &data[pos..end]).map_or(end, |i| pos + i);
        let next = if line_end < end { line_end + 1 } else { end };
        let mut content_end = line_end;
        if content_end > pos && data[content_end - 1] == b'\r' {
            content_end -= 1;
        }
        let line = &data[pos..content_end];

        if line.is_empty() {
            break HeaderBlock {
                fields: Vec::new(),
                body_start: next,
                missing_separator: false,
            };
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // A continuation; one before any field belongs to nothing and is dropped.
            if let Some((_, _, value_end)) = current.as_mut() {
                *value_end = content_end;
            }
            pos = next;
            continue;
        }
        if let Some((name_len, colon)) = field_name(line) {
            if let Some((name, start, value_end)) = current.take() {
                fields.push(FieldPos {
                    name,
                    value: start..value_end,
                });
            }
            current = Some((pos..pos + name_len, pos + colon + 1, content_end));
            pos = next;
            continue;
        }
        break HeaderBlock {
            fields: Vec::new(),
            body_start: pos,
            missing_separator: true,
        };
    };

    if let Some((name, start, value_end)) = current.take() {
        fields.push(FieldPos {
            name,
            value: start..value_end,
        });
    }
    block.fields = fields;
    block
}

/// `Some((name length, index of the colon))` when `line` starts a header field.
fn field_name(line: &[u8]) -> Option<(usize, usize)> {
    let name_len = line
        .iter()
        .take_while(|&&b| (0x21..=0x7e).contains(&b) && b != b':')
        .count();
    if name_len == 0 {
        return None;
    }
    let blanks = line[name_len..]
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    (line.get(name_len + blanks) == Some(&b':')).then_some((name_len, name_len + blanks))
}

/// The field at `pos` in `data`, with its value decoded.
pub(super) fn field(data: &[u8], pos: &FieldPos) -> HeaderField {
    let name = data.get(pos.name.clone()).unwrap_or_default();
    let raw = data.get(pos.value.clone()).unwrap_or_default();
    HeaderField {
        name: String::from_utf8_lossy(name).into_owned(),
        raw: raw.to_vec(),
        decoded: decode_value(raw),
    }
}

/// A raw value unfolded (each line trimmed, lines joined with one space), RFC 2047
/// encoded-words decoded, invalid UTF-8 replaced, and trimmed.
pub(super) fn decode_value(raw: &[u8]) -> String {
    if memmem::find(raw, b"=?").is_some() {
        // mail-parser's unstructured-field parser does the RFC 2047 work (charsets included);
        // it reads up to a line ending that is not followed by a blank, so give it one.
        let mut buf = Vec::with_capacity(raw.len() + 1);
        buf.extend_from_slice(raw);
        buf.push(b'\n');
        return match MessageStream::new(&buf).parse_unstructured() {
            HeaderValue::Text(text) => text.trim().to_string(),
            _ => String::new(),
        };
    }
    // The same unfolding without encoded-words, without the parser's token bookkeeping.
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    for line in raw.split(|&b| b == b'\n') {
        let line = trim_blanks(line);
        if line.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(line);
    }
    match String::from_utf8(out) {
        Ok(text) => text.trim().to_string(),
        Err(err) => String::from_utf8_lossy(err.as_bytes()).trim().to_string(),
    }
}

/// Trims what mail-parser's field parsers skip between tokens: space, tab and CR.
fn trim_blanks(mut line: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r', rest @ ..] = line {
        line = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r'] = line {
        line = rest;
    }
    line
}

/// Case-insensitive comparison of a field name at `range` in `data` with `name`.
pub(super) fn name_is(data: &[u8], range: &Range<usize>, name: &str) -> bool {
    data.get(range.clone())
        .is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
}
