"""The one deadline a gateway connection keeps (GuardedProtocol._arm), on a hand-driven clock.

Real connections run into their header, body and keep-alive deadlines in
tests/integration/test_limits.py and test_http_direct.py; this covers what those cannot
see: a request moving the deadline does not make loop timers, and a deadline moved
later is kept, not fired at the time the timer was first set for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.rest.protocol import GuardedProtocol


class Handle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.at = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def when(self) -> float:
        return self.at


class Clock:
    """The two loop methods the deadline uses; time moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Handle:
        handle = Handle(when, callback)
        self.timers.append(handle)
        return handle

    def advance(self, seconds: float) -> None:
        """Move to now + seconds, firing due timers in order (as the loop would)."""
        end = self.now + seconds
        while True:
            due = [t for t in self.timers if not t.cancelled and t.at <= end]
            if not due:
                break
            first = min(due, key=lambda t: t.at)
            self.timers.remove(first)
            self.now = first.at
            first.callback()
        self.now = end


def _connection() -> tuple[Any, Clock]:
    clock = Clock()
    connection: Any = object.__new__(GuardedProtocol)  # only the deadline's own state
    connection.loop = clock
    connection._due, connection._on_due, connection._timer = 0.0, None, None
    return connection, clock


def test_moving_the_deadline_later_makes_no_timer_and_fires_once_at_the_new_time() -> None:
    connection, clock = _connection()
    fired: list[tuple[str, float]] = []
    connection._arm(5.0, lambda: fired.append(("keep-alive", clock.now)))
    for _ in range(100):  # requests come and go on the connection: each moves the deadline
        clock.advance(0.01)
        connection._arm(10.0, lambda: fired.append(("headers", clock.now)))
        connection._arm(30.0, lambda: fired.append(("body", clock.now)))
        connection._disarm()
        connection._arm(5.0, lambda: fired.append(("keep-alive", clock.now)))
    assert len(clock.timers) == 1  # the first timer, still pending: nothing made per request
    clock.advance(4.99)  # the first timer fires at 5 s, finds the deadline moved to 6 s, waits again
    assert fired == [] and len(clock.timers) == 1
    clock.advance(0.02)
    assert [(name, round(at, 6)) for name, at in fired] == [("keep-alive", 6.0)]
    clock.advance(60.0)
    assert len(fired) == 1  # once


def test_an_earlier_deadline_replaces_the_timer_and_a_disarmed_one_never_fires() -> None:
    connection, clock = _connection()
    fired: list[float] = []
    connection._arm(30.0, lambda: fired.append(clock.now))
    connection._arm(1.0, lambda: fired.append(clock.now))
    assert clock.timers[0].cancelled and not clock.timers[1].cancelled
    clock.advance(2.0)
    assert fired == [1.0]
    connection._arm(1.0, lambda: fired.append(clock.now))
    connection._disarm()
    clock.advance(5.0)
    assert fired == [1.0]


def test_a_closed_connection_leaves_no_timer_behind() -> None:
    connection, clock = _connection()
    connection._arm(5.0, lambda: None)
    connection._drop_timer()
    assert all(timer.cancelled for timer in clock.timers) and connection._timer is None
