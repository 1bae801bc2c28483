"""How the local supervisor builds a worker's command line: thread pool size, scheduling (no processes started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway import supervisor
from gateway.config import PoolConfig
from gateway.metrics import Metrics
from gateway.pool import PoolClient
from gateway.supervisor import LocalSupervisor, WorkerProcess


def _threads(argv: list[str]) -> int:
    return int(argv[argv.index("--threads") + 1])


def test_auto_threads_share_the_cores_among_the_workers_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(supervisor, "usable_cpus", lambda: 8)
    local = LocalSupervisor(PoolClient("p"), PoolConfig(replicas=1), lambda: [], Metrics(), tmp_path)
    assert _threads(local.command("unix:/a")) == 8  # alone: every core
    local.workers[0] = WorkerProcess(0, "unix:/a", None)
    local.workers[1] = WorkerProcess(1, "unix:/b", None)  # the autoscaler added one
    assert _threads(local.command("unix:/b")) == 4
    pinned = LocalSupervisor(PoolClient("p"), PoolConfig(replicas=1, threads=3), lambda: [], Metrics(), tmp_path)
    pinned.workers[0] = WorkerProcess(0, "unix:/a", None)
    pinned.workers[1] = WorkerProcess(1, "unix:/b", None)
    assert _threads(pinned.command("unix:/b")) == 3  # an explicit size is kept


def test_batch_scheduling_is_passed_on_unless_turned_off(tmp_path: Path) -> None:
    def command(config: PoolConfig) -> list[str]:
        return LocalSupervisor(PoolClient("p"), config, lambda: [], Metrics(), tmp_path).command("unix:/a")

    assert "--batch-scheduling" in command(PoolConfig())
    assert "--batch-scheduling" not in command(PoolConfig(batch_scheduling=False))


def test_concurrent_runs_are_passed_on_and_share_the_auto_threads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(supervisor, "usable_cpus", lambda: 8)

    def command(config: PoolConfig) -> list[str]:
        return LocalSupervisor(PoolClient("p"), config, lambda: [], Metrics(), tmp_path).command("unix:/a")

    shared = command(PoolConfig(replicas=2, concurrent_runs=2))
    assert shared[shared.index("--concurrent-runs") + 1] == "2"
    assert _threads(shared) == 2  # 8 cores over 2 workers x 2 runs
    assert _threads(command(PoolConfig(replicas=1, concurrent_runs=8))) == 1
    plain = command(PoolConfig(replicas=2))
    assert plain[plain.index("--concurrent-runs") + 1] == "1" and _threads(plain) == 4


def test_a_confined_pool_passes_its_cpus_and_sizes_its_threads_to_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(supervisor, "usable_cpus", lambda: 8)
    argv = LocalSupervisor(
        PoolClient("p"), PoolConfig(replicas=2, cpus="2-5"), lambda: [], Metrics(), tmp_path
    ).command("unix:/a")
    assert argv[argv.index("--cpus") + 1] == "2-5"
    assert _threads(argv) == 2  # 4 CPUs for 2 workers, not 8


def test_workers_of_a_confined_gateway_get_back_the_cpus_it_had(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def command(config: PoolConfig) -> list[str]:
        return LocalSupervisor(PoolClient("p"), config, lambda: [], Metrics(), tmp_path).command("unix:/a")

    assert "--cpus" not in command(PoolConfig())  # nobody confined: workers run anywhere
    monkeypatch.setattr(supervisor, "before_confined", lambda: frozenset({0, 1, 2, 3}))
    argv = command(PoolConfig())
    assert argv[argv.index("--cpus") + 1] == "0-3"  # not the gateway's own core
    argv = command(PoolConfig(cpus="3"))
    assert argv[argv.index("--cpus") + 1] == "3"  # the pool's own list wins


def test_in_process_replicas_join_the_pool_scale_and_close(tmp_path: Path) -> None:
    """``isolation: thread``: real ONNX Runtime sessions in this process, no worker process."""
    import asyncio

    from gateway.repository import ModelVersion
    from tests.helpers import identity_model, write_model

    path = write_model(tmp_path / "models", "identity", identity_model(["FP32"]))
    pool = PoolClient("p")
    config = PoolConfig(replicas=1, isolation="thread", threads=1)
    local = LocalSupervisor(pool, config, lambda: [ModelVersion("identity", "1", path)], Metrics(), tmp_path)
    before = sys.getswitchinterval()

    async def scenario() -> None:
        await local.start()
        await asyncio.gather(*(w.task for w in local.workers.values() if w.task))
        assert sys.getswitchinterval() == supervisor.SWITCH_INTERVAL_S
        await local.scale_to(2)
        await asyncio.gather(*(w.task for w in local.workers.values() if w.task))
        replicas = [w.in_process for w in local.workers.values()]
        assert all(r is not None for r in replicas) and all(w.process is None for w in local.workers.values())
        assert {r.inline for r in pool.replicas.values()} == set(replicas)
        await local.scale_to(1)  # the newest replica drains and closes
        assert len(pool.replicas) == 1 and replicas[1] is not None and not replicas[1].servicer.ready
        await local.stop()
        assert replicas[0] is not None and not replicas[0].servicer.ready
        await pool.close()

    try:
        asyncio.run(scenario())
    finally:
        sys.setswitchinterval(before)


def test_an_in_process_pool_imports_onnx_runtime_before_the_gateway_serves(tmp_path: Path) -> None:
    """Its first import holds the GIL for about 40 ms; taken at start, not with a replica the
    autoscaler adds under load (a fresh interpreter, since this one has it imported already)."""
    script = """
import asyncio, sys
from pathlib import Path
from gateway.config import PoolConfig
from gateway.metrics import Metrics
from gateway.pool import PoolClient
from gateway.supervisor import LocalSupervisor
def start(isolation):
    config = PoolConfig(replicas=0, isolation=isolation)
    asyncio.run(LocalSupervisor(PoolClient("p"), config, lambda: [], Metrics(), Path(sys.argv[1])).start())
    return "onnxruntime" in sys.modules
print(start("process"), start("thread"))
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "True"], done.stderr
