//! Relay fault tests: SMTP client → mailwarden → a scripted fake upstream.
//!
//! The fake upstream (tests/support/fake_upstream.rs) can refuse connections, never greet,
//! close the connection at any stage, answer any command with any reply, or answer too
//! late. These tests pin down what the proxy tells its client in each case:
//!
//! * upstream unreachable, silent, dead or too slow → a transient 421/451 with an
//!   enhanced code 4.4.x, never a 250 for a message the upstream did not take;
//! * upstream 4xx/5xx replies at MAIL, RCPT, DATA and end of data → relayed verbatim;
//! * after a failure, a new transaction (in the same session where the proxy kept it
//!   open) succeeds once the upstream is healthy again;
//! * a client vanishing mid-message never completes a message upstream;
//! * what the upstream receives: the client's message unchanged behind one Received
//!   header, via DATA or BDAT, and XCLIENT only where advertised.
//!
//! Why: a proxy that says 250 for mail the upstream never accepted loses mail silently,
//! and one that turns a temporary upstream problem into a permanent error bounces it. So
//! every test checks the invariant "the client got 250 for the end of data ⇔ the upstream
//! recorded the message as accepted". The proxy runs with short upstream timeouts (2 s)
//! so the slow cases finish quickly; the fake's slow
//! replies come 5 s late.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::messages;
use support::{Action, FakeUpstream, Proxy, Reply, Script, SmtpClient};

/// Bytes made readable for failure messages (long inputs cut in the middle).
fn show(bytes: &[u8]) -> String {
    support::show_limited(bytes, 4000)
}

const UPSTREAM_TIMEOUTS: &str =
    "connect_timeout_secs = 2\ncommand_timeout_secs = 2\ndata_timeout_secs = 2";

fn proxy_for_url(url: &str) -> Proxy {
    Proxy::start(&Proxy::config(url, "", UPSTREAM_TIMEOUTS))
}

fn proxy_for(fake: &FakeUpstream) -> Proxy {
    proxy_for_url(&fake.url())
}

/// What happened to one transaction attempt.
#[derive(Debug, Default)]
struct Attempt {
    mail: Option<Reply>,
    rcpts: Vec<Reply>,
    /// Reply to DATA (None with BDAT).
    data: Option<Reply>,
    /// Reply after the message (end of DATA or BDAT LAST).
    end: Option<Reply>,
    /// The connection broke (EOF/reset) during the attempt.
    broken: bool,
}

impl Attempt {
    fn accepted(&self) -> bool {
        self.end.as_ref().is_some_and(|r| r.code == 250)
    }

    /// The reply that decided the message's fate after MAIL/RCPT: the DATA reply if it
    /// was not 354, otherwise the end-of-data reply.
    fn after_data(&self) -> Option<&Reply> {
        match &self.data {
            Some(r) if r.code != 354 => Some(r),
            _ => self.end.as_ref(),
        }
    }

    /// The first reply that was neither 2xx nor 354.
    fn first_failure(&self) -> Option<&Reply> {
        self.mail
            .iter()
            .chain(self.rcpts.iter())
            .chain(self.data.iter())
            .chain(self.end.iter())
            .find(|r| !r.is_positive() && r.code != 354)
    }
}

/// Runs MAIL, RCPT..., DATA/BDAT as far as the connection allows. Commands are sent even
/// after a failed MAIL/RCPT (a real client might pipeline them); the message itself is
/// only sent after a 354 (or as BDAT, which carries it with the command).
fn attempt(c: &mut SmtpClient, from: &str, rcpts: &[&str], message: &[u8], bdat: bool) -> Attempt {
    let mut a = Attempt::default();
    match c.try_cmd(&format!("MAIL FROM:<{from}>")) {
        Ok(r) => a.mail = Some(r),
        Err(_) => {
            a.broken = true;
            return a;
        }
    }
    for rcpt in rcpts {
        match c.try_cmd(&format!("RCPT TO:<{rcpt}>")) {
            Ok(r) => a.rcpts.push(r),
            Err(_) => {
                a.broken = true;
                return a;
            }
        }
    }
    let end = if bdat {
        c.try_bdat(message, true)
    } else {
        match c.try_cmd("DATA") {
            Ok(r) if r.code == 354 => {
                a.data = Some(r);
                c.try_send(&support::client::dot_terminated(message))
                    .and_then(|()| c.read_reply())
            }
            Ok(r) => {
                a.data = Some(r);
                return a;
            }
            Err(e) => Err(e),
        }
    };
    match end {
        Ok(r) => a.end = Some(r),
        Err(_) => a.broken = true,
    }
    a
}

