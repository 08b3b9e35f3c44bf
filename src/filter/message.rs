//! The message, parsed once, and the views rules look at.
//!
//! `Message::parse` never panics, whatever the bytes. Each view is built on first use and
//! cached (`OnceLock`, so a `Message` is `Send + Sync` and can be shared by checks running in
//! parallel), so a rule set without `uri` rules never extracts URIs. Views follow
//! SpamAssassin's semantics so stock rules mean what they say:
//!
//! | view | SpamAssassin | what it is |
//! |---|---|---|
//! | [`Message::raw`] | `full` | the bytes as received |
//! | [`Message::headers`] | `header` | top-level fields, raw and decoded |
//! | [`Message::body`] | `body` | Subject, then the text parts rendered, one paragraph per line |
//! | [`Message::rawbody`] | `rawbody` | text parts decoded, HTML kept, line by line |
//! | [`Message::uris`] | `uri` | URIs from text (link finder) and HTML attributes |
//! | [`Message::mime_headers`] | `mimeheader` | fields of every part below the top level |
//! | [`Message::attachments`] | | non-text leaves and named parts, with sniffed types |
//! | [`Message::problems`] | | what is wrong with the MIME structure |
//!
//! # Design: one owned structure index, views decoded on demand
//!
//! The MIME structure is found by our own walk (`mime.rs`) the first time a view needs it: an
//! owned index of parts whose header fields and bodies are byte ranges into `raw` (nothing is
//! copied). Each view then decodes only what it needs. mail-parser does the parts that are
//! hard to get right: RFC 2047 encoded-words, Content-Type/Content-Disposition parameters
//! (RFC 2231 continuations and charsets) and charset conversion.
//!
//! We do not keep a `mail_parser::Message`, nor re-parse with it per view, because of what we
//! measured (release build, the 3,000 messages of the corpus, 12 MB, one core):
//! - mail-parser's full parse takes 57 ms for the corpus (~52,000 msgs/s); our structure
//!   walk takes 7.5 ms, and everything (structure, headers, body, rawbody, URIs, MIME headers,
//!   attachments, problems) 103 ms (~29,000 msgs/s, 118 MB/s). Re-parsing with mail-parser in
//!   each of the six views that need the structure would add ~340 ms: more than all the views
//!   together. Parsing once into its owned form copies every decoded part up front.
//! - Its multipart scanning is quadratic on hostile input: 10,000 parts each declaring a
//!   multipart whose boundary never appears (600 KB) take 2.5 s, so a 25 MB message of that
//!   shape would take hours (ours: 1 ms, it stops at `MAX_PARTS`). It also has no nesting or
//!   part limit, decodes every part eagerly (a 25 MB attachment is copied even when no view
//!   wants it), has `debug_assert!`s and unchecked offset arithmetic on its recovery paths,
//!   and takes `--boundary` anywhere in a line as a delimiter.
//! - Holding its `Message<'x>` next to `raw` would make `Message` self-referential.
//!
//! # Limits (bounded work on any input)
//!
//! - MIME nesting: at most [`MAX_DEPTH`] levels (multipart and message/rfc822); deeper
//!   containers are kept as leaves, and `problems()` says so.
//! - Parts: at most [`MAX_PARTS`]; the rest of the message is not parsed (reported).
//! - Text decoded per text part: [`MAX_PART_TEXT`] bytes; all text parts together:
//!   [`MAX_TEXT_TOTAL`] bytes. `body` and `rawbody` are each cut at [`MAX_VIEW_BYTES`]
//!   (2 MiB): rules see at most the first 2 MiB of each.
//! - URIs: at most [`MAX_URIS`].
//! - The walk reads the message at most `MAX_DEPTH + 1` times; every decoder, the HTML
//!   renderer and the writers are single forward passes. Measured on 25 MB messages, all
//!   views: 130 ms for 12 MB of HTML plus a 9 MB base64 attachment, 38 ms for 25 MB of nested
//!   multiparts, 1 ms for 25 MB of parts whose boundaries never appear. Parsing allocates
//!   nothing per part beyond the index; decoded text is bounded as above.

