"""Large JSON bodies decode and encode in a real spawned JSON process: the same request,
response bytes or error as on the loop, while the event loop keeps turning; a process that
dies is replaced, and a closed pool refuses with 503."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
from collections.abc import Iterator

import numpy as np
import orjson
import pytest

from gateway.codec import DecodeLimits
from gateway.codec.v2http import decode_request, encode_response, json_values
from gateway.errors import InvalidInput, PayloadTooLarge, Unavailable
from gateway.rest.json_offload import JsonOffload
from gateway.types import InferRequest, InferResponse, InputTensor, OutputTensor, RequestedOutput

LIMITS = DecodeLimits()
MAX_BODY = 64 << 20


def _body(values: int, rows: int = 100) -> bytes:
    data = np.random.default_rng(values).random(values, dtype=np.float32)
    doc = {
        "id": "big",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, values // rows], "data": data}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        "parameters": {"priority": 2, "custom": "kept"},
    }
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


@pytest.fixture(scope="module")
def pool() -> Iterator[JsonOffload]:
    offload = JsonOffload(min_bytes=1, processes=1)
    try:
        yield offload
    finally:
        offload.close()


def _decode(pool: JsonOffload, raw: bytes, coding: str | None = None, limits: DecodeLimits = LIMITS) -> object:
    return asyncio.run(pool.decode("m", "1", raw, coding, None, MAX_BODY, limits))


def _same(a: object, b: object) -> bool:
    """Equal requests, arrays compared by value and dtype."""
    arrays = [(x.inputs[0].data, y.inputs[0].data) for x, y in [(a, b)]]  # type: ignore[attr-defined]
    (left, right) = arrays[0]
    if left.dtype != right.dtype or not np.array_equal(left, right):
        return False
    a.inputs[0].data = b.inputs[0].data = None  # type: ignore[attr-defined]
    try:
        return a == b
    finally:
        a.inputs[0].data, b.inputs[0].data = left, right  # type: ignore[attr-defined]


def test_the_request_is_the_one_the_loop_would_decode(pool: JsonOffload) -> None:
    raw = _body(20_000)
    on = decode_request("m", "1", raw, None, LIMITS)
    assert on.priority == 2 and on.parameters == {"custom": "kept"}
    assert _same(_decode(pool, raw), on)
    assert _same(_decode(pool, gzip.compress(raw), "gzip"), on)


def test_errors_come_back_as_the_loop_would_raise_them(pool: JsonOffload) -> None:
    raw = _body(20_000)
    with pytest.raises(InvalidInput, match="request body is not valid JSON") as bad:
        _decode(pool, raw[:-10])
    assert bad.value.http_status == 400
    with pytest.raises(PayloadTooLarge, match="takes the request past 1000 elements"):
        _decode(pool, raw, limits=DecodeLimits(max_elements=1000))
    with pytest.raises(InvalidInput, match="not valid gzip"):
        _decode(pool, raw, "gzip")


def test_the_event_loop_turns_while_a_large_body_decodes(pool: JsonOffload) -> None:
    raw = _body(1_500_000, rows=1500)  # about 16 MB: on the loop, one call of 70 ms or more
    turns_during = 0

    async def main() -> None:
        nonlocal turns_during
        decoding = asyncio.ensure_future(pool.decode("m", "1", raw, None, None, MAX_BODY, LIMITS))
        while not decoding.done():
            turns_during += 1
            await asyncio.sleep(0)
        assert (await decoding).inputs[0].data.shape == (1500, 1000)

    asyncio.run(main())
    # Decoded on the loop, the task would finish in the turn it first ran: no turn between.
    assert turns_during > 20


def test_when_a_body_goes_to_a_json_process() -> None:
    offload = JsonOffload(min_bytes=1000, processes=1)
    assert not offload.wants_request(999, None, None)
    assert offload.wants_request(1000, None, None)
    assert offload.wants_request(1000, "identity", None)
    assert not offload.wants_request(10**6, None, 999)  # binary tensors behind a small JSON header
    assert offload.wants_request(10**6, None, 1000)
    assert offload.wants_request(250, "gzip", None) and not offload.wants_request(249, "GZIP", None)
    assert offload.wants_response(100) and not offload.wants_response(99)  # about 10 bytes a value
    off = JsonOffload(min_bytes=0, processes=1)
    assert not off.wants_request(10**9, None, None) and not off.wants_response(10**9)


def _response(values: int) -> tuple[InferResponse, InferRequest]:
    rows = np.random.default_rng(values).random((values // 100, 100), dtype=np.float32)
    labels = np.arange(values // 100, dtype=np.int64)
    response = InferResponse(
        "m", "1", [OutputTensor("y", "FP32", rows), OutputTensor("label", "INT64", labels)], "big", {"k": "v"}
    )
    inputs = [InputTensor("x", "FP32", (1,), np.zeros(1, np.float32))]
    request = InferRequest("m", "1", inputs, [RequestedOutput("y"), RequestedOutput("label", binary=True)])
    return response, request


def test_a_response_is_written_as_the_loop_would_write_it(pool: JsonOffload) -> None:
    response, request = _response(20_000)
    assert json_values(response, request) == 20_000  # the binary output does not count
    on = encode_response(response, request)
    assert on[1] is not None  # a JSON header, then the binary output
    assert asyncio.run(pool.encode(response, request, None)) == on
    zipped, length = asyncio.run(pool.encode(response, request, "gzip"))
    assert gzip.decompress(zipped) == on[0] and length == on[1]


def test_the_event_loop_turns_while_a_large_response_encodes(pool: JsonOffload) -> None:
    response, request = _response(2_000_000)  # about 21 MB of JSON: on the loop, 50 ms or more
    turns_during = 0

    async def main() -> None:
        nonlocal turns_during
        encoding = asyncio.ensure_future(pool.encode(response, request, None))
        while not encoding.done():
            turns_during += 1
            await asyncio.sleep(0)
        assert len((await encoding)[0]) > 2_000_000 * 8

    asyncio.run(main())
    assert turns_during > 20


def _json_pids() -> set[int]:
    """This process's children that run multiprocessing's spawn entry point."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if parent == os.getpid() and b"multiprocessing.spawn" in command:
            found.add(int(entry))
    return found


def test_a_dead_json_process_is_replaced_and_a_closed_pool_refuses() -> None:
    offload = JsonOffload(min_bytes=1, processes=1)
    raw = _body(1000)
    before = _json_pids()
    try:
        assert _decode(offload, raw).id == "big"  # type: ignore[attr-defined]
        started = _json_pids() - before
        assert len(started) == 1
        (pid,) = started
        os.kill(pid, signal.SIGKILL)  # whether the pool notices before the next body or while it waits
        assert _decode(offload, raw).id == "big"  # type: ignore[attr-defined]
        assert pid not in _json_pids()
    finally:
        offload.close()
    with pytest.raises(Unavailable, match="shutting down"):
        _decode(offload, raw)
