//! The attachment policy end to end, with the shipped rule files (`rules/`): through the real
//! proxy binary delivering to a Maildir, and through `mailwarden scan --json`.
//!
//! What an admin expects from the defaults: a program attached directly is refused with a
//! 5xx and never delivered; a program inside a zip archive is tagged; a program inside a
//! password-protected zip is refused; a PDF or a harmless zip passes untouched. And from the
//! config: `[attachments]` changes what is blocked, a bad value is an error naming the file
//! and line, and a zip bomb costs next to nothing. Archives are built here with the zip
//! crate's writer.

mod support;

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Proxy, SmtpClient};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

fn shipped_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

use support::messages::base64_mime as base64;

/// A plausible business mail with one base64 attachment.
fn mail_with(subject: &str, filename: &str, content_type: &str, content: &[u8]) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.net>\r\nTo: Bob <bob@example.org>\r\nSubject: {subject}\r\n\
         Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}.{}@example.net>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Bob,\r\n\r\nthe file you asked for.\r\n\r\nAlice\r\n\
         --b1\r\nContent-Type: {content_type}; name=\"{filename}\"\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        std::process::id(),
        base64(content)
    )
    .into_bytes()
}

fn zip_with(files: &[(&str, &[u8])], options: SimpleFileOptions) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content) in files {
        w.start_file(*name, options).expect("start_file");
        w.write_all(content).expect("write");
    }
    w.finish().expect("finish").into_inner()
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    zip_with(files, SimpleFileOptions::default())
}

fn encrypted_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    use zip::unstable::write::FileOptionsExt;
    let options = SimpleFileOptions::default()
        .with_deprecated_encryption(b"infected")
        .expect("password");
    zip_with(files, options)
}

/// A tiny Windows PE image.
fn pe() -> Vec<u8> {
    let mut b = vec![0u8; 0x80];
    b[..2].copy_from_slice(b"MZ");
    b[0x3c] = 0x40;
    b[0x40..0x44].copy_from_slice(b"PE\0\0");
    b
}

const PDF: &[u8] = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n";

// ---------------------------------------------------------------------------------------------
// Through the proxy
// ---------------------------------------------------------------------------------------------

/// The proxy with the shipped rules, delivering to `@DIR@/mail`.
fn proxy(extra: &str) -> Proxy {
    Proxy::start(&format!(
        "[server]\nhostname = \"mx.example.test\"\n\n\
         [upstream]\nurl = \"maildir:@DIR@/mail\"\n\n\
         [rules]\npaths = [\"{}\"]\n\n{extra}",
        shipped_rules().display()
    ))
}

fn send(p: &Proxy, msg: &[u8]) -> support::Reply {
    let mut c = SmtpClient::connect_ehlo(p.addr(), "client.example.net");
    let r = c.cmd("MAIL FROM:<alice@example.net>");
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RCPT TO:<bob@example.org>");
    c.expect_code(&r, 250, "RCPT");
    c.data(msg)
}

/// The delivered messages sent with `subject` (their Message-ID starts with it).
fn delivered(p: &Proxy, subject: &str) -> Vec<String> {
    let dir = p.dir().join("mail/new");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path()).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .filter(|m| m.contains(&format!("Message-ID: <{subject}.")))
        .collect()
}

/// The `tests=` list of a delivered message's X-Spam-Status.
fn spam_tests(msg: &str) -> String {
    let unfolded = msg
        .replace("\r\n", "\n")
        .replace("\n\t", " ")
        .replace("\n ", " ");
    unfolded
        .lines()
        .find(|l| l.starts_with("X-Spam-Status:"))
        .and_then(|l| l.split_once("tests="))
        .map(|(_, t)| t.split_whitespace().collect::<String>())
        .unwrap_or_else(|| panic!("no X-Spam-Status tests= in\n{msg}"))
}

