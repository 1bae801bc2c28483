"""The gateway's own HTTP/2 gRPC front (gateway/grpc_api/h2*.py).

Two halves. tritonclient against the real gateway covers what its C-core client does:
compressed requests, messages larger than HTTP/2's default 64 KiB windows, the streaming
method it refuses, and ``grpc.server: grpcio`` still serving. Raw HTTP/2 frames over a
loopback socket against the server with a small test servicer (tests/integration/h2peer.py)
cover what tritonclient never does: a peer window too small for the answer, a reset
stream, the call limit, oversized messages, and what a client may make the server hold:
stalled requests, idle connections, answers it never reads. Header blocks have their own
file, test_grpc_h2_headers.py.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from benchmarks.h2grpc import grpc_status
from gateway.grpc_api import h2wire
from gateway.grpc_api.h2wire import (
    CONNECTION_GRANT,
    DATA,
    END_STREAM,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    NO_ERROR,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)
from tests.helpers import GatewayProcess, identity_model, write_model
from tests.integration.h2peer import Loop, call, headers, until_end

# -- tritonclient against the real gateway -------------------------------------------------
WIDE = 16_384  # FP32 per row: 64 KiB, HTTP/2's whole default window, in one row


@pytest.fixture(scope="module")
def wide_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wide") / "models"
    write_model(root, "wide", identity_model(["FP32"], WIDE), {"batching": {"max_batch_size": 8}})
    return root


def _gateway(repository: Path, log_path: Path, server: str) -> GatewayProcess:
    process = GatewayProcess(repository, log_path, {"grpc": {"server": server}}, replicas=1)
    process.wait_ready()
    return process


@pytest.fixture(scope="module", params=["batchgate", "grpcio"])
def wide_gateway(
    request: pytest.FixtureRequest, wide_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = _gateway(wide_repository, tmp_path_factory.mktemp(request.param) / "gateway.log", request.param)
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_large_and_compressed_requests(wide_gateway: GatewayProcess, compression: str | None) -> None:
    """8 rows of 64 KiB: 512 KiB each way, eight times HTTP/2's default window, optionally compressed.

    Runs on both ``grpc.server`` choices: grpcio's answers are the reference.
    """
    client = grpcclient.InferenceServerClient(wide_gateway.grpc_url)
    batch = np.random.default_rng(7).standard_normal((8, WIDE)).astype(np.float32)
    tensor = grpcclient.InferInput("in_FP32", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer("wide", [tensor], compression_algorithm=compression)
    np.testing.assert_array_equal(result.as_numpy("out_FP32"), batch)
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_streaming_infer_is_refused(gateway: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    errors: list[Any] = []
    done = threading.Event()

    def callback(result: Any, error: Any) -> None:
        errors.append(error)
        done.set()

    client.start_stream(callback=callback)
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    try:
        client.async_stream_infer("digits_mlp", [tensor])
    except InferenceServerException as exc:
        # The refusal comes with the stream's headers and can beat the request's first
        # message: tritonclient then says so here and hands the status to the callback.
        assert "no longer in valid state" in exc.message()
    assert done.wait(10)
    client.stop_stream()
    assert isinstance(errors[0], InferenceServerException)
    assert errors[0].status() == "StatusCode.UNIMPLEMENTED" and "ModelStreamInfer" in errors[0].message()


# -- raw frames against the server ---------------------------------------------------------
def test_answer_waits_for_the_peers_window(h2_server: Loop) -> None:
    peer = h2_server.peer(window=1000)
    peer.send(headers(1) + frame(DATA, END_STREAM, 1, call("echo", b"x" * 3000)))
    first = b""
    while len(first) < 1000:  # the first 1,000 bytes are all the window allows
        got = peer.read()
        assert got is not None and got[0] in (HEADERS, DATA) and not got[1] & END_STREAM
        if got[0] == DATA:
            first += got[3]
    assert len(first) == 1000
    peer.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1 << 20)))
    status, rest = peer.answer(1)
    assert status == 0
    reply = service_pb2.ModelInferResponse.FromString((first + rest)[5:])
    assert reply.raw_output_contents == [b"x" * 3000]


def test_the_connection_window_is_given_back_only_once_half_used(
    h2_server: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WINDOW_UPDATE after every read cost a send, and woke the client for nothing, per call."""
    peer = h2_server.peer()
    peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 24)))  # room for the echoes
    sent = 0
    for stream in (1, 3, 5):
        body = call("echo", b"x" * 100_000)
        peer.send(headers(stream) + frame(DATA, END_STREAM, stream, body))
        sent += len(body)
        assert peer.answer(stream)[0] == 0
    assert peer.grants == [CONNECTION_GRANT]  # the opening grant only
    monkeypatch.setattr(h2wire, "CONNECTION_REFILL", 150_000)
    body = call("echo", b"x" * 100_000)
    peer.send(headers(7) + frame(DATA, END_STREAM, 7, body))
    assert peer.answer(7)[0] == 0
    # Past the (lowered) mark, everything used so far comes back in one update.
    assert len(peer.grants) == 2 and sent < peer.grants[1] <= sent + len(body)


