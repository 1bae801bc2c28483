"""A pool with ``isolation: thread``: its replicas run in the gateway's own process, and
clients, versions, faults and metrics see the same gateway as with worker processes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.helpers import IDENTITY_TYPES, GatewayProcess, child_pids, identity_arrays, identity_model, write_model

THREAD_POOL = {"pools": {"default": {"isolation": "thread", "fault": {"models": ["digits_mlp"], "error_ratio": 1.0}}}}


@pytest.fixture(scope="module")
def in_process(
    tmp_path_factory: pytest.TempPathFactory, demo_repository: Path
) -> Iterator[tuple[GatewayProcess, Path]]:
    """Two in-process replicas over a repository the tests may change. ``digits_mlp`` fails
    every batch (injected fault), so its fallback ``digits_logreg`` answers for it."""
    root = tmp_path_factory.mktemp("inprocess") / "models"
    for name in ("digits_mlp", "digits_logreg"):
        shutil.copytree(demo_repository / name, root / name)
    write_model(root, "identity", identity_model(), {"batching": {"max_batch_size": 16}})
    write_model(root, "single", identity_model(["FP32"]))  # the one whose versions change
    gateway = GatewayProcess(root, tmp_path_factory.mktemp("logs") / "gateway.log", config=THREAD_POOL)
    try:
        gateway.wait_ready()
        yield gateway, root
    finally:
        gateway.stop()


def test_no_worker_process_is_started(in_process: tuple[GatewayProcess, Path]) -> None:
    gateway, _root = in_process
    assert child_pids(gateway.process.pid) == []
    assert gateway.metric("batchgate_replicas", {"pool": "default"}) == 2
    assert "started in-process replica 1" in gateway.log()


@pytest.mark.parametrize("transport", ["json", "binary", "grpc"])
def test_every_datatype_round_trips(in_process: tuple[GatewayProcess, Path], transport: str) -> None:
    gateway, _root = in_process
    arrays = identity_arrays(3, seed=11, encoded=True)
    if transport == "grpc":
        tensors = [grpcclient.InferInput(f"in_{t}", list(a.shape), t) for t, a in arrays.items()]
        for tensor, array in zip(tensors, arrays.values(), strict=True):
            tensor.set_data_from_numpy(array)
        result = grpcclient.InferenceServerClient(gateway.grpc_url).infer("identity", tensors)
    else:
        binary = transport == "binary"
        inputs = [httpclient.InferInput(f"in_{t}", list(a.shape), t) for t, a in arrays.items()]
        for tensor, array in zip(inputs, arrays.values(), strict=True):
            tensor.set_data_from_numpy(array, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(f"out_{t}", binary_data=binary) for t in IDENTITY_TYPES]
        result = httpclient.InferenceServerClient(gateway.url).infer("identity", inputs, outputs=outputs)
    for datatype, sent in arrays.items():
        got = result.as_numpy(f"out_{datatype}")
        if datatype == "BYTES":  # JSON gives str back, binary and gRPC give bytes
            assert [g if isinstance(g, bytes) else g.encode() for g in got.reshape(-1)] == list(sent.reshape(-1))
        else:
            assert got.dtype == sent.dtype, datatype
            np.testing.assert_array_equal(got, sent)


def test_answers_match_onnx_runtime_and_a_failing_model_falls_back(
    in_process: tuple[GatewayProcess, Path],
) -> None:
    gateway, root = in_process
    client = httpclient.InferenceServerClient(gateway.url)
    batch = np.random.default_rng(4).uniform(0, 16, (5, 64)).astype(np.float32)
    tensor = httpclient.InferInput("input", [5, 64], "FP32")
    tensor.set_data_from_numpy(batch)
    path = root / "digits_logreg" / "1" / "model.onnx"
    labels, probabilities = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["label", "probabilities"], {"input": batch}
    )
    direct = client.infer("digits_logreg", [tensor])
    np.testing.assert_array_equal(direct.as_numpy("label"), labels)
    assert np.allclose(direct.as_numpy("probabilities"), probabilities, rtol=1e-5, atol=1e-6)
    # The injected fault reached the in-process run: the primary failed, its fallback answered.
    fallen = client.infer("digits_mlp", [tensor])
    assert fallen.get_response()["parameters"]["served_by"] == "digits_logreg:1"
    assert fallen.get_response()["parameters"]["fallback_reason"] == "error"
    np.testing.assert_array_equal(fallen.as_numpy("label"), labels)
    assert gateway.metric("batchgate_fallback_total", {"model": "digits_mlp", "reason": "error"}) >= 1


def test_a_new_version_loads_into_the_running_replicas(in_process: tuple[GatewayProcess, Path]) -> None:
    gateway, root = in_process
    client = httpclient.InferenceServerClient(gateway.url)
    write_model(root, "single", identity_model(["FP32"]), version=2)
    client.load_model("single")
    tensor = httpclient.InferInput("in_FP32", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.arange(3, dtype=np.float32).reshape(1, 3))
    result = client.infer("single", [tensor])
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_array_equal(result.as_numpy("out_FP32"), [[0.0, 1.0, 2.0]])
    (root / "single" / "3").mkdir()
    (root / "single" / "3" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(InferenceServerException) as info:
        client.load_model("single")
    assert info.value.status() == "400" and "cannot load single:3" in info.value.message()
    assert client.infer("single", [tensor]).get_response()["model_version"] == "2"
