//! The message, parsed once, and the views rules look at.
//!
//! CONTRACT (being implemented): `Message::parse` never panics, whatever the bytes. Each view
//! is built on first use and cached, so a rule set without `uri` rules never extracts URIs.
//! Views follow SpamAssassin's semantics so stock rules mean what they say.

use std::sync::OnceLock;

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
        }
    }

    /// The whole message as received (SpamAssassin `full`).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The top-level header fields, in order.
    pub fn headers(&self) -> &[HeaderField] {
        self.headers.get_or_init(Vec::new)
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
    pub fn body(&self) -> &[u8] {
        self.body.get_or_init(Vec::new)
    }

    /// SpamAssassin `rawbody`: text parts with transfer encoding decoded but HTML kept,
    /// lines separated by "\n".
    pub fn rawbody(&self) -> &[u8] {
        self.rawbody.get_or_init(Vec::new)
    }

    /// Every URI in the message: from text with a link finder, from HTML href/src.
    pub fn uris(&self) -> &[String] {
        self.uris.get_or_init(Vec::new)
    }

    /// The header fields of every MIME part below the top level (SpamAssassin `mimeheader`).
    pub fn mime_headers(&self) -> &[HeaderField] {
        self.mime_headers.get_or_init(Vec::new)
    }

    pub fn attachments(&self) -> &[Attachment] {
        self.attachments.get_or_init(Vec::new)
    }

    /// What was wrong with the MIME structure, if anything (empty for a well-formed message).
    pub fn problems(&self) -> &[String] {
        self.problems.get_or_init(Vec::new)
    }
}
