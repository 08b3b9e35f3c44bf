#!/usr/bin/env bash
# milter-load.sh — what a milter costs Postfix: throughput and per-message latency of
# smtp-source → private Postfix → smtp-sink, in one run, for three private Postfix instances:
#   (a) no milter (the baseline),
#   (b) rspamd's proxy worker in milter mode (Debian's rspamd, its stock config),
#   (c) mailwarden's milter (`mailwarden serve` with deploy/postfix/milter/mailwarden.toml).
# (b) and (c) get deploy/postfix/milter/main.cf.fragment appended to main.cf as shipped, with
# only the milter address changed. Mode (c) is skipped, with the reason, when `mailwarden serve`
# does not start with that config (a binary without `[milter]` support).
#
# Steps (all on 127.0.0.1, private directories under one mktemp dir, ports picked at random):
#   1. installs what is missing (postfix tools, rspamd, dnsmasq) with apt-get, no service
#      started (policy-rc.d exit 101, removed again if this script created it);
#   2. starts smtp-sink, a dnsmasq answering NXDOMAIN to everything (rspamd's and mailwarden's
#      resolver: no network here, and a lookup that waits for a time-out would dominate), rspamd
#      (proxy worker with milter = yes → one normal worker) and mailwarden;
#   3. per round and mode: smtp-source -s S -m M -l L into that mode's Postfix, timed until the
#      last reply; then waits for the queue to drain into smtp-sink and checks that all M
#      messages were sent on and none was refused;
#   4. the latency probe, after the load, on a quiet machine: N messages of L bytes from one
#      Python (stdlib smtplib) client, one at a time, one connection each, modes interleaved
#      (a b c a b c ...), timing end-of-data → reply and the whole session;
#   5. prints msgs/s per mode (median over rounds), the ratios c/b, c/a, b/a, p50/p99 latency
#      and the added latency against (a), the milter's peak RSS (VmHWM) and CPU per message;
#   6. stops everything it started and removes the directory (trap on exit).
#
# Usage:
#   benches/milter-load.sh                      # 2,000 msgs × 4 KiB, 20 sessions, 1 round, N=200
#   benches/milter-load.sh --no-build -r 3      # 3 interleaved rounds, existing release binary
#   benches/milter-load.sh --modes ab           # without mailwarden
#
# Options (environment variable in brackets):
#   -r, --rounds R     load rounds, each mode once per round, interleaved [ROUNDS]   default 1
#   -m, --messages M   messages per load run                               [MESSAGES] default 2000
#   -l, --length L     message size in bytes (smtp-source -l)              [LENGTH]   default 4096
#   -s, --sessions S   parallel smtp-source sessions                       [SESSIONS] default 20
#   -n, --probe N      latency probe messages per mode (0: no probe)       [PROBE]    default 200
#       --modes LIST   any of a, b, c                                      [MODES]    default abc
#       --no-build     use target/release/mailwarden (or $MAILWARDEN_BIN) as it is
#       --keep         keep the directory (configs, logs) and print its path
#   -h, --help
#
# Needs root (Postfix instances, apt-get), bash >= 5, python3, cargo (unless --no-build).

set -euo pipefail

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; }
die() { echo "milter-load: $*" >&2; exit 2; }
log() { echo "==> $*" >&2; }

ROUNDS=${ROUNDS:-1}
MESSAGES=${MESSAGES:-2000}
LENGTH=${LENGTH:-4096}
SESSIONS=${SESSIONS:-20}
PROBE=${PROBE:-200}
MODES=${MODES:-abc}
BUILD=1
KEEP=0
need_arg() { [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        -r|--rounds)   need_arg "$@"; ROUNDS=$2; shift 2 ;;
        -m|--messages) need_arg "$@"; MESSAGES=$2; shift 2 ;;
        -l|--length)   need_arg "$@"; LENGTH=$2; shift 2 ;;
        -s|--sessions) need_arg "$@"; SESSIONS=$2; shift 2 ;;
        -n|--probe)    need_arg "$@"; PROBE=$2; shift 2 ;;
        --modes)       need_arg "$@"; MODES=$2; shift 2 ;;
        --no-build)    BUILD=0; shift ;;
        --keep)        KEEP=1; shift ;;
        -h|--help)     usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
