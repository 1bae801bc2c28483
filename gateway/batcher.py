"""Dynamic batcher: one queue and one dispatcher task per model version (DESIGN §5).

The dispatcher first holds a replica slot, then decides when to close the batch:
at once when it is full or a preferred size, when the oldest request has waited
``max_queue_delay_us``, when the earliest deadline leaves no more slack (using the
online latency fit), or when nothing better is coming — no request has recently
joined a non-empty queue, so waiting would only add latency (a single closed-loop
client never pays the delay). While every slot is busy requests simply accumulate,
which is where large batches come from under load.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import numpy as np

from gateway.clock import Clock
from gateway.config import BatchingConfig
from gateway.errors import BatchgateError, DeadlineExceeded, Overloaded, Unavailable, WorkerError
from gateway.latency_model import LatencyModel
from gateway.metrics import Metrics
from gateway.pool import PoolClient, Replica
from gateway.request_queue import QUEUED, Pending, QueueFull, RequestQueue
from gateway.tasks import spawn
from gateway.types import Array
from gateway.validation import CheckedRequest

log = logging.getLogger("batchgate.batcher")

Outputs = dict[str, Array]


class ModelBatcher:
    """Queue, close and dispatch batches for one model version."""

    def __init__(
        self,
        model: str,
        version: str,
        config: BatchingConfig,
        pool: PoolClient,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.model = model
        self.version = version
        self.config = config
        self.pool = pool
        self.clock = clock
        self.metrics = metrics
        self.max_rows = max(config.max_batch_size, 1)
        self.max_delay_s = config.max_queue_delay_us / 1e6
        self.preferred = frozenset(config.preferred_batch_sizes)
        self.preferred_max = max(config.preferred_batch_sizes, default=self.max_rows)
        self.queue = RequestQueue(config.priority_levels, config.max_queue_size, config.aging_ms / 1000)
        self.latency = LatencyModel()
        self._wakeup = asyncio.Event()
        self._last_join: float | None = None
        self._join_gap: float | None = None
        self._inflight_batches = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        labels = (model, version)
        self._m_batch = metrics.batch_size.labels(*labels)
        self._m_queue = metrics.queue_duration.labels(*labels)
        self._m_compute = metrics.compute_duration.labels(*labels)
        self._m_depth = metrics.queue_depth.labels(*labels)

    # -- admission -----------------------------------------------------------------------
    def level_of(self, priority: int) -> int:
        """v2 priority 1 is the highest; 0 means the model default."""
        levels = self.config.priority_levels
        if priority == 0:
            priority = self.config.default_priority or levels
        return min(priority, levels) - 1

    def submit(self, checked: CheckedRequest, deadline: float, priority: int = 0) -> Pending:
        """Queue a validated request; its future resolves to the outputs of its rows."""
        loop = asyncio.get_running_loop()
        now = self.clock.now()
        pending = Pending(
            checked.feeds,
            checked.rows,
            checked.shape_key,
            deadline,
            now,
            self.level_of(priority),
            loop.create_future(),
        )
        was_waiting = len(self.queue) > 0
        try:
            evicted = self.queue.push(pending)
        except QueueFull:
            raise self.queue_full_error() from None
        if evicted is not None:
            self._answer_error(evicted, self.queue_full_error())
        if was_waiting:
            self._note_join(now)
        pending.timer = loop.call_at(loop.time() + (deadline - now), self._expire, pending)
        self._m_depth.set(len(self.queue))
        self._wakeup.set()
        return pending

    def queue_full_error(self) -> BatchgateError:
        return Overloaded(f"model {self.model} queue is full", retry_after_s=self.retry_after_s())

    def retry_after_s(self) -> float:
        """A hint for clients told 429: about the time to work off the current queue."""
        rows = self.queue.rows
        per_batch = self.latency.predict(self.max_rows) or 0.01
        ready = max(self.pool.ready_count(), 1)
        return max(1.0, math.ceil(rows / self.max_rows * per_batch / ready))

    def cancel(self, pending: Pending) -> None:
        """The client left: drop its request if it has not been batched yet."""
        self.queue.discard(pending)
        if pending.timer is not None:
            pending.timer.cancel()
        if not pending.future.done():
            pending.future.cancel()
        self._m_depth.set(len(self.queue))

    def _expire(self, pending: Pending) -> None:
        pending.timer = None
        if pending.future.done():
            return
        where = "in the queue" if pending.state == QUEUED else "while computing"
        self.queue.discard(pending)
        self._answer_error(pending, DeadlineExceeded(f"deadline exceeded {where} for model {self.model}"))

    @staticmethod
    def _answer_error(pending: Pending, error: BatchgateError) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        if not pending.future.done():
            pending.future.set_exception(error)

    # -- closing rule --------------------------------------------------------------------
    def _note_join(self, now: float) -> None:
        if self._last_join is not None:
            gap = now - self._last_join
            self._join_gap = gap if self._join_gap is None else 0.7 * self._join_gap + 0.3 * gap
        self._last_join = now

    def join_rate(self, now: float) -> float:
        """Requests per second recently joining a non-empty queue (0 until two have).

        Only arrivals that find others waiting count: a lone closed-loop client never
        joins anyone, so it is never made to wait for companions that cannot come.
        """
        if self._last_join is None or self._join_gap is None:
            return 0.0
        return 1.0 / max(self._join_gap, now - self._last_join, 1e-6)

    def close_in(self, head: Pending, now: float) -> float:
        """Seconds to keep the batch open while holding an idle replica; <= 0 closes now."""
        rows = self.queue.rows
        if rows >= self.preferred_max or rows in self.preferred:
            return 0.0
        remaining = self.max_delay_s - (now - head.enqueued)
        if remaining <= 0:
            return 0.0
        slack = head.deadline - now - self.latency.predict(self.max_rows)
        if slack <= 0:
            return 0.0
        if self.join_rate(now) * remaining < 1.0:
            return 0.0
        return min(remaining, slack)

    # -- dispatch ------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        while True:
            if not len(self.queue):
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            replica = self.pool.try_acquire() or await self.pool.acquire()
            head: Pending | None = None
            while True:
                now = self.clock.now()
                head = self.queue.head(now)
                if head is None:
                    break
                wait = self.close_in(head, now)
                if wait <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except TimeoutError:
                    pass
            if head is None:
                self.pool.release(replica)
                continue
            batch = self.queue.take(head, self.max_rows, now)
            self._m_depth.set(len(self.queue))
            self._inflight_batches += 1
            self._idle.clear()
            spawn(self._execute(replica, batch, now), name=f"batch-{self.model}")

    def _concat(self, batch: list[Pending]) -> dict[str, Array]:
        if len(batch) == 1:
            return batch[0].feeds
        return {name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds}

    async def _execute(self, replica: Replica, batch: list[Pending], closed_at: float) -> None:
        try:
            rows = sum(p.rows for p in batch)
            for pending in batch:
                self._m_queue.observe(closed_at - pending.enqueued)
            self._m_batch.observe(rows)
            feeds = self._concat(batch)
            outputs = await self._infer_with_retry(replica, feeds, batch)
            if outputs is None:
                return
            self._split(outputs, batch, rows)
        finally:
            self._inflight_batches -= 1
            if not self._inflight_batches:
                self._idle.set()

    async def _infer_with_retry(
        self, replica: Replica | None, feeds: dict[str, Array], batch: list[Pending]
    ) -> Outputs | None:
        rows = sum(p.rows for p in batch)
        for attempt in (1, 2):
            if replica is None:
                replica = self.pool.try_acquire()
                if replica is None:
                    break
            timeout = max(max(p.deadline for p in batch) - self.clock.now(), 0.001)
            started = self.clock.now()
            try:
                outputs = await self.pool.infer(replica, self.model, self.version, feeds, timeout)
            except BatchgateError as exc:
                error: BatchgateError = exc
            except Exception as exc:  # never let one batch's surprise kill the dispatcher
                log.exception("batch for %s failed", self.model)
                error = WorkerError(f"batch failed: {exc!r}")
            else:
                elapsed = self.clock.now() - started
                self.latency.observe(rows, elapsed)
                self._m_compute.observe(elapsed)
                return outputs
            finally:
                self.pool.release(replica)
            replica = None
            if not (isinstance(error, Unavailable) and attempt == 1):
                break
            self.metrics.retries.labels(self.pool.name).inc()
            log.warning("batch for %s failed on a replica (%s); retrying once", self.model, error)
        for pending in batch:
            self._answer_error(pending, error)
        return None

    def _split(self, outputs: Outputs, batch: list[Pending], rows: int) -> None:
        start = 0
        for pending in batch:
            end = start + pending.rows
            if not pending.future.done():
                part: dict[str, Any] = {}
                for name, array in outputs.items():
                    batched = self.config.max_batch_size > 0 and array.ndim and array.shape[0] == rows
                    part[name] = array[start:end] if batched else array
                if pending.timer is not None:
                    pending.timer.cancel()
                    pending.timer = None
                pending.future.set_result(part)
            start = end

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._task = spawn(self._dispatch(), name=f"dispatch-{self.model}-{self.version}")

    async def drain(self, timeout_s: float) -> None:
        """Wait for queued and in-flight work to finish (bounded by ``timeout_s``)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while (len(self.queue) or self._inflight_batches) and loop.time() < end:
            self._wakeup.set()
            try:
                await asyncio.wait_for(self._idle.wait(), max(end - loop.time(), 0))
            except TimeoutError:
                break
            if len(self.queue):
                await asyncio.sleep(0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while len(self.queue):
            head = self.queue.head(self.clock.now())
            if head is None:
                break
            for pending in self.queue.take(head, 1 << 30, self.clock.now()):
                self._answer_error(pending, Unavailable("gateway is shutting down"))
