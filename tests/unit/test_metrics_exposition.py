"""``gateway.metrics.exposition`` writes exactly what ``prometheus_client.generate_latest``
writes, and lets the event loop run between metric families once its slice is used up."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Info, generate_latest

from gateway.metrics import Metrics, exposition


def filled(models: int) -> Metrics:
    """Every kind of family the gateway exports, with label values that need escaping."""
    metrics = Metrics(CollectorRegistry())  # no process collector: its CPU line changes between renders
    for index in range(models):
        model = f"model_{index}"
        metrics.requests.labels(model, "1", "200").inc(index + 1)
        metrics.requests.labels(model, "1", "429").inc()
        metrics.request_duration.labels(model, "1").observe(0.0042 * index)
        metrics.batch_size.labels(model, "1").observe(index % 70)
        metrics.queue_depth.labels(model, "1").set(index)
    metrics.input_drift.labels('quote " back \\ new\nline', "overall").set(float("inf"))
    metrics.shadow_agreement.labels("m", "s").set(float("nan"))
    metrics.desired_replicas.labels("pool").set(1e22)
    Info("batchgate_build", "Build information.", registry=metrics.registry).info({"version": "0.1.0"})
    return metrics


@pytest.mark.parametrize("slice_s", [0.0, 60.0])
def test_the_text_is_what_generate_latest_writes(slice_s: float) -> None:
    registry = filled(12).registry
    assert asyncio.run(exposition(registry, slice_s)) == generate_latest(registry)


def loop_turns_during(registry: CollectorRegistry, slice_s: float) -> int:
    """How many times another task ran while one scrape was rendered."""

    async def main() -> int:
        turns = 0
        done = False

        async def other_work() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other_work())
        await asyncio.sleep(0)  # let it start, then count only what runs during the render
        before = turns
        await exposition(registry, slice_s)
        during = turns - before
        done = True
        await task
        return during

    return asyncio.run(main())


def test_the_loop_runs_between_families_once_the_slice_is_used() -> None:
    registry = filled(12).registry
    families = sum(1 for _ in registry.collect())
    assert loop_turns_during(registry, 0.0) >= families - 1  # a turn after every family
    assert loop_turns_during(registry, 60.0) == 0  # a slice longer than the render: all at once
