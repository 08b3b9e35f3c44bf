//! Messages named on the command line: single files, plain directories, Maildirs and mbox
//! files, read one message at a time.
//!
//! `learn` and `rules fit` take corpora the way admins keep them: a Maildir folder exported
//! from a mailbox (`cur/` and `new/`; `tmp/` holds deliveries in progress and is never read),
//! a directory of `.eml` files, or an mbox file (RFC 4155: messages separated by `From `
//! lines, with `>From ` quoting undone the mboxrd way). A file that does not start like a
//! message — a header field or an mbox `From ` line — is passed over and counted (a corpus
//! folder often holds index or metadata files), so one stray file never stops a long run.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why a path could not be read.
#[derive(Debug)]
pub enum SourceError {
    /// The path does not exist or cannot be read.
    Io { path: PathBuf, error: io::Error },
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Io { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for SourceError {}

/// One message read from a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMessage {
    /// Where it came from: the file path, or `mbox-path#N` for the Nth message of an mbox.
    pub label: String,
    pub raw: Vec<u8>,
}

/// What a walk over the sources found besides messages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Walk {
    pub messages: usize,
    /// Files passed over because they do not start like a message.
    pub not_messages: usize,
}

/// The message files under `path`, in name order: the path itself when it is a file, the
/// `cur/` and `new/` files of a Maildir, or the files of a plain directory (not recursive;
/// names starting with `.` are skipped).
fn files_of(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let io_err = |error| SourceError::Io {
        path: path.to_path_buf(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let maildir = ["cur", "new"]
        .iter()
        .map(|sub| path.join(sub))
        .filter(|p| p.is_dir())
        .collect::<Vec<_>>();
    let dirs = if maildir.is_empty() {
        vec![path.to_path_buf()]
    } else {
        maildir
    };
    let mut files = Vec::new();
    for dir in dirs {
        let entries = std::fs::read_dir(&dir).map_err(|error| SourceError::Io {
            path: dir.clone(),
            error,
        })?;
        for entry in entries {
            let entry = entry.map_err(|error| SourceError::Io {
                path: dir.clone(),
                error,
            })?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let is_file =
                entry.file_type().map(|t| t.is_file()).unwrap_or(false) || entry.path().is_file();
            if is_file {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Does this look like the start of a message: a header field name and a colon?
fn starts_like_message(raw: &[u8]) -> bool {
    let head = &raw[..raw.len().min(998)];
    match head.iter().position(|&b| b == b':') {
        Some(0) | None => false,
        // Field names in practice (RFC 5322 allows more, no real mail uses it).
        Some(colon) => head[..colon]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
    }
}

/// Splits an mbox (its first line starts with `From `) into messages.
fn split_mbox(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let mut previous_blank = true;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if previous_blank && line.starts_with(b"From ") {
            if let Some(mut m) = current.take() {
                drop_separator_blank_line(&mut m);
                messages.push(m);
            }
            current = Some(Vec::new());
            previous_blank = false;
            continue;
        }
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        previous_blank = content.is_empty();
        if let Some(m) = current.as_mut() {
            // mboxrd: one level of `>` quoting before `From ` is undone.
            let quoted = line.iter().take_while(|&&b| b == b'>').count();
            if quoted > 0 && line[quoted..].starts_with(b"From ") {
                m.extend_from_slice(&line[1..]);
            } else {
                m.extend_from_slice(line);
            }
        }
    }
    if let Some(mut m) = current {
        // mbox writers end the last message with the same blank line as the others.
        drop_separator_blank_line(&mut m);
        messages.push(m);
    }
    messages.retain(|m| !m.is_empty());
    messages
}

/// The blank line before a separator (and at the end of the file) belongs to the mbox, not
/// the message: without this, the same message would differ (another digest, learned twice)
/// from its copy in a Maildir or as the proxy saw it.
fn drop_separator_blank_line(m: &mut Vec<u8>) {
    if m.ends_with(b"\r\n\r\n") {
        m.truncate(m.len() - 2);
    } else if m.ends_with(b"\n\n") {
        m.truncate(m.len() - 1);
    }
}

/// Calls `each` with every message under `paths`, in order. Stops at the first path that
/// cannot be read; a file that is not a message is counted in the result instead.
pub fn for_each_message(
    paths: &[PathBuf],
    mut each: impl FnMut(SourceMessage),
) -> Result<Walk, SourceError> {
    let mut walk = Walk::default();
    for path in paths {
        for file in files_of(path)? {
            let raw = std::fs::read(&file).map_err(|error| SourceError::Io {
                path: file.clone(),
                error,
            })?;
            let label = file.display().to_string();
            if raw.starts_with(b"From ") {
                for (n, raw) in split_mbox(&raw).into_iter().enumerate() {
                    walk.messages += 1;
                    each(SourceMessage {
                        label: format!("{label}#{}", n + 1),
                        raw,
                    });
                }
            } else if starts_like_message(&raw) {
                walk.messages += 1;
                each(SourceMessage { label, raw });
            } else {
                walk.not_messages += 1;
            }
        }
    }
    Ok(walk)
}

/// Every message under `paths`, read into memory (for corpora that are scanned repeatedly).
pub fn read_all(paths: &[PathBuf]) -> Result<(Vec<SourceMessage>, Walk), SourceError> {
    let mut all = Vec::new();
    let walk = for_each_message(paths, |m| all.push(m))?;
    Ok((all, walk))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, body: &[u8]) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, body).expect("write");
    }

    #[test]
    fn maildir_reads_cur_and_new_but_not_tmp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = dir.path().join("Spam");
        write(&md.join("cur/1:2,S"), b"Subject: a\r\n\r\nx\r\n");
        write(&md.join("new/2"), b"Subject: b\r\n\r\ny\r\n");
        write(&md.join("tmp/3"), b"Subject: c\r\n\r\nz\r\n");
        let (all, walk) = read_all(&[md]).expect("read");
        assert_eq!(walk.messages, 2);
        assert!(all.iter().all(|m| !m.label.ends_with("tmp/3")));
    }

    #[test]
    fn plain_directory_skips_non_messages_and_dotfiles() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            &dir.path().join("00001.txt"),
            b"Return-Path: <a@b>\nSubject: x\n\nbody\n",
        );
        write(&dir.path().join("00001.json"), b"{\"id\": 1}");
        write(&dir.path().join(".index"), b"Subject: hidden\n\n");
        let (all, walk) = read_all(&[dir.path().to_path_buf()]).expect("read");
        assert_eq!((walk.messages, walk.not_messages), (1, 1));
        assert!(all[0].label.ends_with("00001.txt"));
    }

    #[test]
    fn mbox_is_split_and_unquoted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mbox = dir.path().join("inbox.mbox");
        write(
            &mbox,
            b"From a@b Mon Jan  1 00:00:00 2024\nSubject: one\n\nHello\nFrom here\n>From there\n\nFrom c@d Tue Jan  2 00:00:00 2024\nSubject: two\n\nbody\n",
        );
        let (all, walk) = read_all(&[mbox]).expect("read");
        assert_eq!(walk.messages, 2);
        // "From here" does not follow a blank line, so it is content, not a separator.
        assert_eq!(
            all[0].raw,
            b"Subject: one\n\nHello\nFrom here\nFrom there\n".to_vec()
        );
        assert_eq!(all[1].raw, b"Subject: two\n\nbody\n".to_vec());
        assert!(all[1].label.ends_with("inbox.mbox#2"));
    }

    #[test]
    fn mbox_blank_line_after_the_last_message_is_not_part_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mbox = dir.path().join("archive.mbox");
        write(
            &mbox,
            b"From a@b Mon Jan  1 00:00:00 2024\nSubject: one\n\nHello\n\nFrom c@d Tue Jan  2 00:00:00 2024\nSubject: two\n\nbody\n\n",
        );
        let (all, _) = read_all(&[mbox]).expect("read");
        assert_eq!(all[0].raw, b"Subject: one\n\nHello\n".to_vec());
        assert_eq!(all[1].raw, b"Subject: two\n\nbody\n".to_vec());
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it() {
        let err = read_all(&[PathBuf::from("/nonexistent/mailwarden-corpus")]).expect_err("error");
        assert!(err.to_string().contains("/nonexistent/mailwarden-corpus"));
    }
}
