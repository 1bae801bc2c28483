"""Replicas that run inside the gateway's process (``isolation: thread`` on a local pool).

Each replica is a :class:`workers.servicer.WorkerServicer` over its own ONNX Runtime
sessions, as in a worker process, but a batch goes from the event loop to a run thread
through a queue and comes back through ``call_soon_threadsafe``: no socket, no protobuf,
no second process to wake. ONNX Runtime releases the GIL while it computes, so the loop
serves meanwhile. The control plane (health, metadata, loading and unloading versions)
is the servicer's v2 gRPC service on a private unix socket, as for a worker process, so
the pool, the model lifecycle and the autoscaler treat both kinds of replica alike.

What it gives up is isolation: a native crash inside ONNX Runtime takes the gateway down,
where a worker process dies alone and is restarted. Loading runs on a thread of its own and
barely stalls the event loop once ONNX Runtime is imported (``mlp``: 1-3 ms); that first
import holds the GIL for about 40 ms, so the supervisor does it at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy.typing as npt
from tritonclient.grpc import service_pb2_grpc

from gateway.errors import BatchgateError, DeadlineExceeded
from workers.affinity import parse_cpus
from workers.runtime import LoadedModel, check_single_runtime, load_model
from workers.servicer import Faults, InferFailure, WorkerServicer, text_feed
from workers.v2grpc import array_from_raw, array_to_raw, datatype_of

log = logging.getLogger("batchgate.inprocess")

Arrays = dict[str, npt.NDArray[Any]]
# reply(outputs, busy_seconds, failure): exactly one of outputs / failure is set. A failure
# is the servicer's own (its gRPC code says what kind) or a DeadlineExceeded from here.
Reply = Callable[[Arrays | None, float | None, InferFailure | BatchgateError | None], None]
_CONTROL_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


class RunSettings:
    """How an in-process replica's threads and sessions run (the pool's configuration)."""

    def __init__(
        self,
        threads: int,
        providers: tuple[str, ...],
        spin: bool = False,
        concurrent_runs: int = 1,
        batch_scheduling: bool = True,
        cpus: str | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.threads = threads
        self.providers = providers
        self.spin = spin
        self.concurrent_runs = concurrent_runs
        self.batch_scheduling = batch_scheduling
        self.cpus = parse_cpus(cpus) if cpus is not None else None
        self.faults = faults or Faults()

    def prepare_thread(self) -> None:
        """Place the calling thread as a worker process would be placed: SCHED_BATCH, so a
        finished run does not preempt the event loop mid-answer, and the pool's CPUs. ONNX
        Runtime's own threads, started from a session built here, inherit both."""
        if self.batch_scheduling and hasattr(os, "SCHED_BATCH"):
            try:
                os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            except OSError as exc:
                log.warning("cannot switch a run thread to SCHED_BATCH (%s)", exc)
        if self.cpus is not None:
            os.sched_setaffinity(0, self.cpus)

    def load(self, name: str, version: str, path: Path) -> LoadedModel:
        self.prepare_thread()
        return load_model(name, version, path, self.threads, self.providers, self.spin, self.concurrent_runs)


class _Job:
    """One batch on its way through a run thread; answered once, by the run or by its timer."""

    __slots__ = ("feeds", "model", "reply", "timer", "version")

    def __init__(self, model: str, version: str, feeds: Arrays, reply: Reply) -> None:
        self.model = model
        self.version = version
        self.feeds = feeds
        self.reply: Reply | None = reply
        self.timer: asyncio.TimerHandle | None = None

    def finish(self, outputs: Arrays | None, busy: float | None, failure: InferFailure | None) -> None:
        reply, self.reply = self.reply, None
        if reply is None:
            return  # timed out first: the late answer has no one waiting
        if self.timer is not None:
            self.timer.cancel()
        reply(outputs, busy, failure)

    def expire(self, address: str) -> None:
        reply, self.reply = self.reply, None
        if reply is not None:
            reply(None, None, DeadlineExceeded(f"in-process replica {address} did not answer in time"))


