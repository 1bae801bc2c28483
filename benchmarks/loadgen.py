"""A small closed-loop HTTP/1.1 load generator: keep-alive connections, pre-encoded requests.

Run as its own process (``python -m benchmarks.loadgen``) so its CPU time is measured apart
from the server's; it prints one JSON document with latencies and its own CPU seconds.
Every run is bounded in time and in request count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


async def _user(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    warm_until: float,
    budget: list[int],
    out: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while budget[0] > 0:
            now = time.perf_counter()
            if now >= stop_at:
                return
            budget[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            done = time.perf_counter()
            if now >= warm_until:
                if status == 200:
                    out.append(done - now)
                else:
                    errors[0] += 1
    finally:
        writer.close()


async def run(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    users: int,
    duration: float,
    warmup: float,
    max_requests: int,
) -> dict[str, object]:
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors = [0]
    budget = [max_requests]
    start = time.perf_counter()
    cpu0 = time.process_time()
    tasks = [
        _user(host, port, request, start + warmup + duration, start + warmup, budget, latencies, errors)
        for _ in range(users)
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=warmup + duration + 60)
    cpu = time.process_time() - cpu0
    measured = time.perf_counter() - start - warmup
    array = np.asarray(latencies)
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "seconds": measured,
        "rps": len(latencies) / measured if measured > 0 else 0.0,
        "p50_ms": float(np.percentile(array, 50) * 1000) if len(array) else None,
        "p99_ms": float(np.percentile(array, 99) * 1000) if len(array) else None,
        "p999_ms": float(np.percentile(array, 99.9) * 1000) if len(array) else None,
        "loadgen_cpu_share": cpu / (measured + warmup),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        run(
            args.host,
            args.port,
            args.path,
            args.body.read_bytes(),
            {k: v.strip() for k, v in headers.items()},
            args.users,
            args.duration,
            args.warmup,
            args.max_requests,
        )
    )
    json.dump(result, sys.stdout)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
