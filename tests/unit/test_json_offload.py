"""Large JSON bodies decode and encode in a real JSON process (``python -m
gateway.rest.json_child``): the same request, response bytes or error as on the loop, while
the event loop keeps turning; a process that dies is replaced, calls wait their turn for a
busy one, and a stopped pool refuses with 503 and leaves no process behind."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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
T = TypeVar("T")


def _body(values: int, rows: int = 100) -> bytes:
    data = np.random.default_rng(values).random(values, dtype=np.float32)
    doc = {
        "id": "big",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, values // rows], "data": data}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        "parameters": {"priority": 2, "custom": "kept"},
    }
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def _with_pool(test: Callable[[JsonOffload], Awaitable[T]], processes: int = 1) -> T:
    """Run ``test`` on one loop with a fresh pool (its processes belong to that loop), then stop it."""

    async def main() -> T:
        offload = JsonOffload(min_bytes=1, processes=processes)
        try:
            return await test(offload)
        finally:
            await offload.stop()

    return asyncio.run(main())


def _decode(offload: JsonOffload, raw: bytes, coding: str | None = None, limits: DecodeLimits = LIMITS) -> Any:
    return offload.decode("m", "1", raw, coding, None, MAX_BODY, limits)


def _same(a: InferRequest, b: InferRequest) -> bool:
    """Equal requests, arrays compared by value and dtype."""
    left, right = a.inputs[0].data, b.inputs[0].data
    if left.dtype != right.dtype or not np.array_equal(left, right):
        return False
    a.inputs[0].data = b.inputs[0].data = None  # type: ignore[assignment]
    try:
        return a == b
    finally:
        a.inputs[0].data, b.inputs[0].data = left, right


def test_the_request_is_the_one_the_loop_would_decode() -> None:
    raw = _body(20_000)
    on = decode_request("m", "1", raw, None, LIMITS)
    assert on.priority == 2 and on.parameters == {"custom": "kept"}

    async def test(offload: JsonOffload) -> None:
        assert _same(await _decode(offload, raw), on)
        assert _same(await _decode(offload, gzip.compress(raw), "gzip"), on)
        binary = b'{"inputs":[{"name":"x","datatype":"INT32","shape":[2],"parameters":{"binary_data_size":8}}]}'
        request = await offload.decode("m", "1", binary + b"\x01\0\0\0\x02\0\0\0", None, len(binary), MAX_BODY, LIMITS)
        assert request.inputs[0].data.tolist() == [1, 2]  # the binary part beside a large JSON header

    _with_pool(test)


def test_errors_come_back_as_the_loop_would_raise_them() -> None:
    raw = _body(20_000)

    async def test(offload: JsonOffload) -> None:
        with pytest.raises(InvalidInput, match="request body is not valid JSON") as bad:
            await _decode(offload, raw[:-10])
        assert bad.value.http_status == 400
        with pytest.raises(PayloadTooLarge, match="takes the request past 1000 elements"):
            await _decode(offload, raw, limits=DecodeLimits(max_elements=1000))
        with pytest.raises(InvalidInput, match="not valid gzip"):
            await _decode(offload, raw, "gzip")
        assert (await _decode(offload, raw)).id == "big"  # the process goes on after an error

    _with_pool(test)


async def _turns_while(work: Awaitable[Any]) -> tuple[int, Any]:
    """How many times the loop turned before ``work`` finished, and its result."""
    task = asyncio.ensure_future(work)
    turns = 0
    while not task.done():
        turns += 1
        await asyncio.sleep(0)
    return turns, await task


def test_the_event_loop_turns_while_a_large_body_decodes() -> None:
    raw = _body(1_500_000, rows=1500)  # about 16 MB: on the loop, one call of 70 ms or more

    async def test(offload: JsonOffload) -> int:
        await _decode(offload, _body(1000))  # started: what is measured is the decoding
        turns, request = await _turns_while(_decode(offload, raw))
        assert request.inputs[0].data.shape == (1500, 1000)
        return turns

    # Decoded on the loop, the task would finish in the turn it first ran: no turn between.
    assert _with_pool(test) > 20


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


def test_a_response_is_written_as_the_loop_would_write_it() -> None:
    response, request = _response(20_000)
    assert json_values(response, request) == 20_000  # the binary output does not count
    on = encode_response(response, request)
    assert on[1] is not None  # a JSON header, then the binary output

    async def test(offload: JsonOffload) -> None:
        assert await offload.encode(response, request, None) == on
        zipped, length = await offload.encode(response, request, "gzip")
        assert gzip.decompress(zipped) == on[0] and length == on[1]

    _with_pool(test)


def test_the_event_loop_turns_while_a_large_response_encodes() -> None:
    response, request = _response(2_000_000)  # about 21 MB of JSON: on the loop, 50 ms or more

    async def test(offload: JsonOffload) -> int:
        await offload.encode(*_response(100), None)
        turns, (payload, _) = await _turns_while(offload.encode(response, request, None))
        assert len(payload) > 2_000_000 * 8
        return turns

    assert _with_pool(test) > 20


def test_calls_beyond_the_processes_wait_their_turn() -> None:
    bodies = [_body(20_000 + i * 100) for i in range(5)]

    async def test(offload: JsonOffload) -> list[Any]:
        return await asyncio.gather(*(_decode(offload, raw) for raw in bodies))

    requests = _with_pool(test, processes=2)
    for raw, request in zip(bodies, requests, strict=True):
        assert _same(request, decode_request("m", "1", raw, None, LIMITS))


def _json_pids() -> set[int]:
    """This process's children that run the JSON process's module."""
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
        if parent == os.getpid() and b"gateway.rest.json_child" in command:
            found.add(int(entry))
    return found


def test_a_dead_json_process_is_replaced_and_a_stopped_pool_refuses() -> None:
    raw = _body(1000)

    async def test(offload: JsonOffload) -> None:
        assert (await _decode(offload, raw)).id == "big"
        (pid,) = _json_pids()
        os.kill(pid, signal.SIGKILL)  # idle: the next body finds its socket closed
        assert (await _decode(offload, raw)).id == "big"
        assert pid not in _json_pids() and len(_json_pids()) == 1
        await offload.stop()
        with pytest.raises(Unavailable, match="shutting down"):
            await _decode(offload, raw)

    _with_pool(test)
    assert _json_pids() == set()  # stopped, and waited for


def test_a_json_process_past_its_time_is_killed_and_the_request_answered_503() -> None:
    raw = _body(1_500_000, rows=1500)  # 70 ms or more to decode: far past a 1 ms limit

    async def test(offload: JsonOffload) -> None:
        await _decode(offload, _body(1000))
        (stuck,) = _json_pids()
        offload.call_timeout_s = 0.001
        with pytest.raises(Unavailable, match=r"did not answer within 0\.001 s"):
            await _decode(offload, raw)
        offload.call_timeout_s = 30.0
        assert (await _decode(offload, _body(1000))).id == "big"
        assert stuck not in _json_pids() and len(_json_pids()) == 1

    _with_pool(test)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_an_idle_json_process_gives_its_receive_buffer_back() -> None:
    raw = _body(1_500_000, rows=1500)  # about 16 MB read into the receive buffer

    async def test(offload: JsonOffload) -> None:
        offload.idle_release_s = 0.3  # read when the process starts
        await _decode(offload, raw)
        (pid,) = _json_pids()
        held = _rss_mb(pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while _rss_mb(pid) > held - 12:  # polled: another process's memory has no event to wait on
            assert loop.time() < deadline, f"still {_rss_mb(pid):.0f} MB after holding {held:.0f} MB"
            await asyncio.sleep(0.05)
        request = await _decode(offload, raw)  # and the next large body is read as before
        assert request.inputs[0].data.shape == (1500, 1000) and _json_pids() == {pid}

    _with_pool(test)
