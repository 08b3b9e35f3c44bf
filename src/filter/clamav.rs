//! Virus scanning with ClamAV's clamd, and what its answer means for a message.
//!
//! Every message is sent whole, exactly as it will be relayed, with clamd's `INSTREAM`
//! command (clamd decodes MIME and unpacks archives itself, so there is nothing to extract
//! here). The protocol (clamd(8), "COMMANDS"): `zINSTREAM\0`, then chunks each prefixed by
//! its length as a 4-byte big-endian integer, then a zero-length chunk; clamd answers one
//! line and closes the connection:
//!
//! * `stream: OK` — nothing found;
//! * `stream: <signature> FOUND` — a virus (clamd adds `.UNOFFICIAL` to signatures that are
//!   not from the official databases; that marker is dropped here, the name is kept);
//! * `<text> ERROR` — clamd could not scan it, e.g. `INSTREAM size limit exceeded. ERROR`
//!   when the message is larger than its `StreamMaxLength`.
//!
//! Anything else is a failed scan too. The wire protocol is the `clamav-client` crate's; the
//! reply is parsed here, and every call runs under a timeout (`clamav.timeout_ms` for the
//! whole scan, `clamav.connect_timeout_ms` for the connection). clamd closes the connection
//! after each reply, so connections are not reused; a semaphore bounds how many are open at
//! once (`clamav.max_concurrent`), and a burst waits for a slot within the same timeout.
//!
//! The policy side: a virus overrides the score (a virus with score 0 is still refused) and
//! the allow list (a trusted sender's infected machine is still infected); a failed scan
//! defers the message (`451 4.7.0`) unless `on_error = "accept"`.

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use clamav_client::tokio::TransportProtocol;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Semaphore;

use super::{Scan, Symbol};
use crate::config::{Action, ClamavConfig, ClamdAddress, OnError, OnVirus};
use crate::smtp::reply::Reply;

/// clamd found a virus (the name is in the log line, `scan` output and the reply).
pub const SYMBOL_VIRUS_FOUND: &str = "VIRUS_FOUND";
/// clamd could not scan the message and `on_error = "accept"` relayed it unscanned.
pub const SYMBOL_AV_FAIL: &str = "AV_FAIL";
/// The message is larger than `clamav.max_size` and was not scanned.
pub const SYMBOL_AV_SKIPPED_SIZE: &str = "AV_SKIPPED_SIZE";

/// The result headers we own; incoming copies are removed so a sender cannot forge a clean
/// result.
pub const AV_HEADERS: [&str; 2] = ["X-Virus-Scan", "X-Virus-Found"];

/// The INSTREAM chunk size (clamd limits only the total, `StreamMaxLength`).
const CHUNK: usize = 64 * 1024;

/// What clamd said about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `stream: OK`.
    Clean,
    /// `stream: NAME FOUND`: the signature name.
    Virus(String),
    /// Not sent: the message (this many bytes) is larger than `clamav.max_size`.
    Skipped(usize),
    /// No answer: unreachable, timed out, `ERROR`, or a reply we do not understand.
    Failed(Failure),
}

/// Why a scan failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// For the log, worded for the admin.
    pub reason: String,
    /// clamd did not answer in time (connect or scan timeout), as opposed to an error.
    pub timed_out: bool,
}

impl Failure {
    fn error(reason: impl Into<String>) -> Outcome {
        Outcome::Failed(Failure {
            reason: reason.into(),
            timed_out: false,
        })
    }

