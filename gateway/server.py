"""The uvicorn server with batchgate's shutdown order (DESIGN §6).

On the first SIGTERM or SIGINT the gateway stops being ready and refuses new requests
with 503 while everything already admitted finishes (bounded by ``drain_timeout_s``);
only then does uvicorn stop listening and close connections, and the lifespan
shutdown stops the workers last. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

from gateway.accept import BurstAcceptor, accept_bursts

log = logging.getLogger("batchgate")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains before it stops."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]], timeout_s: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._acceptors: list[BurstAcceptor] = []

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # The factory uvicorn's own listener uses (see gateway/accept.py for why a second one).
        factory = functools.partial(
            self.config.http_protocol_class,  # type: ignore[call-arg]
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        acceptors = (accept_bursts(server, factory, self.config.ssl) for server in self.servers)
        self._acceptors = [acceptor for acceptor in acceptors if acceptor is not None]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for acceptor in self._acceptors:
            acceptor.close()  # before uvicorn closes its listeners: stop accepting is step one
        self._acceptors = []
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None or self._drain_task is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # uvicorn re-raises it at exit, so the status tells why
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        log.info("shutdown requested: draining (up to %.0fs)", self._timeout_s)
        try:
            await asyncio.wait_for(self._drain(), self._timeout_s)
        except TimeoutError:
            log.warning("drain timed out after %.0fs; stopping anyway", self._timeout_s)
        except Exception:
            log.exception("drain failed; stopping")
        finally:
            self.should_exit = True
