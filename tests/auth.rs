//! Sender authentication against a real DNS server on loopback: dnsmasq (package dnsmasq-base)
//! serves SPF, DKIM and DMARC records for `*.test` domains, and the production resolver code
//! ([`Authenticator`] built from a `[dns]` config) is pointed at it. No mocked verifier.

mod support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mailwarden::config::{AuthConfig, DnsConfig, DnsblConfig, default_blocked_codes};
use mailwarden::filter::auth::{AuthInput, AuthResults, Authenticator, build_resolver};
use mailwarden::filter::dnsbl::Dnsbl;
use mailwarden::filter::message::Message;
use mailwarden::filter::uribl::{self, Uribl};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};
use support::{Proxy, SmtpClient};

/// The RFC 8463 Appendix A example Ed25519 key (seed and public key, base64).
const RFC8463_SEED: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
const RFC8463_PUBLIC: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

/// Block list answers: 127.0.0.2 is listed in bl.test, 127.0.0.3 in low.test, and
/// blocked.test answers 127.0.0.4 with Spamhaus' "public resolver blocked" code. Any other
/// name under .test is NXDOMAIN (not listed).
/// The URI block list uri.test lists the domain spam-domain.test and the IP literal
/// 192.0.2.9, and answers blocked-domain.test with the blocked-resolver code.
const DNSBL_RECORDS: [(&str, &str); 6] = [
    ("2.0.0.127.bl.test", "127.0.0.2"),
    ("3.0.0.127.low.test", "127.0.0.3"),
    ("4.0.0.127.blocked.test", "127.255.255.254"),
    ("spam-domain.test.uri.test", "127.0.0.2"),
    ("9.2.0.192.uri.test", "127.0.0.2"),
    ("blocked-domain.test.uri.test", "127.255.255.254"),
];

/// A dnsmasq instance serving the test records; killed on drop (`support::dns`).
struct Dns(support::Dns);

impl std::ops::Deref for Dns {
    type Target = support::Dns;
    fn deref(&self) -> &support::Dns {
        &self.0
    }
}

impl Dns {
    fn start() -> Dns {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), also serving the TXT records `extra` (name, text; a
    /// text longer than 255 bytes is split into several character-strings).
    fn start_with(extra: &[(String, String)]) -> Dns {
        let records = [
            ("example.test", "v=spf1 ip4:192.0.2.0/24 -all"),
            ("_dmarc.example.test", "v=DMARC1; p=reject"),
            (
                "brisbane._domainkey.example.test",
                &format!("v=DKIM1; k=ed25519; p={RFC8463_PUBLIC}"),
            ),
            ("soft.example.test", "v=spf1 ip4:192.0.2.0/24 ~all"),
            ("other.test", "v=spf1 ip4:192.0.2.0/24 -all"),
            (
                "brisbane._domainkey.other.test",
                &format!("v=DKIM1; k=ed25519; p={RFC8463_PUBLIC}"),
            ),
            ("mail.example.test", "v=spf1 ip4:192.0.2.0/24 -all"),
            ("loop.test", "v=spf1 ip4:127.0.0.0/8 -all"),
        ];
        let mut conf = String::new();
        for (name, txt) in records {
            conf.push_str(&format!("txt-record={name},\"{txt}\"\n"));
        }
        for (name, txt) in extra {
            let strings: Vec<String> = txt
                .as_bytes()
                .chunks(255)
                .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
                .collect();
            conf.push_str(&format!("txt-record={name},{}\n", strings.join(",")));
        }
        for (name, a) in DNSBL_RECORDS {
            conf.push_str(&format!("host-record={name},{a}\n"));
        }
        Dns(support::Dns::start(&conf))
    }
}

fn authenticator(ns: SocketAddr, timeout_ms: u64) -> Authenticator {
    let dns = DnsConfig {
        nameservers: vec![ns.to_string()],
        timeout_ms,
        ..DnsConfig::default()
    };
    Authenticator::new(&dns, &AuthConfig::default(), "mx.example.test").expect("authenticator")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn check(auth: &Authenticator, ip: &str, helo: &str, from: &str, msg: &[u8]) -> AuthResults {
    let input = AuthInput {
        ip: Some(ip.parse::<IpAddr>().expect("ip")),
        helo: Some(helo.to_string()),
        mail_from: from.to_string(),
    };
    rt().block_on(auth.check(&input, msg))
}

fn plain(from_header: &str) -> Vec<u8> {
    format!(
        "From: {from_header}\r\nTo: u@example.org\r\nSubject: lunch\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\nMessage-ID: <1@x.test>\r\n\r\nAre you hungry yet?\r\n"
    )
    .into_bytes()
}

/// `plain(from_header)` signed with the RFC 8463 key as d=`domain`, s=brisbane.
fn signed(from_header: &str, domain: &str) -> Vec<u8> {
    let b64 = |s: &str| mail_parser::decoders::base64::base64_decode(s.as_bytes()).expect("b64");
    let key = Ed25519Key::from_seed_and_public_key(&b64(RFC8463_SEED), &b64(RFC8463_PUBLIC))
        .expect("rfc 8463 key");
    let msg = plain(from_header);
    let sig = DkimSigner::from_key(key)
        .domain(domain)
        .selector("brisbane")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(&msg)
        .expect("sign");
    let mut out = sig.to_header().into_bytes();
    out.extend_from_slice(&msg);
    out
}

/// mail-auth's own 2048-bit RSA test key (`resources/rsa-private.pem` in its crate
/// sources), read at test time from the Cargo registry that fetched the version in
/// Cargo.lock; never copied into this repository. (ring, mail-auth's crypto backend here,
/// cannot generate RSA keys.)
fn mail_auth_rsa_key() -> RsaKey<Sha256> {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"))
        .expect("read Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"mail-auth\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("mail-auth in Cargo.lock");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registries = cargo_home.join("registry").join("src");
    let pem_path = std::fs::read_dir(&registries)
        .unwrap_or_else(|e| panic!("{}: {e}", registries.display()))
        .filter_map(|e| e.ok())
        .map(|e| {
            e.path()
                .join(format!("mail-auth-{version}"))
                .join("resources")
                .join("rsa-private.pem")
        })
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "mail-auth-{version}/resources/rsa-private.pem not found under {}",
                registries.display()
            )
        });
    let pem = std::fs::read(&pem_path).expect("read the RSA test key");
    let der = PrivatePkcs1KeyDer::from_pem_slice(&pem).expect("PKCS#1 PEM");
    RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(der)).expect("RSA key")
}

