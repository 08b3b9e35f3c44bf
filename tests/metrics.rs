//! The monitoring interface, checked the way an admin's tools will use it: `/metrics` after
//! real traffic, validated by `promtool check metrics`; `/healthz` and `/readyz`; the shipped
//! Prometheus config, alert rules and Grafana dashboard (promtool, and every metric they name
//! must be exported); and a real Prometheus (Debian package `prometheus`, installed by
//! scripts/test.sh) scraping a running mailwarden and answering the dashboard's queries.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{FakeUpstream, Proxy, Script, SmtpClient};

const CLEAN: &[u8] =
    b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hello\r\n\r\nJust a note.\r\n";
const REJECTED: &[u8] =
    b"From: a@example.org\r\nTo: b@example.org\r\nSubject: offer\r\n\r\nzzqrejectme now\r\n";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A Debian `prometheus` package tool; missing means the test command was not used.
fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{name} is not installed: apt-get install prometheus (scripts/test.sh does)"
    );
    path
}

/// A proxy delivering to its Maildir, with one rule that rejects `zzqrejectme`.
fn proxy_with_rules(upstream: &str) -> Proxy {
    Proxy::start_with_files(
        &format!(
            "[server]\nhostname = \"mx.example.test\"\n[upstream]\nurl = \"{upstream}\"\n[rules]\npaths = [\"@DIR@/rules\"]\n"
        ),
        &[(
            "rules/local.cf",
            b"body MW_TEST_REJECT /zzqrejectme/\nscore MW_TEST_REJECT 0.5\naction MW_TEST_REJECT reject\n"
                as &[u8],
        )],
    )
}

/// Sends 3 clean messages, 1 rejected one and two bad commands.
fn traffic(addr: SocketAddr) {
    let mut c = SmtpClient::connect_ehlo(addr, "client.example.org");
    for _ in 0..3 {
        let r = c.send_mail("a@example.org", &["b@example.org"], CLEAN);
        c.expect_code(&r, 250, "clean message");
    }
    let r = c.cmd("MAIL FROM:<a@example.org>");
    c.expect_code(&r, 250, "MAIL");
    let r = c.cmd("RCPT TO:<b@example.org>");
    c.expect_code(&r, 250, "RCPT");
    let r = c.data(REJECTED);
    c.expect_code(&r, 550, "rejected by the rule");
    let r = c.cmd("FROB");
    c.expect_code(&r, 500, "unknown command");
    let r = c.cmd("RCPT TO:<b@example.org>");
    c.expect_code(&r, 503, "RCPT before MAIL");
    c.quit();
}

/// The value of one sample line (`name{labels} value`), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

fn promtool_check_metrics(text: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("feed promtool");
    }
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_after_real_traffic_are_right_and_pass_promtool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let maildir = format!("maildir:{}", dir.path().join("mail").display());
    let proxy = proxy_with_rules(&maildir);
    traffic(proxy.addr());
    let (status, text) = proxy.http_get("/metrics");
    assert_eq!(status, 200, "{text}");
    promtool_check_metrics(&text);

    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    };
    expect("mailwarden_messages_total{action=\"accept\"}", 3.0);
    expect("mailwarden_messages_total{action=\"reject\"}", 1.0);
    expect("mailwarden_messages_total{action=\"tempfail\"}", 0.0);
    expect("mailwarden_rule_hits_total{rule=\"MW_TEST_REJECT\"}", 1.0);
    expect(
        "mailwarden_commands_rejected_total{reason=\"unknown_command\"}",
        1.0,
    );
    expect(
        "mailwarden_commands_rejected_total{reason=\"sequence\"}",
        1.0,
    );
    expect(
        "mailwarden_upstream_transactions_total{result=\"accepted\"}",
        3.0,
    );
    expect(
        "mailwarden_scan_duration_seconds_count{stage=\"total\"}",
        4.0,
    );
    expect(
        "mailwarden_scan_duration_seconds_count{stage=\"rules\"}",
        4.0,
    );
    expect("mailwarden_message_size_bytes_count", 4.0);
    expect("mailwarden_connections_accepted_total", 1.0);
    expect("mailwarden_rules_loaded", 1.0);
    expect("mailwarden_rules_last_reload_success", 1.0);
    assert!(
        text.contains("mailwarden_build_info{version=\"")
            && text.contains("process_resident_memory_bytes"),
        "{text}"
    );
    // The session has ended: no active session is left over.
    let active = support::wait_until(Duration::from_secs(5), || {
        let (_, t) = proxy.http_get("/metrics");
        (sample(&t, "mailwarden_sessions_active") == Some(0.0)).then_some(())
    });
    assert!(active.is_some(), "sessions_active did not return to 0");
}

