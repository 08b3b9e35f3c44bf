//! The Prometheus metrics: every counter, gauge and histogram mailwarden exports, in one place.
//!
//! Admins watch mailwarden on a dashboard (`deploy/grafana/mailwarden.json`) and alert on it
//! (`deploy/prometheus/alerts.yml`); both may use only what is defined here, and a test checks
//! that. All names start with `mailwarden_`. The exposition is the classic text format 0.0.4
//! (the `prometheus` crate), which every scraper and `promtool check metrics` accept.
//!
//! Label values come from fixed sets (actions, stages, result words) or from the admin's own
//! configuration (rule names of the loaded set, `[[dnsbl]]` symbols), never from what a client
//! sends — except virus families, which are clamd's signature names cut to their family and
//! capped (see [`virus_family`]) so a flood of distinct signatures cannot grow the series
//! without bound.
//!
//! This module is fed plain values and depends on nothing above it; `server::http` serves
//! `/metrics`, `/healthz` and `/readyz` on `[metrics] listen`.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};
use std::time::SystemTime;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// Every series name this registry can export (histograms with their suffixes).
    names: Vec<String>,
    // Sessions.
    pub connections_accepted: IntCounter,
    pub connections_refused: IntCounterVec,
    pub sessions_active: IntGauge,
    /// Milter connections from the MTA (one per SMTP session there): started, open now.
    pub milter_sessions: IntCounter,
    pub milter_sessions_active: IntGauge,
    pub tls_handshakes: IntCounterVec,
    pub commands_rejected: IntCounterVec,
    // Messages.
    pub messages: IntCounterVec,
    /// Transactions refused before the checks ran (too big, a long line, a bare newline, the
    /// sender refused upstream or by a MAIL-stage check), by reason.
    pub transactions_refused: IntCounterVec,
    /// Transactions the client ended before the end of data, by how (rset, quit, …).
    pub transactions_abandoned: IntCounterVec,
    pub message_size: Histogram,
    pub message_recipients: Histogram,
    // Scans.
    pub scan_duration: HistogramVec,
    pub spam_score: Histogram,
    pub rule_hits: IntCounterVec,
    /// The rules of the loaded set: only these are counted in `rule_hits`.
    known_rules: Mutex<HashSet<String>>,
    // Sender authentication and block lists.
    pub auth_results: IntCounterVec,
    pub dnsbl_hits: IntCounterVec,
    pub uribl_hits: IntCounterVec,
    pub blocklist_refused: IntCounterVec,
    pub dns_errors: IntCounterVec,
    // ClamAV.
    pub clamav_scans: IntCounterVec,
    pub clamav_viruses: IntCounterVec,
    pub clamav_failures: IntCounterVec,
    virus_families: Mutex<HashSet<String>>,
    // Upstream.
    pub upstream_transactions: IntCounterVec,
    pub upstream_replies: IntCounterVec,
    pub upstream_connect_errors: IntCounter,
    pub upstream_duration: Histogram,
    // Rules.
    pub rules_loaded: IntGauge,
    pub rules_skipped: IntGauge,
    pub rules_reload_timestamp: IntGauge,
    pub rules_reload_success: IntGauge,
    pub rules_reloads: IntCounterVec,
    // Classifier.
    pub classifier_learns: IntCounterVec,
    pub classifier_learned: IntGaugeVec,
    pub classifier_probability: Histogram,
    pub classifier_failures: IntCounter,
    pub classifier_autolearn_dropped: IntCounter,
    pub classifier_store_bytes: IntGauge,
    pub classifier_tokens: IntGauge,
    // Shared state: greylisting, rate limits, the store itself.
    pub greylist: IntCounterVec,
    pub ratelimit_hits: IntCounterVec,
    pub state_errors: IntCounterVec,
    pub state_duration: HistogramVec,
    pub state_up: IntGauge,
    pub build_info: IntGaugeVec,
}

/// The metrics of this process.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Latency buckets (seconds) from 0.5 ms to 30 s: a scan stage takes about a millisecond,
/// a DNS timeout or a slow clamd seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// State store round trips (seconds): a local Redis answers in about 0.1 ms, so the buckets
/// start at 50 µs (the 1 ms question needs resolution below it).
const STATE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    5.0,
];

