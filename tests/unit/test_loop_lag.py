"""The event-loop lag probe: a loop held by synchronous work shows up as lag of about that
hold in ``batchgate_event_loop_lag_seconds``; a loop with nothing to do shows little."""

from __future__ import annotations

import asyncio
import time

from gateway.loop_lag import watch_loop_lag
from gateway.metrics import Metrics

INTERVAL_S = 0.005


def _lags(hold_s: float) -> tuple[list[float], Metrics]:
    """Lags seen: two samples on an idle loop, then the loop held for ``hold_s``, then the
    sample that was due meanwhile."""

    async def main() -> tuple[list[float], Metrics]:
        metrics = Metrics()
        lags: list[float] = []
        arrived: asyncio.Queue[float] = asyncio.Queue()

        def sample(lag: float) -> None:
            lags.append(lag)
            arrived.put_nowait(lag)

        task = asyncio.get_running_loop().create_task(watch_loop_lag(metrics.loop_lag, INTERVAL_S, sample))
        try:
            for _ in range(2):
                await asyncio.wait_for(arrived.get(), 5)
            if hold_s:
                asyncio.get_running_loop().call_soon(time.sleep, hold_s)  # a long synchronous callback
            await asyncio.wait_for(arrived.get(), 5)
        finally:
            task.cancel()
        return lags, metrics

    return asyncio.run(main())


def test_a_held_loop_shows_lag_of_about_the_hold() -> None:
    lags, metrics = _lags(0.12)
    # The sample due during the hold ran once the hold was over: at least the hold less
    # the interval it may already have waited before the hold began.
    assert lags[-1] >= 0.12 - INTERVAL_S
    registry = metrics.registry
    assert registry.get_sample_value("batchgate_event_loop_lag_seconds_count") == len(lags) == 3
    assert registry.get_sample_value("batchgate_event_loop_lag_seconds_bucket", {"le": "0.1"}) == 2
    assert registry.get_sample_value("batchgate_event_loop_lag_seconds_sum") >= lags[-1]


def test_an_idle_loop_shows_little_lag() -> None:
    lags, _ = _lags(0.0)
    # Generous for a loaded CI machine; the held loop above is at least 0.115.
    assert max(lags) < 0.05
