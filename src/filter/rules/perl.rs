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

use std::fmt::Write as _;

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

/// Why a pattern cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy)]
struct Mode {
    x: bool,
    m: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    Plain,
    Look,
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
pub fn translate(pattern: &[u8], flags: &str) -> Result<Translated, Unsupported> {
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
        can_quantify: false,
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
    if !t.groups.is_empty() {
        return Err(Unsupported("unbalanced parentheses".into()));
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
    groups: Vec<Group>,
    modes: Vec<Mode>,
    mode: Mode,
    ncap: usize,
    can_quantify: bool,
}

fn unsupported<T>(what: &str) -> Result<T, Unsupported> {
    Err(Unsupported(what.to_string()))
}

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

    fn run(&mut self) -> Result<(), Unsupported> {
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'\\' => self.escape()?,
                b'[' => {
                    let class = self.class()?;
                    self.out.both(&class);
                    self.can_quantify = true;
                }
                b'(' => self.open_group()?,
                b')' => self.close_group()?,
                b'|' => {
                    self.out.both("|");
                    self.can_quantify = false;
                }
                b'^' => {
                    self.out.both("^");
                    self.can_quantify = false;
                }
                b'$' => {
                    if self.mode.m {
                        self.out.both("(?m:$)");
                    } else {
                        self.out.both("(?:\\n?\\z)");
                    }
                    self.can_quantify = false;
                }
                b'.' => {
                    self.out.both(".");
                    self.can_quantify = true;
                }
                b'*' | b'+' | b'?' => {
                    if !self.can_quantify {
                        return unsupported("quantifier without anything to repeat");
                    }
                    let s = [c];
                    self.out.both(std::str::from_utf8(&s).unwrap_or("*"));
                    self.quantifier_suffix();
                }
                b'{' => {
                    if self.can_quantify
                        && let Some((q, len)) = parse_braces(&self.p[self.i - 1..])
                    {
                        self.i += len - 1;
                        self.out.both(&q);
                        self.quantifier_suffix();
                    } else {
                        self.out.byte(b'{');
                        self.can_quantify = true;
                    }
                }
                b'#' if self.mode.x => {
                    while let Some(c) = self.peek() {
                        self.i += 1;
                        if c == b'\n' {
                            break;
                        }
                    }
                }
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0C' | b'\x0B' if self.mode.x => {}
                _ => {
                    self.out.byte(c);
                    self.can_quantify = true;
                }
            }
        }
        Ok(())
    }

    /// After a quantifier: lazy `?` passes, possessive `+` needs the backtracking engine.
    fn quantifier_suffix(&mut self) {
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
        self.can_quantify = false;
    }

    fn escape(&mut self) -> Result<(), Unsupported> {
        let Some(c) = self.peek() else {
            return unsupported("trailing backslash");
        };
        self.i += 1;
        self.can_quantify = true;
        match c {
            b'0' => {
                let v = self.octal_digits(2, 0);
                self.out.byte(v);
            }
            b'1'..=b'9' => {
                let start = self.i - 1;
                let mut end = self.i;
                while end < self.p.len() && self.p[end].is_ascii_digit() {
                    end += 1;
                }
                let digits = &self.p[start..end];
                let n: usize = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(usize::MAX);
                if n < 10 || n <= self.ncap {
                    self.i = end;
                    self.backref(&format!("\\{n}"));
                } else if digits[0] <= b'7' {
                    // Perl: \NNN with more digits than groups is octal (up to 3 digits).
                    self.i = start;
                    let v = self.octal_digits(3, 0);
                    self.out.byte(v);
                } else {
                    return unsupported("backreference to a missing group");
                }
            }
            b'x' => {
                let v = if self.peek() == Some(b'{') {
                    let close = self.p[self.i..]
                        .iter()
                        .position(|&b| b == b'}')
                        .ok_or_else(|| Unsupported("unterminated \\x{".into()))?;
                    let hex = &self.p[self.i + 1..self.i + close];
                    self.i += close + 1;
                    let hex: Vec<u8> = hex.iter().copied().filter(|b| *b != b' ').collect();
                    let v = if hex.is_empty() {
                        0
                    } else {
                        std::str::from_utf8(&hex)
                            .ok()
                            .and_then(|s| u32::from_str_radix(s, 16).ok())
                            .ok_or_else(|| Unsupported("bad \\x{...} escape".into()))?
                    };
                    if v > 0xFF {
                        return unsupported("wide character escape (bytes only)");
                    }
                    v as u8
                } else {
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
                    v as u8
                };
                self.out.byte(v);
            }
            b'o' if self.peek() == Some(b'{') => {
                let close = self.p[self.i..]
                    .iter()
                    .position(|&b| b == b'}')
                    .ok_or_else(|| Unsupported("unterminated \\o{".into()))?;
                let oct = &self.p[self.i + 1..self.i + close];
                self.i += close + 1;
                let v = std::str::from_utf8(oct)
                    .ok()
                    .and_then(|s| u32::from_str_radix(s.trim(), 8).ok())
                    .ok_or_else(|| Unsupported("bad \\o{...} escape".into()))?;
                if v > 0xFF {
                    return unsupported("wide character escape (bytes only)");
                }
                self.out.byte(v as u8);
            }
            b'c' => {
                let Some(x) = self.peek() else {
                    return unsupported("trailing \\c");
                };
                self.i += 1;
                self.out.byte(x.to_ascii_uppercase() ^ 0x40);
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
            b'b' | b'B' => {
                if self.peek() == Some(b'{') {
                    return unsupported("\\b{...} boundaries");
                }
                let s = format!("\\{}", c as char);
                self.out.both(&s);
                self.can_quantify = false;
            }
            b'A' => {
                self.out.both("\\A");
                self.can_quantify = false;
            }
            b'z' => {
                self.out.both("\\z");
                self.can_quantify = false;
            }
            b'Z' => {
                self.out.both("(?:\\n?\\z)");
                self.can_quantify = false;
            }
            b'h' => self.out.both("[\\x09\\x20\\xA0]"),
            b'H' => self.out.both("[^\\x09\\x20\\xA0]"),
            b'v' => self.out.both("[\\x0A-\\x0D\\x85]"),
            b'V' => self.out.both("[^\\x0A-\\x0D\\x85]"),
            b'R' => self.out.both("(?:\\x0D\\x0A|[\\x0A-\\x0D\\x85])"),
            b'N' if self.peek() != Some(b'{') => self.out.both("[^\\x0A]"),
            b'K' => {
                self.out.split("\\K", "");
                self.can_quantify = false;
            }
            b'Q' => {
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
            b'E' => self.can_quantify = false,
            b'k' => {
                let close = match self.peek() {
                    Some(b'<') => b'>',
                    Some(b'{') => b'}',
                    Some(b'\'') => b'\'',
                    _ => return unsupported("bad \\k escape"),
                };
                let name = self.group_name(close, "unterminated \\k<name>")?;
                self.backref(&format!("\\k<{name}>"));
            }
            b'g' => {
                // \gN, \g{N}, \g{-N}, \g{name}
                let (body, len) = if self.peek() == Some(b'{') {
                    let end = self.p[self.i + 1..]
                        .iter()
                        .position(|&b| b == b'}')
                        .ok_or_else(|| Unsupported("unterminated \\g{".into()))?;
                    (
                        String::from_utf8_lossy(&self.p[self.i + 1..self.i + 1 + end]).into_owned(),
                        end + 2,
                    )
                } else {
                    let mut end = self.i;
                    if self.p.get(end) == Some(&b'-') {
                        end += 1;
                    }
                    while end < self.p.len() && self.p[end].is_ascii_digit() {
                        end += 1;
                    }
                    (
                        String::from_utf8_lossy(&self.p[self.i..end]).into_owned(),
                        end - self.i,
                    )
                };
                self.i += len;
                let reference = if let Ok(n) = body.parse::<i64>() {
                    let abs = if n < 0 { self.ncap as i64 + 1 + n } else { n };
                    if abs <= 0 {
                        return unsupported("bad relative backreference");
                    }
                    format!("\\{abs}")
                } else if valid_group_name(&body) {
                    format!("\\k<{body}>")
                } else {
                    return unsupported("bad \\g escape");
                };
                self.backref(&reference);
            }
            b'p' | b'P' | b'X' | b'C' | b'N' => {
                return unsupported(&format!("\\{} (Unicode) escape", c as char));
            }
            b'l' | b'u' | b'L' | b'U' => {
                return unsupported(&format!("\\{} case-changing escape", c as char));
            }
            b'G' => return unsupported("\\G anchor"),
            _ => self.out.byte(c),
        }
        Ok(())
    }

    /// Reads a group name opened at `self.i` (the opening delimiter) up to `close`, checks it
    /// and moves past the closing delimiter.
    fn group_name(&mut self, close: u8, unterminated: &str) -> Result<String, Unsupported> {
        let end = self.p[self.i + 1..]
            .iter()
            .position(|&b| b == close)
            .ok_or_else(|| Unsupported(unterminated.into()))?;
        let name = String::from_utf8_lossy(&self.p[self.i + 1..self.i + 1 + end]).into_owned();
        if !valid_group_name(&name) {
            return unsupported("bad group name");
        }
        self.i += end + 2;
        Ok(name)
    }

    fn backref(&mut self, full: &str) {
        self.out.split(full, "(?s:.*?)");
        self.can_quantify = true;
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

    fn open_group(&mut self) -> Result<(), Unsupported> {
        self.can_quantify = false;
        self.modes.push(self.mode);
        if self.peek() != Some(b'?') {
            if self.peek() == Some(b'*') {
                return unsupported("backtracking control verb");
            }
            self.ncap += 1;
            self.groups.push(Group::Plain);
            self.out.both("(");
            return Ok(());
        }
        self.i += 1;
        let Some(c) = self.peek() else {
            return unsupported("unterminated group");
        };
        match c {
            b'#' => {
                self.modes.pop();
                while let Some(c) = self.peek() {
                    self.i += 1;
                    if c == b')' {
                        self.can_quantify = true;
                        return Ok(());
                    }
                }
                unsupported("unterminated comment group")
            }
            b':' => {
                self.i += 1;
                self.groups.push(Group::Plain);
                self.out.both("(?:");
                Ok(())
            }
            b'=' | b'!' => {
                self.i += 1;
                let s = format!("(?{}", c as char);
                self.open_look(&s);
                Ok(())
            }
            b'<' if matches!(self.peek_at(1), Some(b'=') | Some(b'!')) => {
                let s = format!("(?<{}", self.peek_at(1).map(|b| b as char).unwrap_or('='));
                self.i += 2;
                self.open_look(&s);
                Ok(())
            }
            b'>' => {
                self.i += 1;
                self.groups.push(Group::Plain);
                self.out.split("(?>", "(?:");
                Ok(())
            }
            b'<' | b'\'' | b'P' => {
                if c == b'P' {
                    match self.peek_at(1) {
                        Some(b'<') => self.i += 1,
                        Some(b'=') => {
                            // (?P=name) named backreference
                            let end = self.p[self.i..]
                                .iter()
                                .position(|&b| b == b')')
                                .ok_or_else(|| Unsupported("unterminated (?P=".into()))?;
                            let name = String::from_utf8_lossy(&self.p[self.i + 2..self.i + end])
                                .into_owned();
                            self.i += end + 1;
                            self.modes.pop();
                            if !valid_group_name(&name) {
                                return unsupported("bad group name");
                            }
                            self.backref(&format!("\\k<{name}>"));
                            return Ok(());
                        }
                        _ => return unsupported("(?P> recursion"),
                    }
                }
                let close = if self.peek() == Some(b'\'') {
                    b'\''
                } else {
                    b'>'
                };
                let name = self.group_name(close, "unterminated group name")?;
                let s = format!("(?P<{name}>");
                self.ncap += 1;
                self.groups.push(Group::Plain);
                self.out.both(&s);
                Ok(())
            }
            b'|' => unsupported("branch reset group (?|...)"),
            b'(' => unsupported("conditional group"),
            b'{' | b'?' => unsupported("code block"),
            b'R' | b'&' | b'+' | b'0'..=b'9' => unsupported("recursion"),
            _ => self.flag_group(),
        }
    }

    fn open_look(&mut self, open: &str) {
        self.groups.push(Group::Look);
        self.out.split(open, "");
        self.out.suppress += 1;
    }

    /// `(?imsx-imsx)` or `(?imsx-imsx:...)`, Perl's `(?^...)` included.
    fn flag_group(&mut self) -> Result<(), Unsupported> {
        let mut on = String::new();
        let mut off = String::new();
        let mut negate = false;
        loop {
            let Some(c) = self.peek() else {
                return unsupported("unterminated flag group");
            };
            self.i += 1;
            match c {
                b'^' => {
                    off.push_str("imsx");
                    self.mode.x = false;
                    self.mode.m = false;
                }
                b'-' => negate = true,
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
                        let mode = self.mode;
                        self.modes.pop();
                        self.mode = mode;
                        if !flags.is_empty() {
                            let s = format!("(?{flags})");
                            self.out.both(&s);
                        }
                    } else {
                        self.groups.push(Group::Plain);
                        if flags.is_empty() {
                            self.out.both("(?:");
                        } else {
                            let s = format!("(?{flags}:");
                            self.out.both(&s);
                        }
                    }
                    return Ok(());
                }
                _ => return unsupported("unknown group modifier"),
            }
        }
    }

    fn close_group(&mut self) -> Result<(), Unsupported> {
        let Some(g) = self.groups.pop() else {
            return unsupported("unbalanced ')'");
        };
        if let Some(m) = self.modes.pop() {
            self.mode = m;
        }
        match g {
            Group::Plain => {
                self.out.both(")");
                self.can_quantify = true;
            }
            Group::Look => {
                self.out.suppress = self.out.suppress.saturating_sub(1);
                self.out.full.push(')');
                // A quantifier on a lookaround would apply to something else in the gate.
                if matches!(self.peek(), Some(b'*' | b'+' | b'?' | b'{')) {
                    self.out.gate_ok = false;
                }
                self.can_quantify = true;
            }
        }
        Ok(())
    }

    /// A bracketed class, cursor just after `[`. Returns the translated class.
    fn class(&mut self) -> Result<String, Unsupported> {
        let mut out = String::from("[");
        if self.peek() == Some(b'^') {
            self.i += 1;
            out.push('^');
        }
        let mut first = true;
        let mut items = 0usize;
        loop {
            let Some(c) = self.peek() else {
                return unsupported("unterminated character class");
            };
            if c == b']' && !first {
                self.i += 1;
                break;
            }
            first = false;
            let atom = self.class_atom()?;
            // a range?
            if let ClassAtom::Byte(lo) = atom
                && self.peek() == Some(b'-')
                && self.peek_at(1).is_some_and(|b| b != b']')
            {
                self.i += 1;
                match self.class_atom()? {
                    ClassAtom::Byte(hi) => {
                        if hi < lo {
                            return unsupported("invalid range in character class");
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
            items += 1;
        }
        if items == 0 {
            return unsupported("empty character class");
        }
        out.push(']');
        Ok(out)
    }

    fn class_atom(&mut self) -> Result<ClassAtom, Unsupported> {
        let Some(c) = self.peek() else {
            return unsupported("unterminated character class");
        };
        self.i += 1;
        match c {
            b'[' if matches!(self.peek(), Some(b':')) => {
                // POSIX class [:name:] or [:^name:]
                let rest = &self.p[self.i..];
                let end = rest
                    .windows(2)
                    .skip(1)
                    .position(|w| w == b":]")
                    .map(|e| e + 1)
                    .ok_or_else(|| Unsupported("unterminated POSIX class".into()))?;
                let inner = &rest[1..end];
                let (neg, name) = match inner.strip_prefix(b"^") {
                    Some(n) => (true, n),
                    None => (false, inner),
                };
                let name = std::str::from_utf8(name).unwrap_or("");
                const POSIX: [&str; 14] = [
                    "alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower",
                    "print", "punct", "space", "upper", "word", "xdigit",
                ];
                if !POSIX.contains(&name) {
                    return unsupported("unknown POSIX class");
                }
                self.i += end + 2;
                Ok(ClassAtom::Raw(format!(
                    "[[:{}{}:]]",
                    if neg { "^" } else { "" },
                    name
                )))
            }
            b'[' if matches!(self.peek(), Some(b'=') | Some(b'.')) => {
                unsupported("POSIX collating element")
            }
            b'\\' => {
                let Some(e) = self.peek() else {
                    return unsupported("trailing backslash");
                };
                self.i += 1;
                Ok(match e {
                    b'0'..=b'7' => {
                        let v = self.octal_digits(2, u32::from(e - b'0'));
                        ClassAtom::Byte(v)
                    }
                    b'x' => {
                        // reuse the outside-class logic by reading the digits here
                        if self.peek() == Some(b'{') {
                            let close = self.p[self.i..]
                                .iter()
                                .position(|&b| b == b'}')
                                .ok_or_else(|| Unsupported("unterminated \\x{".into()))?;
                            let hex = String::from_utf8_lossy(&self.p[self.i + 1..self.i + close])
                                .trim()
                                .to_string();
                            self.i += close + 1;
                            let v = if hex.is_empty() {
                                0
                            } else {
                                u32::from_str_radix(&hex, 16)
                                    .map_err(|_| Unsupported("bad \\x{...} escape".into()))?
                            };
                            if v > 0xFF {
                                return unsupported("wide character escape (bytes only)");
                            }
                            ClassAtom::Byte(v as u8)
                        } else {
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
                            ClassAtom::Byte(v as u8)
                        }
                    }
                    b'c' => {
                        let Some(x) = self.peek() else {
                            return unsupported("trailing \\c");
                        };
                        self.i += 1;
                        ClassAtom::Byte(x.to_ascii_uppercase() ^ 0x40)
                    }
                    b'e' => ClassAtom::Byte(0x1B),
                    b'a' => ClassAtom::Byte(0x07),
                    b'b' => ClassAtom::Byte(0x08),
                    b't' => ClassAtom::Byte(b'\t'),
                    b'n' => ClassAtom::Byte(b'\n'),
                    b'r' => ClassAtom::Byte(b'\r'),
                    b'f' => ClassAtom::Byte(0x0C),
                    b'd' | b'D' | b'w' | b'W' | b's' | b'S' => {
                        ClassAtom::Raw(format!("\\{}", e as char))
                    }
                    b'h' => ClassAtom::Raw("\\x09\\x20\\xA0".into()),
                    b'H' => ClassAtom::Raw("[^\\x09\\x20\\xA0]".into()),
                    b'v' => ClassAtom::Raw("\\x0A-\\x0D\\x85".into()),
                    b'V' => ClassAtom::Raw("[^\\x0A-\\x0D\\x85]".into()),
                    b'p' | b'P' | b'N' | b'X' => {
                        return unsupported(&format!("\\{} (Unicode) escape", e as char));
                    }
                    _ => ClassAtom::Byte(e),
                })
            }
            _ => Ok(ClassAtom::Byte(c)),
        }
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

/// `{n}`, `{n,}`, `{n,m}`, `{,m}` at the start of `s` (which begins with `{`). Returns the
/// normalized quantifier and the number of bytes it spans, or `None` when Perl would read the
/// brace as a literal.
fn parse_braces(s: &[u8]) -> Option<(String, usize)> {
    let end = s.iter().position(|&b| b == b'}')?;
    let inner = std::str::from_utf8(&s[1..end]).ok()?;
    let inner: String = inner.chars().filter(|c| *c != ' ').collect();
    let (lo, hi) = match inner.split_once(',') {
        None => {
            let n: u32 = parse_num(&inner)?;
            return Some((format!("{{{n}}}"), end + 1));
        }
        Some((lo, hi)) => (lo, hi),
    };
    if lo.is_empty() && hi.is_empty() {
        return None;
    }
    let lo: u32 = if lo.is_empty() { 0 } else { parse_num(lo)? };
    if hi.is_empty() {
        return Some((format!("{{{lo},}}"), end + 1));
    }
    let hi: u32 = parse_num(hi)?;
    if hi < lo {
        return None;
    }
    Some((format!("{{{lo},{hi}}}"), end + 1))
}

fn parse_num(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
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
        for p in [
            r"\p{L}",
            r"(?|a)",
            r"(?R)",
            r"\G",
            r"a)",
            r"(a",
            r"*a",
            r"\U",
            r"(?(1)a|b)",
        ] {
            assert!(translate(p.as_bytes(), "").is_err(), "{p}");
        }
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
