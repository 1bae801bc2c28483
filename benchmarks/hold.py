"""What the batcher's hold for the batch in flight (``batching.hold_for_inflight``) costs or saves.

Adaptive batching holds a new batch of a model while another of it computes, at most the
queue delay, rather than send it to a free slot beside it (see ``ModelBatcher.close_in``).
On 2 cores that was measured to help; this measures it wherever it runs, on ``mlp`` over
binary HTTP, with the pool given on the command line:

    python -m benchmarks.hold --replicas 4 --threads 2            # a CPU pool
    python -m benchmarks.hold --replicas 1 --providers cuda --inflight 2   # one GPU

First one capacity run (256 closed-loop users, a gateway holding) sets the open-loop rates
and warms the machine; it is reported, not compared. Then, ``--rounds`` times, a gateway
with the hold and one without it each run the same closed-loop and open-loop loads, one
after the other, so that drift in the machine's speed hits both alike. Writes
``hold.md`` and ``hold.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.core import _gateway
from benchmarks.measure import Row, bodies, measure
from benchmarks.targets import middle
from gateway.demo import mlp_model

RESULTS = Path(__file__).parent / "results"
VARIANTS = {"hold": True, "no-hold": False}


def load_label(row: Row) -> str:
    return f"{row.rate:.0f}/s open" if row.rate else f"{row.users} users"


def summary(rows: list[Row]) -> list[str]:
    """Per load, the median over rounds of each variant's p50, p99 and server CPU."""
    lines = ["| load | variant | runs | items/s | p50 ms | p99 ms | errors | rows/batch | server CPU % |"]
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    loads = list(dict.fromkeys(load_label(r) for r in rows if r.system in VARIANTS))
    for load in loads:
        for variant in VARIANTS:
            runs = [r for r in rows if r.system == variant and load_label(r) == load]
            if not runs:
                continue

            def med(values: list[float]) -> float:
                return middle(sorted(values)) or 0.0

            lines.append(
                f"| {load} | {variant} | {len(runs)} | {med([r.items_per_s for r in runs]):.0f} | "
                f"{med([r.p50_ms or 0.0 for r in runs]):.2f} | {med([r.p99_ms or 0.0 for r in runs]):.2f} | "
                f"{sum(r.errors for r in runs)} | {med([r.rows_per_batch or 0.0 for r in runs]):.1f} | "
                f"{med([r.server_cpu_pct for r in runs]):.0f} |"
            )
    return lines


def runs_table(rows: list[Row], rounds: list[int]) -> list[str]:
    lines = ["| round | variant | load | items/s | p50 ms | p99 ms | p99.9 ms | errors | rows/batch | server CPU % |"]
    lines.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for number, r in zip(rounds, rows, strict=True):
        lines.append(
            f"| {number} | {r.system} | {load_label(r)} | {r.items_per_s:.0f} | {r.p50_ms or 0:.2f} | "
            f"{r.p99_ms or 0:.2f} | {r.p999_ms or 0:.2f} | {r.errors_text()} | {r.rows_per_batch or 0:.1f} | "
            f"{r.server_cpu_pct:.0f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hold", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per worker; 0 = automatic")
    parser.add_argument("--providers", default="cpu", help="comma-separated, as pools.<pool>.providers")
    parser.add_argument("--inflight", type=int, default=1, help="pools.<pool>.inflight_per_replica")
    parser.add_argument("--users", default="64,256", help="closed-loop user counts")
    parser.add_argument("--shares", default="0.3,0.7", help="open-loop rates as shares of the capacity run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="hold", help="file stem of the results: NAME.md and NAME.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="batchgate-hold-"))
    pool = {
        "replicas": args.replicas,
        "threads": args.threads,
        "providers": args.providers.split(","),
        "inflight_per_replica": args.inflight,
    }
    body = bodies(512, work, "mlp")["binary"]
    repositories = {}
    for variant, hold in VARIANTS.items():
        repo = work / variant
        (repo / "mlp" / "1").mkdir(parents=True)
        (repo / "mlp" / "1" / "model.onnx").write_bytes(mlp_model())
        batching = {"max_batch_size": 64, "max_queue_delay_us": 2000, "hold_for_inflight": hold}
        # the demo model's batching; an SLO nothing reaches, so no request is shed as saturated
        config = {"batching": batching, "timeout_ms": 2000, "slo": {"p99_ms": 60_000}}
        (repo / "mlp" / "config.yaml").write_text(yaml.safe_dump(config))
        repositories[variant] = repo

    def scenario(variant: str, users: int = 0, rate: float = 0.0) -> Row:
        return measure(
            variant, gateway.process, gateway.port, "mlp", "binary", body, users, args.duration, args.warmup,
            rate=rate, stats_port=gateway.port,
        )  # fmt: skip

    begin = time.monotonic()
    cpus = len(os.sched_getaffinity(0))
    print(f"hold: {cpus} CPUs, pool {pool}", flush=True)
    gateway = _gateway(repositories["hold"], work / "capacity.log", {"pools": {"default": pool}})
    try:
        capacity = scenario("capacity", users=256)
    finally:
        gateway.stop()
    rates = [round(capacity.items_per_s * float(share)) for share in args.shares.split(",")]
    print(f"hold: capacity {capacity.items_per_s:.0f}/s, open-loop rates {rates}", flush=True)
    rows: list[Row] = []
    rounds: list[int] = []
    for number in range(1, args.rounds + 1):
        for variant in VARIANTS:
            gateway = _gateway(repositories[variant], work / f"{variant}-{number}.log", {"pools": {"default": pool}})
            try:
                measured = [scenario(variant, users=int(u)) for u in args.users.split(",")]
                measured += [scenario(variant, rate=rate) for rate in rates]
            finally:
                gateway.stop()
            rows += measured
            rounds += [number] * len(measured)
        print(f"hold: round {number}/{args.rounds} done after {time.monotonic() - begin:.0f} s", flush=True)
    command = "python -m benchmarks.hold " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# The hold for the batch in flight: on and off",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {cpus} CPUs; pool {json.dumps(pool)}; {time.strftime('%Y-%m-%d')}  ",
        f"Model `mlp`, binary HTTP, {args.duration:g} s measured after {args.warmup:g} s per load; "
        f"capacity run (256 users, holding): {capacity.items_per_s:.0f} items/s, p99 {capacity.p99_ms or 0:.1f} ms.",
        "",
        "## Medians over rounds (of an even count, the higher one)",
        "",
        *summary(rows),
        "",
        "## Every run",
        "",
        *runs_table(rows, rounds),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / args.name
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    records: list[dict[str, Any]] = [{"round": n, **dataclasses.asdict(r)} for n, r in zip(rounds, rows, strict=True)]
    stem.with_suffix(".json").write_text(json.dumps({"pool": pool, "capacity": capacity.items_per_s, "runs": records}))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
