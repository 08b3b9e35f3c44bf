//! The attachment policy: what a message's attachments are, as rule symbols.
//!
//! Malware arrives as a file the recipient is meant to open: a program or script under its
//! own name (`ATT_BLOCKED_EXT`), one disguised as a document (`invoice.pdf.exe`, or a
//! right-to-left override that makes `exe.pdf` appear: `ATT_DOUBLE_EXT`; a "PDF" whose bytes
//! are a Windows program: `ATT_TYPE_MISMATCH`), or one packed into a zip archive, possibly
//! password-protected or nested, so that a scanner looking only at the attachment's name sees
//! `invoice.zip` (`ATT_ARCHIVE_*`). This module finds those and returns them as symbols; the
//! engine presets them before the rules run, so their scores and descriptions live in the
//! rule files (`rules/50_attachments.cf`), admins re-score them there and meta rules combine
//! them like any other. Which extensions are blocked, and how far archives are opened, is
//! `[attachments]` in the config.
//!
//! No clamd is needed: only file names, the first bytes of each attachment and the zip
//! central directories are looked at. The work is bounded for any input (see `archive.rs`).

mod archive;

use crate::config::AttachmentsConfig;
use crate::filter::message::{Attachment, Message};

/// A directly attached file has a blocked extension.
pub const ATT_BLOCKED_EXT: &str = "ATT_BLOCKED_EXT";
/// A file name disguised as something else: a document extension followed by a blocked one
/// (`invoice.pdf.exe`, also with spaces between), or a Unicode direction override.
pub const ATT_DOUBLE_EXT: &str = "ATT_DOUBLE_EXT";
/// The attachment's content is of a more dangerous kind than its declared type or file name
/// says (a Windows program declared as a PDF or image, an archive declared as an image, …).
pub const ATT_TYPE_MISMATCH: &str = "ATT_TYPE_MISMATCH";
/// A file inside a zip archive has a blocked extension.
pub const ATT_ARCHIVE_BLOCKED_EXT: &str = "ATT_ARCHIVE_BLOCKED_EXT";
/// A zip archive with encrypted (password-protected) entries: their content cannot be
/// checked by anyone but the recipient.
pub const ATT_ARCHIVE_ENCRYPTED: &str = "ATT_ARCHIVE_ENCRYPTED";
/// Zip archives nested deeper than `archive_depth`; the deepest was not opened.
pub const ATT_ARCHIVE_TOO_DEEP: &str = "ATT_ARCHIVE_TOO_DEEP";
/// A zip archive (by content, name or declared type) that cannot be read.
pub const ATT_ARCHIVE_BROKEN: &str = "ATT_ARCHIVE_BROKEN";
/// A zip archive declaring far more content than it could plausibly hold (a zip bomb).
pub const ATT_ARCHIVE_BOMB: &str = "ATT_ARCHIVE_BOMB";
/// An archive was not opened because of `archive_max_entries` or `archive_unpack_limit`.
pub const ATT_ARCHIVE_LIMIT: &str = "ATT_ARCHIVE_LIMIT";

/// Every symbol this module sets, in the order they are reported.
pub const SYMBOLS: &[&str] = &[
    ATT_BLOCKED_EXT,
    ATT_DOUBLE_EXT,
    ATT_TYPE_MISMATCH,
    ATT_ARCHIVE_BLOCKED_EXT,
    ATT_ARCHIVE_ENCRYPTED,
    ATT_ARCHIVE_TOO_DEEP,
    ATT_ARCHIVE_BROKEN,
    ATT_ARCHIVE_BOMB,
    ATT_ARCHIVE_LIMIT,
];

/// At most this many findings are described in [`Findings::details`] (an archive of
/// 10,000 programs is one symbol, not 10,000 log lines).
const MAX_DETAILS: usize = 32;

/// What the attachment checks found in one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// The symbols that hit, each once, in [`SYMBOLS`] order.
    pub symbols: Vec<&'static str>,
    /// Names of the files inside the message's zip archives (their paths in the archive,
    /// nested archives included), for `attachment NAME archive_filename =~ /re/` rules.
    pub archive_names: Vec<String>,
    /// One line per finding, naming the file (for the log); the first 32 only.
    pub details: Vec<String>,
}

impl Findings {
    fn hit(&mut self, symbol: &'static str, detail: String) {
        if !self.symbols.contains(&symbol) {
            self.symbols.push(symbol);
        }
        if self.details.len() < MAX_DETAILS {
            self.details.push(format!("{symbol}: {detail}"));
        }
    }

