"""While a version is being loaded onto the workers, a worker that (re)starts is told to load it too."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.clock import MonotonicClock
from gateway.config import ServerConfig
from gateway.demo import mlp_model
from gateway.errors import Unavailable
from gateway.lifecycle import ModelManager
from gateway.metrics import Metrics
from gateway.repository import ModelVersion, RepositoryModel
from gateway.router import Router
from gateway.types import Signature
from tests.helpers import write_model


def _manager(root: Path) -> ModelManager:
    clock = MonotonicClock()
    metrics = Metrics()
    return ModelManager(ServerConfig(model_repository=root), {}, Router(clock, metrics), metrics, clock)


def test_a_version_being_loaded_is_among_what_a_new_worker_must_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    path = write_model(root, "m", mlp_model((8, 16, 4), seed=1), {})
    manager = _manager(root)
    seen: list[list[ModelVersion]] = []

    async def load_on_workers(model: RepositoryModel, version: ModelVersion) -> None:
        seen.append(manager.pool_models("default"))

    async def signature(model: str, version: str) -> Signature:
        return Signature((), ())

    monkeypatch.setattr(manager, "_load_on_workers", load_on_workers)
    monkeypatch.setattr(manager.pool_for("default"), "signature", signature)
    asyncio.run(manager.load("m"))
    assert seen == [[ModelVersion("m", "1", path)]]  # while loading: staged, not yet routed
    assert manager.pool_models("default") == [ModelVersion("m", "1", path)]  # now routed, listed once
    assert manager._staging == []


def test_a_version_that_fails_to_load_is_no_longer_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "models"
    write_model(root, "m", mlp_model((8, 16, 4), seed=1), {})
    manager = _manager(root)

    async def load_on_workers(model: RepositoryModel, version: ModelVersion) -> None:
        raise Unavailable("no worker")

    async def retire(served: object) -> None:
        return None

    monkeypatch.setattr(manager, "_load_on_workers", load_on_workers)
    monkeypatch.setattr(manager, "_retire", retire)
    with pytest.raises(Unavailable):
        asyncio.run(manager.load("m"))
    assert manager.pool_models("default") == []