/// The actions a message can end with (`mailwarden_messages_total{action}`).
pub const ACTIONS: &[&str] = &[
    "accept",
    "tag",
    "reject",
    "tempfail",
    "quarantine",
    "discard",
];

/// The stages of `mailwarden_scan_duration_seconds{stage}`.
pub const STAGES: &[&str] = &["parse", "rules", "auth", "dns", "clamav", "total"];

/// At most this many virus families get their own series; the rest count as `other`.
const MAX_VIRUS_FAMILIES: usize = 200;

/// Creates metrics and registers each in one registry, keeping the list of the series names
/// it can export.
struct Registrar {
    registry: Registry,
    names: Vec<String>,
}

impl Registrar {
    /// Registers `collector` under `name`, remembering the name if it is one of ours.
    fn add(&mut self, collector: Box<dyn prometheus::core::Collector>, name: &str) {
        if name.starts_with("mailwarden_") {
            self.names.push(name.to_string());
        }
        register(&self.registry, collector, name);
    }

    /// Remembers the series a histogram named `name` exports besides its name.
    fn add_histogram_suffixes(&mut self, name: &str) {
        for suffix in ["_bucket", "_sum", "_count"] {
            self.names.push(format!("{name}{suffix}"));
        }
    }

    /// A registered counter without labels.
    fn counter(&mut self, name: &str, help: &str) -> IntCounter {
        let c = IntCounter::new(name, help).unwrap_or_else(|e| bug(name, e));
        self.add(Box::new(c.clone()), name);
        c
    }

    /// A registered counter with `labels`.
    fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| bug(name, e));
        self.add(Box::new(c.clone()), name);
        c
    }

    /// A registered gauge without labels.
    fn gauge(&mut self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::new(name, help).unwrap_or_else(|e| bug(name, e));
        self.add(Box::new(g.clone()), name);
        g
    }

    /// A registered gauge with `labels`.
    fn gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| bug(name, e));
        self.add(Box::new(g.clone()), name);
        g
    }

    /// A registered histogram without labels.
    fn histogram(&mut self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .unwrap_or_else(|e| bug(name, e));
        self.add(Box::new(h.clone()), name);
        self.add_histogram_suffixes(name);
        h
    }

    /// A registered histogram with `labels`.
    fn histogram_vec(
        &mut self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
        labels: &[&str],
    ) -> HistogramVec {
        let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .unwrap_or_else(|e| bug(name, e));
        self.add(Box::new(h.clone()), name);
        self.add_histogram_suffixes(name);
        h
    }
}

/// Client connections and sessions.
struct SessionMetrics {
    connections_accepted: IntCounter,
    connections_refused: IntCounterVec,
    sessions_active: IntGauge,
    milter_sessions: IntCounter,
    milter_sessions_active: IntGauge,
    tls_handshakes: IntCounterVec,
    commands_rejected: IntCounterVec,
}

/// Registers the connection and session metrics, their known labels at 0.
fn session_metrics(r: &mut Registrar) -> SessionMetrics {
    let m = SessionMetrics {
        connections_accepted: r.counter(
            "mailwarden_connections_accepted_total",
            "Client connections accepted (a session started).",
        ),
        connections_refused: r.counter_vec(
            "mailwarden_connections_refused_total",
            "Client connections refused before the session, by reason (max_sessions, max_sessions_per_ip, proxy_header).",
            &["reason"],
        ),
        sessions_active: r.gauge("mailwarden_sessions_active", "Client sessions open now."),
        milter_sessions: r.counter(
            "mailwarden_milter_sessions_total",
            "SMTP sessions the MTA told the milter about (one per client connection there).",
        ),
        milter_sessions_active: r.gauge(
            "mailwarden_milter_sessions_active",
            "Milter sessions open now.",
        ),
        tls_handshakes: r.counter_vec(
            "mailwarden_tls_handshakes_total",
            "STARTTLS handshakes with clients, by result (ok, failed).",
            &["result"],
        ),
        commands_rejected: r.counter_vec(
            "mailwarden_commands_rejected_total",
            "Client commands or data refused, by reason (policy: a stage check such as greylisting or a rate limit).",
            &["reason"],
        ),
    };
    for result in ["ok", "failed"] {
        m.tls_handshakes.with_label_values(&[result]);
    }
    for reason in ["max_sessions", "max_sessions_per_ip", "proxy_header"] {
        m.connections_refused.with_label_values(&[reason]);
    }
    for reason in [
        "bare_newline",
        "line_too_long",
        "unknown_command",
        "syntax",
        "sequence",
        "size",
        "recipients",
        "policy",
    ] {
        m.commands_rejected.with_label_values(&[reason]);
    }
    m
}

