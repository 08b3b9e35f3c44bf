//! The symbols mailwarden's own checks set on a message, in one list. No rule text defines
//! them (the sender checks, the client name lookup, the attachment policy, the virus scanner, the classifier and the
//! filter itself add them to the scan), so their `score` and `describe` lines in the rule
//! files stand alone — and `rules check` must not take those lines for typos. Block list
//! symbols are named in the config instead ([`from_config`]).

use crate::config::Config;

use super::{attachments, clamav, classifier, engine, rdns};

/// The sender authentication results (`filter::auth`): `SPF_<result>`, `SPF_HELO_<result>`,
/// DKIM, ARC and DMARC.
pub const AUTH: [&str; 29] = [
    "SPF_PASS",
    "SPF_FAIL",
    "SPF_SOFTFAIL",
    "SPF_NEUTRAL",
    "SPF_NONE",
    "SPF_TEMPERROR",
    "SPF_PERMERROR",
    "SPF_HELO_PASS",
    "SPF_HELO_FAIL",
    "SPF_HELO_SOFTFAIL",
    "SPF_HELO_NEUTRAL",
    "SPF_HELO_NONE",
    "SPF_HELO_TEMPERROR",
    "SPF_HELO_PERMERROR",
    "DKIM_VALID",
    "DKIM_VALID_AU",
    "DKIM_INVALID",
    "DKIM_NONE",
    "DKIM_TEMPERROR",
    "ARC_VALID",
    "ARC_INVALID",
    "ARC_NONE",
    "DMARC_PASS",
    "DMARC_REJECT",
    "DMARC_QUARANTINE",
    "DMARC_POLICY_NONE",
    "DMARC_NONE",
    "DMARC_TEMPERROR",
    "DMARC_PERMERROR",
];

/// The rest of the fixed ones: the filter's own, the virus scanner's (the client name
/// lookup's are in `rdns::SYMBOLS`).
const OTHERS: [&str; 7] = [
    engine::SYMBOL_MIME_MALFORMED,
    engine::SYMBOL_SCAN_TIMEOUT,
    engine::SYMBOL_ALLOWLIST,
    engine::SYMBOL_DENYLIST,
    clamav::SYMBOL_VIRUS_FOUND,
    clamav::SYMBOL_AV_FAIL,
    clamav::SYMBOL_AV_SKIPPED_SIZE,
];

/// Every symbol some check of mailwarden sets (block lists aside: see [`from_config`]);
/// the classifier's list holds its bands and `BAYES_FAIL`.
pub fn builtin() -> impl Iterator<Item = &'static str> {
    AUTH.iter()
        .chain(&OTHERS)
        .chain(&rdns::SYMBOLS)
        .chain(attachments::SYMBOLS)
        .chain(&classifier::SYMBOLS)
        .copied()
}

/// Whether one of mailwarden's checks sets `name`.
pub fn is_builtin(name: &str) -> bool {
    builtin().any(|s| s == name)
}

/// The symbols the config's `[[dnsbl]]` and `[[uribl]]` lists set.
pub fn from_config(config: &Config) -> Vec<String> {
    config
        .dnsbl
        .iter()
        .chain(&config.uribl)
        .map(|list| list.symbol.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::rules::{LoadOptions, RuleSet};
    use std::path::Path;

    /// The shipped rules score every built-in symbol, and every name they score is defined
    /// or built in: `rules check` on them has no "undefined rule" warning.
    #[test]
    fn shipped_rules_and_the_list_agree() {
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let set = match RuleSet::load(&[rules], &LoadOptions::default()) {
            Ok(set) => set,
            Err(report) => panic!("the shipped rules do not load: {:?}", report.errors),
        };
        for name in builtin() {
            assert!(
                set.score(name).is_some(),
                "no score line for {name} in rules/"
            );
        }
        let undefined: Vec<String> = set
            .report()
            .warnings
            .iter()
            .filter(|w| w.reason == "undefined rule")
            .map(|w| w.to_string())
            .collect();
        assert!(undefined.is_empty(), "{undefined:#?}");
        let mut all: Vec<&str> = builtin().collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a symbol is listed twice");
    }

    #[test]
    fn block_list_symbols_come_from_the_config() {
        let config = Config::parse(
            "[[dnsbl]]\nzone = \"zen.example.org\"\nsymbol = \"RBL_ZEN\"\n\
             [[uribl]]\nzone = \"dbl.example.org\"\nsymbol = \"URIBL_DBL\"\n",
            "m.toml",
        )
        .expect("config");
        assert_eq!(from_config(&config), ["RBL_ZEN", "URIBL_DBL"]);
        assert!(is_builtin("SPF_PASS") && is_builtin("BAYES_999") && !is_builtin("RBL_ZEN"));
    }
}
