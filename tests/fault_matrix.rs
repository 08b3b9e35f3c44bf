//! The fault matrix: many transactions through the proxy while one fault is injected, and
//! for every transaction what the client was told against what the upstream stored.
//!
//! The invariant, per transaction: **the client got 250 ⇔ the upstream stored the message
//! exactly once**. Everything else got a 4xx/5xx (or, where the fault is the connection
//! itself, no final reply at all), and must not be stored. The one documented exception is
//! the ambiguous case: the upstream took the whole message but its reply never came (it
//! was slower than the proxy's timeout); the proxy then tells the client 451 and the
//! client's retry may deliver the message a second time. Such transactions are counted in
//! their own column ("ambiguous") and are allowed only for the row that causes them.
//!
//! Each row runs its own proxy. Upstream faults use the scriptable fake upstream
//! (tests/support/fake_upstream.rs; stored = accepted with a 250 that reached the proxy);
//! the others run against one real Postfix (stored = its Maildir, by Message-ID), a real or
//! silent clamd, a DNS server that is down or silent, or a Maildir/quarantine on a tmpfs
//! this test mounts (full, or remounted read-only; root in CI cannot be stopped by chmod;
//! where `mount` is not permitted the directory is replaced by a file instead, ENOTDIR,
//! which stops root too). Rows run concurrently, eight at a time; the matrix is printed
//! (`cargo test --test fault_matrix -- --nocapture`) and every row must show
//! lost = duplicated = 0, its expected replies, and no debris left on a full disk.
//! `MATRIX_ROWS=word` runs only the rows whose name contains `word`; `MATRIX_NO_MOUNT=1`
//! uses the fallback for the disk rows.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use support::client::{bdat_bytes, dot_terminated};
use support::{
    Action, Clamd, FakeUpstream, Postfix, Proxy, Script, SilentClamd, SmtpClient, messages,
};

/// Short upstream timeouts for the fake upstream rows (its slow replies come 5 s late).
const FAKE_TIMEOUTS: &str =
    "connect_timeout_secs = 2\ncommand_timeout_secs = 2\ndata_timeout_secs = 2\npool_size = 0\n";
/// Generous ones in front of Postfix: a slow reply there is load, not the fault under test.
const POSTFIX_TIMEOUTS: &str =
    "connect_timeout_secs = 20\ncommand_timeout_secs = 30\ndata_timeout_secs = 60\n";
/// Limits high enough for the biggest row (50 sessions).
const SERVER: &str = "max_sessions_per_ip = 500\n";

/// What the client learned about one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Told {
    /// The final reply: the first refusal (MAIL, RCPT, DATA) or the end-of-data reply.
    Reply(u16),
    /// The connection broke before a final reply; the client treats it as not delivered.
    NoReply,
    /// The client itself hung up mid-message (the fault under test).
    HungUp,
}

impl Told {
    fn acked(self) -> bool {
        matches!(self, Told::Reply(c) if (200..300).contains(&c))
    }
}

/// How the client sends one transaction.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Data,
    /// Two chunks: `BDAT n`, then `BDAT m LAST`.
    Bdat,
    /// The message, `.` and `QUIT` in one write.
    DataQuitPipelined,
    /// Half the message after the 354, then the connection is closed.
    HangUpMidData,
    /// The first chunk, then `BDAT m LAST` with half of the second chunk, then close.
    HangUpMidBdat,
}

/// Per Message-ID, what the client was told, in the order the transactions started.
type Outcomes = Arc<Mutex<Vec<(String, Told)>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A message of about `size` bytes with the Message-ID `<id>`; clean for the shipped rules.
fn message(id: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "Message-ID: <{id}>\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n\
         From: Alice Example <alice@example.org>\r\nTo: Bob <user@example.org>\r\n\
         Subject: minutes of the meeting {id}\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\nHi Bob,\r\n\r\n"
    );
    let line = "here are the notes from Tuesday, as discussed with the team.\r\n";
    while m.len() < size {
        m.push_str(line);
    }
    m.push_str(".a line that starts with a dot\r\nRegards, Alice\r\n");
    m.into_bytes()
}

/// Connects, reads the greeting and says EHLO; a refusal is the transaction's outcome.
fn open(addr: SocketAddr) -> Result<SmtpClient, Told> {
    let mut c = SmtpClient::try_connect(addr).map_err(|_| Told::NoReply)?;
    match c.read_reply() {
        Ok(r) if r.code == 220 => {}
        Ok(r) => return Err(Told::Reply(r.code)),
        Err(_) => return Err(Told::NoReply),
    }
    match c.try_cmd("EHLO client.example.org") {
        Ok(r) if r.code == 250 => Ok(c),
        Ok(r) => Err(Told::Reply(r.code)),
        Err(_) => Err(Told::NoReply),
    }
}

