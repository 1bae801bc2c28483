"""A gateway at its connection cap still answers health probes and the metrics scrape.

Under overload every connection can be taken by clients waiting for answers. If probes got
the cap's 503 too, Kubernetes would restart an overloaded gateway (liveness) and monitoring
would go blind exactly when it matters. A few connections past the cap are therefore kept
until their request line shows what they want: a probe or a scrape is answered (and the
connection closed), anything else gets the usual 503. The operations port (``metrics.port``)
does not share the HTTP port's cap at all.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.rest.protocol import OPS_RESERVE
from tests.helpers import GatewayProcess, wait_for, write_model

CAP = 16


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("ops")
    source = demo_repository / "digits_logreg"
    write_model(folder / "models", "digits_logreg", (source / "1" / "model.onnx").read_bytes())
    # Idle connections must outlive the test's checks: a long header deadline keeps them open.
    limits = {"max_connections": CAP, "header_timeout_s": 30.0}
    process = GatewayProcess(folder / "models", folder / "gateway.log", {"limits": limits})
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _exchange(port: int, request: bytes, timeout_s: float = 10.0) -> tuple[int | None, bytes]:
    """Send ``request`` on a new connection; status and bytes until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        if request:
            sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return (int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else None), data


BODY = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [' + b"0," * 63 + b"0]}]}"
INFER = b"POST /v2/models/digits_logreg/infer HTTP/1.1\r\nHost: gateway\r\nContent-Length: %d\r\n\r\n" % len(BODY)


def _get(path: str, close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: gateway\r\n{connection}\r\n".encode()


def test_probes_and_metrics_are_answered_at_the_cap_and_nothing_else_is(capped: GatewayProcess) -> None:
    port = capped.port
    infer, body = INFER, BODY
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(CAP)]
    try:
        # Connections opened at once are accepted together, not in the order they were opened:
        # go on once the gateway serves all of them, so the ones below are the ones past the cap.
        wait_for(lambda: capped.metric("batchgate_open_connections", {"front": "http"}, ops_port=True) == CAP)
        # Each answer ends with the server closing the connection (_exchange reads to EOF).
        status, raw = _exchange(port, _get("/v2/health/live"))
        assert status == 200, raw[:300]
        assert b"connection: close" in raw.lower()
        status, raw = _exchange(port, _get("/v2/health/ready"))
        assert status == 200, raw[:300]
        status, raw = _exchange(port, _get("/metrics"))
        assert status == 200 and b"batchgate_requests_total" in raw, raw[:300]
        status, raw = _exchange(port, infer + body)
        assert status == 503 and b"too many open connections" in raw, raw[:300]
        status, raw = _exchange(port, _get("/v2/models/digits_logreg"))
        assert status == 503 and b"too many open connections" in raw, raw[:300]
        # The reserve is small: with it full of silent connections, the next one is refused at
        # once, without waiting for a request line (the header deadline is 30 s here).
        silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(OPS_RESERVE)]
        try:
            status, raw = _exchange(port, b"", timeout_s=5.0)
            assert status == 503 and b"too many open connections" in raw, raw[:300]
            # The operations port has its own socket, queue and cap: still answered there.
            ops = capped.metrics_port
            assert _exchange(ops, _get("/v2/health/live", close=True))[0] == 200
            assert _exchange(ops, _get("/v2/health/ready", close=True))[0] == 200
            status, raw = _exchange(ops, _get("/metrics", close=True))
            assert status == 200 and b"batchgate_requests_total" in raw, raw[:300]
        finally:
            for sock in silent:
                sock.close()
    finally:
        for sock in idle:
            sock.close()
    # With the clients gone their slots come back (once the gateway has seen them close).
    closing = infer.replace(b"Host: gateway\r\n", b"Host: gateway\r\nConnection: close\r\n") + body
    statuses = []
    for _ in range(100):
        status, raw = _exchange(port, closing)
        statuses.append(status)
        if status == 200:
            break
    assert statuses[-1] == 200, statuses


def test_the_open_connections_gauge_follows_both_fronts(capped: GatewayProcess) -> None:
    def gauge(front: str) -> float:
        return capped.metric("batchgate_open_connections", {"front": front}, ops_port=True)

    assert capped.grpc_port is not None
    caps = [capped.metric("batchgate_max_connections", {"front": f}, ops_port=True) for f in ("http", "grpc")]
    assert caps == [CAP, CAP]  # what the near-cap alert divides by
    wait_for(lambda: (gauge("http"), gauge("grpc")) == (0, 0))  # the test before closed its own
    opened = [socket.create_connection(("127.0.0.1", port), timeout=10) for port in (capped.port, capped.grpc_port) * 3]
    try:
        wait_for(lambda: (gauge("http"), gauge("grpc")) == (3, 3))
    finally:
        for sock in opened:
            sock.close()
    wait_for(lambda: (gauge("http"), gauge("grpc")) == (0, 0))
