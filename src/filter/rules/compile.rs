//! One regex rule, compiled: `regex::bytes` when the pattern allows it, else `fancy-regex`
//! behind a `regex::bytes` gate; both behind a literal prefilter.
//!
//! Body and rawbody rules match line by line in SpamAssassin. Instead of one regex call per
//! line, the `regex` crate pattern is *confined to a line*: its syntax tree is rewritten so no
//! match can contain `\n` (classes lose `\n`, literals with `\n` cannot match, `^`/`$`/`\A`/`\z`
//! become line anchors). Run over the whole text it then finds exactly the matches a per-line
//! run finds. The backtracking engine runs on single lines, those the gate pointed at.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder};
use memchr::memmem;
use regex_syntax::hir::{Class, ClassBytes, ClassBytesRange, Hir, HirKind, Look};

use super::perl::{self, Translated};
use super::regex_error::{EngineLimit, RegexError, Unsupported};

/// Size limit for one compiled regex (SpamAssassin rules have large bounded repeats).
const SIZE_LIMIT: usize = 64 << 20;
const DFA_SIZE_LIMIT: usize = 8 << 20;
/// perf-notes: the default (1M) misses matches Perl finds; 100M costs nothing measurable.
const BACKTRACK_LIMIT: usize = 100_000_000;
/// Shorter texts are not worth a prefilter pass.
const PREFILTER_MIN_TEXT: usize = 256;

/// How the view a rule runs on is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One string (header value, URI, the whole message).
    Whole,
    /// Lines separated by `\n`, each matched on its own (body, rawbody).
    Lines,
}

enum Engine {
    Plain(regex::bytes::Regex),
    Fancy {
        gate: Option<regex::bytes::Regex>,
        re: Box<fancy_regex::Regex>,
    },
}

/// A compiled regex rule.
pub struct Matcher {
    engine: Engine,
    prefilter: Option<Prefilter>,
    scope: Scope,
    /// Strings (lower-cased) one of which every match contains, if known.
    literals: Option<Vec<Vec<u8>>>,
}

/// Counters the evaluation reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct MatchStats {
    /// fancy-regex runs (after the gate).
    pub fancy_runs: usize,
    /// fancy-regex errors (backtrack limit): counted as no match.
    pub errors: usize,
}

impl Matcher {
    /// Compiles a Perl pattern (between its delimiters) with its modifier letters.
    ///
    /// A pattern Perl refuses is [`RegexError::Invalid`]; one both engines refuse after
    /// translation is [`Unsupported::Engine`]: the translator has checked Perl's syntax, so
    /// that is an engine limit (size, nesting, a construct it lacks), not a rule's mistake.
    pub fn new(pattern: &[u8], flags: &str, scope: Scope) -> Result<Matcher, RegexError> {
        let t = perl::translate(pattern, flags)?;
        Self::from_translated(&t, scope).map_err(RegexError::Unsupported)
    }

    fn from_translated(t: &Translated, scope: Scope) -> Result<Matcher, Unsupported> {
        if !t.fancy {
            match plain(&t.full, scope) {
                Ok((re, hir)) => {
                    let literals = useful_literals(&hir);
                    return Ok(Matcher {
                        engine: Engine::Plain(re),
                        prefilter: Prefilter::new(literals.as_deref()),
                        scope,
                        literals,
                    });
                }
                Err(plain_err) => {
                    // Some patterns the regex crate refuses (size) still run backtracking.
                    return match fancy(&t.full) {
                        Ok(re) => Ok(Matcher {
                            engine: Engine::Fancy {
                                gate: None,
                                re: Box::new(re),
                            },
                            prefilter: None,
                            scope,
                            literals: None,
                        }),
                        Err(_) => Err(plain_err),
                    };
                }
            }
        }
        let re = fancy(&t.full)?;
        let (gate, literals) = match t.gate.as_deref().map(|g| plain(g, scope)) {
            Some(Ok((gate, hir))) => (Some(gate), useful_literals(&hir)),
            _ => (None, None),
        };
        Ok(Matcher {
            engine: Engine::Fancy {
                gate,
                re: Box::new(re),
            },
            prefilter: Prefilter::new(literals.as_deref()),
            scope,
            literals,
        })
    }

