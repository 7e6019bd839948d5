#!/usr/bin/env python3
"""Slowloris soak load: hostile connections and a normal client, against 127.0.0.1 only.

    slowloris.py attack PORT SLOW DURATION   # SLOW connections: half trickle one header byte
                                             # per second, half stay silent after connecting;
                                             # a connection the server closes is reopened
    slowloris.py probe PORT DURATION         # a normal client: requests in a loop, prints
                                             # one JSON line of latency figures

Everything is bounded: connections (SLOW), time (DURATION seconds), and the probe's request
rate (one request in flight per probe connection). Standard library only.
"""

import asyncio
import json
import sys
import time

HOST = "127.0.0.1"
REQUEST = b"GET / HTTP/1.1\r\nHost: soak.test\r\n\r\n"
TRICKLE = b"GET / HTTP/1.1\r\nHost: soak.test\r\nX-Slow: " + b"a" * 4096


async def slow_conn(port, trickle, deadline, stats):
    """One hostile connection, reopened whenever the server closes it, until the deadline."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
        except (OSError, asyncio.TimeoutError):
            stats["connect_failures"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["opened"] += 1
        try:
            i = 0
            while time.monotonic() < deadline:
                if trickle:
                    writer.write(TRICKLE[i % len(TRICKLE) : i % len(TRICKLE) + 1])
                    await writer.drain()
                    i += 1
                # A read that ends means the server closed us.
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                    if not data:
                        stats["closed_by_server"] += 1
                        break
                except asyncio.TimeoutError:
                    pass
        except OSError:
            stats["closed_by_server"] += 1
        finally:
            writer.close()


async def attack(port, slow, duration):
    deadline = time.monotonic() + duration
    stats = {"opened": 0, "closed_by_server": 0, "connect_failures": 0}
    tasks = []
    for i in range(slow):
        tasks.append(asyncio.create_task(slow_conn(port, i % 2 == 0, deadline, stats)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # open them over ~1 s, not in one burst
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"attack": stats}))


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))
    return round(sorted_values[k] * 1000, 2)


async def probe(port, duration):
    """Keep-alive requests on 4 connections opened first, plus one request per fresh
    connection every 100 ms (the accept path under pressure)."""
    deadline = time.monotonic() + duration
    kept, fresh = [], []
    errors = {"kept": 0, "fresh": 0}

    async def keepalive_loop():
        reader, writer = await asyncio.open_connection(HOST, port)
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                writer.write(REQUEST)
                await writer.drain()
                status = await asyncio.wait_for(read_response(reader), 10)
                if status != 200:
                    errors["kept"] += 1
                kept.append(time.perf_counter() - t)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                errors["kept"] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
            await asyncio.sleep(0.01)
        writer.close()

    async def fresh_once():
        t = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
            writer.write(b"GET / HTTP/1.1\r\nHost: soak.test\r\nConnection: close\r\n\r\n")
            await writer.drain()
            status = await asyncio.wait_for(read_response(reader), 10)
            writer.close()
            if status != 200:
                errors["fresh"] += 1
            fresh.append(time.perf_counter() - t)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            errors["fresh"] += 1

    async def fresh_loop():
        pending = []
        while time.monotonic() < deadline:
            pending.append(asyncio.create_task(fresh_once()))
            await asyncio.sleep(0.1)
        await asyncio.gather(*pending, return_exceptions=True)

    await asyncio.gather(*(keepalive_loop() for _ in range(4)), fresh_loop())
    kept.sort()
    fresh.sort()
    print(
        json.dumps(
            {
                "probe": {
                    "keepalive": {
                        "requests": len(kept),
                        "errors": errors["kept"],
                        "p50_ms": percentile(kept, 50),
                        "p99_ms": percentile(kept, 99),
                        "max_ms": percentile(kept, 100),
                    },
                    "fresh_connection": {
                        "requests": len(fresh),
                        "errors": errors["fresh"],
                        "p50_ms": percentile(fresh, 50),
                        "p99_ms": percentile(fresh, 99),
                        "max_ms": percentile(fresh, 100),
                    },
                }
            }
        )
    )


def main():
    mode = sys.argv[1]
    if mode == "attack":
        asyncio.run(attack(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
    elif mode == "probe":
        asyncio.run(probe(int(sys.argv[2]), float(sys.argv[3])))
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
