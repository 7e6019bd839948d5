#!/usr/bin/env bash
# Load benchmark: Snakeway vs nginx as reverse proxies in front of the same upstream.
#
#   benches/load/run.sh                      # DURATION=10 ROUNDS=3 N=2000
#   DURATION=5 ROUNDS=1 SKIP_CALLGRIND=1 benches/load/run.sh
#   PIPELINE=1 benches/load/run.sh           # + the device pipeline and nginx's access log
#   WASM=1 benches/load/run.sh               # + Snakeway with one WASM device (snakeway-wasm)
#   RATELIMIT=1 benches/load/run.sh          # + Snakeway with one rate_limit device (snakeway-ratelimit)
#
# Proxies (PROXIES):
#   nginx               nginx, `access_log off` (proxy.nginx.conf.in)
#   nginx-log           the same nginx writing its access log (default `combined` format,
#                       unbuffered) to a file in the scratch directory
#   snakeway            Snakeway without devices (snakeway.toml.in)
#   snakeway-pipeline   the same Snakeway with the builtin pipeline (pipeline-devices.toml.in):
#                       identity + request_filter + structured_logging to a file in the
#                       scratch directory
#   snakeway-wasm       the same Snakeway with exactly one WASM device (wasm-device.toml.in):
#                       the add-header example (examples/wasm/add-header), which sets
#                       `x-snakeway-wasm: 1` on every request in its `on-request` hook, and
#                       registers no other hook (no `response_name`). The guest is
#                       examples/wasm/out/add-header.wasm, built by examples/wasm/build.sh
#                       when it is missing (run that script yourself to rebuild a stale one).
#                       Before measuring, one request to the upstream's /wasm-echo location
#                       (which echoes the request's x-snakeway-wasm header in its body) checks
#                       that the header reaches the upstream; the callgrind runs do the same
#                       check once each (the same extra request in the N and 5N runs, so it
#                       cancels out). The summary adds `snakeway-wasm / snakeway` and
#                       `snakeway-wasm − snakeway`: the device's cost in CPU µs and
#                       instructions per request. The wrk runs use the default
#                       `[wasm] max_instances = 1000`; under valgrind it is 7
#                       (CALLGRIND_WASM_MAX_INSTANCES): the instance pool reserves its address
#                       space at start, 2 linear memories of about 4 GiB per instance, and
#                       valgrind's client address space (about 64 GiB on amd64) refuses 8
#                       instances or more. As a request in flight holds an instance, the
#                       callgrind runs of every proxy then use 7 h2load connections, not 8.
#                       A one-second probe (`snakeway config check` under
#                       `valgrind --tool=none`) comes first: when it fails, snakeway-wasm gets
#                       no instructions/req (said in the log and the summary) rather than
#                       failing the run.
#   snakeway-percore    the same Snakeway as `snakeway` with `server.runtime = "per_core"`
#                       (issue 13: single-threaded workers, SO_REUSEPORT socket and upstream
#                       pool per worker); `snakeway` runs the default `work_stealing`.
#                       The summary adds `snakeway-percore / snakeway`.
#   snakeway-ratelimit  the same Snakeway with exactly one rate_limit device
#                       (ratelimit-device.toml.in): local store, key client_ip, a limit the
#                       benchmark never reaches. Before measuring, one request checks that the
#                       answer carries the device's `RateLimit` header. The summary adds
#                       `snakeway-ratelimit / snakeway` and `snakeway-ratelimit − snakeway`
#                       (issue 12 target: at most 1,500 instructions per request added).
#   snakeway-pipeline-ratelimit
#                       snakeway-pipeline plus the same rate_limit device, after the three
#                       builtin devices: what the device adds to a pipeline that already runs.
#                       The summary adds `snakeway-pipeline-ratelimit − snakeway-pipeline`.
#
# Everything runs on 127.0.0.1 on free ports found at run time. CPU 0 runs the proxy under
# test (one worker each), CPU 1 runs the upstream (nginx, one worker) and the load generator.
# THREADS=2 PROXY_CPU=0,1 LOAD_CPU=0,1 gives each proxy two workers on every core instead
# (then the proxy shares its cores with the upstream and the load generator).
#
# Figures, per proxy:
#   * req/s and p99 latency from `wrk -t1 -c64 --latency` (HTTP/1.1 keep-alive small GETs),
#     median over ROUNDS rounds; the two proxies alternate within each round (ABBA order);
#   * CPU µs per request: utime+stime of the proxy's worker process (/proc/PID/stat fields
#     14+15) over the wrk run, divided by the requests wrk completed;
#   * instructions per request under `valgrind --tool=callgrind`: total Ir of a run that
#     serves N requests and of one that serves 5N (h2load, 8 connections, 7 with snakeway-wasm;
#     exact counts), (Ir(5N)-Ir(N))/(4N).
#     This one does not move with the machine's load, unlike the others.
#
# Environment:
#   DURATION        seconds of each measured wrk run (default 10)
#   ROUNDS          measured rounds per proxy (default 3)
#   N               requests of the small callgrind run; the large one serves 5N (default 2000)
#   SKIP_CALLGRIND  1: skip the callgrind part
#   SNAKEWAY_BIN    use this binary instead of `cargo build --profile profiling --bin snakeway`
#   PROXIES         which proxies to run (default "nginx snakeway"; with PIPELINE=1
#                   "nginx nginx-log snakeway snakeway-pipeline"; WASM=1 adds snakeway-wasm)
#   PIPELINE        1: the default PROXIES include the pipeline and access-log variants
#   WASM            1: the default PROXIES include snakeway-wasm
#   RATELIMIT       1: the default PROXIES include snakeway-ratelimit
#   PERCORE         1: the default PROXIES include snakeway-percore
#   THREADS         the proxies' workers: Snakeway's `threads`, nginx's `worker_processes`
#                   (default 1); CPU µs per request sums every worker
#   PROXY_CPU       taskset CPU list of the proxies (default 0)
#   LOAD_CPU        taskset CPU list of the upstream and the load generator (default 1)
#   WARMUP          seconds of the wrk warm-up before each measured run (default 2)
#   CONNECTIONS     wrk connections (default 64)
#   OUT_DIR         where raw outputs go (default bench-out/load-<timestamp> in the repo)
#
# The script installs nothing; on Debian the tools come from
#   apt-get install -y nginx-light wrk nghttp2-client valgrind
# (snakeway-wasm, if the guest must be built: rustup with the wasm32-wasip2 target).
# Shared helpers (log, die, ports, processes, wrk parsing, callgrind, ...): benches/lib.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BENCH=load
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
source "$HERE/../lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
N=${N:-2000}
SKIP_CALLGRIND=${SKIP_CALLGRIND:-0}
PIPELINE=${PIPELINE:-0}
WASM=${WASM:-0}
RATELIMIT=${RATELIMIT:-0}
PERCORE=${PERCORE:-0}
THREADS=${THREADS:-1}
default_proxies=nginx
if [[ $PIPELINE == 1 ]]; then default_proxies+=" nginx-log"; fi
default_proxies+=" snakeway"
if [[ $PIPELINE == 1 ]]; then default_proxies+=" snakeway-pipeline"; fi
if [[ $WASM == 1 ]]; then default_proxies+=" snakeway-wasm"; fi
if [[ $RATELIMIT == 1 ]]; then default_proxies+=" snakeway-ratelimit"; fi
if [[ $PERCORE == 1 ]]; then default_proxies+=" snakeway-percore"; fi
PROXIES=${PROXIES:-$default_proxies}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
START_TIMEOUT=30           # seconds for a native process to accept connections
VALGRIND_START_TIMEOUT=300 # the same under valgrind (~50x slower)
WASM_GUEST=$ROOT/examples/wasm/out/add-header.wasm
WASM_TIMEOUT_MS=5              # the device's timeout_ms in the wrk runs (Snakeway's default)
CALLGRIND_WASM_TIMEOUT_MS=1000 # ... and under callgrind (see wasm-device.toml.in)
WASM_MAX_INSTANCES=1000        # [wasm] max_instances in the wrk runs (Snakeway's default)
CALLGRIND_WASM_MAX_INSTANCES=7 # ... and under valgrind (see wasm-device.toml.in)

