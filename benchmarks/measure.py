"""Running servers and load for the benchmarks: start/stop, readiness, CPU and RSS of a process
tree, request bodies, and one measured load run (closed or open loop) through ``benchmarks.loadgen``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class Row:
    """One measured scenario; ``users`` is 0 for an open-loop run at ``rate``."""

    system: str
    model: str
    protocol: str
    users: int
    items_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    errors: int
    server_cpu_pct: float
    server_rss_mb: float
    loadgen_cpu_pct: float
    rate: float = 0.0
    samples: str | None = None
    requests: int = 0  # answered 200 in the measured window (errors not included)
    rows_per_batch: float | None = None  # mean batch the server ran (its v2 statistics), if it reports them
    error_kinds: dict[str, int] = field(default_factory=dict)  # e.g. {"HTTP 429": 12}: what the errors were
    # The server's own process first, then each child (batchgate's workers), in % of one CPU.
    cpu_by_process: list[float] = field(default_factory=list)
    # Share of the run in which some runnable task waited for a CPU (/proc/pressure/cpu "some").
    cpu_pressure: float | None = None
    # Raw batch-1 p50 (ms) on the threads the server runs a batch on, measured right before
    # this row (1-user rows of target 3): the machine's speed drifts between minutes.
    raw_p50_ms: float | None = None
    # Target 3's pairs, measured after this 1-user row: (raw batch-1 p50, this server's 1-user
    # p50) in ms, each short run right after its raw measurement. One pair moved by up to
    # 0.7 ms between runs on the AMD VM; the median of several is the verdict.
    lone_pairs: list[list[float]] = field(default_factory=list)
    # Open loop: the share of the capacity (measured just before the run's round) its rate
    # was. 0 for closed loop, and in results from before capacities were measured per round.
    share: float = 0.0

    def open_load(self) -> float:
        """What groups open-loop runs: their share of the capacity, or their rate in older results."""
        return self.share or self.rate

    def errors_text(self) -> str:
        """The error count, with what the errors were when there were any."""
        kinds = "; ".join(f"{kind}: {count}" for kind, count in self.error_kinds.items())
        return f"{self.errors} ({kinds})" if kinds else str(self.errors)


# -- servers ---------------------------------------------------------------------------------
def wait_http(port: int, path: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server did not become ready")


def proc_tree(pid: int) -> list[int]:
    """``pid`` and its descendants. A thread or process that ends while it is read is skipped:
    the servers start and end threads under load, and one that ended between the listing and
    the read once stopped a benchmark run with FileNotFoundError."""
    pids = [pid]
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return pids
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            pids.extend(proc_tree(int(child)))
    return pids


def process_cpu_seconds(pids: list[int]) -> list[float]:
    """User plus system CPU seconds of each process (0 for one that has gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = []
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seconds.append((int(fields[11]) + int(fields[12])) / tick)
        except (OSError, IndexError):
            seconds.append(0.0)
    return seconds


def cpu_pressure_us() -> int | None:
    """Microseconds in which some runnable task waited for a CPU, since boot; None without PSI."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some "):
                return int(line.rpartition("total=")[2])
    except (OSError, ValueError):
        pass
    return None


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def bodies(width: int, directory: Path, name: str) -> dict[str, tuple[Path, list[str]]]:
    """One request to the dense models: a row of ``width`` float32 values, all outputs."""
    data = np.random.default_rng(7).uniform(0, 1, (1, width)).astype(np.float32)
    return request_bodies(name, {"input": data}, directory)


def request_bodies(
    name: str, inputs: dict[str, npt.NDArray[Any]], directory: Path, output: str | None = None
) -> dict[str, tuple[Path, list[str]]]:
    """The same request per protocol: JSON, binary tensors, and a serialized ModelInferRequest.

    Each is a file for the load generator, with the extra arguments it needs; ``output``
    asks for that output alone (in binary where the protocol allows), else all of them.
    """
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import np_to_triton_dtype

    tensors = [
        {"name": key, "datatype": np_to_triton_dtype(a.dtype), "shape": list(a.shape)} for key, a in inputs.items()
    ]
    document: dict[str, Any] = {"inputs": [{**t, "data": inputs[t["name"]].reshape(-1).tolist()} for t in tensors]}
    head: dict[str, Any] = {
        "inputs": [{**t, "parameters": {"binary_data_size": inputs[t["name"]].nbytes}} for t in tensors]
    }
    if output is None:
        head["parameters"] = {"binary_data_output": True}
    else:
        document["outputs"] = [{"name": output}]
        head["outputs"] = [{"name": output, "parameters": {"binary_data": True}}]
    json_path = directory / f"{name}.json"
    json_path.write_text(json.dumps(document))
    header = json.dumps(head).encode()
    binary_path = directory / f"{name}.bin"
    binary_path.write_bytes(header + b"".join(array.tobytes() for array in inputs.values()))
    request = service_pb2.ModelInferRequest(model_name=name)
    for tensor in tensors:
        request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        request.raw_input_contents.append(inputs[tensor["name"]].tobytes())
    if output is not None:
        request.outputs.add(name=output)
    grpc_path = directory / f"{name}.pb"
    grpc_path.write_bytes(request.SerializeToString())
    return {
        "json": (json_path, []),
        "binary": (binary_path, ["--header", f"Inference-Header-Content-Length: {len(header)}"]),
        "grpc": (grpc_path, ["--grpc"]),
    }


def measure(
    system: str,
    server: subprocess.Popen[bytes],
    port: int,
    model: str,
    protocol: str,
    body: tuple[Path, list[str]],
    users: int,
    duration: float,
    warmup: float,
    rate: float = 0.0,
    samples: Path | None = None,
    stats_port: int = 0,
) -> Row:
    """One load run against ``server``: closed loop with ``users``, or open loop at ``rate``/s.

    With ``stats_port``, the server's v2 statistics (batchgate's and Triton's) there give
    the mean batch it ran during the run.
    """
    counts0 = batch_counts(stats_port, model) if stats_port else None
    pids = proc_tree(server.pid)
    cpu0 = process_cpu_seconds(pids)
    pressure0 = cpu_pressure_us()
    wall0 = time.perf_counter()
    argv = [sys.executable, "-m", "benchmarks.loadgen", "--port", str(port), "--path", f"/v2/models/{model}/infer"]
    argv += ["--body", str(body[0]), "--duration", str(duration), "--warmup", str(warmup)]
    argv += ["--rate", str(rate)] if rate else ["--users", str(users)]
    if samples is not None:
        argv += ["--samples", str(samples)]
    argv += body[1]
    output = subprocess.run(argv, capture_output=True, check=True, timeout=duration + warmup + 120)
    wall = time.perf_counter() - wall0
    by_process = [(after - before) / wall * 100 for before, after in zip(cpu0, process_cpu_seconds(pids), strict=True)]
    pressure1 = cpu_pressure_us()
    pressure = None if pressure0 is None or pressure1 is None else (pressure1 - pressure0) / 1e6 / wall
    result = json.loads(output.stdout)
    counts1 = batch_counts(stats_port, model) if counts0 is not None else None
    rows_per_batch = None
    if counts0 is not None and counts1 is not None and counts1[1] > counts0[1]:
        rows_per_batch = (counts1[0] - counts0[0]) / (counts1[1] - counts0[1])
    row = Row(
        system=system,
        model=model,
        protocol=protocol,
        users=0 if rate else users,
        items_per_s=result["rps"],
        p50_ms=result["p50_ms"],
        p99_ms=result["p99_ms"],
        p999_ms=result["p999_ms"],
        errors=result["errors"],
        server_cpu_pct=sum(by_process),
        server_rss_mb=rss_mb(pids),
        loadgen_cpu_pct=result["loadgen_cpu_share"] * 100,
        rate=rate,
        samples=samples.name if samples is not None else None,
        requests=result["requests"],
        rows_per_batch=rows_per_batch,
        error_kinds=result.get("error_kinds", {}),
        cpu_by_process=by_process,
        cpu_pressure=pressure,
    )
    load = f"rate={rate:.0f}/s" if rate else f"users={users:3d}"
    split = "/".join(f"{share:.0f}" for share in by_process)
    print(
        f"  {system:12s} {model:10s} {protocol:6s} {load}: {row.items_per_s:8.0f} items/s "
        f"p50 {_ms(row.p50_ms)} p99 {_ms(row.p99_ms)} errors {row.errors_text()} "
        f"server CPU {row.server_cpu_pct:.0f}% ({split}) loadgen CPU {row.loadgen_cpu_pct:.0f}%"
        + ("" if pressure is None else f" CPU pressure {pressure:.2f}"),
        flush=True,
    )
    return row


def batch_counts(port: int, model: str) -> tuple[int, int] | None:
    """(rows inferred, batches executed) from ``/v2/models/{model}/stats``; None if not served."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}/stats", timeout=5) as response:
            stats = json.loads(response.read())["model_stats"][0]
        return int(stats["inference_count"]), int(stats["execution_count"])
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as handle:
        return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_http_post(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("baseline server exited")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("baseline server did not start")
