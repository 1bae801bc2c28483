"""Statistics, config and repository endpoints through tritonclient, and load/unload at run time."""

from __future__ import annotations

import json
import shutil
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.helpers import GatewayProcess, identity_model, write_model


def test_http_statistics_config_and_index(gateway: GatewayProcess) -> None:
    client = httpclient.InferenceServerClient(gateway.url)
    tensor = httpclient.InferInput("input", [2, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 64), dtype=np.float32))
    client.infer("digits_mlp", [tensor])
    stats = client.get_inference_statistics("digits_mlp")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("digits_mlp", "1")]
    entry = stats[0]
    assert entry["inference_count"] >= 2 and entry["execution_count"] >= 1
    for phase in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert set(entry["inference_stats"][phase]) == {"count", "ns"}
    assert entry["inference_stats"]["compute_infer"]["ns"] > 0
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} >= {"digits_mlp", "digits_logreg", "identity"}
    config = client.get_model_config("identity")
    assert config["max_batch_size"] == 16
    assert {"name": "in_BYTES", "data_type": "TYPE_STRING", "dims": [3]} in config["input"]
    assert client.get_model_config("digits_mlp", "1")["name"] == "digits_mlp"
    index = client.get_model_repository_index()
    assert {(m["name"], m["state"]) for m in index} >= {("digits_mlp", "READY"), ("identity", "READY")}
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("nope")
    assert info.value.status() == "404"


@pytest.fixture
def own_gateway(tmp_path: Path, demo_repository: Path) -> Iterator[tuple[GatewayProcess, Path]]:
    """A gateway over its own copy of a repository, free to be changed by the test."""
    root = tmp_path / "models"
    shutil.copytree(demo_repository / "digits_logreg", root / "digits_logreg")
    write_model(root, "identity", identity_model(["FP32"]), {"batching": {"max_batch_size": 8}})
    process = GatewayProcess(root, tmp_path / "gateway.log")
    try:
        process.wait_ready()
        yield process, root
    finally:
        process.stop()


def _identity(client: httpclient.InferenceServerClient) -> dict[str, object]:
    tensor = httpclient.InferInput("in_FP32", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
    response: dict[str, object] = client.infer("identity", [tensor]).get_response()
    return response


def test_unload_then_load_over_http_and_grpc(own_gateway: tuple[GatewayProcess, Path]) -> None:
    gateway, _root = own_gateway
    client = httpclient.InferenceServerClient(gateway.url)
    client.unload_model("identity")
    with pytest.raises(InferenceServerException) as info:
        _identity(client)
    assert info.value.status() == "404"
    entry = next(m for m in client.get_model_repository_index() if m["name"] == "identity")
    assert entry["state"] == "UNAVAILABLE" and entry["reason"] == "unloaded"
    assert client.is_server_ready()  # other models keep the gateway ready

    grpc_client = grpcclient.InferenceServerClient(gateway.grpc_url)
    grpc_client.load_model("identity")
    assert client.is_model_ready("identity")
    assert _identity(client)["model_version"] == "1"


def test_new_version_swaps_in_and_a_corrupt_one_is_refused(own_gateway: tuple[GatewayProcess, Path]) -> None:
    gateway, root = own_gateway
    client = httpclient.InferenceServerClient(gateway.url)
    write_model(root, "identity", identity_model(["FP32"]), version=2)
    client.load_model("identity")
    assert _identity(client)["model_version"] == "2"
    assert [m["version"] for m in client.get_model_repository_index() if m["name"] == "identity"] == ["2"]

    (root / "identity" / "3").mkdir()
    (root / "identity" / "3" / "model.onnx").write_bytes(b"this is not an onnx file")
    with pytest.raises(InferenceServerException) as info:
        client.load_model("identity")
    assert info.value.status() == "400" and "cannot load identity:3" in info.value.message()
    assert _identity(client)["model_version"] == "2"  # still serving
    with pytest.raises(InferenceServerException) as info:
        client.load_model("no_such_model")
    assert info.value.status() == "404"


def test_a_config_override_or_files_sent_with_a_load_are_refused_not_ignored(gateway: GatewayProcess) -> None:
    """tritonclient can attach a config and model files to a load; batchgate loads only
    from the repository, so it must say so instead of answering 200 as if it had used them."""
    client = httpclient.InferenceServerClient(gateway.url)
    with pytest.raises(InferenceServerException) as info:
        client.load_model("identity", config='{"max_batch_size": 4}')
    assert info.value.status() == "400" and "config" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.load_model("identity", config="{}", files={"file:1/model.onnx": b"not a model"})
    assert info.value.status() == "400" and "file:1/model.onnx" in info.value.message()
    grpc_client = grpcclient.InferenceServerClient(gateway.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        grpc_client.load_model("identity", config='{"max_batch_size": 4}')
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "config" in info.value.message()
    for body in (b"{", b"[]"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            gateway.get_post("/v2/repository/models/identity/load", body)
        assert refused.value.code == 400 and "error" in json.loads(refused.value.read())
    assert client.get_model_config("identity")["max_batch_size"] == 16  # nothing was applied
    assert client.is_model_ready("identity")
