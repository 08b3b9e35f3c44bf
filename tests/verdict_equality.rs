//! One pipeline, one verdict: 300 dev-corpus messages (spam-1, easy-ham-1 and the HTML-heavy
//! hard-ham-1 files mailwarden may use; `scripts/fetch-corpus.sh`, which the test command
//! runs) go through `mailwarden scan`, through the SMTP proxy, and through a real Postfix
//! with mailwarden as its milter, and every one must get the same action and score all
//! three ways.
//!
//! All three see the same bytes (the files with CRLF line ends, as on the wire), the same
//! envelope (client 127.0.0.1, HELO, sender, recipient) and the shipped rules; Postfix is
//! told not to rewrite headers (`local_header_rewrite_clients =`) and not to split long
//! lines (nor the proxy refuse them: `max_text_line`), so each sees what the client sent.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Postfix, Proxy, SmtpClient};

const HELO: &str = "verdict.test";
const SENDER: &str = "sender@verdict.test";
const RCPT: &str = "user@example.org";

/// The first `n` files (by name) of a corpus folder.
fn corpus(folder: &str, n: usize) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/corpus")
        .join(folder);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; the dev corpus is missing: run scripts/fetch-corpus.sh (scripts/test.sh does)",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= n,
        "{}: only {} files",
        dir.display(),
        files.len()
    );
    files.truncate(n);
    files
}

/// The message as a client sends it: without the corpus file's mbox `From ` line (RFC 4155;
/// not part of the message), with CRLF line ends (the files have LF).
fn crlf(raw: &[u8]) -> Vec<u8> {
    let raw = match raw.strip_prefix(b"From ".as_slice()) {
        Some(rest) => memchr_newline(rest).map_or(&[][..], |n| &rest[n + 1..]),
        None => raw,
    };
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// action and score from a log line's `action=… score=…` fields.
fn action_score(line: &str) -> (String, f64) {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_string()
    };
    let score = field("score=")
        .parse::<f64>()
        .unwrap_or_else(|e| panic!("score in {line}: {e}"));
    (field("action="), score)
}

/// One transaction; the client gets whatever the other side answers (refusals included).
fn send(addr: std::net::SocketAddr, msg: &[u8]) {
    let mut c = SmtpClient::connect_ehlo(addr, HELO);
    let r = c.cmd(&format!("MAIL FROM:<{SENDER}>"));
    c.expect_code(&r, 250, "MAIL FROM");
    let r = c.cmd(&format!("RCPT TO:<{RCPT}>"));
    c.expect_code(&r, 250, "RCPT TO");
    let _ = c.data(msg);
    c.quit();
}

/// The message log lines of one front end (proxy sessions or milter sessions), in order.
fn verdict_lines(log: &str, milter: bool) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("mailwarden::filter::record") && l.contains(" message "))
        .filter(|l| l.contains("session=milter-") == milter)
        .map(str::to_string)
        .collect()
}

#[test]
fn scan_proxy_and_milter_agree_on_300_dev_messages() {
    let mut files = corpus("spam-1", 120);
    files.extend(corpus("easy-ham-1", 130));
    files.extend(corpus("hard-ham-1", 50));
    let work = tempfile::tempdir().expect("temp dir");
    let messages: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let raw = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let path = work.path().join(format!("{i:03}.eml"));
            let msg = crlf(&raw);
            std::fs::write(&path, &msg).expect("write message");
            (path, msg)
        })
        .collect();

    let mw = Proxy::start(
        "[server]\nhostname = \"mx.example.test\"\nmax_message_size = 26214400\n\
         max_text_line = 1000000\n\n\
         [upstream]\nurl = \"maildir:@DIR@/maildir\"\n\n\
         [milter]\nlisten = [\"127.0.0.1:0\"]\n",
    );
    let line = mw.wait_for_log("smtpd_milters = inet:");
    let port: u16 = line
        .split("smtpd_milters = inet:127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("milter port in {line}"));
    let pf = Postfix::start_with(&format!(
        "{}\nlocal_header_rewrite_clients =\nline_length_limit = 1000000\n\
         message_size_limit = 26214400\n",
        support::postfix::milter_fragment(&format!("inet:127.0.0.1:{port}"))
    ));

    // scan: one run over all files, one JSON object per line.
    let out = Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .args(["scan", "--json", "--config"])
        .arg(mw.config_path())
        .args([
            "--ip",
            "127.0.0.1",
            "--helo",
            HELO,
            "--from",
            SENDER,
            "--rcpt",
            RCPT,
        ])
        .args(messages.iter().map(|(p, _)| p))
        .output()
        .expect("run mailwarden scan");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let scanned: HashMap<String, (String, f64)> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("scan JSON {l}: {e}"));
            (
                v["file"].as_str().unwrap_or_default().to_string(),
                (
                    v["action"].as_str().unwrap_or_default().to_string(),
                    v["score"].as_f64().unwrap_or(f64::NAN),
                ),
            )
        })
        .collect();
    assert_eq!(
        scanned.len(),
        messages.len(),
        "scan: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (_, msg) in &messages {
        send(mw.addr(), msg);
    }
    for (_, msg) in &messages {
        send(pf.addr(), msg);
    }
    let wait = std::time::Instant::now();
    while verdict_lines(&mw.log(), true).len() < messages.len() && wait.elapsed() < support::LONG {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = mw.log();
    let proxied = verdict_lines(&log, false);
    let miltered = verdict_lines(&log, true);
    assert_eq!(proxied.len(), messages.len(), "one proxy log line each");
    assert_eq!(
        miltered.len(),
        messages.len(),
        "one milter log line each\n{}",
        pf.log()
    );

    let mut differ = Vec::new();
    let mut actions: HashMap<String, usize> = HashMap::new();
    for (i, (path, _)) in messages.iter().enumerate() {
        let name = path.display().to_string();
        let (scan_action, scan_score) = scanned[&name].clone();
        let (proxy_action, proxy_score) = action_score(&proxied[i]);
        let (milter_action, milter_score) = action_score(&miltered[i]);
        *actions.entry(scan_action.clone()).or_default() += 1;
        let same = scan_action == proxy_action
            && scan_action == milter_action
            && (scan_score - proxy_score).abs() < 1e-6
            && (scan_score - milter_score).abs() < 1e-6;
        if !same {
            differ.push(format!(
                "{} ({}): scan {scan_action} {scan_score}, proxy {proxy_action} {proxy_score}, milter {milter_action} {milter_score}\n  proxy:  {}\n  milter: {}",
                files[i].display(),
                name,
                proxied[i],
                miltered[i]
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} messages got different verdicts:\n{}",
        differ.len(),
        messages.len(),
        differ.join("\n")
    );
    // The set must exercise more than one action, or agreeing would prove little.
    assert!(actions.len() >= 2, "{actions:?}");
    eprintln!("verdicts: {actions:?}");
}
