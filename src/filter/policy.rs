//! Policy: from a score and the rules that hit to one action, per the admin's thresholds.
//!
//! - Score at or above `reject_score` → reject; at or above `tag_score` → tag; else accept.
//! - A recipient domain may have its own thresholds (`[policy.domains."example.org"]`). One
//!   message has one fate: with several recipients, the strictest of their actions applies
//!   (`multi_recipient = "lenient"` picks the mildest instead).
//! - A rule may force an action whenever it hits (`[policy.rules.GTUBE] action = "reject"`);
//!   the strictest of score action and forced actions wins.
//! - Allow/deny lists (client IP or CIDR, sender address, sender domain) decide before any
//!   scoring: allowed mail is accepted, denied mail rejected.
//!
//! Actions order from mild to strict: accept < tag < quarantine < tempfail < discard < reject.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use crate::config::{Action, MultiRecipient, PolicyConfig};

/// An allow or deny list, loaded from a file.
#[derive(Debug, Default, Clone)]
pub struct List {
    nets: Vec<IpNet>,
    addresses: HashSet<String>,
    domains: HashSet<String>,
}

impl List {
    /// Reads a list file; errors name file:line and say what a line may hold.
    pub fn load(path: &Path) -> Result<List, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read list: {e}", path.display()))?;
        let mut list = List::default();
        for (i, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            list.add(entry).map_err(|what| {
                format!(
                    "{}:{}: {what}: {entry:?} (expected an IP address, a CIDR like 192.0.2.0/24, user@domain, or @domain)",
                    path.display(),
                    i + 1
                )
            })?;
        }
        Ok(list)
    }

    fn add(&mut self, entry: &str) -> Result<(), &'static str> {
        if let Ok(net) = entry.parse::<IpNet>() {
            self.nets.push(net);
        } else if let Ok(ip) = entry.parse::<IpAddr>() {
            self.nets.push(IpNet::from(ip));
        } else if let Some(domain) = entry.strip_prefix('@') {
            if domain.is_empty() || domain.contains('@') {
                return Err("bad domain");
            }
            self.domains.insert(domain.to_ascii_lowercase());
        } else if entry.contains('@') {
            self.addresses.insert(entry.to_ascii_lowercase());
        } else if entry.contains('.') && !entry.contains(char::is_whitespace) {
            self.domains.insert(entry.to_ascii_lowercase());
        } else {
            return Err("not a valid entry");
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && self.addresses.is_empty() && self.domains.is_empty()
    }

    /// What matched (for logs and the reply), if anything.
    pub fn matches(&self, ip: Option<IpAddr>, sender: &str) -> Option<String> {
        if let Some(ip) = ip
            && let Some(net) = self.nets.iter().find(|n| n.contains(&ip))
        {
            return Some(format!("client {ip} in {net}"));
        }
        let sender = sender.to_ascii_lowercase();
        if !sender.is_empty() && self.addresses.contains(&sender) {
            return Some(format!("sender {sender}"));
        }
        let domain = sender.rsplit_once('@').map(|(_, d)| d)?;
        // The domain and its parents: "mail.example.org" matches an entry "example.org".
        let mut d = domain;
        loop {
            if self.domains.contains(d) {
                return Some(format!("sender domain {d}"));
            }
            d = d.split_once('.')?.1;
        }
    }
}

/// The decision for one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub action: Action,
    pub score: f64,
    /// The tag threshold of the policy that applied (SpamAssassin's `required`).
    pub required: f64,
    /// Why, for logs and (without rule names unless `reveal_rules`) the reply.
    pub reason: String,
    /// Rule names that forced the action, if any.
    pub forced_by: Vec<String>,
    /// Subject prefix to add when tagging.
    pub subject_prefix: Option<String>,
}

/// The configured policy with its lists loaded.
#[derive(Debug, Clone)]
pub struct Policy {
    pub config: PolicyConfig,
    allow: List,
    deny: List,
}

