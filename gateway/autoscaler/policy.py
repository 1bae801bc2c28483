"""The scaling policy as a pure function: ``decide(signals, state, policy, now) -> Decision``.

Replicas follow the observed concurrency at ``target_concurrency`` per replica, averaged
over the stable window; the panic window reacts to bursts (when it asks for
``panic_threshold`` times the current replicas, scale up to it at once and hold for a
stable window, unbounded by ``max_step_up``); a p99 over the SLO adds replicas even when
concurrency looks fine; scaling
down waits until fewer replicas were wanted for ``scale_down_delay_s`` and the p99 is
under the SLO, and removes at most ``max_step_down`` at a time. Up and down are
deliberately asymmetric: fast up, slow down (Ray Serve #18925 is what symmetric delays do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from gateway.config import ScalingPolicy


@dataclass(frozen=True)
class Signals:
    """What the controller knows about one pool, already averaged over its windows."""

    concurrency_stable: float  # time-averaged in-flight requests over the stable window
    concurrency_panic: float  # the same over the panic window
    p99_s: float | None  # request latency p99 over the panic window (None: no traffic)
    queue_depth: float = 0.0
    throughput: float = 0.0  # answered requests per second
    clients: int = 0  # distinct active clients
    ready_replicas: int | None = None  # replicas serving now (None: unknown)


@dataclass(frozen=True)
class State:
    """What the policy remembers between decisions."""

    panic_until: float = 0.0
    below_since: float | None = None


@dataclass(frozen=True)
class Decision:
    desired: int
    state: State
    reason: str


def decide(signals: Signals, state: State, policy: ScalingPolicy, current: int, now: float, slo_s: float) -> Decision:
    """The replica count to run next, with why."""
    target = policy.target_concurrency
    want_stable = math.ceil(signals.concurrency_stable / target - 1e-9)
    want_panic = math.ceil(signals.concurrency_panic / target - 1e-9)
    reasons = [
        f"concurrency {signals.concurrency_stable:.1f} (panic window {signals.concurrency_panic:.1f})"
        f" at {target:g}/replica wants {want_stable}"
    ]
    desired = want_stable
    panicking = now < state.panic_until
    if (current > 0 and want_panic >= policy.panic_threshold * current) or (current == 0 and want_panic > 0):
        state = replace(state, panic_until=now + policy.stable_window_s)
        panicking = True
        reasons.append(f"panic: burst wants {want_panic}")
    if panicking:
        desired = max(desired, want_panic, current)
    over_slo = signals.p99_s is not None and signals.p99_s > slo_s
    # While asked-for replicas are still starting, a high p99 is the wait for them, not a reason for more.
    starting = signals.ready_replicas is not None and signals.ready_replicas < current
    if over_slo and not starting:
        assert signals.p99_s is not None
        boost = max(current + 1, math.ceil(current * min(signals.p99_s / slo_s, 2.0)))
        desired = max(desired, boost)
        reasons.append(f"p99 {signals.p99_s * 1000:.1f} ms over SLO {slo_s * 1000:g} ms")
    desired = min(max(desired, policy.min_replicas), policy.max_replicas)
    if desired > current:
        if not panicking:  # a burst goes straight to what the panic window asks for
            desired = min(desired, current + policy.max_step_up)
        return Decision(desired, replace(state, below_since=None), "; ".join(reasons) + f" -> up to {desired}")
    if desired < current and not over_slo and not panicking:
        below_since = state.below_since if state.below_since is not None else now
        state = replace(state, below_since=below_since)
        if now - below_since >= policy.scale_down_delay_s:
            desired = max(desired, current - policy.max_step_down)
            state = replace(state, below_since=now)  # the next step waits a full delay again
            return Decision(desired, state, "; ".join(reasons) + f" -> down to {desired}")
        waited = now - below_since
        return Decision(
            current, state, "; ".join(reasons) + f" -> hold ({waited:.0f}s of {policy.scale_down_delay_s:g}s)"
        )
    return Decision(current, replace(state, below_since=None), "; ".join(reasons) + " -> hold")