def test_a_direct_call_answers_is_cancelled_and_fails_like_a_task() -> None:
    """ModelInfer's direct handler (no task): its answers, a reset while it waits, a handler
    that raises, and an answer over the message limit, each ending its stream as a task would."""
    # No time limits, so no periodic sweep: its flush would send an answer left unwritten.
    running = Loop(max_message_bytes=4096, direct=True, header_timeout_s=0, body_timeout_s=0, idle_timeout_s=0)
    try:
        peer = running.peer()
        peer.send(headers(1) + frame(DATA, END_STREAM, 1, call("echo", b"ab", repeat=3)))
        status, data = peer.answer(1)
        assert status == 0 and service_pb2.ModelInferResponse.FromString(data[5:]).raw_output_contents == [b"ababab"]
        peer.send(headers(3) + frame(DATA, END_STREAM, 3, call("hold", b"")))
        assert running.servicer.started.wait(10)
        assert not running.servicer.cancelled.is_set()
        peer.send(frame(RST_STREAM, 0, 3, struct.pack(">I", 8)))
        assert running.servicer.cancelled.wait(10)  # the handler's leave hook ran
        peer.send(headers(5) + frame(DATA, END_STREAM, 5, call("boom", b"")))
        assert peer.answer(5)[0] == 2  # INTERNAL, and the connection still serves
        peer.send(headers(7) + frame(DATA, END_STREAM, 7, call("echo", b"z" * 3000, repeat=2)))
        assert peer.answer(7)[0] == 8  # the 6,000-byte answer is over the 4,096-byte limit
        peer.send(headers(9) + frame(DATA, END_STREAM, 9, b"\x00\x00\x00\x00\x03abc"))
        assert peer.answer(9)[0] == 13  # not a ModelInferRequest
        peer.send(headers(11) + frame(DATA, END_STREAM, 11, call("echo", b"ok")))
        assert peer.answer(11)[0] == 0  # a lone call: its answer is written at once
        running.servicer.started.clear()
        peer.send(headers(13) + frame(DATA, END_STREAM, 13, call("hold", b"")))
        assert running.servicer.started.wait(10)
        peer.send(headers(15) + frame(DATA, END_STREAM, 15, call("echo", b"two")))
        assert peer.answer(15)[0] == 0  # beside another call: written at the end of the loop turn
        peer.send(frame(RST_STREAM, 0, 13, struct.pack(">I", 8)))
    finally:
        running.close()


def test_reset_stream_cancels_the_call(h2_server: Loop) -> None:
    peer = h2_server.peer()
    peer.send(headers(1) + frame(DATA, END_STREAM, 1, call("hold", b"")))
    assert h2_server.servicer.started.wait(10)
    peer.send(frame(RST_STREAM, 0, 1, struct.pack(">I", 8)))
    assert h2_server.servicer.cancelled.wait(10)
    peer.send(headers(3) + frame(DATA, END_STREAM, 3, call("echo", b"ok")))  # the connection still serves
    status, data = peer.answer(3)
    assert status == 0 and service_pb2.ModelInferResponse.FromString(data[5:]).raw_output_contents == [b"ok"]


