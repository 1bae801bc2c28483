"""The load generator's in-window rate counts only answers that arrived inside the window.

Past capacity, requests sent in the window are answered seconds after it (they waited in
the server's accept queue). Dividing every answer by the run's whole length, those seconds
included, put the server's rate a third below what it answered in the window (1,480 against
2,319/s). ``ok_in_window_per_s`` counts the answers that arrived before the window closed.
"""

from __future__ import annotations

import time

from benchmarks.loadgen import Window


def test_answers_after_the_window_have_a_latency_but_are_not_in_window() -> None:
    now = time.perf_counter()
    window = Window(warm_until=now - 2.0, stop_at=now + 60.0, max_requests=10)
    window.ok(now - 1.0)  # answered now, inside the window
    window.stop_at = time.perf_counter() - 0.5  # the window has closed
    window.ok(now - 1.0)  # sent in the window, answered after it
    assert len(window.latencies) == 2 and all(latency >= 1.0 for latency in window.latencies)
    assert window.ok_in_window == 1
