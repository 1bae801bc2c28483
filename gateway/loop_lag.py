"""How late the gateway's event loop runs what is due: ``batchgate_event_loop_lag_seconds``.

Every request, answer, batch launch and timer of a gateway runs on one event loop. When it
has more to do than one CPU can keep up with (or shares that CPU with busy workers), each
callback waits behind the ones before it, and every client waits with it, whatever the
model's compute time. A timer set ``interval`` ahead and run ``lag`` after it was due shows
that wait: near zero on a loop with time to spare, tens of milliseconds on one that is the
bottleneck. On the 2-vCPU benchmark VM at 70% of ``mlp``'s capacity, a 1 ms timer ran 10-40
ms late through the spells of 100-250 ms that made a run's p99.

One sample per interval costs one timer and one histogram observation (20 a second by
default): it shows how often the loop is backed up and by how much, not every stall.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import Histogram


async def watch_loop_lag(
    histogram: Histogram, interval_s: float, on_sample: Callable[[float], None] | None = None
) -> None:
    """Observe into ``histogram``, every ``interval_s``, how late a timer due then ran; forever.

    ``on_sample`` is told each lag as well (tests wait on it).
    """
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        lag = max(loop.time() - due, 0.0)
        histogram.observe(lag)
        if on_sample is not None:
            on_sample(lag)
