"""A raw HTTP/2 peer and a small servicer for testing the gateway's own gRPC front
(gateway/grpc_api/h2*.py) frame by frame, where tritonclient cannot go.

:class:`Loop` runs the front's server on its own event loop in a thread, with
:class:`Servicer` behind it; :class:`Peer` is a blocking client that writes the frames a
test spells out and reads the answers one frame at a time.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from benchmarks.h2grpc import grpc_status, request_block
from gateway.grpc_api.h2calls import CallContext, Reply, unary_methods
from gateway.grpc_api.h2server import H2Server
from gateway.grpc_api.h2wire import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)

INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]


class Servicer:
    """ModelInfer echoes the request's raw contents back ``repeat`` times; "hold" waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.metadata: dict[str, str] = {}

    async def ModelInfer(self, request: Any, context: CallContext) -> Any:
        self.metadata = dict(context.invocation_metadata())
        if request.model_name == "hold":
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if request.model_name == "fail":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such model 50%")
        response = service_pb2.ModelInferResponse(model_name=request.model_name)
        response.raw_output_contents.append(b"".join(request.raw_input_contents) * int(request.id or 1))
        return response

    def infer_now(self, request: Any, context: CallContext, reply: Reply) -> Callable[[], None] | None:
        """The same ModelInfer as a direct handler: "hold" answers only when left alone, "boom" raises."""
        if request.model_name == "boom":
            raise RuntimeError("a bug in the handler")
        if request.model_name == "hold":
            self.started.set()
            return self.cancelled.set
        response = service_pb2.ModelInferResponse(model_name=request.model_name)
        response.raw_output_contents.append(b"".join(request.raw_input_contents) * int(request.id or 1))
        asyncio.get_running_loop().call_soon(reply, response, None)  # answered later, as a batch would
        return self.cancelled.set

    def __getattr__(self, name: str) -> Any:
        async def unimplemented(request: Any, context: CallContext) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, name)

        return unimplemented


class Loop:
    """The server on its own event loop in a thread, so the test can use blocking sockets."""

    def __init__(
        self, max_message_bytes: int = 1 << 20, max_calls: int = 16, direct: bool = False, **options: Any
    ) -> None:
        self.servicer = Servicer()
        self.peers: list[Peer] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        methods = unary_methods(SERVICE, self.servicer, {"ModelInfer": self.servicer.infer_now} if direct else None)
        self.server = H2Server(methods, max_message_bytes, max_calls, None, **options)
        self.port = self.run(self.server.start("127.0.0.1", 0))

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def peer(self, window: int = 1 << 20, preface: bytes = PREFACE) -> Peer:
        peer = Peer(self.port, window, preface)
        self.peers.append(peer)
        return peer

    def close(self) -> None:
        for peer in self.peers:
            peer.sock.close()
        self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Peer:
    """A blocking HTTP/2 client that writes frames as told and reads frames one at a time."""

    def __init__(self, port: int, window: int = 1 << 20, preface: bytes = PREFACE) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        settings = struct.pack(">HI", INITIAL_WINDOW_SIZE, window)
        self.sock.sendall(preface + frame(SETTINGS, 0, 0, settings))
        self.buffer = b""
        self.grants: list[int] = []  # the server's WINDOW_UPDATEs for the whole connection

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> tuple[int, int, int, bytes] | None:
        """The next frame other than SETTINGS and WINDOW_UPDATE on stream 0; None when closed."""
        while True:
            while len(self.buffer) < 9 or len(self.buffer) < 9 + int.from_bytes(self.buffer[:3], "big"):
                chunk = self.sock.recv(65536)
                if not chunk:
                    return None
                self.buffer += chunk
            length = int.from_bytes(self.buffer[:3], "big")
            kind, flags = self.buffer[3], self.buffer[4]
            stream = int.from_bytes(self.buffer[5:9], "big")
            payload, self.buffer = self.buffer[9 : 9 + length], self.buffer[9 + length :]
            if kind == WINDOW_UPDATE and stream == 0:
                self.grants.append(int.from_bytes(payload, "big"))
                continue
            if kind == SETTINGS:
                continue
            return kind, flags, stream, payload

    def answer(self, stream: int) -> tuple[int | None, bytes]:
        """Read to the end of ``stream``: its grpc-status (None if reset) and the DATA bytes."""
        data = b""
        while True:
            got = self.read()
            assert got is not None, "connection closed before the answer ended"
            kind, flags, on, payload = got
            if on != stream:
                continue
            if kind == DATA:
                data += payload
            elif kind == RST_STREAM:
                return None, data
            elif kind == HEADERS and flags & END_STREAM:
                return grpc_status(payload), data


def call(model: str, contents: bytes, repeat: int = 1) -> bytes:
    message = service_pb2.ModelInferRequest(model_name=model, id=str(repeat))
    message.raw_input_contents.append(contents)
    body = message.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


def headers(stream: int, path: str = INFER, end: bool = False) -> bytes:
    return frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), stream, request_block("127.0.0.1", path))


def until_end(peer: Peer, stream: int) -> tuple[int, int, int, bytes]:
    while True:
        got = peer.read()
        assert got is not None
        if got[2] == stream and got[0] == HEADERS and got[1] & END_STREAM:
            return got
