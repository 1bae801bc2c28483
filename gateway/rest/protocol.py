"""uvicorn's httptools protocol with the connection-level limits an exposed server needs.

uvicorn bounds neither how many connections are open nor how long a client may take to
send its headers, so one slow-loris client can hold a connection (and a buffer) forever.
This subclass adds, per connection:

- a cap on open connections: one more is answered 503 (v2 error body) and closed, except
  that a few (:data:`OPS_RESERVE`) may still reach a health probe or ``/metrics``, so an
  overloaded gateway is not also restarted by its liveness probe or lost to monitoring;
- a cap on header bytes (httptools has none): past it, 431 and close;
- a header deadline from the first byte of each request (and from connect, for a client
  that connects and sends nothing): past it, 408 and close;
- a body backstop: the handlers cut off a slow body themselves (``read_body``, 408); if
  nothing reads it (an error answered before the body arrived) the connection is closed
  a second after the same deadline;
- uvicorn's plain-text 400 for unparseable HTTP becomes a v2 error body;
- a response's head and body leave in one write (see :class:`CoalescingWriter`).

It also answers the common inference request itself (:class:`gateway.rest.direct.DirectCycle`),
without an ASGI task per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.auth import Authenticator
from gateway.codec.v2http import error_body
from gateway.config import LimitsConfig
from gateway.errors import BatchgateError
from gateway.rest.auth import authorize
from gateway.rest.direct import STATUS_LINES, DirectCycle
from gateway.rest.infer import WANTED, InferCall, InferFront, infer_target

BODY_GRACE_S = 1.0
# Connections past the cap that are kept until their request line shows whether they are a
# probe or a scrape (then answered and closed) or anything else (then 503 and closed).
OPS_RESERVE = 8
OPS_PATHS = frozenset({b"/v2/health/live", b"/v2/health/ready", b"/metrics"})


def canned_response(status: int, message: str, extra: bytes = b"") -> bytes:
    """A complete HTTP/1.1 response that closes the connection, with a v2 error body."""
    body = error_body(message)
    head = STATUS_LINES[status]
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


# What the direct path reads: the inference headers, and those that send a request the
# general way (a proxy's client address, a chunked body, credentials to check).
_DIRECT_HEADERS = WANTED | {b"authorization", b"transfer-encoding", b"x-forwarded-for"}


class GuardedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus connection cap and header/body deadlines (see the module docstring)."""

    limits: LimitsConfig = LimitsConfig()
    front: InferFront | None = None
    auth: Authenticator | None = None
    ops_open = 0  # reserve connections in use, per gateway (guarded_protocol makes the class)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One deadline per connection, and the loop timer behind it (see :meth:`_arm`).
        self._due = 0.0
        self._on_due: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._in_headers = True
        self._header_bytes = 0
        self._writer: CoalescingWriter | None = None
        self._reserve: bytearray | None = None  # past the cap: the bytes before its request line
        self._reserved = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            if type(self).ops_open >= OPS_RESERVE:
                self._refuse()
                return
            type(self).ops_open += 1
            self._reserved = True
            self._reserve = bytearray()
            self._arm(self.limits.header_timeout_s, self._refuse)
            return
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s, self._headers_late)

    def _refuse(self) -> None:
        self._disarm()
        message = f"too many open connections (limit {self.limits.max_connections}); retry later"
        self.transport.write(canned_response(503, message, b"retry-after: 1\r\n"))
        self.transport.close()

    def _reserve_received(self, data: bytes) -> bytes | None:
        """Past the cap: the buffered bytes once the request line names a probe or the
        metrics (the connection is then served, and closed after the answer); None meanwhile."""
        assert self._reserve is not None
        if self.transport.is_closing():
            return None  # refused already: whatever else it sends is dropped
        self._reserve += data
        end = self._reserve.find(b"\r\n")
        if end < 0:
            if len(self._reserve) > 1024:
                self._refuse()
            return None
        method, _, rest = bytes(self._reserve[:end]).partition(b" ")
        if method != b"GET" or rest.partition(b" ")[0].partition(b"?")[0] not in OPS_PATHS:
            self._refuse()
            return None
        buffered, self._reserve = bytes(self._reserve), None
        self._disarm()
        super().connection_made(self.transport)  # uvicorn takes it on only now
        return buffered

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop_timer()  # not left pending: it would keep this closed connection alive
        if self._reserved:
            self._reserved = False
            type(self).ops_open -= 1
        if self not in self.connections:  # refused in connection_made: uvicorn never saw it
            return
        super().connection_lost(exc)
        # The last request's cycle points back at this protocol: let go of it, so a closed
        # connection is freed by reference counting, not left for the garbage collector.
        self.cycle = None  # type: ignore[assignment]  # as uvicorn starts it
        self.pipeline.clear()

    def data_received(self, data: bytes) -> None:
        if self._reserve is not None:
            buffered = self._reserve_received(data)
            if buffered is None:
                return
            data = buffered
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
        self._unset_keepalive_if_required()  # a request answered within this read armed it
        self._arm(self.limits.header_timeout_s, self._headers_late)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        direct = self._direct() if self.front is not None else None
        if direct is not None:
            self.cycle = direct  # type: ignore[assignment]
            self._arm(self.limits.body_timeout_s, direct.body_late)
            return
        transport = self.transport
        self._writer = CoalescingWriter(transport, self.loop)
        self.transport = self._writer  # type: ignore[assignment]
        try:
            super().on_headers_complete()  # the request's cycle keeps the coalescing writer
        finally:
            self.transport = transport
        if self._reserved:
            self.cycle.keep_alive = False  # a reserve connection answers its probe, then closes
        self._arm(self.limits.body_timeout_s + BODY_GRACE_S, self._body_late)

    def _direct(self) -> DirectCycle | None:
        """A :class:`DirectCycle` for a plain inference request; None sends it the general way."""
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # an answer is still owed here: uvicorn queues this request behind it
        url = self.url
        if self.parser.get_method() != b"POST" or self.expect_100_continue or self.root_path or b"%" in url:
            return None
        path = url.partition(b"?")[0].decode("latin-1")
        target = infer_target(path)
        if target is None or self.parser.should_upgrade():
            return None
        headers = {name: value for name, value in self.headers if name in _DIRECT_HEADERS}
        declared = headers.get(b"content-length")
        if declared is None or not declared.isdigit() or int(declared) > self.front.max_body_bytes:  # type: ignore[union-attr]
            return None  # no length, or one the general path refuses while it drains the body
        if b"transfer-encoding" in headers or b"x-forwarded-for" in headers:
            return None
        authorization = headers.pop(b"authorization", None)
        refused = None
        principal = None
        if self.auth is not None:
            try:
                principal = authorize(self.auth, path, authorization.decode("latin-1") if authorization else None)
            except BatchgateError as exc:
                refused = exc
        call = InferCall(self.front, *target, headers, self.client[0] if self.client else None, principal)  # type: ignore[arg-type]
        if refused is None:
            try:
                call.limit()
            except BatchgateError as exc:
                refused = exc
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        return DirectCycle(self, call, keep_alive, refused)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if isinstance(cycle, DirectCycle):
            cycle.chunks.append(body)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        self._disarm()
        cycle = self.cycle
        if isinstance(cycle, DirectCycle):
            if not cycle.response_complete:
                cycle.body_complete()
            return
        super().on_message_complete()

    def _flush(self) -> None:
        """Send what a response cycle left pending, before the protocol writes or closes itself."""
        if self._writer is not None:
            self._writer.flush()

    def on_response_complete(self) -> None:
        self._flush()  # head and body written together, now, not a loop turn later
        if self.pipeline or self.transport.is_closing():
            super().on_response_complete()  # uvicorn starts the request queued behind this one
            return
        # What uvicorn does here, except that the keep-alive wait is this connection's
        # deadline rather than a loop timer of its own (see _arm). A request that has begun
        # meanwhile keeps its header deadline.
        self.server_state.total_requests += 1
        self.flow.resume_reading()
        if self._on_due is None:
            self._arm(self.timeout_keep_alive, self.timeout_keep_alive_handler)

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

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        """Make ``callback`` the connection's deadline, ``delay`` seconds from now.

        A request moves the deadline three times (headers, body, keep-alive); a loop timer
        made and cancelled for each cost about 3 us a pair, some 3% of the gateway's CPU per
        request. The timer is only replaced when the deadline comes earlier than it; one
        that fires early finds the later deadline and waits again.
        """
        due = self.loop.time() + delay
        self._due = due
        self._on_due = callback
        if self._timer is None or self._timer.when() > due:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(due, self._due_check)

    def _disarm(self) -> None:
        self._on_due = None  # a pending timer finds nothing due when it fires

    def _drop_timer(self) -> None:
        self._on_due = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due_check(self) -> None:
        self._timer = None
        callback = self._on_due
        if callback is None:
            return
        if self.loop.time() < self._due:  # moved later since this timer was set
            self._timer = self.loop.call_at(self._due, self._due_check)
            return
        self._on_due = None
        callback()

    def _headers_late(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is still being answered; its successor's headers are not late yet
        limit = self.limits.header_timeout_s
        self._flush()
        self.transport.write(canned_response(408, f"request headers not received within {limit:g}s"))
        self.transport.close()

    def _body_late(self) -> None:
        self._flush()
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(
    limits: LimitsConfig, front: InferFront | None = None, auth: Authenticator | None = None
) -> type[GuardedProtocol]:
    """A protocol class bound to ``limits`` (uvicorn instantiates the class itself); with
    ``front``, plain inference requests take the direct path (``auth`` checks their tokens)."""
    return type("BatchgateHttpProtocol", (GuardedProtocol,), {"limits": limits, "front": front, "auth": auth})
