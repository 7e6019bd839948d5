#!/usr/bin/env bash
# Balancing benchmark (issue 10): what each load-balancing strategy costs and what it buys.
#
#   benches/balance/run.sh                   # DURATION=10 ROUNDS=3 N=2000 SLOW_MS=50
#   DURATION=5 ROUNDS=1 SKIP_CALLGRIND=1 benches/balance/run.sh
#
# Snakeway (one worker, CPU 0) proxies to three upstreams, all served by one
# examples/delay_upstream process (CPU 1, with the load generator):
#
# Part 1, latency. The third upstream answers SLOW_MS (default 50) ms later than the other two.
#   For each strategy of STRATEGIES (default "round_robin least_requests"): wrk -t1 -cC
#   --latency for DURATION seconds after a WARMUP, ROUNDS rounds in ABBA order; the figures
#   are the medians over the rounds of req/s, wrk's p50, p90 and p99, the share of the
#   measured requests the slow upstream served (the upstreams count what they serve:
#   GET /__counts), and the mean latency by Little's law (connections / req/s). The last two
#   come first: past a few thousand req/s on this 2-core box, wrk's latency percentiles stop
#   agreeing with its own throughput (its mean exceeds connections / req/s several times over),
#   so read them as indicative only.
#
# Part 2, cost. All three upstreams answer at once. For each strategy of CG_STRATEGIES
#   (default "round_robin failover random least_requests sticky_hash"; sticky_hash hashes the
#   client address): instructions per request under `valgrind --tool=callgrind`,
#   (Ir(5N) − Ir(N)) / 4N with h2load --h1 -c8 serving N and 5N requests, as benches/load
#   does. The summary gives each strategy's difference from round_robin.
#
# Environment:
#   DURATION, ROUNDS, WARMUP, CONNECTIONS (64), N, SKIP_CALLGRIND, SNAKEWAY_BIN, OUT_DIR:
#                   as in benches/load/run.sh
#   SLOW_MS         the slow upstream's extra delay in Part 1 (default 50)
#   STRATEGIES      strategies of Part 1
#   CG_STRATEGIES   strategies of Part 2
#   UPSTREAM_BIN    a built delay_upstream (default: cargo build --profile profiling --example delay_upstream)
#
# Installs nothing; on Debian: apt-get install -y wrk nghttp2-client valgrind.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BENCH=balance
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
source "$HERE/../lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
N=${N:-2000}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
SLOW_MS=${SLOW_MS:-50}
SKIP_CALLGRIND=${SKIP_CALLGRIND:-0}
STRATEGIES=${STRATEGIES:-round_robin least_requests}
CG_STRATEGIES=${CG_STRATEGIES:-round_robin failover random least_requests sticky_hash}
PROXY_CPU=0
LOAD_CPU=1
START_TIMEOUT=30
VALGRIND_START_TIMEOUT=300
CALLGRIND_CLIENT_CONNECTIONS=8

for s in $STRATEGIES $CG_STRATEGIES; do
    case $s in
    round_robin | failover | random | least_requests | sticky_hash) ;;
    *) die "unknown strategy '$s' (round_robin, failover, random, least_requests, sticky_hash)" ;;
    esac
done
require_positive DURATION ROUNDS N WARMUP CONNECTIONS
[[ $SLOW_MS =~ ^[0-9]+$ ]] || die "SLOW_MS must be a number of milliseconds (got '$SLOW_MS')"

need=(wrk taskset getconf curl awk sed sort)
if [[ $SKIP_CALLGRIND != 1 ]]; then need+=(h2load valgrind); fi
if [[ -z ${SNAKEWAY_BIN:-} || -z ${UPSTREAM_BIN:-} ]]; then need+=(cargo); fi
require_tools "${need[@]}"
NPROC=$(getconf _NPROCESSORS_ONLN)
((NPROC >= 2)) || die "needs at least 2 CPUs (Snakeway on CPU $PROXY_CPU, upstreams and client on CPU $LOAD_CPU)"
CLK_TCK=$(getconf CLK_TCK)

bench_dirs balance
snakeway_binary
if [[ -n ${UPSTREAM_BIN:-} ]]; then
    UPSTREAM=$UPSTREAM_BIN
