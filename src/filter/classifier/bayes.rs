//! The model and its arithmetic: Robinson–Fisher chi-square naive Bayes over a bounded token
//! table.
//!
//! Why this model: measured on the dev corpus against online logistic regression (FTRL-Proximal
//! over the same features, as Stalwart does; `benches/classifier_cv.rs`), see README
//! "Classifier". Counting also has properties a mail admin relies on: a message can be
//! forgotten exactly (its counts subtracted), relearning as the other class moves it, the
//! result does not depend on the order mail was learned in, and SpamAssassin's and rspamd's
//! BAYES_* bands keep meaning what they mean there.
//!
//! Memory is bounded by design: the table holds at most `max_tokens` features (the store prunes
//! the rarest, least recently learned ones beyond that, as SpamAssassin's token expiry does),
//! keyed by their full 64-bit hash. A fixed array of hashed slots was tried first and measured
//! worse: at the dev corpus' size 40% of 2^21 slots were taken, so a feature never seen in spam
//! often landed on a slot some ham feature had filled and read as ham (spam recall at
//! p ≥ 0.95: 67%).
//!
//! A feature's spam probability follows Robinson's f(w) = (s·x + n·p(w)) / (s + n); the most
//! telling features (at most [`MAX_CLUES`], at least `min_strength` away from 0.5) are combined
//! with Fisher's inverse chi-square method (as SpamBayes and SpamAssassin do), which says
//! "unsure" (≈ 0.5) when the evidence points both ways instead of flipping between 0 and 1.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Feature hashes are already well mixed: the table uses them as they are.
#[derive(Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by feature hash.
pub type TokenMap<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

/// The combining constants (tuned by cross-validation, `benches/classifier_cv.rs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Robinson's s: how much weight the prior x has against a feature seen n times.
    pub strength: f64,
    /// Robinson's x: the probability assumed for a feature never seen.
    pub prior: f64,
    /// Features whose f(w) is closer to 0.5 than this are left out.
    pub min_strength: f64,
    /// Most features combined per message.
    pub max_clues: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            strength: 1.0,
            prior: 0.5,
            min_strength: 0.1,
            max_clues: MAX_CLUES,
        }
    }
}

/// Most features combined per message.
pub const MAX_CLUES: usize = 150;

/// Spam and ham counts of one feature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub spam: u32,
    pub ham: u32,
}

/// The whole model in memory: every feature's counts and how many messages they came from.
#[derive(Debug, Clone, Default)]
pub struct Model {
    tokens: TokenMap<Counts>,
    pub spam: u64,
    pub ham: u64,
}

/// One feature's contribution, for `scan --explain`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clue {
    pub hash: u64,
    /// f(w): this feature's spam probability.
    pub probability: f64,
}

impl Model {
    /// Sets one feature's counts (from the store); zero counts remove it.
    pub fn set(&mut self, hash: u64, counts: Counts) {
        if counts.spam == 0 && counts.ham == 0 {
            self.tokens.remove(&hash);
        } else {
            self.tokens.insert(hash, counts);
        }
    }

    /// Adds (or with `sign < 0` removes) one message's features in memory; the store does the
    /// same on disk. Used by cross-validation and tests.
    pub fn learn(&mut self, hashes: &[u64], spam: bool, sign: i64) {
        let mut seen = hashes.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for h in seen {
            let c = self.tokens.entry(h).or_default();
            let field = if spam { &mut c.spam } else { &mut c.ham };
            *field = if sign >= 0 {
                field.saturating_add(1)
            } else {
                field.saturating_sub(1)
            };
            if c.spam == 0 && c.ham == 0 {
                self.tokens.remove(&h);
            }
        }
        let total = if spam { &mut self.spam } else { &mut self.ham };
        *total = if sign >= 0 {
            total.saturating_add(1)
        } else {
            total.saturating_sub(1)
        };
    }

    /// Features the model holds.
    pub fn tokens(&self) -> usize {
        self.tokens.len()
    }

    /// f(w) for one feature, `None` when it was never seen.
    fn feature_probability(&self, c: Counts, params: &Params) -> Option<f64> {
        let n = f64::from(c.spam) + f64::from(c.ham);
        if n == 0.0 || self.spam == 0 || self.ham == 0 {
            return None;
        }
        let spam_ratio = f64::from(c.spam) / self.spam as f64;
        let ham_ratio = f64::from(c.ham) / self.ham as f64;
        let p = spam_ratio / (spam_ratio + ham_ratio);
        Some((params.strength * params.prior + n * p) / (params.strength + n))
    }

    /// The spam probability of a message with these features, and the clues that decided it
    /// (most telling first). 0.5 when nothing telling was found.
    pub fn probability(&self, hashes: &[u64]) -> (f64, Vec<Clue>) {
        self.probability_with(hashes, &Params::default())
    }

