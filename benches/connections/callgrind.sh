#!/usr/bin/env bash
# Instructions per plain HTTP/1.1 request under callgrind, Snakeway beside nginx (issue 14):
#
#   benches/connections/callgrind.sh              # MODES="churn keepalive" N=1000
#
# Modes:
#   churn      every request on a new connection (`client.py churn h1`, `connection: close`)
#   keepalive  8 keep-alive connections, one request at a time each (`h2load --h1 -c8 -m1`):
#              the client sends the next request only after the answer, at once, so a
#              Snakeway connection parks only once, after its first request (src/conn/park.rs;
#              later only after a quiet tick), the same in both runs, so it cancels out
#
# Each server (one worker, the synthetic 200 of snakeway.toml.in / nginx.conf.in, plain port
# only) runs under `valgrind --tool=callgrind` twice, serving N then 5N requests; instructions
# per request = (Ir of 5N − Ir of N) / 4N, so start-up and shutdown cancel out. The 5N run's
# profile is annotated (self cost by function) into OUT_DIR.
#
# Environment: N (default 1000), MODES, SERVERS (default "nginx snakeway": one alone, to measure
# a change of Snakeway's against an nginx figure of the same sitting), SNAKEWAY_BIN (else the profiling build), OUT_DIR
# (default bench-out/connections-callgrind-<timestamp>). Needs valgrind, nginx, h2load, python3.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BENCH=connections-callgrind
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
source "$HERE/../lib.sh"

N=${N:-1000}
MODES=${MODES:-churn keepalive}
SERVERS=${SERVERS:-nginx snakeway}
PROXY_CPU=0
LOAD_CPU=1
CALLGRIND_CLIENT_CONNECTIONS=8
require_positive N
need=(nginx h2load valgrind callgrind_annotate taskset python3 awk sed sort openssl)
if [[ -z ${SNAKEWAY_BIN:-} ]]; then need+=(cargo); fi
require_tools "${need[@]}"
for m in $MODES; do
    case $m in churn | keepalive) ;; *) die "unknown mode '$m' (churn keepalive)" ;; esac
done
for s in $SERVERS; do
    case $s in nginx | snakeway) ;; *) die "unknown server '$s' (nginx snakeway)" ;; esac
done

bench_dirs connections-callgrind
snakeway_binary
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1

run() { # SERVER MODE COUNT → CG_IR
    local s=$1 mode=$2 n=$3 dir port tls out pid
    dir="$TMP/$s-$mode-$n"
    mkdir -p "$dir/tmp"
    port=$(free_port)
    tls=$(free_port)
    out="$OUT_DIR/callgrind-$s-$mode-$n.out"
    local vg=(valgrind --tool=callgrind "--callgrind-out-file=$out")
    if [[ $s == nginx ]]; then
        fill "$HERE/nginx.conf.in" "$dir/nginx.conf" DIR="$dir" PLAIN_PORT="$port" \
            H2C_PORT="$(free_port)" TLS_PORT="$tls" CERT="$TMP/cert.pem" KEY="$TMP/key.pem" \
            WORKER_CONNECTIONS=1024
        taskset -c "$PROXY_CPU" "${vg[@]}" nginx -p "$dir/" -c "$dir/nginx.conf" \
            -g "daemon off; master_process off;" >"$dir/stdout.log" 2>&1 &
    else
        fill "$HERE/snakeway.toml.in" "$dir/snakeway.toml" PLAIN_PORT="$port" TLS_PORT="$tls" \
            CERT="$TMP/cert.pem" KEY="$TMP/key.pem" MAX_CONNECTIONS=1024
        SNAKEWAY_LOG=warn taskset -c "$PROXY_CPU" "${vg[@]}" "$SNAKEWAY" serve \
            -c "$dir/snakeway.toml" >"$dir/stdout.log" 2>&1 &
    fi
    pid=$!
    PIDS+=("$pid")
    wait_port "$tls" "$pid" 120 "$dir/stdout.log"
    if [[ $mode == keepalive ]]; then
        callgrind_count "$s $mode" "$pid" "$dir" "$port" "$out" "$n" "http://127.0.0.1:$port/"
    else
        taskset -c "$LOAD_CPU" python3 "$HERE/client.py" churn h1 "$port" "$n" 4 \
            >"$OUT_DIR/churn-$s-$n.txt" 2>&1 || die "$s churn failed (see $OUT_DIR/churn-$s-$n.txt)"
        grep -q "^done $n " "$OUT_DIR/churn-$s-$n.txt" || die "$s churn did not finish"
        stop_pid "$pid" TERM 300
        CG_IR=$(awk '/^(summary|totals):/ { print $2; exit }' "$out")
        [[ -n $CG_IR ]] || die "no summary line in $out"
        log "callgrind $s $mode, $n requests: $CG_IR Ir"
    fi
    forget_pid "$pid"
}

printf 'server\tmode\tIr_N\tIr_5N\tinstructions_per_req\n' >"$OUT_DIR/results.tsv"
for mode in $MODES; do
    for s in $SERVERS; do
        run "$s" "$mode" "$N"
        small=$CG_IR
        run "$s" "$mode" $((5 * N))
        large=$CG_IR
        ipr=$(awk -v a="$small" -v b="$large" -v n="$N" 'BEGIN { printf "%.0f", (b - a) / (4 * n) }')
        printf '%s\t%s\t%s\t%s\t%s\n' "$s" "$mode" "$small" "$large" "$ipr" >>"$OUT_DIR/results.tsv"
        log "$s $mode: $ipr instructions per request"
        callgrind_annotate --auto=no --inclusive=no "$OUT_DIR/callgrind-$s-$mode-$((5 * N)).out" \
            >"$OUT_DIR/callgrind-$s-$mode-$((5 * N)).self.txt" 2>&1 || true
    done
done
column -t "$OUT_DIR/results.tsv" >&2
log "raw outputs in $OUT_DIR"
