"""Per-replica circuit breaker and a pool-wide retry budget (DESIGN §6).

The breaker follows Envoy's outlier detection: ``consecutive_failures`` transport
failures in a row eject a replica for ``base_ejection_s`` times the number of times it has
been ejected (capped); after that one probe batch is let through (half-open); its
success closes the circuit, its failure ejects again for longer. The pool never ejects
more than ``max_ejected_ratio`` of its replicas. Model errors do not count: a model that
fails on every replica is the fallback's business, not the breaker's.
"""

from __future__ import annotations

from gateway.clock import Clock

CLOSED, HALF_OPEN, OPEN = 0, 1, 2


class CircuitBreaker:
    """The breaker of one replica."""

    def __init__(
        self,
        clock: Clock,
        consecutive_failures: int = 5,
        base_ejection_s: float = 30.0,
        max_ejection_s: float = 300.0,
    ) -> None:
        self.clock = clock
        self.threshold = consecutive_failures
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        self.failures = 0
        self.ejections = 0
        self.open_until = 0.0
        self._state = CLOSED
        self.probing = False

    @property
    def state(self) -> int:
        if self._state == OPEN and self.clock.now() >= self.open_until:
            self._state = HALF_OPEN
        return self._state

    def allows(self, outstanding: int) -> bool:
        """Whether a batch may go to this replica now (half-open lets one probe through)."""
        state = self.state
        if state == CLOSED:
            return True
        return state == HALF_OPEN and outstanding == 0

    def success(self) -> bool:
        """Count a batch that reached the worker and back; True when this closes the circuit."""
        self.failures = 0
        if self._state == CLOSED:
            return False
        self._state = CLOSED
        self.ejections = max(self.ejections - 1, 0)
        return True

    def failure(self, may_eject: bool) -> bool:
        """Count a transport failure; returns True when this ejects the replica."""
        self.failures += 1
        if self.state == HALF_OPEN or (self.failures >= self.threshold and may_eject):
            self.ejections += 1
            duration = min(self.base_ejection_s * self.ejections, self.max_ejection_s)
            self.open_until = self.clock.now() + duration
            self._state = OPEN
            self.failures = 0
            return True
        return False


class RetryBudget:
    """Retries may add at most ``ratio`` of the successful traffic, plus ``min_per_s`` a second."""

    def __init__(self, clock: Clock, ratio: float = 0.2, min_per_s: float = 10.0, cap: float = 100.0) -> None:
        self.clock = clock
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.cap = cap
        self.tokens = cap
        self._at = clock.now()

    def _refill(self) -> None:
        now = self.clock.now()
        self.tokens = min(self.cap, self.tokens + (now - self._at) * self.min_per_s)
        self._at = now

    def deposit(self) -> None:
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def withdraw(self) -> bool:
        self._refill()
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
