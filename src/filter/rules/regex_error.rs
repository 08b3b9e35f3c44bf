//! Why a rule's regex does not run, as kinds rather than text: a pattern Perl itself refuses is
//! a mistake in the rule file ([`RegexError::Invalid`]: `rules check` fails, a reload keeps
//! the old rules), while valid Perl that mailwarden cannot run with the same meaning is only
//! skipped ([`RegexError::Unsupported`]: the rest of the file still loads, as SpamAssassin's
//! own files must). Callers decide on the variant, never on the message.

use std::fmt;

/// Why a pattern cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegexError {
    /// Not a valid Perl regex: Perl (and so SpamAssassin) refuses to compile it.
    Invalid(Invalid),
    /// Valid Perl without an exact equivalent in either engine, or over an engine's limits.
    Unsupported(Unsupported),
}

impl RegexError {
    pub fn is_invalid(&self) -> bool {
        matches!(self, RegexError::Invalid(_))
    }
}

impl fmt::Display for RegexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegexError::Invalid(e) => e.fmt(f),
            RegexError::Unsupported(u) => u.fmt(f),
        }
    }
}

/// A mistake in a pattern: what, and where (byte offset in the pattern between its
/// delimiters, after ReplaceTags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub kind: InvalidKind,
    pub at: usize,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {}: {}",
            self.kind.what(),
            self.at,
            self.kind.fix()
        )
    }
}

/// The mistakes Perl reports (its message in the comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKind {
    /// "Unmatched ( in regex"
    UnclosedGroup,
    /// "Unmatched ) in regex"
    UnmatchedParen,
    /// "Quantifier follows nothing"
    NothingToRepeat,
    /// "Nested quantifiers"
    NestedQuantifier,
    /// "Quantifier in {,} bigger than 65534"
    QuantifierTooBig,
    /// "\K* is forbidden"
    RepeatedKeep,
    /// "Trailing \ in regex"
    TrailingBackslash,
    /// "Reference to nonexistent group"
    MissingGroup,
    /// "Reference to nonexistent named group"
    MissingNamedGroup,
    /// "Unterminated \g... pattern", "Reference to invalid group 0"
    BadGroupReference,
    /// "Sequence \k... not terminated"
    BadNamedReference,
    /// "Missing right brace on \x{}" (and \o, \b, \p, \N, \g)
    MissingBrace(char),
    /// "Missing braces on \o{}"
    OctalWithoutBraces,
    /// "Empty \o{}"
    EmptyOctal,
    /// "Character following "\c" must be printable ASCII", "Use ";" instead of "\c{""
    BadControl,
    /// "'x' is an unknown bound type"
    UnknownBound,
    /// "Empty \p"
    EmptyProperty,
    /// "Character following \p must be '{' or a single-character Unicode property name",
    /// "Can't find Unicode property definition" (one letter, or a name that cannot be one)
    BadProperty,
    /// "Unescaped left brace in regex is illegal here" (after `\w`, `\d`, …)
    UnescapedBrace,
    /// "Unknown charname" (a `\N{...}` that cannot be a name)
    UnknownCharName,
    /// "\C no longer supported"
    RemovedEscape,
    /// "\N in a character class must be a named character: \N{...}"
    NotNewlineInClass,
    /// "\K not permitted in lookahead/lookbehind"
    KeepInLookaround,
    /// "Lookbehind longer than 255 not implemented" (an unbounded repeat inside)
    LookbehindTooLong,
    /// "Sequence (? incomplete", "Sequence (?R) not terminated"
    IncompleteGroup,
    /// "Unknown verb pattern", "Unterminated verb pattern", "has a mandatory argument"
    BadVerb,
    /// "Sequence (?#... not terminated"
    UnterminatedComment,
    /// "Sequence (?X...) not recognized"
    UnknownGroup,
    /// "Group name must start with a non-digit word character"
    BadGroupName,
    /// "Sequence (?<... not terminated", "Sequence \k<... not terminated"
    UnterminatedGroupName,
    /// "Sequence (?... not terminated"
    UnterminatedFlags,
    /// "Unknown switch condition (?(...))"
    UnknownCondition,
    /// "Unmatched [ in regex"
    UnclosedClass,
    /// "Invalid [] range"
    BadRange,
    /// "POSIX class [:x:] unknown"
    UnknownPosixClass,
    /// "POSIX syntax [= =] is reserved for future extensions"
    ReservedPosixSyntax,
}

