//! Running a rule set over one message.
//!
//! Header rules see what SpamAssassin's `get()` returns: the values of every field with the
//! name, each followed by "\n" (decoded, or `:raw`), `:addr`/`:name` one address or name per
//! line; an absent header is the empty string (or the `[if-unset: ...]` value). Body and
//! rawbody rules match per line, URI rules per URI, `full` on the whole message, `mimeheader`
//! on each MIME part's header value.

use std::time::Instant;

use super::compile::{MatchStats, Matcher};
use super::parse::{
    AttachField, HeaderPart, HeaderSource, HeaderWhat, KeywordTarget, KeywordView, Which,
};
use super::{Evaluation, Hit, RuleSet, Test, TestKind, meta};
use crate::filter::message::{HeaderField, Message};

/// Header values normalized the way SpamAssassin stores them: CRLF becomes LF.
fn raw_value(raw: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(raw.len() + 1);
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\r' && raw.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        v.push(raw[i]);
        i += 1;
    }
    v
}

fn trim_start(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    &v[s..]
}

fn field_value(f: &HeaderField, raw: bool) -> Vec<u8> {
    if raw {
        raw_value(trim_start(&f.raw))
    } else {
        f.decoded.as_bytes().to_vec()
    }
}

/// What SpamAssassin's `get(source)` returns, joined; `None` when nothing was found.
pub(crate) fn header_value(msg: &Message, src: &HeaderSource) -> Option<Vec<u8>> {
    let headers = msg.headers();
    let mut values: Vec<Vec<u8>> = match &src.what {
        HeaderWhat::All => {
            let mut out = Vec::new();
            for f in headers {
                let mut line = f.name.as_bytes().to_vec();
                if src.raw {
                    line.push(b':');
                    line.extend_from_slice(&raw_value(&f.raw));
                } else {
                    line.extend_from_slice(b": ");
                    line.extend_from_slice(f.decoded.as_bytes());
                }
                line.push(b'\n');
                out.extend_from_slice(&line);
            }
            return if headers.is_empty() { None } else { Some(out) };
        }
        HeaderWhat::Named(name) => msg
            .header_fields(name)
            .map(|f| field_value(f, src.raw))
            .collect(),
        HeaderWhat::ToCc => msg
            .header_fields("To")
            .chain(msg.header_fields("Cc"))
            .map(|f| field_value(f, src.raw))
            .collect(),
        HeaderWhat::MessageId => [
            "X-Message-Id",
            "Resent-Message-Id",
            "X-Original-Message-ID",
            "Message-Id",
        ]
        .iter()
        .flat_map(|n| msg.header_fields(n))
        .map(|f| field_value(f, src.raw))
        .filter(|v| !v.is_empty())
        .collect(),
    };
    if values.is_empty() {
        return None;
    }
    match src.which {
        Which::All => {}
        Which::First => values.truncate(1),
        Which::Last => {
            let last = values.pop();
            values = last.into_iter().collect();
        }
    }
    match src.part {
        HeaderPart::Value => {
            let mut out = Vec::new();
            for v in values {
                out.extend_from_slice(&v);
                out.push(b'\n');
            }
            Some(out)
        }
        HeaderPart::Addr | HeaderPart::Name => {
            let mut items: Vec<Vec<u8>> = Vec::new();
            for v in &values {
                for mb in mailboxes(v) {
                    let item = if src.part == HeaderPart::Addr {
                        mb.addr
                    } else {
                        mb.name
                    };
                    if let Some(i) = item {
                        items.push(i);
                    }
                }
            }
            if items.is_empty() {
                return None;
            }
            Some(items.join(&b'\n'))
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Mailbox {
    pub addr: Option<Vec<u8>>,
    pub name: Option<Vec<u8>>,
}

/// Splits an address list into mailboxes (RFC 5322, leniently): `Name <a@b>`, `a@b (Name)`,
/// `a@b`, groups `g: a@b, c@d;`.
pub(crate) fn mailboxes(v: &[u8]) -> Vec<Mailbox> {
    // split at top-level commas / group punctuation
    let mut parts: Vec<&[u8]> = Vec::new();
    let (mut depth_paren, mut in_quote, mut in_angle) = (0usize, false, false);
    let mut start = 0;
    let mut i = 0;
    while i < v.len() {
        let c = v[i];
        if in_quote {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_quote = false;
            }
        } else if depth_paren > 0 {
            if c == b'\\' {
                i += 1;
            } else if c == b'(' {
                depth_paren += 1;
            } else if c == b')' {
                depth_paren -= 1;
            }
        } else {
            match c {
                b'"' => in_quote = true,
                b'(' => depth_paren = 1,
                b'<' => in_angle = true,
                b'>' => in_angle = false,
                b',' | b';' if !in_angle => {
                    parts.push(&v[start..i]);
                    start = i + 1;
                }
                b':' if !in_angle => {
                    // group name "undisclosed-recipients:" — drop what came before
                    start = i + 1;
                }
                _ => {}
            }
        }
        i += 1;
    }
    parts.push(&v[start.min(v.len())..]);
    parts
        .into_iter()
        .filter_map(|p| {
            let p = trim(p);
            if p.is_empty() {
                return None;
            }
            Some(parse_mailbox(p))
        })
        .collect()
}

fn trim(s: &[u8]) -> &[u8] {
    let a = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let b = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(a, |e| e + 1);
    &s[a..b.max(a)]
}

fn collapse_ws(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut space = false;
    for &b in trim(s) {
        if b.is_ascii_whitespace() {
            space = true;
        } else {
            if space && !out.is_empty() {
                out.push(b' ');
            }
            space = false;
            out.push(b);
        }
    }
    out
}

fn unquote(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => {}
            b'\\' if i + 1 < s.len() => {
                i += 1;
                out.push(s[i]);
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn parse_mailbox(p: &[u8]) -> Mailbox {
    // Name <addr>
    if let Some(lt) = find_unquoted(p, b'<')
        && let Some(gt) = p[lt..].iter().position(|&b| b == b'>').map(|g| lt + g)
    {
        let mut addr = trim(&p[lt + 1..gt]);
        // route: <@a,@b:user@host>
        if addr.first() == Some(&b'@')
            && let Some(c) = addr.iter().position(|&b| b == b':')
        {
            addr = &addr[c + 1..];
        }
        let mut name = collapse_ws(&unquote(&strip_comments(&p[..lt]).0));
        if name.len() >= 2 && name.first() == Some(&b'\'') && name.last() == Some(&b'\'') {
            name = name[1..name.len() - 1].to_vec();
        }
        return Mailbox {
            addr: (!addr.is_empty()).then(|| addr.to_vec()),
            name: (!name.is_empty()).then_some(name),
        };
    }
    // addr (Name)
    let (rest, comment) = strip_comments(p);
    let addr = collapse_ws(&rest);
    let addr: Vec<u8> = addr.into_iter().filter(|b| *b != b' ').collect();
    let name = comment.map(|c| collapse_ws(&c)).filter(|c| !c.is_empty());
    Mailbox {
        addr: (!addr.is_empty() && addr.contains(&b'@')).then_some(addr),
        name,
    }
}

fn find_unquoted(p: &[u8], ch: u8) -> Option<usize> {
    let mut q = false;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'\\' if q => i += 1,
            b'"' => q = !q,
            c if c == ch && !q => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Removes `( comments )` outside quotes; returns the rest and the first comment's text.
fn strip_comments(p: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut out = Vec::with_capacity(p.len());
    let mut first: Option<Vec<u8>> = None;
    let mut cur = Vec::new();
    let (mut depth, mut q) = (0usize, false);
    let mut i = 0;
    while i < p.len() {
        let c = p[i];
        if depth > 0 {
            match c {
                b'\\' if i + 1 < p.len() => {
                    i += 1;
                    cur.push(p[i]);
                }
                b'(' => {
                    depth += 1;
                    cur.push(c);
                }
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        if first.is_none() {
                            first = Some(std::mem::take(&mut cur));
                        }
                        cur.clear();
                    } else {
                        cur.push(c);
                    }
                }
                _ => cur.push(c),
            }
        } else {
            match c {
                b'"' => {
                    q = !q;
                    out.push(c);
                }
                b'(' if !q => depth = 1,
                _ => out.push(c),
            }
        }
        i += 1;
    }
    (out, first)
}

/// Whether `deadline` has passed.
fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// The state of one evaluation: every rule's value and hit count by id, and what is computed
/// at most once per message (header values, literal prefilter results, regex statistics).
struct Run<'m> {
    message: &'m Message,
    archive_names: &'m [String],
    values: Vec<f64>,
    counts: Vec<u32>,
    stats: MatchStats,
    header_cache: Vec<Option<Option<Vec<u8>>>>,
    present: [Option<Vec<bool>>; super::LITERAL_VIEWS],
}

impl Run<'_> {
    /// Marks keyword rule `slot` as hit once (keyword rules count at most one hit).
    fn keyword_seen(values: &mut [f64], counts: &mut [u32], slot: usize) {
        if let Some(c) = counts.get_mut(slot)
            && *c == 0
        {
            *c = 1;
            values[slot] = values[slot].max(1.0);
        }
    }

    /// Whether the test's literal prefilter says it cannot match (none of its literals
    /// occurs in its view).
    fn literals_absent(&mut self, set: &RuleSet, test: &Test) -> bool {
        let Some(ids) = &test.literals else {
            return false;
        };
        let view = match test.kind {
            TestKind::Body(_) => 0,
            TestKind::RawBody(_) => 1,
            _ => 2,
        };
        let Some(index) = &set.literal_index[view] else {
            return false;
        };
        let message = self.message;
        let seen = self.present[view].get_or_insert_with(|| {
            index.present(match view {
                0 => message.body(),
                1 => message.rawbody(),
                _ => message.raw(),
            })
        });
        !ids.iter().any(|&i| seen.get(i).copied().unwrap_or(true))
    }

    /// Hits of one test on the message; `None` if it is not run (its literals are absent, or
    /// its header source is unknown).
    fn test_hits(&mut self, set: &RuleSet, test: &Test) -> Option<u32> {
        if self.literals_absent(set, test) {
            return None;
        }
        let max = test.max;
        let message = self.message;
        let stats = &mut self.stats;
        Some(match &test.kind {
            TestKind::Header {
                src,
                neg,
                if_unset,
                m,
            } => {
                let cached = self.header_cache.get_mut(*src)?.get_or_insert_with(|| {
                    set.sources.get(*src).and_then(|s| header_value(message, s))
                });
                let text: &[u8] = match (cached.as_deref(), if_unset) {
                    (Some(v), _) => v,
                    (None, Some(u)) => u,
                    (None, None) => b"",
                };
                if *neg {
                    u32::from(m.count(text, 1, stats) == 0)
                } else {
                    m.count(text, max, stats)
                }
            }
            TestKind::Exists { header } => u32::from(header_exists(message, header)),
            TestKind::Body(m) => m.count_unfiltered(body_text(message, test), max, stats),
            TestKind::RawBody(m) => m.count_unfiltered(message.rawbody(), max, stats),
            TestKind::Full(m) => m.count_unfiltered(message.raw(), max, stats),
            TestKind::Uri(m) => uri_hits(message, m, max, stats),
            TestKind::MimeHeader {
                header,
                raw,
                neg,
                m,
            } => {
                let n = mime_header_hits(message, header, *raw, m, max, stats);
                if *neg { u32::from(n == 0) } else { n }
            }
            TestKind::Attachment {
                field: AttachField::ArchiveFilename,
                m,
            } => archive_hits(self.archive_names, m, max, stats),
            TestKind::Attachment { field, m } => attachment_hits(message, *field, m, max, stats),
        })
    }
}

/// What a body rule sees: the body, without its first line (the Subject) for `nosubject`
/// rules when there is a Subject (SpamAssassin makes it an empty line otherwise, which
/// matters to no rule).
fn body_text<'m>(message: &'m Message, test: &Test) -> &'m [u8] {
    let body = message.body();
    let has_subject = message
        .header_fields("Subject")
        .next()
        .is_some_and(|s| !s.decoded.is_empty());
    if test.nosubject && has_subject {
        match memchr::memchr(b'\n', body) {
            Some(i) => &body[i + 1..],
            None => b"",
        }
    } else {
        body
    }
}