/// Asserts a transient failure with an enhanced code 4.4.x (421 or 451).
fn assert_transient_44x(c: &SmtpClient, r: Option<&Reply>, what: &str) {
    let ok = r.is_some_and(|r| {
        matches!(r.code, 421 | 451) && r.enhanced().is_some_and(|e| e.starts_with("4.4."))
    });
    assert!(
        ok,
        "{what}: expected 421/451 with enhanced code 4.4.x, got {}\ntranscript:\n{}",
        r.map(|r| r.to_string())
            .unwrap_or_else(|| "no reply".into()),
        c.transcript()
    );
}

/// The invariant: the client got 250 for the end of data exactly as often as the upstream
/// accepted a message, and each accepted message is the client's (behind one Received).
fn assert_invariant(fake: &FakeUpstream, attempts: &[&Attempt], sent: &[u8]) {
    eprintln!(
        "attempts: {attempts:#?}\nupstream transcript:\n{}",
        fake.transcript()
    );
    let accepted_by_client = attempts.iter().filter(|a| a.accepted()).count();
    let got = fake.messages();
    assert_eq!(
        got.len(),
        accepted_by_client,
        "client saw {accepted_by_client} accepted message(s) but the upstream accepted {}\n\
         attempts: {attempts:#?}\nupstream transcript:\n{}",
        got.len(),
        fake.transcript()
    );
    for m in &got {
        assert_relayed_unchanged(&m.body, sent);
    }
}

/// `body` must be the filter's result headers (X-Spam-*), then one
/// `Received: from ... (mailwarden) ...` header, then exactly `sent`.
fn assert_relayed_unchanged(body: &[u8], sent: &[u8]) {
    let body = skip_result_headers(body);
    assert!(
        body.starts_with(b"Received: from "),
        "upstream message does not start with the proxy's Received header:\n{}",
        show(body)
    );
    // The header ends at the first CRLF not followed by white space.
    let mut end = 0;
    loop {
        let rel = body[end..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("unterminated Received header:\n{}", show(body)));
        end += rel + 2;
        if !matches!(body.get(end), Some(b' ') | Some(b'\t')) {
            break;
        }
    }
    let header = String::from_utf8_lossy(&body[..end]);
    assert!(
        header.contains("(mailwarden)"),
        "the Received header should say (mailwarden): {header:?}"
    );
    assert!(
        &body[end..] == sent,
        "upstream got a different message than the client sent\n--- sent ---\n{}\n\
         --- upstream got (after the Received header) ---\n{}",
        show(sent),
        show(&body[end..])
    );
}

/// Skips leading X-Spam-* fields (with their continuation lines).
fn skip_result_headers(mut body: &[u8]) -> &[u8] {
    while messages::PROXY_RESULT_HEADERS.iter().any(|h| {
        body.len() > h.len()
            && body[..h.len()].eq_ignore_ascii_case(h.as_bytes())
            && body[h.len()] == b':'
    }) {
        loop {
            let Some(n) = body.windows(2).position(|w| w == b"\r\n") else {
                return body;
            };
            body = &body[n + 2..];
            if !matches!(body.first(), Some(b' ') | Some(b'\t')) {
                break;
            }
        }
    }
    body
}

fn message(id: &str) -> Vec<u8> {
    messages::simple(id, &format!("fault test {id}"), "body line\r\n.dot line")
}

