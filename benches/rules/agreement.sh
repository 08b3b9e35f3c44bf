#!/usr/bin/env bash
# Hit-for-hit agreement between mailwarden (Debian's stock SpamAssassin rules) and SpamAssassin
# itself (spamd -L, spamc -y) on a deterministic dev-corpus sample. See benches/README.md.
#
# Usage: benches/rules/agreement.sh [-s SPAM] [-m HAM] [--keep]
#   -s SPAM   spam messages: every (500/SPAM)-th of sorted spam-1 (default 100)
#   -m HAM    ham messages: every (2500/HAM)-th of sorted easy-ham-1 (default 100)
#   --keep    keep the work directory (per-message hit lists)
# Exit status 0 when agreement >= 95 %, 1 below.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SPAM=100
HAM=100
KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
    -s) SPAM=$2; shift 2 ;;
    -m) HAM=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
    esac
done
[ -d "$STOCK" ] || die "$STOCK missing (apt-get install -y spamassassin)"
need python3 python3

WORK=$(mktemp -d /tmp/mw-rules-agree.XXXXXX)
chmod 755 "$WORK"
cleanup() {
    stop_all
    if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

BIN=$(bench_binary)
corpus_files >"$WORK/all.list"
pick() { # pick DIR K: every (total/K)-th file of DIR, starting with the first
    local list total step
    list=$(grep "/$1/" "$WORK/all.list")
    total=$(printf '%s\n' "$list" | wc -l)
    step=$((total / $2))
    [ "$step" -ge 1 ] || step=1
    printf '%s\n' "$list" | awk -v s="$step" -v k="$2" '(NR - 1) % s == 0 && n < k { print; n++ }'
}
{ pick spam-1 "$SPAM"; pick easy-ham-1 "$HAM"; } >"$WORK/sample.list"
log "sample: $(grep -c /spam-1/ "$WORK/sample.list") spam + $(grep -c /easy-ham-1/ "$WORK/sample.list") ham"

log "mailwarden: stock rules over the sample"
"$BIN" --rules "$STOCK" --files "$WORK/sample.list" --dump "$WORK/mw" | grep -E '^(load|throughput|dumped)' >&2

PORT=$(free_port)
start_spamd "$PORT"
log "SpamAssassin: spamc -y per message (2 parallel)"
mkdir -p "$WORK/sa"
# output file per message: its index in the sample
awk '{ printf "%05d %s\n", NR, $0 }' "$WORK/sample.list" |
    xargs -P 2 -n 2 sh -c 'spamc -d 127.0.0.1 -p "$1" -s 50000000 -x -y <"$4" >"$2/$3.tmp" &&
        mv "$2/$3.tmp" "$2/$3"' spamc "$PORT" "$WORK/sa"
stop_all
log "spamd stopped; load avg $(loadavg)"

python3 - "$WORK" <<'EOF'
import sys, os, collections
work = sys.argv[1]
sample = [l.strip() for l in open(os.path.join(work, "sample.list")) if l.strip()]
comparable = [l.strip() for l in open(os.path.join(work, "mw", "comparable.txt")) if l.strip()]
comp = set(comparable)
mw = {}
for line in open(os.path.join(work, "mw", "hits.tsv")):
    path, _, hits = line.rstrip("\n").partition("\t")
    mw[path] = set(h for h in hits.split(",") if h)
missing = 0
sa = {}
for i, path in enumerate(sample, 1):
    f = os.path.join(work, "sa", "%05d" % i)
    if not os.path.exists(f):
        missing += 1
        continue
    text = open(f).read().strip()
    sa[path] = set(t.strip() for t in text.split(",") if t.strip())
paths = [p for p in sample if p in sa and p in mw]
pairs = agree = 0
sa_only = collections.Counter(); mw_only = collections.Counter(); both = collections.Counter()
for p in paths:
    s = sa[p] & comp; m = mw[p] & comp
    for r in comparable:
        pairs += 1
        if (r in s) == (r in m):
            agree += 1
            if r in s: both[r] += 1
        elif r in s: sa_only[r] += 1
        else: mw_only[r] += 1
hit_pairs = sum(both.values()) + sum(sa_only.values()) + sum(mw_only.values())
sa_all = collections.Counter(t for p in paths for t in sa[p])
print()
print("messages compared: %d (%d without a SpamAssassin answer)" % (len(paths), missing))
print("comparable scored rules: %d (regex/exists rules mailwarden runs + metas built only on them)" % len(comparable))
print("message x rule pairs: %d, agreeing: %d = %.3f %%" % (pairs, agree, 100.0 * agree / max(pairs, 1)))
print("pairs where either side hit: %d, both hit: %d = %.1f %% (the strict figure)"
      % (hit_pairs, sum(both.values()), 100.0 * sum(both.values()) / max(hit_pairs, 1)))
print("comparable rules hit by either side at least once: %d"
      % len(set(both) | set(sa_only) | set(mw_only)))
dis = sorted(set(sa_only) | set(mw_only), key=lambda r: -(sa_only[r] + mw_only[r]))
print("\ndisagreeing rules (%d): rule, SA-only hits, mailwarden-only hits, both hit" % len(dis))
for r in dis:
    print("  %-32s SA-only %3d  mw-only %3d  both %3d" % (r, sa_only[r], mw_only[r], both[r]))
other = sorted((t for t in sa_all if t not in comp), key=lambda t: -sa_all[t])
print("\nSA hits outside the comparison (eval/plugin/net rules or metas on them; top 15):")
print("  " + ", ".join("%s %d" % (t, sa_all[t]) for t in other[:15]))
with open(os.path.join(work, "agreement.txt"), "w") as f:
    f.write("%.4f\n" % (100.0 * agree / max(pairs, 1)))
EOF
pct=$(cat "$WORK/agreement.txt")
awk -v p="$pct" 'BEGIN { exit !(p >= 95) }'
