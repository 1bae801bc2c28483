"""``OutputMonitor`` keeps its window's class counts and sum of means as rows come and go;
its summary must equal a full recount of the last ``window`` rows, batch after batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.health import OutputMonitor

WINDOW = 50


def recount(labels: list[int], means: list[float]) -> dict[str, Any]:
    """The summary from scratch, over the last WINDOW rows of each kind."""
    labels, means = labels[-WINDOW:], means[-WINDOW:]
    if labels:
        values, counts = np.unique(labels, return_counts=True)
        if len(values) <= OutputMonitor.MAX_CLASSES:
            ratios = {str(v): c / len(labels) for v, c in zip(values, counts, strict=True)}
            return {"answers": len(labels), "class_ratio": ratios}
    if means:
        return {"answers": len(means), "output_mean": float(np.mean(means))}
    return {"answers": 0}


def test_class_ratios_follow_the_window_through_evictions() -> None:
    rng = np.random.default_rng(5)
    monitor = OutputMonitor(sample_ratio=1.0, window=WINDOW)
    seen: list[int] = []
    for step in range(400):
        rows = int(rng.choice([1, 3, 17, 64, 120]))  # some batches are larger than the window
        classes = 3 if step < 200 else 40 if step < 260 else 5  # classes leave, and too many come
        labels = rng.integers(step // 100 * 7, step // 100 * 7 + classes, rows)
        monitor.observe_batch({"label": labels.astype(np.int64)}, rows)
        seen.extend(labels.tolist())
        got, want = monitor.summary(), recount(seen, [])
        assert got.keys() == want.keys() and got["answers"] == want["answers"]
        if "class_ratio" in want:
            assert got["class_ratio"] == pytest.approx(want["class_ratio"])
        assert len(monitor._counts) == len(set(seen[-WINDOW:]))  # classes that left are gone


def test_the_mean_follows_the_window_and_does_not_drift() -> None:
    """Exact to the rounding of the values lately in the window: what large values left in
    the running sum is gone once a window's worth of rows has passed after them."""
    rng = np.random.default_rng(6)
    monitor = OutputMonitor(sample_ratio=1.0, window=WINDOW)
    seen: list[float] = []
    for step in range(3000):
        rows = int(rng.choice([1, 4, 9, 70]))
        scale = 1e8 if step < 1000 else 1e-3  # large values first, then small ones for long
        if step % 5 == 0:  # an output not batched along the rows: one mean for the batch
            scores = rng.normal(0, scale, (3,)).astype(np.float32)
            seen.append(float(scores.mean()))
        else:
            scores = rng.normal(0, scale, (rows, 2)).astype(np.float32)
            seen.extend(scores.mean(axis=1).tolist())
        monitor.observe_batch({"scores": scores}, rows)
        got, want = monitor.summary(), recount([], seen)
        assert got["answers"] == want["answers"]
        lately = max(abs(v) for v in seen[-(3 * WINDOW + 70) :])
        assert got["output_mean"] == pytest.approx(want["output_mean"], rel=1e-9, abs=1e-9 * lately)
