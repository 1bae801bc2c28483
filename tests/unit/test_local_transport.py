"""The local framed transport when the worker has just died: retryable, never a 500."""

from __future__ import annotations

import asyncio

from gateway.errors import BatchgateError, Unavailable
from gateway.local_transport import LocalConnection


class _DeadTransport:
    """What uvloop hands back for a unix socket whose peer was killed a moment ago."""

    def __init__(self, closing: bool) -> None:
        self.closing = closing

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        raise RuntimeError("unable to perform operation on <UnixTransport closed=True>; the handler is closed")

    def abort(self) -> None:
        self.closing = True


def test_a_write_to_a_dead_worker_answers_unavailable() -> None:
    async def scenario() -> list[BatchgateError | None]:
        connection = LocalConnection("w", on_idle=lambda _c: None)
        connection.connection_made(_DeadTransport(closing=False))  # type: ignore[arg-type]
        assert connection.usable()
        answers: list[BatchgateError | None] = []
        connection.request(b"payload", 5.0, lambda _kind, _body, error: answers.append(error))
        assert not connection.usable()
        return answers

    answers = asyncio.run(scenario())
    assert len(answers) == 1 and isinstance(answers[0], Unavailable) and answers[0].retryable


def test_a_closing_transport_is_not_usable() -> None:
    connection = LocalConnection("w", on_idle=lambda _c: None)
    connection.connection_made(_DeadTransport(closing=True))  # type: ignore[arg-type]
    assert not connection.usable()


class _Recorder:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))


def test_frames_go_out_whole_and_come_back_from_any_split() -> None:
    """A small request leaves in one write; a large one as its header, then itself (no copy
    joins them); an answer read in pieces is delivered once, whole."""
    from workers import framing

    async def scenario() -> tuple[_Recorder, list[bytes | None]]:
        connection = LocalConnection("w", on_idle=lambda _c: None)
        recorder = _Recorder()
        connection.connection_made(recorder)  # type: ignore[arg-type]
        answers: list[bytes | None] = []
        small, large = b"s" * 100, bytes(range(256)) * 1024
        connection.request(small, 5.0, lambda _kind, body, _error: answers.append(body))
        answer = framing.frame(framing.RESPONSE, large)
        for start in range(0, len(answer), 70_000):  # as the socket hands it over
            connection.data_received(answer[start : start + 70_000])
        connection.request(large, 5.0, lambda _kind, body, _error: answers.append(body))
        assert [len(w) for w in recorder.written] == [framing.HEADER.size + 100, framing.HEADER.size, len(large)]
        assert b"".join(recorder.written[1:]) == framing.frame(framing.REQUEST, large)
        return recorder, answers

    _, answers = asyncio.run(scenario())
    assert answers == [bytes(range(256)) * 1024]
