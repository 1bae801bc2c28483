"""The benchmark's load generator against a real gateway: its lean HTTP/1.1 and gRPC
clients count answers by status (HTTP 200, grpc-status 0), so a failing server shows up as
errors, never as speed, and every run stops at its request budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from benchmarks.h2grpc import grpc_status, hpack_int, hpack_string
from benchmarks.measure import measure
from tests.helpers import GatewayProcess, child_pids


def _request(model: str) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="input", datatype="FP32")
    tensor.shape.extend([1, 64])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    return bytes(request.SerializeToString())


def _loadgen(body: Path, *args: str) -> dict[str, float]:
    argv = [sys.executable, "-m", "benchmarks.loadgen", "--body", str(body), "--warmup", "0", "--duration", "30", *args]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=True)
    result: dict[str, float] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("load", [["--users", "8"], ["--rate", "400"]], ids=["closed", "open"])
def test_grpc_answers_are_counted_by_status(gateway: GatewayProcess, tmp_path: Path, load: list[str]) -> None:
    good, unknown = tmp_path / "good.pb", tmp_path / "unknown.pb"
    good.write_bytes(_request("digits_mlp"))
    unknown.write_bytes(_request("no_such_model"))
    served = _loadgen(good, "--grpc", "--port", str(gateway.grpc_port), *load, "--max-requests", "300")
    assert (served["requests"], served["errors"]) == (300, 0)
    refused = _loadgen(unknown, "--grpc", "--port", str(gateway.grpc_port), *load, "--max-requests", "40")
    assert (refused["requests"], refused["errors"]) == (0, 40)
    assert refused["error_kinds"] == {"grpc-status 5": 40}  # NOT_FOUND


@pytest.mark.parametrize("load", [["--users", "8"], ["--rate", "400"]], ids=["closed", "open"])
def test_http_answers_are_counted_by_status(gateway: GatewayProcess, tmp_path: Path, load: list[str]) -> None:
    body = tmp_path / "digits.json"
    rows = np.ones((1, 64), np.float32).reshape(-1).tolist()
    body.write_text(json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": rows}]}))
    for model, count, expected, kinds in (
        ("digits_mlp", 300, (300, 0), {}),
        ("no_such_model", 40, (0, 40), {"HTTP 404": 40}),
    ):
        path = f"/v2/models/{model}/infer"
        result = _loadgen(body, "--port", str(gateway.port), "--path", path, *load, "--max-requests", str(count))
        assert (result["requests"], result["errors"]) == expected, model
        assert result["error_kinds"] == kinds, model
    # A server closing each connection after its answer costs reconnections, not answers.
    path = "/v2/models/digits_mlp/infer"
    closing = _loadgen(
        body,
        "--port",
        str(gateway.port),
        "--path",
        path,
        "--header",
        "Connection: close",
        *load,
        "--max-requests",
        "100",
    )
    assert (closing["requests"], closing["errors"]) == (100, 0)


def test_grpc_status_reads_literals_and_refuses_what_it_cannot_read() -> None:
    status = hpack_int(0, 4, 0) + hpack_string(b"grpc-status") + hpack_string(b"14")
    message = hpack_int(0, 4, 0x10) + hpack_string(b"grpc-message") + hpack_string(b"x" * 300)
    assert grpc_status(b"\x88" + message + status) == 14  # :status 200 (static 8) first
    assert grpc_status(b"\x20" + hpack_int(0, 6, 0x40) + hpack_string(b"grpc-status") + b"\x010") == 0
    assert grpc_status(b"\x88" + message) is None
    huffman = hpack_int(0, 4, 0) + b"\x88" + b"\x00" * 8 + b"\x010"
    assert grpc_status(huffman) is None  # a Huffman-coded name is not read as grpc-status
    with pytest.raises(ValueError, match="dynamic index 62"):
        grpc_status(b"\xbe")


def test_open_loop_arrivals_past_the_connection_limit_are_errors_saying_so(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    """Arrivals that find every allowed connection busy are not sent; they must show up as
    such, not as the server's failures (nor vanish)."""
    body = tmp_path / "digits.json"
    rows = np.ones((1, 64), np.float32).reshape(-1).tolist()
    body.write_text(json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": rows}]}))
    path = "/v2/models/digits_mlp/infer"
    result = _loadgen(
        body, "--port", str(gateway.port), "--path", path, "--rate", "5000", "--max-connections", "1",
        "--max-requests", "300",
    )  # fmt: skip
    assert result["requests"] + result["errors"] == 300
    assert result["errors"] > 0
    assert set(result["error_kinds"]) == {"not sent: connection limit"}


def test_a_measured_run_says_where_the_servers_cpu_went(gateway: GatewayProcess, tmp_path: Path) -> None:
    """The gateway's own CPU and each worker's, in the order of the process tree, add up to the
    server's; CPU pressure, where the kernel reports it, is a share of the run."""
    body = tmp_path / "digits.json"
    rows = np.ones((1, 64), np.float32).reshape(-1).tolist()
    body.write_text(json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": rows}]}))
    row = measure("batchgate", gateway.process, gateway.port, "digits_mlp", "json", (body, []), 4, 1.5, 0.2)
    assert row.requests > 0 and row.errors == 0
    workers = child_pids(gateway.process.pid)
    assert len(row.cpu_by_process) == 1 + len(workers) == 3
    gateway_cpu, *worker_cpu = row.cpu_by_process
    assert gateway_cpu > 5  # it parsed and answered every request
    assert sum(worker_cpu) > 0  # and the workers computed them
    assert row.server_cpu_pct == pytest.approx(sum(row.cpu_by_process))
    if Path("/proc/pressure/cpu").exists():
        assert row.cpu_pressure is not None and 0 <= row.cpu_pressure <= 1.05