/// Waits until the fake has finished handling `n` complete messages (accepted or not), so
/// delayed replies have played out.
fn wait_for_outcomes(fake: &FakeUpstream, n: usize, timeout: Duration) {
    let done = support::wait_until(timeout, || {
        (fake.messages().len() + fake.not_accepted().len() >= n).then_some(())
    });
    assert!(
        done.is_some(),
        "the fake upstream did not finish {n} message(s) within {timeout:?}\n{}",
        fake.transcript()
    );
}

/// If `r` is a 421 the proxy must close the connection: reconnect then. Otherwise the
/// session goes on.
fn continue_or_reconnect(c: SmtpClient, r: Option<&Reply>, addr: SocketAddr) -> SmtpClient {
    let mut c = c;
    if r.is_some_and(|r| r.code == 421) {
        c.expect_closed("after 421");
        SmtpClient::connect_ehlo(addr, "client.example.net")
    } else {
        let r = c.cmd("RSET");
        c.expect_code(&r, 250, "RSET after a failed transaction");
        c
    }
}

// ---------------------------------------------------------------------------------------
// The fake upstream itself
// ---------------------------------------------------------------------------------------

/// The harness: the fake speaks DATA (dot-unstuffing) and BDAT, records what it accepted,
/// and does not count a message whose 250 could not reach a vanished client.
#[test]
fn fake_upstream_self_test() {
    let fake = FakeUpstream::start(Script::default());
    let msg = messages::load("dots.eml");
    let mut c = SmtpClient::connect_greeted(fake.addr());
    let r = c.cmd("EHLO me.example.net");
    assert!(r.lines.iter().any(|l| l == "CHUNKING"), "{r}");
    c.send_mail("a@example.test", &["user@example.org"], &msg);
    let r = c.cmd("MAIL FROM:<b@example.test>");
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RCPT TO:<user@example.org>");
    c.expect_code(&r, 250, "RCPT");
    let (x, y) = msg.split_at(7);
    let r = c.bdat(x, false);
    c.expect_code(&r, 250, "BDAT");
    let r = c.bdat(y, true);
    c.expect_code(&r, 250, "BDAT LAST");

    fake.update(|s| {
        s.rcpt_by_addr.push((
            "bad@example.org".into(),
            Action::reply("550-5.1.1 first line\r\n550 5.1.1 second line"),
        ))
    });
    let r = c.cmd("MAIL FROM:<c@example.test>");
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RCPT TO:<bad@example.org>");
    assert_eq!(
        r,
        Reply::parse_wire("550-5.1.1 first line\r\n550 5.1.1 second line\r\n")
    );
    c.quit();

    let got = fake.messages();
    assert_eq!(got.len(), 2, "{}", fake.transcript());
    assert!(!got[0].via_bdat && got[1].via_bdat);
    assert_eq!(got[0].body, msg, "DATA body unstuffed");
    assert_eq!(got[1].body, msg, "BDAT body");
    assert_eq!(got[0].rcpts, vec!["user@example.org".to_string()]);

    // A delayed 250 for a client that has gone away is not an accepted message.
    fake.update(|s| {
        s.end_of_data = Action::Delay(Duration::from_millis(800), "250 2.0.0 late".into())
    });
    let mut c = SmtpClient::connect_ehlo(fake.addr(), "me.example.net");
    let r = c.cmd("MAIL FROM:<d@example.test>");
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RCPT TO:<user@example.org>");
    c.expect_code(&r, 250, "RCPT");
    let r = c.cmd("DATA");
    c.expect_code(&r, 354, "DATA");
    c.send(&support::client::dot_terminated(&msg));
    drop(c);
    wait_for_outcomes(&fake, 3, Duration::from_secs(10));
    assert_eq!(fake.messages().len(), 2);
    assert_eq!(fake.not_accepted().len(), 1);
}

