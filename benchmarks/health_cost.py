"""What live-data health costs: ``digits_mlp`` at 64 users, with and without its bookkeeping.

``python -m benchmarks.health_cost`` runs the same gateway twice on the same machine: once
with input-drift monitoring off and no shadow, once with the drift profile sampling 10% of
requests and shadow traffic mirroring 5% to ``digits_logreg``. Writes
``benchmarks/results/health_cost.md``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.core import RESULTS, _gateway
from benchmarks.measure import Row, measure
from benchmarks.measure import bodies as request_bodies

SETTINGS = {
    "off": {"drift": {"enabled": False}},
    "on": {"drift": {"enabled": True, "sample_ratio": 0.1}, "shadow": {"model": "digits_logreg", "ratio": 0.01}},
    "shadow 5%": {"drift": {"enabled": True, "sample_ratio": 0.1}, "shadow": {"model": "digits_logreg", "ratio": 0.05}},
}


def run(repository: Path, work: Path, protocol: str, duration: float, warmup: float) -> dict[str, Row]:
    bodies = request_bodies(64, work, "digits_mlp")
    rows: dict[str, Row] = {}
    for label, extra in SETTINGS.items():
        config_path = repository / "digits_mlp" / "config.yaml"
        config = yaml.safe_load(config_path.read_text())
        config.pop("shadow", None)
        config.update(extra)
        config_path.write_text(yaml.safe_dump(config))
        gateway = _gateway(repository, work / f"gateway-{label}.log")
        try:
            rows[label] = measure(
                f"health {label}", gateway.process, gateway.port, "digits_mlp", protocol, bodies[protocol], 64,
                duration, warmup,
            )  # fmt: skip
        finally:
            gateway.stop()
    return rows


def tick_cost(features: int, window_ticks: int = 150, rows_per_tick: int = 20, ticks: int = 50) -> tuple[float, float]:
    """The drift monitor's tick on the event loop, in ms (medians): with a full window
    (5 minutes of 2 s ticks, the default) and nothing new, and with ``rows_per_tick`` new
    samples, for an input of ``features`` columns."""
    import time

    import numpy as np

    from gateway.health import DriftMonitor, build_profile

    rng = np.random.default_rng(0)
    monitor = DriftMonitor(build_profile(rng.normal(size=(2_000, features)), "input"), 1.0, window_ticks)
    sample = rng.normal(size=(rows_per_tick, features)).astype(np.float32)
    for _ in range(window_ticks):
        monitor.offer({"input": sample})  # sample_ratio 1.0: always kept
        monitor.tick()
    idle, busy = [], []
    for _ in range(ticks):
        begin = time.perf_counter()
        monitor.tick()
        idle.append(time.perf_counter() - begin)
        monitor.offer({"input": sample})
        begin = time.perf_counter()
        monitor.tick()
        busy.append(time.perf_counter() - begin)
    return float(np.median(idle) * 1000), float(np.median(busy) * 1000)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from gateway.demo import build_demo

    work = Path(tempfile.mkdtemp(prefix="batchgate-health-"))
    repository = work / "models"
    build_demo(repository, progress=lambda _line: None)
    shutil.rmtree(repository / "mlp")
    # Interleaved repeats, medians: single runs differ by ±10% on this kind of machine.
    runs = [run(repository, work, "json", args.duration, args.warmup) for _ in range(args.repeats)]

    def median(label: str) -> Row:
        ordered = sorted((r[label] for r in runs), key=lambda row: row.items_per_s)
        return ordered[len(ordered) // 2]

    off, on, heavy = median("off"), median("on"), median("shadow 5%")
    ticks = {width: tick_cost(width) for width in (64, 768)}
    cost = 1 - on.items_per_s / off.items_per_s
    heavy_cost = 1 - heavy.items_per_s / off.items_per_s
    each = ", ".join(f"{1 - r['on'].items_per_s / r['off'].items_per_s:+.1%}" for r in runs)
    text = "\n".join(
        [
            "# Live-data health: throughput with and without drift and shadow bookkeeping",
            "",
            f"Command: `{' '.join(['python -m benchmarks.health_cost', *(sys.argv[1:] if argv is None else argv)])}`  ",
            f"`digits_mlp`, HTTP JSON, 64 closed-loop users, {args.duration:g} s after {args.warmup:g} s warm-up, "
            "2 local workers; `on` = the defaults: drift sampling 10% of inputs + shadow mirroring 1% to "
            "`digits_logreg`; `shadow 5%` mirrors five times as much (each mirrored request is a second request's "
            "work).",
            "",
            f"Medians of {args.repeats} interleaved runs each.",
            "",
            "| bookkeeping | items/s | p50 ms | p99 ms | server CPU % |",
            "|---|---:|---:|---:|---:|",
            f"| off | {off.items_per_s:.0f} | {off.p50_ms:.2f} | {off.p99_ms:.2f} | {off.server_cpu_pct:.0f} |",
            f"| on | {on.items_per_s:.0f} | {on.p50_ms:.2f} | {on.p99_ms:.2f} | {on.server_cpu_pct:.0f} |",
            f"| shadow 5% | {heavy.items_per_s:.0f} | {heavy.p50_ms:.2f} | {heavy.p99_ms:.2f} | "
            f"{heavy.server_cpu_pct:.0f} |",
            "",
            f"Throughput cost of the defaults (median against median): {cost:.1%}; per interleaved pair: {each}. "
            f"Target: under 5%. With 5% shadow traffic: {heavy_cost:.1%}.",
            "",
            "The drift monitor's tick, every 2 s on the event loop (requests wait while it runs), with a "
            "full window of 150 ticks, medians in ms:",
            "",
            "| input features | tick, nothing new | tick, 20 new rows |",
            "|---:|---:|---:|",
            *(f"| {width} | {idle:.2f} | {busy:.2f} |" for width, (idle, busy) in ticks.items()),
            "",
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "health_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
