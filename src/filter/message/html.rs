//! HTML to the text a reader sees, plus the URIs in its attributes.
//!
//! A single forward scan, no DOM: tags are dropped; the content of `script`, `style`, `title`
//! and `template` is dropped; comments (`<!-- -->`) and declarations (`<!...>`, `<?...>`) are
//! dropped; character references (named, decimal, hex) are decoded. Whitespace in the source
//! is a space (inside `pre`, line breaks stay); so is a no-break space (`&nbsp;`, U+00A0). Block elements start and end a line (`p`,
//! `div`, `tr`, `li`, headings, tables, lists, …) and `br` ends one, so with the paragraph rule
//! of `body` consecutive blocks become separate lines and a single `br` joins. `hr` makes a
//! paragraph break, table cells are separated by a space, and an image's `alt` text is shown
//! the way a client does when it does not load images.
//!
//! URIs: the values of `href`, `src`, `action` and `background` on any element, with
//! character references decoded, tabs and line breaks removed and blanks trimmed.
//!
//! Every step moves forward, so the work is linear in the input whatever the markup (an
//! unterminated comment, tag or quoted attribute ends at the end of the input).

use memchr::{memchr, memchr2, memmem};

pub(super) struct Rendered {
    pub text: String,
    pub links: Vec<String>,
}

pub(super) fn render(src: &str, max_links: usize) -> Rendered {
    let mut r = Renderer {
        out: String::with_capacity(src.len() / 2),
        links: Vec::new(),
        max_links,
        pre: 0,
    };
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let next = memchr2(b'<', b'&', &b[i..]).map_or(b.len(), |k| i + k);
        // `next` is at an ASCII byte or the end: a char boundary.
        r.text(src.get(i..next).unwrap_or_default());
        i = next;
        match b.get(i) {
            Some(b'&') => {
                let (decoded, len) = entity(&b[i..], false);
                match decoded {
                    Some(c) => r.char(c),
                    None => r.char('&'),
                }
                i += len;
            }
            Some(b'<') => i = r.markup(src, i),
            _ => break,
        }
    }
    Rendered {
        text: r.out,
        links: r.links,
    }
}

struct Renderer {
    out: String,
    links: Vec<String>,
    max_links: usize,
    pre: usize,
}

/// Elements whose content is not shown.
const HIDDEN: &[&str] = &["script", "style", "title", "template"];
/// Elements that start and end a line.
const BLOCKS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "caption",
    "center",
    "dd",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "html",
    "legend",
    "li",
    "main",
    "nav",
    "ol",
    "option",
    "p",
    "pre",
    "section",
    "table",
    "tbody",
    "tfoot",
    "thead",
    "tr",
    "ul",
];
const URI_ATTRS: &[&str] = &["href", "src", "action", "background"];

impl Renderer {
    fn text(&mut self, s: &str) {
        for c in s.chars() {
            self.char(c);
        }
    }

    fn char(&mut self, c: char) {
        if c == '\n' && self.pre > 0 {
            self.out.push('\n');
        } else if c.is_ascii_whitespace() || c == '\u{a0}' {
            if !self.out.is_empty() && !self.out.ends_with([' ', '\n']) {
                self.out.push(' ');
            }
        } else {
            self.out.push(c);
        }
    }

    fn line_break(&mut self) {
        if self.out.ends_with(' ') {
            self.out.pop();
        }
        self.out.push('\n');
    }

    fn space(&mut self) {
        self.char(' ');
    }

    /// Handles the markup starting at `b[i] == '<'`; returns where scanning resumes.
    fn markup(&mut self, src: &str, i: usize) -> usize {
        let b = src.as_bytes();
        let rest = &b[i..];
        if rest.starts_with(b"<!--") {
            return memmem::find(&rest[4..], b"-->").map_or(b.len(), |k| i + 4 + k + 3);
        }
        match rest.get(1) {
            Some(b'!' | b'?') => memchr(b'>', rest).map_or(b.len(), |k| i + k + 1),
            Some(b'/') if rest.get(2).is_some_and(u8::is_ascii_alphabetic) => {
                let (name, after) = tag_name(b, i + 2);
                self.end_tag(&name);
                memchr(b'>', &b[after..]).map_or(b.len(), |k| after + k + 1)
            }
            Some(c) if c.is_ascii_alphabetic() => self.start_tag(src, i),
            _ => {
                self.char('<');
                i + 1
            }
        }
    }

