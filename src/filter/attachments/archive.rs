//! Looking inside zip archives for the attachment policy, without unpacking them.
//!
//! An archive is attacker-controlled: it can declare terabytes in a few kilobytes (a zip
//! bomb), nest archives inside archives, or simply be broken. So the names, encryption flags
//! and declared sizes come from the central directory alone (the zip crate reads it; nothing is
//! decompressed for that), and the only thing ever inflated is an archive nested inside
//! another one, which has to be to be read. That happens only within the depth
//! (`archive_depth`) and the byte budget (`archive_unpack_limit`) of the message, and reading
//! stops at the budget whatever the entry declares. The number of entries looked at per message
//! is bounded too (`archive_max_entries`). Whatever goes wrong becomes a finding; nothing
//! here fails or panics.

use std::io::{Cursor, Read};

use zip::ZipArchive;
use zip::result::ZipError;

use super::{
    ATT_ARCHIVE_BOMB, ATT_ARCHIVE_BROKEN, ATT_ARCHIVE_ENCRYPTED, ATT_ARCHIVE_LIMIT,
    ATT_ARCHIVE_TOO_DEEP, Findings, check_name,
};
use crate::config::AttachmentsConfig;

/// The smallest zip archive (an end-of-central-directory record alone).
const MIN_ZIP: u64 = 22;
/// The local file header signature: what a zip archive starts with.
const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";
/// The signature of a central directory record (one per entry).
const CENTRAL_RECORD: &[u8; 4] = b"PK\x01\x02";
/// An archive expanding more than this many times…
const BOMB_RATIO: u64 = 100;
/// …to more than this many bytes is a zip bomb whatever `archive_bomb_size` says.
const BOMB_RATIO_MIN_SIZE: u64 = 16 << 20;

/// What is left of the per-message limits.
#[derive(Debug)]
pub(super) struct Budget {
    entries: usize,
    unpack: usize,
}

impl Budget {
    pub(super) fn new(config: &AttachmentsConfig) -> Budget {
        Budget {
            entries: config.archive_max_entries,
            unpack: config.archive_unpack_limit,
        }
    }
}

/// An entry that may be an archive itself, to be sniffed once the central directory is read.
struct Candidate {
    index: usize,
    name: String,
    size: u64,
}

/// Looks at the zip archive `data` found at nesting `level` (1: attached to the message);
/// `shown` names it in the findings (`invoice.zip`, `outer.zip/inner.zip`).
pub(super) fn inspect(
    data: &[u8],
    shown: &str,
    level: usize,
    config: &AttachmentsConfig,
    budget: &mut Budget,
    f: &mut Findings,
) {
    // The zip crate reads the whole central directory into memory (about 300 bytes an
    // entry: 90 MB for the 300,000 entries that fit in 25 MB), so an archive with more
    // entries than the budget allows is not handed to it. Counting the record signatures is
    // one fast pass; it may over-count (a stored archive inside holds records too), never
    // under-count.
    let records = memchr::memmem::find_iter(data, CENTRAL_RECORD).count();
    if records > budget.entries {
        f.hit(
            ATT_ARCHIVE_LIMIT,
            format!(
                "{shown}: {records} entries, more than archive_max_entries ({}) leaves; not opened",
                config.archive_max_entries
            ),
        );
        return;
    }
    let mut zip = match ZipArchive::new(Cursor::new(data)) {
        Ok(zip) => zip,
        Err(e) => {
            f.hit(ATT_ARCHIVE_BROKEN, format!("{shown}: {e}"));
            return;
        }
    };
    let mut declared: u64 = 0;
    let mut candidates = Vec::new();
    for index in 0..zip.len() {
        if budget.entries == 0 {
            f.hit(
                ATT_ARCHIVE_LIMIT,
                format!(
                    "{shown}: more entries than archive_max_entries ({}); the rest not looked at",
                    config.archive_max_entries
                ),
            );
            break;
        }
        budget.entries -= 1;
        let entry = match zip.by_index_data(index) {
            Ok(entry) => entry,
            Err(e) => {
                f.hit(ATT_ARCHIVE_BROKEN, format!("{shown}: entry {index}: {e}"));
                continue;
            }
        };
        let name = match entry.name() {
            Ok(name) => name.into_owned(),
            Err(_) => String::from_utf8_lossy(entry.name_raw()).into_owned(),
        };
        declared = declared.saturating_add(entry.size());
        if entry.is_dir() {
            continue;
        }
        check_name(&name, config, true, f);
        if entry.encrypted() {
            f.hit(
                ATT_ARCHIVE_ENCRYPTED,
                format!("{shown}: {name:?} is encrypted"),
            );
        } else if entry.size() >= MIN_ZIP {
            candidates.push(Candidate {
                index,
                name: name.clone(),
                size: entry.size(),
            });
        }
        f.archive_names.push(name);
    }
    let ratio_bomb =
        declared > BOMB_RATIO_MIN_SIZE && declared / (data.len() as u64).max(1) > BOMB_RATIO;
    if declared > config.archive_bomb_size || ratio_bomb {
        f.hit(
            ATT_ARCHIVE_BOMB,
            format!(
                "{shown}: declares {declared} bytes uncompressed in {} bytes",
                data.len()
            ),
        );
        // Its nested archives are not opened: they are the bomb's next stage.
        return;
    }
    for c in candidates {
        open_nested(&mut zip, c, shown, level, config, budget, f);
    }
}