fn has(r: &AuthResults, symbol: &str) -> bool {
    r.symbols.iter().any(|s| s == symbol)
}

#[test]
fn spf_pass_fail_softfail_none() {
    let dns = Dns::start();
    let auth = authenticator(dns.addr, 2000);
    let msg = plain("a@example.test");
    let r = check(
        &auth,
        "192.0.2.10",
        "mail.example.test",
        "a@example.test",
        &msg,
    );
    assert!(
        has(&r, "SPF_PASS") && has(&r, "SPF_HELO_PASS"),
        "{:?}",
        r.symbols
    );
    assert_eq!(r.spf, Some("pass"));
    assert!(r.headers[0].starts_with("Authentication-Results: mx.example.test;"));
    assert!(r.headers[0].contains("spf=pass"), "{}", r.headers[0]);
    assert!(
        r.headers[1].starts_with("Received-SPF: pass"),
        "{}",
        r.headers[1]
    );

    let r = check(
        &auth,
        "198.51.100.7",
        "mail.example.test",
        "a@example.test",
        &msg,
    );
    assert!(
        has(&r, "SPF_FAIL") && has(&r, "SPF_HELO_FAIL"),
        "{:?}",
        r.symbols
    );

    let r = check(
        &auth,
        "198.51.100.7",
        "mail.example.test",
        "a@soft.example.test",
        &msg,
    );
    assert!(has(&r, "SPF_SOFTFAIL"), "{:?}", r.symbols);

    let r = check(
        &auth,
        "198.51.100.7",
        "mail.example.test",
        "a@nospf.example.test",
        &msg,
    );
    assert!(has(&r, "SPF_NONE"), "{:?}", r.symbols);
    assert!(r.headers[0].contains("spf=none"), "{}", r.headers[0]);
}

#[test]
fn dns_down_or_silent_is_temperror_not_a_hang() {
    // Nobody listens: the query is refused at once.
    let closed = SocketAddr::from(([127, 0, 0, 1], support::unused_port()));
    // Someone listens but never answers: the lookup times out.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    for ns in [closed, silent_addr] {
        let auth = authenticator(ns, 300);
        let started = Instant::now();
        let r = check(
            &auth,
            "192.0.2.10",
            "mail.example.test",
            "a@example.test",
            &plain("a@example.test"),
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert!(has(&r, "SPF_TEMPERROR"), "{ns}: {:?}", r.symbols);
        assert!(r.spf_temperror);
        assert!(
            !r.dmarc_reject(),
            "a DNS failure must not look like a DMARC reject"
        );
    }
}