    /// Whether this rule needs the backtracking engine.
    pub fn is_fancy(&self) -> bool {
        matches!(self.engine, Engine::Fancy { .. })
    }

    /// Whether it has a gate (only meaningful for fancy rules).
    pub fn has_gate(&self) -> bool {
        matches!(self.engine, Engine::Fancy { gate: Some(_), .. })
    }

    /// Whether it has a literal prefilter.
    pub fn has_prefilter(&self) -> bool {
        self.prefilter.is_some()
    }

    /// Strings (lower-cased) one of which every match contains, when known: callers that
    /// search many rules' literals in one pass (see [`LiteralIndex`]) use them and then call
    /// [`Matcher::count_unfiltered`].
    pub fn literals(&self) -> Option<&[Vec<u8>]> {
        self.literals.as_deref()
    }

    /// Number of matches in `text`, at most `max` (1 for an ordinary rule); 0 for none.
    pub fn count(&self, text: &[u8], max: u32, stats: &mut MatchStats) -> u32 {
        self.count_inner(text, max, stats, true)
    }

    /// Like `count`, without the rule's own literal prefilter (the caller checked it).
    pub fn count_unfiltered(&self, text: &[u8], max: u32, stats: &mut MatchStats) -> u32 {
        self.count_inner(text, max, stats, false)
    }

    fn count_inner(&self, text: &[u8], max: u32, stats: &mut MatchStats, filter: bool) -> u32 {
        if max == 0 {
            return 0;
        }
        if filter
            && text.len() >= PREFILTER_MIN_TEXT
            && let Some(p) = &self.prefilter
            && !p.may_match(text)
        {
            return 0;
        }
        match &self.engine {
            Engine::Plain(re) => {
                if max == 1 {
                    u32::from(re.is_match(text))
                } else {
                    let mut n = 0;
                    for _ in re.find_iter(text) {
                        n += 1;
                        if n >= max {
                            break;
                        }
                    }
                    n
                }
            }
            Engine::Fancy { gate, re } => match self.scope {
                Scope::Whole => {
                    if let Some(g) = gate
                        && !g.is_match(text)
                    {
                        return 0;
                    }
                    stats.fancy_runs += 1;
                    fancy_count(re, text, max, stats)
                }
                Scope::Lines => self.fancy_lines(gate.as_ref(), re, text, max, stats),
            },
        }
    }

    fn fancy_lines(
        &self,
        gate: Option<&regex::bytes::Regex>,
        re: &fancy_regex::Regex,
        text: &[u8],
        max: u32,
        stats: &mut MatchStats,
    ) -> u32 {
        let mut n = 0u32;
        let mut pos = 0usize;
        while pos <= text.len() {
            let (start, end) = match gate {
                Some(g) => match g.find_at(text, pos) {
                    Some(m) => line_around(text, m.start()),
                    None => break,
                },
                None => {
                    let end = memchr::memchr(b'\n', &text[pos..]).map_or(text.len(), |e| pos + e);
                    (pos, end)
                }
            };
            stats.fancy_runs += 1;
            n += fancy_count(re, &text[start..end], max - n, stats);
            if n >= max {
                break;
            }
            pos = end + 1;
        }
        n
    }
}

/// The line (without its `\n`) that contains byte offset `at`.
fn line_around(text: &[u8], at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let start = memchr::memrchr(b'\n', &text[..at]).map_or(0, |i| i + 1);
    let end = memchr::memchr(b'\n', &text[at..]).map_or(text.len(), |i| at + i);
    (start, end)
}

fn fancy_count(re: &fancy_regex::Regex, text: &[u8], max: u32, stats: &mut MatchStats) -> u32 {
    if max == 1 {
        return match re.is_match(text) {
            Ok(b) => u32::from(b),
            Err(_) => {
                stats.errors += 1;
                0
            }
        };
    }
    let mut n = 0;
    for m in re.find_iter(text) {
        match m {
            Ok(_) => {
                n += 1;
                if n >= max {
                    break;
                }
            }
            Err(_) => {
                stats.errors += 1;
                break;
            }
        }
    }
    n
}