    fn start_tag(&mut self, src: &str, i: usize) -> usize {
        let b = src.as_bytes();
        let (name, mut p) = tag_name(b, i + 1);
        let mut alt: Option<String> = None;
        // Attributes, up to the closing '>'.
        loop {
            while p < b.len() && (b[p].is_ascii_whitespace() || b[p] == b'/') {
                p += 1;
            }
            match b.get(p) {
                None => break,
                Some(b'>') => {
                    p += 1;
                    break;
                }
                _ => {}
            }
            let name_start = p;
            while p < b.len() && !b[p].is_ascii_whitespace() && !matches!(b[p], b'=' | b'>' | b'/')
            {
                p += 1;
            }
            if p == name_start {
                // A stray '=': skip it.
                p += 1;
                continue;
            }
            let attr_name = &b[name_start..p];
            while p < b.len() && b[p].is_ascii_whitespace() {
                p += 1;
            }
            if b.get(p) != Some(&b'=') {
                continue;
            }
            p += 1;
            while p < b.len() && b[p].is_ascii_whitespace() {
                p += 1;
            }
            let (value, after) = match b.get(p) {
                Some(&q @ (b'"' | b'\'')) => {
                    let close = memchr(q, &b[p + 1..]).map_or(b.len(), |k| p + 1 + k);
                    (
                        src.get(p + 1..close).unwrap_or_default(),
                        (close + 1).min(b.len()),
                    )
                }
                _ => {
                    let close = b[p..]
                        .iter()
                        .position(|c| c.is_ascii_whitespace() || *c == b'>')
                        .map_or(b.len(), |k| p + k);
                    (src.get(p..close).unwrap_or_default(), close)
                }
            };
            p = after;
            let wanted = URI_ATTRS
                .iter()
                .any(|a| attr_name.eq_ignore_ascii_case(a.as_bytes()));
            if wanted && self.links.len() < self.max_links {
                let link: String = decode_attr(value)
                    .chars()
                    .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
                    .collect();
                let link = link.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\u{a0}');
                if !link.is_empty() {
                    self.links.push(link.to_string());
                }
            } else if name == "img" && attr_name.eq_ignore_ascii_case(b"alt") {
                alt = Some(decode_attr(value));
            }
        }

        if HIDDEN.contains(&name.as_str()) {
            return skip_to_end_tag(b, p, &name);
        }
        match name.as_str() {
            "br" => self.line_break(),
            "hr" => {
                self.line_break();
                self.line_break();
            }
            "td" | "th" => self.space(),
            "img" => {
                if let Some(alt) = alt {
                    self.space();
                    self.text(&alt);
                    self.space();
                }
            }
            _ => {}
        }
        if BLOCKS.contains(&name.as_str()) {
            self.line_break();
            if name == "pre" {
                self.pre += 1;
            }
        }
        p
    }

    fn end_tag(&mut self, name: &str) {
        match name {
            // `</br>` is a line break in browsers too.
            "br" => self.line_break(),
            "td" | "th" => self.space(),
            _ => {}
        }
        if BLOCKS.contains(&name) {
            self.line_break();
            if name == "pre" {
                self.pre = self.pre.saturating_sub(1);
            }
        }
    }
}

/// The lower-cased tag name starting at `b[i]`, and the index after it.
fn tag_name(b: &[u8], i: usize) -> (String, usize) {
    let len = b
        .get(i..)
        .unwrap_or_default()
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b':' | b'_'))
        .count();
    let name = b.get(i..i + len.min(32)).unwrap_or_default();
    (String::from_utf8_lossy(name).to_ascii_lowercase(), i + len)
}

/// The index after `</name ...>` at or after `from`, or the end.
fn skip_to_end_tag(b: &[u8], from: usize, name: &str) -> usize {
    let mut p = from;
    while let Some(k) = memmem::find(b.get(p..).unwrap_or_default(), b"</") {
        let at = p + k + 2;
        let candidate = b.get(at..at + name.len()).unwrap_or_default();
        let after = b.get(at + name.len());
        if candidate.eq_ignore_ascii_case(name.as_bytes())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
        {
            return memchr(b'>', &b[at..]).map_or(b.len(), |j| at + j + 1);
        }
        p = at;
    }
    b.len()
}

/// An attribute value with character references decoded (named ones only with their `;`,
/// so `?a=1&copy=2` in a URL stays as it is).
fn decode_attr(value: &str) -> String {
    let b = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    while i < b.len() {
        let next = memchr(b'&', &b[i..]).map_or(b.len(), |k| i + k);
        out.push_str(value.get(i..next).unwrap_or_default());
        i = next;
        if i < b.len() {
            let (decoded, len) = entity(&b[i..], true);
            match decoded {
                Some(c) => out.push(c),
                None => out.push('&'),
            }
            i += len;
        }
    }
    out
}

/// The character reference at the start of `b` (`b[0] == '&'`): what it stands for (None
/// when it is not one) and how many bytes it takes (1 when it is not one).
fn entity(b: &[u8], in_attribute: bool) -> (Option<char>, usize) {
    if b.get(1) == Some(&b'#') {
        let hex = matches!(b.get(2), Some(b'x' | b'X'));
        let start = if hex { 3 } else { 2 };
        let digits = b
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
            .count();
        if digits == 0 {
            return (None, 1);
        }
        let text = std::str::from_utf8(&b[start..start + digits]).unwrap_or("0");
        let value = if digits > 8 {
            u32::MAX
        } else {
            u32::from_str_radix(text, if hex { 16 } else { 10 }).unwrap_or(u32::MAX)
        };
        let mut len = start + digits;
        if b.get(len) == Some(&b';') {
            len += 1;
        }
        return (Some(numeric_char(value)), len);
    }
    let name_len = b
        .get(1..)
        .unwrap_or_default()
        .iter()
        .take(33)
        .take_while(|c| c.is_ascii_alphanumeric())
        .count();
    if name_len == 0 || name_len > 32 {
        return (None, 1);
    }
    let name = std::str::from_utf8(&b[1..1 + name_len]).unwrap_or("");
    let terminated = b.get(1 + name_len) == Some(&b';');
    if !terminated && (in_attribute || !LEGACY.contains(&name)) {
        return (None, 1);
    }
    match named(name) {
        Some(c) => (Some(c), 1 + name_len + usize::from(terminated)),
        None => (None, 1),
    }
}