mod decode;
mod header;
mod html;
mod mime;
mod sniff;
mod text;

use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;

use decode::{Cte, Out};
use mime::{Kind, TextKind, Tree};

pub use mime::{MAX_DEPTH, MAX_PARTS};

/// `body()` and `rawbody()` are each at most this many bytes.
pub const MAX_VIEW_BYTES: usize = 2 << 20;
/// Decoded text taken from one text part, at most.
pub const MAX_PART_TEXT: usize = 8 << 20;
/// Decoded text taken from all text parts together, at most.
pub const MAX_TEXT_TOTAL: usize = 16 << 20;
/// `uris()` holds at most this many URIs.
pub const MAX_URIS: usize = 10_000;

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    /// The field name as written (case preserved); compare case-insensitively.
    pub name: String,
    /// The raw value after the colon: folding kept, not decoded, trailing CRLF removed.
    pub raw: Vec<u8>,
    /// The value unfolded, RFC 2047 encoded-words decoded, leading/trailing whitespace trimmed.
    pub decoded: String,
}

/// One attachment (or any non-text leaf part with a file name or a non-text type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Decoded file name (Content-Disposition filename, else Content-Type name), if any.
    pub filename: Option<String>,
    /// The declared MIME type, lower-case, e.g. "application/pdf".
    pub declared_type: String,
    /// The type sniffed from the first bytes of the decoded content, if recognised
    /// (e.g. "application/x-msdownload" for "MZ", "application/zip", "application/pdf").
    pub sniffed_type: Option<&'static str>,
    /// Decoded size in bytes.
    pub size: usize,
    /// Index of the part in the message (for later checks that need the content).
    pub part: usize,
}

/// One MIME part, as declared. Parts are numbered in document order (depth first): part 0 is
/// the message itself; the parts of an embedded message/rfc822 follow that part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimePart {
    /// Lower-case `type/subtype`. Without a (valid) Content-Type: "text/plain", or
    /// "message/rfc822" for a part of a multipart/digest.
    pub content_type: String,
    /// The charset parameter, as written.
    pub charset: Option<String>,
    /// Content-Transfer-Encoding, lower-case, "" when absent.
    pub transfer_encoding: String,
    /// Content-Disposition type, lower-case ("inline", "attachment"), if present.
    pub disposition: Option<String>,
    /// Decoded file name (Content-Disposition filename, else Content-Type name), if any.
    pub filename: Option<String>,
    /// The enclosing part (a multipart, or the message/rfc822 part around an embedded message).
    pub parent: Option<usize>,
    /// 0 for the message, 1 for its parts, …
    pub depth: usize,
    /// This part's fields in `Message::mime_headers()` (empty for part 0, whose fields are
    /// `Message::headers()`).
    pub headers: Range<usize>,
}

/// A text part, decoded to UTF-8 (and, for HTML, rendered on first use).
struct TextPart {
    part: usize,
    html: bool,
    text: String,
    rendered: OnceLock<html::Rendered>,
}

impl TextPart {
    fn rendered(&self) -> &html::Rendered {
        self.rendered
            .get_or_init(|| html::render(&self.text, MAX_URIS))
    }
}

/// A parsed message and its lazily built views.
pub struct Message {
    raw: Vec<u8>,
    headers: OnceLock<Vec<HeaderField>>,
    body: OnceLock<Vec<u8>>,
    rawbody: OnceLock<Vec<u8>>,
    uris: OnceLock<Vec<String>>,
    mime_headers: OnceLock<Vec<HeaderField>>,
    attachments: OnceLock<Vec<Attachment>>,
    problems: OnceLock<Vec<String>>,
    tree: OnceLock<Tree>,
    texts: OnceLock<Vec<TextPart>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("len", &self.raw.len())
            .finish_non_exhaustive()
    }
}

impl Message {
    /// Parses `raw` (CRLF or LF line endings). Never fails: broken MIME is parsed as far as
    /// possible and reported by `problems()`.
    pub fn parse(raw: Vec<u8>) -> Message {
        Message {
            raw,
            headers: OnceLock::new(),
            body: OnceLock::new(),
            rawbody: OnceLock::new(),
            uris: OnceLock::new(),
            mime_headers: OnceLock::new(),
            attachments: OnceLock::new(),
            problems: OnceLock::new(),
            tree: OnceLock::new(),
            texts: OnceLock::new(),
        }
    }

