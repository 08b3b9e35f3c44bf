//! The classifier's features: what of a message it counts, as 64-bit hashes.
//!
//! From the parsed message's views (so the words are the decoded text a reader sees, in any
//! charset or transfer encoding, HTML rendered): the Subject and body words, word pairs (each
//! word with the next: "click here" is not "here, click"), a few
//! header fields that carry the sender's habits (From, Reply-To, mailer, Message-ID domain,
//! content type and charset, list headers), the hosts and first path segments of links, and
//! attachment names and types. Each feature counts once per message, and a message yields at
//! most [`MAX_FEATURES`], so neither learning nor classifying a huge message costs more than a
//! small one.
//!
//! Header fields that filters add on the way (`X-Spam-*`, `Received`, `Authentication-Results`,
//! `X-Virus-*`) are never features: a message learned as the proxy saw it and the same message
//! later taken from a mailbox give the same features, so `learn --forget` undoes exactly what
//! was learned.
//!
//! The hash (FNV-1a with a final mix) is fixed here, not std's `DefaultHasher`, whose output may
//! change between Rust releases: the model on disk is indexed by it.

use std::collections::HashMap;

use crate::filter::message::Message;

/// Most features per message (body words are taken in order until the budget is spent).
pub const MAX_FEATURES: usize = 3000;
/// Body and subject words looked at (the pairs come from the same words).
const MAX_WORDS: usize = 1500;
/// Links looked at.
const MAX_URIS: usize = 100;
/// How far apart (in words) the two words of a pair may be.
/// The pairs are sparse bigrams (OSB, as CRM114 and rspamd use) with this window: each word
/// with each of the next `OSB_WINDOW` words, the distance part of the feature. Measured on the
/// dev corpus (`benches/classifier_cv.rs`, 5-fold, spam at p >= 0.99 with no ham there): window 4
/// (rspamd's) 82.0 %, AUC 0.9930; 2: 83.6 %, 0.9962; 1 (adjacent pairs only): 84.6 %, 0.9969,
/// and the fewest features (the cheapest to look up). Must be at least 1.
const OSB_WINDOW: usize = 1;

/// A stable 64-bit hash (FNV-1a, then a SplitMix64 finaliser for the low bits).
pub fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0x1f;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The features of one message.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// Sorted, each once.
    pub hashes: Vec<u64>,
    /// The feature text for each hash, when asked for (`scan --explain`).
    pub texts: Option<HashMap<u64, String>>,
}

struct Collector {
    hashes: Vec<u64>,
    texts: Option<HashMap<u64, String>>,
}

impl Collector {
    fn full(&self) -> bool {
        self.hashes.len() >= MAX_FEATURES
    }

    fn add(&mut self, kind: &str, value: &str) {
        if self.full() {
            return;
        }
        let h = hash(&[kind.as_bytes(), value.as_bytes()]);
        self.hashes.push(h);
        if let Some(texts) = self.texts.as_mut() {
            texts.entry(h).or_insert_with(|| format!("{kind}{value}"));
        }
    }

    /// A pair from the two words' hashes (no text is built unless asked for).
    fn add_pair(&mut self, distance: usize, a: (u64, &str), b: (u64, &str)) {
        if self.full() {
            return;
        }
        let h = pair_hash(distance, a.0, b.0);
        self.hashes.push(h);
        if let Some(texts) = self.texts.as_mut() {
            texts
                .entry(h)
                .or_insert_with(|| format!("{} {}{}", a.1, "_ ".repeat(distance - 1), b.1));
        }
    }

    /// A word, already lower-cased in `word`, with `prefix`; returns its hash.
    fn add_word(&mut self, prefix: &str, word: &str) -> u64 {
        let h = hash(&[b"", prefix.as_bytes(), word.as_bytes()]);
        if !self.full() {
            self.hashes.push(h);
            if let Some(texts) = self.texts.as_mut() {
                texts.entry(h).or_insert_with(|| format!("{prefix}{word}"));
            }
        }
        h
    }
}

/// The feature of two words `distance` apart (1 = adjacent).
fn pair_hash(distance: usize, a: u64, b: u64) -> u64 {
    let mut h = a.rotate_left(17) ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (distance as u64) << 56;
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A word as a feature: lower-case, punctuation around it trimmed; `None` for what carries no
/// meaning (one- and two-letter words, pure punctuation). Very long words (encoded junk,
/// hashes) count by their start, as SpamAssassin's "skip" tokens do.
fn normalise(word: &str) -> Option<String> {
    let mut buf = String::new();
    normalise_into(word, &mut buf).then_some(buf)
}

/// [`normalise`] into a reused buffer; false when the word is not a feature.
fn normalise_into(word: &str, buf: &mut String) -> bool {
    buf.clear();
    let trimmed = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '$' && c != '%');
    if trimmed.is_ascii() {
        let count = trimmed.len();
        if count < 3 {
            return false;
        }
        if count > 24 {
            buf.push_str("sk:");
            buf.push_str(&trimmed[..8]);
        } else {
            buf.push_str(trimmed);
        }
        buf.make_ascii_lowercase();
        return true;
    }
    let count = trimmed.chars().count();
    if count < 3 {
        return false;
    }
    if count > 24 {
        buf.push_str("sk:");
        buf.extend(trimmed.chars().take(8).flat_map(char::to_lowercase));
    } else {
        buf.extend(trimmed.chars().flat_map(char::to_lowercase));
    }
    true
}

