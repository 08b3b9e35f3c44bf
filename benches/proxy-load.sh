#!/usr/bin/env bash
# proxy-load.sh — throughput of the mailwarden proxy path vs. a direct SMTP baseline.
#
# What it does (everything on 127.0.0.1, bounded message counts, stops by itself):
#   1. builds the release binary (skip with --no-build),
#   2. starts Postfix's smtp-sink on a free loopback port (as `-u nobody` when run as root),
#   3. starts `mailwarden serve` with a temporary config that relays to that sink,
#   4. runs R interleaved rounds of
#        smtp-source -s S -m M -l L -f a@example.test -t u@example.org 127.0.0.1:SINKPORT   (direct)
#        smtp-source ... 127.0.0.1:PROXYPORT                                              (proxied)
#      timing each run with a microsecond clock,
#   5. samples mailwarden's RSS while it runs (max VmRSS) and reads VmHWM at the end,
#   6. prints per-round msgs/s and ratio, the median ratio, peak RSS, mailwarden CPU per
#      message; fails if any smtp-source run exited non-zero or mailwarden logged WARN/ERROR,
#   7. kills what it started and removes its temp dir on exit.
#
# Usage:
#   benches/proxy-load.sh                       # R=3 rounds, M=5000 msgs, L=4096 bytes, S=20 sessions
#   S=100 benches/proxy-load.sh --no-build      # 100 parallel sessions (same as --sessions 100)
#   benches/proxy-load.sh -s 1 -m 500           # one session: per-message latency
#   RULES=none benches/proxy-load.sh            # the bare proxy path, without content rules
#   benches/proxy-load.sh --rounds 5 --messages 10000 --length 65536
#
# Options (environment variable in brackets; long name or one-letter form):
#   -r, --rounds R      rounds, each one direct run + one proxied run   [ROUNDS or R]   default 3
#   -m, --messages M    messages per run                                [MESSAGES or M] default 5000
#   -l, --length L      message body length in bytes                    [LENGTH or L]   default 4096
#   -s, --sessions S    parallel SMTP sessions (one S per invocation)   [SESSIONS or S] default 20
#   -T, --timeout SECS  kill a single smtp-source run after SECS        [RUN_TIMEOUT]   default 300
#       --no-build      use the existing binary (target/release/mailwarden or $MAILWARDEN_BIN)
#       --keep          keep the temp dir (config, logs) and print its path
#   -h, --help
#
# smtp-source opens one connection per message (no -d). mailwarden keeps a pool of idle
# upstream connections, so a proxied message costs XCLIENT, EHLO, MAIL, RCPT and DATA (or BDAT)
# upstream, without a new TCP connection each time.
# ms/msg columns = wall time x sessions / messages: the time one session spends per message
# (connect, banner, EHLO, MAIL, RCPT, DATA, QUIT); with -s 1 it is the per-message latency.
# The direct baseline varies ±15% run to run on a small VM; compare ratios within one run.
#
# Requirements: bash >= 5 (EPOCHREALTIME) or GNU date, cargo (unless --no-build), and Postfix's
# smtp-source/smtp-sink: Debian/Ubuntu package `postfix` (see the error message for how to
# install it without configuring a system MTA).

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
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
BUILD=1
KEEP=0

die() { echo "proxy-load: $*" >&2; exit 2; }
need_arg() { [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value"; }

while [[ $# -gt 0 ]]; do
    case $1 in
        -r|--rounds)   need_arg "$@"; ROUNDS=$2; shift 2 ;;
        -m|--messages) need_arg "$@"; MESSAGES=$2; shift 2 ;;
        -l|--length)   need_arg "$@"; LENGTH=$2; shift 2 ;;
        -s|--sessions) need_arg "$@"; SESSIONS=$2; shift 2 ;;
        -T|--timeout)  need_arg "$@"; RUN_TIMEOUT=$2; shift 2 ;;
        --rounds=*)    ROUNDS=${1#*=}; shift ;;
        --messages=*)  MESSAGES=${1#*=}; shift ;;
        --length=*)    LENGTH=${1#*=}; shift ;;
        --sessions=*)  SESSIONS=${1#*=}; shift ;;
        --timeout=*)   RUN_TIMEOUT=${1#*=}; shift ;;
        --no-build)    BUILD=0; shift ;;
        --keep)        KEEP=1; shift ;;
        -h|--help)     usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

