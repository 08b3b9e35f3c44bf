//! Sender authentication: SPF (RFC 7208), DKIM (RFC 6376, RFC 8463), ARC (RFC 8617) and
//! DMARC (RFC 7489) with mail-auth, over one shared async resolver.
//!
//! One [`Authenticator`] is built from `[dns]` and `[auth]` at start-up and shared by all
//! sessions (the resolver caches answers). Per message, [`Authenticator::check`] runs SPF for
//! the EHLO and the MAIL FROM identities, DKIM on every signature and ARC chain validation
//! concurrently, then DMARC on their results. Every stage is bounded in time; a DNS failure or
//! an overrun gives the RFC's temperror, never a hang. The outcome is a set of rule symbols
//! (scored in `rules/05_auth.cf`), the `Authentication-Results` (RFC 8601) and `Received-SPF`
//! header texts, and what the policy needs to know (DMARC reject/quarantine, DNS errors).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::Policy as DmarcPolicy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::system_conf::read_system_conf;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, DnsError, Error as AuthError, MessageAuthenticator, ReceivedSpf, SpfOutput,
    SpfResult,
};
use serde_json::json;

use crate::config::{AuthConfig, DnsConfig};

/// Who sent the message, as far as the checks care.
#[derive(Debug, Clone, Default)]
pub struct AuthInput {
    /// The client's address; without it SPF is not checked.
    pub ip: Option<IpAddr>,
    /// The EHLO/HELO argument.
    pub helo: Option<String>,
    /// The MAIL FROM address ("" for the null sender).
    pub mail_from: String,
}

/// One DKIM signature's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimSummary {
    /// RFC 8601 result: pass, fail, neutral, temperror, permerror.
    pub result: &'static str,
    pub domain: String,
    pub selector: String,
}

/// The outcome of the checks for one message.
#[derive(Debug, Clone, Default)]
pub struct AuthResults {
    /// SPF for the MAIL FROM identity (RFC 8601 result word); `None`: not checked.
    pub spf: Option<&'static str>,
    /// SPF for the EHLO identity; `None`: not checked.
    pub spf_helo: Option<&'static str>,
    /// One entry per DKIM signature (empty: the message has none).
    pub dkim: Vec<DkimSummary>,
    /// ARC chain: pass, fail, none, …
    pub arc: &'static str,
    /// DMARC: pass, fail, none, temperror, permerror; `None`: not checked.
    pub dmarc: Option<&'static str>,
    /// The policy the From domain asks for on failure (none, quarantine, reject), after sp/np
    /// and t=y.
    pub dmarc_policy: &'static str,
    /// The RFC5322.From domain DMARC looked at.
    pub dmarc_domain: String,
    /// The record's `pct=` (RFC 7489 §6.3) when below 100 and the message failed.
    pub dmarc_pct: Option<u8>,
    /// Rule symbols for the scan.
    pub symbols: Vec<String>,
    /// Complete header fields to add (no final CRLF): Authentication-Results, Received-SPF.
    pub headers: Vec<String>,
    /// SPF (MAIL FROM identity) gave temperror.
    pub spf_temperror: bool,
    /// DMARC gave temperror.
    pub dmarc_temperror: bool,
    /// Time the checks took.
    pub elapsed: Duration,
}

impl AuthResults {
    /// DMARC failed and the domain asks for rejection.
    pub fn dmarc_reject(&self) -> bool {
        self.dmarc == Some("fail") && self.dmarc_policy == "reject"
    }

    /// DMARC failed and the domain asks for quarantine.
    pub fn dmarc_quarantine(&self) -> bool {
        self.dmarc == Some("fail") && self.dmarc_policy == "quarantine"
    }

    /// The `"auth"` object of `mailwarden scan --json`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "spf": self.spf.unwrap_or("skipped"),
            "spf_helo": self.spf_helo.unwrap_or("skipped"),
            "dkim": self.dkim.iter().map(|d| json!({
                "result": d.result, "domain": d.domain, "selector": d.selector,
            })).collect::<Vec<_>>(),
            "dmarc": self.dmarc.unwrap_or("skipped"),
            "dmarc_pct": self.dmarc_pct,
            "dmarc_policy": self.dmarc_policy,
            "dmarc_domain": self.dmarc_domain,
            "arc": self.arc,
            "headers": self.headers,
            "elapsed_ms": (self.elapsed.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
        })
    }
}