/// Hits of a URI rule: matches over all URIs, at most `max`.
fn uri_hits(message: &Message, m: &Matcher, max: u32, stats: &mut MatchStats) -> u32 {
    let mut n = 0u32;
    for u in message.uris() {
        n += m.count(u.as_bytes(), max - n, stats);
        if n >= max {
            break;
        }
    }
    n
}

/// Hits of a `mimeheader` rule: matches over the values of the MIME parts' `header` fields,
/// at most `max`.
fn mime_header_hits(
    message: &Message,
    header: &str,
    raw: bool,
    m: &Matcher,
    max: u32,
    stats: &mut MatchStats,
) -> u32 {
    let mut n = 0u32;
    for f in message
        .mime_headers()
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case(header))
    {
        let mut v = field_value(f, raw);
        v.push(b'\n');
        n += m.count(&v, max - n, stats);
        if n >= max {
            break;
        }
    }
    n
}

/// Hits of an `archive_filename` rule: names of files inside archives that match, at most
/// `max`.
fn archive_hits(names: &[String], m: &Matcher, max: u32, stats: &mut MatchStats) -> u32 {
    let mut n = 0u32;
    for name in names {
        if m.count(name.as_bytes(), 1, stats) > 0 {
            n += 1;
            if n >= max {
                break;
            }
        }
    }
    n
}

