//! The files in deploy/, checked and run as far as this machine allows.
//!
//! * The two Postfix set-ups of deploy/postfix/README.md run for real: a private Postfix
//!   instance (tests/support/postfix.rs) gets the *documented* master.cf lines, read from
//!   deploy/postfix/{front,proxy-filter}/master.cf.snippet at test time with only the ports
//!   (and the chroot column: the private instance has no chroot jail) changed, and mailwarden
//!   runs with the documented deploy/postfix/*/mailwarden.toml, with only the listener, the
//!   upstream port, the rules path and the quarantine directory changed. A clean message is
//!   delivered with mailwarden's headers; a spam message gets mailwarden's `550 5.7.1` (in
//!   set-up 2 relayed by Postfix) and is not delivered.
//! * The systemd unit passes `systemd-analyze verify` and `systemd-analyze security
//!   --offline=yes` with an exposure of at most 2.0 (of 10).
//! * The Docker files cannot be built or run here (no container engine, no `docker compose`
//!   plugin): compose.yml is parsed and checked for consistency with the Dockerfiles, the
//!   container configs and the Grafana provisioning files; the container's Postfix config
//!   passes `postconf` without warnings.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mailwarden::config::{Config, Xclient};
use support::messages;
use support::{Postfix, Proxy, SmtpClient};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The GTUBE test string: the shipped rules (rules/00_mailwarden.cf) score it 1000.
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

fn repo_path(rel: &str) -> PathBuf {
    Path::new(REPO).join(rel)
}

fn read(rel: &str) -> String {
    let path = repo_path(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn program(name: &str, package: &str) -> PathBuf {
    support::find_program(name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: `apt-get install {package}` (Debian package \
             `{package}`), or run scripts/test.sh"
        )
    })
}

/// Runs a command, returning (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------------------
// master.cf snippets
// ---------------------------------------------------------------------------------------

/// The service entries of a master.cf text: each is its first line plus the indented
/// continuation lines (`-o ...`); comments and blank lines are dropped.
fn master_entries(text: &str) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let last = entries
                .last_mut()
                .unwrap_or_else(|| panic!("continuation line without a service: {line:?}"));
            last.push('\n');
            last.push_str(line);
        } else {
            entries.push(line.to_string());
        }
    }
    entries
}

/// The `-o name=value` overrides of an entry.
fn entry_options(entry: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in entry.lines().skip(1) {
        let t = line.trim();
        let opt = t
            .strip_prefix("-o ")
            .unwrap_or_else(|| panic!("only `-o name=value` continuation lines expected: {t:?}"));
        let (k, v) = opt
            .trim()
            .split_once('=')
            .unwrap_or_else(|| panic!("-o without '=': {t:?}"));
        out.insert(k.to_string(), v.to_string());
    }
    out
}

/// The service name (first column) of an entry.
fn entry_service(entry: &str) -> &str {
    entry.split_whitespace().next().unwrap_or_default()
}

/// The one entry whose service name is `service`.
fn entry_named<'a>(entries: &'a [String], service: &str) -> &'a str {
    let found: Vec<&String> = entries
        .iter()
        .filter(|e| entry_service(e) == service)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one `{service}` service in {entries:#?}"
    );
    found[0]
}

/// `entry` with its service name replaced and the chroot column set to `n` (the private test
/// instance has no chroot jail; Debian's stock lines use `y`). Nothing else changes.
fn for_private_instance(entry: &str, service: &str) -> String {
    let (first, rest) = entry.split_once('\n').unwrap_or((entry, ""));
    let mut cols: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(cols.len(), 8, "a master.cf entry has 8 columns: {first:?}");
    assert_eq!(cols[1], "inet", "an inet service: {first:?}");
    cols[0] = service;
    cols[4] = "n";
    if rest.is_empty() {
        cols.join(" ")
    } else {
        format!("{}\n{rest}", cols.join(" "))
    }
}

/// `postconf -c <conf> -n` on an instance's config: any "unused parameter" warning means a
/// misspelt name in main.cf or in a master.cf `-o` line.
fn assert_postconf_clean(conf: &Path) {
    let postconf = program("postconf", "postfix");
    let (ok, text) = run(Command::new(postconf).arg("-c").arg(conf).arg("-n"));
    assert!(ok, "postconf -c {} -n failed:\n{text}", conf.display());
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("warning") && l.contains("unused parameter"))
        .collect();
    assert!(
        warnings.is_empty(),
        "postconf warns about {}:\n{}",
        conf.display(),
        warnings.join("\n")
    );
}