#[test]
fn proxy_applies_the_shipped_attachment_policy() {
    let p = proxy("");

    // A program attached directly: refused, never delivered.
    let r = send(
        &p,
        &mail_with("exe", "setup.exe", "application/octet-stream", &pe()),
    );
    assert_eq!(r.code, 550, "{r}\n{}", p.log());
    assert_eq!(r.enhanced(), Some("5.7.1"), "{r}");
    assert!(delivered(&p, "exe").is_empty());
    // The log line of the refusal names the symbol (whatever the log format around it).
    let log = p.wait_for_log("ATT_BLOCKED_EXT");
    assert!(
        log.lines()
            .any(|l| l.contains("ATT_BLOCKED_EXT") && l.contains("reject")),
        "{log}"
    );

    // A macro-enabled document is blocked by default too.
    let r = send(
        &p,
        &mail_with(
            "docm",
            "report.docm",
            "application/vnd.ms-word.document.macroEnabled.12",
            b"x",
        ),
    );
    assert_eq!(r.code, 550, "{r}");

    // A program in a zip archive: delivered, tagged, the symbol in X-Spam-Status.
    let z = zip_of(&[
        ("invoice/readme.txt", b"see the program"),
        ("invoice/run.exe", &pe()),
    ]);
    let r = send(
        &p,
        &mail_with("zipped", "invoice.zip", "application/zip", &z),
    );
    assert_eq!(r.code, 250, "{r}\n{}", p.log());
    let got = delivered(&p, "zipped");
    assert_eq!(got.len(), 1);
    let tests = spam_tests(&got[0]);
    assert!(tests.contains("ATT_ARCHIVE_BLOCKED_EXT"), "{tests}");
    assert!(got[0].contains("X-Spam-Flag: YES"), "{}", got[0]);

    // The same program in a password-protected zip: refused (the meta rule adds up).
    let z = encrypted_zip(&[("invoice.exe", &pe())]);
    let r = send(
        &p,
        &mail_with("locked", "invoice.zip", "application/zip", &z),
    );
    assert_eq!(r.code, 550, "{r}\n{}", p.log());
    assert!(delivered(&p, "locked").is_empty());

    // A PDF and a harmless zip pass with none of the attachment symbols.
    let r = send(&p, &mail_with("pdf", "report.pdf", "application/pdf", PDF));
    assert_eq!(r.code, 250, "{r}");
    let r = send(
        &p,
        &mail_with(
            "okzip",
            "photos.zip",
            "application/zip",
            &zip_of(&[("a.txt", b"hello"), ("b.pdf", PDF)]),
        ),
    );
    assert_eq!(r.code, 250, "{r}");
    for subject in ["pdf", "okzip"] {
        let got = delivered(&p, subject);
        assert_eq!(got.len(), 1, "{subject}");
        let tests = spam_tests(&got[0]);
        assert!(!tests.contains("ATT_"), "{subject}: {tests}");
        assert!(got[0].contains("X-Spam-Flag: NO"), "{}", got[0]);
    }
}

#[test]
fn proxy_blocked_list_comes_from_the_config() {
    // The admin blocks PDFs and nothing else; an admin-side re-score makes zipped ones
    // reject too.
    let p = proxy(
        "[attachments]\nblocked_extensions = [\"pdf\"]\n\n[policy.rules.ATT_ARCHIVE_BLOCKED_EXT]\naction = \"reject\"\n",
    );
    let r = send(&p, &mail_with("pdf2", "report.pdf", "application/pdf", PDF));
    assert_eq!(r.code, 550, "{r}\n{}", p.log());
    let r = send(
        &p,
        &mail_with(
            "zpdf",
            "r.zip",
            "application/zip",
            &zip_of(&[("r.pdf", PDF)]),
        ),
    );
    assert_eq!(r.code, 550, "{r}");
    let r = send(
        &p,
        &mail_with(
            "exe2",
            "tool.exe",
            "application/octet-stream",
            b"not a program",
        ),
    );
    assert_eq!(r.code, 250, "{r}\n{}", p.log());
}

// ---------------------------------------------------------------------------------------------
// mailwarden scan --json
// ---------------------------------------------------------------------------------------------

fn mailwarden(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run mailwarden")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A directory with `mailwarden.toml` (shipped rules plus `local.cf`, `[attachments]`
/// `extra`) and the given message files.
fn scan_dir(extra: &str, local_cf: &str, files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("mailwarden-att-")
        .tempdir()
        .expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("local.cf"), local_cf).expect("write local.cf");
    let config = format!(
        "[rules]\npaths = [\"{}\", \"{}\"]\n\n[auth]\nenabled = false\n\n{extra}",
        shipped_rules().display(),
        d.join("local.cf").display()
    );
    std::fs::write(d.join("mailwarden.toml"), config).expect("write config");
    for (name, content) in files {
        std::fs::write(d.join(name), content).expect("write message");
    }
    dir
}