#[test]
fn health_and_readiness_follow_the_upstream() {
    let mut up = FakeUpstream::start(Script::default());
    let proxy = proxy_with_rules(&up.url());
    assert_eq!(proxy.http_get("/healthz"), (200, "ok\n".to_string()));
    let (status, body) = proxy.http_get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("upstream: ok") && body.contains("rules: ok (1 rules)"),
        "{body}"
    );
    up.stop_listening();
    let (status, body) = proxy.http_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("upstream: FAILED"), "{body}");
    assert_eq!(proxy.http_get("/healthz").0, 200, "alive, just not ready");
    up.resume_listening();
    assert_eq!(proxy.http_get("/readyz").0, 200);
    assert_eq!(proxy.http_get("/nowhere").0, 404);
}

/// Names of the series in an exposition (histograms with their _bucket/_sum/_count).
fn exposed_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let mut fields = line.split(' ');
        if fields.next() != Some("#") || fields.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (fields.next(), fields.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics() {
    // What the registry declares: a labelled metric appears in /metrics only once it has a
    // series (a virus family, say), so the declared list is the reference; the running
    // binary must expose a subset of it, and everything unlabelled at once.
    let exported: BTreeSet<String> = mailwarden::metrics::metrics()
        .names()
        .iter()
        .cloned()
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = proxy_with_rules(&format!("maildir:{}", dir.path().join("mail").display()));
    let (_, text) = proxy.http_get("/metrics");
    let exposed: BTreeSet<String> = exposed_names(&text)
        .into_iter()
        .filter(|n| n.starts_with("mailwarden_"))
        .collect();
    assert!(
        exposed.is_subset(&exported),
        "exposed but not declared: {:?}",
        exposed.difference(&exported).collect::<Vec<_>>()
    );
    for always in [
        "mailwarden_messages_total",
        "mailwarden_sessions_active",
        "mailwarden_scan_duration_seconds_bucket",
        "mailwarden_rules_last_reload_success",
        "mailwarden_upstream_connect_errors_total",
    ] {
        assert!(
            exposed.contains(always),
            "{always} not in /metrics:\n{text}"
        );
    }
    let metric = regex::Regex::new(r"\bmailwarden_[a-z0-9_]+").expect("regex");
    for file in [
        "deploy/grafana/mailwarden.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let content = std::fs::read_to_string(repo(file)).expect("read");
        let used: BTreeSet<&str> = metric.find_iter(&content).map(|m| m.as_str()).collect();
        assert!(used.len() >= 5, "{file} uses too few metrics: {used:?}");
        let unknown: Vec<&&str> = used.iter().filter(|n| !exported.contains(**n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics mailwarden does not export: {unknown:?}"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/mailwarden.json")).expect("read"),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty() && targets.iter().all(|t| t["expr"].is_string()),
            "panel {} has no queries",
            p["title"]
        );
    }
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    // The compose set-up's config, beside the alerts.yml it is mounted with.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        repo("deploy/docker/prometheus.yml"),
        dir.path().join("prometheus.yml"),
    )
    .expect("copy");
    std::fs::copy(
        repo("deploy/prometheus/alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .expect("copy");
    let out = Command::new(tool("promtool"))
        .args(["check", "config"])
        .arg(dir.path().join("prometheus.yml"))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check config deploy/docker/prometheus.yml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (what, file) in [
        ("config", "deploy/prometheus/prometheus.yml"),
        ("rules", "deploy/prometheus/alerts.yml"),
    ] {
        let out = Command::new(tool("promtool"))
            .args(["check", what])
            .arg(repo(file))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool check {what} {file}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A real Prometheus server with a private data directory; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Runs the shipped deploy/prometheus config (and its alert rules) against `target`,
    /// scraping every second.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let shipped =
            std::fs::read_to_string(repo("deploy/prometheus/prometheus.yml")).expect("read");
        assert_eq!(shipped.matches("127.0.0.1:9464").count(), 1, "{shipped}");
        let config = shipped
            .replace("127.0.0.1:9464", &target.to_string())
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write");
        std::fs::copy(
            repo("deploy/prometheus/alerts.yml"),
            dir.path().join("alerts.yml"),
        )
        .expect("copy alerts.yml");
        let port = support::unused_port();
        let child = Command::new(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            addr: support::loopback(port),
            _dir: dir,
        };
        let ready = support::wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(p.addr).ok()?;
            (support::proxy::http_get(p.addr, "/-/ready").0 == 200).then_some(())
        });
        assert!(ready.is_some(), "prometheus did not become ready");
        p
    }

    /// An instant query; returns the result vector.
    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = support::proxy::http_get(self.addr, &path);
        assert_eq!(status, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn value(result: &serde_json::Value) -> f64 {
    result["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn a_real_prometheus_scrapes_mailwarden_and_answers_the_dashboard_queries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = proxy_with_rules(&format!("maildir:{}", dir.path().join("mail").display()));
    let prometheus = Prometheus::start(proxy.metrics_addr());
    // A first scrape before the traffic, so rates have a starting point.
    let up = support::wait_until(Duration::from_secs(30), || {
        let r = prometheus.query("up{job=\"mailwarden\"}");
        (r.len() == 1 && value(&r[0]) == 1.0).then_some(())
    });
    assert!(up.is_some(), "prometheus never scraped mailwarden");
    traffic(proxy.addr());
    let scraped = support::wait_until(Duration::from_secs(30), || {
        let r = prometheus.query("sum(mailwarden_messages_total)");
        (r.len() == 1 && value(&r[0]) == 4.0).then_some(())
    });
    assert!(
        scraped.is_some(),
        "the traffic never showed up in prometheus"
    );

    // The dashboard's queries, with Grafana's interval macros filled in.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/mailwarden.json")).expect("read"),
    )
    .expect("JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    let find = |needle: &str| -> String {
        exprs
            .iter()
            .find(|e| e.contains(needle))
            .unwrap_or_else(|| panic!("no dashboard query with {needle}"))
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
    };

    let by_action = prometheus.query(&find("sum by (action) (rate(mailwarden_messages_total"));
    let rate = |action: &str| {
        by_action
            .iter()
            .find(|r| r["metric"]["action"] == action)
            .map(value)
            .unwrap_or(0.0)
    };
    assert!(
        rate("accept") > 0.0 && rate("reject") > 0.0,
        "{by_action:?}"
    );
    assert!(
        (rate("accept") / rate("reject") - 3.0).abs() < 0.01,
        "3 accepted per rejected: {by_action:?}"
    );

    let spam = prometheus.query(&find("action=~\"tag|reject|quarantine|discard\""));
    assert_eq!(spam.len(), 1, "{spam:?}");
    assert!((value(&spam[0]) - 0.25).abs() < 0.01, "spam ratio {spam:?}");

    let hits = prometheus.query(&find("mailwarden_rule_hits_total"));
    assert!(
        hits.iter()
            .any(|r| r["metric"]["rule"] == "MW_TEST_REJECT" && value(r) > 0.0),
        "{hits:?}"
    );

    let latency = prometheus.query(&find("histogram_quantile(0.99, sum by (le, stage)"));
    let total = latency
        .iter()
        .find(|r| r["metric"]["stage"] == "total")
        .map(value)
        .unwrap_or(f64::NAN);
    assert!(
        total > 0.0 && total < 30.0,
        "p99 total scan latency {latency:?}"
    );

    let sessions = prometheus.query(&find("sum(mailwarden_sessions_active)"));
    assert_eq!(sessions.len(), 1, "{sessions:?}");

    let reload = prometheus.query("mailwarden_rules_last_reload_success");
    assert_eq!(reload.len(), 1);
    assert_eq!(value(&reload[0]), 1.0);

    // The alert rules loaded and evaluate; none fires on a healthy instance.
    let rules = support::proxy::http_get(prometheus.addr, "/api/v1/rules").1;
    assert!(rules.contains("MailwardenRulesReloadFailed"), "{rules}");
    let alerts = prometheus.query("ALERTS{alertstate=\"firing\"}");
    assert!(alerts.is_empty(), "alerts firing: {alerts:?}");
}

#[test]
fn json_logs_carry_one_structured_line_per_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let maildir = format!("maildir:{}", dir.path().join("mail").display());
    let proxy = Proxy::start_with_files(
        &format!(
            "[server]\nhostname = \"mx.example.test\"\n[upstream]\nurl = \"{maildir}\"\n[rules]\npaths = [\"@DIR@/rules\"]\n[log]\nformat = \"json\"\n"
        ),
        &[(
            "rules/local.cf",
            b"body MW_TEST_REJECT /zzqrejectme/\nscore MW_TEST_REJECT 0.5\naction MW_TEST_REJECT reject\n"
                as &[u8],
        )],
    );
    traffic(proxy.addr());
    let log = proxy.wait_for_log("message refused");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("message "))
        })
        .collect();
    assert_eq!(messages.len(), 4, "{log}");
    let refused = messages
        .iter()
        .find(|v| v["message"] == "message refused")
        .expect("the rejected message's line");
    for field in [
        "session", "id", "client", "helo", "from", "rcpts", "size", "action", "score", "rules",
        "reply", "timings",
    ] {
        assert!(!refused[field].is_null(), "{field} missing: {refused}");
    }
    assert_eq!(refused["action"], "reject");
    assert_eq!(refused["rules"], "MW_TEST_REJECT");
    assert_eq!(refused["client"], "127.0.0.1");
    assert!(
        !log.contains("zzqrejectme"),
        "message content must never be logged"
    );
}
