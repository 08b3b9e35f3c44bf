//! Virus scanning with a real ClamAV daemon: through the proxy binary (to its embedded
//! Maildir, and end to end to a real Postfix upstream), through `mailwarden scan`, and with
//! clamd stopped or hung.
//!
//! Each test starts its own clamd (`support::Clamd`: Debian's clamav-daemon on a free port,
//! loaded with the project's EICAR-only database from `tests/clamav/`), so tests share
//! nothing and run in parallel. The EICAR test file is the industry's harmless test string:
//! every scanner reports it as a virus. The infected messages are built here: EICAR as a
//! base64 attachment, inside a deflated zip inside MIME, and deep in nested multiparts.
//!
//! The rules are only the shipped `rules/55_virus.cf` (the symbols' descriptions), so no
//! other rule's score moves these verdicts.

mod support;

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::messages::{contains, header};
use support::{Clamd, Postfix, Proxy, SilentClamd, SmtpClient};

/// The EICAR anti-virus test file (68 bytes): not a virus, detected as one by design.
const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
const SIGNATURE: &str = "Eicar-Test-Signature";
const SENDER: &str = "alice@example.net";
const RCPT: &str = "user@example.org";

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

use support::messages::base64_mime as base64;

fn headers(id: &str, subject: &str) -> String {
    format!(
        "From: Alice <{SENDER}>\r\nTo: Bob <{RCPT}>\r\nSubject: {subject}\r\n\
         Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{id}@example.net>\r\nMIME-Version: 1.0\r\n"
    )
}

fn clean(id: &str) -> Vec<u8> {
    format!(
        "{}Content-Type: text/plain\r\n\r\nHello Bob,\r\n\r\nthe meeting is at ten.\r\n",
        headers(id, "meeting")
    )
    .into_bytes()
}

/// One base64 MIME part.
fn part(content_type: &str, filename: &str, data: &[u8]) -> String {
    format!(
        "Content-Type: {content_type}; name=\"{filename}\"\r\nContent-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\n\r\n{}\r\n",
        base64(data)
    )
}

/// A multipart body from whole parts (each with its own headers).
fn multipart(kind: &str, boundary: &str, parts: &[String]) -> String {
    let mut s = format!("Content-Type: multipart/{kind}; boundary=\"{boundary}\"\r\n\r\n");
    for p in parts {
        s.push_str(&format!("--{boundary}\r\n{p}"));
    }
    s.push_str(&format!("--{boundary}--\r\n"));
    s
}

fn text_part(text: &str) -> String {
    format!("Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n")
}

/// EICAR as a base64 attachment.
fn eicar_attached(id: &str) -> Vec<u8> {
    let body = multipart(
        "mixed",
        "b1",
        &[
            text_part("The file you asked for."),
            part("application/octet-stream", "eicar.com", EICAR.as_bytes()),
        ],
    );
    format!("{}{body}", headers(id, "your file")).into_bytes()
}

/// A deflated zip holding EICAR, built here with the zip crate.
fn eicar_zip() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("docs/readme.txt", options)
        .expect("zip entry");
    zip.write_all(b"nothing to see here\n").expect("zip write");
    zip.start_file("docs/invoice.com", options)
        .expect("zip entry");
    zip.write_all(EICAR.as_bytes()).expect("zip write");
    zip.finish().expect("zip finish").into_inner()
}

/// EICAR inside a zip inside MIME.
fn eicar_zipped(id: &str) -> Vec<u8> {
    let zip = eicar_zip();
    assert!(
        !contains(&zip, b"EICAR-STANDARD"),
        "the test zip must compress EICAR, or the test proves nothing about unpacking"
    );
    let body = multipart(
        "mixed",
        "b2",
        &[
            text_part("Invoice attached."),
            part("application/zip", "invoice.zip", &zip),
        ],
    );
    format!("{}{body}", headers(id, "invoice")).into_bytes()
}

