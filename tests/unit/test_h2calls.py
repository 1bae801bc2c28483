"""A gRPC call's head and message as the HTTP/2 front reads them (gateway/grpc_api/h2calls.py)."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest

from gateway.grpc_api.h2calls import Abort, read_message, request_head

GRPC = [
    (":method", "POST"),
    (":path", "/inference.GRPCInferenceService/ModelInfer"),
    ("content-type", "application/grpc"),
]


def test_the_head_keeps_metadata_apart_from_the_protocols_own_fields() -> None:
    head = request_head(
        [*GRPC, ("te", "trailers"), ("grpc-timeout", "250m"), ("x-tenant", "a"), ("grpc-encoding", "gzip")]
    )
    assert head.is_grpc
    assert head.path == "/inference.GRPCInferenceService/ModelInfer"
    assert head.metadata == (("x-tenant", "a"),)
    assert head.timeout_s == pytest.approx(0.25)
    assert head.encoding == "gzip"


def test_a_malformed_timeout_means_none_and_a_plain_http_request_is_not_grpc() -> None:
    assert request_head([*GRPC, ("grpc-timeout", "10x")]).timeout_s is None
    assert not request_head([(":method", "GET"), ("content-type", "application/grpc")]).is_grpc
    assert not request_head([(":method", "POST"), ("content-type", "application/json")]).is_grpc


def _framed(message: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", int(compressed), len(message)) + message


def test_a_plain_message_comes_out_as_sent() -> None:
    assert read_message(_framed(b"hello"), "identity", 1 << 20) == b"hello"


def test_gzip_and_deflate_messages_are_inflated() -> None:
    assert read_message(_framed(gzip.compress(b"x" * 1000), True), "gzip", 1 << 20) == b"x" * 1000
    assert read_message(_framed(zlib.compress(b"y" * 1000), True), "deflate", 1 << 20) == b"y" * 1000


@pytest.mark.parametrize(
    ("body", "encoding", "code", "words"),
    [
        (b"\x00\x00\x00", "identity", 13, "not one length-prefixed"),
        (_framed(b"abc")[:-1], "identity", 13, "not one length-prefixed"),
        (_framed(b"abc") + b"more", "identity", 13, "not one length-prefixed"),
        (_framed(b"abc", True), "identity", 13, "without grpc-encoding"),
        (_framed(b"not gzip", True), "gzip", 13, "cannot decompress"),
        (_framed(gzip.compress(b"z" * 5000), True), "gzip", 8, "exceeds the message limit"),
    ],
)
def test_a_bad_message_is_refused_with_its_status(body: bytes, encoding: str, code: int, words: str) -> None:
    with pytest.raises(Abort) as caught:
        read_message(body, encoding, 4096)
    assert caught.value.code == code
    assert words in caught.value.message