/// Hits of an attachment filename or type rule: attachments that match, at most `max`.
fn attachment_hits(
    message: &Message,
    field: AttachField,
    m: &Matcher,
    max: u32,
    stats: &mut MatchStats,
) -> u32 {
    let mut n = 0u32;
    for a in message.attachments() {
        let matched = match field {
            AttachField::Filename => a
                .filename
                .as_deref()
                .is_some_and(|f| m.count(f.as_bytes(), 1, stats) > 0),
            AttachField::Type => {
                m.count(a.declared_type.as_bytes(), 1, stats) > 0
                    || a.sniffed_type
                        .is_some_and(|t| m.count(t.as_bytes(), 1, stats) > 0)
            }
            AttachField::ArchiveFilename => false,
        };
        if matched {
            n += 1;
            if n >= max {
                break;
            }
        }
    }
    n
}

impl RuleSet {
    /// Evaluates every rule on `message`. `preset`: symbols other checks decided (they count
    /// as hits, take part in meta rules and appear in the hits). `deadline`: no rule starts
    /// after it; then `timed_out` is set and meta rules are not run.
    pub fn evaluate(
        &self,
        message: &Message,
        preset: &[&str],
        deadline: Option<Instant>,
    ) -> Evaluation {
        self.evaluate_with(message, preset, &[], deadline)
    }