/// One transaction as far as the server lets it go.
fn transaction(
    c: &mut SmtpClient,
    msg: &[u8],
    mode: Mode,
    in_flight: Option<&AtomicUsize>,
) -> Told {
    let step = |c: &mut SmtpClient, line: &str| -> Result<u16, Told> {
        match c.try_cmd(line) {
            Ok(r) if r.is_positive() || r.code == 354 => Ok(r.code),
            Ok(r) => Err(Told::Reply(r.code)),
            Err(_) => Err(Told::NoReply),
        }
    };
    let reply = |c: &mut SmtpClient| match c.read_reply() {
        Ok(r) => Told::Reply(r.code),
        Err(_) => Told::NoReply,
    };
    if let Err(t) = step(c, "MAIL FROM:<alice@example.org>") {
        return t;
    }
    if let Some(n) = in_flight {
        n.fetch_add(1, Ordering::SeqCst);
    }
    let told = (|| {
        step(c, "RCPT TO:<user@example.org>")?;
        let half = msg.len() / 2;
        Ok(match mode {
            Mode::Data => {
                step(c, "DATA")?;
                if c.try_send(&dot_terminated(msg)).is_err() {
                    return Err(Told::NoReply);
                }
                reply(c)
            }
            Mode::DataQuitPipelined => {
                step(c, "DATA")?;
                let mut bytes = dot_terminated(msg);
                bytes.extend_from_slice(b"QUIT\r\n");
                if c.try_send(&bytes).is_err() {
                    return Err(Told::NoReply);
                }
                let told = reply(c);
                // The QUIT's 221 (or nothing): the session is over either way.
                let _ = c.read_reply();
                told
            }
            Mode::Bdat | Mode::HangUpMidBdat => {
                if c.try_send(&bdat_bytes(&msg[..half], false)).is_err() {
                    return Err(Told::NoReply);
                }
                match c.read_reply() {
                    Ok(r) if r.is_positive() => {}
                    Ok(r) => return Err(Told::Reply(r.code)),
                    Err(_) => return Err(Told::NoReply),
                }
                let rest = &msg[half..];
                if matches!(mode, Mode::HangUpMidBdat) {
                    let mut bytes = format!("BDAT {} LAST\r\n", rest.len()).into_bytes();
                    bytes.extend_from_slice(&rest[..rest.len() / 2]);
                    let _ = c.try_send(&bytes);
                    return Ok(Told::HungUp);
                }
                if c.try_send(&bdat_bytes(rest, true)).is_err() {
                    return Err(Told::NoReply);
                }
                reply(c)
            }
            Mode::HangUpMidData => {
                step(c, "DATA")?;
                let _ = c.try_send(&msg[..half]);
                Told::HungUp
            }
        })
    })()
    .unwrap_or_else(|t| t);
    if let Some(n) = in_flight {
        n.fetch_sub(1, Ordering::SeqCst);
    }
    told
}

/// The load of one row: `sessions` concurrent sessions, `per_session` transactions each.
/// A session continues after a refusal (with RSET) and reconnects after a broken or
/// closed connection.
struct Load {
    prefix: String,
    sessions: usize,
    per_session: usize,
    size: usize,
    mode: fn(usize) -> Mode,
}

impl Load {
    fn new(prefix: &str, sessions: usize, per_session: usize) -> Load {
        Load {
            prefix: prefix.to_string(),
            sessions,
            per_session,
            size: 2048,
            mode: |n| {
                if n.is_multiple_of(2) {
                    Mode::Data
                } else {
                    Mode::Bdat
                }
            },
        }
    }

    fn size(mut self, size: usize) -> Load {
        self.size = size;
        self
    }

    fn mode(mut self, mode: fn(usize) -> Mode) -> Load {
        self.mode = mode;
        self
    }

    fn id(&self, session: usize, n: usize) -> String {
        format!("{}-{session}-{n}@matrix.example.org", self.prefix)
    }

    /// Runs the load to its end.
    fn run(&self, addr: SocketAddr, outcomes: &Outcomes) {
        std::thread::scope(|s| {
            for session in 0..self.sessions {
                s.spawn(move || {
                    let mut conn: Option<SmtpClient> = None;
                    for n in 0..self.per_session {
                        let id = self.id(session, n);
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match open(addr) {
                                Ok(c) => conn.insert(c),
                                Err(t) => {
                                    lock(outcomes).push((id, t));
                                    continue;
                                }
                            },
                        };
                        let mode = (self.mode)(n);
                        let told = transaction(c, &message(&id, self.size), mode, None);
                        lock(outcomes).push((id, told));
                        match told {
                            Told::Reply(250) if !matches!(mode, Mode::DataQuitPipelined) => {}
                            Told::Reply(421) | Told::NoReply | Told::HungUp => conn = None,
                            Told::Reply(_) if matches!(mode, Mode::DataQuitPipelined) => {
                                conn = None
                            }
                            Told::Reply(_) => {
                                if c.try_cmd("RSET").map(|r| r.code).ok() != Some(250) {
                                    conn = None;
                                }
                            }
                        }
                    }
                    if let Some(mut c) = conn {
                        c.quit();
                    }
                });
            }
        });
    }
}

/// What a row expects of the clients' answers (besides the invariant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Every transaction acknowledged.
    AllAcked,
    /// None acknowledged; every refusal in this reply class (4 or 5).
    NoneAcked(u16),
    /// Some acknowledged, some refused (a fault that starts during the row).
    Mixed,
    /// No transaction got a final reply (the client hung up each time).
    AllHungUp,
}

/// Where a row's messages end up.
enum Store {
    /// The fake upstream: accepted messages, and those it read whole but whose reply was
    /// lost (the ambiguous case when its script would have accepted them).
    Fake {
        accepted: Vec<Vec<u8>>,
        unanswered: Vec<Vec<u8>>,
    },
    /// The shared Postfix (counted after all rows, when its queue has settled).
    Postfix,
    /// Files in these directories (a Maildir's new/, a quarantine's *.eml).
    Files(Vec<Vec<u8>>),
    /// Nothing can have been stored (no upstream at all).
    Nothing,
}

