"""Dynamic batcher: one queue and one dispatcher task per model version (DESIGN §5).

The dispatcher first holds a replica slot, then decides when to close the batch:
at once when it is full or a preferred size, when the oldest request has waited
``max_queue_delay_us``, when the earliest deadline leaves no more slack (using the
online latency fit time ≈ a·rows + b), or when nothing better is coming: no request
is due to join before the delay runs out, waiting would not raise throughput, and no
batch of the model is in flight (see :meth:`ModelBatcher.close_in`), so a single
closed-loop client never pays the delay.
While every slot is busy requests simply accumulate, which is where large batches
come from under load.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gateway.clock import Clock, EarliestTimer
from gateway.deadlines import DeadlineWatch
from gateway.errors import BatchgateError, DeadlineExceeded, Overloaded, Unavailable, WorkerError
from gateway.latency_model import LatencyModel
from gateway.metrics import Metrics
from gateway.model_config import BatchingConfig
from gateway.pool import PoolClient
from gateway.replica import Outputs, Replica
from gateway.request_queue import QUEUED, Pending, QueueFull, RequestQueue
from gateway.stats import ModelStats
from gateway.types import Array
from gateway.validation import CheckedRequest

log = logging.getLogger("batchgate.batcher")


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
        shed_after_s: float | None = None,
    ) -> None:
        self.model = model
        self.shed_after_s = shed_after_s
        self.version = version
        self.config = config
        self.pool = pool
        self.clock = clock
        self.metrics = metrics
        self.max_rows = max(config.max_batch_size, 1)
        self.max_delay_s = config.max_queue_delay_us / 1e6
        self.adaptive = config.adaptive
        self.hold_for_inflight = config.hold_for_inflight
        self.preferred = frozenset(config.preferred_batch_sizes)
        self.preferred_max = max(config.preferred_batch_sizes, default=self.max_rows)
        self.queue = RequestQueue(config.priority_levels, config.max_queue_size, config.aging_ms / 1000)
        # Two fits of time against rows. ``latency`` is the whole round trip as the event loop
        # sees it: what a batch holds a slot for, so deadlines and the closing rule weigh it. ``service`` is
        # the worker's own time where it reports it: what the queue ahead of a request will cost,
        # so shedding weighs it. The round trip also holds the gateway's own lag, and shedding on
        # that fed itself: a burst of 256 users x 32 rows stretched a few round trips, the
        # refusals that followed kept the loop busy (a refusal costs about what an admission
        # does), and goodput stayed at 7.5k of 204k rows/s until the load stopped. Refusing
        # requests does not unload the gateway; its own overload meets the queue bound,
        # deadlines and connection limits instead.
        self.latency = LatencyModel()
        self.service = LatencyModel()
        self._pumping = False
        self._closer = EarliestTimer(clock, self._pump)  # re-runs the pump when a batch is due to close
        self._last_join: float | None = None
        self._join_gap: float | None = None
        self._inflight_batches = 0
        self._inflight_rows = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.deadlines = DeadlineWatch(clock, self._expire)
        # Called with each finished batch's outputs and rows, after its answers are out.
        self.watch_outputs: Callable[[Outputs, int], None] | None = None
        labels = (model, version)
        self.stats = ModelStats(model, version)
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
        if self.shed_after_s is not None and self.service.samples:
            limit = self.shed_after_s
            if self.predicted_latency_s(checked.rows) > limit:
                self.metrics.shed.labels(self.model, "predicted_latency").inc()
                raise Overloaded(
                    f"model {self.model} is saturated: an answer would take longer than {limit * 1000:.0f} ms",
                    retry_after_s=self.retry_after_s(),
                )
        was_waiting = len(self.queue) > 0
        try:
            evicted = self.queue.push(pending)
        except QueueFull:
            self.metrics.shed.labels(self.model, "queue_full").inc()
            raise self.queue_full_error() from None
        if evicted is not None:
            self._answer_error(evicted, self.queue_full_error())
        if was_waiting:
            self._note_join(now)
        self._pump()
        self.deadlines.watch(pending)  # after the pump: a lone request is on its way to a worker first
        return pending

    def predicted_latency_s(self, rows: int) -> float:
        """Expected time until a request of ``rows`` joining now is answered (0 before any batch).

        In worker time: the batches in flight (counted whole: pessimistic) and the full batches
        queued ahead, shared among the batches the pool computes at once, then its own batch.
        """
        if not self.service.samples:
            return 0.0
        fit = self.service
        own = fit.predict(min(self.queue.rows + rows, self.max_rows))
        waits = self._inflight_batches * fit.fixed_s + self._inflight_rows * fit.per_row_s
        full_batches = self.queue.rows // self.max_rows
        if full_batches:
            waits += full_batches * fit.predict(self.max_rows)
        if not waits:  # nothing ahead (a lone request): no need to count the usable replicas
            return own
        return waits / max(self.pool.usable_runs(), 1) + own

    def queue_full_error(self) -> BatchgateError:
        return Overloaded(f"model {self.model} queue is full", retry_after_s=self.retry_after_s())

    def retry_after_s(self) -> float:
        """A hint for clients told 429: about the time to work off the current queue."""
        rows = self.queue.rows
        per_batch = self.service.predict(self.max_rows) or 0.01
        ready = max(self.pool.ready_count(), 1)
        return max(1.0, math.ceil(rows / self.max_rows * per_batch / ready))

    def cancel(self, pending: Pending) -> None:
        """The client left: drop its request if it has not been batched yet."""
        self.queue.discard(pending)
        if not pending.future.done():
            pending.future.cancel()
        self._m_depth.set(len(self.queue))
        self._check_idle()

    def _expire(self, pending: Pending) -> None:
        if pending.future.done():
            return
        where = "in the queue" if pending.state == QUEUED else "while computing"
        self.queue.discard(pending)
        self._answer_error(pending, DeadlineExceeded(f"deadline exceeded {where} for model {self.model}"))
        self._check_idle()

    @staticmethod
    def _answer_error(pending: Pending, error: BatchgateError) -> None:
        if not pending.future.done():
            pending.future.set_exception(error)
            if pending.on_done is not None:
                # Errors come from many places (inside submit, a timer, shutdown): their hook
                # runs a loop turn later, on a clean stack, as a done callback would.
                pending.future.get_loop().call_soon(pending.run_hook)

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
        """Seconds to keep the batch open while holding an idle replica; <= 0 closes now.

        Reasons to wait, each bounded by the queue delay and the earliest deadline (``λ`` is
        the rate at which requests have lately joined a waiting batch):

        - Another request is due before the delay runs out (``λ·remaining >= 1``). Under
          sustained load the batch then grows as a fixed delay's would. Closing at once
          instead, whenever the test below allowed it, sent batches of 9.3 rows against the
          fixed delay's 12.4 on 2 Xeon CPUs at 70% of capacity (Poisson arrivals), at up to a
          third more CPU for the same rate, and its p99/p50 was the worse in 8 of 9 pairs
          (HISTORY, the twenty-seventh session). At low load few requests join anyone, so
          ``λ`` stays small and batches still close at once.
        - Waiting pays for a slot's throughput: waiting ``w`` for ``λ·w`` more rows raises
          it only when the rows arriving during one fixed per-batch cost ``b`` outnumber
          those queued (compare n/(a·n+b) with (n+λw)/(a·(n+λw)+b+w)): ``λ·b > n``. ``b``
          is the fixed part of the whole round trip, not only the worker's compute, because
          the slot is held (and the gateway works) for all of it.
        - Another batch of this model is in flight (``hold_for_inflight``, on by default):
          the new one waits for it to come back (the pump runs again then) rather than take
          a second slot beside it. Side by side, two batches share the cores with each other
          and with the gateway's event loop, which every request passes through; the
          slot-throughput test above does not see that. What the hold gained and cost on 2
          and 16 cores and on a GPU: README, "Batching", and ``benchmarks/results/hold*.md``.

        A lone client (λ = 0, nothing in flight) therefore never waits; against a fixed
        2 ms delay, 1 user p50 0.89 vs 3.24 ms.
        """
        rows = self.queue.rows
        if rows >= self.preferred_max or rows in self.preferred:
            return 0.0
        remaining = self.max_delay_s - (now - head.enqueued)
        if remaining <= 0:
            return 0.0
        if not self.adaptive:
            return remaining
        slack = head.deadline - now - self.latency.predict(self.max_rows)
        if slack <= 0:
            return 0.0
        rate = self.join_rate(now)
        more_coming = rate * remaining >= 1.0 or rate * self.latency.fixed_s > rows
        held = self.hold_for_inflight and self._inflight_batches > 0
        return min(remaining, slack) if more_coming or held else 0.0

    # -- dispatch ------------------------------------------------------------------------
    def _pump(self) -> None:
        """Close and send every batch that should go now; re-armed by arrivals, timers and free slots.

        Runs synchronously inside submit, the close timer and the worker's reply, so a
        freed worker gets its next batch before the event loop turns to anything else.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            while len(self.queue):
                now = self.clock.now()
                head = self.queue.head(now)
                if head is None:
                    break
                if not self.pool.has_idle_slot():
                    self.pool.notify_when_free(self._pump)
                    break
                wait = self.close_in(head, now)
                if wait > 0:
                    self._closer.arm(now + wait)
                    break
                replica = self.pool.try_acquire()
                if replica is None:
                    self.pool.notify_when_free(self._pump)
                    break
                batch = self.queue.take(head, self.max_rows, now)
                if any(p.deadline <= now for p in batch):
                    for late in [p for p in batch if p.deadline <= now]:
                        self._expire(late)
                    batch = [p for p in batch if p.deadline > now]
                    if not batch:
                        self.pool.release(replica)
                        continue
                rows = sum(p.rows for p in batch)
                self._inflight_batches += 1
                self._inflight_rows += rows
                self._idle.clear()
                self._launch(replica, batch, rows)
                # Counted once the batch is on its way: the worker computes meanwhile.
                for pending in batch:
                    self._m_queue.observe(now - pending.enqueued)
                    self.stats.queued(int((now - pending.enqueued) * 1e9))
                self._m_batch.observe(rows)
            self._m_depth.set(len(self.queue))
        finally:
            self._pumping = False

    def _concat(self, batch: list[Pending]) -> dict[str, Array]:
        if len(batch) == 1:
            return batch[0].feeds
        return {name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds}

    def _launch(self, replica: Replica, batch: list[Pending], rows: int) -> None:
        timeout = max(max(p.deadline for p in batch) - self.clock.now(), 0.001)
        prepared_at = time.perf_counter_ns()
        sent_at = [prepared_at]  # set once the request is on its way (done may run inside send)
        feeds = self._concat(batch)

        def done(outputs: Outputs | None, busy: float | None, error: BatchgateError | None) -> None:
            self.pool.release(replica)
            answered_at = time.perf_counter_ns()
            if outputs is None and error is not None and error.retryable and self._requeue(replica, batch, error):
                self._finish_batch(rows)
                return
            self._finish_batch(rows)
            if outputs is not None:
                self._split(outputs, batch, rows)
                # The answers are out; the fits and metrics wait for them, not they for these.
                elapsed = (answered_at - sent_at[0]) / 1e9
                self.latency.observe(rows, elapsed)
                self.service.observe(rows, elapsed if busy is None else busy)
                self._m_compute.observe(elapsed if busy is None else busy)  # the worker's own time when it says
                self.stats.batch_done(
                    rows,
                    len(batch),
                    sent_at[0] - prepared_at,
                    answered_at - sent_at[0],
                    time.perf_counter_ns() - answered_at,
                )
                if self.watch_outputs is not None:
                    self.watch_outputs(outputs, rows)
            else:
                failure = error or WorkerError("batch failed")
                for pending in batch:
                    self._answer_error(pending, failure)

        try:
            self.pool.send(replica, self.model, self.version, feeds, timeout, done)
            sent_at[0] = time.perf_counter_ns()
        except Exception as exc:  # a surprise while encoding must fail this batch, not the gateway
            log.exception("batch for %s could not be sent", self.model)
            done(None, None, WorkerError(f"batch could not be sent: {exc!r}"))

    def _requeue(self, failed: Replica, batch: list[Pending], error: BatchgateError) -> bool:
        """Put a batch lost with its replica back at the front of the queue, once per request,
        while the deadline and the pool's retry budget allow. True if anything was requeued."""
        now = self.clock.now()
        again = [p for p in batch if not p.future.done() and p.attempts == 0 and p.deadline > now]
        if not again or not self.pool.retry_budget.withdraw():
            return False
        for pending in again:
            pending.attempts += 1
        self.queue.requeue(again)
        self.metrics.retries.labels(self.pool.name).inc()
        log.warning("batch of %d for %s lost on %s (%s); retrying", len(again), self.model, failed.address, error)
        for pending in batch:
            if pending not in again:
                self._answer_error(pending, error)
        return True

    def _finish_batch(self, rows: int) -> None:
        self._inflight_batches -= 1
        self._inflight_rows -= rows
        # The freed worker gets the next batch before this one's answers are split out.
        self._pump()
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._inflight_batches and not len(self.queue):
            self._idle.set()

    def _split(self, outputs: Outputs, batch: list[Pending], rows: int) -> None:
        start = 0
        for pending in batch:
            end = start + pending.rows
            if not pending.future.done():
                part: dict[str, Any] = {}
                for name, array in outputs.items():
                    batched = self.config.max_batch_size > 0 and array.ndim and array.shape[0] == rows
                    part[name] = array[start:end] if batched else array
                pending.future.set_result(part)
                # At once, not a loop turn later: under load a turn also reads every request
                # that has arrived meanwhile, and each hop on the way to the client's socket
                # waited behind them (Poisson arrivals at 70% of capacity on 2 cores: 3.7 ms
                # median, 28 ms p99 from the worker's answer to the response's write).
                pending.run_hook()
            start = end

    # -- lifecycle -----------------------------------------------------------------------
    async def drain(self, timeout_s: float) -> None:
        """Wait until queued and in-flight work has finished (bounded by ``timeout_s``)."""
        if not len(self.queue) and not self._inflight_batches:
            return
        self._idle.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("model %s: drain timed out with %d queued", self.model, len(self.queue))

    async def stop(self) -> None:
        self._closer.cancel()
        now = self.clock.now()
        while True:
            head = self.queue.head(now)
            if head is None:
                break
            for pending in self.queue.take(head, 1 << 30, now):
                self._answer_error(pending, Unavailable("gateway is shutting down"))
