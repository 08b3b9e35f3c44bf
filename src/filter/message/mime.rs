//! The MIME structure: one walk over the message that finds every part and records where its
//! header fields and body are (byte ranges, nothing copied), with bounded work.
//!
//! The walk is iterative (an explicit stack, no recursion), descends at most `MAX_DEPTH`
//! levels and creates at most `MAX_PARTS` parts. Each multipart level finds its delimiter
//! lines with one substring search over its own body, so the whole walk reads the message at
//! most `MAX_DEPTH + 1` times whatever its shape. Delimiters count only at the start of a line
//! and followed by nothing but optional `--` and whitespace (RFC 2046), so a boundary that is a
//! prefix of a nested one, or appears inside a line, is not mistaken for a delimiter.

use std::ops::Range;

use mail_parser::HeaderValue;
use mail_parser::parsers::MessageStream;
use memchr::{memchr, memmem};

use super::MimePart;
use super::decode::{self, Cte, Out};
use super::header::{self, FieldPos};

/// Parts deeper than this are not descended into (the part at this depth is kept as a leaf).
pub const MAX_DEPTH: usize = 20;
/// At most this many parts are created; the rest of the message is not looked at.
pub const MAX_PARTS: usize = 1000;
/// Total size of decoded (base64/QP-encoded) embedded messages kept for parsing.
const MAX_DECODED_MESSAGES: usize = 32 << 20;

/// How a leaf part is taken for the text views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TextKind {
    None,
    Plain,
    Html,
}

#[derive(Debug)]
pub(super) enum Kind {
    Leaf,
    Multipart {
        alternative: bool,
        children: Vec<usize>,
    },
    /// message/rfc822 (or message/global): one child, the embedded message.
    Message {
        child: Option<usize>,
    },
}

/// What the views need about a part beyond its public `MimePart`.
#[derive(Debug)]
pub(super) struct Node {
    /// The buffer the part is in: 0 for the message, n for `Tree::buffers[n - 1]`.
    pub src: usize,
    /// The part's header fields: a range of `Tree::fields`.
    pub fields: Range<usize>,
    /// The body, still transfer-encoded.
    pub body: Range<usize>,
    pub cte: Cte,
    pub text: TextKind,
    pub kind: Kind,
}

#[derive(Debug, Default)]
pub(super) struct Tree {
    pub parts: Vec<MimePart>,
    pub nodes: Vec<Node>,
    /// Every part's fields in part order, positions in that part's buffer.
    pub fields: Vec<FieldPos>,
    /// How many of `fields` are the top-level header.
    pub top_fields: usize,
    /// Embedded messages that were base64/QP-encoded, decoded.
    pub buffers: Vec<Vec<u8>>,
    pub problems: Vec<String>,
}

impl Tree {
    pub fn data<'a>(&'a self, raw: &'a [u8], src: usize) -> &'a [u8] {
        match src.checked_sub(1) {
            None => raw,
            Some(i) => self.buffers.get(i).map_or(&[], Vec::as_slice),
        }
    }

    /// The transfer-encoded body of `part`.
    pub fn body<'a>(&'a self, raw: &'a [u8], part: usize) -> &'a [u8] {
        self.nodes.get(part).map_or(&[], |node| {
            self.data(raw, node.src)
                .get(node.body.clone())
                .unwrap_or_default()
        })
    }
}

struct Work {
    src: usize,
    range: Range<usize>,
    parent: Option<usize>,
    depth: usize,
    in_digest: bool,
    top: bool,
}

/// One part as read from its buffer, before it is linked into the tree.
struct Entity {
    fields: Vec<FieldPos>,
    body: Range<usize>,
    part: MimePart,
    cte: Cte,
    text: TextKind,
    next: Next,
    problems: Vec<String>,
}

enum Next {
    Leaf,
    Multipart {
        alternative: bool,
        digest: bool,
        children: Vec<Range<usize>>,
    },
    Message {
        /// The embedded message decoded, when it was transfer-encoded.
        decoded: Option<Vec<u8>>,
        range: Range<usize>,
    },
}

