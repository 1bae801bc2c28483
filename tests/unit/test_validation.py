from __future__ import annotations

import numpy as np
import pytest

from gateway.errors import InvalidInput
from gateway.types import InferRequest, InputTensor, RequestedOutput, Signature
from gateway.validation import check_request
from workers.runtime import TensorSpec

SIGNATURE = Signature(
    inputs=(TensorSpec("ids", "INT64", (-1, -1)), TensorSpec("mask", "INT64", (-1, -1))),
    outputs=(TensorSpec("emb", "FP32", (-1, 8)),),
)


def _tensor(name: str, rows: int, width: int, datatype: str = "INT64") -> InputTensor:
    return InputTensor(name, datatype, (rows, width), np.zeros((rows, width), dtype=np.int64))


def test_shape_key_groups_by_non_batch_dims() -> None:
    request = InferRequest("m", "", [_tensor("mask", 2, 5), _tensor("ids", 2, 5)])
    checked = check_request(request, SIGNATURE, max_batch_size=8)
    assert list(checked.feeds) == ["ids", "mask"]  # model order
    assert checked.rows == 2 and checked.shape_key == ((5,), (5,))
    assert checked.output_names == ("emb",)


@pytest.mark.parametrize(
    ("inputs", "outputs", "fragment"),
    [
        ([_tensor("ids", 2, 5)], None, "missing input 'mask'"),
        ([_tensor("ids", 2, 5), _tensor("mask", 3, 5)], None, "3 rows"),
        ([_tensor("ids", 9, 5), _tensor("mask", 9, 5)], None, "at most 8"),
        ([_tensor("ids", 2, 5), _tensor("mask", 2, 5, "INT32")], None, "datatype INT32"),
        ([_tensor("ids", 2, 5), _tensor("mask", 2, 5), _tensor("ids", 2, 5)], None, "more than once"),
        ([_tensor("ids", 2, 5), _tensor("mask", 2, 5)], [RequestedOutput("nope")], "unknown output"),
    ],
)
def test_mismatches_are_invalid_input(
    inputs: list[InputTensor], outputs: list[RequestedOutput] | None, fragment: str
) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        check_request(InferRequest("m", "", inputs, outputs), SIGNATURE, max_batch_size=8)
