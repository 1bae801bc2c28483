"""Per-client admission: a token bucket for rate and a counter for concurrency.

Both fronts ask :meth:`ClientLimiter.acquire` before an inference request joins a batch
and call the returned release when it is answered. A client over its limit gets
:class:`~gateway.errors.RateLimited` (429 / RESOURCE_EXHAUSTED with Retry-After) at
the cost of a dict lookup, so a noisy client spends little of the loop that serves
the others. Idle clients are forgotten, so the table stays bounded by the active ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from gateway.clock import Clock
from gateway.config import ClientLimits
from gateway.errors import RateLimited

FORGET_AFTER_S = 60.0
SWEEP_EVERY = 1024


@dataclass(slots=True)
class _Client:
    tokens: float
    updated: float
    inflight: int = 0


class ClientLimiter:
    """Rate and concurrency limits keyed by client identity."""

    def __init__(self, config: ClientLimits, clock: Clock) -> None:
        self.rate = config.rate_per_s
        self.burst = float(config.burst or max(1, math.ceil(config.rate_per_s)))
        self.max_concurrency = config.max_concurrency
        self.clock = clock
        self.clients: dict[str, _Client] = {}
        self._calls = 0

    @property
    def enabled(self) -> bool:
        return self.rate > 0 or self.max_concurrency > 0

    def acquire(self, key: str) -> Callable[[], None]:
        """Admit one request of ``key`` or raise :class:`RateLimited`; call the result once when done."""
        now = self.clock.now()
        client = self.clients.get(key)
        if client is None:
            self._calls += 1
            if self._calls % SWEEP_EVERY == 0:
                self._forget_idle(now)
            client = self.clients[key] = _Client(self.burst, now)
        if self.max_concurrency and client.inflight >= self.max_concurrency:
            raise RateLimited(
                f"client has {client.inflight} requests in flight; the limit is {self.max_concurrency}",
                retry_after_s=1.0,
            )
        if self.rate > 0:
            client.tokens = min(self.burst, client.tokens + (now - client.updated) * self.rate)
            client.updated = now
            if client.tokens < 1.0:
                wait = (1.0 - client.tokens) / self.rate
                raise RateLimited(f"client is over its rate of {self.rate:g} requests/s", retry_after_s=wait)
            client.tokens -= 1.0
        client.inflight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                client.inflight -= 1

        return release

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, c in self.clients.items() if c.inflight == 0 and now - c.updated > FORGET_AFTER_S]:
            del self.clients[key]


def client_key(mode: str, principal: str | None, client_id: str | None, peer: str | None) -> str:
    """Who is asking, for the per-client limits: see :class:`~gateway.config.ClientLimits`.key."""
    if mode == "client_id" and client_id:
        return f"id:{client_id}"
    if principal is not None:
        return f"token:{principal}"
    return f"peer:{peer or 'unknown'}"
