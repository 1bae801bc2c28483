"""Core benchmark: raw in-process ONNX Runtime vs batchgate vs a no-batching server.

One run on one machine measures, in this order:
1. the raw limit: ``mlp`` in-process at batch sizes 1..128 with 1 and 2 threads
   (items/s; its best is the ratio's denominator), and batch-1 latency of each model;
2. batchgate (2 local workers) and the no-batching Starlette baseline under a
   closed-loop load of 1 and 64 users, one item per request, HTTP JSON (and binary
   for batchgate), with the load generator in its own process.
It prints a table and writes ``benchmarks/results/core.md`` and ``core.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class Row:
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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- raw ONNX Runtime ----------------------------------------------------------------------
def raw_sweep(model_path: Path, width: int, seconds: float) -> list[dict[str, Any]]:
    import onnxruntime as ort

    rows = []
    rng = np.random.default_rng(0)
    for threads in (1, 2):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        for batch in BATCHES:
            feed = {"input": rng.standard_normal((batch, width)).astype(np.float32)}
            for _ in range(3):
                session.run(None, feed)
            runs = 0
            start = time.perf_counter()
            while time.perf_counter() - start < seconds or runs < 5:
                session.run(None, feed)
                runs += 1
            elapsed = time.perf_counter() - start
            rows.append(
                {
                    "threads": threads,
                    "batch": batch,
                    "items_per_s": runs * batch / elapsed,
                    "ms_per_batch": elapsed / runs * 1000,
                }
            )
            print(f"  raw ORT threads={threads} batch={batch:4d}: {rows[-1]['items_per_s']:9.0f} items/s", flush=True)
    return rows


def raw_latency_ms(model_path: Path, width: int, runs: int = 2000) -> float:
    """p50 of batch-1 session.run, threads=1 (what one worker replica does)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    feed = {"input": np.random.default_rng(1).uniform(0, 1, (1, width)).astype(np.float32)}
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        samples.append(time.perf_counter() - start)
    return float(np.percentile(samples, 50) * 1000)


