#!/usr/bin/env bash
# Static-file benchmark: Snakeway vs nginx serving the same files from disk.
#
#   benches/static/run.sh                     # DURATION=10 ROUNDS=3 N=1000
#   DURATION=5 ROUNDS=1 SKIP_CALLGRIND=1 benches/static/run.sh
#   SCENARIOS="1k 1k-gzip" benches/static/run.sh
#
# Conventions are those of benches/load/run.sh. Everything runs on 127.0.0.1 on free ports.
# CPU 0 runs the server under test (one worker each: nginx `worker_processes 1`, Snakeway
# `threads = 1`), CPU 1 runs the load generator.
#
# Files: `1k.html` (1024 bytes), `100k.html` (102400 bytes), `1m.html` (1 MiB) and `4m.html`
# (4 MiB) of compressible HTML, in two directories: `d/` (plain files) and `s/` (plus
# `file.gz` siblings, made with gzip -9).
#
# Scenarios (SCENARIOS, default the first six):
#   1k, 100k                       GET /d/<file>, no Accept-Encoding: identity
#   1m, 4m                         the same for large files: 1 MiB is the largest Snakeway
#                                  caches (one 1 MiB frame from memory), 4 MiB streams from
#                                  disk in 1 MiB reads. Not in the default set: under
#                                  callgrind, prefer a smaller N (N=200).
#   1k-gzip, 100k-gzip             GET /d/<file> with `Accept-Encoding: gzip`: nginx
#                                  compresses every response (`gzip on`, its default level
#                                  1); Snakeway compresses once (level 9) and caches
#   1k-gzip-static, 100k-gzip-static
#                                  GET /s/<file> with `Accept-Encoding: gzip`: both send the
#                                  precompressed sibling (nginx `gzip_static on`)
#
# Figures, per server and scenario:
#   * req/s and p99 latency from `wrk -t1 -c64 --latency` (HTTP/1.1 keep-alive), median over
#     ROUNDS rounds; the two servers alternate within each round (ABBA order);
#   * CPU µs per request: utime+stime of the server's worker process (all threads, from
#     /proc/PID/stat fields 14+15) over the wrk run, divided by the requests wrk completed;
#   * instructions per request under `valgrind --tool=callgrind`: total Ir of a run that
#     serves N requests and of one that serves 5N (h2load --h1, exact counts),
#     (Ir(5N)-Ir(N))/(4N). This one does not move with the machine's load.
#
# Environment:
#   DURATION        seconds of each measured wrk run (default 10)
#   ROUNDS          measured rounds per server and scenario (default 3)
#   N               requests of the small callgrind run; the large one serves 5N (default 1000)
#   SKIP_CALLGRIND  1: skip the callgrind part
#   SNAKEWAY_BIN    use this binary instead of `cargo build --profile profiling --bin snakeway`
#   SERVERS         which servers to run (default "nginx snakeway")
#   SCENARIOS       which scenarios (default "1k 100k 1k-gzip 100k-gzip 1k-gzip-static 100k-gzip-static")
#   WARMUP          seconds of the wrk warm-up before each measured run (default 2)
#   CONNECTIONS     wrk connections (default 64)
#   OUT_DIR         where raw outputs go (default bench-out/static-<timestamp> in the repo)
#
# The script installs nothing; on Debian the tools come from
#   apt-get install -y nginx-light wrk nghttp2-client valgrind
# Shared helpers (log, die, ports, processes, wrk parsing, callgrind, ...): benches/lib.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BENCH=static
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
source "$HERE/../lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
N=${N:-1000}
SKIP_CALLGRIND=${SKIP_CALLGRIND:-0}
SERVERS=${SERVERS:-nginx snakeway}
SCENARIOS=${SCENARIOS:-1k 100k 1k-gzip 100k-gzip 1k-gzip-static 100k-gzip-static}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
SERVER_CPU=0
LOAD_CPU=1
CALLGRIND_CLIENT_CONNECTIONS=8
START_TIMEOUT=30
VALGRIND_START_TIMEOUT=300

for s in $SERVERS; do
    case $s in nginx | snakeway) ;; *) die "unknown server '$s' in SERVERS (nginx, snakeway)" ;; esac
done
for sc in $SCENARIOS; do
    case $sc in 1k | 100k | 1m | 4m | 1k-gzip | 100k-gzip | 1k-gzip-static | 100k-gzip-static) ;;
    *) die "unknown scenario '$sc'" ;;
    esac
