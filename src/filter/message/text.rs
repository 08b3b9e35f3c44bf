//! Writers for the text views and the URI finder.

use std::collections::HashSet;

use linkify::{LinkFinder, LinkKind};
use memchr::memmem;

/// Builds `body`: one output line per paragraph.
///
/// Within a text, consecutive non-empty lines are one paragraph, joined with a space; an empty
/// (or blank) line ends it, as does a form feed. Runs of whitespace (no-break spaces included)
/// become one space and each paragraph is trimmed. `end_paragraph` ends one explicitly (between parts). Output lines are
/// separated by "\n". Stops at `cap` bytes (at a character boundary).
pub(super) struct Paragraphs {
    out: String,
    cap: usize,
    /// A paragraph is open: the next word joins it.
    open: bool,
    /// The current input line has a word.
    line_has_word: bool,
    /// Whitespace seen since the last word of the open paragraph.
    space: bool,
    full: bool,
}

impl Paragraphs {
    pub fn new(cap: usize) -> Paragraphs {
        Paragraphs {
            out: String::new(),
            cap,
            open: false,
            line_has_word: false,
            space: false,
            full: false,
        }
    }

    pub fn add(&mut self, text: &str) {
        for c in text.chars() {
            if self.full {
                return;
            }
            match c {
                '\n' | '\x0c' => {
                    if !self.line_has_word || c == '\x0c' {
                        self.open = false;
                    }
                    self.line_has_word = false;
                    self.space = true;
                }
                ' ' | '\t' | '\r' | '\x0b' | '\u{a0}' => self.space = true,
                _ => {
                    let sep = if !self.open {
                        (!self.out.is_empty()).then_some('\n')
                    } else if self.space {
                        Some(' ')
                    } else {
                        None
                    };
                    let need = sep.map_or(0, char::len_utf8) + c.len_utf8();
                    if self.out.len() + need > self.cap {
                        self.full = true;
                        return;
                    }
                    if let Some(sep) = sep {
                        self.out.push(sep);
                    }
                    self.out.push(c);
                    self.open = true;
                    self.line_has_word = true;
                    self.space = false;
                }
            }
        }
    }

    pub fn end_paragraph(&mut self) {
        self.open = false;
        self.line_has_word = false;
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Builds `rawbody`: the lines of each text, CR before LF removed, separated by "\n"; stops at
/// `cap` bytes (at a character boundary).
pub(super) struct Lines {
    out: String,
    cap: usize,
    full: bool,
}

impl Lines {
    pub fn new(cap: usize) -> Lines {
        Lines {
            out: String::new(),
            cap,
            full: false,
        }
    }

    pub fn add(&mut self, text: &str) {
        for line in text.split('\n') {
            if self.full {
                return;
            }
            let line = line.strip_suffix('\r').unwrap_or(line);
            let sep = usize::from(!self.out.is_empty());
            if self.out.len() + sep + line.len() > self.cap {
                if sep == 1 && self.out.len() < self.cap {
                    self.out.push('\n');
                }
                let room = self.cap.saturating_sub(self.out.len());
                let mut cut = room.min(line.len());
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                self.out.push_str(line.get(..cut).unwrap_or_default());
                self.full = true;
                return;
            }
            if sep == 1 {
                self.out.push('\n');
            }
            self.out.push_str(line);
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// The URIs of a message, in order of appearance, each once, at most `cap`.
pub(super) struct Uris {
    list: Vec<String>,
    seen: HashSet<String>,
    cap: usize,
    finder: LinkFinder,
    schemeless: LinkFinder,
}

impl Uris {
    pub fn new(cap: usize) -> Uris {
        let mut schemeless = LinkFinder::new();
        schemeless
            .kinds(&[LinkKind::Url])
            .url_must_have_scheme(false);
        Uris {
            list: Vec::new(),
            seen: HashSet::new(),
            cap,
            finder: LinkFinder::new(),
            schemeless,
        }
    }

    pub fn full(&self) -> bool {
        self.list.len() >= self.cap
    }

    pub fn add(&mut self, uri: String) {
        if !self.full() && !self.seen.contains(&uri) {
            self.seen.insert(uri.clone());
            self.list.push(uri);
        }
    }

    /// URIs in plain text: http, https and ftp URLs; e-mail addresses as `mailto:` URIs (a
    /// written `mailto:` gives the same); `www.` and `ftp.` host names without a scheme, with
    /// `http://` or `ftp://` put in front, as SpamAssassin does.
    pub fn scan(&mut self, text: &str) {
        // Both passes, merged by position so the order is the order of appearance.
        let mut found: Vec<(usize, String)> = Vec::new();
        let room = self.cap.saturating_sub(self.list.len());
        for link in self.finder.links(text) {
            if found.len() >= room {
                break;
            }
            let s = link.as_str();
            match link.kind() {
                LinkKind::Url => {
                    let scheme = s.split(':').next().unwrap_or("");
                    if ["http", "https", "ftp"]
                        .iter()
                        .any(|k| scheme.eq_ignore_ascii_case(k))
                    {
                        found.push((link.start(), s.to_string()));
                    }
                }
                LinkKind::Email => found.push((link.start(), format!("mailto:{s}"))),
                _ => {}
            }
        }
        let b = text.as_bytes();
        if ["www.", "WWW.", "Www.", "ftp.", "FTP."]
            .iter()
            .any(|n| memmem::find(b, n.as_bytes()).is_some())
        {
            let mut schemeless = 0;
            for link in self.schemeless.links(text) {
                if schemeless >= room {
                    break;
                }
                let s = link.as_str();
                let prefix = s.get(..4).unwrap_or("");
                let uri = if prefix.eq_ignore_ascii_case("www.") {
                    format!("http://{s}")
                } else if prefix.eq_ignore_ascii_case("ftp.") {
                    format!("ftp://{s}")
                } else {
                    continue;
                };
                found.push((link.start(), uri));
                schemeless += 1;
            }
        }
        found.sort_by_key(|&(start, _)| start);
        for (_, uri) in found {
            self.add(uri);
        }
    }

    pub fn finish(self) -> Vec<String> {
        self.list
    }
}
