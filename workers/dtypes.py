"""Datatype tables shared by the gateway and the workers.

The v2 protocol names tensor element types with strings (``FP32``, ``BYTES``, ...);
ONNX Runtime names them ``tensor(float)`` and numpy with ``np.dtype``. BYTES tensors
travel as 4-byte little-endian length-prefixed elements, in HTTP binary data and in
gRPC raw contents alike.
"""

from __future__ import annotations

import struct
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt

# numpy has no bfloat16; ml_dtypes' is the one tritonclient hands out and takes for BF16.
BF16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)

V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": BF16,
    "BYTES": np.dtype(np.object_),
}

ORT_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}

_LEN = struct.Struct("<I")


def is_float(dtype: np.dtype[Any]) -> bool:
    """Floating point, bfloat16 included (numpy files ml_dtypes' types under kind 'V')."""
    return dtype.kind == "f" or dtype == BF16


def serialize_bytes(array: npt.NDArray[np.object_]) -> bytes:
    """Length-prefix each element of a BYTES tensor (str elements as UTF-8)."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int) -> npt.NDArray[np.object_]:
    """Parse ``count`` length-prefixed elements; raises ValueError when the buffer disagrees."""
    view = memoryview(buffer)
    out = np.empty(count, dtype=np.object_)
    offset = 0
    end = len(view)
    for index in range(count):
        if offset + 4 > end:
            raise ValueError(f"BYTES data ends after {index} of {count} elements")
        (size,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + size > end:
            raise ValueError(f"BYTES element {index} claims {size} bytes past the end of the data")
        out[index] = bytes(view[offset : offset + size])
        offset += size
    if offset != end:
        raise ValueError(f"BYTES data has {end - offset} bytes after its {count} elements")
    return out
