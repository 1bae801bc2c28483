from __future__ import annotations

import json

import numpy as np
import pytest

from gateway.codec.v2http import decode_request, encode_response, json_to_array
from gateway.errors import InvalidInput
from gateway.types import InferRequest, InferResponse, OutputTensor, RequestedOutput
from workers.dtypes import serialize_bytes


def test_json_data_flat_or_nested() -> None:
    flat = json_to_array("x", "INT32", (2, 2), [1, 2, 3, 4])
    nested = json_to_array("x", "INT32", (2, 2), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(flat, nested)
    assert flat.dtype == np.int32


def test_integer_tensors_take_whole_numbers_written_as_floats() -> None:
    array = json_to_array("x", "INT32", (3,), [3.0, -2147483648.0, 2147483647.0])
    assert array.tolist() == [3, -2147483648, 2147483647]
    assert array.dtype == np.int32
    # numpy reads this mix as float64; the values must not be rounded through it
    big = json_to_array("x", "UINT64", (2,), [18431546079168739472, 1])
    assert big.tolist() == [18431546079168739472, 1]


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64", "BF16"])
def test_float_tensors_take_any_json_numbers(datatype: str) -> None:
    array = json_to_array("x", datatype, (3,), [1, 2.5, -4])
    assert array.tolist() == [1.0, 2.5, -4.0]
    assert array.dtype.itemsize == {"FP16": 2, "FP32": 4, "FP64": 8, "BF16": 2}[datatype]


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("UINT8", [300], "UINT8"),
        ("FP32", [[1, 2], [3]], "FP32"),
        ("BYTES", [1], "strings"),
        ("INT8", [1, 2], "elements"),
        ("FP32", [None], "not strings or nulls"),
        ("FP32", ["1.5"], "not strings or nulls"),  # numpy alone would read it as 1.5
        ("FP32", [1.0, "2"], "not strings or nulls"),
        ("INT64", ["3"], "not strings or nulls"),
        ("INT32", [1.5], "whole numbers"),  # numpy alone would cut it to 1
        ("INT64", [2, 2.5], "whole numbers"),
        ("UINT8", [-1.0], "out of bounds"),
        ("INT32", [2147483648.0], "out of bounds"),
        ("INT32", [True], "true or false"),
        ("FP32", [False], "true or false"),
        ("FP32", [1e39], "range"),
        ("FP16", [70000.0], "range"),
        ("INT32", [None], "INT32"),
        ("BOOL", [None], "true or false"),
        ("BOOL", [2], "true or false"),
        ("BF16", [3.5e38], "range"),
        ("BF16", [None], "BF16"),
    ],
)
def test_json_data_errors_name_the_input(datatype: str, data: object, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment) as info:
        json_to_array("pixels", datatype, (1,), data)
    assert "pixels" in str(info.value)


def test_binary_inputs_are_views_over_the_body() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    words = np.array([b"ab", b""], dtype=object)
    header = json.dumps(
        {
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
                {"name": "w", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 10}},
            ],
            "parameters": {"binary_data_output": True, "priority": 2, "timeout": 5000, "custom": 1},
            "id": "7",
        }
    ).encode()
    body = header + values.tobytes() + serialize_bytes(words)
    request = decode_request("m", "", body, len(header))
    np.testing.assert_array_equal(request.inputs[0].data, values)
    assert not request.inputs[0].data.flags.owndata  # a view, not a copy
    assert list(request.inputs[1].data) == [b"ab", b""]
    assert (request.binary_output, request.priority, request.timeout_us, request.id) == (True, 2, 5000, "7")
    assert request.parameters == {"custom": 1}


def test_classification_extension_is_refused() -> None:
    body = json.dumps(
        {
            "inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}],
            "outputs": [{"name": "y", "parameters": {"classification": 3}}],
        }
    ).encode()
    with pytest.raises(InvalidInput, match="classification"):
        decode_request("m", "", body, None)


def _request(**kwargs: object) -> InferRequest:
    return InferRequest("m", "1", [], **kwargs)  # type: ignore[arg-type]