/// The configured checks with their shared resolver.
pub struct Authenticator {
    inner: MessageAuthenticator,
    hostname: String,
    /// Budget of one stage (SPF/DKIM/ARC together, then DMARC).
    stage_budget: Duration,
    trusted: Vec<ipnet::IpNet>,
}

impl Authenticator {
    /// Builds the resolver from `[dns]` (system resolver when no name servers are listed).
    pub fn new(
        dns: &DnsConfig,
        auth: &AuthConfig,
        hostname: &str,
    ) -> Result<Authenticator, String> {
        let inner = build_resolver(dns)?;
        Ok(Authenticator {
            inner,
            hostname: hostname.to_string(),
            // SPF may chain several lookups (include:, a, mx), each within `timeout`.
            stage_budget: lookup_timeout(dns) * 2,
            trusted: auth.trusted_nets()?,
        })
    }

    /// The shared resolver (for the DNS block lists: one cache for all checks).
    pub fn resolver(&self) -> &TokioResolver {
        self.inner.resolver()
    }

    /// The `pct=` of the DMARC record for `domain` (or, without one, of its organisational
    /// domain), when it is below 100. Lookup failures mean "no pct" (apply the policy).
    async fn legacy_pct(&self, domain: &str) -> Option<u8> {
        let org = psl::domain_str(domain).filter(|o| *o != domain);
        for name in std::iter::once(domain).chain(org) {
            let query = format!("_dmarc.{name}.");
            let lookup =
                tokio::time::timeout(self.stage_budget / 2, self.resolver().txt_lookup(query));
            let Ok(Ok(answer)) = lookup.await else {
                continue;
            };
            for record in answer.answers() {
                let mail_auth::hickory_resolver::proto::rr::RData::TXT(txt) = &record.data else {
                    continue;
                };
                let text: Vec<u8> = txt
                    .txt_data
                    .iter()
                    .flat_map(|part| part.iter().copied())
                    .collect();
                let text = String::from_utf8_lossy(&text);
                if !text.trim_start().starts_with("v=DMARC1") {
                    continue;
                }
                return dmarc_pct_tag(&text).filter(|&pct| pct < 100);
            }
        }
        None
    }

