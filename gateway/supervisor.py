"""Local worker supervisor: starts a pool's worker processes, restarts the ones that die.

Each worker listens on a unix socket (or a loopback TCP port) that stays the same
across restarts, so the pool client's channel reconnects by itself. A pool with
``isolation: thread`` gets in-process replicas instead (:mod:`gateway.inprocess`), with
the same addresses, scaling and draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.config import PoolConfig
from gateway.inprocess import InProcessWorker, RunSettings
from gateway.metrics import Metrics
from gateway.pool import PoolClient
from gateway.ports import free_port
from gateway.repository import ModelVersion
from gateway.tasks import spawn
from workers.affinity import auto_threads, before_confined, format_cpus, parse_cpus, usable_cpus
from workers.servicer import Faults

log = logging.getLogger("batchgate.supervisor")

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
# In-process replicas: how long a thread may hold the GIL before another may take it. At
# CPython's 5 ms, a run that ONNX Runtime has finished waited behind the busy event loop
# (mlp, 64 users: the batch's time around the run rose from 9.6-12.0 to 11.9-15.6 ms).
SWITCH_INTERVAL_S = 0.0005


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM if the gateway dies without stopping it."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class WorkerProcess:
    """One supervised worker slot: a fixed address and the process currently behind it."""

    def __init__(self, index: int, address: str, local_path: str | None) -> None:
        self.index = index
        self.address = address
        self.local_path = local_path
        self.process: asyncio.subprocess.Process | None = None
        self.in_process: InProcessWorker | None = None
        self.restarts = 0
        self.task: asyncio.Task[None] | None = None
        self.retiring = False


class LocalSupervisor:
    """Runs ``replicas`` worker processes for one pool and keeps them running."""

    def __init__(
        self,
        pool: PoolClient,
        config: PoolConfig,
        models: Callable[[], Sequence[ModelVersion]],
        metrics: Metrics,
        runtime_dir: Path,
        log_level: str = "info",
    ) -> None:
        self.pool = pool
        self.config = config
        self.models = models
        self.metrics = metrics
        self.runtime_dir = runtime_dir
        self.log_level = log_level
        self.workers: dict[int, WorkerProcess] = {}
        self._stopping = False
        self._next_index = 0

    def command(self, address: str, local_path: str | None = None) -> list[str]:
        # Auto threads share the cores among the workers running when this one starts, so a
        # worker the autoscaler adds does not bring a full-size thread pool (1 -> 2 workers
        # with 2 threads each oversubscribed 2 cores: mlp_xl 820 vs 1,076 items/s). Workers
        # already running keep their size until they restart.
        runs = self.config.concurrent_runs
        argv = [sys.executable, "-m", "workers", "--listen", address, "--threads", str(self.threads())]
        argv += ["--concurrent-runs", str(runs)]
        argv += ["--providers", ",".join(self.config.providers), "--log-level", self.log_level]
        if self.config.spin:
            argv.append("--spin")
        if self.config.batch_scheduling:
            argv.append("--batch-scheduling")
        cpus = self._cpus()
        if cpus is not None:
            argv += ["--cpus", cpus]
        for model in self.models():
            argv += ["--model", f"{model.name}={model.version}:{model.path}"]
        if local_path is not None:
            argv += ["--listen-local", local_path]
        fault = self.config.fault
        if fault.delay_ms or fault.error_ratio:
            argv += ["--fault-delay-ms", str(fault.delay_ms), "--fault-error-ratio", str(fault.error_ratio)]
            argv += ["--fault-seed", str(fault.seed)]
            if fault.models:
                argv += ["--fault-models", ",".join(fault.models)]
        return argv

    def _cpus(self) -> str | None:
        if self.config.cpus is None and (inherited := before_confined()) is not None:
            return format_cpus(inherited)  # not the confined gateway's own: the CPUs it had before
        return self.config.cpus

    def threads(self) -> int:
        """ONNX Runtime threads per run for a worker started now (see :meth:`command`)."""
        if self.config.threads:
            return self.config.threads
        cpus, runs = self._auto_share()
        return auto_threads(runs, cpus)

    def _auto_share(self) -> tuple[int, int]:
        """(CPUs, runs) that auto threads divide: the pool's own CPU list or the usable CPUs,
        among the runs of the workers configured or running, whichever are more."""
        cpus = len(parse_cpus(self.config.cpus)) if self.config.cpus is not None else usable_cpus()
        return cpus, max(self.config.replicas, len(self.workers)) * self.config.concurrent_runs

    def _address(self, index: int) -> str:
        if self.config.transport == "unix":
            return f"unix:{self.runtime_dir / f'{self.pool.name}-{index}.sock'}"
        return f"127.0.0.1:{free_port()}"

    async def start(self) -> None:
        if self.config.isolation == "thread":
            # ONNX Runtime's first import holds the GIL for about 40 ms: take that now, before
            # the gateway serves, not when the autoscaler adds a replica under load. A missing
            # runtime is reported by each replica's start.
            with contextlib.suppress(ImportError):
                import onnxruntime  # noqa: F401
            if sys.getswitchinterval() > SWITCH_INTERVAL_S:
                sys.setswitchinterval(SWITCH_INTERVAL_S)
                interval_ms = SWITCH_INTERVAL_S * 1e3
                log.info("pool %s runs in process: GIL switch interval %.1f ms", self.pool.name, interval_ms)
        for _ in range(self.config.replicas):
            self.add_worker()
        self.metrics.replicas.labels(self.pool.name).set(len(self.workers))

    def add_worker(self) -> WorkerProcess:
        index = self._next_index
        self._next_index += 1
        local_path = None
        if self.config.transport == "unix" and self.config.local_fast_path:
            local_path = str(self.runtime_dir / f"{self.pool.name}-{index}.fast.sock")
        worker = WorkerProcess(index, self._address(index), local_path)
        self.workers[index] = worker
        worker.task = spawn(self._run(worker), name=f"worker-{self.pool.name}-{index}")
        return worker

    async def _run(self, worker: WorkerProcess) -> None:
        if self.config.isolation == "thread":
            await self._run_in_process(worker)
            return
        backoff = BACKOFF_START_S
        while not self._stopping:
            argv = self.command(worker.address, worker.local_path)
            worker.process = await asyncio.create_subprocess_exec(
                *argv,
                preexec_fn=_die_with_parent,
                # Own session: a terminal's Ctrl-C reaches the gateway, which stops workers last.
                start_new_session=True,
            )
            self.pool.add(worker.address, worker.local_path)
            log.info(
                "pool %s: started worker %d (pid %d) on %s, %s ONNX Runtime thread(s) per run%s",
                self.pool.name,
                worker.index,
                worker.process.pid,
                worker.address,
                argv[argv.index("--threads") + 1],  # what it was started with, not a fresh count
                "" if self.config.threads else " (auto: {} usable CPUs / {} runs)".format(*self._auto_share()),
            )
            code = await worker.process.wait()
            if self._stopping or worker.retiring:
                return
            replica = self.pool.replicas.get(worker.address)
            if replica is not None:
                self.pool.set_ready(replica, False)
            worker.restarts += 1
            self.metrics.worker_restarts.labels(self.pool.name).inc()
            log.warning(
                "pool %s: worker %d exited with %s; restarting in %.1fs", self.pool.name, worker.index, code, backoff
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _run_in_process(self, worker: WorkerProcess) -> None:
        """Load the replica's models and add it to the pool; a failed load is retried with
        backoff, as a worker process that exits is restarted."""
        backoff = BACKOFF_START_S
        fault = self.config.fault
        while not self._stopping and not worker.retiring:
            threads = self.threads()
            settings = RunSettings(
                threads,
                self.config.providers,
                self.config.spin,
                self.config.concurrent_runs,
                self.config.batch_scheduling,
                self._cpus(),
                Faults(fault.delay_ms / 1000, fault.error_ratio, fault.seed, frozenset(fault.models)),
            )
            models = [(m.name, m.version, str(m.path)) for m in self.models()]
            runs = max(self.config.inflight_per_replica, self.config.concurrent_runs)
            try:
                worker.in_process = await InProcessWorker.start(worker.address, models, settings, runs)
            except Exception as exc:  # a model that cannot load, a runtime conflict: say which, retry
                log.error("pool %s: in-process replica %d cannot start: %s", self.pool.name, worker.index, exc)
                self.metrics.worker_restarts.labels(self.pool.name).inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            self.pool.add(worker.address, inline=worker.in_process)
            log.info(
                "pool %s: started in-process replica %d on %s, %d ONNX Runtime thread(s) per run",
                self.pool.name,
                worker.index,
                worker.address,
                threads,
            )
            return

    async def scale_to(self, replicas: int, drain_timeout_s: float = 30.0) -> None:
        """Start or retire workers until ``replicas`` run; retiring ones drain first."""
        while len(self.workers) < replicas:
            self.add_worker()
        while len(self.workers) > replicas:
            index = max(self.workers)
            await self.retire(self.workers.pop(index), drain_timeout_s)
        self.metrics.replicas.labels(self.pool.name).set(len(self.workers))

    async def retire(self, worker: WorkerProcess, drain_timeout_s: float) -> None:
        """No new batches, wait for the outstanding ones, then SIGTERM (the worker drains too)."""
        worker.retiring = True
        try:
            await asyncio.wait_for(self.pool.remove(worker.address), drain_timeout_s)
        except TimeoutError:
            log.warning(
                "pool %s: worker %d still busy after %.0fs; stopping it", self.pool.name, worker.index, drain_timeout_s
            )
        if self.config.isolation == "thread" and worker.task is not None and worker.in_process is None:
            worker.task.cancel()  # an in-process replica still loading: it never took a batch
            await asyncio.gather(worker.task, return_exceptions=True)
        if worker.in_process is not None:
            await worker.in_process.close(drain_timeout_s)
        process = worker.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), drain_timeout_s)
            except TimeoutError:
                process.kill()
                await process.wait()
        if worker.task is not None:
            await asyncio.gather(worker.task, return_exceptions=True)
        log.info("pool %s: retired worker %d", self.pool.name, worker.index)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every worker (they drain), SIGKILL what is left after ``timeout_s``; close the
        in-process replicas (a run in progress gets ``timeout_s`` too)."""
        self._stopping = True
        processes = [w.process for w in self.workers.values() if w.process and w.process.returncode is None]
        for process in processes:
            process.send_signal(signal.SIGTERM)
        if processes:
            await asyncio.wait([asyncio.ensure_future(p.wait()) for p in processes], timeout=timeout_s)
            for process in processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        replicas = [w.in_process for w in self.workers.values() if w.in_process is not None]
        await asyncio.gather(*(replica.close(timeout_s) for replica in replicas))
        for worker in self.workers.values():
            if worker.task is not None:
                worker.task.cancel()
        await asyncio.gather(*(w.task for w in self.workers.values() if w.task), return_exceptions=True)