/// Words and their pairs, with `prefix` on every word ("" for the body, "S:" for the Subject).
fn add_text(out: &mut Collector, prefix: &str, text: &str, budget: &mut usize) {
    // The last words: their hashes, and their text only when texts are kept.
    let keep_text = out.texts.is_some();
    let mut window: std::collections::VecDeque<(u64, String)> =
        std::collections::VecDeque::with_capacity(OSB_WINDOW + 1);
    let mut word = String::new();
    for chunk in text.split_whitespace() {
        if is_link(chunk) {
            continue; // links are features of their own
        }
        for raw in chunk.split(['/', '|', '<', '>']) {
            if *budget == 0 || out.full() {
                return;
            }
            if !normalise_into(raw, &mut word) {
                continue;
            }
            *budget -= 1;
            let h = out.add_word(prefix, &word);
            let text = if keep_text {
                format!("{prefix}{word}")
            } else {
                String::new()
            };
            for (back, (eh, etext)) in window.iter().rev().enumerate() {
                out.add_pair(back + 1, (*eh, etext), (h, &text));
            }
            if window.len() == OSB_WINDOW {
                window.pop_front();
            }
            window.push_back((h, text));
        }
    }
}

/// `http://…`, `www.…`, `mailto:…` (any case).
fn is_link(chunk: &str) -> bool {
    let b = chunk.as_bytes();
    chunk.contains("://")
        || b.len() >= 4 && b[..4].eq_ignore_ascii_case(b"www.")
        || b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"mailto:")
}

/// The address inside `<…>` (or the whole value), lower-case.
fn address(value: &str) -> String {
    let inner = match (value.rfind('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value,
    };
    inner.trim().to_ascii_lowercase()
}

fn domain_of(addr: &str) -> Option<&str> {
    addr.rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('>'))
        .filter(|d| !d.is_empty())
}

fn add_headers(out: &mut Collector, message: &Message) {
    if let Some(from) = message.header_fields("From").next() {
        let addr = address(&from.decoded);
        if let Some(domain) = domain_of(&addr) {
            out.add("F@:", domain);
        }
        out.add("F:", &addr);
        let name = from.decoded.split('<').next().unwrap_or_default();
        for word in name.split_whitespace().filter_map(normalise).take(6) {
            out.add("Fn:", &word);
        }
    }
    if let Some(reply) = message.header_fields("Reply-To").next() {
        let addr = address(&reply.decoded);
        out.add("R@:", domain_of(&addr).unwrap_or("none"));
    }
    for name in ["X-Mailer", "User-Agent"] {
        if let Some(mailer) = message.header_fields(name).next() {
            let value: String = mailer.decoded.to_lowercase().chars().take(40).collect();
            out.add("M:", &value);
            for word in mailer
                .decoded
                .split_whitespace()
                .filter_map(normalise)
                .take(4)
            {
                out.add("Mw:", &word);
            }
        }
    }
    if let Some(id) = message.header_fields("Message-ID").next() {
        let addr = address(&id.decoded);
        out.add("I@:", domain_of(&addr).unwrap_or("none"));
    } else {
        out.add("I@:", "missing");
    }
    if let Some(ct) = message.header_fields("Content-Type").next() {
        let lower = ct.decoded.to_ascii_lowercase();
        let kind = lower.split(';').next().unwrap_or_default().trim();
        out.add("CT:", kind);
        if let Some(charset) = lower.split("charset=").nth(1) {
            let charset = charset
                .trim_start_matches('"')
                .split(|c: char| c == '"' || c == ';' || c.is_whitespace())
                .next()
                .unwrap_or_default();
            out.add("CS:", charset);
        }
    }
    for name in [
        "List-Id",
        "List-Unsubscribe",
        "Precedence",
        "X-Mailing-List",
    ] {
        if let Some(field) = message.header_fields(name).next() {
            let value: String = field.decoded.to_lowercase().chars().take(60).collect();
            out.add(&format!("H:{name}:"), &value);
        }
    }
}

