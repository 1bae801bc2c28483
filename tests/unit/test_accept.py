"""BurstAcceptor on a real uvloop loop and real loopback sockets.

Loop turns are counted, not timed: a callback that reschedules itself with ``call_soon``
runs once per turn of the loop, and each turn polls the sockets once.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
import trustme
import uvloop

from gateway.accept import BurstAcceptor, needs_burst_accept

BURST = 24


class Counted(asyncio.Protocol):
    made: list[Counted] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        Counted.made.append(self)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


async def turns_until(done: Callable[[], bool], limit: int) -> int:
    """Loop turns until ``done()`` holds (``limit`` + 1 if it never did by then)."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    turns = 0

    def tick() -> None:
        nonlocal turns
        if done() or turns > limit:
            finished.set_result(turns)
            return
        turns += 1
        loop.call_soon(tick)

    loop.call_soon(tick)
    result: int = await finished
    return result


def open_clients(port: int, count: int) -> list[socket.socket]:
    """Connected sockets: the kernel completes each handshake into the accept queue at once."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port))
        clients.append(client)
    return clients


def test_uvloop_is_the_loop_that_needs_it() -> None:
    async def main() -> None:
        assert needs_burst_accept(asyncio.get_running_loop())

    run(main)
    plain = asyncio.new_event_loop()  # asyncio's own takes up to the backlog each turn
    try:
        assert not needs_burst_accept(plain)
    finally:
        plain.close()


def test_a_burst_of_connections_is_served_within_a_few_turns() -> None:
    """uvloop alone takes one connection per turn (24 turns here); the acceptor takes them
    all in one, and each is served two turns later (its task, then connection_made)."""

    async def main() -> None:
        Counted.made = []
        server = await asyncio.get_running_loop().create_server(Counted, "127.0.0.1", 0)
        acceptor = BurstAcceptor(server, Counted)
        clients = open_clients(server.sockets[0].getsockname()[1], BURST)
        try:
            turns = await turns_until(lambda: len(Counted.made) == BURST, limit=BURST)
            assert len(Counted.made) == BURST
            assert turns <= 4
            assert acceptor.accepted >= BURST - 1  # uvloop's own watcher may win the first
        finally:
            acceptor.close()
            server.close()
            for client in clients:
                client.close()

    run(main)


def test_closed_acceptor_and_server_leave_nothing_listening() -> None:
    """The acceptor watches a duplicate of the listening socket: closing only the server
    would leave the port accepting connections nobody serves."""

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Counted, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        acceptor = BurstAcceptor(server, Counted)
        acceptor.close()
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)

    run(main)


class Exhausted:
    """A listening socket in a process out of file descriptors: every accept fails."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.accepts = 0

    def fileno(self) -> int:
        return self.fd

    def accept(self) -> tuple[socket.socket, object]:
        self.accepts += 1
        raise OSError(errno.EMFILE, "Too many open files")


def test_out_of_descriptors_backs_off_instead_of_spinning() -> None:
    """Still readable, the queue would wake a level-triggered reader every turn."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Counted, "127.0.0.1", 0)
        acceptor = BurstAcceptor(server, Counted)
        readable, writer = socket.socketpair()
        writer.send(b"x")  # keeps the stand-in readable, as a full accept queue is
        listener = Exhausted(readable.fileno())
        acceptor._listeners.append(cast(socket.socket, listener))
        loop.add_reader(listener.fd, acceptor._drain, cast(socket.socket, listener))
        try:
            await turns_until(lambda: False, limit=20)
            assert listener.accepts == 1  # then paused, not retried on each of the 20 turns
            assert not loop.remove_reader(listener.fd)
        finally:
            acceptor._listeners.remove(cast(socket.socket, listener))
            acceptor.close()
            server.close()
            readable.close()
            writer.close()

    run(main)


class OnlyListener:
    """A listening socket that only the acceptor watches, so every connection takes its path."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.sockets = [self.socket]
        self.port = self.socket.getsockname()[1]


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())  # type: ignore[attr-defined]


def test_tls_is_served_on_connections_the_acceptor_took() -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async def main() -> None:
        listener = OnlyListener()
        acceptor = BurstAcceptor(listener, Echo, server_context)  # type: ignore[arg-type]
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", listener.port, ssl=client_context, server_hostname="127.0.0.1"
            )
            writer.write(b"over tls")
            assert await asyncio.wait_for(reader.readexactly(8), 10) == b"OVER TLS"
            assert acceptor.accepted == 1
            writer.close()
            await writer.wait_closed()
        finally:
            acceptor.close()
            listener.socket.close()

    run(main)