pub(super) fn build(raw: &[u8]) -> Tree {
    let mut tree = Tree::default();
    let mut decoded_budget = MAX_DECODED_MESSAGES;
    let mut stack = vec![Work {
        src: 0,
        range: 0..raw.len(),
        parent: None,
        depth: 0,
        in_digest: false,
        top: true,
    }];

    while let Some(work) = stack.pop() {
        let idx = tree.nodes.len();
        if idx >= MAX_PARTS {
            tree.problems.push(format!(
                "more than {MAX_PARTS} MIME parts: the rest of the message was not parsed"
            ));
            break;
        }
        let entity = {
            let data = tree.data(raw, work.src);
            read_entity(data, &work, idx, work.depth < MAX_DEPTH, decoded_budget)
        };
        tree.problems.extend(entity.problems);

        let first_field = tree.fields.len();
        let field_count = entity.fields.len();
        tree.fields.extend(entity.fields);
        let mut part = entity.part;
        part.parent = work.parent;
        part.depth = work.depth;
        if idx == 0 {
            tree.top_fields = field_count;
            part.headers = 0..0;
        } else {
            let start = first_field.saturating_sub(tree.top_fields);
            part.headers = start..start + field_count;
        }

        let kind = match entity.next {
            Next::Leaf => Kind::Leaf,
            Next::Multipart {
                alternative,
                digest,
                children,
            } => {
                for range in children.into_iter().rev() {
                    stack.push(Work {
                        src: work.src,
                        range,
                        parent: Some(idx),
                        depth: work.depth + 1,
                        in_digest: digest,
                        top: false,
                    });
                }
                Kind::Multipart {
                    alternative,
                    children: Vec::new(),
                }
            }
            Next::Message { decoded, range } => {
                let (src, range) = match decoded {
                    Some(buf) => {
                        decoded_budget = decoded_budget.saturating_sub(buf.len());
                        let len = buf.len();
                        tree.buffers.push(buf);
                        (tree.buffers.len(), 0..len)
                    }
                    None => (work.src, range),
                };
                stack.push(Work {
                    src,
                    range,
                    parent: Some(idx),
                    depth: work.depth + 1,
                    in_digest: false,
                    top: false,
                });
                Kind::Message { child: None }
            }
        };

        if let Some(parent) = work.parent.and_then(|p| tree.nodes.get_mut(p)) {
            match &mut parent.kind {
                Kind::Multipart { children, .. } => children.push(idx),
                Kind::Message { child } => *child = Some(idx),
                Kind::Leaf => {}
            }
        }
        tree.nodes.push(Node {
            src: work.src,
            fields: first_field..first_field + field_count,
            body: entity.body,
            cte: entity.cte,
            text: entity.text,
            kind,
        });
        tree.parts.push(part);
    }
    tree
}

/// The part at `work.range` of `data`.
fn read_entity(
    data: &[u8],
    work: &Work,
    idx: usize,
    can_descend: bool,
    decoded_budget: usize,
) -> Entity {
    let block = header::split(data, work.range.clone(), work.top);
    let end = work.range.end.min(data.len());
    let body = block.body_start.min(end)..end;
    let mut problems = Vec::new();
    if work.top && block.missing_separator {
        problems.push("the header is not followed by an empty line".to_string());
    }

    let first = |name: &str| {
        block
            .fields
            .iter()
            .find(|f| header::name_is(data, &f.name, name))
            .and_then(|f| data.get(f.value.clone()))
    };
    let (content_type, ct_attrs) = content_type(first("Content-Type"), work.in_digest);
    let disposition = first("Content-Disposition").and_then(parse_params);
    let filename = disposition
        .as_ref()
        .and_then(|d| attr(&d.attrs, "filename"))
        .or_else(|| attr(&ct_attrs, "name"));
    let transfer_encoding = first("Content-Transfer-Encoding")
        .map(|v| header::decode_value(v).to_ascii_lowercase())
        .unwrap_or_default();
    let cte = Cte::parse(&transfer_encoding);
    if cte == Cte::Unknown {
        let shown: String = transfer_encoding.chars().take(40).collect();
        problems.push(format!(
            "part {idx}: unknown Content-Transfer-Encoding \"{shown}\""
        ));
    }

    let mut text = TextKind::None;
    let next = if let Some(subtype) = content_type.strip_prefix("multipart/") {
        let (next, t) = multipart_next(MultipartInput {
            data,
            body: body.clone(),
            content_type: &content_type,
            subtype,
            boundary: attr(&ct_attrs, "boundary"),
            idx,
            can_descend,
            problems: &mut problems,
        });
        text = t;
        next
    } else if matches!(content_type.as_str(), "message/rfc822" | "message/global") {
        let encoded = data.get(body.clone()).unwrap_or_default();
        message_next(
            encoded,
            body.clone(),
            cte,
            idx,
            can_descend,
            decoded_budget,
            &mut problems,
        )
    } else {
        text = match content_type.as_str() {
            "text/plain" => TextKind::Plain,
            "text/html" => TextKind::Html,
            _ => TextKind::None,
        };
        Next::Leaf
    };

    Entity {
        fields: block.fields,
        body,
        part: MimePart {
            charset: attr(&ct_attrs, "charset"),
            content_type,
            transfer_encoding,
            disposition: disposition.map(|d| d.kind).filter(|d| !d.is_empty()),
            filename,
            parent: None,
            depth: 0,
            headers: 0..0,
        },
        cte,
        text,
        next,
        problems,
    }
}

