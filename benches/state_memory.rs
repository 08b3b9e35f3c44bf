//! Redis memory per greylisting triplet: records N distinct triplets (first attempts) through
//! the production store (`RedisStore` behind `State`) and reads Redis' `used_memory` before and
//! after. Then retries them all once (`delay = 0`: each one passes) and reads it again, since a
//! passed triplet keeps one more field and is kept for `allow_for` (35 days by default), so the
//! passed set is what a busy MX actually holds.
//!
//! Run (see benches/README.md; `benches/state-load.sh` runs it against its private Redis):
//!
//! ```sh
//! MAILWARDEN_BENCH_REDIS=redis://127.0.0.1:6379/0 cargo bench --bench state_memory
//! cargo bench --bench state_memory -- redis://127.0.0.1:6379/0 --triplets 100000 --batch 100 --tasks 16
//! ```
//!
//! The URL comes from the first argument that is not an option, else `MAILWARDEN_BENCH_REDIS`.
//! Options: `--triplets N` (default 100,000), `--batch N` triplets per `greylist()` call
//! (default 100), `--tasks N` concurrent callers (default 16), `--nets N` distinct client
//! networks the triplets are spread over (default 1,000; 100 triplets per /24). The keys carry a
//! run id, so a second run adds new triplets; nothing is deleted (flush a private Redis
//! between runs). Use an empty, private Redis: `used_memory` counts everything in it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mailwarden::config::{StateOnError, StateTarget};
use mailwarden::state::redis_store::RedisStore;
use mailwarden::state::{Grey, GreyPolicy, Hooks, State, Triplet};

struct Args {
    url: String,
    triplets: usize,
    batch: usize,
    tasks: usize,
    nets: usize,
}

fn usage_exit(msg: &str) -> ! {
    eprintln!("state_memory: {msg}");
    eprintln!(
        "usage: cargo bench --bench state_memory -- [REDIS_URL] [--triplets N] [--batch N] [--tasks N] [--nets N]\n       (or MAILWARDEN_BENCH_REDIS=REDIS_URL)"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut url = None;
    let mut a = Args {
        url: String::new(),
        triplets: 100_000,
        batch: 100,
        tasks: 16,
        nets: 1_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| usage_exit(&format!("{name} needs a positive integer")))
        };
        match arg.as_str() {
            "--triplets" => a.triplets = num("--triplets"),
            "--batch" => a.batch = num("--batch"),
            "--tasks" => a.tasks = num("--tasks"),
            "--nets" => a.nets = num("--nets"),
            // `cargo bench` passes `--bench` (and test-harness flags) to every bench binary.
            s if s.starts_with('-') => {}
            s => url = Some(s.to_string()),
        }
    }
    a.url = url
        .or_else(|| std::env::var("MAILWARDEN_BENCH_REDIS").ok())
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| usage_exit("no Redis URL (argument or MAILWARDEN_BENCH_REDIS)"));
    a.nets = a.nets.min(65_536);
    a
}

/// `INFO memory` used_memory and `DBSIZE`, on a connection of its own.
fn memory(client: &redis::Client) -> (u64, u64) {
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| usage_exit(&format!("cannot connect to Redis: {e}")));
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut con)
        .unwrap_or_else(|e| usage_exit(&format!("INFO memory: {e}")));
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| usage_exit("INFO memory has no used_memory"));
    let keys: u64 = redis::cmd("DBSIZE")
        .query(&mut con)
        .unwrap_or_else(|e| usage_exit(&format!("DBSIZE: {e}")));
    (used, keys)
}

/// Triplet `i` of this run: one of `nets` /24 networks, a distinct sender and recipient.
fn triplet(run: &str, i: usize, nets: usize) -> Triplet {
    let n = i % nets;
    Triplet {
        net: format!("10.{}.{}.0/24", n / 256, n % 256),
        sender: format!("sender{i}.{run}@example.test"),
        recipient: format!("rcpt{i}@example.org"),
    }
}

