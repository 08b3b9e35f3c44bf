#!/usr/bin/env bash
# Measures the rule set in rules/ on the dev corpus: recall on spam, false-positive rate on ham.
#
# Scans target/corpus/spam-1/*.txt and target/corpus/easy-ham-1/*.txt (fetch them with
# scripts/fetch-corpus.sh) with `mailwarden scan --json`, using a config whose [rules] paths
# points at rules/ only and whose [policy] is the default (tag at 5.0). A message counts as
# flagged when its action is not "accept". Prints totals, the same figures for odd- and
# even-numbered files (tune on one half, check on the other), and per-rule hit counts on spam
# vs ham.
#
# Only the dev folders are read; the held-out folders (spam-2, easy-ham-2, hard-ham-1) are the
# evaluation set and are never touched here.
#
# Usage: scripts/eval-rules.sh [-r RULES_DIR] [-o RESULTS.jsonl] [-n TOP]
#   -r  rule directory (default: rules/)
#   -o  also keep the raw per-message JSON lines (each line gets a "corpus" field)
#   -n  how many rules to list in the per-rule tables (default 40)
# Needs: cargo (to build when needed), python3.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

rules_dir="$root/rules"
keep=""
top=40
while getopts "r:o:n:h" opt; do
    case "$opt" in
        r) rules_dir=$(cd "$OPTARG" && pwd) ;;
        o) keep="$OPTARG" ;;
        n) top="$OPTARG" ;;
        *) sed -n '2,19p' "${BASH_SOURCE[0]}"; exit 2 ;;
    esac
done

spam_dir="$root/target/corpus/spam-1"
ham_dir="$root/target/corpus/easy-ham-1"
for d in "$spam_dir" "$ham_dir"; do
    if ! compgen -G "$d/*.txt" >/dev/null; then
        echo "no messages in $d: run scripts/fetch-corpus.sh" >&2
        exit 2
    fi
done

# Build the release binary (cargo does nothing when it is up to date).
cargo build --release --quiet
bin="$root/target/release/mailwarden"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Config: only our rules, every [policy] key at its default.
cat >"$tmp/eval.toml" <<EOF
[rules]
paths = ["$rules_dir"]
EOF

"$bin" rules check --config "$tmp/eval.toml" >"$tmp/check.txt" 2>&1 || {
    cat "$tmp/check.txt" >&2
    echo "rules check failed" >&2
    exit 1
}

jobs=$(nproc 2>/dev/null || echo 2)
scan_corpus() { # label dir -> $tmp/label.jsonl
    local label=$1 dir=$2
    # Batches of 200 files per invocation, $jobs invocations at a time, each batch into its own
    # file (long JSON lines from parallel writers would interleave in one pipe). Exit codes 1/2
    # mean tag/reject, not failure; 3 is an error and is reported.
    mkdir -p "$tmp/$label"
    find "$dir" -maxdepth 1 -name '*.txt' -print0 | sort -z |
        xargs -0 -n 200 -P "$jobs" bash -c '
            out=$(mktemp "$2/out.XXXXXX")
            "$0" scan --config "$1" --json "${@:3}" >"$out" 2>>"$2/errors.txt"
            rc=$?; [ $rc -le 2 ] || echo "scan exited $rc" >>"$2/errors.txt"; exit 0
        ' "$bin" "$tmp/eval.toml" "$tmp/$label"
    [ ! -s "$tmp/$label/errors.txt" ] || cat "$tmp/$label/errors.txt" >>"$tmp/scan-errors.txt"
    cat "$tmp/$label"/out.* | sed "s/^{/{\"corpus\":\"$label\",/" >"$tmp/$label.jsonl"
}

start=$(date +%s%N)
scan_corpus spam "$spam_dir"
scan_corpus ham "$ham_dir"
end=$(date +%s%N)

if [ -s "$tmp/scan-errors.txt" ]; then
    echo "scan errors:" >&2
    head -20 "$tmp/scan-errors.txt" >&2
fi

cat "$tmp/spam.jsonl" "$tmp/ham.jsonl" >"$tmp/all.jsonl"
[ -z "$keep" ] || cp "$tmp/all.jsonl" "$keep"

python3 - "$tmp/all.jsonl" "$top" "$(( (end - start) / 1000000 ))" "$tmp/check.txt" <<'PY'
import json, os, re, sys
from collections import Counter

path, top, elapsed, check = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000, sys.argv[4]
msgs = [json.loads(l) for l in open(path) if l.strip()]
for m in msgs:
    num = re.match(r"(\d+)", os.path.basename(m["file"]))
    m["half"] = "odd" if num and int(num.group(1)) % 2 else "even"
    m["flag"] = m["action"] != "accept"

def stats(sel):
    spam = [m for m in sel if m["corpus"] == "spam"]
    ham = [m for m in sel if m["corpus"] == "ham"]
    tp = sum(m["flag"] for m in spam)
    fp = sum(m["flag"] for m in ham)
    return (f"recall {100*tp/max(len(spam),1):6.2f}% ({tp}/{len(spam)})   "
            f"FP rate {100*fp/max(len(ham),1):5.2f}% ({fp}/{len(ham)})")

slow = sorted(msgs, key=lambda m: -m.get("elapsed_ms", 0))[:3]
timeouts = sum(1 for m in msgs if m.get("timed_out"))
print(f"messages scanned: {len(msgs)} in {elapsed:.2f} s wall "
      f"(sum of per-message rule time {sum(m.get('elapsed_ms',0) for m in msgs)/1000:.2f} s, "
      f"slowest {slow[0].get('elapsed_ms',0):.1f} ms, timeouts {timeouts})")
print(open(check).read().strip().splitlines()[-1] if open(check).read().strip() else "")
print()
print(f"all   {stats(msgs)}")
print(f"odd   {stats([m for m in msgs if m['half']=='odd'])}")
print(f"even  {stats([m for m in msgs if m['half']=='even'])}")

nspam = sum(m["corpus"] == "spam" for m in msgs)
nham = sum(m["corpus"] == "ham" for m in msgs)
hits = {"spam": Counter(), "ham": Counter()}
scores = {}
for m in msgs:
    for s in m["symbols"]:
        hits[m["corpus"]][s["name"]] += 1
        scores[s["name"]] = s["score"]

def table(title, names):
    print()
    print(title)
    print(f"  {'rule':28} {'score':>6} {'spam':>5} {'spam%':>6} {'ham':>5} {'ham%':>6}")
    for n in names:
        s, h = hits["spam"][n], hits["ham"][n]
        print(f"  {n:28} {scores[n]:6.2f} {s:5d} {100*s/nspam:6.1f} {h:5d} {100*h/nham:6.2f}")

names = set(hits["spam"]) | set(hits["ham"])
table(f"top rules by spam hits (of {nspam} spam, {nham} ham)",
      sorted(names, key=lambda n: (-hits["spam"][n], n))[:top])
table("positive rules that hit ham most",
      sorted((n for n in names if scores[n] > 0 and hits["ham"][n]),
             key=lambda n: (-hits["ham"][n] * scores[n], n))[:top])

# Score distribution near the threshold.
print()
print("score histogram (spam | ham):")
for lo, hi in [(-99, 0), (0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 8), (8, 99)]:
    s = sum(lo <= m["score"] < hi for m in msgs if m["corpus"] == "spam")
    h = sum(lo <= m["score"] < hi for m in msgs if m["corpus"] == "ham")
    print(f"  [{lo:>3},{hi:>3})  {s:5d} | {h:5d}")
PY
