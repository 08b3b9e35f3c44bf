//! Perl regular expressions as SpamAssassin writes them, turned into the syntax of the `regex`
//! and `fancy-regex` crates — only where the meaning is exactly the same.
//!
//! Both engines run in byte mode without Unicode (`.` is one byte, `\w` is ASCII), which is
//! what Perl does with the octet strings SpamAssassin matches. The translator emits ASCII only:
//! every literal that is not a letter or digit is written as `\xNN`, so Perl's octal escapes,
//! Latin-1 bytes in rule files and characters that are special in one syntax but not in the
//! other (`\<`, `&&`, `~~`, `--` in classes, …) all mean one byte.
//!
//! Constructs the `regex` crate lacks (lookaround, backreferences, atomic groups, possessive
//! quantifiers, `\K`) make the pattern "fancy". For those the translator also writes a *gate*:
//! the same pattern with lookarounds dropped, atomic groups and possessive quantifiers made
//! plain, `\K` removed and backreferences replaced by `.*?`. Every string the real pattern
//! matches, the gate matches too, so the gate (fast, no backtracking) runs first and the
//! backtracking engine only when the gate matched.
//!
//! The translator also checks Perl's syntax: what Perl refuses to compile (an unclosed group,
//! `[z-a]`, a reference to a missing group, …) is [`RegexError::Invalid`], a mistake in the
//! rule; valid Perl it cannot express (recursion, `\G`, verbs, …) is
//! [`RegexError::Unsupported`]. Which is which was checked against Perl 5.36.

use std::fmt::Write as _;

use super::regex_error::{Invalid, InvalidKind, RegexError, Unsupported};

/// A pattern taken out of its delimiters: `/re/flags`, `m{re}flags`, `m!re!flags`, …
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delimited {
    pub pattern: Vec<u8>,
    /// Modifier letters after the closing delimiter (`i`, `m`, `s`, `x`, `g`, `o`, …).
    pub flags: String,
}

/// Splits `text` (the whole regex operand of a rule, trimmed) into pattern and flags, the way
/// SpamAssassin's `compile_regexp` does: the pattern ends at the *last* closing delimiter that
/// is followed only by modifier letters.
pub fn split_delimited(text: &[u8]) -> Result<Delimited, String> {
    let (rest, close) = if let Some(rest) = text.strip_prefix(b"/") {
        (rest, b'/')
    } else if let Some(rest) = text.strip_prefix(b"m").or_else(|| text.strip_prefix(b"qr")) {
        match rest.first() {
            Some(b'{') => (&rest[1..], b'}'),
            Some(b'(') => (&rest[1..], b')'),
            Some(b'<') => (&rest[1..], b'>'),
            Some(b'[') => (&rest[1..], b']'),
            Some(b'\\') => return Err("backslash delimiter not allowed".into()),
            Some(&c) if !c.is_ascii_alphanumeric() && c != b'_' && !c.is_ascii_whitespace() => {
                (&rest[1..], c)
            }
            _ => return Err("missing regexp delimiters".into()),
        }
    } else {
        return Err("missing regexp delimiters (expected /.../ or m{...})".into());
    };
    // Modifiers: [a-df-z]* at the very end, right after the closing delimiter.
    let mut end = rest.len();
    while end > 0 && is_modifier(rest[end - 1]) {
        end -= 1;
    }
    if end == 0 || rest[end - 1] != close {
        return Err(format!(
            "invalid end delimiter/modifiers (expected '{}' then modifiers)",
            close as char
        ));
    }
    let pattern = rest[..end - 1].to_vec();
    let flags = String::from_utf8_lossy(&rest[end..]).into_owned();
    if pattern.windows(2).any(|w| w == b"?{") && contains_code_block(&pattern) {
        return Err("code block (?{...}) not allowed".into());
    }
    Ok(Delimited { pattern, flags })
}

fn is_modifier(b: u8) -> bool {
    b.is_ascii_lowercase() && b != b'e'
}

fn contains_code_block(p: &[u8]) -> bool {
    p.windows(3).any(|w| w == b"(?{") || p.windows(4).any(|w| w == b"(??{")
}

/// The result of translating one Perl pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    /// The pattern for `regex::bytes` (when `fancy` is false) or `fancy-regex`.
    pub full: String,
    /// Needs the backtracking engine.
    pub fancy: bool,
    /// For fancy patterns: the `regex`-crate superset to run first. `None` when no sound
    /// superset could be written (the fancy engine then runs alone).
    pub gate: Option<String>,
}

type Step<T = ()> = Result<T, RegexError>;

fn invalid(kind: InvalidKind, at: usize) -> RegexError {
    RegexError::Invalid(Invalid { kind, at })
}

#[derive(Clone, Copy)]
struct Mode {
    x: bool,
    m: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    Plain,
    /// A lookaround; `true` for a lookbehind.
    Look(bool),
}

/// What the last item was, for the next quantifier.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    /// Start of the pattern, a group or an alternative: nothing to repeat.
    Nothing,
    /// Something a quantifier repeats.
    Atom,
    /// A quantifier: another one would be nested.
    Quantifier,
    /// A zero-width assertion (`^`, `$`, `\b`, a lookaround, …): Perl repeats it
    /// (pointlessly), the engines refuse.
    Assertion,
    /// `\K`: Perl refuses a quantifier on it.
    Keep,
}

/// A reference to a group, checked once the whole pattern (every group) is known.
enum Target {
    Number(usize),
    Name(String),
}

struct Out {
    full: String,
    gate: String,
    /// > 0 while inside a lookaround: nothing goes to the gate.
    suppress: usize,
    fancy: bool,
    gate_ok: bool,
}

impl Out {
    fn both(&mut self, s: &str) {
        self.full.push_str(s);
        if self.suppress == 0 {
            self.gate.push_str(s);
        }
    }
    fn split(&mut self, full: &str, gate: &str) {
        self.full.push_str(full);
        if self.suppress == 0 {
            self.gate.push_str(gate);
        }
        self.fancy = true;
    }
    fn byte(&mut self, b: u8) {
        if b.is_ascii_alphanumeric() {
            let mut buf = [0u8; 4];
            let s = (b as char).encode_utf8(&mut buf);
            self.both(s);
        } else {
            let s = format!("\\x{b:02X}");
            self.both(&s);
        }
    }
}

