//! Where the MTA reaches the milter front end: a TCP or unix-domain listening socket, and the
//! accept loop that serves many MTA connections at once and stops cleanly.
//!
//! Addresses: "127.0.0.1:11332", "[::1]:11332" (Postfix: `inet:127.0.0.1:11332`,
//! `inet:[::1]:11332`) or "unix:/run/mailwarden/milter.sock" (Postfix:
//! `unix:/run/mailwarden/milter.sock`; a path relative to Postfix's chroot if smtpd runs
//! chrooted).

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::session::{Handler, Settings, serve_connection};

/// Why the milter socket could not be set up; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "milter listen address \"{address}\" is not valid: write \"127.0.0.1:11332\", \
         \"[::1]:11332\" or \"unix:/run/mailwarden/milter.sock\" (an absolute path)"
    )]
    BadAddress { address: String },
    #[error(
        "milter listen address \"{address}\": {path:?} exists and is not a socket; remove it \
         or choose another path"
    )]
    NotASocket { address: String, path: PathBuf },
    #[error(
        "milter listen address \"{address}\": cannot remove the stale socket {path:?}: {source}"
    )]
    StaleSocket {
        address: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "milter listen address \"{address}\": cannot listen: {source} (is another process \
         using it? does the directory exist and is it writable by mailwarden?)"
    )]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("milter listen address \"{address}\": cannot set mode 0660 on {path:?}: {source}")]
    Permissions {
        address: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A stream to or from the MTA, TCP or unix-domain.
pub trait MilterStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> MilterStream for T {}

enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// A bound milter listening socket.
pub struct Listener {
    socket: Socket,
    address: String,
}

/// Binds `address`. A stale unix socket file (left by a crash) is removed first; the new one
/// gets mode 0660 so that Postfix's group can connect.
pub async fn bind(address: &str) -> Result<Listener, ListenError> {
    let bad = || ListenError::BadAddress {
        address: address.to_string(),
    };
    let socket = if let Some(path) = address.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(bad());
        }
        remove_stale(address, &path)?;
        let listener = UnixListener::bind(&path).map_err(|source| ListenError::Bind {
            address: address.to_string(),
            source,
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(
            |source| ListenError::Permissions {
                address: address.to_string(),
                path: path.clone(),
                source,
            },
        )?;
        Socket::Unix(listener, path)
    } else {
        let addr: std::net::SocketAddr = address.parse().map_err(|_| bad())?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ListenError::Bind {
                address: address.to_string(),
                source,
            })?;
        Socket::Tcp(listener)
    };
    Ok(Listener {
        socket,
        address: address.to_string(),
    })
}

fn remove_stale(address: &str, path: &std::path::Path) -> Result<(), ListenError> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| ListenError::StaleSocket {
                address: address.to_string(),
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(_) => Err(ListenError::NotASocket {
            address: address.to_string(),
            path: path.to_path_buf(),
        }),
    }
}

impl Listener {
    /// The address as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The bound TCP address (the port, when bound to port 0), if TCP.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.socket {
            Socket::Tcp(l) => l.local_addr().ok(),
            Socket::Unix(..) => None,
        }
    }

    /// The next MTA connection, with a description of the peer for logs.
    pub async fn accept(&self) -> std::io::Result<(Box<dyn MilterStream>, String)> {
        match &self.socket {
            Socket::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok((Box::new(stream), peer.to_string()))
            }
            Socket::Unix(l, path) => {
                let (stream, _) = l.accept().await?;
                Ok((Box::new(stream), format!("unix:{}", path.display())))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Socket::Unix(_, path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves MTA connections, one task each, until `stop` completes; then closes the listening
/// socket and waits for open connections, at most `settings.stop_grace` (those still open
/// then are dropped; the MTA applies `milter_default_action` to them).
pub async fn serve<H: Handler>(
    listener: Listener,
    handler: Arc<H>,
    settings: Settings,
    stop: impl Future<Output = ()>,
) {
    let settings = Arc::new(settings);
    let mut tasks = JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    info!(address = listener.address(), "milter: listening");
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    debug!(peer, "milter: MTA connected");
                    let handler = Arc::clone(&handler);
                    let settings = Arc::clone(&settings);
                    tasks.spawn(async move {
                        // Errors were logged by the session, with its connection id.
                        let _ = serve_connection(stream, &*handler, &settings).await;
                    });
                }
                Err(e) => {
                    // EMFILE and the like: do not spin.
                    warn!(address = listener.address(), error = %e, "milter: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let open = tasks.len();
    if open > 0 {
        info!(
            open,
            "milter: stopped listening; waiting for open MTA connections"
        );
    }
    let drained = tokio::time::timeout(settings.stop_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = tasks.len(),
            "milter: MTA connections still open after the stop grace period; dropping them"
        );
        tasks.shutdown().await;
    }
}
