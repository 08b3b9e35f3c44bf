//! Operating-system limits the server needs: enough file descriptors for its sessions.
//!
//! Every client session holds its socket and, while relaying, one to the upstream (plus clamd
//! during a scan), so `max_sessions = 1000` needs well over 2,000 descriptors — more than the
//! usual soft limit of 1,024. Like most servers, mailwarden raises its soft limit to the hard
//! limit at start-up, and warns when even that is too low for the configured sessions (the
//! fix: `LimitNOFILE=` in the systemd unit, `ulimit -n`, or a lower `max_sessions`).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors one session may hold at once: client, upstream, clamd.
const PER_SESSION: u64 = 3;
/// Listeners, log, metrics endpoint, rule files, DNS sockets.
const RESERVE: u64 = 64;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force.
pub fn raise_file_limit(max_sessions: usize) -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current, limit.maximum);
    let wanted = hard;
    let now = if wanted > soft {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: wanted,
                maximum: hard,
            },
        ) {
            Ok(()) => wanted,
            Err(e) => {
                tracing::warn!(error = %e, "could not raise the open file limit");
                soft
            }
        }
    } else {
        soft
    };
    let needed = max_sessions as u64 * PER_SESSION + RESERVE;
    match now {
        Some(n) if n < needed => tracing::warn!(
            limit = n,
            needed,
            "open file limit too low for server.max_sessions = {max_sessions}: sessions beyond it fail to connect upstream; raise it (systemd: LimitNOFILE={needed}) or lower max_sessions"
        ),
        _ => {}
    }
    now
}
