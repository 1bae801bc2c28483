"""A small load generator: keep-alive HTTP/1.1 or gRPC (``benchmarks.h2grpc``), pre-encoded requests.

Closed loop (``--users N``: each user sends its next request when the last is answered)
or open loop (``--rate R``: Poisson arrivals at R requests/s whatever the server does,
latency counted from each request's scheduled arrival, so a stalled server cannot hide
its queue: no coordinated omission). Run as its own process (``python -m
benchmarks.loadgen``) so its CPU time is measured apart from the server's; it prints
one JSON document with latencies and its own CPU seconds. Every run is bounded in time
and in request count.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from benchmarks import h1
from benchmarks.h2grpc import NO_STATUS, Connection
from workers.allocator import keep_freed_memory

Send = Callable[[], "asyncio.Future[int]"]
CLOSED = "connection closed"  # the server closed or refused the connection


def code_name(code: int, grpc: bool) -> str:
    """How an answer that was not OK is reported: the status, or why there was none."""
    if grpc:
        return "no grpc-status" if code == NO_STATUS else f"grpc-status {code}"
    return "not sent: connection limit" if code == h1.NOT_SENT else f"HTTP {code}"


MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class Window:
    """Shared budget and results of one run."""

    def __init__(self, warm_until: float, stop_at: float, max_requests: int, grpc: bool = False) -> None:
        self.warm_until = warm_until
        self.stop_at = stop_at
        self.budget = max_requests
        self.grpc = grpc
        self.ok_code = 0 if grpc else 200
        self.latencies: list[float] = []
        self.ok_in_window = 0  # good answers that also arrived before the window closed
        self.errors: collections.Counter[str] = collections.Counter()  # what each failed answer was

    def ok(self, started: float) -> None:
        """Count one good answer to a request sent (or, open loop, due) at ``started``."""
        now = time.perf_counter()
        self.latencies.append(now - started)
        self.ok_in_window += now <= self.stop_at

    def error(self, code: int | None) -> None:
        """Count one failed answer: its status, or None when the connection was lost."""
        self.errors[CLOSED if code is None else code_name(code, self.grpc)] += 1

    async def loop(self, send: Callable[[], Awaitable[int]]) -> None:
        while self.budget > 0:
            started = time.perf_counter()
            if started >= self.stop_at:
                return
            self.budget -= 1
            code: int | None
            try:
                code = await send()
            except OSError:  # the server closed the connection (or refused a new one): an error, counted
                code = None
            if started >= self.warm_until:
                if code == self.ok_code:
                    self.ok(started)
                else:
                    self.error(code)


async def _http_user(window: Window, host: str, port: int, request: bytes) -> None:
    connection = await h1.Connection.open(host, port, request)

    async def send() -> int:
        nonlocal connection
        if connection.closed is not None:  # closed by the server: carry on over a new one
            connection = await h1.Connection.open(host, port, request)
        return await connection.call()

    try:
        await window.loop(send)
    finally:
        connection.close()


async def open_loop(window: Window, send: Send, rate: float, seed: int = 0) -> None:
    """Poisson arrivals at ``rate``/s until the window closes; waits for the last answers.

    Each answer is counted in its future's callback: no task per request, so the
    generator's own CPU stays small next to the server's.
    """
    rng = np.random.default_rng(seed)
    pending: set[asyncio.Future[int]] = set()

    def count(scheduled: float, answer: asyncio.Future[int]) -> None:
        pending.discard(answer)
        # An answer that failed (the server closed the connection) is an error, counted.
        code = None if answer.cancelled() or answer.exception() is not None else answer.result()
        if scheduled >= window.warm_until:
            if code == window.ok_code:
                window.ok(scheduled)
            else:
                window.error(code)

    arrival = time.perf_counter()
    while window.budget > 0:
        arrival += float(rng.exponential(1.0 / rate))
        if arrival >= window.stop_at:
            break
        delay = arrival - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the arrivals, not waiting on the server
        window.budget -= 1
        try:
            answer = send()
        except OSError:  # the connection is gone: an error, counted
            if arrival >= window.warm_until:
                window.error(None)
            continue
        pending.add(answer)
        answer.add_done_callback(functools.partial(count, arrival))
    if pending:
        await asyncio.wait(pending)


async def run(args: argparse.Namespace) -> dict[str, object]:
    body = args.body.read_bytes()
    start = time.perf_counter()
    window = Window(start + args.warmup, start + args.warmup + args.duration, args.max_requests, args.grpc)
    cpu0 = time.process_time()
    connection = None
    if args.grpc:
        connection = await Connection.open(args.host, args.port, MODEL_INFER, body)
        send = connection.call
        tasks = [open_loop(window, send, args.rate)] if args.rate else [window.loop(send) for _ in range(args.users)]
    else:
        head = [f"POST {args.path} HTTP/1.1", f"Host: {args.host}:{args.port}", f"Content-Length: {len(body)}"]
        head += args.header
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        if args.rate:
            pool = h1.Pool(args.host, args.port, request, args.max_connections)
            tasks = [open_loop(window, pool.send, args.rate)]
        else:
            tasks = [_http_user(window, args.host, args.port, request) for _ in range(args.users)]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.warmup + args.duration + 60)
    if connection is not None:
        connection.close()
    if args.samples is not None:
        step = max(1, len(window.latencies) // 20_000)  # enough for a CDF, small enough to commit
        samples = sorted(window.latencies)[::step]
        args.samples.write_text(json.dumps([round(x * 1000, 4) for x in samples]))
    cpu = time.process_time() - cpu0
    measured = time.perf_counter() - start - args.warmup
    array = np.asarray(window.latencies)

    def percentile(q: float) -> float | None:
        return float(np.percentile(array, q) * 1000) if len(array) else None

    return {
        "requests": len(array),
        "errors": sum(window.errors.values()),
        "error_kinds": dict(window.errors.most_common()),
        "seconds": measured,
        "rps": len(array) / measured if measured > 0 else 0.0,
        "p50_ms": percentile(50),
        "p99_ms": percentile(99),
        "p999_ms": percentile(99.9),
        "loadgen_cpu_share": cpu / (measured + args.warmup),
        # Past capacity an open loop's last answers come seconds after the window (the
        # requests waited in the server's accept queue), and "rps" divides by that time too;
        # this counts only what the server answered within the window.
        "ok_in_window_per_s": window.ok_in_window / args.duration,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/", help="HTTP path to POST to")
    parser.add_argument("--body", type=Path, required=True, help="request body, or a serialized ModelInferRequest")
    parser.add_argument("--header", action="append", default=[], help="extra HTTP header line")
    parser.add_argument("--grpc", action="store_true", help="call ModelInfer over gRPC instead of HTTP")
    parser.add_argument("--users", type=int, default=1, help="closed loop: concurrent users")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: Poisson arrivals per second")
    parser.add_argument("--max-connections", type=int, default=4096, help="open-loop HTTP connection cap")
    parser.add_argument("--samples", type=Path, help="write sorted latency samples (ms) here, for a CDF")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    args = parser.parse_args()
    keep_freed_memory()  # as batchgate's own processes do (workers/allocator.py)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    # The generator must not pause to collect while it times the server: a full collection
    # took 7-19 ms here, mid-run at 6,300 requests/s, and every answer waiting meanwhile
    # counted it as server latency. A run makes no cyclic garbage worth collecting (RSS
    # stayed 54 MB with the collector off), and it is bounded in time and requests.
    gc.collect()
    gc.freeze()
    gc.disable()
    json.dump(asyncio.run(run(args)), sys.stdout)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