/// EICAR three multipart levels down: mixed → mixed → related → attachment.
fn eicar_nested(id: &str) -> Vec<u8> {
    let related = multipart(
        "related",
        "b5",
        &[
            "Content-Type: text/html\r\n\r\n<p>see attachment</p>\r\n".to_string(),
            part("application/octet-stream", "tool.com", EICAR.as_bytes()),
        ],
    );
    let inner = multipart(
        "mixed",
        "b4",
        &[
            multipart(
                "alternative",
                "b6",
                &[text_part("plain"), text_part("also plain")],
            ),
            related,
        ],
    );
    let body = multipart("mixed", "b3", &[text_part("Forwarded."), inner]);
    format!("{}{body}", headers(id, "fwd: tools")).into_bytes()
}

// ---------------------------------------------------------------------------------------------
// The proxy and what arrived
// ---------------------------------------------------------------------------------------------

fn rules_file() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("rules/55_virus.cf")
        .display()
        .to_string()
}

/// A proxy delivering to `@DIR@/mail` with `[clamav]` lines and extra `[policy]` lines.
fn proxy(clamav: &str, policy: &str) -> Proxy {
    Proxy::start(&format!(
        "[upstream]\nurl = \"maildir:@DIR@/mail\"\n\n[rules]\npaths = [\"{}\"]\n\n\
         [policy]\n{policy}\n\n[clamav]\n{clamav}\n",
        rules_file()
    ))
}

fn enabled(address: &str) -> String {
    format!("enabled = true\naddress = \"{address}\"\n")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Messages in the proxy's Maildir.
fn delivered(p: &Proxy) -> Vec<Vec<u8>> {
    files_in(&p.dir().join("mail/new"))
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("read {f:?}: {e}")))
        .collect()
}

/// One transaction; returns the end-of-data reply.
fn send(p: &Proxy, message: &[u8]) -> support::Reply {
    let mut c = SmtpClient::connect_ehlo(p.addr(), "client.example.net");
    let r = c.cmd(&format!("MAIL FROM:<{SENDER}>"));
    c.expect_code(&r, 250, "MAIL FROM");
    let r = c.cmd(&format!("RCPT TO:<{RCPT}>"));
    c.expect_code(&r, 250, "RCPT TO");
    let r = c.data(message);
    c.quit();
    r
}

/// Waits (up to 5 s) for the proxy's log to contain `needle`; returns the log.
fn log_with(p: &Proxy, needle: &str) -> String {
    let log = p.wait_for_log(needle);
    assert!(
        log.contains(needle),
        "the proxy log never contained {needle:?}:\n{log}"
    );
    log
}

fn assert_virus_rejected(p: &Proxy, r: &support::Reply, what: &str) {
    assert_eq!(r.code, 554, "{what}: {r}");
    assert_eq!(r.enhanced(), Some("5.7.1"), "{what}: {r}");
    assert!(
        r.text().contains(SIGNATURE),
        "{what}: reply names the signature: {r}"
    );
    assert!(
        delivered(p).is_empty(),
        "{what}: an infected message was delivered"
    );
    log_with(p, &format!("virus={SIGNATURE}"));
}

// ---------------------------------------------------------------------------------------------
// Through the proxy, with a real clamd
// ---------------------------------------------------------------------------------------------

#[test]
fn clean_message_is_relayed_with_a_clean_result_header() {
    let clamd = Clamd::start();
    let p = proxy(&enabled(&clamd.address()), "");
    // A forged result from the sender is removed, ours is added.
    let mut msg = b"X-Virus-Scan: clean (forged)\r\n".to_vec();
    msg.extend(clean("clean-1"));
    let r = send(&p, &msg);
    assert_eq!(r.code, 250, "{r}");
    let got = delivered(&p);
    assert_eq!(got.len(), 1);
    assert_eq!(
        header(&got[0], "X-Virus-Scan").as_deref(),
        Some("clean (ClamAV)")
    );
    assert!(
        !contains(&got[0], b"forged"),
        "the forged header went through"
    );
    log_with(&p, "av=clean");
}

