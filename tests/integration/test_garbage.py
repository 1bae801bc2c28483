"""A finished request is freed by reference counting, not left for the garbage collector;
and a request leaves nothing behind that grows with what clients send.

A reference cycle per request (the direct HTTP path once kept ``cycle.message_event =
cycle``) kept ~14 objects per request alive until a full collection, and at 6,200
requests/s those collections stalled the event loop for 10-16 ms every 0.6 s: the open
loop's p99 went from ~20 to ~30-50 ms. The gateway's own ``python_gc_objects_collected``
counter says how many objects its collections found unreachable, so the test reads it
around a few hundred requests on each front.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.helpers import GatewayProcess

REQUESTS = 300


@pytest.fixture(scope="module")
def gateway(serving_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway of its own: the shared one may still be finishing what earlier tests left
    (the fuzz test's half-sent requests time out later, and their errors are garbage)."""
    process = GatewayProcess(serving_repository, tmp_path_factory.mktemp("garbage") / "gateway.log", replicas=1)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _collected(gateway: GatewayProcess) -> float:
    # The youngest generation only: what earlier tests left behind sits in older ones, and a
    # full collection during the test would count it here too.
    return gateway.metric("python_gc_objects_collected_total", {"generation": "0"})


def _json_body() -> bytes:
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}
    return json.dumps({"inputs": [tensor]}).encode()


def test_http_requests_leave_no_cyclic_garbage(gateway: GatewayProcess) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    body = _json_body()
    connection.request("POST", "/v2/models/digits_mlp/infer", body)  # warm: first-use objects
    connection.getresponse().read()
    before = _collected(gateway)
    for _ in range(REQUESTS):  # the direct path (plain POST) and the ASGI path (GET)
        connection.request("POST", "/v2/models/digits_mlp/infer", body)
        response = connection.getresponse()
        assert response.status == 200, response.read()
        response.read()
        connection.request("GET", "/v2/models/digits_mlp")
        connection.getresponse().read()
    connection.close()
    collected = _collected(gateway) - before
    # A cycle per request would put thousands here; a few strays are not per request.
    assert collected < REQUESTS / 2, f"{collected:.0f} objects collected over {2 * REQUESTS} requests"


def test_closed_http_connections_leave_no_cyclic_garbage(gateway: GatewayProcess) -> None:
    """A client that opens a connection per request (curl in a loop, HTTP/1.0 clients).

    The last request's cycle and the protocol pointed at each other, so every closed
    connection left ~34 objects (protocol, transport, the request's call and tensors) for
    the collector: 2,000 such requests cost 71 collections and ~68,000 objects found.
    """
    body = _json_body()
    before = _collected(gateway)
    for _ in range(REQUESTS):
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        connection.request("POST", "/v2/models/digits_mlp/infer", body)
        response = connection.getresponse()
        assert response.status == 200, response.read()
        response.read()
        connection.close()
    collected = _collected(gateway) - before
    assert collected < REQUESTS / 2, f"{collected:.0f} objects collected over {REQUESTS} connections"


def test_grpc_calls_leave_no_cyclic_garbage(gateway: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
    client.infer("digits_mlp", [tensor])
    before = _collected(gateway)
    for _ in range(REQUESTS):
        client.infer("digits_mlp", [tensor])
    collected = _collected(gateway) - before
    assert collected < REQUESTS / 2, f"{collected:.0f} objects collected over {REQUESTS} calls"


def test_made_up_model_names_add_no_metric_labels(gateway: GatewayProcess) -> None:
    """Unknown models are answered 404 without growing any label set a client controls."""
    names = [f"nope-{index}" for index in range(5)]
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    for name in names:
        connection.request("POST", f"/v2/models/{name}/infer", _json_body())
        response = connection.getresponse()
        response.read()
        assert response.status == 404
    connection.close()
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
    for name in names:
        with pytest.raises(InferenceServerException):
            client.infer(name, [tensor])
    status, body = gateway.get("/metrics")
    assert status == 200 and b"nope-" not in body
