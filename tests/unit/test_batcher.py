"""The batch-closing rule on a fake clock (no sleeps, no workers)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.batcher import ModelBatcher
from gateway.clock import FakeClock
from gateway.errors import Overloaded
from gateway.metrics import Metrics
from gateway.model_config import BatchingConfig
from gateway.pool import PoolClient
from gateway.request_queue import Pending
from gateway.validation import CheckedRequest


def _checked(rows: int = 1) -> CheckedRequest:
    return CheckedRequest({"x": np.zeros((rows, 4), np.float32)}, rows, ((4,),), ("y",))


def _batcher(clock: FakeClock, fixed_s: float = 0.0, **batching: object) -> ModelBatcher:
    """A batcher whose workers (per the fitted model) spend ``fixed_s`` + 1 ms/row per batch."""
    config = BatchingConfig(**batching)  # type: ignore[arg-type]
    batcher = ModelBatcher("m", "1", config, PoolClient("p"), clock, Metrics())
    if fixed_s:
        for rows in (1, 8, 1, 8):
            batcher.latency.observe(rows, fixed_s + 0.001 * rows)
    return batcher


def _arrivals(batcher: ModelBatcher, clock: FakeClock, joining: int, gap_s: float) -> Pending:
    """One request, then ``joining`` more ``gap_s`` apart, each with a 1 s deadline; the first."""
    head = batcher.submit(_checked(), deadline=clock.now() + 1)
    for _ in range(joining):
        clock.advance(gap_s)
        batcher.submit(_checked(), deadline=clock.now() + 1)
    return head


def test_lone_request_closes_at_once_even_with_a_long_delay() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        batcher = _batcher(clock, max_queue_delay_us=50_000)
        pending = batcher.submit(_checked(), deadline=clock.now() + 1)
        assert batcher.close_in(pending, clock.now()) <= 0

    asyncio.run(scenario())


def test_cheap_batches_close_at_once_when_the_next_request_is_due_after_the_delay() -> None:
    """CPU-like model: rows arriving during the per-batch overhead are fewer than those queued,
    and at one request per 3 ms the next is due after the 4 ms delay has run out."""

    async def scenario() -> None:
        clock = FakeClock()
        batcher = _batcher(clock, fixed_s=0.0002, max_queue_delay_us=4_000, max_batch_size=32)
        head = _arrivals(batcher, clock, 2, 0.003)
        assert batcher.close_in(head, clock.now()) <= 0

    asyncio.run(scenario())


def test_cheap_batches_wait_under_sustained_traffic_until_no_one_is_due() -> None:
    """The same model at one request per 0.5 ms: the slot-throughput test alone (0.4 rows due
    during the 0.2 ms per-batch cost, against 6 queued) would close now, but more requests are
    due before the delay runs out, so the batch grows as a fixed delay's would."""

    async def scenario() -> None:
        clock = FakeClock()
        batcher = _batcher(clock, fixed_s=0.0002, max_queue_delay_us=10_000, max_batch_size=32)
        head = _arrivals(batcher, clock, 5, 0.0005)
        assert batcher.close_in(head, clock.now()) == pytest.approx(0.0075)
        clock.advance(0.0074)  # no one joined for 7.4 ms: the rate has fallen below one per 0.1 ms left
        assert batcher.close_in(head, clock.now()) <= 0

    asyncio.run(scenario())


def test_costly_batches_wait_while_requests_keep_joining_then_close_at_the_delay() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        batcher = _batcher(clock, fixed_s=0.010, max_queue_delay_us=10_000, max_batch_size=32)
        head = _arrivals(batcher, clock, 5, 0.001)
        wait = batcher.close_in(head, clock.now())
        assert 0 < wait <= 0.005 + 1e-9
        clock.advance(0.005)
        assert batcher.close_in(head, clock.now()) <= 0

    asyncio.run(scenario())


def test_full_or_preferred_size_closes_at_once() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        batcher = _batcher(clock, fixed_s=0.05, max_queue_delay_us=10_000, max_batch_size=32, preferred_batch_sizes=[4])
        head = batcher.submit(_checked(1), deadline=clock.now() + 1)
        for _ in range(2):
            clock.advance(0.0001)
            batcher.submit(_checked(1), deadline=clock.now() + 1)
        assert batcher.close_in(head, clock.now()) > 0  # 3 rows, requests joining
        batcher.submit(_checked(1), deadline=clock.now() + 1)
        assert batcher.close_in(head, clock.now()) <= 0

    asyncio.run(scenario())


def test_earliest_deadline_closes_the_batch_early() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        batcher = _batcher(clock, fixed_s=0.05, max_queue_delay_us=50_000, max_batch_size=8)
        for _ in range(10):
            batcher.latency.observe(8, 0.020)
        head = batcher.submit(_checked(), deadline=clock.now() + 0.030)
        clock.advance(0.0001)
        batcher.submit(_checked(), deadline=clock.now() + 1)
        clock.advance(0.0001)
        batcher.submit(_checked(), deadline=clock.now() + 1)
        wait = batcher.close_in(head, clock.now())
        assert 0 < wait <= 0.0101
        clock.advance(0.0101)
        assert batcher.close_in(head, clock.now()) <= 0

    asyncio.run(scenario())


