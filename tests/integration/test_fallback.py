"""The fallback path with real workers: a failing primary, a slow primary, and gRPC."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.helpers import GatewayProcess, write_model
from tests.load import percentile

BUDGET_MS = 50


@pytest.fixture(scope="module")
def fallback_gateway(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Iterator[GatewayProcess]:
    """``primary_err`` always fails, ``primary_slow`` takes 300 ms; both fall back to digits_logreg."""
    root = tmp_path_factory.mktemp("fallback") / "models"
    primary = (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes()
    fallback = {"model": "digits_logreg", "on": ["error", "timeout", "overload", "circuit_open"]}
    slo = {"p99_ms": 5000}
    write_model(root, "primary_err", primary, {"pool": "err", "fallback": fallback, "slo": slo})
    write_model(
        root,
        "primary_slow",
        primary,
        # Only the budget race here: with "overload" too, the fitted latency would route around it at once.
        {"pool": "slow", "fallback": {**fallback, "on": ["timeout"], "primary_budget_ms": BUDGET_MS}, "slo": slo},
    )
    write_model(root, "digits_logreg", (demo_repository / "digits_logreg" / "1" / "model.onnx").read_bytes(), {})
    config = {
        "pools": {
            "default": {"replicas": 1},
            "err": {"replicas": 1, "fault": {"error_ratio": 1.0}},
            "slow": {"replicas": 1, "fault": {"delay_ms": 300}},
        }
    }
    process = GatewayProcess(root, tmp_path_factory.mktemp("logs") / "fallback.log", config=config, replicas=1)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _logreg(demo_repository: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(demo_repository / "digits_logreg" / "1" / "model.onnx"))
    probabilities: np.ndarray = session.run(None, {"input": batch})[1]
    return probabilities


def test_failing_primary_is_answered_by_the_fallback(fallback_gateway: GatewayProcess, demo_repository: Path) -> None:
    client = httpclient.InferenceServerClient(fallback_gateway.url)
    for seed in range(30):
        batch = np.random.default_rng(seed).uniform(0, 16, (2, 64)).astype(np.float32)
        tensor = httpclient.InferInput("input", [2, 64], "FP32")
        tensor.set_data_from_numpy(batch)
        result = client.infer("primary_err", [tensor])
        response = result.get_response()
        assert response["parameters"] == {"served_by": "digits_logreg:1", "fallback_reason": "error"}
        assert np.allclose(result.as_numpy("probabilities"), _logreg(demo_repository, batch), atol=1e-6)
    labels = {"model": "primary_err", "reason": "error"}
    assert fallback_gateway.metric("batchgate_fallback_total", labels) >= 30


def test_fallback_headers_and_grpc_parameters(fallback_gateway: GatewayProcess) -> None:
    import http.client

    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]})
    connection = http.client.HTTPConnection("127.0.0.1", fallback_gateway.port, timeout=10)
    connection.request("POST", "/v2/models/primary_err/infer", body=body)
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 200
    assert response.getheader("x-batchgate-served-by") == "digits_logreg:1"
    assert response.getheader("x-batchgate-fallback") == "error"

    client = grpcclient.InferenceServerClient(fallback_gateway.grpc_url)
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), dtype=np.float32))
    parameters = client.infer("primary_err", [tensor]).get_response().parameters
    assert parameters["served_by"].string_param == "digits_logreg:1"
    assert parameters["fallback_reason"].string_param == "error"


def test_slow_primary_is_raced_by_the_fallback_after_its_budget(fallback_gateway: GatewayProcess) -> None:
    client = httpclient.InferenceServerClient(fallback_gateway.url)
    tensor = httpclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), dtype=np.float32))
    latencies = []
    for _ in range(30):
        started = time.perf_counter()
        response = client.infer("primary_slow", [tensor]).get_response()
        latencies.append(time.perf_counter() - started)
        assert response["parameters"] == {"served_by": "digits_logreg:1", "fallback_reason": "timeout"}
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    print(f"slow primary answered by the fallback: p50 {p50:.1f} ms, p99 {p99:.1f} ms (budget {BUDGET_MS} ms)")
    # Budget plus a fallback computation and the HTTP round trip; far below the primary's 300 ms.
    assert p99 < BUDGET_MS + 100
    assert p50 >= BUDGET_MS * 0.9
