//! The README's first command, with the repository's own `mailwarden.toml`.
//!
//! The README promises that `cargo run --release -- serve` in the checkout runs mailwarden
//! with the shipped config (SMTP on 127.0.0.1:2525, no MTA needed) and that accepted mail
//! lands in `./mail/new/`, and suggests swaks to try it. This test does exactly that, except
//! for the port: the shipped file is copied into a temporary directory with only
//! `127.0.0.1:2525` replaced by a free port (every other line kept), the binary runs there with
//! no `--config` flag (so it must find `mailwarden.toml` in its working directory), and swaks
//! sends a message. A shipped config that stops parsing (e.g. after a config key is renamed) or
//! a relative Maildir path resolved against the wrong directory fails here.

mod support;

use std::process::Command;

use support::Proxy;

/// The README's first command with the shipped config works: the binary starts from the
/// working directory's `mailwarden.toml`, accepts a message from swaks, and writes it to
/// `./mail/new/` relative to that directory.
#[test]
fn readme_first_command_with_shipped_config_delivers_to_maildir() {
    let swaks = support::find_program("swaks").unwrap_or_else(|| {
        panic!(
            "swaks is not installed: `apt-get install swaks` (Debian package `swaks`), or \
             run scripts/test.sh which installs it"
        )
    });
    let shipped_path = concat!(env!("CARGO_MANIFEST_DIR"), "/mailwarden.toml");
    let shipped = std::fs::read_to_string(shipped_path)
        .unwrap_or_else(|e| panic!("read the shipped config {shipped_path}: {e}"));
    const SHIPPED_LISTEN: &str = "127.0.0.1:2525";
    assert_eq!(
        shipped.matches(SHIPPED_LISTEN).count(),
        1,
        "the shipped config should listen on {SHIPPED_LISTEN} exactly once:\n{shipped}"
    );

    const SHIPPED_METRICS: &str = "listen = \"127.0.0.1:9464\"";
    assert_eq!(
        shipped.matches(SHIPPED_METRICS).count(),
        1,
        "the shipped config should serve metrics on 127.0.0.1:9464:\n{shipped}"
    );

    // A port picked by the kernel can be taken again before the proxy binds it: retry.
    let mut attempts = Vec::new();
    let (proxy, port) = loop {
        let port = support::unused_port();
        let metrics_port = support::unused_port();
        let config = shipped
            .replace(SHIPPED_LISTEN, &format!("127.0.0.1:{port}"))
            .replace(
                SHIPPED_METRICS,
                &format!("listen = \"127.0.0.1:{metrics_port}\""),
            );
        let changed: Vec<(&str, &str)> = shipped
            .lines()
            .zip(config.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert!(
            changed.len() == 2 && shipped.lines().count() == config.lines().count(),
            "only the two listen lines may change: {changed:?}"
        );
        match Proxy::try_start_in_working_dir(&config) {
            Ok(proxy) => break (proxy, port),
            Err(e) if attempts.len() < 2 => attempts.push(e),
            Err(e) => {
                panic!("mailwarden did not start 3 times; last:\n{e}\nearlier:\n{attempts:#?}")
            }
        }
    };
    assert_eq!(proxy.addr(), support::loopback(port), "listening address");

    let body = "Hello from swaks, through the shipped mailwarden.toml.";
    let out = Command::new(&swaks)
        .args(["--server", &format!("127.0.0.1:{port}")])
        .args(["--from", "a@example.test"])
        .args(["--to", "u@example.org"])
        .args(["--body", body])
        .args(["--timeout", "60"])
        .output()
        .expect("run swaks");
    let transcript = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "swaks failed ({}):\n{transcript}",
        out.status
    );

    // The 250 comes after the file is in new/ (Maildir delivery), so no waiting is needed.
    let new = proxy.dir().join("mail/new");
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&new)
        .unwrap_or_else(|e| panic!("read {new:?}: {e}\nswaks transcript:\n{transcript}"))
        .map(|e| e.expect("dir entry").path())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "expected one message in {new:?}, found {files:?}\nswaks transcript:\n{transcript}"
    );
    let stored =
        String::from_utf8_lossy(&std::fs::read(&files[0]).expect("read the message")).into_owned();
    assert!(
        stored.starts_with("Return-Path: <a@example.test>\n"),
        "{stored}"
    );
    assert!(stored.contains("\nTo: u@example.org\n"), "{stored}");
    assert!(stored.contains(&format!("\n\n{body}\n")), "{stored}");

    // The monitoring endpoint of the shipped config.
    let (status, metrics) = proxy.http_get("/metrics");
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("mailwarden_messages_total{action=\"accept\"} 1"),
        "{metrics}"
    );
    assert_eq!(proxy.http_get("/healthz").0, 200);
    let (status, ready) = proxy.http_get("/readyz");
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("upstream: ok (Maildir delivery"), "{ready}");
}
