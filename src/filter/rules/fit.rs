//! Score fitting for rule sets: the math behind `mailwarden rules fit`, kept apart from the
//! scanning so it can be tested on toy data.
//!
//! Hand-set scores drift towards the mail their author looked at; this learns them from a
//! labelled corpus instead, as SpamAssassin's `masses/` tools do. Each message is a set of
//! rule hits `x_i` (the hit count, 1 for most rules); the model is logistic regression with
//! the SpamAssassin scale built in:
//!
//! ```text
//! P(spam) = σ(α · (Σ s_i·x_i + fixed − threshold))
//! ```
//!
//! so the fitted `s_i` are directly rule scores and a message is flagged at `Σ ≥ threshold`
//! (the `[policy] tag_score`). The loss is the weighted log loss (ham weighted `ham_weight`
//! times a spam, so a false positive costs more than a miss) plus an L2 penalty `l2·Σ s_i²`
//! (in units of one message of weight 1), minimised under box constraints: ordinary rules get
//! `0 ≤ s ≤ cap`, `nice` rules (signs of ham) `−nice_cap ≤ s ≤ 0`. Rules marked fixed keep
//! their score and only shift the sum; rules with fewer than `min_hits` training hits keep
//! their given score (not fitted, not clamped), since a handful of messages says little.
//!
//! The minimiser is accelerated projected gradient (FISTA with restart) under a diagonal
//! majoriser of the Hessian: for the log loss `H ≤ (α²/4)·Xᵀ W X ≤ diag_i((α²/4)·Σ_j w_j x_ij
//! n_j)` (`n_j` the message's hit total), so the step needs no tuning and every run is
//! deterministic. The problem is convex, so the result does not depend on the start.

/// One rule to score.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    /// `tflags nice`: evidence of ham; the only rules allowed a negative score.
    pub nice: bool,
    /// A score that is not fitted (certainty rules: GTUBE, lists, virus, DMARC).
    pub fixed: Option<f64>,
    /// The score it has now: kept when it hits too rarely to fit.
    pub current: f64,
}

/// One labelled message: which rules hit it and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// (rule index, hit count) pairs.
    pub hits: Vec<(usize, f64)>,
    pub spam: bool,
}

/// The knobs of a fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Score at which a message is flagged (`[policy] tag_score`).
    pub threshold: f64,
    /// Largest score any fitted rule may get.
    pub cap: f64,
    /// Largest magnitude a `nice` rule may get (its score is in `[-nice_cap, 0]`).
    pub nice_cap: f64,
    /// Weight of one ham message relative to one spam (> 1: false positives cost more).
    pub ham_weight: f64,
    /// L2 penalty per squared score point, in units of one message of weight 1.
    pub l2: f64,
    /// Rules hitting fewer training messages than this keep their current score.
    pub min_hits: usize,
    /// Logistic sharpness α: log-odds per score point.
    pub sharpness: f64,
    pub max_iterations: usize,
    /// Stop when no score moves more than this in an iteration.
    pub tolerance: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            threshold: 5.0,
            cap: 4.0,
            nice_cap: 1.0,
            ham_weight: 10.0,
            l2: 0.3,
            min_hits: 5,
            sharpness: 1.0,
            max_iterations: 20_000,
            tolerance: 1e-6,
        }
    }
}

/// How a rule's score was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Learned from the corpus.
    Fitted,
    /// Fixed by the caller (certainty rules).
    Fixed,
    /// Too few hits to learn from: the current score, unchanged.
    Kept,
}

/// The result of a fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// One score per rule, in the order of the rules given.
    pub scores: Vec<f64>,
    pub origins: Vec<Origin>,
    /// Training messages each rule hit.
    pub hits: Vec<usize>,
    pub iterations: usize,
    /// The objective at the end (weighted log loss + penalty, per unit of weight).
    pub loss: f64,
}

/// Why a fit could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FitError {
    /// No spam or no ham to learn from.
    OneClass { spam: usize, ham: usize },
    /// A hit names a rule index beyond the rule list.
    BadRuleIndex(usize),
    /// A parameter is out of range (negative cap, non-positive weight, ...).
    BadParam(&'static str),
}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FitError::OneClass { spam, ham } => write!(
                f,
                "need both spam and ham to fit (got {spam} spam, {ham} ham)"
            ),
            FitError::BadRuleIndex(i) => write!(f, "hit names rule index {i}, beyond the rules"),
            FitError::BadParam(what) => write!(f, "bad fit parameter: {what}"),
        }
    }
}

impl std::error::Error for FitError {}

/// The score range a rule may take.
fn bounds(rule: &Rule, params: &Params) -> (f64, f64) {
    if rule.nice {
        (-params.nice_cap, 0.0)
    } else {
        (0.0, params.cap)
    }
}

fn check(rules: &[Rule], examples: &[Example], params: &Params) -> Result<(), FitError> {
    let finite_pos = |v: f64| v.is_finite() && v > 0.0;
    let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
    if !finite_nonneg(params.cap) || !finite_nonneg(params.nice_cap) {
        return Err(FitError::BadParam("cap and nice_cap must be >= 0"));
    }
    if !finite_pos(params.ham_weight) || !finite_pos(params.sharpness) {
        return Err(FitError::BadParam("ham_weight and sharpness must be > 0"));
    }
    if !finite_nonneg(params.l2) || !params.threshold.is_finite() {
        return Err(FitError::BadParam("l2 must be >= 0, threshold finite"));
    }
    let spam = examples.iter().filter(|e| e.spam).count();
    let ham = examples.len() - spam;
    if spam == 0 || ham == 0 {
        return Err(FitError::OneClass { spam, ham });
    }
    for e in examples {
        if let Some(&(i, _)) = e.hits.iter().find(|(i, _)| *i >= rules.len()) {
            return Err(FitError::BadRuleIndex(i));
        }
    }
    Ok(())
}

/// The data of one fit, laid out for the iterations.
struct Problem<'a> {
    examples: &'a [Example],
    /// Rule index → position among the fitted rules (`usize::MAX`: not fitted).
    slot: Vec<usize>,
    /// Per example: weight, label (1 spam / 0 ham), score from the rules not fitted.
    weight: Vec<f64>,
    label: Vec<f64>,
    offset: Vec<f64>,
    /// Per fitted rule: bounds and the diagonal majoriser of the Hessian.
    lo: Vec<f64>,
    hi: Vec<f64>,
    diag: Vec<f64>,
    /// The L2 penalty per unit of weight.
    ridge: f64,
    total_weight: f64,
    sharpness: f64,
    threshold: f64,
}

/// Fits the scores of `rules` to `examples`.
pub fn fit(rules: &[Rule], examples: &[Example], params: &Params) -> Result<Fit, FitError> {
    check(rules, examples, params)?;
    let mut hits = vec![0usize; rules.len()];
    for e in examples {
        for &(i, x) in &e.hits {
            if x > 0.0 {
                hits[i] += 1;
            }
        }
    }
    let mut scores = vec![0.0; rules.len()];
    let mut origins = vec![Origin::Kept; rules.len()];
    for (i, rule) in rules.iter().enumerate() {
        if let Some(v) = rule.fixed {
            scores[i] = v;
            origins[i] = Origin::Fixed;
        } else if hits[i] < params.min_hits.max(1) {
            scores[i] = rule.current;
        } else {
            origins[i] = Origin::Fitted;
        }
    }
    let problem = Problem::new(rules, examples, params, &scores, &origins);
    let (free, iterations, loss) = problem.minimise(params);
    for (i, &k) in problem.slot.iter().enumerate() {
        if let Some(&v) = free.get(k) {
            scores[i] = v;
        }
    }
    Ok(Fit {
        scores,
        origins,
        hits,
        iterations,
        loss,
    })
}

impl<'a> Problem<'a> {
    fn new(
        rules: &[Rule],
        examples: &'a [Example],
        params: &Params,
        scores: &[f64],
        origins: &[Origin],
    ) -> Problem<'a> {
        let mut slot = vec![usize::MAX; rules.len()];
        let mut lo = Vec::new();
        let mut hi = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            if origins[i] == Origin::Fitted {
                slot[i] = lo.len();
                let (l, h) = bounds(rule, params);
                lo.push(l);
                hi.push(h);
            }
        }
        let weight: Vec<f64> = examples
            .iter()
            .map(|e| if e.spam { 1.0 } else { params.ham_weight })
            .collect();
        let label = examples
            .iter()
            .map(|e| f64::from(u8::from(e.spam)))
            .collect();
        let offset = examples
            .iter()
            .map(|e| {
                e.hits
                    .iter()
                    .filter(|(i, _)| slot[*i] == usize::MAX)
                    .map(|&(i, x)| scores[i] * x)
                    .sum()
            })
            .collect();
        let total_weight: f64 = weight.iter().sum();
        let a2 = params.sharpness * params.sharpness / 4.0;
        let ridge = 2.0 * params.l2 / total_weight;
        let mut diag = vec![ridge; lo.len()];
        for (j, e) in examples.iter().enumerate() {
            let n: f64 = e
                .hits
                .iter()
                .filter(|(i, _)| slot[*i] != usize::MAX)
                .map(|(_, x)| x.abs())
                .sum();
            for &(i, x) in &e.hits {
                if let Some(d) = diag.get_mut(slot[i]) {
                    *d += a2 * weight[j] * x.abs() * n / total_weight;
                }
            }
        }
        for d in &mut diag {
            // A floor keeps the step finite for a rule with neither hits nor penalty.
            *d = d.max(1e-12);
        }
        Problem {
            examples,
            slot,
            weight,
            label,
            offset,
            lo,
            hi,
            diag,
            ridge: params.l2 / total_weight,
            total_weight,
            sharpness: params.sharpness,
            threshold: params.threshold,
        }
    }

    /// Each example's logit `α·(Σ s·x + offset − threshold)` at the fitted scores `s`.
    fn logits(&self, s: &[f64]) -> Vec<f64> {
        self.examples
            .iter()
            .zip(&self.offset)
            .map(|(e, &off)| {
                let sum: f64 = e
                    .hits
                    .iter()
                    .filter_map(|&(i, x)| s.get(self.slot[i]).map(|v| v * x))
                    .sum();
                self.sharpness * (sum + off - self.threshold)
            })
            .collect()
    }

    /// The objective and its gradient at `s`.
    fn objective(&self, s: &[f64]) -> (f64, Vec<f64>) {
        let z = self.logits(s);
        let mut loss = 0.0;
        let mut grad: Vec<f64> = s.iter().map(|v| 2.0 * self.ridge * v).collect();
        for (j, e) in self.examples.iter().enumerate() {
            let (w, y) = (self.weight[j] / self.total_weight, self.label[j]);
            // log(1 + e^z) − y·z, computed without overflow.
            let softplus = z[j].max(0.0) + (-z[j].abs()).exp().ln_1p();
            loss += w * (softplus - y * z[j]);
            let residual = w * (sigmoid(z[j]) - y) * self.sharpness;
            for &(i, x) in &e.hits {
                if let Some(g) = grad.get_mut(self.slot[i]) {
                    *g += residual * x;
                }
            }
        }
        loss += self.ridge * s.iter().map(|v| v * v).sum::<f64>();
        (loss, grad)
    }

    /// One projected, preconditioned gradient step from `y`.
    fn step(&self, y: &[f64], grad: &[f64]) -> Vec<f64> {
        (0..y.len())
            .map(|k| (y[k] - grad[k] / self.diag[k]).clamp(self.lo[k], self.hi[k]))
            .collect()
    }

    /// FISTA with restart from all-zero scores: (scores, iterations, final objective).
    fn minimise(&self, params: &Params) -> (Vec<f64>, usize, f64) {
        let mut s = vec![0.0; self.lo.len()];
        let (mut loss, _) = self.objective(&s);
        if s.is_empty() {
            return (s, 0, loss);
        }
        let mut y = s.clone();
        let mut t = 1.0f64;
        for iteration in 1..=params.max_iterations {
            let (_, grad) = self.objective(&y);
            let next = self.step(&y, &grad);
            let (next_loss, _) = self.objective(&next);
            if next_loss > loss {
                // Momentum overshot: restart from the last iterate with a plain step.
                t = 1.0;
                y.clone_from(&s);
                continue;
            }
            let moved = next
                .iter()
                .zip(&s)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            let t_next = (1.0 + (1.0 + 4.0 * t * t).sqrt()) / 2.0;
            let beta = (t - 1.0) / t_next;
            y = next
                .iter()
                .zip(&s)
                .enumerate()
                .map(|(k, (a, b))| (a + beta * (a - b)).clamp(self.lo[k], self.hi[k]))
                .collect();
            s = next;
            loss = next_loss;
            t = t_next;
            if moved < params.tolerance {
                return (s, iteration, loss);
            }
        }
        (s, params.max_iterations, loss)
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// The score of one example under `scores`.
pub fn score(scores: &[f64], example: &Example) -> f64 {
    example
        .hits
        .iter()
        .map(|&(i, x)| scores.get(i).copied().unwrap_or(0.0) * x)
        .sum()
}

/// Which fold (0..k) each example is in: within each group (spam, each ham corpus) the
/// examples are taken in the order given and dealt round-robin, so every fold holds about
/// 1/k of every group. No randomness: the same input always gives the same folds.
pub fn folds(groups: &[usize], k: usize) -> Vec<usize> {
    let k = k.max(1);
    let mut seen: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    groups
        .iter()
        .map(|g| {
            let n = seen.entry(*g).or_insert(0);
            let fold = *n % k;
            *n += 1;
            fold
        })
        .collect()
}

/// Flagged counts of one group of messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub messages: usize,
    /// Scored at or above the threshold.
    pub flagged: usize,
}

