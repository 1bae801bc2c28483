"""Bounded load for tests: closed-loop users and open-loop (fixed-rate) arrivals over raw HTTP/1.1.

Every run stops at ``duration_s`` and ``max_requests``, whichever comes first. A
connection the server closes counts as status 0 and the user reconnects.

A run holds the test process's garbage collector off, as the benchmark's load generator
does: late in the suite this process carries every earlier test's objects, and a full
collection mid-run paused the client long enough to move the latency it measured (the
shedding test's admitted p99 read 213 ms in the full suite, 112-123 ms run alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Outcome:
    """One request: HTTP status (0 = no answer), latency, and the response headers and body."""

    status: int
    latency_s: float
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    sent_at: float = 0.0


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    """No garbage collection pauses while the client times the server (a run is bounded)."""
    was_on = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> Outcome:
    started = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            key, value = line.split(b":", 1)
            headers[key.decode().strip().lower()] = value.decode().strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Outcome(int(head[9:12]), time.perf_counter() - started, headers, body, started)


async def _user(host: str, port: int, request: bytes, stop_at: float, budget: list[int], out: list[Outcome]) -> None:
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while budget[0] > 0 and time.perf_counter() < stop_at:
        budget[0] -= 1
        started = time.perf_counter()
        try:
            if connection is None:
                connection = await asyncio.open_connection(host, port)
            outcome = await asyncio.wait_for(_exchange(*connection, request), timeout=30)
            if outcome.headers.get("connection") == "close":
                connection[1].close()
                connection = None
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            outcome = Outcome(0, time.perf_counter() - started, sent_at=started, body=repr(exc).encode())
            if connection is not None:
                connection[1].close()
            connection = None
            await asyncio.sleep(0.01)  # back off before reconnecting, as a real client would
        out.append(outcome)
    if connection is not None:
        connection[1].close()


def closed_loop(
    port: int, path: str, body: bytes, users: int, duration_s: float, max_requests: int = 200_000
) -> list[Outcome]:
    """``users`` clients, each sending its next request when the last one is answered."""

    async def run() -> list[Outcome]:
        out: list[Outcome] = []
        budget = [max_requests]
        stop_at = time.perf_counter() + duration_s
        request = _request("127.0.0.1", port, path, body)
        await asyncio.gather(*(_user("127.0.0.1", port, request, stop_at, budget, out) for _ in range(users)))
        return out

    with _collector_off():
        return asyncio.run(run())


def open_loop(port: int, path: str, body: bytes, rate_per_s: float, duration_s: float) -> list[Outcome]:
    """Requests sent at a fixed rate whatever the answers, each on a pooled connection."""

    async def run() -> list[Outcome]:
        request = _request("127.0.0.1", port, path, body)
        idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        out: list[Outcome] = []

        async def one() -> None:
            started = time.perf_counter()
            try:
                reused = bool(idle)
                try:
                    connection = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
                    outcome = await asyncio.wait_for(_exchange(*connection, request), timeout=30)
                except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
                    # A pooled connection the server closed while idle (keep-alive timeout): the
                    # request was never read. Nothing came back: EOF, or a reset when the request
                    # reached the closed socket. Like any HTTP client, resend it once on a fresh
                    # connection. A partial answer, or a reset on a fresh connection, counts.
                    if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                        raise
                    if not isinstance(exc, asyncio.IncompleteReadError) and not reused:
                        raise
                    connection[1].close()
                    connection = await asyncio.open_connection("127.0.0.1", port)
                    outcome = await asyncio.wait_for(_exchange(*connection, request), timeout=30)
                idle.append(connection)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                outcome = Outcome(0, time.perf_counter() - started, sent_at=started, body=repr(exc).encode())
            out.append(outcome)

        tasks = []
        start = time.perf_counter()
        count = int(rate_per_s * duration_s)
        for index in range(count):
            delay = start + index / rate_per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
        for _, writer in idle:
            writer.close()
        return out

    with _collector_off():
        return asyncio.run(run())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
