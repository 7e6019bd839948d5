#!/usr/bin/env bash
# Load benchmark: Snakeway vs nginx as reverse proxies in front of the same upstream.
#
#   benches/load/run.sh                      # DURATION=10 ROUNDS=3 N=2000
#   DURATION=5 ROUNDS=1 SKIP_CALLGRIND=1 benches/load/run.sh
#   PIPELINE=1 benches/load/run.sh           # + the device pipeline and nginx's access log
#
# Proxies (PROXIES):
#   nginx               nginx, `access_log off` (proxy.nginx.conf.in)
#   nginx-log           the same nginx writing its access log (default `combined` format,
#                       unbuffered) to a file in the scratch directory
#   snakeway            Snakeway without devices (snakeway.toml.in)
#   snakeway-pipeline   the same Snakeway with the builtin pipeline (pipeline-devices.toml.in):
#                       identity + request_filter + structured_logging to a file in the
#                       scratch directory
#
# Everything runs on 127.0.0.1 on free ports found at run time. CPU 0 runs the proxy under
# test (one worker each), CPU 1 runs the upstream (nginx, one worker) and the load generator.
#
# Figures, per proxy:
#   * req/s and p99 latency from `wrk -t1 -c64 --latency` (HTTP/1.1 keep-alive small GETs),
#     median over ROUNDS rounds; the two proxies alternate within each round (ABBA order);
#   * CPU µs per request: utime+stime of the proxy's worker process (/proc/PID/stat fields
#     14+15) over the wrk run, divided by the requests wrk completed;
#   * instructions per request under `valgrind --tool=callgrind`: total Ir of a run that
#     serves N requests and of one that serves 5N (h2load, exact counts), (Ir(5N)-Ir(N))/(4N).
#     This one does not move with the machine's load, unlike the others.
#
# Environment:
#   DURATION        seconds of each measured wrk run (default 10)
#   ROUNDS          measured rounds per proxy (default 3)
#   N               requests of the small callgrind run; the large one serves 5N (default 2000)
#   SKIP_CALLGRIND  1: skip the callgrind part
#   SNAKEWAY_BIN    use this binary instead of `cargo build --release --bin snakeway`
#   PROXIES         which proxies to run (default "nginx snakeway"; with PIPELINE=1
#                   "nginx nginx-log snakeway snakeway-pipeline")
#   PIPELINE        1: the default PROXIES include the pipeline and access-log variants
#   WARMUP          seconds of the wrk warm-up before each measured run (default 2)
#   CONNECTIONS     wrk connections (default 64)
#   OUT_DIR         where raw outputs go (default bench-out/load-<timestamp> in the repo)
#
# The script installs nothing; on Debian the tools come from
#   apt-get install -y nginx-light wrk nghttp2-client valgrind
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
N=${N:-2000}
SKIP_CALLGRIND=${SKIP_CALLGRIND:-0}
PIPELINE=${PIPELINE:-0}
if [[ $PIPELINE == 1 ]]; then
    PROXIES=${PROXIES:-nginx nginx-log snakeway snakeway-pipeline}
else
    PROXIES=${PROXIES:-nginx snakeway}
fi
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CPU=0
LOAD_CPU=1
CALLGRIND_CLIENT_CONNECTIONS=8
START_TIMEOUT=30           # seconds for a native process to accept connections
VALGRIND_START_TIMEOUT=300 # the same under valgrind (~50x slower)

log() { printf '[load] %s\n' "$*" >&2; }
die() { printf '[load] error: %s\n' "$*" >&2; exit 1; }

for p in $PROXIES; do
    case $p in
    nginx | nginx-log | snakeway | snakeway-pipeline) ;;
    *) die "unknown proxy '$p' in PROXIES (nginx, nginx-log, snakeway, snakeway-pipeline)" ;;
    esac
done
for v in DURATION ROUNDS N WARMUP CONNECTIONS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
wants() { [[ " $PROXIES " == *" $1 "* ]]; }
wants_snakeway() { wants snakeway || wants snakeway-pipeline; }

