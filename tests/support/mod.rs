//! Shared helpers for mailwarden's integration tests.
//!
//! Every test binary that needs them says `mod support;`. The pieces:
//!
//! * [`Proxy`] runs the real `mailwarden serve` binary on a random loopback port with a
//!   config file in a temporary directory.
//! * [`Postfix`] runs a private Postfix instance (own config, queue, Maildir and log in a
//!   temporary directory) as a real, deliberately vulnerable upstream MTA.
//! * [`FakeUpstream`] is a scriptable SMTP server for fault injection that records what
//!   it was sent.
//! * [`Clamd`] runs a private, real ClamAV daemon with the EICAR test signatures
//!   (`tests/clamav/`); [`SilentClamd`] accepts connections and never answers.
//! * [`SmtpClient`] is a small blocking SMTP client that speaks raw bytes when a test needs
//!   to misbehave.
//! * [`redis`] runs private real Redis servers (standalone and a 3-master Cluster) for the
//!   state-store tests.
//! * [`messages`] loads the test messages in `tests/data/` and splits delivered Maildir
//!   files into "headers added on the way" and "the message as sent".
//!
//! Everything binds to 127.0.0.1 only, uses ports picked by the kernel and cleans up on
//! drop. When a test panics, the drop handlers print the proxy's, Postfix's and the fake
//! upstream's logs so a failure explains itself.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code, unused_imports)]

pub mod clamd;
pub mod client;
pub mod dns;
pub mod fake_upstream;
pub mod messages;
pub mod postfix;
pub mod proxy;
pub mod redis;

pub use clamd::{Clamd, SilentClamd};
pub use client::{Reply, SmtpClient};
pub use dns::Dns;
pub use fake_upstream::{Action, FakeUpstream, ReceivedMessage, Script};
pub use postfix::Postfix;
pub use proxy::Proxy;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A generous default for anything that waits on another process (2 noisy cores).
pub const LONG: Duration = Duration::from_secs(30);

/// A loopback port that nothing listens on right now (bind to port 0, then let go).
pub fn unused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local_addr of the probe listener")
        .port()
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `f` every 25 ms until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Finds an executable by name in `$PATH` and the usual sbin directories (root's `$PATH` is
/// not always complete under test harnesses).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Removes ANSI colour escape sequences (`ESC [ ... letter`) from log text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c2 in chars.by_ref() {
                    if c2.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Shows bytes with CR, LF and non-ASCII escaped, for assertion messages.
pub fn show(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n\n"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Like [`show`], but at most `max` bytes (head and tail) of a long input.
pub fn show_limited(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        return show(bytes);
    }
    let half = max / 2;
    format!(
        "{}\n... ({} bytes omitted) ...\n{}",
        show(&bytes[..half]),
        bytes.len() - 2 * half,
        show(&bytes[bytes.len() - half..])
    )
}

/// [`show`] of the bytes around `at` (±`radius`), marking the window.
pub fn show_around(bytes: &[u8], at: usize, radius: usize) -> String {
    let start = at.saturating_sub(radius).min(bytes.len());
    let end = (at + radius).min(bytes.len());
    format!(
        "[bytes {start}..{end} of {}]\n{}",
        bytes.len(),
        show(&bytes[start..end])
    )
}

/// Prints a named log block to stderr (captured by the test harness, shown on failure).
pub fn dump_log(name: &str, text: &str) {
    eprintln!("===== {name} (begin) =====\n{text}\n===== {name} (end) =====");
}
