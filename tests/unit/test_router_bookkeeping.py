"""What the router and batcher count around a request, on a pool whose worker is a stand-in.

The stand-in answers each batch a loop turn after it is sent, or keeps it; everything else
(router, batcher, queue, load tracker, output monitor) is the gateway's own code on a real
event loop.
Real workers answer these paths in tests/integration (test_lifecycle.py, test_health.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.batcher import ModelBatcher
from gateway.clock import MonotonicClock
from gateway.health import OutputMonitor
from gateway.metrics import Metrics
from gateway.model_config import ModelConfig
from gateway.model_table import ServedModel
from gateway.pool import PoolClient
from gateway.router import Router
from gateway.types import InferRequest, InputTensor, Signature
from workers.runtime import TensorSpec

Done = Any  # PoolClient's done(outputs, busy, error)


def _router(
    monkeypatch: pytest.MonkeyPatch, hold: asyncio.Event | None = None
) -> tuple[Router, ServedModel, list[Done]]:
    """A router on one model whose stand-in worker answers each batch a loop turn later
    (y = the first two columns of x), or keeps it and sets ``hold``."""
    clock, metrics = MonotonicClock(), Metrics()
    pool = PoolClient("p", clock=clock, metrics=metrics)
    pool.add("stand-in").ready = True
    kept: list[Done] = []

    def send(replica: object, model: str, version: str, feeds: dict[str, Any], timeout: float, done: Done) -> None:
        if hold is not None:
            kept.append(done)
            hold.set()
        else:
            asyncio.get_running_loop().call_soon(done, {"y": feeds["x"][:, :2].copy()}, 0.001, None)

    monkeypatch.setattr(pool, "send", send)
    config = ModelConfig()
    batcher = ModelBatcher("m", "1", config.batching, pool, clock, metrics)
    served = ServedModel("m", "1", config, pool, batcher, Path("m/1/model.onnx"))
    served.signature = Signature((TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 2)),))
    served.datatypes = {"y": "FP32"}
    served.outputs = OutputMonitor(sample_ratio=1.0)
    batcher.watch_outputs = served.outputs.observe_batch
    return Router(clock, metrics, [served]), served, kept


def _request(value: float) -> InferRequest:
    return InferRequest("m", "", [InputTensor("x", "FP32", (1, 4), np.full((1, 4), value, np.float32))])


def test_a_client_that_stops_waiting_is_no_longer_counted_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelling the task that awaits ``Router.infer`` cancels the ticket's future before
    ``abandon`` runs; the autoscaler's in-flight count must still come back down."""

    async def scenario() -> None:
        computing = asyncio.Event()
        router, served, _ = _router(monkeypatch, hold=computing)
        call = asyncio.ensure_future(router.infer(_request(1.0)))
        await computing.wait()  # the batch is at the stand-in worker, which keeps it
        assert served.pool.load.inflight == 1
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert served.pool.load.inflight == 0

    asyncio.run(scenario())


def test_answered_requests_leave_the_count_and_each_row_is_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        router, served, _ = _router(monkeypatch)
        responses = await asyncio.gather(*(router.infer(_request(v)) for v in (1.0, 2.0, 3.0)))
        assert [r.outputs[0].data.tolist() for r in responses] == [[[v, v]] for v in (1.0, 2.0, 3.0)]
        assert served.pool.load.inflight == 0
        assert served.outputs is not None
        assert sorted(served.outputs.means) == [1.0, 2.0, 3.0]  # one mean per row, not per batch

    asyncio.run(scenario())


def test_the_clients_answer_is_told_before_the_bookkeeping(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener the protocol adds after admission runs before the router's own (the
    autoscaler's in-flight count), so that accounting never delays an answer."""

    async def scenario() -> None:
        router, served, _ = _router(monkeypatch)
        seen: list[int] = []
        ticket = router.admit(_request(1.0))
        ticket.when_done(lambda _ticket: seen.append(served.pool.load.inflight))
        await ticket.future
        assert seen == [1]  # still counted while the answer went out
        assert served.pool.load.inflight == 0

    asyncio.run(scenario())
