"""Live-data health (DESIGN §9): input drift against a reference profile, and shadow agreement.

A profile (``models/<name>/profile.json``, written by ``batchgate models profile`` or the demo
builder) holds, per input feature, quantile bin edges and the reference share of each bin.
The router offers a sampled fraction of requests; a background task bins them per feature
every tick, keeps a sliding window of counts, and computes the population stability index
PSI = Σ (actual - expected) · ln(actual / expected) per feature and their mean. Nothing of
this runs on the request path beyond a random draw and a deque append. The tick runs on the
event loop, so its cost does not grow with the window: the window's totals are kept up to
date as ticks enter and leave it, and a tick that changes neither leaves the scores alone.
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.dtypes import is_float

PROFILE_FILE = "profile.json"
EPSILON = 1e-4


def build_profile(data: npt.NDArray[Any], input_name: str, bins: int = 10) -> dict[str, Any]:
    """Quantile bins per feature (columns after flattening the non-batch dimensions)."""
    rows = np.asarray(data, dtype=np.float64).reshape(len(data), -1)
    features = []
    for column in rows.T:
        edges = np.unique(np.quantile(column, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, column, side="right"), minlength=len(edges) + 1)
        features.append({"edges": edges.tolist(), "reference": (counts / counts.sum()).tolist()})
    return {"input": input_name, "rows": len(rows), "features": features}


def psi_each(actual: npt.NDArray[Any], expected: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """PSI along the last axis: one value per feature for (features x bins) shares."""
    a = np.clip(actual, EPSILON, None)
    e = np.clip(expected, EPSILON, None)
    result: npt.NDArray[np.float64] = np.sum((a - e) * np.log(a / e), axis=-1)
    return result


def psi(actual: npt.NDArray[Any], expected: npt.NDArray[Any]) -> float:
    """PSI of one feature's bin shares against its reference shares."""
    return float(psi_each(actual, expected))


class DriftMonitor:
    """Sliding-window PSI of one model version's live inputs against its profile.

    Counts are kept per feature and bin in one array (features x the widest feature's
    bins; a feature with fewer bins has zeros in the rest, which add nothing to its PSI).
    """

    def __init__(self, profile: dict[str, Any], sample_ratio: float, window_ticks: int, max_pending: int = 512) -> None:
        self.input = profile["input"]
        features = profile["features"]
        self.edges = [np.asarray(f["edges"], dtype=np.float64) for f in features]
        self.bins = max((len(edges) + 1 for edges in self.edges), default=1)
        reference = np.zeros((len(features), self.bins))
        for index, feature in enumerate(features):
            shares = np.asarray(feature["reference"], dtype=np.float64)
            reference[index, : len(shares)] = shares
        self.reference = reference
        self.sample_ratio = sample_ratio
        self.pending: deque[npt.NDArray[Any]] = deque(maxlen=max_pending)
        # One entry per tick: that tick's counts, or None when it sampled nothing.
        self.window: deque[npt.NDArray[np.int64] | None] = deque(maxlen=window_ticks)
        self.totals = np.zeros((len(features), self.bins), dtype=np.int64)
        self.scores: list[float] = []
        self.rows = 0

    @classmethod
    def load(cls, folder: Path, sample_ratio: float, window_ticks: int) -> DriftMonitor | None:
        path = folder / PROFILE_FILE
        if not path.is_file():
            return None
        return cls(json.loads(path.read_text()), sample_ratio, window_ticks)

    def offer(self, feeds: dict[str, npt.NDArray[Any]]) -> None:
        """Called per request: keep a sampled reference to the input (no copy, no work)."""
        if random.random() < self.sample_ratio:
            array = feeds.get(self.input)
            if array is not None:
                self.pending.append(array)

    def tick(self) -> None:
        """Bin what was sampled since the last tick, slide the window, and recompute the PSI
        if anything entered or left it."""
        counts = self._bin_pending() if self.pending else None
        full = self.window.maxlen is not None and len(self.window) == self.window.maxlen
        leaving = self.window[0] if full and self.window else None
        self.window.append(counts)
        if counts is None and leaving is None:
            return  # the window holds the same rows: the scores stand
        if leaving is not None:
            self.totals -= leaving
        if counts is not None:
            self.totals += counts
        self.rows = int(self.totals[0].sum()) if len(self.totals) else 0
        if self.rows:
            self.scores = psi_each(self.totals / self.rows, self.reference).tolist()
        else:
            self.scores = []

    def _bin_pending(self) -> npt.NDArray[np.int64] | None:
        """The pending samples' counts per feature and bin (None if their width is not the
        profile's), and the pending list emptied."""
        batch = np.concatenate([a.reshape(len(a), -1) for a in self.pending]).astype(np.float64)
        self.pending.clear()
        features = len(self.edges)
        if batch.shape[1] != features or not len(batch):
            return None
        index = np.empty(batch.shape, dtype=np.int64)
        for feature, edges in enumerate(self.edges):
            index[:, feature] = np.searchsorted(edges, batch[:, feature], side="right")
        index += np.arange(features, dtype=np.int64) * self.bins  # one bincount for every feature
        counts: npt.NDArray[np.int64] = np.bincount(index.ravel(), minlength=features * self.bins).reshape(
            features, self.bins
        )
        return counts

    def summary(self, top: int = 5) -> dict[str, Any]:
        if not self.scores:
            return {"rows": 0, "psi_overall": None, "top_features": []}
        order = np.argsort(self.scores)[::-1][:top]
        return {
            "rows": self.rows,
            "psi_overall": float(np.mean(self.scores)),
            "top_features": [{"feature": f"{self.input}[{i}]", "psi": self.scores[i]} for i in order],
        }