impl InvalidKind {
    /// What is wrong, in Perl's terms.
    pub fn what(self) -> String {
        use InvalidKind::*;
        match self {
            UnclosedGroup => "unclosed group".into(),
            UnmatchedParen => "unmatched ')'".into(),
            NothingToRepeat => "quantifier follows nothing".into(),
            NestedQuantifier => "nested quantifiers".into(),
            QuantifierTooBig => "quantifier bigger than 65534".into(),
            RepeatedKeep => "unbounded quantifier on \\K".into(),
            TrailingBackslash => "trailing backslash".into(),
            MissingGroup => "reference to a group that does not exist".into(),
            MissingNamedGroup => "reference to a named group that does not exist".into(),
            BadGroupReference => "bad \\g reference".into(),
            BadNamedReference => "bad \\k reference".into(),
            MissingBrace(c) => format!("missing '}}' after \\{c}{{"),
            OctalWithoutBraces => "\\o without braces".into(),
            EmptyOctal => "empty \\o{}".into(),
            BadControl => "bad \\c escape".into(),
            UnknownBound => "unknown \\b{...} boundary type".into(),
            EmptyProperty => "\\p or \\P without a property".into(),
            BadProperty => "unknown \\p or \\P property".into(),
            UnescapedBrace => "unescaped '{' right after an escape like \\w or \\d".into(),
            UnknownCharName => "unknown character name in \\N{...}".into(),
            RemovedEscape => "\\C (removed from Perl in 5.24)".into(),
            NotNewlineInClass => "\\N in a character class".into(),
            KeepInLookaround => "\\K inside a lookahead or lookbehind".into(),
            LookbehindTooLong => "unbounded repeat inside a lookbehind".into(),
            IncompleteGroup => "unfinished group syntax '(?'".into(),
            BadVerb => "unknown or unterminated (*VERB)".into(),
            UnterminatedComment => "unterminated comment group (?#".into(),
            UnknownGroup => "unknown group syntax after '(?'".into(),
            BadGroupName => "bad group name".into(),
            UnterminatedGroupName => "group name without its closing delimiter".into(),
            UnterminatedFlags => "unterminated flag group".into(),
            UnknownCondition => "unknown condition in (?(...)...)".into(),
            UnclosedClass => "unclosed character class".into(),
            BadRange => "invalid range in character class".into(),
            UnknownPosixClass => "unknown POSIX class".into(),
            ReservedPosixSyntax => "[= =] or [. .] in a character class".into(),
        }
    }

    /// What to write instead.
    pub fn fix(self) -> &'static str {
        use InvalidKind::*;
        match self {
            UnclosedGroup => "close the '(' with ')', or write \\( for a literal '('",
            UnmatchedParen => "remove it or open its group, or write \\) for a literal ')'",
            NothingToRepeat => {
                "'*', '+', '?' and '{n}' repeat what comes before them; write \\*, \\+ or \\? \
                 for the character itself"
            }
            NestedQuantifier => {
                "a repetition cannot be repeated directly: drop one quantifier, or group the \
                 first, (?:a*)+"
            }
            QuantifierTooBig => "Perl's limit; use a smaller count or '*' / '+'",
            RepeatedKeep => "remove the quantifier after \\K",
            TrailingBackslash => "write \\\\ for a literal backslash",
            MissingGroup => {
                "there are fewer capture groups than the reference counts (\\1 is the group of \
                 the first '(')"
            }
            MissingNamedGroup => "define the group with (?<name>...) or fix the name",
            BadGroupReference => "write \\g1, \\g{1}, \\g{-1} or \\g{name}",
            BadNamedReference => "write \\k<name>, \\k'name' or \\k{name}",
            MissingBrace(_) => "close the braces with '}'",
            OctalWithoutBraces => "write \\o{17}, or the octal escape \\017",
            EmptyOctal => "put octal digits inside, e.g. \\o{17}",
            BadControl => "\\c takes a printable ASCII character, e.g. \\cA for Ctrl-A",
            UnknownBound => "Perl knows \\b{gcb}, \\b{lb}, \\b{sb} and \\b{wb}",
            EmptyProperty => "name the property, e.g. \\p{L}",
            BadProperty => "one-letter properties are C, L, M, N, P, S and Z; else write \\p{Name}",
            UnescapedBrace => "write \\{ for a literal '{' (Perl reserves this for future syntax)",
            UnknownCharName => {
                "write \\N{U+41} or a Unicode name such as \\N{LATIN SMALL LETTER A}"
            }
            RemovedEscape => "'.' matches one byte (rules match bytes)",
            NotNewlineInClass => {
                "write [^\\n] for \"not a newline\", or \\N{...} for a named character"
            }
            KeepInLookaround => "move \\K out of the (?=...) / (?<=...) group",
            LookbehindTooLong => {
                "Perl's lookbehinds match at most 255 characters: use a bounded repeat, {0,50}"
            }
            IncompleteGroup => "finish it, e.g. (?:...), or write \\( for a literal '('",
            BadVerb => {
                "the verbs are (*FAIL), (*ACCEPT), (*COMMIT), (*PRUNE), (*SKIP), (*THEN) and \
                 (*MARK:name); write \\(\\* for a literal '(*'"
            }
            UnterminatedComment => "close the comment with ')'",
            UnknownGroup => {
                "groups are (...), (?:...), (?=...), (?!...), (?<=...), (?<!...), (?>...), \
                 (?<name>...) and (?flags:...) with flags from imsxn; write \\(\\? for a \
                 literal '(?'"
            }
            BadGroupName => "a name starts with a letter or '_', then letters, digits or '_'",
            UnterminatedGroupName => "close the name: (?<name>...), (?'name'...), \\k<name>",
            UnterminatedFlags => "write (?i) or (?i:...)",
            UnknownCondition => {
                "conditions are (1), (<name>), ('name'), (R), (R1), (R&name), (DEFINE) or a \
                 lookaround"
            }
            UnclosedClass => "close the '[' with ']', or write \\[ for a literal '['",
            BadRange => {
                "the first character of a range comes after the last ([z-a]): swap them, or \
                 put '-' first or last for a literal '-'"
            }
            UnknownPosixClass => {
                "the classes are alpha, digit, alnum, space, upper, lower, punct, xdigit, word, \
                 blank, cntrl, graph, print and ascii"
            }
            ReservedPosixSyntax => "Perl reserves them; list the characters themselves",
        }
    }
}

