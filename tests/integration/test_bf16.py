"""BF16 tensors end to end: tritonclient's ml_dtypes.bfloat16 arrays over HTTP binary and
gRPC, and JSON numbers rounded to bfloat16, through real workers running a BF16 model."""

from __future__ import annotations

import json
import urllib.error
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.helpers import GatewayProcess

BF16 = ml_dtypes.bfloat16


def _inputs(client: Any, values: np.ndarray) -> list[Any]:
    """``in_BF16`` and ``in_FP32`` for ``client`` (tritonclient.http or tritonclient.grpc)."""
    bf16 = client.InferInput("in_BF16", list(values.shape), "BF16")
    bf16.set_data_from_numpy(values.astype(BF16))
    fp32 = client.InferInput("in_FP32", list(values.shape), "FP32")
    fp32.set_data_from_numpy(values.astype(np.float32))
    return [bf16, fp32]


def test_bf16_round_trips_over_http_and_grpc(gateway: GatewayProcess) -> None:
    values = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32) * 1000
    http = httpclient.InferenceServerClient(gateway.url)
    metadata = http.get_model_metadata("identity_bf16")
    assert {t["name"]: t["datatype"] for t in metadata["inputs"]}["in_BF16"] == "BF16"
    results = [
        http.infer("identity_bf16", _inputs(httpclient, values)),
        grpcclient.InferenceServerClient(gateway.grpc_url).infer("identity_bf16", _inputs(grpcclient, values)),
    ]
    for result in results:
        got = result.as_numpy("out_BF16")
        assert got.dtype == BF16
        np.testing.assert_array_equal(got, values.astype(BF16))
        np.testing.assert_array_equal(result.as_numpy("out_FP32"), values)


def _json_infer(gateway: GatewayProcess, data: list[float]) -> dict[str, object]:
    doc = {
        "inputs": [
            {"name": "in_BF16", "datatype": "BF16", "shape": [1, 3], "data": data},
            {"name": "in_FP32", "datatype": "FP32", "shape": [1, 3], "data": [0.0, 0.0, 0.0]},
        ],
        "outputs": [{"name": "out_BF16"}],
    }
    answer: dict[str, object] = json.loads(gateway.get_post("/v2/models/identity_bf16/infer", json.dumps(doc).encode()))
    return answer


def test_bf16_json_numbers_are_rounded_to_nearest_and_come_back_as_numbers(gateway: GatewayProcess) -> None:
    answer = _json_infer(gateway, [1.0, 1 / 3, -65505.0])
    (output,) = answer["outputs"]  # type: ignore[misc]
    assert output["datatype"] == "BF16"
    # bfloat16 keeps 8 significant bits: 1/3 -> 0.333984375 and -65505 -> -65536 (steps of 256 there).
    np.testing.assert_array_equal(np.float32(output["data"]), np.float32([1.0, 0.333984375, -65536.0]))
    for bad in ([1.0, 2.0, 3.5e38], [1.0, 2.0, None]):
        with pytest.raises(urllib.error.HTTPError) as refused:
            _json_infer(gateway, bad)  # type: ignore[arg-type]
        assert refused.value.code == 400 and "in_BF16" in json.loads(refused.value.read())["error"]
