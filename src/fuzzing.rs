//! The checks behind the cargo-fuzz targets in `fuzz/` and `tests/fuzz_regressions.rs`.
//!
//! Each function takes arbitrary bytes, runs one parser of mailwarden on them and panics
//! (with what went wrong) when a property does not hold. The fuzz targets call them with
//! libFuzzer's inputs; the regression test replays the saved inputs in
//! `fuzz/regressions/<target>/` through the very same functions. Not part of the API.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::{AttachmentsConfig, BareNewline, PolicyConfig, RulesConfig};
use crate::filter::message::Message;
use crate::filter::rules::{LoadOptions, RuleSet};
use crate::filter::{Engine, ScanContext};
use crate::smtp::command::{self, Command};
use crate::smtp::data::{DataDecoder, Problem, dot_stuff};

/// The fuzz targets, by name (the directory names under `fuzz/regressions/`).
pub const TARGETS: [&str; 5] = [
    "command",
    "data_decoder",
    "rules_parse",
    "message_scan",
    "milter_stream",
];

/// Runs the check of the target called `name`; false for an unknown name.
pub fn check(name: &str, data: &[u8]) -> bool {
    match name {
        "command" => check_command(data),
        "data_decoder" => check_data_decoder(data),
        "rules_parse" => check_rules_parse(data),
        "message_scan" => check_message_scan(data),
        "milter_stream" => check_milter_stream(data),
        _ => return false,
    }
    true
}

// ---------------------------------------------------------------------------------------------
// command

/// `smtp::command::parse` on one line. What parses must be safe to echo: no control characters
/// (C0, DEL or C1) anywhere, no space or angle bracket in a path, and MAIL/RCPT must re-parse
/// from their upstream form (`to_line`) to the same command.
pub fn check_command(data: &[u8]) {
    let Ok(cmd) = command::parse(data) else {
        return;
    };
    let no_controls = |what: &str, s: &str| {
        assert!(
            !s.chars().any(|c| c.is_control() && c != '\t'),
            "{what} {s:?} holds a control character (input {data:?})"
        );
    };
    let path_ok = |what: &str, s: &str| {
        no_controls(what, s);
        assert!(
            !s.contains(['\r', '\n', '\t']) && !has_unquoted(s, &[' ', '<', '>']),
            "{what} {s:?} holds a character that ends or splits a path (input {data:?})"
        );
    };
    match &cmd {
        Command::Ehlo(name) | Command::Helo(name) => {
            assert!(!name.is_empty() && name.len() <= 255, "HELO name {name:?}");
            assert!(
                name.bytes().all(|b| b.is_ascii_graphic()),
                "HELO name {name:?} is not one printable word (input {data:?})"
            );
        }
        Command::Mail(m) => {
            path_ok("MAIL address", &m.address);
            let line = m.to_line();
            no_controls("MAIL line", &line);
            assert_eq!(
                command::parse(line.as_bytes()).ok(),
                Some(cmd.clone()),
                "MAIL does not re-parse from {line:?} (input {data:?})"
            );
        }
        Command::Rcpt(r) => {
            path_ok("RCPT address", &r.address);
            let line = r.to_line();
            no_controls("RCPT line", &line);
            assert_eq!(
                command::parse(line.as_bytes()).ok(),
                Some(cmd.clone()),
                "RCPT does not re-parse from {line:?} (input {data:?})"
            );
        }
        Command::Xclient(args) | Command::Xforward(args) => no_controls("XCLIENT/XFORWARD", args),
        Command::NotImplemented(verb) => no_controls("verb", verb),
        _ => {}
    }
}

