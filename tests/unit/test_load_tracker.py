"""LoadTracker on a fake clock: the latencies the autoscaler reads, in-flight averages."""

import gc

from gateway.autoscaler.signals import LoadTracker, p99
from gateway.clock import FakeClock


def test_latencies_are_those_of_the_window_and_the_ring_keeps_the_newest() -> None:
    clock = FakeClock()
    tracker = LoadTracker(clock, max_latencies=4)
    for latency in (0.1, 0.2, 0.3):
        tracker.admitted("a")
        clock.advance(1.0)
        tracker.finished(latency)
    assert sorted(tracker.latencies(1.5)) == [0.2, 0.3]  # finished at t=2 and t=3; now is 3
    assert sorted(tracker.latencies(10)) == [0.1, 0.2, 0.3]
    for latency in (0.4, 0.5, 0.6):  # past the ring's size: the oldest go
        tracker.admitted("a")
        tracker.finished(latency)
    assert sorted(tracker.latencies(10)) == [0.3, 0.4, 0.5, 0.6]
    assert p99(tracker.latencies(10)) == 0.6
    assert tracker.inflight == 0


def test_finishing_a_request_allocates_nothing_the_collector_tracks() -> None:
    """A deque of tuples here once kept 100,000 objects alive for the collector to walk."""
    tracker = LoadTracker(FakeClock(), max_latencies=1000)
    tracker.admitted(None)
    tracker.finished(0.01)
    before = len(gc.get_objects())
    for _ in range(500):
        tracker.admitted(None)
        tracker.finished(0.01)
    assert len(gc.get_objects()) - before < 50


def test_p99_is_the_nearest_rank_of_a_full_sort_for_lists_and_arrays() -> None:
    import math

    import numpy as np

    assert p99([]) is None and p99(np.array([])) is None
    rng = np.random.default_rng(11)
    for size in (1, 2, 99, 100, 101, 1_000, 12_345):
        values = rng.exponential(0.01, size)
        ordered = sorted(values.tolist())
        expected = ordered[min(size - 1, math.ceil(0.99 * size) - 1)]
        assert p99(values) == expected, size
        assert p99(values.tolist()) == expected, size
    window = LoadTracker(FakeClock()).latencies(10)
    assert p99(window) is None  # nothing finished yet


def test_clients_counts_those_seen_in_the_window_however_they_interleave() -> None:
    clock = FakeClock()
    tracker = LoadTracker(clock)
    for client in ("a", "b", "c"):
        tracker.admitted(client)
        tracker.finished(0.001)
        clock.advance(1.0)
    tracker.admitted("a")  # "a" again: now the most recently seen
    tracker.finished(0.001)
    clock.advance(1.0)  # now 4: a at 3, b at 1, c at 2
    assert tracker.clients(10.0) == 3
    assert tracker.clients(2.5) == 2  # b (seen at 1) is forgotten; a and c remain
    assert tracker.clients(10.0) == 2  # forgotten for good
    tracker.admitted(None)  # no client id: counted in flight, not as a client
    tracker.finished(0.001)
    clock.advance(5.0)
    assert tracker.clients(3.0) == 0
