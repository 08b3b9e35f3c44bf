//! What the filter found and did for one message, kept for the per-message log line and
//! counted in the metrics.
//!
//! The filter fills a [`Findings`] as it goes (each stage's time, the score, the rules that
//! hit, the sender checks, the virus scan) and hands it over with the verdict; the front end
//! adds what only it knows (the upstream's reply) and calls [`transaction`], which writes the
//! one line every transaction ends with — relayed, refused by the filter, refused before a
//! verdict (too big, a long line, a bare newline) or abandoned by the client — and counts
//! it. Counting happens here, once per transaction, so the metrics and the log line cannot
//! disagree.

use std::time::Duration;

use super::auth::AuthResults;
use super::blocklist::ListHit;
use super::clamav;
use super::verdict::Verdict;
use crate::envelope::Envelope;
use crate::metrics::metrics;
use crate::smtp::reply::Reply;

/// How a transaction ended, for its log line and count.
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    /// The filter gave a verdict; `kept`: the filter kept or dropped the message (quarantine,
    /// discard, MTA hold) instead of letting it through.
    Verdict { verdict: &'a Verdict, kept: bool },
    /// Refused before any check ran: the message broke a protocol limit.
    Refused(Refusal),
    /// The client (or the MTA) ended the transaction before the end of data: RSET, QUIT, a
    /// new EHLO, a closed connection, a timeout, or no recipient accepted.
    Abandoned(&'static str),
}

/// Why a message was refused before the filter saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooBig,
    LineTooLong,
    BareNewline,
    /// The upstream refused the sender (MAIL) — the transaction never started there.
    SenderRefused,
    /// A check at MAIL refused it (`filter::stage`).
    Policy,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::TooBig => "too-big",
            Refusal::LineTooLong => "line-too-long",
            Refusal::BareNewline => "bare-newline",
            Refusal::SenderRefused => "sender-refused",
            Refusal::Policy => "policy",
        }
    }
}

/// One finished transaction, as the front end saw it.
#[derive(Debug, Clone, Copy)]
pub struct Transaction<'a> {
    /// The front end's session (connection) id.
    pub session: &'a str,
    pub envelope: &'a Envelope,
    /// The message's size in bytes (0 when none was received).
    pub size: usize,
    pub ending: Ending<'a>,
    /// What the client was told at the end (`None`: nothing, e.g. the client vanished).
    pub reply: Option<&'a Reply>,
}