impl Policy {
    /// Loads the list files named in the config.
    pub fn new(config: PolicyConfig) -> Result<Policy, String> {
        let load = |path: &str| {
            if path.is_empty() {
                Ok(List::default())
            } else {
                List::load(Path::new(path))
            }
        };
        let allow = load(&config.allowlist)?;
        let deny = load(&config.denylist)?;
        Ok(Policy {
            config,
            allow,
            deny,
        })
    }

    /// The list decision, made before scanning: deny wins over allow.
    pub fn check_lists(&self, ip: Option<IpAddr>, sender: &str) -> Option<(Action, String)> {
        if let Some(what) = self.deny.matches(ip, sender) {
            return Some((Action::Reject, format!("denylist: {what}")));
        }
        self.allow
            .matches(ip, sender)
            .map(|what| (Action::Accept, format!("allowlist: {what}")))
    }

    /// Thresholds and prefix for one recipient address.
    fn thresholds(&self, recipient: Option<&str>) -> (f64, f64, String, String) {
        let c = &self.config;
        let domain = recipient
            .and_then(|r| r.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase());
        let over = domain
            .as_deref()
            .and_then(|d| c.domains.iter().find(|(k, _)| k.eq_ignore_ascii_case(d)));
        match over {
            Some((name, d)) => (
                d.tag_score.unwrap_or(c.tag_score),
                d.reject_score.unwrap_or(c.reject_score),
                d.subject_prefix
                    .clone()
                    .unwrap_or_else(|| c.subject_prefix.clone()),
                format!("policy for {name}"),
            ),
            None => (
                c.tag_score,
                c.reject_score,
                c.subject_prefix.clone(),
                "default policy".to_string(),
            ),
        }
    }

    /// Decides from the score and the names of the rules that hit.
    pub fn decide(&self, score: f64, hits: &[&str], recipients: &[String]) -> Decision {
        self.decide_with(score, hits, recipients, &|_| None)
    }

