"""The v2 infer endpoint as plain ASGI: the one hot path, kept off the framework.

py-spy on a loaded gateway showed Starlette's layers (error and exception middleware,
matching ~20 routes, Request/Response objects) taking about a third of the event loop
per inference request. :class:`InferFront` answers ``POST .../infer`` itself and hands
every other request to the Starlette application, which still owns routing errors
(404/405) and the rest of the API. The request is handled exactly as before: body
limits and deadline, the binary extension, per-client limits, disconnect detection,
content coding, and v2 error bodies.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.codec import DecodeLimits
from gateway.codec.v2http import decode_request, error_body, json_values
from gateway.config import LimitsConfig
from gateway.errors import BatchgateError, Cancelled, InvalidInput, RequestTimeout, Unauthenticated
from gateway.limits import ClientLimiter, client_key
from gateway.metrics import Metrics
from gateway.rest.body import check_declared, decode_content, pick_encoding, receive_body
from gateway.rest.json_offload import JsonOffload, encode_body
from gateway.router import FALLBACK_HEADER, Router, Ticket
from gateway.types import InferRequest, InferResponse

log = logging.getLogger("batchgate.rest")

JSON = b"application/json"
OCTETS = b"application/octet-stream"
WANTED = {
    b"content-length",
    b"content-encoding",
    b"accept-encoding",
    b"inference-header-content-length",
    b"x-client-id",
    b"x-batchgate-timeout-ms",
}
"""The request headers the inference path reads."""


def infer_target(path: str) -> tuple[str, str] | None:
    """(model, version) when ``path`` is ``/v2/models/{m}[/versions/{v}]/infer``."""
    parts = path.split("/")
    if len(parts) == 5 and parts[4] == "infer" and parts[1] == "v2" and parts[2] == "models" and parts[3]:
        return parts[3], ""
    if len(parts) == 7 and parts[6] == "infer" and parts[1:3] == ["v2", "models"] and parts[4] == "versions":
        if parts[3] and parts[5]:
            return parts[3], parts[5]
    return None


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


Answer = tuple[int, bytes, bytes | memoryview, list[tuple[bytes, bytes]]]
"""A response as both HTTP paths send it: status, content type, body, extra headers. The
body is a view when a JSON process wrote it: the bytes as they arrived, not copied again."""


def error_messages(error: BatchgateError) -> tuple[Message, Message]:
    """The ASGI messages of ``error``'s v2 error response."""
    return messages(error_answer(error))


def error_answer(error: BatchgateError) -> Answer:
    """The v2 error response for ``error`` (status from the error class)."""
    extra = []
    if error.retry_after_s is not None:
        extra.append((b"retry-after", str(max(1, math.ceil(error.retry_after_s))).encode()))
    if isinstance(error, Unauthenticated):
        extra.append((b"www-authenticate", b'Bearer realm="batchgate"'))
    if isinstance(error, RequestTimeout):
        # A slow client's half-sent body must not be read as the next request. A refused
        # large body (413) is instead discarded as it arrives, so the client, still
        # sending, reads its answer; the protocol's body deadline bounds that.
        extra.append((b"connection", b"close"))
    return error.http_status, JSON, error_body(error.message), extra


def messages(answer: Answer) -> tuple[Message, Message]:
    """The two ASGI messages that send ``answer``."""
    status, content_type, body, extra = answer
    if isinstance(body, memoryview):
        body = bytes(body)  # ASGI bodies are bytes
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *extra]
    return {"type": "http.response.start", "status": status, "headers": headers}, {
        "type": "http.response.body",
        "body": body,
    }


