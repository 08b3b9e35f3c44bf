//! The model and its arithmetic: Robinson–Fisher chi-square naive Bayes over a fixed number of
//! hashed feature slots.
//!
//! Why this model: measured on the dev corpus against online logistic regression (FTRL-Proximal
//! over the same hashed features, as Stalwart does; `benches/classifier_cv.rs`), see README
//! "Classifier". Counting also has properties a mail admin relies on: a message can be
//! forgotten exactly (its counts subtracted), relearning as the other class moves it, the
//! result does not depend on the order mail was learned in, and SpamAssassin's and rspamd's
//! BAYES_* bands keep meaning what they mean there.
//!
//! Memory is bounded by design: the model is `SLOTS` pairs of counters (16 MiB), whatever the
//! amount of mail learned; features share a slot when their hashes collide, which costs a little
//! precision on rare features and never grows the model. A feature's spam probability follows
//! Robinson's f(w) = (s·x + n·p(w)) / (s + n); the most telling features (at most
//! [`MAX_CLUES`], at least [`MIN_STRENGTH`] away from 0.5) are combined with Fisher's
//! inverse chi-square method (as SpamBayes and SpamAssassin do), which says "unsure" (≈ 0.5)
//! when the evidence points both ways instead of flipping between 0 and 1.

/// log2 of the number of slots.
pub const SLOT_BITS: u32 = 21;
/// Slots in the model: every feature hash lands in one.
pub const SLOTS: usize = 1 << SLOT_BITS;

/// Robinson's s: how much weight the prior x has against a feature seen n times.
const STRENGTH: f64 = 0.45;
/// Robinson's x: the probability assumed for a feature never seen.
const PRIOR: f64 = 0.5;
/// Features whose f(w) is closer to 0.5 than this are left out.
const MIN_STRENGTH: f64 = 0.1;
/// Most features combined per message.
pub const MAX_CLUES: usize = 150;

/// The slot a feature hash counts in.
pub fn slot(hash: u64) -> u32 {
    (hash & (SLOTS as u64 - 1)) as u32
}

/// Spam and ham counts of one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub spam: u32,
    pub ham: u32,
}

/// The whole model in memory: every slot's counts and how many messages they came from.
#[derive(Debug, Clone)]
pub struct Model {
    slots: Vec<Counts>,
    pub spam: u64,
    pub ham: u64,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            slots: vec![Counts::default(); SLOTS],
            spam: 0,
            ham: 0,
        }
    }
}

/// One feature's contribution, for `scan --explain`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clue {
    pub hash: u64,
    /// f(w): this feature's spam probability.
    pub probability: f64,
}

impl Model {
    /// Sets one slot (from the store).
    pub fn set(&mut self, slot: u32, counts: Counts) {
        if let Some(c) = self.slots.get_mut(slot as usize) {
            *c = counts;
        }
    }

    /// Adds (or with `sign < 0` removes) one message's features in memory; the store does the
    /// same on disk. Used by cross-validation and tests.
    pub fn learn(&mut self, hashes: &[u64], spam: bool, sign: i64) {
        let mut seen: Vec<u32> = hashes.iter().map(|&h| slot(h)).collect();
        seen.sort_unstable();
        seen.dedup();
        for s in seen {
            if let Some(c) = self.slots.get_mut(s as usize) {
                let field = if spam { &mut c.spam } else { &mut c.ham };
                *field = if sign >= 0 {
                    field.saturating_add(1)
                } else {
                    field.saturating_sub(1)
                };
            }
        }
        let total = if spam { &mut self.spam } else { &mut self.ham };
        *total = if sign >= 0 {
            total.saturating_add(1)
        } else {
            total.saturating_sub(1)
        };
    }

    /// Slots holding any count (a measure of how full the model is).
    pub fn used_slots(&self) -> usize {
        self.slots
            .iter()
            .filter(|c| c.spam > 0 || c.ham > 0)
            .count()
    }

    /// f(w) for one feature, `None` when it was never seen.
    fn feature_probability(&self, hash: u64) -> Option<f64> {
        let c = self.slots.get(slot(hash) as usize)?;
        let n = f64::from(c.spam) + f64::from(c.ham);
        if n == 0.0 || self.spam == 0 || self.ham == 0 {
            return None;
        }
        let spam_ratio = f64::from(c.spam) / self.spam as f64;
        let ham_ratio = f64::from(c.ham) / self.ham as f64;
        let p = spam_ratio / (spam_ratio + ham_ratio);
        Some((STRENGTH * PRIOR + n * p) / (STRENGTH + n))
    }

    /// The spam probability of a message with these features, and the clues that decided it
    /// (most telling first). 0.5 when nothing telling was found.
    pub fn probability(&self, hashes: &[u64]) -> (f64, Vec<Clue>) {
        let mut clues: Vec<Clue> = hashes
            .iter()
            .filter_map(|&hash| {
                let probability = self.feature_probability(hash)?;
                ((probability - 0.5).abs() >= MIN_STRENGTH).then_some(Clue { hash, probability })
            })
            .collect();
        clues.sort_by(|a, b| {
            (b.probability - 0.5)
                .abs()
                .total_cmp(&(a.probability - 0.5).abs())
                .then(a.hash.cmp(&b.hash))
        });
        clues.truncate(MAX_CLUES);
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