/// Translates a Perl pattern with its modifier letters.
///
/// Perl's syntax is checked in full: a pattern Perl refuses is [`RegexError::Invalid`] even
/// when it also holds something unsupported. Unsupported constructs are noted and the rest is
/// still read, for that reason.
pub fn translate(pattern: &[u8], flags: &str) -> Result<Translated, RegexError> {
    let mut t = Translator {
        p: pattern,
        i: 0,
        out: Out {
            full: String::with_capacity(pattern.len() * 2),
            gate: String::new(),
            suppress: 0,
            fancy: false,
            gate_ok: true,
        },
        groups: Vec::new(),
        modes: Vec::new(),
        mode: Mode {
            x: flags.contains('x'),
            m: flags.contains('m'),
        },
        ncap: 0,
        names: Vec::new(),
        refs: Vec::new(),
        prev: Prev::Nothing,
        behind: 0,
        unsupported: None,
    };
    let mut prefix = String::new();
    for f in ['i', 'm', 's'] {
        if flags.contains(f) {
            prefix.push(f);
        }
    }
    if !prefix.is_empty() {
        let s = format!("(?{prefix})");
        t.out.both(&s);
    }
    t.run()?;
    if let Some(&(_, at)) = t.groups.first() {
        return Err(invalid(InvalidKind::UnclosedGroup, at));
    }
    t.check_refs()?;
    if let Some(u) = t.unsupported {
        return Err(RegexError::Unsupported(u));
    }
    let out = t.out;
    let gate = if out.fancy && out.gate_ok {
        Some(out.gate)
    } else {
        None
    };
    Ok(Translated {
        full: out.full,
        fancy: out.fancy,
        gate,
    })
}

struct Translator<'a> {
    p: &'a [u8],
    i: usize,
    out: Out,
    /// Open groups with the offset of their '('.
    groups: Vec<(Group, usize)>,
    modes: Vec<Mode>,
    mode: Mode,
    /// Capture groups opened so far.
    ncap: usize,
    /// Names of the named groups so far.
    names: Vec<String>,
    /// Group references, with their offsets.
    refs: Vec<(Target, usize)>,
    prev: Prev,
    /// Lookbehinds open around the cursor.
    behind: usize,
    /// The first unsupported construct seen.
    unsupported: Option<Unsupported>,
}

const POSIX: [&str; 14] = [
    "alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower", "print", "punct",
    "space", "upper", "word", "xdigit",
];

