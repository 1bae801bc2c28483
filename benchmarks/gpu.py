"""GPU check (``benchmarks/gpu_check.sh``): raw ONNX Runtime on the CUDA EP with IO binding against
batchgate with a CUDA worker, on ``mlp`` and ``mlp_xl``, in one run on one machine with an NVIDIA GPU.

Writes ``benchmarks/results/gpu.md`` naming the device. Never part of CI: it needs the
``gpu`` extra (onnxruntime-gpu) and a GPU, and refuses to run without them.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.core import XL_WIDTHS, _gateway
from benchmarks.measure import Row, measure, request_bodies
from benchmarks.report import BATCHES
from workers.allocator import keep_freed_memory

RESULTS = Path(__file__).parent / "results"
MODELS = {"mlp": (512, 2048, 2048, 512), "mlp_xl": XL_WIDTHS}


def device_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemExit(f"gpu check: no NVIDIA GPU here (nvidia-smi: {exc})") from None
    return out.stdout.strip().splitlines()[0]


def raw_cuda(path: Path, model: str, width: int, seconds: float, provider: str) -> list[dict[str, Any]]:
    """items/s of session.run_with_iobinding at each batch size (inputs from host, outputs on device)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=[provider, "CPUExecutionProvider"])
    if session.get_providers()[0] != provider:
        raise SystemExit(f"gpu check: {provider} did not load (got {session.get_providers()})")
    rows = []
    for batch in BATCHES:
        data = np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32)

        def once(data: np.ndarray = data) -> None:
            binding = session.io_binding()
            binding.bind_cpu_input("input", data)
            binding.bind_output("output", "cuda")
            session.run_with_iobinding(binding)
            binding.copy_outputs_to_cpu()

        for _ in range(3):
            once()
        runs, begin = 0, time.perf_counter()
        while time.perf_counter() - begin < seconds or runs < 5:
            once()
            runs += 1
        elapsed = time.perf_counter() - begin
        rows.append({"model": model, "provider": provider, "batch": batch, "items_per_s": runs * batch / elapsed})
        print(f"  raw {model} {provider} batch={batch:4d}: {rows[-1]['items_per_s']:10.0f} items/s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--raw-seconds", type=float, default=0.5)
    parser.add_argument("--users", default="1,64,256")
    parser.add_argument(
        "--rows", default="1,32", help="rows per request, comma-separated: each is measured at each user count"
    )
    parser.add_argument("--tensorrt", action="store_true", help="also sweep the TensorRT EP (slow engine builds)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    keep_freed_memory()  # for the raw sweep in this process, as batchgate's processes do
    device = device_name()
    print(f"device: {device}", flush=True)
    from gateway.demo import mlp_model

    work = Path(tempfile.mkdtemp(prefix="batchgate-gpu-"))
    raw: list[dict[str, Any]] = []
    rows: list[tuple[int, Row]] = []  # (rows per request, its measurement)
    for model, widths in MODELS.items():
        repo = work / model
        (repo / model / "1").mkdir(parents=True)
        (repo / model / "1" / "model.onnx").write_bytes(mlp_model(widths))
        # A throughput test, as in benchmarks/core.py: nothing is shed for missing the default 100 ms
        # SLO (with 256 users of 32 rows, 8,192 rows are queued: more than 100 ms of work here).
        config = {
            "batching": {"max_batch_size": 128, "max_queue_delay_us": 2000},
            "timeout_ms": 60_000,
            "slo": {"p99_ms": 60_000},
        }
        (repo / model / "config.yaml").write_text(yaml.safe_dump(config))
        path = repo / model / "1" / "model.onnx"
        raw += raw_cuda(path, model, widths[0], args.raw_seconds, "CUDAExecutionProvider")
        if args.tensorrt:
            raw += raw_cuda(path, model, widths[0], args.raw_seconds, "TensorrtExecutionProvider")
        pool = {"replicas": 1, "providers": ["cuda"], "inflight_per_replica": 2}
        gateway = _gateway(repo, work / f"gateway-{model}.log", {"pools": {"default": pool}})
        try:
            for per_request in (int(r) for r in args.rows.split(",")):
                data = np.random.default_rng(7).uniform(0, 1, (per_request, widths[0])).astype(np.float32)
                (work / f"{model}-{per_request}").mkdir()
                payload = request_bodies(model, {"input": data}, work / f"{model}-{per_request}")["binary"]
                for users in (int(u) for u in args.users.split(",")):
                    scenario = (model, "binary", payload, users, args.duration, args.warmup)
                    row = measure("batchgate", gateway.process, gateway.port, *scenario)
                    # the load generator counts requests; each carries per_request rows
                    rows.append((per_request, dataclasses.replace(row, items_per_s=row.items_per_s * per_request)))
                    if per_request > 1:
                        print(
                            f"    = {rows[-1][1].items_per_s:.0f} rows/s at {per_request} rows per request", flush=True
                        )
        finally:
            gateway.stop()
    lines = [
        "# GPU check: batchgate vs raw ONNX Runtime (CUDA EP, IO binding)",
        "",
        f"Command: `bash benchmarks/gpu_check.sh {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
        f"Device: **{device}**; {time.strftime('%Y-%m-%d')}",
        "",
        "| model | provider | " + " | ".join(f"b={b}" for b in BATCHES) + " |",
        "|---|---|" + "---:|" * len(BATCHES),
    ]
    for model in MODELS:
        for provider in sorted({r["provider"] for r in raw if r["model"] == model}):
            ours = [r for r in raw if (r["model"], r["provider"]) == (model, provider)]
            cells = {r["batch"]: f"{r['items_per_s']:.0f}" for r in ours}
            lines.append(f"| {model} | {provider} | " + " | ".join(cells.get(b, "-") for b in BATCHES) + " |")
    lines += ["", "| model | rows/request | users | items/s | x raw best | p50 ms | p99 ms | errors |"]
    lines += ["|---|---:|---:|---:|---:|---:|---:|---:|"]
    for per_request, r in rows:
        best = max(x["items_per_s"] for x in raw if x["model"] == r.model)
        lines.append(
            f"| {r.model} | {per_request} | {r.users} | {r.items_per_s:.0f} | {r.items_per_s / best:.2f} | "
            f"{r.p50_ms or 0:.2f} | {r.p99_ms or 0:.2f} | {r.errors} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
