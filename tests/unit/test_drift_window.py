"""The drift monitor's sliding window: running totals give the PSI a full recount would.

The oracle below recounts the whole window every tick, per feature, as the monitor did
before it kept totals; the monitor must agree with it tick by tick.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.health import DriftMonitor, build_profile, psi


def _oracle(profile: dict[str, Any], ticks: list[npt.NDArray[Any] | None], window: int) -> tuple[int, list[float]]:
    """Rows and per-feature PSI over the last ``window`` ticks, counted from scratch."""
    kept = [batch for batch in ticks[-window:] if batch is not None]
    if not kept:
        return 0, []
    rows = np.concatenate(kept).astype(np.float64)
    scores = []
    for column, feature in zip(rows.T, profile["features"], strict=True):
        edges = np.asarray(feature["edges"])
        counts = np.bincount(np.searchsorted(edges, column, side="right"), minlength=len(edges) + 1)
        scores.append(psi(counts / counts.sum(), np.asarray(feature["reference"])))
    return len(rows), scores


def test_running_totals_match_a_full_recount_as_ticks_enter_and_leave_the_window() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(500, 6))
    reference[:, 2] = 1.0  # a constant feature: one bin edge, so fewer bins than the others
    reference[:, 4] = rng.integers(0, 3, size=500)  # a few distinct values: few edges
    profile = build_profile(reference, "input")
    assert len({len(f["edges"]) for f in profile["features"]}) > 1
    window = 4
    monitor = DriftMonitor(profile, sample_ratio=1.0, window_ticks=window)
    ticks: list[npt.NDArray[Any] | None] = []
    plan = [5, 0, 12, 3, 0, 0, 7, 1, 0, 0, 0, 0, 9, 2]  # rows sampled before each tick
    for step, count in enumerate(plan):
        batch = rng.normal(loc=0.2 * step, size=(count, 6)).astype(np.float32) if count else None
        if batch is not None:
            for row in batch:
                monitor.offer({"input": row[None, :]})
        monitor.tick()
        ticks.append(batch)
        rows, scores = _oracle(profile, ticks, window)
        assert monitor.rows == rows, f"tick {step}"
        assert monitor.scores == pytest.approx(scores, abs=1e-12), f"tick {step}"
    # Four empty ticks in a row emptied the window at one point: no rows, no scores, no summary.
    assert _oracle(profile, ticks[:12], window) == (0, [])


def test_samples_of_another_width_are_dropped_and_count_as_an_empty_tick() -> None:
    rng = np.random.default_rng(5)
    profile = build_profile(rng.normal(size=(200, 3)), "input")
    monitor = DriftMonitor(profile, sample_ratio=1.0, window_ticks=2)
    monitor.offer({"input": rng.normal(size=(4, 3))})
    monitor.tick()
    assert monitor.rows == 4
    monitor.offer({"input": rng.normal(size=(4, 5))})  # not the profile's three features
    monitor.tick()
    assert monitor.rows == 4 and not monitor.pending
    monitor.tick()  # the first tick leaves the window
    assert monitor.rows == 0 and monitor.scores == []
    assert monitor.summary() == {"rows": 0, "psi_overall": None, "top_features": []}
