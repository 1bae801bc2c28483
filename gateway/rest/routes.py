"""v2 REST endpoints over the transport-free router (DESIGN §3)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive

from gateway.auth import Authenticator
from gateway.codec import DecodeLimits
from gateway.codec.v2http import decode_request, encode_response, error_body
from gateway.config import LimitsConfig
from gateway.dataplane import DataPlane
from gateway.errors import BatchgateError, Cancelled, InvalidInput, RequestTimeout
from gateway.limits import ClientLimiter, client_key
from gateway.metrics import Metrics
from gateway.rest.auth import AuthMiddleware
from gateway.rest.body import encode, pick_encoding, read_body
from gateway.router import FALLBACK_HEADER

log = logging.getLogger("batchgate.rest")

JSON = "application/json"


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON)


def error_response(error: BatchgateError) -> Response:
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    if isinstance(error, RequestTimeout):
        # A slow client's half-sent body must not be read as the next request. A refused
        # large body (413) is instead discarded as it arrives, so the client, still
        # sending, reads its answer; the protocol's body deadline bounds that.
        headers["Connection"] = "close"
    return Response(error_body(error.message), status_code=error.http_status, media_type=JSON, headers=headers)


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class RestAPI:
    """Handlers bound to one data plane; :meth:`routes` lists them for the Starlette application."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: Metrics,
        max_body_bytes: int,
        limits: LimitsConfig | None = None,
        limiter: ClientLimiter | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.router = dataplane.router
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.limits = limits or LimitsConfig()
        self.decode_limits = DecodeLimits(self.limits.max_tensor_elements, self.limits.max_json_depth)
        self.limiter = limiter if limiter is not None and limiter.enabled else None

    def _read(self, request: Request, limit: int) -> Any:
        return read_body(request, limit, self.limits.body_timeout_s)

    # -- health and metadata ----------------------------------------------------------------
    async def server_metadata(self, request: Request) -> Response:
        return _json(self.dataplane.server_metadata())

    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.dataplane.ready() else 503)

    async def model_metadata(self, request: Request) -> Response:
        params = request.path_params
        return _json(self.dataplane.model_metadata(params["model"], params.get("version", "")))

    async def model_ready(self, request: Request) -> Response:
        params = request.path_params
        ready = self.dataplane.model_ready(params["model"], params.get("version", ""))
        return Response(status_code=200 if ready else 503)

    async def model_config(self, request: Request) -> Response:
        params = request.path_params
        return _json(self.dataplane.model_config(params["model"], params.get("version", "")))

    async def statistics(self, request: Request) -> Response:
        params = request.path_params
        return _json(self.dataplane.statistics(params.get("model", ""), params.get("version", "")))

    async def repository_index(self, request: Request) -> Response:
        body = await self._read(request, 64 * 1024)
        ready_only = False
        if body.strip():
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"request body is not valid JSON: {exc}") from None
            if not isinstance(doc, dict):
                raise InvalidInput("request body must be a JSON object")
            ready_only = bool(doc.get("ready", False))
        return _json(self.dataplane.repository_index(ready_only))

    async def load(self, request: Request) -> Response:
        await self._read(request, 64 * 1024)
        await self.dataplane.load(request.path_params["model"])
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        await self._read(request, 64 * 1024)
        await self.dataplane.unload(request.path_params["model"])
        return Response(status_code=200)

    async def promote(self, request: Request) -> Response:
        await self._read(request, 64 * 1024)
        version = self.dataplane.promote(request.path_params["model"])
        return _json({"model": request.path_params["model"], "version": version})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- inference -------------------------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        params = request.path_params
        model, version = params["model"], params.get("version", "")
        code = 200
        gauge = self.metrics.inflight.labels(model)
        gauge.inc()
        release = None
        try:
            if self.limiter is not None:
                release = self.limiter.acquire(self._client_key(request))
            response, version = await self._infer(request, model, version)
        except BatchgateError as exc:
            code = exc.http_status
            response = error_response(exc)
        except asyncio.CancelledError:
            code = Cancelled.http_status
            raise
        finally:
            if release is not None:
                release()
            gauge.dec()
            self.router.record(model, version, code, time.perf_counter() - started)
        return response

    def _client_key(self, request: Request) -> str:
        peer = request.client
        principal = request.scope.get("state", {}).get("principal")
        mode = self.limits.per_client.key
        return client_key(mode, principal, request.headers.get("x-client-id"), peer.host if peer else None)

    async def _infer(self, request: Request, model: str, version: str) -> tuple[Response, str]:
        """The response, and the version that served it (for the metrics)."""
        body = await self._read(request, self.max_body_bytes)
        header_length = request.headers.get("inference-header-content-length")
        length = None
        if header_length is not None:
            try:
                length = int(header_length)
            except ValueError:
                raise InvalidInput(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        infer_request = decode_request(model, version, body, length, self.decode_limits)
        peer = request.client
        infer_request.client = request.headers.get("x-client-id") or (peer.host if peer else None)
        timeout_ms = None
        timeout_header = request.headers.get("x-batchgate-timeout-ms")
        if timeout_header is not None:
            try:
                timeout_ms = float(timeout_header)
            except ValueError:
                raise InvalidInput(f"x-batchgate-timeout-ms {timeout_header!r} is not a number") from None
            if not timeout_ms > 0:
                raise InvalidInput("x-batchgate-timeout-ms must be positive")
        ticket = self.router.admit(infer_request, timeout_ms)
        future = ticket.future
        watcher = asyncio.ensure_future(_disconnected(request.receive))
        try:
            await asyncio.wait((future, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if not future.done():
            self.router.abandon(ticket)
            raise Cancelled("client disconnected")
        result = self.router.response(ticket)
        payload, json_length = encode_response(result, infer_request)
        headers = {"x-batchgate-served-by": result.parameters["served_by"]}
        if "fallback_reason" in result.parameters:
            headers[FALLBACK_HEADER] = result.parameters["fallback_reason"]
        media_type = JSON
        if json_length is not None:
            headers["Inference-Header-Content-Length"] = str(json_length)
            media_type = "application/octet-stream"
        coding = pick_encoding(request.headers.get("accept-encoding"))
        if coding is not None:
            payload = encode(payload, coding)
            headers["Content-Encoding"] = coding
        served = result.version if result.model == model else version
        return Response(payload, media_type=media_type, headers=headers), served

    # -- application ---------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        model = "/v2/models/{model}"
        version = "/v2/models/{model}/versions/{version}"
        get, post = ["GET"], ["POST"]
        return [
            Route("/v2", self.server_metadata, methods=get),
            Route("/v2/health/live", self.live, methods=get),
            Route("/v2/health/ready", self.ready, methods=get),
            Route("/v2/models/stats", self.statistics, methods=get),
            Route(model, self.model_metadata, methods=get),
            Route(version, self.model_metadata, methods=get),
            Route(f"{model}/ready", self.model_ready, methods=get),
            Route(f"{version}/ready", self.model_ready, methods=get),
            Route(f"{model}/config", self.model_config, methods=get),
            Route(f"{version}/config", self.model_config, methods=get),
            Route(f"{model}/stats", self.statistics, methods=get),
            Route(f"{version}/stats", self.statistics, methods=get),
            Route(f"{model}/infer", self.infer, methods=post),
            Route(f"{version}/infer", self.infer, methods=post),
            Route("/v2/repository/index", self.repository_index, methods=post),
            Route("/v2/repository/models/{model}/load", self.load, methods=post),
            Route("/v2/repository/models/{model}/unload", self.unload, methods=post),
            Route("/v2/repository/models/{model}/promote", self.promote, methods=post),
            Route("/metrics", self.metrics_endpoint, methods=get),
        ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no such endpoint: {request.url.path}", 405: f"method {request.method} not allowed"}
    return Response(
        error_body(message.get(exc.status_code, exc.detail)),
        status_code=exc.status_code,
        media_type=JSON,
        headers=exc.headers,
    )


async def _batchgate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BatchgateError)
    return error_response(exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return Response(error_body(f"internal error: {exc!r}"), status_code=500, media_type=JSON)


def build_app(api: RestAPI, lifespan: Any = None, auth: Authenticator | None = None) -> Starlette:
    """The Starlette application: routes, v2-shaped error bodies for every failure, and the
    token check in front when authentication is on."""
    middleware = [Middleware(AuthMiddleware, auth=auth)] if auth is not None else []
    return Starlette(
        routes=api.routes(),
        middleware=middleware,
        exception_handlers={HTTPException: _http_error, BatchgateError: _batchgate_error, Exception: _unexpected},
        lifespan=lifespan,
    )
