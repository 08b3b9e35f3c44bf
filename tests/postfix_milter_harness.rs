//! The milter set-up's Postfix side, before any mailwarden milter exists: a private Postfix
//! gets deploy/postfix/milter/main.cf.fragment (read at test time, only the milter address
//! changed) through `Postfix::start_with_milter`, the harness the milter tests build on.
//!
//! * With nothing listening at the milter address, `milter_default_action = tempfail` must
//!   make Postfix answer `451 4.7.1` and queue nothing: what deploy/postfix/milter/README.md
//!   promises when mailwarden is down.
//! * The fragment passes `postconf` without warnings, and its settings are in force.
//! * `postqueue_held` sees a message in the hold queue (put there by a header_checks HOLD,
//!   Postfix's own way to hold mail, the same queue a milter's quarantine uses).

mod support;

use std::process::{Command, Stdio};

use support::{Postfix, SmtpClient};

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: a@example.test\r\nTo: user@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.test>\r\n\r\nhello\r\n"
    )
    .into_bytes()
}

/// `postconf -c CONF -n`: the instance's explicit settings; panics on any warning.
fn postconf_n(pf: &Postfix) -> String {
    let postconf = support::find_program("postconf")
        .expect("`postconf` is not installed: apt-get install postfix (or scripts/test.sh)");
    let out = Command::new(postconf)
        .arg("-c")
        .arg(pf.dir().join("conf"))
        .arg("-n")
        .stdin(Stdio::null())
        .output()
        .expect("run postconf");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("warning"),
        "postconf -n on the fragment's instance: {} {stderr}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn milter_down_means_451_4_7_1_and_nothing_queued() {
    let port = support::unused_port();
    let milter = format!("inet:127.0.0.1:{port}");
    let pf = Postfix::start_with_milter(&milter, None);

    // The shipped lines are in force, with our address.
    let settings = postconf_n(&pf);
    for expected in [
        format!("smtpd_milters = {milter}"),
        "non_smtpd_milters = $smtpd_milters".to_string(),
        "milter_default_action = tempfail".to_string(),
        "milter_protocol = 6".to_string(),
        "milter_content_timeout = 60s".to_string(),
    ] {
        assert!(
            settings.lines().any(|l| l == expected),
            "postconf -n lacks {expected:?}:\n{settings}"
        );
    }
    let connect_macros = settings
        .lines()
        .find(|l| l.starts_with("milter_connect_macros = "))
        .unwrap_or_else(|| panic!("no milter_connect_macros in:\n{settings}"));
    assert!(connect_macros.contains("{client_ptr}"), "{connect_macros}");

    // The client is greeted (Postfix connects to the milter at the client's connect) and
    // gets the tempfail no later than MAIL FROM; retrying later is all it can do.
    let mut c = SmtpClient::connect_ehlo(pf.addr(), "client.example.test");
    let mail = c.cmd("MAIL FROM:<a@example.test>");
    let refused = if mail.code == 250 {
        let rcpt = c.cmd("RCPT TO:<user@example.org>");
        if rcpt.code == 250 {
            c.data(&message("milter-down"))
        } else {
            rcpt
        }
    } else {
        mail
    };
    assert_eq!(
        (refused.code, refused.enhanced()),
        (451, Some("4.7.1")),
        "with the milter down Postfix must tempfail (milter_default_action = tempfail): \
         {refused}\n{}",
        c.transcript()
    );
    c.quit();

    let log = pf.log_containing("milter-reject");
    assert!(
        log.contains(&format!("connect to Milter service {milter}")),
        "Postfix should have tried the fragment's milter address {milter}:\n{log}"
    );
    // Postfix refuses at the first stage it asks the milter about (CONNECT, EHLO, MAIL or
    // END-OF-MESSAGE, depending on when its connect attempt fails): any of them, as 451 4.7.1.
    let rejects = pf.log_lines_containing("milter-reject: ");
    assert!(
        !rejects.is_empty() && rejects.iter().all(|l| l.contains("451 4.7.1")),
        "Postfix should log the milter tempfail (451 4.7.1):\n{log}"
    );
    assert!(
        pf.postqueue_json().is_empty(),
        "nothing may be queued while the milter is down: {:?}",
        pf.postqueue_json()
    );
    assert!(pf.delivered().is_empty(), "nothing may be delivered");
}

#[test]
fn postqueue_held_lists_the_hold_queue() {
    // No milter here: Postfix's header_checks HOLD action parks the message in the same hold
    // queue a milter's quarantine request does.
    let pf = Postfix::start_with_files(
        "header_checks = regexp:@DIR@/conf/hold_checks",
        &[("conf/hold_checks", b"/^Subject: hold me/ HOLD test hold\n")],
    );
    assert!(
        pf.postqueue_held().is_empty(),
        "a fresh instance holds nothing"
    );
    let mut c = SmtpClient::connect_ehlo(pf.addr(), "client.example.test");
    c.send_mail("a@example.test", &["user@example.org"], &message("hold me"));
    c.send_mail("a@example.test", &["user@example.org"], &message("pass"));
    c.quit();

    let held = support::wait_until(support::LONG, || {
        let h = pf.postqueue_held();
        (!h.is_empty()).then_some(h)
    })
    .unwrap_or_else(|| panic!("nothing in the hold queue:\n{}", pf.log()));
    assert_eq!(held.len(), 1, "exactly the HOLD message: {held:?}");
    let delivered = pf.wait_for_messages(1, support::LONG);
    assert_eq!(delivered.len(), 1);
    assert!(String::from_utf8_lossy(&delivered[0]).contains("Subject: pass"));
    assert!(
        !pf.log_lines_containing(&held[0]).is_empty(),
        "the held queue id {} appears in Postfix's log",
        held[0]
    );
}
