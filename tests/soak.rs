//! Load and soak: many clients for a while, then every message accounted for and memory flat.
//!
//! * `soak_200_clients_rules_clamd_postfix`: 200 concurrent clients (each: connect, EHLO,
//!   1–5 messages by DATA or BDAT, QUIT, again) against the proxy with the shipped rules,
//!   a real clamd and the real Postfix upstream, for `SOAK_SECONDS` (default 60; set it to
//!   600 or more by hand, see benches/README.md). Every reply must be positive, the proxy
//!   must log no WARN/ERROR, and the Message-IDs acknowledged must be exactly the ones in
//!   Postfix's Maildir, each once. The proxy's VmRSS is sampled every second; the highest
//!   value in the last third of the run must stay within 1.5× the value after warm-up (plus
//!   16 MiB for allocator slack). `SOAK_CLIENTS` overrides the 200.
//! * `ten_thousand_idle_sessions`: 10,000 connections that only read the greeting; reports
//!   the proxy's RSS in total and per session and bounds it (< 512 MiB in all, < 32 KiB a
//!   session), and checks a normal client is still served next to them.
//!
//! Run with `--nocapture` to see the RSS series and the throughput. The two tests take the
//! whole machine, so they run one after the other.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::client::{bdat_bytes, dot_terminated};
use support::{Clamd, Postfix, Proxy, SmtpClient, messages};

/// The tests here each load the machine fully: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The proxy's resident set size in KiB (`VmRSS` in /proc/PID/status).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A plain message of about `size` bytes (some with a small attachment) that the shipped
/// rules score well below the tag threshold.
fn message(id: &str, n: usize) -> Vec<u8> {
    let size = 1024 + (n * 977) % 7000;
    let mut body = String::from("Hello team,\r\n\r\n");
    let line = "the quarterly report is attached to the wiki page as discussed on Monday.\r\n";
    while body.len() < size {
        body.push_str(line);
    }
    body.push_str("Best regards,\r\nAlice\r\n");
    let head = format!(
        "Message-ID: <{id}>\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n\
         From: Alice Example <alice@example.org>\r\nTo: Bob <user@example.org>\r\n\
         Subject: report {n}\r\nMIME-Version: 1.0\r\n"
    );
    if n.is_multiple_of(4) {
        // A small text attachment: clamd and the MIME decoder see a multipart message.
        format!(
            "{head}Content-Type: multipart/mixed; boundary=\"b-{n}\"\r\n\r\n\
             --b-{n}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{body}\
             --b-{n}\r\nContent-Type: text/plain; name=\"notes.txt\"\r\n\
             Content-Disposition: attachment; filename=\"notes.txt\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n\
             VGhlc2UgYXJlIHRoZSBub3RlcyBmcm9tIHRoZSBtZWV0aW5nLgo=\r\n--b-{n}--\r\n"
        )
        .into_bytes()
    } else {
        format!("{head}Content-Type: text/plain; charset=us-ascii\r\n\r\n{body}").into_bytes()
    }
}

/// One transaction; Ok(()) when the end of data got 250.
fn send(c: &mut SmtpClient, id: &str, n: usize) -> Result<(), String> {
    let msg = message(id, n);
    let step = |c: &mut SmtpClient, line: &str, want: u16| -> Result<(), String> {
        match c.try_cmd(line) {
            Ok(r) if r.code == want => Ok(()),
            Ok(r) => Err(format!("{line}: {r}")),
            Err(e) => Err(format!("{line}: {e}")),
        }
    };
    step(c, "MAIL FROM:<alice@example.org>", 250)?;
    step(c, "RCPT TO:<user@example.org>", 250)?;
    let end = if n.is_multiple_of(2) {
        step(c, "DATA", 354)?;
        c.try_send(&dot_terminated(&msg))
            .and_then(|()| c.read_reply())
    } else {
        c.try_send(&bdat_bytes(&msg, true))
            .and_then(|()| c.read_reply())
    };
    match end {
        Ok(r) if r.code == 250 => Ok(()),
        Ok(r) => Err(format!("end of data: {r}")),
        Err(e) => Err(format!("end of data: {e}")),
    }
}

