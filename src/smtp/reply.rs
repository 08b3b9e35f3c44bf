//! SMTP replies: the type, its wire form, and every reply mailwarden itself gives, in one place.
//!
//! Replies relayed from the upstream keep their code, enhanced code and text exactly
//! (`Reply::from_lines`); our own carry an enhanced status code (RFC 3463, RFC 2034) on every
//! line, so a client that logs only one line still sees it.

use std::fmt;

/// One SMTP reply, possibly multi-line (RFC 5321 §4.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    /// The text of each line, after `NNN-` / `NNN `; includes the enhanced code if any.
    lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: &str, text: impl fmt::Display) -> Reply {
        Reply {
            code,
            lines: vec![format!("{enhanced} {text}")],
        }
    }

    /// A reply whose lines are given verbatim (already carrying any enhanced code).
    pub fn from_lines(code: u16, lines: Vec<String>) -> Reply {
        let lines = if lines.is_empty() {
            vec![String::new()]
        } else {
            lines
        };
        Reply { code, lines }
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    /// 2 = success, 3 = intermediate, 4 = transient failure, 5 = permanent failure.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    pub fn is_positive(&self) -> bool {
        self.class() == 2
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The enhanced status code of the first line, if it has one.
    pub fn enhanced_code(&self) -> Option<&str> {
        let first = self.lines.first()?;
        let word = first.split(' ').next()?;
        let mut parts = word.split('.');
        let ok = parts.next().is_some_and(|c| matches!(c, "2" | "4" | "5"))
            && parts.clone().count() == 2
            && parts
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then_some(word)
    }

    /// Appends the wire form (`NNN-text` CRLF ... `NNN text` CRLF) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{}{}\r\n", self.code, sep, line).as_bytes());
        }
    }

    /// The whole reply on one line, for logs.
    pub fn summary(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

// --- The replies we give ourselves. ---

pub fn greeting(hostname: &str) -> Reply {
    Reply::from_lines(220, vec![format!("{hostname} ESMTP mailwarden")])
}

pub fn closing(hostname: &str) -> Reply {
    Reply::new(221, "2.0.0", format!("{hostname} closing connection"))
}

pub fn ok() -> Reply {
    Reply::new(250, "2.0.0", "OK")
}

pub fn helo_ok(hostname: &str, client_helo: &str) -> Reply {
    Reply::from_lines(250, vec![format!("{hostname} greets {client_helo}")])
}

pub fn sender_ok() -> Reply {
    Reply::new(250, "2.1.0", "Sender OK")
}

pub fn recipient_ok() -> Reply {
    Reply::new(250, "2.1.5", "Recipient OK")
}

pub fn start_data() -> Reply {
    // RFC 2034 §3: 354 carries no enhanced status code.
    Reply::from_lines(354, vec!["End data with <CR><LF>.<CR><LF>".to_string()])
}

pub fn chunk_ok(size: usize) -> Reply {
    Reply::new(250, "2.0.0", format!("{size} octets received"))
}

pub fn reset_ok() -> Reply {
    Reply::new(250, "2.0.0", "Reset state")
}

pub fn vrfy() -> Reply {
    Reply::new(
        252,
        "2.5.0",
        "Cannot VRFY user, but will accept message and attempt delivery",
    )
}

/// RFC 5321 §4.1.1.8: the commands this session accepts — STARTTLS only where the EHLO reply
/// would offer it (`[tls]` configured, not in TLS yet).
pub fn help(starttls: bool) -> Reply {
    let commands = "EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP";
    let text = if starttls {
        format!("mailwarden: {commands} STARTTLS")
    } else {
        format!("mailwarden: {commands}")
    };
    Reply::new(214, "2.0.0", text)
}

pub fn ready_tls() -> Reply {
    Reply::new(220, "2.0.0", "Ready to start TLS")
}

pub fn accepted(queue_id: &str) -> Reply {
    Reply::new(250, "2.0.0", format!("Ok: queued as {queue_id}"))
}

pub fn syntax_error(what: &str) -> Reply {
    Reply::new(500, "5.5.2", format!("Syntax error: {what}"))
}

pub fn unknown_command() -> Reply {
    Reply::new(500, "5.5.1", "Command unrecognized")
}

pub fn not_implemented(cmd: &str) -> Reply {
    Reply::new(502, "5.5.1", format!("{cmd} not implemented"))
}

pub fn bad_arguments(what: &str) -> Reply {
    Reply::new(501, "5.5.4", what)
}

pub fn bad_address(what: &str) -> Reply {
    Reply::new(501, "5.1.7", what)
}

pub fn bad_parameter(what: &str) -> Reply {
    Reply::new(555, "5.5.4", what)
}

pub fn bad_sequence(what: &str) -> Reply {
    Reply::new(503, "5.5.1", what)
}

pub fn line_too_long(limit: usize) -> Reply {
    Reply::new(
        500,
        "5.5.2",
        format!("Line too long (limit {limit} octets incl. CRLF, RFC 5321 4.5.3.1)"),
    )
}

pub fn text_line_too_long(limit: usize) -> Reply {
    Reply::new(
        500,
        "5.5.2",
        format!("Message has a line longer than {limit} octets incl. CRLF (RFC 5321 4.5.3.1.6)"),
    )
}

pub fn bare_newline(kind: &str) -> Reply {
    Reply::new(
        550,
        "5.5.2",
        format!("Error: bare {kind} received; lines must end with <CR><LF> (RFC 5321 2.3.8)"),
    )
}

pub fn message_too_big(limit: usize) -> Reply {
    Reply::new(
        552,
        "5.3.4",
        format!("Message size exceeds fixed maximum message size of {limit} bytes"),
    )
}

pub fn too_many_recipients() -> Reply {
    Reply::new(452, "4.5.3", "Too many recipients")
}

pub fn timeout(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.4.2",
        format!("{hostname} Error: timeout exceeded, closing connection"),
    )
}

