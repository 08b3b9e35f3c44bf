//! A private Postfix instance per test, used as the real upstream MTA.
//!
//! Everything lives in one temporary directory: `conf/` (main.cf, master.cf, the
//! recipient table), `spool/` (queue), `data/`, `mail/sink/` (one Maildir that receives
//! every accepted recipient) and `postfix.log`. The system Postfix instance is never
//! touched: every command gets `-c <conf>`.
//!
//! The instance keeps Postfix's defaults for SMTP parsing, in particular it accepts bare
//! LF line endings (`smtpd_forbid_bare_newline = no`), so it is vulnerable to SMTP
//! smuggling on its own. That is the point: the proxy in front of it must protect it.
//!
//! [`Postfix::start_with_milter`] runs the instance as a *milter client* instead: the lines of
//! deploy/postfix/milter/main.cf.fragment, read at test time, are appended to main.cf with
//! only the milter address changed, so the tests exercise the very lines admins install.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Recipients that exist; any other address @example.org is rejected with 550 5.1.1.
pub const KNOWN_USERS: &[&str] = &[
    "user@example.org",
    "u2@example.org",
    "u3@example.org",
    "postmaster@example.org",
    "jörg@example.org",
    "δοκιμή@example.org",
];

const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Postfix {
    dir: tempfile::TempDir,
    conf: PathBuf,
    addr: SocketAddr,
    postfix_bin: PathBuf,
    markers: std::sync::atomic::AtomicUsize,
}

impl Postfix {
    /// Starts a fresh instance on a free loopback port and waits until it greets.
    pub fn start() -> Postfix {
        Self::start_with("")
    }

    /// Like [`start`](Self::start) with extra main.cf lines (later lines win), e.g.
    /// `smtpd_discard_ehlo_keywords = chunking` for an upstream without BDAT.
    pub fn start_with(extra_main_cf: &str) -> Postfix {
        Self::start_with_files(extra_main_cf, &[])
    }

    /// Like [`start_with`](Self::start_with), and first writes `files` (path relative to the
    /// instance's temporary directory, contents) there, e.g. a TLS certificate and key.
    /// `@DIR@` in `extra_main_cf` stands for that directory.
    pub fn start_with_files(extra_main_cf: &str, files: &[(&str, &[u8])]) -> Postfix {
        Self::start_custom(extra_main_cf, files, None, "")
    }

    /// Like [`start_with`](Self::start_with) with the SMTP listener's master.cf entry
    /// replaced by `listener` (its first line and `-o` lines), where `@PORT@` stands for the
    /// port this instance picked ([`addr`](Self::addr)), and `extra_master_cf` (more services,
    /// e.g. a second smtpd) appended after the stock services. For testing documented
    /// master.cf lines (deploy/postfix/).
    pub fn start_with_master_cf(
        extra_main_cf: &str,
        listener: &str,
        extra_master_cf: &str,
    ) -> Postfix {
        Self::start_custom(extra_main_cf, &[], Some(listener), extra_master_cf)
    }

    /// Starts an instance that asks `milter` (`"inet:127.0.0.1:PORT"` or `"unix:PATH"`)
    /// about every message, with the lines of deploy/postfix/milter/main.cf.fragment (see
    /// [`milter_fragment`]). With `relay_to`, accepted mail for example.org is relayed by SMTP
    /// to that address (a fake upstream, smtp-sink, another Postfix) instead of being
    /// delivered into this instance's Maildir ([`delivered`](Self::delivered) then stays
    /// empty and [`settle`](Self::settle) cannot be used). Without it, a message the milter
    /// accepts lands in the Maildir as with [`start`](Self::start).
    pub fn start_with_milter(milter: &str, relay_to: Option<SocketAddr>) -> Postfix {
        let mut extra = milter_fragment(milter);
        if let Some(to) = relay_to {
            // Later lines win: example.org stops being a local virtual domain, and all mail
            // leaves through the SMTP client to `to` (the next hop in brackets: no DNS).
            let hop = format!("smtp:[{}]:{}", to.ip(), to.port());
            let _ = write!(
                extra,
                "\n# Relay instead of local delivery (Postfix::start_with_milter)\n\
                 virtual_mailbox_domains =\n\
                 relay_domains = example.org\n\
                 relay_transport = {hop}\n\
                 default_transport = {hop}\n"
            );
        }
        Self::start_with(&extra)
    }

