"""The raw limit: in-process ONNX Runtime on the CPU, no server, no batching across requests.

Every ratio in the benchmark report divides by what these functions measure in the same
run: items/s at each batch size (the sweep), batch-1 latency, and target 2's interleaved
rounds of raw runs and gateway runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import Row
from benchmarks.report import BATCHES

MIN_RAW_RUNS = 5  # per batch size and thread count in the raw sweep, however long they take

Feeds = Callable[[int], dict[str, Any]]


def dense(width: int) -> Feeds:
    """Feeds for the dense benchmark models: ``batch`` rows of ``width`` float32 values."""
    rng = np.random.default_rng(0)
    return lambda batch: {"input": rng.standard_normal((batch, width)).astype(np.float32)}


def raw_sweep(model_path: Path, model: str, make_feed: Feeds, seconds: float) -> list[dict[str, Any]]:
    """items/s of in-process ``session.run`` at each batch size, with 1 and 2 intra-op threads:
    the batch over the median run, of runs for ``seconds`` and at least :data:`MIN_RAW_RUNS`."""
    rows = []
    for threads in (1, 2):
        session = cpu_session(model_path, threads)
        for batch in BATCHES:
            median, runs = _median_run(session, make_feed(batch), seconds)
            rows.append(
                {
                    "model": model,
                    "threads": threads,
                    "batch": batch,
                    "items_per_s": batch / median,
                    "ms_per_batch": median * 1000,
                    "runs": runs,
                }
            )
            print(
                f"  raw {model} threads={threads} batch={batch:4d}: {rows[-1]['items_per_s']:9.1f} items/s", flush=True
            )
    return rows


def _median_run(session: Any, feed: dict[str, Any], seconds: float) -> tuple[float, int]:
    """Seconds of the median ``session.run`` over ``seconds`` (at least MIN_RAW_RUNS runs), and the count.

    The median, not the mean: at batch 128 of mlp_xl (~0.2 s a run) one run slowed by the
    machine moved the mean enough to rank batch 128 below 64."""
    for _ in range(2):
        session.run(None, feed)
    times: list[float] = []
    begin = time.perf_counter()
    while time.perf_counter() - begin < seconds or len(times) < MIN_RAW_RUNS:
        start_run = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start_run)
    return float(np.median(times)), len(times)


def xl_rounds(
    model_path: Path, make_feed: Feeds, threads: int, rounds: int, seconds: float, measure_gateway: Callable[[], Row]
) -> list[dict[str, Any]]:
    """Target 2 in ``rounds`` interleaved rounds: raw ONNX Runtime at batch 64 and 128 with
    ``threads``, then the gateway at 64 users, one after another.

    The raw sweep measures each batch size once, over a second or two, minutes before the
    gateway runs; a slow spell of the machine during one cell moved target 2 both ways
    (raw batch 16-64 of mlp_xl at 390-399 items/s in one run, 580-616 in the runs around it).
    """
    session = cpu_session(model_path, threads)
    out = []
    for number in range(1, rounds + 1):
        raw = {}
        for batch in (64, 128):
            median, _ = _median_run(session, make_feed(batch), seconds)
            raw[str(batch)] = batch / median
        print(
            f"  round {number}/{rounds}: raw mlp_xl {threads} threads batch 64 {raw['64']:.1f}, "
            f"batch 128 {raw['128']:.1f} items/s",
            flush=True,
        )
        row = measure_gateway()
        out.append({"round": number, "threads": threads, "raw": raw, "items_per_s": row.items_per_s})
    return out


def raw_latency_ms(
    model_path: Path, make_feed: Feeds, runs: int = 2000, threads: int = 1, idle_s: float = 0.0
) -> float:
    """p50 of batch-1 session.run, by default on one thread (what one worker replica does),
    back to back, or with ``idle_s`` of sleep before each run (as a server's runs come)."""
    session = cpu_session(model_path, threads)
    feed = make_feed(1)
    samples = []
    for _ in range(runs):
        if idle_s:
            time.sleep(idle_s)
        begin = time.perf_counter()
        session.run(None, feed)
        samples.append(time.perf_counter() - begin)
    return float(np.percentile(samples, 50) * 1000)


def cpu_session(model_path: Path, threads: int) -> Any:
    """An ONNX Runtime session on the CPU with ``threads`` intra-op threads (defaults otherwise)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
