"""Shared fixtures: the demo repository (built once), test models, and real gateways."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import GatewayProcess, identity_model, write_model


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built by ``batchgate models demo`` in a child process. Built in this one, the training
    left a heap of 130k objects that every full garbage collection here rescanned, and the
    open-loop shedding test timed its own client's pauses: admitted p99 178-245 ms on a slow
    VM, against 112-123 ms with the demo built in a child."""
    root = tmp_path_factory.mktemp("demo") / "models"
    command = [sys.executable, "-m", "gateway", "models", "demo", str(root)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return root


@pytest.fixture(scope="session")
def serving_repository(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Path:
    """The demo classifiers plus identity models over every datatype."""
    root = tmp_path_factory.mktemp("serving") / "models"
    for name in ("digits_mlp", "digits_logreg"):
        source = demo_repository / name
        write_model(root, name, (source / "1" / "model.onnx").read_bytes())
        (root / name / "config.yaml").write_text((source / "config.yaml").read_text())
    write_model(root, "identity", identity_model(), {"batching": {"max_batch_size": 16}})
    # BF16 needs its own model: ONNX Runtime cannot run it next to string inputs from Python.
    write_model(root, "identity_bf16", identity_model(["BF16", "FP32"]), {"batching": {"max_batch_size": 16}})
    return root


@pytest.fixture(scope="session")
def gateway(serving_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One real gateway with two real worker processes, shared by the read-mostly tests."""
    log_path = tmp_path_factory.mktemp("logs") / "gateway.log"
    process = GatewayProcess(serving_repository, log_path)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
