//! Every transaction that reaches MAIL ends with exactly one log line and one count, whether
//! the filter judged it, the SMTP layer refused it before any check (too big, a text line too
//! long, a bare newline) or the client left it (RSET, QUIT, a closed connection).

mod support;

use support::{Proxy, SmtpClient};

/// The transaction log lines (`mailwarden::filter::record`) so far.
fn lines(proxy: &Proxy) -> Vec<String> {
    proxy
        .log()
        .lines()
        .filter(|l| l.contains("mailwarden::filter::record"))
        .map(str::to_string)
        .collect()
}

/// The value of one sample line of the metrics text, 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[test]
fn refused_and_abandoned_transactions_get_one_line_and_one_count_each() {
    let proxy = Proxy::start(
        "[server]\nhostname = \"mx.example.test\"\nmax_message_size = 2048\n\n\
         [upstream]\nurl = \"maildir:@DIR@/maildir\"\n",
    );
    let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.test");

    // Too big: 552 at the end of data.
    let big = format!(
        "Subject: big\r\n\r\n{}\r\n",
        "0123456789abcdef\r\n".repeat(200)
    );
    let r = c.cmd("MAIL FROM:<a@example.test>");
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RCPT TO:<b@example.org>");
    c.expect_code(&r, 250, "RCPT");
    let r = c.data(big.as_bytes());
    c.expect_code(&r, 552, "too big");

    // A text line over 1000 octets: 500.
    let long = format!("Subject: long\r\n\r\n{}\r\n", "x".repeat(1200));
    let r = c.cmd("MAIL FROM:<a@example.test>");
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RCPT TO:<b@example.org>");
    c.expect_code(&r, 250, "RCPT");
    let r = c.data(long.as_bytes());
    c.expect_code(&r, 500, "long line");

    // A good one, then one left with RSET, then one left by QUIT.
    let r = c.send_mail(
        "a@example.test",
        &["b@example.org"],
        b"Subject: ok\r\n\r\nhi\r\n",
    );
    c.expect_code(&r, 250, "good message");
    let r = c.cmd("MAIL FROM:<rset@example.test>");
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RSET");
    c.expect_code(&r, 250, "RSET");
    let r = c.cmd("MAIL FROM:<quit@example.test>");
    c.expect_code(&r, 250, "MAIL");
    c.quit();

    let wait = std::time::Instant::now();
    while lines(&proxy).len() < 5 && wait.elapsed() < support::LONG {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let got = lines(&proxy);
    assert_eq!(
        got.len(),
        5,
        "five transactions, five lines:\n{}",
        got.join("\n")
    );
    assert!(
        got[0].contains("message refused before the checks") && got[0].contains("reply=552"),
        "{}",
        got[0]
    );
    assert!(
        got[1].contains("message refused before the checks") && got[1].contains("reply=500"),
        "{}",
        got[1]
    );
    assert!(
        got[2].contains("message relayed") && got[2].contains("action=accept"),
        "{}",
        got[2]
    );
    assert!(
        got[3].contains("action=abandoned") && got[3].contains("from=rset@example.test"),
        "{}",
        got[3]
    );
    assert!(got[3].contains("message rset"), "{}", got[3]);
    assert!(
        got[4].contains("action=abandoned") && got[4].contains("message quit"),
        "{}",
        got[4]
    );

    let (_, text) = proxy.http_get("/metrics");
    assert_eq!(
        sample(
            &text,
            "mailwarden_transactions_refused_total{reason=\"too-big\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "mailwarden_transactions_refused_total{reason=\"line-too-long\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "mailwarden_transactions_abandoned_total{reason=\"rset\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "mailwarden_transactions_abandoned_total{reason=\"quit\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "mailwarden_messages_total{action=\"reject\"}"),
        2.0
    );
    assert_eq!(
        sample(&text, "mailwarden_messages_total{action=\"accept\"}"),
        1.0
    );
}