fn parse_hir(pattern: &str) -> Result<Hir, Unsupported> {
    regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .nest_limit(200)
        .build()
        .parse(pattern)
        .map_err(|e| match &e {
            // the kind alone: the full message repeats the (long) pattern
            regex_syntax::Error::Parse(p) => engine_error(
                matches!(p.kind(), regex_syntax::ast::ErrorKind::NestLimitExceeded(_)),
                false,
                p.kind(),
            ),
            regex_syntax::Error::Translate(t) => engine_error(false, false, t.kind()),
            _ => engine_error(false, false, &e),
        })
}

/// The reason for a pattern an engine refused, by the error's kind.
fn engine_error(deep: bool, big: bool, e: &dyn std::fmt::Display) -> Unsupported {
    let limit = if big {
        EngineLimit::TooBig
    } else if deep {
        EngineLimit::TooDeep
    } else {
        EngineLimit::Unimplemented
    };
    let detail = one_line(&e.to_string());
    let detail = match detail.char_indices().nth(160) {
        Some((cut, _)) => format!("{}…", &detail[..cut]),
        None => detail,
    };
    Unsupported::Engine { limit, detail }
}

/// Compiles a `regex`-crate pattern for `scope`; returns the regex and the syntax tree it was
/// built from (for literal extraction).
fn plain(pattern: &str, scope: Scope) -> Result<(regex::bytes::Regex, Hir), Unsupported> {
    let hir = parse_hir(pattern)?;
    let (hir, source) = match scope {
        Scope::Whole => (hir, pattern.to_string()),
        Scope::Lines => {
            let confined = confine_to_line(hir);
            let printed = confined.to_string();
            (confined, printed)
        }
    };
    let re = regex::bytes::RegexBuilder::new(&source)
        .unicode(false)
        .size_limit(SIZE_LIMIT)
        .dfa_size_limit(DFA_SIZE_LIMIT)
        .build()
        .map_err(|e| engine_error(false, matches!(e, regex::Error::CompiledTooBig(_)), &e))?;
    Ok((re, hir))
}

fn fancy(pattern: &str) -> Result<fancy_regex::Regex, Unsupported> {
    use fancy_regex::{CompileError, Error, ParseError};
    fancy_regex::RegexBuilder::new(pattern)
        .bytes_mode(fancy_regex::BytesMode::Ascii)
        .backtrack_limit(BACKTRACK_LIMIT)
        .delegate_size_limit(SIZE_LIMIT)
        .delegate_dfa_size_limit(DFA_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let deep = matches!(e, Error::ParseError(_, ParseError::RecursionExceeded));
            let big = match &e {
                Error::CompileError(c) => match c.as_ref() {
                    CompileError::InnerError(b) => b.size_limit().is_some(),
                    CompileError::PatternTooComplex => true,
                    _ => false,
                },
                _ => false,
            };
            engine_error(deep, big, &e)
        })
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Rewrites `hir` so that no match contains `\n` and the text anchors become line anchors.
fn confine_to_line(hir: Hir) -> Hir {
    match hir.into_kind() {
        HirKind::Empty => Hir::empty(),
        HirKind::Literal(lit) => {
            if lit.0.contains(&b'\n') {
                Hir::fail()
            } else {
                Hir::literal(lit.0)
            }
        }
        HirKind::Class(Class::Bytes(mut c)) => {
            c.difference(&ClassBytes::new([ClassBytesRange::new(b'\n', b'\n')]));
            Hir::class(Class::Bytes(c))
        }
        HirKind::Class(Class::Unicode(mut c)) => {
            use regex_syntax::hir::{ClassUnicode, ClassUnicodeRange};
            c.difference(&ClassUnicode::new([ClassUnicodeRange::new('\n', '\n')]));
            Hir::class(Class::Unicode(c))
        }
        HirKind::Look(look) => Hir::look(match look {
            Look::Start => Look::StartLF,
            Look::End => Look::EndLF,
            other => other,
        }),
        HirKind::Repetition(mut r) => {
            let sub = confine_to_line(*r.sub);
            // regex-syntax prints `(?:a{1,3})?` as `a{1,3}?` (lazy!): keep a group around a
            // repeated repetition so the printed pattern means the same.
            r.sub = Box::new(if matches!(sub.kind(), HirKind::Repetition(_)) {
                Hir::capture(regex_syntax::hir::Capture {
                    index: 0,
                    name: None,
                    sub: Box::new(sub),
                })
            } else {
                sub
            });
            Hir::repetition(r)
        }
        HirKind::Capture(mut c) => {
            c.sub = Box::new(confine_to_line(*c.sub));
            Hir::capture(c)
        }
        HirKind::Concat(v) => Hir::concat(v.into_iter().map(confine_to_line).collect()),
        HirKind::Alternation(v) => Hir::alternation(v.into_iter().map(confine_to_line).collect()),
    }
}

