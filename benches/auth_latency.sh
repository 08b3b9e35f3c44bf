#!/usr/bin/env bash
# auth_latency.sh — time added per message by sender authentication (SPF for HELO and MAIL
# FROM, DKIM, ARC, DMARC) and DNSBL lookups, with a local resolver (dnsmasq on loopback).
#
# For N messages (default 200) it runs, one process per message so no resolver cache carries
# over between messages:
#   a) `mailwarden scan --json --ip --helo --from` with [dns] pointing at dnsmasq and two
#      [[dnsbl]] lists: records the auth stage's own `auth.elapsed_ms` and the wall time;
#   b) the same scan with `[auth] enabled = false` and no lists: the wall time (baseline).
# It prints p50/p99 of auth.elapsed_ms, of both wall times, and of the wall-time difference
# (a - b, p50 vs p50 and p99 vs p99): the added time per message for auth + DNSBL.
# The message is unsigned and passes SPF and DMARC on aligned SPF (DKIM: none).
#
# Usage: benches/auth_latency.sh [--no-build] [N]     (needs dnsmasq: package dnsmasq-base)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=1
if [ "${1:-}" = "--no-build" ]; then build=0; shift; fi
n="${1:-200}"
bin="${MAILWARDEN_BIN:-target/release/mailwarden}"
[ "$build" = 1 ] && cargo build --release --quiet
dnsmasq=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)
[ -x "$dnsmasq" ] || { echo "dnsmasq not found (apt-get install dnsmasq-base)" >&2; exit 1; }

tmp=$(mktemp -d)
dns_pid=""
cleanup() { [ -n "$dns_pid" ] && kill "$dns_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$tmp/dnsmasq.conf" <<CONF
local=/test/
txt-record=example.test,"v=spf1 ip4:192.0.2.0/24 -all"
txt-record=mail.example.test,"v=spf1 ip4:192.0.2.0/24 -all"
txt-record=_dmarc.example.test,"v=DMARC1; p=reject"
CONF
"$dnsmasq" --port="$port" --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts \
    --keep-in-foreground --user=root --pid-file= --conf-file="$tmp/dnsmasq.conf" 2>/dev/null &
dns_pid=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

rules="$PWD/rules"
cat > "$tmp/on.toml" <<CONF
[rules]
paths = ["$rules"]
[dns]
nameservers = ["127.0.0.1:$port"]
timeout_ms = 2000
[[dnsbl]]
zone = "bl.test"
symbol = "RBL_TEST"
score = 3.0
[[dnsbl]]
zone = "low.test"
symbol = "RBL_LOW"
score = 1.0
CONF
cat > "$tmp/off.toml" <<CONF
[rules]
paths = ["$rules"]
[auth]
enabled = false
CONF
printf 'From: joe@example.test\r\nTo: u@example.org\r\nSubject: lunch\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\nMessage-ID: <1@x.test>\r\n\r\nAre you hungry yet?\r\n' > "$tmp/m.eml"

now_us() { echo $(( $(date +%s%N) / 1000 )); }
scan() {
    "$bin" scan --config "$1" --json --ip 192.0.2.10 --helo mail.example.test \
        --from joe@example.test "$tmp/m.eml" || true
}
# Warm-up (page cache, dnsmasq).
scan "$tmp/on.toml" > "$tmp/warm.json"
grep -q '"spf":"pass"' "$tmp/warm.json" || grep -q '"spf": *"pass"' "$tmp/warm.json" || {
    echo "warm-up scan did not pass SPF: $(cat "$tmp/warm.json")" >&2; exit 1; }
for i in $(seq "$n"); do
    t0=$(now_us); out=$(scan "$tmp/on.toml"); t1=$(now_us)
    echo $((t1 - t0)) >> "$tmp/wall_on"
    sed -n 's/.*"auth":{[^}]*"elapsed_ms":\([0-9.]*\).*/\1/p' <<<"$out" >> "$tmp/auth_ms"
    t0=$(now_us); scan "$tmp/off.toml" > /dev/null; t1=$(now_us)
    echo $((t1 - t0)) >> "$tmp/wall_off"
done
[ "$(wc -l < "$tmp/auth_ms")" -eq "$n" ] || { echo "auth.elapsed_ms missing in: $out" >&2; exit 1; }

pct() { # file percentile -> value (nearest rank)
    sort -n "$1" | awk -v p="$2" '{ v[NR] = $1 } END { i = int((NR * p + 99) / 100); if (i < 1) i = 1; print v[i] }'
}
ms() { awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; }
a50=$(pct "$tmp/auth_ms" 50); a99=$(pct "$tmp/auth_ms" 99)
on50=$(pct "$tmp/wall_on" 50); on99=$(pct "$tmp/wall_on" 99)
off50=$(pct "$tmp/wall_off" 50); off99=$(pct "$tmp/wall_off" 99)
echo "messages: $n (one scan process each; dnsmasq on 127.0.0.1:$port)"
echo "auth stage (auth.elapsed_ms, SPF x2 + DKIM + ARC + DMARC): p50 ${a50} ms  p99 ${a99} ms"
echo "scan wall time, auth + 2 DNSBL lists: p50 $(ms "$on50") ms  p99 $(ms "$on99") ms"
echo "scan wall time, auth off, no lists:   p50 $(ms "$off50") ms  p99 $(ms "$off99") ms"
echo "added per message (wall, on - off):   p50 $(ms $((on50 - off50))) ms  p99 $(ms $((on99 - off99))) ms"
