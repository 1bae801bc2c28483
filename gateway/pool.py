"""Pool client: the gateway's view of one pool of worker replicas.

Picks the replica with the fewest outstanding batches (power of two random choices
when the pool is large), hands out at most ``inflight_per_replica`` slots per replica,
and tracks which replicas are ready through a guarded health-check task. Batches go
over the framed local transport to workers on this machine, as arrays to replicas in
the gateway's own process, and over v2 gRPC to any other v2 server; health and metadata
always use gRPC.
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
from tritonclient.grpc import service_pb2

from gateway.autoscaler.signals import LoadTracker
from gateway.circuit import OPEN, CircuitBreaker, RetryBudget
from gateway.clock import Clock, MonotonicClock
from gateway.config import WorkerTLS
from gateway.errors import BatchgateError, DeadlineExceeded, Unavailable, WorkerError
from gateway.inprocess import InProcessWorker
from gateway.metrics import Metrics
from gateway.replica import (
    LOAD_TIMEOUT_S,
    STATUS_CODES,
    Outputs,
    Replica,
    error_for,
    infer_outputs,
    infer_request,
    load_request,
)
from gateway.tasks import spawn
from gateway.types import Array, Signature
from workers import framing
from workers.runtime import TensorSpec
from workers.servicer import InferFailure

log = logging.getLogger("batchgate.pool")

# (model, version, model file) that every replica of a pool must hold before it takes batches.
Wanted = Callable[[], Iterable[tuple[str, str, str]]]
# done(outputs, worker_busy_seconds, error): exactly one of outputs / error is set.
Done = Callable[[Outputs | None, float | None, BatchgateError | None], None]


class PoolClient:
    """Replica choice, slot accounting and readiness for one pool."""

    def __init__(
        self,
        name: str,
        inflight_per_replica: int = 1,
        health_interval_s: float = 0.5,
        runs_per_replica: int = 1,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        max_ejected_ratio: float = 0.5,
        tls: WorkerTLS | None = None,
    ) -> None:
        self.name = name
        self.tls = tls
        self.clock = clock or MonotonicClock()
        self.metrics = metrics
        self.max_ejected_ratio = max_ejected_ratio
        self.retry_budget = RetryBudget(self.clock)
        self.load = LoadTracker(self.clock)
        self.inflight_per_replica = inflight_per_replica
        self.runs_per_replica = runs_per_replica  # batches one replica computes at once
        self.health_interval_s = health_interval_s
        self.replicas: dict[str, Replica] = {}
        self._slot_listeners: deque[Callable[[], None]] = deque()
        self._ready_listeners: list[Callable[[], None]] = []
        self._health_task: asyncio.Task[None] | None = None
        # What a replica must have loaded before it is ready: a worker that starts late
        # (a new or restarted pod) loads only the newest version of each model by itself.
        self.wanted: Wanted = lambda: ()

    # -- membership -------------------------------------------------------------------
    def add(self, address: str, local_path: str | None = None, inline: InProcessWorker | None = None) -> Replica:
        replica = self.replicas.get(address)
        if replica is None:
            breaker = CircuitBreaker(self.clock)
            replica = self.replicas[address] = Replica(address, local_path, breaker, self.tls, inline)
            self._circuit_metric(replica)
        elif replica.draining:  # back before its removal finished (a pod that flapped): keep it
            replica.draining = False
            self._notify_free()
        return replica

    async def remove(self, address: str) -> None:
        """Stop sending to a replica and close its channel once its batches are done."""
        replica = self.replicas.get(address)
        if replica is None:
            return
        replica.draining = True
        await replica.idle.wait()
        if not replica.draining:
            return  # added back meanwhile
        self.replicas.pop(address, None)
        replica.close_local()
        await replica.channel.close()

    def on_ready_change(self, callback: Callable[[], None]) -> None:
        self._ready_listeners.append(callback)

    def ready_count(self) -> int:
        return sum(1 for r in self.replicas.values() if r.ready and not r.draining)

    def set_ready(self, replica: Replica, ready: bool) -> None:
        if replica.ready == ready:
            return
        replica.ready = ready
        if not ready:
            replica.close_local()
        log.info("pool %s: replica %s %s", self.name, replica.address, "ready" if ready else "not ready")
        for callback in self._ready_listeners:
            callback()
        self._notify_free()

    # -- slots --------------------------------------------------------------------------
    def _candidates(self) -> list[Replica]:
        limit = self.inflight_per_replica
        return [
            r
            for r in self.replicas.values()
            if r.ready and not r.draining and r.outstanding < limit and r.breaker.allows(r.outstanding)
        ]

    def has_usable_replica(self) -> bool:
        """Some replica is ready and not ejected (it may be busy)."""
        return any(r.ready and not r.draining and r.breaker.state != OPEN for r in self.replicas.values())

    # -- circuit breaking -----------------------------------------------------------------
    def _circuit_metric(self, replica: Replica) -> None:
        if self.metrics is not None:
            self.metrics.circuit_state.labels(self.name, replica.address).set(replica.breaker.state)

    def record(self, replica: Replica, transport_ok: bool) -> None:
        """Feed one batch outcome to the replica's breaker (model errors count as transport_ok)."""
        if transport_ok:
            self.retry_budget.deposit()
            if not replica.breaker.success():
                return  # still closed: the gauge already says so (a labelled set per batch is not free)
        else:
            ejected = sum(1 for r in self.replicas.values() if r.breaker.state == OPEN)
            may_eject = ejected + 1 <= self.max_ejected_ratio * len(self.replicas)
            if replica.breaker.failure(may_eject):
                log.warning(
                    "pool %s: replica %s ejected for %.0fs after repeated failures",
                    self.name,
                    replica.address,
                    replica.breaker.open_until - self.clock.now(),
                )
        self._circuit_metric(replica)

    def usable_runs(self) -> int:
        """Batches the pool's usable replicas compute at once (fewer than slots when they queue)."""
        return self._usable_count() * self.runs_per_replica

    def _usable_count(self) -> int:
        return sum(1 for r in self.replicas.values() if r.ready and not r.draining and r.breaker.state != OPEN)

    def has_idle_slot(self) -> bool:
        return bool(self._candidates())

    def try_acquire(self, exclude: Replica | None = None) -> Replica | None:
        """A replica slot now, or None; the caller must :meth:`release` it."""
        candidates = [r for r in self._candidates() if r is not exclude]
        if not candidates:
            return None
        if len(candidates) > 4:
            first, second = random.sample(candidates, 2)
            replica = first if first.outstanding <= second.outstanding else second
        else:
            replica = min(candidates, key=lambda r: r.outstanding)
        replica.outstanding += 1
        replica.idle.clear()
        return replica

    def notify_when_free(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once) when a slot may have become free."""
        if callback not in self._slot_listeners:
            self._slot_listeners.append(callback)

    def release(self, replica: Replica) -> None:
        replica.outstanding -= 1
        if not replica.outstanding:
            replica.idle.set()
        self._notify_free()

    def _notify_free(self) -> None:
        while self._slot_listeners and self.has_idle_slot():
            self._slot_listeners.popleft()()

    # -- batches ------------------------------------------------------------------------
    def send(
        self, replica: Replica, model: str, version: str, feeds: dict[str, Array], timeout_s: float, done: Done
    ) -> None:
        """Start one batch on ``replica``; ``done`` is called exactly once, possibly before this returns."""
        if replica.inline is not None:
            replica.inline.submit(model, version, feeds, timeout_s, self._inline_reply(replica, done))
            return
        request = infer_request(model, version, feeds)
        while replica.local_path is not None and replica.connections:
            connection = replica.connections.pop()
            if connection.usable():  # a worker killed a moment ago leaves closed ones behind
                connection.request(request.SerializeToString(), timeout_s, self._local_reply(replica, done))
                return
        spawn(self._send_async(replica, request, timeout_s, done), name=f"batch-{model}")

    def _local_reply(self, replica: Replica, done: Done) -> Callable[[int, bytes | None, BatchgateError | None], None]:
        def reply(kind: int, body: bytes | None, error: BatchgateError | None) -> None:
            self.record(replica, error is None)
            if error is not None:
                if isinstance(error, Unavailable):
                    self.set_ready(replica, False)
                done(None, None, error)
            elif kind == framing.RESPONSE and body is not None:
                outputs, busy = infer_outputs(service_pb2.ModelInferResponse.FromString(body))
                done(outputs, busy, None)
            else:
                code, message = framing.parse_error(body or b"\x02")
                failure = error_for(STATUS_CODES.get(code, grpc.StatusCode.UNKNOWN), message, replica.address)
                if isinstance(failure, Unavailable):  # the worker is draining: send nothing more its way
                    self.set_ready(replica, False)
                done(None, None, failure)

        return reply

    def _inline_reply(
        self, replica: Replica, done: Done
    ) -> Callable[[Outputs | None, float | None, InferFailure | BatchgateError | None], None]:
        def reply(outputs: Outputs | None, busy: float | None, failure: InferFailure | BatchgateError | None) -> None:
            if failure is None:
                self.record(replica, True)
                done(outputs, busy, None)
                return
            if isinstance(failure, InferFailure):
                error = error_for(failure.code, failure.message, replica.address)
            else:
                error = failure
            # As over the socket: a model's own failure leaves the breaker closed, a run that
            # never answered counts against the replica.
            self.record(replica, not isinstance(error, DeadlineExceeded))
            if isinstance(error, Unavailable):  # draining: send nothing more its way
                self.set_ready(replica, False)
            done(None, None, error)

        return reply

    async def _send_async(self, replica: Replica, request: Any, timeout_s: float, done: Done) -> None:
        try:
            if replica.local_path is not None:
                connection = await replica.connect_local()
                connection.request(request.SerializeToString(), timeout_s, self._local_reply(replica, done))
                return
            response = await replica.stub.ModelInfer(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            error = error_for(exc.code(), exc.details() or exc.code().name, replica.address)
            self.record(replica, not isinstance(error, (Unavailable, DeadlineExceeded)))
            if isinstance(error, Unavailable):
                self.set_ready(replica, False)
            done(None, None, error)
            return
        except Unavailable as exc:
            self.record(replica, False)
            self.set_ready(replica, False)
            done(None, None, exc)
            return
        except Exception as exc:  # done() must be called whatever happens, or the batch hangs
            log.exception("batch to %s failed unexpectedly", replica.address)
            done(None, None, WorkerError(f"batch failed: {exc!r}"))
            return
        self.record(replica, True)
        outputs, busy = infer_outputs(response)
        done(outputs, busy, None)

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
            raise error_for(exc.code(), exc.details() or exc.code().name, replica.address) from None

        def specs(items: Iterable[Any]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in items)

        return Signature(specs(meta.inputs), specs(meta.outputs), meta.platform or "onnxruntime_onnx")

    # -- health -----------------------------------------------------------------------------
    async def probe(self, replica: Replica) -> None:
        try:
            response = await replica.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=2)
            ready = bool(response.ready)
        except grpc.aio.AioRpcError:
            ready = False
        if ready and replica.local_path is not None and not replica.connections and not replica.ready:
            # Open the fast-path connections before the replica takes batches.
            try:
                for _ in range(self.inflight_per_replica):
                    replica.connections.append(await replica.connect_local())
            except Unavailable:
                replica.close_local()
                ready = False
        if ready and not replica.ready:
            # Not ready until it holds every served version; loading can take a while, so
            # it runs beside the health loop instead of holding up the other replicas' probes.
            if replica.preparing is None:
                replica.preparing = spawn(self._prepare(replica), name=f"prepare-{replica.address}")
            return
        self.set_ready(replica, ready)

    async def _prepare(self, replica: Replica) -> None:
        """Load what the replica lacks of ``wanted``, then mark it ready (it is probed again if that fails)."""
        try:
            missing: list[str] = []
            for name, version, path in list(self.wanted()):
                request = service_pb2.ModelReadyRequest(name=name, version=version)
                if (await replica.stub.ModelReady(request, timeout=2)).ready:
                    continue
                log.info(
                    "pool %s: loading %s:%s on %s before it takes batches", self.name, name, version, replica.address
                )
                try:
                    await replica.stub.RepositoryModelLoad(load_request(name, version, path), timeout=LOAD_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    missing.append(f"{name}:{version} ({exc.details()})")
            if missing:
                # Ready all the same: it still serves the versions it has, and its batches for
                # the others fail and are retried elsewhere.
                log.warning("pool %s: replica %s could not load %s", self.name, replica.address, ", ".join(missing))
        except grpc.aio.AioRpcError as exc:
            log.warning("pool %s: replica %s did not answer while being prepared: %s", self.name, replica.address, exc)
            return
        finally:
            replica.preparing = None
        if not replica.draining and replica.address in self.replicas:
            self.set_ready(replica, True)

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
        self._slot_listeners.clear()
        for replica in list(self.replicas.values()):
            if replica.preparing is not None:
                replica.preparing.cancel()
                await asyncio.gather(replica.preparing, return_exceptions=True)
            replica.close_local()
            await replica.channel.close()
        self.replicas.clear()
