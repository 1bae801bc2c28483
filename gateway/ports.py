"""Free TCP ports for servers started on loopback (workers, child gateways, benchmarks).

A port the kernel picks for ``bind(0)`` comes from its ephemeral range, the same range it
hands out to outgoing connections. Between choosing such a port and the server's own bind,
any ``connect`` on the machine may take it as its local port, and the server then fails
with "address already in use" (seen in the test suite: a gateway's HTTP port taken that
way). Ports below the ephemeral range are only ever taken by an explicit bind, so they are
chosen from there; where the range cannot be read or leaves no room, ``bind(0)`` it is.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10_000  # below this, well-known services live: leave them alone
TRIES = 64


def ephemeral_range(path: Path = EPHEMERAL_RANGE) -> tuple[int, int] | None:
    """The kernel's range for outgoing connections' local ports, or None if unknown."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return None
    return low, high


def free_port(host: str = "127.0.0.1", path: Path = EPHEMERAL_RANGE) -> int:
    """A TCP port on ``host`` that nothing is bound to now and no outgoing connection will take."""
    span = ephemeral_range(path)
    if span is not None and span[0] - LOWEST >= TRIES:
        for _ in range(TRIES):
            port = random.randrange(LOWEST, span[0])
            with socket.socket() as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
