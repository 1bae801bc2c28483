"""Lean HTTP/1.1 for the load generator: one pre-encoded request at a time per keep-alive
connection, parsed in the protocol's callback (no stream reader, no task per request).

Answers need a ``Content-Length`` (every server the benchmark measures sends one); a call
answers with the status code, or :data:`NOT_SENT` when the pool had no connection for it.
"""

from __future__ import annotations

import asyncio
from typing import cast

NOT_SENT = -1  # the open-loop pool was at its connection limit: counted, never silently dropped


class Connection(asyncio.Protocol):
    """A keep-alive connection sending the same request each ``call``."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[int] | None = None
        self.body_left: int | None = None  # body bytes still due after the head, None while reading a head
        self.status = 0
        self.last = False  # the server said Connection: close
        self.closed: Exception | None = None

    @classmethod
    async def open(cls, host: str, port: int, request: bytes) -> Connection:
        _, connection = await asyncio.get_running_loop().create_connection(lambda: cls(request), host, port)
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = exc or ConnectionResetError("the server closed the connection")
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(self.closed)
        self.answer = None

    def call(self) -> asyncio.Future[int]:
        if self.closed is not None or self.transport is None:
            raise ConnectionResetError(f"connection closed: {self.closed}")
        if self.answer is not None:
            raise RuntimeError("one request at a time per connection")
        self.answer = self.loop.create_future()
        self.transport.write(self.request)
        return self.answer

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            if self.body_left is None:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buffer[:end])
                del buffer[: end + 4]
                code = head[9:12]
                self.status = int(code) if code.isdigit() else 0
                self.body_left = 0
                for line in head.split(b"\r\n")[1:]:
                    name = line[:15].lower()
                    if name == b"content-length:":
                        self.body_left = int(line[15:])
                    elif name[:11] == b"connection:" and line[11:].strip().lower() == b"close":
                        self.last = True
            if len(buffer) < self.body_left:
                return
            del buffer[: self.body_left]
            self.body_left = None
            answer, self.answer = self.answer, None
            if self.last:  # the server closes after this answer: never send on it again
                self.closed = ConnectionResetError("the server asked to close the connection")
                self.close()
            if answer is not None and not answer.done():
                answer.set_result(self.status)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections for open-loop load: one per request in flight, reused when free.

    ``send`` returns at once with a future; a connection is opened only when none is idle,
    up to ``limit`` (beyond it the request counts as an error, never silently dropped).
    ``opened`` counts the connections open or opening: each one the server closes, or that
    fails, gives its place back, so failures cannot leave the pool thinking it is full.
    """

    def __init__(self, host: str, port: int, request: bytes, limit: int) -> None:
        self.host, self.port, self.request, self.limit = host, port, request, limit
        self.loop = asyncio.get_running_loop()
        self.idle: list[Connection] = []
        self.opened = 0
        self.opening: set[asyncio.Task[None]] = set()

    def send(self) -> asyncio.Future[int]:
        result: asyncio.Future[int] = self.loop.create_future()
        while self.idle:
            connection = self.idle.pop()
            if connection.closed is None:
                self._use(connection, result, reused=True)
                return result
            self.opened -= 1  # closed by the server while idle (keep-alive expiry)
        if self.opened < self.limit:
            self.opened += 1
            self._open_then_use(result)
        else:
            result.set_result(NOT_SENT)
        return result

    def _open_then_use(self, result: asyncio.Future[int]) -> None:
        async def opening() -> None:
            try:
                connection = await Connection.open(self.host, self.port, self.request)
            except OSError as exc:
                self.opened -= 1
                result.set_exception(exc)
                return
            self._use(connection, result, reused=False)

        task = self.loop.create_task(opening())
        self.opening.add(task)
        task.add_done_callback(self.opening.discard)

    def _use(self, connection: Connection, result: asyncio.Future[int], reused: bool) -> None:
        def lost(error: BaseException) -> None:
            self.opened -= 1  # that connection is gone
            if reused:
                # An idle connection the server closed (keep-alive expiry) never saw the
                # request: send it again on a fresh connection, as HTTP clients do.
                self.opened += 1
                self._open_then_use(result)
            else:
                result.set_exception(error)

        def answered(answer: asyncio.Future[int]) -> None:
            error = answer.exception()
            if error is not None:
                lost(error)
                return
            if connection.closed is None:
                self.idle.append(connection)
            else:
                self.opened -= 1
            result.set_result(answer.result())

        try:
            answer = connection.call()
        except ConnectionResetError as exc:
            lost(exc)
            return
        answer.add_done_callback(answered)

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
