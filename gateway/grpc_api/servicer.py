"""gRPC transport over the data plane; status codes come from the error classes themselves."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

import grpc
import grpc.aio
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from gateway.auth import Authenticator
from gateway.codec import DecodeLimits, v2grpc
from gateway.config import GRPCConfig, LimitsConfig, TLSConfig
from gateway.dataplane import DataPlane
from gateway.errors import BatchgateError, Unavailable
from gateway.grpc_api.h2calls import Abort, CallContext, Reply, unary_methods
from gateway.grpc_api.h2server import H2Server, server_ssl_context
from gateway.limits import ClientLimiter, client_key
from gateway.metrics import Metrics
from gateway.router import Ticket
from gateway.types import InferRequest

log = logging.getLogger("batchgate.grpc")
T = TypeVar("T")

UNIMPLEMENTED = (
    "LogSettings",
    "TraceSetting",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
)


async def _guard(context: grpc.aio.ServicerContext, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``call``; a BatchgateError becomes its own gRPC status."""
    try:
        return await call()
    except BatchgateError as exc:
        await _abort(context, exc)
        raise  # abort raises; this line only satisfies the type checker


def _trailer(exc: BatchgateError) -> tuple[tuple[str, str], ...]:
    if exc.retry_after_s is None:
        return ()
    return (("retry-after", str(max(1, math.ceil(exc.retry_after_s)))),)


async def _abort(context: grpc.aio.ServicerContext, exc: BatchgateError) -> None:
    await context.abort(exc.grpc_code, exc.message, trailing_metadata=_trailer(exc))


def _status(exc: BatchgateError) -> Abort:
    """``exc`` as the status a direct call ends with (what ``_abort`` raises on the task path)."""
    return Abort(int(exc.grpc_code.value[0]), exc.message, _trailer(exc))


def _unimplemented(name: str) -> Callable[..., Any]:
    async def method(self: GRPCFront, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"batchgate does not implement {name}")

    method.__name__ = name
    return method


class GRPCFront(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """``inference.GRPCInferenceService`` over the same router, batcher and statistics as HTTP."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: Metrics,
        auth: Authenticator | None = None,
        limits: LimitsConfig | None = None,
        limiter: ClientLimiter | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.router = dataplane.router
        self.metrics = metrics
        self.auth = auth
        self.limits = limits or LimitsConfig()
        self.decode_limits = DecodeLimits(self.limits.max_tensor_elements, self.limits.max_json_depth)
        self.limiter = limiter if limiter is not None and limiter.enabled else None

    def check(
        self, context: grpc.aio.ServicerContext | CallContext, model: str = "", admin: bool = False, public: str = ""
    ) -> str | None:
        """The token's name (None when auth is off or the call is public); raises 401/403 equivalents."""
        if self.auth is None or (public and public in self.auth.public_paths):
            return None
        metadata = {key: value for key, value in (context.invocation_metadata() or ())}
        authorization = metadata.get("authorization")
        principal = self.auth.identify(authorization if isinstance(authorization, str) else None)
        if admin:
            self.auth.allow_admin(principal)
        elif model:
            self.auth.allow_model(principal, model)
        return principal.name

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self.check(context, public="/v2/health/live")
            return service_pb2.ServerLiveResponse(live=True)

        return await _guard(context, call)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self.check(context, public="/v2/health/ready")
            return service_pb2.ServerReadyResponse(ready=self.dataplane.ready())

        return await _guard(context, call)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self.check(context, model=request.name)
            return service_pb2.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

        return await _guard(context, call)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self.check(context)
            return json_format.ParseDict(self.dataplane.server_metadata(), service_pb2.ServerMetadataResponse())

        return await _guard(context, call)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self.check(context, model=request.name)
            meta = self.dataplane.model_metadata(request.name, request.version)
            return json_format.ParseDict(meta, service_pb2.ModelMetadataResponse())

        return await _guard(context, call)

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self.check(context, model=request.name)
            config = json_format.ParseDict(
                self.dataplane.model_config(request.name, request.version), model_config_pb2.ModelConfig()
            )
            return service_pb2.ModelConfigResponse(config=config)

        return await _guard(context, call)

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self.check(context, model=request.name, admin=not request.name)
            stats = self.dataplane.statistics(request.name, request.version)
            return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True)

        return await _guard(context, call)

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self.check(context, admin=True)
            entries = self.dataplane.repository_index(request.ready)
            return json_format.ParseDict({"models": entries}, service_pb2.RepositoryIndexResponse())

        return await _guard(context, call)

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self.check(context, admin=True)
            await self.dataplane.load(request.model_name, request.parameters.keys())
            return service_pb2.RepositoryModelLoadResponse()

        return await _guard(context, call)

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self.check(context, admin=True)
            await self.dataplane.unload(request.model_name)
            return service_pb2.RepositoryModelUnloadResponse()

        return await _guard(context, call)

    def _infer_request(
        self, request: Any, context: grpc.aio.ServicerContext | CallContext
    ) -> tuple[InferRequest, float | None, Callable[[], None] | None]:
        """Authorize, take the client's place under its limits, decode: the request, its time
        limit in ms (the call's deadline unless the request sets its own), and the place to
        give back (None without per-client limits). Raises BatchgateError, holding nothing."""
        principal = self.check(context, model=request.model_name)
        metadata = dict(context.invocation_metadata() or ())
        peer = context.peer().rsplit(":", 1)[0]
        client_id = metadata.get("x-client-id")
        release = None
        if self.limiter is not None:
            key = client_key(self.limits.per_client.key, principal, str(client_id or ""), peer)
            release = self.limiter.acquire(key)
        try:
            infer_request = v2grpc.decode_request(request, self.decode_limits)
        except BaseException:
            if release is not None:
                release()
            raise
        infer_request.client = str(client_id or peer)
        remaining = context.time_remaining()
        timeout_ms = remaining * 1000 if remaining is not None and not infer_request.timeout_us else None
        return infer_request, timeout_ms, release

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        model, version = request.model_name, request.model_version
        code = 200
        gauge = self.router.inflight_gauge(model)
        gauge.inc()
        release = None
        try:
            infer_request, timeout_ms, release = self._infer_request(request, context)
            try:
                # Cancellation (client gone or deadline passed) abandons the request inside infer.
                response = await self.router.infer(infer_request, timeout_ms)
            except asyncio.CancelledError:
                code = 499
                raise
            if response.model == model:
                version = response.version  # the metrics count the version that served
            return v2grpc.encode_response(response)
        except BatchgateError as exc:
            code = exc.http_status
            await _abort(context, exc)
        finally:
            if release is not None:
                release()
            gauge.dec()
            self.router.record(model, version, code, time.perf_counter() - started)

    def model_infer_now(self, request: Any, context: CallContext, reply: Reply) -> Callable[[], None] | None:
        """ModelInfer for the gateway's own HTTP/2 front, without a task: the same checks,
        admission, errors and accounting as :meth:`ModelInfer`, the answer handed to ``reply``
        from the listener that settles the request. Returns what to call if the client leaves."""
        started = time.perf_counter()
        model, version = request.model_name, request.model_version
        gauge = self.router.inflight_gauge(model)
        gauge.inc()
        release = None

        def finish(code: int, served_version: str) -> None:
            if release is not None:
                release()
            gauge.dec()
            self.router.record(model, served_version, code, time.perf_counter() - started)

        try:
            infer_request, timeout_ms, release = self._infer_request(request, context)
            ticket = self.router.admit(infer_request, timeout_ms)
        except BatchgateError as exc:
            reply(None, _status(exc))
            finish(exc.http_status, version)
            return None
        except Exception:
            finish(500, version)
            raise

        left = False

        def answered(ticket: Ticket) -> None:
            if left:
                return  # leave() has counted it
            try:
                if ticket.future.cancelled():  # only abandon() cancels a ticket today; still, answer
                    raise Unavailable("the request was cancelled inside the gateway; retry")
                response = self.router.response(ticket)
                encoded = v2grpc.encode_response(response)
            except BatchgateError as exc:
                reply(None, _status(exc))
                finish(exc.http_status, version)
                return
            except Exception:
                log.exception("answering ModelInfer for %s failed", model)
                reply(None, Abort(2, "internal error in the gateway"))
                finish(500, version)
                return
            reply(encoded, None)  # the answer first, the accounting after it
            finish(200, response.version if response.model == model else version)

        def leave() -> None:
            nonlocal left
            left = True
            self.router.abandon(ticket)
            finish(499, version)

        ticket.when_done(answered)
        return leave

    async def ModelStreamInfer(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "batchgate does not implement ModelStreamInfer; use ModelInfer"
        )


