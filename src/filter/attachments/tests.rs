//! Tests of the attachment policy: names, types, and zip archives built here with the zip
//! crate's writer (or broken on purpose byte by byte).

use std::io::{Cursor, Write};
use std::time::{Duration, Instant};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::*;

/// One attachment: file name, declared type, content.
type Part<'a> = (&'a str, &'a str, &'a [u8]);

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for (i, chunk) in data.chunks(3).enumerate() {
        if i > 0 && i % 19 == 0 {
            out.push_str("\r\n");
        }
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A multipart message with a text part and `parts` as base64 attachments.
fn mail(parts: &[Part<'_>]) -> Message {
    let mut m = String::from(
        "From: a@example.net\r\nTo: b@example.org\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"BOUND\"\r\n\r\n\
         --BOUND\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n",
    );
    for (name, ty, content) in parts {
        m.push_str(&format!(
            "--BOUND\r\nContent-Type: {ty}\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            base64(content)
        ));
    }
    m.push_str("--BOUND--\r\n");
    Message::parse(m.into_bytes())
}

fn analyse_with(parts: &[Part<'_>], config: &AttachmentsConfig) -> Findings {
    analyse(&mail(parts), config)
}

fn symbols(parts: &[Part<'_>]) -> Vec<&'static str> {
    analyse_with(parts, &AttachmentsConfig::default()).symbols
}

/// A zip archive holding `files` (name, content), deflated.
fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    zip_with(files, SimpleFileOptions::default())
}

fn zip_with(files: &[(&str, &[u8])], options: SimpleFileOptions) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content) in files {
        w.start_file(*name, options).expect("start_file");
        w.write_all(content).expect("write");
    }
    w.finish().expect("finish").into_inner()
}

/// A zip archive nested `levels` deep (the outermost is level 1) with `inner` at the bottom.
fn nested(levels: usize, inner: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = zip_of(inner);
    for level in (1..levels).rev() {
        let name = format!("level{}.zip", level + 1);
        data = zip_of(&[(name.as_str(), &data), ("readme.txt", b"hello")]);
    }
    data
}

/// A tiny Windows PE image: DOS header pointing at a "PE\0\0" signature.
fn pe() -> Vec<u8> {
    let mut b = vec![0u8; 0x80];
    b[0] = b'M';
    b[1] = b'Z';
    b[0x3c] = 0x40;
    b[0x40..0x44].copy_from_slice(b"PE\0\0");
    b
}

const PDF: &[u8] = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n";

#[test]
fn extensions_of_names() {
    let e = |n: &str| extensions(n);
    let s = |x: &str| Some(x.to_string());
    assert_eq!(e("invoice.pdf.exe"), (s("exe"), s("pdf")));
    assert_eq!(e("Invoice.PDF   .EXE"), (s("exe"), s("pdf")));
    assert_eq!(e("evil.exe. . "), (s("exe"), None));
    assert_eq!(e("dir/sub\\setup.exe"), (s("exe"), None));
    assert_eq!(e(".exe"), (s("exe"), None));
    assert_eq!(e("README"), (None, None));
    assert_eq!(e(""), (None, None));
    assert_eq!(e("a."), (None, None));
}

#[test]
fn blocked_and_double_extensions() {
    let cfg = AttachmentsConfig::default();
    assert_eq!(
        symbols(&[("setup.exe", "application/octet-stream", &pe())]),
        [ATT_BLOCKED_EXT]
    );
    assert_eq!(
        symbols(&[("Report.DOCM", "application/octet-stream", b"x")]),
        [ATT_BLOCKED_EXT]
    );
    assert_eq!(
        symbols(&[("invoice.pdf.exe", "application/octet-stream", &pe())]),
        [ATT_BLOCKED_EXT, ATT_DOUBLE_EXT]
    );
    assert_eq!(
        symbols(&[(
            "invoice.pdf          .scr",
            "application/octet-stream",
            b"x"
        )]),
        [ATT_BLOCKED_EXT, ATT_DOUBLE_EXT]
    );
    // Windows drops trailing dots: this runs as a program.
    assert_eq!(
        symbols(&[("run.js.", "text/plain", b"x")]),
        [ATT_BLOCKED_EXT]
    );
    // A version number is not a decoy.
    assert_eq!(
        symbols(&[("setup.v2.msi", "application/x-msi", b"x")]),
        [ATT_BLOCKED_EXT]
    );
    // invoice<RLO>fdp.exe shows as "invoiceexe.pdf".
    assert_eq!(
        symbols(&[("invoice\u{202E}fdp.exe", "application/octet-stream", b"x")]),
        [ATT_BLOCKED_EXT, ATT_DOUBLE_EXT]
    );
    assert!(symbols(&[("report.pdf", "application/pdf", PDF)]).is_empty());
    assert!(symbols(&[("notes.txt", "text/plain", b"plain words")]).is_empty());
    // The list is the config's.
    let custom = AttachmentsConfig {
        blocked_extensions: vec!["pdf".into()],
        ..cfg.clone()
    };
    let f = analyse_with(&[("report.pdf", "application/pdf", PDF)], &custom);
    assert_eq!(f.symbols, [ATT_BLOCKED_EXT]);
    assert!(f.details[0].contains("report.pdf"), "{:?}", f.details);
    let f = analyse_with(&[("setup.exe", "application/octet-stream", &pe())], &custom);
    assert!(f.symbols.is_empty());
    // Off is off.
    let off = AttachmentsConfig {
        enabled: false,
        ..cfg
    };
    let f = analyse_with(&[("invoice.pdf.exe", "application/pdf", &pe())], &off);
    assert_eq!(f, Findings::default());
}

#[test]
fn declared_or_named_type_against_content() {
    // A "PDF" that is a Windows program, by declared type and by name.
    assert_eq!(
        symbols(&[("scan", "application/pdf", &pe())]),
        [ATT_TYPE_MISMATCH]
    );
    assert_eq!(
        symbols(&[("scan.pdf", "application/octet-stream", &pe())]),
        [ATT_TYPE_MISMATCH]
    );
    // An "image" that is a zip archive.
    let z = zip_of(&[("a.txt", b"hello")]);
    assert_eq!(
        symbols(&[("photo.jpg", "image/jpeg", &z)]),
        [ATT_TYPE_MISMATCH]
    );
    // Generic types claim nothing; Office documents are zip archives.
    assert!(symbols(&[("data.bin", "application/octet-stream", &pe())]).is_empty());
    assert!(symbols(&[("blob", "application/octet-stream", &z)]).is_empty());
    let docx = zip_of(&[("word/document.xml", b"<w:document/>")]);
    assert!(
        symbols(&[(
            "letter.docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            &docx
        )])
        .is_empty()
    );
    // A text that happens to start with "MZ" is not a program.
    assert!(symbols(&[("mz.txt", "text/plain", b"MZ Corp quarterly figures")]).is_empty());
    // A PNG declared as JPEG: a common slip, not dangerous.
    assert!(symbols(&[("p.jpg", "image/jpeg", b"\x89PNG\r\n\x1a\n....")]).is_empty());
}

#[test]
fn names_inside_a_zip() {
    let z = zip_of(&[("docs/readme.txt", b"hi"), ("docs/evil.exe", &pe())]);
    let f = analyse_with(
        &[("files.zip", "application/zip", &z)],
        &AttachmentsConfig::default(),
    );
    assert_eq!(f.symbols, [ATT_ARCHIVE_BLOCKED_EXT]);
    assert_eq!(f.archive_names, ["docs/readme.txt", "docs/evil.exe"]);
    assert!(f.details[0].contains("docs/evil.exe"), "{:?}", f.details);
    // A double extension inside an archive is one too.
    let z = zip_of(&[("invoice.pdf.js", b"WScript.Echo(1)")]);
    assert_eq!(
        symbols(&[("invoice.zip", "application/zip", &z)]),
        [ATT_DOUBLE_EXT, ATT_ARCHIVE_BLOCKED_EXT]
    );
    // A harmless archive sets nothing; archive_depth = 0 does not open archives.
    let z = zip_of(&[("a.txt", b"a"), ("b/c.pdf", PDF)]);
    assert!(symbols(&[("ok.zip", "application/zip", &z)]).is_empty());
    let z = zip_of(&[("evil.exe", &pe())]);
    let closed = AttachmentsConfig {
        archive_depth: 0,
        ..AttachmentsConfig::default()
    };
    let f = analyse_with(&[("files.zip", "application/zip", &z)], &closed);
    assert!(f.symbols.is_empty() && f.archive_names.is_empty(), "{f:?}");
}

#[test]
fn nested_archives_up_to_the_depth() {
    // level1.zip ⊃ level2.zip ⊃ level3.zip ⊃ level4.zip ⊃ evil.exe
    let z = nested(4, &[("evil.exe", &pe())]);
    let f = analyse_with(
        &[("level1.zip", "application/zip", &z)],
        &AttachmentsConfig::default(),
    );
    assert_eq!(f.symbols, [ATT_ARCHIVE_TOO_DEEP]);
    assert!(f.archive_names.contains(&"level4.zip".to_string()), "{f:?}");
    assert!(!f.archive_names.contains(&"evil.exe".to_string()), "{f:?}");
    assert!(
        f.details[0].contains("level1.zip/level2.zip/level3.zip/level4.zip"),
        "{:?}",
        f.details
    );
    let deeper = AttachmentsConfig {
        archive_depth: 4,
        ..AttachmentsConfig::default()
    };
    let f = analyse_with(&[("level1.zip", "application/zip", &z)], &deeper);
    assert_eq!(f.symbols, [ATT_ARCHIVE_BLOCKED_EXT]);
    // Three levels are within the default depth.
    let z = nested(3, &[("evil.exe", &pe())]);
    assert_eq!(
        symbols(&[("level1.zip", "application/zip", &z)]),
        [ATT_ARCHIVE_BLOCKED_EXT]
    );
    // A nested archive is found by its content, whatever its name.
    let inner = zip_of(&[("evil.scr", b"x")]);
    let z = zip_of(&[("photos.dat", &inner)]);
    assert_eq!(
        symbols(&[("a.zip", "application/zip", &z)]),
        [ATT_ARCHIVE_BLOCKED_EXT]
    );
}

#[test]
fn encrypted_archives() {
    use zip::unstable::write::FileOptionsExt;
    let options = SimpleFileOptions::default()
        .with_deprecated_encryption(b"infected")
        .expect("password");
    let z = zip_with(&[("invoice.pdf", PDF)], options);
    assert_eq!(
        symbols(&[("invoice.zip", "application/zip", &z)]),
        [ATT_ARCHIVE_ENCRYPTED]
    );
    // The names of encrypted entries are readable: a program in it is found.
    let z = zip_with(&[("invoice.exe", &pe())], options);
    assert_eq!(
        symbols(&[("invoice.zip", "application/zip", &z)]),
        [ATT_ARCHIVE_BLOCKED_EXT, ATT_ARCHIVE_ENCRYPTED]
    );
    // Hand-made: general purpose flag bit 0 set in a plain archive's headers.
    let mut z = zip_with(
        &[("a.txt", b"hello")],
        SimpleFileOptions::default().compression_method(CompressionMethod::Stored),
    );
    set_flag_bit0(&mut z);
    assert_eq!(
        symbols(&[("a.zip", "application/zip", &z)]),
        [ATT_ARCHIVE_ENCRYPTED]
    );
}

/// Sets "encrypted" (bit 0 of the general purpose flags) in every local and central header.
fn set_flag_bit0(z: &mut [u8]) {
    for (sig, at) in [(b"PK\x03\x04", 6), (b"PK\x01\x02", 8)] {
        let starts: Vec<usize> = z
            .windows(4)
            .enumerate()
            .filter(|(_, w)| w == sig)
            .map(|(i, _)| i)
            .collect();
        for i in starts {
            z[i + at] |= 1;
        }
    }
}

#[test]
fn broken_archives() {
    let z = zip_of(&[("a.txt", b"hello"), ("b.txt", b"world")]);
    // Cut in the middle: no end of central directory.
    let cut = &z[..z.len() / 2];
    let f = analyse_with(
        &[("a.zip", "application/zip", cut)],
        &AttachmentsConfig::default(),
    );
    assert_eq!(f.symbols, [ATT_ARCHIVE_BROKEN]);
    assert!(f.details[0].contains("a.zip"), "{:?}", f.details);
    // Named and declared a zip, but not one at all.
    assert_eq!(
        symbols(&[("a.zip", "application/octet-stream", b"not a zip at all")]),
        [ATT_ARCHIVE_BROKEN]
    );
    assert_eq!(
        symbols(&[("x", "application/zip", b"")]),
        [ATT_ARCHIVE_BROKEN]
    );
    // Junk in front of a zip: readers still open it, and so do we.
    let mut prefixed = b"junk junk junk".to_vec();
    prefixed.extend(zip_of(&[("evil.exe", &pe())]));
    assert_eq!(
        symbols(&[("a.zip", "application/zip", &prefixed)]),
        [ATT_ARCHIVE_BLOCKED_EXT]
    );
    // A nested archive whose deflate stream is garbage.
    let inner = zip_of(&[("a.txt", b"hello hello hello hello hello")]);
    let mut outer = zip_of(&[("inner.zip", &inner)]);
    let data_at = 30 + "inner.zip".len();
    for b in outer.iter_mut().skip(data_at + 4).take(16) {
        *b ^= 0x5a;
    }
    let f = analyse_with(
        &[("o.zip", "application/zip", &outer)],
        &AttachmentsConfig::default(),
    );
    assert!(
        f.symbols.is_empty() || f.symbols == [ATT_ARCHIVE_BROKEN],
        "{f:?}"
    );
}

/// Patches every declared uncompressed size (local and central headers) to `size`.
fn declare_size(z: &mut [u8], size: u32) {
    for (sig, at) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
        let starts: Vec<usize> = z
            .windows(4)
            .enumerate()
            .filter(|(_, w)| w == sig)
            .map(|(i, _)| i)
            .collect();
        for i in starts {
            z[i + at..i + at + 4].copy_from_slice(&size.to_le_bytes());
        }
    }
}

#[test]
fn zip_bombs_are_named_not_inflated() {
    // 16 entries each declaring 4 GB in a few hundred bytes.
    let files: Vec<(String, Vec<u8>)> = (0..16)
        .map(|i| (format!("{i}.bin"), vec![0u8; 100]))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    let mut z = zip_with(
        &refs,
        SimpleFileOptions::default().compression_method(CompressionMethod::Stored),
    );
    declare_size(&mut z, 0xFFFF_FFF0);
    let t = Instant::now();
    assert_eq!(
        symbols(&[("b.zip", "application/zip", &z)]),
        [ATT_ARCHIVE_BOMB]
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // A nested archive that lies about its size (declares 100 bytes, inflates to 8 MiB):
    // reading stops at archive_unpack_limit.
    let zeros = vec![0u8; 8 << 20];
    let big_inner = zip_of(&[("zeros.bin", &zeros)]);
    let mut outer = zip_of(&[("inner.zip", &big_inner)]);
    declare_size(&mut outer, 100);
    let small = AttachmentsConfig {
        archive_unpack_limit: 64 << 10,
        ..AttachmentsConfig::default()
    };
    let f = analyse_with(&[("o.zip", "application/zip", &outer)], &small);
    assert_eq!(f.symbols, [ATT_ARCHIVE_BROKEN]);
    assert!(f.details[0].contains("o.zip/inner.zip"), "{:?}", f.details);
    // A nested archive honestly declaring more than the unpack limit: not opened.
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let large_inner = zip_with(&[("big.txt", &vec![b'a'; 100 << 10])], stored);
    let f = analyse_with(
        &[(
            "o.zip",
            "application/zip",
            &zip_of(&[("inner.zip", &large_inner)]),
        )],
        &small,
    );
    assert_eq!(f.symbols, [ATT_ARCHIVE_LIMIT]);
    let outer = zip_of(&[("inner.zip", &big_inner)]);
    // Within the default limit it is opened: 8 MiB in 8 KB, but below the ratio floor.
    let f = analyse_with(
        &[("o.zip", "application/zip", &outer)],
        &AttachmentsConfig::default(),
    );
    assert!(
        f.symbols.is_empty(),
        "8 MiB is below the ratio floor: {f:?}"
    );
    let zeros = vec![0u8; 20 << 20];
    let bomb = zip_of(&[("zeros.bin", &zeros)]);
    assert_eq!(
        symbols(&[("z.zip", "application/zip", &bomb)]),
        [ATT_ARCHIVE_BOMB]
    );
}

#[test]
fn entry_and_unpack_limits() {
    let files: Vec<(String, Vec<u8>)> =
        (0..50).map(|i| (format!("f{i}.txt"), vec![b'x'])).collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    let z = zip_of(&refs);
    let few = AttachmentsConfig {
        archive_max_entries: 10,
        ..AttachmentsConfig::default()
    };
    let f = analyse_with(&[("many.zip", "application/zip", &z)], &few);
    assert_eq!(f.symbols, [ATT_ARCHIVE_LIMIT]);
    assert!(f.archive_names.is_empty(), "not opened: {f:?}");
    assert!(f.details[0].contains("50 entries"), "{:?}", f.details);
    // The entry budget is per message, across archives.
    let f = analyse_with(
        &[
            ("a.zip", "application/zip", &z[..]),
            ("b.zip", "application/zip", &z[..]),
        ],
        &AttachmentsConfig {
            archive_max_entries: 60,
            ..AttachmentsConfig::default()
        },
    );
    assert_eq!(f.symbols, [ATT_ARCHIVE_LIMIT]);
    assert_eq!(f.archive_names.len(), 50);
}

#[test]
fn ten_thousand_entries_in_bounded_time() {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    for i in 0..10_000 {
        w.start_file(format!("dir/file{i}.txt"), stored)
            .expect("start_file");
        w.write_all(b"x").expect("write");
    }
    w.start_file("dir/last.exe", stored).expect("start_file");
    let z = w.finish().expect("finish").into_inner();
    let t = Instant::now();
    let f = analyse_with(
        &[("many.zip", "application/zip", &z)],
        &AttachmentsConfig::default(),
    );
    let took = t.elapsed();
    // The 10,001st entry is past archive_max_entries (10,000).
    assert_eq!(f.symbols, [ATT_ARCHIVE_LIMIT]);
    eprintln!("10,001-entry zip ({} bytes): {took:?}", z.len());
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn hostile_bytes_never_panic() {
    let base = zip_of(&[
        ("a.txt", b"hello hello hello"),
        ("inner.zip", &zip_of(&[("b.exe", b"MZ")])),
    ]);
    // Deterministic xorshift: flip, cut and splice bytes; every result must be a finding
    // or nothing, never a panic.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let cfg = AttachmentsConfig::default();
    for _ in 0..1500 {
        let mut z = base.clone();
        let edits = 1 + next() % 8;
        for _ in 0..edits {
            let at = (next() as usize) % z.len();
            match next() % 3 {
                0 => z[at] ^= (next() % 255 + 1) as u8,
                1 => z.truncate(at.max(1)),
                _ => z[at] = 0xFF,
            }
        }
        let mut findings = Findings::default();
        let mut budget = archive::Budget::new(&cfg);
        archive::inspect(&z, "f.zip", 1, &cfg, &mut budget, &mut findings);
    }
    // End-of-central-directory signatures everywhere.
    let junk = b"PK\x05\x06".repeat(250_000);
    let t = Instant::now();
    assert_eq!(
        symbols(&[("j.zip", "application/zip", &junk)]),
        [ATT_ARCHIVE_BROKEN]
    );
    eprintln!("1 MB of EOCD signatures: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}
