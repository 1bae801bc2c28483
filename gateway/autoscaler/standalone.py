"""``batchgate controller``: the autoscaling controller as its own process.

Reads the model repository (which pool serves which models, and their SLOs), takes its
signals from Prometheus (every gateway replica together), and acts through the Kubernetes
scale subresource (or dry-run). Serves ``/healthz`` and ``/metrics`` on ``--metrics-port``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import logs
from gateway.autoscaler.controller import Controller
from gateway.autoscaler.kube import DeploymentScale, api_client, own_namespace
from gateway.autoscaler.scalers import DryRunScaler, KubernetesScaler, Scaler
from gateway.autoscaler.signals import PrometheusSource
from gateway.clock import MonotonicClock
from gateway.config import ConfigError, ServerConfig, load_server_config
from gateway.metrics import Metrics, exposition
from gateway.repository import scan_repository
from gateway.tasks import spawn

log = logging.getLogger("batchgate.controller")


def pool_models(config: ServerConfig) -> dict[str, list[str]]:
    models: dict[str, list[str]] = {name: [] for name in config.pools}
    for model in scan_repository(config.model_repository).values():
        models.setdefault(model.config.pool, []).append(model.name)
    return models


def pool_slos(config: ServerConfig) -> dict[str, float]:
    slos: dict[str, float] = {}
    for model in scan_repository(config.model_repository).values():
        pool = model.config.pool
        slos[pool] = min(slos.get(pool, float("inf")), model.config.slo.p99_ms / 1000)
    return {pool: slos.get(pool, 0.1) for pool in config.pools}


async def build(config: ServerConfig, metrics: Metrics) -> tuple[Controller, list[object]]:
    """The controller and the API clients it holds open."""
    settings = config.autoscaler
    models = pool_models(config)
    slos = pool_slos(config)
    source = PrometheusSource(settings.prometheus_url, lambda pool: models.get(pool, []))
    clients: list[object] = []
    scaler: Scaler
    if settings.backend == "kubernetes":
        targets = {}
        for pool, target in settings.kubernetes.items():
            client = await api_client(target.api_url)
            clients.append(client)
            targets[pool] = DeploymentScale(client, target.deployment, target.namespace or own_namespace())
        scaler = KubernetesScaler(targets)
        slos = {pool: slo for pool, slo in slos.items() if pool in targets}
    elif settings.backend == "dry-run":
        scaler = DryRunScaler({pool: pool_config.replicas for pool, pool_config in config.pools.items()})
    else:
        raise ConfigError("autoscaler.backend: the standalone controller scales 'kubernetes' or 'dry-run' pools")
    if settings.source != "prometheus":
        raise ConfigError("autoscaler.source: the standalone controller reads 'prometheus'")
    return Controller(settings, slos, source, scaler, metrics, MonotonicClock()), clients


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="batchgate controller", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--model-repository", type=Path, help="overrides model_repository in the config")
    parser.add_argument("--metrics-host", default="0.0.0.0")
    # Not the gateway's 8002: a controller next to a gateway on one host (a dry run, say)
    # must not fail to bind. The manifests name their port explicitly.
    parser.add_argument("--metrics-port", type=int, default=8003, help="/healthz and /metrics (default 8003)")
    parser.add_argument("--log-format", choices=["json", "text"], default="json")
    args = parser.parse_args(argv)
    overrides = {"model_repository": str(args.model_repository)} if args.model_repository else {}
    try:
        config = load_server_config(args.config, overrides)
    except ConfigError as exc:
        print(f"batchgate controller: configuration error:\n{exc}")
        return 2
    logs.setup(config.log_level, args.log_format)
    metrics = Metrics()
    state: dict[str, Controller] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        controller, clients = await build(config, metrics)
        state["controller"] = controller
        task = spawn(controller.run(), name="controller")
        log.info(
            "controller running: pools %s, %s backend, signals from %s",
            sorted(controller.pools),
            config.autoscaler.backend,
            config.autoscaler.prometheus_url,
        )
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            for client in clients:
                await client.close()  # type: ignore[attr-defined]

    async def healthz(request: Request) -> Response:
        controller = state.get("controller")
        return JSONResponse({"decisions": controller.decisions[-5:] if controller else []})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(await exposition(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics_endpoint)], lifespan=lifespan)
    uvicorn.run(app, host=args.metrics_host, port=args.metrics_port, log_config=None, access_log=False)
    return 0