/// Messages received.
struct MessageMetrics {
    messages: IntCounterVec,
    transactions_refused: IntCounterVec,
    transactions_abandoned: IntCounterVec,
    message_size: Histogram,
    message_recipients: Histogram,
}

/// Registers the metrics of the messages received, every action at 0.
fn message_metrics(r: &mut Registrar) -> MessageMetrics {
    let m = MessageMetrics {
        messages: r.counter_vec(
            "mailwarden_messages_total",
            "Messages, by the final action (accept, tag, reject, tempfail, quarantine, discard); refusals before the checks count as reject or tempfail.",
            &["action"],
        ),
        transactions_refused: r.counter_vec(
            "mailwarden_transactions_refused_total",
            "Transactions refused before the checks ran (also counted in mailwarden_messages_total), by reason.",
            &["reason"],
        ),
        transactions_abandoned: r.counter_vec(
            "mailwarden_transactions_abandoned_total",
            "Transactions ended by the client (or the MTA) before the end of data, by how.",
            &["reason"],
        ),
        message_size: r.histogram(
            "mailwarden_message_size_bytes",
            "Size of the messages received.",
            prometheus::exponential_buckets(1024.0, 4.0, 9).unwrap_or_default(),
        ),
        message_recipients: r.histogram(
            "mailwarden_message_recipients",
            "Accepted recipients per message.",
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0],
        ),
    };
    for action in ACTIONS {
        m.messages.with_label_values(&[action]);
    }
    m
}

/// The scan: its stages, the score and the rule hits.
struct ScanMetrics {
    scan_duration: HistogramVec,
    spam_score: Histogram,
    rule_hits: IntCounterVec,
}

/// Registers the scan metrics, every stage at 0.
fn scan_metrics(r: &mut Registrar) -> ScanMetrics {
    let m = ScanMetrics {
        scan_duration: r.histogram_vec(
            "mailwarden_scan_duration_seconds",
            "Time spent per message in each filter stage (parse, rules, auth, dns, clamav) and in all of them (total).",
            LATENCY_BUCKETS.to_vec(),
            &["stage"],
        ),
        spam_score: r.histogram(
            "mailwarden_spam_score",
            "Spam score of the messages scanned.",
            vec![
                -5.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
            ],
        ),
        rule_hits: r.counter_vec(
            "mailwarden_rule_hits_total",
            "Rule hits by rule name (only rules of the loaded set).",
            &["rule"],
        ),
    };
    for stage in STAGES {
        m.scan_duration.with_label_values(&[stage]);
    }
    m
}

/// Sender authentication, block lists and DNS.
struct AuthDnsMetrics {
    auth_results: IntCounterVec,
    dnsbl_hits: IntCounterVec,
    uribl_hits: IntCounterVec,
    blocklist_refused: IntCounterVec,
    dns_errors: IntCounterVec,
}

/// Registers the authentication, block list and DNS metrics, the DNS checks at 0.
fn auth_dns_metrics(r: &mut Registrar) -> AuthDnsMetrics {
    let m = AuthDnsMetrics {
        auth_results: r.counter_vec(
            "mailwarden_auth_results_total",
            "Sender authentication results by method (spf, dkim, dmarc, arc) and result (pass, fail, none, ...).",
            &["method", "result"],
        ),
        dnsbl_hits: r.counter_vec(
            "mailwarden_dnsbl_hits_total",
            "Client addresses listed, by [[dnsbl]] list (its symbol).",
            &["list"],
        ),
        uribl_hits: r.counter_vec(
            "mailwarden_uribl_hits_total",
            "Messages with a listed link domain, by [[uribl]] list (its symbol).",
            &["list"],
        ),
        blocklist_refused: r.counter_vec(
            "mailwarden_blocklist_refused_total",
            "Block list answers meaning 'query refused / resolver blocked' (not a listing), by zone.",
            &["zone"],
        ),
        dns_errors: r.counter_vec(
            "mailwarden_dns_errors_total",
            "Temporary DNS errors during the checks, by check (spf, dmarc).",
            &["check"],
        ),
    };
    for check in ["spf", "dmarc"] {
        m.dns_errors.with_label_values(&[check]);
    }
    m
}

