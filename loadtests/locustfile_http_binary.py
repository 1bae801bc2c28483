"""v2 HTTP with binary tensors, through tritonclient.http (what most Triton users run)."""

from __future__ import annotations

import time
from typing import Any

import tritonclient.http as httpclient
from locust import User, task

from loadtests.common import ConfiguredShape, digits_batch, think_time

__all__ = ["BinaryUser", "ConfiguredShape"]


class BinaryUser(User):
    """tritonclient.http with the binary tensor extension; each call reported to locust."""

    wait_time = think_time

    def on_start(self) -> None:
        self.triton = httpclient.InferenceServerClient(
            str(self.host).split("://", 1)[-1], connection_timeout=30, network_timeout=30
        )

    def on_stop(self) -> None:
        self.triton.close()

    @task
    def infer(self) -> None:
        options = self.environment.parsed_options
        batch = digits_batch(options.max_rows)
        tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        started = time.perf_counter()
        error: Exception | None = None
        size = 0
        try:
            result = self.triton.infer(options.model, [tensor])
            labels: Any = result.as_numpy("label")
            size = batch.nbytes
            if labels is None or labels.shape[0] != batch.shape[0]:
                error = AssertionError("wrong number of rows in the answer")
        except Exception as exc:  # every failure is reported to locust, whatever its type
            error = exc
        self.environment.events.request.fire(
            request_type="HTTP",
            name="infer binary",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=size,
            exception=error,
            context={},
        )
