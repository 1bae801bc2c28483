"""v2 REST endpoints over the transport-free router (DESIGN §3)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.codec.v2http import error_body, json_object
from gateway.config import LimitsConfig
from gateway.dataplane import DataPlane
from gateway.errors import BatchgateError, InvalidInput, NotFound
from gateway.metrics import Metrics, exposition
from gateway.rest.body import read_body
from gateway.rest.infer import error_answer

log = logging.getLogger("batchgate.rest")

JSON = "application/json"


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON)


def error_response(error: BatchgateError) -> Response:
    status, content_type, body, extra = error_answer(error)
    headers = {name.decode(): value.decode() for name, value in extra}
    return Response(body, status_code=status, headers=headers, media_type=content_type.decode())


class RestAPI:
    """Handlers bound to one data plane; :meth:`routes` lists them for the Starlette application."""

    def __init__(self, dataplane: DataPlane, metrics: Metrics, limits: LimitsConfig | None = None) -> None:
        self.dataplane = dataplane
        self.router = dataplane.router
        self.metrics = metrics
        self.limits = limits or LimitsConfig()

    async def _read(self, request: Request, limit: int) -> bytes:
        return await read_body(request, limit, self.limits.body_timeout_s)

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

    async def _object(self, request: Request, limit: int) -> dict[str, Any]:
        """The body as a JSON object; an empty body is an empty object."""
        body = await self._read(request, limit)
        return json_object(body) if body.strip() else {}

    async def repository_index(self, request: Request) -> Response:
        doc = await self._object(request, 64 * 1024)
        return _json(self.dataplane.repository_index(bool(doc.get("ready", False))))

    async def load(self, request: Request) -> Response:
        # Large enough to read, and refuse by name, the model files tritonclient can attach.
        doc = await self._object(request, 16 * 1024 * 1024)
        parameters = doc.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput("'parameters' must be a JSON object")
        await self.dataplane.load(request.path_params["model"], parameters)
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        await self._object(request, 64 * 1024)
        await self.dataplane.unload(request.path_params["model"])
        return Response(status_code=200)

    async def promote(self, request: Request) -> Response:
        await self._read(request, 64 * 1024)
        version = self.dataplane.promote(request.path_params["model"])
        return _json({"model": request.path_params["model"], "version": version})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(await exposition(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

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
            # POST .../infer never gets here (gateway.rest.infer.InferFront answers it first);
            # the routes exist so other methods get 405 like every other path.
            Route(f"{model}/infer", _answered_by_infer_front, methods=post),
            Route(f"{version}/infer", _answered_by_infer_front, methods=post),
            Route("/v2/repository/index", self.repository_index, methods=post),
            Route("/v2/repository/models/{model}/load", self.load, methods=post),
            Route("/v2/repository/models/{model}/unload", self.unload, methods=post),
            Route("/v2/repository/models/{model}/promote", self.promote, methods=post),
            Route("/metrics", self.metrics_endpoint, methods=get),
        ]


async def _answered_by_infer_front(request: Request) -> Response:
    raise NotFound("inference is served by the InferFront in front of this application")


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


def build_app(api: RestAPI, lifespan: Any = None) -> Starlette:
    """The Starlette application: every route but inference, v2-shaped error bodies for every failure."""
    return Starlette(
        routes=api.routes(),
        exception_handlers={HTTPException: _http_error, BatchgateError: _batchgate_error, Exception: _unexpected},
        lifespan=lifespan,
    )
