//! `[classifier]`: the statistical classifier that learns the site's own mail — where its model
//! is kept, when it starts to vote, and which messages it learns from by itself.
//!
//! On by default: an untrained model costs nothing and says nothing (no `BAYES_*` symbol until
//! `min_learns` spam and ham each have been learned), and `mailwarden learn` can start training
//! it at any time, also while `serve` runs.

use std::path::PathBuf;

use serde::Deserialize;

/// `[classifier]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Classify every message and add the `BAYES_*` band symbol.
    pub enabled: bool,
    /// The embedded model file (SQLite, relative to the working directory), or `"redis"`: the
    /// model lives in the shared state store (`[state] url`), learned once for every node.
    pub store: String,
    /// Spam and ham each that must have been learned before the classifier votes.
    pub min_learns: u64,
    /// Learn clear cases by itself: messages scoring at least `autolearn_spam` as spam,
    /// at most `autolearn_ham` as ham (the score without the classifier's own symbols).
    pub autolearn: bool,
    pub autolearn_spam: f64,
    pub autolearn_ham: f64,
    /// How often (seconds) a running `serve` looks for changes made by `mailwarden learn`.
    pub refresh_secs: u64,
    /// Learned-message digests kept (for "learning twice counts once" and `--forget`); the
    /// oldest are dropped beyond this.
    pub max_seen: u64,
    /// Most features the model holds (memory and file size are bounded by it: the default
    /// keeps the in-memory table at 2^20 entries, about 18 MiB, and the file near 20 MiB);
    /// beyond it the rarest, least recently learned features are dropped.
    pub max_tokens: u64,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            enabled: true,
            store: "classifier.db".to_string(),
            min_learns: 200,
            autolearn: true,
            autolearn_spam: 12.0,
            autolearn_ham: 0.1,
            refresh_secs: 2,
            max_seen: 500_000,
            max_tokens: 800_000,
        }
    }
}

impl ClassifierConfig {
    /// The model is kept in the shared state store (`store = "redis"`).
    pub fn uses_redis(&self) -> bool {
        self.store.trim() == "redis"
    }

    /// The embedded store's file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.store)
    }

    /// Every problem with the values, for start-up.
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled && self.store.trim().is_empty() {
            return Err(
                "classifier.store is empty: name the model file, e.g. store = \"classifier.db\" (or enabled = false)"
                    .into(),
            );
        }
        if self.enabled && self.store.starts_with("redis") && !self.uses_redis() {
            return Err(format!(
                "classifier.store = {:?}: write \"redis\" (the model in [state] url's Redis) or a file name such as \"classifier.db\"",
                self.store
            ));
        }
        if self.autolearn && self.autolearn_ham >= self.autolearn_spam {
            return Err(format!(
                "classifier.autolearn_ham ({}) must be below classifier.autolearn_spam ({})",
                self.autolearn_ham, self.autolearn_spam
            ));
        }
        if self.refresh_secs == 0 {
            return Err("classifier.refresh_secs must be at least 1".into());
        }
        if self.max_tokens < 10_000 {
            return Err("classifier.max_tokens must be at least 10000".into());
        }
        if self.max_seen < 1000 {
            return Err("classifier.max_seen must be at least 1000".into());
        }
        Ok(())
    }
}