class InProcessWorker:
    """One replica in the gateway's process: a servicer, its control endpoint, its run threads."""

    def __init__(self, address: str, servicer: WorkerServicer, settings: RunSettings, runs: int) -> None:
        self.address = address
        self.servicer = servicer
        self.settings = settings
        self._loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"control-{address}"),
            options=_CONTROL_OPTIONS,
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        if self._server.add_insecure_port(address) == 0 and not address.startswith("unix:"):
            raise OSError(f"cannot listen on {address}")
        self._threads = [
            threading.Thread(target=self._serve, name=f"run-{address}-{index}", daemon=True) for index in range(runs)
        ]

    @classmethod
    async def start(
        cls, address: str, models: list[tuple[str, str, str]], settings: RunSettings, runs: int
    ) -> InProcessWorker:
        """Load ``models`` (name, version, file) on a thread of their own, then serve."""
        check_single_runtime()

        def load_all() -> dict[tuple[str, str], LoadedModel]:
            return {(name, version): settings.load(name, version, Path(path)) for name, version, path in models}

        loaded = await _on_own_thread(load_all, f"load-{address}")
        servicer = WorkerServicer(
            loaded, server_name="batchgate-inprocess", faults=settings.faults, loader=settings.load
        )
        worker = cls(address, servicer, settings, runs)
        worker._server.start()
        for thread in worker._threads:
            thread.start()
        return worker

    def submit(self, model: str, version: str, feeds: Arrays, timeout_s: float, reply: Reply) -> None:
        """Queue one batch; ``reply`` is called exactly once, on the event loop."""
        job = _Job(model, version, feeds, reply)
        job.timer = self._loop.call_later(timeout_s, job.expire, self.address)
        self._jobs.put(job)

    def _serve(self) -> None:
        self.settings.prepare_thread()
        while (job := self._jobs.get()) is not None:
            if job.reply is None:
                continue  # its timer answered it while it queued: nobody waits for this run
            outputs: Arrays | None = None
            busy: float | None = None
            failure: InferFailure | None = None
            try:
                outputs, busy = self._run(job.model, job.version, job.feeds)
            except InferFailure as caught:
                failure = caught
            except Exception as exc:  # the gateway's process must outlive any one batch
                log.exception("in-process replica %s: batch failed", self.address)
                failure = InferFailure(grpc.StatusCode.INTERNAL, f"batch failed: {exc!r}")
            try:
                self._loop.call_soon_threadsafe(job.finish, outputs, busy, failure)
            except RuntimeError:  # the loop has closed: the gateway is stopping
                return

    def _run(self, name: str, version: str, feeds: Mapping[str, npt.NDArray[Any]]) -> tuple[Arrays, float]:
        """What the worker process's ``infer`` does, on the arrays themselves."""
        if not self.servicer.ready:
            raise InferFailure(grpc.StatusCode.UNAVAILABLE, "replica is draining")
        model = self.servicer.find(name, version)
        inputs = {key: text_feed(array) if array.dtype.kind in "OSU" else array for key, array in feeds.items()}
        results, busy_ns = self.servicer.compute(model, inputs, [])
        outputs: Arrays = {}
        for spec, array in zip(model.outputs, results, strict=True):
            try:
                datatype = datatype_of(array)
            except ValueError as exc:
                raise InferFailure(grpc.StatusCode.INTERNAL, f"output {spec.name}: {exc}") from None
            # Strings come back from ONNX Runtime as str objects; the gateway's codecs take
            # BYTES elements as bytes, which is what the worker's wire format gives them.
            if datatype == "BYTES":
                array = array_from_raw(datatype, array.shape, array_to_raw(array))
            outputs[spec.name] = array
        return outputs, busy_ns / 1e9

    async def close(self, timeout_s: float) -> None:
        """Refuse batches from now on (the pool drained this replica first), wait (bounded) for a
        run still in progress, and stop the control endpoint."""
        self.servicer.ready = False
        for _ in self._threads:
            self._jobs.put(None)

        def join() -> None:
            deadline = time.monotonic() + timeout_s
            for thread in self._threads:
                thread.join(max(deadline - time.monotonic(), 0.0))

        await asyncio.to_thread(join)
        self._server.stop(0)
        if any(thread.is_alive() for thread in self._threads):
            log.warning(
                "in-process replica %s: a run outlasted %.0fs; left to finish on its own", self.address, timeout_s
            )


async def _on_own_thread(work: Callable[[], Any], name: str) -> Any:
    """``work()`` on a new thread (its scheduling and CPUs are its own to set), awaited."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[Any] = loop.create_future()

    def run() -> None:
        try:
            value = work()
        except BaseException as exc:  # handed to the awaiting task, which decides
            loop.call_soon_threadsafe(_settle, result, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, result, value, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await result


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return  # the awaiting task was cancelled
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
