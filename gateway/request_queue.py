"""The bounded, prioritised queue of one model version.

Levels are 0 (highest) .. N-1. A request's effective level improves by one for every
``aging_s`` it has waited, so low priority never starves; when the queue is full a
newcomer may evict the newest request of a strictly lower level (shed lowest first).
Requests that leave early (cancelled, expired) are marked and skipped lazily.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from gateway.types import Array
from gateway.validation import ShapeKey

QUEUED, TAKEN, GONE = 0, 1, 2

log = logging.getLogger("batchgate.batcher")  # a failing completion hook is the batcher's to report


class QueueFull(Exception):
    """No room, and nothing of lower priority to evict."""


class Pending:
    """One admitted request waiting for (or in) a batch."""

    __slots__ = (
        "attempts",
        "deadline",
        "enqueued",
        "feeds",
        "future",
        "level",
        "on_done",
        "rows",
        "shape_key",
        "state",
    )

    def __init__(
        self,
        feeds: dict[str, Array],
        rows: int,
        shape_key: ShapeKey,
        deadline: float,
        enqueued: float,
        level: int,
        future: asyncio.Future[Any],
    ) -> None:
        self.feeds = feeds
        self.rows = rows
        self.shape_key = shape_key
        self.deadline = deadline
        self.enqueued = enqueued
        self.level = level
        self.future = future
        self.state = QUEUED
        self.attempts = 0
        # Called with this request once its future has a result or an exception (not when it
        # is cancelled): at once for an answer, a loop turn later for an error.
        self.on_done: Callable[[Pending], None] | None = None

    def run_hook(self) -> None:
        """Call ``on_done`` once; a failing hook is logged, not raised into the batch."""
        hook, self.on_done = self.on_done, None
        if hook is None:
            return
        try:
            hook(self)
        except Exception:
            log.exception("a request's completion hook failed")


class RequestQueue:
    """FIFO per priority level, bounded in requests, with aging."""

    def __init__(self, levels: int, max_size: int, aging_s: float) -> None:
        self._levels: list[deque[Pending]] = [deque() for _ in range(levels)]
        self.max_size = max_size
        self.aging_s = aging_s
        self.size = 0
        self.rows = 0

    def __len__(self) -> int:
        return self.size

    def push(self, item: Pending) -> Pending | None:
        """Admit ``item``; returns a lower-priority request evicted to make room, if any."""
        evicted = None
        if self.size >= self.max_size:
            evicted = self._evict_below(item.level)
            if evicted is None:
                raise QueueFull
        self._levels[item.level].append(item)
        self.size += 1
        self.rows += item.rows
        return evicted

    def _evict_below(self, level: int) -> Pending | None:
        for lower in range(len(self._levels) - 1, level, -1):
            queue = self._levels[lower]
            while queue:
                victim = queue.pop()
                if victim.state == QUEUED:
                    self._forget(victim)
                    return victim
        return None

    def _forget(self, item: Pending) -> None:
        item.state = GONE
        self.size -= 1
        self.rows -= item.rows

    def discard(self, item: Pending) -> None:
        """Remove a request that left (cancelled or expired) before it was batched."""
        if item.state == QUEUED:
            self._forget(item)

    def _trim(self, queue: deque[Pending]) -> None:
        while queue and queue[0].state != QUEUED:
            queue.popleft()

    def _rank(self, level: int, now: float) -> int:
        """Level minus one per aging period the level's oldest request has waited."""
        queue = self._levels[level]
        self._trim(queue)
        if not level or not queue:
            return level
        return level - int((now - queue[0].enqueued) / self.aging_s)

    def head(self, now: float) -> Pending | None:
        """The request to serve next: best effective level, oldest first among equals."""
        best: Pending | None = None
        best_rank = 0
        for level, queue in enumerate(self._levels):
            self._trim(queue)
            if not queue:
                continue
            first = queue[0]
            rank = self._rank(level, now)
            if best is None or rank < best_rank or (rank == best_rank and first.enqueued < best.enqueued):
                best, best_rank = first, rank
        return best

    def take(self, head: Pending, max_rows: int, now: float) -> list[Pending]:
        """``head`` plus more requests of its shape, in priority order, up to ``max_rows``."""
        batch = [head]
        rows = head.rows
        self._take_one(head)
        if not self.size:  # nothing else queued (a lone request): no levels to rank
            own = self._levels[head.level]
            if own and own[0] is head:
                own.popleft()
            return batch
        order = sorted(range(len(self._levels)), key=lambda level: self._rank(level, now))
        for level in order:
            queue = self._levels[level]
            skipped: list[Pending] = []
            while queue and rows < max_rows:
                item = queue.popleft()
                if item.state != QUEUED:
                    continue
                if item.shape_key != head.shape_key:
                    skipped.append(item)
                    continue
                if rows + item.rows > max_rows:
                    queue.appendleft(item)
                    break
                self._take_one(item)
                batch.append(item)
                rows += item.rows
            queue.extendleft(reversed(skipped))
            if rows >= max_rows:
                break
        return batch

    def requeue(self, items: list[Pending]) -> None:
        """Put taken requests back at the front of their levels, in their original order."""
        for item in reversed(items):
            item.state = QUEUED
            self._levels[item.level].appendleft(item)
            self.size += 1
            self.rows += item.rows

    def _take_one(self, item: Pending) -> None:
        item.state = TAKEN
        self.size -= 1
        self.rows -= item.rows
