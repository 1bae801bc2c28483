"""How many ONNX Runtime threads a standalone worker (``batchgate worker``, as the Kubernetes
manifests start one) gives each run when ``--threads`` is left out: its usable CPUs, not the host's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import wait_for
from workers.affinity import usable_cpus

LOADED = re.compile(rb"loaded digits_mlp:1 .*\((\d+) runs at once, (\d+) threads each\)")


def _threads(repository: Path, tmp_path: Path, name: str, *extra: str) -> tuple[int, int]:
    """(runs at once, threads each) that a worker started with ``extra`` reports for its model."""
    log = tmp_path / f"{name}.log"
    model = repository / "digits_mlp" / "1" / "model.onnx"
    argv = [sys.executable, "-m", "workers", "--listen", f"unix:{tmp_path / name}.sock", "--model",
            f"digits_mlp=1:{model}", *extra]  # fmt: skip
    with log.open("wb") as out:
        worker = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: LOADED.search(log.read_bytes()) is not None or worker.poll() is not None, 60)
        found = LOADED.search(log.read_bytes())
        assert found is not None, log.read_text()
        return int(found.group(1)), int(found.group(2))
    finally:
        worker.terminate()
        worker.wait(30)


def test_auto_threads_fill_the_usable_cpus(demo_repository: Path, tmp_path: Path) -> None:
    assert _threads(demo_repository, tmp_path, "auto") == (1, usable_cpus())
    assert _threads(demo_repository, tmp_path, "shared", "--concurrent-runs", "2") == (2, max(1, usable_cpus() // 2))
    assert _threads(demo_repository, tmp_path, "given", "--threads", "3") == (1, 3)  # an explicit size is kept


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU affinity")
def test_a_worker_confined_to_one_cpu_runs_one_thread(demo_repository: Path, tmp_path: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    assert _threads(demo_repository, tmp_path, "one", "--cpus", str(cpu)) == (1, 1)