/// Message-IDs in a Maildir's new/, read incrementally (a long soak leaves 100,000+ files).
#[derive(Default)]
struct MaildirIndex {
    seen: std::collections::HashSet<std::ffi::OsString>,
    counts: BTreeMap<String, usize>,
}

impl MaildirIndex {
    fn refresh(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if self.seen.contains(&entry.file_name()) {
                continue;
            }
            let Ok(raw) = std::fs::read(entry.path()) else {
                continue;
            };
            self.seen.insert(entry.file_name());
            if let Some(id) = messages::header(&raw, "Message-ID") {
                *self
                    .counts
                    .entry(id.trim_matches(['<', '>']).to_string())
                    .or_insert(0) += 1;
            }
        }
    }
}

fn rules_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("rules")
        .display()
        .to_string()
}

#[test]
fn soak_200_clients_rules_clamd_postfix() {
    let _serial = serial();
    let seconds = env_number("SOAK_SECONDS", 60);
    let clients = env_number("SOAK_CLIENTS", 200) as usize;
    // 200 proxied sessions hold up to 200 smtpd processes (Postfix's default limit is 100).
    let pf = Postfix::start_with("default_process_limit = 500\n");
    raise_file_limit(4096);
    let clamd = Clamd::start();
    let proxy = Proxy::start(&format!(
        "[server]\nhostname = \"mx.example.test\"\nmax_sessions = 400\nmax_sessions_per_ip = 400\n\
         [upstream]\nurl = \"{}\"\n\
         [rules]\npaths = [\"{}\"]\n\
         [clamav]\nenabled = true\naddress = \"{}\"\nmax_concurrent = 4\ntimeout_ms = 30000\n",
        pf.url(),
        rules_dir(),
        clamd.address()
    ));
    let (addr, pid) = (proxy.addr(), proxy.pid());
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);

    // RSS every second: (seconds since start, KiB, messages acknowledged so far).
    let sampler = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            let mut series = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                series.push((
                    started.elapsed().as_secs_f64(),
                    rss_kib(pid),
                    done.load(Ordering::SeqCst),
                ));
                std::thread::sleep(Duration::from_secs(1));
            }
            series
        })
    };
    let threads: Vec<_> = (0..clients)
        .map(|who| {
            let (acked, errors, done) = (acked.clone(), errors.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = 0usize;
                while Instant::now() < deadline {
                    let mut c = match SmtpClient::try_connect(addr) {
                        Ok(c) => c,
                        Err(e) => {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("client {who}: connect: {e}"));
                            std::thread::sleep(Duration::from_millis(200));
                            continue;
                        }
                    };
                    let greeted = c.read_reply().map(|r| r.code).ok() == Some(220)
                        && c.try_cmd("EHLO client.example.org").map(|r| r.code).ok() == Some(250);
                    if !greeted {
                        errors.lock().unwrap().push(format!(
                            "client {who}: greeting/EHLO failed:\n{}",
                            c.transcript()
                        ));
                        continue;
                    }
                    let per_session = 1 + (who + n) % 5;
                    for _ in 0..per_session {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let id = format!("soak-{who}-{n}@soak.example.org");
                        let result = send(&mut c, &id, n);
                        n += 1;
                        match result {
                            Ok(()) => {
                                acked.lock().unwrap().push(id);
                                done.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => {
                                errors.lock().unwrap().push(format!("{id}: {e}"));
                                break;
                            }
                        }
                    }
                    c.quit();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let elapsed = started.elapsed();
    // A few samples after the load: memory should fall back, not keep growing.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let series = sampler.join().expect("sampler");

    let acked = acked.lock().unwrap().clone();
    let errors = errors.lock().unwrap().clone();
    let rate = acked.len() as f64 / elapsed.as_secs_f64();

    // Every acknowledged message must reach the Maildir; Postfix may still be delivering.
    let wanted: std::collections::BTreeSet<&str> = acked.iter().map(String::as_str).collect();
    let mut index = MaildirIndex::default();
    let wait_started = Instant::now();
    let caught_up = support::wait_until(Duration::from_secs(120), || {
        std::thread::sleep(Duration::from_millis(250));
        index.refresh(&pf.maildir_new());
        wanted
            .iter()
            .all(|id| index.counts.contains_key(*id))
            .then_some(())
    });
    // Anything late (a second copy, a message nobody was told 250 for) is in by now.
    std::thread::sleep(Duration::from_secs(2));
    index.refresh(&pf.maildir_new());
    let delivered = &index.counts;
    let lost: Vec<&&str> = wanted
        .iter()
        .filter(|id| !delivered.contains_key(**id))
        .collect();
    let duplicated: Vec<(&String, &usize)> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    let unacked: Vec<&String> = delivered
        .keys()
        .filter(|id| id.starts_with("soak-") && !wanted.contains(id.as_str()))
        .collect();

    // Memory: the value after warm-up against the highest in the last third.
    let load_secs = elapsed.as_secs_f64();
    let warm_at = (load_secs / 6.0).max(5.0);
    let warm = series
        .iter()
        .find(|s| s.0 >= warm_at)
        .map(|s| s.1)
        .unwrap_or(0);
    let last_third: Vec<u64> = series
        .iter()
        .filter(|s| s.0 >= load_secs * 2.0 / 3.0 && s.0 <= load_secs)
        .map(|s| s.1)
        .collect();
    let late_peak = last_third.iter().copied().max().unwrap_or(0);
    let peak = series.iter().map(|s| s.1).max().unwrap_or(0);
    let limit = warm * 3 / 2 + 16 * 1024;

    let mut report = format!(
        "soak: {clients} clients, {:.1} s, {} messages acknowledged ({rate:.1} msgs/s), \
         {} errors; Postfix caught up: {} (after {:.1} s)\n\
         RSS MiB: start {:.1}, after warm-up ({warm_at:.0} s) {:.1}, peak {:.1}, \
         peak in the last third {:.1} (limit {:.1}), end {:.1}\n\
         t(s)   RSS(MiB)  acked\n",
        load_secs,
        acked.len(),
        errors.len(),
        caught_up.is_some(),
        wait_started.elapsed().as_secs_f64(),
        mib(series.first().map(|s| s.1).unwrap_or(0)),
        mib(warm),
        mib(peak),
        mib(late_peak),
        mib(limit),
        mib(series.last().map(|s| s.1).unwrap_or(0)),
    );
    let step = (series.len() / 30).max(1);
    for (i, s) in series.iter().enumerate() {
        if i % step == 0 || i + 1 == series.len() {
            report.push_str(&format!("{:5.0}  {:8.1}  {:5}\n", s.0, mib(s.1), s.2));
        }
    }
    println!("{report}");

    let log = proxy.log();
    let bad_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .take(20)
        .collect();
    assert!(
        errors.is_empty(),
        "{} client errors, e.g.:\n{}\n{report}",
        errors.len(),
        errors
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        bad_lines.is_empty(),
        "the proxy logged warnings/errors:\n{}",
        bad_lines.join("\n")
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged message(s) never delivered, e.g. {:?}\n{report}",
        lost.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    assert!(
        duplicated.is_empty(),
        "delivered more than once: {:?}",
        duplicated.iter().take(10).collect::<Vec<_>>()
    );
    assert!(
        unacked.is_empty(),
        "delivered without a 250 to the client: {:?}",
        unacked.iter().take(10).collect::<Vec<_>>()
    );
    assert!(
        acked.len() as u64 >= seconds * 5,
        "only {} messages in {seconds} s: the load did not get going\n{report}",
        acked.len()
    );
    assert!(
        warm > 0 && late_peak <= limit,
        "memory grew: RSS {:.1} MiB in the last third vs {:.1} MiB after warm-up\n{report}",
        mib(late_peak),
        mib(warm)
    );
}

/// Raises this process's open file limit to at least `want` (root may raise the hard limit
/// too); the proxy started afterwards inherits it and raises its own soft limit to the hard.
fn raise_file_limit(want: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    let enough = |v: Option<u64>| v.is_none_or(|v| v >= want);
    if enough(l.current) {
        return;
    }
    let maximum = if enough(l.maximum) {
        l.maximum
    } else {
        Some(want)
    };
    let set = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum,
        },
    );
    assert!(
        set.is_ok() && enough(getrlimit(Resource::Nofile).current),
        "cannot raise the open file limit to {want} (now {:?}): {set:?}; run as root or \
         with `ulimit -n {want}`",
        getrlimit(Resource::Nofile)
    );
}

/// Reads until CRLF; the greeting line.
fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 256];
    while !buf.ends_with(b"\r\n") {
        let n = s.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&byte[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[test]
fn ten_thousand_idle_sessions() {
    let _serial = serial();
    const SESSIONS: usize = 10_000;
    raise_file_limit(SESSIONS as u64 + 1_000);
    let mut proxy = Proxy::start(&format!(
        "[server]\nhostname = \"mx.example.test\"\nmax_sessions = {m}\nmax_sessions_per_ip = {m}\n\
         [upstream]\nurl = \"maildir:@DIR@/mail\"\n[rules]\npaths = [\"{}\"]\n",
        rules_dir(),
        m = SESSIONS + 100
    ));
    let (addr, pid): (SocketAddr, u32) = (proxy.addr(), proxy.pid());
    let before = rss_kib(pid);
    let started = Instant::now();
    let mut conns: Vec<TcpStream> = Vec::with_capacity(SESSIONS);
    // In batches, each greeted before the next: the listen backlog never overflows.
    while conns.len() < SESSIONS {
        let batch = (SESSIONS - conns.len()).min(500);
        let first = conns.len();
        for _ in 0..batch {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connection {} to the proxy: {e}", conns.len() + 1));
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("read timeout");
            conns.push(s);
        }
        for (i, s) in conns[first..].iter_mut().enumerate() {
            let line = read_line(s)
                .unwrap_or_else(|e| panic!("greeting for connection {}: {e}", first + i + 1));
            assert!(
                line.starts_with("220 "),
                "connection {}: greeting {line:?}\n{}",
                first + i + 1,
                proxy.log()
            );
        }
    }
    let connect_time = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(pid);
    // A normal client is still served while the idle ones wait.
    let mut c = SmtpClient::connect_ehlo(addr, "busy.example.org");
    c.send_mail(
        "alice@example.org",
        &["user@example.org"],
        b"Message-ID: <idle-check@example.org>\r\nSubject: hi\r\n\r\nhello\r\n",
    );
    c.quit();
    let per_session = (after.saturating_sub(before)) as f64 * 1024.0 / SESSIONS as f64;
    println!(
        "{SESSIONS} idle sessions greeted in {:.1} s: proxy RSS {:.1} MiB before, {:.1} MiB with \
         them ({:.1} KiB per idle session)",
        connect_time.as_secs_f64(),
        mib(before),
        mib(after),
        per_session / 1024.0
    );
    // The sessions are still there (a proxy that dropped them would have said 421).
    for s in conns.iter_mut().step_by(997) {
        s.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("an idle session got {other:?}"),
        }
    }
    assert!(
        after < 512 * 1024,
        "{SESSIONS} idle sessions take {:.1} MiB",
        mib(after)
    );
    // It was 42 KiB (62 in a debug build) before the session stopped carrying the filter's
    // and relay's futures inline and zeroing a 16 KiB read buffer it had not filled yet.
    assert!(
        per_session < 32.0 * 1024.0,
        "{:.1} KiB per idle session",
        per_session / 1024.0
    );
    for s in &mut conns {
        let _ = s.write_all(b"QUIT\r\n");
    }
    drop(conns);
    assert!(proxy.is_running(), "the proxy died:\n{}", proxy.log());
}
