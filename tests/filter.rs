//! The filter, end to end: scores, policy actions and result headers through the real proxy
//! binary, the `mailwarden scan` and `mailwarden rules check` tools, hot reload under load,
//! and the scan time budget.
//!
//! Every test writes its own small rule files into its temporary directory and points
//! `[rules] paths` at them, so nothing here depends on the shipped `rules/` directory. The
//! upstream is a `FakeUpstream` that records every command and every message it accepted,
//! which is how "the upstream never saw it" is checked. Tests share nothing and run in
//! parallel; waits are generous because the machine may be small and busy.

mod support;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{FakeUpstream, Proxy, Reply, Script, SmtpClient};

// ---------------------------------------------------------------------------------------------
// Rules, messages and helpers shared by the tests below.
// ---------------------------------------------------------------------------------------------

/// The rule file most tests use. Scores are chosen against the default thresholds (tag 5.0,
/// reject 15.0): "viagra" tags, the scam phrase rejects, GTUBE alone scores almost nothing.
const RULES: &str = r#"# mailwarden integration-test rules (tests/filter.rs)
body MW_T_SPAMWORD /\bviagra\b/i
describe MW_T_SPAMWORD Mentions a pharmacy product
score MW_T_SPAMWORD 6.0

body MW_T_SCAM /\bwire the money now\b/i
describe MW_T_SCAM Advance-fee fraud wording
score MW_T_SCAM 20.0

body GTUBE /XJS\*C4JDBQADN1\.NSBN3\*2IDNEN\*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL\*C\.34X/
describe GTUBE Generic test for unsolicited bulk email
score GTUBE 0.1

describe MIME_MALFORMED The MIME structure is broken
score MIME_MALFORMED 1.5
"#;

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
const TAG_BODY: &str = "Cheap viagra, today only.\n";
const REJECT_BODY: &str = "Dear friend, please wire the money now.\n";
const CLEAN_BODY: &str = "Hello Bob,\n\nthe meeting is at ten.\n\nAlice\n";

const SENDER: &str = "alice@example.net";
const RCPT: &str = "bob@example.org";

/// A message in wire form (LF in the arguments becomes CRLF). `extra_headers` are whole
/// lines (each ending in LF) placed after the standard ones.
fn message(subject: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    let text = format!(
        "From: Alice <alice@example.net>\n\
         To: Bob <bob@example.org>\n\
         Subject: {subject}\n\
         Date: Thu, 26 Nov 2026 10:00:00 +0000\n\
         Message-ID: <{}@example.net>\n\
         {extra_headers}\n\
         {body}",
        unique_id()
    );
    support::messages::lf_to_crlf(text.as_bytes())
}