done
require_positive DURATION ROUNDS N WARMUP CONNECTIONS
wants() { [[ " $SERVERS " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------
# Tools: check, never install.
need=(nginx wrk taskset getconf curl gzip awk sed sort pgrep)
if [[ $SKIP_CALLGRIND != 1 ]]; then need+=(h2load valgrind); fi
if wants snakeway && [[ -z ${SNAKEWAY_BIN:-} ]]; then need+=(cargo); fi
require_tools "${need[@]}"
NPROC=$(getconf _NPROCESSORS_ONLN)
((NPROC >= 2)) || die "needs at least 2 CPUs (server on CPU $SERVER_CPU, client on CPU $LOAD_CPU)"
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------------------
# Output and scratch directories; everything started is tracked and stopped on exit.
bench_dirs static
# nginx started as root serves as `nobody`: the files must be world-readable.
chmod 755 "$TMP"

# ---------------------------------------------------------------------------------------------
# Helpers.
# scenario_url NAME → path; scenario_ae NAME → Accept-Encoding value or empty
scenario_path() {
    local size=${1%%-*}
    case $1 in *-static) echo "/s/$size.html" ;; *) echo "/d/$size.html" ;; esac
}
scenario_ae() { case $1 in *gzip*) echo gzip ;; *) echo "" ;; esac; }

# ---------------------------------------------------------------------------------------------
# The files.
WWW=$TMP/www
mkdir -p "$WWW/d" "$WWW/s"
chmod -R a+rX "$WWW"
make_html() { # BYTES FILE: deterministic, compressible HTML (about 3:1 with gzip -1)
    # Written line by line (linear time; the first BYTES of the same text whatever BYTES is).
    awk -v n="$1" 'BEGIN {
        split("static file server request response header body cache range etag gzip brotli \
               keep alive socket kernel page memory worker thread proxy route edge", w, " ")
        line = "<!DOCTYPE html>\n<html><head><title>bench</title></head><body>\n"; x = 12345; out = 0
        while (out + length(line) < n) {
            printf "%s", line; out += length(line)
            line = "<p>"
            for (i = 0; i < 12; i++) { x = (x * 1103515245 + 12345) % 2147483648; line = line w[1 + int(x / 65536) % 24] " " }
            line = line (x % 100000) "</p>\n"
        }
        printf "%s", substr(line, 1, n - out)
    }' >"$2"
}
for f in 1k:1024 100k:102400 1m:1048576 4m:4194304; do
    make_html "${f#*:}" "$WWW/d/${f%%:*}.html"
    cp -p "$WWW/d/${f%%:*}.html" "$WWW/s/${f%%:*}.html"
    gzip -9 -n -k "$WWW/s/${f%%:*}.html"
done
chmod -R a+rX "$WWW"
ls -l "$WWW/d" "$WWW/s" >"$OUT_DIR/files.txt"

# nginx_start NAME PORT CPU GLOBALS [VALGRIND...]: sets STARTED_PID and STARTED_DIR.
nginx_start() {
    local name=$1 port=$2 cpu=$3 globals=$4 dir
    shift 4
    dir="$TMP/$name"
    mkdir -p "$dir/tmp" "$dir/logs"
    fill "$HERE/nginx.conf.in" "$dir/nginx.conf" DIR="$dir" PORT="$port" WWW="$WWW"
    cp "$dir/nginx.conf" "$OUT_DIR/$name.nginx.conf"
    taskset -c "$cpu" "$@" nginx -p "$dir/" -c "$dir/nginx.conf" -g "$globals" >"$dir/stdout.log" 2>&1 &
    STARTED_PID=$!
    STARTED_DIR=$dir
    PIDS+=("$STARTED_PID")
}

# snakeway_start NAME PORT CPU [VALGRIND...]: sets STARTED_PID and STARTED_DIR.
snakeway_start() {
    local name=$1 port=$2 cpu=$3 dir
    shift 3
    dir="$TMP/$name"
    mkdir -p "$dir"
    fill "$HERE/snakeway.toml.in" "$dir/snakeway.toml" PORT="$port" WWW="$WWW"
    cp "$dir/snakeway.toml" "$OUT_DIR/$name.toml"
    SNAKEWAY_LOG=warn taskset -c "$cpu" "$@" "$SNAKEWAY" serve -c "$dir/snakeway.toml" >"$dir/stdout.log" 2>&1 &
    STARTED_PID=$!
    STARTED_DIR=$dir
    PIDS+=("$STARTED_PID")
}