/// The pure helpers the other tests rely on.
#[test]
fn support_helpers_self_test() {
    use support::client::{dot_stuff, dot_terminated};
    use support::fake_upstream::unstuff;
    let m = b".a\r\nb\r\n..c\r\n.\r\nd.\r\n";
    assert_eq!(dot_stuff(m), b"..a\r\nb\r\n...c\r\n..\r\nd.\r\n");
    assert_eq!(unstuff(&dot_stuff(m)), m);
    assert_eq!(dot_terminated(b"x"), b"x\r\n.\r\n");
    assert_eq!(
        dot_stuff(b"a\n.b"),
        b"a\n.b",
        "only dots after CRLF are stuffed"
    );

    assert_eq!(
        support::proxy::parse_listening(&support::strip_ansi(
            "\u{1b}[2m2026\u{1b}[0m INFO listening on \u{1b}[1m127.0.0.1:2525\u{1b}[0m x"
        ))
        .map(|a| a.port()),
        Some(2525)
    );

    let cfg = Proxy::complete_config("[server]\nlisten = [\"0.0.0.0:25\"]\nhostname = \"h\"\n");
    assert!(cfg.contains("listen = [\"127.0.0.1:0\"]") && !cfg.contains("0.0.0.0:25"));
    let cfg = Proxy::complete_config("[upstream]\nurl = \"maildir:/x\"\n");
    assert!(cfg.starts_with("[server]\nlisten = [\"127.0.0.1:0\"]"));

    let delivered = b"Return-Path: <a@b>\nDelivered-To: u@example.org\nReceived: from x\n\tby y\n\
        Received: from c (d [127.0.0.1])\n\tby mx.example.test (mailwarden) with ESMTP\n\
        Subject: s\n\nbody\n";
    let d = messages::split_delivered(delivered).expect("split");
    assert_eq!(d.added_above.len(), 3);
    assert!(d.proxy_received.contains("(mailwarden)"));
    assert_eq!(d.message, b"Subject: s\n\nbody\n");
    assert_eq!(
        messages::header(delivered, "received").as_deref(),
        Some("from x by y")
    );
}

// ---------------------------------------------------------------------------------------
// Unreachable, silent and dead upstreams
// ---------------------------------------------------------------------------------------

#[test]
fn upstream_refusing_connections_gives_4xx_and_retry_works_once_it_is_back() {
    let port = support::unused_port();
    let proxy = proxy_for_url(&format!("smtp://127.0.0.1:{port}"));
    let msg = message("refused");
    let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
    let a1 = attempt(&mut c, "s@example.test", &["user@example.org"], &msg, false);
    assert_transient_44x(
        &c,
        a1.mail.as_ref(),
        "MAIL with the upstream refusing connections",
    );
    assert!(!a1.accepted(), "250 for a message nobody took: {a1:#?}");

    let fake = FakeUpstream::start_on(port, Script::default());
    let mut c = continue_or_reconnect(c, a1.mail.as_ref(), proxy.addr());
    let a2 = attempt(&mut c, "s@example.test", &["user@example.org"], &msg, false);
    assert!(
        a2.accepted(),
        "retry once the upstream listens: {a2:#?}\n{}",
        c.transcript()
    );
    c.quit();
    assert_invariant(&fake, &[&a1, &a2], &msg);
}

#[test]
fn upstream_that_never_greets_gives_4xx() {
    for (what, greeting) in [
        ("never greets", Action::Hang),
        ("closes before greeting", Action::Close),
    ] {
        let fake = FakeUpstream::start(Script {
            greeting,
            ..Script::default()
        });
        let proxy = proxy_for(&fake);
        let msg = message("nogreet");
        let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
        let started = Instant::now();
        let a = attempt(&mut c, "s@example.test", &["user@example.org"], &msg, false);
        assert_transient_44x(&c, a.mail.as_ref(), &format!("MAIL, upstream {what}"));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: took {:?} despite 2 s upstream timeouts",
            started.elapsed()
        );
        assert_invariant(&fake, &[&a], &msg);

        // Healthy again: a new transaction succeeds.
        fake.set_script(Script::default());
        let mut c = continue_or_reconnect(c, a.mail.as_ref(), proxy.addr());
        let a2 = attempt(&mut c, "s@example.test", &["user@example.org"], &msg, false);
        assert!(a2.accepted(), "{what}: retry after recovery: {a2:#?}");
        c.quit();
        assert_invariant(&fake, &[&a, &a2], &msg);
    }
}