impl Translator<'_> {
    fn peek(&self) -> Option<u8> {
        self.p.get(self.i).copied()
    }
    fn peek_at(&self, k: usize) -> Option<u8> {
        self.p.get(self.i + k).copied()
    }
    fn starts_with(&self, s: &[u8]) -> bool {
        self.p[self.i..].starts_with(s)
    }
    /// Offset of the next `b` at or after the cursor.
    fn find(&self, b: u8) -> Option<usize> {
        self.p[self.i..]
            .iter()
            .position(|&c| c == b)
            .map(|k| self.i + k)
    }
    fn skip(&mut self, what: Unsupported) {
        if self.unsupported.is_none() {
            self.unsupported = Some(what);
        }
    }
    fn push(&mut self, g: Group, at: usize, mode: Mode) {
        self.groups.push((g, at));
        self.modes.push(mode);
    }

    fn run(&mut self) -> Step {
        while let Some(c) = self.peek() {
            let at = self.i;
            self.i += 1;
            match c {
                b'\\' => self.escape(at)?,
                b'[' => {
                    let class = self.class(at)?;
                    self.out.both(&class);
                    self.prev = Prev::Atom;
                }
                b'(' => self.open_group(at)?,
                b')' => self.close_group(at)?,
                b'|' => {
                    self.out.both("|");
                    self.prev = Prev::Nothing;
                }
                b'^' => {
                    self.out.both("^");
                    self.prev = Prev::Assertion;
                }
                b'$' => {
                    if self.mode.m {
                        self.out.both("(?m:$)");
                    } else {
                        self.out.both("(?:\\n?\\z)");
                    }
                    self.prev = Prev::Assertion;
                }
                b'.' => {
                    self.out.both(".");
                    self.prev = Prev::Atom;
                }
                b'*' => self.quantifier("*", true, at)?,
                b'+' => self.quantifier("+", true, at)?,
                b'?' => self.quantifier("?", false, at)?,
                b'{' => self.brace(at)?,
                b'#' if self.mode.x => self.x_comment(),
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0C' | b'\x0B' if self.mode.x => {}
                _ => {
                    self.out.byte(c);
                    self.prev = Prev::Atom;
                }
            }
        }
        Ok(())
    }

    /// Skips an `/x` comment, cursor just after `#`.
    fn x_comment(&mut self) {
        self.i = self.find(b'\n').map_or(self.p.len(), |e| e + 1);
    }

    /// Skips `/x` whitespace and comments.
    fn x_space(&mut self) {
        while self.mode.x {
            match self.peek() {
                Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0C' | b'\x0B') => self.i += 1,
                Some(b'#') => {
                    self.i += 1;
                    self.x_comment();
                }
                _ => break,
            }
        }
    }

    /// A quantifier `q` (already normalized, `unbounded` without a maximum) found at `at`.
    fn quantifier(&mut self, q: &str, unbounded: bool, at: usize) -> Step {
        if unbounded && self.behind > 0 && self.prev != Prev::Nothing {
            return Err(invalid(InvalidKind::LookbehindTooLong, at));
        }
        match self.prev {
            Prev::Atom => self.out.both(q),
            Prev::Nothing => return Err(invalid(InvalidKind::NothingToRepeat, at)),
            Prev::Quantifier => return Err(invalid(InvalidKind::NestedQuantifier, at)),
            Prev::Keep if unbounded => return Err(invalid(InvalidKind::RepeatedKeep, at)),
            Prev::Assertion | Prev::Keep => self.skip(Unsupported::QuantifiedAssertion),
        }
        // lazy `?` passes, possessive `+` needs the backtracking engine
        self.x_space();
        match self.peek() {
            Some(b'?') => {
                self.i += 1;
                self.out.both("?");
            }
            Some(b'+') => {
                self.i += 1;
                self.out.split("+", "");
            }
            _ => {}
        }
        self.prev = Prev::Quantifier;
        Ok(())
    }

    /// `{`: a counted quantifier, or a literal brace where Perl reads it as one.
    fn brace(&mut self, at: usize) -> Step {
        let braces = match parse_braces(&self.p[at..]) {
            Some(b) if self.prev != Prev::Nothing => b,
            _ => {
                // Perl refuses a literal '{' right after `\w`, `\d`, … (checking the text)
                if at >= 2 && self.p[at - 1].is_ascii_alphabetic() && self.p[at - 2] == b'\\' {
                    return Err(invalid(InvalidKind::UnescapedBrace, at));
                }
                self.out.byte(b'{');
                self.prev = Prev::Atom;
                return Ok(());
            }
        };
        if braces.min > MAX_COUNT || braces.max.is_some_and(|m| m > MAX_COUNT) {
            return Err(invalid(InvalidKind::QuantifierTooBig, at));
        }
        self.i = at + braces.len;
        if braces.max.is_some_and(|m| m < braces.min) {
            if self.prev == Prev::Quantifier {
                return Err(invalid(InvalidKind::NestedQuantifier, at));
            }
            // Perl drops the repeated item (it cannot match): what follows repeats nothing
            self.skip(Unsupported::ImpossibleQuantifier);
            self.prev = Prev::Nothing;
            return Ok(());
        }
        self.quantifier(&braces.render(), braces.max.is_none(), at)
    }

    fn escape(&mut self, at: usize) -> Step {
        let Some(c) = self.peek() else {
            return Err(invalid(InvalidKind::TrailingBackslash, at));
        };
        self.i += 1;
        self.prev = Prev::Atom;
        match c {
            b'0' => {
                let v = self.octal_digits(2, 0);
                self.out.byte(v);
            }
            b'1'..=b'9' => self.numbered(at),
            b'x' => {
                let v = self.hex(at)?;
                self.out.byte(v);
            }
            b'o' => {
                let v = self.octal_braces(at)?;
                self.out.byte(v);
            }
            b'c' => {
                let v = self.control(at)?;
                self.out.byte(v);
            }
            b'e' => self.out.byte(0x1B),
            b'a' => self.out.byte(0x07),
            b't' => self.out.byte(b'\t'),
            b'n' => self.out.byte(b'\n'),
            b'r' => self.out.byte(b'\r'),
            b'f' => self.out.byte(0x0C),
            b'd' | b'D' | b'w' | b'W' | b's' | b'S' => {
                let s = format!("\\{}", c as char);
                self.out.both(&s);
            }
            b'b' | b'B' | b'A' | b'z' | b'Z' | b'G' | b'K' | b'E' => self.assertion(c, at)?,
            b'h' => self.out.both("[\\x09\\x20\\xA0]"),
            b'H' => self.out.both("[^\\x09\\x20\\xA0]"),
            b'v' => self.out.both("[\\x0A-\\x0D\\x85]"),
            b'V' => self.out.both("[^\\x0A-\\x0D\\x85]"),
            b'R' => self.out.both("(?:\\x0D\\x0A|[\\x0A-\\x0D\\x85])"),
            b'N' => self.not_newline(at)?,
            b'Q' => self.quoted(),
            b'k' => self.named_reference(at)?,
            b'g' => self.g_reference(at)?,
            b'p' | b'P' => self.property(c, at)?,
            b'X' => self.skip(Unsupported::UnicodeEscape('X')),
            b'C' => return Err(invalid(InvalidKind::RemovedEscape, at)),
            b'l' | b'u' | b'L' | b'U' => self.skip(Unsupported::CaseChange(c as char)),
            _ => self.out.byte(c),
        }
        Ok(())
    }

    /// `\b \B \A \z \Z \G \K \E`, the letter just read.
    fn assertion(&mut self, c: u8, at: usize) -> Step {
        self.prev = Prev::Assertion;
        match c {
            b'b' | b'B' if self.peek() == Some(b'{') => {
                let name = self.braced(c, at)?;
                let name = trim_blanks(&name);
                if !matches!(name, b"gcb" | b"g" | b"lb" | b"sb" | b"wb") {
                    return Err(invalid(InvalidKind::UnknownBound, at));
                }
                self.skip(Unsupported::UnicodeBoundary);
            }
            b'b' => self.out.both("\\b"),
            b'B' => self.out.both("\\B"),
            b'A' => self.out.both("\\A"),
            b'z' => self.out.both("\\z"),
            b'Z' => self.out.both("(?:\\n?\\z)"),
            b'G' => self.skip(Unsupported::GAnchor),
            b'K' => {
                if self.out.suppress > 0 {
                    return Err(invalid(InvalidKind::KeepInLookaround, at));
                }
                self.out.split("\\K", "");
                self.prev = Prev::Keep;
            }
            // the end of a \Q...\E run that had nothing to quote
            _ => {}
        }
        Ok(())
    }

    /// `\Q...\E`: every byte up to `\E` (or the end) is literal.
    fn quoted(&mut self) {
        while self.i < self.p.len() {
            if self.starts_with(b"\\E") {
                self.i += 2;
                break;
            }
            let b = self.p[self.i];
            self.i += 1;
            self.out.byte(b);
        }
    }

    /// `\1`…`\9`, `\NN`: a backreference, or (Perl's rule) octal when there are fewer groups.
    fn numbered(&mut self, at: usize) {
        let start = self.i - 1;
        let mut end = self.i;
        while end < self.p.len() && self.p[end].is_ascii_digit() {
            end += 1;
        }
        let digits = &self.p[start..end];
        let n = digits.iter().fold(0usize, |n, d| {
            n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
        });
        if n >= 10 && n > self.ncap && digits[0] <= b'7' {
            // Perl: \NNN with more digits than groups is octal (up to 3 digits).
            self.i = start;
            let v = self.octal_digits(3, 0);
            self.out.byte(v);
        } else {
            // the group may still come (a forward reference): checked at the end
            self.i = end;
            self.refs.push((Target::Number(n), at));
            self.backref(&format!("\\{n}"));
        }
    }

    /// `\xHH` or `\x{...}`, cursor after the `x`.
    fn hex(&mut self, at: usize) -> Step<u8> {
        if self.peek() == Some(b'{') {
            return self.braced_number(b'x', 16, at);
        }
        let mut v = 0u32;
        for _ in 0..2 {
            match self.peek().and_then(|b| (b as char).to_digit(16)) {
                Some(d) => {
                    v = v * 16 + d;
                    self.i += 1;
                }
                None => break,
            }
        }
        Ok(v as u8)
    }

    /// `\o{...}`, cursor after the `o`.
    fn octal_braces(&mut self, at: usize) -> Step<u8> {
        if self.peek() != Some(b'{') {
            return Err(invalid(InvalidKind::OctalWithoutBraces, at));
        }
        self.braced_number(b'o', 8, at)
    }

    /// The value of `{digits}` at the cursor (`\x{..}` or `\o{..}`), as Perl reads it.
    fn braced_number(&mut self, letter: u8, radix: u32, at: usize) -> Step<u8> {
        let inner = self.braced(letter, at)?;
        let inner = trim_blanks(&inner);
        if inner.is_empty() {
            if radix == 8 {
                return Err(invalid(InvalidKind::EmptyOctal, at));
            }
            return Ok(0);
        }
        let digits: Vec<u32> = inner
            .iter()
            .map_while(|&b| (b as char).to_digit(radix))
            .collect();
        if digits.len() < inner.len() {
            self.skip(Unsupported::NumericEscapeStop);
        }
        let v = digits
            .iter()
            .fold(0u32, |v, &d| v.saturating_mul(radix).saturating_add(d));
        if v > 0xFF {
            self.skip(Unsupported::WideCharacter);
        }
        Ok((v & 0xFF) as u8)
    }

    /// The bytes between `{` (at the cursor) and the next `}`; the cursor moves past it.
    fn braced(&mut self, letter: u8, at: usize) -> Step<Vec<u8>> {
        let Some(close) = self.find(b'}') else {
            return Err(invalid(InvalidKind::MissingBrace(letter as char), at));
        };
        let inner = self.p[self.i + 1..close].to_vec();
        self.i = close + 1;
        Ok(inner)
    }

    /// `\cX`, cursor after the `c`.
    fn control(&mut self, at: usize) -> Step<u8> {
        match self.peek() {
            Some(x @ 0x20..=0x7E) if x != b'{' => {
                self.i += 1;
                Ok(x.to_ascii_uppercase() ^ 0x40)
            }
            _ => Err(invalid(InvalidKind::BadControl, at)),
        }
    }

    /// `\N`: not a newline, unless it is `\N{name}`.
    fn not_newline(&mut self, at: usize) -> Step {
        if self.peek() == Some(b'{') && parse_braces(&self.p[self.i..]).is_none() {
            self.unicode_name(b'N', at)?;
        } else {
            self.out.both("[^\\x0A]");
        }
        Ok(())
    }

    /// `\p{..}`, `\pL` and the `\P` forms.
    fn property(&mut self, c: u8, at: usize) -> Step {
        match self.peek() {
            None => return Err(invalid(InvalidKind::EmptyProperty, at)),
            Some(b'{') => self.unicode_name(c, at)?,
            Some(one) => {
                if !b"CLMNPSZ".contains(&one.to_ascii_uppercase()) {
                    return Err(invalid(InvalidKind::BadProperty, at));
                }
                self.i += 1;
            }
        }
        self.skip(Unsupported::UnicodeEscape(c as char));
        Ok(())
    }

    /// The `{name}` of `\p`, `\P` or `\N` (cursor on `{`). Perl refuses unknown names; without
    /// Unicode's tables only names that cannot be one (empty, no letter, brackets or
    /// backslashes) are caught.
    fn unicode_name(&mut self, letter: u8, at: usize) -> Step {
        let name = self.braced(letter, at)?;
        let plausible = name.iter().any(u8::is_ascii_alphabetic)
            && !name.iter().any(|b| b"\\{}[]()".contains(b));
        if !plausible {
            let kind = if letter == b'N' {
                InvalidKind::UnknownCharName
            } else {
                InvalidKind::BadProperty
            };
            return Err(invalid(kind, at));
        }
        self.skip(Unsupported::UnicodeEscape(letter as char));
        Ok(())
    }

    /// `\k<name>`, `\k{name}`, `\k'name'`.
    fn named_reference(&mut self, at: usize) -> Step {
        let close = match self.peek() {
            Some(b'<') => b'>',
            Some(b'{') => b'}',
            Some(b'\'') => b'\'',
            _ => return Err(invalid(InvalidKind::BadNamedReference, at)),
        };
        let name = self.group_name(close, at)?;
        self.backref(&format!("\\k<{name}>"));
        self.refs.push((Target::Name(name), at));
        Ok(())
    }

    /// `\gN`, `\g{N}`, `\g-N`, `\g{-N}`, `\g{name}`.
    fn g_reference(&mut self, at: usize) -> Step {
        let body = if self.peek() == Some(b'{') {
            let Some(close) = self.find(b'}') else {
                return Err(invalid(InvalidKind::MissingBrace('g'), at));
            };
            let body = String::from_utf8_lossy(&self.p[self.i + 1..close]).into_owned();
            self.i = close + 1;
            body
        } else {
            let mut end = self.i;
            if self.p.get(end) == Some(&b'-') {
                end += 1;
            }
            while end < self.p.len() && self.p[end].is_ascii_digit() {
                end += 1;
            }
            let body = String::from_utf8_lossy(&self.p[self.i..end]).into_owned();
            self.i = end;
            body
        };
        let target = if let Ok(n) = body.parse::<i64>() {
            if n == 0 {
                return Err(invalid(InvalidKind::BadGroupReference, at));
            }
            let abs = if n < 0 { self.ncap as i64 + 1 + n } else { n };
            if abs <= 0 {
                return Err(invalid(InvalidKind::MissingGroup, at));
            }
            Target::Number(usize::try_from(abs).unwrap_or(usize::MAX))
        } else if valid_group_name(&body) {
            Target::Name(body)
        } else {
            return Err(invalid(InvalidKind::BadGroupReference, at));
        };
        match &target {
            Target::Number(n) => self.backref(&format!("\\{n}")),
            Target::Name(name) => self.backref(&format!("\\k<{name}>")),
        }
        self.refs.push((target, at));
        Ok(())
    }

    /// Reads a group name opened at `self.i` (the opening delimiter) up to `close`, checks it
    /// and moves past the closing delimiter.
    fn group_name(&mut self, close: u8, at: usize) -> Step<String> {
        let Some(end) = self.p[self.i + 1..].iter().position(|&b| b == close) else {
            return Err(invalid(InvalidKind::UnterminatedGroupName, at));
        };
        let name = String::from_utf8_lossy(&self.p[self.i + 1..self.i + 1 + end]).into_owned();
        if !valid_group_name(&name) {
            return Err(invalid(InvalidKind::BadGroupName, at));
        }
        self.i += end + 2;
        Ok(name)
    }

    fn backref(&mut self, full: &str) {
        self.out.split(full, "(?s:.*?)");
        self.prev = Prev::Atom;
    }

    /// Every group a reference names exists somewhere in the pattern.
    fn check_refs(&self) -> Step {
        for (target, at) in &self.refs {
            match target {
                Target::Number(n) if *n > self.ncap => {
                    return Err(invalid(InvalidKind::MissingGroup, *at));
                }
                Target::Name(name) if !self.names.contains(name) => {
                    return Err(invalid(InvalidKind::MissingNamedGroup, *at));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads up to `max` octal digits at the cursor, starting from `acc`.
    fn octal_digits(&mut self, max: usize, mut acc: u32) -> u8 {
        for _ in 0..max {
            match self.peek() {
                Some(d @ b'0'..=b'7') => {
                    acc = acc * 8 + u32::from(d - b'0');
                    self.i += 1;
                }
                _ => break,
            }
        }
        (acc & 0xFF) as u8
    }

    /// `(` at `at`, cursor after it.
    fn open_group(&mut self, at: usize) -> Step {
        let before = self.prev;
        self.prev = Prev::Nothing;
        match self.peek() {
            Some(b'*') => {
                self.i += 1;
                return self.verb(at);
            }
            Some(b'?') => self.i += 1,
            _ => {
                self.ncap += 1;
                self.push(Group::Plain, at, self.mode);
                self.out.both("(");
                return Ok(());
            }
        }
        let Some(c) = self.peek() else {
            return Err(invalid(InvalidKind::IncompleteGroup, at));
        };
        match c {
            b'#' => match self.find(b')') {
                Some(close) => {
                    self.i = close + 1;
                    self.prev = before;
                    Ok(())
                }
                None => Err(invalid(InvalidKind::UnterminatedComment, at)),
            },
            b':' => {
                self.i += 1;
                self.push(Group::Plain, at, self.mode);
                self.out.both("(?:");
                Ok(())
            }
            b'=' | b'!' => {
                self.i += 1;
                let s = format!("(?{}", c as char);
                self.open_look(&s, at);
                Ok(())
            }
            b'<' if matches!(self.peek_at(1), Some(b'=') | Some(b'!')) => {
                let s = format!("(?<{}", self.peek_at(1).map(|b| b as char).unwrap_or('='));
                self.i += 2;
                self.open_look(&s, at);
                Ok(())
            }
            b'>' => {
                self.i += 1;
                self.push(Group::Plain, at, self.mode);
                self.out.split("(?>", "(?:");
                Ok(())
            }
            b'<' | b'\'' => self.named_group(at),
            b'P' => self.p_group(at),
            b'|' => {
                self.i += 1;
                self.skip(Unsupported::BranchReset);
                self.push(Group::Plain, at, self.mode);
                Ok(())
            }
            b'(' => self.conditional(at),
            b'{' => Err(RegexError::Unsupported(Unsupported::CodeBlock)),
            b'?' if self.peek_at(1) == Some(b'{') => {
                Err(RegexError::Unsupported(Unsupported::CodeBlock))
            }
            b'R' | b'&' | b'+' | b'0'..=b'9' => self.recursion(at),
            b'-' if self.peek_at(1).is_some_and(|b| b.is_ascii_digit()) => self.recursion(at),
            _ => self.flag_group(at),
        }
    }

    /// `(?<name>`, `(?'name'`, cursor on the opening delimiter.
    fn named_group(&mut self, at: usize) -> Step {
        let close = if self.peek() == Some(b'\'') {
            b'\''
        } else {
            b'>'
        };
        let name = self.group_name(close, at)?;
        let s = format!("(?P<{name}>");
        self.names.push(name);
        self.ncap += 1;
        self.push(Group::Plain, at, self.mode);
        self.out.both(&s);
        Ok(())
    }

    /// `(?P<name>...)`, `(?P=name)`, `(?P>name)`, cursor on the `P`.
    fn p_group(&mut self, at: usize) -> Step {
        match self.peek_at(1) {
            Some(b'<') => {
                self.i += 1;
                self.named_group(at)
            }
            Some(b'=') => {
                self.i += 1;
                let name = self.group_name(b')', at)?;
                self.prev = Prev::Atom;
                self.backref(&format!("\\k<{name}>"));
                self.refs.push((Target::Name(name), at));
                Ok(())
            }
            Some(b'>') => {
                self.i += 1;
                let name = self.group_name(b')', at)?;
                self.refs.push((Target::Name(name), at));
                self.skip(Unsupported::Recursion);
                self.prev = Prev::Atom;
                Ok(())
            }
            _ => Err(invalid(InvalidKind::UnknownGroup, at)),
        }
    }

    /// `(?R)`, `(?N)`, `(?+N)`, `(?-N)`, `(?&name)`, cursor after `(?`.
    fn recursion(&mut self, at: usize) -> Step {
        let Some(close) = self.find(b')') else {
            return Err(invalid(InvalidKind::IncompleteGroup, at));
        };
        let body = String::from_utf8_lossy(&self.p[self.i..close]).into_owned();
        self.i = close + 1;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if let Some(name) = body.strip_prefix('&') {
            if !valid_group_name(name) {
                return Err(invalid(InvalidKind::BadGroupName, at));
            }
            self.refs.push((Target::Name(name.to_string()), at));
        } else if let Some(n) = body.strip_prefix('-').filter(|n| digits(n)) {
            let n: usize = n.parse().unwrap_or(usize::MAX);
            if n > self.ncap {
                return Err(invalid(InvalidKind::MissingGroup, at));
            }
        } else if digits(&body) {
            let n: usize = body.parse().unwrap_or(usize::MAX);
            if n > 0 {
                self.refs.push((Target::Number(n), at));
            }
        } else if body != "R" && !body.strip_prefix('+').is_some_and(digits) {
            return Err(invalid(InvalidKind::UnknownGroup, at));
        }
        self.skip(Unsupported::Recursion);
        self.prev = Prev::Atom;
        Ok(())
    }

    /// `(?(condition)yes|no)`, cursor on the `(` of the condition.
    fn conditional(&mut self, at: usize) -> Step {
        self.skip(Unsupported::Conditional);
        let look = matches!(
            (self.peek_at(1), self.peek_at(2), self.peek_at(3)),
            (Some(b'*'), _, _)
                | (Some(b'?'), Some(b'=' | b'!'), _)
                | (Some(b'?'), Some(b'<'), Some(b'=' | b'!'))
        );
        if look {
            // a lookaround as the condition: read as a group of its own
            self.push(Group::Plain, at, self.mode);
            return Ok(());
        }
        let Some(close) = self.find(b')') else {
            return Err(invalid(InvalidKind::UnknownCondition, at));
        };
        let cond = String::from_utf8_lossy(&self.p[self.i + 1..close]).into_owned();
        self.i = close + 1;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let named = cond
            .strip_prefix('<')
            .and_then(|n| n.strip_suffix('>'))
            .or_else(|| cond.strip_prefix('\'').and_then(|n| n.strip_suffix('\'')));
        if let Some(name) = named {
            if !valid_group_name(name) {
                return Err(invalid(InvalidKind::BadGroupName, at));
            }
            self.refs.push((Target::Name(name.to_string()), at));
        } else if !(digits(&cond)
            || cond == "R"
            || cond == "DEFINE"
            || cond.strip_prefix('R').is_some_and(digits)
            || cond.strip_prefix("R&").is_some_and(valid_group_name))
        {
            return Err(invalid(InvalidKind::UnknownCondition, at));
        }
        self.push(Group::Plain, at, self.mode);
        Ok(())
    }

    /// `(*VERB)`, `(*VERB:arg)` or `(*name:...)`, cursor after `(*`.
    fn verb(&mut self, at: usize) -> Step {
        const VERBS: [&[u8]; 8] = [
            b"ACCEPT", b"COMMIT", b"F", b"FAIL", b"MARK", b"PRUNE", b"SKIP", b"THEN",
        ];
        const ASSERTIONS: [&[u8]; 13] = [
            b"pla",
            b"plb",
            b"nla",
            b"nlb",
            b"positive_lookahead",
            b"positive_lookbehind",
            b"negative_lookahead",
            b"negative_lookbehind",
            b"atomic",
            b"sr",
            b"script_run",
            b"asr",
            b"atomic_script_run",
        ];
        let start = self.i;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.i += 1;
        }
        let name = &self.p[start..self.i];
        match self.peek() {
            Some(b':') if ASSERTIONS.contains(&name) => {
                self.i += 1;
                self.skip(Unsupported::AlphaAssertion);
                // the lookarounds among them: \K and repeats inside are checked as for (?=
                if name.ends_with(b"la") || name.ends_with(b"ahead") {
                    self.open_look("(?=", at);
                } else if name.ends_with(b"lb") || name.ends_with(b"behind") {
                    self.open_look("(?<=", at);
                } else {
                    self.push(Group::Plain, at, self.mode);
                }
                return Ok(());
            }
            Some(b':') if name.is_empty() || VERBS.contains(&name) => {
                let Some(close) = self.find(b')') else {
                    return Err(invalid(InvalidKind::BadVerb, at));
                };
                self.i = close + 1;
            }
            Some(b')') if VERBS.contains(&name) && name != b"MARK" => self.i += 1,
            _ => return Err(invalid(InvalidKind::BadVerb, at)),
        }
        self.skip(Unsupported::Verb);
        self.prev = Prev::Assertion;
        Ok(())
    }

    fn open_look(&mut self, open: &str, at: usize) {
        let behind = open.starts_with("(?<");
        self.push(Group::Look(behind), at, self.mode);
        self.out.split(open, "");
        self.out.suppress += 1;
        self.behind += usize::from(behind);
    }

    /// `(?imsx-imsx)` or `(?imsx-imsx:...)`, Perl's `(?^...)` included; cursor after `(?`.
    fn flag_group(&mut self, at: usize) -> Step {
        let outer = self.mode;
        let start = self.i;
        let mut on = String::new();
        let mut off = String::new();
        let mut negate = false;
        loop {
            let Some(c) = self.peek() else {
                return Err(invalid(InvalidKind::UnterminatedFlags, at));
            };
            self.i += 1;
            match c {
                b'^' if self.i == start + 1 => {
                    if self.peek() == Some(b'-') {
                        return Err(invalid(InvalidKind::UnknownGroup, at));
                    }
                    off.push_str("imsx");
                    self.mode.x = false;
                    self.mode.m = false;
                }
                b'-' if !negate => negate = true,
                b'i' | b'm' | b's' | b'x' => {
                    if c == b'x' {
                        self.mode.x = !negate;
                    }
                    if c == b'm' {
                        self.mode.m = !negate;
                    }
                    if c != b'x' {
                        let target = if negate { &mut off } else { &mut on };
                        target.push(c as char);
                    }
                }
                // character-set and other modifiers that do not change byte matching
                b'a' | b'd' | b'l' | b'u' | b'n' | b'p' | b'o' | b'g' | b'c' => {}
                b')' | b':' => {
                    // `off` may list a flag that `on` then sets again ((?^i)): keep `on` last.
                    let off: String = off
                        .chars()
                        .filter(|f| !on.contains(*f) && *f != 'x')
                        .collect();
                    let mut flags = on.clone();
                    if !off.is_empty() {
                        flags.push('-');
                        flags.push_str(&off);
                    }
                    if c == b')' {
                        // applies to the rest of the enclosing group
                        if !flags.is_empty() {
                            let s = format!("(?{flags})");
                            self.out.both(&s);
                        }
                    } else {
                        self.push(Group::Plain, at, outer);
                        if flags.is_empty() {
                            self.out.both("(?:");
                        } else {
                            let s = format!("(?{flags}:");
                            self.out.both(&s);
                        }
                    }
                    return Ok(());
                }
                _ => return Err(invalid(InvalidKind::UnknownGroup, at)),
            }
        }
    }

    fn close_group(&mut self, at: usize) -> Step {
        let Some((g, _)) = self.groups.pop() else {
            return Err(invalid(InvalidKind::UnmatchedParen, at));
        };
        if let Some(m) = self.modes.pop() {
            self.mode = m;
        }
        match g {
            Group::Plain => {
                self.out.both(")");
                self.prev = Prev::Atom;
            }
            Group::Look(behind) => {
                self.out.suppress = self.out.suppress.saturating_sub(1);
                self.behind -= usize::from(behind);
                self.out.full.push(')');
                self.prev = Prev::Assertion;
            }
        }
        Ok(())
    }

    /// A bracketed class, `[` at `open`, cursor just after it. Returns the translated class.
    fn class(&mut self, open: usize) -> Step<String> {
        let mut out = String::from("[");
        if self.peek() == Some(b'^') {
            self.i += 1;
            out.push('^');
        }
        let mut first = true;
        loop {
            let Some(c) = self.peek() else {
                return Err(invalid(InvalidKind::UnclosedClass, open));
            };
            if c == b']' && !first {
                self.i += 1;
                break;
            }
            first = false;
            let atom_at = self.i;
            let atom = self.class_atom(open)?;
            // a range?
            if let ClassAtom::Byte(lo) = atom
                && self.peek() == Some(b'-')
                && self.peek_at(1).is_some_and(|b| b != b']')
            {
                self.i += 1;
                match self.class_atom(open)? {
                    ClassAtom::Byte(hi) => {
                        if hi < lo {
                            return Err(invalid(InvalidKind::BadRange, atom_at));
                        }
                        let _ = write!(out, "\\x{lo:02X}-\\x{hi:02X}");
                    }
                    ClassAtom::Raw(r) => {
                        let _ = write!(out, "\\x{lo:02X}\\x2D{r}");
                    }
                }
            } else {
                match atom {
                    ClassAtom::Byte(b) => {
                        let _ = write!(out, "\\x{b:02X}");
                    }
                    ClassAtom::Raw(r) => out.push_str(&r),
                }
            }
        }
        out.push(']');
        Ok(out)
    }

    fn class_atom(&mut self, open: usize) -> Step<ClassAtom> {
        let Some(c) = self.peek() else {
            return Err(invalid(InvalidKind::UnclosedClass, open));
        };
        let at = self.i;
        self.i += 1;
        match c {
            b'[' => self.posix_class(at),
            b'\\' => self.class_escape(open, at),
            _ => Ok(ClassAtom::Byte(c)),
        }
    }

    /// `[:name:]`, `[:^name:]` inside a class (`[` at `at`, cursor after it); a `[` that
    /// starts none is literal, as in Perl.
    fn posix_class(&mut self, at: usize) -> Step<ClassAtom> {
        let Some(kind @ (b':' | b'=' | b'.')) = self.peek() else {
            return Ok(ClassAtom::Byte(b'['));
        };
        // the terminator, before the class's own ']'
        let rest = &self.p[self.i..];
        let Some(end) = rest
            .windows(2)
            .skip(1)
            .take_while(|w| w[0] != b']')
            .position(|w| w == [kind, b']'])
            .map(|e| e + 1)
        else {
            return Ok(ClassAtom::Byte(b'['));
        };
        if kind != b':' {
            return Err(invalid(InvalidKind::ReservedPosixSyntax, at));
        }
        let inner = &rest[1..end];
        let (neg, name) = match inner.strip_prefix(b"^") {
            Some(n) => (true, n),
            None => (false, inner),
        };
        if name.is_empty() || !name.iter().all(u8::is_ascii_alphabetic) {
            // Perl: "Assuming NOT a POSIX class"
            return Ok(ClassAtom::Byte(b'['));
        }
        let name = std::str::from_utf8(name).unwrap_or("");
        if !POSIX.contains(&name) {
            return Err(invalid(InvalidKind::UnknownPosixClass, at));
        }
        self.i += end + 2;
        Ok(ClassAtom::Raw(format!(
            "[[:{}{}:]]",
            if neg { "^" } else { "" },
            name
        )))
    }

    /// An escape inside a class (`\` at `at`, cursor after it).
    fn class_escape(&mut self, open: usize, at: usize) -> Step<ClassAtom> {
        let Some(e) = self.peek() else {
            return Err(invalid(InvalidKind::UnclosedClass, open));
        };
        self.i += 1;
        Ok(match e {
            b'0'..=b'7' => ClassAtom::Byte(self.octal_digits(2, u32::from(e - b'0'))),
            b'x' => ClassAtom::Byte(self.hex(at)?),
            b'o' => ClassAtom::Byte(self.octal_braces(at)?),
            b'c' => ClassAtom::Byte(self.control(at)?),
            b'e' => ClassAtom::Byte(0x1B),
            b'a' => ClassAtom::Byte(0x07),
            b'b' => ClassAtom::Byte(0x08),
            b't' => ClassAtom::Byte(b'\t'),
            b'n' => ClassAtom::Byte(b'\n'),
            b'r' => ClassAtom::Byte(b'\r'),
            b'f' => ClassAtom::Byte(0x0C),
            b'd' | b'D' | b'w' | b'W' | b's' | b'S' => ClassAtom::Raw(format!("\\{}", e as char)),
            b'h' => ClassAtom::Raw("\\x09\\x20\\xA0".into()),
            b'H' => ClassAtom::Raw("[^\\x09\\x20\\xA0]".into()),
            b'v' => ClassAtom::Raw("\\x0A-\\x0D\\x85".into()),
            b'V' => ClassAtom::Raw("[^\\x0A-\\x0D\\x85]".into()),
            b'p' | b'P' => {
                self.property(e, at)?;
                ClassAtom::Raw(String::new())
            }
            b'N' => {
                if self.peek() != Some(b'{') {
                    return Err(invalid(InvalidKind::NotNewlineInClass, at));
                }
                self.unicode_name(b'N', at)?;
                ClassAtom::Raw(String::new())
            }
            _ => ClassAtom::Byte(e),
        })
    }
}

enum ClassAtom {
    Byte(u8),
    Raw(String),
}

fn valid_group_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `s` without leading and trailing spaces and tabs.
fn trim_blanks(s: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !blank(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !blank(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// Perl's largest repeat count.
const MAX_COUNT: u64 = 65534;

/// A counted quantifier: `{n}`, `{n,}`, `{n,m}`, `{,m}`.
struct Braces {
    min: u64,
    /// `None`: unbounded.
    max: Option<u64>,
    exact: bool,
    /// Bytes it spans, braces included.
    len: usize,
}

impl Braces {
    fn render(&self) -> String {
        match (self.exact, self.max) {
            (true, _) => format!("{{{}}}", self.min),
            (false, None) => format!("{{{},}}", self.min),
            (false, Some(max)) => format!("{{{},{max}}}", self.min),
        }
    }
}

/// The counted quantifier at the start of `s` (which begins with `{`), or `None` when Perl
/// would read the brace as a literal.
fn parse_braces(s: &[u8]) -> Option<Braces> {
    let end = s.iter().position(|&b| b == b'}')?;
    let inner: Vec<u8> = s[1..end].iter().copied().filter(|&b| b != b' ').collect();
    let len = end + 1;
    let Some(comma) = inner.iter().position(|&b| b == b',') else {
        let n = parse_num(&inner)?;
        return Some(Braces {
            min: n,
            max: Some(n),
            exact: true,
            len,
        });
    };
    let (lo, hi) = (&inner[..comma], &inner[comma + 1..]);
    if lo.is_empty() && hi.is_empty() {
        return None;
    }
    let min = if lo.is_empty() { 0 } else { parse_num(lo)? };
    let max = if hi.is_empty() {
        None
    } else {
        Some(parse_num(hi)?)
    };
    Some(Braces {
        min,
        max,
        exact: false,
        len,
    })
}

/// Decimal digits (saturating: a huge count is still a count, and too big).
fn parse_num(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(p: &str, flags: &str) -> Translated {
        match translate(p.as_bytes(), flags) {
            Ok(t) => t,
            Err(e) => panic!("{p}: {e}"),
        }
    }

    #[test]
    fn delimiters() {
        let d = split_delimited(b"/foo\\/bar/i").unwrap();
        assert_eq!(d.pattern, b"foo\\/bar");
        assert_eq!(d.flags, "i");
        let d = split_delimited(b"m{a{1,2}}sx").unwrap();
        assert_eq!(d.pattern, b"a{1,2}");
        assert_eq!(d.flags, "sx");
        let d = split_delimited(b"m!x/y!").unwrap();
        assert_eq!(d.pattern, b"x/y");
        let d = split_delimited(b"m|a|b|").unwrap();
        assert_eq!(d.pattern, b"a|b");
        assert!(split_delimited(b"foo").is_err());
        assert!(split_delimited(b"/foo").is_err());
        assert!(split_delimited(b"m\\foo\\").is_err());
        assert!(split_delimited(b"/(?{ 1 })/").is_err());
        // 'e' is not a modifier SpamAssassin accepts
        assert!(split_delimited(b"/foo/e").is_err());
    }

    #[test]
    fn octal_and_hex_escapes_become_bytes() {
        assert_eq!(tr(r"\223\0\x41\x{e4}\e", "").full, r"\x93\x00A\xE4\x1B");
        // \1 is a backreference only when there is a group, \12 octal without 12 groups
        assert_eq!(tr(r"a\12", "").full, r"a\x0A");
        let t = tr(r"(a)\1", "");
        assert!(t.fancy);
        assert_eq!(t.full, r"(a)\1");
        assert_eq!(t.gate.as_deref(), Some("(a)(?s:.*?)"));
    }

    #[test]
    fn classes() {
        assert_eq!(tr("[]a]", "").full, r"[\x5D\x61]");
        assert_eq!(tr("[^]a]", "").full, r"[^\x5D\x61]");
        assert_eq!(tr("[a-z[]", "").full, r"[\x61-\x7A\x5B]");
        assert_eq!(tr("[a-]", "").full, r"[\x61\x2D]");
        assert_eq!(tr(r"[\w.-]", "").full, r"[\w\x2E\x2D]");
        assert_eq!(tr("[&&~~]", "").full, r"[\x26\x26\x7E\x7E]");
        assert_eq!(tr(r"[\b\200-\377]", "").full, r"[\x08\x80-\xFF]");
        assert_eq!(tr("[[:alpha:]x]", "").full, r"[[[:alpha:]]\x78]");
        assert!(translate(b"[z-a]", "").is_err());
        assert!(translate(b"[abc", "").is_err());
    }

    #[test]
    fn braces_that_are_not_quantifiers_are_literal() {
        assert_eq!(tr("a{2,3}", "").full, "a{2,3}");
        assert_eq!(tr("a{,3}", "").full, "a{0,3}");
        assert_eq!(tr("a{x}", "").full, r"a\x7Bx\x7D");
        assert_eq!(tr("{2}", "").full, r"\x7B2\x7D");
        assert_eq!(tr("a{", "").full, r"a\x7B");
    }

    #[test]
    fn anchors_follow_perl() {
        assert_eq!(tr("a$", "").full, r"a(?:\n?\z)");
        assert_eq!(tr("a$", "m").full, "(?m)a(?m:$)");
        assert_eq!(tr(r"a\Z", "").full, r"a(?:\n?\z)");
        assert_eq!(tr("^a", "i").full, "(?i)^a");
    }

    #[test]
    fn x_mode_strips_space_and_comments_but_not_in_classes() {
        assert_eq!(tr("a b # c\n d[ ]", "x").full, r"abd[\x20]");
    }

    #[test]
    fn fancy_constructs_and_gates() {
        let t = tr("foo(?!bar)baz", "");
        assert!(t.fancy);
        assert_eq!(t.gate.as_deref(), Some("foobaz"));
        let t = tr("(?<=a(b))c", "");
        assert_eq!(t.gate.as_deref(), Some("c"));
        let t = tr("(?>a+)b", "");
        assert_eq!(t.gate.as_deref(), Some("(?:a+)b"));
        let t = tr("a++b", "");
        assert_eq!(t.full, "a++b");
        assert_eq!(t.gate.as_deref(), Some("a+b"));
        let t = tr(r"(?<n>x)\k<n>", "");
        assert_eq!(t.gate.as_deref(), Some("(?P<n>x)(?s:.*?)"));
        assert!(!tr("(?:a)(?i:b)(?#c)", "").fancy);
        assert_eq!(tr("(?:a)(?i:b)(?#c)", "").full, "(?:a)(?i:b)");
    }

    #[test]
    fn unsupported_constructs() {
        use Unsupported as U;
        for (p, want) in [
            (r"\p{L}", U::UnicodeEscape('p')),
            (r"(?|a)", U::BranchReset),
            (r"(?R)", U::Recursion),
            (r"(?1)(a)", U::Recursion),
            (r"(?&n)(?<n>a)", U::Recursion),
            (r"\G", U::GAnchor),
            (r"\U", U::CaseChange('U')),
            (r"(?(1)a|b)", U::Conditional),
            (r"(?(?=a)b|c)", U::Conditional),
            (r"(*PRUNE)a", U::Verb),
            (r"(*pla:a)", U::AlphaAssertion),
            (r"\x{100}", U::WideCharacter),
            (r"\x{4g}", U::NumericEscapeStop),
            (r"\b{wb}", U::UnicodeBoundary),
            (r"^*", U::QuantifiedAssertion),
            (r"(?=a)?", U::QuantifiedAssertion),
            (r"a{3,2}", U::ImpossibleQuantifier),
            (r"(?{ 1 })", U::CodeBlock),
        ] {
            assert_eq!(
                translate(p.as_bytes(), ""),
                Err(RegexError::Unsupported(want)),
                "{p}"
            );
        }
    }

    /// What Perl 5.36 refuses to compile is an error with the offset of the mistake, even
    /// next to something unsupported.
    #[test]
    fn invalid_perl_is_an_error() {
        use InvalidKind as K;
        for (p, kind, at) in [
            ("unclosed(", K::UnclosedGroup, 8),
            ("(a(b)", K::UnclosedGroup, 0),
            (r"\G(", K::UnclosedGroup, 2),
            ("a)", K::UnmatchedParen, 1),
            ("*a", K::NothingToRepeat, 0),
            ("a|+b", K::NothingToRepeat, 2),
            ("(?i)*", K::NothingToRepeat, 4),
            ("a**", K::NestedQuantifier, 2),
            ("a{2}{3}", K::NestedQuantifier, 4),
            ("a{70000}", K::QuantifierTooBig, 1),
            (r"\K+", K::RepeatedKeep, 2),
            ("abc\\", K::TrailingBackslash, 3),
            (r"(a)\2", K::MissingGroup, 3),
            (r"\81", K::MissingGroup, 0),
            (r"(a)\g{-2}", K::MissingGroup, 3),
            (r"\k<m>", K::MissingNamedGroup, 0),
            (r"\g0", K::BadGroupReference, 0),
            (r"\kfoo", K::BadNamedReference, 0),
            (r"\x{12", K::MissingBrace('x'), 0),
            (r"\o12", K::OctalWithoutBraces, 0),
            (r"\o{}", K::EmptyOctal, 0),
            (r"\c", K::BadControl, 0),
            (r"\b{xx}", K::UnknownBound, 0),
            (r"\pQ", K::BadProperty, 0),
            (r"\w{x", K::UnescapedBrace, 2),
            (r"\C", K::RemovedEscape, 0),
            (r"[\N]", K::NotNewlineInClass, 1),
            (r"(?=a\K)", K::KeepInLookaround, 4),
            (r"(?<=a+)b", K::LookbehindTooLong, 5),
            ("(?", K::IncompleteGroup, 0),
            ("(*foo)", K::BadVerb, 0),
            ("(?#abc", K::UnterminatedComment, 0),
            ("(?z)", K::UnknownGroup, 0),
            ("(?<1a>x)", K::BadGroupName, 0),
            ("(?<abc", K::UnterminatedGroupName, 0),
            ("(?i", K::UnterminatedFlags, 0),
            ("(?(x)a)", K::UnknownCondition, 0),
            ("[abc", K::UnclosedClass, 0),
            ("x[z-a]", K::BadRange, 2),
            ("[[:foo:]]", K::UnknownPosixClass, 1),
            ("[[=a=]]", K::ReservedPosixSyntax, 1),
        ] {
            assert_eq!(
                translate(p.as_bytes(), ""),
                Err(RegexError::Invalid(Invalid { kind, at })),
                "{p}"
            );
        }
        let shown = translate(b"unclosed(", "").err().map(|e| e.to_string());
        assert_eq!(
            shown.as_deref(),
            Some(
                "unclosed group at offset 8: close the '(' with ')', or write \\( for a literal '('"
            )
        );
    }

    /// Look-alikes of mistakes that Perl reads as something valid.
    #[test]
    fn what_perl_accepts_stays_accepted() {
        assert_eq!(tr("[[:alpha]", "").full, r"[\x5B\x3A\x61\x6C\x70\x68\x61]");
        assert_eq!(tr("a(?#x)*", "").full, "a*");
        assert_eq!(tr("a* ?", "x").full, "a*?");
        assert_eq!(tr("a{,}", "").full, r"a\x7B\x2C\x7D");
        assert_eq!(tr("{70000}", "").full, r"\x7B70000\x7D");
        assert_eq!(tr(r"\N{3}", "").full, r"[^\x0A]{3}");
        assert!(tr(r"(a)\2(b)", "").fancy); // a forward reference
        assert!(tr(r"\k{n}(?<n>a)", "").fancy);
        assert!(translate(br"(?(<n>)a)(?<n>b)", "").is_err_and(|e| !e.is_invalid()));
    }

    /// Deterministic fuzzing: no input makes the translator or the compiler panic.
    #[test]
    fn random_patterns_never_panic() {
        let alphabet: &[u8] =
            b"()[]{}\\^$.|*+?-:=!<>#,0123456789aAbBdDsSwWxXkKgGpPQEzZnNhHvVR' \n\xe4/";
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..6_000 {
            let len = (next() % 24) as usize;
            let p: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let flags = ["", "i", "x", "sm", "ix"][(next() % 5) as usize];
            let _ = translate(&p, flags);
            for scope in [
                super::super::compile::Scope::Whole,
                super::super::compile::Scope::Lines,
            ] {
                if let Ok(m) = super::super::compile::Matcher::new(&p, flags, scope) {
                    let mut st = super::super::compile::MatchStats::default();
                    let _ = m.count(b"ab\nAB 12 x\xe4y <a> $ ", 5, &mut st);
                }
            }
        }
        // "[:" closed by the ":" that opened it is not a POSIX class name
        let _ = translate(b"[[:]]", "");
    }

    #[test]
    fn quote_and_latin1() {
        assert_eq!(tr(r"\Qa.b\E.", "").full, r"a\x2Eb.");
        assert_eq!(translate(b"\xe4", "").unwrap().full, r"\xE4");
        assert_eq!(tr(r"\<\>\/", "").full, r"\x3C\x3E\x2F");
    }
}
