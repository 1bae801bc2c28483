"""The protocol's direct inference path (gateway.rest.direct.DirectCycle) on a real gateway.

Plain ``POST .../infer`` requests with a Content-Length body are answered by the HTTP
protocol itself, without uvicorn's ASGI cycle; everything else (chunked bodies, Expect,
proxy headers) still goes through ASGI. These tests speak raw HTTP/1.1 over a socket to
reach what a library client never sends: pipelined requests mixing both paths, HTTP/1.0,
and byte-for-byte comparison of the two paths' answers.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers import GatewayProcess, ResponseReader

INFER = "/v2/models/digits_mlp/infer"


def _rows(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, size=(1, 64)).astype(np.float32)


def _body(rows: np.ndarray) -> bytes:
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]}
    return json.dumps(doc).encode()


def _post(body: bytes, version: str = "1.1", extra: str = "") -> bytes:
    head = f"POST {INFER} HTTP/{version}\r\nHost: t\r\nContent-Type: application/json\r\n{extra}"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


def _chunked(body: bytes) -> bytes:
    head = f"POST {INFER} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
    return head.encode() + chunks + b"0\r\n\r\n"


@pytest.fixture(scope="module")
def reference(serving_repository: Path) -> ort.InferenceSession:
    path = serving_repository / "digits_mlp" / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _probabilities(body: bytes) -> np.ndarray:
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    return np.asarray(outputs["probabilities"]["data"], dtype=np.float32)


def test_pipelined_requests_mixing_both_paths_are_answered_in_order(
    gateway: GatewayProcess, reference: ort.InferenceSession
) -> None:
    """Direct, refused (400), general (GET, chunked) and direct again, sent in one write."""
    inputs = [_rows(seed) for seed in (1, 2, 3)]
    batch = [
        _post(_body(inputs[0])),
        _post(b'{"inputs": [nope'),
        b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n",
        _chunked(_body(inputs[1])),
        _post(_body(inputs[2])),
    ]
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"".join(batch))
        reader = ResponseReader(sock)
        answers = [reader.response() for _ in batch]
    assert [status for status, _, _ in answers] == [200, 400, 200, 200, 200]
    assert "error" in json.loads(answers[1][2])
    for rows, (_, headers, body) in zip(inputs, [answers[0], answers[3], answers[4]], strict=True):
        expected = reference.run(["probabilities"], {"input": rows})[0].ravel()
        np.testing.assert_allclose(_probabilities(body), expected, rtol=1e-5, atol=1e-6)
        assert headers["x-batchgate-served-by"] == "digits_mlp:1"


def test_direct_and_general_paths_answer_alike(gateway: GatewayProcess) -> None:
    """The same request through both paths: same status, headers (but the date) and body."""
    body = _body(_rows(7))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(_post(body) + _chunked(body))
        reader = ResponseReader(sock)
        direct, general = reader.response(), reader.response()
    assert direct[0] == general[0] == 200
    assert direct[2] == general[2]
    without_date = [{k: v for k, v in headers.items() if k != "date"} for _, headers, _ in (direct, general)]
    assert without_date[0] == without_date[1]


def test_errors_answer_alike_on_both_paths(gateway: GatewayProcess) -> None:
    """A wrong input name gets the same 400 and v2 error body whichever path it takes."""
    bad = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(_post(bad) + _chunked(bad))
        reader = ResponseReader(sock)
        direct, general = reader.response(), reader.response()
    assert direct[0] == general[0] == 400
    assert direct[2] == general[2] and "input" in json.loads(direct[2])["error"]


@pytest.mark.parametrize(("version", "extra"), [("1.0", ""), ("1.1", "Connection: close\r\n")])
def test_a_request_that_does_not_keep_alive_is_answered_then_closed(
    gateway: GatewayProcess, version: str, extra: str
) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(_post(_body(_rows(3)), version, extra))
        reader = ResponseReader(sock)
        status, headers, _ = reader.response()
        assert status == 200 and headers["connection"] == "close"
        assert reader.closed()


def test_keep_alive_connection_serves_requests_one_after_another(gateway: GatewayProcess) -> None:
    requests_before = gateway.metric("batchgate_requests_total", {"model": "digits_mlp", "code": "200"})
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        reader = ResponseReader(sock)
        for seed in range(20):
            sock.sendall(_post(_body(_rows(seed))))
            status, headers, _ = reader.response()
            assert status == 200 and "connection" not in headers
    requests_after = gateway.metric("batchgate_requests_total", {"model": "digits_mlp", "code": "200"})
    assert requests_after - requests_before == 20


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(gateway: GatewayProcess) -> None:
    """An answered client that sends nothing more is let go after the keep-alive wait (5 s),
    not held forever; nor cut off before it."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
        reader = ResponseReader(sock)
        sock.sendall(_post(_body(_rows(4))))
        assert reader.response()[0] == 200
        answered = time.monotonic()
        assert reader.closed()  # blocks until the server closes: bounded by the socket timeout
        idle = time.monotonic() - answered
    assert 4.5 <= idle < 5 + 2.0, f"closed after {idle:.2f} s idle"  # then scheduling slack