for p in $PROXIES; do
    case $p in
    nginx | nginx-log | snakeway | snakeway-pipeline | snakeway-wasm | snakeway-ratelimit | snakeway-pipeline-ratelimit | snakeway-percore) ;;
    *) die "unknown proxy '$p' in PROXIES (nginx, nginx-log, snakeway, snakeway-pipeline, snakeway-wasm, snakeway-ratelimit, snakeway-pipeline-ratelimit, snakeway-percore)" ;;
    esac
done
require_positive DURATION ROUNDS N WARMUP CONNECTIONS THREADS
wants() { [[ " $PROXIES " == *" $1 "* ]]; }
wants_snakeway() { wants snakeway || wants snakeway-pipeline || wants snakeway-wasm || wants snakeway-ratelimit || wants snakeway-pipeline-ratelimit || wants snakeway-percore; }
# h2load connections of the callgrind runs, the same for every proxy of a run: 8, or with
# snakeway-wasm CALLGRIND_WASM_MAX_INSTANCES (7), as each request in flight holds an instance.
if wants snakeway-wasm; then
    CALLGRIND_CLIENT_CONNECTIONS=$CALLGRIND_WASM_MAX_INSTANCES
else
    CALLGRIND_CLIENT_CONNECTIONS=8
fi

# ---------------------------------------------------------------------------------------------
# Tools: check, never install.
need=(nginx wrk taskset getconf curl awk sed sort pgrep)
if [[ $SKIP_CALLGRIND != 1 ]]; then need+=(h2load valgrind callgrind_annotate); fi
if wants_snakeway && [[ -z ${SNAKEWAY_BIN:-} ]]; then need+=(cargo); fi
if wants snakeway-wasm && [[ ! -f $WASM_GUEST ]]; then need+=(cargo rustup); fi
require_tools "${need[@]}"
NPROC=$(getconf _NPROCESSORS_ONLN)
((NPROC >= 2)) || die "needs at least 2 CPUs (proxy on CPU $PROXY_CPU, upstream and client on CPU $LOAD_CPU)"
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------------------
# Output and scratch directories; everything started is tracked and stopped on exit.
bench_dirs load

