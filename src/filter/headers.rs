//! Header edits on the relayed message: the SpamAssassin-compatible result headers that
//! existing Sieve/procmail filters use, removal of incoming copies (so a sender cannot forge a
//! verdict), and the subject prefix. The body is never touched.

use super::policy::Decision;
use crate::config::Action;

/// The result headers we own; incoming copies are removed first.
pub const SPAM_HEADERS: [&str; 4] = [
    "X-Spam-Flag",
    "X-Spam-Score",
    "X-Spam-Level",
    "X-Spam-Status",
];

/// What to change in the header block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Field names to remove (case-insensitive), all occurrences.
    pub remove: Vec<String>,
    /// Complete fields to prepend (without final line ending; continuation lines joined with
    /// CRLF + tab), in order.
    pub add: Vec<String>,
    /// Added at the start of the first Subject (or as a new Subject if there is none).
    pub subject_prefix: Option<String>,
    /// Remove `Authentication-Results` fields claiming this authserv-id (ours: RFC 8601 §5),
    /// keep those of other hosts.
    pub remove_auth_results_for: Option<String>,
}

/// The X-Spam-* headers for a decision (SpamAssassin's format).
pub fn spam_headers(decision: &Decision, hits: &[&str]) -> Vec<String> {
    let spam = matches!(
        decision.action,
        Action::Tag | Action::Reject | Action::Quarantine | Action::Discard
    ) || decision.score >= decision.required;
    let yes_no = if spam { "Yes" } else { "No" };
    let stars = "*".repeat(decision.score.clamp(0.0, 50.0) as usize);
    let mut status = format!(
        "X-Spam-Status: {yes_no}, score={:.1} required={:.1}",
        decision.score, decision.required
    );
    let names: Vec<String> = hits
        .iter()
        .map(|h| {
            h.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .collect();
    let tests = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(",")
    };
    // Fold before "tests=" and then at commas, keeping lines under ~78 characters.
    status.push_str("\r\n\ttests=");
    let mut line_len = 7;
    for (i, part) in tests.split(',').enumerate() {
        if i > 0 {
            status.push(',');
            line_len += 1;
            if line_len + part.len() > 76 {
                status.push_str("\r\n\t");
                line_len = 1;
            }
        }
        status.push_str(part);
        line_len += part.len();
    }
    let mut out = vec![
        format!("X-Spam-Flag: {}", if spam { "YES" } else { "NO" }),
        format!("X-Spam-Score: {:.1}", decision.score),
    ];
    if !stars.is_empty() {
        out.push(format!("X-Spam-Level: {stars}"));
    }
    out.push(status);
    out
}

/// Applies `edits` to a message (CRLF or LF line endings) and returns the new message: the
/// operations [`plan`](super::header_ops::plan) makes of them, carried out as the MTA would.
/// (The front ends use the operations themselves; this states the edits' meaning for tests.)
#[cfg(test)]
pub fn apply(message: &[u8], edits: &HeaderEdits) -> Vec<u8> {
    super::header_ops::apply(message, &super::header_ops::plan(message, edits))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Edits for tests: names to remove, fields to add on top, a subject prefix.
    pub(in crate::filter) fn edits(
        remove: &[&str],
        add: &[&str],
        prefix: Option<&str>,
    ) -> HeaderEdits {
        HeaderEdits {
            remove: remove.iter().map(|s| s.to_string()).collect(),
            add: add.iter().map(|s| s.to_string()).collect(),
            subject_prefix: prefix.map(str::to_string),
            remove_auth_results_for: None,
        }
    }

    #[test]
    fn removes_only_our_authentication_results() {
        let msg = b"Authentication-Results: mx.example.test; dmarc=pass\r\n\theader.from=x\r\nAuthentication-Results: other.example; spf=fail\r\nFrom: a@b\r\n\r\nbody\r\n";
        let mut e = edits(
            &[],
            &["Authentication-Results: mx.example.test; spf=none"],
            None,
        );
        e.remove_auth_results_for = Some("mx.example.test".into());
        let out = apply(msg, &e);
        assert_eq!(
            out,
            b"Authentication-Results: mx.example.test; spf=none\r\nAuthentication-Results: other.example; spf=fail\r\nFrom: a@b\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn removes_forged_copies_with_their_continuations() {
        let msg = b"X-Spam-Flag: NO\r\nFrom: a@b\r\nX-Spam-Status: No,\r\n\ttests=none\r\nSubject: hi\r\n\r\nX-Spam-Flag: body stays\r\n";
        let out = apply(msg, &edits(&SPAM_HEADERS, &["X-Spam-Flag: YES"], None));
        assert_eq!(
            out,
            b"X-Spam-Flag: YES\r\nFrom: a@b\r\nSubject: hi\r\n\r\nX-Spam-Flag: body stays\r\n"
        );
    }

    #[test]
    fn subject_prefix_once() {
        let msg = b"Subject: hello\r\nSubject: second\r\n\r\nbody\r\n";
        let out = apply(msg, &edits(&[], &[], Some("[SPAM] ")));
        assert_eq!(
            out,
            b"Subject: [SPAM] hello\r\nSubject: second\r\n\r\nbody\r\n"
        );
        let again = apply(&out, &edits(&[], &[], Some("[SPAM] ")));
        assert_eq!(again, out, "no double prefix");
    }

    #[test]
    fn subject_added_when_missing() {
        let out = apply(
            b"From: a@b\r\n\r\nbody\r\n",
            &edits(&[], &[], Some("[SPAM] ")),
        );
        assert_eq!(out, b"From: a@b\r\nSubject: [SPAM]\r\n\r\nbody\r\n");
    }

    #[test]
    fn message_without_body_or_final_newline() {
        let out = apply(b"From: a@b", &edits(&[], &["X: 1"], None));
        assert_eq!(out, b"X: 1\r\nFrom: a@b");
    }

    #[test]
    fn status_header_format_and_folding() {
        let d = Decision {
            action: Action::Tag,
            score: 7.25,
            required: 5.0,
            reason: String::new(),
            forced_by: vec![],
            subject_prefix: None,
        };
        let many: Vec<String> = (0..20)
            .map(|i| format!("SOME_LONG_RULE_NAME_{i}"))
            .collect();
        let hits: Vec<&str> = many.iter().map(String::as_str).collect();
        let h = spam_headers(&d, &hits);
        assert_eq!(h[0], "X-Spam-Flag: YES");
        assert_eq!(h[1], "X-Spam-Score: 7.2");
        assert_eq!(h[2], "X-Spam-Level: *******");
        assert!(h[3].starts_with(
            "X-Spam-Status: Yes, score=7.2 required=5.0\r\n\ttests=SOME_LONG_RULE_NAME_0,"
        ));
        assert!(h[3].split("\r\n").all(|l| l.len() <= 80), "{}", h[3]);
    }

    #[test]
    fn hostile_rule_names_cannot_split_headers() {
        let d = Decision {
            action: Action::Accept,
            score: 0.0,
            required: 5.0,
            reason: String::new(),
            forced_by: vec![],
            subject_prefix: None,
        };
        let h = spam_headers(&d, &["EVIL\r\nBcc: x@y"]);
        assert!(!h.iter().any(|f| f.contains("Bcc: x")), "{h:?}");
    }
}