fn unique_id() -> String {
    use std::sync::atomic::AtomicUsize;
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A proxy in front of a fake upstream, with rule files in the proxy's temporary directory.
struct Setup {
    upstream: FakeUpstream,
    proxy: Proxy,
}

impl Setup {
    /// `RULES` as `rules/local.cf`, and `policy` (TOML lines, sub-tables allowed at the end)
    /// under `[policy]`.
    fn start(policy: &str) -> Setup {
        Self::start_with(RULES, "", policy, &[])
    }

    /// `rules` as `rules/local.cf`, `rules_extra` under `[rules]`, `policy` under `[policy]`,
    /// and more `files` in the proxy's temporary directory (`@DIR@` in the config).
    fn start_with(rules: &str, rules_extra: &str, policy: &str, files: &[(&str, &[u8])]) -> Setup {
        let upstream = FakeUpstream::start(Script::default());
        let config = format!(
            "[server]\nhostname = \"mx.example.test\"\n\n\
             [upstream]\nurl = \"{}\"\n\n\
             [rules]\npaths = [\"@DIR@/rules/local.cf\"]\n{rules_extra}\n\n\
             [policy]\n{policy}\n",
            upstream.url()
        );
        let mut all: Vec<(&str, &[u8])> = vec![("rules/local.cf", rules.as_bytes())];
        all.extend_from_slice(files);
        let proxy = Proxy::start_with_files(&config, &all);
        Setup { upstream, proxy }
    }

    fn client(&self) -> SmtpClient {
        SmtpClient::connect_ehlo(self.proxy.addr(), "client.example.net")
    }

    fn rules_path(&self) -> PathBuf {
        self.proxy.dir().join("rules/local.cf")
    }

    /// The command lines the upstream received that start a message (DATA or BDAT).
    fn upstream_data_commands(&self) -> Vec<String> {
        self.upstream
            .commands()
            .into_iter()
            .filter(|c| {
                let verb = c.split(' ').next().unwrap_or("").to_ascii_uppercase();
                verb == "DATA" || verb == "BDAT"
            })
            .collect()
    }
}

/// MAIL, RCPT(s) (all must get 250) and DATA; returns the end-of-data reply.
fn transaction(c: &mut SmtpClient, from: &str, rcpts: &[&str], msg: &[u8]) -> Reply {
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    c.expect_code(&r, 250, "MAIL FROM");
    for rcpt in rcpts {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        c.expect_code(&r, 250, &format!("RCPT TO:<{rcpt}>"));
    }
    c.data(msg)
}

fn expect_reply(c: &SmtpClient, r: &Reply, code: u16, enhanced: &str, what: &str) {
    c.expect_code(r, code, what);
    assert_eq!(
        r.enhanced(),
        Some(enhanced),
        "{what}: enhanced status code of {r}\ntranscript:\n{}",
        c.transcript()
    );
}

/// The header fields of a message (each with its continuation lines, CRLFs kept, without
/// the final CRLF), and the offset where the body starts (after the empty line).
fn header_fields(msg: &[u8]) -> (Vec<String>, usize) {
    let mut fields: Vec<String> = Vec::new();
    let mut pos = 0;
    while pos < msg.len() {
        let end = msg[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(msg.len(), |n| pos + n);
        let line = String::from_utf8_lossy(&msg[pos..end]).into_owned();
        let next = (end + 2).min(msg.len());
        if line.is_empty() {
            return (fields, next);
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let last = fields
                .last_mut()
                .unwrap_or_else(|| panic!("continuation line before any field: {line:?}"));
            last.push_str("\r\n");
            last.push_str(&line);
        } else {
            fields.push(line);
        }
        pos = next;
    }
    (fields, msg.len())
}

fn field_name(field: &str) -> &str {
    field.split(':').next().unwrap_or("").trim()
}

/// The value of a field with folding removed and runs of white space collapsed.
fn field_value(field: &str) -> String {
    let value = field.split_once(':').map_or("", |(_, v)| v);
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every field named `name` (case-insensitive), unfolded.
fn values_of(fields: &[String], name: &str) -> Vec<String> {
    fields
        .iter()
        .filter(|f| field_name(f).eq_ignore_ascii_case(name))
        .map(|f| field_value(f))
        .collect()
}

fn single_value(fields: &[String], name: &str) -> String {
    let v = values_of(fields, name);
    assert_eq!(
        v.len(),
        1,
        "exactly one {name} field expected in {fields:#?}"
    );
    v[0].clone()
}

/// The rule names in an `X-Spam-Status` value (`... tests=A,B`).
fn tests_of(status: &str) -> Vec<String> {
    let after = status
        .split_once("tests=")
        .unwrap_or_else(|| panic!("no tests= in X-Spam-Status {status:?}"))
        .1;
    after
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A relayed message split at the proxy's `Received:` header.
struct Relayed {
    /// Fields above the proxy's Received header (the filter's result headers).
    above: Vec<String>,
    /// Every field of the relayed message, in order.
    fields: Vec<String>,
    /// Everything after the proxy's Received header: the client's message (after edits).
    rest: Vec<u8>,
}

fn split_relayed(body: &[u8]) -> Relayed {
    let (fields, _) = header_fields(body);
    let idx = fields
        .iter()
        .position(|f| f.starts_with("Received: ") && f.contains("(mailwarden)"))
        .unwrap_or_else(|| {
            panic!(
                "no mailwarden Received header in the relayed message:\n{}",
                support::show_limited(body, 4000)
            )
        });
    let before_len: usize = fields[..=idx].iter().map(|f| f.len() + 2).sum();
    Relayed {
        above: fields[..idx].to_vec(),
        fields,
        rest: body[before_len..].to_vec(),
    }
}

/// The message as the proxy should pass it on with `subject` as the new Subject value.
fn with_subject(msg: &[u8], old: &str, new: &str) -> Vec<u8> {
    let text = String::from_utf8(msg.to_vec()).expect("test messages are UTF-8");
    let from = format!("\r\nSubject: {old}\r\n");
    assert!(text.contains(&from), "message has no Subject: {old}");
    text.replacen(&from, &format!("\r\nSubject: {new}\r\n"), 1)
        .into_bytes()
}

/// Waits until the proxy's log contains every one of `needles`.
fn wait_for_log(proxy: &Proxy, needles: &[&str], timeout: Duration) -> bool {
    support::wait_until(timeout, || {
        let log = proxy.log();
        needles.iter().all(|n| log.contains(n)).then_some(())
    })
    .is_some()
}

/// Runs `mailwarden ARGS` (working directory `dir`) with `stdin`; returns the output.
fn mailwarden(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailwarden"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn mailwarden {args:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input).expect("write stdin");
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for mailwarden {args:?}: {e}"))
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temp dir")
}

fn write(path: &Path, contents: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {parent:?}: {e}"));
    }
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

/// Files in `dir` with the extension `ext`, sorted.
fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// 1. Through the proxy
// ---------------------------------------------------------------------------------------------

/// A message at or above tag_score is relayed with SpamAssassin's result headers above the
/// proxy's Received header, the client gets the upstream's own 250, and the subject prefix is
/// added exactly once (also when the subject already carries it); a message below tag_score
/// is relayed with `X-Spam-Flag: NO` and its Subject untouched.
#[test]
fn tagged_message_gets_result_headers_and_subject_prefix_once() {
    let s = Setup::start("subject_prefix = \"[SPAM] \"");
    let mut c = s.client();

    let spam = message("Cheap pills", "", TAG_BODY);
    let r = transaction(&mut c, SENDER, &[RCPT], &spam);
    expect_reply(&c, &r, 250, "2.0.0", "tagged message");
    assert!(
        r.text().contains("queued as FAKE"),
        "the client must get the upstream's 250 (with its queue id), got {r}"
    );

    let already = message("[SPAM] Cheap pills", "", TAG_BODY);
    let r = transaction(&mut c, SENDER, &[RCPT], &already);
    expect_reply(&c, &r, 250, "2.0.0", "tagged message with prefixed subject");

    let clean = message("Meeting", "", CLEAN_BODY);
    let r = transaction(&mut c, SENDER, &[RCPT], &clean);
    expect_reply(&c, &r, 250, "2.0.0", "clean message");
    c.quit();

    let got = s.upstream.messages();
    assert_eq!(got.len(), 3, "{}", s.upstream.transcript());

    // The tagged message.
    let m = split_relayed(&got[0].body);
    let names: Vec<&str> = m.above.iter().map(|f| field_name(f)).collect();
    assert_eq!(
        names,
        [
            "X-Spam-Flag",
            "X-Spam-Score",
            "X-Spam-Level",
            "X-Spam-Status"
        ],
        "result headers, in order, right above the proxy's Received header"
    );
    assert_eq!(single_value(&m.fields, "X-Spam-Flag"), "YES");
    assert_eq!(single_value(&m.fields, "X-Spam-Score"), "6.0");
    assert_eq!(single_value(&m.fields, "X-Spam-Level"), "******");
    let status = single_value(&m.fields, "X-Spam-Status");
    assert!(
        status.starts_with("Yes, score=6.0 required=5.0 tests="),
        "{status}"
    );
    assert_eq!(tests_of(&status), ["MW_T_SPAMWORD"]);
    assert_eq!(
        values_of(&m.fields, "Subject"),
        ["[SPAM] Cheap pills"],
        "prefixed once"
    );
    assert_eq!(
        m.rest,
        with_subject(&spam, "Cheap pills", "[SPAM] Cheap pills"),
        "below the Received header: the client's message, only the Subject changed"
    );

    // Already prefixed: not prefixed again.
    let m = split_relayed(&got[1].body);
    assert_eq!(values_of(&m.fields, "Subject"), ["[SPAM] Cheap pills"]);
    assert_eq!(m.rest, already);

    // Below tag_score.
    let m = split_relayed(&got[2].body);
    assert_eq!(single_value(&m.fields, "X-Spam-Flag"), "NO");
    assert_eq!(single_value(&m.fields, "X-Spam-Score"), "0.0");
    let status = single_value(&m.fields, "X-Spam-Status");
    assert_eq!(status, "No, score=0.0 required=5.0 tests=none");
    assert!(values_of(&m.fields, "X-Spam-Level").is_empty());
    assert_eq!(values_of(&m.fields, "Subject"), ["Meeting"]);
    assert_eq!(m.rest, clean, "a clean message passes unchanged");
}

/// Incoming copies of the result headers (any case, folded, anywhere in the header block) are
/// removed, so a sender cannot forge a verdict: only the proxy's own remain. The body is
/// never touched, even where it looks like such a header.
#[test]
fn forged_result_headers_are_removed() {
    let s = Setup::start("");
    let mut c = s.client();
    let forged = "X-Spam-Flag: NO\n\
                  X-Spam-Status: No, score=-9.9 required=5.0\n\ttests=ALL_TRUSTED\n\
                  x-spam-score: -9.9\n\
                  X-SPAM-LEVEL: \n\
                  Received: from elsewhere.example by relay.example; Thu, 26 Nov 2026 09:00:00 +0000\n\
                  X-Spam-Flag: NO\n";
    let body = "X-Spam-Flag: NO (this line is body text)\nCheap viagra.\n";
    let msg = message("Pills", forged, body);
    let r = transaction(&mut c, SENDER, &[RCPT], &msg);
    expect_reply(&c, &r, 250, "2.0.0", "spammy message with forged headers");
    c.quit();

    let got = s.upstream.messages();
    assert_eq!(got.len(), 1, "{}", s.upstream.transcript());
    let m = split_relayed(&got[0].body);
    assert_eq!(values_of(&m.fields, "X-Spam-Flag"), ["YES"]);
    assert_eq!(values_of(&m.fields, "X-Spam-Score"), ["6.0"]);
    assert_eq!(values_of(&m.fields, "X-Spam-Level"), ["******"]);
    let status = values_of(&m.fields, "X-Spam-Status");
    assert_eq!(status.len(), 1, "{:#?}", m.fields);
    assert!(status[0].starts_with("Yes, score=6.0"), "{}", status[0]);
    assert_eq!(tests_of(&status[0]), ["MW_T_SPAMWORD"]);
    let (rest_fields, body_at) = header_fields(&m.rest);
    assert!(
        !rest_fields
            .iter()
            .any(|f| field_name(f).to_ascii_lowercase().starts_with("x-spam-")),
        "no forged X-Spam-* field may survive below our Received: {rest_fields:#?}"
    );
    assert!(
        !String::from_utf8_lossy(&m.rest).contains("ALL_TRUSTED"),
        "the forged status's continuation line must go too"
    );
    assert!(
        rest_fields
            .iter()
            .any(|f| f.starts_with("Received: from elsewhere.example")),
        "other fields stay"
    );
    let (_, orig_body_at) = header_fields(&msg);
    assert_eq!(
        &m.rest[body_at..],
        &msg[orig_body_at..],
        "the body is unchanged"
    );
}

/// A score at or above reject_score: the client gets `550 5.7.1` at the end of data, the
/// upstream never gets DATA/BDAT for it (its transaction is RSET), the rule names stay out of
/// the reply by default, and the session goes on: the next, clean message is relayed.
#[test]
fn reject_score_refuses_without_upstream_data_and_session_continues() {
    let s = Setup::start("");
    let mut c = s.client();
    let spam = message("Urgent", "", REJECT_BODY);
    let r = transaction(&mut c, SENDER, &[RCPT], &spam);
    expect_reply(&c, &r, 550, "5.7.1", "message over reject_score");
    assert!(
        !r.text().contains("MW_T_SCAM"),
        "rule names must not be revealed by default: {r}"
    );
    assert!(r.text().contains("20.0"), "the reply names the score: {r}");
    assert!(
        s.upstream.messages().is_empty() && s.upstream.not_accepted().is_empty(),
        "the upstream must not see the message\n{}",
        s.upstream.transcript()
    );
    assert!(
        s.upstream_data_commands().is_empty(),
        "no DATA/BDAT upstream for a rejected message\n{}",
        s.upstream.transcript()
    );

    let clean = message("Meeting", "", CLEAN_BODY);
    let r = transaction(&mut c, SENDER, &[RCPT], &clean);
    expect_reply(&c, &r, 250, "2.0.0", "clean message after the reject");
    c.quit();

    let got = s.upstream.messages();
    assert_eq!(got.len(), 1, "{}", s.upstream.transcript());
    assert_eq!(split_relayed(&got[0].body).rest, clean);
    assert_eq!(s.upstream_data_commands().len(), 1);
    // The upstream transaction of the rejected message was reset before the next MAIL.
    let cmds = s.upstream.commands();
    let mails: Vec<usize> = cmds
        .iter()
        .enumerate()
        .filter(|(_, c)| c.to_ascii_uppercase().starts_with("MAIL FROM"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(mails.len(), 2, "{cmds:#?}");
    assert!(
        cmds[mails[0]..mails[1]]
            .iter()
            .any(|c| c.eq_ignore_ascii_case("RSET")),
        "RSET upstream between the rejected and the next transaction: {cmds:#?}"
    );
}

/// The verdict applies to a message sent with BDAT as well: a rejected one never reaches the
/// upstream, a tagged one is relayed with the result headers.
#[test]
fn bdat_messages_are_filtered_too() {
    let s = Setup::start("");
    let mut c = s.client();
    let spam = message("Urgent", "", REJECT_BODY);
    let r = c.cmd(&format!("MAIL FROM:<{SENDER}>"));
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd(&format!("RCPT TO:<{RCPT}>"));
    c.expect_code(&r, 250, "RCPT");
    let (first, second) = spam.split_at(spam.len() / 2);
    let r = c.bdat(first, false);
    c.expect_code(&r, 250, "first chunk");
    let r = c.bdat(second, true);
    expect_reply(&c, &r, 550, "5.7.1", "rejected message sent with BDAT");

    let tagged = message("Pills", "", TAG_BODY);
    let r = c.cmd(&format!("MAIL FROM:<{SENDER}>"));
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd(&format!("RCPT TO:<{RCPT}>"));
    c.expect_code(&r, 250, "RCPT");
    let r = c.bdat(&tagged, true);
    expect_reply(&c, &r, 250, "2.0.0", "tagged message sent with BDAT");
    c.quit();

    let got = s.upstream.messages();
    assert_eq!(got.len(), 1, "{}", s.upstream.transcript());
    let m = split_relayed(&got[0].body);
    assert_eq!(single_value(&m.fields, "X-Spam-Flag"), "YES");
    assert_eq!(m.rest, tagged);
    assert_eq!(s.upstream_data_commands().len(), 1);
}

/// With `reveal_rules = true` the reject reply names the rules that hit.
#[test]
fn reveal_rules_names_the_rules_in_the_reject_reply() {
    let s = Setup::start("reveal_rules = true");
    let mut c = s.client();
    let spam = message("Urgent", "", &format!("{REJECT_BODY}Cheap viagra too.\n"));
    let r = transaction(&mut c, SENDER, &[RCPT], &spam);
    expect_reply(&c, &r, 550, "5.7.1", "message over reject_score");
    assert!(
        r.text().contains("MW_T_SCAM") && r.text().contains("MW_T_SPAMWORD"),
        "reveal_rules: the reply names the rules: {r}"
    );
    c.quit();
    assert!(s.upstream.messages().is_empty());
}

/// `[policy.rules.GTUBE] action = "reject"` rejects whenever GTUBE hits, although its score
/// (0.1) is far below reject_score; the forcing rule's name is not revealed by default.
#[test]
fn rule_action_reject_overrides_a_low_score() {
    let s = Setup::start("[policy.rules.GTUBE]\naction = \"reject\"\n");
    let mut c = s.client();
    let msg = message("Test", "", &format!("{GTUBE}\n"));
    let r = transaction(&mut c, SENDER, &[RCPT], &msg);
    expect_reply(&c, &r, 550, "5.7.1", "GTUBE with action = reject");
    assert!(!r.text().contains("GTUBE"), "not revealed by default: {r}");
    let r = transaction(&mut c, SENDER, &[RCPT], &message("Hi", "", CLEAN_BODY));
    expect_reply(&c, &r, 250, "2.0.0", "clean message afterwards");
    c.quit();
    let got = s.upstream.messages();
    assert_eq!(
        got.len(),
        1,
        "only the clean message\n{}",
        s.upstream.transcript()
    );
    assert_eq!(s.upstream_data_commands().len(), 1);
}

/// `action = "discard"`: the client gets 250, the upstream gets nothing (no DATA/BDAT).
#[test]
fn rule_action_discard_accepts_and_drops() {
    let s = Setup::start("[policy.rules.GTUBE]\naction = \"discard\"\n");
    let mut c = s.client();
    let msg = message("Test", "", &format!("{GTUBE}\n"));
    let r = transaction(&mut c, SENDER, &[RCPT], &msg);
    expect_reply(&c, &r, 250, "2.0.0", "GTUBE with action = discard");
    c.quit();
    assert!(
        s.upstream.messages().is_empty() && s.upstream.not_accepted().is_empty(),
        "{}",
        s.upstream.transcript()
    );
    assert!(s.upstream_data_commands().is_empty());
    assert!(
        wait_for_log(&s.proxy, &["action=discard"], Duration::from_secs(10)),
        "the discard is logged"
    );
}

/// `action = "quarantine"`: the client gets 250, the upstream gets nothing, and the quarantine
/// directory holds `ID.eml` (the message as received) and `ID.json` (action, score, symbols).
#[test]
fn rule_action_quarantine_keeps_eml_and_json() {
    let s = Setup::start(
        "quarantine_dir = \"@DIR@/quarantine\"\n\n[policy.rules.GTUBE]\naction = \"quarantine\"\n",
    );
    let mut c = s.client();
    let msg = message("Test", "", &format!("{GTUBE}\n"));
    let r = transaction(&mut c, SENDER, &[RCPT], &msg);
    expect_reply(&c, &r, 250, "2.0.0", "GTUBE with action = quarantine");
    c.quit();
    assert!(
        s.upstream.messages().is_empty() && s.upstream_data_commands().is_empty(),
        "{}",
        s.upstream.transcript()
    );

    let qdir = s.proxy.dir().join("quarantine");
    let emls = files_with_ext(&qdir, "eml");
    let jsons = files_with_ext(&qdir, "json");
    assert_eq!(emls.len(), 1, "one .eml in {qdir:?}: {emls:?}");
    assert_eq!(jsons.len(), 1, "one .json in {qdir:?}: {jsons:?}");
    let id = emls[0]
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .to_string();
    assert_eq!(jsons[0].file_stem().expect("stem").to_string_lossy(), id);
    assert!(
        r.text().contains(&id),
        "the 250 names the queue id {id} that the files are named after: {r}"
    );
    assert_eq!(std::fs::read(&emls[0]).expect("read eml"), msg);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&jsons[0]).expect("read json")).expect("valid JSON");
    assert_eq!(meta["action"], "quarantine", "{meta:#}");
    assert_eq!(meta["score"].as_f64(), Some(0.1), "{meta:#}");
    let symbols = meta["symbols"].as_array().expect("symbols array");
    assert!(
        symbols.iter().any(|s| s["name"] == "GTUBE"
            && s["score"].as_f64() == Some(0.1)
            && s["description"] == "Generic test for unsolicited bulk email"),
        "{meta:#}"
    );
}

/// `action = "quarantine"` when the quarantine cannot be written (`quarantine_dir` is a
/// regular file): the message is neither dropped nor relayed; the client gets a 4xx and
/// keeps it for a retry.
#[test]
fn quarantine_unavailable_defers() {
    let s = Setup::start_with(
        RULES,
        "",
        "quarantine_dir = \"@DIR@/not-a-dir\"\n\n[policy.rules.GTUBE]\naction = \"quarantine\"\n",
        &[(
            "not-a-dir",
            b"a file where the quarantine directory should be\n",
        )],
    );
    let mut c = s.client();
    let msg = message("Test", "", &format!("{GTUBE}\n"));
    let r = transaction(&mut c, SENDER, &[RCPT], &msg);
    expect_reply(&c, &r, 451, "4.3.0", "quarantine unavailable");
    c.quit();
    assert!(s.upstream.messages().is_empty() && s.upstream_data_commands().is_empty());
}

/// `action = "tempfail"`: `451 4.7.1`, the upstream gets nothing, the session continues.
#[test]
fn rule_action_tempfail_defers() {
    let s = Setup::start("[policy.rules.GTUBE]\naction = \"tempfail\"\n");
    let mut c = s.client();
    let msg = message("Test", "", &format!("{GTUBE}\n"));
    let r = transaction(&mut c, SENDER, &[RCPT], &msg);
    expect_reply(&c, &r, 451, "4.7.1", "GTUBE with action = tempfail");
    assert!(
        !r.text().contains("GTUBE"),
        "reveal_rules is off: the reply must not name the rule: {r}"
    );
    let r = transaction(&mut c, SENDER, &[RCPT], &message("Hi", "", CLEAN_BODY));
    expect_reply(&c, &r, 250, "2.0.0", "clean message afterwards");
    c.quit();
    assert_eq!(s.upstream.messages().len(), 1);
    assert_eq!(s.upstream_data_commands().len(), 1);
}

/// With `quarantine_dir` set, a message rejected on its score is kept there too
/// (`ID.eml` + `ID.json` with action "reject").
#[test]
fn rejected_message_is_kept_when_quarantine_dir_is_set() {
    let s = Setup::start("quarantine_dir = \"@DIR@/quarantine\"\n");
    let mut c = s.client();
    let msg = message("Urgent", "", REJECT_BODY);
    let r = transaction(&mut c, SENDER, &[RCPT], &msg);
    expect_reply(&c, &r, 550, "5.7.1", "message over reject_score");
    c.quit();
    assert!(s.upstream.messages().is_empty());
    let qdir = s.proxy.dir().join("quarantine");
    let emls = files_with_ext(&qdir, "eml");
    let jsons = files_with_ext(&qdir, "json");
    assert_eq!((emls.len(), jsons.len()), (1, 1), "{emls:?} {jsons:?}");
    assert_eq!(std::fs::read(&emls[0]).expect("read eml"), msg);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&jsons[0]).expect("read json")).expect("valid JSON");
    assert_eq!(meta["action"], "reject", "{meta:#}");
    assert_eq!(meta["score"].as_f64(), Some(20.0), "{meta:#}");
    assert!(
        meta["symbols"]
            .as_array()
            .expect("symbols")
            .iter()
            .any(|s| s["name"] == "MW_T_SCAM"),
        "{meta:#}"
    );
}

/// Per-domain thresholds: the same 6-point message is rejected for a recipient in
/// `strict.example` (reject_score 3.0), tagged for another domain, and rejected when both
/// recipients are in one transaction (the strictest policy applies).
///
/// The domain also sets tag_score 2.0: a domain that sets only `reject_score = 3.0` is refused
/// at start-up, because the inherited tag_score (5.0) would be above it.
#[test]
fn per_domain_thresholds_and_strictest_recipient() {
    let s =
        Setup::start("[policy.domains.\"strict.example\"]\ntag_score = 2.0\nreject_score = 3.0\n");
    let mut c = s.client();
    let spam = message("Pills", "", TAG_BODY);

    let r = transaction(&mut c, SENDER, &["carol@strict.example"], &spam);
    expect_reply(&c, &r, 550, "5.7.1", "recipient in strict.example");

    let r = transaction(&mut c, SENDER, &["dave@other.example"], &spam);
    expect_reply(&c, &r, 250, "2.0.0", "recipient elsewhere");

    let r = transaction(
        &mut c,
        SENDER,
        &["dave@other.example", "carol@strict.example"],
        &spam,
    );
    expect_reply(
        &c,
        &r,
        550,
        "5.7.1",
        "both recipients: the strictest applies",
    );
    c.quit();

    let got = s.upstream.messages();
    assert_eq!(
        got.len(),
        1,
        "only the tagged one\n{}",
        s.upstream.transcript()
    );
    assert_eq!(got[0].rcpts, ["dave@other.example"]);
    let m = split_relayed(&got[0].body);
    assert_eq!(single_value(&m.fields, "X-Spam-Flag"), "YES");
    assert!(single_value(&m.fields, "X-Spam-Status").starts_with("Yes, score=6.0 required=5.0"));
    assert_eq!(s.upstream_data_commands().len(), 1);
}

/// The denylist refuses a listed client IP (`550 5.7.1`) even for a clean message while other
/// clients pass; the allowlist accepts a listed sender domain with `MW_ALLOWLIST` even when
/// the body would be rejected.
#[test]
fn allowlist_and_denylist() {
    let s = Setup::start_with(
        RULES,
        "",
        "allowlist = \"@DIR@/allow.txt\"\ndenylist = \"@DIR@/deny.txt\"\n",
        &[
            ("allow.txt", b"# friends\n@friend.example\n"),
            ("deny.txt", b"127.0.0.2\n@spammer.example # known bad\n"),
        ],
    );
    let clean = message("Hi", "", CLEAN_BODY);

    let mut denied =
        SmtpClient::connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), s.proxy.addr());
    let g = denied.reply();
    denied.expect_code(&g, 220, "greeting");
    let r = denied.cmd("EHLO client.example.net");
    denied.expect_code(&r, 250, "EHLO");
    let r = transaction(&mut denied, SENDER, &[RCPT], &clean);
    expect_reply(&denied, &r, 550, "5.7.1", "client IP in the denylist");
    denied.quit();

    let mut c = s.client();
    let r = transaction(&mut c, "eve@spammer.example", &[RCPT], &clean);
    expect_reply(&c, &r, 550, "5.7.1", "sender domain in the denylist");

    let r = transaction(&mut c, SENDER, &[RCPT], &clean);
    expect_reply(&c, &r, 250, "2.0.0", "unlisted client and sender");

    let scam = message("Urgent", "", REJECT_BODY);
    let r = transaction(&mut c, "boss@friend.example", &[RCPT], &scam);
    expect_reply(
        &c,
        &r,
        250,
        "2.0.0",
        "allowlisted sender domain, spammy body",
    );
    c.quit();

    let got = s.upstream.messages();
    assert_eq!(got.len(), 2, "{}", s.upstream.transcript());
    assert!(got[0].mail_from.contains(SENDER));
    let m = split_relayed(&got[1].body);
    assert!(got[1].mail_from.contains("boss@friend.example"));
    assert_eq!(single_value(&m.fields, "X-Spam-Flag"), "NO");
    let status = single_value(&m.fields, "X-Spam-Status");
    assert_eq!(tests_of(&status), ["MW_ALLOWLIST"], "{status}");
    assert_eq!(m.rest, scam);
    assert_eq!(s.upstream_data_commands().len(), 2);
}

