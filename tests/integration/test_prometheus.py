"""The Prometheus signal source against a real Prometheus server scraping two real gateways,
on their operations ports as the ServiceMonitor does."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.autoscaler.signals import PrometheusSource
from gateway.config import ScalingPolicy
from tests.helpers import GatewayProcess, free_port, write_model
from tests.load import closed_loop

BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [3.0] * 64}]}).encode()
USERS_PER_GATEWAY = 6
WINDOW_S = 15


def _prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is missing: make test installs Debian's prometheus package")
        pytest.skip("prometheus not installed (make test installs it)")
    return found


@pytest.fixture
def two_gateways(tmp_path: Path, demo_repository: Path) -> Iterator[list[GatewayProcess]]:
    root = tmp_path / "models"
    write_model(
        root,
        "digits_mlp",
        (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes(),
        {"slo": {"p99_ms": 2000}},
    )
    config = {"pools": {"default": {"replicas": 1, "fault": {"delay_ms": 20}}}}
    gateways = [GatewayProcess(root, tmp_path / f"gateway{i}.log", config=config, replicas=1) for i in range(2)]
    try:
        for gateway in gateways:
            gateway.wait_ready()
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


def _histogram(gateway: GatewayProcess) -> tuple[dict[float, float], float]:
    """Cumulative request-duration buckets and the duration sum of one gateway."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    total = 0.0
    for family in text_string_to_metric_families(gateway.get("/metrics")[1].decode()):
        for sample in family.samples:
            if sample.name == "batchgate_request_duration_seconds_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == "batchgate_request_duration_seconds_sum":
                total += sample.value
    return buckets, total


def _quantile(q: float, buckets: dict[float, float]) -> float:
    """histogram_quantile's interpolation, on cumulative buckets."""
    bounds = sorted(buckets)
    rank = q * buckets[bounds[-1]]
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return previous_bound
            share = (rank - previous_count) / (buckets[bound] - previous_count)
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, buckets[bound]
    return bounds[-1]


def test_prometheus_readings_match_the_gateways_own(two_gateways: list[GatewayProcess], tmp_path: Path) -> None:
    binary = _prometheus_binary()
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "batchgate",
                "static_configs": [{"targets": [f"127.0.0.1:{g.metrics_port}" for g in two_gateways]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus did not start"
            time.sleep(0.2)

        duration = WINDOW_S + 10
        loads = [
            threading.Thread(
                target=closed_loop, args=(g.port, "/v2/models/digits_mlp/infer", BODY, USERS_PER_GATEWAY, duration)
            )
            for g in two_gateways
        ]
        for thread in loads:
            thread.start()
        time.sleep(duration - WINDOW_S - 2)  # let the load settle, then open the comparison window
        before = [_histogram(g) for g in two_gateways]
        started = time.monotonic()
        time.sleep(WINDOW_S)
        after = [_histogram(g) for g in two_gateways]
        elapsed = time.monotonic() - started
        time.sleep(1.5)  # one more scrape so Prometheus has the window's last samples
        source = PrometheusSource(f"http://127.0.0.1:{port}", lambda pool: ["digits_mlp"])
        policy = ScalingPolicy(stable_window_s=WINDOW_S, panic_window_s=WINDOW_S)
        signals = asyncio.run(source.read("default", policy))
        for thread in loads:
            thread.join()
    finally:
        prometheus.terminate()
        prometheus.wait(10)

    merged: dict[float, float] = {}
    for (buckets_before, _), (buckets_after, _) in zip(before, after, strict=True):
        for bound, count in buckets_after.items():
            merged[bound] = merged.get(bound, 0.0) + count - buckets_before.get(bound, 0.0)
    own_p99 = _quantile(0.99, merged)
    # Little's law on the gateways' own histograms: summed request time per second = mean in-flight requests.
    own_concurrency = sum(a[1] - b[1] for a, b in zip(after, before, strict=True)) / elapsed
    print(
        f"concurrency: Prometheus {signals.concurrency_stable:.2f} vs gateways {own_concurrency:.2f}; "
        f"p99: Prometheus {signals.p99_s and signals.p99_s * 1000:.1f} ms vs gateways {own_p99 * 1000:.1f} ms; "
        f"throughput {signals.throughput:.0f}/s"
    )
    assert signals.p99_s is not None
    assert abs(signals.concurrency_stable - own_concurrency) <= 0.25 * own_concurrency
    assert abs(signals.p99_s - own_p99) <= 0.25 * own_p99
    assert 2 * USERS_PER_GATEWAY * 0.5 <= own_concurrency <= 2 * USERS_PER_GATEWAY


def test_standalone_controller_decides_from_prometheus(tmp_path: Path, demo_repository: Path) -> None:
    """``batchgate controller`` (dry-run) comes up, reads Prometheus and logs decisions."""
    binary = _prometheus_binary()
    port, metrics_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": []})
    )
    prometheus = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    root = tmp_path / "models"
    write_model(root, "digits_mlp", (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes(), {})
    config = tmp_path / "batchgate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_repository": str(root),
                "autoscaler": {
                    "backend": "dry-run",
                    "source": "prometheus",
                    "interval_s": 0.5,
                    "prometheus_url": f"http://127.0.0.1:{port}",
                },
            }
        )
    )
    controller = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "controller",
            "--config",
            str(config),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(metrics_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        decisions: list[dict[str, object]] = []
        while not decisions:
            assert time.monotonic() < deadline, "no decision from the controller"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2) as response:
                    decisions = json.load(response)["decisions"]
            except OSError:
                pass
            time.sleep(0.2)
        assert decisions[-1]["pool"] == "default" and decisions[-1]["concurrency"] == 0.0
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
        assert 'batchgate_desired_replicas{pool="default"}' in metrics
    finally:
        controller.terminate()
        controller.wait(10)
        prometheus.terminate()
        prometheus.wait(10)
