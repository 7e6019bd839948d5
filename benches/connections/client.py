#!/usr/bin/env python3
"""Client of the connection-scale benchmark (benches/connections/run.sh). Standard library only.

  client.py hold  PROTO PORT N      open N keep-alive connections, send one GET / on each, read
                                    its whole answer (it must be a 200), print `ready N`, then
                                    keep every connection open until stdin closes.
  client.py churn PROTO PORT N K    send N requests, each on a new connection (K threads):
                                    connect, [TLS handshake,] GET / with `connection: close`,
                                    read to the end; print `done N`.

PROTO: h1 (HTTP/1.1 plain), h1s (HTTP/1.1 over TLS, ALPN http/1.1), h2c (prior-knowledge
HTTP/2), h2s (HTTP/2 over TLS, ALPN h2), and for churn also h1s-resume: TLS that resumes the
previous session of its thread (the first handshake of each thread is a full one; the count of
resumed handshakes is printed). HTTP/2 requests are hand-encoded: a SETTINGS frame, then one
HEADERS frame made of HPACK static-table indexes and a literal :authority.
"""

import asyncio
import ssl
import socket
import struct
import sys
import threading

HOST = "127.0.0.1"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
AUTHORITY = b"localhost"
CONNECT_AT_ONCE = 256  # connects in flight at a time (stays below the listen backlogs)


def h1_request(close):
    extra = b"connection: close\r\n" if close else b""
    return b"GET / HTTP/1.1\r\nhost: localhost\r\n" + extra + b"\r\n"


def h2_frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_request(tls):
    # :method GET (2), :scheme http (6) / https (7), :path / (4), :authority literal, indexed
    # name 1 without indexing.
    block = bytes([0x82, 0x87 if tls else 0x86, 0x84, 0x01, len(AUTHORITY)]) + AUTHORITY
    return PREFACE + h2_frame(4, 0, 0, b"") + h2_frame(1, 0x05, 1, block)


def tls_context(alpn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


async def read_h1(reader):
    """Reads one response head and its content-length body; returns the status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def read_h2(reader, writer):
    """Reads frames until stream 1 ends; acks the server's SETTINGS; returns the status."""
    status = None
    while True:
        header = await reader.readexactly(9)
        length = int.from_bytes(header[:3], "big")
        kind, flags = header[3], header[4]
        stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        payload = await reader.readexactly(length)
        if kind == 4 and not flags & 1:
            writer.write(h2_frame(4, 1, 0, b""))
        if kind == 7:
            raise RuntimeError("GOAWAY")
        if stream == 1 and kind == 1:
            # The server's first header is :status, indexed (0x88 = 200) or a literal.
            first = payload[0]
            status = 200 if first == 0x88 else -first
        if stream == 1 and kind in (0, 1) and flags & 1:
            return status


async def open_one(proto, port, gate):
    async with gate:
        tls = proto in ("h1s", "h2s")
        ctx = tls_context("h2" if proto == "h2s" else "http/1.1") if tls else None
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=ctx, server_hostname="localhost" if tls else None, limit=1 << 16
        )
        if proto in ("h1", "h1s"):
            writer.write(h1_request(False))
            status = await read_h1(reader)
        else:
            writer.write(h2_request(tls))
            status = await read_h2(reader, writer)
        if status != 200:
            raise RuntimeError(f"status {status}")
        return reader, writer


async def hold(proto, port, n):
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    results = await asyncio.gather(*(open_one(proto, port, gate) for _ in range(n)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"failed {len(errors)} of {n}: {errors[0]!r}", flush=True)
        sys.exit(1)
    print(f"ready {n}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for _, writer in results:
        writer.close()


def churn_worker(proto, port, count, stats, lock):
    try:
        churn_loop(proto, port, count, stats, lock)
    except Exception as e:  # noqa: BLE001 - reported, and the run fails
        with lock:
            stats["errors"].append(repr(e))


def churn_loop(proto, port, count, stats, lock):
    tls = proto.startswith("h1s")
    ctx = tls_context("http/1.1") if tls else None
    session = None
    resumed = 0
    request = h1_request(True)
    for _ in range(count):
        sock = socket.create_connection((HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            reuse = session if proto == "h1s-resume" else None
            sock = ctx.wrap_socket(sock, server_hostname="localhost", session=reuse)
            resumed += sock.session_reused
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"answer {answer[:40]!r}")
        if tls:
            # TLS 1.3 tickets arrive after the handshake; they have been read by now.
            session = sock.session
        sock.close()
    with lock:
        stats["resumed"] += resumed


def churn(proto, port, n, k):
    stats = {"resumed": 0, "errors": []}
    lock = threading.Lock()
    counts = [n // k + (1 if i < n % k else 0) for i in range(k)]
    threads = [threading.Thread(target=churn_worker, args=(proto, port, c, stats, lock)) for c in counts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if stats["errors"]:
        print(f"failed {len(stats['errors'])} threads: {stats['errors'][0]}", flush=True)
        sys.exit(1)
    print(f"done {n} resumed {stats['resumed']}", flush=True)


def main():
    mode, proto, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if mode == "hold" and proto in ("h1", "h1s", "h2c", "h2s"):
        asyncio.run(hold(proto, port, n))
    elif mode == "churn" and proto in ("h1", "h1s", "h1s-resume"):
        churn(proto, port, n, int(sys.argv[5]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
