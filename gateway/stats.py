"""Per-model-version statistics in Triton's shape (counts and cumulative nanoseconds).

Kept as plain integers on the hot path; :meth:`ModelStats.as_dict` renders the
``/v2/models/{m}/stats`` JSON and the gRPC front builds ``ModelStatistics`` from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Duration:
    """A count and the nanoseconds summed over it."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStats:
    """Time per phase for batches of one size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class ModelStats:
    """What one model version has done since the gateway started."""

    PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.phases = {phase: Duration() for phase in self.PHASES}
        self.batches: dict[int, BatchStats] = {}

    def request_done(self, ok: bool, duration_ns: int) -> None:
        self.phases["success" if ok else "fail"].add(duration_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def queued(self, wait_ns: int) -> None:
        self.phases["queue"].add(wait_ns)

    def batch_done(self, rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One executed batch; per-request phases count each request in it, as Triton does."""
        self.execution_count += 1
        self.inference_count += rows
        self.phases["compute_input"].add(input_ns * requests, requests)
        self.phases["compute_infer"].add(infer_ns * requests, requests)
        self.phases["compute_output"].add(output_ns * requests, requests)
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = BatchStats()
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)

    def as_dict(self) -> dict[str, Any]:
        """Triton's JSON for one entry of ``model_stats``."""
        inference = {phase: duration.as_dict() for phase, duration in self.phases.items()}
        inference["cache_hit"] = Duration().as_dict()
        inference["cache_miss"] = Duration().as_dict()
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": inference,
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": stats.compute_input.as_dict(),
                    "compute_infer": stats.compute_infer.as_dict(),
                    "compute_output": stats.compute_output.as_dict(),
                }
                for size, stats in sorted(self.batches.items())
            ],
        }
