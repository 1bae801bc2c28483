"""A lean HTTP/2 server for unary gRPC calls: the gateway's default gRPC listener.

grpc.aio's server costs about 100 µs of CPU per unary call on the 2-core benchmark box
(an echo servicer tops out near 10,000 calls/s on one core), so at 64 users the
gateway's event loop spent most of its time inside grpc.aio and gRPC reached about 60%
of the HTTP front's throughput. This module speaks just the part of HTTP/2 (RFC 9113)
that unary gRPC uses, on the gateway's own event loop, and hands each call to the same
servicer (:class:`gateway.grpc_api.servicer.GRPCFront`) grpc.aio would: a request
message in, a response message or a status out. ``grpc.server: grpcio`` in the
configuration switches back to grpc.aio.

What it does and does not do:

- Header blocks are decoded with ``hpack`` (Huffman and the dynamic table, as gRPC's
  C-core clients send them); its own header blocks use only the static table and
  literals that are never indexed, so the peer needs no state to read them.
- Flow control in both directions: the receive windows are given back as data arrives
  (each message is bounded by ``grpc.max_message_bytes``), and answers larger than the
  peer's windows wait for its WINDOW_UPDATE frames.
- ``grpc-encoding`` gzip and deflate requests are inflated; answers are never compressed.
- A reset stream or a lost connection cancels the call's task, which is how a cancelled
  client reaches the batcher. ``grpc-timeout`` is handed to the servicer as
  ``time_remaining()``.
- Streaming methods are answered UNIMPLEMENTED (the gateway implements none), as are
  unknown methods. Server push, priorities and trailers sent by the client are ignored.
- What a client can make it hold is bounded: a connection stops being read while more
  than ``write_buffer_bytes`` of its answers wait to be sent (a client that floods PINGs
  or never reads cannot grow the gateway's memory); the preface must arrive within
  ``header_timeout_s`` and each request message within ``body_timeout_s`` of its headers
  (a call whose request stalls is answered DEADLINE_EXCEEDED and gives back its slot in
  the call limit); a connection without calls for ``idle_timeout_s`` gets GOAWAY and is
  closed, which gRPC clients answer by reconnecting on their next call; connections past
  ``max_connections`` get GOAWAY at once. Streams waiting for the peer's window are kept
  apart, so a WINDOW_UPDATE costs nothing per idle stream.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast
from urllib.parse import quote

import grpc
import hpack

log = logging.getLogger("batchgate.grpc")
# hpack logs every header block it decodes at debug level, credentials included: never let it.
logging.getLogger("hpack").setLevel(logging.WARNING)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY_FRAME, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = range(1, 6)
MAX_HEADER_LIST = 6
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 6, 7, 8, 9, 11
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
OUR_FRAME = 1 << 20  # largest frame we accept: big DATA frames mean fewer of them
STREAM_WINDOW = 4 << 20  # per stream; given back as it is used
CONNECTION_GRANT = MAX_WINDOW - DEFAULT_WINDOW  # the connection window, raised once to the maximum
MAX_HEADER_BLOCK = 64 * 1024  # header bytes per request (HEADERS + CONTINUATION) before GOAWAY
MAX_HEADER_LIST_SIZE = 16 * 1024  # decoded metadata per request (grpcio allows 8 KiB by default)
RESERVED = frozenset({"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"})
TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def next_frame(buffer: bytearray, at: int, limit: int) -> tuple[int, int, int, bytes, int] | None:
    """The frame starting at ``at``: kind, flags, stream, payload and where the next starts;
    None until all of it has arrived. A frame longer than ``limit`` raises ValueError."""
    if len(buffer) - at < 9:
        return None
    length = int.from_bytes(buffer[at : at + 3], "big")
    if length > limit:
        raise ValueError(f"frame of {length} bytes")
    end = at + 9 + length
    if len(buffer) < end:
        return None
    stream = int.from_bytes(buffer[at + 5 : at + 9], "big") & MAX_WINDOW
    return buffer[at + 3], buffer[at + 4], stream, bytes(buffer[at + 9 : end]), end


def unpad(payload: bytes) -> bytes | None:
    """A PADDED frame's payload without its pad length and padding; None when they do not fit."""
    if not payload or payload[0] >= len(payload):
        return None
    return payload[1 : len(payload) - payload[0]]


