"""Test helpers: tiny ONNX models built on the fly and a real gateway process on loopback."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

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


def write_model(root: Path, name: str, data: bytes, config: dict[str, Any] | None = None, version: int = 1) -> Path:
    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(data)
    if config is not None:
        (root / name / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder / "model.onnx"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayProcess:
    """``batchgate serve`` as a child process on a free loopback port."""

    def __init__(
        self,
        repository: Path,
        log_path: Path,
        config: dict[str, Any] | None = None,
        replicas: int = 2,
        ca_file: Path | None = None,
    ) -> None:
        """``ca_file``: the gateway serves TLS; :meth:`get` trusts this CA."""
        self.port = free_port()
        self.scheme = "https" if ca_file is not None else "http"
        self.ssl_context = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None
        self.grpc_port = free_port()
        self.repository = repository
        self.log_path = log_path
        self.config_path: Path | None = None
        argv = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--model-repository",
            str(repository),
            "--http-port",
            str(self.port),
            "--grpc-port",
            str(self.grpc_port),
            "--replicas",
            str(replicas),
        ]
        # Tests pin the replica count unless they are about autoscaling.
        config = {"autoscaler": {"enabled": False}, **(config or {})}
        if config is not None:
            self.config_path = log_path.with_suffix(".yaml")
            self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
            argv += ["--config", str(self.config_path)]
        self._log = open(log_path, "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGATE_")}
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(
                f"{self.scheme}://{self.url}{path}", timeout=5, context=self.ssl_context
            ) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_post(self, path: str, body: bytes = b"{}") -> bytes:
        request = urllib.request.Request(f"{self.scheme}://{self.url}{path}", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10, context=self.ssl_context) as response:
            payload: bytes = response.read()
        return payload

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Poll readiness until it holds; fail with the log if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"gateway not ready after {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-8000:]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        status, body = self.get("/metrics")
        assert status == 200
        total = 0.0
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += sample.value
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