# ---------------------------------------------------------------------------------------------
# Helpers.
access_log_of() { # PROXY: the @ACCESS_LOG@ of an nginx proxy
    if [[ $1 == nginx-log ]]; then echo "DIR/access.log"; else echo off; fi
}

check_body() { # PORT: the proxy must answer 200 with the upstream's body
    local port=$1 got
    got=$(curl -sS -m 10 -o - -w ' %{http_code}' "http://127.0.0.1:$port/") || die "curl to port $port failed"
    [[ $got == $'hello from upstream\n 200' ]] || die "port $port answered '$got', not the upstream's 200"
}

check_wasm_header() { # PORT CURL-TIMEOUT: the upstream must receive `x-snakeway-wasm: 1`
    local port=$1 got
    got=$(curl -sS -m "$2" -o - -w ' %{http_code}' "http://127.0.0.1:$port/wasm-echo") ||
        die "curl to port $port/wasm-echo failed"
    [[ $got == $'x-snakeway-wasm: 1\n 200' ]] ||
        die "port $port: the upstream did not get x-snakeway-wasm: 1 (it echoed '$got')"
}
check_ratelimit_header() { # PORT CURL-TIMEOUT: the answer must carry the device's `RateLimit`
    local port=$1 got
    got=$(curl -sS -m "$2" -o /dev/null -D - "http://127.0.0.1:$port/") ||
        die "curl to port $port/ failed"
    grep -qi '^ratelimit: "bench";r=' <<<"$got" ||
        die "port $port: no RateLimit header from the rate_limit device (headers: $got)"
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
        ACCESS_LOG="$access_log" WORKERS="$THREADS"
    cp "$dir/nginx.conf" "$OUT_DIR/$name.nginx.conf"
    taskset -c "$cpu" "$@" nginx -p "$dir/" -c "$dir/nginx.conf" -g "$globals" >"$dir/stdout.log" 2>&1 &
    STARTED_PID=$!
    STARTED_DIR=$dir
    PIDS+=("$STARTED_PID")
}