#[test]
fn dkim_ed25519_valid_tampered_and_dmarc_alignment() {
    let dns = Dns::start();
    let auth = authenticator(dns.addr, 2000);
    // Signed by the From domain; client outside SPF: DMARC passes on aligned DKIM.
    let msg = signed("Joe <joe@example.test>", "example.test");
    let r = check(
        &auth,
        "198.51.100.7",
        "mail.example.test",
        "joe@example.test",
        &msg,
    );
    for s in [
        "DKIM_VALID",
        "DKIM_VALID_AU",
        "DMARC_PASS",
        "SPF_FAIL",
        "ARC_NONE",
    ] {
        assert!(has(&r, s), "{s}: {:?}", r.symbols);
    }
    assert_eq!(r.dkim[0].result, "pass");
    assert_eq!(r.dkim[0].domain, "example.test");
    assert!(r.headers[0].contains("dkim=pass"), "{}", r.headers[0]);
    assert!(r.headers[0].contains("dmarc=pass"), "{}", r.headers[0]);

    // Body changed after signing: invalid, and DMARC (p=reject) fails.
    let mut tampered = msg.clone();
    let n = tampered.len();
    tampered[n - 4] = b'!';
    let r = check(
        &auth,
        "198.51.100.7",
        "mail.example.test",
        "joe@example.test",
        &tampered,
    );
    assert!(
        has(&r, "DKIM_INVALID") && !has(&r, "DKIM_VALID"),
        "{:?}",
        r.symbols
    );
    assert!(
        has(&r, "DMARC_REJECT") && r.dmarc_reject(),
        "{:?}",
        r.symbols
    );

    // Valid DKIM and SPF pass, but both for other.test: not aligned with From example.test.
    let msg = signed("Joe <joe@example.test>", "other.test");
    let r = check(
        &auth,
        "192.0.2.10",
        "mail.example.test",
        "bounce@other.test",
        &msg,
    );
    assert!(
        has(&r, "DKIM_VALID") && !has(&r, "DKIM_VALID_AU"),
        "{:?}",
        r.symbols
    );
    assert!(has(&r, "SPF_PASS"), "{:?}", r.symbols);
    assert!(
        has(&r, "DMARC_REJECT") && r.dmarc_reject(),
        "{:?}",
        r.symbols
    );
    assert_eq!(r.dmarc_domain, "example.test");

    // Unsigned, aligned SPF pass: DMARC passes.
    let r = check(
        &auth,
        "192.0.2.10",
        "mail.example.test",
        "joe@example.test",
        &plain("joe@example.test"),
    );
    assert!(
        has(&r, "DKIM_NONE") && has(&r, "DMARC_PASS"),
        "{:?}",
        r.symbols
    );
    assert!(r.headers[0].contains("dkim=none"), "{}", r.headers[0]);
}

#[test]
fn proxy_adds_authentication_results_and_refuses_dmarc_reject() {
    let dns = Dns::start();
    let proxy = Proxy::start(&format!(
        "[server]\nhostname = \"mx.example.test\"\n[upstream]\nurl = \"maildir:@DIR@/mail\"\n[rules]\npaths = [\"{}\"]\n[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 1000\n",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("rules")
            .display(),
        dns.addr
    ));
    // Signed by the From domain: accepted, with our header; a forged copy claiming our
    // authserv-id is removed, another host's is kept.
    let mut msg = b"Authentication-Results: mx.example.test; dmarc=pass header.from=example.test\r\nAuthentication-Results: elsewhere.test; spf=pass\r\n".to_vec();
    msg.extend_from_slice(&signed("Joe <joe@example.test>", "example.test"));
    let mut client = SmtpClient::connect_ehlo(proxy.addr(), "mail.loop.test");
    client.send_mail("joe@loop.test", &["u@example.org"], &msg);
    // Unsigned, From example.test, MAIL FROM not aligned: DMARC p=reject → 550.
    let r = client.cmd("MAIL FROM:<joe@loop.test>");
    client.expect_code(&r, 250, "MAIL");
    let r = client.cmd("RCPT TO:<u@example.org>");
    client.expect_code(&r, 250, "RCPT");
    let r = client.data(&plain("Joe <joe@example.test>"));
    client.expect_code(&r, 550, "DMARC reject");
    assert_eq!(r.enhanced(), Some("5.7.1"));
    assert!(r.text().contains("DMARC"), "{}", r.text());
    client.quit();

    let new = proxy.dir().join("mail").join("new");
    let files: Vec<_> = std::fs::read_dir(&new)
        .expect("maildir")
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "only the authenticated message is delivered"
    );
    let delivered = std::fs::read_to_string(files[0].path()).expect("read");
    let head = delivered.split("\r\n\r\n").next().unwrap_or("");
    assert!(
        head.contains("Authentication-Results: mx.example.test;")
            && head.contains("spf=pass (mx.example.test: domain of joe@loop.test"),
        "{head}"
    );
    assert!(head.contains("dkim=pass"), "{head}");
    assert!(head.contains("dmarc=pass"), "{head}");
    assert!(head.contains("arc=none"), "{head}");
    assert!(head.contains("Received-SPF: pass"), "{head}");
    assert!(
        head.contains("Authentication-Results: elsewhere.test; spf=pass"),
        "{head}"
    );
    assert!(
        !head.contains("mx.example.test; dmarc=pass"),
        "forged copy kept: {head}"
    );
    assert!(
        head.contains("SPF_PASS") && head.contains("DKIM_VALID_AU"),
        "{head}"
    );
}

#[test]
fn latency_with_local_resolver() {
    let dns = Dns::start();
    let auth = authenticator(dns.addr, 2000);
    let msg = signed("Joe <joe@example.test>", "example.test");
    let rt = rt();
    let input = AuthInput {
        ip: Some("192.0.2.10".parse().expect("ip")),
        helo: Some("mail.example.test".into()),
        mail_from: "joe@example.test".into(),
    };
    let mut times: Vec<Duration> = (0..200)
        .map(|_| {
            let started = Instant::now();
            let r = rt.block_on(auth.check(&input, &msg));
            assert!(has(&r, "DMARC_PASS"));
            started.elapsed()
        })
        .collect();
    times.sort();
    eprintln!(
        "auth latency over {} messages: p50 {:?} p99 {:?} (first {:?})",
        times.len(),
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times[0]
    );
}

