"""DeadlineWatch on a real event loop and the monotonic clock: short real deadlines, awaited
through the expiry callback itself (an event), never through sleeps."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from gateway.clock import MonotonicClock
from gateway.deadlines import MIN_COMPACT, TOLERANCE_S, DeadlineWatch
from gateway.request_queue import Pending


def _pending(clock: MonotonicClock, in_s: float) -> Pending:
    now = clock.now()
    return Pending({"x": np.zeros((1, 1))}, 1, ((1,),), now + in_s, now, 0, asyncio.get_running_loop().create_future())


class Expiries:
    """The watch's ``expire``: records what expired and when, and wakes whoever waits for ``count``."""

    def __init__(self, clock: MonotonicClock) -> None:
        self.clock = clock
        self.seen: list[tuple[Pending, float]] = []
        self.changed = asyncio.Event()

    def __call__(self, pending: Pending) -> None:
        self.seen.append((pending, self.clock.now()))
        pending.future.set_exception(TimeoutError())
        pending.future.exception()  # retrieved: no "never retrieved" warning
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.seen) < count:
                self.changed.clear()
                await self.changed.wait()


def _watch() -> tuple[MonotonicClock, Expiries, DeadlineWatch]:
    clock = MonotonicClock()
    expiries = Expiries(clock)
    return clock, expiries, DeadlineWatch(clock, expiries)


def test_an_open_request_expires_at_its_deadline_and_an_answered_one_never() -> None:
    async def scenario() -> None:
        clock, expiries, watch = _watch()
        answered, open_ = _pending(clock, 0.02), _pending(clock, 0.03)
        watch.watch(answered)
        watch.watch(open_)
        answered.future.set_result({})
        await expiries.wait_for(1)
        [(pending, at)] = expiries.seen
        assert pending is open_ and at >= open_.deadline - TOLERANCE_S

    asyncio.run(scenario())


def test_a_later_request_with_an_earlier_deadline_is_not_kept_waiting_for_the_first() -> None:
    async def scenario() -> None:
        clock, expiries, watch = _watch()
        patient, hurried = _pending(clock, 60.0), _pending(clock, 0.02)
        watch.watch(patient)
        begin = time.monotonic()
        watch.watch(hurried)  # e.g. a client's own, shorter timeout
        await expiries.wait_for(1)
        assert [p for p, _ in expiries.seen] == [hurried] and time.monotonic() - begin < 30
        assert not patient.future.done() and len(watch) == 1

    asyncio.run(scenario())


def test_requests_share_one_loop_timer() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        armed: list[Any] = []
        call_at = loop.call_at

        def counting_call_at(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
            armed.append(callback)
            return call_at(when, callback, *args)

        loop.call_at = counting_call_at  # type: ignore[method-assign]
        clock, _, watch = _watch()
        for _ in range(500):  # arrival order is deadline order under one timeout
            pending = _pending(clock, 30.0)
            watch.watch(pending)
            pending.future.set_result({})
        assert len(armed) == 1

    asyncio.run(scenario())


def test_answered_requests_behind_an_open_one_are_not_kept() -> None:
    """One request stays open (a low priority one, say) while many behind it are answered:
    the watch keeps at most a bounded number of them, not every request since."""

    async def scenario() -> None:
        clock, _, watch = _watch()
        watch.watch(_pending(clock, 30.0))
        largest = 0
        for _ in range(10 * MIN_COMPACT):
            pending = _pending(clock, 30.0)
            watch.watch(pending)
            pending.future.set_result({})
            largest = max(largest, len(watch))
        assert largest <= MIN_COMPACT + 1

    asyncio.run(scenario())