/// Sniffs one entry and, when it is a zip archive and the limits allow, inflates and
/// inspects it.
fn open_nested(
    zip: &mut ZipArchive<Cursor<&[u8]>>,
    c: Candidate,
    shown: &str,
    level: usize,
    config: &AttachmentsConfig,
    budget: &mut Budget,
    f: &mut Findings,
) {
    let inner = format!("{shown}/{}", c.name);
    let mut file = match zip.by_index(c.index) {
        Ok(file) => file,
        // A compression method we do not inflate (bzip2, LZMA, …): not readable here, which
        // is not the archive's fault.
        Err(ZipError::UnsupportedArchive(_) | ZipError::CompressionMethodNotSupported(_)) => {
            return;
        }
        Err(e) => {
            f.hit(ATT_ARCHIVE_BROKEN, format!("{inner}: {e}"));
            return;
        }
    };
    let mut head = [0u8; 4];
    if let Err(e) = file.read_exact(&mut head) {
        f.hit(ATT_ARCHIVE_BROKEN, format!("{inner}: {e}"));
        return;
    }
    if &head != ZIP_MAGIC {
        return;
    }
    if level >= config.archive_depth {
        f.hit(
            ATT_ARCHIVE_TOO_DEEP,
            format!(
                "{inner}: a zip archive at depth {} (archive_depth = {}); not opened",
                level + 1,
                config.archive_depth
            ),
        );
        return;
    }
    let declared = usize::try_from(c.size).unwrap_or(usize::MAX);
    if declared > budget.unpack {
        f.hit(
            ATT_ARCHIVE_LIMIT,
            format!(
                "{inner}: {} bytes would exceed archive_unpack_limit; not opened",
                c.size
            ),
        );
        return;
    }
    // Read at most one byte more than the budget: an entry lying about its size cannot make
    // us inflate more than that.
    let mut content = head.to_vec();
    let cap = (budget.unpack.saturating_sub(content.len()) as u64).saturating_add(1);
    if let Err(e) = (&mut file).take(cap).read_to_end(&mut content) {
        f.hit(ATT_ARCHIVE_BROKEN, format!("{inner}: {e}"));
        return;
    }
    drop(file);
    if content.len() > budget.unpack {
        budget.unpack = 0;
        f.hit(
            ATT_ARCHIVE_LIMIT,
            format!("{inner}: inflates beyond archive_unpack_limit; not opened"),
        );
        return;
    }
    budget.unpack -= content.len();
    inspect(&content, &inner, level + 1, config, budget, f);
}