/// Writes the transaction's one log line and counts it. No message content.
pub fn transaction(t: &Transaction<'_>) {
    let m = metrics();
    let r = t.reply;
    let positive = r.is_some_and(Reply::is_positive);
    let class = r.map_or(0, |r| r.code() / 100);
    let (action, outcome, verdict) = match t.ending {
        Ending::Verdict { verdict, kept } => {
            // A message the filter passed is what the upstream made of it.
            let action = match (verdict.findings.action, class, kept) {
                (_, 4, false) => "tempfail",
                (_, 5, false) => "reject",
                (a, _, _) => a,
            };
            let outcome = if !positive {
                "refused"
            } else if kept {
                "kept (not relayed)"
            } else {
                "relayed"
            };
            (action, outcome, Some(verdict))
        }
        Ending::Refused(why) => {
            m.transactions_refused
                .with_label_values(&[why.as_str()])
                .inc();
            let action = if class == 4 { "tempfail" } else { "reject" };
            (action, "refused before the checks", None)
        }
        Ending::Abandoned(why) => {
            m.transactions_abandoned.with_label_values(&[why]).inc();
            ("abandoned", why, None)
        }
    };
    if !matches!(t.ending, Ending::Abandoned(_)) {
        m.messages.with_label_values(&[action]).inc();
        m.message_size.observe(t.size as f64);
        m.message_recipients
            .observe(t.envelope.recipients.len() as f64);
    }
    let upstream_id = r
        .filter(|r| r.is_positive() && matches!(t.ending, Ending::Verdict { kept: false, .. }))
        .and_then(|r| r.lines().last())
        .and_then(|text| text.split("queued as ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("-");
    let recipients: Vec<&str> = t
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    let f = verdict.map(|v| &v.findings);
    let e = t.envelope;
    tracing::info!(
        session = %t.session,
        id = %e.id,
        client = %e.client.addr.ip(),
        client_name = %e.client.name.as_deref().unwrap_or("unknown"),
        helo = %e.client.helo.as_deref().unwrap_or("-"),
        from = %e.mail_from.address,
        rcpts = %if recipients.is_empty() { "-".to_string() } else { recipients.join(",") },
        size = t.size,
        action = %action,
        score = f.map_or(0.0, |f| f.score),
        rules = %f.filter(|f| !f.rules.is_empty()).map_or("-".to_string(), |f| f.rules.join(",")),
        auth = %f.filter(|f| !f.auth.is_empty()).map_or("-", |f| f.auth.as_str()),
        virus = %f.and_then(|f| f.virus.as_deref()).unwrap_or("-"),
        reply = %r.map_or("-".to_string(), |r| r.to_string()),
        upstream_id = %upstream_id,
        timings = %f.map_or("-".to_string(), |f| f.timings.log_value()),
        verdict = %verdict.map_or("-", |v| v.summary.as_str()),
        "message {outcome}"
    );
}

/// Time spent per stage; `None` for a stage that did not run.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub parse: Option<Duration>,
    pub rules: Option<Duration>,
    pub auth: Option<Duration>,
    /// The DNS block lists (`[[dnsbl]]`, `[[uribl]]`).
    pub dns: Option<Duration>,
    pub clamav: Option<Duration>,
    pub total: Duration,
}

impl Timings {
    /// `parse=0.3ms rules=1.2ms … total=2.0ms`, stages that ran only.
    pub fn log_value(&self) -> String {
        let stages = [
            ("parse", self.parse),
            ("rules", self.rules),
            ("auth", self.auth),
            ("dns", self.dns),
            ("clamav", self.clamav),
            ("total", Some(self.total)),
        ];
        stages
            .iter()
            .filter_map(|(name, d)| d.map(|d| format!("{name}={:.1}ms", d.as_secs_f64() * 1000.0)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What the filter found for one message.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// The filter's action: accept, tag, reject, tempfail, quarantine or discard.
    pub action: &'static str,
    pub score: f64,
    /// The rules (symbols) that hit.
    pub rules: Vec<String>,
    /// `spf=pass dkim=pass dmarc=pass arc=none`; empty when the checks are off.
    pub auth: String,
    /// The virus found, if any.
    pub virus: Option<String>,
    /// The virus scan's result word (clean, virus, error, timeout, skipped); `None`: off.
    pub av: Option<&'static str>,
    pub timings: Timings,
}

/// `spf=… dkim=… dmarc=… arc=…` for the log line (several DKIM results comma-separated).
pub fn auth_summary(auth: &AuthResults) -> String {
    let dkim = if auth.dkim.is_empty() {
        "none".to_string()
    } else {
        auth.dkim
            .iter()
            .map(|d| d.result)
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "spf={} dkim={dkim} dmarc={} arc={}",
        auth.spf.unwrap_or("none"),
        auth.dmarc.unwrap_or("none"),
        auth.arc
    )
}

/// Counts one scanned message: stage times, score, rule hits, sender checks, block list hits
/// and the virus scan.
pub fn count(
    findings: &Findings,
    auth: Option<&AuthResults>,
    dnsbl: &[ListHit],
    uribl: &[ListHit],
    av: Option<&clamav::Outcome>,
    av_failure_handling: Option<&'static str>,
) {
    let m = metrics();
    let t = &findings.timings;
    for (stage, d) in [
        ("parse", t.parse),
        ("rules", t.rules),
        ("auth", t.auth),
        ("dns", t.dns),
        ("clamav", t.clamav),
        ("total", Some(t.total)),
    ] {
        if let Some(d) = d {
            m.scan_duration
                .with_label_values(&[stage])
                .observe(d.as_secs_f64());
        }
    }
    m.spam_score.observe(findings.score);
    for rule in &findings.rules {
        m.rule_hit(rule);
    }
    if let Some(a) = auth {
        let result = |method: &str, r: &str| {
            m.auth_results.with_label_values(&[method, r]).inc();
        };
        result("spf", a.spf.unwrap_or("none"));
        if a.dkim.is_empty() {
            result("dkim", "none");
        }
        for d in &a.dkim {
            result("dkim", d.result);
        }
        result("dmarc", a.dmarc.unwrap_or("none"));
        result("arc", a.arc);
        if a.spf_temperror {
            m.dns_errors.with_label_values(&["spf"]).inc();
        }
        if a.dmarc_temperror {
            m.dns_errors.with_label_values(&["dmarc"]).inc();
        }
    }
    for hit in dnsbl {
        m.dnsbl_hits.with_label_values(&[&hit.symbol]).inc();
    }
    for hit in uribl {
        m.uribl_hits.with_label_values(&[&hit.symbol]).inc();
    }
    if let Some(outcome) = av {
        m.clamav_scans
            .with_label_values(&[outcome.metric_result()])
            .inc();
        if let clamav::Outcome::Virus(name) = outcome {
            m.virus(name);
        }
    }
    if let Some(handling) = av_failure_handling {
        m.clamav_failures.with_label_values(&[handling]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_log_only_the_stages_that_ran() {
        let t = Timings {
            parse: Some(Duration::from_micros(300)),
            rules: Some(Duration::from_micros(1300)),
            total: Duration::from_millis(2),
            ..Timings::default()
        };
        assert_eq!(t.log_value(), "parse=0.3ms rules=1.3ms total=2.0ms");
    }
}