struct RowRun {
    outcomes: Vec<(String, Told)>,
    store: Store,
    notes: String,
    /// Other broken promises the row found (e.g. debris left on a full disk).
    problems: Vec<String>,
}

struct Row {
    fault: String,
    expect: Expect,
    /// The ambiguous case (upstream took it, its reply was lost, client told 451) may occur.
    ambiguous_ok: bool,
    /// The connection may break without a final reply (the proxy itself goes away).
    no_reply_ok: bool,
    run: Box<dyn FnOnce(&Postfix) -> RowRun + Send>,
}

fn row(fault: &str, expect: Expect, run: impl FnOnce(&Postfix) -> RowRun + Send + 'static) -> Row {
    Row {
        fault: fault.to_string(),
        expect,
        ambiguous_ok: false,
        no_reply_ok: false,
        run: Box::new(run),
    }
}

/// The counted result of a row.
#[derive(Default)]
struct Tally {
    txns: usize,
    acked: usize,
    temp: usize,
    perm: usize,
    no_reply: usize,
    delivered: usize,
    lost: usize,
    duplicated: usize,
    ambiguous: usize,
    problems: Vec<String>,
}

fn message_id(raw: &[u8]) -> Option<String> {
    messages::header(raw, "Message-ID").map(|v| v.trim_matches(['<', '>']).to_string())
}

