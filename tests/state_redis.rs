//! The Redis state store against real Redis servers (a private standalone server and a private
//! 3-master Cluster, see tests/support/redis.rs): greylisting (RFC 6647) and token buckets
//! shared by two stores ("nodes"), peeking, expiry on every key, Redis going away and coming
//! back, a paused server, flushed scripts, and the blocking connection for the classifier.

mod support;

use std::time::{Duration, Instant};

use mailwarden::config::{StateOnError, StateTarget};
use mailwarden::state::redis_store::{RedisStore, sync_connection};
use mailwarden::state::{
    Bucket, Grey, GreyPolicy, Hooks, State, StateError, StateStore, Take, Triplet,
};
use support::redis::{Redis, RedisCluster};

const TIMEOUT: Duration = Duration::from_secs(2);

fn store(target: &StateTarget) -> RedisStore {
    RedisStore::new(target, TIMEOUT).expect("build the Redis store")
}

fn policy(auto_allow_after: u64) -> GreyPolicy {
    GreyPolicy {
        delay: Duration::from_secs(1),
        retry_window: Duration::from_secs(60),
        auto_allow_after,
        allow_for: Duration::from_secs(120),
    }
}

fn triplet(net: &str, sender: &str) -> Triplet {
    Triplet {
        net: net.into(),
        sender: sender.into(),
        recipient: "rcpt@example.test".into(),
    }
}

fn bucket(key: &str) -> Bucket {
    Bucket {
        key: key.into(),
        rate: 3.0 / 60.0,
        burst: 3,
        cost: 1,
    }
}

async fn grey1(s: &RedisStore, t: &Triplet, p: &GreyPolicy, peek: bool) -> Grey {
    let r = s.greylist(std::slice::from_ref(t), p, peek).await;
    r.expect("greylist answers")[0]
}

async fn take1(s: &RedisStore, b: &Bucket, peek: bool) -> Take {
    s.take(std::slice::from_ref(b), peek)
        .await
        .expect("take answers")[0]
}

fn first(g: Grey) -> Option<bool> {
    match g {
        Grey::Deferred { first, .. } => Some(first),
        _ => None,
    }
}