    fn start_custom(
        extra_main_cf: &str,
        files: &[(&str, &[u8])],
        listener: Option<&str>,
        extra_master_cf: &str,
    ) -> Postfix {
        let postfix_bin = super::find_program("postfix").unwrap_or_else(|| {
            panic!(
                "the `postfix` program is not installed; these tests need a real Postfix: \
                 run `apt-get install postfix` (Debian package `postfix`; preseed \
                 `postfix postfix/main_mailer_type select No configuration` to leave the \
                 system instance unconfigured), or run scripts/test.sh which does it"
            )
        });
        let mut last_error = String::new();
        // A port picked by the kernel can be taken again before Postfix binds it: retry.
        for _attempt in 0..3 {
            match Self::try_start(
                &postfix_bin,
                extra_main_cf,
                files,
                listener,
                extra_master_cf,
            ) {
                Ok(p) => return p,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start a private Postfix instance:\n{last_error}");
    }

    fn try_start(
        postfix_bin: &Path,
        extra_main_cf: &str,
        files: &[(&str, &[u8])],
        listener: Option<&str>,
        extra_master_cf: &str,
    ) -> Result<Postfix, String> {
        let dir = tempfile::Builder::new()
            .prefix("mailwarden-postfix-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let base = dir.path().to_path_buf();
        // Postfix daemons run as the postfix user and need to traverse the directory.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {base:?}: {e}"))?;
        let (uid, gid) = postfix_ids()?;
        let conf = base.join("conf");
        for sub in ["conf", "spool", "data", "mail"] {
            std::fs::create_dir_all(base.join(sub)).map_err(|e| format!("mkdir {sub}: {e}"))?;
        }
        for sub in ["data", "mail"] {
            std::os::unix::fs::chown(base.join(sub), Some(uid), Some(gid))
                .map_err(|e| format!("chown {sub} to postfix: {e}"))?;
        }
        let port = super::unused_port();
        let addr = super::loopback(port);

        let mut users = String::new();
        for u in KNOWN_USERS {
            let _ = writeln!(users, "{u} sink/");
        }
        std::fs::write(conf.join("vmailbox"), users).map_err(|e| format!("vmailbox: {e}"))?;
        for (name, contents) in files {
            let path = base.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("mkdir {parent:?}: {e}"))?;
            }
            std::fs::write(&path, contents).map_err(|e| format!("write {path:?}: {e}"))?;
        }
        let extra_main_cf = extra_main_cf.replace("@DIR@", &base.display().to_string());
        let main = format!("{}{extra_main_cf}\n", main_cf(&base, uid, gid));
        std::fs::write(conf.join("main.cf"), main).map_err(|e| format!("main.cf: {e}"))?;
        std::fs::write(
            conf.join("master.cf"),
            master_cf(port, listener, extra_master_cf),
        )
        .map_err(|e| format!("master.cf: {e}"))?;

        // Postfix waits until a config file is a couple of seconds old before it reads
        // it (in case it is still being edited): backdate them to start at once.
        for name in ["main.cf", "master.cf", "vmailbox"] {
            backdate(&conf.join(name))?;
        }

        let pf = Postfix {
            dir,
            conf,
            addr,
            postfix_bin: postfix_bin.to_path_buf(),
            markers: std::sync::atomic::AtomicUsize::new(0),
        };
        let start_output = pf.run_postfix("start")?;
        if let Err(e) = pf.wait_for_greeting() {
            return Err(format!(
                "{e}\n--- postfix start output ---\n{start_output}\n--- postfix.log ---\n{}",
                pf.log()
            ));
        }
        Ok(pf)
    }

    /// Runs `postfix -c <conf> <verb>`; under `script` so fatal start-up errors, which
    /// Postfix only reports to a terminal or syslog, end up in the output.
    fn run_postfix(&self, verb: &str) -> Result<String, String> {
        let cmdline = format!(
            "{} -c {} {verb}",
            self.postfix_bin.display(),
            self.conf.display()
        );
        let direct = || {
            Command::new(&self.postfix_bin)
                .arg("-c")
                .arg(&self.conf)
                .arg(verb)
                .stdin(Stdio::null())
                .output()
        };
        let text_of = |o: &std::process::Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        };
        let mut output = match super::find_program("script") {
            Some(script) => Command::new(script)
                .args(["-q", "-e", "-c", &cmdline, "/dev/null"])
                .stdin(Stdio::null())
                .output(),
            None => direct(),
        }
        .map_err(|e| format!("run {cmdline}: {e}"))?;
        let mut text = text_of(&output);
        // `script` itself failed (no pseudo-terminal here?): run Postfix directly.
        if !output.status.success() && text.contains("script:") {
            let first = text;
            output = direct().map_err(|e| format!("run {cmdline}: {e}"))?;
            text = format!("(under script: {first})\n{}", text_of(&output));
        }
        if output.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "`{cmdline}` failed ({}):\n{text}\n--- postfix.log ---\n{}",
                output.status,
                self.log()
            ))
        }
    }

    fn wait_for_greeting(&self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("never tried");
        while Instant::now() < deadline {
            match greet(self.addr) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "Postfix did not greet on {} within {START_TIMEOUT:?}: {last}",
            self.addr
        ))
    }

    /// The SMTP listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://127.0.0.1:PORT`, for the proxy's `[upstream] url`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The Maildir `new/` directory all recipients are delivered into.
    pub fn maildir_new(&self) -> PathBuf {
        self.dir.path().join("mail/sink/new")
    }

    /// Postfix's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix.log")).unwrap_or_default()
    }

    /// Delivered messages right now, sorted by file name.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut names: Vec<PathBuf> = match std::fs::read_dir(self.maildir_new()) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("read {p:?}: {e}")))
            .collect()
    }

    /// Waits until at least `n` messages are delivered and returns all of them; panics
    /// with the Postfix log on timeout.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let got = super::wait_until(timeout, || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        });
        match got {
            Some(m) => m,
            None => panic!(
                "Postfix delivered {} message(s) within {timeout:?}, expected at least {n}\n\
                 --- postfix.log ---\n{}",
                self.messages().len(),
                self.log()
            ),
        }
    }

    /// Sends a marker message straight to Postfix, waits for its delivery, lets the queue
    /// settle, and returns every *other* delivered message. Anything the tests sent before
    /// is delivered by then, so this catches messages that should not have been delivered
    /// without sleeping for an arbitrary long time.
    pub fn settle(&self) -> Vec<Vec<u8>> {
        let n = self
            .markers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let marker = format!("X-Settle-Marker: {n}");
        let is_marker = |m: &Vec<u8>| {
            String::from_utf8_lossy(m)
                .lines()
                .any(|l| l.starts_with("X-Settle-Marker: "))
        };
        let mut c = super::SmtpClient::connect_ehlo(self.addr, "marker.example.test");
        c.send_mail(
            "marker@example.test",
            &["postmaster@example.org"],
            format!("{marker}\r\nSubject: settle marker\r\n\r\nmarker\r\n").as_bytes(),
        );
        c.quit();
        let found = super::wait_until(super::LONG, || {
            self.messages()
                .iter()
                .any(|m| String::from_utf8_lossy(m).lines().any(|l| l == marker))
                .then_some(())
        });
        assert!(
            found.is_some(),
            "the settle marker was not delivered\n--- postfix.log ---\n{}",
            self.log()
        );
        // Anything queued before the marker is delivered by now or very soon.
        std::thread::sleep(Duration::from_millis(750));
        self.messages()
            .into_iter()
            .filter(|m| !is_marker(m))
            .collect()
    }

    /// [`settle`](Self::settle), then asserts exactly `n` messages (markers excluded) were
    /// delivered in total, and returns them.
    pub fn settle_and_collect(&self, n: usize) -> Vec<Vec<u8>> {
        let others = self.settle();
        assert_eq!(
            others.len(),
            n,
            "Postfix delivered {} message(s), expected exactly {n}:\n{}\n--- postfix.log ---\n{}",
            others.len(),
            others
                .iter()
                .map(|m| super::show_limited(m, 3000))
                .collect::<Vec<_>>()
                .join("\n-----\n"),
            self.log()
        );
        others
    }

    /// The delivered messages as bytes (the Maildir, sorted by file name): the same as
    /// [`messages`](Self::messages), named for milter tests that assert "delivered once".
    pub fn delivered(&self) -> Vec<Vec<u8>> {
        self.messages()
    }

    /// Postfix's log, one entry per line.
    pub fn log_lines(&self) -> Vec<String> {
        self.log().lines().map(str::to_owned).collect()
    }

    /// Log lines containing `needle` (e.g. `"milter-reject"`, a queue id).
    pub fn log_lines_containing(&self, needle: &str) -> Vec<String> {
        self.log_lines()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Queue ids of the messages in the hold queue (a milter's quarantine action), from
    /// `postqueue -j`; sorted.
    pub fn postqueue_held(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .postqueue_json()
            .into_iter()
            .filter(|e| e["queue_name"] == "hold")
            .filter_map(|e| e["queue_id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }

    /// Every queued message as `postqueue -c CONF -j` describes it (one JSON object each:
    /// `queue_name`, `queue_id`, `sender`, `recipients`, ...); empty when the queue is.
    pub fn postqueue_json(&self) -> Vec<serde_json::Value> {
        let postqueue = super::find_program("postqueue").unwrap_or_else(|| {
            panic!("`postqueue` is not installed: apt-get install postfix (or scripts/test.sh)")
        });
        let out = Command::new(&postqueue)
            .arg("-c")
            .arg(&self.conf)
            .arg("-j")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {} -c {:?} -j: {e}", postqueue.display(), self.conf));
        assert!(
            out.status.success(),
            "postqueue -c {:?} -j failed ({}): {}",
            self.conf,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("postqueue -j printed {l:?}, not JSON: {e}"))
            })
            .collect()
    }

    /// Waits (up to 5 s) for the log to contain `needle`, then returns the log.
    pub fn log_containing(&self, needle: &str) -> String {
        let found = super::wait_until(Duration::from_secs(5), || {
            let log = self.log();
            log.contains(needle).then_some(log)
        });
        found.unwrap_or_else(|| self.log())
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if std::thread::panicking() {
            super::dump_log(
                &format!("postfix log ({})", self.addr),
                &format!(
                    "{}\n--- delivered: {} message(s) ---",
                    self.log(),
                    self.messages().len()
                ),
            );
        }
        let pid = std::fs::read_to_string(self.dir.path().join("spool/pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let _ = Command::new(&self.postfix_bin)
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(pid) = pid {
            let gone = super::wait_until(Duration::from_secs(5), || (!alive(pid)).then_some(()));
            if gone.is_none() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

/// deploy/postfix/milter/main.cf.fragment as shipped, read now, with the value of its one
/// `smtpd_milters = ` line replaced by `milter`. Nothing else changes: `non_smtpd_milters =
/// $smtpd_milters` follows it.
pub fn milter_fragment(milter: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/postfix/milter/main.cf.fragment");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let key = "smtpd_milters = ";
    assert_eq!(
        text.lines().filter(|l| l.starts_with(key)).count(),
        1,
        "{} must have exactly one line starting with {key:?}",
        path.display()
    );
    let mut out = format!("# --- {} (smtpd_milters changed)\n", path.display());
    for line in text.lines() {
        if line.starts_with(key) {
            let _ = writeln!(out, "{key}{milter}");
        } else {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// Sets a file's modification time one minute into the past.
fn backdate(path: &Path) -> Result<(), String> {
    let past = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(past))
        .map_err(|e| format!("backdate {path:?}: {e}"))
}

/// True if `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // Format: pid (comm) state ...
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Connects, reads a 220 greeting and quits.
fn greet(addr: SocketAddr) -> Result<(), String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("read greeting: {e}"))?;
    if !line.starts_with("220") {
        return Err(format!("greeting was {line:?}"));
    }
    let _ = (&stream).write_all(b"QUIT\r\n");
    let _ = reader.read_line(&mut line);
    Ok(())
}

/// The postfix user's uid and gid from /etc/passwd.
fn postfix_ids() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postfix" {
            let uid = f[2].parse().map_err(|e| format!("uid of postfix: {e}"))?;
            let gid = f[3].parse().map_err(|e| format!("gid of postfix: {e}"))?;
            return Ok((uid, gid));
        }
    }
    Err(
        "no `postfix` user in /etc/passwd: is the postfix package installed? \
         (apt-get install postfix)"
            .into(),
    )
}

/// True if this Postfix knows the parameter (`postconf -d NAME` prints `NAME = ...`).
fn postconf_knows(name: &str) -> bool {
    let Some(postconf) = super::find_program("postconf") else {
        return false;
    };
    Command::new(postconf)
        .arg("-d")
        .arg(name)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).starts_with(&format!("{name} =")))
        .unwrap_or(false)
}

fn main_cf(base: &Path, uid: u32, gid: u32) -> String {
    let b = base.display();
    let mut cf = format!(
        "# Private test instance (written by tests/support/postfix.rs)
compatibility_level = 3.6
myhostname = upstream.example.org
mydomain = example.org
myorigin = $myhostname
queue_directory = {b}/spool
data_directory = {b}/data
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
# Keep headers exactly as received (no address rewriting, no added Date/Message-ID).
local_header_rewrite_clients =
virtual_mailbox_domains = example.org
virtual_mailbox_base = {b}/mail
virtual_mailbox_maps = texthash:{b}/conf/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_mailbox_limit = 0
maillog_file = {b}/postfix.log
maillog_file_prefixes = {b}
disable_dns_lookups = yes
default_transport = error:outbound delivery disabled in tests
relay_transport = error:outbound delivery disabled in tests
smtpd_authorized_xclient_hosts = 127.0.0.0/8
"
    );
    // Make the vulnerable default explicit where the parameter exists (3.9 changed it).
    for (param, value) in [
        ("smtpd_forbid_bare_newline", "no"),
        ("smtpd_forbid_unauth_pipelining", "no"),
    ] {
        if postconf_knows(param) {
            let _ = writeln!(cf, "{param} = {value}");
        }
    }
    cf
}

fn master_cf(port: u16, listener: Option<&str>, extra: &str) -> String {
    // The stock service list, chroot off, with the SMTP listener on our port.
    let listener = match listener {
        Some(entry) => entry.trim_end().replace("@PORT@", &port.to_string()),
        None => format!("127.0.0.1:{port} inet n - n - - smtpd"),
    };
    let services = [
        listener,
        "pickup unix n - n 60 1 pickup".into(),
        "cleanup unix n - n - 0 cleanup".into(),
        "qmgr unix n - n 300 1 qmgr".into(),
        "rewrite unix - - n - - trivial-rewrite".into(),
        "bounce unix - - n - 0 bounce".into(),
        "defer unix - - n - 0 bounce".into(),
        "trace unix - - n - 0 bounce".into(),
        "verify unix - - n - 1 verify".into(),
        "flush unix n - n 1000? 0 flush".into(),
        "proxymap unix - - n - - proxymap".into(),
        "proxywrite unix - - n - 1 proxymap".into(),
        "smtp unix - - n - - smtp".into(),
        "relay unix - - n - - smtp".into(),
        "showq unix n - n - - showq".into(),
        "error unix - - n - - error".into(),
        "retry unix - - n - - error".into(),
        "discard unix - - n - - discard".into(),
        "local unix - n n - - local".into(),
        "virtual unix - n n - - virtual".into(),
        "lmtp unix - - n - - lmtp".into(),
        "anvil unix - - n - 1 anvil".into(),
        "scache unix - - n - 1 scache".into(),
        // smtpd gets TLS entropy (and its session cache) from tlsmgr: without it an instance
        // with a certificate still offers STARTTLS but answers it with 454.
        "tlsmgr unix - - n 1000? 1 tlsmgr".into(),
        "postlog unix-dgram n - n - 1 postlogd".into(),
    ];
    let mut out = String::from("# Private test instance (written by tests/support/postfix.rs)\n");
    for s in services {
        out.push_str(&s);
        out.push('\n');
    }
    out.push_str(extra);
    if !extra.is_empty() && !extra.ends_with('\n') {
        out.push('\n');
    }
    out
}
