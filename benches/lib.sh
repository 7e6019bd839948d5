# shellcheck shell=bash disable=SC2034,SC2154
# Shell helpers shared by benches/load/run.sh and benches/static/run.sh. Sourced, never run:
#
#   BENCH=load   # the log prefix ("[load] ...") and the name of the output directories
#   ROOT=...     # the repository
#   source "$HERE/../lib.sh"
#
# The sourcing script sets `set -euo pipefail` itself. Globals set here for the script:
# PIDS (everything started, stopped on exit), USED_PORTS, OUT_DIR and TMP (bench_dirs),
# SNAKEWAY (snakeway_binary), ROUND_ORDER (round_order), WRK_* (wrk_parse), CG_IR
# (callgrind_count). The script's own STARTED_PID/STARTED_DIR convention is not in here.

PIDS=()
USED_PORTS=" "
TMP=

log() { printf '[%s] %s\n' "$BENCH" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$BENCH" "$*" >&2; exit 1; }

require_positive() { # VAR...: each named variable must hold a positive integer
    local v
    for v in "$@"; do
        [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
    done
}

# ---------------------------------------------------------------------------------------------
# Tools: check, never install.
declare -A TOOL_PKG=(
    [nginx]=nginx-light [wrk]=wrk [h2load]=nghttp2-client [valgrind]=valgrind
    [callgrind_annotate]=valgrind [taskset]=util-linux [getconf]=libc-bin [curl]=curl [gzip]=gzip
    [awk]=gawk [sed]=sed [sort]=coreutils [pgrep]=procps [cargo]="rustup / cargo"
    [rustup]="rustup"
)
require_tools() { # TOOL...: exit 2 naming the missing ones and their Debian packages
    local t missing=()
    for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t (${TOOL_PKG[$t]:-?})"); done
    if ((${#missing[@]})); then
        printf '[%s] missing tools:\n' "$BENCH" >&2
        for t in "${missing[@]}"; do printf '[%s]   %s\n' "$BENCH" "$t" >&2; done
        printf '[%s] on Debian: apt-get install -y nginx-light wrk nghttp2-client valgrind\n' "$BENCH" >&2
        exit 2
    fi
}

# ---------------------------------------------------------------------------------------------
# Output and scratch directories; everything started is tracked in PIDS and stopped on exit.
bench_dirs() { # NAME: OUT_DIR (default $ROOT/bench-out/NAME-<timestamp>), TMP, exit traps
    OUT_DIR=${OUT_DIR:-$ROOT/bench-out/$1-$(date +%Y%m%d-%H%M%S)}
    mkdir -p "$OUT_DIR"
    OUT_DIR=$(cd "$OUT_DIR" && pwd)
    TMP=$(mktemp -d "/tmp/snakeway-$1.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

cleanup() {
    local pid i
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ -n $TMP ]]; then rm -rf "$TMP"; fi
}

forget_pid() { # PID: drop a pid that has been stopped from the cleanup list
    local keep=() p
    for p in ${PIDS[@]+"${PIDS[@]}"}; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=(${keep[@]+"${keep[@]}"})
}

# ---------------------------------------------------------------------------------------------
# Ports and processes.
accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() { # a port in 20000-32767 (below Linux's ephemeral range) nobody listens on
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 12768))
        [[ $USED_PORTS == *" $p "* ]] && continue
        accepts "$p" && continue
        USED_PORTS+="$p "
        echo "$p"
        return 0
    done
    die "no free port found"
}

wait_port() { # PORT PID TIMEOUT LOGFILE: wait until PORT accepts while PID lives
    local port=$1 pid=$2 timeout=$3 logf=$4 deadline=$((SECONDS + $3))
    while ! accepts "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "process $pid exited before listening on $port; its log:"
            tail -n 30 "$logf" >&2 || true
            die "startup failed"
        fi
        ((SECONDS < deadline)) || die "nothing listens on $port after ${timeout}s (log: $logf)"
        sleep 0.2
    done
}

stop_pid() { # PID SIGNAL TIMEOUT: signal and wait for exit, KILL after TIMEOUT seconds
    local pid=$1 sig=$2 deadline=$((SECONDS + $3))
    kill "-$sig" "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "pid $pid did not exit within $3 s of SIG$sig; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.2
    done
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

nginx_worker() { # MASTER: print the pid of the (single) worker of an nginx master
    local master=$1 worker='' i
    for ((i = 0; i < 100; i++)); do
        worker=$(pgrep -P "$master" || true)
        [[ -n $worker ]] && break
        sleep 0.1
    done
    [[ -n $worker && $worker != *[!0-9]* ]] || die "cannot find the nginx worker of master $master (got '$worker')"
    echo "$worker"
}

cpu_ticks() { # PID: utime+stime of PID (all its threads), in clock ticks
    local s
    s=$(cat "/proc/$1/stat") || die "process $1 is gone"
    s=${s##*) }
    awk '{ print $12 + $13 }' <<<"$s"
}

# ---------------------------------------------------------------------------------------------
# Configs.
fill() { # TEMPLATE OUTPUT KEY=VALUE...: replace @KEY@ placeholders
    local tpl=$1 out=$2 expr=() kv
    shift 2
    for kv in "$@"; do expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${expr[@]}" "$tpl" >"$out"
    ! grep -q '@[A-Z_]*@' "$out" || die "unfilled placeholder in $out"
}

# ---------------------------------------------------------------------------------------------
# The Snakeway binary and the record of the machine.
snakeway_binary() { # sets SNAKEWAY: $SNAKEWAY_BIN, or `cargo build --profile profiling --bin snakeway`
    if [[ -n ${SNAKEWAY_BIN:-} ]]; then
        SNAKEWAY=$SNAKEWAY_BIN
    else
        log "building snakeway (cargo build --profile profiling --bin snakeway)"
        (cd "$ROOT" && cargo build --profile profiling --bin snakeway) >&2
        SNAKEWAY=${CARGO_TARGET_DIR:-$ROOT/target}/profiling/snakeway
        [[ $SNAKEWAY == /* ]] || SNAKEWAY=$ROOT/$SNAKEWAY
    fi
    [[ -x $SNAKEWAY ]] || die "snakeway binary '$SNAKEWAY' is not executable"
}

record_machine() { # SETTINGS: write $OUT_DIR/machine.txt (uses NPROC, CLK_TCK, SKIP_CALLGRIND, SNAKEWAY)
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "nproc: $NPROC"
        echo "cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
        echo "kernel: $(uname -sr)"
        echo "clk_tck: $CLK_TCK"
        echo "nginx: $(nginx -v 2>&1)"
        echo "wrk: $(wrk --version 2>&1 | head -n 1 || true)"
        if [[ $SKIP_CALLGRIND != 1 ]]; then
            echo "h2load: $(h2load --version 2>&1 | head -n 1)"
            echo "valgrind: $(valgrind --version 2>&1)"
        fi
        if [[ -n $SNAKEWAY ]]; then
            echo "snakeway: $SNAKEWAY ($("$SNAKEWAY" --version 2>&1 | head -n 1 || true))"
            echo "snakeway git: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
        fi
        echo "settings: $1"
        echo "loadavg at start: $(cat /proc/loadavg)"
    } >"$OUT_DIR/machine.txt"
}

# ---------------------------------------------------------------------------------------------
# Measurement.
round_order() { # ROUND ITEM...: sets ROUND_ORDER, the items reversed every other round (ABBA)
    local r=$1 i
    shift
    ROUND_ORDER=("$@")
    if ((r % 2 == 0)); then
        ROUND_ORDER=()
        for ((i = $#; i >= 1; i--)); do ROUND_ORDER+=("${!i}"); done
    fi
}

# wrk_parse FILE WHAT: sets WRK_REQUESTS, WRK_RPS, WRK_P99 (ms), WRK_SOCKERR (empty if none),
# WRK_NON2XX (empty if none) from a `wrk --latency` output; dies if it completed no request.
wrk_parse() {
    local f=$1 p99raw
    WRK_REQUESTS=$(awk '/ requests in / { print $1; exit }' "$f")
    WRK_RPS=$(awk '/^Requests\/sec:/ { print $2; exit }' "$f")
    p99raw=$(awk '/Latency Distribution/ { d = 1 } d && $1 == "99%" { print $2; exit }' "$f")
    WRK_SOCKERR=$(awk '/Socket errors:/ { for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i; print s + 0; exit }' "$f")
    WRK_NON2XX=$(awk '/Non-2xx or 3xx responses:/ { print $NF; exit }' "$f")
    [[ -n $WRK_REQUESTS && -n $WRK_RPS && -n $p99raw ]] || die "cannot parse $f"
    ((WRK_REQUESTS > 0)) || die "wrk completed no request against $2 ($f)"
    WRK_P99=$(to_ms "$p99raw")
}

cpu_us_per_req() { # TICKS REQUESTS: CPU µs per request, 2 decimals
    awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }'
}

# callgrind_count LABEL PID DIR PORT OUT N URL [H2LOAD-ARGS...]: with PID, started under
# `valgrind --tool=callgrind --callgrind-out-file=OUT` and listening on PORT, serve exactly N
# requests of URL with h2load (output to $OUT_DIR/h2load-LABEL-N.txt, LABEL's spaces as '-'),
# check they all got a 2xx, stop PID, keep DIR/stdout.log next to OUT, set CG_IR to the total Ir.
callgrind_count() {
    local label=$1 pid=$2 dir=$3 port=$4 out=$5 n=$6 url=$7 h2 ok ir
    shift 7
    h2="$OUT_DIR/h2load-${label// /-}-$n.txt"
    timeout 1800 taskset -c "$LOAD_CPU" h2load --h1 -n "$n" -c "$CALLGRIND_CLIENT_CONNECTIONS" -m 1 \
        "$@" "$url" >"$h2" 2>&1 || die "h2load against $label under callgrind failed (see $h2)"
    ok=$(awk '/^status codes:/ { print $3; exit }' "$h2")
    [[ $ok == "$n" ]] || die "$label under callgrind answered ${ok:-0} of $n requests with 2xx (see $h2)"
    stop_pid "$pid" TERM 300
    cp "$dir/stdout.log" "${out%.out}.log"
    [[ -s $out ]] || die "callgrind wrote no $out (see ${out%.out}.log)"
    ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$out")
    [[ -n $ir ]] || die "no summary line in $out"
    log "callgrind $label, $n requests: $ir Ir"
    CG_IR=$ir
}

# ---------------------------------------------------------------------------------------------
# Numbers.
median() { # VALUE...: the median; arguments may themselves be whitespace-separated lists
    local v
    read -ra v <<<"$*"
    printf '%s\n' "${v[@]}" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

to_ms() { # wrk duration (123.45us, 1.23ms, 1.02s, 2.00m) → milliseconds
    awk -v d="$1" 'BEGIN {
        if (d ~ /us$/) { sub(/us$/, "", d); print d / 1000 }
        else if (d ~ /ms$/) { sub(/ms$/, "", d); print d + 0 }
        else if (d ~ /m$/) { sub(/m$/, "", d); print d * 60000 }
        else if (d ~ /s$/) { sub(/s$/, "", d); print d * 1000 }
        else { print "nan" } }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "–"; else printf "%.2f", a / b }'; }
