#!/usr/bin/env bash
# mailwarden's rules engine (Debian's stock SpamAssassin rules) next to spamd/spamc and rspamd,
# on the same dev-corpus messages, in one run, interleaved. See benches/README.md.
#
# Usage: benches/rules/compare.sh [-n N] [-r ROUNDS] [--keep]
#   -n N       first N messages of the sorted dev corpus (default: all 3,000)
#   -r ROUNDS  rounds of (mailwarden, spamd, mailwarden ×2, rspamd) (default 1)
#   --keep     keep the work directory (logs, outputs)
# Needs: spamassassin spamd spamc rspamd dnsmasq-base (apt-get install -y ...), cargo, python3.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=0
ROUNDS=1
KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
    -n) N=$2; shift 2 ;;
    -r) ROUNDS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
    esac
done
[ -d "$STOCK" ] || die "$STOCK missing (apt-get install -y spamassassin)"
need python3 python3

WORK=$(mktemp -d /tmp/mw-rules-compare.XXXXXX)
chmod 755 "$WORK"
cleanup() {
    stop_all
    if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

log "building the bench binary"
BIN=$(bench_binary)

# the same bytes for everyone: a private copy of the messages (rspamc scans a directory)
mkdir -p "$WORK/msgs"
corpus_files >"$WORK/all.list"
if [ "$N" -gt 0 ]; then head -n "$N" "$WORK/all.list" >"$WORK/sel.list"; else cp "$WORK/all.list" "$WORK/sel.list"; fi
i=0
while read -r f; do
    i=$((i + 1))
    cp "$f" "$WORK/msgs/$(printf '%05d' "$i")-$(basename "$(dirname "$f")")-$(basename "$f")"
done <"$WORK/sel.list"
chmod -R a+rX "$WORK/msgs"
find "$WORK/msgs" -type f | LC_ALL=C sort >"$WORK/msgs.list"
COUNT=$(wc -l <"$WORK/msgs.list")
awk 'NR % 2 == 1' "$WORK/msgs.list" >"$WORK/half1.list"
awk 'NR % 2 == 0' "$WORK/msgs.list" >"$WORK/half2.list"
log "$COUNT messages, $(du -sh "$WORK/msgs" | cut -f1)"

log "starting rspamd (cold start compiles its hyperscan databases)"
start_rspamd
SPAMD_PORT=$(free_port)
log "starting spamd -L on 127.0.0.1:$SPAMD_PORT"
start_spamd "$SPAMD_PORT"

log "warm-up: 20 messages through each peer"
head -n 20 "$WORK/msgs.list" | while read -r f; do
    spamc -d 127.0.0.1 -p "$SPAMD_PORT" -x -c <"$f" >/dev/null || true
done
mkdir -p "$WORK/warm"
head -n 20 "$WORK/msgs.list" | xargs cp -t "$WORK/warm"
rspamc -h 127.0.0.1:11333 symbols "$WORK/warm" >/dev/null

RESULTS=$WORK/results.tsv # name, round, msgs, wall_s, cpu_s, loadavg
: >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

run_mailwarden_1() {
    local r=$1 la out
    la=$(loadavg)
    out=$("$BIN" --rules "$STOCK" --files "$WORK/msgs.list" --json)
    printf '%s\n' "$out" | grep -E '^(load|throughput|per message)' | sed 's/^/    /' >&2
    local rate
    rate=$(printf '%s\n' "$out" | sed -n 's/^JSON .*"msgs_per_s":\([0-9.]*\).*/\1/p')
    local secs
    secs=$(awk -v n="$COUNT" -v r="$rate" 'BEGIN{printf "%.3f", n/r}')
    # one thread: CPU time ≈ scan time
    record "mailwarden (1 thread)" "$r" "$COUNT" "$secs" "$secs" "$la"
}

run_mailwarden_2() {
    local r=$1 la o1 o2 s1 s2
    la=$(loadavg)
    "$BIN" --rules "$STOCK" --files "$WORK/half1.list" --json >"$WORK/mw2a.out" &
    local p1=$!
    "$BIN" --rules "$STOCK" --files "$WORK/half2.list" --json >"$WORK/mw2b.out" &
    local p2=$!
    wait "$p1" "$p2"
    s1=$(sed -n 's/^JSON .*"messages":\([0-9]*\),.*"msgs_per_s":\([0-9.]*\).*/\1 \2/p' "$WORK/mw2a.out" | awk '{print $1/$2}')
    s2=$(sed -n 's/^JSON .*"messages":\([0-9]*\),.*"msgs_per_s":\([0-9.]*\).*/\1 \2/p' "$WORK/mw2b.out" | awk '{print $1/$2}')
    # wall = the slower half's scan time (load time excluded); CPU = both scan times
    record "mailwarden (2 processes)" "$r" "$COUNT" \
        "$(awk -v a="$s1" -v b="$s2" 'BEGIN{printf "%.3f", (a>b?a:b)}')" \
        "$(awk -v a="$s1" -v b="$s2" 'BEGIN{printf "%.3f", a+b}')" "$la"
}

run_spamd() {
    local r=$1 la c0 c1 t0 t1
    la=$(loadavg)
    : >"$WORK/spamc.fail"
    c0=$(cpu_ticks "$SPAMD_PID")
    t0=$(now)
    # 2 spamc at a time (2 cores); spamd's preforked children do the work
    xargs -P 2 -n 1 sh -c 'spamc -d 127.0.0.1 -p "$1" -s 50000000 -x -c <"$3" >/dev/null; rc=$?;
        [ $rc -le 1 ] || echo "$3 $rc" >>"$2"' spamc "$SPAMD_PORT" "$WORK/spamc.fail" \
        <"$WORK/msgs.list" || true
    t1=$(now)
    c1=$(cpu_ticks "$SPAMD_PID")
    local fails
    fails=$(wc -l <"$WORK/spamc.fail")
    [ "$fails" = 0 ] || log "spamc: $fails failures (first: $(head -1 "$WORK/spamc.fail"))"
    record "spamd -L + spamc (2 parallel)" "$r" "$((COUNT - fails))" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')" \
        "$(awk -v a="$c0" -v b="$c1" -v t="$TICKS" 'BEGIN{printf "%.3f", (b-a)/t}')" "$la"
}

run_rspamd() {
    local r=$1 la c0 c1 t0 t1 ok
    la=$(loadavg)
    c0=$(cpu_ticks "$RSPAMD_PID")
    t0=$(now)
    rspamc -h 127.0.0.1:11333 -n 8 symbols "$WORK/msgs" >"$WORK/rspamc.out" 2>"$WORK/rspamc.err" || true
    t1=$(now)
    c1=$(cpu_ticks "$RSPAMD_PID")
    ok=$(grep -c '^Action:' "$WORK/rspamc.out" || true)
    [ "$ok" = "$COUNT" ] || log "rspamc: $ok of $COUNT messages got a result (see rspamc.err)"
    record "rspamd (2 workers, rspamc -n 8)" "$r" "$ok" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')" \
        "$(awk -v a="$c0" -v b="$c1" -v t="$TICKS" 'BEGIN{printf "%.3f", (b-a)/t}')" "$la"
}

for r in $(seq 1 "$ROUNDS"); do
    log "round $r: mailwarden, 1 thread (load avg $(loadavg))"
    run_mailwarden_1 "$r"
    log "round $r: spamd (load avg $(loadavg))"
    run_spamd "$r"
    log "round $r: mailwarden, 2 processes (load avg $(loadavg))"
    run_mailwarden_2 "$r"
    log "round $r: rspamd (load avg $(loadavg))"
    run_rspamd "$r"
done
log "done (load avg $(loadavg))"

python3 - "$RESULTS" <<'EOF'
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = collections.OrderedDict()
for name, r, n, wall, cpu, la in rows:
    by.setdefault(name, []).append((int(r), int(n), float(wall), float(cpu), la))
print()
print("%-32s %5s %6s %9s %10s %12s %10s  %s" % ("peer", "round", "msgs", "wall s", "msgs/s", "CPU ms/msg", "msgs/CPU-s", "load avg at start"))
best = {}
for name, rs in by.items():
    for r, n, wall, cpu, la in rs:
        rate = n / wall if wall else 0
        cpu_ms = 1000 * cpu / n if n else 0
        per_core = n / cpu if cpu else 0
        print("%-32s %5d %6d %9.2f %10.1f %12.2f %10.1f  %s" % (name, r, n, wall, rate, cpu_ms, per_core, la))
        b = best.setdefault(name, [0, 0])
        b[0] = max(b[0], rate); b[1] = max(b[1], per_core)
print()
mw1 = best.get("mailwarden (1 thread)"); mw2 = best.get("mailwarden (2 processes)")
print("best of rounds; per core = messages per CPU-second of the scanner's processes")
for name, (rate, pc) in best.items():
    print("  %-32s %9.1f msgs/s wall   %9.1f msgs/s per core" % (name, rate, pc))
for peer, label, target in (("spamd -L + spamc (2 parallel)", "spamd", 20.0),
                            ("rspamd (2 workers, rspamc -n 8)", "rspamd", 1.0)):
    if peer in best and mw1 and mw2:
        pr, ppc = best[peer]
        print("  mailwarden / %-7s per core: %6.2fx   both cores (2 processes vs peer wall): %6.2fx   (target >= %gx)"
              % (label, mw1[1] / ppc if ppc else 0, mw2[0] / pr if pr else 0, target))
EOF
