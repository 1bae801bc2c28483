"""The worker's side of the framed local transport, on a real unix socket with a real model."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from gateway.demo import mlp_model
from tests.helpers import GatedSession
from workers.framing import ERROR, HEADER, REQUEST, RESPONSE, frame, parse_error
from workers.local_server import LocalServer
from workers.runtime import LoadedModel, load_model
from workers.servicer import WorkerServicer


@pytest.fixture
def model(tmp_path: Path) -> LoadedModel:
    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp_model((8, 16, 4), seed=3))
    return load_model("m", "1", path, threads=1, providers=["cpu"])


@pytest.fixture
def server(tmp_path: Path, model: LoadedModel) -> Iterator[LocalServer]:
    local = LocalServer(tmp_path / "w.sock", WorkerServicer({("m", "1"): model}))
    local.start()
    yield local
    local.close(timeout_s=5)


def _connect(server: LocalServer) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(str(server.path))
    return conn


def _request(rows: int) -> tuple[bytes, np.ndarray]:
    data = np.random.default_rng(rows).standard_normal((rows, 8)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="input", datatype="FP32", shape=data.shape)
    request.raw_input_contents.append(data.tobytes())
    return frame(REQUEST, request.SerializeToString()), data


def _read_frame(conn: socket.socket) -> tuple[int, bytes]:
    def exactly(size: int) -> bytes:
        chunks = b""
        while len(chunks) < size:
            chunk = conn.recv(size - len(chunks))
            assert chunk, "the worker closed the connection mid-frame"
            chunks += chunk
        return chunks

    size, kind = HEADER.unpack(exactly(HEADER.size))
    return kind, exactly(size)


def _rows(body: bytes) -> np.ndarray:
    response = service_pb2.ModelInferResponse.FromString(body)
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(tuple(response.outputs[0].shape))


def test_frames_written_in_pieces_and_back_to_back_are_each_answered_in_order(
    server: LocalServer, model: LoadedModel
) -> None:
    first, first_data = _request(1)
    second, second_data = _request(3)
    with _connect(server) as conn:
        conn.sendall(first[:2])  # half a header
        conn.sendall(first[2:9])  # the rest of it and a little payload
        conn.sendall(first[9:] + second)  # the rest, and a whole second frame in the same write
        for data in (first_data, second_data):
            kind, body = _read_frame(conn)
            assert kind == RESPONSE
            np.testing.assert_allclose(_rows(body), model.run({"input": data})[0], rtol=1e-6)


def test_a_frame_that_is_not_a_request_is_refused_and_the_connection_closed(server: LocalServer) -> None:
    with _connect(server) as conn:
        conn.sendall(frame(RESPONSE, b"not from a gateway"))
        kind, body = _read_frame(conn)
        assert kind == ERROR
        assert parse_error(body)[1] == "bad frame"
        assert conn.recv(1) == b""


def test_a_connection_closed_mid_frame_leaves_the_server_serving_others(server: LocalServer) -> None:
    whole, _ = _request(2)
    with _connect(server) as conn:
        conn.sendall(whole[: len(whole) // 2])
    with _connect(server) as conn:
        conn.sendall(whole)
        kind, body = _read_frame(conn)
    assert kind == RESPONSE
    assert _rows(body).shape == (2, 4)


def test_close_waits_for_the_request_being_computed_and_answers_it(tmp_path: Path, model: LoadedModel) -> None:
    gated = model.session = GatedSession(model.session)
    local = LocalServer(tmp_path / "w.sock", WorkerServicer({("m", "1"): model}))
    local.start()
    whole, _ = _request(1)
    with _connect(local) as conn:
        conn.sendall(whole)
        assert gated.entered.acquire(timeout=10)
        closer = threading.Thread(target=local.close, kwargs={"timeout_s": 10})
        closer.start()
        closer.join(0.3)
        assert closer.is_alive(), "close() returned while a request was being computed"
        gated.release.set()
        kind, body = _read_frame(conn)
        closer.join(10)
        assert not closer.is_alive()
    assert kind == RESPONSE
    assert _rows(body).shape == (1, 4)
    assert not local.path.exists()