def test_call_limit_and_errors() -> None:
    running = Loop(max_message_bytes=4096, max_calls=1)
    try:
        peer = running.peer()
        peer.send(headers(1) + frame(DATA, END_STREAM, 1, call("hold", b"")))
        assert running.servicer.started.wait(10)
        peer.send(headers(3) + frame(DATA, END_STREAM, 3, call("echo", b"")))
        assert peer.answer(3)[0] == 8  # RESOURCE_EXHAUSTED: one call at a time
        running.loop.call_soon_threadsafe(running.servicer.release.set)
        assert peer.answer(1)[0] == 0
        peer.send(headers(5) + frame(DATA, END_STREAM, 5, call("echo", b"y" * 5000)))
        assert peer.answer(5)[0] == 8  # over max_message_bytes
        peer.send(headers(7, path="/inference.GRPCInferenceService/Nope") + frame(DATA, END_STREAM, 7, call("x", b"")))
        assert peer.answer(7)[0] == 12
        peer.send(headers(9) + frame(DATA, END_STREAM, 9, call("fail", b"")))
        block = until_end(peer, 9)[3]
        assert grpc_status(block) == 5 and b"no such model 50%25" in block
        peer.send(headers(11) + frame(DATA, END_STREAM, 11, b"\x00\x00\x00\x00\x09abc"))  # length prefix lies
        assert peer.answer(11)[0] == 13
    finally:
        running.close()


def test_connection_window_and_a_grown_initial_window_release_answers(h2_server: Loop) -> None:
    """Answers held by the connection window, and by a stream window that SETTINGS later grows."""
    peer = h2_server.peer()  # stream windows of 1 MiB; the connection window stays at 65,535
    peer.send(headers(1) + frame(DATA, END_STREAM, 1, call("echo", b"a" * 40_000)))
    peer.send(headers(3) + frame(DATA, END_STREAM, 3, call("echo", b"b" * 40_000)))
    received = {1: b"", 3: b""}
    ended: dict[int, int | None] = {}
    while sum(map(len, received.values())) < 65_535:
        got = peer.read()
        assert got is not None
        if got[0] == DATA:
            received[got[2]] += got[3]
        elif got[0] == HEADERS and got[1] & END_STREAM:
            ended[got[2]] = grpc_status(got[3])
    assert ended == {1: 0} and len(received[3]) == 65_535 - len(received[1])  # stream 3 waits for the window
    peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 20)))
    status, rest = peer.answer(3)
    assert status == 0
    for stream, data, byte in ((1, received[1], b"a"), (3, received[3] + rest, b"b")):
        assert service_pb2.ModelInferResponse.FromString(data[5:]).raw_output_contents == [byte * 40_000], stream

    small = h2_server.peer(window=1000)
    small.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 20)))
    small.send(headers(1) + frame(DATA, END_STREAM, 1, call("echo", b"c" * 3000)))
    first = b""
    while len(first) < 1000:
        got = small.read()
        assert got is not None and not (got[0] == HEADERS and got[1] & END_STREAM)
        if got[0] == DATA:
            first += got[3]
    small.send(frame(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 1 << 20)))  # every window grows
    status, rest = small.answer(1)
    assert status == 0 and len(first + rest) > 3000


def test_stalled_request_is_answered_and_gives_back_its_slot() -> None:
    running = Loop(max_calls=1, header_timeout_s=0.3, body_timeout_s=0.3)
    try:
        peer = running.peer()
        message = call("echo", b"x" * 100)
        peer.send(headers(1) + frame(DATA, 0, 1, message[:20]))  # the rest never comes
        status, _ = peer.answer(1)
        assert status == 4  # DEADLINE_EXCEEDED, and the one call slot is free again:
        peer.send(headers(3) + frame(DATA, END_STREAM, 3, call("echo", b"ok")))
        status, data = peer.answer(3)
        assert status == 0 and service_pb2.ModelInferResponse.FromString(data[5:]).raw_output_contents == [b"ok"]

        silent = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        try:
            while silent.recv(1 << 16):  # our SETTINGS, then the end: no preface in time, closed
                pass
        finally:
            silent.close()
    finally:
        running.close()


