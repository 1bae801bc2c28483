"""Optional peers for ``python -m benchmarks --peers``: PyTriton (Triton's dynamic batcher) and
Ray Serve (``@serve.batch``), each serving ``mlp`` with ONNX Runtime on the v2 infer path.

They are not batchgate dependencies and conflict with its pins (protobuf, grpcio), so they
run under the interpreter named by ``BENCH_PEERS_PYTHON`` (a separate virtual
environment with ``nvidia-pytriton``, ``ray[serve]``, ``onnxruntime`` and ``orjson``),
or this one if they import here. A peer that cannot start is skipped and the report says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.measure import start, stop, wait_http, wait_http_post
from gateway.ports import free_port
from workers import allocator

HERE = Path(__file__).parent


def _python() -> str:
    return os.environ.get("BENCH_PEERS_PYTHON", sys.executable)


def _importable(module: str) -> bool:
    probe = subprocess.run([_python(), "-c", f"import {module}"], capture_output=True, timeout=120)
    return probe.returncode == 0


@dataclass
class Peer:
    name: str
    module: str  # what must import under the peers' interpreter
    distribution: str  # whose version the report names
    script: str
    grpc: bool
    skipped: str = field(default="")
    version: str = field(default="")

    def start(self, repository: Path, work: Path) -> tuple[subprocess.Popen[bytes], int, int] | None:
        if not _importable(self.module):
            self.skipped = f"`{self.module}` does not import under {_python()}; set BENCH_PEERS_PYTHON"
            return None
        port, grpc_port = free_port(), free_port() if self.grpc else 0
        python = _python()
        self.version = subprocess.run(
            [python, "-c", f"import importlib.metadata as m; print(m.version({self.distribution!r}))"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        argv = [python, str(HERE / self.script), "--model", str(repository / "mlp" / "1" / "model.onnx")]
        argv += ["--port", str(port), "--grpc-port", str(grpc_port)]
        # PyTriton's stub loads libpython dynamically: point it at this interpreter's own library.
        libdir = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip() or str(sysconfig.get_config_var("LIBDIR"))
        env_path = os.environ.get("LD_LIBRARY_PATH", "")
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{env_path}" if env_path else libdir
        # The allocator setting batchgate's processes give themselves (workers/allocator.py).
        process = start(argv, work / f"{self.name}.log", env={**os.environ, **allocator.ENVIRONMENT})
        try:
            if self.grpc:
                wait_http(port, "/v2/health/ready", process, timeout=240)
            else:
                wait_http_post(port, process, timeout=240)
        except (RuntimeError, TimeoutError) as exc:
            stop(process)
            log = (work / f"{self.name}.log").read_text(errors="replace")[-600:]
            self.skipped = f"did not start: {exc}; log tail: {log!r}"
            return None
        return process, port, grpc_port


PEERS = [
    Peer("pytriton", "pytriton", "nvidia-pytriton", "peer_pytriton.py", grpc=True),
    Peer("ray-serve", "ray.serve", "ray", "peer_rayserve.py", grpc=False),
]
