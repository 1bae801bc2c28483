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
- uvicorn's plain-text 400 for unparseable HTTP becomes a v2 error body.
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


class GuardedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus connection cap and header/body deadlines (see the module docstring)."""

    limits: LimitsConfig = LimitsConfig()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_headers = True
        self._header_bytes = 0

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
            limit = self.limits.max_header_bytes
            self.transport.write(canned_response(431, f"request headers exceed {limit} bytes"))
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.limits.header_timeout_s, self._headers_late)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()
        self._arm(self.limits.body_timeout_s + BODY_GRACE_S, self._body_late)

    def on_message_complete(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
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
        self.transport.write(canned_response(408, f"request headers not received within {limit:g}s"))
        self.transport.close()

    def _body_late(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(limits: LimitsConfig) -> type[GuardedProtocol]:
    """A protocol class bound to ``limits`` (uvicorn instantiates the class itself)."""
    return type("BatchgateHttpProtocol", (GuardedProtocol,), {"limits": limits})
