//! mailwarden as the milter of a real Postfix 3.7 (`smtpd_milters`, the lines of
//! deploy/postfix/milter/main.cf.fragment, read at test time): Postfix keeps the SMTP session,
//! mailwarden's verdict decides what Postfix answers and what it delivers.
//!
//! * GTUBE is refused by Postfix with our 550 text; a tagged message is delivered once with
//!   our X-Spam-* and Authentication-Results headers (a forged X-Spam-Flag removed, the
//!   subject prefixed); a clean one is delivered once, unchanged but for our headers.
//! * Discard (250, nothing delivered) and quarantine (Postfix's hold queue, `postqueue`).
//! * EICAR gets 554 with a real clamd.
//! * mailwarden stopped: Postfix applies `milter_default_action = tempfail` (451).
//! * 100 concurrent SMTP sessions through Postfix, each message judged and delivered once.
//! * Every transaction leaves one mailwarden log line with Postfix's queue id.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{Clamd, Dns, Postfix, Proxy, SmtpClient};

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// Our test rules: the shipped set plus markers that force each action.
const RULES: &str = "body TAGME /zzqtagme/\nscore TAGME 6.0\n\
    body DISCARDME /zzqdiscardme/\nscore DISCARDME 0.1\naction DISCARDME discard\n\
    body HOLDME /zzqholdme/\nscore HOLDME 0.1\naction HOLDME quarantine\n";

/// The port of the running mailwarden's milter listener (from its start-up log line).
fn milter_port(mw: &Proxy) -> u16 {
    let line = mw.wait_for_log("smtpd_milters = inet:");
    let after = line
        .split("smtpd_milters = inet:")
        .nth(1)
        .unwrap_or_else(|| panic!("no milter address in {line}"));
    let addr: String = after
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("milter address {addr:?} in {line}: {e}"))
        .port()
}

/// A mailwarden with a milter listener (and its proxy listener, unused), `extra` config
/// appended; and a Postfix using it as its milter.
fn start(extra: &str) -> (Proxy, Postfix, Dns) {
    let dns = Dns::start("txt-record=example.test,\"v=spf1 ip4:127.0.0.0/8 -all\"\n");
    let body = format!(
        "[server]\nhostname = \"mx.example.test\"\n\n\
         [upstream]\nurl = \"maildir:@DIR@/maildir\"\n\n\
         [milter]\nlisten = [\"127.0.0.1:0\"]\nprogress_secs = 1\n\n\
         [rules]\npaths = [\"rules\", \"@DIR@/test.cf\"]\n\n\
         [policy]\nsubject_prefix = \"[SPAM] \"\nquarantine_dir = \"@DIR@/quarantine\"\n\n\
         [dns]\nnameservers = [\"{}\"]\ntimeout_ms = 1000\n\n\
         [auth]\nenabled = true\n\n{extra}",
        dns.addr
    );
    let mw = Proxy::start_with_files(&body, &[("test.cf", RULES.as_bytes())]);
    let port = milter_port(&mw);
    let pf = Postfix::start_with_milter(&format!("inet:127.0.0.1:{port}"), None);
    (mw, pf, dns)
}

fn message(subject: &str, extra_header: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.test>\r\nTo: user@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}.{}@example.test>\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\n\
         {extra_header}\r\n{body}\r\n",
        subject.len()
    )
    .into_bytes()
}

/// One transaction to Postfix; the end-of-data reply.
fn send(pf: &Postfix, msg: &[u8]) -> support::Reply {
    let mut c = SmtpClient::connect_ehlo(pf.addr(), "client.example.test");
    let r = c.cmd("MAIL FROM:<alice@example.test>");
    c.expect_code(&r, 250, "MAIL FROM");
    let r = c.cmd("RCPT TO:<user@example.org>");
    c.expect_code(&r, 250, "RCPT TO");
    let r = c.data(msg);
    c.quit();
    r
}

