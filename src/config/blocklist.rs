//! `[[dnsbl]]` and `[[uribl]]`: DNS block lists asked about the client's IP address and about
//! the domains of the message's links; one table layout, one validation, for both.

use std::net::Ipv4Addr;

use serde::Deserialize;

/// One `[[dnsbl]]` or `[[uribl]]` table: a block list zone and what a listing means.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockListConfig {
    /// The list's DNS zone, e.g. `"zen.spamhaus.org"`.
    pub zone: String,
    /// The rule symbol a listing sets, e.g. `"RBL_SPAMHAUS"` (`[A-Z0-9_]+`).
    pub symbol: String,
    /// The symbol's score; absent: the score a rule file gives it (0 without one).
    #[serde(default)]
    pub score: Option<f64>,
    /// The return codes that count as listed; empty (the default): any 127.0.0.0/8 answer
    /// except the `blocked_codes`.
    #[serde(default)]
    pub codes: Vec<Ipv4Addr>,
    /// Return codes meaning "query refused / blocked resolver" (the list refuses to answer us,
    /// e.g. over a public resolver): never a listing; logged once per list.
    #[serde(default = "default_blocked_codes")]
    pub blocked_codes: Vec<Ipv4Addr>,
}

/// Spamhaus' error codes: 127.255.255.252 (typing error in the zone), .254 (query through a
/// public/open resolver), .255 (excessive queries).
pub fn default_blocked_codes() -> Vec<Ipv4Addr> {
    (252..=255)
        .map(|d| Ipv4Addr::new(127, 255, 255, d))
        .collect()
}

impl BlockListConfig {
    /// Checks the zone, symbol and score; the error says what to write instead.
    pub fn validate(&self) -> Result<(), String> {
        let zone = self.zone.trim_end_matches('.');
        let zone_ok = zone.contains('.')
            && zone.len() <= 253
            && zone.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !zone_ok {
            return Err(format!(
                "zone {:?} is not a DNS zone (e.g. \"zen.spamhaus.org\")",
                self.zone
            ));
        }
        let symbol_ok = !self.symbol.is_empty()
            && self
                .symbol
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !symbol_ok {
            return Err(format!(
                "symbol {:?} must be upper-case letters, digits and '_' (e.g. \"RBL_SPAMHAUS\")",
                self.symbol
            ));
        }
        if let Some(score) = self.score
            && !score.is_finite()
        {
            return Err(format!("score {score} is not a number"));
        }
        if let Some(code) = self.codes.iter().find(|c| self.blocked_codes.contains(c)) {
            return Err(format!(
                "{code} is in both codes and blocked_codes; a blocked-resolver code is never a listing"
            ));
        }
        Ok(())
    }

    /// Whether the answer `code` means "listed".
    pub fn is_listed(&self, code: Ipv4Addr) -> bool {
        if self.is_blocked(code) {
            return false;
        }
        if self.codes.is_empty() {
            code.octets()[0] == 127
        } else {
            self.codes.contains(&code)
        }
    }

    /// Whether the answer `code` means "the list refused our query".
    pub fn is_blocked(&self, code: Ipv4Addr) -> bool {
        self.blocked_codes.contains(&code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(zone: &str, symbol: &str) -> BlockListConfig {
        BlockListConfig {
            zone: zone.into(),
            symbol: symbol.into(),
            score: Some(1.0),
            codes: Vec::new(),
            blocked_codes: default_blocked_codes(),
        }
    }

    #[test]
    fn zone_and_symbol_validation() {
        assert!(list("zen.spamhaus.org", "RBL_SPAMHAUS").validate().is_ok());
        assert!(list("bl.test.", "X_1").validate().is_ok());
        for zone in ["", "zen", "a..b", "bad zone.org", "-a.org"] {
            let e = list(zone, "X").validate().expect_err(zone);
            assert!(e.contains("zone"), "{e}");
        }
        for symbol in ["", "rbl", "RBL-X", "RBL X"] {
            let e = list("bl.test", symbol).validate().expect_err(symbol);
            assert!(e.contains("symbol"), "{e}");
        }
    }

    #[test]
    fn codes_listed_and_blocked() {
        let mut l = list("bl.test", "X");
        assert!(l.is_listed(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(l.is_listed(Ipv4Addr::new(127, 0, 0, 11)));
        assert!(!l.is_listed(Ipv4Addr::new(10, 0, 0, 2)));
        assert!(!l.is_listed(Ipv4Addr::new(127, 255, 255, 254)));
        assert!(l.is_blocked(Ipv4Addr::new(127, 255, 255, 252)));
        l.codes = vec![Ipv4Addr::new(127, 0, 0, 3)];
        assert!(!l.is_listed(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(l.is_listed(Ipv4Addr::new(127, 0, 0, 3)));
        l.codes = vec![Ipv4Addr::new(127, 255, 255, 255)];
        assert!(l.validate().is_err());
    }
}