# ---------------------------------------------------------------------------------------------
# Tools: check, never install.
declare -A PKG=(
    [nginx]=nginx-light [wrk]=wrk [h2load]=nghttp2-client [valgrind]=valgrind
    [callgrind_annotate]=valgrind [taskset]=util-linux [getconf]=libc-bin [curl]=curl
    [awk]=gawk [sed]=sed [sort]=coreutils [pgrep]=procps [cargo]="rustup / cargo"
)
need=(nginx wrk taskset getconf curl awk sed sort pgrep)
if [[ $SKIP_CALLGRIND != 1 ]]; then need+=(h2load valgrind callgrind_annotate); fi
if wants_snakeway && [[ -z ${SNAKEWAY_BIN:-} ]]; then need+=(cargo); fi
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t (${PKG[$t]})"); done
if ((${#missing[@]})); then
    printf '[load] missing tools:\n' >&2
    printf '[load]   %s\n' "${missing[@]}" >&2
    printf '[load] on Debian: apt-get install -y nginx-light wrk nghttp2-client valgrind\n' >&2
    exit 2
fi
NPROC=$(getconf _NPROCESSORS_ONLN)
((NPROC >= 2)) || die "needs at least 2 CPUs (proxy on CPU $PROXY_CPU, upstream and client on CPU $LOAD_CPU)"
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------------------
# Output and scratch directories; everything started is tracked and stopped on exit.
OUT_DIR=${OUT_DIR:-$ROOT/bench-out/load-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
TMP=$(mktemp -d /tmp/snakeway-load.XXXXXX)
PIDS=()

cleanup() {
    local pid i
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() { # drop a pid that has been stopped from the cleanup list
    local keep=() p
    for p in ${PIDS[@]+"${PIDS[@]}"}; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=(${keep[@]+"${keep[@]}"})
}

# ---------------------------------------------------------------------------------------------
# Helpers.
accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

USED_PORTS=" "
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

access_log_of() { # PROXY: the @ACCESS_LOG@ of an nginx proxy
    if [[ $1 == nginx-log ]]; then echo "DIR/access.log"; else echo off; fi
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

cpu_ticks() { # utime+stime of PID (all its threads), in clock ticks
    local s
    s=$(cat "/proc/$1/stat") || die "process $1 is gone"
    s=${s##*) }
    awk '{ print $12 + $13 }' <<<"$s"
}

fill() { # TEMPLATE OUTPUT KEY=VALUE...: replace @KEY@ placeholders
    local tpl=$1 out=$2 expr=() kv
    shift 2
    for kv in "$@"; do expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${expr[@]}" "$tpl" >"$out"
    ! grep -q '@[A-Z_]*@' "$out" || die "unfilled placeholder in $out"
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

to_ms() { # wrk duration (123.45us, 1.23ms, 1.02s, 2.00m) → milliseconds
    awk -v d="$1" 'BEGIN {
        if (d ~ /us$/) { sub(/us$/, "", d); print d / 1000 }
        else if (d ~ /ms$/) { sub(/ms$/, "", d); print d + 0 }
        else if (d ~ /m$/) { sub(/m$/, "", d); print d * 60000 }
        else if (d ~ /s$/) { sub(/s$/, "", d); print d * 1000 }
        else { print "nan" } }'
}

check_body() { # PORT: the proxy must answer 200 with the upstream's body
    local port=$1 got
    got=$(curl -sS -m 10 -o - -w ' %{http_code}' "http://127.0.0.1:$port/") || die "curl to port $port failed"
    [[ $got == $'hello from upstream\n 200' ]] || die "port $port answered '$got', not the upstream's 200"
}

# nginx_start NAME TEMPLATE PORT CPU GLOBALS [VALGRIND...]: runs nginx in the foreground
# (daemon off) in the background of this script; sets STARTED_PID and STARTED_DIR. The
# template's @ACCESS_LOG@ is $ACCESS_LOG (default `off`; `DIR/...` is put in the scratch dir).
nginx_start() {
    local name=$1 tpl=$2 port=$3 cpu=$4 globals=$5 dir access_log
    shift 5
    dir="$TMP/$name"
    mkdir -p "$dir/tmp" "$dir/logs"
    access_log=${ACCESS_LOG:-off}
    access_log=${access_log//DIR/$dir}
    fill "$tpl" "$dir/nginx.conf" DIR="$dir" PORT="$port" UPSTREAM_PORT="${UPSTREAM_PORT:-0}" \
        ACCESS_LOG="$access_log"
    cp "$dir/nginx.conf" "$OUT_DIR/$name.nginx.conf"
    taskset -c "$cpu" "$@" nginx -p "$dir/" -c "$dir/nginx.conf" -g "$globals" >"$dir/stdout.log" 2>&1 &
    STARTED_PID=$!
    STARTED_DIR=$dir
    PIDS+=("$STARTED_PID")
}

# snakeway_start NAME PROXY PORT CPU [VALGRIND...]: PROXY is snakeway or snakeway-pipeline
# (the same config plus pipeline-devices.toml.in); sets STARTED_PID and STARTED_DIR.
snakeway_start() {
    local name=$1 proxy=$2 port=$3 cpu=$4 dir
    shift 4
    dir="$TMP/$name"
    mkdir -p "$dir"
    fill "$HERE/snakeway.toml.in" "$dir/snakeway.toml" PORT="$port" UPSTREAM_PORT="$UPSTREAM_PORT"
    if [[ $proxy == snakeway-pipeline ]]; then
        fill "$HERE/pipeline-devices.toml.in" "$dir/devices.toml" DIR="$dir"
        cat "$dir/devices.toml" >>"$dir/snakeway.toml"
    fi
    cp "$dir/snakeway.toml" "$OUT_DIR/$name.toml"
    SNAKEWAY_LOG=warn taskset -c "$cpu" "$@" "$SNAKEWAY" serve -c "$dir/snakeway.toml" >"$dir/stdout.log" 2>&1 &
    STARTED_PID=$!
    STARTED_DIR=$dir
    PIDS+=("$STARTED_PID")
}

# ---------------------------------------------------------------------------------------------
# Snakeway binary.
SNAKEWAY=
if wants_snakeway; then
    if [[ -n ${SNAKEWAY_BIN:-} ]]; then
        SNAKEWAY=$SNAKEWAY_BIN
    else
        log "building snakeway (cargo build --release --bin snakeway)"
        (cd "$ROOT" && cargo build --release --bin snakeway) >&2
        SNAKEWAY=${CARGO_TARGET_DIR:-$ROOT/target}/release/snakeway
        [[ $SNAKEWAY == /* ]] || SNAKEWAY=$ROOT/$SNAKEWAY
    fi
    [[ -x $SNAKEWAY ]] || die "snakeway binary '$SNAKEWAY' is not executable"
fi

# ---------------------------------------------------------------------------------------------
# Record the machine and versions.
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
    echo "settings: DURATION=$DURATION ROUNDS=$ROUNDS N=$N WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS SKIP_CALLGRIND=$SKIP_CALLGRIND PIPELINE=$PIPELINE PROXIES='$PROXIES'"
    echo "loadavg at start: $(cat /proc/loadavg)"
} >"$OUT_DIR/machine.txt"
log "raw outputs in $OUT_DIR"

# ---------------------------------------------------------------------------------------------
# Upstream (stays up for the whole run).
UPSTREAM_PORT=$(free_port)
nginx_start upstream "$HERE/upstream.nginx.conf.in" "$UPSTREAM_PORT" "$LOAD_CPU" 'daemon off;'
UPSTREAM_PID=$STARTED_PID
wait_port "$UPSTREAM_PORT" "$UPSTREAM_PID" "$START_TIMEOUT" "$STARTED_DIR/stdout.log"
check_body "$UPSTREAM_PORT"
log "upstream nginx on 127.0.0.1:$UPSTREAM_PORT (CPU $LOAD_CPU)"

# ---------------------------------------------------------------------------------------------
# Part 1: throughput, latency and CPU time per request, with wrk.
declare -A PORT WORKER MAIN RPS P99 CPU_US SENT LOGDIR
RESULTS="$OUT_DIR/wrk-results.tsv"
printf 'round\tproxy\trequests\treq_per_s\tp99_ms\tcpu_ticks\tcpu_us_per_req\tsocket_errors\tnon_2xx\n' >"$RESULTS"

for p in $PROXIES; do
    PORT[$p]=$(free_port)
    case $p in
    nginx | nginx-log)
        ACCESS_LOG=$(access_log_of "$p") nginx_start "proxy-$p" "$HERE/proxy.nginx.conf.in" "${PORT[$p]}" "$PROXY_CPU" 'daemon off;'
        master=$STARTED_PID
        wait_port "${PORT[$p]}" "$master" "$START_TIMEOUT" "$STARTED_DIR/stdout.log"
        worker=
        for ((i = 0; i < 100; i++)); do
            worker=$(pgrep -P "$master" || true)
            [[ -n $worker ]] && break
            sleep 0.1
        done
        [[ -n $worker && $worker != *[!0-9]* ]] || die "cannot find the nginx worker of master $master (got '$worker')"
        WORKER[$p]=$worker
        MAIN[$p]=$master
        ;;
    snakeway | snakeway-pipeline)
        snakeway_start "proxy-$p" "$p" "${PORT[$p]}" "$PROXY_CPU"
        wait_port "${PORT[$p]}" "$STARTED_PID" "$START_TIMEOUT" "$STARTED_DIR/stdout.log"
        WORKER[$p]=$STARTED_PID
        MAIN[$p]=$STARTED_PID
        ;;
    esac
    LOGDIR[$p]=$STARTED_DIR
    check_body "${PORT[$p]}"
    SENT[$p]=1
    log "$p on 127.0.0.1:${PORT[$p]} (CPU $PROXY_CPU, measured pid ${WORKER[$p]})"
done

order=($PROXIES)
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2 == 0)); then # ABBA: reverse the order every other round
        rev=()
        for ((i = ${#order[@]} - 1; i >= 0; i--)); do rev+=("${order[i]}"); done
        this_round=("${rev[@]}")
    else
        this_round=("${order[@]}")
    fi
    for p in "${this_round[@]}"; do
        url="http://127.0.0.1:${PORT[$p]}/"
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >"$OUT_DIR/wrk-$p-warmup-$r.txt" 2>&1
        SENT[$p]=$((${SENT[$p]} + $(awk '/ requests in / { print $1; exit }' "$OUT_DIR/wrk-$p-warmup-$r.txt")))
        before=$(cpu_ticks "${WORKER[$p]}")
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$OUT_DIR/wrk-$p-$r.txt" 2>&1
        after=$(cpu_ticks "${WORKER[$p]}")
        f="$OUT_DIR/wrk-$p-$r.txt"
        requests=$(awk '/ requests in / { print $1; exit }' "$f")
        rps=$(awk '/^Requests\/sec:/ { print $2; exit }' "$f")
        p99raw=$(awk '/Latency Distribution/ { d = 1 } d && $1 == "99%" { print $2; exit }' "$f")
        sockerr=$(awk '/Socket errors:/ { for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i; print s + 0; exit }' "$f")
        non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF; exit }' "$f")
        [[ -n $requests && -n $rps && -n $p99raw ]] || die "cannot parse $f"
        ((requests > 0)) || die "wrk completed no request against $p ($f)"
        p99=$(to_ms "$p99raw")
        ticks=$((after - before))
        cpu_us=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$p" "$requests" "$rps" "$p99" "$ticks" "$cpu_us" \
            "${sockerr:-0}" "${non2xx:-0}" >>"$RESULTS"
        SENT[$p]=$((${SENT[$p]} + requests))
        RPS[$p]+="$rps "
        P99[$p]+="$p99 "
        CPU_US[$p]+="$cpu_us "
        log "round $r/$ROUNDS $p: $rps req/s, p99 ${p99} ms, $cpu_us CPU µs/req ($requests requests, $ticks ticks)"
        if [[ -n $non2xx || ${sockerr:-0} != 0 ]]; then
            log "WARNING: $p had ${non2xx:-0} non-2xx responses and ${sockerr:-0} socket errors (see $f)"
        fi
    done
done

for p in $PROXIES; do
    stop_pid "${MAIN[$p]}" TERM 30
done

# Access-log lines written vs requests completed (wrk does not count the responses still in
# flight when a run ends, so up to CONNECTIONS lines per wrk run may come on top).
printf 'proxy\trequests_completed\tlog_lines\tlog_bytes\n' >"$OUT_DIR/access-log.tsv"
for p in $PROXIES; do
    f="${LOGDIR[$p]}/access.log"
    [[ -f $f ]] || continue
    lines=$(wc -l <"$f")
    bytes=$(wc -c <"$f")
    printf '%s\t%s\t%s\t%s\n' "$p" "${SENT[$p]}" "$lines" "$bytes" >>"$OUT_DIR/access-log.tsv"
    head -n 2 "$f" >"$OUT_DIR/access-log-sample-$p.txt"
    log "$p wrote $lines access-log lines ($bytes bytes) for ${SENT[$p]} completed requests"
    rm -f "$f"
done

# ---------------------------------------------------------------------------------------------
# Part 2: instructions per request under callgrind.
declare -A IPR
callgrind_run() { # PROXY COUNT → sets CG_IR to the total Ir (no subshell: it starts processes)
    local p=$1 n=$2 port name out h2 ir ok
    port=$(free_port)
    name="callgrind-$p-$n"
    out="$OUT_DIR/$name.out"
    rm -f "$out"
    local vg=(valgrind --tool=callgrind "--callgrind-out-file=$out")
    case $p in
    nginx | nginx-log)
        ACCESS_LOG=$(access_log_of "$p") nginx_start "$name" "$HERE/proxy.nginx.conf.in" "$port" "$PROXY_CPU" \
            'daemon off; master_process off;' "${vg[@]}"
        ;;
    snakeway | snakeway-pipeline) snakeway_start "$name" "$p" "$port" "$PROXY_CPU" "${vg[@]}" ;;
    esac
    local pid=$STARTED_PID dir=$STARTED_DIR
    wait_port "$port" "$pid" "$VALGRIND_START_TIMEOUT" "$dir/stdout.log"
    h2="$OUT_DIR/h2load-$p-$n.txt"
    timeout 1800 taskset -c "$LOAD_CPU" h2load --h1 -n "$n" -c "$CALLGRIND_CLIENT_CONNECTIONS" -m 1 \
        "http://127.0.0.1:$port/" >"$h2" 2>&1 || die "h2load against $p under callgrind failed (see $h2)"
    ok=$(awk '/^status codes:/ { print $3; exit }' "$h2")
    [[ $ok == "$n" ]] || die "$p under callgrind answered ${ok:-0} of $n requests with 2xx (see $h2)"
    stop_pid "$pid" TERM 300
    cp "$dir/stdout.log" "$OUT_DIR/$name.log"
    [[ -s $out ]] || die "callgrind wrote no $out (see $OUT_DIR/$name.log)"
    ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$out")
    [[ -n $ir ]] || die "no summary line in $out"
    log "callgrind $p, $n requests: $ir Ir"
    CG_IR=$ir
}

if [[ $SKIP_CALLGRIND != 1 ]]; then
    printf 'proxy\tN\tIr_N\tIr_5N\tinstructions_per_req\n' >"$OUT_DIR/callgrind-results.tsv"
    for p in $PROXIES; do
        callgrind_run "$p" "$N"
        small=$CG_IR
        callgrind_run "$p" $((5 * N))
        large=$CG_IR
        IPR[$p]=$(awk -v a="$small" -v b="$large" -v n="$N" 'BEGIN { printf "%.0f", (b - a) / (4 * n) }')
        printf '%s\t%s\t%s\t%s\t%s\n' "$p" "$N" "$small" "$large" "${IPR[$p]}" >>"$OUT_DIR/callgrind-results.tsv"
        for mode in self inclusive; do
            incl=no
            [[ $mode == inclusive ]] && incl=yes
            callgrind_annotate --auto=no --inclusive=$incl "$OUT_DIR/callgrind-$p-$((5 * N)).out" \
                >"$OUT_DIR/callgrind-$p-$((5 * N)).annotate-$mode.txt" 2>&1 || true
        done
        # Self cost summed per function name (the annotate output splits a function by the
        # source file each inlined piece came from), as a share of the whole run.
        awk -v total="$large" '
            /file:function/ { table = 1; next }
            table && /^$/ { exit }
            table && /^ *[0-9,]+ +\( *[0-9.]+%\)  / {
                ir = $1; gsub(/,/, "", ir)
                fn = $0; sub(/^ *[0-9,]+ +\( *[0-9.]+%\)  /, "", fn)
                sub(/ \[[^]]*\]$/, "", fn); sub(/^[^ ]*\.(rs|c|S|h|cc|cpp):/, "", fn); sub(/^\?\?\?:/, "", fn)
                sum[fn] += ir
            }
            END { for (f in sum) printf "%14d %6.2f%%  %s\n", sum[f], 100 * sum[f] / total, f }' \
            "$OUT_DIR/callgrind-$p-$((5 * N)).annotate-self.txt" | sort -rn \
            >"$OUT_DIR/callgrind-$p-$((5 * N)).self-by-function.txt" || true
        log "$p: ${IPR[$p]} instructions per request"
    done
fi

stop_pid "$UPSTREAM_PID" TERM 30
echo "loadavg at end: $(cat /proc/loadavg)" >>"$OUT_DIR/machine.txt"

# ---------------------------------------------------------------------------------------------
# Report.
declare -A M_RPS M_P99 M_CPU
for p in $PROXIES; do
    M_RPS[$p]=$(median ${RPS[$p]})
    M_P99[$p]=$(median ${P99[$p]})
    M_CPU[$p]=$(median ${CPU_US[$p]})
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "–"; else printf "%.2f", a / b }'; }
{
    echo "| proxy | req/s (median) | p99 ms (median) | CPU µs/req (median) | instructions/req |"
    echo "|---|---:|---:|---:|---:|"
    for p in $PROXIES; do
        printf '| %s | %.0f | %.2f | %.2f | %s |\n' "$p" "${M_RPS[$p]}" "${M_P99[$p]}" "${M_CPU[$p]}" "${IPR[$p]:-–}"
    done
    ratio_row() { # A B: the row "A / B"
        wants "$1" && wants "$2" || return 0
        printf '| %s / %s | %s | %s | %s | %s |\n' "$1" "$2" \
            "$(ratio "${M_RPS[$1]}" "${M_RPS[$2]}")" \
            "$(ratio "${M_P99[$1]}" "${M_P99[$2]}")" \
            "$(ratio "${M_CPU[$1]}" "${M_CPU[$2]}")" \
            "$(ratio "${IPR[$1]:-}" "${IPR[$2]:-}")"
    }
    ratio_row snakeway nginx
    ratio_row snakeway-pipeline snakeway
    ratio_row nginx-log nginx
    ratio_row snakeway-pipeline nginx-log
    echo
    echo "$ROUNDS rounds of wrk -t1 -c$CONNECTIONS -d${DURATION}s (after ${WARMUP}s warm-up each); callgrind: N=$N and 5N requests via h2load --h1 -c$CALLGRIND_CLIENT_CONNECTIONS."
    echo "$(grep -E '^(nproc|cpu|loadavg)' "$OUT_DIR/machine.txt" | paste -sd ';' | sed 's/;/; /g')"
} | tee "$OUT_DIR/summary.md"
ln -sfn "$(basename "$OUT_DIR")" "$(dirname "$OUT_DIR")/load-latest" 2>/dev/null || true
log "raw outputs in $OUT_DIR"