def header_fragment(flags: int, payload: bytes) -> bytes | None:
    """A HEADERS frame's block fragment: padding and priority fields removed; None if malformed."""
    if flags & PADDED:
        stripped = unpad(payload)
        if stripped is None:
            return None
        payload = stripped
    return payload[5:] if flags & PRIORITY else payload


def hpack_int(value: int, prefix: int, pattern: int = 0) -> bytes:
    """RFC 7541 §5.1 integer with an N-bit prefix; ``pattern`` sets the representation's flag bits."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes((pattern | value,))
    out = bytearray((pattern | top,))
    value -= top
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A field never added to any table: the peer keeps no state for our header blocks."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


# :status 200 (static entry 8), then content-type (static name 31) with its value.
RESPONSE_HEADERS = b"\x88" + hpack_int(31, 4) + hpack_int(16, 7) + b"application/grpc"
OK_TRAILERS = _literal(b"grpc-status", b"0")


def _status_block(code: int, message: str, metadata: tuple[tuple[str, str], ...], headers: bool) -> bytes:
    """Trailers (or, for an error before any answer, a trailers-only response)."""
    block = RESPONSE_HEADERS if headers else b""
    block += _literal(b"grpc-status", str(code).encode())
    if message:
        # gRPC percent-encodes the message; keep printable ASCII except '%' as it is.
        block += _literal(b"grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode())
    for key, value in metadata:
        block += _literal(key.lower().encode(), value.encode())
    return block


def grpc_timeout(value: str) -> float | None:
    """``grpc-timeout`` (up to 8 digits and a unit) in seconds; None when malformed."""
    if 2 <= len(value) <= 9 and value[:-1].isdigit() and value[-1] in TIMEOUT_UNITS:
        return int(value[:-1]) * TIMEOUT_UNITS[value[-1]]
    return None


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


@dataclass(frozen=True)
class Method:
    """One unary method: how to read its request and the handler that answers it."""

    parse: Callable[[bytes], Any]
    handler: Callable[[Any, CallContext], Awaitable[Any]]
    refuse: str = ""  # answered UNIMPLEMENTED with this message as soon as the call starts


@dataclass(eq=False)
class _Stream:
    id: int
    sent: int = 0  # answer bytes sent, less the peer's WINDOW_UPDATEs: its window is the initial one less this
    method: Method | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    deadline: float | None = None
    encoding: str = "identity"
    body: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None
    remote_closed: bool = False
    pending: bytes = b""  # response DATA not yet allowed by the flow-control windows; then OK trailers
    opened: float = 0.0  # time.monotonic() of its HEADERS: the request must follow within body_timeout_s


class H2Server:
    """Listens, accepts connections and counts the calls in flight across all of them."""

    def __init__(
        self,
        methods: dict[str, Method],
        max_message_bytes: int,
        max_calls: int,
        ssl_context: ssl.SSLContext | None,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
        idle_timeout_s: float = 300.0,
        max_connections: int = 1024,
        write_buffer_bytes: int = 4 << 20,
    ) -> None:
        self.methods = methods
        self.max_message_bytes = max_message_bytes
        self.max_calls = max_calls
        self.ssl_context = ssl_context
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.write_buffer_bytes = write_buffer_bytes
        self.calls = 0
        self.connections: set[H2Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.closing = False

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: H2Connection(self), host, port, ssl=self.ssl_context)
        self._schedule_sweep()
        return int(self._server.sockets[0].getsockname()[1])

    def _schedule_sweep(self) -> None:
        limits = [t for t in (self.header_timeout_s, self.body_timeout_s, self.idle_timeout_s) if t > 0]
        if limits and not self.closing:
            # A quarter of the shortest limit: nothing is held much more than 25% past it.
            period = min(1.0, max(0.01, min(limits) / 4))
            self._sweeper = asyncio.get_running_loop().call_later(period, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for connection in list(self.connections):
            connection.sweep(now)
        self._schedule_sweep()

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls (GOAWAY), give the ones in flight ``grace`` seconds, then close."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.go_away(NO_ERROR)
        tasks = [s.task for c in self.connections for s in c.streams.values() if s.task is not None]
        if tasks and grace:
            await asyncio.wait(tasks, timeout=grace)
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()


class H2Connection(asyncio.Protocol):
    """One client connection: frames in, calls dispatched as tasks, answers out."""

    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface = False
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST_SIZE)
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.send_window = DEFAULT_WINDOW
        self.peer_stream_window = DEFAULT_WINDOW
        self.peer_frame = DEFAULT_FRAME
        self.headers_for: int | None = None  # a header block continues on this stream
        self.header_block = bytearray()
        self.header_flags = 0
        self.credit = 0  # connection window to give back after this read
        self.peer = "unknown"
        self.closed = False
        self.out: list[bytes] = []  # frames written once the current read is handled
        self.flush_due = False
        # Answers waiting for the peer's windows; ``blocked`` holds those only the connection
        # window stops, so a WINDOW_UPDATE visits just the streams it can move.
        self.waiting: dict[int, _Stream] = {}
        self.blocked: dict[int, _Stream] = {}
        self.opened = self.last_call = time.monotonic()

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport = transport
        transport.set_write_buffer_limits(high=self.server.write_buffer_bytes)
        if len(self.server.connections) >= self.server.max_connections:
            # Our preface (an empty SETTINGS) and straight away GOAWAY: clients back off and retry.
            debug = f"too many open connections (limit {self.server.max_connections}); retry later".encode()
            goaway = frame(GOAWAY, 0, 0, struct.pack(">II", 0, ENHANCE_YOUR_CALM) + debug)
            transport.write(frame(SETTINGS, 0, 0, b"") + goaway)
            transport.close()
            self.closed = True
            return
        self.server.connections.add(self)
        address = transport.get_extra_info("peername")
        if isinstance(address, tuple) and len(address) >= 2:
            host, port = address[0], address[1]
            self.peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        settings = struct.pack(
            ">HIHIHIHI",
            MAX_CONCURRENT_STREAMS,
            self.server.max_calls,
            INITIAL_WINDOW_SIZE,
            STREAM_WINDOW,
            MAX_FRAME_SIZE,
            OUR_FRAME,
            MAX_HEADER_LIST,
            MAX_HEADER_LIST_SIZE,
        )
        settings += struct.pack(">HI", ENABLE_PUSH, 0)
        grant = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", CONNECTION_GRANT))
        transport.write(frame(SETTINGS, 0, 0, settings) + grant)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            self._drop(stream, cancel=True)

    def pause_writing(self) -> None:
        """The answers outrun what the client reads: stop reading its frames until they drain."""
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def sweep(self, now: float) -> None:
        """Enforce the server's time limits on this connection (called about every second)."""
        if self.closed:
            return
        if not self.preface:
            limit = self.server.header_timeout_s
            if limit > 0 and now - self.opened > limit:
                log.info("closing gRPC connection from %s: no HTTP/2 preface within %g s", self.peer, limit)
                self.abort()
                self.closed = True
            return
        limit = self.server.body_timeout_s
        if limit > 0:
            for stream in list(self.streams.values()):
                if stream.method is not None and stream.task is None and now - stream.opened > limit:
                    self._send_status(stream, 4, f"the request message did not arrive within {limit:g} s", True)
        idle = self.server.idle_timeout_s
        if idle > 0 and not self.streams and now - self.last_call > idle:
            log.info("closing gRPC connection from %s: no calls for %g s", self.peer, idle)
            self.go_away(NO_ERROR, "idle")
            self.abort()
            self.closed = True
        self.flush()

    def go_away(self, code: int, debug: str = "") -> None:
        """Tell the client no stream after the last one seen will be served."""
        if self.transport is not None and not self.closed:
            self.transport.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, code) + debug.encode()))

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.flush()  # answers queued for this turn of the loop still go out
            self.transport.close()

    def _fail(self, code: int, debug: str) -> None:
        """A connection error: GOAWAY, then close (RFC 9113 §5.4.1)."""
        log.info("closing gRPC connection from %s: %s", self.peer, debug)
        self.go_away(code, debug)
        self.flush()
        self.abort()
        self.closed = True

    def flush(self) -> None:
        self.flush_due = False
        if self.out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def flush_soon(self) -> None:
        """Write once the answers finishing in this turn of the event loop are all queued.

        A batch completes every call in it at once, and a client's calls share one
        connection: one write for all of them instead of one each (on loopback each send
        runs the receiver's TCP path too, a quarter of the gateway's time at 64 users).
        """
        if not self.flush_due:
            self.flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    # -- frames in -------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        buffer = self.buffer
        buffer += data
        at = 0
        if not self.preface:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(buffer)):
                    self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if bytes(buffer[: len(PREFACE)]) != PREFACE:
                self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            self.preface = True
            at = len(PREFACE)
        while not self.closed:
            try:
                found = next_frame(buffer, at, OUR_FRAME)
            except ValueError as exc:
                self._fail(FRAME_SIZE_ERROR, str(exc))
                return
            if found is None:
                break
            kind, flags, stream, payload, at = found
            try:
                self._frame(kind, flags, stream, payload)
            except Exception:  # a bug here must cost this connection, never the listener
                log.exception("gRPC connection from %s: frame %d on stream %d", self.peer, kind, stream)
                self._fail(INTERNAL_ERROR, "internal error")
                return
        del buffer[:at]
        if self.credit and not self.closed:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.credit)))
            self.credit = 0
        self.flush()

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self.headers_for is not None and kind != CONTINUATION:
            self._fail(PROTOCOL_ERROR, "a header block was interrupted")
        elif kind == DATA:
            self._data(flags, stream, payload)
        elif kind == HEADERS:
            self._headers(flags, stream, payload)
        elif kind == CONTINUATION:
            if stream != self.headers_for:
                self._fail(PROTOCOL_ERROR, "CONTINUATION without a header block")
                return
            self._block_part(stream, flags, payload)
        elif kind == RST_STREAM:
            found = self.streams.get(stream)
            if found is not None:
                self._drop(found, cancel=True)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == PING:
            if len(payload) != 8:
                self._fail(FRAME_SIZE_ERROR, "PING of the wrong size")
            elif not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._window_update(stream, payload)
        elif kind == GOAWAY:
            pass  # the client finishes its calls and closes
        elif kind == PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "a client may not push")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5)

    def _headers(self, flags: int, stream: int, payload: bytes) -> None:
        fragment = header_fragment(flags, payload)
        if fragment is None:
            self._fail(PROTOCOL_ERROR, "bad padding")
            return
        if stream == 0 or stream % 2 == 0:
            self._fail(PROTOCOL_ERROR, f"HEADERS on stream {stream}")
            return
        self.header_flags = flags
        self.header_block = bytearray()
        self._block_part(stream, flags, fragment)

    def _block_part(self, stream: int, flags: int, payload: bytes) -> None:
        self.header_block += payload
        if len(self.header_block) > MAX_HEADER_BLOCK:
            self._fail(ENHANCE_YOUR_CALM, "header block too large")
            return
        if not flags & END_HEADERS:
            self.headers_for = stream
            return
        self.headers_for = None
        try:
            fields = cast(list[tuple[str, str]], self.decoder.decode(bytes(self.header_block)))
        except (hpack.HPACKError, UnicodeDecodeError) as exc:
            # A field list over our limit still leaves the decoder in step; anything else does not.
            if isinstance(exc, hpack.OversizedHeaderListError):
                self._begin_error(stream, 8, "request metadata is larger than 16 KiB")
                return
            self._fail(COMPRESSION_ERROR, f"header block: {exc}")
            return
        found = self.streams.get(stream)
        if found is not None:  # trailers from the client: only their end of stream matters
            if self.header_flags & END_STREAM:
                self._request_complete(found)
            return
        if stream <= self.last_stream:
            self._fail(PROTOCOL_ERROR, f"stream {stream} reused")
            return
        self.last_stream = stream
        self._begin(stream, fields, bool(self.header_flags & END_STREAM))

    def _begin(self, stream_id: int, fields: list[tuple[str, str]], ended: bool) -> None:
        path = method_name = ""
        content_type = ""
        metadata = []
        timeout = None
        encoding = "identity"
        for name, value in fields:
            if name[0] == ":":
                if name == ":path":
                    path = value
                elif name == ":method":
                    method_name = value
            elif name == "content-type":
                content_type = value
            elif name == "grpc-timeout":
                timeout = grpc_timeout(value)
            elif name == "grpc-encoding":
                encoding = value
            elif name not in RESERVED:
                metadata.append((name, value))
        stream = _Stream(stream_id, remote_closed=ended, opened=time.monotonic())
        self.streams[stream_id] = stream
        self.last_call = stream.opened
        if method_name != "POST" or not content_type.startswith("application/grpc"):
            # Not a gRPC call at all: plain HTTP status, as the gRPC spec asks.
            status = hpack_int(8, 4) + hpack_int(3, 7) + b"415"  # :status (static name 8) 415
            self._send_block(stream, status, end=True)
            return
        method = self.server.methods.get(path)
        if method is None or method.refuse:
            message = method.refuse if method is not None else f"method {path} is not implemented"
            self._send_status(stream, 12, message, headers=True)
            return
        if self.server.closing:
            self._send_status(stream, 14, "the gateway is shutting down", headers=True)
            return
        if self.server.calls >= self.server.max_calls:
            self._send_status(stream, 8, f"more than {self.server.max_calls} concurrent calls", headers=True)
            return
        if encoding not in ("identity", "gzip", "deflate"):
            self._send_status(stream, 12, f"grpc-encoding {encoding} is not supported", headers=True)
            return
        stream.method = method
        stream.metadata = tuple(metadata)
        stream.deadline = None if timeout is None else time.monotonic() + timeout
        stream.encoding = encoding
        self.server.calls += 1
        if ended:
            self._request_complete(stream)

    def _begin_error(self, stream_id: int, code: int, message: str) -> None:
        if stream_id > self.last_stream:
            self.last_stream = stream_id
        stream = _Stream(stream_id, remote_closed=bool(self.header_flags & END_STREAM))
        self.streams[stream_id] = stream
        self._send_status(stream, code, message, headers=True)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self.credit += len(payload)
        if flags & PADDED:
            stripped = unpad(payload)
            if stripped is None:
                self._fail(PROTOCOL_ERROR, "bad padding")
                return
            payload = stripped
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self.last_stream:
                self._fail(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream we already answered or reset: the bytes are dropped
        if stream.method is not None and stream.task is None:
            stream.body += payload
            if len(stream.body) > self.server.max_message_bytes + 5:
                self._send_status(
                    stream, 8, f"request larger than the {self.server.max_message_bytes} byte limit", headers=True
                )
                return
        if flags & END_STREAM:
            self._request_complete(stream)
        elif payload:
            self.out.append(frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", len(payload))))

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            self._fail(FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
            return
        for at in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, at)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._fail(FLOW_CONTROL_ERROR, "initial window too large")
                    return
                # Every stream's window moves with the initial one (RFC 9113 §6.9.2): kept
                # relative to it, that costs nothing per stream.
                grown = value > self.peer_stream_window
                self.peer_stream_window = value
                if grown:
                    for stream in list(self.waiting.values()):
                        self._send_data(stream)
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= 2**24 - 1:
                    self._fail(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                    return
                self.peer_frame = value
        self.out.append(frame(SETTINGS, ACK, 0, b""))

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
            return
        increment = int.from_bytes(payload, "big") & MAX_WINDOW
        if stream_id == 0:
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                self._fail(FLOW_CONTROL_ERROR, "connection window overflow")
                return
            for blocked in list(self.blocked.values()):
                if self.send_window <= 0:
                    break
                self._send_data(blocked)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.sent -= increment
        if self.peer_stream_window - stream.sent > MAX_WINDOW:
            self.out.append(frame(RST_STREAM, 0, stream_id, struct.pack(">I", FLOW_CONTROL_ERROR)))
            self._drop(stream, cancel=True)
        elif stream.pending:
            self._send_data(stream)

    # -- calls ------------------------------------------------------------------------------
    def _request_complete(self, stream: _Stream) -> None:
        stream.remote_closed = True
        method = stream.method
        if method is None or stream.task is not None:
            return
        body = stream.body
        stream.body = bytearray()
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._send_status(stream, 13, "the request is not one length-prefixed gRPC message", headers=True)
            return
        message = bytes(body[5:])
        if body[0]:
            try:
                wbits = 31 if stream.encoding == "gzip" else 15
                if stream.encoding == "identity":
                    raise ValueError("a compressed message without grpc-encoding")
                inflater = zlib.decompressobj(wbits)
                message = inflater.decompress(message, self.server.max_message_bytes)
                if inflater.unconsumed_tail:
                    self._send_status(stream, 8, "the inflated request exceeds the message limit", headers=True)
                    return
            except (ValueError, zlib.error) as exc:
                self._send_status(stream, 13, f"cannot decompress the request: {exc}", headers=True)
                return
        stream.task = asyncio.get_running_loop().create_task(self._call(stream, method, message))

    async def _call(self, stream: _Stream, method: Method, message: bytes) -> None:
        try:
            try:
                request = method.parse(message)
            except Exception as exc:  # protobuf's DecodeError and friends
                raise Abort(13, f"cannot parse the request message: {exc}") from None
            response = await method.handler(request, CallContext(stream.metadata, self.peer, stream.deadline))
            payload = response.SerializeToString()
            if len(payload) > self.server.max_message_bytes:
                raise Abort(8, f"response larger than the {self.server.max_message_bytes} byte limit")
        except Abort as abort:
            self._send_status(stream, abort.code, abort.message, headers=True, metadata=abort.metadata)
            self.flush_soon()
            return
        except asyncio.CancelledError:
            return  # the client reset the stream or went away: nobody to answer
        except Exception:
            log.exception("gRPC call on stream %d failed", stream.id)
            self._send_status(stream, 2, "internal error in the gateway", headers=True)
            self.flush_soon()
            return
        self._answer(stream, struct.pack(">BI", 0, len(payload)) + payload)
        self.flush_soon()

    # -- frames out -------------------------------------------------------------------------
    def _answer(self, stream: _Stream, data: bytes) -> None:
        if self.closed or stream.id not in self.streams:
            return
        self.out.append(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
        stream.pending = data
        self._send_data(stream)

    def _send_data(self, stream: _Stream) -> None:
        """As much of the pending answer as the windows allow; the trailers once it is all out."""
        data = stream.pending
        while data:
            size = min(len(data), self.peer_frame, self.send_window, self.peer_stream_window - stream.sent)
            if size <= 0:
                break
            self.out.append(frame(DATA, 0, stream.id, data[:size]))
            data = data[size:]
            self.send_window -= size
            stream.sent += size
        stream.pending = data
        if not data:
            self.waiting.pop(stream.id, None)
            self.blocked.pop(stream.id, None)
            self._send_block(stream, OK_TRAILERS, end=True)
            return
        self.waiting[stream.id] = stream
        if self.send_window <= 0 < self.peer_stream_window - stream.sent:
            self.blocked[stream.id] = stream
        else:
            self.blocked.pop(stream.id, None)

    def _send_status(
        self, stream: _Stream, code: int, message: str, headers: bool, metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        if self.closed or stream.id not in self.streams:
            return
        self._send_block(stream, _status_block(code, message, metadata, headers), end=True)

    def _send_block(self, stream: _Stream, block: bytes, end: bool) -> None:
        """A whole header block, split into CONTINUATION frames if it exceeds the peer's frame size."""
        first = True
        while True:
            part, block = block[: self.peer_frame], block[self.peer_frame :]
            flags = (END_STREAM if end and first else 0) | (0 if block else END_HEADERS)
            self.out.append(frame(HEADERS if first else CONTINUATION, flags, stream.id, part))
            first = False
            if not block:
                break
        if end:
            if not stream.remote_closed:
                # Answered before the request finished: the rest of it is not wanted (RFC 9113 §8.1).
                self.out.append(frame(RST_STREAM, 0, stream.id, struct.pack(">I", NO_ERROR)))
            self._drop(stream, cancel=False)

    def _drop(self, stream: _Stream, cancel: bool) -> None:
        if self.streams.pop(stream.id, None) is None:
            return
        self.waiting.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        self.last_call = time.monotonic()
        if stream.method is not None:
            self.server.calls -= 1
        if cancel and stream.task is not None and not stream.task.done():
            stream.task.cancel()


def unary_methods(service: Any, servicer: Any) -> dict[str, Method]:
    """Every method of a protobuf service, bound to the servicer's coroutine of that name.

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
            request_class.FromString, getattr(servicer, descriptor.name), refuse
        )
    return methods


def server_ssl_context(cert_file: Any, key_file: Any, client_ca_file: Any | None) -> ssl.SSLContext:
    """TLS for gRPC: HTTP/2 negotiated by ALPN, client certificates required when a CA is given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    context.set_alpn_protocols(["h2"])
    if client_ca_file is not None:
        context.load_verify_locations(str(client_ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