#[test]
fn eicar_as_base64_attachment_is_rejected_naming_the_signature() {
    let clamd = Clamd::start();
    let p = proxy(&enabled(&clamd.address()), "");
    let r = send(&p, &eicar_attached("att-1"));
    assert_virus_rejected(&p, &r, "EICAR attachment");
    assert_eq!(
        r.text(),
        format!("5.7.1 Message rejected: virus found ({SIGNATURE})")
    );
    // The same session carries on: a clean message after it is relayed.
    let r = send(&p, &clean("att-2"));
    assert_eq!(r.code, 250, "{r}");
    assert_eq!(delivered(&p).len(), 1);
}

#[test]
fn eicar_in_a_zip_inside_mime_is_rejected() {
    let clamd = Clamd::start();
    let p = proxy(&enabled(&clamd.address()), "");
    let r = send(&p, &eicar_zipped("zip-1"));
    assert_virus_rejected(&p, &r, "EICAR in a zip");
}

#[test]
fn eicar_in_nested_multiparts_is_rejected() {
    let clamd = Clamd::start();
    let p = proxy(&enabled(&clamd.address()), "");
    let r = send(&p, &eicar_nested("nest-1"));
    assert_virus_rejected(&p, &r, "EICAR in nested multiparts");
}

#[test]
fn unix_socket_address_works() {
    let clamd = Clamd::start();
    let p = proxy(&enabled(&clamd.unix_address()), "");
    let r = send(&p, &eicar_attached("unix-1"));
    assert_virus_rejected(&p, &r, "over the unix socket");
    assert_eq!(send(&p, &clean("unix-2")).code, 250);
}

#[test]
fn a_virus_from_an_allowlisted_sender_is_still_rejected() {
    let clamd = Clamd::start();
    let list = "alice@example.net\n";
    let p = Proxy::start_with_files(
        &format!(
            "[upstream]\nurl = \"maildir:@DIR@/mail\"\n\n[rules]\npaths = [\"{}\"]\n\n\
             [policy]\nallowlist = \"@DIR@/allow.txt\"\n\n[clamav]\n{}",
            rules_file(),
            enabled(&clamd.address())
        ),
        &[("allow.txt", list.as_bytes())],
    );
    let r = send(&p, &eicar_attached("allow-1"));
    assert_virus_rejected(&p, &r, "allowlisted sender");
    let log = log_with(&p, "MW_ALLOWLIST");
    assert!(log.contains("VIRUS_FOUND"), "{log}");
    // The allow list still works for clean mail.
    assert_eq!(send(&p, &clean("allow-2")).code, 250);
}

#[test]
fn quarantine_mode_keeps_the_message_and_tells_the_client_250() {
    let clamd = Clamd::start();
    let p = proxy(
        &format!("{}on_virus = \"quarantine\"\n", enabled(&clamd.address())),
        "quarantine_dir = \"@DIR@/quarantine\"",
    );
    let msg = eicar_attached("quar-1");
    let r = send(&p, &msg);
    assert_eq!(r.code, 250, "{r}");
    assert!(delivered(&p).is_empty(), "quarantined mail was relayed");
    let files = files_in(&p.dir().join("quarantine"));
    let eml: Vec<_> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "eml"))
        .collect();
    let json: Vec<_> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!((eml.len(), json.len()), (1, 1), "{files:?}");
    assert_eq!(std::fs::read(eml[0]).expect("eml"), msg);
    let meta = std::fs::read_to_string(json[0]).expect("json");
    assert!(meta.contains("\"quarantine\""), "{meta}");
    assert!(meta.contains(&format!("virus {SIGNATURE}")), "{meta}");
    assert!(meta.contains("VIRUS_FOUND"), "{meta}");
    log_with(&p, &format!("virus={SIGNATURE}"));
}

#[test]
fn quarantine_mode_without_a_quarantine_dir_rejects() {
    let clamd = Clamd::start();
    let p = proxy(
        &format!("{}on_virus = \"quarantine\"\n", enabled(&clamd.address())),
        "",
    );
    log_with(&p, "infected messages are rejected instead");
    let r = send(&p, &eicar_attached("noq-1"));
    assert_virus_rejected(&p, &r, "quarantine without a directory");
}

