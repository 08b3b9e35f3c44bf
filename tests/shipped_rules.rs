//! The shipped rules (`rules/`, with their fitted `90_scores.cf`) on an ordinary HTML vendor
//! newsletter: tables, remote images, centred blocks, big red fonts, a hidden preview line,
//! click-here and tracking links, unsubscribe boilerplate, prices, "20% off", "order today",
//! a toll-free number. All of it is what real vendors send every day, so it must stay well
//! below the tag score: formatting and retail vocabulary are never evidence on their own
//! (README, "Rules"). A rule or fitted score that makes this message spam fails here.

use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn an_ordinary_html_vendor_newsletter_is_not_spam() {
    assert_ordinary("tests/data/newsletter/vendor-sale.eml");
}

/// A hosting provider's monthly newsletter that touches what spam also talks about, the way
/// real vendors do: a price in the subject, domain prices, search-engine tips, game servers,
/// a money-back guarantee, a partner's retirement-savings and insurance blurb ("pick hot
/// stocks"), a password-reset reminder, a toll-free number, click-here and the signed-up /
/// unsubscribe footer. Topic words are not spam content; only the pitch forms are.
#[test]
fn a_hosting_newsletter_with_finance_and_seo_topics_is_not_spam() {
    assert_ordinary("tests/data/newsletter/hosting-and-finance.eml");
}

fn assert_ordinary(message: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mailwarden.toml");
    std::fs::write(
        &config,
        format!("[rules]\npaths = [\"{}\"]\n", root.join("rules").display()),
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_mailwarden"))
        .arg("scan")
        .arg("--json")
        .arg("--config")
        .arg(&config)
        .arg(root.join(message))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run mailwarden scan");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let scan: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(scan["action"], "accept", "{scan:#}");
    let score = scan["score"].as_f64().expect("score");
    // Not just under the line: half the tag score, so one more small rule cannot tip it.
    assert!(
        score < 2.5,
        "an ordinary newsletter scores {score}: {scan:#}"
    );
}
