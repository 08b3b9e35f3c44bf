#!/usr/bin/env bash
# state-load.sh — what greylisting + 3 rate limits on Redis cost the proxy path, and Redis'
# memory per 100k greylisting triplets.
#
# What it does (everything on 127.0.0.1, bounded message counts, stops by itself):
#   1. builds the release binary (skip with --no-build),
#   2. starts a private redis-server on a free loopback port (--save '' --appendonly no,
#      its files in a temp dir), Postfix's smtp-sink, and two `mailwarden serve` relaying to it:
#        (a) baseline: no greylisting, no rate limits, no metrics endpoint;
#        (b) the same plus [state] url = redis://127.0.0.1:REDISPORT/0, [greylist] (delay 0s,
#            no auto-allow) and 3 [[ratelimit]] (client_ip, sender, recipient_domain at
#            1000000/s, burst 1000000: they never limit, but every message pays their round
#            trips), and [metrics] on a free loopback port;
#   3. warms (b) up: one message with -A (its triplet's first attempt, 451 at RCPT), then one
#      that must pass; from then on every message of the run is a known triplet (one greylist
#      call at RCPT) and draws from the 3 buckets (one take call at MAIL: client_ip + sender,
#      one at RCPT: recipient_domain),
#   4. runs R interleaved rounds of smtp-source -s S -m M -l L through (a), then through (b),
#      and prints msgs/s of each, the ratio b/a per round and its median,
#   5. a latency pass: smtp-source -s 1 -m N through (a), then (b): ms/msg of each and the
#      difference; and from (b)'s /metrics, mailwarden_state_duration_seconds{op} over that
#      pass and over the whole run: calls per message, p50/p99 per op, and "added p99 per
#      message" = sum over ops of calls-per-message x p99(op),
#   6. Redis used_memory and DBSIZE before and after the load,
#   7. FLUSHALL, then `cargo bench --bench state_memory` against the same Redis (100,000
#      triplets: bytes per triplet, MiB per 100k, triplets/s; skip with --no-memory),
#   8. fails if a smtp-source run failed, a greylist answer was not "known" during the load,
#      or a mailwarden logged WARN/ERROR; kills what it started, removes its temp dir.
#
# Usage:
#   benches/state-load.sh                           # R=3, M=5000, L=4096, S=20, latency 500
#   benches/state-load.sh -r 3 -m 3000 --no-build   # shorter
#   RULES=none benches/state-load.sh                # the bare proxy path, without content rules
#   benches/state-load.sh --no-memory --keep
#
# Options (environment variable in brackets):
#   -r, --rounds R       rounds, each one run through (a) + one through (b) [ROUNDS or R] default 3
#   -m, --messages M     messages per run                                  [MESSAGES or M] default 5000
#   -l, --length L       message body length in bytes                      [LENGTH or L]   default 4096
#   -s, --sessions S     parallel SMTP sessions                            [SESSIONS or S] default 20
#   -n, --latency N      messages of the one-session latency pass (0: none) [LATENCY]      default 500
#   -p, --probe N        messages per mode of the python3 latency probe (0: none) [PROBE] default 500
#   -t, --triplets T     triplets for state_memory                         [TRIPLETS]      default 100000
#   -T, --timeout SECS   kill a single smtp-source run after SECS          [RUN_TIMEOUT]   default 300
#       --no-build       use the existing binary (target/release/mailwarden or $MAILWARDEN_BIN)
#       --no-memory      skip the state_memory bench (no cargo needed then)
#       --keep           keep the temp dir (configs, logs, metrics scrapes) and print its path
#   -h, --help
#
# The histogram's buckets are 0.05, 0.1, 0.25, 0.5, 1, 2.5 ms …: a p99 is interpolated inside its bucket
# (as Prometheus' histogram_quantile does) and the bucket's upper bound is printed with it.
# All processes share the machine's CPUs: compare (a) and (b) within one run, not across runs.
#
# Requirements: bash >= 5 (EPOCHREALTIME) or GNU date, curl, redis-server and redis-cli
# (Debian: redis-server, redis-tools), Postfix's smtp-source/smtp-sink (package postfix, see
# benches/README.md), cargo (unless --no-build and --no-memory).

