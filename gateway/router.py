"""Model router: resolve the model version, set the deadline, and run the request through
its batcher — or through its fallback when the primary errs, is slow, overloaded or has
no usable replica (DESIGN §6).

Routing is callback-driven: a :class:`Ticket`'s future resolves to the first good answer
of its attempts (primary, then fallbacks), with no task per request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.clock import Clock
from gateway.errors import BatchgateError, DeadlineExceeded, NotFound, Overloaded, Unavailable
from gateway.metrics import Metrics
from gateway.model_table import ModelTable, ServedModel
from gateway.request_queue import Pending
from gateway.types import Array, InferRequest, InferResponse, OutputTensor
from gateway.validation import check_request

log = logging.getLogger("batchgate.router")

FALLBACK_HEADER = "x-batchgate-fallback"


class CircuitOpen(Unavailable):
    """Every replica of the model's pool is ejected or not ready."""


@dataclass(slots=True)
class Attempt:
    """The request queued on one model version; ``reason`` is set for a fallback."""

    served: ServedModel
    pending: Pending
    output_names: tuple[str, ...]
    reason: str | None


@dataclass(slots=True)
class Ticket:
    """An admitted request. Await ``future`` (it resolves to the winning attempt), then
    :meth:`Router.response`; or :meth:`Router.abandon` it when the client leaves."""

    request: InferRequest
    primary: ServedModel
    deadline: float
    admitted_ns: int
    future: asyncio.Future[tuple[Attempt, dict[str, Array]]]
    attempts: list[Attempt] = field(default_factory=list)
    budget_timer: asyncio.TimerHandle | None = None
    fallback_started: bool = False
    listeners: list[Callable[[Ticket], None]] = field(default_factory=list)
    bookkeeping: list[Callable[[Ticket], None]] = field(default_factory=list)

    def when_done(self, listener: Callable[[Ticket], None], *, bookkeeping: bool = False) -> None:
        """Call ``listener(ticket)`` as soon as the future is settled (result, error or
        cancelled): in the same call that settles it, where a done callback would wait a
        loop turn. Already settled: on the next turn. ``bookkeeping`` listeners run after
        the others, so the gateway's own accounting never delays a client's answer."""
        if self.future.done():
            self.future.get_loop().call_soon(listener, self)
        elif bookkeeping:
            self.bookkeeping.append(listener)
        else:
            self.listeners.append(listener)

    def notify(self) -> None:
        """Run the listeners once (the future has just been settled), bookkeeping last."""
        listeners, self.listeners = self.listeners, []
        if self.bookkeeping:
            listeners += self.bookkeeping
            self.bookkeeping = []
        for listener in listeners:
            try:
                listener(self)
            except Exception:
                log.exception("a listener of an answered request failed")


def trigger_for(error: BatchgateError) -> str | None:
    """The fallback trigger an error from the primary stands for (None: not a trigger)."""
    if isinstance(error, CircuitOpen):
        return "circuit_open"
    if isinstance(error, Overloaded):
        return "overload"
    if isinstance(error, DeadlineExceeded):
        return None  # the request's own deadline passed: no time left for anything else
    if error.retryable or error.http_status >= 500:
        return "error"
    return None


class _NoGauge:
    def inc(self) -> None:
        pass

    def dec(self) -> None:
        pass


_NO_GAUGE = _NoGauge()


