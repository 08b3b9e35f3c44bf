//! What the filter found and did for one message, kept for the per-message log line and
//! counted in the metrics.
//!
//! The filter fills a [`Findings`] as it goes (each stage's time, the score, the rules that
//! hit, the sender checks, the virus scan) and hands it over with the verdict; the session adds
//! what only it knows (the upstream's reply) and writes one line per message. Counting happens
//! here, once per message, so the metrics and the log line cannot disagree.

use std::time::Duration;

use super::auth::AuthResults;
use super::blocklist::ListHit;
use super::clamav;
use crate::metrics::metrics;

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