def test_idle_connection_gets_goaway_but_not_while_a_call_runs() -> None:
    running = Loop(idle_timeout_s=0.3)
    try:
        busy = running.peer()
        busy.send(headers(1) + frame(DATA, END_STREAM, 1, call("hold", b"")))
        assert running.servicer.started.wait(10)
        idle = running.peer()  # opened after the call began, so its going idle proves the time has passed
        got = idle.read()
        assert got is not None and got[0] == GOAWAY
        assert struct.unpack(">II", got[3][:8])[1] == NO_ERROR
        assert idle.read() is None
        running.loop.call_soon_threadsafe(running.servicer.release.set)
        assert busy.answer(1)[0] == 0  # the connection with the running call was left alone
    finally:
        running.close()


def test_a_client_that_does_not_read_is_not_read_either() -> None:
    """PINGs from a client that never reads the ACKs: the h2_server stops reading it instead of buffering."""
    running = Loop(write_buffer_bytes=64 * 1024)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        sock.connect(("127.0.0.1", running.port))
        sock.setblocking(False)
        chunk = frame(PING, 0, 0, b"12345678") * 4096  # 68 KiB
        pending = PREFACE + frame(SETTINGS, 0, 0, b"")
        total, limit = 0, 64 << 20
        while total < limit:  # bounded: without back-pressure all 64 MiB would go through
            if not pending:
                pending = chunk
            _, writable, _ = select.select([], [sock], [], 1.0)
            if not writable:
                break  # the h2_server stopped reading
            sent = sock.send(pending)
            pending, total = pending[sent:], total + sent
        assert total < limit, "the h2_server kept reading a client that reads nothing"

        async def buffered() -> int:
            return max(c.transport.get_write_buffer_size() for c in running.server.connections if c.transport)

        # Past the mark, at most the ACKs of one more read: uvloop reads up to 256,000 bytes at
        # a time (strace), and a PING's ACK is as long as the PING. Two chunks' worth (139 KiB)
        # failed once when a read found more than that waiting.
        assert running.run(buffered()) <= 64 * 1024 + 256_000

        answers: list[bytes] = []

        def drain() -> None:  # read everything; note the end of stream 1
            data, at = bytearray(), 0
            while True:
                try:
                    part = sock.recv(1 << 20)
                except BlockingIOError:
                    select.select([sock], [], [], 10.0)
                    continue
                if not part:
                    return
                data += part
                while len(data) - at >= 9 and len(data) - at >= 9 + int.from_bytes(data[at : at + 3], "big"):
                    length, kind, flags = int.from_bytes(data[at : at + 3], "big"), data[at + 3], data[at + 4]
                    stream = int.from_bytes(data[at + 5 : at + 9], "big") & 0x7FFFFFFF
                    if stream == 1 and kind == HEADERS and flags & END_STREAM:
                        answers.append(bytes(data[at + 9 : at + 9 + length]))
                        return
                    at += 9 + length

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()  # reading again lets the h2_server resume: the rest of the PINGs, then a call
        sock.setblocking(True)
        sock.settimeout(10)
        sock.sendall(pending + headers(1) + frame(DATA, END_STREAM, 1, call("echo", b"ok")))
        reader.join(20)
        assert answers and grpc_status(answers[0]) == 0
    finally:
        sock.close()
        running.close()


def test_connections_past_the_limit_get_goaway() -> None:
    running = Loop(max_connections=2)
    try:
        first, second = running.peer(), running.peer()
        for peer in (first, second):  # both served
            peer.send(headers(1) + frame(DATA, END_STREAM, 1, call("echo", b"ok")))
            assert peer.answer(1)[0] == 0
        third = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        refusal = b""  # read before writing: a client's unread preface would turn the close into a reset
        while chunk := third.recv(1 << 16):
            refusal += chunk
        third.close()
        goaway = refusal[9 + int.from_bytes(refusal[:3], "big") :]  # after our (empty) SETTINGS
        assert goaway[3] == GOAWAY and b"too many open connections" in goaway
        first.sock.close()  # a place frees up once the h2_server sees it closed
        for _ in range(100):
            fourth = running.peer()
            try:
                fourth.send(headers(1) + frame(DATA, END_STREAM, 1, call("echo", b"ok")))
                got = fourth.read()
            except ConnectionResetError:
                continue  # refused while the h2_server had not yet seen the close
            assert got is not None
            if got[0] != GOAWAY:
                break
        assert got[0] == HEADERS and got[2] == 1  # the answer's headers: served again
        assert fourth.answer(1)[0] == 0
    finally:
        running.close()