for _name in UNIMPLEMENTED:
    setattr(GRPCFront, _name, _unimplemented(_name))


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured files (client certificates required when a CA is given)."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class GRPCServer(Protocol):
    async def stop(self, grace: float | None) -> None: ...


async def build_server(
    front: GRPCFront, config: GRPCConfig, default_host: str, tls: TLSConfig | None = None
) -> tuple[GRPCServer, int]:
    """Start the gRPC listener on the running event loop; returns it and its bound port."""
    host = config.host or default_host
    if config.server == "grpcio":
        return await _grpcio_server(front, config, host, tls)
    context = None
    if tls is not None and tls.cert_file is not None and tls.key_file is not None:
        context = server_ssl_context(tls.cert_file, tls.key_file, tls.client_ca_file)
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    server = H2Server(
        unary_methods(service, front, direct={"ModelInfer": front.model_infer_now}),
        config.max_message_bytes,
        front.limits.max_grpc_rpcs,
        context,
        header_timeout_s=front.limits.header_timeout_s,
        body_timeout_s=front.limits.body_timeout_s,
        idle_timeout_s=config.idle_timeout_s,
        max_connections=front.limits.max_connections,
    )
    front.metrics.open_connections.labels("grpc").set_function(lambda: len(server.connections))
    front.metrics.max_connections.labels("grpc").set(front.limits.max_connections)
    port = await server.start(host, config.port)
    return server, port


async def _grpcio_server(
    front: GRPCFront, config: GRPCConfig, host: str, tls: TLSConfig | None
) -> tuple[GRPCServer, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
        ],
        maximum_concurrent_rpcs=front.limits.max_grpc_rpcs,
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(front, server)
    credentials = server_credentials(tls) if tls is not None else None
    if credentials is not None:
        port = server.add_secure_port(f"{host}:{config.port}", credentials)
    else:
        port = server.add_insecure_port(f"{host}:{config.port}")
    if port == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{config.port}")
    await server.start()
    return server, port
