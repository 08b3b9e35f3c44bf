//! `[clamav]`: virus scanning with ClamAV's clamd — where clamd listens, how long to wait for
//! it, and what a virus or a failed scan means for the message.
//!
//! Off by default: mailwarden cannot know whether a clamd runs next to it, and a scanner that
//! is configured but absent would defer every message (`on_error = "tempfail"`). Turning it on
//! is one line, `enabled = true`, with clamd's Debian defaults for the rest.

use std::path::PathBuf;

use serde::Deserialize;

/// clamd's default `StreamMaxLength` (clamd.conf(5)): 25 MiB.
pub const CLAMD_STREAM_MAX_LENGTH: usize = 25 * 1024 * 1024;

/// `[clamav]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClamavConfig {
    /// Scan every message with clamd.
    pub enabled: bool,
    /// `"HOST:PORT"` (clamd's `TCPSocket`/`TCPAddr`) or `"unix:/PATH"` (its `LocalSocket`,
    /// Debian: `/run/clamav/clamd.ctl`).
    pub address: String,
    /// Time for the whole scan of one message: waiting for a free scan slot, connecting,
    /// sending it and clamd's answer.
    pub timeout_ms: u64,
    /// Time to wait for the connection to clamd (part of `timeout_ms`).
    pub connect_timeout_ms: u64,
    /// What to do with a message clamd finds a virus in.
    pub on_virus: OnVirus,
    /// What to do when clamd cannot give an answer (unreachable, timeout, `ERROR` reply).
    pub on_error: OnError,
    /// Larger messages are not sent to clamd (symbol `AV_SKIPPED_SIZE`). Keep it at or below
    /// clamd's `StreamMaxLength`, or clamd answers `INSTREAM size limit exceeded. ERROR`,
    /// which counts as a failed scan.
    pub max_size: usize,
    /// Most scans in flight at once (each is one connection to clamd); more messages wait for
    /// a slot. Keep it at or below clamd's `MaxThreads` (default 10).
    pub max_concurrent: usize,
}

impl Default for ClamavConfig {
    fn default() -> Self {
        ClamavConfig {
            enabled: false,
            address: "127.0.0.1:3310".to_string(),
            timeout_ms: 10_000,
            connect_timeout_ms: 2_000,
            on_virus: OnVirus::Reject,
            on_error: OnError::Tempfail,
            max_size: CLAMD_STREAM_MAX_LENGTH,
            max_concurrent: 8,
        }
    }
}

/// `clamav.on_virus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnVirus {
    /// Refuse with `554 5.7.1` naming the signature; the upstream never sees the message.
    Reject,
    /// Keep it in `policy.quarantine_dir` (the client gets 250); without a quarantine
    /// directory, reject.
    Quarantine,
    /// Relay it with `X-Virus-Found: NAME` and the spam tag (`X-Spam-Flag: YES`, subject prefix).
    Tag,
}

/// `clamav.on_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// `451 4.7.0`: the client keeps the message and retries later; nothing is lost.
    Tempfail,
    /// Relay it unscanned with `X-Virus-Scan: failed` (symbol `AV_FAIL`).
    Accept,
}

/// Where clamd listens, parsed from `clamav.address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    /// `host:port` (a name is resolved at each connection).
    Tcp(String),
    /// A unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClamdAddress::Tcp(hostport) => f.write_str(hostport),
            ClamdAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ClamavConfig {
    /// Parses `address`; the error says what to write instead.
    pub fn clamd_address(&self) -> Result<ClamdAddress, String> {
        let a = self.address.trim();
        if let Some(path) = a.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "clamav.address: {a:?} needs an absolute socket path, e.g. \"unix:/run/clamav/clamd.ctl\""
                ));
            }
            return Ok(ClamdAddress::Unix(PathBuf::from(path)));
        }
        let valid = match a.rsplit_once(':') {
            Some((host, port)) => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                !host.is_empty()
                    && !host.contains(char::is_whitespace)
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            }
            None => false,
        };
        if !valid {
            return Err(format!(
                "clamav.address: {a:?} is not a clamd address; write \"HOST:PORT\" (e.g. \"127.0.0.1:3310\", clamd's TCPSocket) or \"unix:/PATH\" (e.g. \"unix:/run/clamav/clamd.ctl\", its LocalSocket)"
            ));
        }
        Ok(ClamdAddress::Tcp(a.to_string()))
    }

    /// Checks the values (also when disabled, so a typo shows before it is switched on).
    pub fn validate(&self) -> Result<(), String> {
        self.clamd_address()?;
        if self.timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err(
                "clamav.timeout_ms and clamav.connect_timeout_ms must be at least 1 (milliseconds)"
                    .into(),
            );
        }
        if self.max_concurrent == 0 {
            return Err(
                "clamav.max_concurrent must be at least 1 (scans in flight at once)".into(),
            );
        }
        if self.max_size == 0 {
            return Err(format!(
                "clamav.max_size must be at least 1 byte (clamd's default StreamMaxLength is {CLAMD_STREAM_MAX_LENGTH})"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<ClamavConfig, String> {
        let c: ClamavConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_are_off_and_clamd_like() {
        let c = parse("").expect("empty");
        assert!(!c.enabled);
        assert_eq!(c.max_size, 26_214_400);
        assert_eq!(c.on_virus, OnVirus::Reject);
        assert_eq!(c.on_error, OnError::Tempfail);
        assert_eq!(
            c.clamd_address(),
            Ok(ClamdAddress::Tcp("127.0.0.1:3310".into()))
        );
    }

    #[test]
    fn the_issue_example_parses() {
        let c = parse(
            "enabled = true\naddress = \"127.0.0.1:3310\"\ntimeout_ms = 10000\non_virus = \"reject\"\non_error = \"tempfail\"\n",
        )
        .expect("valid");
        assert!(c.enabled);
        let c = parse("address = \"unix:/run/clamav/clamd.ctl\"\non_virus = \"quarantine\"\non_error = \"accept\"\n")
            .expect("unix");
        assert_eq!(
            c.clamd_address(),
            Ok(ClamdAddress::Unix("/run/clamav/clamd.ctl".into()))
        );
        assert_eq!(c.on_virus, OnVirus::Quarantine);
        assert_eq!(c.on_error, OnError::Accept);
        assert!(parse("address = \"[::1]:3310\"\non_virus = \"tag\"\n").is_ok());
        assert!(parse("address = \"clamav:3310\"\n").is_ok());
    }

    #[test]
    fn bad_values_say_what_to_write() {
        for bad in [
            "3310",
            "127.0.0.1",
            "127.0.0.1:0",
            "unix:clamd.ctl",
            "host:x",
            ":3310",
        ] {
            let e = parse(&format!("address = \"{bad}\"\n")).expect_err(bad);
            assert!(e.contains("clamav.address"), "{bad}: {e}");
        }
        assert!(parse("on_virus = \"drop\"\n").is_err());
        assert!(parse("on_error = \"Tempfail\"\n").is_err());
        assert!(parse("max_concurrent = 0\n").is_err());
        assert!(parse("timeout_ms = 0\n").is_err());
        assert!(parse("scan_timeout = 5\n").is_err(), "unknown key");
    }
}