    /// Whether SPF and DMARC are skipped for this client (`auth.trusted_networks`).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        crate::config::in_networks(&self.trusted, ip)
    }

    /// Whether MAIL FROM passes SPF for `ip` (before the message: greylisting's allowlist of
    /// big senders). A lookup failure is not a pass.
    pub async fn spf_mail_from_passes(&self, ip: IpAddr, helo: &str, mail_from: &str) -> bool {
        let id = Identities {
            helo: helo.trim(),
            mail_from: mail_from.trim(),
            spf_ip: Some(ip),
            ip: Some(ip),
        };
        self.spf_mail_from(&id)
            .await
            .is_some_and(|o| o.result() == SpfResult::Pass)
    }

    /// Runs SPF, DKIM, ARC and DMARC for one message.
    pub async fn check(&self, input: &AuthInput, raw: &[u8]) -> AuthResults {
        let started = Instant::now();
        let id = Identities {
            helo: input.helo.as_deref().unwrap_or("").trim(),
            mail_from: input.mail_from.trim(),
            spf_ip: input.ip.filter(|ip| !self.is_trusted(*ip)),
            ip: input.ip,
        };
        let message = AuthenticatedMessage::parse(raw);

        // Stage 1: SPF (both identities), DKIM and ARC at once.
        let (spf_helo, spf_from, dkim, arc) = tokio::join!(
            self.spf_helo(&id),
            self.spf_mail_from(&id),
            self.dkim(message.as_ref()),
            self.arc(message.as_ref())
        );

        // Stage 2: DMARC on the From domain, from the SPF (MAIL FROM) and DKIM results.
        let from_domain = message
            .as_ref()
            .and_then(|m| m.from.first())
            .and_then(|f| domain_of(f))
            .unwrap_or("")
            .to_ascii_lowercase();
        let trusted = input.ip.is_some_and(|ip| self.is_trusted(ip));
        let dmarc = match &message {
            Some(m) if !trusted && !from_domain.is_empty() => Some(
                self.dmarc(m, &id, &dkim, spf_from.as_ref(), &from_domain)
                    .await,
            ),
            _ => None,
        };
        let checked = Checked {
            spf_helo,
            spf_from,
            dkim,
            arc,
            dmarc,
            from_domain,
        };

        let mut out = AuthResults {
            spf: checked.spf_from.as_ref().map(|o| spf_word(o.result())),
            spf_helo: checked.spf_helo.as_ref().map(|o| spf_word(o.result())),
            arc: dkim_word(checked.arc.result()),
            ..AuthResults::default()
        };
        let mut symbols = spf_dkim_arc_symbols(&checked, &mut out);
        match &checked.dmarc {
            Some(d) => symbols.push(self.dmarc_outcome(d, &mut out, raw).await.into()),
            None => out.dmarc_policy = "none",
        }
        out.symbols = symbols;
        let authentication_results = self.authentication_results(&checked, &id, out.arc);
        out.headers.push(authentication_results);
        if let Some(field) = self.received_spf(&checked, &id) {
            out.headers.push(field);
        }
        out.elapsed = started.elapsed();
        out
    }

    /// SPF for the EHLO identity; `None` without a client address (or a trusted one) or EHLO.
    async fn spf_helo(&self, id: &Identities<'_>) -> Option<SpfOutput> {
        let helo = id.helo;
        match id.spf_ip {
            Some(ip) if !helo.is_empty() => Some(
                bounded(
                    self.stage_budget,
                    self.inner
                        .verify_spf(SpfParameters::verify_ehlo(ip, helo, &self.hostname)),
                    || SpfOutput::new(helo.to_string()).with_result(SpfResult::TempError),
                )
                .await,
            ),
            _ => None,
        }
    }

    /// SPF for the MAIL FROM identity; `None` without a client address (or a trusted one),
    /// or with neither a sender nor an EHLO.
    async fn spf_mail_from(&self, id: &Identities<'_>) -> Option<SpfOutput> {
        let (helo, mail_from) = (id.helo, id.mail_from);
        match id.spf_ip {
            // The null sender is checked as postmaster@<HELO> (RFC 7208 §2.4).
            Some(ip) if !mail_from.is_empty() || !helo.is_empty() => Some(
                bounded(
                    self.stage_budget,
                    self.inner.verify_spf(SpfParameters::verify_mail_from(
                        ip,
                        helo,
                        &self.hostname,
                        mail_from,
                    )),
                    || {
                        SpfOutput::new(domain_of(mail_from).unwrap_or(helo).to_string())
                            .with_result(SpfResult::TempError)
                    },
                )
                .await,
            ),
            _ => None,
        }
    }

    /// DKIM on every signature of the message (none if it could not be parsed).
    async fn dkim<'x>(&self, message: Option<&'x AuthenticatedMessage<'x>>) -> Vec<DkimOutput<'x>> {
        match message {
            Some(m) => {
                bounded(self.stage_budget, self.inner.verify_dkim(m), || {
                    vec![DkimOutput::temp_err(timeout_error())]
                })
                .await
            }
            None => Vec::new(),
        }
    }

    /// ARC chain validation (none if the message could not be parsed).
    async fn arc<'x>(&self, message: Option<&'x AuthenticatedMessage<'x>>) -> ArcOutput<'x> {
        match message {
            Some(m) => {
                bounded(self.stage_budget, self.inner.verify_arc(m), || {
                    ArcOutput::default().with_result(DkimResult::TempError(timeout_error()))
                })
                .await
            }
            None => ArcOutput::default(),
        }
    }

    /// DMARC for `from_domain` from the SPF (MAIL FROM) and DKIM results.
    async fn dmarc<'x>(
        &self,
        message: &'x AuthenticatedMessage<'x>,
        id: &Identities<'_>,
        dkim: &'x [DkimOutput<'x>],
        spf_from: Option<&SpfOutput>,
        from_domain: &str,
    ) -> DmarcOutput {
        let spf_for_dmarc = spf_from.cloned().unwrap_or_default();
        let spf_domain = if id.mail_from.is_empty() {
            id.helo
        } else {
            domain_of(id.mail_from).unwrap_or("")
        };
        bounded(
            self.stage_budget,
            self.inner.verify_dmarc(DmarcParameters::new(
                message,
                dkim,
                spf_domain,
                &spf_for_dmarc,
            )),
            || {
                DmarcOutput::new(from_domain.to_string())
                    .with_spf_result(DmarcResult::TempError(timeout_error()))
                    .with_dkim_result(DmarcResult::TempError(timeout_error()))
            },
        )
        .await
    }

    /// Fills in the DMARC fields of `out` (the policy after `pct=` sampling) and returns the
    /// DMARC symbol.
    async fn dmarc_outcome(
        &self,
        d: &DmarcOutput,
        out: &mut AuthResults,
        raw: &[u8],
    ) -> &'static str {
        out.dmarc_domain = d.domain().to_string();
        out.dmarc_policy = match d.policy() {
            DmarcPolicy::Reject => "reject",
            DmarcPolicy::Quarantine => "quarantine",
            DmarcPolicy::None | DmarcPolicy::Unspecified => "none",
        };
        let word = dmarc_word(&d.result());
        out.dmarc = Some(word);
        out.dmarc_temperror = word == "temperror";
        if word == "fail" && out.dmarc_policy != "none" {
            // RFC 7489 §6.6.4 pct: mail-auth 0.13 follows DMARCbis, which dropped it, so
            // the tag is read here. A failing message outside the sampled share gets the
            // next milder policy (reject → quarantine, quarantine → none).
            if let Some(pct) = self.legacy_pct(&out.dmarc_domain).await {
                out.dmarc_pct = Some(pct);
                if !sampled(pct, raw) {
                    out.dmarc_policy = match out.dmarc_policy {
                        "reject" => "quarantine",
                        _ => "none",
                    };
                }
            }
        }
        match (word, out.dmarc_policy) {
            ("pass", _) => "DMARC_PASS",
            ("fail", "reject") => "DMARC_REJECT",
            ("fail", "quarantine") => "DMARC_QUARANTINE",
            ("fail", _) => "DMARC_POLICY_NONE",
            ("temperror", _) => "DMARC_TEMPERROR",
            ("permerror", _) => "DMARC_PERMERROR",
            _ => "DMARC_NONE",
        }
    }

    /// The `Authentication-Results` field: spf; dkim; dmarc; arc, in that order.
    fn authentication_results(
        &self,
        c: &Checked<'_>,
        id: &Identities<'_>,
        arc_word: &str,
    ) -> String {
        let host = self.hostname.as_str();
        let (helo, mail_from) = (id.helo, id.mail_from);
        let part = |ar: AuthenticationResults<'_>| {
            let text = ar.to_string();
            text.get(host.len()..).unwrap_or("").to_string()
        };
        let mut ar = String::new();
        if let (Some(ip), Some(o)) = (id.spf_ip, &c.spf_from) {
            ar.push_str(&part(
                AuthenticationResults::new(host).with_spf_mailfrom_result(o, ip, mail_from, helo),
            ));
        }
        if let (Some(ip), Some(o)) = (id.spf_ip, &c.spf_helo) {
            ar.push_str(&part(
                AuthenticationResults::new(host).with_spf_ehlo_result(o, ip, helo),
            ));
        }
        if c.dkim.is_empty() {
            ar.push_str(";\r\n\tdkim=none");
        } else {
            ar.push_str(&part(
                AuthenticationResults::new(host).with_dkim_results(&c.dkim, &c.from_domain),
            ));
        }
        if let Some(d) = &c.dmarc {
            ar.push_str(&part(AuthenticationResults::new(host).with_dmarc_result(d)));
        }
        match id.ip {
            Some(ip) => ar.push_str(&part(
                AuthenticationResults::new(host).with_arc_result(&c.arc, ip),
            )),
            None => ar.push_str(&format!(";\r\n\tarc={arc_word}")),
        }
        format!("Authentication-Results: {host}{ar}")
    }

    /// The `Received-SPF` field for the identity that was checked (RFC 7208 §9.1), if any.
    fn received_spf(&self, c: &Checked<'_>, id: &Identities<'_>) -> Option<String> {
        let ip = id.spf_ip?;
        let checked = if id.mail_from.is_empty() {
            c.spf_helo.as_ref().or(c.spf_from.as_ref())
        } else {
            c.spf_from.as_ref()
        }?;
        let field =
            ReceivedSpf::new(checked, ip, id.helo, id.mail_from, &self.hostname).to_header();
        Some(field.trim_end_matches("\r\n").to_string())
    }
}

