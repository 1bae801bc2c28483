"""v2 HTTP with JSON tensors, through locust's fast HTTP client (geventhttpclient).

Not locust's ``HttpUser``: python-requests spent about 3 ms of client time per call on the
slower 2-core VM (locust p50 4.0 ms against 0.9 ms from the benchmark's load generator at
one user), which the gate's agreement check rightly refused. tritonclient.http, which the
binary user runs, sits on geventhttpclient too.
"""

from __future__ import annotations

from locust import FastHttpUser, task

from loadtests.common import ConfiguredShape, digits_batch, think_time

__all__ = ["ConfiguredShape", "JSONUser"]


class JSONUser(FastHttpUser):
    """Sends JSON inference requests and checks the answer has as many labels as rows."""

    wait_time = think_time

    @task
    def infer(self) -> None:
        options = self.environment.parsed_options
        batch = digits_batch(options.max_rows)
        body = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": list(batch.shape), "data": batch.reshape(-1).tolist()}
            ]
        }
        with self.client.post(
            f"/v2/models/{options.model}/infer", json=body, name="infer json", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json()["outputs"][0]["data"]) != batch.shape[0]:
                response.failure("wrong number of rows in the answer")
