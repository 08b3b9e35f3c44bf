//! `[attachments]`: the attachment policy — which file extensions are blocked and how far
//! mailwarden looks inside zip archives.
//!
//! The policy itself (which symbol a finding sets, what it scores) lives in the rule files
//! (`rules/50_attachments.cf`), so admins re-score it like any other rule; this table only
//! says what counts as blocked and bounds the work spent on archives. The bounds exist because
//! an archive is attacker-controlled input: a zip bomb declares gigabytes in a few kilobytes,
//! and nested archives multiply that. Every value is checked while the file is read, so a bad
//! one is an error naming the file and line.

use serde::{Deserialize, Deserializer};

/// The extensions blocked by default: Windows executables and installers, scripts the
/// Windows Script Host or a shell runs on a double click, shortcuts, disk images (which
/// carry executables past Mark-of-the-Web), and macro-enabled Office documents.
pub const DEFAULT_BLOCKED_EXTENSIONS: &[&str] = &[
    // programs, installers, libraries
    "exe",
    "scr",
    "com",
    "pif",
    "cpl",
    "dll",
    "msi",
    "msp",
    "mst",
    "msc",
    "appx",
    "msix",
    "appxbundle",
    "msixbundle",
    "application",
    "gadget",
    "jar",
    "apk",
    // scripts
    "bat",
    "cmd",
    "js",
    "jse",
    "vbs",
    "vbe",
    "wsf",
    "wsh",
    "wsc",
    "hta",
    "ps1",
    "ps1xml",
    "ps2",
    "psc1",
    "psc2",
    "psm1",
    "reg",
    "inf",
    "scf",
    "sct",
    "shb",
    "lnk",
    "url",
    "settingcontent-ms",
    // disk images
    "iso",
    "img",
    "vhd",
    "vhdx",
    // macro-enabled Office documents and templates, add-ins
    "docm",
    "dotm",
    "xlsm",
    "xltm",
    "xlsb",
    "xlam",
    "xll",
    "pptm",
    "potm",
    "ppam",
    "ppsm",
    "sldm",
];

/// `[attachments]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttachmentsConfig {
    /// Run the attachment checks at all (the symbols never hit when false).
    pub enabled: bool,
    /// File extensions (without the dot, any case) that are blocked: a file name ending in
    /// one of them sets `ATT_BLOCKED_EXT` (attached directly) or `ATT_ARCHIVE_BLOCKED_EXT`
    /// (inside a zip). Writing the key replaces the default list.
    #[serde(deserialize_with = "extensions")]
    pub blocked_extensions: Vec<String>,
    /// How many levels of zip archives are opened: 1 reads the names in an attached zip, 2
    /// also those in zips inside it, and so on. An archive deeper than this is not opened and
    /// sets `ATT_ARCHIVE_TOO_DEEP`. 0 does not look inside archives. At most 16.
    #[serde(deserialize_with = "depth")]
    pub archive_depth: usize,
    /// Most archive entries looked at per message (all archives together). An archive with
    /// more entries than what is left is not opened (`ATT_ARCHIVE_LIMIT`): reading its
    /// directory alone would cost memory in proportion to its entries.
    #[serde(deserialize_with = "positive")]
    pub archive_max_entries: usize,
    /// Most bytes inflated per message to open nested archives (an attached zip itself is
    /// read in place; only a zip inside a zip has to be inflated to be read). A nested
    /// archive declaring more than what is left is not opened (`ATT_ARCHIVE_LIMIT`). Nothing
    /// else is ever decompressed.
    #[serde(deserialize_with = "positive")]
    pub archive_unpack_limit: usize,
    /// An archive whose entries declare more than this many bytes in total, uncompressed, is
    /// a zip bomb (`ATT_ARCHIVE_BOMB`); so is one that would expand more than 100 times to
    /// more than 16 MiB.
    #[serde(deserialize_with = "positive_u64")]
    pub archive_bomb_size: u64,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        AttachmentsConfig {
            enabled: true,
            blocked_extensions: DEFAULT_BLOCKED_EXTENSIONS
                .iter()
                .map(|e| e.to_string())
                .collect(),
            archive_depth: 3,
            archive_max_entries: 10_000,
            archive_unpack_limit: 16 << 20,
            archive_bomb_size: 1 << 30,
        }
    }
}