# snakeway_config NAME PROXY PORT: writes $TMP/NAME/snakeway.toml (and a copy in OUT_DIR) and
# sets STARTED_DIR to $TMP/NAME. PROXY is snakeway, snakeway-pipeline (the same config plus
# pipeline-devices.toml.in) or snakeway-wasm (plus wasm-device.toml.in, with
# timeout_ms = $WASM_TIMEOUT_MS and max_instances = $WASM_MAX_INSTANCES).
snakeway_config() {
    local name=$1 proxy=$2 port=$3 dir
    dir="$TMP/$name"
    mkdir -p "$dir"
    local runtime=work_stealing
    if [[ $proxy == snakeway-percore ]]; then runtime=per_core; fi
    fill "$HERE/snakeway.toml.in" "$dir/snakeway.toml" PORT="$port" UPSTREAM_PORT="$UPSTREAM_PORT" \
        THREADS="$THREADS" RUNTIME="$runtime"
    case $proxy in
    snakeway-pipeline) fill "$HERE/pipeline-devices.toml.in" "$dir/devices.toml" DIR="$dir" ;;
    snakeway-ratelimit) fill "$HERE/ratelimit-device.toml.in" "$dir/devices.toml" NAME=bench ;;
    snakeway-pipeline-ratelimit)
        fill "$HERE/pipeline-devices.toml.in" "$dir/devices.toml" DIR="$dir"
        fill "$HERE/ratelimit-device.toml.in" "$dir/ratelimit.toml" NAME=bench
        cat "$dir/ratelimit.toml" >>"$dir/devices.toml"
        ;;
    snakeway-wasm)
        fill "$HERE/wasm-device.toml.in" "$dir/devices.toml" WASM="$WASM_GUEST" TIMEOUT_MS="$WASM_TIMEOUT_MS" \
            MAX_INSTANCES="$WASM_MAX_INSTANCES"
        ;;
    esac
    if [[ -f $dir/devices.toml ]]; then cat "$dir/devices.toml" >>"$dir/snakeway.toml"; fi
    cp "$dir/snakeway.toml" "$OUT_DIR/$name.toml"
    STARTED_DIR=$dir
}

# snakeway_start NAME PROXY PORT CPU [VALGRIND...]: runs Snakeway with the config of
# snakeway_config NAME PROXY PORT; sets STARTED_PID and STARTED_DIR.
snakeway_start() {
    local name=$1 proxy=$2 port=$3 cpu=$4 dir
    shift 4
    snakeway_config "$name" "$proxy" "$port"
    dir=$STARTED_DIR
    SNAKEWAY_LOG=warn taskset -c "$cpu" "$@" "$SNAKEWAY" serve -c "$dir/snakeway.toml" >"$dir/stdout.log" 2>&1 &
    STARTED_PID=$!
    STARTED_DIR=$dir
    PIDS+=("$STARTED_PID")
}

nginx_workers() { # MASTER COUNT: the pids of the COUNT workers of an nginx master
    local master=$1 count=$2 workers='' i
    for ((i = 0; i < 100; i++)); do
        workers=$(pgrep -P "$master" | paste -sd ' ' || true)
        [[ $(wc -w <<<"$workers") == "$count" ]] && break
        sleep 0.1
    done
    [[ $(wc -w <<<"$workers") == "$count" ]] || die "nginx master $master has workers '$workers', not $count"
    echo "$workers"
}
cpu_ticks_of() { # PID...: utime+stime summed over the processes
    local sum=0 pid
    for pid in "$@"; do sum=$((sum + $(cpu_ticks "$pid"))); done
    echo "$sum"
}

# ---------------------------------------------------------------------------------------------
# Snakeway binary and the WASM guest.
SNAKEWAY=
if wants_snakeway; then snakeway_binary; fi
if wants snakeway-wasm && [[ ! -f $WASM_GUEST ]]; then
    log "building the example WASM guests (examples/wasm/build.sh)"
    "$ROOT/examples/wasm/build.sh" >&2
    [[ -f $WASM_GUEST ]] || die "examples/wasm/build.sh did not make $WASM_GUEST"
fi

# ---------------------------------------------------------------------------------------------
# Record the machine and versions.
record_machine "THREADS=$THREADS PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU DURATION=$DURATION ROUNDS=$ROUNDS N=$N WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS SKIP_CALLGRIND=$SKIP_CALLGRIND PIPELINE=$PIPELINE WASM=$WASM RATELIMIT=$RATELIMIT PROXIES='$PROXIES'"
if wants snakeway-wasm; then
    echo "wasm guest: $WASM_GUEST ($(wc -c <"$WASM_GUEST") bytes, sha256 $(sha256sum "$WASM_GUEST" | awk '{ print $1 }'), built $(date -u -r "$WASM_GUEST" +%Y-%m-%dT%H:%M:%SZ))" >>"$OUT_DIR/machine.txt"