    fn timeout(reason: impl Into<String>) -> Outcome {
        Outcome::Failed(Failure {
            reason: reason.into(),
            timed_out: true,
        })
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl Outcome {
    /// The symbol this outcome sets, if any.
    pub fn symbol(&self) -> Option<&'static str> {
        match self {
            Outcome::Clean => None,
            Outcome::Virus(_) => Some(SYMBOL_VIRUS_FOUND),
            Outcome::Skipped(_) => Some(SYMBOL_AV_SKIPPED_SIZE),
            Outcome::Failed(_) => Some(SYMBOL_AV_FAIL),
        }
    }

    /// One word for logs and `scan --json` (`"av"`).
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Clean => "clean",
            Outcome::Virus(_) => "found",
            Outcome::Skipped(_) => "skipped",
            Outcome::Failed(_) => "failed",
        }
    }

    /// The result label for metrics: clean, virus, error, timeout or skipped.
    pub fn metric_result(&self) -> &'static str {
        match self {
            Outcome::Clean => "clean",
            Outcome::Virus(_) => "virus",
            Outcome::Skipped(_) => "skipped",
            Outcome::Failed(f) if f.timed_out => "timeout",
            Outcome::Failed(_) => "error",
        }
    }

    /// The signature name, if a virus was found.
    pub fn virus(&self) -> Option<&str> {
        match self {
            Outcome::Virus(name) => Some(name),
            _ => None,
        }
    }
}

/// Parses clamd's reply to INSTREAM (see the module documentation).
pub fn parse_reply(raw: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Failure::error(format!(
            "clamd sent a reply that is not text: {}",
            shorten(&String::from_utf8_lossy(raw))
        ));
    };
    // The reply ends with NUL for z-commands (`zINSTREAM`), or a newline for n-commands.
    let text = text.trim_end_matches(['\0', '\n', '\r']);
    if text.is_empty() {
        return Failure::error("clamd closed the connection without an answer");
    }
    let unexpected = || Failure::error(format!("unexpected reply from clamd: {}", shorten(text)));
    if text.chars().any(char::is_control) {
        return unexpected();
    }
    if let Some(error) = text.strip_suffix(" ERROR") {
        return Failure::error(format!("clamd answered ERROR: {}", shorten(error)));
    }
    let Some(result) = text.strip_prefix("stream: ") else {
        return unexpected();
    };
    if result == "OK" {
        return Outcome::Clean;
    }
    match result.strip_suffix(" FOUND").map(str::trim) {
        Some(name) if !name.is_empty() => {
            let name = name.strip_suffix(".UNOFFICIAL").unwrap_or(name);
            // The name goes into an SMTP reply and a header: ASCII only.
            let name = name
                .chars()
                .map(|c| if c.is_ascii() { c } else { '?' })
                .collect();
            Outcome::Virus(name)
        }
        _ => unexpected(),
    }
}

/// At most 200 characters of `text`, for a log line.
fn shorten(text: &str) -> String {
    let mut s: String = text.chars().take(200).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    format!("{s:?}")
}

/// A TCP connection to clamd within a time limit.
struct TimedTcp<'a> {
    addr: &'a str,
    limit: Duration,
}

impl TransportProtocol for TimedTcp<'_> {
    type Stream = TcpStream;

    fn connect(&self) -> impl Future<Output = io::Result<TcpStream>> {
        within(self.limit, TcpStream::connect(self.addr))
    }
}

/// A unix socket connection to clamd within a time limit.
struct TimedUnix<'a> {
    path: &'a std::path::Path,
    limit: Duration,
}

impl TransportProtocol for TimedUnix<'_> {
    type Stream = UnixStream;

    fn connect(&self) -> impl Future<Output = io::Result<UnixStream>> {
        within(self.limit, UnixStream::connect(self.path))
    }
}

async fn within<S>(limit: Duration, connect: impl Future<Output = io::Result<S>>) -> io::Result<S> {
    tokio::time::timeout(limit, connect).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "connection not established within clamav.connect_timeout_ms = {}",
                limit.as_millis()
            ),
        )
    })?
}

/// PING (`message` None) or INSTREAM over one transport.
async fn call<T: TransportProtocol>(transport: T, message: Option<&[u8]>) -> io::Result<Vec<u8>> {
    match message {
        Some(m) => clamav_client::tokio::scan_buffer(m, transport, Some(CHUNK)).await,
        None => clamav_client::tokio::ping(transport).await,
    }
}