    /// [`evaluate`](Self::evaluate), with the names of the files inside the message's zip
    /// archives (found by the attachment policy) for `attachment NAME archive_filename` rules.
    pub fn evaluate_with(
        &self,
        message: &Message,
        preset: &[&str],
        archive_names: &[String],
        deadline: Option<Instant>,
    ) -> Evaluation {
        let mut run = Run {
            message,
            archive_names,
            values: vec![0.0f64; self.names.len()],
            counts: vec![0u32; self.names.len()],
            stats: MatchStats::default(),
            header_cache: vec![None; self.sources.len()],
            present: Default::default(),
        };
        let mut hits = self.apply_preset(&mut run, preset);
        let mut rules_run = 0;
        let mut timed_out = self.run_keywords(&mut run, deadline);
        if !timed_out {
            rules_run += self.keyword_rules;
        }
        if !timed_out {
            timed_out = self.run_tests(&mut run, deadline, &mut rules_run);
        }
        if !timed_out {
            rules_run += self.run_metas(&mut run);
        }
        self.push_hits(&run, &mut hits);
        hits.sort_by(|a, b| a.name.cmp(&b.name));
        Evaluation {
            hits,
            timed_out,
            rules_run,
            regex_errors: run.stats.errors,
            fancy_runs: run.stats.fancy_runs,
        }
    }

    /// Sets the preset symbols that are rules of this set; returns hits for the others (not
    /// `__` ones, each once), which score 0.
    fn apply_preset(&self, run: &mut Run, preset: &[&str]) -> Vec<Hit> {
        let mut hits: Vec<Hit> = Vec::new();
        for &p in preset {
            match self.ids.get(p) {
                Some(&id) => {
                    run.values[id] = run.values[id].max(1.0);
                    run.counts[id] = run.counts[id].max(1);
                }
                None => {
                    if !p.starts_with("__") && !hits.iter().any(|h| h.name == p) {
                        hits.push(Hit {
                            name: p.to_string(),
                            score: 0.0,
                            description: String::new(),
                            count: 1,
                        });
                    }
                }
            }
        }
        hits
    }

    /// Runs the keyword rules, one pass per view; returns whether the deadline stopped it.
    fn run_keywords(&self, run: &mut Run, deadline: Option<Instant>) -> bool {
        let message = run.message;
        for (target, set) in &self.keyword_sets {
            if past(deadline) {
                return true;
            }
            let (values, counts) = (&mut run.values, &mut run.counts);
            let mut seen = |slot: usize| Run::keyword_seen(values, counts, slot);
            match target {
                KeywordTarget::View(KeywordView::Body) => set.scan(message.body(), &mut seen),
                KeywordTarget::View(KeywordView::Subject) => {
                    for f in message.header_fields("Subject") {
                        set.scan(f.decoded.as_bytes(), &mut seen);
                    }
                }
                KeywordTarget::View(KeywordView::Uri) => {
                    for u in message.uris() {
                        set.scan(u.as_bytes(), &mut seen);
                    }
                }
                KeywordTarget::Header(h) => {
                    for f in message.header_fields(h) {
                        set.scan(f.decoded.as_bytes(), &mut seen);
                    }
                }
            }
        }
        false
    }

