"""One client connection of the gateway's HTTP/2 gRPC front (see :mod:`gateway.grpc_api.h2server`).

Frames in, each complete request handed to its call (:mod:`gateway.grpc_api.h2dispatch`:
a task, or ModelInfer's direct handler), answers out: flow control in both directions,
header blocks through ``hpack``, the connection's and its calls' time limits (checked by
the server's sweep), and a stream reset or a lost connection cancelling its calls.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import TYPE_CHECKING, cast

import hpack

from gateway.grpc_api import h2wire as wire
from gateway.grpc_api.h2calls import ENCODINGS, request_head
from gateway.grpc_api.h2dispatch import CallsMixin
from gateway.grpc_api.h2send import Outbox, Stream

if TYPE_CHECKING:
    from gateway.grpc_api.h2server import H2Server

log = logging.getLogger("batchgate.grpc")
# hpack logs every header block it decodes at debug level, credentials included: never let it.
logging.getLogger("hpack").setLevel(logging.WARNING)


class MetadataTooLarge(Exception):
    """A request's decoded header fields exceed ``wire.MAX_HEADER_LIST_SIZE`` (RFC 9113 §6.5.2's 32
    bytes a field plus its name and value)."""


class H2Connection(CallsMixin, asyncio.Protocol):
    """One client connection: frames in, calls dispatched (as tasks, or direct), answers out."""

    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface = False
        self.decoder = hpack.Decoder(max_header_list_size=wire.MAX_DECODED_HEADERS)
        self.last_block: bytes | None = None  # see _decode
        self.last_fields: list[tuple[str, str]] = []
        self.streams: dict[int, Stream] = {}
        self.last_stream = 0
        self.headers_for: int | None = None  # a header block continues on this stream
        self.header_block = bytearray()
        self.header_flags = 0
        self.credit = 0  # connection window used and not yet given back (see wire.CONNECTION_REFILL)
        self.peer = "unknown"
        self.closed = False
        self.outbox = Outbox(lambda stream: self._drop(stream, cancel=False))
        self.flush_due = False
        self.opened = self.last_call = time.monotonic()

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport = transport
        transport.set_write_buffer_limits(high=self.server.write_buffer_bytes)
        if len(self.server.connections) >= self.server.max_connections:
            # Our preface (an empty SETTINGS) and straight away GOAWAY: clients back off and retry.
            debug = f"too many open connections (limit {self.server.max_connections}); retry later".encode()
            goaway = wire.frame(wire.GOAWAY, 0, 0, struct.pack(">II", 0, wire.ENHANCE_YOUR_CALM) + debug)
            transport.write(wire.frame(wire.SETTINGS, 0, 0, b"") + goaway)
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
            wire.MAX_CONCURRENT_STREAMS,
            self.server.max_calls,
            wire.INITIAL_WINDOW_SIZE,
            wire.STREAM_WINDOW,
            wire.MAX_FRAME_SIZE,
            wire.OUR_FRAME,
            wire.MAX_HEADER_LIST,
            wire.MAX_HEADER_LIST_SIZE,
        )
        settings += struct.pack(">HI", wire.ENABLE_PUSH, 0)
        grant = wire.frame(wire.WINDOW_UPDATE, 0, 0, struct.pack(">I", wire.CONNECTION_GRANT))
        transport.write(wire.frame(wire.SETTINGS, 0, 0, settings) + grant)

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
            self.go_away(wire.NO_ERROR, "idle")
            self.abort()
            self.closed = True
        self.flush()

    def go_away(self, code: int, debug: str = "") -> None:
        """Tell the client no stream after the last one seen will be served."""
        if self.transport is not None and not self.closed:
            payload = struct.pack(">II", self.last_stream, code) + debug.encode()
            self.transport.write(wire.frame(wire.GOAWAY, 0, 0, payload))

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
        frames = self.outbox.frames
        if frames and self.transport is not None and not self.closed:
            self.transport.write(b"".join(frames))
        frames.clear()

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
            if len(buffer) < len(wire.PREFACE):
                if not wire.PREFACE.startswith(bytes(buffer)):
                    self._fail(wire.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if bytes(buffer[: len(wire.PREFACE)]) != wire.PREFACE:
                self._fail(wire.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            self.preface = True
            at = len(wire.PREFACE)
        while not self.closed:
            try:
                found = wire.next_frame(buffer, at, wire.OUR_FRAME)
            except ValueError as exc:
                self._fail(wire.FRAME_SIZE_ERROR, str(exc))
                return
            if found is None:
                break
            kind, flags, stream, payload, at = found
            try:
                self._frame(kind, flags, stream, payload)
            except Exception:  # a bug here must cost this connection, never the listener
                log.exception("gRPC connection from %s: frame %d on stream %d", self.peer, kind, stream)
                self._fail(wire.INTERNAL_ERROR, "internal error")
                return
        del buffer[:at]
        if self.credit >= wire.CONNECTION_REFILL and not self.closed:
            self.outbox.add(wire.WINDOW_UPDATE, 0, 0, struct.pack(">I", self.credit))
            self.credit = 0
        self.flush()

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self.headers_for is not None and kind != wire.CONTINUATION:
            self._fail(wire.PROTOCOL_ERROR, "a header block was interrupted")
        elif kind == wire.DATA:
            self._data(flags, stream, payload)
        elif kind == wire.HEADERS:
            self._headers(flags, stream, payload)
        elif kind == wire.CONTINUATION:
            if stream != self.headers_for:
                self._fail(wire.PROTOCOL_ERROR, "CONTINUATION without a header block")
                return
            self._block_part(stream, flags, payload)
        elif kind == wire.RST_STREAM:
            found = self.streams.get(stream)
            if found is not None:
                self._drop(found, cancel=True)
        elif kind == wire.SETTINGS:
            if not flags & wire.ACK:
                self._settings(payload)
        elif kind == wire.PING:
            if len(payload) != 8:
                self._fail(wire.FRAME_SIZE_ERROR, "PING of the wrong size")
            elif not flags & wire.ACK:
                self.outbox.add(wire.PING, wire.ACK, 0, payload)
        elif kind == wire.WINDOW_UPDATE:
            self._window_update(stream, payload)
        elif kind == wire.GOAWAY:
            pass  # the client finishes its calls and closes
        elif kind == wire.PUSH_PROMISE:
            self._fail(wire.PROTOCOL_ERROR, "a client may not push")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5)

    def _headers(self, flags: int, stream: int, payload: bytes) -> None:
        fragment = wire.header_fragment(flags, payload)
        if fragment is None:
            self._fail(wire.PROTOCOL_ERROR, "bad padding")
            return
        if stream == 0 or stream % 2 == 0:
            self._fail(wire.PROTOCOL_ERROR, f"HEADERS on stream {stream}")
            return
        self.header_flags = flags
        self.header_block = bytearray()
        self._block_part(stream, flags, fragment)

    def _block_part(self, stream: int, flags: int, payload: bytes) -> None:
        self.header_block += payload
        if len(self.header_block) > wire.MAX_HEADER_BLOCK:
            self._fail(wire.ENHANCE_YOUR_CALM, "header block too large")
            return
        if not flags & wire.END_HEADERS:
            self.headers_for = stream
            return
        self.headers_for = None
        try:
            fields = self._decode(bytes(self.header_block))
        except MetadataTooLarge:
            self._begin_error(stream, 8, f"request metadata is larger than {wire.MAX_HEADER_LIST_SIZE // 1024} KiB")
            return
        except (hpack.HPACKError, UnicodeDecodeError) as exc:
            # The decoder stopped part-way, out of step with the client's encoder: the connection ends.
            self._fail(wire.COMPRESSION_ERROR, f"header block: {exc}")
            return
        found = self.streams.get(stream)
        if found is not None:  # trailers from the client: only their end of stream matters
            if self.header_flags & wire.END_STREAM:
                self._request_complete(found)
            return
        if stream <= self.last_stream:
            self._fail(wire.PROTOCOL_ERROR, f"stream {stream} reused")
            return
        self.last_stream = stream
        self._begin(stream, fields, bool(self.header_flags & wire.END_STREAM))

    def _decode(self, block: bytes) -> list[tuple[str, str]]:
        """The fields of a header block; the last block's again when the same bytes come back.

        ``hpack`` takes 50-60 us of Python to decode a call's block here, and a client sends
        the same bytes call after call (grpcio's indexed references, or literals that are
        never indexed). Those bytes mean the same fields only while the dynamic table stays as
        it was, so a block is remembered only when decoding it left the table untouched, and
        a block that changes the table forgets it.
        """
        if block == self.last_block:
            return self.last_fields
        table = self.decoder.header_table
        entries = table.dynamic_entries
        count, newest, size = len(entries), entries[0] if entries else None, table.maxsize
        # Forgotten first: a block refused as too large has still changed the table.
        self.last_block = None
        fields = cast(list[tuple[str, str]], self.decoder.decode(block))
        if sum(32 + len(name) + len(value) for name, value in fields) > wire.MAX_HEADER_LIST_SIZE:
            raise MetadataTooLarge  # decoded whole: the table is in step, and only this call is refused
        if len(entries) == count and (entries[0] if entries else None) is newest and table.maxsize == size:
            self.last_block, self.last_fields = block, fields
        return fields

    def _begin(self, stream_id: int, fields: list[tuple[str, str]], ended: bool) -> None:
        head = request_head(fields)
        stream = Stream(stream_id, remote_closed=ended, opened=time.monotonic())
        self.streams[stream_id] = stream
        self.last_call = stream.opened
        if not head.is_grpc:
            # Not a gRPC call at all: plain HTTP status, as the gRPC spec asks.
            status = wire.hpack_int(8, 4) + wire.hpack_int(3, 7) + b"415"  # :status (static name 8) 415
            self.outbox.block(stream, status, end=True)
            return
        method = self.server.methods.get(head.path)
        if method is None or method.refuse:
            message = method.refuse if method is not None else f"method {head.path} is not implemented"
            self._send_status(stream, 12, message, headers=True)
            return
        if self.server.closing:
            self._send_status(stream, 14, "the gateway is shutting down", headers=True)
            return
        if self.server.calls >= self.server.max_calls:
            self._send_status(stream, 8, f"more than {self.server.max_calls} concurrent calls", headers=True)
            return
        if head.encoding != "identity" and head.encoding not in ENCODINGS:
            self._send_status(stream, 12, f"grpc-encoding {head.encoding} is not supported", headers=True)
            return
        stream.method = method
        stream.metadata = head.metadata
        stream.deadline = None if head.timeout_s is None else time.monotonic() + head.timeout_s
        stream.encoding = head.encoding
        self.server.calls += 1
        if ended:
            self._request_complete(stream)

    def _begin_error(self, stream_id: int, code: int, message: str) -> None:
        if stream_id > self.last_stream:
            self.last_stream = stream_id
        stream = Stream(stream_id, remote_closed=bool(self.header_flags & wire.END_STREAM))
        self.streams[stream_id] = stream
        self._send_status(stream, code, message, headers=True)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self.credit += len(payload)
        if flags & wire.PADDED:
            stripped = wire.unpad(payload)
            if stripped is None:
                self._fail(wire.PROTOCOL_ERROR, "bad padding")
                return
            payload = stripped
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self.last_stream:
                self._fail(wire.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream we already answered or reset: the bytes are dropped
        if stream.method is not None and stream.task is None:
            stream.body += payload
            if len(stream.body) > self.server.max_message_bytes + 5:
                self._send_status(
                    stream, 8, f"request larger than the {self.server.max_message_bytes} byte limit", headers=True
                )
                return
        if flags & wire.END_STREAM:
            self._request_complete(stream)
        elif payload:
            self.outbox.add(wire.WINDOW_UPDATE, 0, stream_id, struct.pack(">I", len(payload)))

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            self._fail(wire.FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
            return
        for at in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, at)
            if key == wire.INITIAL_WINDOW_SIZE:
                if value > wire.MAX_WINDOW:
                    self._fail(wire.FLOW_CONTROL_ERROR, "initial window too large")
                    return
                self.outbox.initial_window(value)
            elif key == wire.MAX_FRAME_SIZE:
                if not wire.DEFAULT_FRAME <= value <= 2**24 - 1:
                    self._fail(wire.PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                    return
                self.outbox.peer_frame = value
        self.outbox.add(wire.SETTINGS, wire.ACK, 0, b"")

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._fail(wire.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
            return
        increment = int.from_bytes(payload, "big") & wire.MAX_WINDOW
        if stream_id == 0:
            if not self.outbox.widen(increment):
                self._fail(wire.FLOW_CONTROL_ERROR, "connection window overflow")
            return
        stream = self.streams.get(stream_id)
        if stream is not None and not self.outbox.widen_stream(stream, increment):
            self.outbox.add(wire.RST_STREAM, 0, stream_id, struct.pack(">I", wire.FLOW_CONTROL_ERROR))
            self._drop(stream, cancel=True)