/// "At least one of these strings (ASCII case ignored) occurs in every match."
struct Prefilter {
    kind: PrefilterKind,
}

enum PrefilterKind {
    One(Box<memmem::Finder<'static>>),
    Many(AhoCorasick),
}

/// Literals shorter than this make a poor filter (present in nearly every text).
const MIN_LITERAL: usize = 3;
const MAX_LITERALS: usize = 64;

/// The required literals of `hir` when they make a useful filter.
fn useful_literals(hir: &Hir) -> Option<Lits> {
    let lits = required(hir)?;
    if lits.is_empty() || lits.iter().any(|l| l.len() < MIN_LITERAL) {
        return None;
    }
    Some(lits)
}

/// Many rules' required literals, searched in one pass over a text.
pub struct LiteralIndex {
    ac: AhoCorasick,
    patterns: usize,
}

impl LiteralIndex {
    /// Builds the index over `literals` (lower-cased); the pattern ids are the indexes.
    pub fn new(literals: &[Vec<u8>]) -> Option<LiteralIndex> {
        if literals.is_empty() {
            return None;
        }
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(literals)
            .or_else(|_| {
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .build(literals)
            })
            .ok()?;
        Some(LiteralIndex {
            ac,
            patterns: literals.len(),
        })
    }

    /// Which literals occur in `text` (ASCII case ignored).
    ///
    /// The answer may err only towards "present" (the rule's own regex then decides), which
    /// bounds the cost on degenerate text: a run of 4,000 'X' holds 4,000 overlapping "xxx"
    /// matches, and enumerating them cost more than running every rule (seen with
    /// smtp-source's bodies). Past `64 + len/32` matches, or once every literal was seen, we stop.
    pub fn present(&self, text: &[u8]) -> Vec<bool> {
        let mut seen = vec![false; self.patterns];
        let mut distinct = 0;
        let budget = 64 + text.len() / 32;
        for (n, m) in self.ac.find_overlapping_iter(text).enumerate() {
            if n >= budget {
                return vec![true; self.patterns];
            }
            if let Some(s) = seen.get_mut(m.pattern().as_usize())
                && !*s
            {
                *s = true;
                distinct += 1;
                if distinct == self.patterns {
                    break;
                }
            }
        }
        seen
    }
}

impl Prefilter {
    fn new(lits: Option<&[Vec<u8>]>) -> Option<Prefilter> {
        let lits = lits?;
        if lits.len() == 1 && !lits[0].iter().any(u8::is_ascii_alphabetic) {
            let finder = Box::new(memmem::Finder::new(&lits[0]).into_owned());
            return Some(Prefilter {
                kind: PrefilterKind::One(finder),
            });
        }
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .build(lits)
            .ok()?;
        Some(Prefilter {
            kind: PrefilterKind::Many(ac),
        })
    }

