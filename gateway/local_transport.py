"""Gateway side of the framed local transport to same-machine workers (:mod:`workers.framing`).

A plain :class:`asyncio.Protocol`: the worker's answer is handled inside
``data_received``, synchronously, so the batcher can hand the worker its next batch
before the event loop turns to anything else. With streams and tasks, each answer
waited behind every queued HTTP callback, and the workers idled (measured: 27% busy
at 64 users).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from gateway.errors import BatchgateError, DeadlineExceeded, Unavailable
from workers import framing

SEPARATE_PAYLOAD_BYTES = 64 * 1024
"""A request this large is written after its header rather than joined to it."""

Reply = Callable[[int, bytes | None, BatchgateError | None], None]


class LocalConnection(asyncio.Protocol):
    """One connection to a worker's framed socket, carrying one request at a time."""

    def __init__(self, name: str, on_idle: Callable[[LocalConnection], None]) -> None:
        self.name = name
        self._on_idle = on_idle
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._reply: Reply | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def usable(self) -> bool:
        """False once the worker side is gone, even before ``connection_lost`` has run."""
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def request(self, payload: bytes, timeout_s: float, reply: Reply) -> None:
        """Send one framed request; ``reply(kind, body, error)`` is called exactly once."""
        assert self.transport is not None and self._reply is None
        self._reply = reply
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self._timed_out)
        try:
            if len(payload) < SEPARATE_PAYLOAD_BYTES:
                self.transport.write(framing.frame(framing.REQUEST, payload))
            else:  # a large batch is not copied once more behind its 5-byte header
                self.transport.write(framing.HEADER.pack(len(payload), framing.REQUEST))
                self.transport.write(payload)
        except (RuntimeError, OSError) as exc:  # uvloop: "the handler is closed" (worker just died)
            self.closed = True
            self._deliver(0, None, Unavailable(f"worker {self.name} connection closed: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        header = framing.HEADER.size
        while len(self._buffer) >= header:
            size, kind = framing.HEADER.unpack_from(self._buffer)
            if len(self._buffer) < header + size:
                return
            with memoryview(self._buffer) as view:  # one copy out of the buffer, not a slice and a copy of it
                body = bytes(view[header : header + size])
            del self._buffer[: header + size]
            self._deliver(kind, body, None)

    def _deliver(self, kind: int, body: bytes | None, error: BatchgateError | None) -> None:
        reply, self._reply = self._reply, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if error is None and not self.closed:
            self._on_idle(self)
        if reply is not None:
            reply(kind, body, error)

    def _timed_out(self) -> None:
        self._timer = None
        self.close()
        self._deliver(0, None, DeadlineExceeded(f"worker {self.name} did not answer in time"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._reply is not None:
            self._deliver(0, None, Unavailable(f"worker {self.name} closed the connection: {exc!r}"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
