"""A lean unary gRPC client for the load generator: one cleartext HTTP/2 connection.

grpc.aio's client costs about 120 µs of CPU per call on the 2-core benchmark box, a third
of a core at 3,000 calls/s taken from the server it measures (the HTTP generator costs
about 23 µs). This speaks just enough HTTP/2 (RFC 9113) for unary calls with one
pre-serialized request message: the request header block is encoded once, each call
writes it and the message with a new stream id, and an answer counts as a success only
when its trailers carry ``grpc-status: 0``. The response message itself is not parsed; a
call answers with the grpc-status, or :data:`NO_STATUS` when the stream ended without one.

It announces a zero-sized HPACK dynamic table, so the server's header blocks carry no
state from one to the next and only the trailers need reading. A header string it cannot
read (Huffman-coded) makes the call count as an error, never as a silent success.
"""

from __future__ import annotations

import asyncio
import collections
import struct
from typing import cast

from gateway.grpc_api.h2wire import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_FRAME,
    DEFAULT_WINDOW,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADER_TABLE_SIZE,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_WINDOW,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
    header_fragment,
    hpack_int,
    next_frame,
)

STATUS_NAME = b"grpc-status"
NO_STATUS = -1  # no trailers, or the stream was reset


def hpack_string(value: bytes) -> bytes:
    return hpack_int(len(value), 7, 0) + value  # raw octets, never Huffman


def request_block(authority: str, path: str) -> bytes:
    """The header block of every call: static-table names, literals never added to a table."""
    return (
        b"\x83\x86"  # :method POST, :scheme http (static entries 3 and 6)
        + hpack_int(4, 4, 0)  # :path, literal value (static name 4)
        + hpack_string(path.encode())
        + hpack_int(1, 4, 0)  # :authority (static name 1)
        + hpack_string(authority.encode())
        + hpack_int(31, 4, 0)  # content-type (static name 31)
        + hpack_string(b"application/grpc")
        + b"\x00"  # a new name: te
        + hpack_string(b"te")
        + hpack_string(b"trailers")
    )


def _read_int(block: bytes, at: int, prefix: int) -> tuple[int, int]:
    top = (1 << prefix) - 1
    value = block[at] & top
    at += 1
    if value < top:
        return value, at
    shift = 0
    while True:
        byte = block[at]
        at += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _read_string(block: bytes, at: int) -> tuple[bytes | None, int]:
    huffman = block[at] & 0x80
    length, at = _read_int(block, at, 7)
    return (None if huffman else block[at : at + length]), at + length


def grpc_status(block: bytes) -> int | None:
    """``grpc-status`` from a header block encoded against an empty dynamic table; None if absent."""
    at = 0
    while at < len(block):
        first = block[at]
        if first & 0x80:  # indexed field: the static table has no grpc-status
            index, at = _read_int(block, at, 7)
            if index > 61:
                raise ValueError(f"HPACK dynamic index {index} after a zero-sized table was announced")
            continue
        if first & 0x40:  # literal with incremental indexing
            index, at = _read_int(block, at, 6)
        elif first & 0x20:  # dynamic table size update
            _, at = _read_int(block, at, 5)
            continue
        else:  # literal without indexing, or never indexed
            index, at = _read_int(block, at, 4)
        name: bytes | None = b""
        if index == 0:
            name, at = _read_string(block, at)
        value, at = _read_string(block, at)
        if name == STATUS_NAME and value is not None:
            return int(value)
    return None