    fn may_match(&self, text: &[u8]) -> bool {
        match &self.kind {
            PrefilterKind::One(f) => f.find(text).is_some(),
            PrefilterKind::Many(ac) => ac.is_match(text),
        }
    }
}

type Lits = Vec<Vec<u8>>;

/// A set of strings one of which every match of `h` contains (lower-cased), if one is known.
fn required(h: &Hir) -> Option<Lits> {
    match h.kind() {
        HirKind::Literal(l) => Some(vec![l.0.to_ascii_lowercase()]),
        HirKind::Class(_) => exact(h),
        HirKind::Capture(c) => required(&c.sub),
        HirKind::Repetition(r) => {
            if r.min >= 1 {
                required(&r.sub)
            } else {
                None
            }
        }
        HirKind::Concat(v) => {
            let mut best: Option<Lits> = None;
            let mut run: Option<Lits> = None;
            for child in v {
                if let Some(ex) = exact(child) {
                    run = match run.take() {
                        None => Some(ex),
                        Some(prev) => match cross(&prev, &ex) {
                            Some(c) => Some(c),
                            None => {
                                consider(&mut best, prev);
                                Some(ex)
                            }
                        },
                    };
                } else {
                    if let Some(r) = run.take() {
                        consider(&mut best, r);
                    }
                    if let Some(r) = required(child) {
                        consider(&mut best, r);
                    }
                }
            }
            if let Some(r) = run {
                consider(&mut best, r);
            }
            best
        }
        HirKind::Alternation(v) => {
            let mut all = Vec::new();
            for child in v {
                all.extend(required(child)?);
                if all.len() > MAX_LITERALS {
                    return None;
                }
            }
            all.sort();
            all.dedup();
            Some(all)
        }
        HirKind::Empty | HirKind::Look(_) => None,
    }
}

/// The exact strings `h` can match (lower-cased), when there are few.
fn exact(h: &Hir) -> Option<Lits> {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => Some(vec![Vec::new()]),
        HirKind::Literal(l) => Some(vec![l.0.to_ascii_lowercase()]),
        HirKind::Class(Class::Bytes(c)) => {
            let mut set: Vec<u8> = Vec::new();
            for r in c.ranges() {
                if usize::from(r.end() - r.start()) > 8 {
                    return None;
                }
                for b in r.start()..=r.end() {
                    set.push(b.to_ascii_lowercase());
                }
                if set.len() > 8 {
                    return None;
                }
            }
            set.sort_unstable();
            set.dedup();
            Some(set.into_iter().map(|b| vec![b]).collect())
        }
        HirKind::Class(Class::Unicode(_)) => None,
        HirKind::Capture(c) => exact(&c.sub),
        HirKind::Concat(v) => {
            let mut acc: Lits = vec![Vec::new()];
            for child in v {
                acc = cross(&acc, &exact(child)?)?;
            }
            Some(acc)
        }
        HirKind::Alternation(v) => {
            let mut all = Vec::new();
            for child in v {
                all.extend(exact(child)?);
                if all.len() > MAX_LITERALS {
                    return None;
                }
            }
            all.sort();
            all.dedup();
            Some(all)
        }
        HirKind::Repetition(_) => None,
    }
}

fn cross(a: &Lits, b: &Lits) -> Option<Lits> {
    if a.len() * b.len() > MAX_LITERALS {
        return None;
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            let mut s = x.clone();
            s.extend_from_slice(y);
            out.push(s);
        }
    }
    out.sort();
    out.dedup();
    Some(out)
}

fn quality(l: &Lits) -> (usize, std::cmp::Reverse<usize>) {
    let min = l.iter().map(Vec::len).min().unwrap_or(0);
    (min.min(8), std::cmp::Reverse(l.len()))
}

