"""Every kind of bad input gets its status code and a v2 error body from a real gateway."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.helpers import GatewayProcess, write_model


def _post(
    gateway: GatewayProcess, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        payload = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(payload)
    finally:
        connection.close()


def _doc(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


GOOD = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}
INFER = "/v2/models/digits_mlp/infer"

CASES = [
    ("unknown model", "/v2/models/nope/infer", _doc([GOOD]), {}, 404, "nope"),
    ("unknown version", "/v2/models/digits_mlp/versions/9/infer", _doc([GOOD]), {}, 404, "version '9'"),
    ("unknown input", INFER, _doc([{**GOOD, "name": "pixels"}]), {}, 400, "pixels"),
    (
        "missing input",
        "/v2/models/identity/infer",
        _doc([{"name": "in_FP32", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]),
        {},
        400,
        "missing input",
    ),
    ("wrong datatype", INFER, _doc([{**GOOD, "datatype": "FP64"}]), {}, 400, "datatype FP64"),
    ("wrong shape", INFER, _doc([{**GOOD, "shape": [1, 63], "data": [0.5] * 63}]), {}, 400, "shape [1, 63]"),
    ("wrong data length", INFER, _doc([{**GOOD, "data": [0.5] * 60}]), {}, 400, "60 elements"),
    ("non-numeric data", INFER, _doc([{**GOOD, "data": ["x"] * 64}]), {}, 400, "input 'input'"),
    ("malformed JSON", INFER, b'{"inputs": [', {}, 400, "not valid JSON"),
    ("not an object", INFER, b"[1, 2]", {}, 400, "JSON object"),
    ("no inputs", INFER, b'{"inputs": []}', {}, 400, "non-empty 'inputs'"),
    ("unsupported datatype", INFER, _doc([{**GOOD, "datatype": "FP8"}]), {}, 400, "FP8"),
    ("datatype the model lacks", INFER, _doc([{**GOOD, "datatype": "BF16"}]), {}, 400, "datatype BF16"),
    ("too many rows", INFER, _doc([{**GOOD, "shape": [65, 64], "data": [0.5] * 64 * 65}]), {}, 400, "at most 64"),
    ("unknown output", INFER, _doc([GOOD], outputs=[{"name": "logits"}]), {}, 400, "logits"),
    ("negative timeout", INFER, _doc([GOOD], parameters={"timeout": -1}), {}, 400, "timeout"),
    (
        "binary header past body",
        INFER,
        _doc([GOOD]),
        {"Inference-Header-Content-Length": "99999"},
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "binary header not a number",
        INFER,
        _doc([GOOD]),
        {"Inference-Header-Content-Length": "ten"},
        400,
        "not a number",
    ),
    (
        "binary size past the data",
        INFER,
        _doc([{"name": "input", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 256}}]),
        {},
        400,
        "past the end",
    ),
    ("bad gzip", INFER, b"not gzip", {"Content-Encoding": "gzip"}, 400, "gzip"),
    ("unknown coding", INFER, _doc([GOOD]), {"Content-Encoding": "br"}, 400, "Content-Encoding"),
    ("bad timeout header", INFER, _doc([GOOD]), {"x-batchgate-timeout-ms": "soon"}, 400, "x-batchgate-timeout-ms"),
]


@pytest.mark.parametrize(("case", "path", "body", "headers", "status", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_status_and_v2_error(
    gateway: GatewayProcess, case: str, path: str, body: bytes, headers: dict[str, str], status: int, fragment: str
) -> None:
    got, _headers, doc = _post(gateway, path, body, headers)
    assert got == status, doc
    assert set(doc) == {"error"} and fragment in doc["error"]


def test_binary_size_mismatch_names_the_input(gateway: GatewayProcess) -> None:
    header = _doc([{"name": "input", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 8}}])
    status, _, doc = _post(gateway, INFER, header + b"\0" * 8, {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "input 'input'" in doc["error"] and "256" in doc["error"]


def test_trailing_binary_data_is_rejected(gateway: GatewayProcess) -> None:
    header = _doc([GOOD])
    status, _, doc = _post(gateway, INFER, header + b"extra", {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "5 bytes" in doc["error"]


def test_body_over_limit_is_413(gateway: GatewayProcess) -> None:
    status, _, doc = _post(gateway, INFER, b" " * (64 * 1024 * 1024 + 1))
    assert status == 413 and "limit" in doc["error"]


def test_unknown_path_and_method(gateway: GatewayProcess) -> None:
    status, body = gateway.get("/v2/nothing")
    assert status == 404 and "error" in json.loads(body)
    status, body = gateway.get(INFER)
    assert status == 405 and "error" in json.loads(body)
    status, body = gateway.get("/v2/models/nope")
    assert status == 404 and "nope" in json.loads(body)["error"]


def test_tritonclient_raises_with_server_message(gateway: GatewayProcess) -> None:
    client = httpclient.InferenceServerClient(gateway.url)
    tensor = httpclient.InferInput("input", [1, 64], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 64), dtype=np.float64))
    with pytest.raises(InferenceServerException) as info:
        client.infer("digits_mlp", [tensor])
    assert info.value.status() == "400" and "datatype FP64" in info.value.message()


@pytest.fixture(scope="module")
def tiny_queue_gateway(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path):  # type: ignore[no-untyped-def]
    """One worker, one batch in flight, room for two queued requests: easy to overflow."""
    root = tmp_path_factory.mktemp("tinyqueue") / "models"
    write_model(
        root,
        "mlp",
        (demo_repository / "mlp" / "1" / "model.onnx").read_bytes(),
        {"batching": {"max_batch_size": 64, "max_queue_size": 2, "shed_over_slo": False}},  # only the queue bound
    )
    log = tmp_path_factory.mktemp("logs") / "tiny.log"
    process = GatewayProcess(
        root, log, config={"pools": {"default": {"replicas": 1, "inflight_per_replica": 1}}}, replicas=1
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_full_queue_answers_429_with_retry_after(tiny_queue_gateway: GatewayProcess) -> None:
    body = _doc([{"name": "input", "datatype": "FP32", "shape": [64, 512], "data": [0.1] * 64 * 512}])
    results: list[tuple[int, dict[str, str], Any]] = []
    lock = threading.Lock()

    def send() -> None:
        outcome = _post(tiny_queue_gateway, "/v2/models/mlp/infer", body)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=send) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    statuses = sorted(status for status, _, _ in results)
    assert len(results) == 24 and set(statuses) <= {200, 429}
    assert statuses.count(429) > 0 and statuses.count(200) >= 3
    for status, headers, doc in results:
        if status == 429:
            assert int(headers["retry-after"]) >= 1 and "queue is full" in doc["error"]
