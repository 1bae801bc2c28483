"""Imports follow the data flow of DESIGN (front -> codec -> router -> batcher -> pool -> replica),
checked on the source rather than hoped for: a module never imports one upstream of it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Upstream first. A module may import any module later in this list, and shared ones not in it
# (errors, types, config, clock, metrics, ...), but nothing earlier.
FLOW = [
    ("gateway.rest", "gateway.grpc_api"),
    ("gateway.codec",),
    ("gateway.router",),
    ("gateway.batcher",),
    ("gateway.pool",),
    ("gateway.replica",),
    ("gateway.local_transport", "gateway.inprocess"),
]
COMPOSITION_ROOTS = {"gateway.cli", "gateway.app"}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _stage(module: str) -> int | None:
    for index, packages in enumerate(FLOW):
        if any(_within(module, package) for package in packages):
            return index
    return None


SOURCES = {_module(p): _imports(p) for top in ("gateway", "workers") for p in sorted((ROOT / top).rglob("*.py"))}


def test_the_sources_were_found() -> None:
    assert {"gateway.batcher", "gateway.pool", "workers.main"} <= SOURCES.keys()


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if m.startswith("workers")))
def test_workers_never_import_the_gateway(module: str) -> None:
    assert not [name for name in SOURCES[module] if _within(name, "gateway")]


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if _stage(m) is not None))
def test_no_module_imports_one_upstream_of_it(module: str) -> None:
    stage = _stage(module)
    assert stage is not None
    upstream = [name for name in SOURCES[module] if (other := _stage(name)) is not None and other < stage]
    assert not upstream, f"{module} imports {upstream}, upstream of it in {FLOW}"


def test_only_composition_roots_import_the_app() -> None:
    importers = {module for module, names in SOURCES.items() if any(_within(n, "gateway.app") for n in names)}
    assert importers <= COMPOSITION_ROOTS