/// ClamAV scans.
struct ClamdMetrics {
    clamav_scans: IntCounterVec,
    clamav_viruses: IntCounterVec,
    clamav_failures: IntCounterVec,
}

/// Registers the clamd metrics, every result and handling at 0.
fn clamd_metrics(r: &mut Registrar) -> ClamdMetrics {
    let m = ClamdMetrics {
        clamav_scans: r.counter_vec(
            "mailwarden_clamav_scans_total",
            "clamd scans by result (clean, virus, error, timeout, skipped).",
            &["result"],
        ),
        clamav_viruses: r.counter_vec(
            "mailwarden_clamav_viruses_total",
            "Viruses found, by signature family.",
            &["family"],
        ),
        clamav_failures: r.counter_vec(
            "mailwarden_clamav_failures_total",
            "Messages whose virus scan failed, by what was done (tempfail, accept).",
            &["handling"],
        ),
    };
    for result in ["clean", "virus", "error", "timeout", "skipped"] {
        m.clamav_scans.with_label_values(&[result]);
    }
    for handling in ["tempfail", "accept"] {
        m.clamav_failures.with_label_values(&[handling]);
    }
    m
}

/// The hand-over to the upstream.
struct UpstreamMetrics {
    upstream_transactions: IntCounterVec,
    upstream_replies: IntCounterVec,
    upstream_connect_errors: IntCounter,
    upstream_duration: Histogram,
}

/// Registers the upstream metrics, the known results and reply classes at 0.
fn upstream_metrics(r: &mut Registrar) -> UpstreamMetrics {
    let m = UpstreamMetrics {
        upstream_transactions: r.counter_vec(
            "mailwarden_upstream_transactions_total",
            "Messages handed to the upstream, by result (accepted, rejected, tempfail, error).",
            &["result"],
        ),
        upstream_replies: r.counter_vec(
            "mailwarden_upstream_replies_total",
            "Upstream replies to our MAIL, RCPT and message data, by stage (mail, rcpt, data) and class (2xx, 3xx, 4xx, 5xx).",
            &["stage", "class"],
        ),
        upstream_connect_errors: r.counter(
            "mailwarden_upstream_connect_errors_total",
            "Failed connections to the upstream (refused, timed out, no greeting).",
        ),
        upstream_duration: r.histogram(
            "mailwarden_upstream_duration_seconds",
            "Time from the end of the client's data to the upstream's final reply.",
            LATENCY_BUCKETS.to_vec(),
        ),
    };
    for result in ["accepted", "rejected", "tempfail", "error"] {
        m.upstream_transactions.with_label_values(&[result]);
    }
    for stage in ["mail", "rcpt", "data"] {
        for class in ["2xx", "4xx", "5xx"] {
            m.upstream_replies.with_label_values(&[stage, class]);
        }
    }
    m
}

/// The loaded rule set and its reloads.
struct RulesMetrics {
    rules_loaded: IntGauge,
    rules_skipped: IntGauge,
    rules_reload_timestamp: IntGauge,
    rules_reload_success: IntGauge,
    rules_reloads: IntCounterVec,
}

/// Registers the rule set metrics, both reload results at 0.
fn rules_metrics(r: &mut Registrar) -> RulesMetrics {
    let m = RulesMetrics {
        rules_loaded: r.gauge("mailwarden_rules_loaded", "Rules in the loaded rule set."),
        rules_skipped: r.gauge(
            "mailwarden_rules_skipped",
            "Rules skipped at the last successful load (unsupported syntax).",
        ),
        rules_reload_timestamp: r.gauge(
            "mailwarden_rules_last_reload_timestamp_seconds",
            "Unix time of the last rule load attempt.",
        ),
        rules_reload_success: r.gauge(
            "mailwarden_rules_last_reload_success",
            "1 if the last rule load attempt succeeded, 0 if it failed (the previous rules stay in use).",
        ),
        rules_reloads: r.counter_vec(
            "mailwarden_rules_reloads_total",
            "Rule load attempts by result (ok, failed).",
            &["result"],
        ),
    };
    for result in ["ok", "failed"] {
        m.rules_reloads.with_label_values(&[result]);
    }
    m
}

