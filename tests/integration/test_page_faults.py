"""The gateway and its workers reuse batch-sized buffers instead of faulting in fresh pages.

Real processes, real load: 32 rows of 2,048 float32 per request, so each batch is about 1 MiB
in and 1 MiB out. With glibc's default thresholds the gateway took about 1,770 minor page
faults per request here and the worker about 710 (workers/allocator.py says why); with the
setting both stay under one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.helpers import GatewayProcess, child_pids, identity_model, write_model
from tests.load import closed_loop


def _minor_faults(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt: the 10th field of /proc/PID/stat, the 8th after the name


def test_wide_batches_do_not_fault_in_fresh_pages(tmp_path: Path) -> None:
    model = identity_model(["FP32"], width=2048)
    write_model(tmp_path / "models", "wide", model, {"batching": {"max_batch_size": 128}})
    rows = np.full((32, 2048), 0.5, np.float32).tolist()
    body = json.dumps({"inputs": [{"name": "in_FP32", "datatype": "FP32", "shape": [32, 2048], "data": rows}]})
    # Its answers (65,536 values, about 650 KB of JSON) would go to a JSON process: this test
    # counts the faults of the gateway and its worker, with the JSON handled on the loop.
    config = {"http": {"json_offload_bytes": 0}}
    gateway = GatewayProcess(tmp_path / "models", tmp_path / "gateway.log", config, replicas=1)
    try:
        gateway.wait_ready()
        path = "/v2/models/wide/infer"
        warm = closed_loop(gateway.port, path, body.encode(), users=8, duration_s=30, max_requests=50)
        assert {o.status for o in warm} == {200}
        processes = [gateway.process.pid, *child_pids(gateway.process.pid)]
        assert len(processes) == 2  # the gateway and its one worker
        before = [_minor_faults(pid) for pid in processes]
        outcomes = closed_loop(gateway.port, path, body.encode(), users=8, duration_s=60, max_requests=400)
        per_request = [(_minor_faults(pid) - b) / len(outcomes) for pid, b in zip(processes, before, strict=True)]
        print(f"{len(outcomes)} requests; minor faults per request: gateway, worker {per_request}")
        assert len(outcomes) == 400 and {o.status for o in outcomes} == {200}
        assert max(per_request) < 50, per_request
    finally:
        gateway.stop()