impl Tally {
    /// `flagged / messages` in percent (0 for an empty group).
    pub fn percent(&self) -> f64 {
        if self.messages == 0 {
            0.0
        } else {
            100.0 * self.flagged as f64 / self.messages as f64
        }
    }

    fn add(&mut self, other: Tally) {
        self.messages += other.messages;
        self.flagged += other.flagged;
    }
}

/// Cross-validation: per fold, the tallies of each group on the fold's held-out messages
/// when fitted on the other folds; and the same pooled over all folds.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossValidation {
    /// `per_fold[f][g]`: group g in fold f.
    pub per_fold: Vec<Vec<Tally>>,
    /// `pooled[g]`: group g over all folds (each message scored once, by the fit that did
    /// not see it).
    pub pooled: Vec<Tally>,
}

/// k-fold cross-validation of [`fit`]: `groups[j]` is example j's group (0..n_groups); the
/// folds come from [`folds`]. No example is in both the fitting and the scoring half.
pub fn cross_validate(
    rules: &[Rule],
    examples: &[Example],
    groups: &[usize],
    k: usize,
    params: &Params,
) -> Result<CrossValidation, FitError> {
    let n_groups = groups.iter().copied().max().map_or(0, |g| g + 1);
    let fold_of = folds(groups, k);
    let mut per_fold = Vec::new();
    let mut pooled = vec![Tally::default(); n_groups];
    for f in 0..k.max(1) {
        let train: Vec<Example> = examples
            .iter()
            .zip(&fold_of)
            .filter(|(_, fold)| **fold != f)
            .map(|(e, _)| e.clone())
            .collect();
        let fitted = fit(rules, &train, params)?;
        let mut tallies = vec![Tally::default(); n_groups];
        for ((e, fold), &g) in examples.iter().zip(&fold_of).zip(groups) {
            if *fold != f {
                continue;
            }
            tallies[g].messages += 1;
            if score(&fitted.scores, e) >= params.threshold {
                tallies[g].flagged += 1;
            }
        }
        for (p, t) in pooled.iter_mut().zip(&tallies) {
            p.add(*t);
        }
        per_fold.push(tallies);
    }
    Ok(CrossValidation { per_fold, pooled })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, nice: bool) -> Rule {
        Rule {
            name: name.to_string(),
            nice,
            fixed: None,
            current: 1.0,
        }
    }

    fn ex(spam: bool, hits: &[usize]) -> Example {
        Example {
            hits: hits.iter().map(|&i| (i, 1.0)).collect(),
            spam,
        }
    }

    /// Rules 0 and 1 hit spam only, 2 hits ham only (nice), 3 hits everything.
    fn toy(n: usize) -> (Vec<Rule>, Vec<Example>) {
        let rules = vec![
            rule("SPAMMY_A", false),
            rule("SPAMMY_B", false),
            rule("HAMMY", true),
            rule("EVERYWHERE", false),
        ];
        let mut examples = Vec::new();
        for _ in 0..n {
            examples.push(ex(true, &[0, 1, 3]));
            examples.push(ex(false, &[2, 3]));
            examples.push(ex(false, &[3]));
        }
        (rules, examples)
    }

    #[test]
    fn separable_data_gets_scores_that_separate() {
        let (rules, examples) = toy(50);
        let params = Params::default();
        let fit = fit(&rules, &examples, &params).expect("fit");
        for e in &examples {
            let s = score(&fit.scores, e);
            assert_eq!(s >= params.threshold, e.spam, "{s} {e:?} {:?}", fit.scores);
        }
        assert!(
            fit.scores[0] > 2.0 && fit.scores[1] > 2.0,
            "{:?}",
            fit.scores
        );
        assert!(fit.scores[2] < 0.0, "{:?}", fit.scores);
        // A rule that hits everything says little: it scores below the spam-only ones.
        assert!(fit.scores[3] < fit.scores[0] / 2.0, "{:?}", fit.scores);
        assert!(fit.origins.iter().all(|o| *o == Origin::Fitted));
        assert_eq!(fit.hits, [50, 50, 50, 150]);
    }

    #[test]
    fn no_score_exceeds_the_caps() {
        let (rules, examples) = toy(200);
        let params = Params {
            cap: 2.0,
            nice_cap: 0.25,
            l2: 0.0,
            ..Params::default()
        };
        let fit = fit(&rules, &examples, &params).expect("fit");
        for (r, s) in rules.iter().zip(&fit.scores) {
            let (lo, hi) = if r.nice { (-0.25, 0.0) } else { (0.0, 2.0) };
            assert!((lo..=hi).contains(s), "{}: {s}", r.name);
        }
        // Unpenalised and separable, the spam rules are pushed to the cap.
        assert!((fit.scores[0] - 2.0).abs() < 1e-9, "{:?}", fit.scores);
        assert!((fit.scores[2] + 0.25).abs() < 1e-9, "{:?}", fit.scores);
    }

    #[test]
    fn only_nice_rules_go_below_zero() {
        // HAM_ONLY hits only ham but is not nice: it must stay at 0. NICE_SPAM is nice but
        // hits spam: it must not go above 0.
        let rules = vec![
            rule("SPAM_ONLY", false),
            rule("HAM_ONLY", false),
            rule("NICE_SPAM", true),
        ];
        let mut examples = Vec::new();
        for _ in 0..40 {
            examples.push(ex(true, &[0, 2]));
            examples.push(ex(false, &[1]));
        }
        let fit = fit(&rules, &examples, &Params::default()).expect("fit");
        assert!(fit.scores[0] > 0.0, "{:?}", fit.scores);
        assert_eq!(fit.scores[1], 0.0);
        assert_eq!(fit.scores[2], 0.0);
    }

    #[test]
    fn fixed_rules_keep_their_score_and_rare_rules_are_kept() {
        let (mut rules, mut examples) = toy(30);
        rules.push(Rule {
            name: "GTUBE".into(),
            nice: false,
            fixed: Some(1000.0),
            current: 1000.0,
        });
        rules.push(Rule {
            name: "RARE".into(),
            nice: false,
            fixed: None,
            current: 7.5,
        });
        // GTUBE on ham would drag any fitted score; fixed, it stays and only shifts the sum.
        examples.push(ex(false, &[4, 3]));
        examples.push(ex(true, &[5]));
        let params = Params::default();
        let fit = fit(&rules, &examples, &params).expect("fit");
        assert_eq!(fit.scores[4], 1000.0);
        assert_eq!(fit.origins[4], Origin::Fixed);
        // One hit < min_hits: the current score, unchanged.
        assert_eq!(fit.origins[5], Origin::Kept);
        assert_eq!(fit.scores[5], 7.5);
    }

    #[test]
    fn fits_and_folds_are_deterministic() {
        let (rules, mut examples) = toy(20);
        // Some overlap, so the optimum is interior and iterations matter.
        examples.push(ex(false, &[0, 3]));
        examples.push(ex(true, &[3]));
        let a = fit(&rules, &examples, &Params::default()).expect("fit");
        let b = fit(&rules, &examples, &Params::default()).expect("fit");
        assert_eq!(a, b);
        assert!(a.iterations < Params::default().max_iterations, "converged");
        let groups = [0, 0, 1, 0, 1, 1, 2];
        assert_eq!(folds(&groups, 2), [0, 1, 0, 0, 1, 0, 0]);
        assert_eq!(folds(&groups, 2), folds(&groups, 2));
    }

    #[test]
    fn cross_validation_scores_every_message_once_by_a_fit_that_did_not_see_it() {
        let (rules, examples) = toy(25);
        let groups: Vec<usize> = examples.iter().map(|e| usize::from(!e.spam)).collect();
        let cv = cross_validate(&rules, &examples, &groups, 5, &Params::default()).expect("cv");
        assert_eq!(cv.per_fold.len(), 5);
        assert_eq!(cv.pooled[0].messages, 25);
        assert_eq!(cv.pooled[1].messages, 50);
        assert_eq!(cv.pooled[0].flagged, 25);
        assert_eq!(cv.pooled[1].flagged, 0);
        for fold in &cv.per_fold {
            assert_eq!(fold[0].messages, 5);
            assert_eq!(fold[1].messages, 10);
        }
    }

    #[test]
    fn one_class_and_bad_input_are_errors() {
        let rules = vec![rule("A", false)];
        let spam_only = vec![ex(true, &[0])];
        assert_eq!(
            fit(&rules, &spam_only, &Params::default()),
            Err(FitError::OneClass { spam: 1, ham: 0 })
        );
        let bad = vec![ex(true, &[3]), ex(false, &[])];
        assert_eq!(
            fit(&rules, &bad, &Params::default()),
            Err(FitError::BadRuleIndex(3))
        );
        let params = Params {
            ham_weight: 0.0,
            ..Params::default()
        };
        assert!(matches!(
            fit(&rules, &[ex(true, &[0]), ex(false, &[])], &params),
            Err(FitError::BadParam(_))
        ));
    }
}