fi
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
        WORKER[$p]=$(nginx_workers "$master" "$THREADS")
        MAIN[$p]=$master
        ;;
    snakeway | snakeway-pipeline | snakeway-wasm | snakeway-ratelimit | snakeway-pipeline-ratelimit | snakeway-percore)
        snakeway_start "proxy-$p" "$p" "${PORT[$p]}" "$PROXY_CPU"
        wait_port "${PORT[$p]}" "$STARTED_PID" "$START_TIMEOUT" "$STARTED_DIR/stdout.log"
        WORKER[$p]=$STARTED_PID
        MAIN[$p]=$STARTED_PID
        ;;
    esac
    LOGDIR[$p]=$STARTED_DIR
    check_body "${PORT[$p]}"
    SENT[$p]=1
    if [[ $p == snakeway-wasm ]]; then
        check_wasm_header "${PORT[$p]}" 10
        SENT[$p]=2
        log "$p: the upstream receives x-snakeway-wasm: 1"
    fi
    if [[ $p == snakeway-ratelimit || $p == snakeway-pipeline-ratelimit ]]; then
        check_ratelimit_header "${PORT[$p]}" 10
        SENT[$p]=2
        log "$p: answers carry the RateLimit header"
    fi
    log "$p on 127.0.0.1:${PORT[$p]} (CPU $PROXY_CPU, measured pid ${WORKER[$p]})"
done

read -ra order <<<"$PROXIES"
for ((r = 1; r <= ROUNDS; r++)); do
    round_order "$r" "${order[@]}" # ABBA: reverse the order every other round
    for p in "${ROUND_ORDER[@]}"; do
        url="http://127.0.0.1:${PORT[$p]}/"
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >"$OUT_DIR/wrk-$p-warmup-$r.txt" 2>&1
        SENT[$p]=$((${SENT[$p]} + $(awk '/ requests in / { print $1; exit }' "$OUT_DIR/wrk-$p-warmup-$r.txt")))
        read -ra measured <<<"${WORKER[$p]}"
        before=$(cpu_ticks_of "${measured[@]}")
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$OUT_DIR/wrk-$p-$r.txt" 2>&1
        after=$(cpu_ticks_of "${measured[@]}")
        f="$OUT_DIR/wrk-$p-$r.txt"
        wrk_parse "$f" "$p"
        requests=$WRK_REQUESTS rps=$WRK_RPS p99=$WRK_P99 sockerr=$WRK_SOCKERR non2xx=$WRK_NON2XX
        ticks=$((after - before))
        cpu_us=$(cpu_us_per_req "$ticks" "$requests")
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
    local p=$1 n=$2 port name out
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
    snakeway | snakeway-pipeline | snakeway-wasm | snakeway-ratelimit | snakeway-pipeline-ratelimit | snakeway-percore)
        WASM_TIMEOUT_MS=$CALLGRIND_WASM_TIMEOUT_MS WASM_MAX_INSTANCES=$CALLGRIND_WASM_MAX_INSTANCES \
            snakeway_start "$name" "$p" "$port" "$PROXY_CPU" "${vg[@]}"
        ;;
    esac
    local pid=$STARTED_PID dir=$STARTED_DIR
    wait_port "$port" "$pid" "$VALGRIND_START_TIMEOUT" "$dir/stdout.log"
    # One extra request in both the N and the 5N run: it cancels out of (Ir(5N)-Ir(N))/4N.
    if [[ $p == snakeway-wasm ]]; then check_wasm_header "$port" 120; fi
    if [[ $p == snakeway-ratelimit || $p == snakeway-pipeline-ratelimit ]]; then check_ratelimit_header "$port" 120; fi
    callgrind_count "$p" "$pid" "$dir" "$port" "$out" "$n" "http://127.0.0.1:$port/"
}