fn count_ids(msgs: &[Vec<u8>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for m in msgs {
        if let Some(id) = message_id(m) {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

fn tally(
    row: &Row,
    run: &RowRun,
    stored: &BTreeMap<String, usize>,
    unanswered: &BTreeSet<String>,
) -> Tally {
    let mut t = Tally {
        txns: run.outcomes.len(),
        problems: run.problems.clone(),
        ..Tally::default()
    };
    let mut seen = BTreeSet::new();
    for (id, told) in &run.outcomes {
        seen.insert(id.clone());
        let n = stored.get(id).copied().unwrap_or(0);
        if n > 0 {
            t.delivered += 1;
        }
        match told {
            Told::Reply(c) if (200..300).contains(c) => t.acked += 1,
            Told::Reply(c) if (400..500).contains(c) => t.temp += 1,
            Told::Reply(c) if (500..600).contains(c) => t.perm += 1,
            Told::Reply(c) => t
                .problems
                .push(format!("{id}: final reply {c} is neither 2xx, 4xx nor 5xx")),
            Told::NoReply => {
                t.no_reply += 1;
                if !row.no_reply_ok {
                    t.problems
                        .push(format!("{id}: the connection broke without a final reply"));
                }
            }
            Told::HungUp => {}
        }
        let acked = told.acked();
        if acked && n == 0 {
            t.lost += 1;
            t.problems
                .push(format!("{id}: acknowledged, never delivered"));
        } else if n > 1 {
            t.duplicated += 1;
            t.problems.push(format!("{id}: delivered {n} times"));
        } else if !acked && n == 1 {
            if row.ambiguous_ok && matches!(told, Told::Reply(451)) {
                t.ambiguous += 1;
            } else {
                t.duplicated += 1;
                t.problems.push(format!(
                    "{id}: delivered although the client was told {told:?} (its retry duplicates it)"
                ));
            }
        } else if !acked && n == 0 && unanswered.contains(id) {
            // The fake upstream read it whole and would have said 250, but the proxy had
            // given up: a real MTA would have queued it.
            if row.ambiguous_ok && matches!(told, Told::Reply(451)) {
                t.ambiguous += 1;
            } else {
                t.duplicated += 1;
                t.problems.push(format!(
                    "{id}: the upstream took it (reply lost) and the client was told {told:?}"
                ));
            }
        }
    }
    let row_prefix = run
        .outcomes
        .first()
        .and_then(|(id, _)| id.split('-').next())
        .unwrap_or("");
    for (id, n) in stored {
        if id.split('-').next() == Some(row_prefix) && !seen.contains(id) {
            t.duplicated += 1;
            t.problems.push(format!(
                "{id}: delivered {n} time(s) but never sent by a client"
            ));
        }
    }
    if t.ambiguous > 0 && !row.ambiguous_ok {
        t.problems
            .push("ambiguous transactions in a row that cannot cause them".into());
    }
    if row.ambiguous_ok && t.ambiguous == 0 {
        t.problems
            .push("the ambiguous case this row is for did not happen".into());
    }
    let refused = t.temp + t.perm;
    let ok = match row.expect {
        Expect::AllAcked => t.acked == t.txns,
        Expect::NoneAcked(4) => t.acked == 0 && t.perm == 0 && t.temp + t.no_reply == t.txns,
        Expect::NoneAcked(_) => t.acked == 0 && t.temp == 0 && t.perm + t.no_reply == t.txns,
        Expect::Mixed => t.acked > 0 && refused > 0,
        Expect::AllHungUp => t.acked == 0 && refused == 0 && t.delivered == 0,
    };
    if !ok {
        t.problems.push(format!("expected {:?}", row.expect));
    }
    if t.txns < 20 {
        t.problems.push(format!(
            "only {} transactions, the row needs at least 20",
            t.txns
        ));
    }
    t
}

// ---------------------------------------------------------------------------------------------
// Rows with the fake upstream
// ---------------------------------------------------------------------------------------------

fn fake_row(
    fault: &str,
    prefix: impl Into<String>,
    expect: Expect,
    script: Script,
    sessions: usize,
    per: usize,
) -> Row {
    let delayed = [&script.mail, &script.end_of_data]
        .iter()
        .any(|a| matches!(a, Action::Delay(..)));
    let prefix = prefix.into();
    row(fault, expect, move |_| {
        let fake = FakeUpstream::start(script);
        let proxy = Proxy::start(&Proxy::config(&fake.url(), SERVER, FAKE_TIMEOUTS));
        let outcomes = Outcomes::default();
        Load::new(&prefix, sessions, per).run(proxy.addr(), &outcomes);
        if delayed {
            // The fake's late replies come 5 s after the command: let them all fall due.
            std::thread::sleep(Duration::from_secs(6));
        }
        let notes = format!("{} upstream connections", fake.connections());
        drop(proxy);
        RowRun {
            outcomes: lock(&outcomes).clone(),
            store: Store::Fake {
                accepted: fake.messages().into_iter().map(|m| m.body).collect(),
                // Read whole but unanswered: the script would have accepted them, late.
                unanswered: if delayed {
                    fake.not_accepted().into_iter().map(|m| m.body).collect()
                } else {
                    Vec::new()
                },
            },
            notes,
            problems: Vec::new(),
        }
    })
}

fn stage_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    type Set = fn(&mut Script, Action);
    let stages: [(&str, &str, bool, Set); 4] = [
        ("MAIL", "mail", true, |s, a| s.mail = a),
        ("RCPT", "rcpt", true, |s, a| s.rcpt = a),
        ("DATA", "data", false, |s, a| s.data = a),
        ("end of data", "eod", true, |s, a| s.end_of_data = a),
    ];
    for (stage, slug, chunking, set) in stages {
        for (class, text) in [
            (4u16, "451 4.3.0 Error: queue file write error"),
            (5u16, "554 5.7.1 Error: refused by upstream"),
        ] {
            let mut script = Script::default().chunking(chunking);
            set(&mut script, Action::reply(text));
            rows.push(fake_row(
                &format!("upstream {class}xx at {stage}"),
                format!("{slug}{class}xx"),
                Expect::NoneAcked(class),
                script,
                4,
                5,
            ));
        }
    }
    rows
}

fn upstream_rows() -> Vec<Row> {
    let mut rows = vec![row(
        "upstream refuses connections",
        Expect::NoneAcked(4),
        |_| {
            let url = format!("smtp://127.0.0.1:{}", support::unused_port());
            let proxy = Proxy::start(&Proxy::config(&url, SERVER, FAKE_TIMEOUTS));
            let outcomes = Outcomes::default();
            Load::new("refused", 4, 6).run(proxy.addr(), &outcomes);
            RowRun {
                outcomes: lock(&outcomes).clone(),
                store: Store::Nothing,
                notes: String::new(),
                problems: Vec::new(),
            }
        },
    )];
    rows.push(fake_row(
        "upstream accepts, never greets",
        "nogreet",
        Expect::NoneAcked(4),
        Script {
            greeting: Action::Hang,
            ..Script::default()
        },
        12,
        2,
    ));
    rows.push(fake_row(
        "upstream dies during DATA",
        "diesdata",
        Expect::NoneAcked(4),
        Script {
            close_in_body: true,
            ..Script::default().chunking(false)
        },
        4,
        6,
    ));
    rows.push(fake_row(
        "upstream dies during BDAT",
        "diesbdat",
        Expect::NoneAcked(4),
        Script {
            close_in_body: true,
            ..Script::default()
        },
        4,
        6,
    ));
    rows.push(fake_row(
        "upstream slower than timeout at MAIL",
        "slowmail",
        Expect::NoneAcked(4),
        Script {
            mail: Action::Delay(Duration::from_secs(5), "250 2.1.0 Ok".into()),
            ..Script::default()
        },
        12,
        2,
    ));
    let mut slow_eod = fake_row(
        "upstream slower than timeout at end of data",
        "sloweod",
        Expect::NoneAcked(4),
        Script {
            end_of_data: Action::Delay(
                Duration::from_secs(5),
                "250 2.0.0 Ok: queued as {id}".into(),
            ),
            ..Script::default()
        },
        12,
        2,
    );
    slow_eod.ambiguous_ok = true;
    rows.push(slow_eod);
    rows.extend(stage_rows());
    rows
}

// ---------------------------------------------------------------------------------------------
// Rows in front of the real Postfix
// ---------------------------------------------------------------------------------------------

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

/// A proxy in front of `pf` with the shipped rules and extra config sections.
fn postfix_proxy(pf: &Postfix, server_extra: &str, extra: &str) -> Proxy {
    Proxy::start(&format!(
        "[server]\nhostname = \"mx.example.test\"\n{SERVER}{server_extra}\n[upstream]\nurl = \"{}\"\n{POSTFIX_TIMEOUTS}\n\
         [rules]\npaths = [\"{}\"]\n{extra}",
        pf.url(),
        rules_dir().display()
    ))
}

fn postfix_row(
    fault: &str,
    prefix: impl Into<String>,
    expect: Expect,
    extra: impl FnOnce() -> (String, Box<dyn std::any::Any + Send>) + Send + 'static,
    load: impl FnOnce(&str) -> Load + Send + 'static,
) -> Row {
    let prefix = prefix.into();
    row(fault, expect, move |pf| {
        // `keep` holds whatever the fault needs alive (a clamd, a DNS socket).
        let (config, keep) = extra();
        let proxy = postfix_proxy(pf, "", &config);
        let outcomes = Outcomes::default();
        load(&prefix).run(proxy.addr(), &outcomes);
        drop(proxy);
        drop(keep);
        RowRun {
            outcomes: lock(&outcomes).clone(),
            store: Store::Postfix,
            notes: String::new(),
            problems: Vec::new(),
        }
    })
}

fn clamav(address: &str, extra: &str) -> String {
    format!("[clamav]\nenabled = true\naddress = \"{address}\"\n{extra}")
}

fn postfix_rows() -> Vec<Row> {
    let mut rows = vec![
        postfix_row(
            "clamd down",
            "clamddown",
            Expect::NoneAcked(4),
            || {
                let mut clamd = Clamd::start();
                clamd.stop();
                (clamav(&clamd.address(), ""), Box::new(clamd))
            },
            |p| Load::new(p, 4, 6),
        ),
        postfix_row(
            "clamd hanging (never answers)",
            "clamdhang",
            Expect::NoneAcked(4),
            || {
                let silent = SilentClamd::start();
                (
                    clamav(&silent.address(), "timeout_ms = 700\n"),
                    Box::new(silent),
                )
            },
            |p| Load::new(p, 6, 4),
        ),
        postfix_row(
            "clamd answering ERROR",
            "clamderr",
            Expect::NoneAcked(4),
            || {
                // clamd's stream limit below the messages' size: "size limit exceeded. ERROR".
                let clamd = Clamd::start_with("StreamMaxLength 1K\n");
                (clamav(&clamd.address(), ""), Box::new(clamd))
            },
            |p| Load::new(p, 4, 6),
        ),
    ];
    for (down, dslug) in [(true, "dnsdown"), (false, "dnssilent")] {
        for tempfail in [true, false] {
            let prefix = format!("{dslug}{}", if tempfail { "tf" } else { "ok" });
            rows.push(postfix_row(
                &format!(
                    "DNS {} (tempfail_on_dns_error = {tempfail})",
                    if down { "server down" } else { "timing out" }
                ),
                prefix,
                if tempfail {
                    Expect::NoneAcked(4)
                } else {
                    Expect::AllAcked
                },
                move || {
                    // Down: nothing listens on the port. Timing out: a socket that never answers.
                    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind a silent DNS socket");
                    let ns = if down {
                        support::loopback(support::unused_port())
                    } else {
                        silent.local_addr().expect("silent DNS address")
                    };
                    (
                        format!(
                            "[dns]\nnameservers = [\"{ns}\"]\ntimeout_ms = 300\n\
                             [auth]\nenabled = true\ntempfail_on_dns_error = {tempfail}\n"
                        ),
                        Box::new(silent),
                    )
                },
                |p| Load::new(p, 8, 3),
            ));
        }
    }
    rows.push(postfix_row(
        "client disconnects mid-DATA",
        "hangupdata",
        Expect::AllHungUp,
        || (String::new(), Box::new(())),
        |p| Load::new(p, 4, 6).size(8192).mode(|_| Mode::HangUpMidData),
    ));
    rows.push(postfix_row(
        "client disconnects mid-BDAT",
        "hangupbdat",
        Expect::AllHungUp,
        || (String::new(), Box::new(())),
        |p| Load::new(p, 4, 6).size(8192).mode(|_| Mode::HangUpMidBdat),
    ));
    rows.push(postfix_row(
        "client pipelines QUIT after the data",
        "quitpipe",
        Expect::AllAcked,
        || (String::new(), Box::new(())),
        |p| Load::new(p, 4, 6).mode(|_| Mode::DataQuitPipelined),
    ));
    rows.insert(
        0,
        row(
            "rules reloaded 20 times during load",
            Expect::AllAcked,
            reload_row,
        ),
    );
    let mut term = row(
        "SIGTERM with 50 sessions mid-transaction",
        Expect::Mixed,
        sigterm_row,
    );
    term.no_reply_ok = true;
    rows.push(term);
    rows
}

/// 50 sessions send until the proxy closes them; SIGTERM arrives in the middle of it.
fn sigterm_row(pf: &Postfix) -> RowRun {
    // A 5 s grace (the default 30 s is long for a test).
    let mut proxy = postfix_proxy(pf, "shutdown_grace = \"5s\"\n", "");
    let outcomes = Outcomes::default();
    let in_flight = AtomicUsize::new(0);
    let addr = proxy.addr();
    let mut notes = String::new();
    std::thread::scope(|s| {
        for session in 0..50 {
            let (outcomes, in_flight) = (&outcomes, &in_flight);
            s.spawn(move || {
                let mut c = match open(addr) {
                    Ok(c) => c,
                    Err(t) => {
                        lock(outcomes).push((format!("sigterm-{session}-0@matrix.example.org"), t));
                        return;
                    }
                };
                for n in 0..2000usize {
                    let id = format!("sigterm-{session}-{n}@matrix.example.org");
                    let mode = if n.is_multiple_of(2) {
                        Mode::Data
                    } else {
                        Mode::Bdat
                    };
                    let told = transaction(&mut c, &message(&id, 2048), mode, Some(in_flight));
                    lock(outcomes).push((id, told));
                    if told != Told::Reply(250) {
                        return;
                    }
                }
            });
        }
        let warm = support::wait_until(Duration::from_secs(30), || {
            (lock(&outcomes).len() >= 150).then_some(())
        });
        let busy = in_flight.load(Ordering::SeqCst);
        proxy.sigterm();
        let exited = proxy.wait_exit(Duration::from_secs(30));
        notes = format!(
            "{busy} sessions mid-transaction at SIGTERM; warm-up {}; exit {exited:?}",
            if warm.is_some() { "ok" } else { "TIMED OUT" }
        );
        assert!(warm.is_some(), "the load did not get going");
        assert!(exited.is_some(), "the proxy did not exit after SIGTERM");
    });
    RowRun {
        outcomes: lock(&outcomes).clone(),
        store: Store::Postfix,
        notes,
        problems: Vec::new(),
    }
}

/// Copies a directory tree (the shipped rules and their lists).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a rules copy");
    for entry in std::fs::read_dir(from).expect("read the rules dir") {
        let path = entry.expect("rules dir entry").path();
        let target = to.join(path.file_name().expect("a file name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy a rule file");
        }
    }
}

/// Sessions keep sending while the rules are reloaded 20 times, alternately by rewriting a
/// rule file (the watcher) and by SIGHUP.
fn reload_row(pf: &Postfix) -> RowRun {
    let rules = tempfile::tempdir().expect("rules tempdir");
    copy_dir(&rules_dir(), rules.path());
    let local = rules.path().join("99_reload.cf");
    let write_rule = |n: usize| {
        std::fs::write(
            &local,
            format!(
                "header MW_RELOAD_{n} Subject =~ /never-matches-{n}/\nscore MW_RELOAD_{n} 0.{n}\n"
            ),
        )
        .expect("write 99_reload.cf")
    };
    write_rule(0);
    let proxy = Proxy::start(&format!(
        "[server]\nhostname = \"mx.example.test\"\n{SERVER}\n[upstream]\nurl = \"{}\"\n{POSTFIX_TIMEOUTS}\n\
         [rules]\npaths = [\"{}\"]\nwatch = true\n",
        pf.url(),
        rules.path().display()
    ));
    let outcomes = Outcomes::default();
    let stop = AtomicBool::new(false);
    let addr = proxy.addr();
    let reloads = |p: &Proxy| p.log().matches("rules reloaded").count();
    let mut done = 0;
    std::thread::scope(|s| {
        for session in 0..4 {
            let (outcomes, stop) = (&outcomes, &stop);
            s.spawn(move || {
                let mut c = open(addr).ok();
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) || n < 3 {
                    let id = format!("reload-{session}-{n}@matrix.example.org");
                    n += 1;
                    let Some(conn) = c.as_mut() else {
                        lock(outcomes).push((id, Told::NoReply));
                        c = open(addr).ok();
                        continue;
                    };
                    let mode = if n.is_multiple_of(2) {
                        Mode::Data
                    } else {
                        Mode::Bdat
                    };
                    let told = transaction(conn, &message(&id, 2048), mode, None);
                    lock(outcomes).push((id, told));
                    if told != Told::Reply(250) {
                        c = open(addr).ok();
                    }
                    // Steady load, not a CPU hog: the reloads must get their turn too.
                    std::thread::sleep(Duration::from_millis(60));
                }
            });
        }
        for i in 1..=20usize {
            let before = reloads(&proxy);
            if i.is_multiple_of(2) {
                proxy.sighup();
            } else {
                write_rule(i);
            }
            let ok = support::wait_until(Duration::from_secs(10), || {
                (reloads(&proxy) > before).then_some(())
            });
            if ok.is_none() {
                break;
            }
            done = i;
        }
        stop.store(true, Ordering::SeqCst);
    });
    let log = proxy.log();
    let notes = format!(
        "{done} reloads seen ({} 'rules reloaded' lines, {} 'NOT reloaded')",
        log.matches("rules reloaded").count(),
        log.matches("NOT reloaded").count()
    );
    assert_eq!(done, 20, "the proxy did not reload 20 times: {notes}");
    RowRun {
        outcomes: lock(&outcomes).clone(),
        store: Store::Postfix,
        notes,
        problems: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Rows with a full or read-only file system
// ---------------------------------------------------------------------------------------------

/// A small tmpfs mounted for one row (unmounted on drop), or, where mounting is not
/// permitted, a plain directory that the row breaks by other means.
struct Volume {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Volume {
    fn new(size_kib: usize) -> Volume {
        let dir = tempfile::Builder::new()
            .prefix("mailwarden-matrix-fs-")
            .tempdir()
            .expect("tempdir for a volume");
        // MATRIX_NO_MOUNT=1 tries the fallback where mounting is permitted.
        let mounted = std::env::var_os("MATRIX_NO_MOUNT").is_none()
            && Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size_kib}k,mode=0755"),
                    "tmpfs",
                ])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        Volume { dir, mounted }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes `sub` unwritable: remount read-only, or else replace the directory `sub` by a
    /// file (creating anything inside then fails with ENOTDIR, even for root).
    fn break_writes(&self, sub: &str) -> &'static str {
        if self.mounted {
            let ok = Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(self.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "remount {} read-only failed", self.path().display());
            "tmpfs remounted read-only"
        } else {
            // What was stored stays countable in `SUB.moved`.
            let p = self.path().join(sub);
            std::fs::rename(&p, p.with_extension("moved")).expect("move the directory aside");
            std::fs::write(&p, b"not a directory").expect("replace the directory by a file");
            "directory replaced by a file (mount not permitted)"
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn files(dir: &Path, ext: Option<&str>) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| ext.is_none_or(|x| p.extension().is_some_and(|e| e == x)))
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// Maildir delivery (the embedded upstream) onto a volume that fills up or turns read-only.
fn maildir_row(fault: &str, prefix: &'static str, full: bool) -> Row {
    row(fault, Expect::Mixed, move |_| {
        // 160 KiB: some 6 KiB messages fit, then ENOSPC.
        let vol = Volume::new(if full { 160 } else { 4096 });
        let mail = vol.path().join("mail");
        let proxy = Proxy::start(&format!(
            "[server]\nhostname = \"mx.example.test\"\n{SERVER}\n[upstream]\nurl = \"maildir:{}\"\n[rules]\npaths = []\n",
            mail.display()
        ));
        let outcomes = Outcomes::default();
        let mut how = "tmpfs full";
        if full && !vol.mounted {
            Load::new(prefix, 2, 5)
                .size(6144)
                .run(proxy.addr(), &outcomes);
            how = vol.break_writes("mail/tmp");
            Load::new(&format!("{prefix}-b"), 4, 5)
                .size(6144)
                .run(proxy.addr(), &outcomes);
        } else if full {
            Load::new(prefix, 4, 10)
                .size(6144)
                .run(proxy.addr(), &outcomes);
        } else {
            Load::new(prefix, 2, 5)
                .size(6144)
                .run(proxy.addr(), &outcomes);
            how = vol.break_writes("mail/tmp");
            Load::new(&format!("{prefix}-b"), 4, 5)
                .size(6144)
                .run(proxy.addr(), &outcomes);
        }
        let leftovers = std::fs::read_dir(mail.join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0);
        let stored = files(&mail.join("new"), None);
        drop(proxy);
        RowRun {
            outcomes: lock(&outcomes).clone(),
            store: Store::Files(stored),
            notes: format!("{how}; {leftovers} file(s) left in tmp/"),
            problems: if leftovers > 0 {
                vec![format!(
                    "{leftovers} partial file(s) left in the Maildir's tmp/"
                )]
            } else {
                Vec::new()
            },
        }
    })
}

/// Every message is quarantined (a rule forces it) into a volume that fills up or turns
/// read-only; the relayed Maildir is on the normal disk and must stay empty.
fn quarantine_row(fault: &str, prefix: &'static str, full: bool) -> Row {
    row(fault, Expect::Mixed, move |_| {
        let vol = Volume::new(if full { 96 } else { 4096 });
        let q = vol.path().join("q");
        let rules = "header MW_QUARANTINE_ME Subject =~ /minutes of the meeting/\n\
                     score MW_QUARANTINE_ME 0.1\n";
        let proxy = Proxy::start_with_files(
            &format!(
                "[server]\nhostname = \"mx.example.test\"\n{SERVER}\n[upstream]\nurl = \"maildir:@DIR@/mail\"\n\
                 [rules]\npaths = [\"@DIR@/q.cf\"]\n\
                 [policy]\nquarantine_dir = \"{}\"\n\
                 [policy.rules.MW_QUARANTINE_ME]\naction = \"quarantine\"\n",
                q.display()
            ),
            &[("q.cf", rules.as_bytes())],
        );
        let outcomes = Outcomes::default();
        let mut how = "tmpfs full";
        if full && vol.mounted {
            Load::new(prefix, 4, 10)
                .size(6144)
                .run(proxy.addr(), &outcomes);
        } else {
            Load::new(prefix, 2, 5)
                .size(6144)
                .run(proxy.addr(), &outcomes);
            how = vol.break_writes("q");
            Load::new(&format!("{prefix}-b"), 4, 5)
                .size(6144)
                .run(proxy.addr(), &outcomes);
        }
        let mut stored = files(&q, Some("eml"));
        stored.extend(files(&q.with_extension("moved"), Some("eml")));
        let relayed = files(&proxy.dir().join("mail/new"), None);
        let others: usize = [q.clone(), q.with_extension("moved")]
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| {
                        !e.path()
                            .extension()
                            .is_some_and(|x| x == "eml" || x == "json")
                    })
                    .count()
            })
            .sum();
        let notes = format!(
            "{how}; {} relayed (must be 0); {others} other file(s) in the quarantine",
            relayed.len()
        );
        // A quarantined message that was also relayed is stored twice.
        stored.extend(relayed);
        drop(proxy);
        RowRun {
            outcomes: lock(&outcomes).clone(),
            store: Store::Files(stored),
            notes,
            problems: if others > 0 {
                vec![format!("{others} partial file(s) left in the quarantine")]
            } else {
                Vec::new()
            },
        }
    })
}