set -euo pipefail

# find_tool, stop_pid, port_in_use, wait_port, cpu_ticks.
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; }

# ---------------------------------------------------------------- options
ROUNDS=${ROUNDS:-${R:-3}}
MESSAGES=${MESSAGES:-${M:-5000}}
LENGTH=${LENGTH:-${L:-4096}}
SESSIONS=${SESSIONS:-${S:-20}}
LATENCY=${LATENCY:-500}
PROBE=${PROBE:-500}
TRIPLETS=${TRIPLETS:-100000}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
BUILD=1
MEMORY=1
KEEP=0

die() { echo "state-load: $*" >&2; exit 2; }
need_arg() { [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value"; }

while [[ $# -gt 0 ]]; do
    case $1 in
        -r|--rounds)   need_arg "$@"; ROUNDS=$2; shift 2 ;;
        -m|--messages) need_arg "$@"; MESSAGES=$2; shift 2 ;;
        -l|--length)   need_arg "$@"; LENGTH=$2; shift 2 ;;
        -s|--sessions) need_arg "$@"; SESSIONS=$2; shift 2 ;;
        -n|--latency)  need_arg "$@"; LATENCY=$2; shift 2 ;;
        -p|--probe)    need_arg "$@"; PROBE=$2; shift 2 ;;
        -t|--triplets) need_arg "$@"; TRIPLETS=$2; shift 2 ;;
        -T|--timeout)  need_arg "$@"; RUN_TIMEOUT=$2; shift 2 ;;
        --rounds=*)    ROUNDS=${1#*=}; shift ;;
        --messages=*)  MESSAGES=${1#*=}; shift ;;
        --length=*)    LENGTH=${1#*=}; shift ;;
        --sessions=*)  SESSIONS=${1#*=}; shift ;;
        --latency=*)   LATENCY=${1#*=}; shift ;;
        --probe=*)     PROBE=${1#*=}; shift ;;
        --triplets=*)  TRIPLETS=${1#*=}; shift ;;
        --timeout=*)   RUN_TIMEOUT=${1#*=}; shift ;;
        --no-build)    BUILD=0; shift ;;
        --no-memory)   MEMORY=0; shift ;;
        --keep)        KEEP=1; shift ;;
        -h|--help)     usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