/// The Bayes classifier.
struct ClassifierMetrics {
    classifier_learns: IntCounterVec,
    classifier_learned: IntGaugeVec,
    classifier_probability: Histogram,
    classifier_failures: IntCounter,
    classifier_autolearn_dropped: IntCounter,
    classifier_store_bytes: IntGauge,
    classifier_tokens: IntGauge,
}

/// Registers the classifier metrics, every class and source at 0.
fn classifier_metrics(r: &mut Registrar) -> ClassifierMetrics {
    let m = ClassifierMetrics {
        classifier_learns: r.counter_vec(
            "mailwarden_classifier_learns_total",
            "Messages learned by the classifier, by class (spam, ham) and source (cli: mailwarden learn, autolearn), as counted in its store.",
            &["class", "source"],
        ),
        classifier_learned: r.gauge_vec(
            "mailwarden_classifier_learned_messages",
            "Messages the classifier's model holds now, by class (spam, ham).",
            &["class"],
        ),
        classifier_probability: r.histogram(
            "mailwarden_classifier_probability",
            "Spam probability the classifier gave the messages it scored.",
            vec![0.01, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 0.99, 0.999, 1.0],
        ),
        classifier_failures: r.counter(
            "mailwarden_classifier_failures_total",
            "Messages the classifier could not score because its store could not be read (BAYES_FAIL), and failed autolearn writes.",
        ),
        classifier_autolearn_dropped: r.counter(
            "mailwarden_classifier_autolearn_dropped_total",
            "Messages not autolearned because the autolearn queue was full.",
        ),
        classifier_store_bytes: r.gauge(
            "mailwarden_classifier_store_bytes",
            "Size of the classifier's store on disk (with its write-ahead log).",
        ),
        classifier_tokens: r.gauge(
            "mailwarden_classifier_tokens",
            "Features the classifier's model holds (at most [classifier] max_tokens).",
        ),
    };
    for class in ["spam", "ham"] {
        m.classifier_learned.with_label_values(&[class]);
        for source in ["cli", "autolearn"] {
            m.classifier_learns.with_label_values(&[class, source]);
        }
    }
    m
}

/// Greylisting, rate limits and the state store behind them.
struct StateMetrics {
    greylist: IntCounterVec,
    ratelimit_hits: IntCounterVec,
    state_errors: IntCounterVec,
    state_duration: HistogramVec,
    state_up: IntGauge,
}

/// The `result` values of `mailwarden_greylist_total`.
pub const GREYLIST_RESULTS: &[&str] = &[
    "deferred_new",
    "deferred_early",
    "passed",
    "known",
    "network_allowed",
    "error_tempfail",
    "error_accept",
];

/// The state operations (`op` label).
pub const STATE_OPS: &[&str] = &["greylist", "take", "ping"];

/// Registers the state metrics, every known label value at 0.
fn state_metrics(r: &mut Registrar) -> StateMetrics {
    let m = StateMetrics {
        greylist: r.counter_vec(
            "mailwarden_greylist_total",
            "Greylisting answers per triplet: deferred_new (first attempt), deferred_early (retried before the delay), passed, known (passed before), network_allowed (auto-allowed network), error_tempfail / error_accept (the state store failed; [state] on_error).",
            &["result"],
        ),
        ratelimit_hits: r.counter_vec(
            "mailwarden_ratelimit_hits_total",
            "Messages or recipients refused by a [[ratelimit]], by its name.",
            &["name"],
        ),
        state_errors: r.counter_vec(
            "mailwarden_state_errors_total",
            "State store calls that failed, by operation (greylist, take, ping) and kind (unavailable, timeout, reply, corrupt, io).",
            &["op", "kind"],
        ),
        state_duration: r.histogram_vec(
            "mailwarden_state_duration_seconds",
            "Time of one state store call (one round trip), by operation.",
            STATE_BUCKETS.to_vec(),
            &["op"],
        ),
        state_up: r.gauge(
            "mailwarden_state_up",
            "1 when the last state store call succeeded, 0 when it failed.",
        ),
    };
    for result in GREYLIST_RESULTS {
        m.greylist.with_label_values(&[result]);
    }
    for op in STATE_OPS {
        m.state_duration.with_label_values(&[op]);
    }
    m.state_up.set(1);
    m
}