# check SERVER PORT SCENARIO: status 200, the expected coding, and the original bytes back.
check() {
    local s=$1 port=$2 sc=$3 path ae hdrs body want_ce got_ce
    path=$(scenario_path "$sc")
    ae=$(scenario_ae "$sc")
    hdrs="$TMP/check-$s-$sc.h"
    body="$TMP/check-$s-$sc.b"
    curl -sS -m 10 -D "$hdrs" -o "$body" ${ae:+-H "Accept-Encoding: $ae"} "http://127.0.0.1:$port$path" ||
        die "curl to $s $path failed"
    cp "$hdrs" "$OUT_DIR/headers-$s-$sc.txt"
    head -n 1 "$hdrs" | grep -q ' 200' || die "$s $path: $(head -n 1 "$hdrs")"
    got_ce=$(awk -F': *' 'tolower($1) == "content-encoding" { gsub(/\r/, "", $2); print $2 }' "$hdrs")
    want_ce=$ae
    [[ $got_ce == "$want_ce" ]] || die "$s $sc: content-encoding '$got_ce', expected '$want_ce'"
    if [[ -n $ae ]]; then gzip -dc "$body" >"$body.plain"; else mv "$body" "$body.plain"; fi
    cmp -s "$body.plain" "$WWW/d/${sc%%-*}.html" || die "$s $sc: the body is not the file"
}

# ---------------------------------------------------------------------------------------------
# Snakeway binary.
SNAKEWAY=
if wants snakeway; then snakeway_binary; fi

record_machine "DURATION=$DURATION ROUNDS=$ROUNDS N=$N WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS SKIP_CALLGRIND=$SKIP_CALLGRIND SERVERS='$SERVERS' SCENARIOS='$SCENARIOS'"
log "raw outputs in $OUT_DIR"

# ---------------------------------------------------------------------------------------------
# Part 1: throughput, latency and CPU time per request, with wrk.
declare -A PORT WORKER MAIN RPS P99 CPU_US IPR
RESULTS="$OUT_DIR/wrk-results.tsv"
printf 'round\tscenario\tserver\trequests\treq_per_s\tp99_ms\tcpu_ticks\tcpu_us_per_req\tsocket_errors\tnon_2xx\n' >"$RESULTS"

for s in $SERVERS; do
    PORT[$s]=$(free_port)
    case $s in
    nginx)
        nginx_start server-nginx "${PORT[$s]}" "$SERVER_CPU" 'daemon off;'
        master=$STARTED_PID
        wait_port "${PORT[$s]}" "$master" "$START_TIMEOUT" "$STARTED_DIR/stdout.log"
        WORKER[$s]=$(nginx_worker "$master")
        MAIN[$s]=$master
        ;;
    snakeway)
        snakeway_start server-snakeway "${PORT[$s]}" "$SERVER_CPU"
        wait_port "${PORT[$s]}" "$STARTED_PID" "$START_TIMEOUT" "$STARTED_DIR/stdout.log"
        WORKER[$s]=$STARTED_PID
        MAIN[$s]=$STARTED_PID
        ;;
    esac
    for sc in $SCENARIOS; do check "$s" "${PORT[$s]}" "$sc"; done
    log "$s on 127.0.0.1:${PORT[$s]} (CPU $SERVER_CPU, measured pid ${WORKER[$s]})"
done

read -ra order <<<"$SERVERS"
for sc in $SCENARIOS; do
    path=$(scenario_path "$sc")
    ae=$(scenario_ae "$sc")
    hdr=()
    [[ -n $ae ]] && hdr=(-H "Accept-Encoding: $ae")
    for ((r = 1; r <= ROUNDS; r++)); do
        round_order "$r" "${order[@]}"
        for s in "${ROUND_ORDER[@]}"; do
            url="http://127.0.0.1:${PORT[$s]}$path"
            f="$OUT_DIR/wrk-$sc-$s-$r.txt"
            taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" ${hdr[@]+"${hdr[@]}"} "$url" >"$OUT_DIR/wrk-$sc-$s-warmup-$r.txt" 2>&1
            before=$(cpu_ticks "${WORKER[$s]}")
            taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency ${hdr[@]+"${hdr[@]}"} "$url" >"$f" 2>&1
            after=$(cpu_ticks "${WORKER[$s]}")
            wrk_parse "$f" "$s"
            requests=$WRK_REQUESTS rps=$WRK_RPS p99=$WRK_P99 sockerr=$WRK_SOCKERR non2xx=$WRK_NON2XX
            ticks=$((after - before))
            cpu_us=$(cpu_us_per_req "$ticks" "$requests")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$sc" "$s" "$requests" "$rps" "$p99" "$ticks" "$cpu_us" \
                "${sockerr:-0}" "${non2xx:-0}" >>"$RESULTS"
            RPS[$sc.$s]+="$rps "
            P99[$sc.$s]+="$p99 "
            CPU_US[$sc.$s]+="$cpu_us "
            log "$sc round $r/$ROUNDS $s: $rps req/s, p99 ${p99} ms, $cpu_us CPU µs/req ($requests requests)"
            if [[ -n $non2xx || ${sockerr:-0} != 0 ]]; then
                log "WARNING: $s had ${non2xx:-0} non-2xx responses and ${sockerr:-0} socket errors (see $f)"
            fi
        done
    done