fn add_uris(out: &mut Collector, message: &Message) {
    for uri in message.uris().iter().take(MAX_URIS) {
        let Some((scheme, rest)) = uri.split_once(':') else {
            continue;
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "mailto" {
            let addr = rest.split('?').next().unwrap_or_default().to_lowercase();
            out.add("Um@:", domain_of(&addr).unwrap_or("none"));
            continue;
        }
        let rest = rest.trim_start_matches('/');
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = host
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if host.is_empty() {
            continue;
        }
        out.add("U:", &host);
        let labels: Vec<&str> = host.split('.').collect();
        if labels.len() > 2 {
            out.add("U:", &labels[labels.len() - 2..].join("."));
        }
        let segment = path.split(['/', '?', '#']).next().unwrap_or_default();
        if !segment.is_empty() && segment.len() <= 30 {
            out.add("Up:", &segment.to_ascii_lowercase());
        }
    }
}

fn add_attachments(out: &mut Collector, message: &Message) {
    for att in message.attachments().iter().take(20) {
        out.add("A:", &att.declared_type);
        if let Some(name) = &att.filename {
            let lower = name.to_lowercase();
            let ext = lower.rsplit_once('.').map_or("", |(_, e)| e);
            out.add("Ae:", ext);
        }
        if let Some(sniffed) = att.sniffed_type {
            out.add("As:", sniffed);
        }
    }
}

/// The features of `message`; with `keep_text`, also what each hash stands for.
pub fn features(message: &Message, keep_text: bool) -> Features {
    let mut out = Collector {
        hashes: Vec::with_capacity(1024),
        texts: keep_text.then(HashMap::new),
    };
    add_headers(&mut out, message);
    add_attachments(&mut out, message);
    add_uris(&mut out, message);
    let body = String::from_utf8_lossy(message.body());
    // `body()` starts with the Subject line when there is one.
    let has_subject = message
        .header_fields("Subject")
        .next()
        .is_some_and(|s| !s.decoded.trim().is_empty());
    let (subject, text) = if has_subject {
        body.split_once('\n').unwrap_or((&body, ""))
    } else {
        ("", &body[..])
    };
    let mut budget = MAX_WORDS;
    add_text(&mut out, "S:", subject, &mut budget);
    add_text(&mut out, "", text, &mut budget);
    out.hashes.sort_unstable();
    out.hashes.dedup();
    Features {
        hashes: out.hashes,
        texts: out.texts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(raw: &str) -> Features {
        features(&Message::parse(raw.as_bytes().to_vec()), true)
    }

    fn texts(f: &Features) -> Vec<String> {
        let mut t: Vec<String> = f
            .texts
            .as_ref()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        t.sort();
        t
    }

    #[test]
    fn the_hash_is_stable_across_builds() {
        // The model on disk is indexed by these values: they must never change.
        assert_eq!(hash(&[b"", b"hello"]), hash(&[b"", b"hello"]));
        assert_eq!(hash(&[b"", b"hello"]), 0x8662_07b1_bc1e_6440);
        assert_ne!(hash(&[b"a", b"bc"]), hash(&[b"ab", b"c"]));
    }

    #[test]
    fn words_pairs_subject_and_headers() {
        let f = feats(
            "From: \"Shop Team\" <deals@shop.example>\r\nSubject: Cheap pills\r\nMessage-ID: <1@mx.shop.example>\r\n\r\nBuy cheap pills now at http://pills.example/buy?x=1\r\n",
        );
        let t = texts(&f);
        for want in [
            "buy",
            "cheap",
            "buy cheap",
            "cheap pills",
            "S:cheap",
            "S:cheap S:pills",
            "F@:shop.example",
            "Fn:shop",
            "I@:mx.shop.example",
            "U:pills.example",
            "Up:buy",
        ] {
            assert!(t.iter().any(|x| x == want), "{want} missing from {t:?}");
        }
        // Two-letter words and the link text itself are not words.
        assert!(!t.iter().any(|x| x == "at" || x.contains("http")), "{t:?}");
    }

    #[test]
    fn filter_headers_are_not_features() {
        let plain = feats("Subject: hi\r\n\r\nhello world again\r\n");
        let tagged = feats(
            "Received: from x by y\r\nX-Spam-Status: Yes, score=9\r\nAuthentication-Results: mx; spf=pass\r\nSubject: hi\r\n\r\nhello world again\r\n",
        );
        assert_eq!(plain.hashes, tagged.hashes);
    }

    #[test]
    fn features_are_bounded_and_unique() {
        let mut body = String::from("Subject: big\r\n\r\n");
        for i in 0..50_000 {
            body.push_str(&format!("word{i} "));
        }
        let f = feats(&body);
        assert!(f.hashes.len() <= MAX_FEATURES);
        let mut sorted = f.hashes.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), f.hashes.len());
    }

    #[test]
    fn multibyte_words_and_links_never_split_a_character() {
        let f = feats("Subject: x\r\n\r\nwwé.éé mailé:x ÄÖÜ-straße www.EXAMPLE.com\r\n");
        let t = texts(&f);
        assert!(t.iter().any(|x| x == "äöü-straße"), "{t:?}");
        // The link is a link feature (U:…), never words.
        assert!(
            !t.iter()
                .any(|x| x.contains("example") && !x.starts_with("U:")),
            "{t:?}"
        );
    }

    #[test]
    fn encoded_text_counts_as_decoded() {
        let qp = feats(
            "Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nFr=C3=BChst=C3=BCck bestellen\r\n",
        );
        assert!(
            texts(&qp).iter().any(|t| t == "frühstück"),
            "{:?}",
            texts(&qp)
        );
    }
}