/// The part's `type/subtype` (lower-case) and parameters from its Content-Type value; the
/// default type (`message/rfc822` in a digest, else `text/plain`) without a usable one.
fn content_type(value: Option<&[u8]>, in_digest: bool) -> (String, Vec<(String, String)>) {
    let default_type = if in_digest {
        "message/rfc822"
    } else {
        "text/plain"
    };
    match value.and_then(parse_params) {
        Some(Params {
            kind,
            sub: Some(sub),
            attrs,
        }) if !kind.is_empty() && !sub.is_empty() => (format!("{kind}/{sub}"), attrs),
        Some(params) => (default_type.to_string(), params.attrs),
        None => (default_type.to_string(), Vec::new()),
    }
}

/// The trimmed, non-empty value of parameter `name`.
fn attr(attrs: &[(String, String)], name: &str) -> Option<String> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// What [`multipart_next`] looks at.
struct MultipartInput<'a> {
    data: &'a [u8],
    body: Range<usize>,
    content_type: &'a str,
    /// The subtype: `alternative`, `digest`, `mixed`, …
    subtype: &'a str,
    boundary: Option<String>,
    idx: usize,
    can_descend: bool,
    problems: &'a mut Vec<String>,
}

/// A multipart part's children (found by their boundary lines), or a leaf (taken as plain
/// text when its boundary is missing or never found) with the problem recorded.
fn multipart_next(m: MultipartInput<'_>) -> (Next, TextKind) {
    let (idx, content_type) = (m.idx, m.content_type);
    match m.boundary {
        _ if !m.can_descend => {
            m.problems.push(format!(
                "part {idx}: MIME nesting deeper than {MAX_DEPTH} levels, not parsed further"
            ));
            (Next::Leaf, TextKind::None)
        }
        None => {
            m.problems.push(format!(
                "part {idx}: {content_type} without a boundary parameter"
            ));
            (Next::Leaf, TextKind::Plain)
        }
        Some(boundary) => {
            let scan = scan_multipart(m.data, m.body, boundary.as_bytes());
            if scan.children.is_empty() {
                m.problems.push(format!(
                    "part {idx}: boundary \"{}\" of {content_type} never found",
                    shorten(&boundary)
                ));
                return (Next::Leaf, TextKind::Plain);
            }
            if !scan.closed {
                m.problems.push(format!(
                    "part {idx}: missing closing boundary \"--{}--\"",
                    shorten(&boundary)
                ));
            }
            let next = Next::Multipart {
                alternative: m.subtype == "alternative",
                digest: m.subtype == "digest",
                children: scan.children,
            };
            (next, TextKind::None)
        }
    }
}