/// A multipart message without its closing boundary is relayed unchanged (not lost) and
/// carries `MIME_MALFORMED` (with the score the rule file gives it) in `tests=`.
#[test]
fn broken_mime_is_relayed_with_mime_malformed() {
    let s = Setup::start("");
    let mut c = s.client();
    let msg = message(
        "Report",
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n",
        "--b1\nContent-Type: text/plain\n\nthe report, part one\n\n--b1\nContent-Type: text/plain\n\nand part two, never closed\n",
    );
    let r = transaction(&mut c, SENDER, &[RCPT], &msg);
    expect_reply(&c, &r, 250, "2.0.0", "broken MIME");
    c.quit();
    let got = s.upstream.messages();
    assert_eq!(got.len(), 1, "{}", s.upstream.transcript());
    let m = split_relayed(&got[0].body);
    assert_eq!(m.rest, msg, "relayed byte for byte");
    let status = single_value(&m.fields, "X-Spam-Status");
    assert!(
        tests_of(&status).iter().any(|t| t == "MIME_MALFORMED"),
        "{status}"
    );
    assert_eq!(single_value(&m.fields, "X-Spam-Score"), "1.5");
}

/// With a real Postfix upstream: the tagged message lands in the Maildir with the result
/// headers directly above the proxy's Received header (Postfix's own headers above them), the
/// rejected one is never delivered, and a clean one is delivered with `X-Spam-Flag: NO`.
#[test]
fn postfix_receives_tagged_not_rejected() {
    let pf = support::Postfix::start();
    let config = format!(
        "[server]\nhostname = \"mx.example.test\"\n\n\
         [upstream]\nurl = \"{}\"\n\n\
         [rules]\npaths = [\"@DIR@/rules/local.cf\"]\n\n\
         [policy]\nsubject_prefix = \"[SPAM] \"\n",
        pf.url()
    );
    let proxy = Proxy::start_with_files(&config, &[("rules/local.cf", RULES.as_bytes())]);
    let mut c = SmtpClient::connect_ehlo(proxy.addr(), "client.example.net");
    let tagged = message("Pills", "X-Spam-Flag: NO\n", TAG_BODY);
    let r = transaction(&mut c, SENDER, &["user@example.org"], &tagged);
    expect_reply(&c, &r, 250, "2.0.0", "tagged message via Postfix");
    let rejected = message("Urgent", "", REJECT_BODY);
    let r = transaction(&mut c, SENDER, &["user@example.org"], &rejected);
    expect_reply(&c, &r, 550, "5.7.1", "rejected message via Postfix");
    let clean = message("Meeting", "", CLEAN_BODY);
    let r = transaction(&mut c, SENDER, &["user@example.org"], &clean);
    expect_reply(&c, &r, 250, "2.0.0", "clean message via Postfix");
    c.quit();

    let delivered = pf.settle_and_collect(2);
    let find = |subject: &str| -> support::messages::Delivered {
        let raw = delivered
            .iter()
            .find(|m| {
                support::messages::header_fields(m)
                    .iter()
                    .any(|f| f == &format!("Subject: {subject}"))
            })
            .unwrap_or_else(|| panic!("no delivered message with Subject: {subject}"));
        support::messages::split_delivered(raw).unwrap_or_else(|e| panic!("{e}"))
    };
    let d = find("[SPAM] Pills");
    let above: Vec<&str> = d.added_above.iter().map(|f| field_name(f)).collect();
    let n = above.len();
    assert!(n >= 4, "{above:?}");
    assert_eq!(
        &above[n - 4..],
        [
            "X-Spam-Flag",
            "X-Spam-Score",
            "X-Spam-Level",
            "X-Spam-Status"
        ],
        "result headers right above the proxy's Received: {above:?}"
    );
    assert!(d.added_above[n - 4].starts_with("X-Spam-Flag: YES"));
    assert!(
        d.added_above[n - 1].contains("tests=MW_T_SPAMWORD"),
        "{:?}",
        d.added_above[n - 1]
    );
    let rest = support::messages::header_fields(&d.message);
    assert!(
        !rest.iter().any(|f| f.starts_with("X-Spam-")),
        "the forged X-Spam-Flag is gone: {rest:?}"
    );
    let d = find("Meeting");
    assert!(
        d.added_above
            .iter()
            .any(|f| f.starts_with("X-Spam-Flag: NO")),
        "{:?}",
        d.added_above
    );
    assert_eq!(d.message, support::messages::expected_in_maildir(&clean));
}

