"""v2 REST endpoints over the transport-free router (DESIGN §3)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive

from gateway import __version__
from gateway.codec.v2http import decode_request, encode_response, error_body
from gateway.errors import BatchgateError, Cancelled, InvalidInput, Unavailable
from gateway.metrics import Metrics
from gateway.rest.body import encode, pick_encoding, read_body
from gateway.router import Router, ServedModel

log = logging.getLogger("batchgate.rest")

EXTENSIONS = ["binary_tensor_data"]
JSON = "application/json"


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON)


def error_response(error: BatchgateError) -> Response:
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    return Response(error_body(error.message), status_code=error.http_status, media_type=JSON, headers=headers)


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class RestAPI:
    """Handlers bound to one router; :meth:`app` builds the Starlette application."""

    def __init__(self, router: Router, metrics: Metrics, max_body_bytes: int) -> None:
        self.router = router
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    # -- health and metadata ----------------------------------------------------------------
    async def server_metadata(self, request: Request) -> Response:
        return _json({"name": "batchgate", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.router.ready() else 503)

    def _served(self, request: Request) -> ServedModel:
        params = request.path_params
        return self.router.resolve(params["model"], params.get("version", ""))

    async def model_metadata(self, request: Request) -> Response:
        try:
            served = self._served(request)
        except BatchgateError as exc:
            return error_response(exc)
        signature = served.signature
        if signature is None:
            return error_response(Unavailable(f"model {served.name} is not ready"))
        versions = sorted(self.router.models[served.name], key=int)

        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

        return _json(
            {
                "name": served.name,
                "versions": versions,
                "platform": signature.platform,
                "inputs": tensors(signature.inputs),
                "outputs": tensors(signature.outputs),
            }
        )

    async def model_ready(self, request: Request) -> Response:
        try:
            served = self._served(request)
        except BatchgateError as exc:
            return error_response(exc)
        return Response(status_code=200 if served.ready and self.router.accepting else 503)

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
        try:
            response = await self._infer(request, model, version)
        except BatchgateError as exc:
            code = exc.http_status
            response = error_response(exc)
        except asyncio.CancelledError:
            code = Cancelled.http_status
            raise
        finally:
            gauge.dec()
            if model in self.router.models:
                label_version = version or max(self.router.models[model], key=int)
                self.metrics.requests.labels(model, label_version, str(code)).inc()
                if code == 200:
                    self.metrics.request_duration.labels(model, label_version).observe(time.perf_counter() - started)
        return response

    async def _infer(self, request: Request, model: str, version: str) -> Response:
        body = await read_body(request, self.max_body_bytes)
        header_length = request.headers.get("inference-header-content-length")
        length = None
        if header_length is not None:
            try:
                length = int(header_length)
            except ValueError:
                raise InvalidInput(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        infer_request = decode_request(model, version, body, length)
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
        future = ticket.pending.future
        watcher = asyncio.ensure_future(_disconnected(request.receive))
        try:
            await asyncio.wait((future, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if not future.done():
            self.router.abandon(ticket)
            raise Cancelled("client disconnected")
        result = await self.router.result(ticket)
        payload, json_length = encode_response(result, infer_request)
        headers = {"x-batchgate-served-by": result.parameters["served_by"]}
        media_type = JSON
        if json_length is not None:
            headers["Inference-Header-Content-Length"] = str(json_length)
            media_type = "application/octet-stream"
        coding = pick_encoding(request.headers.get("accept-encoding"))
        if coding is not None:
            payload = encode(payload, coding)
            headers["Content-Encoding"] = coding
        return Response(payload, media_type=media_type, headers=headers)

    # -- application ---------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        model = "/v2/models/{model}"
        version = "/v2/models/{model}/versions/{version}"
        return [
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route(model, self.model_metadata, methods=["GET"]),
            Route(version, self.model_metadata, methods=["GET"]),
            Route(f"{model}/ready", self.model_ready, methods=["GET"]),
            Route(f"{version}/ready", self.model_ready, methods=["GET"]),
            Route(f"{model}/infer", self.infer, methods=["POST"]),
            Route(f"{version}/infer", self.infer, methods=["POST"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
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


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return Response(error_body(f"internal error: {exc!r}"), status_code=500, media_type=JSON)


def build_app(api: RestAPI, lifespan: Any = None) -> Starlette:
    """The Starlette application: routes plus v2-shaped error bodies for every failure."""
    return Starlette(
        routes=api.routes(),
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )
