//! Graceful shutdown: SIGTERM/SIGINT → drain → stop.
//!
//! 1. **Drain** (at the signal): the listeners close; idle sessions get `421 4.3.2` and are
//!    closed; sessions inside a transaction go on, so a message the client is sending can
//!    still be filtered, relayed and acknowledged.
//! 2. **Stop** (after `[server] shutdown_grace`): sessions still waiting for their client get
//!    `421 4.3.2` and are closed. A session that is relaying a message right then finishes
//!    that exchange with the upstream first — cutting it would leave the client without the
//!    answer for a message the upstream may have taken, which is how mail gets duplicated.
//!
//! Either way nothing is acknowledged that the upstream did not accept.

use tokio::sync::watch;

/// What a session watches: the two phases.
#[derive(Clone)]
pub struct Shutdown {
    /// Becomes true at the signal.
    pub draining: watch::Receiver<bool>,
    /// Becomes true when the grace period is over.
    pub stop: watch::Receiver<bool>,
}

/// The sending side, kept by the server.
pub struct Trigger {
    draining: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

/// A new pair: the server keeps the trigger, every session gets a `Shutdown` clone.
pub fn channel() -> (Trigger, Shutdown) {
    let (draining_tx, draining) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    (
        Trigger {
            draining: draining_tx,
            stop: stop_tx,
        },
        Shutdown { draining, stop },
    )
}

impl Trigger {
    pub fn drain(&self) {
        let _ = self.draining.send(true);
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Waits until the process is asked to stop (SIGTERM or SIGINT).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