pub fn too_many_sessions(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{hostname} Too many concurrent sessions, try again later"),
    )
}

pub fn too_many_sessions_from_ip(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{hostname} Too many concurrent sessions from your address, try again later"),
    )
}

pub fn shutting_down(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.3.2",
        format!("{hostname} Service shutting down, try again later"),
    )
}

pub fn tls_unavailable() -> Reply {
    Reply::new(454, "4.7.0", "TLS not available")
}

pub fn upstream_unavailable() -> Reply {
    Reply::new(
        451,
        "4.4.1",
        "Upstream mail server unavailable, try again later",
    )
}

pub fn upstream_lost() -> Reply {
    Reply::new(
        451,
        "4.4.2",
        "Connection to upstream mail server lost, try again later",
    )
}

pub fn upstream_misconfigured() -> Reply {
    Reply::new(
        451,
        "4.3.5",
        "Upstream mail server not configured for this proxy, try again later",
    )
}

pub fn local_error() -> Reply {
    Reply::new(451, "4.3.0", "Local error in processing, try again later")
}

/// Greylisted (RFC 6647 §2.1: a temporary failure a real MTA retries). `retry_in` seconds.
pub fn greylisted(retry_in_secs: u64) -> Reply {
    Reply::new(
        451,
        "4.7.1",
        format!(
            "Greylisted: please retry in {retry_in_secs} seconds (RFC 6647); a legitimate server retries by itself"
        ),
    )
}

/// A `[[ratelimit]]` with `action = "tempfail"` is exhausted.
pub fn rate_limited(name: &str, retry_in_secs: u64) -> Reply {
    Reply::new(
        451,
        "4.7.0",
        format!("Rate limit {name} exceeded, try again in {retry_in_secs} seconds"),
    )
}

/// A `[[ratelimit]]` with `action = "reject"` is exhausted.
pub fn rate_limit_rejected(name: &str) -> Reply {
    Reply::new(550, "5.7.1", format!("Rate limit {name} exceeded"))
}

/// The state store (Redis) cannot answer and `[state] on_error = "tempfail"`.
pub fn state_unavailable() -> Reply {
    Reply::new(
        451,
        "4.3.0",
        "Temporary local problem (state store), try again later",
    )
}

pub fn no_valid_recipients() -> Reply {
    Reply::new(554, "5.5.1", "No valid recipients")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        let mut out = Vec::new();
        r.write_to(&mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn single_line_with_enhanced_code() {
        assert_eq!(wire(&sender_ok()), "250 2.1.0 Sender OK\r\n");
        assert_eq!(sender_ok().enhanced_code(), Some("2.1.0"));
    }

    #[test]
    fn multi_line_uses_dash_until_last() {
        let r = Reply::from_lines(250, vec!["a".into(), "b".into(), "c".into()]);
        assert_eq!(wire(&r), "250-a\r\n250-b\r\n250 c\r\n");
    }

    #[test]
    fn start_data_has_no_enhanced_code() {
        assert_eq!(
            wire(&start_data()),
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        );
    }

    #[test]
    fn enhanced_code_detection() {
        let r = Reply::from_lines(550, vec!["5.1.1 <x@y>: Recipient address rejected".into()]);
        assert_eq!(r.enhanced_code(), Some("5.1.1"));
        let r = Reply::from_lines(550, vec!["No such user".into()]);
        assert_eq!(r.enhanced_code(), None);
    }
}