for v in ROUNDS MESSAGES LENGTH SESSIONS PROBE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
(( ROUNDS > 0 && MESSAGES > 0 && SESSIONS > 0 && LENGTH > 0 )) ||
    die "ROUNDS, MESSAGES, SESSIONS and LENGTH must be at least 1"
[[ $MODES =~ ^[abc]+$ ]] || die "--modes takes letters a, b, c (got '$MODES')"
(( EUID == 0 )) || die "run as root: it starts private Postfix instances and may apt-get install"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FRAGMENT=$ROOT/deploy/postfix/milter/main.cf.fragment
MW_CONFIG=$ROOT/deploy/postfix/milter/mailwarden.toml
BIN=${MAILWARDEN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/mailwarden}
[[ -r $FRAGMENT && -r $MW_CONFIG ]] || die "missing $FRAGMENT or $MW_CONFIG"

# ---------------------------------------------------------------- packages
have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 ]]; }
missing=()
{ have postfix && have smtp-source && have smtp-sink && have postqueue; } || missing+=(postfix)
[[ $MODES == *b* ]] && ! have rspamd && missing+=(rspamd)
have dnsmasq || missing+=(dnsmasq-base)
have python3 || missing+=(python3)
if (( ${#missing[@]} )); then
    log "installing ${missing[*]} (no service is started)"
    # Postfix's binaries without a system MTA configuration.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        # exit 101 = "action forbidden": invoke-rc.d starts no service during the install.
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    status=0
    # --no-install-recommends: rspamd recommends redis-server, which this bench does not use.
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null; } || status=$?
    (( created_policy )) && rm -f /usr/sbin/policy-rc.d
    (( status == 0 )) || die "apt-get install ${missing[*]} failed (status $status)"
fi
PATH=$PATH:/usr/sbin

# ---------------------------------------------------------------- cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/milter-load.XXXXXX")
chmod 755 "$WORK"   # the postfix and nobody users traverse it
PIDS=()             # stopped in reverse order on exit
POSTFIX_CONFS=()
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for (( i = 0; i < 100; i++ )); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$? c i pid
    trap - EXIT INT TERM
    for c in "${POSTFIX_CONFS[@]}"; do
        pid=$(cat "$c/../spool/pid/master.pid" 2>/dev/null | tr -d ' ') || true
        postfix -c "$c" stop >/dev/null 2>&1 || true
        [[ -n $pid ]] && stop_pid "$pid"
    done
    for (( i = ${#PIDS[@]} - 1; i >= 0; i-- )); do stop_pid "${PIDS[i]}"; done
    if (( KEEP )); then echo "milter-load: kept $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { # a random high port nothing listens on now
    local p i
    for (( i = 0; i < 50; i++ )); do
        p=$(( 20000 + RANDOM % 40000 ))
        port_open "$p" || { echo "$p"; return 0; }
    done
    die "no free port found"
}
wait_port() { # port pid seconds: 0 once the port accepts while pid lives
    local i
    for (( i = 0; i < $3 * 10; i++ )); do
        kill -0 "$2" 2>/dev/null || return 1
        port_open "$1" && return 0
        sleep 0.1
    done
    return 1
}
now() { echo "$EPOCHREALTIME"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { # utime+stime of a process and its children (live and reaped)
    local total=0 p f
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13+$14+$15}') || continue
        total=$(( total + ${f:-0} ))
    done
    echo "$total"
}
TICKS=$(getconf CLK_TCK)

# ---------------------------------------------------------------- smtp-sink, dnsmasq
SINK_PORT=$(free_port)
smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 256 >"$WORK/sink.log" 2>&1 &
PIDS+=($!)
wait_port "$SINK_PORT" "${PIDS[-1]}" 5 || die "smtp-sink did not start: $(cat "$WORK/sink.log")"

DNS_PORT=$(free_port)
cat >"$WORK/dnsmasq.conf" <<EOF
port=$DNS_PORT
listen-address=127.0.0.1
bind-interfaces
no-resolv
no-hosts
address=/#/
EOF
dnsmasq -k -C "$WORK/dnsmasq.conf" --user=root >"$WORK/dnsmasq.log" 2>&1 &
PIDS+=($!)
sleep 0.3
kill -0 "${PIDS[-1]}" 2>/dev/null || die "dnsmasq did not start: $(cat "$WORK/dnsmasq.log")"

# ---------------------------------------------------------------- Postfix instances
# start_postfix NAME MILTER: a private instance relaying everything to smtp-sink; MILTER
# ("inet:127.0.0.1:PORT") or "" for none. Sets PF_PORT.
start_postfix() {
    local name=$1 milter=$2 d=$WORK/pf-$1
    mkdir -p "$d/conf" "$d/spool" "$d/data"
    chown postfix:postfix "$d/data"
    PF_PORT=$(free_port)
    cat >"$d/conf/main.cf" <<EOF
# Private bench instance ($name), written by benches/milter-load.sh
compatibility_level = 3.6
myhostname = bench-$name.example.org
queue_directory = $d/spool
data_directory = $d/data
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
alias_maps =
alias_database =
maillog_file = $d/postfix.log
maillog_file_prefixes = $d
disable_dns_lookups = yes
relayhost = [127.0.0.1]:$SINK_PORT
EOF
    if [[ -n $milter ]]; then
        grep -c '^smtpd_milters = ' "$FRAGMENT" | grep -qx 1 ||
            die "$FRAGMENT must have exactly one 'smtpd_milters = ' line"
        { echo "# --- $FRAGMENT, milter address changed"
          sed "s|^smtpd_milters = .*|smtpd_milters = $milter|" "$FRAGMENT"; } >>"$d/conf/main.cf"
    fi
    cat >"$d/conf/master.cf" <<EOF
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
EOF
    # Postfix waits for config files younger than a few seconds: backdate them.
    touch -d '-1 min' "$d/conf/main.cf" "$d/conf/master.cf"
    if postconf -c "$d/conf" -n 2>&1 | grep -i 'warning'; then
        die "postconf warns about $d/conf/main.cf (see above)"
    fi
    # Under `script`: fatal start-up errors go to a terminal, not to the log file.
    script -qec "postfix -c $d/conf start" /dev/null >"$d/start.log" 2>&1 ||
        die "postfix ($name) did not start: $(cat "$d/start.log" "$d/postfix.log" 2>/dev/null)"
    POSTFIX_CONFS+=("$d/conf")
    local i
    for (( i = 0; i < 100; i++ )); do port_open "$PF_PORT" && break; sleep 0.1; done
    port_open "$PF_PORT" || die "postfix ($name) does not listen on $PF_PORT: $(cat "$d/postfix.log")"
}

queue_files() { find "$WORK/pf-$1/spool/"{maildrop,incoming,active,deferred,hold} -type f 2>/dev/null | wc -l; }
sent_count() { grep -c ' status=sent ' "$WORK/pf-$1/postfix.log" 2>/dev/null || true; }

# ---------------------------------------------------------------- rspamd (mode b)
start_rspamd() {
    local d=$WORK/rspamd
    mkdir -p "$d/etc/local.d" "$d/etc/override.d" "$d/db" "$d/run" "$d/log"
    chown -R _rspamd:_rspamd "$d/db" "$d/run" "$d/log"
    RSPAMD_MILTER_PORT=$(free_port)
    local normal controller
    normal=$(free_port)
    controller=$(free_port)
    # Stock /etc/rspamd config; only the listeners move to private ports (override.d replaces
    # a worker's section). The proxy worker keeps the stock milter settings (milter = yes,
    # timeout = 120s, one process) and passes each message to the normal worker, as shipped
    # (upstream "local", which ships as hosts = "localhost", i.e. port 11333).
    cat >"$d/etc/override.d/worker-proxy.inc" <<EOF
bind_socket = "127.0.0.1:$RSPAMD_MILTER_PORT";
milter = yes;
timeout = 120s;
upstream "local" {
  default = yes;
  hosts = "127.0.0.1:$normal";
}
count = 1;
max_retries = 5;
discard_on_reject = false;
quarantine_on_reject = false;
spam_header = "X-Spam";
reject_message = "Spam message rejected";
EOF
    printf 'bind_socket = "127.0.0.1:%s";\n' "$normal" >"$d/etc/local.d/worker-normal.inc"
    printf 'bind_socket = "127.0.0.1:%s";\n' "$controller" >"$d/etc/override.d/worker-controller.inc"
    printf 'dns {\n  nameserver = ["127.0.0.1:%s"];\n  timeout = 1s;\n}\n' "$DNS_PORT" \
        >"$d/etc/local.d/options.inc"
    (cd "$d" && exec rspamd -f -c /etc/rspamd/rspamd.conf -u _rspamd -g _rspamd \
        --var=LOCAL_CONFDIR="$d/etc" --var=DBDIR="$d/db" --var=RUNDIR="$d/run" \
        --var=LOGDIR="$d/log" >"$d/stdout.log" 2>&1) &
    RSPAMD_PID=$!
    PIDS+=("$RSPAMD_PID")
    local t0 i
    t0=$(now)
    wait_port "$RSPAMD_MILTER_PORT" "$RSPAMD_PID" 60 ||
        die "rspamd's proxy did not listen on $RSPAMD_MILTER_PORT (see $d/log/rspamd.log):
$(tail -20 "$d/log/rspamd.log" 2>/dev/null)"
    # Hyperscan databases are compiled after the workers listen (the ~15 s cold start).
    for (( i = 0; i < 240; i++ )); do
        grep -q 'normal.*hyperscan database of .* has been loaded' "$d/log/rspamd.log" 2>/dev/null && break
        sleep 0.5
    done
    log "rspamd ready after $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s" \
        "(milter 127.0.0.1:$RSPAMD_MILTER_PORT → normal worker 127.0.0.1:$normal)"
}

# ---------------------------------------------------------------- mailwarden (mode c)
# Sets MW_PORT and MW_PID, or MW_SKIP to the reason.
start_mailwarden() {
    MW_SKIP=""
    if (( BUILD )); then
        log "building the release binary"
        (cd "$ROOT" && cargo build --release --quiet --bin mailwarden) || die "cargo build --release failed"
    fi
    if [[ ! -x $BIN ]]; then MW_SKIP="no binary at $BIN"; return; fi
    MW_PORT=$(free_port)
    local cfg=$WORK/mailwarden.toml text
    text=$(cat "$MW_CONFIG")
    # The shipped file with the listener, rules, quarantine moved here; [dns] at the bench's
    # dnsmasq and [metrics] off (both only if the shipped file has no such table).
    local from to
    for pair in "\"127.0.0.1:11332\"|\"127.0.0.1:$MW_PORT\"" \
                "[\"/etc/mailwarden/rules\"]|[\"$ROOT/rules\"]" \
                "\"/var/lib/mailwarden/quarantine\"|\"$WORK/quarantine\""; do
        from=${pair%%|*} to=${pair#*|}
        [[ $(grep -cF -- "$from" <<<"$text") == 1 ]] || die "$MW_CONFIG should contain $from once"
        text=${text/"$from"/"$to"}
    done
    grep -q '^\[dns\]' <<<"$text" && die "$MW_CONFIG has a [dns] table: adapt the bench"
    grep -q '^\[metrics\]' <<<"$text" && die "$MW_CONFIG has a [metrics] table: adapt the bench"
    printf '%s\n\n[dns]\nnameservers = ["127.0.0.1:%s"]\n\n[metrics]\nlisten = ""\n' \
        "$text" "$DNS_PORT" >"$cfg"
    mkdir -p "$WORK/quarantine"
    "$BIN" serve --config "$cfg" >"$WORK/mailwarden.log" 2>&1 &
    MW_PID=$!
    PIDS+=("$MW_PID")
    if ! wait_port "$MW_PORT" "$MW_PID" 15; then
        MW_SKIP="\`mailwarden serve --config deploy/postfix/milter/mailwarden.toml\` did not \
listen on 127.0.0.1:$MW_PORT (no [milter] support in this binary?). Its output:
$(head -c 1500 "$WORK/mailwarden.log")"
        stop_pid "$MW_PID"
    fi
}

# ---------------------------------------------------------------- start the peers
declare -A PORT NAME MILTER_PID
NAME[a]="Postfix, no milter"
NAME[b]="Postfix + rspamd 3.4 milter"
NAME[c]="Postfix + mailwarden milter"
log "smtp-sink 127.0.0.1:$SINK_PORT, dnsmasq 127.0.0.1:$DNS_PORT, directory $WORK"
if [[ $MODES == *c* ]]; then
    start_mailwarden
    if [[ -n $MW_SKIP ]]; then
        log "mode (c) skipped: $MW_SKIP"
        MODES=${MODES//c/}
    else
        MILTER_PID[c]=$MW_PID
        log "mailwarden milter on 127.0.0.1:$MW_PORT (pid $MW_PID)"
    fi
fi
if [[ $MODES == *b* ]]; then
    log "starting rspamd (cold start compiles its hyperscan databases, ~15 s)"
    start_rspamd
    MILTER_PID[b]=$RSPAMD_PID
fi
[[ -n $MODES ]] || die "no mode left to run"
for m in $(grep -o . <<<"$MODES"); do
    case $m in
        a) start_postfix a "" ;;
        b) start_postfix b "inet:127.0.0.1:$RSPAMD_MILTER_PORT" ;;
        c) start_postfix c "inet:127.0.0.1:$MW_PORT" ;;
    esac
    PORT[$m]=$PF_PORT
    log "(${m}) ${NAME[$m]}: 127.0.0.1:$PF_PORT"
done

# ---------------------------------------------------------------- load
SRC=(smtp-source -s "$SESSIONS" -l "$LENGTH" -f bench@example.test -t user@example.org)
wait_drained() { # mode expected_sent: waits (≤ 120 s) for an empty queue and expected sends
    local i
    for (( i = 0; i < 1200; i++ )); do
        [[ $(queue_files "$1") == 0 && $(sent_count "$1") -ge $2 ]] && return 0
        sleep 0.1
    done
    return 1
}
warm() { # a few messages through each mode before timing: rspamd's first scans are slow
    local m
    for m in $(grep -o . <<<"$MODES"); do
        "${SRC[@]}" -m 20 "127.0.0.1:${PORT[$m]}" >"$WORK/warm-$m.log" 2>&1 ||
            die "warm-up through (${m}) failed: $(tail -5 "$WORK/warm-$m.log"; tail -5 "$WORK/pf-$m/postfix.log")"
        EXPECT[$m]=20
        wait_drained "$m" 20 || die "(${m}): warm-up mail not delivered to smtp-sink"
    done
}
declare -A EXPECT RATES CPU_MS
log "warm-up: 20 messages through each mode"
warm
failed=0
for (( r = 1; r <= ROUNDS; r++ )); do
    for m in $(grep -o . <<<"$MODES"); do
        la=$(cut -d' ' -f1 /proc/loadavg)
        c0=0; [[ -n ${MILTER_PID[$m]:-} ]] && c0=$(cpu_ticks "${MILTER_PID[$m]}")
        t0=$(now)
        rc=0
        timeout 600 "${SRC[@]}" -m "$MESSAGES" "127.0.0.1:${PORT[$m]}" >"$WORK/load-$m-$r.log" 2>&1 || rc=$?
        t1=$(now)
        c1=0; [[ -n ${MILTER_PID[$m]:-} ]] && c1=$(cpu_ticks "${MILTER_PID[$m]}")
        EXPECT[$m]=$(( EXPECT[$m] + MESSAGES ))
        t2=$t1
        if wait_drained "$m" "${EXPECT[$m]}"; then
            t2=$(now)
        elif (( rc == 0 )); then
            rc=99   # accepted, but not all of it reached smtp-sink within 120 s
        fi
        rate=$(awk -v n="$MESSAGES" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')
        e2e=$(awk -v n="$MESSAGES" -v a="$t0" -v b="$t2" 'BEGIN{printf "%.0f", n/(b-a)}')
        cpu=$(awk -v t="$(( c1 - c0 ))" -v hz="$TICKS" -v n="$MESSAGES" 'BEGIN{printf "%.2f", t*1000/hz/n}')
        RATES[$m]+="$rate "
        CPU_MS[$m]+="$cpu "
        printf '    round %d (%s) %-30s %6s msgs/s accepted, %6s msgs/s incl. drain to the sink, milter CPU %s ms/msg, load %s\n' \
            "$r" "$m" "${NAME[$m]}" "$rate" "$e2e" "$cpu" "$la" >&2
        if (( rc != 0 )); then
            failed=1
            echo "    (${m}) FAILED (smtp-source status $rc, sent $(sent_count "$m") of ${EXPECT[$m]}):" >&2
            tail -5 "$WORK/load-$m-$r.log" >&2
        fi
    done
done
for m in $(grep -o . <<<"$MODES"); do
    rejects=$(grep -c 'milter-reject\|reject:' "$WORK/pf-$m/postfix.log" || true)
    if [[ $rejects != 0 ]]; then
        failed=1
        echo "    (${m}) Postfix refused $rejects message(s); first:" >&2
        grep -m3 'milter-reject\|reject:' "$WORK/pf-$m/postfix.log" >&2
    fi
done

# ---------------------------------------------------------------- latency probe
PROBE_OUT=""
if (( PROBE > 0 )); then
    log "latency probe: $PROBE messages per mode, sequential, modes interleaved"
    targets=()
    for m in $(grep -o . <<<"$MODES"); do targets+=("$m=${PORT[$m]}"); done
    PROBE_OUT=$(python3 - "$PROBE" "$LENGTH" "${targets[@]}" <<'EOF'
# One message at a time: connect, EHLO, MAIL, RCPT, DATA, message, QUIT — per mode in turn.
# eod = sending the final "." to the reply; session = connect to the reply to the final ".".
import smtplib, sys, time
n, length = int(sys.argv[1]), int(sys.argv[2])
targets = [t.split("=") for t in sys.argv[3:]]
head = "From: probe@example.test\r\nTo: user@example.org\r\nSubject: latency probe %d\r\n" \
       "Message-ID: <probe-%s-%d@example.test>\r\n\r\n"
line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
eod = {m: [] for m, _ in targets}
ses = {m: [] for m, _ in targets}
for i in range(n):
    for m, port in targets:
        body = (head % (i, m, i)).encode()
        body += (line * (length // len(line) + 1)).encode()[: max(0, length - len(body))]
        body = body.rstrip(b"\r\n") + b"\r\n"
        t0 = time.perf_counter()
        s = smtplib.SMTP("127.0.0.1", int(port), timeout=60)
        s.ehlo("probe.example.test")
        code, msg = s.mail("probe@example.test")
        if code != 250: sys.exit(f"({m}) MAIL: {code} {msg}")
        code, msg = s.rcpt("user@example.org")
        if code != 250: sys.exit(f"({m}) RCPT: {code} {msg}")
        code, msg = s.docmd("DATA")
        if code != 354: sys.exit(f"({m}) DATA: {code} {msg}")
        s.send(body + b".\r\n")
        t1 = time.perf_counter()
        code, msg = s.getreply()
        t2 = time.perf_counter()
        if code != 250: sys.exit(f"({m}) end of data: {code} {msg}")
        s.quit()
        eod[m].append((t2 - t1) * 1000)
        ses[m].append((t2 - t0) * 1000)
def q(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(round(p * (len(v) - 1))))]
for m, _ in targets:
    print(m, "%.3f %.3f %.3f %.3f" % (q(eod[m], .5), q(eod[m], .99), q(ses[m], .5), q(ses[m], .99)))
EOF
) || { failed=1; echo "    latency probe FAILED: $PROBE_OUT" >&2; PROBE_OUT=""; }
fi

# ---------------------------------------------------------------- report
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{v[NR]=$1} END{if(NR%2)print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
echo
echo "milter-load: $MESSAGES msgs × $LENGTH B, $SESSIONS sessions, $ROUNDS round(s); $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A MED
for m in $(grep -o . <<<"$MODES"); do
    MED[$m]=$(median "${RATES[$m]}")
    line=$(printf '  (%s) %-30s %6s msgs/s (rounds: %s)' "$m" "${NAME[$m]}" "${MED[$m]}" "${RATES[$m]% }")
    if [[ -n ${MILTER_PID[$m]:-} ]]; then
        # Peak RSS per process (VmHWM). Forked workers share pages (rspamd's hyperscan
        # databases), so the sum of VmHWM overstates; Pss (now) splits shared pages fairly.
        pids=("${MILTER_PID[$m]}" $(pgrep -P "${MILTER_PID[$m]}" 2>/dev/null || true))
        total=0 pss=0 parts=""
        for p in "${pids[@]}"; do
            h=$(hwm_kib "$p"); total=$(( total + h ))
            pss=$(( pss + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0) ))
            label=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | sed -e 's/^rspamd: //' -e 's/ process.*//' -e 's/ .*//')
            parts+="${label:-$p} $(( h / 1024 )), "
        done
        line+=$(printf ', milter CPU %s ms/msg, VmHWM %d MiB' "$(median "${CPU_MS[$m]}")" "$(( total / 1024 ))")
        (( ${#pids[@]} > 1 )) && line+=" in ${#pids[@]} processes (${parts%, }; Pss now $(( pss / 1024 )) MiB)"
    fi
    echo "$line"
done
ratio() { [[ -n ${MED[$1]:-} && -n ${MED[$2]:-} ]] && awk -v a="${MED[$1]}" -v b="${MED[$2]}" -v l="$1/$2" 'BEGIN{printf "  %s = %.3f\n", l, a/b}' || true; }
ratio c b; ratio c a; ratio b a
if [[ -n $PROBE_OUT ]]; then
    echo "  latency, $PROBE sequential messages per mode (ms; + = added to mode a):"
    base_e50="" base_e99="" base_s50="" base_s99=""
    while read -r m e50 e99 s50 s99; do
        [[ $m == a ]] && { base_e50=$e50 base_e99=$e99 base_s50=$s50 base_s99=$s99; }
    done <<<"$PROBE_OUT"
    while read -r m e50 e99 s50 s99; do
        extra=""
        if [[ -n $base_e50 && $m != a ]]; then
            extra=$(awk -v a="$e50" -v b="$e99" -v c="$s50" -v d="$s99" -v A="$base_e50" -v B="$base_e99" \
                -v C="$base_s50" -v D="$base_s99" \
                'BEGIN{printf "  (+%.2f / +%.2f eod, +%.2f / +%.2f session)", a-A, b-B, c-C, d-D}')
        fi
        printf '  (%s) end-of-data→reply p50 %s p99 %s; session p50 %s p99 %s%s\n' "$m" "$e50" "$e99" "$s50" "$s99" "$extra"
    done <<<"$PROBE_OUT"
fi
[[ $MODES == *c* ]] || echo "  (c) not run${MW_SKIP:+ (the reason is printed above: mode (c) skipped)}"
exit "$failed"