fn header_block(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg);
    text.split("\r\n\r\n")
        .next()
        .or_else(|| text.split("\n\n").next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn postfix_answers_with_our_verdicts_and_delivers_with_our_headers() {
    let (mw, pf, _dns) = start("");

    let r = send(&pf, &message("gtube", "", GTUBE));
    assert_eq!(r.code, 550, "GTUBE: {}\n{}", r.wire(), pf.log());
    assert_eq!(r.enhanced(), Some("5.7.1"), "{}", r.wire());
    assert!(
        r.text().contains("Message rejected as spam"),
        "our text, through Postfix: {}",
        r.wire()
    );

    let tagged = message("offer", "X-Spam-Flag: YES-forged\r\n", "zzqtagme and more");
    let r = send(&pf, &tagged);
    assert_eq!(r.code, 250, "tagged: {}", r.wire());
    let clean = message("hello", "", "see you tomorrow");
    let r = send(&pf, &clean);
    assert_eq!(r.code, 250, "clean: {}", r.wire());

    let got = pf.wait_for_messages(2, support::LONG);
    assert_eq!(
        got.len(),
        2,
        "exactly the two accepted messages:\n{}",
        pf.log()
    );
    let by_subject = |s: &str| {
        got.iter()
            .map(|m| header_block(m))
            .find(|h| h.contains(s))
            .unwrap_or_else(|| panic!("no delivered message with {s}"))
    };
    let t = by_subject("Message-ID: <offer.");
    if std::env::var_os("MILTER_TEST_SHOW").is_some() {
        eprintln!(
            "--- tagged as delivered ---\n{t}\n--- mailwarden ---\n{}",
            mw.log()
        );
    }
    assert!(
        t.contains("X-Spam-Flag: YES\r\n") || t.contains("X-Spam-Flag: YES\n"),
        "{t}"
    );
    assert!(!t.contains("YES-forged"), "the forged flag is removed: {t}");
    assert!(t.contains("X-Spam-Status: Yes, score=6.0"), "{t}");
    assert!(t.contains("Subject: [SPAM] offer"), "{t}");
    assert!(
        t.contains("Authentication-Results: mx.example.test;"),
        "{t}"
    );
    assert!(
        t.contains("spf=pass"),
        "SPF of example.test passes for 127.0.0.1: {t}"
    );
    // Our fields are on top, above Postfix's own Received.
    let first = t.lines().next().unwrap_or_default();
    assert!(!first.starts_with("Received:"), "{t}");
    let c = by_subject("Message-ID: <hello.");
    assert!(c.contains("X-Spam-Flag: NO"), "{c}");
    assert!(c.contains("Subject: hello"), "{c}");

    // One log line per transaction, with Postfix's queue id.
    let log = mw.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("message ")).collect();
    let count = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
    assert_eq!(count("action=reject"), 1, "{log}");
    assert_eq!(count("action=tag"), 1, "{log}");
    assert_eq!(count("action=accept"), 1, "{log}");
    let cleanup_lines = pf.log_lines_containing("message-id=<offer.");
    assert_eq!(cleanup_lines.len(), 1, "{}", pf.log());
    for line in cleanup_lines {
        // "... postfix/cleanup[123]: 4Fabc123: message-id=<offer...>"
        let id = line
            .split(": ")
            .find(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()))
            .unwrap_or_else(|| panic!("no queue id in {line}"))
            .to_string();
        assert!(
            log.contains(&format!("id={id}")),
            "the log line names Postfix's queue id {id}:\n{log}"
        );
    }
}

#[test]
fn discard_drops_and_quarantine_holds_in_postfix() {
    let (mw, pf, _dns) = start("");
    let r = send(&pf, &message("drop", "", "zzqdiscardme"));
    assert_eq!(r.code, 250, "discard is accepted: {}", r.wire());
    let r = send(&pf, &message("hold", "", "zzqholdme"));
    assert_eq!(r.code, 250, "quarantine is accepted: {}", r.wire());
    let r = send(&pf, &message("fine", "", "see you"));
    assert_eq!(r.code, 250, "{}", r.wire());

    let got = pf.wait_for_messages(1, support::LONG);
    std::thread::sleep(Duration::from_millis(500));
    let got_after = pf.delivered();
    assert_eq!(
        got.len(),
        1,
        "only the clean message is delivered:\n{}",
        pf.log()
    );
    assert_eq!(got_after.len(), 1, "and nothing more later:\n{}", pf.log());
    assert!(header_block(&got_after[0]).contains("Subject: fine"));
    let held = pf.postqueue_held();
    assert_eq!(held.len(), 1, "one message on hold: {held:?}\n{}", pf.log());
    assert!(
        pf.log().contains("milter-hold"),
        "Postfix logs the milter's hold:\n{}",
        pf.log()
    );
    let log = mw.log();
    assert!(log.contains("action=discard"), "{log}");
    assert!(log.contains("action=quarantine"), "{log}");
}

