"""Pool client: the gateway's view of one pool of worker replicas speaking v2 gRPC.

Picks the replica with the fewest outstanding batches (power of two random choices
when the pool is large), hands out at most ``inflight_per_replica`` slots per replica,
and tracks which replicas are ready through a guarded health-check task.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import grpc.aio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.errors import BatchgateError, InvalidInput, NotFound, Unavailable, WorkerError
from gateway.tasks import spawn
from gateway.types import Array, Signature
from workers.runtime import TensorSpec
from workers.v2grpc import array_from_raw, array_to_raw, datatype_of

log = logging.getLogger("batchgate.pool")

MAX_MESSAGE_BYTES = 512 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


class Replica:
    """One worker endpoint and its gateway-side bookkeeping."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.outstanding = 0
        self.ready = False
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()

    def __repr__(self) -> str:
        return f"Replica({self.address}, outstanding={self.outstanding}, ready={self.ready})"


def _error_from_rpc(exc: grpc.aio.AioRpcError, replica: Replica) -> BatchgateError:
    code = exc.code()
    detail = exc.details() or code.name
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
        return Unavailable(f"worker {replica.address} unavailable: {detail}")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(detail)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(detail)
    return WorkerError(detail)


class PoolClient:
    """Replica choice, slot accounting and readiness for one pool."""

    def __init__(self, name: str, inflight_per_replica: int = 2, health_interval_s: float = 0.5) -> None:
        self.name = name
        self.inflight_per_replica = inflight_per_replica
        self.health_interval_s = health_interval_s
        self.replicas: dict[str, Replica] = {}
        self._waiters: deque[asyncio.Future[Replica]] = deque()
        self._ready_listeners: list[Callable[[], None]] = []
        self._health_task: asyncio.Task[None] | None = None

    # -- membership -------------------------------------------------------------------
    def add(self, address: str) -> Replica:
        replica = self.replicas.get(address)
        if replica is None:
            replica = self.replicas[address] = Replica(address)
        return replica

    async def remove(self, address: str) -> None:
        """Stop sending to a replica and close its channel once its batches are done."""
        replica = self.replicas.get(address)
        if replica is None:
            return
        replica.draining = True
        await replica.idle.wait()
        self.replicas.pop(address, None)
        await replica.channel.close()

    def on_ready_change(self, callback: Callable[[], None]) -> None:
        self._ready_listeners.append(callback)

    def ready_count(self) -> int:
        return sum(1 for r in self.replicas.values() if r.ready and not r.draining)

    def set_ready(self, replica: Replica, ready: bool) -> None:
        if replica.ready == ready:
            return
        replica.ready = ready
        log.info("pool %s: replica %s %s", self.name, replica.address, "ready" if ready else "not ready")
        for callback in self._ready_listeners:
            callback()
        self._wake()

    # -- slots --------------------------------------------------------------------------
    def _candidates(self) -> list[Replica]:
        limit = self.inflight_per_replica
        return [r for r in self.replicas.values() if r.ready and not r.draining and r.outstanding < limit]

    def _pick(self) -> Replica | None:
        candidates = self._candidates()
        if not candidates:
            return None
        if len(candidates) > 4:
            first, second = random.sample(candidates, 2)
            return first if first.outstanding <= second.outstanding else second
        return min(candidates, key=lambda r: r.outstanding)

    def has_idle_slot(self) -> bool:
        return bool(self._candidates())

    def try_acquire(self) -> Replica | None:
        replica = self._pick()
        if replica is not None:
            replica.outstanding += 1
            replica.idle.clear()
        return replica

    async def acquire(self) -> Replica:
        """A replica slot; waits (FIFO with other waiters) until one is free and ready."""
        if not self._waiters:
            replica = self.try_acquire()
            if replica is not None:
                return replica
        future: asyncio.Future[Replica] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result())
            raise

    def release(self, replica: Replica) -> None:
        replica.outstanding -= 1
        if not replica.outstanding:
            replica.idle.set()
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            if self._waiters[0].done():
                self._waiters.popleft()
                continue
            replica = self.try_acquire()
            if replica is None:
                return
            self._waiters.popleft().set_result(replica)

    # -- calls ----------------------------------------------------------------------------
    async def infer(
        self, replica: Replica, model: str, version: str, feeds: dict[str, Array], timeout_s: float
    ) -> dict[str, Array]:
        """Run one batch on ``replica``; outputs are views over the response bytes."""
        request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
        for name, array in feeds.items():
            request.inputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
            request.raw_input_contents.append(array_to_raw(array))
        try:
            response = await replica.stub.ModelInfer(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            error = _error_from_rpc(exc, replica)
            if isinstance(error, Unavailable):
                self.set_ready(replica, False)
            raise error from None
        outputs: dict[str, Array] = {}
        for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
            outputs[tensor.name] = array_from_raw(tensor.datatype, tensor.shape, raw)
        return outputs

    async def signature(self, model: str, version: str) -> Signature:
        """Model inputs and outputs as a ready replica reports them."""
        replica = next((r for r in self.replicas.values() if r.ready), None)
        if replica is None:
            raise Unavailable(f"pool {self.name} has no ready replica")
        try:
            meta = await replica.stub.ModelMetadata(
                service_pb2.ModelMetadataRequest(name=model, version=version), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise _error_from_rpc(exc, replica) from None

        def specs(items: Iterable[Any]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in items)

        return Signature(specs(meta.inputs), specs(meta.outputs), meta.platform or "onnxruntime_onnx")

    # -- health -----------------------------------------------------------------------------
    async def probe(self, replica: Replica) -> None:
        try:
            response = await replica.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=2)
            self.set_ready(replica, bool(response.ready))
        except grpc.aio.AioRpcError:
            self.set_ready(replica, False)

    async def _health_loop(self) -> None:
        while True:
            replicas = list(self.replicas.values())
            if replicas:
                await asyncio.gather(*(self.probe(r) for r in replicas))
            await asyncio.sleep(self.health_interval_s)

    def start(self) -> None:
        self._health_task = spawn(self._health_loop(), name=f"pool-{self.name}-health")

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(Unavailable(f"pool {self.name} is shutting down"))
        for replica in list(self.replicas.values()):
            await replica.channel.close()
        self.replicas.clear()
