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

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.codec import DecodeLimits
from gateway.codec.v2http import decode_request, encode_response, error_body
from gateway.config import LimitsConfig
from gateway.errors import BatchgateError, Cancelled, InvalidInput, RequestTimeout
from gateway.limits import ClientLimiter, client_key
from gateway.metrics import Metrics
from gateway.rest.body import check_declared, decode_content, encode, pick_encoding, receive_body
from gateway.router import FALLBACK_HEADER, Router

log = logging.getLogger("batchgate.rest")

JSON = b"application/json"
_WANTED = {
    b"content-length",
    b"content-encoding",
    b"accept-encoding",
    b"inference-header-content-length",
    b"x-client-id",
    b"x-batchgate-timeout-ms",
}


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


def _start(status: int, content_type: bytes, length: int, extra: list[tuple[bytes, bytes]]) -> Message:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % length), *extra]
    return {"type": "http.response.start", "status": status, "headers": headers}


def error_messages(error: BatchgateError) -> tuple[Message, Message]:
    """The ASGI messages of a v2 error response (status from the error class)."""
    body = error_body(error.message)
    extra = []
    if error.retry_after_s is not None:
        extra.append((b"retry-after", str(max(1, math.ceil(error.retry_after_s))).encode()))
    if isinstance(error, RequestTimeout):
        # A slow client's half-sent body must not be read as the next request. A refused
        # large body (413) is instead discarded as it arrives, so the client, still
        # sending, reads its answer; the protocol's body deadline bounds that.
        extra.append((b"connection", b"close"))
    return _start(error.http_status, JSON, len(body), extra), {"type": "http.response.body", "body": body}


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
    ) -> None:
        self.app = app
        self.router = router
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.limits = limits
        self.decode_limits = DecodeLimits(limits.max_tensor_elements, limits.max_json_depth)
        self.limiter = limiter if limiter is not None and limiter.enabled else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = infer_target(scope["path"])
            if target is not None:
                await self.handle(scope, receive, send, *target)
                return
        await self.app(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send, model: str, version: str) -> None:
        started = time.perf_counter()
        headers = {name: value for name, value in scope["headers"] if name in _WANTED}
        code = 200
        gauge = self.metrics.inflight.labels(model)
        gauge.inc()
        release = None
        try:
            if self.limiter is not None:
                release = self.limiter.acquire(self._client_key(scope, headers))
            start, body, version = await self._infer(scope, receive, headers, model, version)
        except BatchgateError as exc:
            code = exc.http_status
            start, body = error_messages(exc)
        except asyncio.CancelledError:
            code = Cancelled.http_status
            raise
        except Exception as exc:  # never a bare 500 page: a v2 body, and the cause in the log
            log.exception("unexpected error on %s", scope["path"])
            code = 500
            error = error_body(f"internal error: {exc!r}")
            start, body = _start(500, JSON, len(error), []), {"type": "http.response.body", "body": error}
        finally:
            if release is not None:
                release()
            gauge.dec()
            self.router.record(model, version, code, time.perf_counter() - started)
        if code == Cancelled.http_status:
            return  # nobody is listening
        await send(start)
        await send(body)

    def _client_key(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        client = scope.get("client")
        principal = scope.get("state", {}).get("principal")
        client_id = headers.get(b"x-client-id")
        return client_key(
            self.limits.per_client.key,
            principal,
            client_id.decode("latin-1") if client_id else None,
            client[0] if client else None,
        )

    async def _infer(
        self, scope: Scope, receive: Receive, headers: dict[bytes, bytes], model: str, version: str
    ) -> tuple[Message, Message, str]:
        """The response's two ASGI messages, and the version that served it (for the metrics)."""
        declared = headers.get(b"content-length")
        if declared is not None:
            check_declared(declared.decode("latin-1"), self.max_body_bytes)
        raw = await receive_body(receive, self.max_body_bytes, self.limits.body_timeout_s)
        content_coding = headers.get(b"content-encoding")
        body = decode_content(raw, content_coding.decode("latin-1") if content_coding else None, self.max_body_bytes)
        length = None
        header_length = headers.get(b"inference-header-content-length")
        if header_length is not None:
            try:
                length = int(header_length)
            except ValueError:
                raise InvalidInput(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        infer_request = decode_request(model, version, body, length, self.decode_limits)
        client_id = headers.get(b"x-client-id")
        peer = scope.get("client")
        infer_request.client = client_id.decode("latin-1") if client_id else (peer[0] if peer else None)
        timeout_ms = None
        timeout_header = headers.get(b"x-batchgate-timeout-ms")
        if timeout_header is not None:
            try:
                timeout_ms = float(timeout_header)
            except ValueError:
                raise InvalidInput(f"x-batchgate-timeout-ms {timeout_header!r} is not a number") from None
            if not timeout_ms > 0:
                raise InvalidInput("x-batchgate-timeout-ms must be positive")
        ticket = self.router.admit(infer_request, timeout_ms)
        future = ticket.future
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((future, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if not future.done():
            self.router.abandon(ticket)
            raise Cancelled("client disconnected")
        result = self.router.response(ticket)
        payload, json_length = encode_response(result, infer_request)
        extra = [(b"x-batchgate-served-by", result.parameters["served_by"].encode())]
        if "fallback_reason" in result.parameters:
            extra.append((FALLBACK_HEADER.encode(), result.parameters["fallback_reason"].encode()))
        content_type = JSON
        if json_length is not None:
            extra.append((b"inference-header-content-length", b"%d" % json_length))
            content_type = b"application/octet-stream"
        accept = headers.get(b"accept-encoding")
        coding = pick_encoding(accept.decode("latin-1")) if accept else None
        if coding is not None:
            payload = encode(payload, coding)
            extra.append((b"content-encoding", coding.encode()))
        served = result.version if result.model == model else version
        start = _start(200, content_type, len(payload), extra)
        return start, {"type": "http.response.body", "body": payload}, served