/// Registers `mailwarden_build_info` (set to 1 for this version) and, on Linux, the
/// process collector.
fn process_metrics(r: &mut Registrar) -> IntGaugeVec {
    let build_info = r.gauge_vec(
        "mailwarden_build_info",
        "Always 1; the labels say which mailwarden is running.",
        &["version"],
    );
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    #[cfg(target_os = "linux")]
    r.add(
        Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        "process",
    );
    build_info
}

impl Metrics {
    /// Registers every metric family group in a new registry; known label values start at 0,
    /// so rates and ratios exist before the first event.
    fn new() -> Metrics {
        let mut r = Registrar {
            registry: Registry::new(),
            names: Vec::new(),
        };
        let SessionMetrics {
            connections_accepted,
            connections_refused,
            sessions_active,
            milter_sessions,
            milter_sessions_active,
            tls_handshakes,
            commands_rejected,
        } = session_metrics(&mut r);
        let MessageMetrics {
            messages,
            transactions_refused,
            transactions_abandoned,
            message_size,
            message_recipients,
        } = message_metrics(&mut r);
        let ScanMetrics {
            scan_duration,
            spam_score,
            rule_hits,
        } = scan_metrics(&mut r);
        let AuthDnsMetrics {
            auth_results,
            dnsbl_hits,
            uribl_hits,
            blocklist_refused,
            dns_errors,
        } = auth_dns_metrics(&mut r);
        let ClamdMetrics {
            clamav_scans,
            clamav_viruses,
            clamav_failures,
        } = clamd_metrics(&mut r);
        let UpstreamMetrics {
            upstream_transactions,
            upstream_replies,
            upstream_connect_errors,
            upstream_duration,
        } = upstream_metrics(&mut r);
        let RulesMetrics {
            rules_loaded,
            rules_skipped,
            rules_reload_timestamp,
            rules_reload_success,
            rules_reloads,
        } = rules_metrics(&mut r);
        let ClassifierMetrics {
            classifier_learns,
            classifier_learned,
            classifier_probability,
            classifier_failures,
            classifier_autolearn_dropped,
            classifier_store_bytes,
            classifier_tokens,
        } = classifier_metrics(&mut r);
        let StateMetrics {
            greylist,
            ratelimit_hits,
            state_errors,
            state_duration,
            state_up,
        } = state_metrics(&mut r);
        let build_info = process_metrics(&mut r);
        Metrics {
            registry: r.registry,
            names: r.names,
            connections_accepted,
            connections_refused,
            sessions_active,
            milter_sessions,
            milter_sessions_active,
            tls_handshakes,
            commands_rejected,
            messages,
            transactions_refused,
            transactions_abandoned,
            message_size,
            message_recipients,
            scan_duration,
            spam_score,
            rule_hits,
            known_rules: Mutex::new(HashSet::new()),
            auth_results,
            dnsbl_hits,
            uribl_hits,
            blocklist_refused,
            dns_errors,
            clamav_scans,
            clamav_viruses,
            clamav_failures,
            virus_families: Mutex::new(HashSet::new()),
            upstream_transactions,
            upstream_replies,
            upstream_connect_errors,
            upstream_duration,
            rules_loaded,
            rules_skipped,
            rules_reload_timestamp,
            rules_reload_success,
            rules_reloads,
            classifier_learns,
            classifier_learned,
            classifier_probability,
            classifier_failures,
            classifier_autolearn_dropped,
            classifier_store_bytes,
            classifier_tokens,
            greylist,
            ratelimit_hits,
            state_errors,
            state_duration,
            state_up,
            build_info,
        }
    }

    /// Every series name mailwarden can export: what dashboards and alerts may use.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Records a (re)load of the rules: whether it succeeded, when it was attempted and, if
    /// it succeeded, how many rules were loaded and skipped.
    pub fn rules_status(&self, ok: bool, rules: usize, skipped: usize, at: SystemTime) {
        let at = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.rules_reload_timestamp.set(at);
        self.rules_reload_success.set(i64::from(ok));
        self.rules_reloads
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
        if ok {
            self.rules_loaded.set(rules as i64);
            self.rules_skipped.set(skipped as i64);
        }
    }

