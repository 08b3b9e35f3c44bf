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

/// The stop signals, registered: from then on SIGTERM and SIGINT are caught, not fatal.
/// Register before the listeners open, so a signal right after start still drains.
pub struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    pub fn register() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => {
                    tracing::warn!(
                        "cannot catch SIGTERM/SIGINT; stopping falls back to Ctrl-C only"
                    );
                    None
                }
            };
            Signals { streams }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits until the process is asked to stop (SIGTERM or SIGINT).
    pub async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.streams {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
