"""The operations port (DESIGN: Prometheus on :8002): ``/metrics`` and the two health
probes on a listening socket of their own.

Why a socket of its own: a storm of client connections fills the HTTP port's accept queue,
and a probe or a scrape sent there waits behind them in the kernel, where the gateway can
neither see it nor put it first. The HTTP port's reserve (``gateway.rest.protocol``) only
helps connections the gateway has accepted. This socket's queue holds probes and scrapes
alone, and the event loop still turns under load, so they are answered. Measured in the
README ("When things break").

Plain HTTP/1.1 (no TLS, like Triton's metrics port), GET or HEAD of three paths, each
answered at once; keep-alive for scrapers; at most :data:`MAX_CONNECTIONS` open. A request must arrive within
``limits.header_timeout_s`` and fit in ``limits.max_header_bytes``; an idle connection is
closed after :data:`IDLE_TIMEOUT_S`. Authentication, when on, applies as on the HTTP
port: a path outside ``auth.public_paths`` needs a token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

import httptools
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.auth import Authenticator
from gateway.codec.v2http import error_body
from gateway.config import LimitsConfig
from gateway.errors import BatchgateError
from gateway.metrics import Metrics, exposition
from gateway.rest.auth import authorize
from gateway.rest.direct import STATUS_LINES
from gateway.rest.protocol import canned_response

log = logging.getLogger("batchgate")

MAX_CONNECTIONS = 64  # kubelet probes and a few scrapers; not a second front door
IDLE_TIMEOUT_S = 5.0  # as the HTTP port's keep-alive
PATHS = frozenset({"/metrics", "/v2/health/live", "/v2/health/ready"})
Response = tuple[int, bytes, bytes, bytes]  # status, content type, body, extra header lines
Later = Coroutine[Any, Any, Response]  # an answer that takes turns of the event loop to make


class OpsPort:
    """The listener; :meth:`respond` decides every answer, :class:`_Connection` speaks HTTP."""

    def __init__(
        self, metrics: Metrics, ready: Callable[[], bool], limits: LimitsConfig, auth: Authenticator | None = None
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.limits = limits
        self.auth = auth
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _Connection(self), host, port)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics port {host}:{port}: {exc.strerror}") from None
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection.close()
        await self._server.wait_closed()

    def respond(self, method: bytes, path: str, authorization: str | None) -> Response | Later:
        """The answer, or for a scrape the coroutine that renders it between other work."""
        if path not in PATHS:
            message = f"{path} is not served here: this port serves {', '.join(sorted(PATHS))}"
            return 404, b"application/json", error_body(message), b""
        if method not in (b"GET", b"HEAD"):
            return 405, b"application/json", error_body(f"{path} takes GET"), b"allow: GET, HEAD\r\n"
        if self.auth is not None:
            try:
                authorize(self.auth, path, authorization)
            except BatchgateError as exc:
                return exc.http_status, b"application/json", error_body(exc.message), b""
        if path == "/metrics":
            return self._scrape()
        if path == "/v2/health/ready" and not self.ready():
            return 503, b"text/plain", b"", b""
        return 200, b"text/plain", b"", b""

    async def _scrape(self) -> Response:
        return 200, CONTENT_TYPE_LATEST.encode(), await exposition(self.metrics.registry), b""


def _head(status: int, content_type: bytes, length: int, extra: bytes, keep_alive: bool) -> bytes:
    connection = b"" if keep_alive else b"connection: close\r\n"
    fields = b"content-type: %s\r\ncontent-length: %d\r\n" % (content_type, length)
    return STATUS_LINES[status] + fields + connection + extra + b"\r\n"


class _Connection(asyncio.Protocol):
    """One client of the operations port: httptools parses, :meth:`OpsPort.respond` answers."""

    def __init__(self, port: OpsPort) -> None:
        self.port = port
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._url = b""
        self._authorization: str | None = None
        self._request_bytes = 0  # of the request being read
        # The answer being made while the loop turns (a scrape); later answers queue behind it.
        self._pending: asyncio.Task[None] | None = None

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if len(self.port.connections) >= MAX_CONNECTIONS:
            self._fail(503, f"too many open connections on the metrics port (limit {MAX_CONNECTIONS})")
            return
        self.port.connections.add(self)
        self._arm(self.port.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.port.connections.discard(self)
        self._disarm()
        # The parser points back here: without this, every probe's connection would wait
        # for the collector (the HTTP port frees its connections the same way).
        self.parser = None  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._request_bytes += len(data)
        if self._request_bytes > self.port.limits.max_header_bytes:
            limit = self.port.limits.max_header_bytes
            self._fail(413, f"requests to the metrics port are GETs of at most {limit} bytes")
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not served on the metrics port")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._authorization = None
        self._arm(self.port.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self._authorization = value.decode("latin-1")

    def on_message_complete(self) -> None:
        assert self.transport is not None
        method = self.parser.get_method()
        path = httptools.parse_url(self._url).path.decode("latin-1")
        reply = self.port.respond(method, path, self._authorization)
        keep_alive = self.parser.should_keep_alive()
        self._request_bytes = 0
        if self._pending is None and isinstance(reply, tuple):
            self._send(method, reply, keep_alive)
            return
        # Answers go out in the order asked, so this one waits for any before it. Reading
        # stops meanwhile; requests already read (pipelined) queue up here.
        self._disarm()
        self.transport.pause_reading()
        self._pending = asyncio.ensure_future(self._send_later(self._pending, method, reply, keep_alive))

    async def _send_later(
        self, before: asyncio.Task[None] | None, method: bytes, reply: Response | Later, keep_alive: bool
    ) -> None:
        if before is not None:
            await before
        try:
            answer = reply if isinstance(reply, tuple) else await reply
        except Exception:  # a collector that fails must not leave the connection waiting
            log.exception("rendering /metrics failed")
            answer = 500, b"application/json", error_body("the metrics could not be rendered"), b""
        if asyncio.current_task() is self._pending:
            self._pending = None
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
        if self.transport is not None and not self.transport.is_closing():
            self._send(method, answer, keep_alive)

    def _send(self, method: bytes, answer: Response, keep_alive: bool) -> None:
        assert self.transport is not None
        status, content_type, body, extra = answer
        head = _head(status, content_type, len(body), extra, keep_alive)
        self.transport.write(head if method == b"HEAD" else head + body)
        if not keep_alive:
            self.transport.close()
        elif self._pending is None:
            self._arm(IDLE_TIMEOUT_S)

    # -- errors and timers -------------------------------------------------------------------
    def _fail(self, status: int, message: str) -> None:
        assert self.transport is not None
        self.transport.write(canned_response(status, message))
        self.transport.close()
        self._disarm()

    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(delay, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing() or self._pending is not None:
            return
        if self._request_bytes:
            self._fail(408, "the request took too long to arrive")
        else:
            self.transport.close()  # idle: nothing to answer
