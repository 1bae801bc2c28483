"""Composition root: builds pools, supervisors, batchers, router and the fronts from config."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
from starlette.applications import Starlette

from gateway.clock import Clock, MonotonicClock
from gateway.config import ServerConfig
from gateway.dataplane import DataPlane
from gateway.grpc_api.servicer import GRPCFront, build_server
from gateway.lifecycle import ModelManager
from gateway.metrics import Metrics
from gateway.pool import PoolClient
from gateway.repository import check_references, scan_repository
from gateway.rest.routes import RestAPI, build_app
from gateway.router import Router
from gateway.supervisor import LocalSupervisor
from gateway.tasks import spawn

log = logging.getLogger("batchgate")


class Gateway:
    """Everything one gateway process runs; :attr:`app` is the ASGI application."""

    def __init__(self, config: ServerConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        repository = scan_repository(config.model_repository)
        check_references(repository, config.pools)
        self.metrics = Metrics()
        self.pools: dict[str, PoolClient] = {}
        self.router = Router(self.clock, self.metrics)
        self.manager = ModelManager(config, self.pools, self.router, self.metrics, self.clock)
        for model in repository.values():
            for version in model.versions:
                self.manager.serve(model, version)
        self.supervisors: list[LocalSupervisor] = []
        self._runtime_dir: Path | None = None
        self._signature_lock = asyncio.Lock()
        self.dataplane = DataPlane(self.router, self.manager)
        self.rest = RestAPI(self.dataplane, self.metrics, config.http.max_body_bytes)
        self.app: Starlette = build_app(self.rest, lifespan=self._lifespan)
        self.grpc_server: grpc.aio.Server | None = None
        self.grpc_port: int | None = None

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
                    functools.partial(self.manager.pool_models, name),
                    self.metrics,
                    self._runtime_dir,
                    self.config.log_level,
                )
                self.supervisors.append(supervisor)
                await supervisor.start()
            pool.start()
        if self.config.grpc.enabled:
            self.grpc_server, self.grpc_port = await build_server(
                GRPCFront(self.dataplane, self.metrics), self.config.grpc, self.config.http.host
            )
            log.info("gRPC front listening on %s:%d", self.config.grpc.host or self.config.http.host, self.grpc_port)

    async def drain(self) -> None:
        """Stop being ready, refuse new requests, and wait for the admitted ones to finish."""
        self.router.accepting = False
        await self.router.drain(self.config.drain_timeout_s)
        log.info("drained: every admitted request has been answered")

    async def stop(self) -> None:
        await self.router.drain(self.config.drain_timeout_s)
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=1.0)
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
