//! SpamAssassin's ReplaceTags: `<TAG>` placeholders in the regexes of the rules named by
//! `replace_rules`, expanded once all files are read (so tags may be defined anywhere).
//!
//! Semantics follow the plugin's documented behaviour: `replace_tag NAME value` replaces `<NAME>`;
//! a rule may name one `<pre P>`, `<post P>` and `<inter P>`: the `replace_pre` value goes before
//! every tag, `replace_post` after every tag, `replace_inter` between two adjacent tags. Tag values
//! may contain tags themselves (expanded in up to six passes).

use std::collections::HashMap;

use super::parse::Defs;

/// Expands tags in place. Returns the names of rules that were changed.
pub fn apply(defs: &mut Defs) -> Vec<String> {
    let start = defs.replace_start.clone().unwrap_or_else(|| b"<".to_vec());
    let end = defs.replace_end.clone().unwrap_or_else(|| b">".to_vec());
    let tables = Tables {
        tag: &defs.replace_tag,
        pre: &defs.replace_pre,
        inter: &defs.replace_inter,
        post: &defs.replace_post,
        start: &start,
        end: &end,
    };
    let mut changed = Vec::new();
    for name in &defs.replace_rules {
        let Some(def) = defs.rules.get_mut(name) else {
            continue;
        };
        let Some(re) = def.kind.regex_mut() else {
            continue;
        };
        // SpamAssassin expands the stringified regex, which starts with its modifiers when
        // it has any (that decides whether a leading tag gets an `inter` before it).
        let mods: String = re.flags.chars().filter(|c| "imsx".contains(*c)).collect();
        let prefix = if mods.is_empty() {
            Vec::new()
        } else {
            format!("(?{mods})").into_bytes()
        };
        let mut input = prefix.clone();
        input.extend_from_slice(&re.pattern);
        let expanded = expand(&input, &tables);
        let out = match expanded.strip_prefix(prefix.as_slice()) {
            Some(rest) => rest.to_vec(),
            None => expanded,
        };
        if out != re.pattern {
            re.pattern = out;
            changed.push(name.clone());
        }
    }
    changed
}