// ---------------------------------------------------------------------------------------------
// 2. mailwarden scan
// ---------------------------------------------------------------------------------------------

/// A directory with `rules/local.cf` (`RULES`), list files, three messages and a config
/// `mailwarden.toml` pointing at them (absolute paths).
struct ScanDir {
    dir: tempfile::TempDir,
}

impl ScanDir {
    fn new() -> ScanDir {
        Self::with_rules(RULES)
    }

    fn with_rules(rules: &str) -> ScanDir {
        let dir = tempdir("mailwarden-scan-");
        let d = dir.path();
        write(&d.join("rules/local.cf"), rules.as_bytes());
        write(&d.join("deny.txt"), b"192.0.2.66\n");
        write(&d.join("ham.eml"), &message("Meeting", "", CLEAN_BODY));
        write(&d.join("tag.eml"), &message("Pills", "", TAG_BODY));
        write(&d.join("reject.eml"), &message("Urgent", "", REJECT_BODY));
        let config = format!(
            "[rules]\npaths = [\"{rules}\"]\n\n[policy]\ndenylist = \"{deny}\"\n\n\
             [policy.domains.\"strict.example\"]\ntag_score = 2.0\nreject_score = 3.0\n",
            rules = d.join("rules/local.cf").display(),
            deny = d.join("deny.txt").display(),
        );
        write(&d.join("mailwarden.toml"), config.as_bytes());
        ScanDir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["scan", "--config", "mailwarden.toml"];
        all.extend_from_slice(args);
        mailwarden(self.path(), &all, None)
    }
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("not a JSON object per line ({e}): {l}\n{}", describe(out))
            })
        })
        .collect()
}