    fn sort(&mut self) {
        self.symbols
            .sort_by_key(|s| SYMBOLS.iter().position(|x| x == s).unwrap_or(usize::MAX));
    }
}

/// Checks every attachment of `message` (and the files inside its zip archives) against
/// the policy. Never fails: what cannot be read is itself a finding.
pub fn analyse(message: &Message, config: &AttachmentsConfig) -> Findings {
    let mut findings = Findings::default();
    if !config.enabled {
        return findings;
    }
    let mut budget = archive::Budget::new(config);
    for att in message.attachments() {
        let name = att.filename.as_deref().unwrap_or("");
        check_name(name, config, false, &mut findings);
        check_type(message, att, &mut findings);
        if config.archive_depth > 0 && looks_like_zip(att) {
            let shown = if name.is_empty() {
                format!("part {}", att.part)
            } else {
                name.to_string()
            };
            match message.part_content(att.part) {
                Some(content) => {
                    archive::inspect(&content, &shown, 1, config, &mut budget, &mut findings)
                }
                None => findings.hit(ATT_ARCHIVE_BROKEN, format!("{shown}: no content")),
            }
        }
    }
    findings.sort();
    findings
}

/// Whether an attachment is to be opened as a zip archive: by its content, or by what it
/// claims to be (a "zip" that does not start like one may still open: zip readers find the
/// archive from its end, so junk put in front hides it from a first-bytes check).
fn looks_like_zip(att: &Attachment) -> bool {
    let named_zip = att
        .filename
        .as_deref()
        .and_then(|n| extensions(n).0)
        .is_some_and(|e| e == "zip");
    let declared_zip = matches!(
        att.declared_type.as_str(),
        "application/zip" | "application/x-zip-compressed" | "application/x-zip"
    );
    att.sniffed_type == Some("application/zip") || named_zip || declared_zip
}

/// Checks one file name (an attachment's, or one inside an archive).
fn check_name(name: &str, config: &AttachmentsConfig, in_archive: bool, f: &mut Findings) {
    if name.is_empty() {
        return;
    }
    let (last, before) = extensions(name);
    let blocked = last.as_deref().is_some_and(|e| config.is_blocked(e));
    if blocked {
        let (symbol, place) = if in_archive {
            (ATT_ARCHIVE_BLOCKED_EXT, "in an archive")
        } else {
            (ATT_BLOCKED_EXT, "attached")
        };
        f.hit(symbol, format!("{name:?} ({place})"));
    }
    let decoy = before.as_deref().is_some_and(is_decoy);
    if blocked && decoy {
        f.hit(ATT_DOUBLE_EXT, format!("{name:?}"));
    } else if name.chars().any(is_direction_override) {
        f.hit(
            ATT_DOUBLE_EXT,
            format!("{name:?} (text direction override in the name)"),
        );
    }
}

/// The last and the second-to-last extension of a file name (lower case), from its last
/// path component. Windows ignores trailing dots and spaces (`evil.exe.` runs `evil.exe`), so
/// they are ignored here too; spaces padding an extension (`invoice.pdf      .exe`) are
/// trimmed.
pub fn extensions(name: &str) -> (Option<String>, Option<String>) {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let base = base.trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    let mut pieces = base.rsplit('.');
    let last = pieces.next();
    let before = pieces.next();
    // "exe" alone (no dot) has no extension; ".exe" (a dot file) is one.
    let Some(before) = before else {
        return (None, None);
    };
    let ext = |s: &str| {
        let s = s.trim().to_ascii_lowercase();
        (!s.is_empty()).then_some(s)
    };
    // The piece before the last dot is an extension only when something precedes it.
    let before_ext = if pieces.next().is_some() {
        ext(before)
    } else {
        None
    };
    (last.and_then(ext), before_ext)
}

/// Extensions of harmless-looking files, used as the first half of a double extension.
fn is_decoy(ext: &str) -> bool {
    matches!(
        ext,
        "pdf"
            | "doc"
            | "docx"
            | "xls"
            | "xlsx"
            | "ppt"
            | "pptx"
            | "odt"
            | "ods"
            | "odp"
            | "rtf"
            | "txt"
            | "csv"
            | "xml"
            | "htm"
            | "html"
            | "jpg"
            | "jpeg"
            | "png"
            | "gif"
            | "bmp"
            | "tif"
            | "tiff"
            | "webp"
            | "heic"
            | "mp3"
            | "mp4"
            | "wav"
            | "avi"
            | "mov"
            | "mpg"
            | "mpeg"
            | "zip"
            | "rar"
            | "7z"
            | "eml"
            | "msg"
    )
}