pub struct Tables<'a> {
    pub tag: &'a HashMap<String, Vec<u8>>,
    pub pre: &'a HashMap<String, Vec<u8>>,
    pub inter: &'a HashMap<String, Vec<u8>>,
    pub post: &'a HashMap<String, Vec<u8>>,
    pub start: &'a [u8],
    pub end: &'a [u8],
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Leftmost `START(.+?)END` in `s` (the captured part has no newline): (match start, inner
/// start, inner end, match end).
fn lazy_tag(s: &[u8], start: &[u8], end: &[u8]) -> Option<(usize, usize, usize, usize)> {
    let mut from = 0;
    while let Some(i) = find(s, start, from) {
        let inner = i + start.len();
        let mut j = inner + 1;
        while j <= s.len() {
            if s.get(j - 1) == Some(&b'\n') {
                break;
            }
            if s[j..].starts_with(end) {
                return Some((i, inner, j, j + end.len()));
            }
            j += 1;
        }
        from = i + 1;
    }
    None
}

/// Removes the first `START word NAME END` and returns NAME.
fn take_directive(re: &mut Vec<u8>, word: &[u8], start: &[u8], end: &[u8]) -> Option<String> {
    let mut open = start.to_vec();
    open.extend_from_slice(word);
    open.push(b' ');
    let i = find(re, &open, 0)?;
    let name_start = i + open.len();
    let close = find(re, end, name_start + 1)?;
    let name = String::from_utf8_lossy(&re[name_start..close]).into_owned();
    re.drain(i..close + end.len());
    Some(name)
}

/// Splits on `(<[^<>]+>)` keeping the tags, dropping trailing empty pieces (Perl `split`).
fn split_tags(re: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut piece_start = 0;
    let mut i = 0;
    while i < re.len() {
        if re[i] == b'<'
            && let Some(len) = re[i + 1..].iter().position(|&b| b == b'<' || b == b'>')
            && len > 0
            && re[i + 1 + len] == b'>'
        {
            out.push(re[piece_start..i].to_vec());
            out.push(re[i..i + len + 2].to_vec());
            i += len + 2;
            piece_start = i;
            continue;
        }
        i += 1;
    }
    out.push(re[piece_start..].to_vec());
    while out.last().is_some_and(Vec::is_empty) {
        out.pop();
    }
    out
}

fn replace_all(s: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut from = 0;
    while let Some(i) = find(s, needle, from) {
        out.extend_from_slice(&s[from..i]);
        out.extend_from_slice(with);
        from = i + needle.len();
    }
    out.extend_from_slice(&s[from..]);
    out
}

pub fn expand(pattern: &[u8], t: &Tables<'_>) -> Vec<u8> {
    let mut re = pattern.to_vec();
    let mut passes = 0;
    loop {
        let pre = take_directive(&mut re, b"pre", t.start, t.end);
        let post = take_directive(&mut re, b"post", t.start, t.end);
        let inter = take_directive(&mut re, b"inter", t.start, t.end);
        let mut pieces = split_tags(&re);
        if let Some(pre) = pre.and_then(|n| t.pre.get(&n)).filter(|v| !v.is_empty()) {
            for p in &mut pieces {
                if let Some((s, _, _, _)) = lazy_tag(p, t.start, t.end) {
                    p.splice(s..s, pre.iter().copied());
                }
            }
        }
        if let Some(post) = post.and_then(|n| t.post.get(&n)).filter(|v| !v.is_empty()) {
            for p in &mut pieces {
                let mut out = Vec::with_capacity(p.len());
                let mut rest: &[u8] = p;
                while let Some((_, _, _, e)) = lazy_tag(rest, t.start, t.end) {
                    out.extend_from_slice(&rest[..e]);
                    out.extend_from_slice(post);
                    rest = &rest[e..];
                }
                out.extend_from_slice(rest);
                *p = out;
            }
        }
        if let Some(inter) = inter
            .and_then(|n| t.inter.get(&n))
            .filter(|v| !v.is_empty())
        {
            for p in &mut pieces {
                if p.is_empty() {
                    *p = inter.clone();
                }
            }
        }
        let mut again = false;
        for p in &mut pieces {
            if let Some((_, a, b, _)) = lazy_tag(p, t.start, t.end) {
                let name = String::from_utf8_lossy(&p[a..b]).into_owned();
                if let Some(value) = t.tag.get(&name).filter(|v| !v.is_empty()) {
                    let mut needle = t.start.to_vec();
                    needle.extend_from_slice(name.as_bytes());
                    needle.extend_from_slice(t.end);
                    *p = replace_all(p, &needle, value);
                    if !again && lazy_tag(value, b"<", b">").is_some() {
                        again = true;
                    }
                }
            }
        }
        re = pieces.concat();
        passes += 1;
        if !again || passes > 5 {
            break;
        }
    }
    re
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn tags_pre_post_inter() {
        let tag = map(&[
            ("A", "[a@]"),
            ("I", "[il1]"),
            ("SP", "[\\s_]"),
            ("V", "<A><I>"),
        ]);
        let pre = map(&[("P1", "(?:")]);
        let post = map(&[("P2", "{1,2}")]);
        let inter = map(&[("W1", "\\W?")]);
        let t = Tables {
            tag: &tag,
            pre: &pre,
            inter: &inter,
            post: &post,
            start: b"<",
            end: b">",
        };
        assert_eq!(expand(b"x<A>y", &t), b"x[a@]y");
        assert_eq!(expand(b"x<A><I>", &t), b"x[a@][il1]");
        assert_eq!(expand(b"x<inter W1><A><I>", &t), b"x[a@]\\W?[il1]");
        assert_eq!(expand(b"x<post P2><A><I>", &t), b"x[a@]{1,2}[il1]{1,2}");
        // nested tags expand in a further pass
        assert_eq!(expand(b"x<V>", &t), b"x[a@][il1]");
        // unknown tags and lookbehinds stay as they are
        assert_eq!(expand(b"(?<!x)<Q>", &t), b"(?<!x)<Q>");
    }
}