for v in ROUNDS MESSAGES LENGTH SESSIONS RUN_TIMEOUT TRIPLETS; do
    [[ ${!v} =~ ^[0-9]+$ ]] && (( 10#${!v} > 0 )) || die "$v must be a positive integer (got '${!v}')"
    printf -v "$v" '%d' "$(( 10#${!v} ))"
done
for v in LATENCY PROBE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number (got '${!v}')"
    printf -v "$v" '%d' "$(( 10#${!v} ))"
done
(( SESSIONS <= 1000 )) || die "SESSIONS must be <= 1000 (max_sessions in the generated config)"
(( MESSAGES >= SESSIONS )) || die "MESSAGES ($MESSAGES) must be >= SESSIONS ($SESSIONS)"
(( MESSAGES <= 1000000 && LATENCY <= 100000 && PROBE <= 100000 && TRIPLETS <= 10000000 )) || die "counts too large"

# ---------------------------------------------------------------- tools
SMTP_SOURCE=$(find_tool smtp-source) || die "smtp-source not found (package postfix; see benches/README.md)"
SMTP_SINK=$(find_tool smtp-sink) || die "smtp-sink not found (package postfix; see benches/README.md)"
REDIS_SERVER=$(find_tool redis-server) || die "redis-server not found (Debian: apt-get install redis-server, no service needed)"
REDIS_CLI=$(find_tool redis-cli) || die "redis-cli not found (Debian: redis-tools)"
command -v curl >/dev/null 2>&1 || die "curl not found (reads mailwarden's /metrics)"
if (( PROBE > 0 )) && ! command -v python3 >/dev/null 2>&1; then
    echo "state-load: no python3: the latency probe is skipped" >&2
    PROBE=0
fi
TIMEOUT_CMD=()
command -v timeout >/dev/null 2>&1 && TIMEOUT_CMD=(timeout --kill-after=5 "$RUN_TIMEOUT")

if [[ -n ${EPOCHREALTIME:-} ]]; then
    now_us() { local t=$EPOCHREALTIME; NOW_US=${t/[.,]/}; }
elif [[ $(date +%N) =~ ^[0-9]{9}$ ]]; then
    now_us() { NOW_US=$(( $(date +%s%N) / 1000 )); }
else
    die "need bash >= 5 (EPOCHREALTIME) or GNU date for a high-resolution clock"
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${MAILWARDEN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/mailwarden}

# ---------------------------------------------------------------- cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mailwarden-state-load.XXXXXX")
chmod 755 "$WORK"
REDIS_PID="" SINK_PID="" A_PID="" B_PID="" SOURCE_PID="" BENCH_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$BENCH_PID" 2
    stop_pid "$SOURCE_PID" 2
    stop_pid "$A_PID" 10
    stop_pid "$B_PID" 10
    stop_pid "$SINK_PID" 2
    stop_pid "$REDIS_PID" 5
    if (( KEEP )); then
        echo "state-load: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- build
if (( BUILD )); then
    echo "building release binary..." >&2
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
fi
[[ -x $BIN ]] || die "no binary at $BIN (build it, or drop --no-build, or set MAILWARDEN_BIN)"

# ---------------------------------------------------------------- ports
# A port nothing listens on now, not one already picked (the metrics port is bound later by
# mailwarden; a lost race shows as a start-up failure).
PICKED=" "
free_port() {
    local p i
    for (( i = 0; i < 50; i++ )); do
        p=$(( 20000 + RANDOM % 40000 ))
        [[ $PICKED == *" $p "* ]] && continue
        port_in_use "$p" && continue
        PICKED+="$p "
        echo "$p"
        return 0
    done
    return 1
}

# ---------------------------------------------------------------- redis-server
REDIS_PORT=""
for attempt in 1 2 3 4 5; do
    p=$(free_port) || break
    "$REDIS_SERVER" --bind 127.0.0.1 --port "$p" --protected-mode yes --save '' \
        --appendonly no --dir "$WORK" --daemonize no --logfile "$WORK/redis.log" \
        --databases 1 >/dev/null 2>&1 </dev/null &
    REDIS_PID=$!
    if wait_port "$p" "$REDIS_PID" 5 && [[ $("$REDIS_CLI" -h 127.0.0.1 -p "$p" PING 2>/dev/null) == PONG ]]; then
        REDIS_PORT=$p
        break
    fi
    stop_pid "$REDIS_PID" 2
    REDIS_PID=""
done
[[ -n $REDIS_PORT ]] || { cat "$WORK/redis.log" >&2 2>/dev/null || true; die "could not start redis-server"; }
rcli() { "$REDIS_CLI" -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
redis_mem() { rcli INFO memory | tr -d '\r' | sed -n 's/^used_memory:\([0-9]*\)$/\1/p'; }
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

# ---------------------------------------------------------------- smtp-sink
SINK_USER=()
(( EUID == 0 )) && SINK_USER=(-u nobody)
BACKLOG=$(( SESSIONS * 4 > 256 ? SESSIONS * 4 : 256 ))
SINK_PORT=""
for attempt in 1 2 3 4 5 6 7 8; do
    p=$(free_port) || break
    "$SMTP_SINK" "${SINK_USER[@]}" -m $(( SESSIONS * 6 > 256 ? SESSIONS * 6 : 256 )) \
        "127.0.0.1:$p" "$BACKLOG" >"$WORK/sink.log" 2>&1 &
    SINK_PID=$!
    sleep 0.1   # a sink that lost a bind race exits at once
    if kill -0 "$SINK_PID" 2>/dev/null && wait_port "$p" "$SINK_PID" 5; then
        SINK_PORT=$p
        break
    fi
    stop_pid "$SINK_PID" 1
    SINK_PID=""
done
[[ -n $SINK_PORT ]] || { cat "$WORK/sink.log" >&2; die "could not start smtp-sink"; }

# ---------------------------------------------------------------- mailwarden (a) and (b)
if [[ ${RULES:-} == none ]]; then RULES_PATHS=""; else RULES_PATHS="\"$ROOT/rules\""; fi
METRICS_PORT=$(free_port) || die "no free port for (b)'s metrics"
base_config() { # metrics listen value
    cat <<EOF
[server]
listen = ["127.0.0.1:0"]
hostname = "mx.example.test"
max_sessions = 1000
max_sessions_per_ip = 1000
[upstream]
url = "smtp://127.0.0.1:$SINK_PORT"
xclient = "auto"
[rules]
# The shipped rule set by default (RULES=none: the bare proxy path), as in proxy-load.sh.
paths = [$RULES_PATHS]
watch = false
[auth]
# No DNS here: sender authentication would measure the resolver.
enabled = false
[metrics]
listen = "$1"
[log]
level = "warn"
EOF
}
base_config "" >"$WORK/a.toml"
{
    base_config "127.0.0.1:$METRICS_PORT"
    cat <<EOF
[state]
url = "$REDIS_URL"
[greylist]
enabled = true
# A triplet passes on its second attempt (the warm-up); no network auto-allow, so every
# message of the run looks its triplet up.
delay = "0s"
auto_allow_after = 0
# Three limits that never limit during the run: every message pays their round trips.
[[ratelimit]]
name = "bench_client"
key = "client_ip"
rate = "1000000/s"
burst = 1000000
[[ratelimit]]
name = "bench_sender"
key = "sender"
rate = "1000000/s"
burst = 1000000
[[ratelimit]]
name = "bench_rcpt_domain"
key = "recipient_domain"
rate = "1000000/s"
burst = 1000000
EOF
} >"$WORK/b.toml"

start_mw() { # label -> sets MW_PID_OUT, MW_PORT_OUT
    local label=$1 i port=""
    : >"$WORK/$label.log"
    RUST_LOG="warn,mailwarden::server=info" "$BIN" serve --config "$WORK/$label.toml" \
        >"$WORK/$label.log" 2>&1 &
    MW_PID_OUT=$!
    for (( i = 0; i < 200; i++ )); do
        if ! kill -0 "$MW_PID_OUT" 2>/dev/null; then
            cat "$WORK/$label.log" >&2
            die "mailwarden ($label) exited during start-up"
        fi
        port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$WORK/$label.log" | head -n1)
        [[ -n $port ]] && break
        sleep 0.05
    done
    [[ -n $port ]] || { cat "$WORK/$label.log" >&2; die "mailwarden ($label) did not report its port in 10 s"; }
    wait_port "$port" "$MW_PID_OUT" 5 || die "mailwarden ($label) is not accepting on port $port"
    MW_PORT_OUT=$port
}
start_mw a; A_PID=$MW_PID_OUT; A_PORT=$MW_PORT_OUT
start_mw b; B_PID=$MW_PID_OUT; B_PORT=$MW_PORT_OUT
wait_port "$METRICS_PORT" "$B_PID" 5 || die "mailwarden (b) does not serve metrics on $METRICS_PORT"

scrape() { # file: (b)'s state and greylist series
    curl -fsS --max-time 5 "http://127.0.0.1:$METRICS_PORT/metrics" \
        | grep -E '^mailwarden_(state_duration_seconds|greylist_total|ratelimit_hits_total|state_errors_total)' >"$1" \
        || die "cannot read (b)'s /metrics"
}

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# ---------------------------------------------------------------- runs
FAILED=0
# run_source LABEL PORT SESSIONS MESSAGES [extra smtp-source options]: sets ELAPSED_US.
run_source() {
    local label=$1 port=$2 s=$3 m=$4 t0 t1 rc=0
    shift 4
    now_us; t0=$NOW_US
    "${TIMEOUT_CMD[@]}" "$SMTP_SOURCE" "$@" -s "$s" -m "$m" -l "$LENGTH" \
        -f a@example.test -t u@example.org "127.0.0.1:$port" \
        >"$WORK/$label.out" 2>"$WORK/$label.err" </dev/null &
    SOURCE_PID=$!
    wait "$SOURCE_PID" || rc=$?
    now_us; t1=$NOW_US
    SOURCE_PID=""
    echo "$rc" >"$WORK/$label.rc"
    ELAPSED_US=$(( t1 - t0 ))
}
check_run() { # label -> 0 if it exited 0; prints its trouble otherwise
    local label=$1 rc
    rc=$(<"$WORK/$label.rc")
    if [[ -s $WORK/$label.err ]]; then
        echo "  smtp-source ($label) stderr ($(wc -l <"$WORK/$label.err") lines, first 5):"
        head -n 5 "$WORK/$label.err" | sed 's/^/    /'
    fi
    [[ $rc == 0 ]] && return 0
    FAILED=1
    echo "  !! smtp-source ($label) exited $rc$([[ $rc == 124 ]] && echo " (timed out after ${RUN_TIMEOUT}s)")"
    return 1
}

MEM0=$(redis_mem)
KEYS0=$(rcli DBSIZE)

# Warm-up: (a) one message; (b) the triplet's first attempt (451 at RCPT, -A: go on), then a
# retry that must pass. The rules, pools and Redis scripts are loaded by these too.
run_source warm-a "$A_PORT" 1 1
check_run warm-a || die "warm-up through (a) failed"
run_source warm-b1 "$B_PORT" 1 1 -A
run_source warm-b2 "$B_PORT" 1 1
check_run warm-b2 || die "warm-up through (b) failed: the second attempt did not pass greylisting (see $WORK/b.log with --keep)"
scrape "$WORK/m-warm.txt"
grep -q 'mailwarden_greylist_total{result="passed"} 1$' "$WORK/m-warm.txt" \
    || { cat "$WORK/m-warm.txt" >&2; die "warm-up: (b) did not greylist the first attempt and pass the second"; }

echo "smtp-source -s $SESSIONS -m $MESSAGES -l $LENGTH; $ROUNDS rounds; rules: ${RULES:-shipped}"
echo "redis $REDIS_URL (pid $REDIS_PID), sink :$SINK_PORT, (a) :$A_PORT (pid $A_PID), (b) :$B_PORT (pid $B_PID, metrics :$METRICS_PORT)"
echo "cpus: $(getconf _NPROCESSORS_ONLN 2>/dev/null || echo '?'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %9s %10s %9s %10s %7s %10s %10s\n' round a_s a_msg/s b_s b_msg/s b/a a_ms/msg b_ms/msg
RATIOS=()
CPU_A=0 CPU_B=0 CPU_REDIS=0
for (( r = 1; r <= ROUNDS; r++ )); do
    c0=$(cpu_ticks "$A_PID")
    run_source "a-$r" "$A_PORT" "$SESSIONS" "$MESSAGES"
    a_us=$ELAPSED_US
    c1=$(cpu_ticks "$A_PID")
    CPU_A=$(( CPU_A + c1 - c0 ))
    c0=$(cpu_ticks "$B_PID") q0=$(cpu_ticks "$REDIS_PID")
    run_source "b-$r" "$B_PORT" "$SESSIONS" "$MESSAGES"
    b_us=$ELAPSED_US
    c1=$(cpu_ticks "$B_PID") q1=$(cpu_ticks "$REDIS_PID")
    CPU_B=$(( CPU_B + c1 - c0 ))
    CPU_REDIS=$(( CPU_REDIS + q1 - q0 ))
    line=$(awk -v r="$r" -v m="$MESSAGES" -v s="$SESSIONS" -v a="$a_us" -v b="$b_us" 'BEGIN {
        ar = m / (a / 1e6); br = m / (b / 1e6)
        printf "%-5s %9.3f %10.0f %9.3f %10.0f %7.3f %10.3f %10.3f\n", r, a/1e6, ar, b/1e6, br, br/ar, (a/1000)*s/m, (b/1000)*s/m
        printf "RATIO %.6f\n", br/ar }')
    echo "${line%%$'\n'RATIO*}"
    ok=1
    check_run "a-$r" || ok=0
    check_run "b-$r" || ok=0
    if (( ok )); then RATIOS+=("${line##*RATIO }"); else echo "  (round $r left out of the median: a run failed)"; fi
done
scrape "$WORK/m-load.txt"

MEDIAN=n/a
(( ${#RATIOS[@]} > 0 )) && MEDIAN=$(printf '%s\n' "${RATIOS[@]}" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
echo
echo "median throughput ratio b/a: $MEDIAN (over ${#RATIOS[@]} of $ROUNDS rounds; target >= 0.90: $(awk -v m="$MEDIAN" 'BEGIN { print (m != "n/a" && m >= 0.90) ? "met" : "NOT met" }'))"
awk -v a="$CPU_A" -v b="$CPU_B" -v q="$CPU_REDIS" -v hz="$CLK_TCK" -v n=$(( MESSAGES * ROUNDS )) 'BEGIN {
    printf "mailwarden CPU per message: (a) %.3f ms, (b) %.3f ms (+%.3f ms: the state checks, client side)\n", a/hz*1000/n, b/hz*1000/n, (b-a)/hz*1000/n
    printf "redis-server CPU per message of (b): %.3f ms (it shares the CPUs with everything else here)\n", q/hz*1000/n }'

# Latency pass: one session, (a) then (b).
if (( LATENCY > 0 )); then
    scrape "$WORK/m-lat0.txt"
    run_source lat-a "$A_PORT" 1 "$LATENCY"
    la_us=$ELAPSED_US
    run_source lat-b "$B_PORT" 1 "$LATENCY"
    lb_us=$ELAPSED_US
    scrape "$WORK/m-lat1.txt"
    check_run lat-a || true
    check_run lat-b || true
    awk -v a="$la_us" -v b="$lb_us" -v n="$LATENCY" 'BEGIN {
        printf "latency, smtp-source -s 1 -m %d: (a) %.3f ms/msg, (b) %.3f ms/msg, added %+.3f ms/msg\n", n, a/1000/n, b/1000/n, (b-a)/1000/n }'
fi

# Latency probe: per-message p50/p99 as a client sees them, (a) and (b) interleaved, one
# message per connection, timed from connect to the reply to the final "." (EHLO, MAIL, RCPT,
# DATA and the scan included: every state call of (b) is inside). The same envelope as
# smtp-source's, so (b) answers a known triplet.
PROBE_OUT=""
if (( PROBE > 0 )); then
    PROBE_OUT=$(python3 - "$PROBE" "$LENGTH" "a=$A_PORT" "b=$B_PORT" <<'EOF'
import smtplib, sys, time
n, length = int(sys.argv[1]), int(sys.argv[2])
targets = [t.split("=") for t in sys.argv[3:]]
line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
ses = {m: [] for m, _ in targets}
for i in range(n):
    for m, port in targets:
        head = "From: a@example.test\r\nTo: u@example.org\r\nSubject: probe %d\r\n" \
               "Message-ID: <probe-%s-%d@example.test>\r\n\r\n" % (i, m, i)
        body = head.encode() + (line * (length // len(line) + 1)).encode()[: max(0, length - len(head))]
        body = body.rstrip(b"\r\n") + b"\r\n"
        t0 = time.perf_counter()
        s = smtplib.SMTP("127.0.0.1", int(port), timeout=60)
        s.ehlo("probe.example.test")
        for cmd, want in (("MAIL FROM:<a@example.test>", 250), ("RCPT TO:<u@example.org>", 250), ("DATA", 354)):
            code, msg = s.docmd(cmd)
            if code != want: sys.exit(f"({m}) {cmd}: {code} {msg}")
        s.send(body + b".\r\n")
        code, msg = s.getreply()
        t1 = time.perf_counter()
        if code != 250: sys.exit(f"({m}) end of data: {code} {msg}")
        s.quit()
        ses[m].append((t1 - t0) * 1000)
def q(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(round(p * (len(v) - 1))))]
for m, _ in targets:
    print(m, "%.3f %.3f %.3f" % (q(ses[m], .5), q(ses[m], .99), sum(ses[m]) / len(ses[m])))
EOF
) || { FAILED=1; echo "  !! latency probe failed: $PROBE_OUT"; PROBE_OUT=""; }
    if [[ -n $PROBE_OUT ]]; then
        read -r _ a50 a99 amean <<<"$(sed -n 1p <<<"$PROBE_OUT")"
        read -r _ b50 b99 bmean <<<"$(sed -n 2p <<<"$PROBE_OUT")"
        awk -v n="$PROBE" -v a50="$a50" -v a99="$a99" -v am="$amean" -v b50="$b50" -v b99="$b99" -v bm="$bmean" 'BEGIN {
            printf "latency probe, %d messages each, one per connection, interleaved (connect -> end-of-data reply):\n", n
            printf "  (a) p50 %.3f  p99 %.3f  mean %.3f ms\n  (b) p50 %.3f  p99 %.3f  mean %.3f ms\n", a50, a99, am, b50, b99, bm
            printf "  added: p50 %+.3f  p99 %+.3f  mean %+.3f ms; target p99 < 1 ms: %s\n", b50 - a50, b99 - a99, bm - am, (b99 - a99 < 1 ? "met" : "NOT met") }'
    fi
fi

# p50/p99 per op from the cumulative histogram difference of two scrapes; calls per message
# from the counts. Prints one line per op and the added p99 per message.
quantiles() { # title before after messages
    awk -v title="$1" -v n="$4" '
        function q(op, phi,   i, want, prev, prevc, c, le) {
            want = phi * cnt[op]; prev = 0; prevc = 0
            for (i = 1; i <= nb[op]; i++) {
                le = bl[op, i]; c = bc[op, i]
                if (c >= want) {
                    lb = prev
                    if (le == "+Inf") { ub = "+Inf"; return prev }
                    ub = le
                    return prev + (le - prev) * (c > prevc ? (want - prevc) / (c - prevc) : 1)
                }
                prev = le; prevc = c
            }
            ub = "?"; return prev
        }
        /^mailwarden_state_duration_seconds_bucket/ {
            match($0, /op="[^"]*"/); op = substr($0, RSTART + 4, RLENGTH - 5)
            match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
            v = $NF + 0
            if (FNR == NR) { base[op, le] = v; next }
            if (!((op, le) in seen)) { seen[op, le] = 1; nb[op]++; bl[op, nb[op]] = le }
            bc[op, nb[op]] = v - base[op, le]
            if (!(op in ops)) { ops[op] = 1; order[++k] = op }
            next
        }
        /^mailwarden_state_duration_seconds_count/ && FNR != NR {
            match($0, /op="[^"]*"/); op = substr($0, RSTART + 4, RLENGTH - 5); cnt[op] = $NF
            next
        }
        /^mailwarden_state_duration_seconds_count/ {
            match($0, /op="[^"]*"/); op = substr($0, RSTART + 4, RLENGTH - 5); basecnt[op] = $NF
        }
        END {
            print title
            total = 0
            for (i = 1; i <= k; i++) {
                op = order[i]; cnt[op] -= basecnt[op]
                if (cnt[op] <= 0) continue
                per = cnt[op] / n
                p50 = q(op, 0.50); ub50 = ub
                p99 = q(op, 0.99); ub99 = ub
                printf "  %-9s %8d calls (%.2f per message)  p50 %.3f ms (bucket <= %s ms)  p99 %.3f ms (bucket <= %s ms)\n",
                    op, cnt[op], per, p50 * 1000, (ub50 == "+Inf" ? ub50 : ub50 * 1000), p99 * 1000, (ub99 == "+Inf" ? ub99 : ub99 * 1000)
                if (op != "ping") {
                    c = int(per + 0.5)
                    total += c * p99; low += c * lb; bound += c * (ub99 == "+Inf" ? 1e9 : ub99)
                }
            }
            verdict = bound < 0.001 ? "met" : (low >= 0.001 ? "NOT met" : "not decidable at this bucket resolution")
            printf "  added p99 per message (sum over calls of each op'"'"'s p99): %.3f ms interpolated; between %.1f and %.1f ms by the buckets; target < 1 ms: %s\n",
                total * 1000, low * 1000, bound * 1000, verdict
        }' "$2" "$3"
}
echo
quantiles "state calls of (b) during the $ROUNDS load rounds (-s $SESSIONS), from mailwarden_state_duration_seconds:" \
    "$WORK/m-warm.txt" "$WORK/m-load.txt" $(( MESSAGES * ROUNDS ))
if (( LATENCY > 0 )); then
    quantiles "state calls of (b) during the latency pass (-s 1):" "$WORK/m-lat0.txt" "$WORK/m-lat1.txt" "$LATENCY"
fi

# Every message after the warm-up must have been a known triplet, none limited, no store error.
LAST=$WORK/m-end.txt
scrape "$LAST"
EXPECT_KNOWN=$(( MESSAGES * ROUNDS + LATENCY + PROBE ))
KNOWN=$(sed -n 's/^mailwarden_greylist_total{result="known"} \([0-9]*\)$/\1/p' "$LAST")
OTHER=$(awk '/^mailwarden_greylist_total/ && !/result="(known|passed|deferred_new)"/ { s += $NF } END { print s + 0 }' "$LAST")
HITS=$(awk '/^mailwarden_(ratelimit_hits_total|state_errors_total)/ { s += $NF } END { print s + 0 }' "$LAST")
echo
echo "greylisting in (b): ${KNOWN:-0} known triplets of $EXPECT_KNOWN messages after the warm-up; other answers: $OTHER; rate-limit hits + store errors: $HITS"
if [[ ${KNOWN:-0} != "$EXPECT_KNOWN" || $OTHER != 0 || $HITS != 0 ]]; then
    echo "  !! (b) did not check every message as expected"
    FAILED=1
fi

MEM1=$(redis_mem)
KEYS1=$(rcli DBSIZE)
awk -v a="$MEM0" -v b="$MEM1" -v k0="$KEYS0" -v k1="$KEYS1" 'BEGIN {
    printf "redis used_memory: %d -> %d bytes (%+d) over the load; keys %d -> %d\n", a, b, b - a, k0, k1 }'

for label in a b; do
    pid_var=${label^^}_PID
    stop_pid "${!pid_var}" 10
    printf -v "$pid_var" '%s' ""
    if grep -E ' (ERROR|WARN) ' "$WORK/$label.log" >"$WORK/$label-problems.log"; then
        echo "mailwarden ($label) logged $(wc -l <"$WORK/$label-problems.log") WARN/ERROR lines, first 10:"
        head -n 10 "$WORK/$label-problems.log" | sed 's/^/    /'
        FAILED=1
    else
        echo "mailwarden ($label) log: no WARN/ERROR lines"
    fi
done

# ---------------------------------------------------------------- memory per triplet
if (( MEMORY )); then
    echo
    rcli FLUSHALL >/dev/null
    echo "cargo bench --bench state_memory -- --triplets $TRIPLETS (redis flushed; building the bench first may take a while)"
    (cd "$ROOT" && MAILWARDEN_BENCH_REDIS=$REDIS_URL cargo bench --quiet --bench state_memory -- --triplets "$TRIPLETS") \
        >"$WORK/state_memory.out" 2>"$WORK/state_memory.err" </dev/null &
    BENCH_PID=$!
    rc=0
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=""
    cat "$WORK/state_memory.out"
    if [[ $rc != 0 ]]; then
        echo "  !! state_memory exited $rc:"
        tail -n 20 "$WORK/state_memory.err" | sed 's/^/    /'
        FAILED=1
    fi
fi

if (( FAILED )); then
    echo "RESULT: FAILED (see above)"
    exit 1
fi
echo "RESULT: ok"
