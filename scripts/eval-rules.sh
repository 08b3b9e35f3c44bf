#!/usr/bin/env bash
# Measures the rule set in rules/ on the dev corpus: recall on spam, false-positive rates on
# easy ham (plain personal and list mail) and hard ham (HTML newsletters and vendor mailings),
# each reported on its own.
#
# Scans target/corpus/spam-1/*.txt, target/corpus/easy-ham-1/*.txt and
# target/corpus/hard-ham-1/*.txt (fetch them with scripts/fetch-corpus.sh; hard-ham-1 holds only
# the dev files 00001-00125) with `mailwarden scan --json`, using a config whose [rules] paths
# points at rules/ only and whose [policy] is the default (tag at 5.0). A message counts as
# flagged when its action is not "accept". Prints totals, the same figures for odd- and
# even-numbered files, and per-rule hit counts on spam vs each ham set. These are figures on
# the data the scores were fitted on (optimistic); `mailwarden rules fit` reports honest
# cross-validated ones.
#
# Only the dev files are read; the held-out set (spam-2, easy-ham-2, hard-ham-1 files
# 00126-00250) is the evaluation set and is never touched here.
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
        *) sed -n '2,25p' "${BASH_SOURCE[0]}"; exit 2 ;;
    esac
done

spam_dir="$root/target/corpus/spam-1"
ham_dir="$root/target/corpus/easy-ham-1"
hard_dir="$root/target/corpus/hard-ham-1"
for d in "$spam_dir" "$ham_dir" "$hard_dir"; do
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
scan_corpus() { # label dir [max file number] -> $tmp/label.jsonl
    local label=$1 dir=$2 max=${3:-99999}
    # Batches of 200 files per invocation, $jobs invocations at a time, each batch into its own
    # file (long JSON lines from parallel writers would interleave in one pipe). Exit codes 1/2
    # mean tag/reject, not failure; 3 is an error and is reported.
    mkdir -p "$tmp/$label"
    # Files are NNNNN.<md5>.txt; numbers above $max are never read (hard-ham-1 past 00125 is
    # held out, should it ever be copied there).
    find "$dir" -maxdepth 1 -name '*.txt' -print0 | sort -z |
        while IFS= read -r -d '' f; do
            n=$(basename "$f"); n=${n%%.*}
            [[ $n =~ ^[0-9]+$ ]] && ((10#$n > max)) || printf '%s\0' "$f"
        done |
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
scan_corpus hard "$hard_dir" 125
end=$(date +%s%N)

if [ -s "$tmp/scan-errors.txt" ]; then
    echo "scan errors:" >&2
    head -20 "$tmp/scan-errors.txt" >&2
fi

cat "$tmp/spam.jsonl" "$tmp/ham.jsonl" "$tmp/hard.jsonl" >"$tmp/all.jsonl"
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

def rate(sel, corpus):
    of = [m for m in sel if m["corpus"] == corpus]
    n = sum(m["flag"] for m in of)
    return f"{100*n/max(len(of),1):6.2f}% ({n}/{len(of)})"

def stats(sel):
    return (f"recall {rate(sel, 'spam')}   easy-ham FP {rate(sel, 'ham')}   "
            f"hard-ham FP {rate(sel, 'hard')}")

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
nhard = sum(m["corpus"] == "hard" for m in msgs)
hits = {"spam": Counter(), "ham": Counter(), "hard": Counter()}
scores = {}
for m in msgs:
    for s in m["symbols"]:
        hits[m["corpus"]][s["name"]] += 1
        scores[s["name"]] = s["score"]

def table(title, names):
    print()
    print(title)
    print(f"  {'rule':28} {'score':>6} {'spam':>5} {'spam%':>6} {'ham':>5} {'ham%':>6} "
          f"{'hard':>5} {'hard%':>6}")
    for n in names:
        s, h, d = hits["spam"][n], hits["ham"][n], hits["hard"][n]
        print(f"  {n:28} {scores[n]:6.2f} {s:5d} {100*s/max(nspam,1):6.1f} {h:5d} "
              f"{100*h/max(nham,1):6.2f} {d:5d} {100*d/max(nhard,1):6.1f}")

names = set(hits["spam"]) | set(hits["ham"]) | set(hits["hard"])
table(f"top rules by spam hits (of {nspam} spam, {nham} easy ham, {nhard} hard ham)",
      sorted(names, key=lambda n: (-hits["spam"][n], n))[:top])
table("positive rules that hit ham most (easy + hard, by hits x score)",
      sorted((n for n in names if scores[n] > 0 and (hits["ham"][n] or hits["hard"][n])),
             key=lambda n: (-(hits["ham"][n] + hits["hard"][n]) * scores[n], n))[:top])

# Score distribution near the threshold.
print()
print("score histogram (spam | easy ham | hard ham):")
for lo, hi in [(-99, 0), (0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 8), (8, 99)]:
    row = [sum(lo <= m["score"] < hi for m in msgs if m["corpus"] == c)
           for c in ("spam", "ham", "hard")]
    print(f"  [{lo:>3},{hi:>3})  {row[0]:5d} | {row[1]:5d} | {row[2]:5d}")
PY
