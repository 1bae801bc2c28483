"""The control loop: every ``interval_s``, per pool, read signals, decide, log, act."""

from __future__ import annotations

import asyncio
import logging

from gateway.autoscaler.policy import State, decide
from gateway.autoscaler.scalers import Scaler
from gateway.autoscaler.signals import SignalSource
from gateway.clock import Clock
from gateway.config import AutoscalerConfig, ScalingPolicy
from gateway.metrics import Metrics

log = logging.getLogger("batchgate.autoscaler")


class Controller:
    """Sizes each pool from its signals through one scaler backend."""

    def __init__(
        self,
        config: AutoscalerConfig,
        pools: dict[str, float],
        source: SignalSource,
        scaler: Scaler,
        metrics: Metrics,
        clock: Clock,
        defaults: dict[str, ScalingPolicy] | None = None,
    ) -> None:
        """``pools`` maps each pool to its SLO p99 in seconds (the strictest of its models);
        ``defaults`` gives the policy of a pool that ``config.policies`` does not name."""
        self.config = config
        self.pools = pools
        self.source = source
        self.scaler = scaler
        self.metrics = metrics
        self.clock = clock
        self.defaults = defaults or {}
        self.states: dict[str, State] = {pool: State() for pool in pools}
        self.decisions: list[dict[str, object]] = []  # the recent ones, for tests and debugging

    def policy(self, pool: str) -> ScalingPolicy:
        return self.config.policies.get(pool) or self.defaults.get(pool) or ScalingPolicy()

    async def step(self, pool: str) -> int:
        """One decision for one pool; returns the replica count asked for."""
        policy = self.policy(pool)
        slo_s = policy.slo_p99_ms / 1000 if policy.slo_p99_ms else self.pools[pool]
        signals = await self.source.read(pool, policy)
        current = await self.scaler.current(pool)
        decision = decide(signals, self.states[pool], policy, current, self.clock.now(), slo_s)
        self.states[pool] = decision.state
        record: dict[str, object] = {
            "pool": pool,
            "current": current,
            "desired": decision.desired,
            "reason": decision.reason,
            "concurrency": round(signals.concurrency_stable, 2),
            "p99_ms": None if signals.p99_s is None else round(signals.p99_s * 1000, 2),
            "queue_depth": signals.queue_depth,
            "throughput": round(signals.throughput, 1),
            "clients": signals.clients,
        }
        self.decisions = [*self.decisions[-499:], record]
        self.metrics.desired_replicas.labels(pool).set(decision.desired)
        if decision.desired != current:
            log.info("autoscaler: %s", record)
            await self.scaler.set(pool, decision.desired)
        else:
            log.debug("autoscaler: %s", record)
        self.metrics.replicas.labels(pool).set(await self.scaler.current(pool))
        return decision.desired

    async def run(self) -> None:
        while True:
            for pool in self.pools:
                try:
                    await self.step(pool)
                except asyncio.CancelledError:
                    raise
                except Exception:  # one bad read must not stop scaling the other pools, or the next tick
                    log.exception("autoscaler step for pool %s failed", pool)
            await asyncio.sleep(self.config.interval_s)