    /// The whole message as received (SpamAssassin `full`).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The top-level header fields, in order. An mbox "From " line before them is skipped.
    pub fn headers(&self) -> &[HeaderField] {
        self.headers.get_or_init(|| {
            let block = header::split(&self.raw, 0..self.raw.len(), true);
            block
                .fields
                .iter()
                .map(|f| header::field(&self.raw, f))
                .collect()
        })
    }

    /// The fields named `name` (case-insensitive), in order.
    pub fn header_fields<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a HeaderField> + 'a {
        self.headers()
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    }

    /// SpamAssassin `body`: the Subject, then the decoded text of every text part (HTML
    /// turned into text), one paragraph per line, lines separated by "\n".
    ///
    /// The first line is the decoded Subject (the first Subject field, when it is not empty;
    /// always exactly one line). Then the text
    /// parts (text/plain and text/html, charset-decoded, HTML rendered as described in
    /// `html.rs`), in order; a multipart/alternative contributes only its text/plain
    /// alternative when it has one, else its HTML one. Consecutive non-empty lines are joined
    /// with one space, whitespace runs (no-break spaces included) become one space, empty lines
    /// and part boundaries separate paragraphs. A part declared as text whose content is a binary format (an
    /// executable, an archive, …) is left out. At most [`MAX_VIEW_BYTES`].
    pub fn body(&self) -> &[u8] {
        self.body.get_or_init(|| {
            let mut out = text::Paragraphs::new(MAX_VIEW_BYTES);
            if let Some(subject) = self.header_fields("Subject").next() {
                // One line, even if an encoded-word decoded to a line break.
                out.add(&subject.decoded.replace(['\n', '\r', '\x0c'], " "));
                out.end_paragraph();
            }
            let texts = self.texts();
            for part in body_parts(self.tree()) {
                let found = texts.binary_search_by_key(&part, |t| t.part).ok();
                if let Some(tp) = found.and_then(|t| texts.get(t)) {
                    if tp.html {
                        out.add(&tp.rendered().text);
                    } else {
                        out.add(&tp.text);
                    }
                    out.end_paragraph();
                }
            }
            out.finish().into_bytes()
        })
    }

    /// SpamAssassin `rawbody`: text parts with transfer encoding decoded but HTML kept,
    /// lines separated by "\n".
    ///
    /// Every text/plain and text/html part (all alternatives), charset-decoded to UTF-8, line
    /// by line (CR before LF removed, lines not joined). At most [`MAX_VIEW_BYTES`].
    ///
    /// Charsets (for `body` too): the part's own, else one declared on an enclosing part; then
    /// as in `decode::to_text`: without one (or with us-ascii), valid UTF-8 is UTF-8 and other
    /// 8-bit text is read as Windows-1252.
    pub fn rawbody(&self) -> &[u8] {
        self.rawbody.get_or_init(|| {
            let mut out = text::Lines::new(MAX_VIEW_BYTES);
            for tp in self.texts() {
                out.add(&tp.text);
            }
            out.finish().into_bytes()
        })
    }

    /// Every URI in the message: from text with a link finder, from HTML href/src.
    ///
    /// From every text part (all alternatives): in plain text, http/https/ftp URLs, e-mail
    /// addresses as `mailto:` URIs and scheme-less `www.`/`ftp.` links (given `http://` /
    /// `ftp://`); in HTML, the `href`, `src`, `action` and `background` attribute values
    /// (character references decoded, as written otherwise: relative ones stay relative), then
    /// the links in its rendered text. Each URI once, in order of appearance, at most
    /// [`MAX_URIS`].
    pub fn uris(&self) -> &[String] {
        self.uris.get_or_init(|| {
            let mut uris = text::Uris::new(MAX_URIS);
            for tp in self.texts() {
                if uris.full() {
                    break;
                }
                if tp.html {
                    let rendered = tp.rendered();
                    for link in &rendered.links {
                        uris.add(link.clone());
                    }
                    uris.scan(&rendered.text);
                } else {
                    uris.scan(&tp.text);
                }
            }
            uris.finish()
        })
    }

    /// The header fields of every MIME part below the top level (SpamAssassin `mimeheader`).
    ///
    /// In part order (see [`MimePart::headers`] for which fields are whose); an embedded
    /// message's own header counts as the header of its part.
    pub fn mime_headers(&self) -> &[HeaderField] {
        self.mime_headers.get_or_init(|| {
            let tree = self.tree();
            let mut fields = Vec::with_capacity(tree.fields.len().saturating_sub(tree.top_fields));
            for node in tree.nodes.iter().skip(1) {
                let data = tree.data(&self.raw, node.src);
                for pos in tree.fields.get(node.fields.clone()).unwrap_or_default() {
                    fields.push(header::field(data, pos));
                }
            }
            fields
        })
    }

    /// Attachments: every part that is not a multipart and either has a file name or a type
    /// other than text/* (message/rfc822 counts as one attachment; the parts of the embedded
    /// message are listed too). `sniffed_type` comes from the first decoded bytes.
    pub fn attachments(&self) -> &[Attachment] {
        self.attachments.get_or_init(|| {
            let tree = self.tree();
            let mut list = Vec::new();
            for (i, (node, part)) in tree.nodes.iter().zip(&tree.parts).enumerate() {
                let container = matches!(node.kind, Kind::Multipart { .. })
                    || part.content_type.starts_with("multipart/");
                let wanted = part.filename.is_some() || !part.content_type.starts_with("text/");
                if container || !wanted {
                    continue;
                }
                let mut content = Out::head(sniff::SNIFF_LEN);
                decode::transfer(node.cte, tree.body(&self.raw, i), &mut content);
                list.push(Attachment {
                    filename: part.filename.clone(),
                    declared_type: part.content_type.clone(),
                    sniffed_type: sniff::sniff(&content.buf),
                    size: content.total,
                    part: i,
                });
            }
            list
        })
    }

    /// What was wrong with the MIME structure, if anything (empty for a well-formed message).
    ///
    /// Reported: a multipart without a boundary parameter or whose boundary never appears
    /// (its body is then taken as text/plain), a missing closing boundary, nesting deeper
    /// than [`MAX_DEPTH`], more than [`MAX_PARTS`] parts, an unknown transfer encoding, base64
    /// that ends in the middle of a group (cut short) or has more than a few characters outside
    /// its alphabet, and a top-level header not followed by an empty line.
    pub fn problems(&self) -> &[String] {
        self.problems.get_or_init(|| {
            let tree = self.tree();
            let mut problems = tree.problems.clone();
            for (i, node) in tree.nodes.iter().enumerate() {
                if node.cte != Cte::Base64 || matches!(node.kind, Kind::Multipart { .. }) {
                    continue;
                }
                let mut out = Out::count();
                let report = decode::base64(tree.body(&self.raw, i), &mut out);
                if report.truncated {
                    problems.push(format!(
                        "part {i}: base64 ends in the middle of a group (cut short?)"
                    ));
                }
                if report.invalid > BASE64_TOLERATED_INVALID {
                    problems.push(format!(
                        "part {i}: base64 has {} characters outside its alphabet",
                        report.invalid
                    ));
                }
            }
            problems
        })
    }

    /// Every MIME part, in document order (part 0 is the message itself).
    pub fn parts(&self) -> &[MimePart] {
        &self.tree().parts
    }

    /// The content of `part` with its transfer encoding (base64, quoted-printable) decoded, not
    /// charset-converted; borrowed when there was nothing to decode. For a multipart, its
    /// whole body; for message/rfc822, the embedded message. `None` when there is no such part.
    /// Not capped: the caller decides how much it wants to look at.
    pub fn part_content(&self, part: usize) -> Option<Cow<'_, [u8]>> {
        let tree = self.tree();
        let node = tree.nodes.get(part)?;
        let body = tree.body(&self.raw, part);
        Some(match node.cte {
            Cte::Identity | Cte::Unknown => Cow::Borrowed(body),
            Cte::Base64 | Cte::QuotedPrintable => {
                let mut out = Out::keep(usize::MAX);
                decode::transfer(node.cte, body, &mut out);
                Cow::Owned(out.buf)
            }
        })
    }

    fn tree(&self) -> &Tree {
        self.tree.get_or_init(|| mime::build(&self.raw))
    }

    /// The text/plain and text/html leaves, decoded (within the limits), in part order.
    fn texts(&self) -> &[TextPart] {
        self.texts.get_or_init(|| {
            let tree = self.tree();
            let mut texts = Vec::new();
            let mut total = 0;
            for (i, node) in tree.nodes.iter().enumerate() {
                if total >= MAX_TEXT_TOTAL {
                    break;
                }
                if node.text == TextKind::None || !matches!(node.kind, Kind::Leaf) {
                    continue;
                }
                let limit = MAX_PART_TEXT.min(MAX_TEXT_TOTAL - total);
                let mut out = Out::keep(limit);
                decode::transfer(node.cte, tree.body(&self.raw, i), &mut out);
                if sniff::is_binary(sniff::sniff(&out.buf)) {
                    continue;
                }
                total += out.buf.len();
                texts.push(TextPart {
                    part: i,
                    html: node.text == TextKind::Html,
                    text: decode::to_text(&out.buf, charset(tree, i)),
                    rendered: OnceLock::new(),
                });
            }
            texts
        })
    }
}

