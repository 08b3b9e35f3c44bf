//! `[milter]`: the milter front end, for sites that keep their MTA on port 25 and add
//! mailwarden to it as Postfix's `smtpd_milters` (or Sendmail's `INPUT_MAIL_FILTER`).
//!
//! Off by default (no address). With `[server] listen = []` as well, the node is milter-only:
//! it needs no upstream and no Maildir, the MTA delivers what mailwarden lets through.

use std::time::Duration;

use serde::Deserialize;

/// `[milter]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MilterConfig {
    /// Where the MTA connects: `"127.0.0.1:11332"`, `"[::1]:11332"` or
    /// `"unix:/run/mailwarden/milter.sock"`. Empty: no milter.
    pub listen: Vec<String>,
    /// Seconds between progress packets while a long scan runs, so the MTA's
    /// `milter_content_timeout` does not fire.
    pub progress_secs: u64,
}

impl Default for MilterConfig {
    fn default() -> Self {
        MilterConfig {
            listen: Vec::new(),
            progress_secs: 10,
        }
    }
}

impl MilterConfig {
    /// Whether any milter listener is configured.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// The progress interval.
    pub fn progress_interval(&self) -> Duration {
        Duration::from_secs(self.progress_secs)
    }

    /// Checks the values; the error says what to write.
    pub fn validate(&self) -> Result<(), String> {
        for address in &self.listen {
            let ok = match address.strip_prefix("unix:") {
                Some(path) => path.starts_with('/'),
                None => address.parse::<std::net::SocketAddr>().is_ok(),
            };
            if !ok {
                return Err(format!(
                    "milter.listen: {address:?} is neither host:port (e.g. \"127.0.0.1:11332\") nor unix:/absolute/path (e.g. \"unix:/run/mailwarden/milter.sock\")"
                ));
            }
        }
        if self.progress_secs == 0 {
            return Err("milter.progress_secs: must be at least 1 second (default 10)".into());
        }
        Ok(())
    }
}