/// One of `chars` outside a quoted local part (RFC 5321 allows `<`, `>` and spaces inside).
fn has_unquoted(s: &str, chars: &[char]) -> bool {
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if !quoted && chars.contains(&c) => return true,
            _ => {}
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------
// data_decoder

/// The DATA/BDAT decoder against [`reference_decode`].
///
/// Input layout: byte 0 picks the mode (bit 0: BDAT, bit 1: normalize, bit 2: small limits),
/// bytes 1..=4 the chunk sizes (each `1 + b`, used in turn), bytes 5 and 6 the small size
/// and line limits; the rest is the wire data. The decoder must end DATA exactly where the
/// reference does, give the same message or the same problem, output canonical CRLF, and
/// for BDAT consume every byte of every chunk.
pub fn check_data_decoder(data: &[u8]) {
    let Some((&[flags, c0, c1, c2, c3, size_b, line_b], wire)) = data.split_first_chunk::<7>()
    else {
        return;
    };
    let bdat = flags & 1 != 0;
    let policy = if flags & 2 != 0 {
        BareNewline::Normalize
    } else {
        BareNewline::Reject
    };
    let (max_size, max_line) = if flags & 4 != 0 {
        // A line limit below 2 (the CRLF alone) is not a configuration the decoder serves.
        (usize::from(size_b), usize::from(line_b) + 2)
    } else {
        (1 << 30, 1 << 30)
    };
    let chunks = [c0, c1, c2, c3].map(|b| usize::from(b) + 1);

    let mut decoder = if bdat {
        DataDecoder::chunks(policy, max_size, max_line)
    } else {
        DataDecoder::dot(policy, max_size, max_line)
    };
    let mut offset = 0;
    let mut end = None;
    for size in chunks.iter().cycle() {
        if offset >= wire.len() {
            break;
        }
        let chunk = &wire[offset..wire.len().min(offset + size)];
        match decoder.feed(chunk) {
            Some(n) => {
                assert!(
                    !bdat,
                    "BDAT decoder stopped inside a chunk (input {data:?})"
                );
                assert!(n >= 1 && n <= chunk.len(), "end {n} outside the chunk");
                end = Some(offset + n);
                break;
            }
            None => offset += chunk.len(),
        }
    }
    let got = decoder.finish();
    let want = reference_decode(wire, !bdat, policy, max_size, max_line);
    assert_eq!(
        end, want.end,
        "message boundary differs from the reference (input {data:?})"
    );
    assert_eq!(
        got, want.result,
        "decoded message differs from the reference (input {data:?})"
    );
    if let Ok(message) = &got {
        assert!(
            is_canonical(message),
            "output is not canonical CRLF: {message:?}"
        );
        // What goes upstream with DATA decodes back to the same message, ending exactly at
        // its end-of-data line.
        let mut stuffed = Vec::new();
        dot_stuff(message, &mut stuffed);
        let mut again = DataDecoder::dot(BareNewline::Reject, 1 << 30, 1 << 30);
        assert_eq!(again.feed(&stuffed), Some(stuffed.len()), "dot-stuffed end");
        assert_eq!(
            again.finish().as_ref(),
            Ok(message),
            "dot-stuffing round trip"
        );
    }
}

/// What [`reference_decode`] says.
#[derive(Debug)]
pub struct Reference {
    /// Bytes consumed up to and including the end-of-data line (DATA only).
    pub end: Option<usize>,
    pub result: Result<Vec<u8>, Problem>,
}

/// An independent, deliberately plain decoder: find the end of data first, then cut the
/// content into lines and un-dot-stuff them.
pub fn reference_decode(
    wire: &[u8],
    dot_framing: bool,
    policy: BareNewline,
    max_size: usize,
    max_line: usize,
) -> Reference {
    // 1. The end: a "." line right after the DATA command's CRLF, or the first CRLF.CRLF.
    let (content, end) = if !dot_framing {
        (wire, None)
    } else if wire.starts_with(b".\r\n") {
        (&wire[..0], Some(3))
    } else {
        match wire.windows(5).position(|w| w == b"\r\n.\r\n") {
            Some(p) => (&wire[..p + 2], Some(p + 5)),
            None => (wire, None),
        }
    };
    // 2. Lines, each with how it ended: CRLF, a bare LF, a bare CR, or the end of input.
    let mut lines: Vec<(&[u8], Option<&'static str>)> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < content.len() {
        match content[i] {
            b'\r' if content.get(i + 1) == Some(&b'\n') => {
                lines.push((&content[start..i], None));
                i += 2;
                start = i;
            }
            b'\r' => {
                lines.push((&content[start..i], Some("<CR>")));
                i += 1;
                start = i;
            }
            b'\n' => {
                lines.push((&content[start..i], Some("<LF>")));
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < content.len() {
        lines.push((&content[start..], None));
    }
    // 3. Un-dot-stuff (RFC 5321 §4.5.2: a line of one "." is the end, or here content that
    // did not end the data; any other leading dot is removed) and join with CRLF.
    let mut out = Vec::new();
    let mut bare = None;
    let mut long_line = false;
    for (line, ending) in lines {
        let text = if dot_framing && line.len() > 1 && line[0] == b'.' {
            &line[1..]
        } else {
            line
        };
        if text.len() + 2 > max_line {
            long_line = true;
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
        if let Some(kind) = ending {
            bare.get_or_insert(kind);
        }
    }
    let result = match bare {
        Some(kind) if policy == BareNewline::Reject => Err(Problem::BareNewline(kind)),
        _ if out.len() > max_size => Err(Problem::TooBig),
        _ if long_line => Err(Problem::LineTooLong),
        _ => Ok(out),
    };
    Reference { end, result }
}

/// Every CR is followed by LF and every LF follows a CR.
pub fn is_canonical(message: &[u8]) -> bool {
    message.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => message.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && message[i - 1] == b'\r',
        _ => true,
    })
}

// ---------------------------------------------------------------------------------------------
// rules_parse

/// The input as a `.cf` file through `RuleSet::load`. It must not panic; every diagnostic must
/// name the file and a line of it; a set that loads is run over a small message.
pub fn check_rules_parse(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = DIR.get_or_init(|| {
        // One directory for every run (inputs are named by process), so none pile up.
        let dir = std::env::temp_dir().join("mailwarden-fuzz-rules");
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        // A keyword file the input may name (`keywords NAME body words.txt`).
        std::fs::write(dir.join("words.txt"), "cheap pills\nfree money\n")
            .unwrap_or_else(|e| panic!("cannot write words.txt: {e}"));
        dir
    });
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("input-{}-{seq}.cf", std::process::id()));
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    let loaded = RuleSet::load(std::slice::from_ref(&path), &LoadOptions::default());
    let _ = std::fs::remove_file(&path);
    let lines = data.split(|&b| b == b'\n').count();
    let report = match &loaded {
        Ok(set) => set.report(),
        Err(report) => report,
    };
    for d in report
        .errors
        .iter()
        .chain(&report.warnings)
        .chain(&report.skipped)
    {
        assert!(
            d.file == path && (1..=lines).contains(&d.line),
            "diagnostic without file:line of the input: {d} ({} lines; input {:?})",
            lines,
            String::from_utf8_lossy(data)
        );
    }
    if let Ok(set) = loaded {
        let message = Message::parse(SAMPLE_MESSAGE.to_vec());
        let deadline = Instant::now() + Duration::from_secs(2);
        let _ = set.evaluate_with(&message, &[], &[], Some(deadline));
    }
}

const SAMPLE_MESSAGE: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: bob@example.net\r\n\
Subject: cheap pills and free money\r\n\
Content-Type: multipart/alternative; boundary=b\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain\r\n\
\r\n\
Visit http://example.com/offer now\r\n\
--b\r\n\
Content-Type: text/html\r\n\
\r\n\
<p>Visit <a href=\"http://example.com/x\">here</a></p>\r\n\
--b--\r\n";

// ---------------------------------------------------------------------------------------------
// message_scan

/// The input as a message through `Message::parse` and `Engine::scan` with the shipped rules.
/// It must not panic and must give a finite score.
pub fn check_message_scan(data: &[u8]) {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        let rules = RulesConfig {
            paths: vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")],
            ..RulesConfig::default()
        };
        Engine::load(
            &rules,
            &PolicyConfig::default(),
            &AttachmentsConfig::default(),
        )
        .unwrap_or_else(|e| panic!("the shipped rules do not load: {e:?}"))
    });
    let ctx = ScanContext {
        ip: Some([192, 0, 2, 7].into()),
        helo: Some("client.example".into()),
        from: "alice@example.org".into(),
        recipients: vec!["bob@example.net".into()],
        ..ScanContext::default()
    };
    let scan = engine.scan(data.to_vec(), &ctx, Duration::from_secs(5));
    assert!(scan.score.is_finite(), "score {}", scan.score);
}

