//! Shutdown: SIGTERM drains, nothing acknowledged is lost, nothing is delivered twice.
//!
//! The proxy runs in front of a real Postfix. Clients keep sending while the proxy gets
//! SIGTERM; afterwards every message a client got `250` for must be in Postfix's Maildir
//! exactly once, and no other message may be there. The grace period (`[server]
//! shutdown_grace`) is checked separately: a client that stalls inside a transaction gets
//! `421` when it is over, and the proxy exits.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Postfix, Proxy, SmtpClient, messages};

/// What each client was told, by Message-ID: the final reply code, or 0 for "no reply".
type Outcomes = Arc<Mutex<BTreeMap<String, u16>>>;

/// Sends messages in one session until the proxy closes it.
fn client_loop(addr: std::net::SocketAddr, who: usize, outcomes: Outcomes) {
    let Ok(mut c) = SmtpClient::try_connect(addr) else {
        return;
    };
    if c.read_reply().map(|r| r.code).ok() != Some(220)
        || c.try_cmd("EHLO load.example.org").map(|r| r.code).ok() != Some(250)
    {
        return;
    }
    for n in 0.. {
        let id = format!("<load-{who}-{n}@example.org>");
        let message = format!(
            "Message-ID: {id}\r\nFrom: a@example.org\r\nTo: user@example.org\r\nSubject: load {who} {n}\r\n\r\nbody {n}\r\n"
        );
        let step = |c: &mut SmtpClient, line: &str| c.try_cmd(line).map(|r| r.code).unwrap_or(0);
        if step(&mut c, "MAIL FROM:<a@example.org>") != 250 {
            return;
        }
        if step(&mut c, "RCPT TO:<user@example.org>") != 250 {
            return;
        }
        let code = c.try_data(message.as_bytes()).map(|r| r.code).unwrap_or(0);
        outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, code);
        if code != 250 {
            return;
        }
    }
}

#[test]
fn sigterm_under_load_loses_and_duplicates_nothing() {
    let pf = Postfix::start();
    let mut proxy = Proxy::start(&format!(
        "[server]\nhostname = \"mx.example.test\"\nmax_sessions_per_ip = 100\n[upstream]\nurl = \"{}\"\n",
        pf.url()
    ));
    let outcomes: Outcomes = Arc::default();
    let clients: Vec<_> = (0..50)
        .map(|who| {
            let (addr, outcomes) = (proxy.addr(), outcomes.clone());
            std::thread::spawn(move || client_loop(addr, who, outcomes))
        })
        .collect();
    // Let the load build up, then stop the proxy in the middle of it.
    let warm = support::wait_until(Duration::from_secs(30), || {
        (outcomes.lock().map(|o| o.len()).unwrap_or(0) >= 200).then_some(())
    });
    assert!(warm.is_some(), "the load did not get going");
    let signalled = Instant::now();
    proxy.sigterm();
    for c in clients {
        let _ = c.join();
    }
    let status = proxy.wait_exit(Duration::from_secs(40));
    assert!(status.is_some(), "the proxy did not exit after SIGTERM");
    let took = signalled.elapsed();

    let outcomes = outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let acked: Vec<&String> = outcomes
        .iter()
        .filter(|(_, code)| **code == 250)
        .map(|(id, _)| id)
        .collect();
    let delivered: Vec<String> = pf
        .settle()
        .iter()
        .filter_map(|m| messages::header(m, "Message-ID"))
        .collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &delivered {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let lost: Vec<&&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    let duplicated: Vec<(&&str, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let unacked_delivered: Vec<&String> = delivered
        .iter()
        .filter(|id| outcomes.get(*id) != Some(&250))
        .collect();
    println!(
        "{} transactions, {} acknowledged, {} delivered, shutdown took {took:?}",
        outcomes.len(),
        acked.len(),
        delivered.len()
    );
    assert!(lost.is_empty(), "acknowledged but not delivered: {lost:?}");
    assert!(duplicated.is_empty(), "delivered twice: {duplicated:?}");
    assert!(
        unacked_delivered.is_empty(),
        "delivered without a 250 to the client: {unacked_delivered:?}"
    );
    assert!(acked.len() >= 200);
}

#[test]
fn after_the_grace_period_a_stalled_transaction_gets_421() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut proxy = Proxy::start(&format!(
        "[server]\nhostname = \"mx.example.test\"\nshutdown_grace = \"1s\"\n[upstream]\nurl = \"maildir:{}\"\n",
        dir.path().join("mail").display()
    ));
    let mut idle = SmtpClient::connect_ehlo(proxy.addr(), "idle.example.org");
    let mut stalled = SmtpClient::connect_ehlo(proxy.addr(), "stalled.example.org");
    let r = stalled.cmd("MAIL FROM:<a@example.org>");
    stalled.expect_code(&r, 250, "MAIL");
    let r = stalled.cmd("RCPT TO:<b@example.org>");
    stalled.expect_code(&r, 250, "RCPT");
    let signalled = Instant::now();
    proxy.sigterm();
    // An idle session is closed at once with 421.
    let r = idle.read_reply().expect("a reply to the idle session");
    assert_eq!((r.code, r.enhanced()), (421, Some("4.3.2")), "{r}");
    // The stalled transaction may go on until the grace period is over, then gets 421.
    let r = stalled
        .read_reply()
        .expect("a reply to the stalled session");
    let waited = signalled.elapsed();
    assert_eq!(r.code, 421, "{r}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "421 after {waited:?}, grace 1 s"
    );
    assert!(proxy.wait_exit(Duration::from_secs(10)).is_some());
    let new = dir.path().join("mail").join("new");
    let delivered = std::fs::read_dir(&new).map(|d| d.count()).unwrap_or(0);
    assert_eq!(delivered, 0, "nothing was acknowledged, nothing delivered");
}
