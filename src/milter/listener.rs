//! Where the MTA reaches the milter front end: a TCP or unix-domain listening socket, and the
//! accept loop that serves many MTA connections at once and stops cleanly.
//!
//! Addresses: "127.0.0.1:11332", `"[::1]:11332"` (Postfix: `inet:127.0.0.1:11332`,
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
                Ok((Box::new(QuickAck(stream)), peer.to_string()))
            }
            Socket::Unix(l, path) => {
                let (stream, _) = l.accept().await?;
                Ok((Box::new(stream), format!("unix:{}", path.display())))
            }
        }
    }
}

/// A TCP milter connection that acknowledges what it reads at once.
///
/// The MTA writes packets we do not answer (macros before each command, headers and body
/// chunks negotiated as no-reply) right behind one another. With Nagle's algorithm on the
/// MTA's socket (Postfix does not turn it off) the second small write waits for the ACK of the
/// first, and Linux delays that ACK up to 40 ms when we have nothing to send back: measured,
/// that was +43 ms at every end of data. TCP_QUICKACK is not sticky, so it is set again after
/// each read. Linux only; elsewhere the stream is used as it is.
struct QuickAck(tokio::net::TcpStream);

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        #[cfg(target_os = "linux")]
        if polled.is_ready() {
            let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        }
        polled
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::net::{TcpStream, UnixStream};
    use tokio::sync::oneshot;

    use super::*;
    use crate::milter::protocol::Command;
    use crate::milter::session::{Decision, EndOfMessage};
    use crate::milter::test_mta::{Event, Mta, Recorder, Script};

    struct Served {
        addr: std::net::SocketAddr,
        recorder: Arc<Recorder>,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn serve_tcp(script: Script, settings: Settings) -> Served {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Arc::new(Recorder::new(script));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, Arc::clone(&recorder), settings, async {
            let _ = stopped.await;
        }));
        Served {
            addr,
            recorder,
            stop,
            task,
        }
    }

    async fn mta(addr: std::net::SocketAddr) -> Mta<TcpStream> {
        Mta::new(TcpStream::connect(addr).await.unwrap())
    }

    #[tokio::test]
    async fn malformed_packets_close_only_their_connection() {
        let served = serve_tcp(Script::default(), Settings::default()).await;
        // A good connection, left in the middle of a transaction.
        let mut good = mta(served.addr).await;
        good.negotiate().await;
        assert_eq!(good.connect().await.0, b'c');
        assert_eq!(good.mail(&["<a@b.example>"]).await.0, b'c');
        assert_eq!(good.rcpt("<c@d.example>").await.0, b'c');

        let too_long = (crate::milter::protocol::MAX_PACKET_SIZE as u32 + 1).to_be_bytes();
        let cases: [(&str, &[u8], bool); 5] = [
            ("length 0", &[0, 0, 0, 0], false),
            ("length over the maximum", &too_long, false),
            ("truncated", &[0, 0, 0, 10, b'H', b'a'], true),
            ("unknown command", &[0, 0, 0, 1, b'Z'], false),
            ("missing NUL", &[0, 0, 0, 3, b'H', b'a', b'b'], false),
        ];
        for (what, bytes, then_eof) in cases {
            let mut bad = mta(served.addr).await;
            bad.negotiate().await;
            assert_eq!(bad.connect().await.0, b'c', "{what}");
            bad.send_raw(bytes).await;
            if then_eof {
                bad.shutdown_write().await;
            }
            assert!(bad.recv().await.is_none(), "{what}: connection not closed");
        }

        good.content().await;
        good.end_of_message().await;
        assert_eq!(good.recv_code().await, b'c');
        let events = served.recorder.events();
        let eoms = events
            .iter()
            .filter(|e| matches!(e, Event::Eom(..)))
            .count();
        let closes = events
            .iter()
            .filter(|e| matches!(e, Event::Close(_)))
            .count();
        assert_eq!((eoms, closes), (1, 5));
        served.stop.send(()).unwrap();
        drop(good);
        served.task.await.unwrap();
    }

    #[tokio::test]
    async fn many_connections_at_once() {
        let script = Script {
            eom: EndOfMessage::new(Decision::Accept),
            eom_delay: Duration::from_millis(200),
            ..Script::default()
        };
        let served = serve_tcp(script, Settings::default()).await;
        let started = Instant::now();
        let mut clients = Vec::new();
        for _ in 0..16 {
            let addr = served.addr;
            clients.push(tokio::spawn(async move {
                let mut m = mta(addr).await;
                m.negotiate().await;
                m.connect().await;
                m.mail(&["<a@b>"]).await;
                m.rcpt("<c@d>").await;
                m.content().await;
                m.end_of_message().await;
                m.recv_code().await
            }));
        }
        for c in clients {
            assert_eq!(c.await.unwrap(), b'a');
        }
        // Sixteen 200 ms handlers one after the other would take 3.2 s.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        served.stop.send(()).unwrap();
        served.task.await.unwrap();
    }

    #[tokio::test]
    async fn stop_closes_the_socket_and_waits_a_bounded_time() {
        let settings = Settings {
            stop_grace: Duration::from_millis(300),
            ..Settings::default()
        };
        let served = serve_tcp(Script::default(), settings).await;
        let mut idle = mta(served.addr).await;
        idle.negotiate().await;
        idle.connect().await;
        let started = Instant::now();
        served.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), served.task)
            .await
            .expect("serve returned")
            .unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "did not wait: {took:?}");
        assert!(
            TcpStream::connect(served.addr).await.is_err(),
            "still listening"
        );
        // The dropped session closed its connection and told the handler.
        assert!(idle.recv().await.is_none());
        assert!(matches!(
            served.recorder.events().last(),
            Some(Event::Close(_))
        ));
    }

    #[tokio::test]
    async fn stop_returns_at_once_when_connections_finish() {
        let served = serve_tcp(Script::default(), Settings::default()).await;
        let mut m = mta(served.addr).await;
        m.negotiate().await;
        m.connect().await;
        m.send(Command::Quit).await;
        assert!(m.recv().await.is_none());
        let started = Instant::now();
        served.stop.send(()).unwrap();
        served.task.await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(
            served.recorder.events().last(),
            Some(Event::Close(_))
        ));
    }

    #[tokio::test]
    async fn unix_socket_replaces_a_stale_one_with_mode_0660() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("milter.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "stale socket left behind");
        let address = format!("unix:{}", path.display());
        let listener = bind(&address).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let recorder = Arc::new(Recorder::new(Script::default()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, recorder, Settings::default(), async {
            let _ = stopped.await;
        }));
        let mut m = Mta::new(UnixStream::connect(&path).await.unwrap());
        assert_eq!(m.negotiate().await.0, 6);
        drop(m);
        stop.send(()).unwrap();
        task.await.unwrap();
        assert!(!path.exists(), "socket file not removed at stop");
    }

    #[tokio::test]
    async fn bad_addresses_say_what_to_write() {
        for address in [
            "nonsense",
            "localhost:11332",
            "unix:relative.sock",
            "127.0.0.1",
        ] {
            let err = bind(address).await.err().expect(address);
            assert!(
                matches!(err, ListenError::BadAddress { .. }),
                "{address}: {err}"
            );
            let text = err.to_string();
            assert!(
                text.contains(address) && text.contains("127.0.0.1:11332"),
                "{text}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        let err = bind(&format!("unix:{}", file.display()))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ListenError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        let missing = dir.path().join("no/such/dir/m.sock");
        let err = bind(&format!("unix:{}", missing.display()))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ListenError::Bind { .. }), "{err}");
        let taken = bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = bind(&addr).await.err().unwrap();
        assert!(matches!(err, ListenError::Bind { .. }) && err.to_string().contains(&addr));
    }
}
