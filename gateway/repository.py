"""Model repository layout: ``<root>/<name>/config.yaml`` and ``<root>/<name>/<version>/model.onnx``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ConfigError, PoolConfig
from gateway.model_config import ModelConfig, load_model_config

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class ModelVersion:
    """One version folder holding a model file."""

    name: str
    version: str
    path: Path


@dataclass(frozen=True)
class RepositoryModel:
    """A model folder: its config and the versions its policy serves (oldest first)."""

    name: str
    config: ModelConfig
    versions: tuple[ModelVersion, ...]


def _versions(folder: Path) -> list[ModelVersion]:
    found = [
        ModelVersion(folder.name, child.name, child / MODEL_FILE)
        for child in folder.iterdir()
        if child.is_dir() and child.name.isdigit() and (child / MODEL_FILE).is_file()
    ]
    return sorted(found, key=lambda v: int(v.version))


def scan_model(folder: Path) -> RepositoryModel:
    """One model folder with the versions its policy selects."""
    config = load_model_config(folder / "config.yaml")
    available = _versions(folder)
    policy = config.version_policy
    if policy.specific:
        wanted = {str(v) for v in policy.specific}
        chosen = [v for v in available if v.version in wanted]
        missing = wanted - {v.version for v in chosen}
        if missing:
            where = folder / "config.yaml"
            raise ConfigError(f"{where}: version_policy.specific: versions {sorted(missing)} have no {MODEL_FILE}")
    else:
        chosen = available[-policy.latest :]
    if not chosen:
        raise ConfigError(f"{folder}: no version folder with a {MODEL_FILE} (expected {folder}/1/{MODEL_FILE})")
    return RepositoryModel(folder.name, config, tuple(chosen))


def scan_repository(root: Path) -> dict[str, RepositoryModel]:
    """Every model folder under ``root`` with the versions its policy selects."""
    if not root.is_dir():
        raise ConfigError(f"model_repository: {root} is not a directory (build one with: batchgate models demo {root})")
    models: dict[str, RepositoryModel] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        models[folder.name] = scan_model(folder)
    if not models:
        raise ConfigError(f"model_repository: {root} holds no model folders")
    return models


def check_references(models: Mapping[str, RepositoryModel], pools: Mapping[str, PoolConfig]) -> None:
    """Pools and fallbacks named by models must exist; fallback chains must not loop."""
    for model in models.values():
        if model.config.pool not in pools:
            raise ConfigError(f"{model.name}/config.yaml: pool: {model.config.pool!r} is not one of {sorted(pools)}")
        shadow = model.config.shadow
        if shadow is not None and shadow.model not in models:
            raise ConfigError(f"{model.name}/config.yaml: shadow.model: no model named {shadow.model!r}")
        seen = [model.name]
        fallback = model.config.fallback
        while fallback is not None:
            if fallback.model not in models:
                raise ConfigError(f"{seen[-1]}/config.yaml: fallback.model: no model named {fallback.model!r}")
            if fallback.model in seen:
                chain = " -> ".join([*seen, fallback.model])
                raise ConfigError(f"{model.name}/config.yaml: fallback chain loops: {chain}")
            seen.append(fallback.model)
            fallback = models[fallback.model].config.fallback