/// Named references browsers also accept without the `;` (in text).
const LEGACY: &[&str] = &["amp", "lt", "gt", "quot", "nbsp", "AMP", "LT", "GT", "QUOT"];

/// HTML 5 turns these C1 code points into the Windows-1252 characters they were meant as.
const C1: [char; 32] = [
    '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}', '\u{8f}',
    '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}', '\u{178}',
];

fn numeric_char(value: u32) -> char {
    match value {
        0 => '\u{fffd}',
        0x80..=0x9f => C1[(value - 0x80) as usize],
        _ => char::from_u32(value).unwrap_or('\u{fffd}'),
    }
}

/// The Latin-1 entities, in code point order from U+00A0.
const LATIN1: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf",
    "laquo", "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro",
    "para", "middot", "cedil", "sup1", "ordm", "raquo", "frac14", "frac12", "frac34", "iquest",
    "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig", "Ccedil", "Egrave", "Eacute",
    "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve", "Oacute",
    "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute",
    "THORN", "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil",
    "egrave", "eacute", "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde",
    "ograve", "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc",
    "uuml", "yacute", "thorn", "yuml",
];

fn named(name: &str) -> Option<char> {
    let c = match name {
        "amp" | "AMP" => '&',
        "lt" | "LT" => '<',
        "gt" | "GT" => '>',
        "quot" | "QUOT" => '"',
        "apos" => '\'',
        // A plain space: body rules should see words that are padded with &nbsp; as words.
        "nbsp" => ' ',
        "ensp" => '\u{2002}',
        "emsp" => '\u{2003}',
        "thinsp" => '\u{2009}',
        "zwnj" => '\u{200c}',
        "zwj" => '\u{200d}',
        "lrm" => '\u{200e}',
        "rlm" => '\u{200f}',
        "ndash" => '\u{2013}',
        "mdash" => '\u{2014}',
        "lsquo" => '\u{2018}',
        "rsquo" => '\u{2019}',
        "sbquo" => '\u{201a}',
        "ldquo" => '\u{201c}',
        "rdquo" => '\u{201d}',
        "bdquo" => '\u{201e}',
        "dagger" => '\u{2020}',
        "Dagger" => '\u{2021}',
        "bull" => '\u{2022}',
        "hellip" => '\u{2026}',
        "permil" => '\u{2030}',
        "prime" => '\u{2032}',
        "Prime" => '\u{2033}',
        "lsaquo" => '\u{2039}',
        "rsaquo" => '\u{203a}',
        "oline" => '\u{203e}',
        "frasl" => '\u{2044}',
        "euro" => '\u{20ac}',
        "trade" => '\u{2122}',
        "larr" => '\u{2190}',
        "uarr" => '\u{2191}',
        "rarr" => '\u{2192}',
        "darr" => '\u{2193}',
        "harr" => '\u{2194}',
        "minus" => '\u{2212}',
        "infin" => '\u{221e}',
        "ne" => '\u{2260}',
        "le" => '\u{2264}',
        "ge" => '\u{2265}',
        "spades" => '\u{2660}',
        "clubs" => '\u{2663}',
        "hearts" => '\u{2665}',
        "diams" => '\u{2666}',
        "OElig" => '\u{152}',
        "oelig" => '\u{153}',
        "Scaron" => '\u{160}',
        "scaron" => '\u{161}',
        "Yuml" => '\u{178}',
        "fnof" => '\u{192}',
        "circ" => '\u{2c6}',
        "tilde" => '\u{2dc}',
        _ => {
            let i = LATIN1.iter().position(|n| *n == name)?;
            return char::from_u32(0xa0 + i as u32);
        }
    };
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities() {
        let r = render(
            "a&amp;b &lt;x&gt; &#65;&#x42;&#X43 &eacute;&copy; &bogus; &#146; &#0;",
            10,
        );
        assert_eq!(r.text, "a&b <x> ABC é© &bogus; \u{2019} \u{fffd}");
        assert_eq!(decode_attr("?a=1&copy=2&amp;b=&#104;"), "?a=1&copy=2&b=h");
    }

    #[test]
    fn unterminated_markup_ends_at_the_end() {
        assert_eq!(render("a<!-- b", 10).text, "a");
        assert_eq!(render("a<a href=\"x", 10).text, "a");
        assert_eq!(render("a<script>b", 10).text, "a");
        assert_eq!(render("a < b", 10).text, "a < b");
        assert_eq!(render("a &", 10).text, "a &");
    }
}