def class_labels(outputs: dict[str, npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """Predicted classes: a ``label`` output if the model has one, else the argmax of the first output."""
    if "label" in outputs:
        return np.asarray(outputs["label"]).reshape(-1)
    first = np.asarray(next(iter(outputs.values())))
    labels: npt.NDArray[Any] = first.reshape(len(first), -1).argmax(axis=1)
    return labels


class ShadowTracker:
    """Agreement of a model's predicted classes with its shadow's, over the last comparisons."""

    def __init__(self, window: int = 5000) -> None:
        self.results: deque[bool] = deque(maxlen=window)

    def compare(self, primary: dict[str, npt.NDArray[Any]], shadow: dict[str, npt.NDArray[Any]]) -> None:
        ours, theirs = class_labels(primary), class_labels(shadow)
        if ours.shape == theirs.shape:
            self.results.extend((ours == theirs).tolist())

    def ratio(self) -> float | None:
        return sum(self.results) / len(self.results) if self.results else None


class OutputMonitor:
    """The distribution of predicted classes (or the mean of the first output) over recent rows.

    The batcher hands it each finished batch once, after the batch's answers are out: one
    random draw and at most one numpy reduction per batch, nothing per request. A sampled
    batch contributes every row (``sample_ratio`` is the share of batches, so of rows).

    The window's class counts and sum of means are kept up to date as rows enter and leave
    it, so :meth:`summary`, which the health tick calls for every model on the event loop,
    costs the number of classes, not the window: 0.004 ms with a full window of 5,000 labels,
    where recounting it took 0.25 ms per model (13 ms a tick at 50 models). Keeping count
    costs a sampled batch of 16 rows 5.2 us instead of 1.3.
    """

    MAX_CLASSES = 32

    def __init__(self, sample_ratio: float, window: int = 5000) -> None:
        self.sample_ratio = sample_ratio
        self.window = window
        self.labels: deque[int] = deque()
        self.means: deque[float] = deque()
        self._counts: dict[int, int] = {}  # rows of each class in the window
        self._sum = 0.0  # of ``means``; summed afresh once a window's worth has left it
        self._left = 0

    def observe_batch(self, outputs: dict[str, npt.NDArray[Any]], rows: int) -> None:
        if random.random() >= self.sample_ratio or not outputs:
            return
        label = outputs.get("label")
        if label is not None and label.dtype.kind in "iu":
            self._add_labels(label.reshape(-1).tolist())
            return
        first = next(iter(outputs.values()))
        if not is_float(first.dtype) or not first.size:
            return
        if first.ndim and first.shape[0] == rows:
            self._add_means(first.reshape(rows, -1).mean(axis=1).tolist())
        else:  # not batched along the rows: one value for the batch
            self._add_means([float(first.mean())])

    def _add_labels(self, new: list[int]) -> None:
        new = new[-self.window :]
        leaving = len(self.labels) + len(new) - self.window
        counts = self._counts
        popleft = self.labels.popleft
        for _ in range(leaving):
            label = popleft()
            left = counts[label] - 1
            if left:
                counts[label] = left
            else:
                del counts[label]  # a class no longer in the window does not count
        self.labels.extend(new)
        for label in new:
            counts[label] = counts.get(label, 0) + 1

    def _add_means(self, new: list[float]) -> None:
        new = new[-self.window :]
        leaving = len(self.means) + len(new) - self.window
        if leaving > 0:
            popleft = self.means.popleft
            self._sum -= sum([popleft() for _ in range(leaving)])
            self._left += leaving
        self.means.extend(new)
        self._sum += sum(new)
        if self._left >= self.window:  # keep rounding from piling up over a long run
            self._sum = math.fsum(self.means)
            self._left = 0

    def summary(self) -> dict[str, Any]:
        if self.labels and len(self._counts) <= self.MAX_CLASSES:
            total = len(self.labels)
            return {
                "answers": total,
                "class_ratio": {str(v): c / total for v, c in sorted(self._counts.items())},
            }
        if self.means:
            return {"answers": len(self.means), "output_mean": self._sum / len(self.means)}
        return {"answers": 0}
