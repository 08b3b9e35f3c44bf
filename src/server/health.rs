//! Readiness: can mail flow through this instance right now?
//!
//! `/readyz` answers 200 only when every part a message needs is there: the rules loaded,
//! the upstream answering SMTP (not needed when delivering to a Maildir), and clamd answering
//! PING when virus scanning is on, and the state store (Redis) when greylisting or rate limits
//! use it. A load balancer then sends clients elsewhere instead of
//! to an instance that could only answer 451. A failed rule *reload* does not make the
//! instance unready (the previous rules keep working), but the report shows it.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::Services;
use crate::relay::Relay;

/// How long one readiness check may wait for a part.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The result of the checks: ready or not, and one line per part.
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<(&'static str, Result<String, String>)>,
}

impl Readiness {
    /// `ready` / `not ready`, then `part: ok (...)` or `part: FAILED (...)` lines.
    pub fn report(&self) -> String {
        let mut out = String::from(if self.ready { "ready\n" } else { "not ready\n" });
        for (part, result) in &self.checks {
            match result {
                Ok(detail) => out.push_str(&format!("{part}: ok ({detail})\n")),
                Err(detail) => out.push_str(&format!("{part}: FAILED ({detail})\n")),
            }
        }
        out
    }
}

/// Runs the checks (concurrently; each bounded by a timeout).
pub async fn readiness(services: &Services) -> Readiness {
    let status = services.filter.status();
    let rules = if status.ok {
        Ok(format!("{} rules", status.rules))
    } else {
        // The previous rule set is still in use: still ready, but say so.
        Ok(format!(
            "last reload FAILED, previous rules in use: {}",
            status.errors.first().map_or("", String::as_str)
        ))
    };
    let (upstream, clamd, state) =
        tokio::join!(upstream(services), clamd(services), state(services));
    let mut checks = vec![("rules", rules), ("upstream", upstream)];
    if let Some(clamd) = clamd {
        checks.push(("clamd", clamd));
    }
    if let Some(state) = state {
        checks.push(("state", state));
    }
    Readiness {
        ready: checks.iter().all(|(_, r)| r.is_ok()),
        checks,
    }
}

/// The upstream answers with a 220 greeting (we then say QUIT, politely).
async fn upstream(services: &Services) -> Result<String, String> {
    let smtp = match services.relay() {
        None => return Ok("milter only, no upstream needed".into()),
        Some(Relay::Maildir(_)) => return Ok("Maildir delivery, no upstream needed".into()),
        Some(Relay::Smtp(smtp)) => smtp,
    };
    upstream_greets(&smtp.settings.address, CHECK_TIMEOUT).await
}

/// Connects to the upstream SMTP server at `address`, reads its greeting (which must be
/// 220, possibly multi-line) within `limit`, and says QUIT. Also the start-up probe.
pub async fn upstream_greets(address: &str, limit: Duration) -> Result<String, String> {
    let check = async {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        // A multi-line greeting ends with "220 ".
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .await
                .map_err(|e| format!("{address}: {e}"))?;
            if n == 0 {
                return Err(format!("{address}: closed before greeting"));
            }
            if !line.starts_with("220") {
                return Err(format!("{address}: greeted with {}", line.trim_end()));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        let _ = reader.get_mut().write_all(b"QUIT\r\n").await;
        Ok(format!("{address} greets"))
    };
    match tokio::time::timeout(limit, check).await {
        Ok(result) => result,
        Err(_) => Err(format!("{address}: no greeting within {limit:?}")),
    }
}

/// The state store answers (greylisting, rate limits), when they are on. Down with
/// `on_error = "tempfail"`: not ready (every checked transaction would be deferred); with
/// `"accept"` still ready, but the report says the checks are skipped.
async fn state(services: &Services) -> Option<Result<String, String>> {
    let state = services.filter.state()?;
    Some(match state.ping().await {
        Ok(detail) => Ok(detail),
        Err(e) => match state.on_error() {
            crate::config::StateOnError::Tempfail => Err(format!(
                "{}: {e}; on_error = tempfail: checked mail is deferred (451 4.3.0)",
                state.describe()
            )),
            crate::config::StateOnError::Accept => Ok(format!(
                "DOWN {}: {e}; on_error = accept: greylisting and rate limits are skipped",
                state.describe()
            )),
        },
    })
}

/// clamd answers PING, when virus scanning is on; `None` when it is off.
async fn clamd(services: &Services) -> Option<Result<String, String>> {
    let scanner = services.filter.clamav()?;
    let address = scanner.address().to_string();
    Some(
        match tokio::time::timeout(CHECK_TIMEOUT, scanner.ping()).await {
            Ok(Ok(())) => Ok(format!("{address} answers PING")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("{address}: no PONG within {CHECK_TIMEOUT:?}")),
        },
    )
}
