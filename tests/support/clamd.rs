//! A private, real ClamAV daemon (`clamd`) for a test, and a fake one that never answers.
//!
//! [`Clamd::start`] writes a `clamd.conf` into a temporary directory, copies the project's
//! test signature database (`tests/clamav/test.hdb` and `test.ndb`: the EICAR test file, see
//! ../shared/recipes.md) next to it, and runs `clamd -c <dir>/clamd.conf` in the foreground
//! on a free loopback TCP port and a unix socket in that directory. It returns once clamd
//! answers `PING` with `PONG`, and kills clamd on drop. freshclam is never involved: the
//! tests need no network and no official signatures.
//!
//! Both database files name their signature `Eicar-Test-Signature` (the .hdb matches the
//! exact 68-byte file, the .ndb the EICAR string anywhere, e.g. inside a larger part), so a
//! detection reads the same whichever matched first. clamd adds `.UNOFFICIAL` to names from
//! non-official databases; mailwarden drops that marker.
//!
//! A missing `clamd` binary fails the test with a message saying how to install it: these
//! tests must never skip silently.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long clamd may take to answer PING after start (2 busy cores, several clamds).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running clamd; killed on drop.
pub struct Clamd {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Clamd {
    /// Starts clamd with the test signatures; panics (with clamd's log) if it does not come up.
    pub fn start() -> Clamd {
        Self::start_with("StreamMaxLength 25M\n")
    }

    /// Like [`start`](Self::start) with extra clamd.conf lines (they must not repeat the
    /// ones `start` writes, except `StreamMaxLength`, which only `start` sets).
    pub fn start_with(extra_conf: &str) -> Clamd {
        let Some(bin) = super::find_program("clamd") else {
            panic!(
                "clamd is not installed: run scripts/test.sh once as root (it installs Debian's \
                 clamav-daemon without starting any service), or apt-get install clamav-daemon"
            );
        };
        let mut last_error = String::new();
        // A port picked free can be taken before clamd binds it: try a few.
        for _ in 0..3 {
            match Self::try_start(&bin, extra_conf) {
                Ok(clamd) => return clamd,
                Err(e) => last_error = e,
            }
        }
        panic!("{last_error}");
    }

    fn try_start(bin: &Path, extra_conf: &str) -> Result<Clamd, String> {
        let dir = tempfile::Builder::new()
            .prefix("mailwarden-clamd-")
            .tempdir()
            .expect("create a temp dir for clamd");
        let db = dir.path().join("db");
        std::fs::create_dir(&db).expect("create the clamd database dir");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clamav");
        for name in ["test.hdb", "test.ndb"] {
            std::fs::copy(source.join(name), db.join(name))
                .unwrap_or_else(|e| panic!("copy {}/{name}: {e}", source.display()));
        }
        let port = super::unused_port();
        let d = dir.path().display();
        let conf = format!(
            "Foreground yes\n\
             DatabaseDirectory {}\n\
             TCPSocket {port}\n\
             TCPAddr 127.0.0.1\n\
             LocalSocket {d}/clamd.sock\n\
             PidFile {d}/clamd.pid\n\
             LogFile {d}/clamd.log\n\
             LogTime yes\n\
             MaxThreads 4\n\
             SelfCheck 0\n\
             {extra_conf}",
            db.display()
        );
        let conf_path = dir.path().join("clamd.conf");
        std::fs::write(&conf_path, conf).expect("write clamd.conf");
        let out = std::fs::File::create(dir.path().join("clamd.out")).expect("clamd.out");
        let err = out.try_clone().expect("clamd.out clone");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut clamd = Clamd {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ping(clamd.addr()) {
                return Ok(clamd);
            }
            if let Some(child) = clamd.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "clamd exited ({status}) before answering PING\n{}",
                    clamd.logs()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "clamd did not answer PING within {START_TIMEOUT:?}\n{}",
                    clamd.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        super::loopback(self.port)
    }

    /// The value for `[clamav] address` (TCP).
    pub fn address(&self) -> String {
        self.addr().to_string()
    }

    /// The value for `[clamav] address` over the unix socket (`unix:/tmp/…/clamd.sock`).
    pub fn unix_address(&self) -> String {
        format!("unix:{}", self.socket_path().display())
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("clamd.sock")
    }

    /// Stops clamd (SIGKILL) and waits for it: connections are refused from then on.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// clamd's log file and its stdout/stderr.
    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- clamd.log ---\n{}\n--- clamd stdout/stderr ---\n{}",
            read("clamd.log"),
            read("clamd.out")
        )
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            super::dump_log(&format!("clamd ({})", self.addr()), &self.logs());
        }
    }
}

/// True if a clamd at `addr` answers `zPING\0` with `PONG\0`.
pub fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"zPING\0").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply == b"PONG\0"
}

/// A "clamd" that accepts connections, reads whatever is sent, and never answers (a hung
/// scanner). Stops on drop.
pub struct SilentClamd {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl SilentClamd {
    pub fn start() -> SilentClamd {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the silent clamd");
        let addr = listener.local_addr().expect("silent clamd address");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        accepted2.fetch_add(1, Ordering::SeqCst);
                        let stop3 = stop2.clone();
                        std::thread::spawn(move || {
                            let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                            let mut buf = [0u8; 65536];
                            while !stop3.load(Ordering::SeqCst) {
                                match conn.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(_) => {}
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock
                                                | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => break,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        SilentClamd {
            addr,
            stop,
            accepted,
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentClamd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