/// The clamd client, shared by all sessions.
#[derive(Debug)]
pub struct Scanner {
    address: ClamdAddress,
    config: ClamavConfig,
    slots: Semaphore,
}

impl Scanner {
    /// A scanner for `[clamav]`; the error names the bad key.
    pub fn new(config: &ClamavConfig) -> Result<Scanner, String> {
        config.validate()?;
        Ok(Scanner {
            address: config.clamd_address()?,
            config: config.clone(),
            slots: Semaphore::new(config.max_concurrent),
        })
    }

    /// Builds the scanner when `[clamav] enabled = true`, and says at start-up what was
    /// chosen: disabled is logged, not silent; enabled logs the address and, when a runtime
    /// is running (`serve`), whether clamd answers PING (a warning only: clamd may start later,
    /// and until then `on_error` applies).
    pub fn load(config: &ClamavConfig, can_quarantine: bool) -> Result<Option<Scanner>, String> {
        if !config.enabled {
            tracing::info!(
                "virus scanning disabled ([clamav] enabled = false): messages are not scanned for malware"
            );
            return Ok(None);
        }
        let scanner = Scanner::new(config)?;
        tracing::info!(
            address = %scanner.address,
            on_virus = ?config.on_virus,
            on_error = ?config.on_error,
            max_size = config.max_size,
            "virus scanning enabled (clamd)"
        );
        if config.on_virus == OnVirus::Quarantine && !can_quarantine {
            tracing::warn!(
                "[clamav] on_virus = \"quarantine\" but policy.quarantine_dir is not set: infected messages are rejected instead (set policy.quarantine_dir to keep them)"
            );
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let probe = Scanner::new(config)?;
            runtime.spawn(async move {
                match probe.ping().await {
                    Ok(()) => tracing::info!(address = %probe.address, "clamd answers PING"),
                    Err(e) => tracing::warn!(
                        address = %probe.address,
                        error = %e,
                        "clamd does not answer now; until it does, [clamav] on_error = {:?} applies to every message",
                        probe.config.on_error
                    ),
                }
            });
        }
        Ok(Some(scanner))
    }

    pub fn address(&self) -> &ClamdAddress {
        &self.address
    }

    pub fn config(&self) -> &ClamavConfig {
        &self.config
    }

    /// Scans one message (as it will be relayed). Never fails: problems are `Failed`.
    pub async fn scan(&self, message: &[u8]) -> Outcome {
        if message.len() > self.config.max_size {
            return Outcome::Skipped(message.len());
        }
        let started = Instant::now();
        let limit = Duration::from_millis(self.config.timeout_ms);
        let outcome = match tokio::time::timeout(limit, self.scan_in_slot(message)).await {
            Ok(outcome) => outcome,
            Err(_) => Failure::timeout(format!(
                "no answer from clamd at {} within clamav.timeout_ms = {}",
                self.address, self.config.timeout_ms
            )),
        };
        tracing::debug!(
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            result = outcome.status(),
            "clamav scan"
        );
        outcome
    }

    async fn scan_in_slot(&self, message: &[u8]) -> Outcome {
        let Ok(_slot) = self.slots.acquire().await else {
            return Failure::error("the clamd scan slots are closed");
        };
        match self.request(Some(message)).await {
            Ok(reply) => parse_reply(&reply),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Failure::timeout(self.io_error(&e)),
            Err(e) => Failure::error(self.io_error(&e)),
        }
    }

    /// PING → PONG, within `timeout_ms` (for start-up and readiness checks).
    pub async fn ping(&self) -> Result<(), String> {
        let limit = Duration::from_millis(self.config.timeout_ms);
        match tokio::time::timeout(limit, self.request(None)).await {
            Err(_) => Err(format!(
                "no answer to PING from clamd at {} within clamav.timeout_ms = {}",
                self.address, self.config.timeout_ms
            )),
            Ok(Err(e)) => Err(self.io_error(&e)),
            Ok(Ok(reply))
                if reply.trim_ascii_end() == b"PONG\0" || reply.trim_ascii_end() == b"PONG" =>
            {
                Ok(())
            }
            Ok(Ok(reply)) => Err(format!(
                "clamd at {} answered PING with {}",
                self.address,
                shorten(&String::from_utf8_lossy(&reply))
            )),
        }
    }

