"""Input drift (PSI against the profile) and shadow agreement, on real gateways and workers."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from gateway.demo import digits_split
from tests.helpers import GatewayProcess, write_model


@pytest.fixture(scope="module")
def health_gateway(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("health") / "models"
    mlp = (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes()
    drift = {"sample_ratio": 1.0, "window_s": 120}
    write_model(
        root,
        "digits_ref",
        mlp,
        {"drift": drift, "shadow": {"model": "digits_logreg", "ratio": 1.0}, "slo": {"p99_ms": 5000}},
    )
    write_model(root, "digits_shift", mlp, {"drift": drift, "slo": {"p99_ms": 5000}})
    for name in ("digits_ref", "digits_shift"):
        shutil.copy(demo_repository / "digits_mlp" / "profile.json", root / name / "profile.json")
    write_model(
        root,
        "digits_logreg",
        (demo_repository / "digits_logreg" / "1" / "model.onnx").read_bytes(),
        {"slo": {"p99_ms": 5000}},
    )
    process = GatewayProcess(root, tmp_path_factory.mktemp("logs") / "health.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _send(gateway: GatewayProcess, model: str, rows: np.ndarray) -> None:
    client = httpclient.InferenceServerClient(gateway.url)
    for start in range(0, len(rows), 10):
        batch = rows[start : start + 10].astype(np.float32)
        tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        client.infer(model, [tensor])


def _stats(gateway: GatewayProcess, model: str, key: str, ready: Any, timeout_s: float = 20) -> dict[str, Any]:
    """Poll the model's statistics until ``ready(entry[key])`` holds (the health tick is 2 s)."""
    client = httpclient.InferenceServerClient(gateway.url)
    deadline = time.monotonic() + timeout_s
    while True:
        entry: dict[str, Any] = client.get_inference_statistics(model)["model_stats"][0]
        if ready(entry.get(key)):
            return entry
        assert time.monotonic() < deadline, entry.get(key)
        time.sleep(0.2)


def test_reference_inputs_keep_psi_low_and_shifted_ones_raise_it(health_gateway: GatewayProcess) -> None:
    held_out = digits_split()[1]
    _send(health_gateway, "digits_ref", held_out)
    _send(health_gateway, "digits_shift", 16.0 - held_out)  # inverted intensity
    reference = _stats(health_gateway, "digits_ref", "drift", lambda d: d and d["rows"] == len(held_out))["drift"]
    shifted = _stats(health_gateway, "digits_shift", "drift", lambda d: d and d["rows"] == len(held_out))["drift"]
    print(
        f"PSI overall: reference {reference['psi_overall']:.3f}, inverted {shifted['psi_overall']:.3f}; "
        f"worst inverted feature {shifted['top_features'][0]}"
    )
    assert reference["psi_overall"] < 0.1
    assert all(f["psi"] < 0.25 for f in reference["top_features"])
    assert shifted["psi_overall"] > 0.25
    assert all(f["psi"] > 0.25 for f in shifted["top_features"])
    exported = health_gateway.metric("batchgate_input_drift_psi", {"model": "digits_shift", "feature": "overall"})
    assert abs(exported - shifted["psi_overall"]) < 1e-6
    top = shifted["top_features"][0]["feature"]
    assert health_gateway.metric("batchgate_input_drift_psi", {"model": "digits_shift", "feature": top}) > 0.25
    # Output health: the share of each predicted class over the window (all 450 answers sampled).
    outputs = _stats(health_gateway, "digits_ref", "outputs", lambda o: o and o["answers"] >= len(held_out))["outputs"]
    assert abs(sum(outputs["class_ratio"].values()) - 1) < 1e-9 and len(outputs["class_ratio"]) == 10


def test_shadow_agreement_matches_the_held_out_agreement(health_gateway: GatewayProcess, demo_repository: Path) -> None:
    held_out = digits_split()[1].astype(np.float32)
    primary = ort.InferenceSession(str(demo_repository / "digits_mlp" / "1" / "model.onnx"))
    shadow = ort.InferenceSession(str(demo_repository / "digits_logreg" / "1" / "model.onnx"))
    offline = float(np.mean(primary.run(None, {"input": held_out})[0] == shadow.run(None, {"input": held_out})[0]))
    before = _stats(health_gateway, "digits_ref", "shadow", lambda s: s is not None)["shadow"]["compared"]
    _send(health_gateway, "digits_ref", held_out)  # every request mirrored (ratio 1.0)
    entry = _stats(health_gateway, "digits_ref", "shadow", lambda s: s and s["compared"] >= before + len(held_out))
    live = entry["shadow"]["agreement_ratio"]
    print(f"shadow agreement: live {live:.4f} over {entry['shadow']['compared']} rows, held-out {offline:.4f}")
    assert abs(live - offline) < 0.01
    labels = {"model": "digits_ref", "shadow": "digits_logreg"}
    deadline = time.monotonic() + 10  # the gauge is refreshed every health tick (2 s)
    while abs(health_gateway.metric("batchgate_shadow_agreement_ratio", labels) - live) >= 0.01:
        assert time.monotonic() < deadline, "the agreement gauge never showed the live ratio"
        time.sleep(0.2)
