"""Model router: resolve the model version, validate, set the deadline, hand to its batcher."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.batcher import ModelBatcher
from gateway.clock import Clock
from gateway.config import ModelConfig
from gateway.errors import BatchgateError, NotFound, Unavailable
from gateway.metrics import Metrics
from gateway.pool import PoolClient
from gateway.request_queue import Pending
from gateway.types import InferRequest, InferResponse, OutputTensor, Signature
from gateway.validation import check_request

log = logging.getLogger("batchgate.router")


@dataclass
class ServedModel:
    """One model version being served: its config, pool, batcher and (once known) signature."""

    name: str
    version: str
    config: ModelConfig
    pool: PoolClient
    batcher: ModelBatcher
    path: Path
    signature: Signature | None = None
    datatypes: dict[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.signature is not None and self.pool.ready_count() > 0


@dataclass(slots=True)
class Ticket:
    """An admitted request: await :meth:`Router.result`, or :meth:`Router.abandon` it."""

    request: InferRequest
    served: ServedModel
    pending: Pending
    output_names: tuple[str, ...]
    admitted_ns: int


class Router:
    """Finds the served model for a request and runs it through that model's batcher."""

    def __init__(self, clock: Clock, metrics: Metrics, models: Iterable[ServedModel] = ()) -> None:
        self.clock = clock
        self.metrics = metrics
        self.models: dict[str, dict[str, ServedModel]] = {}
        for served in models:
            self.add(served)
        self.accepting = True

    def add(self, served: ServedModel) -> None:
        """Route new requests to ``served`` (replacing an entry for the same version)."""
        self.models.setdefault(served.name, {})[served.version] = served

    def remove(self, name: str, version: str) -> ServedModel | None:
        """Stop routing new requests to a version; requests already queued still finish."""
        versions = self.models.get(name, {})
        served = versions.pop(version, None)
        if not versions:
            self.models.pop(name, None)
        return served

    def resolve(self, name: str, version: str = "") -> ServedModel:
        versions = self.models.get(name)
        if not versions:
            raise NotFound(f"unknown model '{name}'")
        if not version:
            return versions[max(versions, key=int)]
        served = versions.get(version)
        if served is None:
            raise NotFound(f"unknown version '{version}' of model '{name}'; serving {sorted(versions, key=int)}")
        return served

    def all_served(self) -> list[ServedModel]:
        return [served for versions in self.models.values() for served in versions.values()]

    def ready(self) -> bool:
        return self.accepting and all(served.ready for served in self.all_served())

    def admit(self, request: InferRequest, timeout_ms: float | None = None) -> Ticket:
        """Validate and queue; raises a :class:`BatchgateError` for anything that cannot be served."""
        if not self.accepting:
            raise Unavailable("gateway is shutting down")
        served = self.resolve(request.model, request.version)
        if served.signature is None or not served.pool.ready_count():
            raise Unavailable(f"model '{served.name}' version {served.version} is not ready")
        admitted_ns = time.perf_counter_ns()
        try:
            checked = check_request(request, served.signature, served.config.batching.max_batch_size)
        except BatchgateError:
            served.batcher.stats.request_done(False, time.perf_counter_ns() - admitted_ns)
            raise
        now = self.clock.now()
        if request.timeout_us is not None:
            budget = request.timeout_us / 1e6
        elif timeout_ms is not None:
            budget = timeout_ms / 1000
        else:
            budget = served.config.timeout_ms / 1000
        try:
            pending = served.batcher.submit(checked, now + budget, request.priority)
        except BatchgateError:
            served.batcher.stats.request_done(False, time.perf_counter_ns() - admitted_ns)
            raise
        return Ticket(request, served, pending, checked.output_names, admitted_ns)

    async def result(self, ticket: Ticket) -> InferResponse:
        """Wait for the ticket's outputs and shape the response."""
        served = ticket.served
        try:
            outputs = await ticket.pending.future
        except BatchgateError:
            served.batcher.stats.request_done(False, time.perf_counter_ns() - ticket.admitted_ns)
            raise
        served.batcher.stats.request_done(True, time.perf_counter_ns() - ticket.admitted_ns)
        datatypes = served.datatypes
        tensors = [OutputTensor(name, datatypes[name], outputs[name]) for name in ticket.output_names]
        return InferResponse(
            model=served.name,
            version=served.version,
            outputs=tensors,
            id=ticket.request.id,
            parameters={"served_by": f"{served.name}:{served.version}"},
        )

    def abandon(self, ticket: Ticket) -> None:
        """The client went away: free its place in the queue."""
        ticket.served.batcher.cancel(ticket.pending)

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
        self.accepting = False
        await asyncio.gather(*(s.batcher.drain(timeout_s) for s in self.all_served()))