for v in ROUNDS MESSAGES LENGTH SESSIONS RUN_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] && (( 10#${!v} > 0 )) || die "$v must be a positive integer (got '${!v}')"
    printf -v "$v" '%d' "$(( 10#${!v} ))"
done
(( SESSIONS <= 1000 )) || die "SESSIONS must be <= 1000 (max_sessions in the generated config)"
(( MESSAGES >= SESSIONS )) || die "MESSAGES ($MESSAGES) must be >= SESSIONS ($SESSIONS)"

# ---------------------------------------------------------------- tools
missing_postfix() {
    cat >&2 <<'EOF'
proxy-load: smtp-source / smtp-sink not found. They ship with Postfix:
  Debian/Ubuntu: echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
                 DEBIAN_FRONTEND=noninteractive apt-get install -y postfix
                 (the preseed installs the binaries without configuring a system MTA)
  Elsewhere:     the distribution's postfix package, if it ships smtp-source and smtp-sink
                 (they are also built with Postfix from source: src/smtpstone/)
EOF
    exit 2
}
SMTP_SOURCE=$(find_tool smtp-source) || missing_postfix
SMTP_SINK=$(find_tool smtp-sink) || missing_postfix
TIMEOUT_CMD=()
command -v timeout >/dev/null 2>&1 && TIMEOUT_CMD=(timeout --kill-after=5 "$RUN_TIMEOUT")

# High-resolution clock: sets NOW_US (microseconds) without forking when bash >= 5 provides
# EPOCHREALTIME; GNU date (nanoseconds) otherwise.
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
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mailwarden-load.XXXXXX")
chmod 755 "$WORK"
SINK_PID="" MW_PID="" SAMPLER_PID="" SOURCE_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$SOURCE_PID" 2
    stop_pid "$SAMPLER_PID" 1
    stop_pid "$MW_PID" 10
    stop_pid "$SINK_PID" 2
    if (( KEEP )); then
        echo "proxy-load: kept $WORK" >&2
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

# ---------------------------------------------------------------- smtp-sink

SINK_USER=()
(( EUID == 0 )) && SINK_USER=(-u nobody)
BACKLOG=$(( SESSIONS * 2 > 256 ? SESSIONS * 2 : 256 ))
SINK_PORT=""
for attempt in 1 2 3 4 5 6 7 8; do
    p=$(( 20000 + RANDOM % 40000 ))
    port_in_use "$p" && continue
    "$SMTP_SINK" "${SINK_USER[@]}" -m $(( SESSIONS * 3 > 256 ? SESSIONS * 3 : 256 )) \
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

# ---------------------------------------------------------------- mailwarden
if [[ ${RULES:-} == none ]]; then RULES_PATHS=""; else RULES_PATHS="\"$ROOT/rules\""; fi
cat >"$WORK/mailwarden.toml" <<EOF
[server]
listen = ["127.0.0.1:0"]
hostname = "mx.example.test"
max_sessions = 1000
max_sessions_per_ip = 1000
[upstream]
url = "smtp://127.0.0.1:$SINK_PORT"
xclient = "auto"
[rules]
# The shipped rule set by default: the proxied path includes scanning every message.
# RULES=none measures the bare proxy path (no content rules).
paths = [$RULES_PATHS]
watch = false
[auth]
# Sender authentication needs a DNS server with the senders' records; smtp-source's
# example.test has none here, so every lookup would measure the resolver, not the proxy.
enabled = false
[log]
level = "warn"
EOF
# Port 0 = the kernel picks a free port (no race); mailwarden logs it at info level, so the
# server module alone is raised to info. Everything else stays at warn (RUST_LOG overrides the
# config's level).
: >"$WORK/mailwarden.log"
RUST_LOG="warn,mailwarden::server=info" "$BIN" serve --config "$WORK/mailwarden.toml" \
    >"$WORK/mailwarden.log" 2>&1 &
MW_PID=$!
MW_PORT=""
for (( i = 0; i < 200; i++ )); do
    if ! kill -0 "$MW_PID" 2>/dev/null; then
        cat "$WORK/mailwarden.log" >&2
        die "mailwarden exited during start-up"
    fi
    MW_PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$WORK/mailwarden.log" | head -n1)
    [[ -n $MW_PORT ]] && break
    sleep 0.05
done
[[ -n $MW_PORT ]] || { cat "$WORK/mailwarden.log" >&2; die "mailwarden did not report its port in 10 s"; }
wait_port "$MW_PORT" "$MW_PID" 5 || die "mailwarden is not accepting on port $MW_PORT"

# RSS sampler: max VmRSS (kB) every 100 ms, written to a file (bash builtins only).
rss_sampler() {
    local max=0 k v _
    while [[ -r /proc/$MW_PID/status ]]; do
        while read -r k v _; do
            if [[ $k == VmRSS: ]]; then
                (( v > max )) && { max=$v; echo "$max" >"$WORK/rss.max"; }
                break
            fi
        done <"/proc/$MW_PID/status" 2>/dev/null || break
        sleep 0.1
    done
}
rss_sampler &
SAMPLER_PID=$!

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# ---------------------------------------------------------------- runs
FAILED=0
# run_source LABEL PORT: one smtp-source run; sets ELAPSED_US, logs to $WORK/LABEL.{out,err,rc}.
# It runs in the background and is waited for, so INT/TERM reach the cleanup trap at once.
run_source() {
    local label=$1 port=$2 t0 t1 rc=0
    now_us; t0=$NOW_US
    "${TIMEOUT_CMD[@]}" "$SMTP_SOURCE" -s "$SESSIONS" -m "$MESSAGES" -l "$LENGTH" \
        -f a@example.test -t u@example.org "127.0.0.1:$port" \
        >"$WORK/$label.out" 2>"$WORK/$label.err" </dev/null &
    SOURCE_PID=$!
    wait "$SOURCE_PID" || rc=$?
    now_us; t1=$NOW_US
    SOURCE_PID=""
    echo "$rc" >"$WORK/$label.rc"
    ELAPSED_US=$(( t1 - t0 ))
}

echo "smtp-source -s $SESSIONS -m $MESSAGES -l $LENGTH; $ROUNDS rounds; sink 127.0.0.1:$SINK_PORT, mailwarden 127.0.0.1:$MW_PORT (pid $MW_PID)"
# Other work on the machine skews both paths (smtp-source, smtp-sink and mailwarden share the
# CPUs): show the load so a noisy run is recognisable.
echo "cpus: $(getconf _NPROCESSORS_ONLN 2>/dev/null || echo '?'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %9s %12s %9s %12s %7s %13s %12s\n' round direct_s direct_msg/s proxy_s proxy_msg/s ratio direct_ms/msg proxy_ms/msg
RATIOS=()
CPU_TOTAL=0
for (( r = 1; r <= ROUNDS; r++ )); do
    run_source "direct-$r" "$SINK_PORT"
    d_us=$ELAPSED_US
    c0=$(cpu_ticks "$MW_PID")
    run_source "proxy-$r" "$MW_PORT"
    p_us=$ELAPSED_US
    c1=$(cpu_ticks "$MW_PID")
    CPU_TOTAL=$(( CPU_TOTAL + c1 - c0 ))
    line=$(awk -v r="$r" -v m="$MESSAGES" -v s="$SESSIONS" -v d="$d_us" -v p="$p_us" 'BEGIN {
        dr = m / (d / 1e6); pr = m / (p / 1e6)
        # per-message latency as one session sees it: wall time * sessions / messages
        printf "%-5s %9.3f %12.0f %9.3f %12.0f %7.3f %13.3f %12.3f\n", r, d/1e6, dr, p/1e6, pr, pr/dr, (d/1000)*s/m, (p/1000)*s/m
        printf "RATIO %.6f\n", pr/dr }')
    echo "${line%%$'\n'RATIO*}"
    round_ok=1
    for label in "direct-$r" "proxy-$r"; do
        rc=$(<"$WORK/$label.rc")
        if [[ $rc != 0 ]]; then
            FAILED=1
            round_ok=0
            echo "  !! smtp-source ($label) exited $rc$([[ $rc == 124 ]] && echo " (timed out after ${RUN_TIMEOUT}s)")"
        fi
        if [[ -s $WORK/$label.err ]]; then
            echo "  smtp-source ($label) stderr ($(wc -l <"$WORK/$label.err") lines, first 5):"
            head -n 5 "$WORK/$label.err" | sed 's/^/    /'
        fi
    done
    if (( round_ok )); then
        RATIOS+=("${line##*RATIO }")
    else
        echo "  (round $r left out of the median: a run failed)"
    fi
done

MEDIAN=n/a
(( ${#RATIOS[@]} > 0 )) && MEDIAN=$(printf '%s\n' "${RATIOS[@]}" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')

HWM_KB=$(awk '/^VmHWM:/ { print $2 }' "/proc/$MW_PID/status" 2>/dev/null || echo 0)
stop_pid "$SAMPLER_PID" 1
SAMPLER_PID=""
RSS_MAX_KB=$(cat "$WORK/rss.max" 2>/dev/null || echo 0)

echo
echo "median proxy/direct ratio: $MEDIAN (over ${#RATIOS[@]} of $ROUNDS rounds)"
awk -v h="$HWM_KB" -v s="$RSS_MAX_KB" 'BEGIN {
    printf "mailwarden peak RSS: %.1f MiB (VmHWM), %.1f MiB (max sampled VmRSS)\n", h/1024, s/1024 }'
awk -v t="$CPU_TOTAL" -v hz="$CLK_TCK" -v m="$MESSAGES" -v r="$ROUNDS" 'BEGIN {
    printf "mailwarden CPU: %.3f ms per proxied message (user+sys over all proxied runs)\n", t/hz*1000/(m*r) }'

# mailwarden must have logged nothing at WARN or ERROR (the log level is warn; the start-up
# lines of the server module are INFO). Lines are grouped by message (timestamp and key=value
# fields dropped) with a count and the first full line of each group.
stop_pid "$MW_PID" 10
MW_PID=""
if grep -E ' (ERROR|WARN) ' "$WORK/mailwarden.log" >"$WORK/mw-problems.log"; then
    echo "mailwarden logged $(wc -l <"$WORK/mw-problems.log") WARN/ERROR lines:"
    sed -E 's/^[^ ]+ +//; s/ [A-Za-z_.]+=.*$//' "$WORK/mw-problems.log" \
        | awk '{ if (!($0 in n)) order[++k] = $0; n[$0]++ } END { for (i = 1; i <= k; i++) printf "%7d x %s\n", n[order[i]], order[i] }'
    echo "  first line of each kind:"
    sed -E 's/^[^ ]+ +//' "$WORK/mw-problems.log" \
        | awk '{ key = $0; sub(/ [A-Za-z_.]+=.*$/, "", key); if (!(key in seen)) { seen[key] = 1; print "    " $0 } }' | head -n 20
    FAILED=1
else
    echo "mailwarden log: no WARN/ERROR lines"
fi
if [[ -s $WORK/sink.log ]]; then
    echo "smtp-sink output (first 5 lines):"
    head -n 5 "$WORK/sink.log" | sed 's/^/    /'
fi

if (( FAILED )); then
    echo "RESULT: FAILED (see above)"
    exit 1
fi
echo "RESULT: ok"
