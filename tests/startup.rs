//! Start-up checks: a config with several problems gets one clear line per problem, all at
//! once (config values, rule files, TLS files), and a non-zero exit before anything listens.

use std::process::Command;

fn serve(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mailwarden.toml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run mailwarden serve");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_bad_config_value_is_reported_at_once() {
    let (ok, stderr) = serve(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"not a host\"\nmax_recipients = 0\n\
         [metrics]\nlisten = \"nowhere\"\n[dns]\ntimeout_ms = 0\n",
    );
    assert!(!ok);
    for key in [
        "server.hostname",
        "server.max_recipients",
        "metrics.listen",
        "dns.timeout_ms",
    ] {
        assert!(stderr.contains(key), "{key} missing in:\n{stderr}");
    }
    assert!(stderr.contains("configuration errors"), "{stderr}");
}

#[test]
fn missing_rules_and_tls_files_are_reported_together() {
    let (ok, stderr) = serve(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstream]\nurl = \"maildir:/tmp/mailwarden-startup-test\"\n\
         [tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n\
         [rules]\npaths = [\"/nonexistent/rules\"]\n[auth]\nenabled = false\n[metrics]\nlisten = \"\"\n",
    );
    assert!(!ok);
    assert!(stderr.contains("2 problems"), "{stderr}");
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
    assert!(stderr.contains("/nonexistent/rules"), "{stderr}");
}
