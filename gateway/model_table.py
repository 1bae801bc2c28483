"""The served model versions and which one a request gets: named, default, canary or promoted.

:class:`gateway.router.Router` builds on this table; the lifecycle adds and removes entries
as versions load and drain.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from gateway.batcher import ModelBatcher
from gateway.errors import NotFound
from gateway.health import DriftMonitor, OutputMonitor, ShadowTracker
from gateway.model_config import ModelConfig
from gateway.pool import PoolClient
from gateway.types import Signature

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
    drift: DriftMonitor | None = None
    shadow: ShadowTracker | None = None
    outputs: OutputMonitor | None = None

    @property
    def ready(self) -> bool:
        return self.signature is not None and self.pool.ready_count() > 0

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"


class ModelTable:
    """Model name -> version -> :class:`ServedModel`, with canary shares and promotions."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, ServedModel]] = {}
        self.canaries: dict[str, tuple[str, float]] = {}  # model -> (version, share of unversioned requests)
        self.promoted: dict[str, str] = {}

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
            return versions[self.default_version(name, versions)]
        served = versions.get(version)
        if served is None:
            raise NotFound(f"unknown version '{version}' of model '{name}'; serving {sorted(versions, key=int)}")
        return served

    def default_version(self, name: str, versions: dict[str, ServedModel]) -> str:
        """What a request naming no version gets: a promoted version, else the newest that is
        not a canary."""
        pinned = self.promoted.get(name)
        if pinned in versions:
            return pinned
        canary = self.canaries.get(name)
        stable = [v for v in versions if canary is None or v != canary[0]] or list(versions)
        return max(stable, key=int)

    def route(self, name: str, version: str) -> ServedModel:
        """Like :meth:`resolve`, but a request naming no version may be sent to the canary."""
        canary = self.canaries.get(name)
        if (
            not version
            and canary is not None
            and canary[0] in self.models.get(name, {})
            and random.random() < canary[1]
        ):
            return self.models[name][canary[0]]
        return self.resolve(name, version)

    def set_canary(self, name: str, version: str | None, fraction: float = 0.0) -> None:
        if version is None:
            self.canaries.pop(name, None)
        else:
            self.canaries[name] = (version, fraction)

    def promote(self, name: str) -> str:
        """Make the canary the version every request naming no version gets."""
        canary = self.canaries.pop(name, None)
        if canary is None or canary[0] not in self.models.get(name, {}):
            raise NotFound(f"model '{name}' has no canary version being served")
        self.promoted[name] = canary[0]
        log.info("model %s: canary version %s promoted", name, canary[0])
        return canary[0]

    def all_served(self) -> list[ServedModel]:
        return [served for versions in self.models.values() for served in versions.values()]