fn dnsbl_list(zone: &str, symbol: &str, score: f64) -> DnsblConfig {
    DnsblConfig {
        zone: zone.into(),
        symbol: symbol.into(),
        score: Some(score),
        codes: Vec::new(),
        blocked_codes: default_blocked_codes(),
    }
}

/// The production block list checker pointed at `ns`.
fn dnsbl(ns: SocketAddr, timeout_ms: u64, trusted: Vec<ipnet::IpNet>) -> Dnsbl {
    let dns = DnsConfig {
        nameservers: vec![ns.to_string()],
        timeout_ms,
        ..DnsConfig::default()
    };
    let resolver = build_resolver(&dns).expect("resolver");
    let lists = [
        dnsbl_list("bl.test", "RBL_TEST", 100.0),
        dnsbl_list("low.test", "RBL_LOW", 1.5),
        dnsbl_list("blocked.test", "RBL_BLOCKED", 3.0),
    ];
    Dnsbl::new(
        resolver.resolver().clone(),
        Duration::from_millis(timeout_ms),
        &lists,
        trusted,
    )
}

fn dnsbl_symbols(d: &Dnsbl, ip: &str) -> Vec<String> {
    let ip: IpAddr = ip.parse().expect("ip");
    let mut symbols: Vec<String> = rt()
        .block_on(d.check(ip))
        .into_iter()
        .map(|h| h.symbol)
        .collect();
    symbols.sort();
    symbols
}

#[test]
fn dnsbl_listed_unlisted_blocked_and_trusted() {
    let dns = Dns::start();
    let d = dnsbl(dns.addr, 2000, Vec::new());
    assert_eq!(dnsbl_symbols(&d, "127.0.0.2"), ["RBL_TEST"]);
    assert_eq!(dnsbl_symbols(&d, "::ffff:127.0.0.3"), ["RBL_LOW"]);
    assert!(dnsbl_symbols(&d, "127.0.0.1").is_empty());
    assert!(dnsbl_symbols(&d, "2001:db8::1").is_empty());
    // A blocked-resolver answer is not a listing, but it is counted.
    assert!(dnsbl_symbols(&d, "127.0.0.4").is_empty());
    assert!(dnsbl_symbols(&d, "127.0.0.4").is_empty());
    let counts = d.blocked_counts();
    assert!(
        counts.contains(&("blocked.test".to_string(), 2)),
        "{counts:?}"
    );
    // Trusted clients are not looked up.
    let trusted = dnsbl(dns.addr, 2000, vec!["127.0.0.0/30".parse().expect("net")]);
    assert!(dnsbl_symbols(&trusted, "127.0.0.2").is_empty());
}

#[test]
fn dnsbl_dns_down_or_silent_is_not_listed_and_no_hang() {
    let closed = SocketAddr::from(([127, 0, 0, 1], support::unused_port()));
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    for ns in [closed, silent_addr] {
        let d = dnsbl(ns, 300, Vec::new());
        let started = Instant::now();
        assert!(dnsbl_symbols(&d, "127.0.0.2").is_empty(), "{ns}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{ns}: took {:?}",
            started.elapsed()
        );
    }
}

/// `[dns]` and the three test lists, for the proxy and `scan`.
fn dnsbl_config(ns: SocketAddr, timeout_ms: u64) -> String {
    format!(
        "[rules]\npaths = [\"{}\"]\n[dns]\nnameservers = [\"{ns}\"]\ntimeout_ms = {timeout_ms}\n\
         [[dnsbl]]\nzone = \"bl.test\"\nsymbol = \"RBL_TEST\"\nscore = 100.0\n\
         [[dnsbl]]\nzone = \"low.test\"\nsymbol = \"RBL_LOW\"\nscore = 1.5\n\
         [[dnsbl]]\nzone = \"blocked.test\"\nsymbol = \"RBL_BLOCKED\"\nscore = 3.0\n",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("rules")
            .display()
    )
}

/// `mailwarden scan --json --ip IP` of a plain message with `config`.
fn scan_json(config: &str, ip: &str) -> (serde_json::Value, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("mailwarden.toml");
    std::fs::write(&conf, config).expect("write config");
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, plain("joe@loop.test")).expect("write message");
    let started = Instant::now();
    let out: Output = Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .arg("scan")
        .arg("--config")
        .arg(&conf)
        .args(["--json", "--ip", ip, "--helo", "mail.loop.test"])
        .args(["--from", "joe@loop.test"])
        .arg(&msg)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run mailwarden scan");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "scan output is not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (value, elapsed)
}

fn symbol_score(scan: &serde_json::Value, name: &str) -> Option<f64> {
    scan["symbols"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["score"].as_f64())
}

