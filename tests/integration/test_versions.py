"""Zero-downtime version swaps from the repository poller, under continuous load."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient

from gateway.ports import free_port
from tests.helpers import GatewayProcess, wait_for, write_model
from tests.load import Outcome, closed_loop

POLL_S = 1.0
IMAGE = np.random.default_rng(3).uniform(0, 16, (1, 64)).astype(np.float32)
BODY = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": IMAGE.reshape(-1).tolist()}]}
).encode()


def _drop(root: Path, version: int, data: bytes) -> float:
    """Write a version folder next to the model, then rename it into place (what a deploy should do)."""
    staging = root / "digits" / f".incoming-{version}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(data)
    staging.rename(root / "digits" / str(version))
    return time.perf_counter()


def test_new_version_swaps_in_under_load_and_a_corrupt_one_is_refused(tmp_path: Path, demo_repository: Path) -> None:
    root = tmp_path / "models"
    v1 = (demo_repository / "digits_logreg" / "1" / "model.onnx").read_bytes()
    v2 = (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes()
    write_model(root, "digits", v1, {"slo": {"p99_ms": 5000}})
    gateway = GatewayProcess(root, tmp_path / "gateway.log", config={"repository_poll_s": POLL_S})
    dropped: dict[str, float] = {}
    try:
        gateway.wait_ready()

        def deploy() -> None:
            time.sleep(3)
            dropped["v2"] = _drop(root, 2, v2)
            time.sleep(5)
            dropped["v3"] = _drop(root, 3, b"this is not an onnx model")

        thread = threading.Thread(target=deploy)
        thread.start()
        outcomes: list[Outcome] = closed_loop(gateway.port, "/v2/models/digits/infer", BODY, users=16, duration_s=14)
        thread.join()
        index = json.loads(gateway.get_post("/v2/repository/index"))
    finally:
        gateway.stop()
    statuses = {o.status for o in outcomes}
    assert statuses == {200}, statuses
    versions = [(o.sent_at, json.loads(o.body)["model_version"]) for o in outcomes]
    first_v2 = min(t for t, v in versions if v == "2")
    print(f"{len(outcomes)} requests, all 200; version 2 answered {first_v2 - dropped['v2']:.2f}s after the drop")
    assert first_v2 - dropped["v2"] < POLL_S + 5  # the interval, plus loading and warming on two workers
    assert all(v == "2" for t, v in versions if t > first_v2 + 1)  # v1 drained and gone
    assert not any(v == "3" for _, v in versions)
    served = [e for e in index if e["name"] == "digits"]
    assert {"name": "digits", "version": "2", "state": "READY", "reason": ""} in served
    assert any("cannot load digits:3" in e["reason"] for e in served)
    last = json.loads(outcomes[-1].body)
    mlp = ort.InferenceSession(str(demo_repository / "digits_mlp" / "1" / "model.onnx"))
    assert np.allclose(last["outputs"][1]["data"], mlp.run(None, {"input": IMAGE})[1].reshape(-1), atol=1e-6)


def test_canary_gets_its_share_and_promotion_moves_everyone(tmp_path: Path, demo_repository: Path) -> None:
    root = tmp_path / "models"
    write_model(
        root,
        "digits",
        (demo_repository / "digits_logreg" / "1" / "model.onnx").read_bytes(),
        {"version_policy": {"latest": 2}, "canary": {"version": 2, "percent": 20}},
    )
    write_model(root, "digits", (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes(), version=2)
    gateway = GatewayProcess(root, tmp_path / "gateway.log")
    try:
        gateway.wait_ready()
        before = closed_loop(gateway.port, "/v2/models/digits/infer", BODY, users=4, duration_s=30, max_requests=1000)
        share = sum(json.loads(o.body)["model_version"] == "2" for o in before) / len(before)
        canary_count = gateway.metric("batchgate_requests_total", {"model": "digits", "version": "2", "code": "200"})
        stable_meta = json.loads(gateway.get("/v2/models/digits")[1])
        promoted = json.loads(gateway.get_post("/v2/repository/models/digits/promote"))
        after = closed_loop(gateway.port, "/v2/models/digits/infer", BODY, users=4, duration_s=10, max_requests=200)
    finally:
        gateway.stop()
    print(f"canary share {share:.1%} of {len(before)} requests (configured 20%)")
    assert len(before) == 1000 and {o.status for o in before + after} == {200}
    assert 0.15 <= share <= 0.25  # 20% of 1000: three standard deviations is about 3.8 points
    assert canary_count == sum(json.loads(o.body)["model_version"] == "2" for o in before)  # its own metrics
    assert stable_meta["versions"] == ["1", "2"]
    assert promoted == {"model": "digits", "version": "2"}
    assert all(json.loads(o.body)["model_version"] == "2" for o in after)


def _remote_worker(port: int, root: Path, log: Path) -> subprocess.Popen[bytes]:
    """A worker as the Kubernetes manifests start one: it loads only the newest version by itself."""
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "workers", "--listen", f"127.0.0.1:{port}", "--model-repository", str(root)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_a_worker_that_starts_late_gets_every_served_version(tmp_path: Path, demo_repository: Path) -> None:
    """Versions 1 and 2 are served; remote workers start with only version 2. The gateway loads
    version 1 onto a worker before it takes batches, at start and again after the worker is
    replaced (a restarted pod at the same address)."""
    root = tmp_path / "models"
    v1 = demo_repository / "digits_logreg" / "1" / "model.onnx"
    write_model(root, "digits", v1.read_bytes(), {"version_policy": {"latest": 2}})
    write_model(root, "digits", (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes(), version=2)
    expected = ort.InferenceSession(str(v1)).run(None, {"input": IMAGE})[1]
    port = free_port()
    worker = _remote_worker(port, root, tmp_path / "worker.log")
    config = {"pools": {"default": {"replicas": 0, "endpoints": [f"127.0.0.1:{port}"]}}}
    gateway = GatewayProcess(root, tmp_path / "gateway.log", config=config, replicas=0)
    client = httpclient.InferenceServerClient(gateway.url)
    tensor = httpclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(IMAGE)

    def version_1() -> np.ndarray:
        result = client.infer("digits", [tensor], model_version="1")
        assert result.get_response()["model_version"] == "1"
        answer: np.ndarray = result.as_numpy("probabilities")
        return answer

    ready = {"pool": "default"}
    try:
        gateway.wait_ready()
        np.testing.assert_allclose(version_1(), expected, atol=1e-6)
        worker.terminate()
        worker.wait(10)
        wait_for(lambda: gateway.metric("batchgate_replicas_ready", ready) == 0)
        worker = _remote_worker(port, root, tmp_path / "worker.log")
        wait_for(lambda: gateway.metric("batchgate_replicas_ready", ready) == 1, timeout_s=60)
        np.testing.assert_allclose(version_1(), expected, atol=1e-6)
    finally:
        gateway.stop()
        worker.terminate()
        worker.wait(10)
    assert "loading digits:1 on 127.0.0.1" in (tmp_path / "gateway.log").read_text()