    /// Makes the loaded rule set the one `rule_hits` counts: each of its rules gets a series
    /// (at 0, so `increase()` sees the first hit), rules no longer loaded lose theirs.
    pub fn set_rules<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let new: HashSet<String> = names.map(str::to_string).collect();
        let mut known = self.known_rules.lock().unwrap_or_else(|p| p.into_inner());
        for gone in known.difference(&new) {
            let _ = self.rule_hits.remove_label_values(&[gone]);
        }
        for name in &new {
            self.rule_hits.with_label_values(&[name]);
        }
        *known = new;
    }

    /// Counts a hit of `rule`, if it belongs to the loaded set.
    pub fn rule_hit(&self, rule: &str) {
        let known = self.known_rules.lock().unwrap_or_else(|p| p.into_inner());
        if known.contains(rule) {
            self.rule_hits.with_label_values(&[rule]).inc();
        }
    }

    /// Counts a virus under its family name; past [`MAX_VIRUS_FAMILIES`] distinct families,
    /// new ones count as `other`.
    pub fn virus(&self, signature: &str) {
        let family = virus_family(signature);
        let mut seen = self
            .virus_families
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let label = if seen.contains(&family) || seen.len() < MAX_VIRUS_FAMILIES {
            seen.insert(family.clone());
            family
        } else {
            "other".to_string()
        };
        self.clamav_viruses.with_label_values(&[&label]).inc();
    }
}

/// A clamd signature name cut to its family: `Win.Trojan.Agent-12345-0` → `Win.Trojan.Agent`,
/// `Eicar-Test-Signature.UNOFFICIAL` → `Eicar-Test-Signature`. Only `[A-Za-z0-9._-]` is kept.
pub fn virus_family(signature: &str) -> String {
    let name = signature.trim_end_matches(".UNOFFICIAL");
    let mut parts: Vec<&str> = name.split('-').collect();
    while parts.len() > 1
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        parts.pop();
    }
    let family: String = parts
        .join("-")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    if family.is_empty() {
        "unknown".into()
    } else {
        family
    }
}

/// The class of an SMTP reply code for `mailwarden_upstream_replies_total`.
pub fn reply_class(code: u16) -> &'static str {
    match code / 100 {
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

fn register(registry: &Registry, collector: Box<dyn prometheus::core::Collector>, name: &str) {
    if let Err(e) = registry.register(collector) {
        bug(name, e);
    }
}

/// A metric definition is wrong: a programming error found by the first test that runs.
fn bug(name: &str, e: prometheus::Error) -> ! {
    panic!("metric {name} is defined wrongly: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_help_and_the_prefix() {
        let m = metrics();
        m.messages.with_label_values(&["accept"]).inc();
        m.virus("Eicar-Test-Signature.UNOFFICIAL");
        let text = m.render();
        for line in text.lines().filter(|l| l.starts_with("# HELP ")) {
            let name = line.split(' ').nth(2).unwrap_or("");
            assert!(
                name.starts_with("mailwarden_") || name.starts_with("process_"),
                "{line}"
            );
        }
        assert!(text.contains("mailwarden_messages_total{action=\"accept\"}"));
        assert!(text.contains("mailwarden_messages_total{action=\"discard\"} 0"));
        assert!(text.contains("mailwarden_clamav_viruses_total{family=\"Eicar-Test-Signature\"}"));
        assert!(text.contains("mailwarden_build_info{version="));
    }

    #[test]
    fn virus_families() {
        assert_eq!(virus_family("Win.Trojan.Agent-12345-0"), "Win.Trojan.Agent");
        assert_eq!(virus_family("Eicar-Test-Signature"), "Eicar-Test-Signature");
        assert_eq!(
            virus_family("Doc.Dropper.Agent-6336960-0.UNOFFICIAL"),
            "Doc.Dropper.Agent"
        );
        assert_eq!(virus_family("a{b}\"c"), "abc");
        assert_eq!(virus_family("\"{}"), "unknown");
    }
}