class InferCall:
    """One ``POST .../infer`` from its headers to its answer: what both HTTP paths share.

    The ASGI path (:meth:`InferFront.handle`) and the protocol's direct path
    (:class:`gateway.rest.protocol.GuardedProtocol`) differ only in how the body arrives,
    how they wait, and how the answer is written; limits, decoding, admission, encoding
    and the metrics live here, so the two cannot drift apart.
    """

    __slots__ = (
        "front",
        "gauge",
        "headers",
        "model",
        "peer",
        "principal",
        "release",
        "request",
        "started",
        "ticket",
        "version",
    )

    def __init__(
        self,
        front: InferFront,
        model: str,
        version: str,
        headers: dict[bytes, bytes],
        peer: str | None,
        principal: str | None,
    ) -> None:
        self.front = front
        self.model = model
        self.version = version
        self.headers = headers
        self.peer = peer
        self.principal = principal
        self.started = time.perf_counter()
        self.release: Callable[[], None] | None = None
        self.ticket: Ticket | None = None
        self.request: InferRequest | None = None
        self.gauge = front.router.inflight_gauge(model)
        self.gauge.inc()

    def limit(self) -> None:
        """Take the client's place under its per-client limits (429 when it has none left)."""
        front = self.front
        if front.limiter is None:
            return
        client_id = self.headers.get(b"x-client-id")
        key = client_key(
            front.limits.per_client.key,
            self.principal,
            client_id.decode("latin-1") if client_id else None,
            self.peer,
        )
        self.release = front.limiter.acquire(key)

    def check_length(self) -> None:
        """413 at once for a declared body over the limit (before reading it)."""
        declared = self.headers.get(b"content-length")
        if declared is not None:
            check_declared(declared.decode("latin-1"), self.front.max_body_bytes)

    def admit(self, raw: bytes) -> Ticket:
        """Decode the body (content coding, binary extension) on the loop and queue the request."""
        coding, length = self._framing()
        body = decode_content(raw, coding, self.front.max_body_bytes)
        return self._queue(decode_request(self.model, self.version, body, length, self.front.decode_limits))

    def decodes_off_loop(self, raw: bytes) -> bool:
        """Whether :meth:`admit_off_loop` should take this body: its JSON is large enough to stall the loop."""
        offload = self.front.json_offload
        if offload is None or not offload.may_want_request(len(raw)):
            return False  # the usual case, decided without the headers
        coding, length = self._framing()
        return offload.wants_request(len(raw), coding, length)

    async def admit_off_loop(self, raw: bytes) -> Ticket:
        """:meth:`admit`, with the decoding done in a JSON process (see :mod:`gateway.rest.json_offload`)."""
        front = self.front
        assert front.json_offload is not None
        coding, length = self._framing()
        front.metrics.json_offloaded.labels("request").inc()
        request = await front.json_offload.decode(
            self.model, self.version, raw, coding, length, front.max_body_bytes, front.decode_limits
        )
        return self._queue(request)

    def _framing(self) -> tuple[str | None, int | None]:
        """The body's content coding and its JSON header's length (binary extension)."""
        coding = self.headers.get(b"content-encoding")
        length = None
        header_length = self.headers.get(b"inference-header-content-length")
        if header_length is not None:
            try:
                length = int(header_length)
            except ValueError:
                raise InvalidInput(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        return coding.decode("latin-1") if coding else None, length

    def _queue(self, request: InferRequest) -> Ticket:
        headers = self.headers
        client_id = headers.get(b"x-client-id")
        request.client = client_id.decode("latin-1") if client_id else self.peer
        timeout_ms = None
        timeout_header = headers.get(b"x-batchgate-timeout-ms")
        if timeout_header is not None:
            try:
                timeout_ms = float(timeout_header)
            except ValueError:
                raise InvalidInput(f"x-batchgate-timeout-ms {timeout_header!r} is not a number") from None
            if not timeout_ms > 0:
                raise InvalidInput("x-batchgate-timeout-ms must be positive")
        self.request = request
        self.ticket = self.front.router.admit(request, timeout_ms)
        return self.ticket

    def abandon(self) -> None:
        """The client went away before the answer: free what the request holds."""
        if self.ticket is not None:
            self.front.router.abandon(self.ticket)

    def result(self) -> InferResponse:
        """What the admitted request got, once its ticket is done; its error is raised instead."""
        assert self.ticket is not None
        return self.front.router.response(self.ticket)

    def encodes_off_loop(self, result: InferResponse) -> bool:
        """Whether :meth:`answer_off_loop` should write ``result``: its JSON outputs are large."""
        offload = self.front.json_offload
        if offload is None or not offload.wants_response(sum(out.data.size for out in result.outputs)):
            return False  # too few values even if all went as JSON: the usual case
        assert self.request is not None
        return offload.wants_response(json_values(result, self.request))

    def answer(self, result: InferResponse | None = None) -> Answer:
        """The 200 response carrying ``result`` (by default the ticket's), encoded on the loop."""
        assert self.request is not None
        if result is None:
            result = self.result()
        coding = self._response_coding()
        return self._ok(result, *encode_body(result, self.request, coding), coding)

    async def answer_off_loop(self, result: InferResponse) -> Answer:
        """:meth:`answer`, with the encoding (and content coding) done in a JSON process."""
        front = self.front
        assert front.json_offload is not None and self.request is not None
        coding = self._response_coding()
        front.metrics.json_offloaded.labels("response").inc()
        payload, json_length = await front.json_offload.encode(result, self.request, coding)
        return self._ok(result, payload, json_length, coding)

    def _response_coding(self) -> str | None:
        accept = self.headers.get(b"accept-encoding")
        return pick_encoding(accept.decode("latin-1")) if accept else None

    def _ok(
        self, result: InferResponse, payload: bytes | memoryview, json_length: int | None, coding: str | None
    ) -> Answer:
        extra = [(b"x-batchgate-served-by", result.parameters["served_by"].encode())]
        if "fallback_reason" in result.parameters:
            extra.append((FALLBACK_HEADER.encode(), result.parameters["fallback_reason"].encode()))
        content_type = JSON
        if json_length is not None:
            extra.append((b"inference-header-content-length", b"%d" % json_length))
            content_type = OCTETS
        if coding is not None:
            extra.append((b"content-encoding", coding.encode()))
        if result.model == self.model:
            self.version = result.version
        return 200, content_type, payload, extra

    def unexpected(self, exc: BaseException) -> Answer:
        """Never a bare 500 page: a v2 body, and the cause in the log."""
        log.error("unexpected error on %s", self.model, exc_info=exc)
        return 500, JSON, error_body(f"internal error: {exc!r}"), []

    def close(self, status: int) -> None:
        """Give back the client's place and count the request (once, whatever its outcome)."""
        if self.release is not None:
            self.release()
            self.release = None
        self.gauge.dec()
        self.front.router.record(self.model, self.version, status, time.perf_counter() - self.started)


class InferFront:
    """ASGI application: ``POST .../infer`` here, everything else to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        router: Router,
        metrics: Metrics,
        max_body_bytes: int,
        limits: LimitsConfig,
        limiter: ClientLimiter | None,
        json_offload: JsonOffload | None = None,
    ) -> None:
        self.app = app
        self.router = router
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.limits = limits
        self.decode_limits = DecodeLimits(limits.max_tensor_elements, limits.max_json_depth)
        self.limiter = limiter if limiter is not None and limiter.enabled else None
        self.json_offload = json_offload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = infer_target(scope["path"])
            if target is not None:
                await self.handle(scope, receive, send, *target)
                return
        await self.app(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send, model: str, version: str) -> None:
        headers = {name: value for name, value in scope["headers"] if name in WANTED}
        client = scope.get("client")
        principal = scope.get("state", {}).get("principal")
        call = InferCall(self, model, version, headers, client[0] if client else None, principal)
        try:
            call.limit()
            call.check_length()
            raw = await receive_body(receive, self.max_body_bytes, self.limits.body_timeout_s)
            ticket = await call.admit_off_loop(raw) if call.decodes_off_loop(raw) else call.admit(raw)
            future = ticket.future
            watcher = asyncio.ensure_future(_disconnected(receive))
            try:
                await asyncio.wait((future, watcher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                watcher.cancel()
            if not future.done():
                call.abandon()
                raise Cancelled("client disconnected")
            result = call.result()
            answer = await call.answer_off_loop(result) if call.encodes_off_loop(result) else call.answer(result)
        except BatchgateError as exc:
            answer = error_answer(exc)
        except asyncio.CancelledError:
            call.close(Cancelled.http_status)
            raise
        except Exception as exc:
            answer = call.unexpected(exc)
        call.close(answer[0])
        if answer[0] == Cancelled.http_status:
            return  # nobody is listening
        start, body = messages(answer)
        await send(start)
        await send(body)