    /// Runs the regex, exists and attachment tests in order, counting them in `rules_run`;
    /// returns whether the deadline stopped it.
    fn run_tests(&self, run: &mut Run, deadline: Option<Instant>, rules_run: &mut usize) -> bool {
        for test in &self.tests {
            if past(deadline) {
                return true;
            }
            *rules_run += 1;
            let Some(n) = run.test_hits(self, test) else {
                continue;
            };
            if n > 0
                && let Some(c) = run.counts.get_mut(test.id)
            {
                *c = c.saturating_add(n);
                run.values[test.id] = f64::from(*c);
            }
        }
        false
    }

    /// Runs the meta rules in dependency order; returns how many ran.
    fn run_metas(&self, run: &mut Run) -> usize {
        for m in &self.metas {
            let v = meta::eval(&m.expr, &run.values);
            if v != 0.0 && !v.is_nan() {
                let v = if v > 0.0 { v } else { 1.0 };
                run.values[m.id] = v;
                run.counts[m.id] = 1;
            } else {
                run.values[m.id] = 0.0;
                run.counts[m.id] = 0;
            }
        }
        self.metas.len()
    }

    /// Adds a hit for every rule (not `__`) with a count, scored by its count if `multiple`.
    fn push_hits(&self, run: &Run, hits: &mut Vec<Hit>) {
        for (id, &count) in run.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let Some(name) = self.names.get(id) else {
                continue;
            };
            if name.starts_with("__") {
                continue;
            }
            let one = self.scores.get(id).copied().unwrap_or(0.0);
            let multiple = self.multiple.get(id).copied().unwrap_or(false);
            let count = if multiple { count } else { 1 };
            hits.push(Hit {
                name: name.clone(),
                score: one * f64::from(count),
                description: self.descriptions.get(name).cloned().unwrap_or_default(),
                count,
            });
        }
    }
}

/// `exists:NAME`, with SpamAssassin's pseudo-headers: `ToCc` is To or Cc, `MESSAGEID` any
/// of the Message-Id fields, `ALL` any field at all (the agreement run against SpamAssassin
/// found `exists:ToCc` never true when it looked for a field literally named "ToCc").
fn header_exists(message: &Message, name: &str) -> bool {
    let any = |names: &[&str]| {
        names
            .iter()
            .any(|n| message.header_fields(n).next().is_some())
    };
    match name {
        "ToCc" => any(&["To", "Cc"]),
        "MESSAGEID" => any(&[
            "X-Message-Id",
            "Resent-Message-Id",
            "X-Original-Message-ID",
            "Message-Id",
        ]),
        "ALL" => !message.headers().is_empty(),
        _ => message.header_fields(name).next().is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Vec<(Option<String>, Option<String>)> {
        mailboxes(s.as_bytes())
            .into_iter()
            .map(|m| {
                (
                    m.addr.map(|a| String::from_utf8_lossy(&a).into_owned()),
                    m.name.map(|a| String::from_utf8_lossy(&a).into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn address_lists() {
        assert_eq!(
            mb("\"Doe, John\" <john@example.com>"),
            [(Some("john@example.com".into()), Some("Doe, John".into()))]
        );
        assert_eq!(
            mb("a@b.c (Alice), Bob <bob@x.y>"),
            [
                (Some("a@b.c".into()), Some("Alice".into())),
                (Some("bob@x.y".into()), Some("Bob".into()))
            ]
        );
        assert_eq!(mb("undisclosed-recipients:;"), []);
        assert_eq!(mb("<@route:u@h>"), [(Some("u@h".into()), None)]);
        assert_eq!(
            mb("'Quoted' <q@x>"),
            [(Some("q@x".into()), Some("Quoted".into()))]
        );
    }

    #[test]
    fn exists_knows_pseudo_headers() {
        let with_cc = Message::parse(b"Cc: a@b.c\r\nSubject: x\r\n\r\nbody\r\n".to_vec());
        assert!(header_exists(&with_cc, "ToCc"));
        assert!(header_exists(&with_cc, "ALL"));
        assert!(!header_exists(&with_cc, "MESSAGEID"));
        let bare = Message::parse(b"Subject: x\r\n\r\nbody\r\n".to_vec());
        assert!(!header_exists(&bare, "ToCc"));
        let with_mid = Message::parse(b"Message-Id: <a@b>\r\n\r\nbody\r\n".to_vec());
        assert!(header_exists(&with_mid, "MESSAGEID"));
    }
}