/// The charset of text `part`: its own, else the nearest one declared on an enclosing part
/// (some mailers put it on the multipart only).
fn charset(tree: &Tree, part: usize) -> Option<&str> {
    let mut at = tree.parts.get(part);
    while let Some(p) = at {
        if let Some(charset) = p.charset.as_deref() {
            return Some(charset);
        }
        at = p.parent.and_then(|parent| tree.parts.get(parent));
    }
    None
}

/// Base64 bodies may carry a few stray characters (a trailing `--`, a stray dot) without
/// being reported.
const BASE64_TOLERATED_INVALID: usize = 4;

/// The text leaves that make up `body`, in order: all of them, except that a
/// multipart/alternative contributes one alternative (the first text/plain one, else the first
/// one with HTML in it, else the first one with any text).
fn body_parts(tree: &Tree) -> Vec<usize> {
    let mut out = Vec::new();
    if !tree.nodes.is_empty() {
        select(tree, 0, &mut out, 0);
    }
    out
}

fn select(tree: &Tree, part: usize, out: &mut Vec<usize>, level: usize) {
    // The tree is at most MAX_DEPTH deep; the guard only makes that obvious.
    let Some(node) = tree.nodes.get(part) else {
        return;
    };
    if level > MAX_DEPTH + 1 {
        return;
    }
    match &node.kind {
        Kind::Leaf => {
            if node.text != TextKind::None {
                out.push(part);
            }
        }
        Kind::Message { child } => {
            if let Some(child) = *child {
                select(tree, child, out, level + 1);
            }
        }
        Kind::Multipart {
            alternative: false,
            children,
        } => {
            for &child in children {
                select(tree, child, out, level + 1);
            }
        }
        Kind::Multipart {
            alternative: true,
            children,
        } => {
            let plain = children.iter().copied().find(|&c| {
                tree.nodes
                    .get(c)
                    .is_some_and(|n| matches!(n.kind, Kind::Leaf) && n.text == TextKind::Plain)
            });
            if let Some(plain) = plain {
                out.push(plain);
                return;
            }
            let mut fallback: Option<Vec<usize>> = None;
            for &child in children {
                let mut chosen = Vec::new();
                select(tree, child, &mut chosen, level + 1);
                let has_html = chosen
                    .iter()
                    .any(|&p| tree.nodes.get(p).is_some_and(|n| n.text == TextKind::Html));
                if has_html {
                    out.extend(chosen);
                    return;
                }
                if fallback.is_none() && !chosen.is_empty() {
                    fallback = Some(chosen);
                }
            }
            out.extend(fallback.unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests;
