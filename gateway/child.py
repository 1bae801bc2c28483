"""A gateway as a child process on free loopback ports.

The test suite, the load test runner and the benchmarks all start ``batchgate serve``
in a subprocess, wait for readiness and stop it with SIGTERM (which drains). This is
that, once: the child inherits no ``BATCHGATE_*`` settings from the caller's
environment, so what it serves is what the arguments and ``config`` say.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from gateway.ports import free_port


class ChildGateway:
    """``batchgate serve`` in a child process; its output goes to ``log_path``."""

    def __init__(
        self,
        repository: Path,
        log_path: Path,
        config: dict[str, Any] | None = None,
        args: list[str] | None = None,
        grpc: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``config`` is written next to the log and passed with ``--config``; ``args`` are
        more ``serve`` options; ``ssl_context``: the gateway serves TLS and :meth:`get`
        trusts this context."""
        self.port = free_port()
        self.grpc_port = free_port() if grpc else None
        self.metrics_port = free_port()
        self.repository = repository
        self.log_path = log_path
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context is not None else "http"
        argv = [sys.executable, "-m", "gateway", "serve", "--model-repository", str(repository)]
        argv += ["--http-port", str(self.port), "--grpc-port", str(self.grpc_port or -1)]
        argv += ["--metrics-port", str(self.metrics_port)]
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = log_path.with_suffix(".yaml")
            self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
            argv += ["--config", str(self.config_path)]
        argv += args or []
        self._log = open(log_path, "wb")
        env = {name: value for name, value in os.environ.items() if not name.startswith("BATCHGATE_")}
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """Status and body of a GET (error statuses are returned, not raised)."""
        url = f"{self.scheme}://{self.url}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s, context=self.ssl_context) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Poll readiness until it holds; raise with the log's tail if the child exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.get("/v2/health/ready", timeout_s=2.0)[0] == 200:
                    return
            except OSError:  # not listening yet (URLError, refused, reset, timeout)
                pass
            time.sleep(0.1)
        raise TimeoutError(f"gateway not ready after {timeout_s:.0f}s:\n{self.log()}")

    def log(self) -> str:
        """The last 8,000 characters of the child's output."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-8000:]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        """Signal the child (SIGTERM drains), wait, kill it past ``timeout_s``; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