/// A documented mailwarden.toml made runnable here: `replacements` (exact text, each must
/// occur), the rules at the repository's rules/, the quarantine in the proxy's directory.
/// The `listen` line is replaced by a free port by [`Proxy::start`].
fn documented_config(rel: &str, replacements: &[(&str, &str)]) -> String {
    let mut text = read(rel);
    let rules = repo_path("rules").display().to_string();
    let standard = [
        (r#"["/etc/mailwarden/rules"]"#, format!("[{rules:?}]")),
        (
            r#""/var/lib/mailwarden/quarantine""#,
            "\"@DIR@/quarantine\"".to_string(),
        ),
    ];
    let all = replacements
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .chain(standard.iter().map(|(a, b)| (a.to_string(), b.clone())));
    for (from, to) in all {
        assert_eq!(
            text.matches(&from).count(),
            1,
            "{rel} should contain {from:?} exactly once"
        );
        text = text.replace(&from, &to);
    }
    text
}

fn quarantined(proxy: &Proxy) -> Vec<Vec<u8>> {
    let dir = proxy.dir().join("quarantine");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| std::fs::read(&p).unwrap_or_else(|e| panic!("read {p:?}: {e}")))
        .collect()
}

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.net>\r\nTo: user@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.net>\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// The `Received` fields of a delivered message, top first.
fn received_fields(raw: &[u8]) -> Vec<String> {
    messages::header_fields(raw)
        .into_iter()
        .filter(|f| f.to_ascii_lowercase().starts_with("received:"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Set-up (1): mailwarden in front of Postfix
// ---------------------------------------------------------------------------------------

/// deploy/postfix/front/: Postfix with the documented 10025 listener (and no XCLIENT
/// authorization anywhere else), mailwarden with the documented config. A client on
/// 127.0.0.2 gets its message delivered, and Postfix's Received header names 127.0.0.2, not
/// mailwarden's 127.0.0.1: the snippet's XCLIENT authorization works (with `xclient =
/// "always"` mailwarden would refuse to relay otherwise). GTUBE is refused with 550 and never
/// reaches Postfix.
#[test]
fn front_setup_with_the_documented_lines() {
    let snippet = read("deploy/postfix/front/master.cf.snippet");
    let entries = master_entries(&snippet);
    assert_eq!(entries.len(), 1, "one service in the snippet: {entries:#?}");
    let listener = entry_named(&entries, "127.0.0.1:10025");
    // The only XCLIENT authorization is the snippet's (the private instance's main.cf
    // authorizes 127.0.0.0/8 by default: switched off here).
    let pf = Postfix::start_with_master_cf(
        "smtpd_authorized_xclient_hosts =\nsmtpd_authorized_xforward_hosts =",
        &for_private_instance(listener, "127.0.0.1:@PORT@"),
        "",
    );
    assert_postconf_clean(&pf.dir().join("conf"));

    let config = documented_config(
        "deploy/postfix/front/mailwarden.toml",
        &[(
            "\"smtp://127.0.0.1:10025\"",
            &format!("\"smtp://{}\"", pf.addr()),
        )],
    );
    let proxy = Proxy::start(&config);

    let mut c = SmtpClient::connect_from("127.0.0.2".parse().unwrap(), proxy.addr());
    let greeting = c.reply();
    c.expect_code(&greeting, 220, "greeting");
    let r = c.cmd("EHLO client.example.net");
    c.expect_code(&r, 250, "EHLO");
    c.send_mail(
        "alice@example.net",
        &["user@example.org"],
        &message(
            "front-clean",
            "Hello through mailwarden in front of Postfix.",
        ),
    );
    let r = c.cmd("MAIL FROM:<spammer@example.net>");
    c.expect_code(&r, 250, "MAIL FROM");
    let r = c.cmd("RCPT TO:<user@example.org>");
    c.expect_code(&r, 250, "RCPT TO");
    let r = c.data(&message("front-gtube", GTUBE));
    assert_eq!(r.code, 550, "GTUBE must be refused: {r}");
    assert_eq!(r.enhanced(), Some("5.7.1"), "{r}");
    c.quit();

    let delivered = pf.settle_and_collect(1);
    let m = &delivered[0];
    let text = String::from_utf8_lossy(m);
    assert_eq!(
        messages::header(m, "Message-ID").as_deref(),
        Some("<front-clean@example.net>"),
        "{text}"
    );
    let received = received_fields(m);
    assert_eq!(
        received.len(),
        2,
        "Postfix's and mailwarden's: {received:#?}"
    );
    assert!(
        received[0].contains("by upstream.example.org") && received[0].contains("[127.0.0.2]"),
        "Postfix must see the real client 127.0.0.2 (XCLIENT): {:?}",
        received[0]
    );
    assert!(
        received[1].contains("by mx.example.org"),
        "mailwarden's Received header (documented hostname): {:?}",
        received[1]
    );
    assert_eq!(messages::header(m, "X-Spam-Flag").as_deref(), Some("NO"));
    assert!(text.contains("Hello through mailwarden in front of Postfix."));
    let q = quarantined(&proxy);
    assert_eq!(q.len(), 1, "the rejected message is kept in quarantine_dir");
    assert!(messages::contains(&q[0], GTUBE.as_bytes()));
}

// ---------------------------------------------------------------------------------------
// Set-up (2): Postfix on port 25, mailwarden as its smtpd_proxy_filter
// ---------------------------------------------------------------------------------------

/// deploy/postfix/proxy-filter/: Postfix's port-25 service with the documented
/// `smtpd_proxy_filter` lines hands each message to mailwarden (documented config), which
/// gives it back on the documented return service. A clean message is delivered with
/// Postfix's, mailwarden's and Postfix's Received headers (in that order from the bottom)
/// and mailwarden's X-Spam headers. GTUBE gets mailwarden's `550 5.7.1`, relayed by Postfix
/// to the client, is quarantined by mailwarden and never delivered. An unknown recipient is
/// refused by Postfix itself, before mailwarden.
#[test]
fn proxy_filter_setup_with_the_documented_lines() {
    let snippet = read("deploy/postfix/proxy-filter/master.cf.snippet");
    let entries = master_entries(&snippet);
    assert_eq!(
        entries.len(),
        2,
        "two services in the snippet: {entries:#?}"
    );
    let front = entry_named(&entries, "smtp");
    let back = entry_named(&entries, "127.0.0.1:10025");
    assert_eq!(
        entry_options(front)
            .get("smtpd_proxy_filter")
            .map(String::as_str),
        Some("127.0.0.1:10024")
    );
    assert!(
        entry_options(back).contains_key("smtpd_authorized_xforward_hosts"),
        "the return service authorizes XFORWARD: {back}"
    );

    // mailwarden first (it connects to the return port only when mail comes), on a free
    // port instead of 10024; its upstream is the return port the Postfix instance will get.
    let return_port = support::unused_port();
    let config = documented_config(
        "deploy/postfix/proxy-filter/mailwarden.toml",
        &[(
            "\"smtp://127.0.0.1:10025\"",
            &format!("\"smtp://127.0.0.1:{return_port}\""),
        )],
    );
    let proxy = Proxy::start(&config);

    let front = for_private_instance(front, "127.0.0.1:@PORT@")
        .replace("127.0.0.1:10024", &proxy.addr().to_string());
    let back = for_private_instance(back, &format!("127.0.0.1:{return_port}"));
    let pf = Postfix::start_with_master_cf(
        "smtpd_authorized_xclient_hosts =\nsmtpd_authorized_xforward_hosts =",
        &front,
        &back,
    );
    assert_postconf_clean(&pf.dir().join("conf"));

    // The client connects from 127.0.0.2: Postfix passes that on with XFORWARD.
    let mut c = SmtpClient::connect_from("127.0.0.2".parse().expect("ip"), pf.addr());
    let greeting = c.reply();
    c.expect_code(&greeting, 220, "greeting");
    let r = c.cmd("EHLO client.example.net");
    c.expect_code(&r, 250, "EHLO");
    // Postfix validates recipients itself, before mailwarden is involved.
    let r = c.cmd("MAIL FROM:<alice@example.net>");
    c.expect_code(&r, 250, "MAIL FROM");
    let r = c.cmd("RCPT TO:<nobody@example.org>");
    assert_eq!(r.code, 550, "unknown recipient refused by Postfix: {r}");
    let r = c.cmd("RSET");
    c.expect_code(&r, 250, "RSET");
    c.send_mail(
        "alice@example.net",
        &["user@example.org"],
        &message(
            "filter-clean",
            "Hello through Postfix's before-queue filter.",
        ),
    );
    let r = c.cmd("MAIL FROM:<spammer@example.net>");
    c.expect_code(&r, 250, "MAIL FROM");
    let r = c.cmd("RCPT TO:<user@example.org>");
    c.expect_code(&r, 250, "RCPT TO");
    let r = c.data(&message("filter-gtube", GTUBE));
    assert_eq!(r.code, 550, "mailwarden's reject, relayed by Postfix: {r}");
    assert_eq!(r.enhanced(), Some("5.7.1"), "{r}");
    c.quit();

    // settle() sends its marker through the whole chain too.
    let delivered = pf.settle_and_collect(1);
    let m = &delivered[0];
    let text = String::from_utf8_lossy(m);
    assert_eq!(
        messages::header(m, "Message-ID").as_deref(),
        Some("<filter-clean@example.net>"),
        "{text}"
    );
    let received = received_fields(m);
    assert_eq!(
        received.len(),
        3,
        "return smtpd, mailwarden, port-25 smtpd: {received:#?}"
    );
    assert!(
        received[0].contains("from mx.example.org") && received[0].contains("by upstream"),
        "Postfix's return service received it from mailwarden: {:?}",
        received[0]
    );
    assert!(
        received[1].contains("by mx.example.org")
            && received[1].contains("from client.example.net")
            && received[1].contains("[127.0.0.2]"),
        "mailwarden's Received header names the real client (XFORWARD): {:?}",
        received[1]
    );
    assert!(
        received[2].contains("from client.example.net") && received[2].contains("by upstream"),
        "Postfix's port-25 service received it from the client: {:?}",
        received[2]
    );
    assert_eq!(messages::header(m, "X-Spam-Flag").as_deref(), Some("NO"));
    assert!(
        messages::header(m, "X-Spam-Status").is_some_and(|s| s.starts_with("No, score=")),
        "{text}"
    );
    assert!(text.contains("Hello through Postfix's before-queue filter."));
    let q = quarantined(&proxy);
    assert_eq!(q.len(), 1, "the rejected message is kept in quarantine_dir");
    assert!(messages::contains(&q[0], GTUBE.as_bytes()));
    let log = pf.log_containing("proxy-reject: END-OF-MESSAGE: 550 5.7.1");
    assert!(
        log.contains("proxy-reject: END-OF-MESSAGE: 550 5.7.1"),
        "Postfix logs mailwarden's reject (as deploy/postfix/README.md says):\n{log}"
    );
    assert!(
        !log.contains("proxy filter"),
        "Postfix had trouble with mailwarden:\n{log}"
    );

    // mailwarden down: Postfix answers the client with a temporary error (the sender
    // retries later), and delivers nothing unfiltered.
    drop(proxy);
    let mut c = SmtpClient::connect_ehlo(pf.addr(), "client.example.net");
    let r = c.cmd("MAIL FROM:<alice@example.net>");
    c.expect_code(&r, 250, "MAIL FROM");
    let r = c.cmd("RCPT TO:<user@example.org>");
    c.expect_code(&r, 250, "RCPT TO");
    let r = c.data(&message("filter-down", "mailwarden is not running."));
    assert!(
        r.is_transient(),
        "with mailwarden down, Postfix must answer 4xx: {r}"
    );
    eprintln!("reply with mailwarden down: {r}");
    c.quit();
    std::thread::sleep(std::time::Duration::from_millis(750));
    assert_eq!(
        pf.messages().len(),
        2,
        "only the clean message and the settle marker are delivered"
    );
}

// ---------------------------------------------------------------------------------------
// The documented mailwarden configs
// ---------------------------------------------------------------------------------------

fn load(rel: &str) -> Config {
    Config::load(&repo_path(rel)).unwrap_or_else(|e| panic!("{rel} does not load: {e}"))
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// The milter set-up (deploy/postfix/milter/): the documented milter-only mailwarden.toml
/// (`[server] listen = []`: no upstream, no Maildir) and a Postfix with the documented
/// main.cf lines. Postfix refuses GTUBE with our reply and delivers a clean message with our
/// headers; mailwarden relays nothing itself.
#[test]
fn milter_setup_with_the_documented_lines() {
    let config = documented_config(
        "deploy/postfix/milter/mailwarden.toml",
        &[(r#"["127.0.0.1:11332"]"#, "@LISTEN@")],
    );
    let mw = Proxy::start(&config);
    assert!(
        mw.config_text().lines().any(|l| l.trim() == "listen = []"),
        "milter only: {}",
        mw.config_text()
    );
    let pf = Postfix::start_with_milter(&format!("inet:{}", mw.addr()), None);
    assert_postconf_clean(&pf.dir().join("conf"));

    let gtube = message(
        "gtube",
        "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X",
    );
    let mut c = SmtpClient::connect_ehlo(pf.addr(), "client.example.net");
    let r = c.cmd("MAIL FROM:<a@example.net>");
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RCPT TO:<user@example.org>");
    c.expect_code(&r, 250, "RCPT");
    let r = c.data(&gtube);
    c.expect_code(&r, 550, "GTUBE through the milter");
    assert!(
        r.text().contains("Message rejected as spam"),
        "{}",
        r.wire()
    );
    let r = c.send_mail(
        "a@example.net",
        &["user@example.org"],
        &message("hi", "hello"),
    );
    c.expect_code(&r, 250, "clean message");
    c.quit();
    let got = pf.wait_for_messages(1, support::LONG);
    assert_eq!(got.len(), 1, "{}", pf.log());
    let text = String::from_utf8_lossy(&got[0]);
    assert!(text.contains("X-Spam-Flag: NO"), "{text}");
    assert!(
        !mw.dir().join("maildir").exists(),
        "a milter-only node delivers nothing itself"
    );
}

/// The set-up configs load, and agree with their master.cf snippets: mailwarden's upstream is
/// Postfix's listener, Postfix's proxy filter is mailwarden's listener, and the XCLIENT /
/// XFORWARD settings match what the snippet authorizes.
#[test]
fn documented_configs_load_and_match_their_snippets() {
    let front = load("deploy/postfix/front/mailwarden.toml");
    assert_eq!(
        front.server.listen,
        vec![sock("0.0.0.0:25"), sock("[::]:25")]
    );
    assert_eq!(front.upstream.url, "smtp://127.0.0.1:10025");
    assert_eq!(front.upstream.xclient, Xclient::Always);
    let entries = master_entries(&read("deploy/postfix/front/master.cf.snippet"));
    let listener = entry_named(&entries, "127.0.0.1:10025");
    assert_eq!(
        entry_options(listener)
            .get("smtpd_authorized_xclient_hosts")
            .map(String::as_str),
        Some("127.0.0.1"),
        "mailwarden connects from 127.0.0.1"
    );

    let milter = load("deploy/postfix/milter/mailwarden.toml");
    assert!(milter.server.listen.is_empty(), "milter only");
    assert_eq!(milter.milter.listen, vec!["127.0.0.1:11332".to_string()]);
    assert!(
        read("deploy/postfix/milter/main.cf.fragment")
            .lines()
            .any(|l| l == "smtpd_milters = inet:127.0.0.1:11332"),
        "the fragment points Postfix at the config's milter address"
    );

    let filter = load("deploy/postfix/proxy-filter/mailwarden.toml");
    assert_eq!(filter.server.listen, vec![sock("127.0.0.1:10024")]);
    assert_eq!(filter.upstream.url, "smtp://127.0.0.1:10025");
    assert_eq!(filter.upstream.xclient, Xclient::Never);
    assert!(filter.upstream.xforward);
    assert!(
        filter.server.max_sessions >= 100,
        "every session comes from Postfix: at least Postfix's default_process_limit"
    );
    assert!(
        filter
            .server
            .trusted_proxies
            .iter()
            .any(|p| p == "127.0.0.1"),
        "Postfix on 127.0.0.1 may name the client with XFORWARD (and is exempt from the per-IP limit)"
    );
    let entries = master_entries(&read("deploy/postfix/proxy-filter/master.cf.snippet"));
    let smtp = entry_options(entry_named(&entries, "smtp"));
    assert_eq!(
        smtp.get("smtpd_proxy_filter").map(String::as_str),
        Some("127.0.0.1:10024")
    );
    assert_eq!(
        smtp.get("smtpd_proxy_options").map(String::as_str),
        Some("speed_adjust")
    );
    let back = entry_options(entry_named(&entries, "127.0.0.1:10025"));
    assert_eq!(
        back.get("smtpd_authorized_xforward_hosts")
            .map(String::as_str),
        Some("127.0.0.0/8")
    );
    assert!(
        !back.contains_key("smtpd_proxy_filter"),
        "the return service must not filter again"
    );
}

// ---------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------

/// `Key=Value` lines of a unit file (all sections; repeated keys kept in order).
fn unit_directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The unit has the hardening the README promises, `systemd-analyze verify` finds nothing
/// to complain about (with ExecStart pointing at the binary built here, since verify checks
/// that the program exists), and `systemd-analyze security --offline=yes` rates its exposure
/// at most 2.0.
#[test]
fn systemd_unit_verifies_and_is_hardened() {
    const UNIT: &str = "deploy/systemd/mailwarden.service";
    const BIN: &str = "/usr/local/bin/mailwarden";
    let text = read(UNIT);
    let d = unit_directives(&text);
    let get = |key: &str| -> Vec<&str> {
        d.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, value) in [
        ("User", "mailwarden"),
        ("Group", "mailwarden"),
        (
            "ExecStart",
            "/usr/local/bin/mailwarden serve --config /etc/mailwarden/mailwarden.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ReadWritePaths", "/var/lib/mailwarden"),
        ("WorkingDirectory", "/var/lib/mailwarden"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
    ] {
        assert!(
            get(key).contains(&value),
            "{UNIT}: expected {key}={value}, found {:?}",
            get(key)
        );
    }
    assert!(
        get("DynamicUser").is_empty(),
        "a dedicated user, not DynamicUser"
    );
    let stop: Vec<u64> = get("TimeoutStopSec")
        .iter()
        .map(|v| v.parse().expect("TimeoutStopSec in seconds"))
        .collect();
    assert!(
        stop.len() == 1 && stop[0] > 30,
        "TimeoutStopSec must exceed the 30 s shutdown grace: {stop:?}"
    );
    // The documented config file is the one ExecStart names.
    assert!(text.contains("/etc/mailwarden/mailwarden.toml"));

    let analyze = program("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("mailwarden.service");
    assert_eq!(text.matches(BIN).count(), 1, "{BIN} once, in ExecStart");
    std::fs::write(&unit, text.replace(BIN, env!("CARGO_BIN_EXE_mailwarden"))).unwrap();

    let (ok, out) = run(Command::new(&analyze)
        .arg("verify")
        .arg("--man=no")
        .arg(&unit));
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify {UNIT} (ExecStart binary substituted):\n{out}"
    );

    let (ok, out) = run(Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&unit));
    let overall = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("(no overall line)");
    assert!(
        ok,
        "systemd-analyze security rates {UNIT} above 2.0: {overall}\n{out}"
    );
    eprintln!("{UNIT}: {overall}");
}

// ---------------------------------------------------------------------------------------
// Docker
// ---------------------------------------------------------------------------------------

/// A Dockerfile's instructions: (INSTRUCTION, arguments), continuation lines joined.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(part) = t.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        if t.starts_with('#') {
            continue;
        }
        current.push_str(t);
        let (inst, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((inst.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    assert!(current.is_empty(), "dangling continuation line");
    out
}

/// COPY sources (without `--from`), relative to the build context.
fn copy_sources(instructions: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (inst, args) in instructions {
        if inst != "COPY" || args.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        out.extend(words[..words.len() - 1].iter().map(|s| s.to_string()));
    }
    out
}

/// The Dockerfiles: mailwarden's is multi-stage (rust:1.95 builder with
/// `cargo build --release --locked`, Debian slim runtime), runs as a non-root user, copies
/// files that exist, exposes 25 and 9464, health-checks /healthz and starts with the config
/// it copies. Postfix's copies files that exist.
#[test]
fn dockerfiles_are_consistent() {
    let text = read("deploy/docker/Dockerfile");
    let inst = dockerfile_instructions(&text);
    let froms: Vec<(usize, &String)> = inst
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| i == "FROM")
        .map(|(n, (_, a))| (n, a))
        .collect();
    assert_eq!(froms.len(), 2, "two stages: {froms:?}");
    let rust_version = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("rust-version in Cargo.toml");
    assert_eq!(
        froms[0].1,
        &format!("rust:{rust_version}-bookworm AS build"),
        "the builder uses the project's Rust version"
    );
    assert_eq!(froms[1].1, "debian:bookworm-slim");
    let runtime = &inst[froms[1].0..];
    let build = &inst[..froms[1].0];
    assert!(
        build
            .iter()
            .any(|(i, a)| i == "RUN" && a.contains("cargo build --release --locked")),
        "builder: cargo build --release --locked"
    );
    for src in copy_sources(build).iter().chain(&copy_sources(runtime)) {
        let src = src.trim_end_matches('/');
        assert!(
            repo_path(src).exists(),
            "COPY {src}: not in the repository (the build context is its root)"
        );
    }
    let users: Vec<&String> = runtime
        .iter()
        .filter(|(i, _)| i == "USER")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(users.len(), 1, "one USER in the runtime stage");
    assert!(
        !["root", "0", "0:0"].contains(&users[0].as_str()),
        "non-root: {}",
        users[0]
    );
    assert!(
        runtime.iter().any(|(i, a)| i == "RUN"
            && a.contains("useradd --system")
            && a.contains(users[0].as_str())),
        "the runtime stage creates the user {}",
        users[0]
    );
    let expose: Vec<&str> = runtime
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace())
        .collect();
    assert_eq!(expose, ["25", "9464"]);
    let health = runtime
        .iter()
        .find(|(i, _)| i == "HEALTHCHECK")
        .map(|(_, a)| a.as_str())
        .expect("HEALTHCHECK");
    assert!(health.contains("127.0.0.1/9464") && health.contains("/healthz"));
    // The copied binary is the one the builder installed; the config is the one started.
    assert!(runtime.iter().any(|(i, a)| i == "COPY"
        && a == "--from=build /usr/local/bin/mailwarden /usr/local/bin/mailwarden"));
    assert!(
        build.iter().any(|(i, a)| i == "RUN"
            && a.contains("target/release/mailwarden /usr/local/bin/mailwarden"))
    );
    assert!(runtime.iter().any(|(i, a)| i == "COPY"
        && a == "deploy/docker/mailwarden.toml /etc/mailwarden/mailwarden.toml"));
    let cmd = runtime
        .iter()
        .find(|(i, _)| i == "CMD")
        .map(|(_, a)| a.as_str())
        .expect("CMD");
    assert_eq!(
        cmd,
        r#"["serve", "--config", "/etc/mailwarden/mailwarden.toml"]"#
    );

    let pf = dockerfile_instructions(&read("deploy/docker/postfix/Dockerfile"));
    for src in copy_sources(&pf) {
        assert!(
            repo_path("deploy/docker/postfix").join(&src).exists(),
            "postfix/Dockerfile: COPY {src} (context deploy/docker/postfix)"
        );
    }
    assert!(
        pf.iter().any(|(i, a)| i == "CMD" && a.contains("start-fg")),
        "Postfix in the foreground"
    );
}

fn yaml(rel: &str) -> serde_norway::Value {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: invalid YAML: {e}"))
}

fn y<'a>(v: &'a serde_norway::Value, path: &[&str]) -> &'a serde_norway::Value {
    let mut cur = v;
    for key in path {
        cur = cur
            .get(*key)
            .unwrap_or_else(|| panic!("missing {}", path.join(".")));
    }
    cur
}

fn y_str<'a>(v: &'a serde_norway::Value, path: &[&str]) -> &'a str {
    y(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

fn y_strings(v: &serde_norway::Value, path: &[&str]) -> Vec<String> {
    y(v, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{} is not a list", path.join(".")))
        .iter()
        .map(|s| match s {
            serde_norway::Value::String(s) => s.clone(),
            other => serde_norway::to_string(other).unwrap().trim().to_string(),
        })
        .collect()
}

/// compose.yml: every service is there and they fit together — mailwarden's upstream is the
/// postfix service on the port its master.cf listens on, Postfix authorizes XCLIENT from
/// exactly mailwarden's fixed address (and does not trust it otherwise), clamd and the
/// metrics port match the container config, bind mounts exist, the Grafana provisioning
/// points at the mounted dashboard and at the prometheus service. The container's Postfix
/// config passes `postconf` without warnings.
#[test]
fn compose_file_is_consistent() {
    const DIR: &str = "deploy/docker";
    let c = yaml("deploy/docker/compose.yml");
    let services = y(&c, &["services"]).as_mapping().expect("services");
    let names: Vec<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    for s in ["mailwarden", "postfix", "clamd", "prometheus", "grafana"] {
        assert!(names.contains(&s), "service {s} in {names:?}");
    }

    // Builds.
    let mw = y(&c, &["services", "mailwarden"]);
    let ctx = repo_path(DIR).join(y_str(mw, &["build", "context"]));
    assert_eq!(
        ctx.canonicalize().unwrap(),
        Path::new(REPO).canonicalize().unwrap(),
        "mailwarden is built from the repository root"
    );
    assert!(ctx.join(y_str(mw, &["build", "dockerfile"])).is_file());
    let pf_build = repo_path(DIR).join(y_str(&c, &["services", "postfix", "build"]));
    assert!(pf_build.join("Dockerfile").is_file());

    // Bind mounts exist; named volumes are declared.
    let declared: Vec<&str> = y(&c, &["volumes"])
        .as_mapping()
        .expect("volumes")
        .keys()
        .filter_map(|k| k.as_str())
        .collect();
    let mut mounts: BTreeMap<(String, String), String> = BTreeMap::new();
    for name in &names {
        let Some(vols) = y(&c, &["services", name]).get("volumes") else {
            continue;
        };
        for v in vols.as_sequence().expect("volumes list") {
            let v = v.as_str().expect("short volume syntax");
            let parts: Vec<&str> = v.split(':').collect();
            let (src, dst) = (parts[0], parts[1]);
            if src.starts_with('.') || src.starts_with('/') {
                let path = repo_path(DIR).join(src);
                let rel = path
                    .canonicalize()
                    .unwrap_or_else(|e| {
                        panic!("service {name}: bind mount {src} ({}): {e}", path.display())
                    })
                    .strip_prefix(Path::new(REPO).canonicalize().unwrap())
                    .unwrap_or_else(|_| panic!("bind mount {src} is outside the repository"))
                    .display()
                    .to_string();
                mounts.insert((name.to_string(), dst.to_string()), rel);
            } else {
                assert!(declared.contains(&src), "volume {src} is not declared");
            }
        }
    }

    // mailwarden ↔ postfix: upstream, port, XCLIENT.
    let config = Config::parse(
        &read("deploy/docker/mailwarden.toml"),
        "deploy/docker/mailwarden.toml",
    )
    .unwrap_or_else(|e| panic!("the container config: {e}"));
    let metrics_listen = config.metrics.listen.clone();
    let pf_master = master_entries(&read("deploy/docker/postfix/master.cf"));
    let smtpd: Vec<&String> = pf_master
        .iter()
        .filter(|e| e.split_whitespace().nth(1) == Some("inet"))
        .collect();
    assert_eq!(
        smtpd.len(),
        1,
        "one inet service in the container's Postfix"
    );
    let pf_port = entry_service(smtpd[0]);
    assert_eq!(config.upstream.url, format!("smtp://postfix:{pf_port}"));
    assert_eq!(config.upstream.xclient, Xclient::Always);
    assert!(y_strings(&c, &["services", "postfix", "expose"]).contains(&pf_port.to_string()));
    let mw_ip = y_str(mw, &["networks", "mail", "ipv4_address"]);
    assert_eq!(
        entry_options(smtpd[0])
            .get("smtpd_authorized_xclient_hosts")
            .map(String::as_str),
        Some(mw_ip),
        "Postfix authorizes XCLIENT from mailwarden's address"
    );
    let subnet: ipnet::Ipv4Net = y(&c, &["networks", "mail", "ipam", "config"])
        .as_sequence()
        .expect("networks.mail.ipam.config is a list")
        .iter()
        .find_map(|entry| entry.get("subnet").and_then(|s| s.as_str()))
        .expect("networks.mail.ipam.config[].subnet")
        .parse()
        .expect("subnet");
    assert!(subnet.contains(&mw_ip.parse::<std::net::Ipv4Addr>().unwrap()));
    let pf_main = read("deploy/docker/postfix/main.cf");
    let mynetworks = pf_main
        .lines()
        .find_map(|l| l.strip_prefix("mynetworks = "))
        .expect("mynetworks in the container's main.cf");
    assert!(
        !mynetworks.contains("172.") && !mynetworks.contains(mw_ip),
        "mailwarden must not be in mynetworks (relay permission per real client): {mynetworks}"
    );

    // Ports: SMTP published, metrics on loopback; the config listens where they point.
    let ports = y_strings(mw, &["ports"]);
    assert!(ports.contains(&"25:25".to_string()), "{ports:?}");
    assert_eq!(config.server.listen, vec![sock("0.0.0.0:25")]);
    assert_eq!(metrics_listen, "0.0.0.0:9464", "[metrics] listen");
    assert!(
        ports.contains(&"127.0.0.1:9464:9464".to_string()),
        "{ports:?}"
    );
    let grace = y_str(mw, &["stop_grace_period"]);
    let secs: u64 = grace.trim_end_matches('s').parse().expect("seconds");
    assert!(
        secs > 30,
        "stop_grace_period beyond the 30 s shutdown grace"
    );
    assert_eq!(
        y(mw, &["sysctls", "net.ipv4.ip_unprivileged_port_start"]).as_str(),
        Some("0"),
        "the non-root process binds port 25"
    );

    // clamd.
    assert!(config.clamav.enabled);
    assert_eq!(config.clamav.address, "clamd:3310");
    assert!(y_strings(&c, &["services", "clamd", "expose"]).contains(&"3310".to_string()));

    // Prometheus: the compose scrape config (mailwarden's metrics port on the compose
    // network) with the repository's alert rules beside it, where its rule_files expects them.
    assert_eq!(
        mounts
            .get(&("prometheus".into(), "/etc/prometheus/prometheus.yml".into()))
            .map(String::as_str),
        Some("deploy/docker/prometheus.yml")
    );
    let prom = yaml("deploy/docker/prometheus.yml");
    let jobs = y(&prom, &["scrape_configs"]).as_sequence().expect("list");
    let job = jobs
        .iter()
        .find(|j| j.get("job_name").and_then(|n| n.as_str()) == Some("mailwarden"))
        .expect("a `mailwarden` scrape job");
    let targets: Vec<String> = job["static_configs"]
        .as_sequence()
        .expect("static_configs")
        .iter()
        .flat_map(|sc| y_strings(sc, &["targets"]))
        .collect();
    let metrics_port = metrics_listen.rsplit(':').next().unwrap();
    assert_eq!(targets, [format!("mailwarden:{metrics_port}")]);
    for rule_file in y_strings(&prom, &["rule_files"]) {
        let in_container = format!("/etc/prometheus/{rule_file}");
        assert!(
            mounts.contains_key(&("prometheus".into(), in_container.clone())),
            "rule file {rule_file} is mounted at {in_container}"
        );
    }
    assert_eq!(
        mounts
            .get(&("prometheus".into(), "/etc/prometheus/alerts.yml".into()))
            .map(String::as_str),
        Some("deploy/prometheus/alerts.yml")
    );

    // Grafana: provisioning mounted, the provider loads the mounted dashboard, the data
    // source is the prometheus service.
    assert_eq!(
        mounts
            .get(&("grafana".into(), "/etc/grafana/provisioning".into()))
            .map(String::as_str),
        Some("deploy/grafana/provisioning")
    );
    let dashboard_mount = mounts
        .iter()
        .find(|(_, src)| src.as_str() == "deploy/grafana/mailwarden.json")
        .map(|((svc, dst), _)| (svc.clone(), dst.clone()))
        .expect("deploy/grafana/mailwarden.json is mounted");
    assert_eq!(dashboard_mount.0, "grafana");
    let provider = yaml("deploy/grafana/provisioning/dashboards/mailwarden.yml");
    let providers = y(&provider, &["providers"]).as_sequence().expect("list");
    assert_eq!(providers.len(), 1);
    assert_eq!(y_str(&providers[0], &["type"]), "file");
    assert_eq!(
        Path::new(&dashboard_mount.1).parent().unwrap(),
        Path::new(y_str(&providers[0], &["options", "path"])),
        "the provider's path holds the mounted dashboard"
    );
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let sources = y(&ds, &["datasources"]).as_sequence().expect("list");
    assert_eq!(sources.len(), 1);
    assert_eq!(y_str(&sources[0], &["type"]), "prometheus");
    assert_eq!(y_str(&sources[0], &["url"]), "http://prometheus:9090");
    assert!(
        y_strings(&c, &["services", "prometheus", "ports"])
            .iter()
            .any(|p| p.ends_with(":9090"))
    );

    // The container's Postfix config: no unknown parameters.
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["main.cf", "master.cf", "vmailbox"] {
        std::fs::copy(
            repo_path("deploy/docker/postfix").join(f),
            dir.path().join(f),
        )
        .unwrap_or_else(|e| panic!("copy {f}: {e}"));
    }
    assert_postconf_clean(dir.path());
}
