"""tritonclient.http against a real gateway with real worker processes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from tests.helpers import IDENTITY_TYPES, GatewayProcess, identity_arrays, wait_for


def _digits(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, size=(rows, 64)).astype(np.float32)


def _reference(repository: Path, model: str, batch: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    result: list[np.ndarray] = session.run(["label", "probabilities"], {"input": batch})
    return result


@pytest.fixture
def client(gateway: GatewayProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(gateway.url, concurrency=4)


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits_mlp")
    assert client.is_model_ready("digits_mlp", "1")
    assert not client.is_model_ready("no_such_model")
    server = client.get_server_metadata()
    assert server["name"] == "batchgate" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("digits_mlp")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert client.get_model_metadata("digits_mlp", "1")["versions"] == ["1"]


@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("with_version", [False, True])
def test_infer_matches_in_process_ort(
    client: httpclient.InferenceServerClient, serving_repository: Path, rows: int, binary: bool, with_version: bool
) -> None:
    batch = _digits(rows, seed=rows)
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    result = client.infer(
        "digits_mlp", [tensor], model_version="1" if with_version else "", outputs=outputs, request_id="req-7"
    )
    labels, probabilities = _reference(serving_repository, "digits_mlp", batch)
    np.testing.assert_array_equal(result.as_numpy("label"), labels)
    assert np.allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["parameters"]["served_by"] == "digits_mlp:1"


def test_default_outputs_are_binary_and_complete(
    client: httpclient.InferenceServerClient, serving_repository: Path
) -> None:
    batch = _digits(3, seed=99)
    tensor = httpclient.InferInput("input", [3, 64], "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer("digits_logreg", [tensor])
    labels, probabilities = _reference(serving_repository, "digits_logreg", batch)
    np.testing.assert_array_equal(result.as_numpy("label"), labels)
    assert np.allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-5, atol=1e-6)
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])


def _identity_inputs(binary: bool, rows: int = 2) -> tuple[list[httpclient.InferInput], dict[str, np.ndarray]]:
    arrays = identity_arrays(rows, seed=5)
    inputs = []
    for datatype, array in arrays.items():
        tensor = httpclient.InferInput(f"in_{datatype}", [rows, 3], datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs, arrays


@pytest.mark.parametrize("binary", [False, True])
def test_every_datatype_round_trips(client: httpclient.InferenceServerClient, binary: bool) -> None:
    inputs, arrays = _identity_inputs(binary)
    outputs = [httpclient.InferRequestedOutput(f"out_{t}", binary_data=binary) for t in IDENTITY_TYPES]
    result = client.infer("identity", inputs, outputs=outputs)
    for datatype, sent in arrays.items():
        got = result.as_numpy(f"out_{datatype}")
        if datatype == "BYTES":
            assert [b.decode() if isinstance(b, bytes) else b for b in got.reshape(-1)] == list(sent.reshape(-1))
        else:
            assert got.dtype == sent.dtype, datatype
            np.testing.assert_array_equal(got, sent)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_responses(
    client: httpclient.InferenceServerClient, serving_repository: Path, algorithm: str
) -> None:
    batch = _digits(4, seed=11)
    tensor = httpclient.InferInput("input", [4, 64], "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer(
        "digits_mlp", [tensor], request_compression_algorithm=algorithm, response_compression_algorithm=algorithm
    )
    labels, _ = _reference(serving_repository, "digits_mlp", batch)
    np.testing.assert_array_equal(result.as_numpy("label"), labels)


def test_the_gateway_times_its_own_event_loop(gateway: GatewayProcess) -> None:
    """batchgate_event_loop_lag_seconds gains a sample every metrics.loop_lag_interval_ms (50 ms)."""
    first = gateway.metric("batchgate_event_loop_lag_seconds_count")
    assert first >= 1  # the probe started with the gateway, well before it was ready
    wait_for(lambda: gateway.metric("batchgate_event_loop_lag_seconds_count") > first)
    assert gateway.metric("batchgate_event_loop_lag_seconds_bucket", {"le": "+Inf"}) > first


def test_concurrent_clients_get_their_own_rows_and_batches_form(
    gateway: GatewayProcess, serving_repository: Path
) -> None:
    """64 clients with distinct inputs, several requests each: every answer is its own."""
    before = gateway.metric("batchgate_batch_size_count", {"model": "digits_mlp"})
    before_rows = gateway.metric("batchgate_batch_size_sum", {"model": "digits_mlp"})
    clients = 64
    rounds = 8
    batches = {i: _digits(1 + i % 3, seed=1000 + i) for i in range(clients)}
    everything = np.concatenate(list(batches.values()))
    expected_labels, expected_probs = _reference(serving_repository, "digits_mlp", everything)
    offsets = np.cumsum([0] + [len(b) for b in batches.values()])

    def one_client(index: int) -> int:
        client = httpclient.InferenceServerClient(gateway.url)
        batch = batches[index]
        tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=index % 2 == 0)
        wrong = 0
        for _ in range(rounds):
            result = client.infer("digits_mlp", [tensor])
            start, end = offsets[index], offsets[index + 1]
            if not (
                np.array_equal(result.as_numpy("label"), expected_labels[start:end])
                and np.allclose(result.as_numpy("probabilities"), expected_probs[start:end], atol=1e-6)
            ):
                wrong += 1
        client.close()
        return wrong

    with ThreadPoolExecutor(clients) as executor:
        wrong = sum(executor.map(one_client, range(clients)))
    assert wrong == 0
    batches_sent = gateway.metric("batchgate_batch_size_count", {"model": "digits_mlp"}) - before
    rows_sent = gateway.metric("batchgate_batch_size_sum", {"model": "digits_mlp"}) - before_rows
    assert rows_sent == sum(len(b) for b in batches.values()) * rounds
    # Batching happened: fewer batches than requests, i.e. some batches held several requests.
    assert batches_sent < clients * rounds
    assert gateway.metric("batchgate_batch_size_bucket", {"model": "digits_mlp", "le": "2.0"}) < gateway.metric(
        "batchgate_batch_size_count", {"model": "digits_mlp"}
    )