#[test]
fn eicar_gets_554_with_a_real_clamd() {
    let clamd = Clamd::start();
    let (_mw, pf, _dns) = start(&format!(
        "[clamav]\nenabled = true\naddress = \"{}\"\n",
        clamd.address()
    ));
    let r = send(&pf, &message("virus", "", EICAR));
    assert_eq!(r.code, 554, "EICAR: {}\n{}", r.wire(), pf.log());
    let r = send(&pf, &message("clean", "", "nothing to see"));
    assert_eq!(r.code, 250, "{}", r.wire());
    let got = pf.wait_for_messages(1, support::LONG);
    assert_eq!(got.len(), 1);
    assert!(header_block(&got[0]).contains("Subject: clean"));
}

#[test]
fn mailwarden_stopped_means_postfix_tempfails() {
    let (mut mw, pf, _dns) = start("");
    let r = send(&pf, &message("before", "", "hi"));
    assert_eq!(r.code, 250, "{}", r.wire());
    mw.sigterm();
    assert!(
        mw.wait_exit(support::LONG).is_some(),
        "mailwarden stops on SIGTERM"
    );
    // Postfix refuses at the first stage it would ask the milter about (its connect attempt
    // fails at CONNECT, EHLO or MAIL): the first reply that is not positive.
    let mut c = SmtpClient::connect_greeted(pf.addr());
    let mut r = c.cmd("EHLO client.example.test");
    for next in [
        "MAIL FROM:<alice@example.test>",
        "RCPT TO:<user@example.org>",
    ] {
        if r.code != 250 {
            break;
        }
        r = c.cmd(next);
    }
    if r.code == 250 {
        r = c.data(&message("after", "", "hi"));
    }
    assert_eq!(
        r.code,
        451,
        "milter_default_action = tempfail: {}",
        r.wire()
    );
    assert_eq!(r.enhanced(), Some("4.7.1"), "{}", r.wire());
    let got = pf.wait_for_messages(1, support::LONG);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pf.delivered().len(), 1, "only the first message: {got:?}");
}

#[test]
fn a_hundred_concurrent_sessions() {
    let (mw, pf, _dns) = start("");
    let addr = pf.addr();
    let threads: Vec<_> = (0..100)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = SmtpClient::connect_ehlo(addr, "client.example.test");
                let msg = message(&format!("n{i}"), "", "concurrent hello");
                let r = c.send_mail("alice@example.test", &["user@example.org"], &msg);
                c.quit();
                r.code
            })
        })
        .collect();
    let codes: Vec<u16> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    assert!(codes.iter().all(|&c| c == 250), "{codes:?}");
    let got = pf.wait_for_messages(100, Duration::from_secs(120));
    assert_eq!(got.len(), 100, "each message delivered once");
    let mut ids: Vec<String> = got
        .iter()
        .filter_map(|m| {
            header_block(m)
                .lines()
                .find(|l| l.starts_with("Message-ID:"))
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100, "no duplicates");
    let judged = mw
        .log()
        .lines()
        .filter(|l| l.contains("message relayed") || l.contains("action=accept"))
        .count();
    assert!(judged >= 100, "every message judged:\n{}", mw.log());
    let (_, metrics) = mw.http_get("/metrics");
    let value = |series: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(-1.0)
    };
    assert!(
        value("mailwarden_milter_sessions_total") >= 100.0,
        "one milter session per SMTP session:\n{metrics}"
    );
}