#[test]
fn dnsbl_in_scan_json() {
    let dns = Dns::start();
    let config = dnsbl_config(dns.addr, 2000);
    let (listed, _) = scan_json(&config, "127.0.0.3");
    assert_eq!(symbol_score(&listed, "RBL_LOW"), Some(1.5), "{listed}");
    assert_eq!(listed["dnsbl"][0]["zone"], "low.test", "{listed}");
    let (listed, _) = scan_json(&config, "127.0.0.2");
    assert_eq!(symbol_score(&listed, "RBL_TEST"), Some(100.0), "{listed}");
    assert_eq!(listed["action"], "reject", "{listed}");
    for ip in ["127.0.0.1", "127.0.0.4"] {
        let (clean, _) = scan_json(&config, ip);
        for s in ["RBL_TEST", "RBL_LOW", "RBL_BLOCKED"] {
            assert_eq!(symbol_score(&clean, s), None, "{ip}: {clean}");
        }
    }
    // DNS server down: not listed, and quickly.
    let down = SocketAddr::from(([127, 0, 0, 1], support::unused_port()));
    let (clean, elapsed) = scan_json(&dnsbl_config(down, 300), "127.0.0.2");
    assert_eq!(symbol_score(&clean, "RBL_TEST"), None, "{clean}");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[test]
fn dnsbl_through_the_proxy() {
    let dns = Dns::start();
    let proxy = Proxy::start(&format!(
        "[server]\nhostname = \"mx.example.test\"\n[upstream]\nurl = \"maildir:@DIR@/mail\"\n{}",
        dnsbl_config(dns.addr, 1000)
    ));
    let send = |ip: &str| {
        let mut client = SmtpClient::connect_from(ip.parse().expect("ip"), proxy.addr());
        let r = client.reply();
        client.expect_code(&r, 220, "greeting");
        let r = client.cmd("EHLO mail.loop.test");
        client.expect_code(&r, 250, "EHLO");
        let r = client.cmd("MAIL FROM:<joe@loop.test>");
        client.expect_code(&r, 250, "MAIL");
        let r = client.cmd("RCPT TO:<u@example.org>");
        client.expect_code(&r, 250, "RCPT");
        let r = client.data(&plain(&format!("joe@loop.test (from {ip})")));
        client.quit();
        r
    };
    // Listed with a score at or above reject_score: refused.
    let r = send("127.0.0.2");
    assert_eq!(r.code, 550, "{}", r.wire());
    assert_eq!(r.enhanced(), Some("5.7.1"));
    // Listed with a small score, not listed, blocked code: delivered.
    for ip in ["127.0.0.3", "127.0.0.1", "127.0.0.4"] {
        let r = send(ip);
        assert!(r.is_positive(), "{ip}: {}", r.wire());
    }
    let heads = delivered_headers(&proxy);
    assert_eq!(heads.len(), 3, "{heads:?}");
    let head_of = |ip: &str| {
        heads
            .iter()
            .find(|h| h.contains(&format!("(from {ip})")))
            .unwrap_or_else(|| panic!("no message from {ip}: {heads:?}"))
            .clone()
    };
    let low = head_of("127.0.0.3");
    assert!(
        low.contains("X-Spam-Status:") && low.contains("RBL_LOW"),
        "{low}"
    );
    for ip in ["127.0.0.1", "127.0.0.4"] {
        let head = head_of(ip);
        assert!(head.contains("X-Spam-Status:"), "{head}");
        assert!(
            !head.contains("RBL_TEST")
                && !head.contains("RBL_LOW")
                && !head.contains("RBL_BLOCKED"),
            "{ip}: {head}"
        );
    }
    assert!(
        proxy.log().contains("blocked.test refuses our queries"),
        "{}",
        proxy.log()
    );
}

#[test]
fn end_to_end_through_postfix_delivers_results_and_never_a_dmarc_reject() {
    let dns = Dns::start();
    let pf = support::Postfix::start();
    let proxy = Proxy::start(&format!(
        "[server]\nhostname = \"mx.example.test\"\n[upstream]\nurl = \"{}\"\n[rules]\npaths = [\"{}\"]\n[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 1000\n[auth]\ndmarc_enforce = true\n",
        pf.url(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("rules")
            .display(),
        dns.addr
    ));
    // DKIM-signed by the From domain (example.test, p=reject), sent from 127.0.0.1 with an
    // envelope sender in loop.test (whose SPF allows 127.0.0.0/8): delivered by Postfix.
    let aligned = signed("Joe <joe@example.test>", "example.test");
    let mut client = SmtpClient::connect_ehlo(proxy.addr(), "mail.loop.test");
    client.send_mail("joe@loop.test", &["user@example.org"], &aligned);
    // Unsigned, From example.test, envelope in loop.test: DMARC fails (no aligned SPF or
    // DKIM) for a p=reject domain → 550 5.7.1, and Postfix never sees it.
    // (Its Message-ID differs from the signed one's, to tell them apart in the Maildir.)
    let forged = String::from_utf8(plain("Joe <joe@example.test>"))
        .expect("utf-8")
        .replace("<1@x.test>", "<forged@x.test>")
        .into_bytes();
    let r = client.cmd("MAIL FROM:<joe@loop.test>");
    client.expect_code(&r, 250, "MAIL");
    let r = client.cmd("RCPT TO:<user@example.org>");
    client.expect_code(&r, 250, "RCPT");
    let r = client.data(&forged);
    client.expect_code(&r, 550, "DMARC reject");
    assert_eq!(r.enhanced(), Some("5.7.1"), "{}", r.wire());
    client.quit();

    let delivered = pf.settle_and_collect(1);
    let text = String::from_utf8_lossy(&delivered[0]).replace("\r\n", "\n");
    assert!(text.contains("Message-ID: <1@x.test>"), "{text}");
    assert!(!text.contains("forged@x.test"), "{text}");
    let head = text.split("\n\n").next().unwrap_or("");
    let ar = head
        .split("\nAuthentication-Results: ")
        .nth(1)
        .map(|rest| {
            // The field with its folded continuation lines.
            let mut field = String::from("Authentication-Results: ");
            for (i, line) in rest.split('\n').enumerate() {
                if i > 0 && !line.starts_with([' ', '\t']) {
                    break;
                }
                field.push_str(line);
                field.push('\n');
            }
            field
        })
        .unwrap_or_else(|| panic!("no Authentication-Results in the delivered file:\n{head}"));
    assert!(
        ar.starts_with("Authentication-Results: mx.example.test;"),
        "{ar}"
    );
    for want in [
        "spf=pass",
        "dkim=pass",
        "header.d=example.test",
        "dmarc=pass",
        "arc=none",
    ] {
        assert!(ar.contains(want), "{want} missing: {ar}");
    }
    assert!(head.contains("Received-SPF: pass"), "{head}");
    assert!(
        head.contains("SPF_PASS") && head.contains("DKIM_VALID_AU") && head.contains("DMARC_PASS"),
        "{head}"
    );
}

#[test]
fn dkim_rsa_sha256_valid_and_tampered() {
    let key = mail_auth_rsa_key();
    // The DNS key record: p= is the PKCS#1 RSAPublicKey (RFC 6376 §3.6.1 allows it as well
    // as SubjectPublicKeyInfo; verifiers accept both).
    let public = support::messages::base64(&key.public_key());
    let dns = Dns::start_with(&[(
        "rsa2048._domainkey.example.test".to_string(),
        format!("v=DKIM1; k=rsa; p={public}"),
    )]);
    let auth = authenticator(dns.addr, 2000);
    let msg = plain("Joe <joe@example.test>");
    let sig = DkimSigner::from_key(key)
        .domain("example.test")
        .selector("rsa2048")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(&msg)
        .expect("sign");
    let header = sig.to_header();
    assert!(header.contains("a=rsa-sha256"), "{header}");
    let mut signed = header.into_bytes();
    signed.extend_from_slice(&msg);
    // Client outside every SPF record: only the aligned RSA signature makes DMARC pass.
    let r = check(
        &auth,
        "198.51.100.7",
        "mail.example.test",
        "joe@example.test",
        &signed,
    );
    for s in ["DKIM_VALID", "DKIM_VALID_AU", "DMARC_PASS", "SPF_FAIL"] {
        assert!(has(&r, s), "{s}: {:?}", r.symbols);
    }
    assert_eq!(r.dkim[0].result, "pass");
    assert_eq!(r.dkim[0].selector, "rsa2048");
    assert!(r.headers[0].contains("dkim=pass"), "{}", r.headers[0]);

    let mut tampered = signed.clone();
    let n = tampered.len();
    tampered[n - 4] = b'!';
    let r = check(
        &auth,
        "198.51.100.7",
        "mail.example.test",
        "joe@example.test",
        &tampered,
    );
    assert!(
        has(&r, "DKIM_INVALID") && !has(&r, "DKIM_VALID") && r.dmarc_reject(),
        "{:?}",
        r.symbols
    );
}

/// A plain message whose body links to `link`.
fn with_link(link: &str, tag: &str) -> Vec<u8> {
    format!(
        "From: joe@loop.test\r\nTo: u@example.org\r\nSubject: offer {tag}\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{tag}@x.test>\r\n\r\nHave a look: {link}\r\n"
    )
    .into_bytes()
}

/// The production URI block list checker pointed at `ns`, with the list uri.test.
fn uribl_checker(ns: SocketAddr, timeout_ms: u64) -> Uribl {
    let dns = DnsConfig {
        nameservers: vec![ns.to_string()],
        timeout_ms,
        ..DnsConfig::default()
    };
    let resolver = build_resolver(&dns).expect("resolver");
    Uribl::new(
        resolver.resolver().clone(),
        Duration::from_millis(timeout_ms),
        &[dnsbl_list("uri.test", "URIBL_TEST", 2.5)],
    )
}

/// The URIBL symbols for a message linking to `link` (links extracted by the parser).
fn uribl_symbols(u: &Uribl, link: &str) -> Vec<String> {
    let message = Message::parse(with_link(link, "t"));
    let domains = uribl::domains(message.uris());
    rt().block_on(u.check(&domains))
        .into_iter()
        .map(|h| h.symbol)
        .collect()
}

#[test]
fn uribl_listed_unlisted_blocked() {
    let dns = Dns::start();
    let u = uribl_checker(dns.addr, 2000);
    assert_eq!(
        uribl_symbols(&u, "http://www.spam-domain.test/x"),
        ["URIBL_TEST"]
    );
    // Schemeless, upper case, a deeper host: the same registrable domain.
    assert_eq!(
        uribl_symbols(&u, "WWW.Spam-Domain.TEST/offer"),
        ["URIBL_TEST"]
    );
    // An IP-literal host is looked up reversed.
    assert_eq!(uribl_symbols(&u, "http://192.0.2.9/x"), ["URIBL_TEST"]);
    assert!(uribl_symbols(&u, "http://www.clean-domain.test/x").is_empty());
    assert!(uribl_symbols(&u, "http://192.0.2.10/x").is_empty());
    // A blocked-resolver answer is not a listing, but it is counted.
    assert!(uribl_symbols(&u, "https://blocked-domain.test/").is_empty());
    let counts = u.blocked_counts();
    assert!(counts.contains(&("uri.test".to_string(), 1)), "{counts:?}");
}

#[test]
fn uribl_dns_down_or_silent_is_not_listed_and_no_hang() {
    let closed = SocketAddr::from(([127, 0, 0, 1], support::unused_port()));
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    // Many domains, all asked at once: one timeout in all, not one per domain.
    let links: Vec<String> = (0..uribl::MAX_DOMAINS)
        .map(|i| format!("http://www.d{i}.test/"))
        .collect();
    for ns in [closed, silent_addr] {
        let u = uribl_checker(ns, 300);
        let started = Instant::now();
        assert!(
            uribl_symbols(&u, "http://www.spam-domain.test/x").is_empty(),
            "{ns}"
        );
        assert!(rt().block_on(u.check(&uribl::domains(&links))).is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{ns}: took {:?}",
            started.elapsed()
        );
    }
}

/// `[dns]` and the URI block list uri.test (score 2.5), for the proxy and `scan`.
fn uribl_config(ns: SocketAddr, timeout_ms: u64) -> String {
    format!(
        "[rules]\npaths = [\"{}\"]\n[dns]\nnameservers = [\"{ns}\"]\ntimeout_ms = {timeout_ms}\n\
         [[uribl]]\nzone = \"uri.test\"\nsymbol = \"URIBL_TEST\"\nscore = 2.5\n",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("rules")
            .display()
    )
}

/// `mailwarden scan --json` of `message` with `config`.
fn scan_message_json(config: &str, message: &[u8]) -> (serde_json::Value, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("mailwarden.toml");
    std::fs::write(&conf, config).expect("write config");
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, message).expect("write message");
    let started = Instant::now();
    let out: Output = Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .arg("scan")
        .arg("--config")
        .arg(&conf)
        .arg("--json")
        .arg(&msg)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run mailwarden scan");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "scan output is not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (value, elapsed)
}

#[test]
fn uribl_in_scan_json() {
    let dns = Dns::start();
    let config = uribl_config(dns.addr, 2000);
    let (listed, _) = scan_message_json(&config, &with_link("http://www.spam-domain.test/x", "a"));
    assert_eq!(symbol_score(&listed, "URIBL_TEST"), Some(2.5), "{listed}");
    assert_eq!(listed["uribl"][0]["zone"], "uri.test", "{listed}");
    assert_eq!(listed["uribl"][0]["domain"], "spam-domain.test", "{listed}");
    assert_eq!(listed["uribl"][0]["code"], "127.0.0.2", "{listed}");
    for link in [
        "http://www.clean-domain.test/x",
        "http://blocked-domain.test/",
    ] {
        let (clean, _) = scan_message_json(&config, &with_link(link, "b"));
        assert_eq!(symbol_score(&clean, "URIBL_TEST"), None, "{link}: {clean}");
        assert_eq!(clean["uribl"], serde_json::json!([]), "{link}: {clean}");
    }
    // DNS server down: not listed, and quickly.
    let down = SocketAddr::from(([127, 0, 0, 1], support::unused_port()));
    let (clean, elapsed) = scan_message_json(
        &uribl_config(down, 300),
        &with_link("http://www.spam-domain.test/x", "c"),
    );
    assert_eq!(symbol_score(&clean, "URIBL_TEST"), None, "{clean}");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[test]
fn uribl_through_the_proxy() {
    let dns = Dns::start();
    let proxy = Proxy::start(&format!(
        "[server]\nhostname = \"mx.example.test\"\n[upstream]\nurl = \"maildir:@DIR@/mail\"\n{}",
        uribl_config(dns.addr, 1000)
    ));
    let send = |link: &str, tag: &str| {
        let mut client = SmtpClient::connect_ehlo(proxy.addr(), "mail.loop.test");
        client.send_mail("joe@loop.test", &["u@example.org"], &with_link(link, tag));
        client.quit();
    };
    send("http://www.spam-domain.test/x", "listed");
    send("http://www.clean-domain.test/x", "clean");
    let heads = delivered_headers(&proxy);
    assert_eq!(heads.len(), 2, "{heads:?}");
    let head_of = |tag: &str| {
        heads
            .iter()
            .find(|h| h.contains(&format!("Subject: offer {tag}")))
            .unwrap_or_else(|| panic!("no message {tag}: {heads:?}"))
            .clone()
    };
    let listed = head_of("listed");
    let status = listed
        .lines()
        .skip_while(|l| !l.starts_with("X-Spam-Status:"))
        .take_while(|l| l.starts_with("X-Spam-Status:") || l.starts_with([' ', '\t']))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(status.contains("URIBL_TEST"), "{listed}");
    let clean = head_of("clean");
    assert!(clean.contains("X-Spam-Status:"), "{clean}");
    assert!(!clean.contains("URIBL_TEST"), "{clean}");
}

/// RFC 7489 §6.6.4: with `pct=0` no failing message gets the published policy (reject is
/// applied as the next milder one, quarantine); `pct=100` is the plain policy.
#[test]
fn dmarc_pct_samples_the_policy() {
    let extra = [
        ("sampled.test", "v=spf1 ip4:192.0.2.0/24 -all"),
        ("_dmarc.sampled.test", "v=DMARC1; p=reject; pct=0"),
        ("full.test", "v=spf1 ip4:192.0.2.0/24 -all"),
        ("_dmarc.full.test", "v=DMARC1; p=reject; pct=100"),
    ]
    .map(|(n, t)| (n.to_string(), t.to_string()));
    let dns = Dns::start_with(&extra);
    let auth = authenticator(dns.addr, 2000);
    let r = check(
        &auth,
        "198.51.100.7",
        "mail.sampled.test",
        "joe@sampled.test",
        &plain("joe@sampled.test"),
    );
    assert_eq!(r.dmarc, Some("fail"), "{:?}", r.symbols);
    assert_eq!(r.dmarc_pct, Some(0));
    assert!(!r.dmarc_reject(), "pct=0 must not reject: {:?}", r.symbols);
    assert!(has(&r, "DMARC_QUARANTINE"), "{:?}", r.symbols);

    let r = check(
        &auth,
        "198.51.100.7",
        "mail.full.test",
        "joe@full.test",
        &plain("joe@full.test"),
    );
    assert_eq!(r.dmarc_pct, None);
    assert!(r.dmarc_reject(), "pct=100 rejects: {:?}", r.symbols);
}

/// The header blocks of the messages the proxy delivered to its Maildir.
fn delivered_headers(proxy: &Proxy) -> Vec<String> {
    let new = proxy.dir().join("mail").join("new");
    std::fs::read_dir(&new)
        .expect("maildir")
        .filter_map(|e| e.ok())
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).expect("read");
            text.split("\r\n\r\n").next().unwrap_or("").to_string()
        })
        .collect()
}

