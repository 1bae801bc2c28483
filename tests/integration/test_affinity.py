"""A real gateway kept off its workers' cores: ``cpus`` at the top level and on the pool."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import GatewayProcess, child_pids

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to split"
)


def _threads_on(pid: int) -> set[frozenset[int]]:
    """The CPU sets of every thread of ``pid``."""
    return {frozenset(os.sched_getaffinity(int(task.name))) for task in Path(f"/proc/{pid}/task").iterdir()}


def test_the_gateway_and_its_workers_run_on_the_cpus_they_were_given(serving_repository: Path, tmp_path: Path) -> None:
    first, second = sorted(os.sched_getaffinity(0))[:2]
    config = {"cpus": str(first), "pools": {"default": {"cpus": str(second)}}}
    gateway = GatewayProcess(serving_repository, tmp_path / "gateway.log", config)
    try:
        gateway.wait_ready()
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}
        answer = json.loads(gateway.get_post("/v2/models/digits_mlp/infer", json.dumps(body).encode()))
        assert answer["outputs"][0]["shape"][0] == 1
        assert _threads_on(gateway.process.pid) == {frozenset({first})}
        workers = child_pids(gateway.process.pid)
        assert len(workers) == 2
        for worker in workers:  # ONNX Runtime's threads included
            assert _threads_on(worker) == {frozenset({second})}
    finally:
        gateway.stop()