fn consider(best: &mut Option<Lits>, cand: Lits) {
    if cand.is_empty() {
        return;
    }
    match best {
        Some(b) if quality(b) >= quality(&cand) => {}
        _ => *best = Some(cand),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, flags: &str, scope: Scope) -> Matcher {
        match Matcher::new(p.as_bytes(), flags, scope) {
            Ok(m) => m,
            Err(e) => panic!("{p}: {e}"),
        }
    }

    fn hits(p: &str, flags: &str, scope: Scope, text: &str) -> u32 {
        m(p, flags, scope).count(text.as_bytes(), 1, &mut MatchStats::default())
    }

    #[test]
    fn lines_scope_matches_like_per_line() {
        // ^ and $ are line anchors, \s does not cross lines, \n never matches
        assert_eq!(hits("^foo$", "", Scope::Lines, "a\nfoo\nb"), 1);
        assert_eq!(hits("^foo$", "", Scope::Whole, "a\nfoo\nb"), 0);
        assert_eq!(hits(r"foo\s+bar", "", Scope::Lines, "foo\nbar"), 0);
        assert_eq!(hits(r"foo\s+bar", "", Scope::Whole, "foo\nbar"), 1);
        assert_eq!(hits(r"foo\n", "", Scope::Lines, "foo\nbar"), 0);
        assert_eq!(hits(r"[^x]{5}", "", Scope::Lines, "ab\ncd\nef"), 0);
        assert_eq!(hits(r"\Abar\z", "", Scope::Lines, "foo\nbar\nbaz"), 1);
        // a repeated repetition survives the rewrite (not printed as a lazy quantifier)
        assert_eq!(
            hits(
                r"(?:\d{1,3})?Million\b.{0,40}\bUS\$",
                "i",
                Scope::Lines,
                "20 MILLION US$"
            ),
            1
        );
        assert_eq!(hits(r"^(?:ab{2})*$", "", Scope::Lines, "abbabb\nx"), 1);
    }

    #[test]
    fn perl_dollar_allows_final_newline() {
        assert_eq!(hits("^foo$", "", Scope::Whole, "foo\n"), 1);
        assert_eq!(hits("^foo$", "", Scope::Whole, "foo\nx\n"), 0);
        assert_eq!(hits("^x$", "m", Scope::Whole, "foo\nx\n"), 1);
    }

    #[test]
    fn fancy_with_gate_per_line() {
        let mm = m(r"foo(?!bar)", "", Scope::Lines);
        assert!(mm.is_fancy() && mm.has_gate());
        let mut st = MatchStats::default();
        assert_eq!(mm.count(b"foobar\nfoobaz", 1, &mut st), 1);
        assert_eq!(mm.count(b"foobar\nfoobar", 1, &mut st), 0);
        // lookbehind does not see the previous line
        assert_eq!(hits(r"(?<!x)y", "", Scope::Lines, "x\ny"), 1);
        assert_eq!(hits(r"(\w)\1", "", Scope::Lines, "ab\nbc"), 0);
        assert_eq!(hits(r"(\w)\1", "", Scope::Lines, "ab\nbcc"), 1);
    }

    #[test]
    fn multiple_counts_up_to_max() {
        let mm = m("a", "", Scope::Lines);
        let mut st = MatchStats::default();
        assert_eq!(mm.count(b"aaa\naa", 10, &mut st), 5);
        assert_eq!(mm.count(b"aaa\naa", 3, &mut st), 3);
        let f = m(r"a(?=a)", "", Scope::Lines);
        assert_eq!(f.count(b"aaa\naa", 10, &mut st), 3);
    }

    #[test]
    fn bytes_semantics() {
        assert_eq!(hits(r"\xe4", "i", Scope::Whole, "\u{e4}"), 0);
        assert!(m(r"\344", "", Scope::Whole).count(b"x\xe4y", 1, &mut MatchStats::default()) == 1);
        assert_eq!(hits(r"^\w+$", "", Scope::Whole, "caf\u{e9}"), 0);
    }

    /// Both engines refusing a translated pattern is a limit (skip), a Perl mistake an error.
    #[test]
    fn engine_limits_are_skips_and_perl_mistakes_errors() {
        let limit = |p: &str| match Matcher::new(p.as_bytes(), "", Scope::Lines) {
            Err(RegexError::Unsupported(Unsupported::Engine { limit, .. })) => Some(limit),
            _ => None,
        };
        assert_eq!(limit(r"(?:\w{1000}){1000}"), Some(EngineLimit::TooBig));
        let deep = "(?:".repeat(250) + "a" + &")".repeat(250);
        assert_eq!(limit(&deep), Some(EngineLimit::TooDeep));
        assert!(matches!(
            Matcher::new(b"unclosed(", "", Scope::Lines),
            Err(RegexError::Invalid(_))
        ));
        assert!(matches!(
            Matcher::new(br"\G", "", Scope::Lines),
            Err(RegexError::Unsupported(Unsupported::GAnchor))
        ));
    }

    #[test]
    fn prefilter_literals() {
        let lits = |p: &str| {
            let t = perl::translate(p.as_bytes(), "").unwrap();
            required(&parse_hir(&t.full).unwrap())
        };
        assert_eq!(lits("foo.{0,9}barbaz"), Some(vec![b"barbaz".to_vec()]));
        assert_eq!(lits("(?i)Viagra"), Some(vec![b"viagra".to_vec()]));
        assert_eq!(
            lits("(?:cheap|free) pills"),
            Some(vec![b"cheap pills".to_vec(), b"free pills".to_vec()])
        );
        assert_eq!(lits(r"\d+"), None);
        // a long literal with a prefilter still matches case-insensitively when the rule says so
        let long = "x".repeat(300) + "HELLO world";
        assert_eq!(hits("hello", "i", Scope::Whole, &long), 1);
        assert_eq!(hits("hello", "", Scope::Whole, &long), 0);
    }
}
