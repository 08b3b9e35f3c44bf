//! Greylisting and rate limits through the pipeline's stages (`Filter::at_stage`), on the
//! real embedded store in a temporary directory — what the proxy and the milter see at MAIL
//! and RCPT. The Redis store and several nodes are exercised in tests/several_nodes.rs.

use std::sync::Arc;

use super::Filter;
use super::stage::{Stage, StageInput, StageResult};
use crate::config::{Config, StateOnError};
use crate::envelope::Envelope;
use crate::smtp::command::RcptTo;
use crate::state::{Hooks, State};

fn filter_with(config_text: &str, dir: &std::path::Path) -> Filter {
    let mut config: Config = toml::from_str(config_text).expect("test config parses");
    config.dns.reverse_lookup = false;
    config.auth.enabled = false;
    config.state.dir = dir.display().to_string();
    let mut filter = Filter::load(&config).expect("the shipped rules load");
    let state = State::open(&config.state, Hooks::NONE).expect("embedded store opens");
    filter.attach_state(Arc::new(state), &config);
    filter
}

fn rcpt(address: &str) -> RcptTo {
    RcptTo {
        address: address.into(),
        notify: None,
        orcpt: None,
    }
}

async fn at_mail(filter: &Filter, envelope: &mut Envelope) -> StageResult {
    let mut input = StageInput {
        client: &mut envelope.client,
        mail_from: Some(&envelope.mail_from),
        rcpt: None,
        recipients: &[],
    };
    filter.at_stage(Stage::Mail, &mut input).await
}

async fn at_rcpt(
    filter: &Filter,
    envelope: &mut Envelope,
    to: &str,
    before: &[RcptTo],
) -> StageResult {
    let to = rcpt(to);
    let mut input = StageInput {
        client: &mut envelope.client,
        mail_from: Some(&envelope.mail_from),
        rcpt: Some(&to),
        recipients: before,
    };
    filter.at_stage(Stage::Rcpt, &mut input).await
}

fn code(r: &StageResult) -> Option<(u16, String)> {
    match r {
        StageResult::TempFail(r) | StageResult::Reject(r) => {
            Some((r.code(), r.enhanced_code().unwrap_or("").to_string()))
        }
        _ => None,
    }
}

#[tokio::test]
async fn a_new_triplet_is_deferred_once_then_passes_and_exemptions_skip_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let filter = filter_with(
        "[greylist]\nenabled = true\ndelay = \"0s\"\nretry_window = \"1h\"\n[auth]\ntrusted_networks = [\"198.51.100.0/24\"]\n",
        dir.path(),
    );
    let mut e = Envelope::example("g", &[]);
    let first = at_rcpt(&filter, &mut e, "bob@example.org", &[]).await;
    assert_eq!(code(&first), Some((451, "4.7.1".into())), "{first:?}");
    let retry = at_rcpt(&filter, &mut e, "bob@example.org", &[]).await;
    assert_eq!(retry, StageResult::Continue);
    // Another recipient is another triplet.
    let other = at_rcpt(&filter, &mut e, "carol@example.org", &[]).await;
    assert_eq!(code(&other), Some((451, "4.7.1".into())));
    // Another host of the same /24 retrying is the same triplet.
    e.client.addr = "192.0.2.99:2525".parse().expect("addr");
    assert_eq!(
        at_rcpt(&filter, &mut e, "carol@example.org", &[]).await,
        StageResult::Continue
    );
    // Trusted networks and authenticated clients are never greylisted.
    let mut trusted = Envelope::example("t", &[]);
    trusted.client.addr = "198.51.100.5:2525".parse().expect("addr");
    assert_eq!(
        at_rcpt(&filter, &mut trusted, "dave@example.org", &[]).await,
        StageResult::Continue
    );
    let mut authed = Envelope::example("a", &[]);
    authed.client.addr = "203.0.113.5:2525".parse().expect("addr");
    authed.client.auth = Some("alice".into());
    assert_eq!(
        at_rcpt(&filter, &mut authed, "dave@example.org", &[]).await,
        StageResult::Continue
    );
}

#[tokio::test]
async fn score_based_greylisting_leaves_rcpt_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let filter = filter_with("[greylist]\nenabled = true\nmin_score = 3.0\n", dir.path());
    let mut e = Envelope::example("g", &[]);
    assert_eq!(
        at_rcpt(&filter, &mut e, "bob@example.org", &[]).await,
        StageResult::Continue
    );
    let g = filter.greylist().expect("greylist on");
    let client = e.client.clone();
    let low = g
        .at_end_of_data(
            &client,
            "a@example.test",
            &["bob@example.org".into()],
            1.0,
            None,
        )
        .await;
    assert!(matches!(low, super::greylist::Outcome::Pass(_)), "{low:?}");
    let high = g
        .at_end_of_data(
            &client,
            "a@example.test",
            &["bob@example.org".into()],
            5.0,
            None,
        )
        .await;
    assert!(
        matches!(high, super::greylist::Outcome::Defer(_)),
        "{high:?}"
    );
}