// ---------------------------------------------------------------------------------------------
// milter_stream

/// A handler that lets everything through and asks for one header change, so the session
/// walks every stage and writes modifications.
struct AcceptAll;

impl crate::milter::Handler for AcceptAll {
    async fn connect(&self, _: &crate::milter::Connection) -> crate::milter::Decision {
        crate::milter::Decision::Continue
    }
    async fn helo(&self, _: &crate::milter::Connection) -> crate::milter::Decision {
        crate::milter::Decision::Continue
    }
    async fn mail(
        &self,
        _: &crate::milter::Connection,
        _: &crate::milter::Transaction,
    ) -> crate::milter::Decision {
        crate::milter::Decision::Continue
    }
    async fn rcpt(
        &self,
        _: &crate::milter::Connection,
        _: &crate::milter::Transaction,
        _: &str,
    ) -> crate::milter::Decision {
        crate::milter::Decision::Continue
    }
    async fn end_of_message(
        &self,
        _: &crate::milter::Connection,
        _: &crate::milter::Transaction,
        message: Vec<u8>,
    ) -> crate::milter::EndOfMessage {
        let mut answer = crate::milter::EndOfMessage::new(crate::milter::Decision::Accept);
        answer
            .modifications
            .push(crate::milter::Modification::InsertHeader {
                index: 0,
                name: "X-Spam-Flag".into(),
                value: format!("NO {}", message.len()),
            });
        answer
    }
    fn abort(&self, _: &crate::milter::Connection, _: &crate::milter::Transaction) {}
    fn close(&self, _: &crate::milter::Connection) {}
}

/// The input as what an MTA sends on a milter connection, through the real session with a
/// handler that accepts everything. It must not panic and must end (the stream ends with the
/// input) within a few seconds whatever the bytes.
pub fn check_milter_stream(data: &[u8]) {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    }
    RUNTIME.with(|rt| {
        rt.block_on(async {
            use tokio::io::AsyncWriteExt;
            let (mut mta, ours) = tokio::io::duplex(1 << 20);
            let settings = crate::milter::Settings {
                progress_interval: Duration::from_secs(60),
                max_message_size: 1 << 20,
                stop_grace: Duration::from_secs(1),
            };
            let session = crate::milter::serve_connection(ours, &AcceptAll, &settings);
            let feed = async {
                let _ = mta.write_all(data).await;
                let _ = mta.shutdown().await;
                // Read (and drop) our replies so the session never blocks on a full pipe.
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut mta, &mut sink).await;
            };
            let run = async { tokio::join!(session, feed) };
            if tokio::time::timeout(Duration::from_secs(5), run)
                .await
                .is_err()
            {
                panic!("the milter session did not end within 5 s of the end of its input");
            }
        });
    });
}
