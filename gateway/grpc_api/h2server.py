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

Its parts: :mod:`gateway.grpc_api.h2wire` (frames and header blocks),
:mod:`gateway.grpc_api.h2calls` (the servicer's side of a call, and reading its head
and message), :mod:`gateway.grpc_api.h2connection` (one connection) and this module
(the listener and its time limits).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

from gateway.accept import BurstAcceptor, accept_bursts
from gateway.grpc_api import h2wire as wire
from gateway.grpc_api.h2calls import Method
from gateway.grpc_api.h2connection import H2Connection


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
        self._acceptor: BurstAcceptor | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.closing = False

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, host, port, ssl=self.ssl_context)
        self._acceptor = accept_bursts(self._server, self._connection, self.ssl_context)
        self._schedule_sweep()
        return int(self._server.sockets[0].getsockname()[1])

    def _connection(self) -> H2Connection:
        return H2Connection(self)

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
        if self._acceptor is not None:
            self._acceptor.close()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.go_away(wire.NO_ERROR)
        tasks = [s.task for c in self.connections for s in c.streams.values() if s.task is not None]
        if tasks and grace:
            await asyncio.wait(tasks, timeout=grace)
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()


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
