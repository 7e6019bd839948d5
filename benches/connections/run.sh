#!/usr/bin/env bash
# Connection-scale benchmark: what an idle keep-alive connection costs, Snakeway beside nginx.
#
#   benches/connections/run.sh                    # N=10000 ROUNDS=3 CHURN=5000
#   N=2000 ROUNDS=1 CHURN=500 benches/connections/run.sh
#
# Both servers run one worker on CPU 0 (nginx `worker_processes 1`, Snakeway `threads = 1`)
# and answer GET / with a synthetic 200 ("ok\n"); the clients run on CPU 1. Every server is
# started afresh for each measurement, so memory freed by an earlier one cannot be reused.
#
# Figures, per server:
#   * RSS per idle connection, for h1 (HTTP/1.1 plain), h1s (HTTP/1.1 over TLS), h2c
#     (prior-knowledge HTTP/2) and h2s (HTTP/2 over TLS, ALPN): `client.py hold` opens N
#     connections, sends one GET / on each and reads its answer, then holds them idle.
#     (VmRSS with them held − VmRSS before, after 16 warm-up connections of the same protocol
#     opened and closed) / N, from
#     /proc/PID/status of the worker (nginx's worker process, Snakeway's only process).
#   * p99 of normal requests (`wrk -t1 -c16 --latency`, DURATION seconds, new connections)
#     with no idle load and while the N idle connections of each protocol are held.
#   * CPU µs per request when every request opens a new connection (`client.py churn`,
#     CHURN requests, 4 client threads, `connection: close`): plain (h1), TLS with a full
#     handshake each time (h1s), TLS resuming the thread's previous session (h1s-resume; the
#     number of handshakes that did resume is logged and written to the summary).
#     CPU time of the worker's threads over the run (/proc/PID/task/*/schedstat, in ns: the
#     100 Hz ticks of /proc/PID/stat are too coarse here) / requests; median of ROUNDS rounds, the two
#     servers alternating (ABBA); the ratio to nginx is of the same run.
#
# Both use an ECDSA P-256 certificate made here with openssl, TLS 1.2 and 1.3; nginx keeps its
# defaults for resumption (TLS 1.3 session tickets with a per-process key); Snakeway its own.
#
# File descriptors: the script raises its soft `ulimit -n` to the hard limit and logs both;
# N is lowered to fit (each side needs N descriptors plus some) and the summary says so.
#
# Environment:
#   N            idle connections per protocol (default 10000)
#   CHURN        requests of each new-connection CPU run (default 5000)
#   ROUNDS       rounds of the CPU runs (default 3)
#   DURATION     seconds of each wrk p99 run (default 5)
#   PROTOS       idle protocols to measure (default "h1 h1s h2c h2s")
#   CHURN_PROTOS new-connection CPU runs (default "h1 h1s h1s-resume")
#   SNAKEWAY_BIN use this binary instead of `cargo build --profile profiling --bin snakeway`
#   OUT_DIR      raw outputs (default bench-out/connections-<timestamp> in the repository)
#
# The script installs nothing; on Debian: apt-get install -y nginx-light wrk python3 openssl.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BENCH=connections
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
source "$HERE/../lib.sh"

N=${N:-10000}
CHURN=${CHURN:-5000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
PROTOS=${PROTOS:-h1 h1s h2c h2s}
read -ra CHURN_PROTOS <<<"${CHURN_PROTOS:-h1 h1s h1s-resume}"
for p in "${CHURN_PROTOS[@]}"; do
    case $p in h1 | h1s | h1s-resume) ;; *) die "unknown churn protocol '$p' (h1 h1s h1s-resume)" ;; esac
done
SKIP_CALLGRIND=1
PROXY_CPU=0
LOAD_CPU=1
START_TIMEOUT=30
CLIENT=$HERE/client.py
require_positive N CHURN ROUNDS DURATION
for p in $PROTOS; do
    case $p in h1 | h1s | h2c | h2s) ;; *) die "unknown protocol '$p' in PROTOS (h1 h1s h2c h2s)" ;; esac
done

need=(nginx wrk taskset getconf openssl python3 awk sed sort pgrep)
if [[ -z ${SNAKEWAY_BIN:-} ]]; then need+=(cargo); fi
require_tools "${need[@]}"
NPROC=$(getconf _NPROCESSORS_ONLN)
((NPROC >= 2)) || die "needs at least 2 CPUs"
CLK_TCK=$(getconf CLK_TCK)

# File descriptors: the soft limit up to the hard one; N fits below it.
HARD_NOFILE=$(ulimit -Hn)
if [[ $HARD_NOFILE != unlimited ]]; then ulimit -Sn "$HARD_NOFILE"; fi
SOFT_NOFILE=$(ulimit -Sn)
log "open files: soft limit raised to $SOFT_NOFILE (hard limit $HARD_NOFILE)"
N_ASKED=$N
if [[ $SOFT_NOFILE != unlimited ]] && ((N > SOFT_NOFILE - 256)); then
    N=$((SOFT_NOFILE - 256))
    log "N lowered from $N_ASKED to $N to fit the open-files limit"
