from __future__ import annotations

import numpy as np
import pytest

from workers.dtypes import V2_TO_NUMPY, deserialize_bytes, serialize_bytes
from workers.v2grpc import array_from_raw, array_to_raw, datatype_of


def test_bytes_round_trip() -> None:
    array = np.array([b"", b"\xff\x00", "é"], dtype=object)
    raw = serialize_bytes(array)
    assert list(deserialize_bytes(raw, 3)) == [b"", b"\xff\x00", "é".encode()]


@pytest.mark.parametrize(
    ("raw", "count", "fragment"),
    [
        (b"\x05\x00\x00\x00ab", 1, "past the end"),
        (b"\x01\x00\x00\x00a", 2, "ends after 1"),
        (b"\x01\x00\x00\x00ab", 1, "after its 1"),
    ],
)
def test_bad_bytes_data(raw: bytes, count: int, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        deserialize_bytes(raw, count)


def test_raw_size_must_match_shape() -> None:
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    np.testing.assert_array_equal(array_from_raw("INT16", (2, 3), array_to_raw(array)), array)
    with pytest.raises(ValueError, match="needs 12"):
        array_from_raw("INT16", (2, 3), b"\0" * 10)


@pytest.mark.parametrize("name", sorted(V2_TO_NUMPY))
def test_every_v2_datatype_names_its_own_arrays(name: str) -> None:
    assert datatype_of(np.zeros(2, dtype=V2_TO_NUMPY[name])) == name


def test_text_arrays_are_bytes_and_dtypes_outside_v2_are_refused() -> None:
    assert datatype_of(np.array(["a", "bc"])) == "BYTES"
    assert datatype_of(np.array([b"a"])) == "BYTES"
    for dtype in (">f4", "complex64", "datetime64[s]"):  # big-endian FP32 is not v2's little-endian FP32
        with pytest.raises(ValueError, match="has no v2 datatype"):
            datatype_of(np.zeros(2, dtype=dtype))
