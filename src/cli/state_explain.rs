//! `scan --explain` / `--json` for the checks that live on the shared state: each
//! `[[ratelimit]]` with its key for this message and the tokens left, and the greylisting
//! state of each triplet — read only, never taking a token or recording a triplet, so an admin
//! can ask "would this client be limited now?" on a live store.

use serde_json::json;

use crate::config::Config;
use crate::envelope::ClientInfo;
use crate::filter::Filter;
use crate::smtp::command::{MailFrom, MailParams};
use crate::state::{Grey, Take};

/// Attaches the configured state store to `filter` when greylisting or a rate limit is on.
/// An embedded store that does not exist yet is not created (a scan writes nothing): then
/// `Ok(Some(note))` says so instead.
pub fn attach(config: &Config, filter: &mut Filter) -> Result<Option<String>, String> {
    if !Filter::needs_state(config) {
        return Ok(None);
    }
    if let Ok(crate::config::StateTarget::Embedded { dir }) = config.state.target() {
        let file = dir.join("state.db");
        if !file.exists() {
            return Ok(Some(format!(
                "  greylisting and rate limits: no state yet ({} does not exist: every triplet is new, every bucket full)",
                file.display()
            )));
        }
    }
    let state = crate::filter::open_state(&config.state).map_err(|e| format!("[state]: {e}"))?;
    filter.attach_state(std::sync::Arc::new(state), config);
    Ok(None)
}

/// The state checks for one envelope: `(lines for --explain, JSON fields)`.
pub async fn report(
    filter: &Filter,
    ip: Option<std::net::IpAddr>,
    helo: Option<&str>,
    from: &str,
    recipients: &[String],
) -> (Vec<String>, serde_json::Map<String, serde_json::Value>) {
    let mut lines = Vec::new();
    let mut json = serde_json::Map::new();
    let addr = std::net::SocketAddr::new(
        ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        0,
    );
    let mut client = ClientInfo::connected(addr, std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    client.helo = helo.map(str::to_string);
    let mail = MailFrom {
        address: from.to_string(),
        params: MailParams::default(),
    };
    if let Some(r) = filter.ratelimit() {
        let mut list = Vec::new();
        for p in r.peek(&client, Some(&mail), recipients).await {
            let (line, value) = ratelimit_line(&p);
            lines.push(line);
            list.push(value);
        }
        json.insert("ratelimits".into(), list.into());
    }
    if let Some(g) = filter.greylist() {
        let triplets: Vec<_> = recipients
            .iter()
            .map(|r| g.triplet(&client, from, r))
            .collect();
        let mut list = Vec::new();
        match g.peek(&triplets).await {
            Ok(answers) => {
                for (t, a) in triplets.iter().zip(answers) {
                    lines.push(format!(
                        "  greylist {} {} -> {}: {}",
                        t.net,
                        display_sender(&t.sender),
                        t.recipient,
                        grey_words(a)
                    ));
                    list.push(json!({"network": t.net, "sender": t.sender, "recipient": t.recipient, "state": a.as_str(), "passes": a.passes()}));
                }
            }
            Err(e) => lines.push(format!("  greylist: state store unavailable: {e}")),
        }
        if recipients.is_empty() {
            lines.push("  greylist: give --rcpt (and --ip, --from) to see the triplets".into());
        }
        json.insert("greylist".into(), list.into());
    }
    (lines, json)
}

fn ratelimit_line(p: &crate::filter::ratelimit::Peeked) -> (String, serde_json::Value) {
    let head = format!(
        "  ratelimit {} ({} {}, burst {})",
        p.name, p.key, p.rate, p.burst
    );
    let value = json!({
        "name": p.name, "key": p.key, "value": p.value, "rate": p.rate, "burst": p.burst,
    });
    let Some(v) = &p.value else {
        return (
            format!("{head}: does not apply (no {} for this message)", p.key),
            value,
        );
    };
    let mut value = value;
    let text = match &p.result {
        Some(Ok(Take::Allowed { left })) => {
            value["tokens_left"] = json!(left);
            value["limited"] = json!(false);
            format!("{head} {v}: would pass, leaving {left:.1} tokens")
        }
        Some(Ok(Take::Limited { left, retry_in })) => {
            value["tokens_left"] = json!(left);
            value["limited"] = json!(true);
            format!(
                "{head} {v}: LIMITED ({left:.1} tokens left), passes again in {}s",
                retry_in.as_secs().max(1)
            )
        }
        Some(Err(e)) => {
            value["error"] = json!(e);
            format!("{head} {v}: state store unavailable: {e}")
        }
        None => format!("{head} {v}"),
    };
    (text, value)
}

fn display_sender(s: &str) -> &str {
    if s.is_empty() { "<>" } else { s }
}

fn grey_words(a: Grey) -> String {
    match a {
        Grey::Deferred {
            first: true,
            retry_in,
        } => format!(
            "unknown triplet: would be deferred (451 4.7.1), passes {}s after its first attempt",
            retry_in.as_secs()
        ),
        Grey::Deferred { retry_in, .. } => format!(
            "seen, retry too early: would be deferred, passes in {}s",
            retry_in.as_secs().max(1)
        ),
        Grey::Passed => "retried after the delay: would pass".into(),
        Grey::Known => "known (passed before): passes".into(),
        Grey::NetworkAllowed => "network auto-allowed: passes".into(),
    }
}
