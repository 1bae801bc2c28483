"""uvicorn's httptools protocol with the connection-level limits an exposed server needs.

uvicorn bounds neither how many connections are open nor how long a client may take to
send its headers, so one slow-loris client can hold a connection (and a buffer) forever.
This subclass adds, per connection:

- a cap on open connections: one more is answered 503 (v2 error body) and closed;
- a cap on header bytes (httptools has none): past it, 431 and close;
- a header deadline from the first byte of each request (and from connect, for a client
  that connects and sends nothing): past it, 408 and close;
- a body backstop: the handlers cut off a slow body themselves (``read_body``, 408); if
  nothing reads it (an error answered before the body arrived) the connection is closed
  a second after the same deadline;
- uvicorn's plain-text 400 for unparseable HTTP becomes a v2 error body;
- a response's head and body leave in one write (see :class:`CoalescingWriter`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.codec.v2http import error_body
from gateway.config import LimitsConfig

BODY_GRACE_S = 1.0
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def canned_response(status: int, message: str, extra: bytes = b"") -> bytes:
    """A complete HTTP/1.1 response that closes the connection, with a v2 error body."""
    body = error_body(message)
    head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
    fields = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body)
    return head + fields + extra + b"\r\n" + body


class CoalescingWriter:
    """The transport as a response cycle sees it: a response's writes go out as one ``write``.

    uvicorn writes a response's status line and headers, then its body, as two system
    calls; py-spy put those two writes at ~17% of a loaded gateway's event loop. The
    protocol flushes when the response completes (so nothing waits a loop turn); a
    streamed response's chunks go at the end of the loop step they were written in.
    Order is kept, and ``close`` sends what is pending first.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus connection cap and header/body deadlines (see the module docstring)."""

    limits: LimitsConfig = LimitsConfig()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_headers = True
        self._header_bytes = 0
        self._writer: CoalescingWriter | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            message = f"too many open connections (limit {self.limits.max_connections}); retry later"
            transport.write(canned_response(503, message, b"retry-after: 1\r\n"))
            transport.close()
            self.transport = transport
            return
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self not in self.connections:  # refused in connection_made: uvicorn never saw it
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # Counted before parsing but judged after: a chunk that also carries the body has
        # completed the headers by now, so only headers still unfinished can be too long.
        if self._in_headers and self._header_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
            self._disarm()
            self._flush()
            limit = self.limits.max_header_bytes
            self.transport.write(canned_response(431, f"request headers exceed {limit} bytes"))
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.limits.header_timeout_s, self._headers_late)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        transport = self.transport
        self._writer = CoalescingWriter(transport, self.loop)
        self.transport = self._writer  # type: ignore[assignment]
        try:
            super().on_headers_complete()  # the request's cycle keeps the coalescing writer
        finally:
            self.transport = transport
        self._arm(self.limits.body_timeout_s + BODY_GRACE_S, self._body_late)

    def on_message_complete(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        self._disarm()
        super().on_message_complete()

    def _flush(self) -> None:
        """Send what a response cycle left pending, before the protocol writes or closes itself."""
        if self._writer is not None:
            self._writer.flush()

    def on_response_complete(self) -> None:
        self._flush()  # head and body written together, now, not a loop turn later
        super().on_response_complete()

    def eof_received(self) -> None:
        self._flush()  # the transport closes once this returns; what it holds still goes out
        super().eof_received()

    def shutdown(self) -> None:
        self._flush()
        super().shutdown()

    def timeout_keep_alive_handler(self) -> None:
        self._flush()
        super().timeout_keep_alive_handler()

    def send_400_response(self, msg: str) -> None:
        self._flush()
        self._disarm()
        self.transport.write(canned_response(400, f"malformed HTTP request: {msg}"))
        self.transport.close()

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is still being answered; its successor's headers are not late yet
        limit = self.limits.header_timeout_s
        self._flush()
        self.transport.write(canned_response(408, f"request headers not received within {limit:g}s"))
        self.transport.close()

    def _body_late(self) -> None:
        self._deadline = None
        self._flush()
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(limits: LimitsConfig) -> type[GuardedProtocol]:
    """A protocol class bound to ``limits`` (uvicorn instantiates the class itself)."""
    return type("BatchgateHttpProtocol", (GuardedProtocol,), {"limits": limits})
