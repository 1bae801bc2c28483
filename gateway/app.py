"""Composition root: builds pools, supervisors, batchers, router and the HTTP app from config."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette

from gateway.batcher import ModelBatcher
from gateway.clock import Clock, MonotonicClock
from gateway.config import ServerConfig
from gateway.metrics import Metrics
from gateway.pool import PoolClient
from gateway.repository import ModelVersion, check_references, scan_repository
from gateway.rest.routes import RestAPI, build_app
from gateway.router import Router, ServedModel
from gateway.supervisor import LocalSupervisor
from gateway.tasks import spawn

log = logging.getLogger("batchgate")


class Gateway:
    """Everything one gateway process runs; :attr:`app` is the ASGI application."""

    def __init__(self, config: ServerConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self.repository = scan_repository(config.model_repository)
        check_references(self.repository, config.pools)
        self.metrics = Metrics()
        self.pools: dict[str, PoolClient] = {}
        self.pool_models: dict[str, list[ModelVersion]] = {}
        served: list[ServedModel] = []
        for model in self.repository.values():
            pool_name = model.config.pool
            pool = self.pools.get(pool_name)
            if pool is None:
                pool = PoolClient(pool_name, config.pools[pool_name].inflight_per_replica)
                self.pools[pool_name] = pool
            self.pool_models.setdefault(pool_name, []).extend(model.versions)
            for version in model.versions:
                batcher = ModelBatcher(
                    model.name, version.version, model.config.batching, pool, self.clock, self.metrics
                )
                served.append(ServedModel(model.name, version.version, model.config, pool, batcher))
        self.router = Router(served, self.clock, self.metrics)
        self.supervisors: list[LocalSupervisor] = []
        self._runtime_dir: Path | None = None
        self._signature_lock = asyncio.Lock()
        self.rest = RestAPI(self.router, self.metrics, config.http.max_body_bytes)
        self.app: Starlette = build_app(self.rest, lifespan=self._lifespan)

    def _on_ready_change(self, pool: PoolClient) -> None:
        self.metrics.replicas_ready.labels(pool.name).set(pool.ready_count())
        spawn(self._refresh_signatures(), name="signatures")

    async def _refresh_signatures(self) -> None:
        async with self._signature_lock:
            was_ready = self.router.ready()
            await self.router.load_signatures()
            if not was_ready and self.router.ready():
                log.info("gateway ready: %d model version(s) served", len(self.router.all_served()))

    async def start(self) -> None:
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="batchgate-"))
        for name, pool in self.pools.items():
            pool_config = self.config.pools[name]
            pool.on_ready_change(functools.partial(self._on_ready_change, pool))
            if pool_config.endpoints:
                for address in pool_config.endpoints:
                    pool.add(address)
                self.metrics.replicas.labels(name).set(len(pool_config.endpoints))
            else:
                supervisor = LocalSupervisor(
                    pool,
                    pool_config,
                    self.pool_models[name],
                    self.metrics,
                    self._runtime_dir,
                    self.config.log_level,
                )
                self.supervisors.append(supervisor)
                await supervisor.start()
            pool.start()

    async def stop(self) -> None:
        await self.router.drain(self.config.drain_timeout_s)
        for served in self.router.all_served():
            await served.batcher.stop()
        for supervisor in self.supervisors:
            await supervisor.stop()
        for pool in self.pools.values():
            await pool.close()
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()