class Connection(asyncio.Protocol):
    """Unary calls multiplexed over one HTTP/2 connection; ``call`` answers with the grpc-status."""

    def __init__(self, authority: str, method_path: str, message: bytes) -> None:
        body = b"\x00" + struct.pack(">I", len(message)) + message  # gRPC length-prefixed message
        self.block = request_block(authority, method_path)
        self.body = body
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.next_stream = 1
        self.calls: dict[int, asyncio.Future[int]] = {}
        self.header_parts: dict[int, tuple[bool, bytearray]] = {}  # stream -> (ends it, block so far)
        self.buffer = bytearray()
        self.send_window = DEFAULT_WINDOW  # the connection's; the server grants more
        self.stream_window = DEFAULT_WINDOW
        self.max_frame = DEFAULT_FRAME
        self.max_streams = 1 << 30
        self.blocked: collections.deque[tuple[int, bytes]] = collections.deque()  # (size, frames) awaiting window
        self.waiting: collections.deque[asyncio.Future[int]] = collections.deque()  # calls over max_streams
        self.received = 0
        self.closed: Exception | None = None

    @classmethod
    async def open(cls, host: str, port: int, method_path: str, message: bytes) -> Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(lambda: cls(f"{host}:{port}", method_path, message), host, port)
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        settings = struct.pack(
            ">HIHIHI", HEADER_TABLE_SIZE, 0, ENABLE_PUSH, 0, INITIAL_WINDOW_SIZE, MAX_WINDOW
        )  # fmt: skip
        grant = struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)
        transport.write(PREFACE + frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, grant))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionResetError("the server closed the connection"))

    def fail(self, exc: Exception) -> None:
        self.closed = exc
        for call in self.calls.values():
            if not call.done():
                call.set_exception(exc)
        self.calls.clear()
        for waiter in self.waiting:
            if not waiter.done():
                waiter.set_exception(exc)
        self.waiting.clear()

    def call(self) -> asyncio.Future[int]:
        """Start one call; its future answers with the grpc-status (0 is OK)."""
        if self.closed is not None:
            raise ConnectionResetError(f"connection closed: {self.closed}")
        answer: asyncio.Future[int] = self.loop.create_future()
        if len(self.calls) >= self.max_streams:
            self.waiting.append(answer)  # started when a stream finishes
        else:
            self._start(answer)
        return answer

    def _start(self, answer: asyncio.Future[int]) -> None:
        stream = self.next_stream
        self.next_stream += 2
        self.calls[stream] = answer
        self._write(stream)

    def _write(self, stream: int) -> None:
        body = self.body
        if len(body) > min(self.stream_window, MAX_WINDOW):
            raise ValueError(f"request of {len(body)} bytes exceeds the server's stream window")
        frames = [frame(HEADERS, END_HEADERS, stream, self.block)]
        for start in range(0, len(body), self.max_frame):
            last = start + self.max_frame >= len(body)
            frames.append(frame(DATA, END_STREAM if last else 0, stream, body[start : start + self.max_frame]))
        data = b"".join(frames)
        assert self.transport is not None
        if self.blocked or len(body) > self.send_window:
            self.blocked.append((len(body), data))
            return
        self.send_window -= len(body)
        self.transport.write(data)

    def _flush_blocked(self) -> None:
        assert self.transport is not None
        while self.blocked and self.blocked[0][0] <= self.send_window:
            size, data = self.blocked.popleft()
            self.send_window -= size
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        at = 0
        while (found := next_frame(buffer, at, 2**24)) is not None:
            kind, flags, stream, payload, at = found
            self._frame(kind, flags, stream, payload)
        del buffer[:at]

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == DATA:
            self.received += len(payload)
            if self.received > MAX_WINDOW // 2:  # give the connection window back in large steps
                assert self.transport is not None
                self.transport.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
                self.received = 0
            if flags & END_STREAM:
                self._finish(stream, NO_STATUS)  # a message without trailers is not a gRPC answer
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                payload = header_fragment(flags, payload) or b""  # a malformed one reads as no grpc-status
                self.header_parts[stream] = (bool(flags & END_STREAM), bytearray())
            entry = self.header_parts.get(stream)
            if entry is None:
                return
            entry[1].extend(payload)
            if flags & END_HEADERS:
                del self.header_parts[stream]
                if entry[0]:  # the trailers (or a trailers-only answer); other header blocks say nothing we need
                    status = grpc_status(bytes(entry[1]))
                    self._finish(stream, NO_STATUS if status is None else status)
        elif kind == RST_STREAM:
            self._finish(stream, NO_STATUS)
        elif kind == SETTINGS and not flags & ACK:
            self._settings(payload)
        elif kind == PING and not flags & ACK:
            assert self.transport is not None
            self.transport.write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE and stream == 0:
            self.send_window += int.from_bytes(payload, "big") & MAX_WINDOW
            self._flush_blocked()
        elif kind == GOAWAY:
            self.fail(ConnectionError("the server sent GOAWAY"))
            assert self.transport is not None
            self.transport.close()

    def _settings(self, payload: bytes) -> None:
        for at in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, at)
            if key == INITIAL_WINDOW_SIZE:
                self.stream_window = value
            elif key == MAX_FRAME_SIZE:
                self.max_frame = value
            elif key == MAX_CONCURRENT_STREAMS:
                self.max_streams = max(1, value)
        assert self.transport is not None
        self.transport.write(frame(SETTINGS, ACK, 0, b""))

    def _finish(self, stream: int, status: int) -> None:
        call = self.calls.pop(stream, None)
        if call is not None and not call.done():
            call.set_result(status)
        while self.waiting and len(self.calls) < self.max_streams:
            waiter = self.waiting.popleft()
            if not waiter.done():
                self._start(waiter)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
