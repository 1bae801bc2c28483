"""The gRPC codec's own checks (the rest is exercised through tritonclient.grpc in integration tests)."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from gateway.codec import DecodeLimits
from gateway.codec.v2grpc import decode_request
from gateway.errors import InvalidInput, PayloadTooLarge


def _request(shape: list[int], raw: bytes) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=shape)
    request.raw_input_contents.append(raw)
    return request


def test_declared_elements_over_the_limit_are_refused_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        decode_request(_request([10**9, 64], b"\0" * 4))
    assert "elements" in info.value.message
    ok = np.arange(8, dtype=np.float32)
    decoded = decode_request(_request([2, 4], ok.tobytes()), DecodeLimits(max_elements=8))
    np.testing.assert_array_equal(decoded.inputs[0].data, ok.reshape(2, 4))
    with pytest.raises(PayloadTooLarge):
        decode_request(_request([2, 4], ok.tobytes()), DecodeLimits(max_elements=7))


def test_negative_dimensions_are_400() -> None:
    with pytest.raises(InvalidInput, match="negative"):
        decode_request(_request([-1, 4], b""))


def test_contents_and_raw_contents_together_are_400() -> None:
    request = _request([1, 2], np.zeros(2, dtype=np.float32).tobytes())
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(InvalidInput, match="both contents and raw_input_contents"):
        decode_request(request)