class Router(ModelTable):
    """Finds the served model for a request and runs it through batchers and fallbacks."""

    def __init__(self, clock: Clock, metrics: Metrics, models: Iterable[ServedModel] = ()) -> None:
        super().__init__()
        self.clock = clock
        self.metrics = metrics
        self._record_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._inflight_children: dict[str, Any] = {}
        for served in models:
            self.add(served)
        self.accepting = True

    # -- serving state ----------------------------------------------------------------------
    def ready(self) -> bool:
        return self.accepting and all(served.ready for served in self.all_served())

    def record(self, model: str, version: str, code: int, seconds: float) -> None:
        """Count one answered request in the metrics of a served model (unknown names stay
        unlabelled, so clients cannot grow the label sets)."""
        versions = self.models.get(model)
        if not versions or (version and version not in versions):
            return
        label = version or max(versions, key=int)
        key = (model, label, code)
        children = self._record_children.get(key)
        if children is None:  # a labels() lookup costs a tuple, a lock and a dict: once per key
            duration = self.metrics.request_duration.labels(model, label) if code == 200 else None
            children = self._record_children[key] = (self.metrics.requests.labels(model, label, str(code)), duration)
        children[0].inc()
        if children[1] is not None:
            children[1].observe(seconds)

    def inflight_gauge(self, model: str) -> Any:
        """The in-flight gauge of a served model; names nobody serves share an unlabelled no-op,
        so a client cannot grow the gauge's label set by asking for made-up models."""
        gauge = self._inflight_children.get(model)
        if gauge is None:
            if model not in self.models:
                return _NO_GAUGE
            gauge = self._inflight_children[model] = self.metrics.inflight.labels(model)
        return gauge

    def queue_depth(self, pool: str) -> int:
        """Requests queued for every model version the pool serves."""
        return sum(len(s.batcher.queue) for s in self.all_served() if s.pool.name == pool)

    # -- admission --------------------------------------------------------------------------
    def admit(self, request: InferRequest, timeout_ms: float | None = None) -> Ticket:
        """Queue the request (on its fallback if the primary cannot take it); raises when nothing can."""
        if not self.accepting:
            raise Unavailable("gateway is shutting down")
        primary = self.route(request.model, request.version)
        if request.timeout_us:  # 0 means "no deadline of my own", as in Triton
            budget = request.timeout_us / 1e6
        elif timeout_ms is not None:
            budget = timeout_ms / 1000
        else:
            budget = primary.config.timeout_ms / 1000
        ticket = Ticket(
            request,
            primary,
            self.clock.now() + budget,
            time.perf_counter_ns(),
            asyncio.get_running_loop().create_future(),
        )
        try:
            self._attempt(ticket, primary, None)
        except BatchgateError as exc:
            primary.batcher.stats.request_done(False, time.perf_counter_ns() - ticket.admitted_ns)
            if not self._fall_back(ticket, primary, exc):
                raise
        load = primary.pool.load
        load.admitted(request.client)
        # A listener, not a done callback: that would cost a loop turn per request.
        ticket.when_done(
            lambda done: load.finished((time.perf_counter_ns() - done.admitted_ns) / 1e9), bookkeeping=True
        )
        fallback = primary.config.fallback
        if fallback is not None and fallback.primary_budget_ms and "timeout" in fallback.on and ticket.attempts:
            ticket.budget_timer = asyncio.get_running_loop().call_later(
                fallback.primary_budget_ms / 1000, self._budget_spent, ticket
            )
        return ticket

    def _attempt(self, ticket: Ticket, served: ServedModel, reason: str | None) -> None:
        """Validate against ``served`` and queue there; raises when it cannot take the request."""
        if served.signature is None:
            raise CircuitOpen(f"model '{served.name}' version {served.version} is not ready")
        if not served.pool.has_usable_replica():
            raise CircuitOpen(f"model '{served.name}': no usable replica in pool {served.pool.name}")
        checked = check_request(ticket.request, served.signature, served.config.batching.max_batch_size)
        if reason is None and served.drift is not None:
            served.drift.offer(checked.feeds)
        fallback = served.config.fallback
        if reason is None and fallback is not None and "overload" in fallback.on:
            limit = (fallback.primary_budget_ms or served.config.slo.p99_ms) / 1000
            if served.batcher.predicted_latency_s(checked.rows) > limit:
                raise Overloaded(f"model '{served.name}' would answer later than its budget")
        pending = served.batcher.submit(checked, ticket.deadline, ticket.request.priority)
        attempt = Attempt(served, pending, checked.output_names, reason)
        ticket.attempts.append(attempt)
        pending.on_done = lambda done: self._attempt_done(ticket, attempt, done.future)

    def _fall_back(self, ticket: Ticket, failed: ServedModel, error: BatchgateError) -> bool:
        """Start the fallback of ``failed`` if ``error`` is one of its triggers; True if started."""
        fallback = failed.config.fallback
        trigger = trigger_for(error)
        if fallback is None or trigger is None or trigger not in fallback.on:
            return False
        first = next((a.reason for a in ticket.attempts if a.reason is not None), None)
        return self._start_fallback(ticket, failed, first or trigger)

    def _start_fallback(self, ticket: Ticket, failed: ServedModel, reason: str) -> bool:
        fallback = failed.config.fallback
        assert fallback is not None
        try:
            target = self.resolve(fallback.model)
        except NotFound:
            return False
        ticket.fallback_started = True
        self.metrics.fallbacks.labels(ticket.primary.name, reason).inc()
        try:
            self._attempt(ticket, target, reason)
        except BatchgateError as exc:
            return self._fall_back(ticket, target, exc)
        return True

    def _budget_spent(self, ticket: Ticket) -> None:
        """The primary is over its budget: race the fallback against it."""
        ticket.budget_timer = None
        if ticket.future.done() or ticket.fallback_started:
            return
        self._start_fallback(ticket, ticket.primary, "timeout")

    def _attempt_done(self, ticket: Ticket, attempt: Attempt, future: asyncio.Future[Any]) -> None:
        if ticket.future.done() or future.cancelled():
            return
        error = future.exception()
        if error is None:
            self._settle(ticket)
            answered_ns = time.perf_counter_ns()
            ticket.future.set_result((attempt, future.result()))
            ticket.notify()  # the client's answer goes out before the stats and the shadow below
            attempt.served.batcher.stats.request_done(True, answered_ns - ticket.admitted_ns)
            if attempt.reason is None and attempt.served.shadow is not None:
                self._mirror(ticket, attempt.served, future.result())
            return
        assert isinstance(error, BatchgateError)
        attempt.served.batcher.stats.request_done(False, time.perf_counter_ns() - ticket.admitted_ns)
        if any(not a.pending.future.done() for a in ticket.attempts):
            return  # another attempt is still running; it may yet answer
        if not ticket.fallback_started and self._fall_back(ticket, attempt.served, error):
            return
        if attempt.reason is not None and self._fall_back(ticket, attempt.served, error):
            return
        self._settle(ticket)
        ticket.future.set_exception(error)
        ticket.notify()

    def _mirror(self, ticket: Ticket, served: ServedModel, outputs: dict[str, Array]) -> None:
        """Send a sample of answered requests to the shadow model and compare the classes."""
        shadow = served.config.shadow
        tracker = served.shadow
        if shadow is None or tracker is None or random.random() >= shadow.ratio:
            return
        versions = self.models.get(shadow.model)
        if not versions:
            return
        target = versions[max(versions, key=int)]
        if target.signature is None:
            return
        try:
            checked = check_request(ticket.request, target.signature, target.config.batching.max_batch_size)
            pending = target.batcher.submit(checked, ticket.deadline, ticket.request.priority)
        except BatchgateError:
            return  # the shadow is best effort: a full queue or a mismatch just skips it

        def compare(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is None:
                tracker.compare(outputs, future.result())

        pending.future.add_done_callback(compare)

    def _settle(self, ticket: Ticket) -> None:
        """The ticket is answered: stop the budget timer and cancel the attempts that lost."""
        if ticket.budget_timer is not None:
            ticket.budget_timer.cancel()
            ticket.budget_timer = None
        for attempt in ticket.attempts:
            if not attempt.pending.future.done():
                attempt.served.batcher.cancel(attempt.pending)

    def abandon(self, ticket: Ticket) -> None:
        """The client went away: free every place the request holds."""
        self._settle(ticket)
        if not ticket.future.done():
            ticket.future.cancel()
        # Also when the future is already cancelled: a task cancelled while awaiting it
        # cancels it without telling the listeners.
        ticket.notify()

    def response(self, ticket: Ticket) -> InferResponse:
        """The answer of a ticket whose future has a result."""
        attempt, outputs = ticket.future.result()
        served = attempt.served
        tensors = [OutputTensor(name, served.datatypes[name], outputs[name]) for name in attempt.output_names]
        parameters: dict[str, Any] = {"served_by": served.label}
        if attempt.reason is not None:
            parameters["fallback_reason"] = attempt.reason
        return InferResponse(served.name, served.version, tensors, ticket.request.id, parameters)

    async def infer(self, request: InferRequest, timeout_ms: float | None = None) -> InferResponse:
        """Admit, wait, answer; leaving (cancellation) abandons the request."""
        ticket = self.admit(request, timeout_ms)
        try:
            await ticket.future
        except asyncio.CancelledError:
            self.abandon(ticket)
            raise
        return self.response(ticket)

    # -- lifecycle ------------------------------------------------------------------------------
    async def load_signatures(self) -> None:
        """Ask ready replicas for the signature of every model that lacks one."""
        for served in self.all_served():
            if served.signature is not None or not served.pool.ready_count():
                continue
            try:
                signature = await served.pool.signature(served.name, served.version)
            except Exception as exc:  # keep trying on the next readiness change
                log.warning("cannot read the signature of %s:%s yet: %s", served.name, served.version, exc)
                continue
            served.signature = signature
            served.datatypes = {spec.name: spec.datatype for spec in signature.outputs}
            log.info("model %s:%s ready", served.name, served.version)

    async def drain(self, timeout_s: float) -> None:
        """Refuse new requests and wait for queued and in-flight ones (bounded)."""
        self.accepting = False
        await asyncio.gather(*(s.batcher.drain(timeout_s) for s in self.all_served()))
