"""What the locustfiles share: command-line options, the load shapes, and request data.

The shape is picked with ``--shape`` (steady, step, ramp, spike) and scaled by
``--peak-users`` and ``--run-seconds``; every shape ends by itself, so a run is bounded
in time even without locust's ``--run-time``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from locust import LoadTestShape, events

SHAPES = ("steady", "step", "ramp", "spike")


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: Any) -> None:
    parser.add_argument("--model", default="digits_mlp", help="model to send requests to")
    parser.add_argument("--shape", choices=SHAPES, default="steady", help="load shape")
    parser.add_argument("--peak-users", type=int, default=16, help="most concurrent users")
    parser.add_argument("--run-seconds", type=float, default=30.0, help="length of the shape")
    parser.add_argument("--think-ms", type=float, default=50.0, help="mean think time between requests")
    parser.add_argument("--max-rows", type=int, default=4, help="rows per request are 1..max-rows")
    parser.add_argument("--grpc-host", default="127.0.0.1:8001", help="gRPC endpoint for the gRPC users")
    parser.add_argument(
        "--samples-out", default="", help="also write every successful response time in ms, unrounded, to this JSON"
    )


_samples: list[float] = []


def _record(response_time: float, exception: BaseException | None, context: Any, **_: Any) -> None:
    # locust keeps times under 100 ms rounded to whole milliseconds; a one-user run
    # near 1 ms needs the exact values to be compared with anything.
    if exception is None:
        _samples.append(response_time)


@events.init.add_listener  # type: ignore[untyped-decorator]
def _listen(environment: Any, **_: Any) -> None:
    if getattr(environment.parsed_options, "samples_out", ""):  # only runs that ask keep every time
        environment.events.request.add_listener(_record)


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _write_samples(environment: Any, **_: Any) -> None:
    path = getattr(environment.parsed_options, "samples_out", "")
    if path:
        Path(path).write_text(json.dumps(_samples))


def users_at(shape: str, elapsed: float, peak: int, length: float) -> int | None:
    """Target users ``elapsed`` seconds into a run of ``length``; None once it is over."""
    if elapsed >= length:
        return None
    fraction = elapsed / length
    if shape == "steady":
        return peak
    if shape == "step":  # four equal steps up to the peak
        return max(1, round(peak * (int(fraction * 4) + 1) / 4))
    if shape == "ramp":  # linear up over the first 80%, then hold
        return max(1, round(peak * min(fraction / 0.8, 1.0)))
    # spike: a tenth of the peak, the full peak in the middle fifth, back down
    return peak if 0.4 <= fraction < 0.6 else max(1, peak // 10)


class ConfiguredShape(LoadTestShape):
    """The shape chosen on the command line."""

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        options: Any = self.runner.environment.parsed_options
        elapsed: float = self.get_run_time()  # type: ignore[no-untyped-call]
        users = users_at(options.shape, elapsed, options.peak_users, options.run_seconds)
        if users is None:
            return None
        return users, max(float(options.peak_users), 1.0)


def think_time(user: Any) -> float:
    """Exponential think time around ``--think-ms`` (0 = back to back)."""
    mean = user.environment.parsed_options.think_ms / 1000
    return random.expovariate(1 / mean) if mean > 0 else 0.0


def digits_batch(max_rows: int) -> np.ndarray:
    """1..max_rows rows of digit-like pixels (0..16), the size real clients send."""
    rows = random.randint(1, max(max_rows, 1))
    return np.random.default_rng().integers(0, 17, size=(rows, 64)).astype(np.float32)