/// The identities of one message, as the checks use them.
struct Identities<'a> {
    /// The EHLO/HELO argument, trimmed ("" without one).
    helo: &'a str,
    /// The MAIL FROM address, trimmed.
    mail_from: &'a str,
    /// The client's address unless it is trusted: SPF is checked only with it.
    spf_ip: Option<IpAddr>,
    /// The client's address.
    ip: Option<IpAddr>,
}

/// What the checks returned for one message.
struct Checked<'x> {
    spf_helo: Option<SpfOutput>,
    spf_from: Option<SpfOutput>,
    dkim: Vec<DkimOutput<'x>>,
    arc: ArcOutput<'x>,
    dmarc: Option<DmarcOutput>,
    /// The RFC5322.From domain, lower-cased ("" without one).
    from_domain: String,
}

/// Records the SPF temperror and the DKIM signatures in `out`; returns the SPF, DKIM and ARC
/// symbols.
fn spf_dkim_arc_symbols(c: &Checked<'_>, out: &mut AuthResults) -> Vec<String> {
    let mut symbols: Vec<String> = Vec::new();
    if let Some(o) = &c.spf_from {
        symbols.push(format!("SPF_{}", spf_symbol(o.result())));
        out.spf_temperror = o.result() == SpfResult::TempError;
    }
    if let Some(o) = &c.spf_helo {
        symbols.push(format!("SPF_HELO_{}", spf_symbol(o.result())));
    }
    for d in &c.dkim {
        let (domain, selector) = d
            .signature()
            .map(|s| (s.d.clone(), s.s.clone()))
            .unwrap_or_default();
        out.dkim.push(DkimSummary {
            result: dkim_word(d.result()),
            domain,
            selector,
        });
    }
    if out.dkim.is_empty() {
        symbols.push("DKIM_NONE".into());
    }
    if out.dkim.iter().any(|d| d.result == "pass") {
        symbols.push("DKIM_VALID".into());
        if out
            .dkim
            .iter()
            .any(|d| d.result == "pass" && d.domain.eq_ignore_ascii_case(&c.from_domain))
        {
            symbols.push("DKIM_VALID_AU".into());
        }
    }
    if out
        .dkim
        .iter()
        .any(|d| matches!(d.result, "fail" | "neutral" | "permerror"))
    {
        symbols.push("DKIM_INVALID".into());
    }
    if out.dkim.iter().any(|d| d.result == "temperror") {
        symbols.push("DKIM_TEMPERROR".into());
    }
    symbols.push(
        match out.arc {
            "pass" => "ARC_VALID",
            "none" => "ARC_NONE",
            _ => "ARC_INVALID",
        }
        .into(),
    );
    symbols
}