/// SPF checks the client a trusted proxy names (PROXY protocol header, XCLIENT), not the
/// proxy: example.test allows only 192.0.2.0/24, and every connection here comes from
/// 127.0.0.1.
#[test]
fn spf_checks_the_client_named_by_a_trusted_proxy() {
    let dns = Dns::start();
    let config = |server_extra: &str| {
        format!(
            "[server]\nhostname = \"mx.example.test\"\n{server_extra}\n[upstream]\nurl = \"maildir:@DIR@/mail\"\n[rules]\npaths = []\n[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 1000\n",
            dns.addr
        )
    };
    let message = plain("Joe <joe@example.test>");
    let spf_of = |proxy: &Proxy| -> Vec<String> {
        delivered_headers(proxy)
            .iter()
            .filter_map(|h| {
                h.lines()
                    .find(|l| l.starts_with("Received-SPF:"))
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            })
            .collect()
    };

    let by_header = Proxy::start(&config(
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]",
    ));
    let mut c = SmtpClient::connect(by_header.addr());
    c.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n");
    let greeting = c.reply();
    c.expect_code(&greeting, 220, "greeting");
    let r = c.cmd("EHLO mail.example.test");
    c.expect_code(&r, 250, "EHLO");
    let r = c.send_mail("joe@example.test", &["u@example.org"], &message);
    c.expect_code(&r, 250, "end of data");
    c.quit();
    assert_eq!(spf_of(&by_header), vec!["pass"]);

    let by_xclient = Proxy::start(&config("trusted_proxies = [\"127.0.0.1\"]"));
    let mut c = SmtpClient::connect_ehlo(by_xclient.addr(), "proxy.loop.test");
    let r = c.cmd("XCLIENT ADDR=192.0.2.7 HELO=mail.example.test");
    c.expect_code(&r, 220, "XCLIENT");
    let r = c.send_mail("joe@example.test", &["u@example.org"], &message);
    c.expect_code(&r, 250, "end of data");
    c.quit();
    assert_eq!(spf_of(&by_xclient), vec!["pass"]);

    // Without either, the proxy's own address is checked: SPF fails, and with it DMARC
    // (p=reject, no DKIM signature).
    let direct = Proxy::start(&config(""));
    let mut c = SmtpClient::connect_ehlo(direct.addr(), "mail.example.test");
    let r = c.cmd("MAIL FROM:<joe@example.test>");
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RCPT TO:<u@example.org>");
    c.expect_code(&r, 250, "RCPT");
    let r = c.data(&message);
    assert_eq!(r.code, 550, "{r}");
    assert!(r.text().contains("DMARC"), "{r}");
    c.quit();
    assert!(spf_of(&direct).is_empty());
}
