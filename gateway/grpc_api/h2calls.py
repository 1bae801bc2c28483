"""What one unary gRPC call is, apart from the connection it came on.

The servicer's side (:class:`Method`, :class:`CallContext`, :class:`Abort`, as grpc.aio
offers them) and the call's own reading: its request head from the decoded header
fields, and its one length-prefixed, possibly compressed, request message.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from gateway.grpc_api.h2wire import grpc_timeout

# Request headers that are HTTP/2 or gRPC mechanics, not metadata for the servicer.
RESERVED = frozenset({"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"})
ENCODINGS = {"gzip": 31, "deflate": 15}  # grpc-encoding -> zlib window bits


class Abort(Exception):
    """Raised by :meth:`CallContext.abort`: the call ends with this status."""

    def __init__(self, code: int, message: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = metadata


class CallContext:
    """What the servicer asks of a call: grpc.aio's ``ServicerContext``, as far as it is used."""

    __slots__ = ("_deadline", "_metadata", "_peer")

    def __init__(self, metadata: tuple[tuple[str, str], ...], peer: str, deadline: float | None) -> None:
        self._metadata = metadata
        self._peer = peer
        self._deadline = deadline

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: tuple[tuple[str, str], ...] = ()
    ) -> NoReturn:
        raise Abort(int(code.value[0]), details, tuple(trailing_metadata))


Reply = Callable[[Any, "Abort | None"], None]
"""How a direct handler answers: the response message, or the status to end the call with."""

Direct = Callable[[Any, CallContext, Reply], Callable[[], None] | None]
"""A handler that answers through ``reply`` (at once or later, exactly once) instead of a
coroutine; it returns what to call if the client leaves first, or None once it has answered."""


@dataclass(frozen=True)
class Method:
    """One unary method: how to read its request and the handler that answers it.

    With ``direct`` the connection calls that instead of running ``handler`` as a task: the
    answer is queued in the same turn that settles it. For ModelInfer, the hot path, that
    saved 35-95 us of gateway CPU per call at 1 user on the 2-vCPU VM; ``handler`` still
    serves the grpcio front.
    """

    parse: Callable[[bytes], Any]
    handler: Callable[[Any, CallContext], Awaitable[Any]]
    refuse: str = ""  # answered UNIMPLEMENTED with this message as soon as the call starts
    direct: Direct | None = None


@dataclass(frozen=True)
class RequestHead:
    """What a call's header block says: where it goes and how its message comes."""

    path: str = ""
    method: str = ""
    content_type: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    timeout_s: float | None = None
    encoding: str = "identity"

    @property
    def is_grpc(self) -> bool:
        return self.method == "POST" and self.content_type.startswith("application/grpc")


def request_head(fields: list[tuple[str, str]]) -> RequestHead:
    """Read the decoded header fields of a request (a malformed grpc-timeout means none)."""
    path = method = content_type = ""
    metadata = []
    timeout = None
    encoding = "identity"
    for name, value in fields:
        if name[0] == ":":
            if name == ":path":
                path = value
            elif name == ":method":
                method = value
        elif name == "content-type":
            content_type = value
        elif name == "grpc-timeout":
            timeout = grpc_timeout(value)
        elif name == "grpc-encoding":
            encoding = value
        elif name not in RESERVED:
            metadata.append((name, value))
    return RequestHead(path, method, content_type, tuple(metadata), timeout, encoding)


def read_message(body: bytes | bytearray, encoding: str, limit: int) -> bytes:
    """The one message of a unary request body, inflated if it is compressed; or :class:`Abort`."""
    if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        raise Abort(13, "the request is not one length-prefixed gRPC message")
    message = bytes(body[5:])
    if not body[0]:
        return message
    if encoding not in ENCODINGS:
        raise Abort(13, "cannot decompress the request: a compressed message without grpc-encoding")
    inflater = zlib.decompressobj(ENCODINGS[encoding])
    try:
        message = inflater.decompress(message, limit)
    except zlib.error as exc:
        raise Abort(13, f"cannot decompress the request: {exc}") from None
    if inflater.unconsumed_tail:
        raise Abort(8, "the inflated request exceeds the message limit")
    return message


def unary_methods(service: Any, servicer: Any, direct: dict[str, Direct] | None = None) -> dict[str, Method]:
    """Every method of a protobuf service, bound to the servicer's coroutine of that name
    (and to ``direct[name]`` where given).

    Streaming methods are refused: this front serves unary calls only.
    """
    from google.protobuf import message_factory

    methods = {}
    for descriptor in service.methods:
        request_class = message_factory.GetMessageClass(descriptor.input_type)
        refuse = ""
        if descriptor.client_streaming or descriptor.server_streaming:
            refuse = f"batchgate does not implement the streaming method {descriptor.name}"
        methods[f"/{service.full_name}/{descriptor.name}"] = Method(
            request_class.FromString,
            getattr(servicer, descriptor.name),
            refuse,
            None if refuse else (direct or {}).get(descriptor.name),
        )
    return methods
