//! Hot reload: SIGHUP, or a change to any rule or list file, rebuilds the engine in the
//! background and swaps it in atomically. Changes are debounced (an editor's save is several
//! events). A broken file keeps the old engine running; the error is logged with file:line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Filter;

/// How long to wait after the last change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Starts the reloader task; it runs until the process ends.
pub fn spawn(filter: Arc<Filter>, watch_files: bool) {
    let (tx, mut rx) = mpsc::channel::<&'static str>(16);
    #[cfg(unix)]
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP; reload by signal is unavailable");
                return;
            };
            while hup.recv().await.is_some() {
                if tx.send("SIGHUP").await.is_err() {
                    return;
                }
            }
        });
    }
    // The watcher must live as long as the task: it is moved into it.
    let watcher = if watch_files {
        start_watcher(filter.watched_paths(), tx.clone())
    } else {
        None
    };
    tokio::spawn(async move {
        let _watcher = watcher;
        while let Some(cause) = rx.recv().await {
            // Debounce: swallow further events until things are quiet.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let f = filter.clone();
            match tokio::task::spawn_blocking(move || f.reload()).await {
                Ok(Ok(status)) => tracing::info!(
                    cause,
                    rules = status.rules,
                    skipped = status.skipped,
                    "rules reloaded"
                ),
                Ok(Err(status)) => {
                    for e in &status.errors {
                        tracing::error!(cause, "{e}");
                    }
                    tracing::error!(
                        cause,
                        "rules NOT reloaded: fix the errors above; the previous rules stay in use"
                    );
                }
                Err(e) => {
                    tracing::error!(cause, error = %e, "reload task failed; the previous rules stay in use")
                }
            }
        }
    });
}

fn start_watcher(
    paths: Vec<PathBuf>,
    tx: mpsc::Sender<&'static str>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && (event.kind.is_modify() || event.kind.is_create() || event.kind.is_remove())
        {
            // Full channel: a reload is already pending, which covers this change too.
            let _ = tx.try_send("file change");
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch rule files; use SIGHUP to reload");
            return None;
        }
    };
    for path in &paths {
        let mode = if path.is_dir() {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        if let Err(e) = watcher.watch(path, mode) {
            tracing::warn!(path = %path.display(), error = %e, "cannot watch; changes there need SIGHUP");
        }
    }
    Some(watcher)
}
