//! Who the client is when mailwarden sits behind another proxy: the PROXY protocol header
//! (HAProxy v1 and v2) and the inbound XCLIENT command, each honoured only from
//! `[server] trusted_proxies`.
//!
//! The proof is what the upstream is told: the proxy forwards the client's identity with
//! XCLIENT to the (fake) upstream, so `ADDR=` there is the address mailwarden believes.
//! The sender checks (SPF on that address) are covered in tests/auth.rs.
//!
//! The client's host names (`filter::rdns`) reach the upstream as XCLIENT `NAME=` and
//! `REVERSE_NAME=`: a real Postfix with `reject_unknown_client_hostname` judges them as it
//! would judge the client directly.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mailwarden::config::Xclient;
use mailwarden::envelope::ClientInfo;
use mailwarden::filter::rdns::ClientNames;
use mailwarden::relay::upstream::{UpstreamConnection, UpstreamSettings};
use support::{FakeUpstream, Postfix, Proxy, Script, SmtpClient};

const MESSAGE: &[u8] = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n";

fn upstream() -> FakeUpstream {
    FakeUpstream::start(Script::default().xclient(true))
}

fn proxy(upstream: &FakeUpstream, server_extra: &str) -> Proxy {
    Proxy::start(&format!(
        "[server]\nhostname = \"mx.example.test\"\n{server_extra}\n[upstream]\nurl = \"{}\"\nxclient = \"always\"\n",
        upstream.url()
    ))
}

/// The ADDR= values of the XCLIENT commands the upstream saw.
fn xclient_addrs(upstream: &FakeUpstream) -> Vec<String> {
    upstream
        .commands()
        .iter()
        .filter(|c| c.starts_with("XCLIENT"))
        .filter_map(|c| {
            c.split(' ')
                .find_map(|a| a.strip_prefix("ADDR="))
                .map(str::to_string)
        })
        .collect()
}

fn send_one(client: &mut SmtpClient) {
    let r = client.cmd("EHLO client.example.org");
    client.expect_code(&r, 250, "EHLO");
    let r = client.send_mail("a@example.org", &["b@example.org"], MESSAGE);
    client.expect_code(&r, 250, "end of data");
    client.quit();
}

