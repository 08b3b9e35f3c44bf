//! `[rules]` and `[policy]`: which rule files are loaded, and what a score means.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// `[rules]`: the rule files and how they are run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Files and directories (every `*.cf` inside, in name order); later definitions win.
    pub paths: Vec<PathBuf>,
    /// Which of SpamAssassin's four score sets to use (0: no Bayes, no network tests).
    pub score_set: usize,
    /// Time budget for scanning one message; on overrun what finished counts and the
    /// symbol `SCAN_TIMEOUT` is added.
    pub scan_timeout_ms: u64,
    /// Watch the rule and list files and reload on change (SIGHUP always reloads).
    pub watch: bool,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            paths: vec![PathBuf::from("rules")],
            score_set: 0,
            scan_timeout_ms: 5000,
            watch: true,
        }
    }
}

/// What to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Relay as is (with `X-Spam-Flag: NO` headers).
    Accept,
    /// Relay with `X-Spam-Flag: YES` and the subject prefix.
    Tag,
    /// Keep in `policy.quarantine_dir`, do not relay; the client gets 250.
    Quarantine,
    /// Refuse for now (451 4.7.1); the client retries.
    Tempfail,
    /// Drop silently; the client gets 250 (logged).
    Discard,
    /// Refuse (550 5.7.1); the upstream never sees it.
    Reject,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Tag => "tag",
            Action::Quarantine => "quarantine",
            Action::Tempfail => "tempfail",
            Action::Discard => "discard",
            Action::Reject => "reject",
        }
    }
}

/// Thresholds that a recipient domain may override.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainPolicy {
    pub tag_score: Option<f64>,
    pub reject_score: Option<f64>,
    pub subject_prefix: Option<String>,
}

/// `[policy.rules.NAME]`: an action forced whenever that rule hits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleAction {
    pub action: Action,
}

/// With several recipients whose domains have different policies, which one applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MultiRecipient {
    /// The strictest action of all recipients' policies (default: one message, one fate).
    Strictest,
    /// The most lenient one.
    Lenient,
}

/// `[policy]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Score at or above which a message is tagged.
    pub tag_score: f64,
    /// Score at or above which a message is rejected (550 5.7.1 at end of data).
    pub reject_score: f64,
    /// Prefix added to the Subject of tagged messages, e.g. "[SPAM] " (empty: none).
    pub subject_prefix: String,
    /// If set, rejected and quarantined messages are stored here as ID.eml + ID.json.
    pub quarantine_dir: String,
    /// Name the rules that hit in the reject text (off: the sender learns only the score).
    pub reveal_rules: bool,
    pub multi_recipient: MultiRecipient,
    /// File of clients/senders whose mail is always accepted: one entry a line — an IP or
    /// CIDR, `user@domain`, or `@domain` / `domain` for a sender domain; `#` comments.
    pub allowlist: String,
    /// Same format; matching mail is rejected.
    pub denylist: String,
    /// Per recipient domain overrides: `[policy.domains."example.org"]`.
    pub domains: BTreeMap<String, DomainPolicy>,
    /// Per rule actions: `[policy.rules.GTUBE] action = "reject"`.
    pub rules: BTreeMap<String, RuleAction>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            tag_score: 5.0,
            reject_score: 15.0,
            subject_prefix: String::new(),
            quarantine_dir: String::new(),
            reveal_rules: false,
            multi_recipient: MultiRecipient::Strictest,
            allowlist: String::new(),
            denylist: String::new(),
            domains: BTreeMap::new(),
            rules: BTreeMap::new(),
        }
    }
}
