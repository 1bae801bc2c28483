"""The calls half of a connection of the HTTP/2 gRPC front: from a stream's complete request
to its answer or status on the outbox, and a stream's end.

:class:`CallsMixin` is one part of :class:`gateway.grpc_api.h2connection.H2Connection`,
which reads the frames; it holds no state of its own. A call runs as a task over the
servicer's coroutine, or, for methods with a direct handler (ModelInfer), without one.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import TYPE_CHECKING, Any

from gateway.grpc_api import h2wire as wire
from gateway.grpc_api.h2calls import Abort, CallContext, Method, read_message
from gateway.grpc_api.h2send import Outbox, Stream

if TYPE_CHECKING:
    from gateway.grpc_api.h2server import H2Server

log = logging.getLogger("batchgate.grpc")


class CallsMixin:
    """Running a connection's calls and queueing their answers (see the module docstring)."""

    server: H2Server
    streams: dict[int, Stream]
    outbox: Outbox
    peer: str
    closed: bool
    last_call: float

    def flush(self) -> None:
        raise NotImplementedError  # the connection's

    def flush_soon(self) -> None:
        raise NotImplementedError  # the connection's

    # -- calls ------------------------------------------------------------------------------
    def _request_complete(self, stream: Stream) -> None:
        stream.remote_closed = True
        method = stream.method
        if method is None or stream.task is not None:
            return
        body = stream.body
        stream.body = bytearray()
        try:
            message = read_message(body, stream.encoding, self.server.max_message_bytes)
        except Abort as abort:
            self._send_status(stream, abort.code, abort.message, headers=True)
            return
        if method.direct is not None:
            if self.server.calls > 1:
                # Others are in flight: start after this read, as a task's first step would
                # (admitting inside the read cost 4% of throughput at 64 users, in 4 A/B sets).
                asyncio.get_running_loop().call_soon(self._call_direct, stream, method, message)
            else:
                self._call_direct(stream, method, message)  # a lone call: no loop turn to wait
            return
        stream.task = asyncio.get_running_loop().create_task(self._call(stream, method, message))

    def _call_direct(self, stream: Stream, method: Method, message: bytes) -> None:
        """Hand the call to ``method.direct``; its reply queues the answer in the turn that makes it."""
        assert method.direct is not None
        if self.closed or stream.id not in self.streams:
            return  # reset or cut off while it waited for its turn
        try:
            request = method.parse(message)
        except Exception as exc:  # protobuf's DecodeError and friends
            self._send_status(stream, 13, f"cannot parse the request message: {exc}", headers=True)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stream.task = done  # what a reset stream, a lost connection or the server's stop acts on

        def reply(response: Any, abort: Abort | None) -> None:
            if done.done():
                return  # the client left first: nobody to answer
            done.set_result(None)
            lone = self.server.calls <= 1  # before the answer ends the stream and uncounts it
            if abort is None:
                payload = response.SerializeToString()
                if len(payload) <= self.server.max_message_bytes:
                    self._answer(stream, struct.pack(">BI", 0, len(payload)) + payload)
                else:
                    abort = Abort(8, f"response larger than the {self.server.max_message_bytes} byte limit")
            if abort is not None:
                self._send_status(stream, abort.code, abort.message, headers=True, metadata=abort.metadata)
            if lone:
                self.flush()  # no other answer can join this write: a loop turn sooner
            else:
                self.flush_soon()

        try:
            leave = method.direct(request, CallContext(stream.metadata, self.peer, stream.deadline), reply)
        except Exception:
            log.exception("gRPC call on stream %d failed", stream.id)
            reply(None, Abort(2, "internal error in the gateway"))
            return
        if not done.done():
            stream.leave = leave  # _drop calls it if the call is cancelled before its reply

    async def _call(self, stream: Stream, method: Method, message: bytes) -> None:
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
    def _answer(self, stream: Stream, data: bytes) -> None:
        if not self.closed and stream.id in self.streams:
            self.outbox.answer(stream, data)

    def _send_status(
        self, stream: Stream, code: int, message: str, headers: bool, metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        if self.closed or stream.id not in self.streams:
            return
        self.outbox.block(stream, wire.status_block(code, message, metadata, headers), end=True)

    def _drop(self, stream: Stream, cancel: bool) -> None:
        if self.streams.pop(stream.id, None) is None:
            return
        self.outbox.forget(stream)
        self.last_call = time.monotonic()
        if stream.method is not None:
            self.server.calls -= 1
        if cancel and stream.task is not None and not stream.task.done():
            stream.task.cancel()
            if stream.leave is not None:
                stream.leave()