fn v2_header(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

#[test]
fn proxy_protocol_v1_and_v2_name_the_client_from_a_trusted_proxy() {
    let up = upstream();
    let p = proxy(
        &up,
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let mut c = SmtpClient::connect(p.addr());
    c.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 56324 25\r\n");
    let greeting = c.reply();
    c.expect_code(&greeting, 220, "greeting after a v1 header");
    send_one(&mut c);

    let mut c = SmtpClient::connect(p.addr());
    c.send(&v2_header([198, 51, 100, 9], 4000));
    let greeting = c.reply();
    c.expect_code(&greeting, 220, "greeting after a v2 header");
    send_one(&mut c);

    assert_eq!(xclient_addrs(&up), vec!["192.0.2.7", "198.51.100.9"]);
    assert_eq!(up.messages().len(), 2);
}

#[test]
fn a_trusted_proxy_without_a_valid_header_is_disconnected_unanswered() {
    let up = upstream();
    let p = proxy(
        &up,
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let mut c = SmtpClient::connect(p.addr());
    c.send(b"EHLO client.example.org\r\n");
    c.expect_closed("plain SMTP where a PROXY header was due");
    let mut c = SmtpClient::connect(p.addr());
    c.send(b"PROXY TCP4 192.0.2.300 127.0.0.1 1 25\r\n");
    c.expect_closed("a malformed v1 header");
    assert!(up.messages().is_empty());
    let log = p.wait_for_log("PROXY protocol header refused");
    assert!(log.contains("PROXY protocol header refused"), "{log}");
}

#[test]
fn other_peers_are_ordinary_clients_and_their_headers_are_not_believed() {
    let up = upstream();
    let p = proxy(
        &up,
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let source: IpAddr = "127.0.0.2".parse().expect("ip");
    let mut c = SmtpClient::connect_from(source, p.addr());
    let greeting = c.reply();
    c.expect_code(
        &greeting,
        220,
        "greeting to an untrusted peer, no header wanted",
    );
    // A PROXY line from an untrusted peer is just an unknown command.
    let r = c.cmd("PROXY TCP4 192.0.2.7 127.0.0.1 56324 25");
    assert_eq!(r.code, 500, "{r}");
    send_one(&mut c);
    assert_eq!(xclient_addrs(&up), vec!["127.0.0.2"]);
}

#[test]
fn xclient_from_a_trusted_proxy_replaces_the_client() {
    let up = upstream();
    let p = proxy(&up, "trusted_proxies = [\"127.0.0.1\"]");
    let mut c = SmtpClient::connect_greeted(p.addr());
    let ehlo = c.cmd("EHLO proxy.example.net");
    c.expect_code(&ehlo, 250, "EHLO");
    assert!(ehlo.text().contains("XCLIENT NAME ADDR"), "{ehlo}");
    let r = c.cmd("XCLIENT NAME=[UNAVAILABLE] ADDR=IPV6:2001:db8::7 PORT=4711 HELO=real.example.org PROTO=ESMTP");
    c.expect_code(&r, 220, "XCLIENT starts over with a greeting");
    // The HELO came with XCLIENT: MAIL may follow at once.
    let r = c.send_mail("a@example.org", &["b@example.org"], MESSAGE);
    c.expect_code(&r, 250, "end of data");
    // The named client is not a trusted proxy: no second XCLIENT.
    let r = c.cmd("XCLIENT ADDR=192.0.2.1");
    assert_eq!((r.code, r.enhanced()), (550, Some("5.7.0")), "{r}");
    c.quit();
    assert_eq!(xclient_addrs(&up), vec!["IPV6:2001:db8::7"]);
    let helo = up
        .commands()
        .iter()
        .find(|c| c.starts_with("XCLIENT"))
        .cloned()
        .unwrap_or_default();
    assert!(helo.contains("HELO=real.example.org"), "{helo}");
}

#[test]
fn xclient_is_refused_to_untrusted_clients_and_inside_a_transaction() {
    let up = upstream();
    let p = proxy(&up, "trusted_proxies = [\"127.0.0.1\"]");
    let source: IpAddr = "127.0.0.2".parse().expect("ip");
    let mut c = SmtpClient::connect_from(source, p.addr());
    let _ = c.reply();
    let ehlo = c.cmd("EHLO client.example.org");
    assert!(!ehlo.text().contains("XCLIENT"), "{ehlo}");
    let r = c.cmd("XCLIENT ADDR=192.0.2.7");
    assert_eq!((r.code, r.enhanced()), (550, Some("5.7.0")), "{r}");
    send_one(&mut c);

    let mut c = SmtpClient::connect_ehlo(p.addr(), "proxy.example.net");
    let r = c.cmd("MAIL FROM:<a@example.org>");
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("XCLIENT ADDR=192.0.2.7");
    assert_eq!(r.code, 503, "{r}");
    let r = c.cmd("RSET");
    c.expect_code(&r, 250, "RSET");
    let r = c.cmd("XCLIENT ADDR=192.0.2.7 COLOUR=blue");
    assert_eq!(r.code, 501, "{r}");
    c.quit();
    // The second session never used XCLIENT: the proxy's own address goes upstream.
    assert_eq!(xclient_addrs(&up), vec!["127.0.0.2", "127.0.0.1"]);
}

#[test]
fn proxy_protocol_without_trusted_proxies_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nproxy_protocol = true\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("run mailwarden");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("server.proxy_protocol") && stderr.contains("trusted_proxies"),
        "{stderr}"
    );
}

#[test]
fn xforward_from_a_trusted_proxy_names_the_client_of_the_next_transaction_only() {
    let up = upstream();
    let p = proxy(&up, "trusted_proxies = [\"127.0.0.1\"]");
    let mut c = SmtpClient::connect_greeted(p.addr());
    let ehlo = c.cmd("EHLO postfix.example.net");
    assert!(ehlo.text().contains("XFORWARD NAME ADDR"), "{ehlo}");
    // Postfix's smtpd_proxy_filter sends two XFORWARD commands before MAIL.
    let r = c.cmd("XFORWARD NAME=client.example.org ADDR=192.0.2.9 PORT=4000 PROTO=ESMTP");
    c.expect_code(&r, 250, "XFORWARD");
    let r = c.cmd("XFORWARD HELO=client.example.org IDENT=123 SOURCE=REMOTE");
    c.expect_code(&r, 250, "XFORWARD");
    let r = c.send_mail("a@example.org", &["b@example.org"], MESSAGE);
    c.expect_code(&r, 250, "end of data");
    let r = c.send_mail("a@example.org", &["b@example.org"], MESSAGE);
    c.expect_code(&r, 250, "end of data, second transaction");
    c.quit();
    assert_eq!(xclient_addrs(&up), vec!["192.0.2.9", "127.0.0.1"]);

    let source: IpAddr = "127.0.0.2".parse().expect("ip");
    let mut c = SmtpClient::connect_from(source, p.addr());
    let _ = c.reply();
    let ehlo = c.cmd("EHLO client.example.org");
    assert!(!ehlo.text().contains("XFORWARD"), "{ehlo}");
    let r = c.cmd("XFORWARD ADDR=192.0.2.9");
    assert_eq!((r.code, r.enhanced()), (550, Some("5.7.0")), "{r}");
    c.quit();
}

/// What Postfix answers to RCPT for a client at 192.0.2.7 with these names, passed by the
/// production upstream code (XCLIENT, then MAIL and RCPT).
fn postfix_rcpt_reply(postfix: &Postfix, helo: &str, names: ClientNames) -> String {
    let settings = Arc::new(UpstreamSettings {
        address: postfix.addr().to_string(),
        helo_name: "mx.example.test".into(),
        xclient: Xclient::Always,
        xforward: false,
        starttls: false,
        chunking: false,
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(10),
        data_timeout: Duration::from_secs(10),
    });
    let mut client = ClientInfo {
        helo: Some(helo.into()),
        esmtp: true,
        ..ClientInfo::connected(
            "192.0.2.7:40000".parse().expect("addr"),
            "127.0.0.1:25".parse().expect("addr"),
        )
    };
    client.set_names(names);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut conn = UpstreamConnection::open(settings, &client)
            .await
            .expect("XCLIENT accepted");
        // As the session does before each transaction: Postfix stops offering XCLIENT once
        // it has one, and the same client must not be introduced again.
        conn.introduce_if_needed(&client)
            .await
            .expect("no second XCLIENT for the same client");
        let mail = conn
            .mail(&client, "MAIL FROM:<a@example.test>")
            .await
            .expect("MAIL");
        assert_eq!(mail.code(), 250, "{mail}");
        let rcpt = conn
            .command("RCPT TO:<user@example.org>", "RCPT")
            .await
            .expect("RCPT");
        conn.quit().await;
        rcpt.to_string()
    })
}