    async fn request(&self, message: Option<&[u8]>) -> io::Result<Vec<u8>> {
        let limit = Duration::from_millis(self.config.connect_timeout_ms);
        match &self.address {
            ClamdAddress::Tcp(addr) => call(TimedTcp { addr, limit }, message).await,
            ClamdAddress::Unix(path) => call(TimedUnix { path, limit }, message).await,
        }
    }

    fn io_error(&self, e: &io::Error) -> String {
        let hint = match e.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => {
                " (is clamd running? clamav.address must match clamd.conf's TCPSocket/TCPAddr or LocalSocket)"
            }
            io::ErrorKind::PermissionDenied => {
                " (mailwarden's user may not open clamd's socket: add it to clamd's group or use TCP)"
            }
            _ => "",
        };
        format!("clamd at {}: {e}{hint}", self.address)
    }

    /// Applies the outcome to the scan's decision: a virus (`on_virus`) or a failed scan
    /// (`on_error = "tempfail"`) overrides a milder decision, the allow list's included.
    /// `symbol` describes a symbol by name (score and description from the rule files).
    pub fn apply(
        &self,
        outcome: &Outcome,
        scan: &mut Scan,
        can_quarantine: bool,
        subject_prefix: &str,
        symbol: &dyn Fn(&str) -> Symbol,
    ) -> Effect {
        if let Some(name) = outcome.symbol()
            && !scan.symbols.iter().any(|s| s.name == name)
        {
            scan.symbols.push(symbol(name));
        }
        let mut effect = Effect::default();
        match outcome {
            Outcome::Clean => {
                effect.headers.push("X-Virus-Scan: clean (ClamAV)".into());
                effect.summary = " av=clean".into();
            }
            Outcome::Skipped(size) => {
                effect.headers.push(format!(
                    "X-Virus-Scan: skipped ({size} bytes, above clamav.max_size)"
                ));
                effect.summary = " av=skipped-size".into();
            }
            Outcome::Failed(reason) => {
                effect.summary = " av=failed".into();
                match self.config.on_error {
                    OnError::Accept => effect.headers.push("X-Virus-Scan: failed".into()),
                    OnError::Tempfail => {
                        // 451: "local error in processing" (RFC 5321 §4.2.3); 4.7.0: other
                        // security status (RFC 3463 §3.8). The client keeps it and retries.
                        let reply =
                            Reply::new(451, "4.7.0", "Virus scanner unavailable, try again later");
                        effect.reply = raise(scan, Action::Tempfail, "virus scan failed", reply);
                    }
                }
                tracing::warn!(error = %reason, on_error = ?self.config.on_error, "virus scan failed");
            }
            Outcome::Virus(name) => {
                effect.summary = format!(" virus={name}");
                effect.headers.push(format!("X-Virus-Found: {name}"));
                let reason = format!("virus {name}");
                // 554 "transaction failed" (RFC 5321 §4.2.3), 5.7.1 "delivery not authorized,
                // message refused" (RFC 3463 §3.8).
                let reject = Reply::new(
                    554,
                    "5.7.1",
                    format!("Message rejected: virus found ({name})"),
                );
                effect.reply = match self.config.on_virus {
                    OnVirus::Reject => raise(scan, Action::Reject, &reason, reject),
                    OnVirus::Quarantine if can_quarantine => {
                        raise(scan, Action::Quarantine, &reason, reject);
                        None
                    }
                    OnVirus::Quarantine => {
                        effect.summary.push_str(" quarantine-unset");
                        raise(scan, Action::Reject, &reason, reject)
                    }
                    OnVirus::Tag => {
                        if raise(scan, Action::Tag, &reason, reject).is_some()
                            && scan.decision.subject_prefix.is_none()
                            && !subject_prefix.is_empty()
                        {
                            scan.decision.subject_prefix = Some(subject_prefix.to_string());
                        }
                        None
                    }
                };
            }
        }
        effect
    }
}