/// Time allowed for one DNS lookup (`[dns] timeout_ms`).
pub fn lookup_timeout(dns: &DnsConfig) -> Duration {
    Duration::from_millis(dns.timeout_ms.max(1))
}

/// The resolver described by `[dns]` (the system's when no name servers are listed).
pub fn build_resolver(dns: &DnsConfig) -> Result<MessageAuthenticator, String> {
    let timeout = lookup_timeout(dns);
    let addrs = dns.nameserver_addrs()?;
    let (config, mut opts) = if addrs.is_empty() {
        read_system_conf().map_err(|e| {
            format!("cannot read the system resolver configuration (/etc/resolv.conf): {e}; set [dns] nameservers")
        })?
    } else {
        let servers = addrs
            .iter()
            .map(|addr| {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for conn in &mut ns.connections {
                    conn.port = addr.port();
                }
                ns
            })
            .collect();
        (
            ResolverConfig::from_parts(None, vec![], servers),
            ResolverOpts::default(),
        )
    };
    // One try per server within the lookup timeout: the callers' budgets bound the whole
    // check, and a retry would only double the wait on a dead server.
    opts.timeout = timeout;
    opts.attempts = 1;
    MessageAuthenticator::new(config, opts)
        .map_err(|e| format!("cannot set up the DNS resolver: {e}"))
}

