"""The direct path: an inference request the HTTP protocol answers itself, without ASGI.

:class:`gateway.rest.protocol.GuardedProtocol` collects a plain ``POST .../infer`` body in
its parser callbacks and hands it to a :class:`DirectCycle`; everything the request does
(limits, decoding, admission, encoding, metrics) is :class:`gateway.rest.infer.InferCall`'s.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import TYPE_CHECKING

from gateway.errors import BatchgateError, Cancelled, RequestTimeout, Unavailable
from gateway.rest.infer import Answer, InferCall, error_answer
from gateway.router import Ticket
from gateway.types import InferResponse

if TYPE_CHECKING:
    from gateway.rest.protocol import GuardedProtocol

SEPARATE_BODY_BYTES = 64 * 1024
"""A body this large is written after its head rather than joined to it (two system calls, no copy)."""
STATUS_LINES = {status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode()) for status in HTTPStatus}


class DirectCycle:
    """One inference request the protocol answers itself, standing in for uvicorn's cycle.

    uvicorn runs every request as an ASGI task: a scope, receive and send messages, header
    validation, and here a second task watching for disconnects. For ``POST .../infer``
    with a plain Content-Length body, none of that is needed: the body is collected in the
    parser's callbacks, the request is admitted when it is complete, and a callback on its
    ticket writes the answer in one ``write``. py-spy put uvicorn's share at ~13 us per
    request on this machine. What the request does is :class:`InferCall`'s, shared with
    the ASGI path, so limits, errors, metrics and headers are the same.

    uvicorn's own bookkeeping sees this object as ``protocol.cycle``: ``response_complete``
    orders pipelined requests behind it, ``keep_alive`` is cleared by a graceful shutdown,
    and ``message_event.set()`` tells it the connection is gone.
    """

    def __init__(self, protocol: GuardedProtocol, call: InferCall, keep_alive: bool, refused: BatchgateError | None):
        self.protocol = protocol
        self.call = call
        self.keep_alive = keep_alive
        self.refused = refused
        self.chunks: list[bytes] = []
        self.response_complete = False
        self.disconnected = False
        # The task decoding the body or encoding the answer in a JSON process, if one is: held,
        # as the loop keeps only weak references to tasks.
        self.offloaded: asyncio.Future[None] | None = None

    @property
    def message_event(self) -> DirectCycle:
        """uvicorn calls ``cycle.message_event.set()``; a property, not ``self.message_event = self``:
        that reference cycle kept every finished request (~14 objects) alive until a full
        garbage collection, which then stalled the event loop 10-16 ms every 0.6 s at 6,200/s."""
        return self

    def set(self) -> None:
        """uvicorn: the connection was lost (``disconnected``) or the protocol is done with it."""
        if self.disconnected and not self.response_complete:
            self.response_complete = True
            self.call.abandon()
            self.call.close(Cancelled.http_status)

    def body_complete(self) -> None:
        call = self.call
        try:
            if self.refused is not None:
                raise self.refused
            body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
            self.chunks = []
            if call.decodes_off_loop(body):
                self.offloaded = self.protocol.loop.create_task(self._admit_off_loop(body))
                return
            ticket = call.admit(body)
        except BatchgateError as exc:
            self._answer_soon(error_answer(exc))
            return
        except Exception as exc:
            self._answer_soon(call.unexpected(exc))
            return
        ticket.when_done(self._answered)

    async def _admit_off_loop(self, body: bytes) -> None:
        try:
            ticket = await self.call.admit_off_loop(body)
        except BatchgateError as exc:
            self.answer(error_answer(exc))
            return
        except Exception as exc:
            self.answer(self.call.unexpected(exc))
            return
        finally:
            self.offloaded = None
        if self.response_complete:  # the client left while its body was decoded
            self.call.abandon()
            return
        ticket.when_done(self._answered)

    def body_late(self) -> None:
        self.answer(
            error_answer(RequestTimeout(f"request body not received within {self.call.front.limits.body_timeout_s:g}s"))
        )

    def _answer_soon(self, answer: Answer) -> None:
        # Not from inside the parser's callback: a request pipelined in the same read is
        # still being parsed, and must queue behind this one as uvicorn's own would.
        self.protocol.loop.call_soon(self.answer, answer)

    def _answered(self, ticket: Ticket) -> None:
        if self.response_complete:
            return  # the client left; abandon() already counted it
        if ticket.future.cancelled():  # only abandon() cancels a ticket today; a live client still gets an answer
            self.answer(error_answer(Unavailable("the request was cancelled inside the gateway; retry")))
            return
        try:
            result = self.call.result()
            if self.call.encodes_off_loop(result):
                self.offloaded = self.protocol.loop.create_task(self._answer_off_loop(result))
                return
            answer = self.call.answer(result)
        except BatchgateError as exc:
            answer = error_answer(exc)
        except Exception as exc:
            answer = self.call.unexpected(exc)
        self.answer(answer)

    async def _answer_off_loop(self, result: InferResponse) -> None:
        try:
            answer = await self.call.answer_off_loop(result)
        except BatchgateError as exc:
            answer = error_answer(exc)
        except Exception as exc:
            answer = self.call.unexpected(exc)
        finally:
            self.offloaded = None
        self.answer(answer)  # unless the client left meanwhile

    def answer(self, answer: Answer) -> None:
        """Write the response in one ``write`` (two for a large body), then count the request
        (and close or keep alive)."""
        if self.response_complete:
            return
        self.response_complete = True
        status, content_type, body, extra = answer
        protocol = self.protocol
        transport = protocol.transport
        if transport.is_closing():
            self.call.close(status)
            return
        head: list[bytes | memoryview] = [STATUS_LINES[status]]
        for name, value in protocol.server_state.default_headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"content-type: %s\r\ncontent-length: %d\r\n" % (content_type, len(body)))
        keep_alive = self.keep_alive
        for name, value in extra:
            if name == b"connection":
                keep_alive = False
                continue
            head += (name, b": ", value, b"\r\n")
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if len(body) < SEPARATE_BODY_BYTES:
            head.append(body)
            transport.write(b"".join(head))
        else:  # not copied into one buffer with the head: a page fault per 4 KB of fresh memory
            transport.write(b"".join(head))
            transport.write(body)
        self.call.close(status)  # counted once the answer is out (before a pipelined request starts)
        if not keep_alive:
            transport.close()
        protocol.on_response_complete()