/// `scan --json` of one file: (action, symbol names).
fn scan_one(dir: &Path, file: &str) -> (String, Vec<String>, serde_json::Value) {
    let out = mailwarden(
        dir,
        &["scan", "--config", "mailwarden.toml", "--json", file],
    );
    assert!(
        matches!(out.status.code(), Some(0..=2)),
        "{}",
        describe(&out)
    );
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", describe(&out)));
    let names = v["symbols"]
        .as_array()
        .expect("symbols")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or("").to_string())
        .collect();
    (v["action"].as_str().unwrap_or("").to_string(), names, v)
}

#[test]
fn scan_json_lists_the_symbols() {
    let nested = {
        let mut z = zip_of(&[("evil.exe", &pe())]);
        for level in (2..=4).rev() {
            z = zip_of(&[(format!("level{level}.zip").as_str(), &z)]);
        }
        z
    };
    let files = vec![
        (
            "exe.eml",
            mail_with("exe", "setup.exe", "application/octet-stream", &pe()),
        ),
        (
            "double.eml",
            mail_with(
                "double",
                "invoice.pdf.exe",
                "application/octet-stream",
                &pe(),
            ),
        ),
        (
            "fake-pdf.eml",
            mail_with("fakepdf", "scan.pdf", "application/pdf", &pe()),
        ),
        (
            "zip.eml",
            mail_with(
                "zip",
                "files.zip",
                "application/zip",
                &zip_of(&[("a/evil.js", b"x"), ("page.html", b"<p>")]),
            ),
        ),
        (
            "locked.eml",
            mail_with(
                "locked",
                "x.zip",
                "application/zip",
                &encrypted_zip(&[("doc.pdf", PDF)]),
            ),
        ),
        (
            "deep.eml",
            mail_with("deep", "level1.zip", "application/zip", &nested),
        ),
        (
            "broken.eml",
            mail_with(
                "broken",
                "b.zip",
                "application/zip",
                b"PK\x03\x04 this is no archive",
            ),
        ),
        (
            "zdouble.eml",
            mail_with(
                "zdouble",
                "invoice.zip",
                "application/zip",
                &zip_of(&[("Invoice 2026.pdf.exe", &pe())]),
            ),
        ),
        (
            "ok.eml",
            mail_with("ok", "report.pdf", "application/pdf", PDF),
        ),
    ];
    let dir = scan_dir(
        "",
        "attachment LOCAL_ZIPPED_JS archive_filename =~ /\\.js$/i\nscore LOCAL_ZIPPED_JS 0.5\ndescribe LOCAL_ZIPPED_JS Script in a zip\n",
        &files,
    );
    let d = dir.path();
    let expect = |file: &str, action: &str, want: &[&str]| {
        let (got_action, names, v) = scan_one(d, file);
        assert_eq!(got_action, action, "{file}: {v}");
        for w in want {
            assert!(names.iter().any(|n| n == w), "{file}: {w} missing in {v}");
        }
        let described = v["symbols"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("ATT_")))
            .all(|s| s["description"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(described, "{file}: every ATT_ symbol is described: {v}");
        names
    };
    expect("exe.eml", "reject", &["ATT_BLOCKED_EXT"]);
    expect(
        "double.eml",
        "reject",
        &[
            "ATT_BLOCKED_EXT",
            "ATT_DOUBLE_EXT",
            "MW_ATT_DISGUISED_PROGRAM",
        ],
    );
    expect(
        "fake-pdf.eml",
        "reject",
        &[
            "ATT_TYPE_MISMATCH",
            "MW_ATT_PE_SNIFFED",
            "MW_ATT_DISGUISED_PROGRAM",
        ],
    );
    expect(
        "zip.eml",
        "tag",
        &[
            "ATT_ARCHIVE_BLOCKED_EXT",
            "LOCAL_ZIPPED_JS",
            "MW_ATT_ARCHIVE_HTML",
        ],
    );
    expect("locked.eml", "accept", &["ATT_ARCHIVE_ENCRYPTED"]);
    let deep = expect("deep.eml", "accept", &["ATT_ARCHIVE_TOO_DEEP"]);
    assert!(
        !deep.iter().any(|n| n == "ATT_ARCHIVE_BLOCKED_EXT"),
        "{deep:?}"
    );
    expect("broken.eml", "accept", &["ATT_ARCHIVE_BROKEN"]);
    expect(
        "zdouble.eml",
        "reject",
        &[
            "ATT_ARCHIVE_BLOCKED_EXT",
            "ATT_DOUBLE_EXT",
            "MW_ATT_DISGUISED_PROGRAM",
        ],
    );
    let ok = expect("ok.eml", "accept", &[]);
    assert!(!ok.iter().any(|n| n.starts_with("ATT_")), "{ok:?}");
}

#[test]
fn scan_config_changes_and_errors() {
    let files = vec![(
        "deep.eml",
        mail_with(
            "deep",
            "a.zip",
            "application/zip",
            &zip_of(&[("b.zip", &zip_of(&[("c.exe", &pe())]))]),
        ),
    )];
    // archive_depth = 1: the inner zip is not opened.
    let dir = scan_dir("[attachments]\narchive_depth = 1\n", "", &files);
    let (_, names, v) = scan_one(dir.path(), "deep.eml");
    assert!(names.iter().any(|n| n == "ATT_ARCHIVE_TOO_DEEP"), "{v}");
    assert!(!names.iter().any(|n| n == "ATT_ARCHIVE_BLOCKED_EXT"), "{v}");
    // enabled = false: no attachment symbols at all.
    let dir = scan_dir("[attachments]\nenabled = false\n", "", &files);
    let (_, names, v) = scan_one(dir.path(), "deep.eml");
    assert!(!names.iter().any(|n| n.starts_with("ATT_")), "{v}");
    // A bad value: exit 3, the file and line named.
    let dir = scan_dir(
        "[attachments]\nenabled = true\nblocked_extensions = [\"exe\", \"tar gz\"]\n",
        "",
        &files,
    );
    let out = mailwarden(
        dir.path(),
        &["scan", "--config", "mailwarden.toml", "--json", "deep.eml"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mailwarden.toml:9:") && err.contains("tar gz"),
        "{}",
        describe(&out)
    );
    let dir = scan_dir("[attachments]\narchive_depht = 2\n", "", &files);
    let out = mailwarden(
        dir.path(),
        &["scan", "--config", "mailwarden.toml", "--json", "deep.eml"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mailwarden.toml:8:") && err.contains("archive_depht"),
        "{}",
        describe(&out)
    );
}

/// A 20 MiB attachment declaring terabytes, and one with 10,000 entries, each scanned in
/// well under the time budget (and nothing inflated: the process would need gigabytes).
#[test]
fn scan_zip_bombs_quickly() {
    // 1,000 entries each declaring 4 GB (4 TB in all) in a 120 KB archive.
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let names: Vec<String> = (0..1000).map(|i| format!("part{i}.bin")).collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), &b"0123456789"[..]))
        .collect();
    let mut bomb = zip_with(&files, stored);
    for (sig, at) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
        let starts: Vec<usize> = bomb
            .windows(4)
            .enumerate()
            .filter(|(_, w)| w == sig)
            .map(|(i, _)| i)
            .collect();
        for i in starts {
            bomb[i + at..i + at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        }
    }
    let many_names: Vec<String> = (0..10_000).map(|i| format!("d/f{i}.txt")).collect();
    let many: Vec<(&str, &[u8])> = many_names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let many = zip_with(&many, stored);
    let dir = scan_dir(
        "",
        "",
        &[
            (
                "bomb.eml",
                mail_with("bomb", "b.zip", "application/zip", &bomb),
            ),
            (
                "many.eml",
                mail_with("many", "m.zip", "application/zip", &many),
            ),
        ],
    );
    for (file, symbol) in [("bomb.eml", "ATT_ARCHIVE_BOMB"), ("many.eml", "")] {
        let t = Instant::now();
        let (_, names, v) = scan_one(dir.path(), file);
        let took = t.elapsed();
        eprintln!("scan {file}: {took:?} (process start, rule load and scan)");
        if !symbol.is_empty() {
            assert!(names.iter().any(|n| n == symbol), "{v}");
        }
        assert!(!names.iter().any(|n| n == "SCAN_TIMEOUT"), "{v}");
        assert!(took < Duration::from_secs(60), "{took:?}");
    }
}