/// Sets `action` unless the decision is stricter already; returns the reply for it then.
fn raise(scan: &mut Scan, action: Action, reason: &str, reply: Reply) -> Option<Reply> {
    if action < scan.decision.action {
        return None;
    }
    scan.decision.action = action;
    scan.decision.reason = reason.to_string();
    Some(reply)
}

/// What the virus scan adds to a verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effect {
    /// The reply for a refusal the scan decided (None: the scan did not decide the action,
    /// or it needs no special reply).
    pub reply: Option<Reply>,
    /// Fields for a relayed message (`X-Virus-Scan`, `X-Virus-Found`).
    pub headers: Vec<String>,
    /// For the log line: ` virus=NAME`, ` av=failed`, ` av=clean`, ` av=skipped-size`.
    pub summary: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_and_found_replies() {
        assert_eq!(parse_reply(b"stream: OK\0"), Outcome::Clean);
        assert_eq!(parse_reply(b"stream: OK\n"), Outcome::Clean);
        assert_eq!(
            parse_reply(b"stream: Eicar-Test-Signature FOUND\0"),
            Outcome::Virus("Eicar-Test-Signature".into())
        );
        assert_eq!(
            parse_reply(b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0"),
            Outcome::Virus("Eicar-Test-Signature".into())
        );
        assert_eq!(
            parse_reply(b"stream: Win.Test.EICAR_HDB-1 FOUND\n"),
            Outcome::Virus("Win.Test.EICAR_HDB-1".into())
        );
    }

    #[test]
    fn error_replies_are_failures() {
        let o = parse_reply(b"INSTREAM size limit exceeded. ERROR\0");
        assert!(
            matches!(&o, Outcome::Failed(f) if f.reason.contains("INSTREAM size limit exceeded") && !f.timed_out),
            "{o:?}"
        );
        assert!(matches!(
            parse_reply(b"stream: lstat() failed ERROR\0"),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn anything_else_is_a_failure() {
        for bad in [
            &b""[..],
            b"\0",
            b"PONG\0",
            b"stream: FOUND\0",
            b"stream:  FOUND\0",
            b"stream: ok\0",
            b"stream: OK extra\0",
            b"OK\0",
            b"stream: OK\0stream: OK\0",
            b"stream: X\r\nBcc: y FOUND\0",
            b"\xff\xfe FOUND",
        ] {
            let o = parse_reply(bad);
            assert!(matches!(o, Outcome::Failed(_)), "{bad:?} -> {o:?}");
        }
    }

    fn scan_with(action: Action, symbols: &[&str]) -> Scan {
        Scan {
            symbols: symbols
                .iter()
                .map(|n| Symbol {
                    name: n.to_string(),
                    score: 0.0,
                    description: String::new(),
                })
                .collect(),
            score: 0.0,
            decision: super::super::policy::Decision {
                action,
                score: 0.0,
                required: 5.0,
                reason: "score".into(),
                forced_by: Vec::new(),
                subject_prefix: None,
            },
            timed_out: false,
            elapsed: Duration::ZERO,
            classifier: None,
        }
    }

    fn scanner(extra: &str) -> Scanner {
        let config: ClamavConfig =
            toml::from_str(&format!("enabled = true\n{extra}")).expect("toml");
        Scanner::new(&config).expect("scanner")
    }

    fn apply(s: &Scanner, outcome: &Outcome, scan: &mut Scan, can_quarantine: bool) -> Effect {
        let symbol = |n: &str| Symbol {
            name: n.to_string(),
            score: 0.0,
            description: String::new(),
        };
        s.apply(outcome, scan, can_quarantine, "[SPAM] ", &symbol)
    }

    #[test]
    fn a_virus_overrides_score_and_allow_list() {
        let virus = Outcome::Virus("Eicar-Test-Signature".into());
        let mut scan = scan_with(Action::Accept, &["MW_ALLOWLIST"]);
        let e = apply(&scanner(""), &virus, &mut scan, true);
        assert_eq!(scan.decision.action, Action::Reject);
        assert_eq!(
            e.reply,
            Some(Reply::new(
                554,
                "5.7.1",
                "Message rejected: virus found (Eicar-Test-Signature)"
            ))
        );
        assert_eq!(e.summary, " virus=Eicar-Test-Signature");
        assert!(scan.symbols.iter().any(|s| s.name == SYMBOL_VIRUS_FOUND));
    }

    #[test]
    fn quarantine_falls_back_to_reject_and_tag_keeps_stricter_decisions() {
        let virus = Outcome::Virus("V".into());
        let q = scanner("on_virus = \"quarantine\"");
        let mut scan = scan_with(Action::Tag, &[]);
        assert_eq!(apply(&q, &virus, &mut scan, true).reply, None);
        assert_eq!(scan.decision.action, Action::Quarantine);
        let mut scan = scan_with(Action::Accept, &[]);
        assert!(apply(&q, &virus, &mut scan, false).reply.is_some());
        assert_eq!(scan.decision.action, Action::Reject);

        let t = scanner("on_virus = \"tag\"");
        let mut scan = scan_with(Action::Accept, &[]);
        let e = apply(&t, &virus, &mut scan, true);
        assert_eq!(scan.decision.action, Action::Tag);
        assert_eq!(scan.decision.subject_prefix.as_deref(), Some("[SPAM] "));
        assert_eq!(e.headers, vec!["X-Virus-Found: V".to_string()]);
        let mut scan = scan_with(Action::Reject, &[]);
        apply(&t, &virus, &mut scan, true);
        assert_eq!(scan.decision.action, Action::Reject, "a spam reject stays");
    }

    #[test]
    fn a_failed_scan_defers_or_is_marked() {
        let failed = Failure::error("down");
        let mut scan = scan_with(Action::Tag, &[]);
        let e = apply(&scanner(""), &failed, &mut scan, false);
        assert_eq!(scan.decision.action, Action::Tempfail);
        assert_eq!(e.reply.map(|r| r.code()), Some(451));
        assert_eq!(e.summary, " av=failed");
        let mut scan = scan_with(Action::Accept, &[]);
        let e = apply(&scanner("on_error = \"accept\""), &failed, &mut scan, false);
        assert_eq!(scan.decision.action, Action::Accept);
        assert_eq!(e.reply, None);
        assert_eq!(e.headers, vec!["X-Virus-Scan: failed".to_string()]);
        assert!(scan.symbols.iter().any(|s| s.name == SYMBOL_AV_FAIL));
    }

    #[tokio::test]
    async fn large_messages_are_skipped_without_a_connection() {
        // Nothing listens on port 9 here; a skipped message never connects.
        let s = scanner("address = \"127.0.0.1:9\"\nmax_size = 10");
        assert_eq!(s.scan(&[b'x'; 11]).await, Outcome::Skipped(11));
        let refused = s.scan(b"0123456789").await;
        assert_eq!(refused.metric_result(), "error", "{refused:?}");
    }

    #[tokio::test]
    async fn a_silent_clamd_is_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                open.push(conn);
            }
        });
        let s = scanner(&format!("address = \"{addr}\"\ntimeout_ms = 200"));
        let o = s.scan(b"hello").await;
        assert_eq!(o.metric_result(), "timeout", "{o:?}");
        assert!(s.ping().await.is_err());
        hold.abort();
    }

    #[test]
    fn non_ascii_names_are_made_safe() {
        assert_eq!(
            parse_reply("stream: Virus.Ä FOUND\0".as_bytes()),
            Outcome::Virus("Virus.?".into())
        );
    }
}