fn disk_rows() -> Vec<Row> {
    vec![
        maildir_row("maildir disk full", "mdfull", true),
        maildir_row("maildir read-only", "mdro", false),
        quarantine_row("quarantine disk full", "qfull", true),
        quarantine_row("quarantine read-only", "qro", false),
    ]
}

// ---------------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------------

/// A counting semaphore: at most `n` rows at once on this small machine.
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    fn acquire(&self) {
        let mut f = lock(&self.free);
        while *f == 0 {
            f = self.cv.wait(f).unwrap_or_else(|p| p.into_inner());
        }
        *f -= 1;
    }

    fn release(&self) {
        *lock(&self.free) += 1;
        self.cv.notify_one();
    }
}

#[test]
fn fault_matrix_loses_and_duplicates_nothing() {
    let started = Instant::now();
    // Many proxies hold upstream connections at once: room for all of them.
    let pf = Postfix::start_with("default_process_limit = 400\n");
    // The longest rows first (the reloads take ~1.5 s each in a debug build).
    let mut rows = postfix_rows();
    rows.extend(upstream_rows());
    rows.extend(disk_rows());
    // MATRIX_ROWS=word runs only the rows whose name contains it (for working on one row).
    if let Ok(only) = std::env::var("MATRIX_ROWS") {
        rows.retain(|r| r.fault.contains(&only));
    }
    let slots = Slots {
        free: Mutex::new(8),
        cv: Condvar::new(),
    };
    let mut specs = Vec::new();
    let mut runs: Vec<Result<RowRun, String>> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .into_iter()
            .map(|r| {
                let Row {
                    fault,
                    expect,
                    ambiguous_ok,
                    no_reply_ok,
                    run,
                } = r;
                specs.push(Row {
                    fault,
                    expect,
                    ambiguous_ok,
                    no_reply_ok,
                    run: Box::new(|_| unreachable!()),
                });
                let (pf, slots) = (&pf, &slots);
                s.spawn(move || {
                    slots.acquire();
                    let t0 = Instant::now();
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(pf)));
                    slots.release();
                    out.map(|mut r| {
                        r.notes = format!("{:.1}s; {}", t0.elapsed().as_secs_f64(), r.notes);
                        r
                    })
                    .map_err(|e| {
                        e.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panic".into())
                    })
                })
            })
            .collect();
        for h in handles {
            runs.push(
                h.join()
                    .unwrap_or_else(|_| Err("row thread panicked".into())),
            );
        }
    });

    // Postfix: every acknowledged message should arrive; wait for the queue, then count.
    let acked_pf: BTreeSet<String> = runs
        .iter()
        .flatten()
        .filter(|r| matches!(r.store, Store::Postfix))
        .flat_map(|r| {
            r.outcomes
                .iter()
                .filter(|(_, t)| t.acked())
                .map(|(id, _)| id.clone())
        })
        .collect();
    let mut pf_stored = count_ids(&pf.settle());
    let _ = support::wait_until(Duration::from_secs(15), || {
        pf_stored = count_ids(&pf.messages());
        acked_pf
            .iter()
            .all(|id| pf_stored.contains_key(id))
            .then_some(())
    });

    let mut table = String::new();
    table.push_str(&format!(
        "{:<46} {:>5} {:>5} {:>4} {:>4} {:>5} {:>5} {:>4} {:>4} {:>5}  notes\n",
        "fault", "txns", "ack", "4xx", "5xx", "noans", "deliv", "lost", "dup", "ambig"
    ));
    let mut failures = Vec::new();
    for (spec, run) in specs.iter().zip(&runs) {
        let run = match run {
            Ok(r) => r,
            Err(e) => {
                table.push_str(&format!("{:<46} FAILED TO RUN: {e}\n", spec.fault));
                failures.push(format!("{}: failed to run: {e}", spec.fault));
                continue;
            }
        };
        let (stored, unanswered) = match &run.store {
            Store::Fake {
                accepted,
                unanswered,
            } => (
                count_ids(accepted),
                count_ids(unanswered).into_keys().collect::<BTreeSet<_>>(),
            ),
            Store::Postfix => (pf_stored.clone(), BTreeSet::new()),
            Store::Files(f) => (count_ids(f), BTreeSet::new()),
            Store::Nothing => (BTreeMap::new(), BTreeSet::new()),
        };
        let t = tally(spec, run, &stored, &unanswered);
        table.push_str(&format!(
            "{:<46} {:>5} {:>5} {:>4} {:>4} {:>5} {:>5} {:>4} {:>4} {:>5}  {}\n",
            spec.fault,
            t.txns,
            t.acked,
            t.temp,
            t.perm,
            t.no_reply,
            t.delivered,
            t.lost,
            t.duplicated,
            t.ambiguous,
            run.notes
        ));
        if !t.problems.is_empty() {
            failures.push(format!(
                "{}:\n  {}",
                spec.fault,
                t.problems
                    .iter()
                    .take(20)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ));
        }
    }
    println!(
        "\nfault matrix ({:.1}s): txns = transactions, ack = client got 250, noans = connection \
         broke before a final reply, deliv = stored upstream, lost = acknowledged but not stored, \
         dup = stored twice or stored without 250, ambig = upstream took it but its reply was \
         lost (client told 451: its retry may duplicate)\n{table}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "fault matrix failures:\n{}\n\n{table}",
        failures.join("\n")
    );
}

/// A SIGHUP as soon as the proxy says it is listening reloads the rules; it used to arrive
/// before the handler existed now and then, and kill the proxy (SIGHUP's default action).
#[test]
fn sighup_right_after_start_reloads_instead_of_killing() {
    for _ in 0..5 {
        let mut proxy = Proxy::start(&format!(
            "[upstream]\nurl = \"maildir:@DIR@/mail\"\n[rules]\npaths = [\"{}\"]\n",
            rules_dir().display()
        ));
        proxy.sighup();
        // A reload compiles every rule again: slow in a debug build on a busy machine.
        let _ = support::wait_until(Duration::from_secs(30), || {
            proxy.log().contains("rules reloaded").then_some(())
        });
        let log = proxy.log();
        assert!(proxy.is_running(), "SIGHUP killed the proxy:\n{log}");
        assert!(log.contains("cause=\"SIGHUP\""), "no reload logged:\n{log}");
    }
}
