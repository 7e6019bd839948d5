#!/usr/bin/env bash
# Slowloris soak: ~2,000 slow or idle connections against `max_connections = 1000` while a
# normal client keeps making requests; reports the normal client's latency and the server's
# memory before, during and after.
#
#   benches/slowloris/run.sh                       # SLOW=2000 DURATION=30
#   SNAKEWAY_BIN=target/debug/snakeway DURATION=10 benches/slowloris/run.sh
#
# Everything runs on 127.0.0.1 on a free port and stops by itself after DURATION seconds.
#
# The attack (benches/slowloris/slowloris.py attack): SLOW connections, opened over about two
# seconds; even ones trickle one byte of an endless request head every second, odd ones send
# nothing after connecting. A connection the server closes is reopened at once, so the server
# stays under pressure for the whole run. Half of them cannot even get a slot (max_connections
# = 1000): they wait in the kernel's accept queue.
#
# The normal client (slowloris.py probe), in its own process:
#   * keepalive: 4 HTTP/1.1 keep-alive connections opened before the attack, one request in
#     flight on each (10 ms pause between requests);
#   * fresh_connection: one new connection per 100 ms (`connection: close`), which competes
#     with the attackers for a slot and for the accept queue.
#
# Server RSS (VmRSS of /proc/PID/status): before the attack, the peak sampled every 0.5 s
# during it, and 3 s after it ended.
#
# The listener uses header_read_timeout_ms = HEADER_TIMEOUT_MS (default 2000): that timeout is
# the slowloris defence (a slot held by a client that has not sent a whole head is freed after
# it); the default 10000 works the same, slower.
#
# Environment:
#   SLOW               hostile connections (default 2000)
#   DURATION           seconds of attack and probing (default 30)
#   MAX_CONNECTIONS    the listener's max_connections (default 1000)
#   HEADER_TIMEOUT_MS  the listener's header_read_timeout_ms (default 2000)
#   SNAKEWAY_BIN       use this binary instead of `cargo build --profile profiling --bin snakeway`
#   OUT_DIR            where raw outputs go (default bench-out/slowloris-<timestamp>)
#
# File descriptors: SLOW + a few hundred are needed by the attacker and MAX_CONNECTIONS + a few
# by the server; the script raises `ulimit -n` to 8192 (the hard limit must allow it).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BENCH=slowloris
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
source "$HERE/../lib.sh"

SLOW=${SLOW:-2000}
DURATION=${DURATION:-30}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-1000}
HEADER_TIMEOUT_MS=${HEADER_TIMEOUT_MS:-2000}
require_positive SLOW DURATION MAX_CONNECTIONS HEADER_TIMEOUT_MS
require_tools python3 awk

ulimit -n 8192 || die "cannot raise the open-files limit to 8192 (ulimit -Hn is $(ulimit -Hn))"

bench_dirs slowloris
snakeway_binary

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

PORT=$(free_port)
cat >"$TMP/snakeway.toml" <<TOML
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:$PORT"
max_connections = $MAX_CONNECTIONS
header_read_timeout_ms = $HEADER_TIMEOUT_MS

[[route]]
path = "/"
respond = { status = 200, body = "ok" }
TOML

SNAKEWAY_LOG=warn "$SNAKEWAY" serve -c "$TMP/snakeway.toml" >"$OUT_DIR/snakeway.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
wait_port "$PORT" "$SERVER" 30 "$OUT_DIR/snakeway.log"
sleep 1
RSS_BEFORE=$(rss_kib "$SERVER")
log "server pid $SERVER on port $PORT, RSS before: ${RSS_BEFORE} KiB"

python3 "$HERE/slowloris.py" probe "$PORT" "$DURATION" >"$OUT_DIR/probe.json" &
PROBE=$!
PIDS+=("$PROBE")
sleep 0.5
python3 "$HERE/slowloris.py" attack "$PORT" "$SLOW" "$DURATION" >"$OUT_DIR/attack.json" &
ATTACK=$!
PIDS+=("$ATTACK")

RSS_PEAK=$RSS_BEFORE
while kill -0 "$ATTACK" 2>/dev/null || kill -0 "$PROBE" 2>/dev/null; do
    r=$(rss_kib "$SERVER")
    ((r > RSS_PEAK)) && RSS_PEAK=$r
    sleep 0.5
done
wait "$PROBE" || die "the probe failed"
wait "$ATTACK" || die "the attacker failed"
forget_pid "$PROBE"
forget_pid "$ATTACK"
sleep 3
kill -0 "$SERVER" 2>/dev/null || die "the server died during the soak (log: $OUT_DIR/snakeway.log)"
RSS_AFTER=$(rss_kib "$SERVER")

{
    echo "{\"slow\": $SLOW, \"duration_s\": $DURATION, \"max_connections\": $MAX_CONNECTIONS,"
    echo " \"header_read_timeout_ms\": $HEADER_TIMEOUT_MS,"
    echo " \"rss_kib\": {\"before\": $RSS_BEFORE, \"peak_during\": $RSS_PEAK, \"after\": $RSS_AFTER},"
    echo " \"result\": [$(cat "$OUT_DIR/probe.json"), $(cat "$OUT_DIR/attack.json")]}"
} >"$OUT_DIR/summary.json"
cat "$OUT_DIR/summary.json"
log "raw outputs in $OUT_DIR"