/// Valid Perl that mailwarden does not run (the rule is skipped with this reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    /// `\x{100}` and up: rules match bytes.
    WideCharacter,
    /// `\x{4g}`, `\o{18}`: Perl stops at the non-digit (with a warning).
    NumericEscapeStop,
    /// `\p{..}`, `\P{..}`, `\X`, `\N{name}`.
    UnicodeEscape(char),
    /// `\b{wb}` and friends.
    UnicodeBoundary,
    /// `\l`, `\u`, `\L`, `\U` (literal letters in a pattern from a rule file).
    CaseChange(char),
    GAnchor,
    /// `^*`, `\b+`, `(?=a)?`, `\E*`: Perl repeats a zero-width thing, the engines refuse.
    QuantifiedAssertion,
    /// `a{3,2}`: never matches in Perl.
    ImpossibleQuantifier,
    /// `(*PRUNE)`, `(*SKIP)`, …
    Verb,
    /// `(*pla:...)`, `(*atomic:...)`, …
    AlphaAssertion,
    /// `(?R)`, `(?1)`, `(?&name)`, `(?P>name)`.
    Recursion,
    BranchReset,
    Conditional,
    /// `(?{...})`, `(??{...})`.
    CodeBlock,
    /// The translated pattern: both engines refused it.
    Engine {
        limit: EngineLimit,
        detail: String,
    },
}

/// Why both engines refused a translated pattern. The translator has checked the Perl
/// syntax, so this is a limit of the engines (or of the translation), not a mistake in the
/// rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineLimit {
    /// Over the compiled size limit (large bounded repeats).
    TooBig,
    /// Nested deeper than the parser allows.
    TooDeep,
    /// A construct the engine does not implement (variable-length lookbehind, forward
    /// references, numbered references next to named groups, duplicate names, …).
    Unimplemented,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Unsupported::*;
        match self {
            WideCharacter => f.write_str("wide character escape (bytes only)"),
            NumericEscapeStop => f.write_str("\\x{...} or \\o{...} with a non-digit inside"),
            UnicodeEscape(c) => write!(f, "\\{c} (Unicode) escape"),
            UnicodeBoundary => f.write_str("\\b{...} boundaries"),
            CaseChange(c) => write!(f, "\\{c} case-changing escape"),
            GAnchor => f.write_str("\\G anchor"),
            QuantifiedAssertion => f.write_str("quantifier on a zero-width assertion"),
            ImpossibleQuantifier => f.write_str("quantifier {n,m} with n > m (never matches)"),
            Verb => f.write_str("backtracking control verb"),
            AlphaAssertion => f.write_str("(*name:...) assertion"),
            Recursion => f.write_str("recursion"),
            BranchReset => f.write_str("branch reset group (?|...)"),
            Conditional => f.write_str("conditional group"),
            CodeBlock => f.write_str("code block"),
            Engine { limit, detail } => {
                let what = match limit {
                    EngineLimit::TooBig => "too big for the regex engines",
                    EngineLimit::TooDeep => "nested too deeply for the regex engines",
                    EngineLimit::Unimplemented => "not implemented by the regex engines",
                };
                write!(f, "{what} ({detail})")
            }
        }
    }
}