def test_large_json_bodies_are_decoded_by_a_decoder_process_on_both_paths(
    gateway: GatewayProcess, reference: ort.InferenceSession
) -> None:
    """Bodies of ``http.json_offload_bytes`` (512 KiB by default) or more go to a JSON
    process: the answers are the ones the loop would give, in pipelined order, with a bad
    body's 400 coming back from that process as it would from the loop."""
    padding = b" " * (512 * 1024)  # JSON allows whitespace: large bodies without a large model
    inputs = [_rows(seed) for seed in (11, 12, 13)]
    batch = [
        _post(_body(inputs[0]) + padding),
        _post(b'{"inputs": [nope' + padding),
        _chunked(_body(inputs[1]) + padding),
        _post(_body(inputs[2])),  # small: decoded on the loop, answered after the large ones
    ]
    offloaded = gateway.metric("batchgate_json_offloaded_total", {"body": "request"})
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
        sock.sendall(b"".join(batch))
        reader = ResponseReader(sock)
        answers = [reader.response() for _ in batch]
    assert [status for status, _, _ in answers] == [200, 400, 200, 200]
    assert json.loads(answers[1][2])["error"].startswith("request body is not valid JSON")
    for rows, (_, _, body) in zip(inputs, [answers[0], answers[2], answers[3]], strict=True):
        expected = reference.run(["probabilities"], {"input": rows})[0].ravel()
        np.testing.assert_allclose(_probabilities(body), expected, rtol=1e-5, atol=1e-6)
    assert gateway.metric("batchgate_json_offloaded_total", {"body": "request"}) - offloaded == 3


@pytest.fixture(scope="module")
def low_offload(serving_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway that sends any JSON body of 1 KiB or more to its JSON process, both ways."""
    folder = tmp_path_factory.mktemp("offload")
    process = GatewayProcess(serving_repository, folder / "gateway.log", {"http": {"json_offload_bytes": 1024}})
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_large_json_answers_are_encoded_by_a_json_process_with_their_content_coding(
    low_offload: GatewayProcess, reference: ort.InferenceSession
) -> None:
    """64 rows of ``digits_mlp`` (640 output values, about 6 KB of JSON) over 1 KiB: the
    request is decoded and the answer encoded in the JSON process on both paths, gzip
    included; asked for binary outputs, the answer has no JSON values and is written on the
    loop."""
    rows = np.random.default_rng(5).uniform(0, 16, size=(64, 64)).astype(np.float32)
    expected = reference.run(["probabilities"], {"input": rows})[0].ravel()
    plain = _body(rows)
    as_binary = json.dumps({**json.loads(plain), "parameters": {"binary_data_output": True}}).encode()
    counts = [low_offload.metric("batchgate_json_offloaded_total", {"body": body}) for body in ("request", "response")]
    with socket.create_connection(("127.0.0.1", low_offload.port), timeout=20) as sock:
        sock.sendall(
            _post(plain) + _post(plain, extra="Accept-Encoding: gzip\r\n") + _post(as_binary) + _chunked(plain)
        )
        reader = ResponseReader(sock)
        answers = [reader.response() for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert answers[3][2] == answers[0][2]  # the general (ASGI) path, as the direct one
    np.testing.assert_allclose(_probabilities(answers[0][2]), expected, rtol=1e-5, atol=1e-6)
    assert answers[1][1]["content-encoding"] == "gzip" and gzip.decompress(answers[1][2]) == answers[0][2]
    header_length = int(answers[2][1]["inference-header-content-length"])
    assert json.loads(answers[2][2][:header_length])["outputs"][0]["parameters"]["binary_data_size"] > 0
    after = [low_offload.metric("batchgate_json_offloaded_total", {"body": body}) for body in ("request", "response")]
    assert [a - b for a, b in zip(after, counts, strict=True)] == [4, 3]
