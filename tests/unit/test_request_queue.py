from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from gateway.request_queue import GONE, TAKEN, Pending, QueueFull, RequestQueue

_LOOP = asyncio.new_event_loop()


@pytest.fixture(autouse=True, scope="module")
def _close_loop() -> Iterator[None]:
    yield
    _LOOP.close()


def _pending(rows: int = 1, level: int = 0, enqueued: float = 0.0, shape: tuple[int, ...] = (4,)) -> Pending:
    future: asyncio.Future[object] = _LOOP.create_future()
    return Pending({}, rows, (shape,), deadline=enqueued + 10, enqueued=enqueued, level=level, future=future)


def test_fifo_within_a_level_and_row_limit() -> None:
    queue = RequestQueue(levels=1, max_size=10, aging_s=1.0)
    items = [_pending(rows=3, enqueued=i) for i in range(4)]
    for item in items:
        queue.push(item)
    assert queue.rows == 12
    head = queue.head(now=5)
    assert head is items[0]
    batch = queue.take(head, max_rows=7, now=5)
    assert batch == items[:2]  # a third would make 9 rows
    assert all(item.state == TAKEN for item in batch)
    assert len(queue) == 2 and queue.rows == 6


def test_higher_priority_first_but_aging_lifts_old_requests() -> None:
    queue = RequestQueue(levels=2, max_size=10, aging_s=0.1)
    low = _pending(level=1, enqueued=0.0)
    high = _pending(level=0, enqueued=0.05)
    queue.push(low)
    queue.push(high)
    assert queue.head(now=0.06) is high
    # low has now waited more than one aging period: it ranks with level 0 and is older.
    assert queue.head(now=0.15) is low


def test_different_shapes_never_share_a_batch() -> None:
    queue = RequestQueue(levels=1, max_size=10, aging_s=1.0)
    a1, b1, a2 = _pending(shape=(4,)), _pending(shape=(8,)), _pending(shape=(4,))
    for item in (a1, b1, a2):
        queue.push(item)
    batch = queue.take(queue.head(0), max_rows=10, now=0)  # type: ignore[arg-type]
    assert batch == [a1, a2]
    assert queue.head(0) is b1


def test_full_queue_evicts_lower_priority_newest_first() -> None:
    queue = RequestQueue(levels=2, max_size=2, aging_s=1.0)
    old_low, new_low = _pending(level=1), _pending(level=1)
    queue.push(old_low)
    queue.push(new_low)
    evicted = queue.push(_pending(level=0))
    assert evicted is new_low and new_low.state == GONE and len(queue) == 2
    with pytest.raises(QueueFull):
        queue.push(_pending(level=1))


def test_discarded_requests_are_skipped() -> None:
    queue = RequestQueue(levels=1, max_size=3, aging_s=1.0)
    first, second = _pending(), _pending()
    queue.push(first)
    queue.push(second)
    queue.discard(first)
    assert len(queue) == 1 and queue.head(0) is second
    assert queue.take(second, 10, 0) == [second]
    assert queue.head(0) is None


def test_a_lone_request_leaves_nothing_behind() -> None:
    queue = RequestQueue(levels=2, max_size=10, aging_s=1.0)
    gone = _pending(level=0, enqueued=0.0)
    queue.push(gone)
    queue.discard(gone)  # still in its level's deque, no longer queued
    lone = _pending(level=1, enqueued=1.0)
    queue.push(lone)
    head = queue.head(now=1.0)
    assert head is lone
    assert queue.take(head, max_rows=8, now=1.0) == [lone]
    assert lone.state == TAKEN and len(queue) == 0 and queue.rows == 0
    assert queue.head(now=1.0) is None
    later = _pending(level=1, enqueued=2.0)
    queue.push(later)  # the next one is served on its own, not with the one already taken
    assert queue.take(queue.head(now=2.0) or later, max_rows=8, now=2.0) == [later]
