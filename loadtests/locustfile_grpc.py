"""v2 gRPC through tritonclient.grpc, on gevent."""

from __future__ import annotations

import time
from typing import Any

import grpc.experimental.gevent as grpc_gevent
from locust import User, task

from loadtests.common import ConfiguredShape, digits_batch, think_time

grpc_gevent.init_gevent()  # gRPC's completion queue must cooperate with locust's greenlets

import tritonclient.grpc as grpcclient  # noqa: E402  (after gevent is set up)

__all__ = ["ConfiguredShape", "GRPCUser"]


class GRPCUser(User):
    """tritonclient.grpc ModelInfer; each call reported to locust."""

    wait_time = think_time

    def on_start(self) -> None:
        self.triton = grpcclient.InferenceServerClient(self.environment.parsed_options.grpc_host)

    def on_stop(self) -> None:
        self.triton.close()

    @task
    def infer(self) -> None:
        options = self.environment.parsed_options
        batch = digits_batch(options.max_rows)
        tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        started = time.perf_counter()
        error: Exception | None = None
        try:
            labels: Any = self.triton.infer(options.model, [tensor], client_timeout=30).as_numpy("label")
            if labels is None or labels.shape[0] != batch.shape[0]:
                error = AssertionError("wrong number of rows in the answer")
        except Exception as exc:  # every failure is reported to locust, whatever its type
            error = exc
        self.environment.events.request.fire(
            request_type="gRPC",
            name="infer grpc",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=batch.nbytes,
            exception=error,
            context={},
        )
