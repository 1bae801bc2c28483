"""The sending half of one HTTP/2 gRPC connection: frames out, held to the peer's windows."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.grpc_api import h2wire as wire

if TYPE_CHECKING:
    import asyncio

    from gateway.grpc_api.h2calls import Method


@dataclass(eq=False)
class Stream:
    """One call's stream: its request as it arrives, its task, and its answer as it leaves."""

    id: int
    sent: int = 0  # answer bytes sent, less the peer's WINDOW_UPDATEs: its window is the initial one less this
    method: Method | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    deadline: float | None = None
    encoding: str = "identity"
    body: bytearray = field(default_factory=bytearray)
    task: asyncio.Future[None] | None = None  # the call in flight: a task, or a direct call's future
    leave: Callable[[], None] | None = None  # a direct call's hook for a client that leaves first
    remote_closed: bool = False
    pending: bytes = b""  # response DATA not yet allowed by the flow-control windows; then OK trailers
    opened: float = 0.0  # time.monotonic() of its HEADERS: the request must follow within body_timeout_s


class Outbox:
    """The frames a connection owes, written together when it flushes, and the answers the
    peer's flow-control windows hold back until its WINDOW_UPDATE frames.

    ``ended`` is called with a stream once its last frame is queued: the connection forgets it.
    """

    def __init__(self, ended: Callable[[Stream], None]) -> None:
        self.frames: list[bytes] = []
        self.send_window = wire.DEFAULT_WINDOW  # the connection's
        self.peer_stream_window = wire.DEFAULT_WINDOW  # each stream's initial one
        self.peer_frame = wire.DEFAULT_FRAME
        # Answers waiting for the peer's windows; ``blocked`` holds those only the connection
        # window stops, so a WINDOW_UPDATE visits just the streams it can move.
        self.waiting: dict[int, Stream] = {}
        self.blocked: dict[int, Stream] = {}
        self._ended = ended

    def add(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        self.frames.append(wire.frame(kind, flags, stream, payload))

    def answer(self, stream: Stream, data: bytes) -> None:
        """Response headers, then the message as the windows allow, then OK trailers."""
        self.add(wire.HEADERS, wire.END_HEADERS, stream.id, wire.RESPONSE_HEADERS)
        stream.pending = data
        self.send_data(stream)

    def send_data(self, stream: Stream) -> None:
        """As much of the pending answer as the windows allow; the trailers once it is all out."""
        data = stream.pending
        while data:
            size = min(len(data), self.peer_frame, self.send_window, self.peer_stream_window - stream.sent)
            if size <= 0:
                break
            self.add(wire.DATA, 0, stream.id, data[:size])
            data = data[size:]
            self.send_window -= size
            stream.sent += size
        stream.pending = data
        if not data:
            self.forget(stream)
            self.block(stream, wire.OK_TRAILERS, end=True)
            return
        self.waiting[stream.id] = stream
        if self.send_window <= 0 < self.peer_stream_window - stream.sent:
            self.blocked[stream.id] = stream
        else:
            self.blocked.pop(stream.id, None)

    def block(self, stream: Stream, block: bytes, end: bool) -> None:
        """A whole header block, split into CONTINUATION frames if it exceeds the peer's frame size."""
        first = True
        while True:
            part, block = block[: self.peer_frame], block[self.peer_frame :]
            flags = (wire.END_STREAM if end and first else 0) | (0 if block else wire.END_HEADERS)
            self.add(wire.HEADERS if first else wire.CONTINUATION, flags, stream.id, part)
            first = False
            if not block:
                break
        if end:
            if not stream.remote_closed:
                # Answered before the request finished: the rest of it is not wanted (RFC 9113 §8.1).
                self.add(wire.RST_STREAM, 0, stream.id, struct.pack(">I", wire.NO_ERROR))
            self._ended(stream)

    def forget(self, stream: Stream) -> None:
        self.waiting.pop(stream.id, None)
        self.blocked.pop(stream.id, None)

    # -- the peer's windows -----------------------------------------------------------------
    def widen(self, increment: int) -> bool:
        """The connection window grew: send what it held back. False if it overflowed."""
        self.send_window += increment
        if self.send_window > wire.MAX_WINDOW:
            return False
        for blocked in list(self.blocked.values()):
            if self.send_window <= 0:
                break
            self.send_data(blocked)
        return True

    def widen_stream(self, stream: Stream, increment: int) -> bool:
        """A stream's window grew: send what it held back. False if it overflowed."""
        stream.sent -= increment
        if self.peer_stream_window - stream.sent > wire.MAX_WINDOW:
            return False
        if stream.pending:
            self.send_data(stream)
        return True

    def initial_window(self, value: int) -> None:
        """Every stream's window moves with the initial one (RFC 9113 §6.9.2): kept relative
        to it, that costs nothing per stream."""
        grown = value > self.peer_stream_window
        self.peer_stream_window = value
        if grown:
            for stream in list(self.waiting.values()):
                self.send_data(stream)