fi
WORKER_CONNECTIONS=$((N + 1024))

bench_dirs connections
snakeway_binary
record_machine "N=$N (asked $N_ASKED) CHURN=$CHURN ROUNDS=$ROUNDS DURATION=$DURATION nofile soft=$SOFT_NOFILE hard=$HARD_NOFILE"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1 || die "openssl could not make a certificate"

# ---------------------------------------------------------------------------------------------
# Servers. start SERVER: a fresh one on fresh ports; sets PLAIN_PORT (h1; h2c on Snakeway),
# H2C_PORT, TLS_PORT, SERVER_PID (the process measured) and STARTED_PID (the one to stop).
start() {
    local dir="$TMP/$1-$RANDOM"
    mkdir -p "$dir/tmp"
    PLAIN_PORT=$(free_port)
    TLS_PORT=$(free_port)
    if [[ $1 == nginx ]]; then
        H2C_PORT=$(free_port)
        fill "$HERE/nginx.conf.in" "$dir/nginx.conf" DIR="$dir" PLAIN_PORT="$PLAIN_PORT" \
            H2C_PORT="$H2C_PORT" TLS_PORT="$TLS_PORT" CERT="$TMP/cert.pem" KEY="$TMP/key.pem" \
            WORKER_CONNECTIONS="$WORKER_CONNECTIONS"
        taskset -c "$PROXY_CPU" nginx -p "$dir/" -c "$dir/nginx.conf" -g "daemon off;" >"$dir/stdout.log" 2>&1 &
        STARTED_PID=$!
        PIDS+=("$STARTED_PID")
        wait_port "$TLS_PORT" "$STARTED_PID" "$START_TIMEOUT" "$dir/stdout.log"
        SERVER_PID=$(nginx_worker "$STARTED_PID")
    else
        H2C_PORT=$PLAIN_PORT
        fill "$HERE/snakeway.toml.in" "$dir/snakeway.toml" PLAIN_PORT="$PLAIN_PORT" \
            TLS_PORT="$TLS_PORT" CERT="$TMP/cert.pem" KEY="$TMP/key.pem" \
            MAX_CONNECTIONS="$WORKER_CONNECTIONS"
        SNAKEWAY_LOG=warn taskset -c "$PROXY_CPU" "$SNAKEWAY" serve -c "$dir/snakeway.toml" >"$dir/stdout.log" 2>&1 &
        STARTED_PID=$!
        PIDS+=("$STARTED_PID")
        wait_port "$TLS_PORT" "$STARTED_PID" "$START_TIMEOUT" "$dir/stdout.log"
        SERVER_PID=$STARTED_PID
    fi
    curl -sS -m 10 -o /dev/null "http://127.0.0.1:$PLAIN_PORT/" || die "$1 does not answer on $PLAIN_PORT"
}

stop() { stop_pid "$STARTED_PID" TERM 10; }

cpu_ns() { # PID: CPU time of PID's live threads in ns (/proc/PID/task/*/schedstat, field 1;
    # printed with %.0f: awk's %d stops at 2^31 ns)
    cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { printf "%.0f", s }'
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

port_of() { # PROTO
    case $1 in h1) echo "$PLAIN_PORT" ;; h2c) echo "$H2C_PORT" ;; *) echo "$TLS_PORT" ;; esac
}

p99() { # LABEL: wrk p99 (ms) of GET / on the plain port
    local f="$OUT_DIR/wrk-$1.txt"
    taskset -c "$LOAD_CPU" wrk -t1 -c16 -d"${DURATION}s" --latency "http://127.0.0.1:$PLAIN_PORT/" >"$f" 2>&1
    wrk_parse "$f" "$1"
    [[ -z $WRK_SOCKERR || $WRK_SOCKERR == 0 ]] || die "wrk $1: socket errors (see $f)"
    echo "$WRK_P99"
}