# -- servers ---------------------------------------------------------------------------------
def _wait_http(port: int, path: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
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


def _proc_tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            pids.extend(_proc_tree(int(child)))
    return pids


def _cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError):
            pass
    return total


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _bodies(width: int, directory: Path, name: str) -> dict[str, tuple[Path, list[str]]]:
    data = np.random.default_rng(7).uniform(0, 1, (1, width)).astype(np.float32)
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, width]}
    json_path = directory / f"{name}.json"
    json_path.write_bytes(json.dumps({"inputs": [{**tensor, "data": data.reshape(-1).tolist()}]}).encode())
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": data.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    binary_path = directory / f"{name}.bin"
    binary_path.write_bytes(header + data.tobytes())
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=name)
    request.inputs.add(name="input", datatype="FP32", shape=[1, width])
    request.raw_input_contents.append(data.tobytes())
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
) -> Row:
    pids = _proc_tree(server.pid)
    cpu0 = _cpu_seconds(pids)
    wall0 = time.perf_counter()
    argv = [sys.executable, "-m", "benchmarks.loadgen", "--port", str(port), "--path", f"/v2/models/{model}/infer"]
    argv += ["--body", str(body[0]), "--users", str(users), "--duration", str(duration), "--warmup", str(warmup)]
    argv += body[1]
    output = subprocess.run(argv, capture_output=True, check=True, timeout=duration + warmup + 120)
    wall = time.perf_counter() - wall0
    result = json.loads(output.stdout)
    row = Row(
        system=system,
        model=model,
        protocol=protocol,
        users=users,
        items_per_s=result["rps"],
        p50_ms=result["p50_ms"],
        p99_ms=result["p99_ms"],
        p999_ms=result["p999_ms"],
        errors=result["errors"],
        server_cpu_pct=(_cpu_seconds(pids) - cpu0) / wall * 100,
        server_rss_mb=_rss_mb(pids),
        loadgen_cpu_pct=result["loadgen_cpu_share"] * 100,
    )
    print(
        f"  {system:10s} {model:10s} {protocol:6s} users={users:3d}: {row.items_per_s:8.0f} items/s "
        f"p50 {row.p50_ms:.2f} ms p99 {row.p99_ms:.2f} ms errors {row.errors} "
        f"server CPU {row.server_cpu_pct:.0f}% loadgen CPU {row.loadgen_cpu_pct:.0f}%",
        flush=True,
    )
    return row


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as handle:
        return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- report ------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(raw: list[dict[str, Any]], latency: dict[str, float], rows: list[Row], meta: dict[str, Any]) -> str:
    best = max(raw, key=lambda r: r["items_per_s"])
    lines = [
        "# Core benchmark: batchgate vs raw ONNX Runtime vs no batching",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['cpus']} CPUs; Python {meta['python']}; {meta['date']}  ",
        f"Load: closed loop, one item per request, {meta['duration']} s measured after {meta['warmup']} s warm-up; "
        "the load generator runs in its own process (its CPU share is reported).",
        "",
        "## Raw limit (in-process ONNX Runtime, `mlp`)",
        "",
        "| threads | " + " | ".join(f"b={b}" for b in BATCHES) + " |",
        "|---:|" + "---:|" * len(BATCHES),
    ]
    for threads in (1, 2):
        cells = [f"{r['items_per_s']:.0f}" for r in raw if r["threads"] == threads]
        lines.append(f"| {threads} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Best: **{best['items_per_s']:.0f} items/s** at batch {best['batch']}, {best['threads']} threads.  ",
        "Raw batch-1 p50 (1 thread): " + ", ".join(f"`{m}` {v:.3f} ms" for m, v in latency.items()) + ".",
        "",
        "## Through HTTP",
        "",
        "| system | model | protocol | users | items/s | ratio to raw best | p50 ms | p99 ms | p99.9 ms | errors "
        "| server CPU % | server RSS MB | loadgen CPU % |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.system} | {r.model} | {r.protocol} | {r.users} | {r.items_per_s:.0f} | "
            f"{r.items_per_s / best['items_per_s']:.2f} | {_fmt(r.p50_ms)} | {_fmt(r.p99_ms)} | {_fmt(r.p999_ms)} | "
            f"{r.errors} | {r.server_cpu_pct:.0f} | {r.server_rss_mb:.0f} | {r.loadgen_cpu_pct:.0f} |"
        )
    lines += ["", "## Added latency at 1 user (p50 over raw batch-1 ORT)", ""]
    for r in rows:
        if r.users == 1 and r.model in latency and r.p50_ms is not None:
            lines.append(f"- {r.system} `{r.model}` {r.protocol}: +{r.p50_ms - latency[r.model]:.3f} ms")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--raw-seconds", type=float, default=0.5, help="seconds per raw batch size")
    parser.add_argument("--users", default="1,64")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    users = [int(u) for u in args.users.split(",")]

    work = Path(tempfile.mkdtemp(prefix="batchgate-bench-"))
    repository = work / "models"
    from gateway.demo import build_demo

    print("building the demo models ...", flush=True)
    build_demo(repository, progress=lambda _line: None)
    print("raw ONNX Runtime sweep on mlp ...", flush=True)
    raw = raw_sweep(repository / "mlp" / "1" / "model.onnx", 512, args.raw_seconds)
    latency = {
        "mlp": raw_latency_ms(repository / "mlp" / "1" / "model.onnx", 512),
        "digits_mlp": raw_latency_ms(repository / "digits_mlp" / "1" / "model.onnx", 64),
    }
    bodies = {"mlp": _bodies(512, work, "mlp"), "digits_mlp": _bodies(64, work, "digits_mlp")}
    rows: list[Row] = []

    port, grpc_port = _free_port(), _free_port()
    gateway = _start(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--model-repository",
            str(repository),
            "--http-port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--log-format",
            "text",
        ],
        work / "gateway.log",
    )
    try:
        _wait_http(port, "/v2/health/ready", gateway)
        for model in ("mlp", "digits_mlp"):
            for count in users:
                if model == "digits_mlp" and count != 1:
                    continue
                for protocol in ("json", "binary", "grpc"):
                    rows.append(
                        measure(
                            "batchgate",
                            gateway,
                            grpc_port if protocol == "grpc" else port,
                            model,
                            protocol,
                            bodies[model][protocol],
                            count,
                            args.duration,
                            args.warmup,
                        )
                    )
    finally:
        _stop(gateway)

    port = _free_port()
    baseline = _start(
        [
            sys.executable,
            "-m",
            "benchmarks.baseline_server",
            "--model-repository",
            str(repository),
            "--port",
            str(port),
        ],
        work / "baseline.log",
    )
    try:
        _wait_http_post(port, baseline)
        for model in ("mlp", "digits_mlp"):
            for count in users:
                if model == "digits_mlp" and count != 1:
                    continue
                rows.append(
                    measure(
                        "no-batching",
                        baseline,
                        port,
                        model,
                        "json",
                        bodies[model]["json"],
                        count,
                        args.duration,
                        args.warmup,
                    )
                )
    finally:
        _stop(baseline)

    meta = {
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "duration": args.duration,
        "warmup": args.warmup,
    }
    text = report(raw, latency, rows, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "core.md").write_text(text)
    (args.out / "core.json").write_text(
        json.dumps({"meta": meta, "raw": raw, "raw_latency_ms": latency, "rows": [asdict(r) for r in rows]}, indent=2)
    )
    print()
    print(text)


def _wait_http_post(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
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
