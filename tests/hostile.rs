//! Hostile input against the real proxy binary in front of a real (deliberately vulnerable)
//! Postfix: issue 7, "Hostile input", plus slowloris and open relays.
//!
//! * SMTP smuggling: every end-of-data variant the public scanners try (hannob's smtpsmug,
//!   SEC Consult's SMTP-Smuggling-Tools), reimplemented here as one table. Each variant is
//!   first sent straight to Postfix (the control: how many of them Postfix itself falls for),
//!   then through the proxy in `bare_newline = "reject"` and `"normalize"` mode, with DATA
//!   and as one BDAT chunk (relayed to Postfix with DATA and dot-stuffing). Through the
//!   proxy, Postfix must store exactly one message per `250` the client got and never a
//!   smuggled second one.
//! * Protocol abuse: over-long commands and text lines, NUL bytes, 8-bit and invalid UTF-8 in
//!   commands without SMTPUTF8, error floods, pipelined floods. Every one gets a clear reply
//!   and nothing is delivered that was not acknowledged. (STARTTLS command injection is
//!   tested in tests/smtp_session.rs `starttls_command_injection`, zip bombs in
//!   tests/attachments.rs; they are not repeated here.)
//! * Header injection: CR/LF in HELO, addresses and XCLIENT/XFORWARD values (xtext-decoded)
//!   never split a header the proxy writes (Received, X-Spam-*).
//! * Pathological messages scanned with the shipped rules: huge header blocks, 100,000
//!   header fields, 10,000 MIME parts, 5,000 levels of multipart and message/rfc822 nesting,
//!   1 MB runs built against backtracking regexes, malformed base64 and quoted-printable.
//!   Each is answered correctly, the rules finish within the scan budget, and the proxy's
//!   CPU time per message is printed.
//! * Slowloris: 1,000 sessions trickling one byte per second (before EHLO, after EHLO,
//!   inside DATA) are all cut with `421` by the command/data timeout while a normal client
//!   keeps getting its mail through.
//! * Open relay: the proxy asks the upstream for every recipient, so a Postfix that refuses
//!   to relay for the (XCLIENT-forwarded) client refuses through the proxy too; with
//!   `xclient = "always"` the proxy never relays as itself when XCLIENT is not authorized.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use support::messages;
use support::{Postfix, Proxy, Reply, SmtpClient};

fn show(bytes: &[u8]) -> String {
    support::show_limited(bytes, 3000)
}

/// The shipped rule directory (`rules/`), used as the stock rules.
fn shipped_rules() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("rules")
        .display()
        .to_string()
}

/// Postfix without CHUNKING: the proxy must relay with DATA, the path where line endings
/// and dot-stuffing decide what Postfix sees as the end of a message.
const NO_CHUNKING: &str = "smtpd_discard_ehlo_keywords = chunking";

