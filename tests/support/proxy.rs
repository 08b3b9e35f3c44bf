//! Runs the real `mailwarden serve` binary for a test.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the binary may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `mailwarden serve` child process; killed on drop.
pub struct Proxy {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    config: String,
    config_path: PathBuf,
    dir: tempfile::TempDir,
}

/// How the binary finds its config file.
enum Launch {
    /// `mailwarden serve --config <dir>/mailwarden.toml`.
    ConfigFlag,
    /// `mailwarden serve` with the working directory `<dir>` (the default `mailwarden.toml`).
    WorkingDir,
}

fn new_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mailwarden-proxy-")
        .tempdir()
        .expect("create a temp dir for the proxy config")
}

impl Proxy {
    /// Writes `body` as the config file and starts the proxy.
    ///
    /// `body` is TOML. The listener is always `127.0.0.1:0`: a `listen = ...` line is
    /// added right after `[server]` (or a whole `[server]` section with the test hostname is
    /// prepended when `body` has none). `@LISTEN@` in `body` is replaced by the listen array
    /// instead, for a test that wants to place it itself.
    pub fn start(body: &str) -> Proxy {
        Self::start_with_files(body, &[])
    }

    /// Like [`start`](Self::start), and first writes `files` (path relative to the proxy's
    /// temporary directory, contents) there, e.g. a certificate for `[tls]`. `@DIR@` in
    /// `body` stands for that directory (escaped for use inside a TOML string), so a test
    /// can point `[tls]` or a `maildir:` URL into it; see [`dir`](Self::dir).
    pub fn start_with_files(body: &str, files: &[(&str, &[u8])]) -> Proxy {
        let dir = new_dir();
        for (name, contents) in files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .unwrap_or_else(|e| panic!("create {parent:?}: {e}"));
            }
            std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        }
        let dir_in_toml = dir
            .path()
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        let config = Self::complete_config(&body.replace("@DIR@", &dir_in_toml));
        let config_path = dir.path().join("mailwarden.toml");
        std::fs::write(&config_path, &config).expect("write the proxy config file");
        Self::spawn(config, config_path, dir, Launch::ConfigFlag).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs the proxy the way the README's first command does: `config` is written
    /// *verbatim* (no listener rewriting: it must listen on a port the test picked) as
    /// `mailwarden.toml` in a fresh temporary directory, and `mailwarden serve` runs with
    /// that directory as its working directory and no `--config` flag. An error (e.g. the
    /// port was taken meanwhile) is returned, with the proxy's log, for the test to retry.
    pub fn try_start_in_working_dir(config: &str) -> Result<Proxy, String> {
        let dir = new_dir();
        let config_path = dir.path().join("mailwarden.toml");
        std::fs::write(&config_path, config).expect("write the proxy config file");
        Self::spawn(config.to_string(), config_path, dir, Launch::WorkingDir)
    }

    /// A config for an upstream URL, with extra lines for `[server]` and `[upstream]`.
    pub fn config(upstream_url: &str, server_extra: &str, upstream_extra: &str) -> String {
        format!(
            "[server]\nhostname = \"mx.example.test\"\n{server_extra}\n\n\
             [upstream]\nurl = \"{upstream_url}\"\n{upstream_extra}\n"
        )
    }

    /// Starts a proxy in front of `upstream_url` with otherwise default settings.
    pub fn for_upstream(upstream_url: &str) -> Proxy {
        Self::start(&Self::config(upstream_url, "", ""))
    }

    pub fn complete_config(body: &str) -> String {
        // Sender authentication needs DNS: tests that want it configure `[dns]`/`[auth]`
        // (tests/auth.rs runs a DNS server); the others run without it, so their expected
        // headers and symbols do not depend on the machine's resolver.
        if !body.contains("[auth]") && !body.contains("[dns]") {
            return Self::complete_config(&format!("{body}\n[auth]\nenabled = false\n"));
        }
        // The classifier would learn (autolearn) into a store shared by every test that runs
        // from the same directory, and vote once that store had enough: tests that want it
        // configure `[classifier]` with a store of their own (tests/classifier.rs).
        if !body.contains("[classifier]") {
            return Self::complete_config(&format!("{body}\n[classifier]\nenabled = false\n"));
        }
        // Many proxies run at once: each serves its metrics on a port of its own.
        if !body.contains("[metrics]") {
            return Self::complete_config(&format!(
                "{body}\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
            ));
        }
        const LISTEN: &str = r#"["127.0.0.1:0"]"#;
        if body.contains("@LISTEN@") {
            return body.replace("@LISTEN@", LISTEN);
        }
        let has_server = body.lines().any(|l| l.trim() == "[server]");
        if !has_server {
            return format!(
                "[server]\nlisten = {LISTEN}\nhostname = \"mx.example.test\"\n\n{body}"
            );
        }
        let mut out = String::new();
        let mut in_server = false;
        let mut injected = false;
        for line in body.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                in_server = t == "[server]";
            }
            if in_server && t.starts_with("listen") && t[6..].trim_start().starts_with('=') {
                // The test's own listen line is replaced: we must know the address.
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if t == "[server]" && !injected {
                out.push_str(&format!("listen = {LISTEN}\n"));
                injected = true;
            }
        }
        out
    }

    fn spawn(
        config: String,
        config_path: PathBuf,
        dir: tempfile::TempDir,
        launch: Launch,
    ) -> Result<Proxy, String> {
        let bin = env!("CARGO_BIN_EXE_mailwarden");
        let rust_log = std::env::var("MAILWARDEN_TEST_LOG").unwrap_or_else(|_| "info".into());
        let mut command = Command::new(bin);
        command.arg("serve");
        match launch {
            Launch::ConfigFlag => {
                command.arg("--config").arg(&config_path);
            }
            Launch::WorkingDir => {
                command.current_dir(dir.path());
            }
        }
        let mut child = command
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));

        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<Option<SocketAddr>>();
        let stderr = child.stderr.take().expect("child stderr is piped");
        let stdout = child.stdout.take().expect("child stdout is piped");
        spawn_drain(stderr, log.clone(), Some(tx.clone()));
        spawn_drain(stdout, log.clone(), None);
        drop(tx);

        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(addr)) => addr,
            outcome => {
                let _ = child.kill();
                let status = child.wait();
                // Give the drain threads a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                let log = log.lock().expect("proxy log lock").clone();
                let why = match outcome {
                    Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        format!("the proxy exited ({status:?}) before listening")
                    }
                    _ => format!("no 'listening on' line within {START_TIMEOUT:?}"),
                };
                return Err(format!(
                    "mailwarden did not start: {why}\n--- config ---\n{config}\n--- log ---\n{log}"
                ));
            }
        };
        Ok(Proxy {
            child,
            addr,
            log,
            config,
            config_path,
            dir,
        })
    }

    /// The client-facing listener address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything the proxy wrote to stderr/stdout so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("proxy log lock").clone()
    }

    /// The config file contents the proxy was started with.
    /// Where the metrics endpoint listens (from the proxy's `metrics endpoint on` line).
    pub fn metrics_addr(&self) -> SocketAddr {
        let log = self.wait_for_log("metrics endpoint on ");
        log.lines()
            .find_map(|l| {
                let rest = &l[l.find("metrics endpoint on ")? + "metrics endpoint on ".len()..];
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no 'metrics endpoint on' line in the log:\n{log}"))
    }

    /// `GET path` on the metrics endpoint: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_addr(), path)
    }

    /// Waits (up to 5 s) until the log contains `needle`; the log arrives through a pipe
    /// read by another thread, a little after the proxy wrote it. Returns the log.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.contains(needle) || std::time::Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn config_text(&self) -> &str {
        &self.config
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The proxy's temporary directory (config file, `files`, and whatever `@DIR@` in the
    /// config points at, e.g. a Maildir).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// True while the child process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The child's process id (e.g. for `kill -HUP`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP to the child (`kill -HUP <pid>`): the proxy reloads its rules.
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// Sends SIGTERM to the child: the proxy drains and exits.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("run kill -{name} {}: {e}", self.pid()));
        assert!(
            status.success(),
            "kill -{name} {} failed: {status}",
            self.pid()
        );
    }

    /// Waits up to `timeout` for the child to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            super::dump_log(
                &format!("mailwarden log ({})", self.addr),
                &format!(
                    "--- config ---\n{}\n--- log ---\n{}",
                    self.config,
                    self.log()
                ),
            );
        }
    }
}

/// Copies a child's output into `log` line by line; the first `listening on ADDR` line is
/// reported on `tx`, and `None` is sent when the stream ends without one.
fn spawn_drain(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    tx: Option<mpsc::Sender<Option<SocketAddr>>>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut tx = tx;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = super::strip_ansi(&String::from_utf8_lossy(&buf));
            if let Ok(mut l) = log.lock() {
                l.push_str(&line);
                if !line.ends_with('\n') {
                    l.push('\n');
                }
            }
            if let Some(addr) = parse_listening(&line)
                && let Some(sender) = tx.take()
            {
                let _ = sender.send(Some(addr));
            }
        }
        if let Some(sender) = tx {
            let _ = sender.send(None);
        }
    });
}

/// Extracts `ADDR` from a line containing `listening on ADDR`.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let rest = rest.trim_start_matches(['"', '\'']);
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    token.parse().ok()
}

/// A minimal HTTP GET. HTTP/1.0, so the server answers with the whole body and closes (no
/// chunked encoding to undo); works for mailwarden's endpoint and Prometheus' API alike.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("read the answer to GET {path}: {e}"));
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
