"""Header blocks on the gateway's own HTTP/2 gRPC front, as raw frames over loopback
(tests/integration/h2peer.py): what is not a gRPC call, a bad preface, blocks split over
CONTINUATION frames, blocks that cannot be decoded, and the decoded block the connection
keeps for a client that repeats it, which must follow the HPACK dynamic table.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tritonclient.grpc import service_pb2

from benchmarks.h2grpc import hpack_int, hpack_string, request_block
from gateway.grpc_api.h2wire import CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PADDED, frame
from tests.integration.h2peer import INFER, Loop, call, headers, until_end


@pytest.fixture
def server() -> Iterator[Loop]:
    running = Loop()
    try:
        yield running
    finally:
        running.close()


def test_not_grpc_gets_415(server: Loop) -> None:
    peer = server.peer()
    block = b"\x82\x86" + hpack_int(4, 4, 0) + hpack_string(INFER.encode())  # GET, no content-type
    peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    payload = until_end(peer, 1)[3]
    assert payload[0] == 0x08 and payload[2:5] == b"415"


def test_bad_preface_gets_goaway(server: Loop) -> None:
    peer = server.peer(preface=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    got = peer.read()
    assert got is not None and got[0] == GOAWAY
    assert peer.read() is None


def test_split_header_block_padding_and_metadata(server: Loop) -> None:
    peer = server.peer()
    block = request_block("127.0.0.1", INFER) + b"\x00" + hpack_string(b"x-client-id") + hpack_string(b"abc")
    message = call("echo", b"zz")
    peer.send(
        frame(HEADERS, 0, 1, block[:5])
        + frame(CONTINUATION, 0, 1, block[5:9])
        + frame(CONTINUATION, END_HEADERS, 1, block[9:])
        + frame(DATA, PADDED, 1, bytes((4,)) + message[:3] + b"\0" * 4)  # 4 bytes of padding
        + frame(DATA, END_STREAM, 1, message[3:])
    )
    status, data = peer.answer(1)
    assert status == 0
    assert service_pb2.ModelInferResponse.FromString(data[5:]).raw_output_contents == [b"zz"]
    assert server.servicer.metadata.get("x-client-id") == "abc"


def test_undecodable_header_closes_only_that_connection(server: Loop) -> None:
    peer = server.peer()
    block = request_block("127.0.0.1", INFER) + b"\x00" + hpack_string(b"x-bad") + hpack_string(b"\xff\xfe")
    peer.send(frame(HEADERS, END_HEADERS, 1, block))
    got = peer.read()
    assert got is not None and got[0] == GOAWAY
    other = server.peer()  # the listener still serves
    other.send(headers(1) + frame(DATA, END_STREAM, 1, call("echo", b"ok")))
    assert other.answer(1)[0] == 0
