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