/// A message/rfc822 part's embedded message: its range, or its decoded copy when it is
/// transfer-encoded (within `decoded_budget`); a leaf, with the problem recorded, when it is
/// too deep or too large.
fn message_next(
    encoded: &[u8],
    body: Range<usize>,
    cte: Cte,
    idx: usize,
    can_descend: bool,
    decoded_budget: usize,
    problems: &mut Vec<String>,
) -> Next {
    if !can_descend {
        problems.push(format!(
            "part {idx}: MIME nesting deeper than {MAX_DEPTH} levels, not parsed further"
        ));
        return Next::Leaf;
    }
    match cte {
        Cte::Identity | Cte::Unknown => Next::Message {
            decoded: None,
            range: body,
        },
        Cte::Base64 | Cte::QuotedPrintable => {
            let mut out = Out::keep(decoded_budget);
            decode::transfer(cte, encoded, &mut out);
            if out.total > decoded_budget {
                problems.push(format!(
                    "part {idx}: encoded embedded messages larger than {} MiB in \
                     total, not parsed",
                    MAX_DECODED_MESSAGES >> 20
                ));
                Next::Leaf
            } else {
                Next::Message {
                    decoded: Some(out.buf),
                    range: 0..0,
                }
            }
        }
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

/// A Content-Type or Content-Disposition value: type and subtype lower-case, parameter names
/// lower-case, RFC 2231 continuations and charsets resolved (mail-parser's parser).
struct Params {
    kind: String,
    sub: Option<String>,
    attrs: Vec<(String, String)>,
}

fn parse_params(value: &[u8]) -> Option<Params> {
    // The parser reads up to a line ending not followed by a blank.
    let mut buf = Vec::with_capacity(value.len() + 1);
    buf.extend_from_slice(value);
    buf.push(b'\n');
    match MessageStream::new(&buf).parse_content_type() {
        HeaderValue::ContentType(ct) => Some(Params {
            kind: ct.c_type.trim().to_ascii_lowercase(),
            sub: ct.c_subtype.map(|s| s.trim().to_ascii_lowercase()),
            attrs: ct
                .attributes
                .unwrap_or_default()
                .into_iter()
                .map(|a| (a.name.to_ascii_lowercase(), a.value.into_owned()))
                .collect(),
        }),
        _ => None,
    }
}

struct Scan {
    children: Vec<Range<usize>>,
    closed: bool,
}

/// Finds the parts of a multipart body at `range` of `data`: the text between delimiter
/// lines, each without the line ending before the next delimiter (it belongs to the delimiter).
/// The preamble and epilogue are not parts. A missing close delimiter leaves the last part
/// running to the end of `range`.
fn scan_multipart(data: &[u8], range: Range<usize>, boundary: &[u8]) -> Scan {
    let mut scan = Scan {
        children: Vec::new(),
        closed: false,
    };
    let end = range.end.min(data.len());
    let start = range.start.min(end);
    let hay = &data[start..end];
    let mut needle = Vec::with_capacity(boundary.len() + 2);
    needle.extend_from_slice(b"--");
    needle.extend_from_slice(boundary);
    let finder = memmem::Finder::new(&needle);

    let mut part_start: Option<usize> = None;
    let mut from = 0;
    while from < hay.len() {
        let Some(at) = finder.find(&hay[from..]).map(|i| from + i) else {
            break;
        };
        from = at + 1;
        if at > 0 && hay[at - 1] != b'\n' {
            continue;
        }
        let after = at + needle.len();
        let line_end = memchr(b'\n', &hay[after..]).map_or(hay.len(), |i| after + i);
        let rest = &hay[after..line_end];
        let (close, tail) = match rest.strip_prefix(b"--") {
            Some(tail) => (true, tail),
            None => (false, rest),
        };
        if !tail.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Some(s) = part_start.take() {
            let mut e = at;
            if e > s && hay[e - 1] == b'\n' {
                e -= 1;
                if e > s && hay[e - 1] == b'\r' {
                    e -= 1;
                }
            }
            scan.children.push(start + s..start + e.max(s));
        }
        if close {
            scan.closed = true;
            break;
        }
        if scan.children.len() >= MAX_PARTS {
            // More parts than the whole message may have: the walk stops there anyway.
            return scan;
        }
        from = (line_end + 1).min(hay.len());
        part_start = Some(from);
    }
    if let Some(s) = part_start {
        scan.children.push(start + s..end);
    }
    scan
}