/// True if `bytes` has a CR not followed by LF or an LF not preceded by CR.
fn has_bare_newline(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| {
        (b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
            || (b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
    })
}

/// Header field names of a delivered message (up to the first empty line).
fn field_names(raw: &[u8]) -> Vec<String> {
    messages::header_fields(raw)
        .iter()
        .map(|f| {
            f.split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// SMTP smuggling
// ---------------------------------------------------------------------------------------

/// One end-of-data variant: what the attacker puts where the real `CRLF.CRLF` would be.
struct Variant {
    tag: &'static str,
    eod: &'static [u8],
    /// 8-bit text right before the variant, sent with `BODY=8BITMIME` (SEC Consult's
    /// tool tries the terminators after 8-bit data too).
    eight_bit: bool,
}

const fn v(tag: &'static str, eod: &'static [u8]) -> Variant {
    Variant {
        tag,
        eod,
        eight_bit: false,
    }
}

const fn v8(tag: &'static str, eod: &'static [u8]) -> Variant {
    Variant {
        tag,
        eod,
        eight_bit: true,
    }
}

/// Every terminator variant of smtpsmug and SMTP-Smuggling-Tools, and a few more.
const VARIANTS: &[Variant] = &[
    v("LF.LF", b"\n.\n"),
    v("LF.CRLF", b"\n.\r\n"),
    v("CRLF.LF", b"\r\n.\n"),
    v("CR.CR", b"\r.\r"),
    v("CRLF.CR", b"\r\n.\r"),
    v("LF.CR", b"\n.\r"),
    v("CR.LF", b"\r.\n"),
    v("CR.CRLF", b"\r.\r\n"),
    v("CRLF.CRCRLF", b"\r\n.\r\r\n"),
    v("CRCRLF.CRCRLF", b"\r\r\n.\r\r\n"),
    v("LFLF.LFLF", b"\n\n.\n\n"),
    v("CRLF.NUL.CRLF", b"\r\n\x00.\r\n"),
    v("CRLF.DOT.NUL.CRLF", b"\r\n.\x00\r\n"),
    v("CRLF.SP.CRLF", b"\r\n. \r\n"),
    v8("8bit+LF.CRLF", b"\n.\r\n"),
    v8("8bit+LF.LF", b"\n.\n"),
    v8("8bit+CR.CRLF", b"\r.\r\n"),
];

/// The legit message with `variant` in its body, followed by a complete smuggled
/// transaction whose `CRLF.CRLF` is the only real end of data.
fn smuggling_payload(id: &str, variant: &Variant) -> Vec<u8> {
    let mut p = format!(
        "From: legit@example.test\r\nTo: user@example.org\r\nSubject: legit {id}\r\n\
         Message-ID: <legit-{id}@example.test>\r\n\r\nlegit text"
    )
    .into_bytes();
    if variant.eight_bit {
        p.extend_from_slice("grüße ".as_bytes());
    }
    p.extend_from_slice(variant.eod);
    p.extend_from_slice(
        format!(
            "MAIL FROM:<evil@example.test>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n\
             From: ceo@example.org\r\nSubject: smuggled-{id}\r\n\r\nsmuggled\r\n.\r\n"
        )
        .as_bytes(),
    );
    p
}

/// Outcome of one attempt.
#[derive(Default, Clone)]
struct Attempt {
    /// The replies to the payload (direct: all of them; proxy: the end-of-data reply).
    replies: Vec<String>,
    /// The end-of-data reply code (proxy) or number of 250 "queued" replies (direct).
    code: u16,
    legit_delivered: usize,
    smuggled_delivered: usize,
}

fn mail_from_for(variant: &Variant) -> String {
    if variant.eight_bit {
        "MAIL FROM:<legit@example.test> BODY=8BITMIME".into()
    } else {
        "MAIL FROM:<legit@example.test>".into()
    }
}

/// Sends one variant straight to Postfix and collects every reply it gives.
fn attempt_direct(pf: &Postfix, id: &str, variant: &Variant) -> Attempt {
    let mut c = SmtpClient::connect_ehlo(pf.addr(), "direct.example.net");
    let r = c.cmd(&mail_from_for(variant));
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RCPT TO:<user@example.org>");
    c.expect_code(&r, 250, "RCPT");
    let r = c.cmd("DATA");
    c.expect_code(&r, 354, "DATA");
    c.send(&smuggling_payload(id, variant));
    let replies = c.replies_until_quiet(Duration::from_millis(1200));
    c.quit();
    let queued = replies
        .iter()
        .filter(|r| r.code == 250 && r.text().contains("queued as"))
        .count();
    Attempt {
        replies: replies.iter().map(|r| r.to_string()).collect(),
        code: queued as u16,
        ..Attempt::default()
    }
}

/// Sends one variant through the proxy: the whole payload in one write, as an attacker
/// would. The end-of-data reply must be the only reply to it: in `reject` mode a
/// `550 5.5.2` and the close when the payload has a bare CR or LF, otherwise whatever
/// Postfix said, and then QUIT's `221` (nothing of the smuggled transaction was taken as
/// commands).
fn attempt_proxy(proxy: &Proxy, mode: &str, id: &str, variant: &Variant) -> Attempt {
    let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
    let r = c.cmd(&mail_from_for(variant));
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RCPT TO:<user@example.org>");
    c.expect_code(&r, 250, "RCPT");
    let r = c.cmd("DATA");
    c.expect_code(&r, 354, "DATA");
    let payload = smuggling_payload(id, variant);
    c.send(&payload);
    let r = c.reply();
    let bare = has_bare_newline(&payload);
    if mode == "reject" && bare {
        assert!(
            r.code == 550 && r.enhanced() == Some("5.5.2"),
            "{mode}/{}: expected 550 5.5.2, got {r}\ntranscript:\n{}",
            variant.tag,
            c.transcript()
        );
        c.expect_closed(&format!("{mode}/{}: after 550 5.5.2", variant.tag));
    } else {
        assert!(
            !(r.code == 550 && r.enhanced() == Some("5.5.2")),
            "{mode}/{}: refused as a bare newline: {r}",
            variant.tag
        );
        let q = c.cmd("QUIT");
        c.expect_code(
            &q,
            221,
            &format!(
                "{mode}/{}: the next reply after end of data must be QUIT's",
                variant.tag
            ),
        );
    }
    Attempt {
        replies: vec![r.to_string()],
        code: r.code,
        ..Attempt::default()
    }
}

/// The same payload as one `BDAT LAST` chunk: BDAT is length-delimited, so the variant is
/// no end of data for the proxy, but the proxy relays with DATA to this Postfix (no
/// CHUNKING) and must not hand it a terminator. In `reject` mode a bare CR or LF is
/// refused with `550 5.5.2`.
fn attempt_bdat(proxy: &Proxy, mode: &str, id: &str, variant: &Variant) -> Attempt {
    let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
    let r = c.cmd(&mail_from_for(variant));
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RCPT TO:<user@example.org>");
    c.expect_code(&r, 250, "RCPT");
    let payload = smuggling_payload(id, variant);
    let r = c.bdat(&payload, true);
    let refused_bare = r.code == 550 && r.enhanced() == Some("5.5.2");
    assert_eq!(
        refused_bare,
        mode == "reject" && has_bare_newline(&payload),
        "{mode}/BDAT/{}: {r}\ntranscript:\n{}",
        variant.tag,
        c.transcript()
    );
    c.quit();
    Attempt {
        replies: vec![r.to_string()],
        code: r.code,
        ..Attempt::default()
    }
}

/// The table: every variant straight to Postfix (control), then through the proxy in both
/// modes. Through the proxy: `250` ⇔ the legit message delivered exactly once, never a
/// smuggled message; straight to Postfix at least one variant must smuggle, or this test
/// would prove nothing about the proxy.
#[test]
fn smuggling_scanner_variants_never_smuggle_through_the_proxy() {
    let pf = Postfix::start_with(NO_CHUNKING);
    let reject = Proxy::start(&Proxy::config(&pf.url(), "bare_newline = \"reject\"", ""));
    let normalize = Proxy::start(&Proxy::config(
        &pf.url(),
        "bare_newline = \"normalize\"",
        "",
    ));

    let routes = [
        "direct",
        "reject",
        "normalize",
        "reject-bdat",
        "normalize-bdat",
    ];
    let mut table: BTreeMap<(usize, &str), Attempt> = BTreeMap::new();
    for (i, variant) in VARIANTS.iter().enumerate() {
        for route in routes {
            let id = format!("{route}-{i}");
            let a = match route {
                "direct" => attempt_direct(&pf, &id, variant),
                "reject" => attempt_proxy(&reject, route, &id, variant),
                "normalize" => attempt_proxy(&normalize, route, &id, variant),
                "reject-bdat" => attempt_bdat(&reject, "reject", &id, variant),
                _ => attempt_bdat(&normalize, "normalize", &id, variant),
            };
            table.insert((i, route), a);
        }
    }

    let delivered = pf.settle();
    for ((i, route), a) in table.iter_mut() {
        let id = format!("{route}-{i}");
        let legit_id = format!("<legit-{id}@example.test>");
        let smuggled_subject = format!("smuggled-{id}");
        for raw in &delivered {
            if messages::header(raw, "Message-ID").as_deref() == Some(legit_id.as_str()) {
                a.legit_delivered += 1;
            }
            if messages::header(raw, "Subject").as_deref() == Some(smuggled_subject.as_str()) {
                a.smuggled_delivered += 1;
            }
        }
    }

    // The table, for the report and for whoever reads a failure.
    let mut out = String::from(
        "variant            | direct to Postfix             | proxy, reject             | proxy, normalize          | BDAT, reject              | BDAT, normalize\n",
    );
    let cell = |a: &Attempt, route: &str| -> String {
        if route == "direct" {
            format!(
                "{} queued, legit {}, SMUGGLED {}",
                a.code, a.legit_delivered, a.smuggled_delivered
            )
        } else {
            format!(
                "{} → legit {}, smuggled {}",
                a.code, a.legit_delivered, a.smuggled_delivered
            )
        }
    };
    for (i, variant) in VARIANTS.iter().enumerate() {
        out.push_str(&format!(
            "{:<18} | {:<29} | {:<25} | {:<25} | {:<25} | {}\n",
            variant.tag,
            cell(&table[&(i, "direct")], "direct"),
            cell(&table[&(i, "reject")], "reject"),
            cell(&table[&(i, "normalize")], "normalize"),
            cell(&table[&(i, "reject-bdat")], "reject-bdat"),
            cell(&table[&(i, "normalize-bdat")], "normalize-bdat"),
        ));
    }
    eprintln!("{out}");

    let smuggled_direct: usize = (0..VARIANTS.len())
        .map(|i| table[&(i, "direct")].smuggled_delivered)
        .sum();
    assert!(
        smuggled_direct > 0,
        "the control failed: Postfix alone smuggled nothing, so this test cannot show that \
         the proxy protects it (is smtpd_forbid_bare_newline on?)\n{out}"
    );
    for (i, variant) in VARIANTS.iter().enumerate() {
        for route in ["reject", "normalize", "reject-bdat", "normalize-bdat"] {
            let a = &table[&(i, route)];
            assert_eq!(
                a.smuggled_delivered, 0,
                "{route}/{}: a smuggled message reached Postfix's mailbox\n{out}",
                variant.tag
            );
            let expected = usize::from(a.code == 250);
            assert_eq!(
                a.legit_delivered, expected,
                "{route}/{}: the client was told {:?}, Postfix delivered the message {} \
                 time(s)\n{out}",
                variant.tag, a.replies, a.legit_delivered
            );
        }
        // In normalize mode every variant is a message (the smuggled commands are its text).
        for route in ["normalize", "normalize-bdat"] {
            assert_eq!(
                table[&(i, route)].code,
                250,
                "{route}/{}: {:?}\n{out}",
                variant.tag,
                table[&(i, route)].replies
            );
        }
    }
    // Nothing else arrived: every delivered message is one of the legit ones, or a
    // smuggled one from the direct control.
    let accounted: usize = table
        .values()
        .map(|a| a.legit_delivered + a.smuggled_delivered)
        .sum();
    assert_eq!(
        accounted,
        delivered.len(),
        "unexpected deliveries:\n{}",
        delivered
            .iter()
            .map(|m| show(m))
            .collect::<Vec<_>>()
            .join("\n-----\n")
    );
}

// ---------------------------------------------------------------------------------------
// Open relay
// ---------------------------------------------------------------------------------------

/// Postfix that trusts 127.0.0.1 only and refuses to relay for anyone else.
const NO_RELAY: &str = "mynetworks = 127.0.0.1/32\n\
     smtpd_reject_unlisted_recipient = no\n\
     smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination";

const OUTSIDE_RECIPIENTS: &[&str] = &[
    "victim@outside.example.net",
    "@example.org:victim@outside.example.net",
    "victim%outside.example.net@example.org",
    "\"victim@outside.example.net\"@example.org",
    "victim@[192.0.2.99]",
    "postmaster@outside.example.net",
];

/// The proxy never relays on its own: every recipient is asked of the upstream, which
/// sees the real client through XCLIENT. A client at 127.0.0.2 (outside Postfix's
/// mynetworks) gets Postfix's `554 5.7.1 Relay access denied` for every outside address,
/// however it is spelled, and only the local recipient's copy is delivered. The control:
/// the same RCPT straight to Postfix gets the same answer, and a client inside mynetworks
/// (127.0.0.1) is allowed by Postfix, so it is Postfix's decision that reaches the client.
#[test]
fn the_proxy_is_no_open_relay() {
    let pf = Postfix::start_with(NO_RELAY);
    let proxy = Proxy::start(&Proxy::config(&pf.url(), "", "xclient = \"always\""));
    let outsider = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    // Control: straight to Postfix from 127.0.0.2.
    let mut direct = SmtpClient::connect_from(outsider, pf.addr());
    let r = direct.reply();
    direct.expect_code(&r, 220, "greeting");
    let r = direct.cmd("EHLO outsider.example.net");
    direct.expect_code(&r, 250, "EHLO");
    let r = direct.cmd("MAIL FROM:<spammer@example.net>");
    direct.expect_code(&r, 250, "MAIL");
    let r = direct.cmd("RCPT TO:<victim@outside.example.net>");
    assert_eq!(
        (r.code, r.enhanced()),
        (554, Some("5.7.1")),
        "control: Postfix itself must refuse to relay for 127.0.0.2: {r}"
    );
    direct.quit();

    let mut c = SmtpClient::connect_from(outsider, proxy.addr());
    let r = c.reply();
    c.expect_code(&r, 220, "greeting");
    let r = c.cmd("EHLO outsider.example.net");
    c.expect_code(&r, 250, "EHLO");
    let r = c.cmd("MAIL FROM:<spammer@example.net>");
    c.expect_code(&r, 250, "MAIL");
    for rcpt in OUTSIDE_RECIPIENTS {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        eprintln!("RCPT TO:<{rcpt}> through the proxy: {r}");
        assert!(
            r.code >= 500,
            "RCPT TO:<{rcpt}> must be refused permanently, got {r}\ntranscript:\n{}",
            c.transcript()
        );
    }
    let r = c.cmd("RCPT TO:<victim@outside.example.net>");
    assert_eq!(
        (r.code, r.enhanced()),
        (554, Some("5.7.1")),
        "the plain outside address must get Postfix's reply verbatim: {r}"
    );
    assert!(r.text().contains("Relay access denied"), "{r}");
    let r = c.cmd("RCPT TO:<user@example.org>");
    c.expect_code(&r, 250, "a local recipient");
    let message = messages::simple("relay-1", "relay attempt", "hello");
    let r = c.data(&message);
    c.expect_code(&r, 250, "DATA for the local recipient only");

    // Only outside recipients: nothing to send.
    let r = c.cmd("MAIL FROM:<spammer@example.net>");
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RCPT TO:<victim@outside.example.net>");
    c.expect_code(&r, 554, "RCPT");
    let r = c.cmd("DATA");
    assert!(r.code >= 500, "DATA without a recipient: {r}");
    c.quit();

    // Postfix judged 127.0.0.2, not the proxy's 127.0.0.1.
    let log = pf.log_containing("Relay access denied");
    assert!(
        log.lines()
            .any(|l| l.contains("Relay access denied") && l.contains("[127.0.0.2]")),
        "Postfix should have refused the relay for the real client 127.0.0.2:\n{log}"
    );

    // Control: a client inside mynetworks may relay, because Postfix says so.
    let mut inside = SmtpClient::connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), proxy.addr());
    let r = inside.reply();
    inside.expect_code(&r, 220, "greeting");
    let r = inside.cmd("EHLO inside.example.net");
    inside.expect_code(&r, 250, "EHLO");
    let r = inside.cmd("MAIL FROM:<me@example.org>");
    inside.expect_code(&r, 250, "MAIL");
    let r = inside.cmd("RCPT TO:<friend@outside.example.net>");
    inside.expect_code(&r, 250, "control: Postfix lets mynetworks relay");
    let r = inside.cmd("RSET");
    inside.expect_code(&r, 250, "RSET");
    inside.quit();

    let delivered = pf.settle_and_collect(1);
    assert_eq!(
        messages::header(&delivered[0], "Message-ID").as_deref(),
        Some("<relay-1@example.test>")
    );
    assert!(
        messages::header(&delivered[0], "Delivered-To").as_deref() == Some("user@example.org"),
        "{}",
        show(&delivered[0])
    );
}

// ---------------------------------------------------------------------------------------
// Header injection
// ---------------------------------------------------------------------------------------

/// Values the proxy writes into headers come from the client: HELO (Received), recipient
/// (Received `for`), XCLIENT/XFORWARD HELO from a trusted proxy (xtext: `+0D+0A` decodes
/// to CR LF). None of them may ever split a header: every attempt is refused or harmless,
/// and no delivered message carries an `X-Injected` field, in either bare-newline mode.
#[test]
fn client_values_never_split_added_headers() {
    let pf = Postfix::start();
    for mode in ["reject", "normalize"] {
        let proxy = Proxy::start(&format!(
            "[server]\nhostname = \"mx.example.test\"\nbare_newline = \"{mode}\"\n\
             trusted_proxies = [\"127.0.0.1\"]\n\n[upstream]\nurl = \"{}\"\n\n\
             [rules]\npaths = [\"{}\"]\n\n[policy]\ntag_score = -1000.0\n\
             subject_prefix = \"[SPAM] \"\n",
            pf.url(),
            shipped_rules()
        ));
        let mut acknowledged = 0;

        // Bare CR / LF inside EHLO and in addresses.
        for (what, line) in [
            (
                "EHLO+CR",
                &b"EHLO evil.example\rX-Injected: helo-cr\r\n"[..],
            ),
            (
                "EHLO+LF",
                &b"EHLO evil.example\nX-Injected: helo-lf\r\n"[..],
            ),
        ] {
            let mut c = SmtpClient::connect_greeted(proxy.addr());
            c.send(line);
            let replies = c.replies_until_quiet(Duration::from_millis(2000));
            eprintln!("{mode}/{what}: {replies:?}");
            assert!(!replies.is_empty(), "{mode}/{what}: no reply");
            if mode == "reject" {
                let r = &replies[0];
                assert_eq!(
                    (r.code, r.enhanced()),
                    (550, Some("5.5.2")),
                    "{mode}/{what}"
                );
            } else if replies.iter().any(|r| r.code == 250) {
                // Normalized into two lines: "EHLO evil.example" and a bogus command.
                assert!(
                    replies.iter().any(|r| r.code == 500),
                    "{mode}/{what}: {replies:?}"
                );
                acknowledged += send_one(&mut c, mode, what);
            }
        }
        for (what, cmd) in [
            (
                "MAIL+CRLF",
                &b"MAIL FROM:<\"x\r\nX-Injected: mail\"@example.test>\r\n"[..],
            ),
            (
                "RCPT+CR",
                &b"RCPT TO:<\"u\rX-Injected: rcpt\"@example.org>\r\n"[..],
            ),
            (
                "RCPT+LF",
                &b"RCPT TO:<u@example.org\nX-Injected: rcpt-lf>\r\n"[..],
            ),
        ] {
            let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
            if what.starts_with("RCPT") {
                let r = c.cmd("MAIL FROM:<a@example.test>");
                c.expect_code(&r, 250, "MAIL");
            }
            c.send(cmd);
            let replies = c.replies_until_quiet(Duration::from_millis(2000));
            eprintln!("{mode}/{what}: {replies:?}");
            assert!(
                replies.iter().all(|r| r.code >= 500),
                "{mode}/{what}: a piece of the split command was accepted: {replies:?}"
            );
            if !(mode == "reject" && what != "MAIL+CRLF") {
                // Still open: a good message in the same session carries no trace of it.
                let _ = c.try_cmd("RSET");
                acknowledged += send_one(&mut c, mode, what);
            }
        }

        // XCLIENT / XFORWARD from a trusted proxy: xtext-encoded CR, LF and other controls.
        for (what, cmd) in [
            (
                "XCLIENT CRLF",
                "XCLIENT HELO=evil.example+0D+0AX-Injected:+xclient",
            ),
            (
                "XCLIENT LF",
                "XCLIENT HELO=evil.example+0AX-Injected:+xclient",
            ),
            (
                "XCLIENT CR",
                "XCLIENT HELO=evil.example+0DX-Injected:+xclient",
            ),
            ("XCLIENT NUL", "XCLIENT HELO=evil.example+00"),
            ("XCLIENT SP", "XCLIENT HELO=evil.example+20X-Injected:+x"),
            (
                "XCLIENT ADDR",
                "XCLIENT ADDR=192.0.2.1+0D+0AX-Injected:+addr",
            ),
            (
                "XFORWARD CRLF",
                "XFORWARD HELO=evil.example+0D+0AX-Injected:+xforward",
            ),
            (
                "XFORWARD NAME",
                "XFORWARD NAME=evil+0D+0AX-Injected:+name ADDR=192.0.2.1",
            ),
        ] {
            let mut c = SmtpClient::connect_ehlo(proxy.addr(), "relay.example.net");
            let r = c.cmd(cmd);
            eprintln!("{mode}/{what}: {r}");
            assert!(
                r.code == 501 && r.enhanced() == Some("5.5.4"),
                "{mode}/{what}: expected 501 5.5.4, got {r}"
            );
            acknowledged += send_one(&mut c, mode, what);
        }
        // A valid XCLIENT with an escaped but harmless name still works.
        let mut c = SmtpClient::connect_ehlo(proxy.addr(), "relay.example.net");
        let r = c.cmd("XCLIENT ADDR=192.0.2.1 HELO=real+2Bclient.example");
        c.expect_code(&r, 220, "XCLIENT");
        let r = c.cmd("EHLO real+client.example");
        c.expect_code(&r, 250, "EHLO after XCLIENT");
        acknowledged += send_one(&mut c, mode, "XCLIENT ok");

        let delivered = pf.settle_and_collect(acknowledged);
        for raw in &delivered {
            let names = field_names(raw);
            assert!(
                !names.iter().any(|n| n == "x-injected"),
                "{mode}: an injected header field:\n{}",
                show(raw)
            );
            let received = messages::header_fields(raw)
                .into_iter()
                .find(|f| f.contains("(mailwarden)"))
                .unwrap_or_else(|| panic!("{mode}: no Received of ours:\n{}", show(raw)));
            assert!(
                received.starts_with("Received: from ") && !received.contains("Injected"),
                "{mode}: {received}"
            );
            assert!(names.iter().any(|n| n == "x-spam-status"), "{}", show(raw));
        }
        // Postfix rotates nothing: clear what was delivered for the next mode.
        for entry in std::fs::read_dir(pf.maildir_new())
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A good transaction in an open session; returns 1 if it was acknowledged with 250.
fn send_one(c: &mut SmtpClient, mode: &str, what: &str) -> usize {
    let r = c.cmd("MAIL FROM:<a@example.test>");
    c.expect_code(&r, 250, &format!("{mode}/{what}: MAIL after the attempt"));
    let r = c.cmd("RCPT TO:<user@example.org>");
    c.expect_code(&r, 250, &format!("{mode}/{what}: RCPT after the attempt"));
    let body = format!("From: a@example.test\r\nSubject: after {what}\r\n\r\nhello\r\n");
    let r = c.data(body.as_bytes());
    c.expect_code(&r, 250, &format!("{mode}/{what}: DATA after the attempt"));
    c.quit();
    1
}

// ---------------------------------------------------------------------------------------
// Protocol abuse
// ---------------------------------------------------------------------------------------

/// Sends `bytes` in an EHLO'd session and returns the replies until the server is quiet
/// or closes.
fn exchange(proxy: &Proxy, bytes: &[u8]) -> (SmtpClient, Vec<Reply>) {
    let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
    c.send(bytes);
    let replies = c.replies_until_quiet(Duration::from_millis(1500));
    (c, replies)
}

fn codes(replies: &[Reply]) -> Vec<(u16, String)> {
    replies
        .iter()
        .map(|r| (r.code, r.enhanced().unwrap_or("").to_string()))
        .collect()
}

/// (what, bytes after EHLO, the replies' (code, enhanced code) in order)
type AbuseCase = (&'static str, Vec<u8>, Vec<(u16, &'static str)>);

/// Over-long commands and text lines, NUL bytes, 8-bit and invalid UTF-8 in commands,
/// floods of errors and of pipelined commands: each gets the documented reply, the
/// session goes on where it should, and Postfix stores exactly the messages that got a
/// `250` (checked at the end).
#[test]
fn protocol_abuse_gets_clear_replies_and_loses_nothing() {
    let pf = Postfix::start();
    let proxy = Proxy::start(&Proxy::config(&pf.url(), "", ""));
    let mut acknowledged = Vec::new();
    let long = |n: usize| "x".repeat(n);
    let cases: Vec<AbuseCase> = vec![
        (
            "command of 513 octets",
            format!("NOOP {}\r\nNOOP\r\n", long(506)).into_bytes(),
            vec![(500, "5.5.2"), (250, "2.0.0")],
        ),
        (
            "EHLO of 600 octets",
            format!("EHLO {}\r\nNOOP\r\n", long(595)).into_bytes(),
            // The name is checked before the line length: "invalid host name".
            vec![(501, "5.5.4"), (250, "2.0.0")],
        ),
        (
            "MAIL with 1,100 octets of parameters",
            format!(
                "MAIL FROM:<a@example.test> ENVID={}\r\nNOOP\r\n",
                long(1100)
            )
            .into_bytes(),
            vec![(500, "5.5.2"), (250, "2.0.0")],
        ),
        (
            "1 MB without a line end, then a command",
            {
                let mut b = vec![b'A'; 1 << 20];
                b.extend_from_slice(b"\r\nNOOP\r\n");
                b
            },
            vec![(500, "5.5.2"), (250, "2.0.0")],
        ),
        (
            "NUL in a command",
            b"NOOP\x00\r\nMAIL FROM:<a\x00b@example.test>\r\nNOOP\r\n".to_vec(),
            vec![(500, "5.5.2"), (500, "5.5.2"), (250, "2.0.0")],
        ),
        (
            "8-bit address without SMTPUTF8",
            "MAIL FROM:<jörg@example.test>\r\nNOOP\r\n"
                .as_bytes()
                .to_vec(),
            vec![(553, "5.6.7"), (250, "2.0.0")],
        ),
        (
            "8-bit recipient without SMTPUTF8",
            "MAIL FROM:<a@example.test>\r\nRCPT TO:<δοκιμή@example.org>\r\nRSET\r\n"
                .as_bytes()
                .to_vec(),
            vec![(250, "2.1.0"), (553, "5.6.7"), (250, "2.0.0")],
        ),
        (
            "invalid UTF-8 in a command",
            b"MAIL FROM:<\xff\xfe@example.test> SMTPUTF8\r\nEHLO \xc3\x28\r\nNOOP\r\n".to_vec(),
            vec![(500, "5.5.2"), (500, "5.5.2"), (250, "2.0.0")],
        ),
        (
            "8-bit EHLO",
            "EHLO hôte.example\r\nNOOP\r\n".as_bytes().to_vec(),
            vec![(501, "5.5.4"), (250, "2.0.0")],
        ),
        (
            "text line of 1,001 octets",
            format!(
                "MAIL FROM:<a@example.test>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n\
                 Subject: long\r\n\r\n{}\r\n.\r\nNOOP\r\n",
                long(999)
            )
            .into_bytes(),
            vec![
                (250, "2.1.0"),
                (250, "2.1.5"),
                (354, ""),
                (500, "5.5.2"),
                (250, "2.0.0"),
            ],
        ),
        (
            "STARTTLS without TLS configured",
            b"STARTTLS\r\nNOOP\r\n".to_vec(),
            vec![(454, "4.7.0"), (250, "2.0.0")],
        ),
        (
            "10,000 pipelined NOOPs",
            "NOOP\r\n".repeat(10_000).into_bytes(),
            vec![(250, "2.0.0"); 10_000],
        ),
    ];
    for (what, bytes, want) in cases {
        let started = Instant::now();
        let (mut c, replies) = exchange(&proxy, &bytes);
        let got = codes(&replies);
        let want: Vec<(u16, String)> = want.iter().map(|(c, e)| (*c, e.to_string())).collect();
        if got != want {
            let shown: Vec<String> = replies.iter().take(10).map(|r| r.to_string()).collect();
            panic!(
                "{what}: replies {:?} (first: {shown:?}), expected {:?}",
                &got[..got.len().min(10)],
                &want[..want.len().min(10)]
            );
        }
        eprintln!(
            "{what}: {} replies as expected in {:?}",
            got.len(),
            started.elapsed()
        );
        // The session is still usable.
        let r = c.cmd("RSET");
        c.expect_code(&r, 250, &format!("{what}: RSET afterwards"));
        c.quit();
    }

    // Too many errors: 421 and close.
    let (mut c, replies) = exchange(&proxy, "BOGUS\r\n".repeat(50).as_bytes());
    let last = replies
        .last()
        .map(|r| (r.code, r.enhanced().map(str::to_string)));
    assert_eq!(
        last,
        Some((421, Some("4.7.0".to_string()))),
        "error flood: {:?}",
        codes(&replies)
    );
    assert!(replies.len() < 50, "the flood was answered to the end");
    c.expect_closed("after too many errors");

    // NUL and 8-bit in the message itself (8-bit without BODY=8BITMIME, like Postfix,
    // is accepted): relayed and stored, or refused, but never 250 without delivery.
    for (id, body) in [
        ("nul-body", &b"text with a NUL \x00 in it\r\n\x00\r\n"[..]),
        (
            "8bit-body",
            "ungekündigt 8-bit ohne BODY=8BITMIME\r\n".as_bytes(),
        ),
    ] {
        let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
        let r = c.cmd("MAIL FROM:<a@example.test>");
        c.expect_code(&r, 250, "MAIL");
        let r = c.cmd("RCPT TO:<user@example.org>");
        c.expect_code(&r, 250, "RCPT");
        let mut msg =
            format!("Message-ID: <{id}@example.test>\r\nSubject: {id}\r\n\r\n").into_bytes();
        msg.extend_from_slice(body);
        let r = c.data(&msg);
        eprintln!("{id}: {r}");
        assert!(r.code == 250 || r.code >= 500, "{id}: {r}");
        if r.code == 250 {
            acknowledged.push(format!("<{id}@example.test>"));
        }
        c.quit();
    }
    let delivered = pf.settle_and_collect(acknowledged.len());
    for id in &acknowledged {
        assert!(
            delivered
                .iter()
                .any(|m| messages::header(m, "Message-ID").as_deref() == Some(id.as_str())),
            "{id} was acknowledged but not delivered"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Pathological messages against the shipped rules
// ---------------------------------------------------------------------------------------

/// The rules' time budget in the test config.
const SCAN_BUDGET_MS: u64 = 2000;

/// Base64 with 76-character lines.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len() * 4 / 3 + data.len() / 38 + 8);
    let mut line = 0;
    for chunk in data.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
        line += 4;
        if line >= 76 {
            out.push_str("\r\n");
            line = 0;
        }
    }
    if line > 0 {
        out.push_str("\r\n");
    }
    out
}

/// `run` repeated to `len` bytes.
fn run_of(run: &str, len: usize) -> Vec<u8> {
    run.as_bytes().iter().copied().cycle().take(len).collect()
}

/// A header field whose unfolded value is `value`, folded into lines of 900 octets.
fn folded(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = format!("{name}: x").into_bytes();
    for chunk in value.chunks(900) {
        out.extend_from_slice(b"\r\n\t");
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn header_block(id: &str, subject: &str) -> Vec<u8> {
    format!(
        "Message-ID: <{id}@example.test>\r\nFrom: sender@example.test\r\nTo: user@example.org\r\n\
         Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
    )
    .into_bytes()
}

/// The pathological messages: (name, message).
fn pathological_messages() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mb = 1 << 20;

    // A 10 MB header block: one field folded over 11,000 lines.
    let mut m = header_block("hdr-10mb", "10 MB header");
    m.extend_from_slice(&folded("X-Huge", &run_of("abcdefghij ", 10 * mb)));
    m.extend_from_slice(b"\r\nbody\r\n");
    out.push(("10 MB header block".into(), m));

    // 100,000 header fields.
    let mut m = header_block("hdr-100k", "100,000 header fields");
    for i in 0..100_000 {
        m.extend_from_slice(format!("X-Field-{i}: value {i}\r\n").as_bytes());
    }
    m.extend_from_slice(b"\r\nbody\r\n");
    out.push(("100,000 header fields".into(), m));

    // 10,000 MIME parts.
    let mut m = header_block("parts-10k", "10,000 parts");
    m.extend_from_slice(b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\npreamble\r\n");
    for i in 0..10_000 {
        m.extend_from_slice(
            format!(
                "--b\r\nContent-Type: text/plain\r\n\r\npart {i} http://p{i}.example.test/\r\n"
            )
            .as_bytes(),
        );
    }
    m.extend_from_slice(b"--b--\r\n");
    out.push(("10,000 MIME parts".into(), m));

    // 5,000 levels of nested multiparts.
    let depth = 5000;
    let mut m = header_block("nest-multi", "5,000 nested multiparts");
    for i in 0..depth {
        m.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"n{i}\"\r\n\r\n--n{i}\r\n")
                .as_bytes(),
        );
    }
    m.extend_from_slice(b"Content-Type: text/plain\r\n\r\ninnermost\r\n");
    for i in (0..depth).rev() {
        m.extend_from_slice(format!("--n{i}--\r\n").as_bytes());
    }
    out.push(("5,000 nested multiparts".into(), m));

    // 5,000 levels of message/rfc822.
    let mut m = header_block("nest-822", "5,000 nested message/rfc822");
    for i in 0..depth {
        m.extend_from_slice(
            format!("Content-Type: message/rfc822\r\n\r\nSubject: level {i}\r\n").as_bytes(),
        );
    }
    m.extend_from_slice(b"Content-Type: text/plain\r\n\r\ninnermost\r\n");
    out.push(("5,000 nested message/rfc822".into(), m));

    // 1 MB runs against backtracking: in a folded header (100 KB), as decoded base64 text
    // and HTML (one 1 MB line each), and quoted-printable with soft line breaks.
    let runs: &[(&str, &str)] = &[
        ("'a'", "a"),
        ("spaces", " "),
        ("'='", "="),
        ("http://", "http://"),
        ("<a href=", "<a href="),
        ("nested parentheses", "(((((((((("),
        ("')'", ")"),
        ("'@.'", "@."),
        ("'www.'", "www."),
        ("'$'", "$1,000,000 "),
    ];
    for (i, (name, run)) in runs.iter().enumerate() {
        let id = format!("run-{i}");
        let body = run_of(run, mb);
        let mut m = header_block(&id, &format!("run of {name}"));
        m.extend_from_slice(&folded("X-Run", &body[..100 * 1024]));
        m.extend_from_slice(
            b"Content-Type: multipart/alternative; boundary=\"r\"\r\n\r\n--r\r\n\
              Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        );
        m.extend_from_slice(base64(&body).as_bytes());
        m.extend_from_slice(
            b"--r\r\nContent-Type: text/html; charset=us-ascii\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        );
        let mut html = b"<html><body>".to_vec();
        html.extend_from_slice(&body);
        if *run == "(((((((((( " || *run == "((((((((((" {
            html.extend(std::iter::repeat_n(b')', mb));
        }
        m.extend_from_slice(base64(&html).as_bytes());
        m.extend_from_slice(
            b"--r\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
        );
        for chunk in body[..256 * 1024].chunks(72) {
            for &b in chunk {
                if b == b'=' {
                    m.extend_from_slice(b"=3D");
                } else {
                    m.push(b);
                }
            }
            m.extend_from_slice(b"=\r\n");
        }
        m.extend_from_slice(b"\r\n--r--\r\n");
        out.push((format!("1 MB run of {name}"), m));
    }

    // Malformed base64 and quoted-printable.
    let mut m = header_block("bad-b64", "malformed base64");
    m.extend_from_slice(b"Content-Type: multipart/mixed; boundary=\"m\"\r\n\r\n");
    for bad in [
        "!!!@@@###$$$%%%^^^&&&***\r\n",
        "====\r\n====\r\n",
        "QUJD=REVG=R0hJ\r\n",
        "QUJ\r\n",
        "\u{e9}\u{e8}\u{ea}8-bit in base64\r\n",
        &"=".repeat(998),
        &"A".repeat(998),
        "",
    ] {
        m.extend_from_slice(
            format!(
                "--m\r\nContent-Type: application/zip; name=\"a.zip\"\r\n\
                 Content-Disposition: attachment; filename=\"a.zip\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{bad}\r\n\
                 --m\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n{bad}\r\n"
            )
            .as_bytes(),
        );
    }
    m.extend_from_slice(b"--m--\r\n");
    out.push(("malformed base64".into(), m));

    let mut m = header_block("bad-qp", "malformed quoted-printable");
    m.extend_from_slice(b"Content-Type: multipart/mixed; boundary=\"q\"\r\n\r\n");
    for bad in [
        "=ZZ=Q=\r\n=0\r\n=",
        "soft break at the end=",
        "=\r\n=\r\n=\r\n=\r\n",
        &"=".repeat(800),
        &"=3".repeat(399),
        "=E9=\r\n=A9=C3=\r\n=28 broken UTF-8",
        "tab\t=\t\r\ntrailing space = \r\n",
    ] {
        m.extend_from_slice(
            format!(
                "--q\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Transfer-Encoding: quoted-printable\r\n\r\n{bad}\r\n\
                 --q\r\nContent-Type: text/html; charset=\"{}\"\r\n\
                 Content-Transfer-Encoding: quoted-printable\r\n\r\n<a href=3D\"{bad}\r\n",
                "x".repeat(200)
            )
            .as_bytes(),
        );
    }
    m.extend_from_slice(b"--q\r\nContent-Type: multipart/mixed; boundary=\"never-closed\"\r\n\r\n--never-closed\r\n");
    m.extend_from_slice(b"Content-Type: text/plain; ");
    for i in 0..2000 {
        m.extend_from_slice(format!("p{i}=v{i};").as_bytes());
        m.extend_from_slice(if i % 50 == 49 { b"\r\n\t" } else { b" " });
    }
    m.extend_from_slice(b"\r\n\r\nunterminated\r\n");
    out.push(("malformed quoted-printable, MIME".into(), m));
    out
}

/// CPU time (user + system) of a process so far, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name: state is field 3, utime 14, stime 15 (1-based).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The `rules=` timing of the proxy's log line for sender `from`.
fn rules_ms(proxy: &Proxy, from: &str) -> Option<f64> {
    let log = proxy.wait_for_log(&format!("from={from} "));
    let line = log.lines().find(|l| l.contains(&format!("from={from} ")))?;
    let timings = &line[line.find(" timings=")?..];
    let rest = &timings[timings.find(" rules=")? + 7..];
    let rest = &rest[..rest.find("ms")?];
    rest.parse().ok()
}

/// Every pathological message goes through the proxy with the shipped rules: the client
/// gets `250` (and Postfix stores it) or a permanent refusal, the rules stay within the
/// scan budget (plus slack for a noisy machine), and the proxy's CPU time per message is
/// printed (and must stay below 30 s, a hang detector, not a performance goal).
#[test]
fn pathological_messages_are_scanned_within_the_budget() {
    let pf =
        Postfix::start_with("message_size_limit = 104857600\nvirtual_mailbox_limit = 104857600");
    let proxy = Proxy::start(&format!(
        "[server]\nhostname = \"mx.example.test\"\nmax_message_size = 52428800\n\n\
         [upstream]\nurl = \"{}\"\n\n[rules]\npaths = [\"{}\"]\nscan_timeout_ms = {SCAN_BUDGET_MS}\n",
        pf.url(),
        shipped_rules()
    ));
    let pid = proxy.pid();
    let mut report = String::from("message | size | reply | client time | proxy CPU | rules\n");
    let mut acknowledged = Vec::new();
    for (i, (name, message)) in pathological_messages().into_iter().enumerate() {
        let from = format!("case-{i}@example.test");
        let id =
            messages::header(&message[..message.len().min(4096)], "Message-ID").unwrap_or_default();
        let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
        let r = c.cmd(&format!("MAIL FROM:<{from}>"));
        c.expect_code(&r, 250, &format!("{name}: MAIL"));
        let r = c.cmd("RCPT TO:<user@example.org>");
        c.expect_code(&r, 250, &format!("{name}: RCPT"));
        let cpu_before = cpu_time(pid);
        let started = Instant::now();
        let r = c.data(&message);
        let took = started.elapsed();
        let cpu = cpu_time(pid).saturating_sub(cpu_before);
        c.quit();
        let rules = rules_ms(&proxy, &from);
        report.push_str(&format!(
            "{name} | {} KB | {} | {:.2} s | {:.2} s | {}\n",
            message.len() / 1024,
            r,
            took.as_secs_f64(),
            cpu.as_secs_f64(),
            rules.map_or("-".into(), |ms| format!("{ms:.0} ms")),
        ));
        assert!(
            r.code == 250 || r.code >= 500,
            "{name}: expected 250 or a permanent refusal, got {r}\n{report}"
        );
        if r.code == 250 {
            acknowledged.push(id);
        }
        if let Some(ms) = rules {
            assert!(
                ms <= (SCAN_BUDGET_MS + 2500) as f64,
                "{name}: the rules took {ms} ms, over the {SCAN_BUDGET_MS} ms budget\n{report}"
            );
        }
        assert!(
            cpu < Duration::from_secs(30),
            "{name}: {cpu:?} of CPU for one message\n{report}"
        );
    }
    eprintln!("{report}");
    let delivered = pf.settle_and_collect(acknowledged.len());
    for id in &acknowledged {
        assert!(
            delivered
                .iter()
                .any(|m| messages::header(m, "Message-ID").as_deref() == Some(id.as_str())),
            "{id} was acknowledged but not delivered\n{report}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------------------

const SLOW_SESSIONS: usize = 1000;
const SLOW_TIMEOUT_SECS: u64 = 3;
/// Slack for a loaded two-core machine on top of the timeout.
const SLOW_SLACK: Duration = Duration::from_secs(9);

/// What one slow session saw.
struct SlowOutcome {
    /// Connect to close.
    lifetime: Duration,
    /// The last reply line before the close.
    last_line: String,
    /// Bytes trickled before the close.
    trickled: usize,
    /// A trickle inside DATA (it got the `354`).
    in_data: bool,
    /// Session number.
    i: usize,
}

/// One slowloris session: the greeting is read, then a command trickled at one byte per
/// second: EHLO, or (odd sessions) MAIL after a proper EHLO, or (every 20th) a header line
/// inside DATA after a pipelined EHLO, MAIL, RCPT, DATA. It must be cut with `421 4.4.2`.
async fn slow_session(
    addr: std::net::SocketAddr,
    i: usize,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Result<SlowOutcome, String> {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let started = Instant::now();
    let stream = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| format!("session {i}: connect timed out"))?
    .map_err(|e| format!("session {i}: connect: {e}"))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let greeting = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .map_err(|_| format!("session {i}: no greeting"))?
        .map_err(|e| format!("session {i}: greeting: {e}"))?
        .unwrap_or_default();
    if !greeting.starts_with("220 ") {
        return Err(format!("session {i}: greeting {greeting:?}"));
    }
    open.fetch_add(1, Ordering::SeqCst);
    let trickle: &[u8] = if i.is_multiple_of(20) {
        // Inside DATA: the transaction is open upstream, a header line trickles.
        write
            .write_all(
                format!(
                    "EHLO slow{i}.example.test\r\nMAIL FROM:<slow{i}@example.test>\r\n\
                     RCPT TO:<user@example.org>\r\nDATA\r\nFrom: slow@example.test\r\n"
                )
                .as_bytes(),
            )
            .await
            .map_err(|e| format!("session {i}: DATA: {e}"))?;
        b"Subject: a header line that never ends\r\n"
    } else if i % 2 == 1 {
        write
            .write_all(format!("EHLO slow{i}.example.test\r\n").as_bytes())
            .await
            .map_err(|e| format!("session {i}: EHLO: {e}"))?;
        b"MAIL FROM:<slow@example.test>\r\n"
    } else {
        b"EHLO slow.example.test\r\n"
    };
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        for b in trickle {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if write.write_all(&[*b]).await.is_err() {
                break;
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
        // Keep the connection open (idle) after the trickle.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(write);
    });
    let mut last_line = String::new();
    let mut in_data = false;
    let read_all = async {
        while let Ok(Some(line)) = lines.next_line().await {
            in_data |= line.starts_with("354 ");
            last_line = line;
        }
    };
    let cut = tokio::time::timeout(
        Duration::from_secs(SLOW_TIMEOUT_SECS) + SLOW_SLACK * 3,
        read_all,
    )
    .await
    .is_ok();
    let lifetime = started.elapsed();
    open.fetch_sub(1, Ordering::SeqCst);
    writer.abort();
    let trickled = sent.load(Ordering::SeqCst);
    if !cut {
        return Err(format!("session {i}: still open after {lifetime:?}"));
    }
    Ok(SlowOutcome {
        lifetime,
        last_line,
        trickled,
        in_data,
        i,
    })
}

/// Resident memory of a process in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// 1,000 sessions trickling one byte per second (before EHLO, after EHLO, inside DATA) are
/// all cut with `421 4.4.2` within the command/data timeout plus slack, although none is
/// ever idle for a whole timeout; meanwhile normal clients get their mail through quickly,
/// and none of the slow messages is delivered.
#[test]
fn slowloris_sessions_are_cut_while_normal_clients_are_served() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pf = Postfix::start();
    let proxy = Proxy::start(&Proxy::config(
        &pf.url(),
        &format!(
            "command_timeout_secs = {SLOW_TIMEOUT_SECS}\ndata_timeout_secs = {SLOW_TIMEOUT_SECS}\n\
             max_sessions = 2000\nmax_sessions_per_ip = 2000"
        ),
        "",
    ));
    let addr = proxy.addr();
    let pid = proxy.pid();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the slow clients");
    let open = Arc::new(AtomicUsize::new(0));
    let attack_started = Instant::now();
    let tasks: Vec<_> = (0..SLOW_SESSIONS)
        .map(|i| runtime.spawn(slow_session(addr, i, open.clone())))
        .collect();

    // Wait until the attack is in full swing.
    let all_open = support::wait_until(Duration::from_secs(30), || {
        (open.load(Ordering::SeqCst) >= SLOW_SESSIONS * 9 / 10).then_some(())
    });
    let ramp = attack_started.elapsed();
    assert!(
        all_open.is_some(),
        "only {} of {SLOW_SESSIONS} slow sessions got a greeting",
        open.load(Ordering::SeqCst)
    );
    let rss_during = rss_kib(pid);

    // Normal clients during the attack.
    let mut latencies = Vec::new();
    let mut open_during = Vec::new();
    for n in 0..5 {
        open_during.push(open.load(Ordering::SeqCst));
        let started = Instant::now();
        let mut c = SmtpClient::connect_ehlo(addr, "normal.example.net");
        let message = messages::simple(&format!("normal-{n}"), "normal", "hello");
        c.send_mail("normal@example.test", &["user@example.org"], &message);
        c.quit();
        latencies.push(started.elapsed());
    }

    let outcomes: Vec<Result<SlowOutcome, String>> = runtime.block_on(async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
        }
        out
    });
    let attack_over = attack_started.elapsed();
    let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    let ok: Vec<&SlowOutcome> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    let mut lifetimes: Vec<Duration> = ok.iter().map(|o| o.lifetime).collect();
    lifetimes.sort();
    let max_life = lifetimes.last().copied().unwrap_or_default();
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let not_421: Vec<&str> = ok
        .iter()
        .filter(|o| !o.last_line.starts_with("421 4.4.2"))
        .map(|o| o.last_line.as_str())
        .collect();
    let max_trickled = ok.iter().map(|o| o.trickled).max().unwrap_or(0);
    let in_data = ok.iter().filter(|o| o.in_data).count();
    let data_kind = ok.iter().filter(|o| o.i.is_multiple_of(20)).count();
    let summary = format!(
        "slowloris: {SLOW_SESSIONS} sessions, ramp-up {ramp:?}, all closed after {attack_over:?}; \
         session lifetime median {:?}, max {max_life:?}; at most {max_trickled} bytes trickled; \
         {in_data} of them inside DATA; \
         {} errors; {} not ending in 421 4.4.2; normal client latency {latencies:?} \
         (slow sessions open meanwhile: {open_during:?}); proxy RSS during the attack {} KiB, \
         after {} KiB",
        median(&lifetimes),
        errors.len(),
        not_421.len(),
        rss_during,
        rss_kib(pid),
    );
    eprintln!("{summary}");
    assert!(
        errors.is_empty(),
        "{summary}\nerrors: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert!(
        not_421.is_empty(),
        "{summary}\nlast lines: {:?}",
        &not_421[..not_421.len().min(5)]
    );
    assert_eq!(
        in_data, data_kind,
        "every 20th session should trickle inside DATA\n{summary}"
    );
    assert!(
        max_life <= Duration::from_secs(SLOW_TIMEOUT_SECS) + SLOW_SLACK,
        "a slow session lived {max_life:?}, longer than the timeout plus slack\n{summary}"
    );
    assert!(
        open_during[0] >= SLOW_SESSIONS / 2,
        "the normal client did not run during the attack\n{summary}"
    );
    assert!(
        median(&latencies) < Duration::from_secs(2),
        "normal clients were slow during the attack\n{summary}"
    );
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(10)),
        "{summary}"
    );
    let delivered = pf.settle_and_collect(latencies.len());
    assert!(
        delivered
            .iter()
            .all(|m| messages::header(m, "Subject").as_deref() == Some("normal"))
    );
}

/// When Postfix does not authorize XCLIENT it would judge the proxy's own address, which is
/// in its mynetworks here: with `xclient = "always"` the proxy then refuses to relay at all
/// (`451 4.3.5` at MAIL) rather than let every client relay as the proxy. With
/// `xclient = "auto"` this misconfiguration relays (Postfix trusts the proxy's address): the
/// proxy cannot know Postfix's mynetworks, so it says so loudly in its log, once, with the
/// fix (and the README's "Hostile input and open relays" warns about it).
#[test]
fn without_xclient_the_proxy_never_relays_as_itself() {
    let pf = Postfix::start_with(&format!(
        "{NO_RELAY}\nsmtpd_authorized_xclient_hosts =\nsmtpd_authorized_xforward_hosts = 127.0.0.0/8"
    ));
    let outsider = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    for mode in ["always", "auto"] {
        let proxy = Proxy::start(&Proxy::config(
            &pf.url(),
            "",
            &format!("xclient = \"{mode}\""),
        ));
        let mut c = SmtpClient::connect_from(outsider, proxy.addr());
        let r = c.reply();
        c.expect_code(&r, 220, "greeting");
        let r = c.cmd("EHLO outsider.example.net");
        c.expect_code(&r, 250, "EHLO");
        let mail = c.cmd("MAIL FROM:<spammer@example.net>");
        let rcpt = if mail.code == 250 {
            Some(c.cmd("RCPT TO:<victim@outside.example.net>"))
        } else {
            None
        };
        eprintln!(
            "xclient = {mode}, Postfix without XCLIENT authorization: MAIL {mail}, RCPT {}",
            rcpt.as_ref().map_or("-".to_string(), |r| r.to_string())
        );
        if mode == "always" {
            assert_eq!(
                (mail.code, mail.enhanced()),
                (451, Some("4.3.5")),
                "xclient = always must refuse to relay as the proxy: {mail}"
            );
        } else {
            let log = proxy.wait_for_log("OPEN RELAY");
            assert!(
                log.contains("OPEN RELAY") && log.contains("smtpd_authorized_xclient_hosts"),
                "xclient = auto without XCLIENT must warn:\n{log}"
            );
        }
        c.quit();
    }
    pf.settle_and_collect(0);
}
