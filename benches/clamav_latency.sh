#!/usr/bin/env bash
# clamav_latency.sh — time the clamd stage adds per message, with a local clamd.
#
# Starts a private clamd (Debian's clamav-daemon; loopback TCP port; the project's EICAR-only
# signature database from tests/clamav/, so nothing is downloaded) and two release proxies
# delivering to a Maildir: one with [clamav] enabled, one without. For N messages of each kind
# (default 200) it sends each message once to both, alternating, over one kept-open SMTP session
# per proxy, and prints p50/p99 of
#   - the clamd stage inside the proxy: the proxy's own per-scan debug log line ("clamav scan
#     elapsed_ms=…": connect + INSTREAM + clamd's reply, as made for every message);
#   - the time from DATA to the end-of-data reply, with and without clamav (the stage runs
#     alongside the rules, so the difference can be smaller than the stage).
# Message kinds: a 4 KB plain-text message; a 124 KB message with a 90 KB base64 attachment
# (clamd decodes MIME); EICAR inside a deflated zip inside MIME (found: 554).
#
# With only the test signatures, clamd's matching is cheap: a production clamd with the
# official databases (~1.2 GiB RAM) spends more per message on matching; the transport and
# MIME/zip decoding shown here stay the same.
#
# Usage: benches/clamav_latency.sh [--no-build] [N]   (needs clamd: package clamav-daemon)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=1
if [ "${1:-}" = "--no-build" ]; then build=0; shift; fi
n="${1:-200}"
bin="${MAILWARDEN_BIN:-target/release/mailwarden}"
[ "$build" = 1 ] && cargo build --release --quiet
clamd=$(command -v clamd || echo /usr/sbin/clamd)
[ -x "$clamd" ] || { echo "clamd not found (scripts/test.sh installs it, or apt-get install clamav-daemon)" >&2; exit 1; }

tmp=$(mktemp -d)
clamd_pid=""
cleanup() { [ -n "$clamd_pid" ] && kill "$clamd_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir "$tmp/db"
cp tests/clamav/test.hdb tests/clamav/test.ndb "$tmp/db/"
cat > "$tmp/clamd.conf" <<CONF
Foreground yes
DatabaseDirectory $tmp/db
TCPSocket $port
TCPAddr 127.0.0.1
PidFile $tmp/clamd.pid
LogFile $tmp/clamd.log
StreamMaxLength 25M
MaxThreads 4
SelfCheck 0
CONF
"$clamd" -c "$tmp/clamd.conf" >/dev/null 2>&1 &
clamd_pid=$!
up=0
for _ in $(seq 300); do
    if python3 - "$port" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"zPING\0")
sys.exit(0 if s.recv(16) == b"PONG\0" else 1)
PY
    then up=1; break; fi
    sleep 0.1
done
[ "$up" = 1 ] || { echo "clamd did not answer PING:" >&2; cat "$tmp/clamd.log" >&2; exit 1; }

rules="$PWD/rules"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Two proxies on the same rules, one with [clamav] enabled, one without; both deliver to a
# Maildir in $tmp. The clamav one logs each scan's time (debug line "clamav scan").
start_proxy() { # name clamav(0|1) -> port on stdout
    local name=$1 av=$2 p
    p=$(free_port)
    {
        printf '[server]\nlisten = ["127.0.0.1:%s"]\nhostname = "mx.example.test"\n' "$p"
        printf '[upstream]\nurl = "maildir:%s/mail-%s"\n' "$tmp" "$name"
        printf '[rules]\npaths = ["%s"]\nwatch = false\n[auth]\nenabled = false\n' "$rules"
        printf '[log]\nlevel = "info,mailwarden::filter::clamav=debug"\n'
        printf '[metrics]\nlisten = ""\n'   # two proxies: no metrics port for either
        if [ "$av" = 1 ]; then
            printf '[clamav]\nenabled = true\naddress = "127.0.0.1:%s"\n' "$port"
        fi
    } > "$tmp/$name.toml"
    env -u RUST_LOG NO_COLOR=1 "$bin" serve --config "$tmp/$name.toml" > "$tmp/$name.log" 2>&1 &
    echo $! > "$tmp/$name.pid"
    for _ in $(seq 100); do grep -q "listening on" "$tmp/$name.log" && break; sleep 0.1; done
    grep -q "listening on" "$tmp/$name.log" || { echo "mailwarden ($name) did not start:" >&2; cat "$tmp/$name.log" >&2; exit 1; }
    echo "$p"
}
cleanup() {
    for f in "$tmp"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
    [ -n "$clamd_pid" ] && kill "$clamd_pid" 2>/dev/null
    rm -rf "$tmp"
}
on_port=$(start_proxy on 1)
off_port=$(start_proxy off 0)