#[test]
fn upstream_closing_during_the_message_gives_4xx() {
    for chunking in [false, true] {
        let fake = FakeUpstream::start(Script {
            close_in_body: true,
            ..Script::default().chunking(chunking)
        });
        let proxy = proxy_for(&fake);
        let msg = message("close-in-body");
        let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
        let a = attempt(&mut c, "s@example.test", &["user@example.org"], &msg, false);
        assert_transient_44x(
            &c,
            a.after_data(),
            &format!("upstream closes during the message (upstream CHUNKING={chunking})"),
        );
        c.quit();
        assert_invariant(&fake, &[&a], &msg);
    }
}

#[test]
fn upstream_closing_before_the_end_of_data_reply_gives_4xx() {
    for chunking in [false, true] {
        for client_bdat in [false, true] {
            let fake = FakeUpstream::start(Script {
                end_of_data: Action::Close,
                ..Script::default().chunking(chunking)
            });
            let proxy = proxy_for(&fake);
            let msg = message("close-before-reply");
            let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
            let a = attempt(
                &mut c,
                "s@example.test",
                &["user@example.org"],
                &msg,
                client_bdat,
            );
            assert_transient_44x(
                &c,
                a.after_data(),
                &format!(
                    "upstream closes before its end-of-data reply (upstream CHUNKING={chunking}, \
                     client BDAT={client_bdat})"
                ),
            );
            wait_for_outcomes(&fake, 1, Duration::from_secs(10));
            assert_invariant(&fake, &[&a], &msg);

            // The next transaction needs a new upstream connection and succeeds.
            fake.set_script(Script::default().chunking(chunking));
            let mut c = continue_or_reconnect(c, a.after_data(), proxy.addr());
            let a2 = attempt(
                &mut c,
                "s@example.test",
                &["user@example.org"],
                &msg,
                client_bdat,
            );
            assert!(a2.accepted(), "retry after the upstream died: {a2:#?}");
            c.quit();
            assert_invariant(&fake, &[&a, &a2], &msg);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Upstream error replies are relayed verbatim
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Stage {
    Mail,
    Rcpt,
    Data,
    EndOfData,
}

#[test]
fn upstream_error_replies_are_relayed_verbatim() {
    let cases: &[(Stage, &str)] = &[
        (Stage::Mail, "451 4.3.2 Fake upstream says try again later"),
        (Stage::Mail, "550 5.7.1 Fake upstream rejects this sender"),
        (Stage::Rcpt, "450 4.2.1 Fake mailbox busy"),
        (
            Stage::Rcpt,
            "550-5.1.1 <user@example.org>: fake says no such user\r\n550 5.1.1 second line",
        ),
        (Stage::Data, "451 4.3.0 Fake upstream cannot take DATA now"),
        (Stage::Data, "554 5.5.1 Fake upstream refuses DATA"),
        (Stage::EndOfData, "452 4.3.1 Fake upstream out of storage"),
        (
            Stage::EndOfData,
            "554 5.7.1 Fake upstream rejects this content",
        ),
    ];
    for &(stage, reply) in cases {
        // DATA replies only exist when the proxy relays with DATA, i.e. without CHUNKING.
        let chunking_modes: &[bool] = match stage {
            Stage::Data => &[false],
            _ => &[false, true],
        };
        for &chunking in chunking_modes {
            let action = Action::reply(reply);
            let mut script = Script::default().chunking(chunking);
            match stage {
                Stage::Mail => script.mail = action,
                Stage::Rcpt => script.rcpt = action,
                Stage::Data => script.data = action,
                Stage::EndOfData => script.end_of_data = action,
            }
            let fake = FakeUpstream::start(script);
            let proxy = proxy_for(&fake);
            let msg = message("verbatim");
            let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
            let a = attempt(&mut c, "s@example.test", &["user@example.org"], &msg, false);
            let expected = Reply::parse_wire(reply);
            let got = match stage {
                Stage::Mail => a.mail.as_ref(),
                Stage::Rcpt => a.rcpts.first(),
                Stage::Data | Stage::EndOfData => a.after_data(),
            };
            assert_eq!(
                got,
                Some(&expected),
                "{stage:?} (upstream CHUNKING={chunking}): the client should get the \
                 upstream's reply verbatim\ntranscript:\n{}",
                c.transcript()
            );
            assert_eq!(
                a.first_failure(),
                Some(&expected),
                "{stage:?}: an earlier step failed\ntranscript:\n{}",
                c.transcript()
            );
            c.quit();
            wait_for_outcomes(
                &fake,
                usize::from(matches!(stage, Stage::EndOfData)),
                Duration::from_secs(10),
            );
            assert_invariant(&fake, &[&a], &msg);
        }
    }
}

#[test]
fn one_rejected_recipient_does_not_stop_the_others() {
    let fake = FakeUpstream::start(Script {
        rcpt_by_addr: vec![(
            "bad@example.org".into(),
            Action::reply("550 5.1.1 <bad@example.org>: Recipient address rejected"),
        )],
        ..Script::default()
    });
    let proxy = proxy_for(&fake);
    let msg = message("mixed-rcpts");
    let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
    let a = attempt(
        &mut c,
        "s@example.test",
        &["user@example.org", "bad@example.org", "u2@example.org"],
        &msg,
        false,
    );
    let codes: Vec<u16> = a.rcpts.iter().map(|r| r.code).collect();
    assert_eq!(codes, vec![250, 550, 250], "{a:#?}");
    assert_eq!(
        a.rcpts[1],
        Reply::parse_wire("550 5.1.1 <bad@example.org>: Recipient address rejected")
    );
    assert!(a.accepted(), "{a:#?}");
    c.quit();
    assert_invariant(&fake, &[&a], &msg);
    assert_eq!(
        fake.messages()[0].rcpts,
        vec!["user@example.org".to_string(), "u2@example.org".to_string()]
    );
}

// ---------------------------------------------------------------------------------------
// Slow upstreams
// ---------------------------------------------------------------------------------------

#[test]
fn upstream_slower_than_the_command_timeout_gives_4xx() {
    let fake = FakeUpstream::start(Script {
        mail: Action::Delay(Duration::from_secs(5), "250 2.1.0 Ok (late)".into()),
        ..Script::default()
    });
    let proxy = proxy_for(&fake);
    let msg = message("slow-mail");
    let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
    let started = Instant::now();
    let a = attempt(&mut c, "s@example.test", &["user@example.org"], &msg, false);
    assert_transient_44x(
        &c,
        a.mail.as_ref(),
        "MAIL answered after the command timeout",
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    c.quit();
    assert_invariant(&fake, &[&a], &msg);
}

#[test]
fn upstream_slower_than_the_data_timeout_gives_4xx() {
    for chunking in [false, true] {
        let fake = FakeUpstream::start(Script {
            end_of_data: Action::Delay(Duration::from_secs(5), "250 2.0.0 Ok (late)".into()),
            ..Script::default().chunking(chunking)
        });
        let proxy = proxy_for(&fake);
        let msg = message("slow-eod");
        let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
        let a = attempt(&mut c, "s@example.test", &["user@example.org"], &msg, false);
        assert_transient_44x(
            &c,
            a.after_data(),
            &format!("end-of-data reply after the data timeout (upstream CHUNKING={chunking})"),
        );
        c.quit();
        // The late 250 must find the proxy gone: otherwise the upstream keeps a message
        // the client was told to retry.
        wait_for_outcomes(&fake, 1, Duration::from_secs(20));
        assert_invariant(&fake, &[&a], &msg);
    }
}

// ---------------------------------------------------------------------------------------
// Recovery within a session
// ---------------------------------------------------------------------------------------

/// Changes a healthy script into a failing one.
type Breaker = fn(&mut Script);

#[test]
fn a_new_transaction_after_a_failed_one_succeeds_in_the_same_session() {
    let failures: Vec<(&str, Breaker)> = vec![
        ("451 at MAIL", |s| s.mail = Action::reply("451 4.3.0 later")),
        ("451 at RCPT", |s| s.rcpt = Action::reply("451 4.3.0 later")),
        ("451 at end of data", |s| {
            s.end_of_data = Action::reply("451 4.3.0 later")
        }),
        ("554 at end of data", |s| {
            s.end_of_data = Action::reply("554 5.7.1 no")
        }),
    ];
    for (what, break_it) in failures {
        let fake = FakeUpstream::start(Script::default());
        let proxy = proxy_for(&fake);
        let msg = message("recovery");
        let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
        fake.update(break_it);
        let a1 = attempt(&mut c, "s@example.test", &["user@example.org"], &msg, false);
        assert!(
            !a1.accepted() && a1.first_failure().is_some(),
            "{what}: {a1:#?}"
        );
        fake.set_script(Script::default());
        let r = c.cmd("RSET");
        c.expect_code(&r, 250, &format!("{what}: RSET"));
        let a2 = attempt(&mut c, "s@example.test", &["user@example.org"], &msg, false);
        assert!(
            a2.accepted(),
            "{what}: second transaction in the same session: {a2:#?}\n{}",
            c.transcript()
        );
        c.quit();
        assert_invariant(&fake, &[&a1, &a2], &msg);
    }
}

/// A client that vanishes in the middle of a message must not cause a complete message
/// upstream (the proxy must not finish the DATA or send BDAT LAST on its behalf), and the
/// next session must work.
#[test]
fn client_vanishing_mid_message_never_completes_upstream() {
    for chunking in [false, true] {
        for client_bdat in [false, true] {
            let fake = FakeUpstream::start(Script::default().chunking(chunking));
            let proxy = proxy_for(&fake);
            let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
            let r = c.cmd("MAIL FROM:<vanish@example.test>");
            c.expect_code(&r, 250, "MAIL");
            let r = c.cmd("RCPT TO:<u2@example.org>");
            c.expect_code(&r, 250, "RCPT");
            if client_bdat {
                let r = c.bdat(b"Subject: partial\r\n\r\nchunk one\r\n", false);
                c.expect_code(&r, 250, "BDAT chunk");
                // Announce a chunk, send half of it, vanish.
                c.send(b"BDAT 100 LAST\r\nonly forty bytes of the promised hundred..");
            } else {
                let r = c.cmd("DATA");
                c.expect_code(&r, 354, "DATA");
                c.send(b"Subject: partial\r\n\r\nhalf a message\r\n.not the end\r\n");
            }
            drop(c);
            std::thread::sleep(Duration::from_millis(500));

            let msg = message("after-vanish");
            let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
            let a = attempt(
                &mut c,
                "next@example.test",
                &["user@example.org"],
                &msg,
                false,
            );
            assert!(
                a.accepted(),
                "next session (upstream CHUNKING={chunking}, client BDAT={client_bdat}): {a:#?}"
            );
            c.quit();
            assert_invariant(&fake, &[&a], &msg);
            let m = &fake.messages()[0];
            assert_eq!(
                m.rcpts,
                vec!["user@example.org".to_string()],
                "envelope leaked"
            );
            assert!(
                m.mail_from.contains("<next@example.test>"),
                "{:?}",
                m.mail_from
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the upstream receives
// ---------------------------------------------------------------------------------------

#[test]
fn upstream_receives_the_message_unchanged() {
    let msg = messages::load("8bit.eml");
    for chunking in [false, true] {
        for client_bdat in [false, true] {
            let fake = FakeUpstream::start(Script::default().chunking(chunking));
            let proxy = proxy_for(&fake);
            let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
            let r = c.cmd("MAIL FROM:<s@example.test> BODY=8BITMIME");
            c.expect_code(&r, 250, "MAIL");
            let r = c.cmd("RCPT TO:<user@example.org>");
            c.expect_code(&r, 250, "RCPT");
            let r = if client_bdat {
                c.bdat(&msg, true)
            } else {
                c.data(&msg)
            };
            c.expect_code(&r, 250, "end of data");
            c.quit();
            let got = fake.messages();
            assert_eq!(got.len(), 1, "{}", fake.transcript());
            assert_relayed_unchanged(&got[0].body, &msg);
            assert!(
                got[0].mail_from.starts_with("MAIL FROM:<s@example.test>")
                    && got[0].mail_from.contains("BODY=8BITMIME"),
                "upstream MAIL line: {:?}",
                got[0].mail_from
            );
            if !chunking {
                assert!(
                    !got[0].via_bdat,
                    "BDAT sent to an upstream without CHUNKING"
                );
            }
        }
    }
}

#[test]
fn xclient_is_sent_only_when_the_upstream_offers_it() {
    for offered in [true, false] {
        let fake = FakeUpstream::start(Script::default().xclient(offered));
        let proxy = Proxy::start(&Proxy::config(
            &fake.url(),
            "",
            &format!("{UPSTREAM_TIMEOUTS}\nxclient = \"auto\""),
        ));
        let msg = message("xclient");
        let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client-helo.example.net");
        c.send_mail("s@example.test", &["user@example.org"], &msg);
        c.quit();
        let commands = fake.commands();
        eprintln!("XCLIENT offered={offered}: upstream saw {commands:#?}");
        let xclient: Vec<&String> = commands
            .iter()
            .filter(|l| l.to_ascii_uppercase().starts_with("XCLIENT"))
            .collect();
        if offered {
            assert!(
                xclient
                    .iter()
                    .any(|l| l.contains("HELO=client-helo.example.net"))
                    && xclient.iter().any(|l| l.contains("ADDR=127.0.0.1")),
                "XCLIENT offered: expected HELO and ADDR of the client, upstream saw {commands:#?}"
            );
            // After XCLIENT the session restarts: an EHLO must follow it before MAIL.
            let x = commands
                .iter()
                .position(|l| l.to_ascii_uppercase().starts_with("XCLIENT"))
                .expect("an XCLIENT line");
            let mail = commands
                .iter()
                .position(|l| l.to_ascii_uppercase().starts_with("MAIL"))
                .expect("a MAIL line");
            let ehlo_after: Vec<&String> = commands[x..mail]
                .iter()
                .filter(|l| l.to_ascii_uppercase().starts_with("EHLO"))
                .collect();
            assert!(
                !ehlo_after.is_empty(),
                "no EHLO between XCLIENT and MAIL: {commands:#?}"
            );
            // Postfix records the argument of the EHLO after XCLIENT as the HELO name
            // (see baseline_postfix_xclient_helo_comes_from_the_ehlo_after_it), so it must
            // be the client's.
            assert!(
                ehlo_after
                    .iter()
                    .all(|l| l.eq_ignore_ascii_case("EHLO client-helo.example.net")),
                "the EHLO after XCLIENT must carry the client's HELO name, upstream saw \
                 {commands:#?}"
            );
        } else {
            assert!(
                xclient.is_empty(),
                "XCLIENT sent to an upstream that did not offer it: {commands:#?}"
            );
        }
    }
}

/// An idle pooled upstream connection is closed with QUIT when `pool_idle_secs` has passed,
/// not left open until the upstream times it out (Postfix logs each such connection as
/// `timeout after …`). Issue 12 §3.
#[test]
fn idle_pooled_connections_are_closed_on_time_with_quit() {
    let fake = FakeUpstream::start(Script::default());
    let proxy = Proxy::start(&Proxy::config(
        &fake.url(),
        "",
        &format!("{UPSTREAM_TIMEOUTS}\npool_idle_secs = 1"),
    ));
    let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example");
    let r = c.send_mail("a@example.test", &["b@example.test"], &message("idle"));
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT");
    drop(c);
    // QUITs on the session's connection: #1 is the start-up reachability probe's own.
    let quits = || {
        fake.transcript()
            .lines()
            .filter(|l| l.ends_with(" C: QUIT") && !l.starts_with("#1 "))
            .count()
    };
    // Parked, not closed, right after the session.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(quits(), 0, "closed too early:\n{}", fake.transcript());
    let deadline = Instant::now() + Duration::from_secs(5);
    while quits() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        quits(),
        1,
        "the idle connection got no QUIT in time:\n{}",
        fake.transcript()
    );
}
