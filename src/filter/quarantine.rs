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
        write_durably(&eml, message)?;
        let text = serde_json::to_vec_pretty(&verdict).map_err(io::Error::other)?;
        write_durably(&meta, &text)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(eml)
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}