#[test]
fn tag_mode_relays_with_the_virus_header_and_the_spam_tag() {
    let clamd = Clamd::start();
    let p = proxy(
        &format!("{}on_virus = \"tag\"\n", enabled(&clamd.address())),
        "subject_prefix = \"[SPAM] \"",
    );
    let r = send(&p, &eicar_zipped("tag-1"));
    assert_eq!(r.code, 250, "{r}");
    let got = delivered(&p);
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(header(m, "X-Virus-Found").as_deref(), Some(SIGNATURE));
    assert_eq!(header(m, "X-Spam-Flag").as_deref(), Some("YES"));
    assert_eq!(header(m, "Subject").as_deref(), Some("[SPAM] invoice"));
    let status = header(m, "X-Spam-Status").expect("X-Spam-Status");
    assert!(status.contains("VIRUS_FOUND"), "{status}");
    log_with(&p, &format!("virus={SIGNATURE}"));
}

#[test]
fn clamd_stopped_defers_with_451_in_tempfail_mode() {
    let mut clamd = Clamd::start();
    let p = proxy(&enabled(&clamd.address()), "");
    assert_eq!(send(&p, &clean("stop-1")).code, 250, "while clamd runs");
    clamd.stop();
    let r = send(&p, &clean("stop-2"));
    assert_eq!(r.code, 451, "{r}");
    assert_eq!(r.enhanced(), Some("4.7.0"), "{r}");
    assert!(r.text().contains("try again later"), "{r}");
    assert_eq!(
        delivered(&p).len(),
        1,
        "the deferred message must not be relayed"
    );
    let log = log_with(&p, "av=failed");
    assert!(log.contains("virus scan failed"), "{log}");
}

#[test]
fn clamd_stopped_relays_with_a_failed_header_in_accept_mode() {
    let mut clamd = Clamd::start();
    let p = proxy(
        &format!("{}on_error = \"accept\"\n", enabled(&clamd.address())),
        "",
    );
    clamd.stop();
    let r = send(&p, &clean("acc-1"));
    assert_eq!(r.code, 250, "{r}");
    let got = delivered(&p);
    assert_eq!(got.len(), 1);
    assert_eq!(header(&got[0], "X-Virus-Scan").as_deref(), Some("failed"));
    let status = header(&got[0], "X-Spam-Status").expect("X-Spam-Status");
    assert!(status.contains("AV_FAIL"), "{status}");
    log_with(&p, "av=failed");
}

#[test]
fn clamd_that_never_answers_times_out_into_a_tempfail() {
    let silent = SilentClamd::start();
    let p = proxy(
        &format!("{}timeout_ms = 700\n", enabled(&silent.address())),
        "",
    );
    let started = Instant::now();
    let r = send(&p, &eicar_attached("hang-1"));
    let took = started.elapsed();
    assert_eq!(r.code, 451, "{r}");
    assert_eq!(r.enhanced(), Some("4.7.0"), "{r}");
    assert!(
        took >= Duration::from_millis(600),
        "answered before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the timeout did not fire: {took:?}"
    );
    assert!(
        silent.accepted() >= 1,
        "the proxy never connected to the fake clamd"
    );
    assert!(delivered(&p).is_empty());
    log_with(&p, "within clamav.timeout_ms = 700");
}

#[test]
fn clamd_answering_error_defers_the_message() {
    // clamd's own limit below ours: it answers "INSTREAM size limit exceeded. ERROR" (or
    // closes the connection while we still write).
    let clamd = Clamd::start_with("StreamMaxLength 1K\n");
    let p = proxy(&enabled(&clamd.address()), "");
    let mut big = clean("err-1");
    big.extend(
        "All work and no play makes Jack a dull boy.\r\n"
            .repeat(100)
            .bytes(),
    );
    let r = send(&p, &big);
    assert_eq!(r.code, 451, "{r}");
    assert_eq!(r.enhanced(), Some("4.7.0"), "{r}");
    assert!(delivered(&p).is_empty());
    log_with(&p, "av=failed");
    // Small messages still pass.
    assert_eq!(send(&p, &clean("err-2")).code, 250);
}

