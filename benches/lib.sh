# benches/lib.sh — shell helpers the load scripts share (sourced, never run): finding the
# Postfix load tools, loopback port checks, stopping what a script started, CPU time of a pid.
# Everything here touches only 127.0.0.1 and processes the calling script started.

# The path of program NAME: on PATH or where Debian puts Postfix's tools; 1 when absent.
find_tool() {
    local name=$1 d
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
    for d in /usr/sbin /usr/lib/postfix /usr/libexec/postfix /usr/local/sbin /usr/local/bin; do
        [[ -x $d/$name ]] && { echo "$d/$name"; return 0; }
    done
    return 1
}

# TERM, then KILL after GRACE seconds (default 5); reaps it. A missing pid is fine.
stop_pid() { # pid, grace seconds
    local pid=$1 grace=${2:-5} i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for (( i = 0; i < grace * 20; i++ )); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port pid seconds -> 0 when something accepts on port while pid lives
    local port=$1 pid=$2 i
    for (( i = 0; i < $3 * 20; i++ )); do
        kill -0 "$pid" 2>/dev/null || return 1
        port_in_use "$port" && return 0
        sleep 0.05
    done
    return 1
}

cpu_ticks() { # utime + stime of a pid (clock ticks)
    local stat rest
    local -a f
    stat=$(<"/proc/$1/stat")
    rest=${stat##*) }          # fields from 3 on (comm may contain spaces)
    read -r -a f <<<"$rest"
    echo $(( f[11] + f[12] ))  # fields 14, 15
}
