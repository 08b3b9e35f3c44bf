//! The embedded delivery: accepted messages written to a local Maildir.
//!
//! This lets mailwarden run with no MTA behind it (the shipped default). Delivery follows the
//! Maildir protocol: write to `tmp/`, fsync the file, rename into `new/`, fsync the directory —
//! only then is the message safe, and only then does the client get its 250. The file uses LF
//! line endings (what mail readers expect on disk) and starts with `Return-Path:`, as a local
//! delivery agent writes it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A Maildir root with `tmp/`, `new/` and `cur/`.
#[derive(Debug)]
pub struct Maildir {
    root: PathBuf,
    hostname: String,
    counter: AtomicU64,
}

impl Maildir {
    /// Creates the directories if needed and checks that we can write there.
    pub fn open(root: &Path, hostname: &str) -> io::Result<Maildir> {
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create Maildir {}/{sub}: {e}", root.display()),
                )
            })?;
        }
        let probe = root
            .join("tmp")
            .join(format!(".mailwarden-probe-{}", std::process::id()));
        File::create(&probe)
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("Maildir {} is not writable: {e}", root.display()),
                )
            })?;
        Ok(Maildir {
            root: root.to_path_buf(),
            hostname: hostname.to_string(),
            counter: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Delivers one message (canonical CRLF) for `sender`; returns the file's name in `new/`.
    /// Blocking: call it from `spawn_blocking`.
    pub fn deliver(&self, sender: &str, message: &[u8]) -> io::Result<String> {
        let name = self.unique_name();
        let tmp = self.root.join("tmp").join(&name);
        let result = self.write_file(&tmp, sender, message).and_then(|()| {
            let new_dir = self.root.join("new");
            fs::rename(&tmp, new_dir.join(&name))?;
            File::open(&new_dir)?.sync_all()
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| name)
    }

    fn write_file(&self, path: &Path, sender: &str, message: &[u8]) -> io::Result<()> {
        let mut file = File::create_new(path)?;
        let mut out = Vec::with_capacity(message.len() + sender.len() + 20);
        out.extend_from_slice(format!("Return-Path: <{sender}>\n").as_bytes());
        let mut rest = message;
        while let Some(n) = memchr::memmem::find(rest, b"\r\n") {
            out.extend_from_slice(&rest[..n]);
            out.push(b'\n');
            rest = &rest[n + 2..];
        }
        out.extend_from_slice(rest);
        file.write_all(&out)?;
        file.sync_all()
    }

    /// `time.M<micros>P<pid>Q<n>.host` (the Maildir naming convention), unique per process.
    fn unique_name(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let host = self.hostname.replace(['/', ':'], "_");
        format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            n,
            host
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_into_new_with_lf_and_return_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = Maildir::open(dir.path(), "mx.example.test").expect("open");
        let name = md
            .deliver("a@example.test", b"Subject: x\r\n\r\nbody\r\n")
            .expect("deliver");
        let text = fs::read(dir.path().join("new").join(&name)).expect("read");
        assert_eq!(text, b"Return-Path: <a@example.test>\nSubject: x\n\nbody\n");
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );
    }

    #[test]
    fn names_are_unique() {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = Maildir::open(dir.path(), "h").expect("open");
        let a = md.deliver("", b"a\r\n").expect("a");
        let b = md.deliver("", b"b\r\n").expect("b");
        assert_ne!(a, b);
    }

    #[test]
    fn unwritable_root_is_a_clear_error() {
        let err = Maildir::open(Path::new("/proc/mailwarden-test"), "h").expect_err("proc");
        assert!(err.to_string().contains("/proc/mailwarden-test"), "{err}");
    }
}
