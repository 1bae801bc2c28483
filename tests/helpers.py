"""Test helpers: tiny ONNX models built on the fly and a real gateway process on loopback."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gateway.child import ChildGateway
from gateway.ports import free_port

__all__ = [
    "IDENTITY_TYPES",
    "GatedSession",
    "GatewayProcess",
    "ResponseReader",
    "child_pids",
    "free_port",
    "identity_arrays",
    "identity_model",
    "write_model",
]

IDENTITY_TYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


def identity_arrays(rows: int, seed: int, encoded: bool = False) -> dict[str, np.ndarray]:
    """Inputs for :func:`identity_model`, one [rows, 3] array per datatype of IDENTITY_TYPES:
    integers over their whole range, BYTES as non-ASCII text (UTF-8 bytes with ``encoded``)."""
    from workers.dtypes import V2_TO_NUMPY

    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for datatype in IDENTITY_TYPES:
        dtype = V2_TO_NUMPY[datatype]
        if datatype == "BYTES":
            text = [[f"s{r}{c}é" for c in range(3)] for r in range(rows)]
            arrays[datatype] = np.array([[t.encode() for t in row] for row in text] if encoded else text, dtype=object)
        elif datatype == "BOOL":
            arrays[datatype] = rng.integers(0, 2, size=(rows, 3)).astype(bool)
        elif datatype.startswith("FP"):
            arrays[datatype] = rng.standard_normal((rows, 3)).astype(dtype)
        else:
            info = np.iinfo(dtype)
            arrays[datatype] = rng.integers(info.min, info.max, size=(rows, 3), dtype=info.dtype, endpoint=True)
    return arrays


def identity_model(types: list[str] = IDENTITY_TYPES, width: int = 3) -> bytes:
    """One Identity node per datatype: inputs ``in_<T>`` [batch, width] -> outputs ``out_<T>``."""
    from onnx import TensorProto, helper

    onnx_type = {
        "BOOL": TensorProto.BOOL,
        "UINT8": TensorProto.UINT8,
        "UINT16": TensorProto.UINT16,
        "UINT32": TensorProto.UINT32,
        "UINT64": TensorProto.UINT64,
        "INT8": TensorProto.INT8,
        "INT16": TensorProto.INT16,
        "INT32": TensorProto.INT32,
        "INT64": TensorProto.INT64,
        "FP16": TensorProto.FLOAT16,
        "FP32": TensorProto.FLOAT,
        "FP64": TensorProto.DOUBLE,
        "BF16": TensorProto.BFLOAT16,
        "BYTES": TensorProto.STRING,
    }
    inputs = [helper.make_tensor_value_info(f"in_{t}", onnx_type[t], ["batch", width]) for t in types]
    outputs = [helper.make_tensor_value_info(f"out_{t}", onnx_type[t], ["batch", width]) for t in types]
    nodes = [helper.make_node("Identity", [f"in_{t}"], [f"out_{t}"]) for t in types]
    model = helper.make_model(
        helper.make_graph(nodes, "identity", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 9
    data: bytes = model.SerializeToString()
    return data


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll ``condition`` (every 50 ms) until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def child_pids(pid: int) -> list[int]:
    """The direct children of process ``pid`` (a gateway's workers), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def write_model(root: Path, name: str, data: bytes, config: dict[str, Any] | None = None, version: int = 1) -> Path:
    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(data)
    if config is not None:
        (root / name / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder / "model.onnx"


class GatedSession:
    """A real ONNX Runtime session whose runs each report in (``entered``) and then wait
    until the test sets ``release``: for tests of what may run, or wait, meanwhile."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def run(self, names: list[str], inputs: dict[str, Any]) -> list[Any]:
        self.entered.release()
        assert self.release.wait(10), "the test never let the run go"
        return list(self.session.run(names, inputs))


class GatewayProcess(ChildGateway):
    """``batchgate serve`` as a child process on a free loopback port, as the tests use it:
    a pinned replica count and no autoscaler unless the test configures one."""

    def __init__(
        self,
        repository: Path,
        log_path: Path,
        config: dict[str, Any] | None = None,
        replicas: int = 2,
        ca_file: Path | None = None,
    ) -> None:
        """``ca_file``: the gateway serves TLS; :meth:`get` trusts this CA."""
        context = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None
        config = {"autoscaler": {"enabled": False}, **(config or {})}
        super().__init__(repository, log_path, config, ["--replicas", str(replicas)], ssl_context=context)

    def get_post(self, path: str, body: bytes = b"{}") -> bytes:
        request = urllib.request.Request(f"{self.scheme}://{self.url}{path}", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10, context=self.ssl_context) as response:
            payload: bytes = response.read()
        return payload

    def metric(self, name: str, labels: dict[str, str] | None = None, ops_port: bool = False) -> float:
        """Sum of a metric's samples whose labels include ``labels``; scraped on the HTTP port,
        or with ``ops_port`` on the operations port (which counts against no HTTP limit)."""
        from prometheus_client.parser import text_string_to_metric_families

        if ops_port:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
                status, body = response.status, response.read()
        else:
            status, body = self.get("/metrics")
        assert status == 200
        total = 0.0
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += sample.value
        return total


class ResponseReader:
    """Reads HTTP/1.1 responses with a Content-Length, one after another, off one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"connection closed mid-response: {self.buffer!r}"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            assert self._fill(), "connection closed mid-body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed(self) -> bool:
        """True when the server closes the connection (and sends nothing more)."""
        return not self.buffer and not self._fill()
