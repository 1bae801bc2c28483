"""Take every waiting connection in one event-loop turn, not one per turn.

Since libuv 1.45 (libuv PR #3696) a listening handle accepts one connection per loop
iteration and relies on the next poll for the rest; uvloop inherits that. Under load one
iteration of the gateway's loop takes several milliseconds (it reads and answers every
request that arrived meanwhile), so a burst of new connections waits in the kernel's
accept queue for one iteration each. Measured on the 2-CPU VM: 30 connections opened at
once against a loop busy 10 ms per turn were accepted after 152 ms at the median (300 ms
for the last) by uvloop, 9 ms by asyncio's own loop (it accepts up to the backlog per
turn). In the open-loop benchmark near capacity, a request on a new connection waited
92-137 ms (median) against 22 ms for the rest, and the pool of client connections grew
further while they waited.

:class:`BurstAcceptor` watches a duplicate of the listening socket and, when it is
readable, accepts until the queue is empty (at most :data:`BURST` at a time), handing
each socket to the loop as uvloop's own server would. uvloop's watcher stays in place:
whichever runs first takes the connections, the other finds none.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable

log = logging.getLogger("batchgate")

BURST = 256  # connections taken per readable event: a bound on one turn's work, not a limit
# Out of descriptors or memory: the queue stays readable, so watching it again at once
# would spin; uvloop's own watcher (with libuv's reserve-descriptor trick) carries on.
BACKOFF_S = 0.1
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def needs_burst_accept(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` accepts one connection per turn (uvloop); asyncio's takes the backlog."""
    return type(loop).__module__.startswith("uvloop")


def accept_bursts(
    server: asyncio.Server,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    ssl_context: ssl.SSLContext | None = None,
) -> BurstAcceptor | None:
    """A :class:`BurstAcceptor` for ``server`` where its loop needs one, else None."""
    if not needs_burst_accept(asyncio.get_running_loop()):
        return None
    return BurstAcceptor(server, protocol_factory, ssl_context)


class BurstAcceptor:
    """Accepts all waiting connections on ``server``'s listening sockets in one turn.

    ``protocol_factory`` and ``ssl_context`` are the ones the server was created with, so
    a connection is served the same whichever watcher accepted it. :meth:`close` before
    the server closes: the duplicates would otherwise keep the port listening.
    """

    def __init__(
        self,
        server: asyncio.Server,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.protocol_factory = protocol_factory
        self.ssl_context = ssl_context
        self.accepted = 0  # by this acceptor, not by the loop's own watcher
        self._listeners: list[socket.socket] = []
        self._wrapping: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None
        for listener in server.sockets:
            duplicate = socket.socket(listener.family, listener.type, listener.proto, fileno=os.dup(listener.fileno()))
            duplicate.setblocking(False)
            self._listeners.append(duplicate)
            self.loop.add_reader(duplicate.fileno(), self._drain, duplicate)

    def close(self) -> None:
        """Stop accepting; connections already taken are served on."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for listener in self._listeners:
            self.loop.remove_reader(listener.fileno())
            listener.close()
        self._listeners = []

    def _drain(self, listener: socket.socket) -> None:
        for _ in range(BURST):
            try:
                connection, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    self._pause(listener, exc)
                    return
                raise
            self.accepted += 1
            self._serve(connection)

    def _pause(self, listener: socket.socket, exc: OSError) -> None:
        log.warning("accepting connections: %s; retrying in %.0f ms", exc.strerror, BACKOFF_S * 1000)
        self.loop.remove_reader(listener.fileno())

        def resume() -> None:
            self._retry = None
            if listener in self._listeners:
                self.loop.add_reader(listener.fileno(), self._drain, listener)

        self._retry = self.loop.call_later(BACKOFF_S, resume)

    def _serve(self, connection: socket.socket) -> None:
        connection.setblocking(False)
        if connection.family in (socket.AF_INET, socket.AF_INET6):
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self.loop.create_task(self._wrap(connection))
        self._wrapping.add(task)
        task.add_done_callback(self._wrapping.discard)

    async def _wrap(self, connection: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.protocol_factory, connection, ssl=self.ssl_context)
        except (OSError, ssl.SSLError) as exc:
            # A client that reset or failed its TLS handshake: what the server's own
            # accept path would drop too.
            log.debug("accepted connection dropped: %s", exc)
            connection.close()