/// `scan --json` prints one object per file with `file`, `action`, `score`, `required` and
/// `symbols` (each with `name`, `score`, `description`); the exit code is the worst verdict:
/// 0 accept, 1 tag, 2 reject.
#[test]
fn scan_json_fields_and_exit_codes() {
    let d = ScanDir::new();
    for (file, action, code, score, symbols) in [
        ("ham.eml", "accept", 0, 0.0, vec![]),
        ("tag.eml", "tag", 1, 6.0, vec!["MW_T_SPAMWORD"]),
        ("reject.eml", "reject", 2, 20.0, vec!["MW_T_SCAM"]),
    ] {
        let out = d.run(&["--json", file]);
        assert_eq!(out.status.code(), Some(code), "{file}: {}", describe(&out));
        let objs = json_lines(&out);
        assert_eq!(objs.len(), 1, "{}", describe(&out));
        let o = &objs[0];
        for key in ["file", "action", "score", "required", "symbols"] {
            assert!(o.get(key).is_some(), "{file}: field {key} missing in {o}");
        }
        assert_eq!(o["file"], file);
        assert_eq!(o["action"], action, "{o}");
        assert_eq!(o["score"].as_f64(), Some(score), "{o}");
        assert_eq!(o["required"].as_f64(), Some(5.0), "{o}");
        let syms = o["symbols"].as_array().expect("symbols is an array");
        let names: Vec<&str> = syms
            .iter()
            .map(|s| s["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, symbols, "{o}");
        for s in syms {
            assert!(s["score"].is_number(), "{s}");
            assert!(
                s["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{s}"
            );
        }
    }

    // Several files: one object each, in order; exit code of the worst.
    let out = d.run(&["--json", "ham.eml", "reject.eml", "tag.eml"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let files: Vec<String> = json_lines(&out)
        .iter()
        .map(|o| o["file"].as_str().expect("file").to_string())
        .collect();
    assert_eq!(files, ["ham.eml", "reject.eml", "tag.eml"]);
}

/// Exit code 3 for errors: an unreadable file (the other files are still reported), and a
/// rule file that does not load (the error names file:line).
#[test]
fn scan_exit_code_3_on_errors() {
    let d = ScanDir::new();
    let out = d.run(&["--json", "ham.eml", "no-such-file.eml"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(json_lines(&out).len(), 1, "ham.eml is still reported");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-file.eml"),
        "{}",
        describe(&out)
    );

    let broken = ScanDir::with_rules(
        "body OK_RULE /fine/\nscore OK_RULE 1\nbody BROKEN_RULE no delimiters\n",
    );
    let out = broken.run(&["--json", "ham.eml"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("local.cf:3:"), "{}", describe(&out));
}

/// `-` reads the message from standard input (the file name in the JSON is `-`).
#[test]
fn scan_reads_stdin() {
    let d = ScanDir::new();
    let msg = message("Pills", "", TAG_BODY);
    let out = mailwarden(
        d.path(),
        &["scan", "--config", "mailwarden.toml", "--json", "-"],
        Some(&msg),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let objs = json_lines(&out);
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0]["file"], "-");
    assert_eq!(objs[0]["action"], "tag");
    assert_eq!(objs[0]["score"].as_f64(), Some(6.0));
}

/// `--rcpt user@strict.example` picks that domain's policy (the 6-point message is rejected
/// there, required = its tag_score); `--ip` is matched against the denylist.
#[test]
fn scan_rcpt_picks_domain_policy_and_ip_matches_denylist() {
    let d = ScanDir::new();
    let out = d.run(&["--json", "--rcpt", "user@strict.example", "tag.eml"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let o = &json_lines(&out)[0];
    assert_eq!(o["action"], "reject", "{o}");
    assert_eq!(o["required"].as_f64(), Some(2.0), "{o}");

    let out = d.run(&["--json", "--rcpt", "user@other.example", "tag.eml"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    let out = d.run(&["--json", "--ip", "192.0.2.66", "ham.eml"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let o = &json_lines(&out)[0];
    assert_eq!(o["action"], "reject", "{o}");
    let names: Vec<&str> = o["symbols"]
        .as_array()
        .expect("symbols")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["MW_DENYLIST"], "{o}");

    let out = d.run(&["--json", "--ip", "192.0.2.67", "ham.eml"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

/// `--explain` lists every rule that hit with its score and description.
#[test]
fn scan_explain_lists_rules_with_scores_and_descriptions() {
    let d = ScanDir::new();
    write(
        &d.path().join("both.eml"),
        &message("Urgent", "", &format!("{REJECT_BODY}Cheap viagra too.\n")),
    );
    let out = d.run(&["--explain", "both.eml"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (name, score, description) in [
        ("MW_T_SCAM", "20.00", "Advance-fee fraud wording"),
        ("MW_T_SPAMWORD", "6.00", "Mentions a pharmacy product"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == name))
            .unwrap_or_else(|| panic!("no line for {name}\n{}", describe(&out)));
        assert!(
            line.contains(score) && line.contains(description),
            "{name}: {line:?}\n{}",
            describe(&out)
        );
    }
    assert!(stdout.contains("score=26.0"), "{}", describe(&out));
}

// ---------------------------------------------------------------------------------------------
// 3. mailwarden rules check
// ---------------------------------------------------------------------------------------------

/// Good rules: exit 0 and a summary with the number of rules.
#[test]
fn rules_check_good_rules() {
    let d = ScanDir::new();
    let out = mailwarden(
        d.path(),
        &["rules", "check", "--config", "mailwarden.toml"],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 file(s), 3 rule(s) loaded") && stdout.contains("0 error(s)"),
        "{}",
        describe(&out)
    );
}

/// Broken rules: exit 1 and `file:line:` for each kind of problem (bad regex delimiter, an
/// `if` without `endif`, an `endif` without `if`, a missing keywords file).
#[test]
fn rules_check_reports_file_and_line() {
    let dir = tempdir("mailwarden-check-");
    let d = dir.path();
    let cases: [(&str, &str, &str); 4] = [
        (
            "delimiter.cf",
            "body GOOD /fine/\nscore GOOD 1\n\nbody BAD_DELIM viagra\n",
            "delimiter.cf:4:",
        ),
        (
            "unclosed.cf",
            "body GOOD /fine/\nif (version >= 3.0)\nbody INNER /x/\n",
            "unclosed.cf:2:",
        ),
        ("stray.cf", "body GOOD /fine/\nendif\n", "stray.cf:2:"),
        (
            "keywords.cf",
            "# word list\nkeywords MW_T_WORDS body missing-words.txt\n",
            "keywords.cf:2:",
        ),
    ];
    for (name, text, expected) in cases {
        let path = d.join(name);
        write(&path, text.as_bytes());
        let out = mailwarden(
            d,
            &["rules", "check", path.to_str().expect("utf-8 path")],
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{name}: {}", describe(&out));
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            all.contains(expected),
            "{name}: expected {expected}\n{}",
            describe(&out)
        );
    }
}

/// PATH arguments override `[rules] paths` of the config, both ways.
#[test]
fn rules_check_paths_override_config() {
    let broken = ScanDir::with_rules("body BROKEN_RULE no delimiters\n");
    let good = broken.path().join("good.cf");
    write(&good, b"body GOOD /fine/\nscore GOOD 1\n");
    let out = mailwarden(
        broken.path(),
        &["rules", "check", "--config", "mailwarden.toml"],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "config's broken rules: {}",
        describe(&out)
    );
    let out = mailwarden(
        broken.path(),
        &["rules", "check", "--config", "mailwarden.toml", "good.cf"],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "PATH overrides: {}",
        describe(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 rule(s) loaded"));

    let ok = ScanDir::new();
    let bad = ok.path().join("bad.cf");
    write(&bad, b"\nbody BAD no delimiters\n");
    let out = mailwarden(
        ok.path(),
        &["rules", "check", "--config", "mailwarden.toml", "bad.cf"],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bad.cf:2:"),
        "{}",
        describe(&out)
    );
}

/// Regexes: one Perl refuses is an error (exit 1, file:line, what is wrong); valid Perl that
/// mailwarden cannot run is listed as skipped (exit 0). Names: a `score` for a name no rule
/// defines is a warning with a suggestion (exit 0), mailwarden's own symbols and the config's
/// block list symbols are not.
#[test]
fn rules_check_regex_errors_skips_and_undefined_names() {
    let dir = tempdir("mailwarden-check-");
    let d = dir.path();
    let check = |name: &str, text: &str| {
        write(&d.join(name), text.as_bytes());
        let out = mailwarden(
            d,
            &[
                "rules",
                "check",
                "--verbose",
                "--config",
                "mailwarden.toml",
                name,
            ],
            None,
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out, all)
    };
    write(
        &d.join("mailwarden.toml"),
        b"[[dnsbl]]\nzone = \"zen.example.org\"\nsymbol = \"RBL_ZEN\"\n",
    );

    let (out, all) = check(
        "invalid.cf",
        "body GOOD /fine/\nscore GOOD 1\nbody BROKEN /unclosed(/\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        all.contains("invalid.cf:3: rule BROKEN: invalid regex /unclosed(/: unclosed group")
            && all.contains("1 error(s)"),
        "{}",
        describe(&out)
    );

    let (out, all) = check("unsupported.cf", "body GOOD /fine/\nbody NO_G /\\Gx/\n");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        all.contains("skipped: ") && all.contains("unsupported.cf:2: NO_G: \\G anchor"),
        "{}",
        describe(&out)
    );
    assert!(all.contains("regex unsupported 1") && all.contains("0 error(s)"));

    let (out, all) = check(
        "names.cf",
        "body GOOD /fine/\nscore GOOD 1\nscore GOOODD 2\nscore SPF_PASS -0.1\n\
         score BAYES_99 3\nscore RBL_ZEN 2\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        all.contains("warning: names.cf:3: score for undefined rule GOOODD; did you mean GOOD?")
            && all.contains("1 warning(s), 0 error(s)"),
        "{}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Hot reload
// ---------------------------------------------------------------------------------------------

const FLIP_BODY: &str = "This message mentions the flipword.\n";

/// Version `v` of the hot-reload rule file: even versions accept with score `1 + v/2`
/// (1.0, 2.0, ...), odd versions reject with score `20 + v`.
fn flip_rules(v: usize) -> String {
    let score = if v.is_multiple_of(2) {
        1.0 + (v / 2) as f64
    } else {
        20.0 + v as f64
    };
    format!(
        "# version {v}\nbody MW_T_FLIP /\\bflipword\\b/\ndescribe MW_T_FLIP flip test, version {v}\nscore MW_T_FLIP {score:.1}\n"
    )
}

/// One message's outcome in the load loop.
#[derive(Debug, Clone)]
struct Outcome {
    client: usize,
    index: usize,
    code: u16,
    text: String,
}

/// Hot reload under load: while two clients send 200 messages, the rule file is rewritten 6
/// times (the verdict flips between accept and reject) and SIGHUP is sent. Every message gets
/// 250 or 550 consistent with one of the versions, none is lost (upstream count == client 250
/// count), and after the last change the new rules are in effect within a few seconds. Then a
/// broken rule file: the previous rules stay in use, the error is logged with file:line, and
/// the proxy keeps serving.
#[test]
fn hot_reload_under_load_then_broken_file_keeps_old_rules() {
    let s = Setup::start_with(&flip_rules(0), "", "", &[]);
    let rules = s.rules_path();
    let addr = s.proxy.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));

    const CLIENTS: usize = 2;
    const PER_CLIENT: usize = 100;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let outcomes = outcomes.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = SmtpClient::connect_ehlo(addr, &format!("load{n}.example.net"));
                for i in 0..PER_CLIENT {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let msg = message(&format!("load {n}/{i}"), "", FLIP_BODY);
                    let r = transaction(&mut c, SENDER, &[RCPT], &msg);
                    outcomes.lock().expect("lock").push(Outcome {
                        client: n,
                        index: i,
                        code: r.code,
                        text: r.text(),
                    });
                    std::thread::sleep(Duration::from_millis(35));
                }
                c.quit();
            })
        })
        .collect();

    // Rewrite the file 6 times (versions 1..=6) while the clients run, and SIGHUP once.
    let started = Instant::now();
    let mut last_write = Instant::now();
    for v in 1..=6 {
        std::thread::sleep(Duration::from_millis(600));
        write(&rules, flip_rules(v).as_bytes());
        last_write = Instant::now();
        if v == 3 {
            s.proxy.sighup();
        }
    }
    let writes_took = started.elapsed();
    for t in clients {
        if t.join().is_err() {
            stop.store(true, Ordering::SeqCst);
            panic!("a load client failed (see its panic above)");
        }
    }
    let outcomes = outcomes.lock().expect("lock").clone();
    assert_eq!(outcomes.len(), CLIENTS * PER_CLIENT);

    // Every reply is a verdict of some version; none is lost.
    let accepted = outcomes.iter().filter(|o| o.code == 250).count();
    let rejected = outcomes.iter().filter(|o| o.code == 550).count();
    let others: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.code != 250 && o.code != 550)
        .collect();
    assert!(others.is_empty(), "only 250 or 550 expected: {others:?}");
    for o in outcomes.iter().filter(|o| o.code == 550) {
        assert!(o.text.starts_with("5.7.1"), "{o:?}");
    }
    let got = s.upstream.messages();
    assert_eq!(
        got.len(),
        accepted,
        "upstream count must equal the client's 250 count (nothing lost, nothing extra)"
    );
    let accept_scores: Vec<String> = (0..=6usize)
        .filter(|v: &usize| v.is_multiple_of(2))
        .map(|v| format!("{:.1}", 1.0 + (v / 2) as f64))
        .collect();
    // Which version decided each message: relayed ones by their X-Spam-Score (found by
    // Subject), rejected ones by the score in the reply text.
    let mut version_of: std::collections::HashMap<(usize, usize), usize> =
        std::collections::HashMap::new();
    for m in &got {
        let r = split_relayed(&m.body);
        let score = single_value(&r.fields, "X-Spam-Score");
        assert!(
            accept_scores.contains(&score),
            "relayed with score {score}, not one of an accepting version {accept_scores:?}"
        );
        assert_eq!(single_value(&r.fields, "X-Spam-Flag"), "NO");
        let subject = single_value(&r.fields, "Subject");
        let (n, i) = subject
            .strip_prefix("load ")
            .and_then(|x| x.split_once('/'))
            .and_then(|(n, i)| Some((n.parse().ok()?, i.parse().ok()?)))
            .unwrap_or_else(|| panic!("unexpected Subject {subject:?}"));
        let score: f64 = score.parse().expect("numeric score");
        version_of.insert((n, i), ((score - 1.0) * 2.0).round() as usize);
    }
    for o in outcomes.iter().filter(|o| o.code == 550) {
        let score: f64 = o
            .text
            .split("score ")
            .nth(1)
            .and_then(|x| x.split_whitespace().next())
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("no score in the reject reply {o:?}"));
        let v = (score - 20.0).round() as usize;
        assert!(
            !v.is_multiple_of(2) && v <= 6,
            "rejected with score {score}, not one of a rejecting version: {o:?}"
        );
        version_of.insert((o.client, o.index), v);
    }
    assert_eq!(
        version_of.len(),
        outcomes.len(),
        "every message has a version"
    );
    // Each client sends one message after the other: the versions it sees never go back.
    for n in 0..CLIENTS {
        let seq: Vec<usize> = (0..PER_CLIENT).map(|i| version_of[&(n, i)]).collect();
        assert!(
            seq.windows(2).all(|w| w[0] <= w[1]),
            "client {n} saw an older rule version after a newer one: {seq:?}"
        );
    }
    let mut seen: Vec<usize> = version_of.values().copied().collect();
    seen.sort();
    seen.dedup();
    eprintln!(
        "hot reload under load: {accepted} relayed, {rejected} rejected, versions seen {seen:?}; rewrites took {writes_took:?}"
    );
    assert!(
        accepted > 0 && rejected > 0,
        "the verdict should have flipped during the run ({accepted} accepted, {rejected} rejected)"
    );

    // The last change (version 6: accept with score 4.0) is in effect promptly; so is one
    // made when the proxy is idle (version 7: reject). A probe returns the reply code and,
    // for a relayed message, its X-Spam-Score.
    let mut c = s.client();
    let probe = |c: &mut SmtpClient| {
        let r = transaction(c, SENDER, &[RCPT], &message("probe", "", FLIP_BODY));
        let score = (r.code == 250).then(|| {
            let got = s.upstream.messages();
            let last = got.last().expect("a relayed probe is recorded");
            single_value(&split_relayed(&last.body).fields, "X-Spam-Score")
        });
        (r.code, score)
    };
    let latency = support::wait_until(Duration::from_secs(10), || {
        (probe(&mut c) == (250, Some("4.0".to_string()))).then(|| last_write.elapsed())
    })
    .expect("version 6 (accept, score 4.0) must take effect");
    eprintln!("last rewrite under load took effect after at most {latency:?}");
    assert!(
        latency <= Duration::from_secs(3),
        "the last change should be in effect within ~2 s, took {latency:?}"
    );
    write(&rules, flip_rules(7).as_bytes());
    let changed = Instant::now();
    let latency = support::wait_until(Duration::from_secs(10), || {
        (probe(&mut c).0 == 550).then(|| changed.elapsed())
    })
    .expect("version 7 (reject) must take effect");
    eprintln!("an idle rewrite took effect after {latency:?}");
    assert!(
        latency <= Duration::from_secs(3),
        "a change should be in effect within ~2 s, took {latency:?}"
    );
    let log_mark = s.proxy.log().len();

    // A broken file: the previous rules (version 7: reject) stay.
    write(
        &rules,
        b"# broken\nbody MW_T_FLIP /\\bflipword\\b/\nbody MW_T_BROKEN no delimiters here\nscore MW_T_FLIP 1.0\n",
    );
    assert!(
        support::wait_until(Duration::from_secs(10), || {
            let log = s.proxy.log();
            let new = &log[log_mark..];
            (new.contains("local.cf:3:") && new.contains("rules NOT reloaded")).then_some(())
        })
        .is_some(),
        "the failed reload must be logged with file:line"
    );
    s.proxy.sighup();
    std::thread::sleep(Duration::from_millis(1200));
    for _ in 0..5 {
        assert_eq!(
            probe(&mut c),
            (550, None),
            "the previous rules (reject) stay in use"
        );
    }
    let r = transaction(&mut c, SENDER, &[RCPT], &message("Hi", "", CLEAN_BODY));
    expect_reply(&c, &r, 250, "2.0.0", "still serving");
    c.quit();
}

/// A change to a list file is picked up like a rule change: a sender added to the denylist
/// is refused from then on.
#[test]
fn denylist_change_is_reloaded() {
    let s = Setup::start_with(
        RULES,
        "",
        "denylist = \"@DIR@/deny.txt\"\n",
        &[("deny.txt", b"192.0.2.1\n")],
    );
    let mut c = s.client();
    let clean = message("Hi", "", CLEAN_BODY);
    let r = transaction(&mut c, "mallory@example.com", &[RCPT], &clean);
    expect_reply(&c, &r, 250, "2.0.0", "not yet listed");
    write(
        &s.proxy.dir().join("deny.txt"),
        b"192.0.2.1\nmallory@example.com\n",
    );
    assert!(
        support::wait_until(Duration::from_secs(10), || {
            let r = transaction(&mut c, "mallory@example.com", &[RCPT], &clean);
            (r.code == 550).then_some(())
        })
        .is_some(),
        "the new denylist entry must take effect"
    );
    let r = transaction(&mut c, SENDER, &[RCPT], &clean);
    expect_reply(&c, &r, 250, "2.0.0", "other senders still pass");
    c.quit();
}

/// SIGHUP reloads even with `watch = false`, and without it a change is not picked up.
#[test]
fn sighup_reloads_when_watching_is_off() {
    let s = Setup::start_with(&flip_rules(0), "watch = false", "", &[]);
    let mut c = s.client();
    let probe =
        |c: &mut SmtpClient| transaction(c, SENDER, &[RCPT], &message("probe", "", FLIP_BODY)).code;
    assert_eq!(probe(&mut c), 250);
    write(&s.rules_path(), flip_rules(1).as_bytes());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        probe(&mut c),
        250,
        "watch = false: no reload without SIGHUP"
    );
    s.proxy.sighup();
    assert!(
        support::wait_until(Duration::from_secs(10), || (probe(&mut c) == 550)
            .then_some(()))
        .is_some(),
        "SIGHUP must load version 1 (reject)"
    );
    assert!(wait_for_log(
        &s.proxy,
        &["rules reloaded", "SIGHUP"],
        Duration::from_secs(5)
    ));
    c.quit();
}

// ---------------------------------------------------------------------------------------------
// 5. Scan time budget
// ---------------------------------------------------------------------------------------------

/// `scan_timeout_ms = 1` with 2,000 body rules and a ~1.5 MB message: the message is still
/// relayed unchanged (not lost); if `SCAN_TIMEOUT` is reported, the result headers are
/// well-formed (CRLF lines, folded with a tab, at most 998 octets a line).
#[test]
fn scan_timeout_still_relays() {
    let mut rules = String::from("# 2000 generated rules\n");
    for i in 0..2000 {
        rules.push_str(&format!(
            "body MW_T_GEN_{i:04} /w{i:04}xabc q{i}z/\nscore MW_T_GEN_{i:04} 0.01\n"
        ));
    }
    rules.push_str("describe SCAN_TIMEOUT The scan ran out of time\nscore SCAN_TIMEOUT 0.1\n");
    let s = Setup::start_with(&rules, "scan_timeout_ms = 1", "", &[]);

    let mut body = String::new();
    for i in 0..20_000 {
        body.push_str(&format!(
            "w{:04}xabc line {i} of a long message with words to match against\n",
            (i * 7) % 2000
        ));
    }
    let msg = message("Big", "", &body);
    assert!(msg.len() > 1_000_000);
    let mut c = s.client();
    let r = transaction(&mut c, SENDER, &[RCPT], &msg);
    expect_reply(
        &c,
        &r,
        250,
        "2.0.0",
        "large message with a 1 ms scan budget",
    );
    c.quit();

    let got = s.upstream.messages();
    assert_eq!(got.len(), 1, "{}", s.upstream.transcript());
    let m = split_relayed(&got[0].body);
    assert!(
        m.rest == msg,
        "the message is relayed unchanged below our Received"
    );
    let status = single_value(&m.fields, "X-Spam-Status");
    let tests = tests_of(&status);
    eprintln!(
        "scan with a 1 ms budget: {} tests, SCAN_TIMEOUT {}",
        tests.len(),
        if tests.iter().any(|t| t == "SCAN_TIMEOUT") {
            "present"
        } else {
            "absent"
        }
    );
    if tests.iter().any(|t| t == "SCAN_TIMEOUT") {
        let (fields, _) = header_fields(&got[0].body);
        for f in &fields {
            let name = field_name(f);
            assert!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':'),
                "bad field name in {f:?}"
            );
            for (i, line) in f.split("\r\n").enumerate() {
                assert!(line.len() <= 998, "line too long in {f:?}");
                assert!(!line.contains('\r') && !line.contains('\n'), "{f:?}");
                if i > 0 {
                    assert!(line.starts_with('\t') || line.starts_with(' '), "{f:?}");
                }
            }
        }
        for name in ["X-Spam-Flag", "X-Spam-Score"] {
            single_value(&fields, name);
        }
        assert!(
            wait_for_log(&s.proxy, &["scan-timeout"], Duration::from_secs(5)),
            "a timed-out scan is logged"
        );
    }
}

/// A rule file replaced atomically (written next to it, then renamed over it, as editors and
/// configuration management tools save) is reloaded, and so is every later replacement:
/// the watch follows the path, not the first inode.
#[test]
fn watch_follows_atomic_replacement() {
    let s = Setup::start_with(&flip_rules(0), "", "", &[]);
    let rules = s.rules_path();
    let mut c = s.client();
    let probe =
        |c: &mut SmtpClient| transaction(c, SENDER, &[RCPT], &message("probe", "", FLIP_BODY)).code;
    assert_eq!(probe(&mut c), 250);
    for v in 1..=3 {
        let tmp = rules.with_extension("cf.tmp");
        write(&tmp, flip_rules(v).as_bytes());
        std::fs::rename(&tmp, &rules).expect("rename over the rule file");
        let want = if v.is_multiple_of(2) { 250 } else { 550 };
        assert!(
            support::wait_until(Duration::from_secs(10), || (probe(&mut c) == want)
                .then_some(()))
            .is_some(),
            "version {v} (replaced by rename) must take effect: expected {want}"
        );
    }
    c.quit();
}
