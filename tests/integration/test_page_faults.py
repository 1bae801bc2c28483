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

from tests.helpers import GatewayProcess, write_model
from tests.load import closed_loop


def _minor_faults(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt: the 10th field of /proc/PID/stat, the 8th after the name


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def test_wide_batches_do_not_fault_in_fresh_pages(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])],
        "relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2048])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2048])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    write_model(tmp_path / "models", "relu", model.SerializeToString(), {"batching": {"max_batch_size": 128}})
    rows = np.full((32, 2048), 0.5, np.float32).tolist()
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [32, 2048], "data": rows}]})
    gateway = GatewayProcess(tmp_path / "models", tmp_path / "gateway.log", replicas=1)
    try:
        gateway.wait_ready()
        path = "/v2/models/relu/infer"
        warm = closed_loop(gateway.port, path, body.encode(), users=8, duration_s=30, max_requests=50)
        assert {o.status for o in warm} == {200}
        processes = [gateway.process.pid, *_children(gateway.process.pid)]
        assert len(processes) == 2  # the gateway and its one worker
        before = [_minor_faults(pid) for pid in processes]
        outcomes = closed_loop(gateway.port, path, body.encode(), users=8, duration_s=60, max_requests=400)
        per_request = [(_minor_faults(pid) - b) / len(outcomes) for pid, b in zip(processes, before, strict=True)]
        print(f"{len(outcomes)} requests; minor faults per request: gateway, worker {per_request}")
        assert len(outcomes) == 400 and {o.status for o in outcomes} == {200}
        assert max(per_request) < 50, per_request
    finally:
        gateway.stop()
