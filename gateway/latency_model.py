"""Online fit of batch compute time: time ≈ a·rows + b, exponentially weighted.

The batcher asks it how long a batch of ``rows`` will take so it can close a batch
early enough for the earliest deadline in it. Weighted least squares with a forgetting
factor keeps the fit current when the machine's load changes.
"""

from __future__ import annotations


class LatencyModel:
    """Exponentially weighted linear regression of seconds on rows."""

    def __init__(self, decay: float = 0.98, prior_per_row_s: float = 0.0, prior_fixed_s: float = 0.0) -> None:
        self.decay = decay
        self._w = 0.0
        self._sx = 0.0
        self._sy = 0.0
        self._sxx = 0.0
        self._sxy = 0.0
        self.per_row_s = prior_per_row_s
        self.fixed_s = prior_fixed_s
        self.samples = 0

    def observe(self, rows: int, seconds: float) -> None:
        d = self.decay
        self._w = self._w * d + 1.0
        self._sx = self._sx * d + rows
        self._sy = self._sy * d + seconds
        self._sxx = self._sxx * d + rows * rows
        self._sxy = self._sxy * d + rows * seconds
        self.samples += 1
        mean_x = self._sx / self._w
        mean_y = self._sy / self._w
        var_x = self._sxx / self._w - mean_x * mean_x
        if var_x > 1e-9:
            slope = (self._sxy / self._w - mean_x * mean_y) / var_x
            self.per_row_s = max(slope, 0.0)
            self.fixed_s = max(mean_y - self.per_row_s * mean_x, 0.0)
        else:
            # Only one batch size seen so far: attribute the time per row.
            self.per_row_s = mean_y / max(mean_x, 1.0)
            self.fixed_s = 0.0

    def predict(self, rows: int) -> float:
        return self.fixed_s + self.per_row_s * rows