    /// [`probability`](Self::probability) with other constants (for tuning).
    pub fn probability_with(&self, hashes: &[u64], params: &Params) -> (f64, Vec<Clue>) {
        // Look every feature up first: independent loads, so the CPU overlaps their cache
        // misses (the table is larger than the cache); then the arithmetic.
        let found: Vec<(u64, Counts)> = hashes
            .iter()
            .filter_map(|h| self.tokens.get(h).map(|c| (*h, *c)))
            .collect();
        let mut clues: Vec<Clue> = found
            .into_iter()
            .filter_map(|(hash, counts)| {
                let probability = self.feature_probability(counts, params)?;
                ((probability - 0.5).abs() >= params.min_strength)
                    .then_some(Clue { hash, probability })
            })
            .collect();
        let order = |a: &Clue, b: &Clue| {
            (b.probability - 0.5)
                .abs()
                .total_cmp(&(a.probability - 0.5).abs())
                .then(a.hash.cmp(&b.hash))
        };
        // The most telling max_clues, without sorting all of them.
        if clues.len() > params.max_clues {
            clues.select_nth_unstable_by(params.max_clues, order);
            clues.truncate(params.max_clues);
        }
        clues.sort_unstable_by(order);
        if clues.is_empty() {
            return (0.5, clues);
        }
        let n = clues.len();
        // Sums of logs: the products underflow with 150 clues.
        let ln_spam: f64 = clues.iter().map(|c| (1.0 - c.probability).ln()).sum();
        let ln_ham: f64 = clues.iter().map(|c| c.probability.ln()).sum();
        let s = 1.0 - chi2q(-2.0 * ln_spam, 2 * n);
        let h = 1.0 - chi2q(-2.0 * ln_ham, 2 * n);
        ((1.0 + s - h) / 2.0, clues)
    }
}

/// P(χ² > x2) for `v` (even) degrees of freedom.
fn chi2q(x2: f64, v: usize) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    for i in 1..v / 2 {
        term *= m / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

/// SpamAssassin's Bayes bands: (symbol, lower bound inclusive, upper bound exclusive).
/// `BAYES_999` is on top of `BAYES_99`, as in SpamAssassin's 23_bayes.cf.
pub const BANDS: [(&str, f64, f64); 9] = [
    ("BAYES_00", 0.0, 0.01),
    ("BAYES_05", 0.01, 0.05),
    ("BAYES_20", 0.05, 0.20),
    ("BAYES_40", 0.20, 0.40),
    ("BAYES_50", 0.40, 0.60),
    ("BAYES_60", 0.60, 0.80),
    ("BAYES_80", 0.80, 0.95),
    ("BAYES_95", 0.95, 0.99),
    ("BAYES_99", 0.99, 1.01),
];

/// The band symbols a probability gets: one, or `BAYES_99` and `BAYES_999` above 0.999.
pub fn band_symbols(probability: f64) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = BANDS
        .iter()
        .filter(|(_, lo, hi)| probability >= *lo && probability < *hi)
        .map(|(name, _, _)| *name)
        .take(1)
        .collect();
    if probability >= 0.999 {
        out.push("BAYES_999");
    }
    out
}

/// Every symbol the classifier can set (for rule files and `rules check`).
pub const SYMBOLS: [&str; 11] = [
    "BAYES_00",
    "BAYES_05",
    "BAYES_20",
    "BAYES_40",
    "BAYES_50",
    "BAYES_60",
    "BAYES_80",
    "BAYES_95",
    "BAYES_99",
    "BAYES_999",
    "BAYES_FAIL",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn trained() -> Model {
        let mut m = Model::default();
        for i in 0..50u64 {
            m.learn(&[1, 2, 100 + i], true, 1);
            m.learn(&[3, 4, 1000 + i], false, 1);
        }
        m
    }

    #[test]
    fn spam_features_give_high_probability_ham_features_low() {
        let m = trained();
        assert!(m.probability(&[1, 2]).0 > 0.99);
        assert!(m.probability(&[3, 4]).0 < 0.01);
        // Evidence both ways: unsure.
        let mixed = m.probability(&[1, 2, 3, 4]).0;
        assert!((0.3..0.7).contains(&mixed), "{mixed}");
        // Nothing known: exactly unsure, no clues.
        assert_eq!(m.probability(&[999_999]), (0.5, Vec::new()));
    }

    #[test]
    fn forgetting_undoes_learning() {
        let mut m = trained();
        let before = m.probability(&[1, 3]);
        m.learn(&[1, 3, 77], true, 1);
        m.learn(&[1, 3, 77], true, -1);
        assert_eq!(m.probability(&[1, 3]), before);
        assert_eq!((m.spam, m.ham), (50, 50));
    }

    #[test]
    fn bands_cover_zero_to_one_and_999_stacks_on_99() {
        assert_eq!(band_symbols(0.0), vec!["BAYES_00"]);
        assert_eq!(band_symbols(0.5), vec!["BAYES_50"]);
        assert_eq!(band_symbols(0.995), vec!["BAYES_99"]);
        assert_eq!(band_symbols(0.9995), vec!["BAYES_99", "BAYES_999"]);
        assert_eq!(band_symbols(1.0), vec!["BAYES_99", "BAYES_999"]);
        for i in 0..=1000 {
            assert!(!band_symbols(f64::from(i) / 1000.0).is_empty());
        }
    }

    #[test]
    fn chi2q_matches_known_values() {
        // P(χ²(2) > 2) = e^-1.
        assert!((chi2q(2.0, 2) - (-1.0f64).exp()).abs() < 1e-12);
        assert_eq!(chi2q(0.0, 10), 1.0);
        assert!(chi2q(1000.0, 4) < 1e-100);
    }
}
