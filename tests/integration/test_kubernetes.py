"""The Kubernetes backend and discovery, with the real ``kubernetes`` client against the
stateful fake API server in ``tests/fakes/kube_apiserver.py`` (a real API server cannot
run here; see that module's docstring for the API reference pages it follows)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import uvicorn

from gateway.autoscaler.controller import Controller
from gateway.autoscaler.kube import DeploymentScale, EndpointSliceWatcher, KubernetesError, api_client
from gateway.autoscaler.policy import Signals
from gateway.autoscaler.scalers import KubernetesScaler
from gateway.clock import MonotonicClock
from gateway.config import AutoscalerConfig, ScalingPolicy
from gateway.metrics import Metrics
from tests.fakes.kube_apiserver import FakeCluster, build_app
from tests.helpers import GatewayProcess, free_port, write_model

NS = "batchgate"


class FakeAPI:
    def __init__(self) -> None:
        self.cluster = FakeCluster()
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                build_app(self.cluster), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, path: str, doc: dict[str, object]) -> None:
        request = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"}
        )
        urllib.request.urlopen(request, timeout=5).read()


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    fake = FakeAPI()
    fake.thread.start()
    deadline = time.monotonic() + 10
    while not fake.server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    fake.cluster.set_scale(NS, "batchgate-workers", 2)
    try:
        yield fake
    finally:
        fake.server.should_exit = True
        fake.thread.join(10)


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_scale_read_patch_and_conflict_retry(api: FakeAPI) -> None:
    async def scenario() -> list[tuple[int, int, str]]:
        client = await api_client(api.url)
        try:
            scale = DeploymentScale(client, "batchgate-workers", NS)
            before = await scale.read()
            await scale.set(5)
            api.cluster.conflicts_to_inject = 1  # another writer changes it between our read and patch
            await scale.set(3)
            return [before, await scale.read()]
        finally:
            await client.close()

    before, after = _run(scenario())  # type: ignore[misc]
    assert before[:2] == (2, 2) and after[:2] == (3, 3)
    patches = [code for method, path, code in api.cluster.calls if method == "PATCH"]
    assert patches == [200, 409, 200]


@pytest.mark.parametrize(("name", "fragment"), [("forbidden-one", "forbidden"), ("missing", "not found")])
def test_forbidden_and_missing_explain_themselves(api: FakeAPI, name: str, fragment: str) -> None:
    api.cluster.forbidden.add("forbidden-one")

    async def scenario() -> None:
        client = await api_client(api.url)
        try:
            await DeploymentScale(client, name, NS).set(4)
        finally:
            await client.close()

    with pytest.raises(KubernetesError, match=fragment) as info:
        _run(scenario())
    if name == "forbidden-one":
        assert "k8s/base/rbac.yaml" in str(info.value)


def test_invalid_replicas_get_a_422_status(api: FakeAPI) -> None:
    from kubernetes.aio import client as kclient
    from kubernetes.aio.client.exceptions import ApiException

    async def scenario() -> ApiException:
        client = await api_client(api.url)
        try:
            await kclient.AppsV1Api(client).patch_namespaced_deployment_scale(
                "batchgate-workers", NS, {"spec": {"replicas": -1}}
            )
        except ApiException as exc:
            return exc
        finally:
            await client.close()
        raise AssertionError("no error")

    error = _run(scenario())
    assert error.status == 422 and json.loads(error.body)["kind"] == "Status"  # type: ignore[attr-defined]


def test_controller_patches_the_deployment_scale(api: FakeAPI) -> None:
    class Busy:
        async def read(self, pool: str, policy: ScalingPolicy) -> Signals:
            return Signals(concurrency_stable=40, concurrency_panic=40, p99_s=0.01)

    async def scenario() -> int:
        client = await api_client(api.url)
        try:
            scaler = KubernetesScaler({"default": DeploymentScale(client, "batchgate-workers", NS)})
            config = AutoscalerConfig(policies={"default": ScalingPolicy(target_concurrency=8, max_replicas=10)})
            controller = Controller(config, {"default": 0.05}, Busy(), scaler, Metrics(), MonotonicClock())
            return await controller.step("default")
        finally:
            await client.close()

    assert _run(scenario()) == 5
    assert api.cluster.scales[(NS, "batchgate-workers")]["spec"] == 5


def test_endpointslice_watch_follows_ready_workers(api: FakeAPI) -> None:
    seen: list[set[str]] = []

    async def scenario() -> None:
        client = await api_client(api.url)
        watcher = EndpointSliceWatcher(client, "batchgate-workers", NS, 9000, seen.append, resync_s=5)
        task = asyncio.ensure_future(watcher.run())
        try:
            await _until(lambda: len(seen) >= 1)
            await asyncio.to_thread(
                api.post,
                "/_fake/endpointslice",
                {
                    "namespace": NS,
                    "name": "w-1",
                    "service": "batchgate-workers",
                    "ready": ["10.0.0.1", "10.0.0.2"],
                    "not_ready": ["10.0.0.3"],
                },
            )
            await _until(lambda: seen[-1] == {"10.0.0.1:9000", "10.0.0.2:9000"})
            await asyncio.to_thread(
                api.post,
                "/_fake/endpointslice",
                {"namespace": NS, "name": "w-1", "service": "batchgate-workers", "ready": ["10.0.0.2"]},
            )
            await _until(lambda: seen[-1] == {"10.0.0.2:9000"})
            await asyncio.to_thread(
                api.post,
                "/_fake/endpointslice",
                {"namespace": NS, "name": "other", "service": "something-else", "ready": ["10.9.9.9"]},
            )
            await asyncio.to_thread(
                api.post,
                "/_fake/endpointslice",
                {"namespace": NS, "name": "w-2", "service": "batchgate-workers", "ready": ["10.0.0.4"]},
            )
            await _until(lambda: seen[-1] == {"10.0.0.2:9000", "10.0.0.4:9000"})  # the foreign slice never shows
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()

    _run(scenario())
    assert seen[0] == set() and all("10.9.9.9:9000" not in s for s in seen)
    assert any(m == "WATCH" for m, _, _ in api.cluster.calls)


async def _until(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def test_gateway_discovers_its_workers_from_endpointslices(api: FakeAPI, tmp_path: Path, demo_repository: Path) -> None:
    """A worker on a loopback TCP port, announced only through an EndpointSlice."""
    root = tmp_path / "models"
    model = write_model(root, "digits_mlp", (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes(), {})
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers", "--listen", f"127.0.0.1:{port}", "--model", f"digits_mlp=1:{model}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    discovery = {"service": "batchgate-workers", "namespace": NS, "port": port, "api_url": api.url}
    gateway = GatewayProcess(
        root,
        tmp_path / "gateway.log",
        config={"pools": {"default": {"replicas": 0, "discovery": discovery}}},
        replicas=0,
    )
    try:
        api.post(
            "/_fake/endpointslice",
            {"namespace": NS, "name": "w", "service": "batchgate-workers", "ready": ["127.0.0.1"]},
        )
        gateway.wait_ready()
        client = httpclient.InferenceServerClient(gateway.url)
        tensor = httpclient.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 64), dtype=np.float32))
        assert client.infer("digits_mlp", [tensor]).as_numpy("label").shape == (1,)
    finally:
        gateway.stop()
        worker.terminate()
        worker.wait(10)