#[test]
fn max_concurrent_bounds_the_connections_to_clamd() {
    // One slot and a clamd that never answers: while the first message holds the slot (its
    // connection), the second waits and does not connect. Both are deferred in the end.
    let silent = SilentClamd::start();
    let p = proxy(
        &format!(
            "{}timeout_ms = 3000\nmax_concurrent = 1\n",
            enabled(&silent.address())
        ),
        "",
    );
    // The start-up PING (its own connection) times out first.
    log_with(&p, "clamd does not answer now");
    let before = silent.accepted();
    std::thread::scope(|s| {
        let first = s.spawn(|| send(&p, &clean("slot-1")));
        let connected = support::wait_until(Duration::from_secs(5), || {
            (silent.accepted() > before).then_some(())
        });
        assert!(connected.is_some(), "the first scan never connected");
        let second = s.spawn(|| send(&p, &clean("slot-2")));
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(
            silent.accepted() - before,
            1,
            "a second connection while the only slot was taken"
        );
        for h in [first, second] {
            let r = h.join().expect("client thread");
            assert_eq!(r.code, 451, "{r}");
        }
    });
}

#[test]
fn messages_above_max_size_are_not_scanned_and_say_so() {
    let clamd = Clamd::start();
    let p = proxy(
        &format!("{}max_size = 200\n", enabled(&clamd.address())),
        "",
    );
    let r = send(&p, &eicar_attached("big-1"));
    assert_eq!(r.code, 250, "{r}");
    let got = delivered(&p);
    assert_eq!(got.len(), 1);
    let h = header(&got[0], "X-Virus-Scan").expect("X-Virus-Scan");
    assert!(h.starts_with("skipped"), "{h}");
    let status = header(&got[0], "X-Spam-Status").expect("X-Spam-Status");
    assert!(status.contains("AV_SKIPPED_SIZE"), "{status}");
    log_with(&p, "av=skipped-size");
}

#[test]
fn start_up_says_whether_scanning_is_on_and_whether_clamd_answers() {
    let off = proxy("", "");
    log_with(&off, "virus scanning disabled ([clamav] enabled = false)");
    // Enabled with nothing listening: a warning, not a failed start.
    let port = support::unused_port();
    let down = proxy(&enabled(&format!("127.0.0.1:{port}")), "");
    let log = log_with(&down, "clamd does not answer now");
    assert!(log.contains("virus scanning enabled"), "{log}");
    let clamd = Clamd::start();
    let up = proxy(&enabled(&clamd.address()), "");
    log_with(&up, "clamd answers PING");
}

#[test]
fn a_bad_clamav_address_stops_the_start_with_a_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        "[clamav]\nenabled = true\naddress = \"clamd.sock\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("run mailwarden");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("clamav.address") && err.contains("unix:/run/clamav/clamd.ctl"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// `mailwarden scan`
// ---------------------------------------------------------------------------------------------

fn scan_json(config: &str, message: &[u8]) -> (serde_json::Value, i32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("m.toml");
    std::fs::write(
        &conf,
        format!(
            "[rules]\npaths = [\"{}\"]\n[auth]\nenabled = false\n{config}",
            rules_file()
        ),
    )
    .expect("write config");
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, message).expect("write message");
    let out = Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .args(["scan", "--json", "--config"])
        .arg(&conf)
        .arg(&msg)
        .output()
        .expect("run mailwarden scan");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "scan output is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (value, out.status.code().unwrap_or(-1))
}