else
    log "building the upstream (cargo build --profile profiling --example delay_upstream)"
    (cd "$ROOT" && cargo build --profile profiling --example delay_upstream) >&2
    UPSTREAM=${CARGO_TARGET_DIR:-$ROOT/target}/profiling/examples/delay_upstream
    [[ $UPSTREAM == /* ]] || UPSTREAM=$ROOT/$UPSTREAM
fi
[[ -x $UPSTREAM ]] || die "upstream binary '$UPSTREAM' is not executable"
record_machine "DURATION=$DURATION ROUNDS=$ROUNDS WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS SLOW_MS=$SLOW_MS N=$N STRATEGIES='$STRATEGIES' CG_STRATEGIES='$CG_STRATEGIES'"

# upstreams_start SLOW: the three upstreams, the third SLOW ms late; sets UP1..UP3, UPSTREAM_PID.
upstreams_start() {
    UP1=$(free_port) UP2=$(free_port) UP3=$(free_port)
    taskset -c "$LOAD_CPU" "$UPSTREAM" "127.0.0.1:$UP1=0" "127.0.0.1:$UP2=0" "127.0.0.1:$UP3=$1" \
        >"$TMP/upstream-$1.log" 2>&1 &
    UPSTREAM_PID=$!
    PIDS+=("$UPSTREAM_PID")
    local port
    for port in "$UP1" "$UP2" "$UP3"; do wait_port "$port" "$UPSTREAM_PID" "$START_TIMEOUT" "$TMP/upstream-$1.log"; done
}

# snakeway_start NAME STRATEGY PORT [VALGRIND...]: sets STARTED_PID and STARTED_DIR.
snakeway_start() {
    local name=$1 strategy=$2 port=$3 dir
    shift 3
    dir="$TMP/$name"
    mkdir -p "$dir"
    fill "$HERE/snakeway.toml.in" "$dir/snakeway.toml" PORT="$port" STRATEGY="$strategy" \
        UP1="$UP1" UP2="$UP2" UP3="$UP3"
    cp "$dir/snakeway.toml" "$OUT_DIR/$name.toml"
    (cd "$dir" && exec taskset -c "$PROXY_CPU" "$@" "$SNAKEWAY" serve -c "$dir/snakeway.toml") >"$dir/stdout.log" 2>&1 &
    STARTED_PID=$!
    STARTED_DIR=$dir
    PIDS+=("$STARTED_PID")
}

slow_count() { # the requests the slow upstream (UP3) has served so far
    curl -sS -m 10 "http://127.0.0.1:$UP3/__counts" | awk -v a="127.0.0.1:$UP3" '$1 == a { print $2 }'
}

percentile_ms() { # FILE PCT: a percentile line of a `wrk --latency` output, in ms
    to_ms "$(awk -v p="$2%" '/Latency Distribution/ { d = 1 } d && $1 == p { print $2; exit }' "$1")"
}

# ---------------------------------------------------------------------------------------------
# Part 1: latency with one slow upstream.
upstreams_start "$SLOW_MS"
log "upstreams on $UP1, $UP2 (0 ms) and $UP3 ($SLOW_MS ms), CPU $LOAD_CPU"
declare -A P50 P90 P99 RPS SLOW LITTLE
printf 'strategy\tround\trequests\treq_per_s\tslow_share_pct\tlittle_mean_ms\tp50_ms\tp90_ms\tp99_ms\tnon_2xx\tsocket_errors\n' >"$OUT_DIR/wrk-results.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
    # shellcheck disable=SC2086
    round_order "$r" $STRATEGIES
    for s in "${ROUND_ORDER[@]}"; do
        port=$(free_port)
        snakeway_start "wrk-$s-$r" "$s" "$port"
        pid=$STARTED_PID
        wait_port "$port" "$pid" "$START_TIMEOUT" "$STARTED_DIR/stdout.log"
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "http://127.0.0.1:$port/" >/dev/null
        f="$OUT_DIR/wrk-$s-$r.txt"
        before=$(slow_count)
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/" >"$f"
        after=$(slow_count)
        wrk_parse "$f" "$s"
        p50=$(percentile_ms "$f" 50)
        p90=$(percentile_ms "$f" 90)
        slow=$(awk -v a="$before" -v b="$after" -v n="$WRK_REQUESTS" 'BEGIN { printf "%.2f", (b - a) * 100 / n }')
        little=$(awk -v c="$CONNECTIONS" -v r="$WRK_RPS" 'BEGIN { printf "%.2f", c * 1000 / r }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$r" "$WRK_REQUESTS" "$WRK_RPS" "$slow" "$little" "$p50" "$p90" "$WRK_P99" \
            "${WRK_NON2XX:-0}" "${WRK_SOCKERR:-0}" >>"$OUT_DIR/wrk-results.tsv"
        [[ -z $WRK_NON2XX ]] || die "$s: $WRK_NON2XX non-2xx answers (see $f)"
        P50[$s]+="$p50 " P90[$s]+="$p90 " P99[$s]+="$WRK_P99 " RPS[$s]+="$WRK_RPS " SLOW[$s]+="$slow " LITTLE[$s]+="$little "
        log "$s round $r: $WRK_RPS req/s, $slow% to the slow upstream, mean $little ms (Little), wrk p50 $p50 ms, p90 $p90 ms, p99 $WRK_P99 ms"
        stop_pid "$pid" TERM 10
    done
done
stop_pid "$UPSTREAM_PID" TERM 10

# ---------------------------------------------------------------------------------------------
# Part 2: instructions per request, every upstream fast.
declare -A IPR
if [[ $SKIP_CALLGRIND != 1 ]]; then
    upstreams_start 0
    printf 'strategy\tN\tIr_N\tIr_5N\tinstructions_per_req\n' >"$OUT_DIR/callgrind-results.tsv"
    for s in $CG_STRATEGIES; do
        declare -A IR=()
        for n in "$N" $((5 * N)); do
            port=$(free_port)
            out="$OUT_DIR/callgrind-$s-$n.out"
            rm -f "$out"
            snakeway_start "callgrind-$s-$n" "$s" "$port" valgrind --tool=callgrind "--callgrind-out-file=$out"
            wait_port "$port" "$STARTED_PID" "$VALGRIND_START_TIMEOUT" "$STARTED_DIR/stdout.log"
            callgrind_count "$s" "$STARTED_PID" "$STARTED_DIR" "$port" "$out" "$n" "http://127.0.0.1:$port/"
            IR[$n]=$CG_IR
        done
        IPR[$s]=$(awk -v a="${IR[$N]}" -v b="${IR[$((5 * N))]}" -v n="$N" 'BEGIN { printf "%.0f", (b - a) / (4 * n) }')
        printf '%s\t%s\t%s\t%s\t%s\n' "$s" "$N" "${IR[$N]}" "${IR[$((5 * N))]}" "${IPR[$s]}" >>"$OUT_DIR/callgrind-results.tsv"
        log "$s: ${IPR[$s]} instructions/request"
    done
    stop_pid "$UPSTREAM_PID" TERM 10
fi

# ---------------------------------------------------------------------------------------------
# Summary.
{
    echo "# Balancing benchmark ($(date -u +%Y-%m-%d))"
    echo
    echo "Three upstreams, the third ${SLOW_MS} ms slower; $ROUNDS rounds of wrk -t1 -c$CONNECTIONS -d${DURATION}s (medians)."
    echo
    echo "| strategy | req/s | to the slow upstream | mean ms (Little) | wrk p50 ms | wrk p90 ms | wrk p99 ms |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for s in $STRATEGIES; do
        echo "| $s | $(median "${RPS[$s]}") | $(median "${SLOW[$s]}") % | $(median "${LITTLE[$s]}") | $(median "${P50[$s]}") | $(median "${P90[$s]}") | $(median "${P99[$s]}") |"
    done
    if [[ $SKIP_CALLGRIND != 1 ]]; then
        echo
        echo "Instructions per request, all upstreams fast (callgrind, N=$N and 5N via h2load --h1 -c$CALLGRIND_CLIENT_CONNECTIONS):"
        echo
        echo "| strategy | instructions/req | vs round_robin |"
        echo "|---|---:|---:|"
        for s in $CG_STRATEGIES; do
            delta=–
            if [[ -n ${IPR[round_robin]:-} ]]; then delta=$((IPR[$s] - IPR[round_robin])); fi
            echo "| $s | ${IPR[$s]} | $delta |"
        done
    fi
} >"$OUT_DIR/summary.md"
cat "$OUT_DIR/summary.md"
log "raw outputs in $OUT_DIR"