const HELO: &str = "client.example.net";

#[test]
fn postfix_judges_the_client_names_we_pass_as_it_would_directly() {
    // 550 for a permanent failure, so that it differs from the 450 Postfix always gives
    // for a temporary one (postconf(5), reject_unknown_client_hostname).
    let postfix = Postfix::start_with(
        "smtpd_client_restrictions = reject_unknown_reverse_client_hostname, reject_unknown_client_hostname\n\
         unknown_client_reject_code = 550\n",
    );
    let verified = ClientNames {
        reverse_name: Some("mail.example.net".into()),
        name: Some("mail.example.net".into()),
        temporary: false,
    };
    let r = postfix_rcpt_reply(&postfix, HELO, verified);
    assert!(r.starts_with("250"), "a verified name passes: {r}");
    let unverified = ClientNames {
        reverse_name: Some("ptr.example.net".into()),
        name: None,
        temporary: false,
    };
    let r = postfix_rcpt_reply(&postfix, HELO, unverified.clone());
    assert!(
        r.starts_with("550") && r.contains("cannot find your hostname"),
        "PTR without forward confirmation: {r}"
    );
    let r = postfix_rcpt_reply(&postfix, HELO, ClientNames::default());
    assert!(
        r.starts_with("550") && r.contains("cannot find your reverse hostname"),
        "no PTR: {r}"
    );
    let r = postfix_rcpt_reply(
        &postfix,
        HELO,
        ClientNames {
            temporary: true,
            ..ClientNames::default()
        },
    );
    assert!(
        r.starts_with("450") && r.contains("reverse hostname"),
        "a DNS timeout is temporary: {r}"
    );
    let r = postfix_rcpt_reply(
        &postfix,
        HELO,
        ClientNames {
            temporary: true,
            ..unverified
        },
    );
    assert!(
        r.starts_with("450") && r.contains("cannot find your hostname"),
        "forward confirmation timed out: {r}"
    );
    // The longest names and HELO do not fit one 512-byte XCLIENT line: several commands.
    let long = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    let r = postfix_rcpt_reply(
        &postfix,
        &long,
        ClientNames {
            reverse_name: Some(long.clone()),
            name: Some(long.clone()),
            temporary: false,
        },
    );
    assert!(r.starts_with("250"), "names of 253 characters: {r}");
    let log = postfix.log();
    assert!(
        log.contains(&format!("{long}[192.0.2.7]")),
        "Postfix took the long name: {log}"
    );
    assert!(
        log.contains("mail.example.net[192.0.2.7]"),
        "Postfix logs the verified name, not unknown[…]: {log}"
    );
}