    /// Like `decide`, with the actions rule files force (`action NAME reject` in a .cf);
    /// `[policy.rules.NAME]` in the config takes precedence over them.
    pub fn decide_with(
        &self,
        score: f64,
        hits: &[&str],
        recipients: &[String],
        file_actions: &dyn Fn(&str) -> Option<Action>,
    ) -> Decision {
        let mut per_recipient: Vec<(Action, f64, f64, String, String)> = Vec::new();
        let targets: Vec<Option<&str>> = if recipients.is_empty() {
            vec![None]
        } else {
            recipients.iter().map(|r| Some(r.as_str())).collect()
        };
        for r in targets {
            let (tag, reject, prefix, name) = self.thresholds(r);
            let action = if score >= reject {
                Action::Reject
            } else if score >= tag {
                Action::Tag
            } else {
                Action::Accept
            };
            per_recipient.push((action, tag, reject, prefix, name));
        }
        let chosen = match self.config.multi_recipient {
            MultiRecipient::Strictest => per_recipient.iter().max_by_key(|p| p.0),
            MultiRecipient::Lenient => per_recipient.iter().min_by_key(|p| p.0),
        };
        let Some((mut action, tag, reject, prefix, name)) = chosen.cloned() else {
            return Decision {
                action: Action::Accept,
                score,
                required: self.config.tag_score,
                reason: "no policy".into(),
                forced_by: Vec::new(),
                subject_prefix: None,
            };
        };
        let mut reason = match action {
            Action::Reject => format!("score {score:.1} >= {reject:.1} ({name})"),
            Action::Tag => format!("score {score:.1} >= {tag:.1} ({name})"),
            _ => format!("score {score:.1} < {tag:.1} ({name})"),
        };
        let mut forced_by = Vec::new();
        for hit in hits {
            let forced = match self.config.rules.get(*hit) {
                Some(rule) => Some(rule.action),
                None => file_actions(hit),
            };
            if let Some(forced) = forced {
                forced_by.push(hit.to_string());
                if forced > action {
                    action = forced;
                    reason = format!("rule {hit} forces {}", forced.as_str());
                }
            }
        }
        Decision {
            action,
            score,
            required: tag,
            reason,
            forced_by,
            subject_prefix: (action == Action::Tag && !prefix.is_empty()).then_some(prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DomainPolicy, RuleAction};

    fn policy(f: impl FnOnce(&mut PolicyConfig)) -> Policy {
        let mut c = PolicyConfig::default();
        f(&mut c);
        Policy::new(c).expect("policy")
    }

    #[test]
    fn thresholds() {
        let p = policy(|_| {});
        assert_eq!(p.decide(4.9, &[], &[]).action, Action::Accept);
        assert_eq!(p.decide(5.0, &[], &[]).action, Action::Tag);
        assert_eq!(p.decide(15.0, &[], &[]).action, Action::Reject);
    }

    #[test]
    fn domain_override_and_strictest_recipient() {
        let p = policy(|c| {
            c.domains.insert(
                "strict.example".into(),
                DomainPolicy {
                    tag_score: Some(2.0),
                    reject_score: Some(6.0),
                    subject_prefix: Some("[SPAM] ".into()),
                },
            );
        });
        let rcpts = vec![
            "a@lenient.example".to_string(),
            "b@STRICT.example".to_string(),
        ];
        let d = p.decide(7.0, &[], &rcpts);
        assert_eq!(d.action, Action::Reject);
        assert!(d.reason.contains("strict.example"), "{}", d.reason);
        let d = p.decide(3.0, &[], &rcpts);
        assert_eq!(
            (d.action, d.subject_prefix.as_deref()),
            (Action::Tag, Some("[SPAM] "))
        );
        let p = policy(|c| {
            c.multi_recipient = MultiRecipient::Lenient;
            c.domains.insert(
                "strict.example".into(),
                DomainPolicy {
                    tag_score: Some(2.0),
                    reject_score: Some(6.0),
                    subject_prefix: None,
                },
            );
        });
        assert_eq!(p.decide(7.0, &[], &rcpts).action, Action::Tag);
    }

    #[test]
    fn rule_forces_action() {
        let p = policy(|c| {
            c.rules.insert(
                "GTUBE".into(),
                RuleAction {
                    action: Action::Reject,
                },
            );
        });
        let d = p.decide(1.0, &["GTUBE"], &[]);
        assert_eq!(d.action, Action::Reject);
        assert_eq!(d.forced_by, vec!["GTUBE".to_string()]);
    }

    #[test]
    fn lists_match_ip_address_and_domain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("allow.txt");
        std::fs::write(&path, "# trusted\n192.0.2.0/24\nboss@example.org\n@partner.example\nvendor.example # comment\n").expect("write");
        let list = List::load(&path).expect("load");
        assert!(
            list.matches(Some("192.0.2.9".parse().expect("ip")), "")
                .is_some()
        );
        assert!(list.matches(None, "Boss@Example.org").is_some());
        assert!(list.matches(None, "x@mail.partner.example").is_some());
        assert!(list.matches(None, "x@vendor.example").is_some());
        assert!(
            list.matches(Some("198.51.100.1".parse().expect("ip")), "x@other.example")
                .is_none()
        );
    }

    #[test]
    fn bad_list_line_names_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("deny.txt");
        std::fs::write(&path, "192.0.2.1\nnot an entry\n").expect("write");
        let err = List::load(&path).expect_err("bad line");
        assert!(err.contains("deny.txt:2:"), "{err}");
    }

    #[test]
    fn deny_wins_over_allow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let allow = dir.path().join("a");
        let deny = dir.path().join("d");
        std::fs::write(&allow, "@example.org\n").expect("write");
        std::fs::write(&deny, "spammer@example.org\n").expect("write");
        let p = policy(|c| {
            c.allowlist = allow.display().to_string();
            c.denylist = deny.display().to_string();
        });
        assert_eq!(
            p.check_lists(None, "spammer@example.org").map(|x| x.0),
            Some(Action::Reject)
        );
        assert_eq!(
            p.check_lists(None, "friend@example.org").map(|x| x.0),
            Some(Action::Accept)
        );
        assert_eq!(p.check_lists(None, "x@else.example"), None);
    }
}