/// Records every triplet once (batches of `batch`, `tasks` callers); returns the elapsed time
/// and how many answers were of each kind (deferred-new, passed, other).
async fn pass(
    state: &Arc<State>,
    a: &Args,
    run: &str,
    policy: GreyPolicy,
) -> (Duration, [usize; 3]) {
    let next = Arc::new(AtomicUsize::new(0));
    let batches = a.triplets.div_ceil(a.batch);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..a.tasks {
        let (state, next, run) = (state.clone(), next.clone(), run.to_string());
        let (triplets, batch, nets) = (a.triplets, a.batch, a.nets);
        handles.push(tokio::spawn(async move {
            let mut counts = [0usize; 3];
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    break;
                }
                let list: Vec<Triplet> = (b * batch..((b + 1) * batch).min(triplets))
                    .map(|i| triplet(&run, i, nets))
                    .collect();
                let answers = state
                    .greylist(&list, &policy, false)
                    .await
                    .unwrap_or_else(|e| usage_exit(&format!("greylist: {e}")));
                for g in answers {
                    let k = match g {
                        Grey::Deferred { first: true, .. } => 0,
                        Grey::Passed => 1,
                        _ => 2,
                    };
                    counts[k] += 1;
                }
            }
            counts
        }));
    }
    let mut counts = [0usize; 3];
    for h in handles {
        let c = h
            .await
            .unwrap_or_else(|e| usage_exit(&format!("task: {e}")));
        for k in 0..3 {
            counts[k] += c[k];
        }
    }
    (started.elapsed(), counts)
}

fn report(label: &str, n: usize, before: (u64, u64), after: (u64, u64), took: Duration) {
    let bytes = after.0 as f64 - before.0 as f64;
    let per = bytes / n as f64;
    println!(
        "{label}: used_memory {} -> {} bytes (+{:.0}), keys {} -> {}; {per:.1} bytes/triplet = {:.2} MiB per 100k; {n} in {:.2} s = {:.0} triplets/s",
        before.0,
        after.0,
        bytes,
        before.1,
        after.1,
        per * 100_000.0 / (1024.0 * 1024.0),
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}

fn main() {
    let a = parse_args();
    let client = redis::Client::open(a.url.as_str())
        .unwrap_or_else(|e| usage_exit(&format!("{}: {e}", a.url)));
    let store = RedisStore::new(
        &StateTarget::Standalone(a.url.clone()),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| usage_exit(&e.to_string()));
    let state = Arc::new(State::with_store(
        Box::new(store),
        Duration::from_secs(10),
        StateOnError::Tempfail,
        Hooks::NONE,
    ));
    // Distinct keys per run (the digest covers the sender).
    let run = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    // The production defaults but delay 0 (the retry pass passes at once) and no auto-allow
    // (every triplet is looked up and recorded, none skipped by its network).
    let policy = GreyPolicy {
        delay: Duration::ZERO,
        retry_window: Duration::from_secs(2 * 86_400),
        auto_allow_after: 0,
        allow_for: Duration::from_secs(35 * 86_400),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| usage_exit(&format!("tokio runtime: {e}")));
    println!(
        "state_memory: {} triplets over {} client networks, {} per greylist() call, {} concurrent callers, {}",
        a.triplets,
        a.nets,
        a.batch,
        a.tasks,
        state.describe()
    );
    rt.block_on(async {
        // Loads the scripts and opens the connection outside the measurement.
        let warm = Triplet {
            net: "192.0.2.0/24".into(),
            sender: format!("warm.{run}@example.test"),
            recipient: "warm@example.org".into(),
        };
        if let Err(e) = state.greylist(&[warm], &policy, true).await {
            usage_exit(&format!("greylist (warm-up): {e}"));
        }
        let m0 = memory(&client);
        if m0.1 > 0 {
            println!(
                "  note: the database already holds {} keys (used_memory counts all of them; the difference is what this run added)",
                m0.1
            );
        }
        let (took, counts) = pass(&state, &a, &run, policy).await;
        if counts[0] != a.triplets {
            usage_exit(&format!(
                "first pass: expected {} new triplets, got {} new, {} passed, {} other",
                a.triplets, counts[0], counts[1], counts[2]
            ));
        }
        let m1 = memory(&client);
        report("first attempts (deferred)", a.triplets, m0, m1, took);
        let (took, counts) = pass(&state, &a, &run, policy).await;
        if counts[1] != a.triplets {
            usage_exit(&format!(
                "retry pass: expected {} passed, got {} new, {} passed, {} other",
                a.triplets, counts[0], counts[1], counts[2]
            ));
        }
        let m2 = memory(&client);
        report(
            "after the retry (passed, + network counters)",
            a.triplets,
            m0,
            m2,
            took,
        );
    });
}