#[tokio::test]
async fn a_message_limit_refuses_the_fourth_message_at_mail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let filter = filter_with(
        "[[ratelimit]]\nname = \"per-client\"\nkey = \"client_ip\"\nrate = \"3/min\"\nburst = 3\n[[ratelimit]]\nname = \"per-sender\"\nkey = \"sender\"\nrate = \"1/h\"\nburst = 1\naction = \"reject\"\n",
        dir.path(),
    );
    let mut e = Envelope::example("r", &[]);
    e.mail_from.address = "one@example.test".into();
    assert_eq!(at_mail(&filter, &mut e).await, StageResult::Continue);
    // The same sender again: the per-sender limit (reject) answers.
    assert_eq!(
        code(&at_mail(&filter, &mut e).await),
        Some((550, "5.7.1".into()))
    );
    e.mail_from.address = "two@example.test".into();
    assert_eq!(at_mail(&filter, &mut e).await, StageResult::Continue);
    // The client's fourth message in a minute (the refused one took a client token too).
    e.mail_from.address = "s9@example.test".into();
    let fourth = at_mail(&filter, &mut e).await;
    assert_eq!(code(&fourth), Some((451, "4.7.0".into())), "{fourth:?}");
    // Another client has its own bucket.
    e.client.addr = "203.0.113.9:2525".parse().expect("addr");
    e.mail_from.address = "s10@example.test".into();
    assert_eq!(at_mail(&filter, &mut e).await, StageResult::Continue);
}

#[tokio::test]
async fn recipient_limits_count_recipients_or_each_domain_once_per_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let filter = filter_with(
        "[[ratelimit]]\nname = \"rcpts\"\nkey = \"client_ip\"\nrate = \"2/h\"\nburst = 2\nrecipients = true\n[[ratelimit]]\nname = \"to-domain\"\nkey = \"recipient_domain\"\nrate = \"1/h\"\nburst = 1\n",
        dir.path(),
    );
    let mut e = Envelope::example("r", &[]);
    // Nothing at MAIL: both limits are answered at RCPT.
    assert_eq!(at_mail(&filter, &mut e).await, StageResult::Continue);
    assert_eq!(
        at_rcpt(&filter, &mut e, "a@one.example", &[]).await,
        StageResult::Continue
    );
    // Same domain in the same message: the domain's message is counted once.
    let before = [rcpt("a@one.example")];
    assert_eq!(
        at_rcpt(&filter, &mut e, "b@one.example", &before).await,
        StageResult::Continue
    );
    // The third recipient of the client's two per hour.
    let before = [rcpt("a@one.example"), rcpt("b@one.example")];
    let third = at_rcpt(&filter, &mut e, "c@two.example", &before).await;
    assert_eq!(code(&third), Some((451, "4.7.0".into())), "{third:?}");
}

#[tokio::test]
async fn an_unreachable_store_answers_per_on_error() {
    for (on_error, expect) in [
        (StateOnError::Tempfail, Some((451, "4.3.0".to_string()))),
        (StateOnError::Accept, None),
    ] {
        // A loopback port nobody listens on: the real Redis client, refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut config: Config = toml::from_str(&format!(
            "[state]\nurl = \"redis://127.0.0.1:{port}/0\"\ntimeout = \"300ms\"\non_error = \"{}\"\n[greylist]\nenabled = true\n[[ratelimit]]\nname = \"c\"\nkey = \"client_ip\"\nrate = \"10/min\"\n",
            on_error.as_str()
        ))
        .expect("config");
        config.dns.reverse_lookup = false;
        config.auth.enabled = false;
        let mut filter = Filter::load(&config).expect("rules load");
        let state =
            State::open(&config.state, Hooks::NONE).expect("a Redis client is built lazily");
        filter.attach_state(Arc::new(state), &config);
        let mut e = Envelope::example("x", &[]);
        assert_eq!(
            code(&at_mail(&filter, &mut e).await),
            expect,
            "{on_error:?} at MAIL"
        );
        assert_eq!(
            code(&at_rcpt(&filter, &mut e, "bob@example.org", &[]).await),
            expect,
            "{on_error:?} at RCPT"
        );
        assert!(filter.state().and_then(|s| s.failing()).is_some());
    }
}