def test_full_queue_is_overloaded_with_retry_after() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        batcher = _batcher(clock, max_queue_size=2)
        batcher.submit(_checked(), deadline=clock.now() + 1)
        batcher.submit(_checked(), deadline=clock.now() + 1)
        try:
            batcher.submit(_checked(), deadline=clock.now() + 1)
        except Overloaded as exc:
            assert exc.http_status == 429 and exc.retry_after_s is not None and exc.retry_after_s >= 1
        else:
            raise AssertionError("third request was admitted into a queue of two")

    asyncio.run(scenario())


def test_priority_maps_to_levels() -> None:
    batcher = _batcher(FakeClock(), priority_levels=3)
    assert [batcher.level_of(p) for p in (1, 2, 3, 9, 0)] == [0, 1, 2, 2, 2]
    batcher = _batcher(FakeClock(), priority_levels=3, default_priority=1)
    assert batcher.level_of(0) == 0


def test_fixed_delay_mode_waits_the_full_delay_even_for_a_lone_request() -> None:
    """adaptive: false is the Triton-style baseline the benchmark compares against."""

    async def scenario() -> None:
        clock = FakeClock()
        batcher = _batcher(clock, max_queue_delay_us=2_000, max_batch_size=4, adaptive=False)
        head = batcher.submit(_checked(), deadline=clock.now() + 1)
        assert abs(batcher.close_in(head, clock.now()) - 0.002) < 1e-9
        clock.advance(0.0021)
        assert batcher.close_in(head, clock.now()) <= 0
        for _ in range(4):
            batcher.submit(_checked(), deadline=clock.now() + 1)
        assert batcher.close_in(head, clock.now()) <= 0  # full closes at once in both modes

    asyncio.run(scenario())


def test_a_batch_waits_for_the_one_in_flight_instead_of_going_beside_it() -> None:
    """With a batch of the model in flight, queued rows wait (at most the queue delay) for it to
    come back, then go at once; a preferred size goes regardless."""

    async def scenario() -> None:
        clock = FakeClock()
        config = BatchingConfig(max_queue_delay_us=2_000, preferred_batch_sizes=(16,))
        batcher = ModelBatcher("m", "1", config, PoolClient("p"), clock, Metrics())
        batcher._inflight_batches, batcher._inflight_rows = 1, 8  # as if a batch of 8 were computing
        head = batcher.submit(_checked(3), deadline=clock.now() + 1)
        assert batcher.close_in(head, clock.now()) == pytest.approx(0.002)
        clock.advance(0.0015)
        assert batcher.close_in(head, clock.now()) == pytest.approx(0.0005)
        batcher._inflight_batches, batcher._inflight_rows = 0, 0  # it came back
        assert batcher.close_in(head, clock.now()) <= 0
        batcher._inflight_batches, batcher._inflight_rows = 1, 8
        batcher.submit(_checked(13), deadline=clock.now() + 1)
        assert batcher.close_in(head, clock.now()) <= 0  # 16 rows, a preferred size

    asyncio.run(scenario())


def test_without_the_hold_a_free_slot_takes_the_batch_beside_the_one_in_flight() -> None:
    """``hold_for_inflight: false``: a batch in flight is no reason to wait; arrivals still are."""

    async def scenario() -> None:
        clock = FakeClock()
        config = BatchingConfig(max_queue_delay_us=2_000, hold_for_inflight=False)
        batcher = ModelBatcher("m", "1", config, PoolClient("p"), clock, Metrics())
        batcher._inflight_batches, batcher._inflight_rows = 1, 8
        head = batcher.submit(_checked(3), deadline=clock.now() + 1)
        assert batcher.close_in(head, clock.now()) <= 0
        held = ModelBatcher("m", "1", BatchingConfig(max_queue_delay_us=2_000), PoolClient("p"), clock, Metrics())
        held._inflight_batches, held._inflight_rows = 1, 8
        assert held.close_in(held.submit(_checked(3), deadline=clock.now() + 1), clock.now()) == pytest.approx(0.002)

    asyncio.run(scenario())


def test_requests_are_shed_once_the_work_queued_ahead_passes_the_slo() -> None:
    """Workers report 2 ms + 1 ms/row per batch of at most 8 rows, so 10 ms per full batch.
    A request joining q queued rows waits for q // 8 full batches, then its own: within a
    30 ms budget while q // 8 <= 2, so the first 24 are queued and the 25th is refused."""

    async def scenario() -> None:
        clock = FakeClock()
        config = BatchingConfig(max_batch_size=8, max_queue_delay_us=50_000)
        batcher = ModelBatcher("m", "1", config, PoolClient("p"), clock, Metrics(), shed_after_s=0.030)
        for rows in (1, 8, 1, 8):
            batcher.service.observe(rows, 0.002 + 0.001 * rows)
        batcher.latency.observe(8, 1.0)  # the round trip the loop saw does not count here
        assert batcher.predicted_latency_s(1) == pytest.approx(0.003)  # nothing ahead: its own batch
        admitted = 0
        with pytest.raises(Overloaded, match="longer than 30 ms") as refused:
            while admitted < 100:
                batcher.submit(_checked(), deadline=clock.now() + 5)  # no replica: they stay queued
                admitted += 1
        assert admitted == 24
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 1

    asyncio.run(scenario())
