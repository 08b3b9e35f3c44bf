//! Hot reload: SIGHUP, or a change to any rule or list file, rebuilds the engine in the
//! background and swaps it in atomically. Changes are debounced (an editor's save is several
//! events). A broken file keeps the old engine running; the error is logged with file:line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Filter;

/// How long to wait after the last change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Starts the reloader task; it runs until the process ends. The SIGHUP handler and the
/// file watcher are in place when this returns: call it before accepting connections, as a
/// SIGHUP that arrives before the handler exists kills the process (the default action).
pub fn spawn(filter: Arc<Filter>, watch_files: bool) {
    let (tx, mut rx) = mpsc::channel::<&'static str>(16);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if tx.send("SIGHUP").await.is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by signal is unavailable")
            }
        }
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
                Ok(Ok(status)) => {
                    let m = crate::metrics::metrics();
                    m.rules_status(status.ok, status.rules, status.skipped, status.at);
                    m.set_rules(filter.engine().rules.rule_names());
                    tracing::info!(
                        cause,
                        rules = status.rules,
                        skipped = status.skipped,
                        "rules reloaded"
                    )
                }
                Ok(Err(status)) => {
                    crate::metrics::metrics().rules_status(
                        status.ok,
                        status.rules,
                        status.skipped,
                        status.at,
                    );
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
    // A file is watched through its directory: editors and deploy tools replace files by
    // rename, which a watch on the file itself (its old inode) would never see.
    let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) = paths.into_iter().partition(|p| p.is_dir());
    let dirs: Vec<PathBuf> = dirs.iter().map(|d| absolute(d)).collect();
    let files: Vec<PathBuf> = files.iter().map(|f| absolute(f)).collect();
    let relevant = {
        let (dirs, files) = (dirs.clone(), files.clone());
        move |path: &Path| {
            dirs.iter().any(|d| path.starts_with(d)) || files.iter().any(|f| f == path)
        }
    };
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let changed = event.kind.is_modify() || event.kind.is_create() || event.kind.is_remove();
        if changed && event.paths.iter().any(|p| relevant(p)) {
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
    let parents: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    for (path, mode) in dirs
        .iter()
        .map(|d| (d, RecursiveMode::Recursive))
        .chain(parents.iter().map(|p| (p, RecursiveMode::NonRecursive)))
    {
        if let Err(e) = watcher.watch(path, mode) {
            tracing::warn!(path = %path.display(), error = %e, "cannot watch; changes there need SIGHUP");
        }
    }
    Some(watcher)
}

/// The path made absolute against the working directory (event paths are absolute).
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::Filter;
    use crate::config::Config;

    /// A rule file edited into an invalid regex: the reload fails with the file:line, and
    /// the rules loaded before stay in use.
    #[test]
    fn reload_with_an_invalid_regex_keeps_the_old_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cf = dir.path().join("local.cf");
        std::fs::write(&cf, "body MW_T_OLD /oldword/\nscore MW_T_OLD 3\n").expect("write");
        let mut config = Config::default();
        config.rules.paths = vec![dir.path().to_path_buf()];
        config.auth.enabled = false;
        let filter = Filter::load(&config).expect("the first rules load");
        let names = |f: &Filter| -> Vec<String> {
            f.engine().rules.rule_names().map(str::to_string).collect()
        };
        assert_eq!(names(&filter), ["MW_T_OLD"]);

        std::fs::write(
            &cf,
            "body MW_T_NEW /newword/\nbody MW_T_BROKEN /unclosed(/\nscore MW_T_NEW 3\n",
        )
        .expect("write");
        let status = match filter.reload() {
            Ok(_) => panic!("reloaded rules with an invalid regex"),
            Err(status) => status,
        };
        assert!(!status.ok);
        assert!(
            status
                .errors
                .iter()
                .any(|e| e.contains("local.cf:2:") && e.contains("invalid regex /unclosed(/")),
            "{:?}",
            status.errors
        );
        assert_eq!(names(&filter), ["MW_T_OLD"], "the old rules stay in use");
        assert!(!filter.status().ok);

        std::fs::write(&cf, "body MW_T_NEW /newword/\nscore MW_T_NEW 3\n").expect("write");
        assert!(filter.reload().is_ok());
        assert_eq!(names(&filter), ["MW_T_NEW"]);
    }
}
