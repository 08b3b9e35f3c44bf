# Shared helpers for benches/rules/*.sh (sourced, not run).
# Peers run on loopback only, with private state under $WORK (a temporary directory).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STOCK=/usr/share/spamassassin
PIDS_TO_STOP=()

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
now() { date +%s.%N; }

need() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found (apt-get install -y $pkg)"
}

# Builds the bench binary and prints its path.
bench_binary() {
    grep -q 'name = "rules_throughput"' "$ROOT/Cargo.toml" ||
        die "Cargo.toml lacks the [[bench]] stanza for rules_throughput (see benches/README.md)"
    local out
    out=$(cd "$ROOT" && cargo bench --bench rules_throughput --no-run 2>&1) || {
        printf '%s\n' "$out" >&2
        die "cargo bench --no-run failed"
    }
    local path
    path=$(printf '%s\n' "$out" | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1)
    [ -n "$path" ] || die "could not find the bench executable in cargo's output"
    case $path in /*) ;; *) path=$ROOT/$path ;; esac
    echo "$path"
}

# Dev corpus files, sorted (spam-1 then easy-ham-1). Never the held-out folders.
corpus_files() {
    local d
    for d in spam-1 easy-ham-1; do
        [ -d "$ROOT/target/corpus/$d" ] || die "target/corpus/$d missing: run scripts/fetch-corpus.sh"
        find "$ROOT/target/corpus/$d" -maxdepth 1 -name '*.txt' | LC_ALL=C sort
    done
}

# CPU time (clock ticks) used so far by a process and its live children, including children
# already reaped (cutime/cstime).
cpu_ticks() {
    local root=$1 total=0 p f
    for p in "$root" $(pgrep -P "$root" 2>/dev/null); do
        [ -r "/proc/$p/stat" ] || continue
        # fields after the ")" of comm: utime=12 stime=13 cutime=14 cstime=15 (1-based from state=1)
        f=$(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12+$13+$14+$15}') || continue
        total=$((total + f))
    done
    echo "$total"
}
TICKS=$(getconf CLK_TCK)

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
}

# start_spamd PORT: spamd with local tests only (-L), as nobody, daemonized with a pidfile.
start_spamd() {
    local port=$1
    need spamd spamd
    need spamc spamc
    spamd -L --listen="127.0.0.1:$port" -u nobody -d -r "$WORK/spamd.pid" \
        -s "$WORK/spamd.log" >/dev/null 2>&1 || die "spamd did not start (see $WORK/spamd.log)"
    local i
    for i in $(seq 1 240); do
        if spamc -d 127.0.0.1 -p "$port" -K >/dev/null 2>&1; then
            SPAMD_PID=$(cat "$WORK/spamd.pid")
            PIDS_TO_STOP+=("$SPAMD_PID")
            log "spamd ready on 127.0.0.1:$port after ~$((i / 4)) s (pid $SPAMD_PID)"
            return 0
        fi
        sleep 0.25
    done
    die "spamd not ready after 60 s (see $WORK/spamd.log)"
}

# start_rspamd: rspamd 3.x with the packaged config, private LOCAL_CONFDIR/DBDIR/RUNDIR/LOGDIR,
# loopback ports 11333 (normal, 2 workers) and 11334 (controller), proxy disabled, and DNS
# pointed at a private dnsmasq that answers NXDOMAIN to everything (no network here; without it
# every RBL lookup waits for a timeout). That is rspamd's equivalent of spamd -L.
start_rspamd() {
    need rspamd rspamd
    need rspamc rspamd
    need dnsmasq dnsmasq-base
    local d=$WORK/rspamd dport
    mkdir -p "$d/etc/local.d" "$d/etc/override.d" "$d/db" "$d/run" "$d/log"
    chown -R _rspamd:_rspamd "$d/db" "$d/run" "$d/log"
    dport=$(free_port)
    cat >"$WORK/dnsmasq.conf" <<EOF
port=$dport
listen-address=127.0.0.1
bind-interfaces
no-resolv
no-hosts
address=/#/
pid-file=$WORK/dnsmasq.pid
EOF
    dnsmasq -C "$WORK/dnsmasq.conf" --user=root || die "dnsmasq did not start"
    sleep 0.3
    PIDS_TO_STOP+=("$(cat "$WORK/dnsmasq.pid")")
    printf 'bind_socket = "127.0.0.1:11333";\ncount = 2;\n' >"$d/etc/local.d/worker-normal.inc"
    printf 'bind_socket = "127.0.0.1:11334";\n' >"$d/etc/override.d/worker-controller.inc"
    printf 'bind_socket = "127.0.0.1:11332";\nenabled = false;\ncount = 0;\n' \
        >"$d/etc/override.d/worker-proxy.inc"
    printf 'dns {\n  nameserver = ["127.0.0.1:%s"];\n  timeout = 1s;\n}\n' "$dport" \
        >"$d/etc/local.d/options.inc"
    if curl -s -m 1 http://127.0.0.1:11333/ping >/dev/null 2>&1; then
        die "something already answers on 127.0.0.1:11333 (another rspamd?)"
    fi
    (cd "$d" && exec rspamd -f -c /etc/rspamd/rspamd.conf -u _rspamd -g _rspamd \
        --var=LOCAL_CONFDIR="$d/etc" --var=DBDIR="$d/db" --var=RUNDIR="$d/run" \
        --var=LOGDIR="$d/log" >"$d/stdout.log" 2>&1) &
    RSPAMD_PID=$!
    PIDS_TO_STOP+=("$RSPAMD_PID")
    local i t0
    t0=$(now)
    for i in $(seq 1 240); do
        kill -0 "$RSPAMD_PID" 2>/dev/null || die "rspamd exited (see $d/log/rspamd.log)"
        curl -s -m 1 http://127.0.0.1:11333/ping 2>/dev/null | grep -q pong && break
        sleep 0.5
    done
    # the hyperscan databases are compiled after the workers listen; wait for them
    for i in $(seq 1 240); do
        grep -q 'normal.*hyperscan database of .* has been loaded' "$d/log/rspamd.log" 2>/dev/null && break
        sleep 0.5
    done
    log "rspamd ready (pid $RSPAMD_PID) after $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s"
}

stop_all() {
    local p i
    for p in "${PIDS_TO_STOP[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS_TO_STOP[@]}"; do
        for i in $(seq 1 40); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.25
        done
    done
    PIDS_TO_STOP=()
}