# Can snakeway-wasm run under valgrind at all? `config check` builds the device, and with it
# the WASM engine, whose instance pool reserves its whole address range up front: about 8.6 TB
# at the default 1000 instances, 56 GiB at the CALLGRIND_WASM_MAX_INSTANCES used here; past
# valgrind's client address space mmap fails with EINVAL and the server refuses to start. The
# probe takes a second; when it fails, snakeway-wasm gets no instructions/req (the reason goes
# to the log and the summary) instead of ending the run.
declare -A CG_UNSUPPORTED
if [[ $SKIP_CALLGRIND != 1 ]] && wants snakeway-wasm; then
    WASM_TIMEOUT_MS=$CALLGRIND_WASM_TIMEOUT_MS WASM_MAX_INSTANCES=$CALLGRIND_WASM_MAX_INSTANCES \
        snakeway_config callgrind-probe-snakeway-wasm snakeway-wasm "$(free_port)"
    probe="$OUT_DIR/callgrind-probe-snakeway-wasm.txt"
    if ! valgrind --tool=none -q "$SNAKEWAY" config check -c "$STARTED_DIR/snakeway.toml" >"$probe" 2>&1; then
        CG_UNSUPPORTED[snakeway-wasm]=$(grep -m 1 -o 'device\[.*' "$probe" || tail -n 1 "$probe")
        log "WARNING: snakeway-wasm cannot start under valgrind, so its instructions/req are not measured: ${CG_UNSUPPORTED[snakeway-wasm]} (see $probe)"
    fi
fi

if [[ $SKIP_CALLGRIND != 1 ]]; then
    printf 'proxy\tN\tIr_N\tIr_5N\tinstructions_per_req\n' >"$OUT_DIR/callgrind-results.tsv"
    for p in $PROXIES; do
        if [[ -n ${CG_UNSUPPORTED[$p]:-} ]]; then
            printf '%s\t%s\t-\t-\t-\n' "$p" "$N" >>"$OUT_DIR/callgrind-results.tsv"
            continue
        fi
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
    M_RPS[$p]=$(median "${RPS[$p]}")
    M_P99[$p]=$(median "${P99[$p]}")
    M_CPU[$p]=$(median "${CPU_US[$p]}")
done
difference() { # A B FORMAT: A - B, signed, or – if either is missing
    awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { if (a == "" || b == "") print "–"; else printf f, a - b }'
}
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
    ratio_row snakeway-wasm snakeway
    ratio_row snakeway-ratelimit snakeway
    ratio_row snakeway-pipeline-ratelimit snakeway-pipeline
    ratio_row snakeway-percore snakeway
    ratio_row snakeway-percore nginx
    difference_row() { # A B: the row "A − B"
        wants "$1" && wants "$2" || return 0
        printf '| %s − %s | %s | %s | %s | %s |\n' "$1" "$2" \
            "$(difference "${M_RPS[$1]}" "${M_RPS[$2]}" '%+.0f')" \
            "$(difference "${M_P99[$1]}" "${M_P99[$2]}" '%+.2f')" \
            "$(difference "${M_CPU[$1]}" "${M_CPU[$2]}" '%+.2f')" \
            "$(difference "${IPR[$1]:-}" "${IPR[$2]:-}" '%+.0f')"
    }
    difference_row snakeway-ratelimit snakeway
    difference_row snakeway-pipeline-ratelimit snakeway-pipeline
    difference_row snakeway-wasm snakeway
    echo
    for p in "${!CG_UNSUPPORTED[@]}"; do
        echo "$p: no instructions/req: it cannot start under valgrind (${CG_UNSUPPORTED[$p]})."
    done
    if wants snakeway && wants snakeway-wasm; then
        echo "One WASM device (add-header, on-request only): $(difference "${M_CPU[snakeway-wasm]}" "${M_CPU[snakeway]}" '%+.2f') CPU µs/req (snakeway-wasm ${M_CPU[snakeway-wasm]}, snakeway ${M_CPU[snakeway]}; issue 4 target: one header-adding device ≤ 25 µs CPU per request), $(difference "${IPR[snakeway-wasm]:-}" "${IPR[snakeway]:-}" '%+.0f') instructions/req."
    fi
    echo "Proxies with $THREADS worker(s) each on CPU $PROXY_CPU; upstream and load generator on CPU $LOAD_CPU."
    echo "$ROUNDS rounds of wrk -t1 -c$CONNECTIONS -d${DURATION}s (after ${WARMUP}s warm-up each); callgrind: N=$N and 5N requests via h2load --h1 -c$CALLGRIND_CLIENT_CONNECTIONS."
    grep -E '^(nproc|cpu|loadavg)' "$OUT_DIR/machine.txt" | paste -sd ';' | sed 's/;/; /g'
} | tee "$OUT_DIR/summary.md"
ln -sfn "$(basename "$OUT_DIR")" "$(dirname "$OUT_DIR")/load-latest" 2>/dev/null || true
log "raw outputs in $OUT_DIR"