/// Runs `fut` within `budget`; on overrun gives `on_timeout()`.
async fn bounded<T>(
    budget: Duration,
    fut: impl std::future::Future<Output = T>,
    on_timeout: impl FnOnce() -> T,
) -> T {
    match tokio::time::timeout(budget, fut).await {
        Ok(v) => v,
        Err(_) => on_timeout(),
    }
}

fn timeout_error() -> AuthError {
    AuthError::Dns(DnsError::Resolver("timed out".into()))
}

/// The domain of an address (`user@domain`), lowercased by the caller where it matters.
fn domain_of(address: &str) -> Option<&str> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('>').trim())
        .filter(|d| !d.is_empty())
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn spf_symbol(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "PASS",
        SpfResult::Fail => "FAIL",
        SpfResult::SoftFail => "SOFTFAIL",
        SpfResult::Neutral => "NEUTRAL",
        SpfResult::TempError => "TEMPERROR",
        SpfResult::PermError => "PERMERROR",
        SpfResult::None => "NONE",
    }
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

/// The `pct=` tag of a DMARC record (0..=100); an invalid value means the tag is absent.
fn dmarc_pct_tag(record: &str) -> Option<u8> {
    record.split(';').find_map(|tag| {
        let (key, value) = tag.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("pct") {
            return None;
        }
        value.trim().parse::<u8>().ok().filter(|&p| p <= 100)
    })
}

/// Whether this message falls in the `pct` share that gets the policy: a hash of the
/// message and the time, so retries of one message are not bound to one outcome.
fn sampled(pct: u8, raw: &[u8]) -> bool {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    raw.hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    (h.finish() % 100) < u64::from(pct)
}

fn dmarc_word(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

/// Whether an `Authentication-Results` field value claims `authserv_id` (RFC 8601 §2.2: the
/// authserv-id is the first token, before any version and the first `;`).
pub fn claims_authserv_id(value: &str, authserv_id: &str) -> bool {
    let mut v = value.trim_start();
    // Skip leading comments, e.g. "(forged) mx.example.org; ...".
    while let Some(rest) = v.strip_prefix('(') {
        match rest.find(')') {
            Some(end) => v = rest[end + 1..].trim_start(),
            None => return false,
        }
    }
    let id = v
        .split(|c: char| c == ';' || c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("");
    !id.is_empty() && id.eq_ignore_ascii_case(authserv_id)
}

#[cfg(test)]
mod tests {

    #[test]
    fn dmarc_pct_tag_parsing() {
        assert_eq!(dmarc_pct_tag("v=DMARC1; p=reject; pct=25"), Some(25));
        assert_eq!(dmarc_pct_tag("v=DMARC1;p=reject;PCT = 0 "), Some(0));
        assert_eq!(dmarc_pct_tag("v=DMARC1; p=reject"), None);
        assert_eq!(dmarc_pct_tag("v=DMARC1; pct=101"), None);
        assert_eq!(dmarc_pct_tag("v=DMARC1; pct=x"), None);
        assert!(sampled(100, b"m") && !sampled(0, b"m"));
    }

    use super::*;

    #[test]
    fn authserv_id_matching() {
        assert!(claims_authserv_id(
            " mx.example.test; spf=pass",
            "mx.example.test"
        ));
        assert!(claims_authserv_id(
            "MX.Example.Test 1; dkim=pass",
            "mx.example.test"
        ));
        assert!(claims_authserv_id(
            "(c) mx.example.test;\r\n\tspf=pass",
            "mx.example.test"
        ));
        assert!(!claims_authserv_id(
            " other.example; spf=pass",
            "mx.example.test"
        ));
        assert!(!claims_authserv_id(
            " mx.example.test.evil; x",
            "mx.example.test"
        ));
        assert!(!claims_authserv_id("", "mx.example.test"));
    }

    #[test]
    fn domain_of_addresses() {
        assert_eq!(domain_of("a@example.test"), Some("example.test"));
        assert_eq!(domain_of(""), None);
        assert_eq!(domain_of("a@"), None);
    }
}
