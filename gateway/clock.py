"""Injectable monotonic clock, so batcher and controller logic can run on fake time in tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """Seconds on a monotonic scale; only differences mean anything."""

    def now(self) -> float: ...


class MonotonicClock:
    """The real clock."""

    def now(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


class EarliestTimer:
    """One loop timer for ``callback`` at a time on ``clock``'s scale; arming it again keeps the earlier time."""

    def __init__(self, clock: Clock, callback: Callable[[], None]) -> None:
        self.clock = clock
        self.callback = callback
        self.at: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, when: float) -> None:
        if self.at is not None and self.at <= when:
            return
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self.at = when
        self._handle = loop.call_at(loop.time() + (when - self.clock.now()), self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.at = None

    def _fire(self) -> None:
        self._handle = self.at = None
        self.callback()
