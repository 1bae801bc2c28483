"""The operations port answers its three paths, refuses everything else with a v2 error, and
bounds what a client can hold: connections, request size and time.

Each test runs the real listener on a loopback port in this process and talks raw HTTP/1.1
to it, so what is checked is what a kubelet probe or a Prometheus scrape would see.
"""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gateway import metrics as metrics_module
from gateway import ops_port
from gateway.auth import Authenticator, Principal, hash_token
from gateway.config import LimitsConfig
from gateway.metrics import Metrics
from gateway.ops_port import OpsPort

Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def run(
    test: Callable[[OpsPort, int], Awaitable[None]],
    ready: Callable[[], bool] = lambda: True,
    limits: LimitsConfig | None = None,
    auth: Authenticator | None = None,
) -> None:
    async def main() -> None:
        port = OpsPort(Metrics(), ready, limits or LimitsConfig(), auth)
        number = await port.start("127.0.0.1", 0)
        try:
            await asyncio.wait_for(test(port, number), timeout=20)
        finally:
            await port.stop()

    asyncio.run(main())


async def response(reader: asyncio.StreamReader, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One response off the connection: status, headers, and the body its length announces
    (none after ``head_only``: the answer to a HEAD)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = b"" if head_only else await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def shut(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


def request(method: str, path: str, extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: ops\r\n{extra}\r\n".encode()


def test_metrics_and_probes_on_one_kept_alive_connection() -> None:
    async def check(port: OpsPort, number: int) -> None:
        port.metrics.requests.labels("m", "1", "200").inc(3)
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(request("GET", "/metrics"))
        status, headers, body = await response(reader)
        assert status == 200 and headers["content-type"].startswith("text/plain")
        assert 'batchgate_requests_total{code="200",model="m",version="1"} 3.0' in body.decode()
        # Pipelined on the same connection: HEAD announces the length and sends no body, so
        # the next response must start right where the head ends.
        writer.write(request("HEAD", "/metrics") + request("GET", "/v2/health/live"))
        status, headers, _ = await response(reader, head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0
        status, _, body = await response(reader)
        assert (status, body) == (200, b"")
        await shut(writer)

    run(check)


@pytest.mark.parametrize("ready", [True, False])
def test_readiness_follows_the_gateway(ready: bool) -> None:
    async def check(port: OpsPort, number: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(request("GET", "/v2/health/ready?verbose=1"))
        assert (await response(reader))[0] == (200 if ready else 503)
        writer.write(request("GET", "/v2/health/live"))
        assert (await response(reader))[0] == 200  # live whatever readiness says
        await shut(writer)

    run(check, ready=lambda: ready)


def test_other_paths_and_methods_get_v2_errors() -> None:
    async def check(port: OpsPort, number: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(request("GET", "/v2/models/mlp"))
        status, headers, body = await response(reader)
        assert status == 404 and headers["content-type"] == "application/json"
        assert "/metrics" in json.loads(body)["error"]
        writer.write(request("POST", "/metrics", "Content-Length: 2\r\n") + b"{}")
        status, headers, body = await response(reader)
        assert status == 405 and headers["allow"] == "GET, HEAD" and "error" in json.loads(body)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, body = await response(reader)
        assert status == 400 and headers["connection"] == "close" and "error" in json.loads(body)
        assert await reader.read() == b""  # and closed
        await shut(writer)

    run(check)


def test_connections_past_the_cap_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops_port, "MAX_CONNECTIONS", 3)

    async def check(port: OpsPort, number: int) -> None:
        held = [await asyncio.open_connection("127.0.0.1", number) for _ in range(3)]
        reader, writer = held[-1]
        writer.write(request("GET", "/v2/health/live"))
        assert (await response(reader))[0] == 200  # the third is in
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        status, _, body = await response(reader)  # refused before it sends anything
        assert status == 503 and "limit 3" in json.loads(body)["error"]
        assert await reader.read() == b""
        await shut(writer)
        for _, other in held:
            await shut(other)

    run(check)


def test_a_slow_request_gets_408_and_a_large_one_413() -> None:
    async def check(port: OpsPort, number: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(b"GET /metr")  # and nothing more: the deadline answers
        status, _, body = await response(reader)
        assert status == 408 and "error" in json.loads(body)
        assert await reader.read() == b""
        await shut(writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(request("GET", "/metrics", "X-Pad: " + "a" * 2000 + "\r\n"))
        status, _, body = await response(reader)
        assert status == 413 and "1024 bytes" in json.loads(body)["error"]
        await shut(writer)

    run(check, limits=LimitsConfig(header_timeout_s=0.2, max_header_bytes=1024))


def test_tokens_apply_as_on_the_http_port() -> None:
    auth = Authenticator([(hash_token("s3cret"), Principal("ops", None, False))], frozenset({"/v2/health/live"}))

    async def check(port: OpsPort, number: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(request("GET", "/v2/health/live"))
        assert (await response(reader))[0] == 200  # public
        writer.write(request("GET", "/metrics"))
        status, _, body = await response(reader)
        assert status == 401 and "bearer" in json.loads(body)["error"].lower()
        writer.write(request("GET", "/metrics", "Authorization: Bearer s3cret\r\n"))
        assert (await response(reader))[0] == 200
        await shut(writer)

    run(check, auth=auth)


def test_a_port_in_use_is_named_in_the_error() -> None:
    async def check(port: OpsPort, number: int) -> None:
        other = OpsPort(Metrics(), lambda: True, LimitsConfig())
        with pytest.raises(OSError, match=f"metrics port 127.0.0.1:{number}"):
            await other.start("127.0.0.1", number)

    run(check)


def test_a_closed_connection_is_freed_without_the_collector() -> None:
    async def check(port: OpsPort, number: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(request("GET", "/v2/health/live"))
        assert (await response(reader))[0] == 200  # kept alive: the server side is there now
        (connection,) = port.connections
        freed = weakref.ref(connection)
        del connection
        writer.write(request("GET", "/v2/health/live", "Connection: close\r\n"))
        assert (await response(reader))[0] == 200
        assert await reader.read() == b""  # the server closed it
        await shut(writer)
        for _ in range(100):  # connection_lost runs a loop turn or two after the close
            if freed() is None:
                break
            await asyncio.sleep(0.01)
        assert freed() is None and not port.connections

    gc.disable()
    try:
        run(check)
    finally:
        gc.enable()


def test_answers_pipelined_behind_a_scrape_keep_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scrape is rendered between other work, so the answers asked after it on the same
    connection must wait for it and go out in the order asked."""
    monkeypatch.setattr(metrics_module, "EXPOSITION_SLICE_S", 0.0)  # a loop turn after every family

    async def check(port: OpsPort, number: int) -> None:
        for model in range(20):
            port.metrics.request_duration.labels(f"m{model}", "1").observe(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(
            request("GET", "/metrics")
            + request("GET", "/v2/health/ready")
            + request("HEAD", "/metrics")
            + request("GET", "/nowhere")
            + request("GET", "/metrics")
        )
        last_line = b'batchgate_request_duration_seconds_count{model="m19",version="1"} 1.0\n'
        status, _, first = await response(reader)
        assert status == 200 and last_line in first
        assert (await response(reader))[:3:2] == (200, b"")
        status, headers, _ = await response(reader, head_only=True)
        # The process's own CPU and memory lines change from one render to the next.
        assert status == 200 and abs(int(headers["content-length"]) - len(first)) < 100
        assert (await response(reader))[0] == 404
        status, _, last = await response(reader)
        assert status == 200 and last_line in last
        # Still kept alive, and reading again.
        writer.write(request("GET", "/v2/health/live"))
        assert (await response(reader))[0] == 200
        await shut(writer)

    run(check)


class _Broken:
    """A collector that fails while collecting, as a buggy custom collector would."""

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("broken", "fails when collected")]

    def collect(self) -> list[Metric]:
        raise RuntimeError("this collector is broken")


def test_a_failing_collector_gets_a_500_and_the_connection_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def check(port: OpsPort, number: int) -> None:
        port.metrics.registry.register(_Broken())
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(request("GET", "/metrics") + request("GET", "/v2/health/live"))
        status, headers, body = await response(reader)
        assert status == 500 and headers["content-type"] == "application/json"
        assert json.loads(body) == {"error": "the metrics could not be rendered"}
        assert (await response(reader))[0] == 200
        await shut(writer)

    run(check)
    assert "rendering /metrics failed" in caplog.text