def test_encode_json_and_binary_outputs_per_output() -> None:
    response = InferResponse(
        "m",
        "1",
        [
            OutputTensor("y", "FP32", np.array([[1.5, 2.5]], dtype=np.float32)),
            OutputTensor("s", "BYTES", np.array([b"hi"], dtype=object)),
        ],
        id="9",
        parameters={"served_by": "m:1"},
    )
    body, length = encode_response(response, _request(outputs=[RequestedOutput("y", True), RequestedOutput("s")]))
    assert length is not None
    doc = json.loads(body[:length])
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert doc["outputs"][1]["data"] == ["hi"]
    assert np.frombuffer(body[length:], dtype=np.float32).tolist() == [1.5, 2.5]
    assert doc["id"] == "9" and doc["parameters"]["served_by"] == "m:1"

    body, length = encode_response(response, _request())
    assert length is None and json.loads(body)["outputs"][0]["data"] == [1.5, 2.5]


def test_declared_elements_over_the_limit_are_413_before_any_tensor_is_built() -> None:
    from gateway.codec import DecodeLimits
    from gateway.errors import PayloadTooLarge

    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1000, 1000, 1000], "data": [1.0]}]}
    with pytest.raises(PayloadTooLarge) as info:
        decode_request("m", "", json.dumps(doc).encode(), None)
    assert info.value.http_status == 413 and "x" in info.value.message
    two = {"inputs": [{"name": n, "datatype": "FP32", "shape": [1, 6], "data": [0.0] * 6} for n in ("a", "b")]}
    decode_request("m", "", json.dumps(two).encode(), None, DecodeLimits(max_elements=12))
    with pytest.raises(PayloadTooLarge):  # the limit is per request, over all inputs
        decode_request("m", "", json.dumps(two).encode(), None, DecodeLimits(max_elements=11))


def test_data_nested_deeper_than_the_limit_is_400() -> None:
    from gateway.codec import DecodeLimits

    nested: object = [1.0]
    for _ in range(9):
        nested = [nested]
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1] * 10, "data": nested}]}
    decode_request("m", "", json.dumps(doc).encode(), None, DecodeLimits(max_depth=10))
    with pytest.raises(InvalidInput) as info:
        decode_request("m", "", json.dumps(doc).encode(), None, DecodeLimits(max_depth=9))
    assert "nested more than 9 levels" in info.value.message
    with pytest.raises(InvalidInput) as info:  # past the parser's own limit: still a 400, never a crash
        decode_request("m", "", b'{"inputs": [{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}]}", None)
    assert "not valid JSON" in info.value.message


def test_json_bf16_rounds_to_the_nearest_bfloat16() -> None:
    import ml_dtypes

    array = json_to_array("x", "BF16", (3,), [1.0, 1 / 3, 1.00390625])  # the last is a tie: to even, 1.0
    assert array.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(array.astype(np.float32), np.float32([1.0, 0.333984375, 1.0]))


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "BF16", "BOOL", "INT64", "UINT8"])
def test_large_binary_outputs_are_the_raw_bytes_whatever_their_layout(datatype: str) -> None:
    """Outputs of 64 KB or more go into the body from a view, not ``tobytes``: the same bytes,
    C order, for strided and Fortran-ordered arrays too."""
    from workers.dtypes import V2_TO_NUMPY
    from workers.v2grpc import array_to_raw

    rng = np.random.default_rng(7)
    whole = (rng.random((400, 400)) * 100).astype(V2_TO_NUMPY[datatype])
    arrays = [whole, whole[::2], np.asfortranarray(whole)]
    outputs = [OutputTensor(f"y{i}", datatype, array) for i, array in enumerate(arrays)]
    request = InferRequest("m", "1", [], binary_output=True)
    body, header_length = encode_response(InferResponse("m", "1", outputs), request)
    assert header_length is not None
    sizes = [o["parameters"]["binary_data_size"] for o in json.loads(body[:header_length])["outputs"]]
    assert sizes == [array.nbytes for array in arrays] and min(sizes) >= 64 * 1024
    assert body[header_length:] == b"".join(array_to_raw(array) for array in arrays)