/// Everything two nodes sharing one Redis (or Cluster) must agree on. `tag` keeps the keys of
/// a run apart.
async fn shared_state(target: &StateTarget, tag: &str) {
    let (a, b) = (store(target), store(target));
    let p = policy(0);
    let auto = policy(2);
    let t = triplet(&format!("192.0.2.0/24-{tag}"), "s@a.test");
    let net_b = format!("198.51.100.0/24-{tag}");
    let (x, y) = (triplet(&net_b, "x@b.test"), triplet(&net_b, "y@b.test"));

    // Peeking at a new triplet answers "first attempt" and records nothing.
    assert_eq!(first(grey1(&a, &t, &p, true).await), Some(true));
    assert_eq!(
        grey1(&a, &t, &p, false).await,
        Grey::Deferred {
            retry_in: Duration::from_secs(1),
            first: true
        }
    );
    // The other node sees the first attempt: an early retry, not a new one.
    match grey1(&b, &t, &p, false).await {
        Grey::Deferred {
            first: false,
            retry_in,
        } => assert!(retry_in <= Duration::from_secs(1), "{retry_in:?}"),
        other => panic!("early retry on the other node: {other:?}"),
    }
    // Two triplets of another network (and one of the first) in one call.
    let both = a.greylist(&[x.clone(), y.clone()], &auto, false).await;
    assert_eq!(
        both.expect("greylist")
            .iter()
            .filter_map(|g| first(*g))
            .count(),
        2
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A peek after the delay says "passed" but changes nothing: the real retry still passes.
    assert_eq!(grey1(&b, &t, &p, true).await, Grey::Passed);
    assert_eq!(grey1(&b, &t, &p, false).await, Grey::Passed);
    assert_eq!(grey1(&a, &t, &p, false).await, Grey::Known);
    assert_eq!(grey1(&a, &t, &p, true).await, Grey::Known);

    // Auto-allow: two passed triplets of a network let every other triplet of it through.
    let passed = b.greylist(&[x, y], &auto, false).await.expect("greylist");
    assert_eq!(passed, vec![Grey::Passed, Grey::Passed]);
    let z = triplet(&net_b, "z@b.test");
    assert_eq!(grey1(&a, &z, &auto, true).await, Grey::NetworkAllowed);
    assert_eq!(grey1(&a, &z, &auto, false).await, Grey::NetworkAllowed);

    // Token bucket 3/min, burst 3, drawn from both nodes.
    let bk = bucket(&format!("client_ip:192.0.2.7-{tag}"));
    for _ in 0..4 {
        assert_eq!(take1(&a, &bk, true).await, Take::Allowed { left: 2.0 });
    }
    for (i, s) in [&a, &b, &a].into_iter().enumerate() {
        let t = take1(s, &bk, false).await;
        assert!(t.allowed(), "take {i}: {t:?}");
    }
    for s in [&b, &a] {
        match take1(s, &bk, false).await {
            Take::Limited { retry_in, left } => {
                assert!(left < 0.1, "{left}");
                let secs = retry_in.as_secs_f64();
                assert!((19.0..=20.01).contains(&secs), "retry_in {retry_in:?}");
            }
            other => panic!("the fourth message within the minute: {other:?}"),
        }
    }
    assert!(!take1(&b, &bk, true).await.allowed());
    // Two buckets (different slots on a Cluster) in one call.
    let two = [
        bucket(&format!("helo:h-{tag}")),
        bucket(&format!("user:u-{tag}")),
    ];
    let taken = a.take(&two, false).await.expect("take");
    assert!(taken.iter().all(Take::allowed), "{taken:?}");
}

/// Every `mw:*` key on the server at `port` has an expiry.
fn assert_every_key_expires(port: u16) -> usize {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    let mut con = client.get_connection().expect("connect");
    let keys: Vec<String> = redis::Commands::scan_match::<_, String>(&mut con, "mw:*")
        .expect("SCAN")
        .collect::<Result<_, _>>()
        .expect("SCAN");
    for k in &keys {
        let pttl: i64 = redis::cmd("PTTL").arg(k).query(&mut con).expect("PTTL");
        assert!(pttl > 0, "{k} has PTTL {pttl}: every key must expire");
    }
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_nodes_share_greylisting_and_buckets() {
    let started = Instant::now();
    let redis = Redis::start();
    let target = StateTarget::Standalone(redis.url());
    shared_state(&target, "standalone").await;
    let s = store(&target);
    assert_eq!(s.describe(), redis.url());
    let pong = s.ping().await.expect("ping");
    assert_eq!(pong, format!("{} answers PING", redis.url()));
    assert!(assert_every_key_expires(redis.port) >= 5);
    eprintln!("standalone shared state: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nodes_share_greylisting_and_buckets() {
    let started = Instant::now();
    let cluster = RedisCluster::start();
    let target = StateTarget::Cluster(cluster.seeds());
    eprintln!("cluster up: {:?}", started.elapsed());
    shared_state(&target, "cluster").await;
    let s = store(&target);
    assert!(s.ping().await.expect("ping").ends_with("answers PING"));
    let keys: usize = cluster
        .ports()
        .into_iter()
        .map(assert_every_key_expires)
        .sum();
    assert!(keys >= 5, "{keys} keys");
    // Scripts flushed on every node: the next call loads them again.
    for p in cluster.ports() {
        support::redis::cli(p, &["SCRIPT", "FLUSH"]);
    }
    let t = triplet("203.0.113.0/24", "after-flush@c.test");
    assert_eq!(first(grey1(&s, &t, &policy(0), false).await), Some(true));
    let b = [bucket("a:after-flush"), bucket("b:after-flush")];
    assert!(
        s.take(&b, false)
            .await
            .expect("take")
            .iter()
            .all(Take::allowed)
    );
    eprintln!("cluster test: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_follows_redis_going_away_and_coming_back() {
    let mut redis = Redis::start();
    let target = StateTarget::Standalone(redis.url());
    let timeout = Duration::from_millis(800);
    let s = RedisStore::new(&target, timeout).expect("store");
    let t = triplet("192.0.2.0/24", "restart@a.test");
    assert_eq!(first(grey1(&s, &t, &policy(0), false).await), Some(true));

    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let r = s
            .greylist(std::slice::from_ref(&t), &policy(0), false)
            .await;
        assert!(matches!(r, Err(StateError::Unavailable(_))), "{r:?}");
        assert!(started.elapsed() <= timeout + Duration::from_millis(200));
    }

    redis.start_again();
    // The restarted server is empty: a first attempt again.
    answers_a_first_attempt(
        &s,
        &t,
        Duration::from_secs(10),
        "the same store never answered again",
    )
    .await;
}

/// Asks `s` about `t` until it answers (within `limit`); the answer must be a first attempt.
async fn answers_a_first_attempt(s: &RedisStore, t: &Triplet, limit: Duration, never: &str) {
    let deadline = Instant::now() + limit;
    loop {
        match s.greylist(std::slice::from_ref(t), &policy(0), false).await {
            Ok(g) => break assert_eq!(first(g[0]), Some(true)),
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{never}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_is_a_timeout_and_flushed_scripts_are_reloaded() {
    let redis = Redis::start();
    let target = StateTarget::Standalone(redis.url());
    let timeout = Duration::from_millis(300);
    let store = RedisStore::new(&target, timeout).expect("store");
    let state = State::with_store(
        Box::new(store),
        timeout,
        StateOnError::Tempfail,
        Hooks::NONE,
    );
    let t = triplet("192.0.2.0/24", "pause@a.test");
    let p = policy(0);
    let g = state.greylist(std::slice::from_ref(&t), &p, false).await;
    assert_eq!(first(g.expect("greylist")[0]), Some(true));

    redis.cli(&["CLIENT", "PAUSE", "2000"]);
    let started = Instant::now();
    let r = state.greylist(std::slice::from_ref(&t), &p, false).await;
    assert_eq!(r, Err(StateError::Timeout(timeout)));
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert!(state.failing().is_some());
    redis.cli(&["CLIENT", "UNPAUSE"]);

    redis.cli(&["FLUSHALL"]);
    redis.cli(&["SCRIPT", "FLUSH"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let g = loop {
        match state.greylist(std::slice::from_ref(&t), &p, false).await {
            Ok(g) => break g,
            Err(e) if Instant::now() < deadline => eprintln!("not yet: {e}"),
            Err(e) => panic!("no answer after FLUSHALL: {e}"),
        }
    };
    assert_eq!(first(g[0]), Some(true), "state and scripts were flushed");
    let taken = state
        .take(&[bucket("after:flush")], false)
        .await
        .expect("take");
    assert!(taken[0].allowed());
    assert!(state.failing().is_none());
}

#[test]
fn the_blocking_connection_reaches_standalone_and_cluster() {
    let redis = Redis::start();
    let cluster = RedisCluster::start();
    for target in [
        StateTarget::Standalone(redis.url()),
        StateTarget::Cluster(cluster.seeds()),
    ] {
        let mut con = sync_connection(&target, TIMEOUT).expect("sync connection");
        for i in 0..10 {
            let key = format!("mw:{{test:{i}}}:k");
            let () = redis::cmd("SET")
                .arg(&key)
                .arg(i)
                .arg("EX")
                .arg(60)
                .query(&mut con)
                .expect("SET");
            let v: i64 = redis::cmd("GET").arg(&key).query(&mut con).expect("GET");
            assert_eq!(v, i);
        }
    }
    let down = StateTarget::Standalone(format!("redis://127.0.0.1:{}/0", free_port()));
    assert!(matches!(
        sync_connection(&down, TIMEOUT),
        Err(StateError::Unavailable(_))
    ));
}

/// One greylisting round trip and a blocking SET/GET through `target`.
async fn answers(target: &StateTarget) {
    let s = store(target);
    let t = triplet("192.0.2.0/24", "through@a.test");
    assert_eq!(first(grey1(&s, &t, &policy(0), false).await), Some(true));
    assert_eq!(first(grey1(&s, &t, &policy(0), false).await), Some(false));
    assert!(s.ping().await.expect("ping").ends_with("answers PING"));
    let target = target.clone();
    let got = tokio::task::spawn_blocking(move || {
        let mut con = sync_connection(&target, TIMEOUT).expect("sync connection");
        let () = redis::cmd("SET")
            .arg("mw:{test}:k")
            .arg("v")
            .arg("EX")
            .arg(60)
            .query(&mut con)
            .expect("SET");
        redis::cmd("GET")
            .arg("mw:{test}:k")
            .query::<String>(&mut con)
    });
    assert_eq!(got.await.expect("join").expect("GET"), "v");
}

/// `rediss://` with a verified certificate. The system trust store is all a URL can name, so
/// the check runs in a child process of this test binary with `SSL_CERT_FILE` = the test CA
/// (setting it here would change the environment under the other tests' threads).
#[test]
fn rediss_works() {
    let redis = Redis::start_tls();
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "rediss_in_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SSL_CERT_FILE", redis.tls_ca())
        .env("MW_REDISS_URL", redis.tls_url())
        .output()
        .expect("run the rediss child");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rediss child failed:\n{text}");
    assert!(
        text.contains("rediss child answered"),
        "the child did not run:\n{text}"
    );
}

/// Run by [`rediss_works`] only (with `MW_REDISS_URL` set); on its own it has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_in_child() {
    let Ok(url) = std::env::var("MW_REDISS_URL") else {
        return;
    };
    answers(&StateTarget::Standalone(url)).await;
    eprintln!("rediss child answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_names_the_master() {
    let master = Redis::start();
    let sentinel = Redis::start_sentinel(&master);
    let target = StateTarget::Sentinel {
        sentinels: vec![format!("127.0.0.1:{}", sentinel.port)],
        master: "mymaster".into(),
        db: 0,
        tls: false,
        username: None,
        password: None,
    };
    answers(&target).await;
    assert_eq!(
        store(&target).describe(),
        format!("redis+sentinel://127.0.0.1:{}/mymaster/0", sentinel.port)
    );
    assert!(
        master.cli(&["DBSIZE"]).trim() != "0",
        "the keys are on the master"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_followed() {
    let master = Redis::start();
    let replica = Redis::start_replica(&master);
    let sentinel = Redis::start_sentinel(&master);
    let known = support::wait_until(support::LONG, || {
        let replicas = sentinel.cli(&["SENTINEL", "replicas", "mymaster"]);
        replicas.contains(&replica.port.to_string()).then_some(())
    });
    assert!(known.is_some(), "the sentinel never learnt of the replica");
    let target = StateTarget::Sentinel {
        sentinels: vec![format!("127.0.0.1:{}", sentinel.port)],
        master: "mymaster".into(),
        db: 0,
        tls: false,
        username: None,
        password: None,
    };
    let s = store(&target);
    let t = triplet("192.0.2.0/24", "failover@a.test");
    assert_eq!(first(grey1(&s, &t, &policy(0), false).await), Some(true));

    // NOGOODSLAVE until the sentinel has heard from the replica itself: ask again.
    let accepted = support::wait_until(support::LONG, || {
        let reply = sentinel.cli(&["SENTINEL", "FAILOVER", "mymaster"]);
        reply.trim().eq("OK").then_some(())
    });
    assert!(accepted.is_some(), "the sentinel refused the failover");
    let moved = support::wait_until(support::LONG, || {
        let addr = sentinel.cli(&["SENTINEL", "get-master-addr-by-name", "mymaster"]);
        addr.contains(&replica.port.to_string()).then_some(())
    });
    assert!(moved.is_some(), "the sentinel never promoted the replica");
    // The old master may take writes until the sentinel demotes it; the store asks the
    // sentinels again within a second, so it must have moved on after that.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t2 = triplet("192.0.2.0/24", "after-failover@a.test");
    answers_a_first_attempt(
        &s,
        &t2,
        Duration::from_secs(15),
        "the store never followed the failover",
    )
    .await;
    // The write went to the new master (the old one is a replica now, read-only).
    let role = replica.cli(&["ROLE"]);
    assert!(role.starts_with("master"), "{role}");
    let key = format!("mw:{{g:{}}}:t:{}", t2.net, t2.digest());
    assert_eq!(
        replica.cli(&["EXISTS", &key]).trim(),
        "1",
        "{key} on the new master"
    );
    assert_eq!(first(grey1(&s, &t2, &policy(0), false).await), Some(false));
}

#[test]
fn a_store_is_built_while_redis_is_down() {
    let target = StateTarget::Standalone(format!("redis://127.0.0.1:{}/0", free_port()));
    assert!(RedisStore::new(&target, TIMEOUT).is_ok());
    let bad = StateTarget::Standalone("redis://[::1/0".into());
    match RedisStore::new(&bad, TIMEOUT) {
        Err(StateError::Unavailable(m)) => assert!(m.contains("write e.g."), "{m}"),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a bad URL was accepted"),
    }
}

fn free_port() -> u16 {
    support::unused_port()
}
