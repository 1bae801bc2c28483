"""Scaler backends: what a decision changes. ``local`` worker processes, a Kubernetes
Deployment's scale subresource, or nothing (``dry-run``)."""

from __future__ import annotations

import logging
from typing import Protocol

from gateway.autoscaler.kube import DeploymentScale
from gateway.supervisor import LocalSupervisor

log = logging.getLogger("batchgate.autoscaler")


class Scaler(Protocol):
    """Reads and sets the replica count of a pool."""

    async def current(self, pool: str) -> int: ...

    async def set(self, pool: str, replicas: int) -> None: ...


class LocalScaler:
    """Starts and retires the embedded pool's worker processes (retiring ones drain)."""

    def __init__(self, supervisors: dict[str, LocalSupervisor], drain_timeout_s: float) -> None:
        self.supervisors = supervisors
        self.drain_timeout_s = drain_timeout_s

    async def current(self, pool: str) -> int:
        return len(self.supervisors[pool].workers)

    async def set(self, pool: str, replicas: int) -> None:
        await self.supervisors[pool].scale_to(replicas, self.drain_timeout_s)


class DryRunScaler:
    """Decides and logs, changes nothing; remembers what it would have set."""

    def __init__(self, initial: dict[str, int]) -> None:
        self.replicas = dict(initial)

    async def current(self, pool: str) -> int:
        return self.replicas.get(pool, 0)

    async def set(self, pool: str, replicas: int) -> None:
        log.info("dry run: pool %s would scale to %d", pool, replicas)
        self.replicas[pool] = replicas


class KubernetesScaler:
    """Patches ``spec.replicas`` through each pool's Deployment scale subresource."""

    def __init__(self, targets: dict[str, DeploymentScale]) -> None:
        self.targets = targets

    async def current(self, pool: str) -> int:
        spec, _status, _version = await self.targets[pool].read()
        return spec

    async def set(self, pool: str, replicas: int) -> None:
        await self.targets[pool].set(replicas)
