//! `keywords` rules (a mailwarden extension): word lists matched as whole words, ASCII case
//! ignored, every keyword rule of one view in a single Aho-Corasick pass.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// All keyword rules that look at one view.
pub struct KeywordSet {
    ac: AhoCorasick,
    /// pattern index → the rule slots (indexes given to `new`) it belongs to
    owners: Vec<Vec<usize>>,
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

impl KeywordSet {
    /// `rules`: (slot, entries). Returns `None` when there is nothing to match.
    pub fn new(rules: &[(usize, &[String])]) -> Result<Option<KeywordSet>, String> {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut owners: Vec<Vec<usize>> = Vec::new();
        let mut index: std::collections::HashMap<Vec<u8>, usize> = Default::default();
        for (slot, entries) in rules {
            for e in entries.iter() {
                let key = e.as_bytes().to_ascii_lowercase();
                if key.is_empty() {
                    continue;
                }
                let i = *index.entry(key.clone()).or_insert_with(|| {
                    patterns.push(key);
                    owners.push(Vec::new());
                    patterns.len() - 1
                });
                if !owners[i].contains(slot) {
                    owners[i].push(*slot);
                }
            }
        }
        if patterns.is_empty() {
            return Ok(None);
        }
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .map_err(|e| e.to_string())?;
        Ok(Some(KeywordSet { ac, owners }))
    }

    /// Calls `hit(slot)` for every rule with a whole-word match in `text` (possibly more than
    /// once per rule).
    pub fn scan(&self, text: &[u8], hit: &mut dyn FnMut(usize)) {
        for m in self.ac.find_overlapping_iter(text) {
            let (s, e) = (m.start(), m.end());
            let pat = &text[s..e];
            let starts_word = pat.first().is_some_and(|&b| is_word(b));
            let ends_word = pat.last().is_some_and(|&b| is_word(b));
            if starts_word && s > 0 && is_word(text[s - 1]) {
                continue;
            }
            if ends_word && e < text.len() && is_word(text[e]) {
                continue;
            }
            if let Some(owners) = self.owners.get(m.pattern().as_usize()) {
                for &slot in owners {
                    hit(slot);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(entries: &[&str], text: &str) -> bool {
        let e: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        let set = KeywordSet::new(&[(7, &e)]).unwrap().unwrap();
        let mut hit = false;
        set.scan(text.as_bytes(), &mut |slot| {
            assert_eq!(slot, 7);
            hit = true;
        });
        hit
    }

    #[test]
    fn whole_words_case_insensitive() {
        assert!(scan(&["viagra"], "Buy VIAGRA now"));
        assert!(!scan(&["viagra"], "viagras"));
        assert!(!scan(&["cat"], "concatenate"));
        assert!(scan(&["cat", "concatenate"], "concatenate"));
        assert!(scan(&["cheap pills"], "get cheap pills."));
        assert!(scan(&["$$$"], "win$$$now"));
        // an overlapping longer pattern does not hide a shorter whole-word match
        assert!(scan(&["ab", "b c"], "ab c"));
        assert!(!scan(&["ab"], "xab"));
    }

    #[test]
    fn empty_lists() {
        assert!(KeywordSet::new(&[(0, &[])]).unwrap().is_none());
    }
}