done

for s in $SERVERS; do
    stop_pid "${MAIN[$s]}" TERM 30
done

# ---------------------------------------------------------------------------------------------
# Part 2: instructions per request under callgrind.
callgrind_run() { # SERVER SCENARIO COUNT → sets CG_IR
    local s=$1 sc=$2 n=$3 port name out path ae
    port=$(free_port)
    name="callgrind-$sc-$s-$n"
    out="$OUT_DIR/$name.out"
    rm -f "$out"
    path=$(scenario_path "$sc")
    ae=$(scenario_ae "$sc")
    local vg=(valgrind --tool=callgrind "--callgrind-out-file=$out")
    case $s in
    nginx) nginx_start "$name" "$port" "$SERVER_CPU" 'daemon off; master_process off;' "${vg[@]}" ;;
    snakeway) snakeway_start "$name" "$port" "$SERVER_CPU" "${vg[@]}" ;;
    esac
    local pid=$STARTED_PID dir=$STARTED_DIR
    wait_port "$port" "$pid" "$VALGRIND_START_TIMEOUT" "$dir/stdout.log"
    local hdr=()
    [[ -n $ae ]] && hdr=(-H "accept-encoding: $ae")
    callgrind_count "$sc $s" "$pid" "$dir" "$port" "$out" "$n" "http://127.0.0.1:$port$path" ${hdr[@]+"${hdr[@]}"}
}

if [[ $SKIP_CALLGRIND != 1 ]]; then
    printf 'scenario\tserver\tN\tIr_N\tIr_5N\tinstructions_per_req\n' >"$OUT_DIR/callgrind-results.tsv"
    for sc in $SCENARIOS; do
        for s in $SERVERS; do
            callgrind_run "$s" "$sc" "$N"
            small=$CG_IR
            callgrind_run "$s" "$sc" $((5 * N))
            large=$CG_IR
            IPR[$sc.$s]=$(awk -v a="$small" -v b="$large" -v n="$N" 'BEGIN { printf "%.0f", (b - a) / (4 * n) }')
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$s" "$N" "$small" "$large" "${IPR[$sc.$s]}" >>"$OUT_DIR/callgrind-results.tsv"
            # Keep only the large run's profile (the small one only serves the subtraction).
            rm -f "$OUT_DIR/callgrind-$sc-$s-$N.out"
            log "$sc $s: ${IPR[$sc.$s]} instructions per request"
        done
    done
fi
echo "loadavg at end: $(cat /proc/loadavg)" >>"$OUT_DIR/machine.txt"

# ---------------------------------------------------------------------------------------------
# Report.
{
    echo "| scenario | server | req/s (median) | p99 ms (median) | CPU µs/req (median) | instructions/req |"
    echo "|---|---|---:|---:|---:|---:|"
    for sc in $SCENARIOS; do
        declare -A M_RPS=() M_P99=() M_CPU=()
        for s in $SERVERS; do
            M_RPS[$s]=$(median "${RPS[$sc.$s]}")
            M_P99[$s]=$(median "${P99[$sc.$s]}")
            M_CPU[$s]=$(median "${CPU_US[$sc.$s]}")
            printf '| %s | %s | %.0f | %.2f | %.2f | %s |\n' "$sc" "$s" "${M_RPS[$s]}" "${M_P99[$s]}" "${M_CPU[$s]}" "${IPR[$sc.$s]:-–}"
        done
        if wants nginx && wants snakeway; then
            printf '| %s | **snakeway / nginx** | **%s** | **%s** | **%s** | **%s** |\n' "$sc" \
                "$(ratio "${M_RPS[snakeway]}" "${M_RPS[nginx]}")" \
                "$(ratio "${M_P99[snakeway]}" "${M_P99[nginx]}")" \
                "$(ratio "${M_CPU[snakeway]}" "${M_CPU[nginx]}")" \
                "$(ratio "${IPR[$sc.snakeway]:-}" "${IPR[$sc.nginx]:-}")"
        fi
    done
    echo
    echo "$ROUNDS rounds of wrk -t1 -c$CONNECTIONS -d${DURATION}s (after ${WARMUP}s warm-up each); callgrind: N=$N and 5N requests via h2load --h1 -c$CALLGRIND_CLIENT_CONNECTIONS."
    grep -E '^(nproc|cpu|loadavg)' "$OUT_DIR/machine.txt" | paste -sd ';' | sed 's/;/; /g'
} | tee "$OUT_DIR/summary.md"
ln -sfn "$(basename "$OUT_DIR")" "$(dirname "$OUT_DIR")/static-latest" 2>/dev/null || true
log "raw outputs in $OUT_DIR"