#[test]
fn scan_json_names_the_virus() {
    let clamd = Clamd::start();
    let config = format!("[clamav]\n{}", enabled(&clamd.address()));
    let (v, code) = scan_json(&config, &eicar_zipped("scan-1"));
    assert_eq!(v["virus"], SIGNATURE, "{v}");
    assert_eq!(v["av"], "found", "{v}");
    assert_eq!(v["action"], "reject", "{v}");
    assert_eq!(code, 2, "exit code for a refusal");
    let symbols = v["symbols"].as_array().expect("symbols");
    let found = symbols
        .iter()
        .find(|s| s["name"] == "VIRUS_FOUND")
        .expect("VIRUS_FOUND in symbols");
    assert!(
        found["description"]
            .as_str()
            .is_some_and(|d| d.contains("ClamAV")),
        "{found}"
    );
    let (v, code) = scan_json(&config, &clean("scan-2"));
    assert_eq!(v["virus"], serde_json::Value::Null, "{v}");
    assert_eq!(v["av"], "clean", "{v}");
    assert_eq!(code, 0);
    let (v, _) = scan_json("", &eicar_attached("scan-3"));
    assert_eq!(v["av"], "disabled", "{v}");
    assert_eq!(v["virus"], serde_json::Value::Null, "{v}");
}

// ---------------------------------------------------------------------------------------------
// End to end: the proxy in front of a real Postfix
// ---------------------------------------------------------------------------------------------

#[test]
fn through_the_proxy_to_postfix_infected_never_arrives_clean_arrives_once() {
    let clamd = Clamd::start();
    let pf = Postfix::start();
    let p = Proxy::start(&format!(
        "[upstream]\nurl = \"{}\"\n\n[rules]\npaths = [\"{}\"]\n\n[clamav]\n{}",
        pf.url(),
        rules_file(),
        enabled(&clamd.address())
    ));
    let mut c = SmtpClient::connect_ehlo(p.addr(), "client.example.net");
    for (i, infected) in [
        eicar_attached("e2e-1"),
        eicar_zipped("e2e-2"),
        eicar_nested("e2e-3"),
    ]
    .iter()
    .enumerate()
    {
        let r = c.cmd(&format!("MAIL FROM:<{SENDER}>"));
        c.expect_code(&r, 250, "MAIL FROM");
        let r = c.cmd(&format!("RCPT TO:<{RCPT}>"));
        c.expect_code(&r, 250, "RCPT TO");
        let r = c.data(infected);
        assert_eq!(r.code, 554, "infected message {i}: {r}");
        assert!(r.text().contains(SIGNATURE), "{r}");
    }
    let r = c.send_mail(SENDER, &[RCPT], &clean("e2e-clean"));
    assert_eq!(r.code, 250);
    c.quit();
    let got = pf.settle_and_collect(1);
    assert!(contains(&got[0], b"Message-ID: <e2e-clean@example.net>"));
    assert!(!contains(&got[0], b"EICAR"), "EICAR reached the mailbox");
    assert_eq!(
        header(&got[0], "X-Virus-Scan").as_deref(),
        Some("clean (ClamAV)")
    );
    let log = p.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("message refused") && l.contains(&format!("virus={SIGNATURE}")))
            .count(),
        3,
        "one log line per infected message:\n{log}"
    );
}

#[test]
fn readiness_and_metrics_follow_clamd() {
    let mut clamd = Clamd::start();
    let p = proxy(&enabled(&clamd.address()), "");
    let (status, body) = p.http_get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("clamd: ok"), "{body}");
    let r = send(&p, &eicar_attached("metrics-virus"));
    assert_eq!(r.code, 554, "{r}");
    clamd.stop();
    let r = send(&p, &clean("metrics-failed"));
    assert_eq!(r.code, 451, "{r}");
    let (status, body) = p.http_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("clamd: FAILED"), "{body}");
    let (_, metrics) = p.http_get("/metrics");
    for series in [
        "mailwarden_clamav_scans_total{result=\"virus\"} 1",
        "mailwarden_clamav_scans_total{result=\"error\"} 1",
        "mailwarden_clamav_viruses_total{family=\"Eicar-Test-Signature\"} 1",
        "mailwarden_clamav_failures_total{handling=\"tempfail\"} 1",
        "mailwarden_messages_total{action=\"reject\"} 1",
        "mailwarden_messages_total{action=\"tempfail\"} 1",
        "mailwarden_scan_duration_seconds_count{stage=\"clamav\"} 2",
    ] {
        assert!(metrics.contains(series), "{series} in:\n{metrics}");
    }
}
