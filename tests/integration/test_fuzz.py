"""Hostile and malformed HTTP requests across every endpoint: never a 5xx, never a hang.

Hypothesis draws the method, path, headers and body; each request goes over a fresh
loopback connection with a 10 s timeout, so a hang fails the test. The one 5xx allowed
is 504 for a request that set its own deadline (``timeout`` parameter or
``x-batchgate-timeout-ms``) and ran out of it: that is the deadline doing its job.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import GatewayProcess

REAL = ["digits_mlp", "identity", "digits_logreg"]
MODELS = st.sampled_from(REAL * 4 + ["nope", "", "..", "%00", "dígits", "a" * 300])
VERSIONS = st.sampled_from(["1", "0", "2", "-1", "x", "99999999999999999999"])
KEYS = [
    "inputs",
    "outputs",
    "parameters",
    "name",
    "datatype",
    "shape",
    "data",
    "binary_data_size",
    "id",
    "timeout",
    "priority",
    "binary_data_output",
    "binary_data",
    "classification",
    "ready",
]
SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
JSONISH = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
STATUSES: dict[int, int] = {}
DATATYPES = st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "FP16", "UINT8", "BF16", "fp32", "", "X"])


@st.composite
def infer_like(draw: st.DrawFn) -> dict[str, Any]:
    """Nearly valid inference requests with one or more fields wrong."""
    shape = draw(st.lists(st.integers(-2, 70), max_size=4))
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["input", "in_FP32", "in_BYTES", "x", ""])),
        "datatype": draw(DATATYPES),
        "shape": shape,
    }
    if draw(st.booleans()):
        tensor["data"] = draw(
            st.lists(st.floats(allow_nan=True) | st.integers(-(2**40), 2**40) | st.text(max_size=3), max_size=200)
        )
    else:
        tensor["parameters"] = {"binary_data_size": draw(st.integers(-5, 1 << 33))}
    doc: dict[str, Any] = {"inputs": draw(st.lists(st.just(tensor), min_size=0, max_size=3))}
    if draw(st.booleans()):
        doc["parameters"] = draw(st.dictionaries(st.sampled_from(KEYS), SCALARS, max_size=3))
    if draw(st.booleans()):
        doc["outputs"] = draw(st.lists(st.dictionaries(st.sampled_from(KEYS), JSONISH, max_size=2), max_size=2))
    return doc


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    model, version = draw(MODELS), draw(VERSIONS)
    path = draw(
        st.sampled_from(
            [
                f"/v2/models/{model}/infer",
                f"/v2/models/{model}/versions/{version}/infer",
                f"/v2/models/{model}",
                f"/v2/models/{model}/ready",
                f"/v2/models/{model}/config",
                f"/v2/models/{model}/stats",
                "/v2/models/stats",
                "/v2/repository/index",
                f"/v2/repository/models/{model}/unload_nothing",
                "/v2",
                "/v2/health/ready",
                "/metrics",
                f"/v2/models/{model}/versions/{version}/stats",
                "/v2//models",
                "/%ff",
            ]
        )
    )
    if draw(st.integers(0, 9)) < 7:  # mostly inference, where the decoding is
        path = draw(st.sampled_from([f"/v2/models/{model}/infer", f"/v2/models/{model}/versions/{version}/infer"]))
        method = "POST"
    else:
        method = draw(st.sampled_from(["POST", "GET", "PUT", "DELETE"]))
    kind = draw(st.sampled_from(["infer", "json", "bytes", "binary"]))
    headers: dict[str, str] = {}
    if kind == "infer":
        body = json.dumps(draw(infer_like())).encode()
    elif kind == "json":
        body = json.dumps(draw(JSONISH)).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=2048))
    else:
        header = json.dumps(draw(infer_like())).encode()
        body = header + draw(st.binary(max_size=1024))
        headers["Inference-Header-Content-Length"] = str(draw(st.sampled_from([len(header), 0, -1, len(body) + 5])))
    if draw(st.booleans()):
        headers["Inference-Header-Content-Length"] = draw(st.sampled_from(["", "abc", "-5", "1e9", str(2**64)]))
    if draw(st.booleans()):
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "identity", "gzip, gzip"]))
    if draw(st.booleans()):
        headers["x-batchgate-timeout-ms"] = draw(st.sampled_from(["0", "-1", "nan", "inf", "1e-9", "abc", "5"]))
    return method, path, body, headers


def _send(port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, quote(path, safe="/%"), body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_hostile_requests_never_get_a_5xx(gateway: GatewayProcess) -> None:
    seen = [0]

    @settings(max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(requests())
    def one(case: tuple[str, str, bytes, dict[str, str]]) -> None:
        method, path, body, headers = case
        status, payload = _send(gateway.port, method, path, body, headers)
        seen[0] += 1
        STATUSES[status] = STATUSES.get(status, 0) + 1
        own_deadline = "x-batchgate-timeout-ms" in headers or b'"timeout"' in body
        if status == 504:
            assert own_deadline, (method, path, body[:200], headers)
        else:
            assert status < 500, (status, payload[:300], method, path, body[:300], headers)
        if status >= 400 and path != "/metrics":
            assert "error" in json.loads(payload), payload[:200]

    one()
    print("statuses:", dict(sorted(STATUSES.items())))
    assert seen[0] >= 1000
    assert _send(gateway.port, "GET", "/v2/health/ready", b"", {})[0] == 200
