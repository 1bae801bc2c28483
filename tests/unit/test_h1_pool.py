"""The load generator's open-loop connection pool keeps an honest count of its connections.

Against a loopback server that answers some requests and closes the connection after, drops
others unanswered, and closes idle connections, the pool's ``opened`` must end equal to the
connections still open: a count that leaked on failures made the generator refuse its own
requests ("not sent: connection limit") while the server sat idle.
"""

from __future__ import annotations

import asyncio

from benchmarks.h1 import NOT_SENT, Pool

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
OK_CLOSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


class Server(asyncio.Protocol):
    """Every 3rd request answered then closed, every 5th closed unanswered, the rest kept."""

    count = 0
    live: set[Server] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        Server.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        Server.live.discard(self)

    def data_received(self, data: bytes) -> None:
        for _ in range(data.count(b"\r\n\r\n")):
            Server.count += 1
            if Server.count % 5 == 0:
                self.transport.close()
                return
            if Server.count % 3 == 0:
                self.transport.write(OK_CLOSE)
                self.transport.close()
                return
            self.transport.write(OK)


def test_opened_matches_the_connections_left_after_answers_closes_and_failures() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = Pool("127.0.0.1", port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", limit=8)
        codes: list[int | str] = []
        for wave_number in range(12):  # waves of more requests than the limit allows at once
            wave = [pool.send() for _ in range(10)]
            for answer in await asyncio.gather(*wave, return_exceptions=True):
                codes.append(answer if isinstance(answer, int) else "lost")
            if wave_number % 4 == 3:  # the server closes its idle connections (keep-alive expiry)
                for connection in list(Server.live):
                    connection.transport.close()
        live = [c for c in pool.idle if c.closed is None]
        assert pool.opened == len(live), (pool.opened, len(live))
        assert codes.count(NOT_SENT) == 12 * 2  # 10 asked, 8 allowed, in every wave
        assert codes.count(200) > 40 and "lost" in codes
        pool.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