/// The deepest `archive_depth` accepted.
pub const MAX_ARCHIVE_DEPTH: usize = 16;

/// Extensions are written without the dot and compared in lower case; `"*.exe"` or
/// `".exe"` are accepted and normalised, anything with a space, a slash or a dot inside is an
/// error (it could never match).
fn extensions<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for raw in list {
        let ext = raw
            .trim()
            .trim_start_matches('*')
            .trim_start_matches('.')
            .to_ascii_lowercase();
        let bad = ext.is_empty()
            || ext
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '/' | '\\'));
        if bad {
            return Err(serde::de::Error::custom(format!(
                "attachments.blocked_extensions: {raw:?} is not a file extension; write it without the dot, e.g. \"exe\""
            )));
        }
        if !out.contains(&ext) {
            out.push(ext);
        }
    }
    Ok(out)
}

fn depth<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n > MAX_ARCHIVE_DEPTH {
        return Err(serde::de::Error::custom(format!(
            "attachments.archive_depth: {n} is too deep; at most {MAX_ARCHIVE_DEPTH} (0 does not open archives)"
        )));
    }
    Ok(n)
}

fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom(
            "must be at least 1 (set archive_depth = 0 to not open archives)",
        ));
    }
    Ok(n)
}

fn positive_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(n)
}

impl AttachmentsConfig {
    /// Whether `ext` (lower case, no dot) is blocked.
    pub fn is_blocked(&self, ext: &str) -> bool {
        self.blocked_extensions.iter().any(|b| b == ext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Wrap {
        #[serde(default)]
        attachments: AttachmentsConfig,
    }

    fn parse(text: &str) -> Result<AttachmentsConfig, String> {
        toml::from_str::<Wrap>(text)
            .map(|w| w.attachments)
            .map_err(|e| {
                let line = e
                    .span()
                    .map(|s| text[..s.start].matches('\n').count() + 1)
                    .unwrap_or(0);
                format!("line {line}: {}", e.message())
            })
    }

    #[test]
    fn defaults_cover_the_issue_list() {
        let c = parse("").expect("empty");
        assert!(c.enabled);
        assert_eq!(c.archive_depth, 3);
        for ext in [
            "exe", "scr", "com", "pif", "bat", "cmd", "js", "jse", "vbs", "vbe", "wsf", "hta",
            "msi", "lnk", "iso", "img", "docm", "xlsm", "pptm", "dotm", "xltm", "xlam", "potm",
            "ppam", "ppsm", "sldm",
        ] {
            assert!(c.is_blocked(ext), "{ext}");
        }
        assert!(!c.is_blocked("pdf") && !c.is_blocked("docx") && !c.is_blocked("zip"));
    }

    #[test]
    fn extensions_are_normalised_and_replace_the_default() {
        let c =
            parse("[attachments]\nblocked_extensions = [\"EXE\", \".js\", \"*.Bat\", \"exe\"]\n")
                .expect("valid");
        assert_eq!(c.blocked_extensions, ["exe", "js", "bat"]);
        assert!(!c.is_blocked("scr"));
    }

    #[test]
    fn bad_values_name_the_line() {
        let e = parse("[attachments]\nenabled = true\nblocked_extensions = [\"tar.gz\"]\n")
            .expect_err("dot inside");
        assert!(e.starts_with("line 3:") && e.contains("tar.gz"), "{e}");
        let e = parse("[attachments]\narchive_depth = 99\n").expect_err("too deep");
        assert!(e.starts_with("line 2:") && e.contains("at most 16"), "{e}");
        let e = parse("[attachments]\narchive_max_entries = 0\n").expect_err("zero");
        assert!(e.starts_with("line 2:"), "{e}");
        let e = parse("[attachments]\nblocked = []\n").expect_err("unknown key");
        assert!(e.starts_with("line 2:") && e.contains("blocked"), "{e}");
        let e = parse("[attachments]\narchive_unpack_limit = -1\n").expect_err("negative");
        assert!(e.starts_with("line 2:"), "{e}");
    }
}