# The messages (CRLF) and the timed SMTP sessions, with Python's standard library. For each
# message: MAIL, RCPT, DATA on one kept-open session per proxy, alternating between the two
# proxies; the time is from DATA to the end-of-data reply.
python3 - "$tmp" "$n" "$on_port" "$off_port" <<'PY'
import base64, io, os, smtplib, sys, time, zipfile
tmp, n, on_port, off_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
head = ("From: joe@example.test\r\nTo: u@example.org\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n"
        "Message-ID: <{}@x.test>\r\nMIME-Version: 1.0\r\n")
def b64(data):
    s = base64.b64encode(data).decode()
    return "\r\n".join(s[i:i + 76] for i in range(0, len(s), 76))
def mixed(name, subject, fname, ctype, data):
    return (head.format(name) + f"Subject: {subject}\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
            f'--b\r\nContent-Type: {ctype}; name="{fname}"\r\nContent-Transfer-Encoding: base64\r\n'
            f'Content-Disposition: attachment; filename="{fname}"\r\n\r\n{b64(data)}\r\n--b--\r\n')
text = "The quarterly figures are attached to the wiki page; see you at ten.\r\n" * 60
eicar = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("readme.txt", "nothing here\n")
    z.writestr("invoice.com", eicar)
kinds = [
    ("text", head.format("text") + "Subject: lunch\r\nContent-Type: text/plain\r\n\r\n" + text, 250),
    ("attach", mixed("attach", "report", "report.pdf", "application/pdf", os.urandom(90 * 1024)), 250),
    ("eicar-zip", mixed("eicar", "invoice", "invoice.zip", "application/zip", buf.getvalue()), 554),
]
def pct(values, p):
    v = sorted(values)
    return v[max(0, min(len(v) - 1, (len(v) * p + 99) // 100 - 1))]
def timed(s, msg):
    s.mail("joe@example.test")
    s.rcpt("u@example.org")
    t0 = time.perf_counter()
    code, _ = s.data(msg.encode())
    t1 = time.perf_counter()
    if code != 250:
        s.rset()
    return code, (t1 - t0) * 1000
out = open(f"{tmp}/results.txt", "w")
for kind, msg, expect in kinds:
    on, off = smtplib.SMTP("127.0.0.1", on_port), smtplib.SMTP("127.0.0.1", off_port)
    on.ehlo("bench.example.test"); off.ehlo("bench.example.test")
    for _ in range(5):  # warm-up
        timed(on, msg); timed(off, msg)
    with open(f"{tmp}/on.log") as f:
        mark = len(f.read())
    t_on, t_off = [], []
    for _ in range(n):
        code, ms = timed(on, msg)
        if code != expect:
            sys.exit(f"{kind}: expected {expect} from the clamav proxy, got {code}")
        t_on.append(ms)
        t_off.append(timed(off, msg)[1])
    on.quit(); off.quit()
    time.sleep(0.2)
    with open(f"{tmp}/on.log") as f:
        lines = f.read()[mark:].splitlines()
    stage = [float(l.split("elapsed_ms=")[1].split()[0]) for l in lines if "clamav scan" in l]
    if len(stage) != n:
        sys.exit(f"{kind}: {len(stage)} 'clamav scan' log lines for {n} messages")
    out.write(f"{kind:<9} {len(msg):>7} bytes  clamd stage p50 {pct(stage, 50):.2f} ms  p99 {pct(stage, 99):.2f} ms"
              f"   end-of-data reply with/without clamav: p50 {pct(t_on, 50):.2f}/{pct(t_off, 50):.2f} ms"
              f"  p99 {pct(t_on, 99):.2f}/{pct(t_off, 99):.2f} ms\n")
PY
echo "messages: $n per kind through mailwarden (release), clamd on 127.0.0.1:$port with the test signatures only"
cat "$tmp/results.txt"
