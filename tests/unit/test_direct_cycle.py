"""DirectCycle's own decisions, on a stand-in connection: what is written, counted and closed.

The path as a whole runs against real gateways in tests/integration/test_http_direct.py;
these cover what a real client cannot provoke (a ticket cancelled inside the gateway)
or needs exact bytes for.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from gateway.rest.direct import DirectCycle
from gateway.rest.infer import JSON, Answer


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class ServerState:
    default_headers = [(b"server", b"test")]


class Protocol:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = Transport()
        self.server_state = ServerState()
        self.loop = loop
        self.completed = 0

    def on_response_complete(self) -> None:
        self.completed += 1


class Call:
    """The parts of InferCall a DirectCycle uses; records what it was told."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.closed: list[int] = []
        self.abandoned = False
        self._answer = answer

    def close(self, status: int) -> None:
        self.closed.append(status)

    def abandon(self) -> None:
        self.abandoned = True

    def result(self) -> Any:
        return SimpleNamespace()

    def encodes_off_loop(self, result: Any) -> bool:
        return False

    def answer(self, result: Any = None) -> Answer:
        assert self._answer is not None
        return self._answer


def _cycle(call: Call, keep_alive: bool = True) -> tuple[DirectCycle, Protocol]:
    protocol = Protocol(asyncio.new_event_loop())
    cycle = DirectCycle(protocol, call, keep_alive, None)  # type: ignore[arg-type]
    return cycle, protocol


def _response(data: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers, body


def test_a_ticket_cancelled_inside_the_gateway_still_gets_a_503_not_silence() -> None:
    call = Call()
    cycle, protocol = _cycle(call)
    future: asyncio.Future[Any] = protocol.loop.create_future()
    future.cancel()
    cycle._answered(SimpleNamespace(future=future))  # type: ignore[arg-type]  # what a ticket has
    status, headers, body = _response(b"".join(protocol.transport.written))
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert "cancelled inside the gateway" in json.loads(body)["error"]
    assert headers["content-length"] == str(len(body))
    assert call.closed == [503] and protocol.completed == 1
    protocol.loop.close()


def test_a_client_gone_is_counted_once_and_gets_no_bytes() -> None:
    call = Call((200, JSON, b"{}", []))
    cycle, protocol = _cycle(call)
    cycle.disconnected = True
    cycle.set()  # what uvicorn's connection_lost does
    cycle.answer((200, JSON, b"{}", []))  # the batch comes back afterwards
    assert call.abandoned and call.closed == [499]
    assert protocol.transport.written == [] and protocol.completed == 0
    protocol.loop.close()


def test_one_write_per_answer_and_close_when_the_answer_says_so() -> None:
    call = Call()
    cycle, protocol = _cycle(call)
    cycle.answer((503, JSON, b'{"error":"draining"}', [(b"retry-after", b"1"), (b"connection", b"close")]))
    assert len(protocol.transport.written) == 1 and protocol.transport.closed
    _, headers, _ = _response(protocol.transport.written[0])
    assert headers["retry-after"] == "1" and headers["connection"] == "close" and headers["server"] == "test"
    assert protocol.transport.written[0].count(b"connection:") == 1
    protocol.loop.close()


def test_keep_alive_answers_leave_the_connection_open() -> None:
    call = Call()
    cycle, protocol = _cycle(call)
    cycle.answer((200, b"application/octet-stream", b"\x00\x01", [(b"inference-header-content-length", b"0")]))
    _, headers, body = _response(protocol.transport.written[0])
    assert body == b"\x00\x01" and "connection" not in headers
    assert not protocol.transport.closed and protocol.completed == 1
    protocol.loop.close()


class DecodingCall(Call):
    """A call whose body goes to a JSON process; the decoding finishes when the test says."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__((200, JSON, b"{}", []))
        self.abandons = 0
        self.decoded = loop.create_future()
        self.waited_on: list[Any] = []

    def abandon(self) -> None:
        self.abandons += 1

    def decodes_off_loop(self, raw: bytes) -> bool:
        return True

    async def admit_off_loop(self, raw: bytes) -> Any:
        await self.decoded
        return SimpleNamespace(when_done=self.waited_on.append)


def test_a_client_gone_while_its_body_decodes_is_abandoned_once_admitted_and_gets_no_bytes() -> None:
    loop = asyncio.new_event_loop()
    call = DecodingCall(loop)
    protocol = Protocol(loop)
    cycle = DirectCycle(protocol, call, True, None)  # type: ignore[arg-type]
    cycle.chunks = [b"{}"]
    cycle.body_complete()
    decoding = cycle.offloaded
    assert decoding is not None
    cycle.disconnected = True
    cycle.set()  # the client leaves while the JSON process works
    assert call.closed == [499] and call.abandons == 1
    call.decoded.set_result(None)
    loop.run_until_complete(decoding)
    assert cycle.offloaded is None
    assert call.abandons == 2  # the admitted request is taken back out at once
    assert call.waited_on == [] and protocol.transport.written == [] and call.closed == [499]
    loop.close()


class EncodingCall(Call):
    """A call whose answer is encoded in a JSON process; the encoding finishes when the test says."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.encoded = loop.create_future()

    def encodes_off_loop(self, result: Any) -> bool:
        return True

    async def answer_off_loop(self, result: Any) -> Answer:
        return await self.encoded  # type: ignore[no-any-return]


def _ticket(loop: asyncio.AbstractEventLoop) -> Any:
    future = loop.create_future()
    future.set_result(None)
    return SimpleNamespace(future=future)


def _encoding() -> tuple[EncodingCall, Protocol, DirectCycle, asyncio.Future[None]]:
    """A cycle whose ticket is done and whose answer a JSON process is encoding."""
    loop = asyncio.new_event_loop()
    call = EncodingCall(loop)
    protocol = Protocol(loop)
    cycle = DirectCycle(protocol, call, True, None)  # type: ignore[arg-type]
    cycle._answered(_ticket(loop))
    assert cycle.offloaded is not None and protocol.transport.written == []
    return call, protocol, cycle, cycle.offloaded


def test_an_answer_encoded_off_the_loop_is_written_once_it_is_ready() -> None:
    call, protocol, cycle, encoding = _encoding()
    call.encoded.set_result((200, JSON, b'{"outputs":[]}', []))
    protocol.loop.run_until_complete(encoding)
    status, _, body = _response(b"".join(protocol.transport.written))
    assert status == "HTTP/1.1 200 OK" and body == b'{"outputs":[]}'
    assert cycle.offloaded is None and call.closed == [200] and protocol.completed == 1
    protocol.loop.close()


def test_a_client_gone_while_its_answer_encodes_gets_no_bytes() -> None:
    call, protocol, cycle, encoding = _encoding()
    cycle.disconnected = True
    cycle.set()
    call.encoded.set_result((200, JSON, b"{}", []))
    protocol.loop.run_until_complete(encoding)
    assert protocol.transport.written == [] and call.closed == [499] and protocol.completed == 0
    protocol.loop.close()


def test_a_large_body_goes_out_after_its_head_uncopied() -> None:
    call = Call()
    cycle, protocol = _cycle(call)
    body = memoryview(b"x" * (64 * 1024))  # as a JSON process's answer arrives: a view
    cycle.answer((200, JSON, body, []))
    head, sent = protocol.transport.written
    assert sent is body and head.endswith(b"\r\n\r\n")
    _, headers, _ = _response(head)
    assert headers["content-length"] == str(len(body))
    protocol.loop.close()
