"""In-process replicas (gateway.inprocess) on real ONNX Runtime sessions: the same answers as
a worker process gives over its wire, one reply per batch, and the run threads' placement."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.errors import DeadlineExceeded
from gateway.inprocess import InProcessWorker, RunSettings
from gateway.replica import infer_outputs, infer_request
from tests.helpers import IDENTITY_TYPES, identity_model, write_model
from workers.servicer import Faults, InferFailure

Replies = list[tuple[Any, Any, Any]]


def _repository(tmp_path: Path) -> list[tuple[str, str, str]]:
    path = write_model(tmp_path, "identity", identity_model())
    bf16 = write_model(tmp_path, "identity_bf16", identity_model(["BF16", "FP32"]))
    return [("identity", "1", str(path)), ("identity_bf16", "1", str(bf16))]


def _feeds(types: list[str], rows: int = 2) -> dict[str, np.ndarray]:
    from workers.dtypes import V2_TO_NUMPY

    rng = np.random.default_rng(3)
    feeds = {}
    for datatype in types:
        if datatype == "BYTES":
            feeds[f"in_{datatype}"] = np.array([[f"{r}-{c}é".encode() for c in range(3)] for r in range(rows)], object)
        else:
            feeds[f"in_{datatype}"] = (rng.standard_normal((rows, 3)) * 50).astype(V2_TO_NUMPY[datatype])
    return feeds


async def _submit(
    worker: InProcessWorker, model: str, feeds: dict[str, np.ndarray], timeout_s: float = 10.0
) -> Replies:
    """Submit one batch and wait for its (first) reply; every reply it gets is listed."""
    replies: Replies = []
    answered = asyncio.Event()

    def reply(outputs: Any, busy: Any, failure: Any) -> None:
        replies.append((outputs, busy, failure))
        answered.set()

    worker.submit(model, "", feeds, timeout_s, reply)
    await answered.wait()
    return replies


def test_answers_are_what_a_worker_process_sends_over_its_wire(tmp_path: Path) -> None:
    models = _repository(tmp_path)

    async def scenario() -> None:
        worker = await InProcessWorker.start("unix:" + str(tmp_path / "a.sock"), models, RunSettings(1, ("auto",)), 1)
        try:
            for model, types in (("identity", IDENTITY_TYPES), ("identity_bf16", ["BF16", "FP32"])):
                feeds = _feeds(types)
                [(outputs, busy, failure)] = await _submit(worker, model, feeds)
                assert failure is None and busy > 0
                wire, _ = infer_outputs(worker.servicer.infer(infer_request(model, "", feeds)))
                assert outputs.keys() == wire.keys()
                for name, array in wire.items():
                    assert outputs[name].dtype == array.dtype and outputs[name].shape == array.shape, name
                    assert outputs[name].tolist() == array.tolist(), name
                assert outputs["out_BYTES" if model == "identity" else "out_FP32"] is not None
        finally:
            await worker.close(5)

    asyncio.run(scenario())


class CountingFaults(Faults):
    """Faults that count the runs they were applied to (every run of a found model)."""

    runs = 0

    def apply(self, model: str) -> None:
        self.runs += 1
        super().apply(model)


def test_a_late_answer_after_the_timeout_is_dropped_and_failures_carry_their_code(tmp_path: Path) -> None:
    models = _repository(tmp_path)
    faults = CountingFaults(delay_s=0.3, models=frozenset({"identity_bf16"}))
    slow = RunSettings(1, ("auto",), faults=faults)

    async def scenario() -> None:
        worker = await InProcessWorker.start("unix:" + str(tmp_path / "b.sock"), models, slow, 1)
        try:
            late = await _submit(worker, "identity_bf16", _feeds(["BF16", "FP32"]), timeout_s=0.02)
            queued = await _submit(worker, "identity_bf16", _feeds(["BF16", "FP32"]), timeout_s=0.02)
            assert len(late) == 1 and isinstance(late[0][2], DeadlineExceeded)
            assert isinstance(queued[0][2], DeadlineExceeded)
            # One run thread: this batch runs after the slow one, whose answer reached the loop
            # first; the batch that expired while it queued behind it never ran.
            [(_, _, missing)] = await _submit(worker, "nope", {})
            assert isinstance(missing, InferFailure) and missing.code == grpc.StatusCode.NOT_FOUND
            assert len(late) == 1 and len(queued) == 1  # the slow run's own answer came and was dropped
            assert faults.runs == 1
            [(_, _, bad)] = await _submit(worker, "identity", {"in_FP32": np.zeros((1, 3), np.float32)})
            assert isinstance(bad, InferFailure) and bad.code == grpc.StatusCode.INTERNAL
        finally:
            await worker.close(5)
        [(_, _, draining)] = await _submit(worker, "identity", _feeds(IDENTITY_TYPES), timeout_s=0.5)
        assert isinstance(draining, DeadlineExceeded)  # closed: no thread takes it, its timer answers

    asyncio.run(scenario())


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policy")
def test_run_threads_are_batch_scheduled_and_the_control_endpoint_answers(tmp_path: Path) -> None:
    models = _repository(tmp_path)
    address = "unix:" + str(tmp_path / "c.sock")

    async def scenario() -> None:
        worker = await InProcessWorker.start(address, models, RunSettings(1, ("auto",)), 2)
        try:
            await _submit(worker, "identity", _feeds(IDENTITY_TYPES))
            policies = {os.sched_getscheduler(thread.native_id or 0) for thread in worker._threads}
            assert policies == {os.SCHED_BATCH}
            assert os.sched_getscheduler(0) != os.SCHED_BATCH  # the event loop's thread keeps its own
            async with grpc.aio.insecure_channel(address) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                assert (await stub.ServerReady(service_pb2.ServerReadyRequest())).ready
                meta = await stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="identity_bf16"))
                assert [t.datatype for t in meta.inputs] == ["BF16", "FP32"]
        finally:
            await worker.close(5)
        assert not worker.servicer.ready

    asyncio.run(scenario())
