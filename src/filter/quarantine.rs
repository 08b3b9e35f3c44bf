//! The quarantine: messages kept aside instead of relayed, each as `ID.eml` (the message as
//! received) and `ID.json` (the envelope and the verdict), written durably (fsync) before the
//! client is told anything.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::Scan;
use crate::envelope::Envelope;

#[derive(Debug)]
pub struct Quarantine {
    dir: PathBuf,
}

impl Quarantine {
    pub fn new(dir: &Path) -> Quarantine {
        Quarantine {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores one message; returns the path of the `.eml`. Blocking.
    pub fn store(&self, envelope: &Envelope, message: &[u8], scan: &Scan) -> io::Result<PathBuf> {
        fs::create_dir_all(&self.dir)?;
        let id: String = envelope
            .id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let eml = self.dir.join(format!("{id}.eml"));
        let meta = self.dir.join(format!("{id}.json"));
        let verdict = json!({
            "id": envelope.id,
            "client": envelope.client.addr.to_string(),
            "helo": envelope.client.helo,
            "from": envelope.mail_from.address,
            "rcpt": envelope.recipients.iter().map(|r| r.address.clone()).collect::<Vec<_>>(),
            "action": scan.decision.action.as_str(),
            "score": scan.score,
            "required": scan.decision.required,
            "reason": scan.decision.reason,
            "symbols": scan.symbols_json(),
        });
        let stored = write_durably(&eml, message)
            .and_then(|()| serde_json::to_vec_pretty(&verdict).map_err(io::Error::other))
            .and_then(|text| write_durably(&meta, &text))
            .and_then(|()| File::open(&self.dir)?.sync_all());
        if stored.is_err() {
            // The client is told to retry: a copy left here would be a second one after the
            // retry, and a half-written one only fills the disk further.
            for path in [&eml, &meta] {
                let _ = fs::remove_file(path);
            }
        }
        stored.map(|()| eml)
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::policy::Decision;

    fn envelope() -> Envelope {
        Envelope::example("12EFD47A36900005", &[])
    }

    fn scan() -> Scan {
        Scan {
            symbols: Vec::new(),
            score: 0.0,
            decision: Decision {
                action: crate::config::Action::Quarantine,
                score: 0.0,
                required: 5.0,
                reason: "test".into(),
                forced_by: Vec::new(),
                subject_prefix: None,
            },
            timed_out: false,
            elapsed: std::time::Duration::ZERO,
            classifier: None,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn stores_the_message_and_its_verdict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = Quarantine::new(dir.path());
        let eml = q
            .store(&envelope(), b"Subject: x\r\n\r\nx\r\n", &scan())
            .expect("store");
        assert_eq!(fs::read(eml).expect("eml"), b"Subject: x\r\n\r\nx\r\n");
        assert_eq!(
            names(dir.path()),
            ["12EFD47A36900005.eml", "12EFD47A36900005.json"]
        );
    }

    #[test]
    fn a_failed_store_leaves_nothing_behind() {
        // The verdict cannot be written (a directory is in the way): the message must not
        // stay either, or the client's retry would put a second copy next to it.
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("12EFD47A36900005.json")).expect("mkdir");
        let q = Quarantine::new(dir.path());
        assert!(q.store(&envelope(), b"x\r\n", &scan()).is_err());
        assert_eq!(names(dir.path()), ["12EFD47A36900005.json"]);
    }
}
