#!/bin/sh
# The long soak, by hand: tests/soak.rs with a longer run and the release build.
#
#   benches/soak.sh                 # 600 s, 200 clients, release build, then 10,000 idle sessions
#   benches/soak.sh 3600 300        # one hour, 300 clients
#   DEBUG=1 benches/soak.sh 120     # the debug build, as `cargo test` runs it in CI
#
# Needs what the test suite needs (scripts/test.sh installs it): postfix, clamav-daemon, root
# (the private Postfix instance runs its daemons as the postfix user). Prints the RSS series
# (one sample a second, every n-th shown), throughput, and the idle-session figures; the exit
# status is the tests' (non-zero on any client error, WARN/ERROR in the proxy log, a message
# lost or duplicated, or RSS growth in the last third of the run).
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-600}
clients=${2:-200}
case "$seconds$clients" in
*[!0-9]*) echo "usage: $0 [SECONDS] [CLIENTS]" >&2; exit 2 ;;
esac
profile=--release
[ "${DEBUG:-}" = 1 ] && profile=
echo "soak: $seconds s, $clients clients, build: ${profile:-debug}; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
# shellcheck disable=SC2086 # $profile is one flag or nothing
SOAK_SECONDS=$seconds SOAK_CLIENTS=$clients exec cargo test $profile --test soak -- --nocapture --test-threads 1
