"""tritonclient.grpc (sync and aio) against a real gateway: every RPC the front serves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.helpers import GatewayProcess


def _digits(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, size=(rows, 64)).astype(np.float32)


@pytest.fixture
def client(gateway: GatewayProcess) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(gateway.grpc_url)


def test_health_metadata_and_config(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits_mlp") and client.is_model_ready("digits_mlp", "1")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "batchgate" and "statistics" in server["extensions"]
    meta = client.get_model_metadata("digits_mlp", as_json=True)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    config = client.get_model_config("digits_mlp", as_json=True)["config"]
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["64"]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "2000"


def test_unknown_model_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    for name, version in (("nope", ""), ("digits_mlp", "7")):
        with pytest.raises(InferenceServerException) as info:
            client.is_model_ready(name, version)
        assert info.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("rows", [1, 16])
def test_infer_equals_http_and_in_process_ort(
    gateway: GatewayProcess, client: grpcclient.InferenceServerClient, serving_repository: Path, rows: int
) -> None:
    batch = _digits(rows, seed=40 + rows)
    tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer("digits_mlp", [tensor], request_id="g-1")
    session = ort.InferenceSession(
        str(serving_repository / "digits_mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    labels, probabilities = session.run(None, {"input": batch})
    np.testing.assert_array_equal(result.as_numpy("label"), labels)
    assert np.allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-5, atol=1e-6)
    response = result.get_response(as_json=True)
    assert response["id"] == "g-1"
    assert response["parameters"]["served_by"]["string_param"] == "digits_mlp:1"

    http = httpclient.InferenceServerClient(gateway.url)
    http_tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    http_tensor.set_data_from_numpy(batch)
    http_result = http.infer("digits_mlp", [http_tensor])
    np.testing.assert_array_equal(http_result.as_numpy("probabilities"), result.as_numpy("probabilities"))


def test_typed_contents_are_accepted(gateway: GatewayProcess, serving_repository: Path) -> None:
    batch = _digits(2, seed=3)
    request = service_pb2.ModelInferRequest(model_name="digits_mlp")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 64])
    tensor.contents.fp32_contents.extend(batch.reshape(-1).tolist())
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    names = [o.name for o in response.outputs]
    probabilities = np.frombuffer(response.raw_output_contents[names.index("probabilities")], dtype=np.float32)
    session = ort.InferenceSession(str(serving_repository / "digits_mlp" / "1" / "model.onnx"))
    assert np.allclose(probabilities.reshape(2, 10), session.run(None, {"input": batch})[1], atol=1e-6)


def test_bad_input_is_invalid_argument(client: grpcclient.InferenceServerClient) -> None:
    tensor = grpcclient.InferInput("input", [1, 64], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 64), dtype=np.float64))
    with pytest.raises(InferenceServerException) as info:
        client.infer("digits_mlp", [tensor])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "datatype FP64" in info.value.message()


def test_statistics_and_repository_index(client: grpcclient.InferenceServerClient) -> None:
    tensor = grpcclient.InferInput("input", [3, 64], "FP32")
    tensor.set_data_from_numpy(_digits(3, seed=8))
    before = client.get_inference_statistics("digits_logreg", as_json=True)["model_stats"][0]
    client.infer("digits_logreg", [tensor])
    after = client.get_inference_statistics("digits_logreg", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 3
    assert int(after["execution_count"]) == int(before.get("execution_count", 0)) + 1
    assert int(after["inference_stats"]["success"]["count"]) >= 1
    assert any(b["batch_size"] == "3" for b in after["batch_stats"])
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "digits_mlp", "version": "1", "state": "READY"}.items() <= next(
        m for m in index if m["name"] == "digits_mlp"
    ).items()


def test_unimplemented_rpcs_answer_unimplemented(client: grpcclient.InferenceServerClient) -> None:
    for call in (client.get_system_shared_memory_status, client.get_cuda_shared_memory_status, client.get_log_settings):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "StatusCode.UNIMPLEMENTED"


def test_aio_client(gateway: GatewayProcess, serving_repository: Path) -> None:
    async def scenario() -> None:
        client = aioclient.InferenceServerClient(gateway.grpc_url)
        try:
            assert await client.is_server_ready()
            assert await client.is_model_ready("digits_mlp")
            meta = await client.get_model_metadata("digits_mlp", as_json=True)
            assert meta["name"] == "digits_mlp"
            stats = await client.get_inference_statistics("digits_mlp", as_json=True)
            assert stats["model_stats"][0]["name"] == "digits_mlp"
            batches = [_digits(rows, seed=rows) for rows in (1, 16)]
            results = []
            for batch in batches:
                tensor = aioclient.InferInput("input", list(batch.shape), "FP32")
                tensor.set_data_from_numpy(batch)
                results.append(await client.infer("digits_mlp", [tensor]))
        finally:
            await client.close()
        session = ort.InferenceSession(str(serving_repository / "digits_mlp" / "1" / "model.onnx"))
        for batch, result in zip(batches, results, strict=True):
            np.testing.assert_array_equal(result.as_numpy("label"), session.run(None, {"input": batch})[0])

    asyncio.run(scenario())