# ---------------------------------------------------------------------------------------------
# Idle connections.
declare -A RSS_PER P99_IDLE P99_NONE BASE HELD
SERVERS=(nginx snakeway)
for s in "${SERVERS[@]}"; do
    start "$s"
    P99_NONE[$s]=$(p99 "$s-no-idle")
    log "$s: p99 without idle connections ${P99_NONE[$s]} ms"
    stop
    for p in $PROTOS; do
        start "$s"
        # Warm-up: a few connections of the protocol measured, opened and closed, so that its
        # one-time costs (TLS library tables, the HTTP/2 machinery) are not counted per connection.
        python3 "$CLIENT" hold "$p" "$(port_of "$p")" 16 </dev/null >"$OUT_DIR/warmup-$s-$p.txt" 2>&1 ||
            die "$s $p: the warm-up failed (see $OUT_DIR/warmup-$s-$p.txt)"
        sleep 1
        BASE[$s.$p]=$(rss_kib "$SERVER_PID")
        fifo="$TMP/hold-$s-$p"
        mkfifo "$fifo"
        out="$OUT_DIR/hold-$s-$p.txt"
        : >"$out"
        taskset -c "$LOAD_CPU" python3 "$CLIENT" hold "$p" "$(port_of "$p")" "$N" <"$fifo" >"$out" 2>&1 &
        holder=$!
        exec 7>"$fifo"
        while ! grep -q '^ready\|^failed\|Error' "$out"; do
            kill -0 "$holder" 2>/dev/null || break
            sleep 0.5
        done
        grep -q '^ready' "$out" || die "$s $p: the client could not open $N connections (see $out)"
        sleep 2
        HELD[$s.$p]=$(rss_kib "$SERVER_PID")
        RSS_PER[$s.$p]=$(awk -v a="${BASE[$s.$p]}" -v b="${HELD[$s.$p]}" -v n="$N" 'BEGIN { printf "%.2f", (b - a) / n }')
        log "$s $p: VmRSS ${BASE[$s.$p]} KiB -> ${HELD[$s.$p]} KiB with $N idle: ${RSS_PER[$s.$p]} KiB each"
        P99_IDLE[$s.$p]=$(p99 "$s-idle-$p")
        log "$s: p99 with $N idle $p connections ${P99_IDLE[$s.$p]} ms"
        exec 7>&-
        wait "$holder" || true
        rm -f "$fifo"
        stop
    done
done

# ---------------------------------------------------------------------------------------------
# CPU per request with a new connection each time.
declare -A CPU_RUNS RESUMED
for ((r = 1; r <= ROUNDS; r++)); do
    round_order "$r" "${SERVERS[@]}"
    for s in "${ROUND_ORDER[@]}"; do
        start "$s"
        for p in "${CHURN_PROTOS[@]}"; do
            out="$OUT_DIR/churn-$s-$p-$r.txt"
            port=$PLAIN_PORT
            [[ $p == h1 ]] || port=$TLS_PORT
            t0=$(cpu_ns "$SERVER_PID")
            taskset -c "$LOAD_CPU" python3 "$CLIENT" churn "$p" "$port" "$CHURN" 4 >"$out" 2>&1 ||
                die "$s $p: the churn client failed (see $out)"
            t1=$(cpu_ns "$SERVER_PID")
            grep -q "^done $CHURN " "$out" || die "$s $p: the churn client did not finish (see $out)"
            us=$(awk -v ns=$((t1 - t0)) -v n="$CHURN" 'BEGIN { printf "%.2f", ns / 1000 / n }')
            CPU_RUNS[$s.$p]+="$us "
            RESUMED[$s.$p]=$(awk '{ print $4 }' "$out")
            log "round $r $s $p: $us µs CPU/request (resumed handshakes: ${RESUMED[$s.$p]})"
        done
        stop
    done
done

# ---------------------------------------------------------------------------------------------
# Summary.
{
    echo "## connections ($(date -u +%Y-%m-%d), N=$N idle connections, open files soft $SOFT_NOFILE / hard $HARD_NOFILE)"
    echo
    echo "| protocol | nginx KiB/conn | snakeway KiB/conn | ratio | nginx p99 idle-load ms | snakeway p99 idle-load ms |"
    echo "|---|---:|---:|---:|---:|---:|"
    for p in $PROTOS; do
        echo "| $p | ${RSS_PER[nginx.$p]} | ${RSS_PER[snakeway.$p]} | $(ratio "${RSS_PER[snakeway.$p]}" "${RSS_PER[nginx.$p]}") | ${P99_IDLE[nginx.$p]} | ${P99_IDLE[snakeway.$p]} |"
    done
    echo
    echo "p99 without idle connections: nginx ${P99_NONE[nginx]} ms, snakeway ${P99_NONE[snakeway]} ms"
    echo
    echo "| new connection per request | nginx µs CPU/req | snakeway µs CPU/req | ratio | resumed (nginx / snakeway, of $CHURN) |"
    echo "|---|---:|---:|---:|---|"
    for p in "${CHURN_PROTOS[@]}"; do
        a=$(median "${CPU_RUNS[nginx.$p]}")
        b=$(median "${CPU_RUNS[snakeway.$p]}")
        echo "| $p | $a | $b | $(ratio "$b" "$a") | ${RESUMED[nginx.$p]} / ${RESUMED[snakeway.$p]} |"
    done
    echo
    echo "CPU rounds (µs/request): $(for k in "${!CPU_RUNS[@]}"; do printf '%s: %s; ' "$k" "${CPU_RUNS[$k]}"; done)"
} | tee "$OUT_DIR/summary.md"
log "raw outputs in $OUT_DIR"