/// Unicode controls that reorder how a name is displayed (U+202E makes `invoice\u{202E}fdp.exe`
/// show as `invoiceexe.pdf`).
fn is_direction_override(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// What a file claims to be (from its declared type or its file name), coarsely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Pdf,
    Image,
    Media,
    Text,
    Office,
}

/// What a file's first bytes say it is, coarsely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Executable,
    Zip,
    OtherArchive,
    /// OLE compound file: old Office documents, MSI installers.
    Ole,
    Rtf,
    Harmless,
}

fn claim_of_type(declared: &str) -> Option<Claim> {
    let (top, sub) = declared.split_once('/').unwrap_or((declared, ""));
    match top {
        "image" => Some(Claim::Image),
        "audio" | "video" => Some(Claim::Media),
        "text" => Some(Claim::Text),
        "application" => match sub {
            "pdf" => Some(Claim::Pdf),
            "msword" | "rtf" => Some(Claim::Office),
            s if s.starts_with("vnd.ms-")
                || s.starts_with("vnd.openxmlformats-")
                || s.starts_with("vnd.oasis.opendocument.") =>
            {
                Some(Claim::Office)
            }
            _ => None,
        },
        _ => None,
    }
}

fn claim_of_extension(ext: &str) -> Option<Claim> {
    Some(match ext {
        "pdf" => Claim::Pdf,
        "jpg" | "jpeg" | "png" | "gif" | "bmp" | "tif" | "tiff" | "webp" | "heic" => Claim::Image,
        "mp3" | "mp4" | "wav" | "avi" | "mov" | "mpg" | "mpeg" => Claim::Media,
        "txt" | "csv" => Claim::Text,
        "doc" | "docx" | "xls" | "xlsx" | "ppt" | "pptx" | "odt" | "ods" | "odp" | "rtf" => {
            Claim::Office
        }
        _ => return None,
    })
}

/// Whether `content` (what the sniffer recognised) is worse than what `claim` promises.
fn mismatch(claim: Claim, content: Content) -> bool {
    match content {
        Content::Executable => true,
        Content::Zip => claim != Claim::Office,
        Content::OtherArchive | Content::Ole => claim != Claim::Office,
        Content::Rtf => matches!(claim, Claim::Pdf | Claim::Image | Claim::Media),
        Content::Harmless => false,
    }
}

/// Declared type and file name against the sniffed content. A generic declared type
/// (`application/octet-stream`) and an unknown extension claim nothing and never mismatch.
fn check_type(message: &Message, att: &Attachment, f: &mut Findings) {
    let Some(sniffed) = att.sniffed_type else {
        return;
    };
    let content = match sniffed {
        "application/x-msdownload" => {
            // "MZ" is two bytes, and a text may start with them: count it as a program only
            // when the PE header is where the DOS header says it is.
            if message.part_content(att.part).is_some_and(|c| is_pe(&c)) {
                Content::Executable
            } else {
                Content::Harmless
            }
        }
        "application/x-elf" => Content::Executable,
        "application/zip" => Content::Zip,
        "application/gzip" | "application/x-rar" | "application/x-7z-compressed" => {
            Content::OtherArchive
        }
        "application/x-ole-storage" => Content::Ole,
        "application/rtf" => Content::Rtf,
        _ => Content::Harmless,
    };
    if content == Content::Harmless {
        return;
    }
    let by_type = claim_of_type(&att.declared_type);
    let by_name = att
        .filename
        .as_deref()
        .and_then(|n| extensions(n).0)
        .and_then(|e| claim_of_extension(&e));
    for (claim, what) in [
        (by_type, format!("declared {}", att.declared_type)),
        (by_name, "named".to_string()),
    ] {
        if let Some(claim) = claim
            && mismatch(claim, content)
        {
            let name = att.filename.as_deref().unwrap_or("");
            f.hit(
                ATT_TYPE_MISMATCH,
                format!("{name:?} {what} but its content is {sniffed}"),
            );
            return;
        }
    }
}

/// A Windows PE image: "MZ", and "PE\0\0" at the offset stored at 0x3c.
fn is_pe(content: &[u8]) -> bool {
    let Some(offset) = content
        .get(0x3c..0x40)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
    else {
        return false;
    };
    let offset = u32::from_le_bytes(offset) as usize;
    content.starts_with(b"MZ")
        && offset
            .checked_add(4)
            .and_then(|end| content.get(offset..end))
            .is_some_and(|sig| sig == b"PE\0\0")
}

#[cfg(test)]
mod tests;
