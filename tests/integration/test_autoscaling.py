"""The embedded controller with real processes: a step load grows the pool, then it shrinks."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from tests.helpers import GatewayProcess, write_model
from tests.load import Outcome, closed_loop, percentile

BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [3.0] * 64}]}).encode()
SLO_MS = 100
PHASES = [(2, 10.0), (48, 40.0), (2, 35.0)]  # (users, seconds)


def test_step_load_grows_then_shrinks_the_local_pool(tmp_path: Path, demo_repository: Path) -> None:
    root = tmp_path / "models"
    write_model(
        root,
        "digits_mlp",
        (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes(),
        # Admit everything (no SLO shedding) so the controller alone must bring p99 back.
        {"batching": {"max_batch_size": 8, "shed_over_slo": False}, "slo": {"p99_ms": SLO_MS}},
    )
    policy = {
        "min_replicas": 2,
        "max_replicas": 4,
        "target_concurrency": 8,
        "stable_window_s": 10,
        "panic_window_s": 3,
        "scale_down_delay_s": 8,
    }
    config = {
        "pools": {"default": {"replicas": 2, "fault": {"delay_ms": 20}}},
        "autoscaler": {"enabled": True, "backend": "local", "interval_s": 1, "policies": {"default": policy}},
    }
    gateway = GatewayProcess(root, tmp_path / "gateway.log", config=config)
    timeline: list[tuple[float, float]] = []
    done = threading.Event()
    try:
        gateway.wait_ready()
        start = time.perf_counter()

        def watch_replicas() -> None:
            while not done.is_set():
                replicas = gateway.metric("batchgate_replicas", {"pool": "default"})
                timeline.append((time.perf_counter() - start, replicas))
                done.wait(1.0)

        watcher = threading.Thread(target=watch_replicas)
        watcher.start()
        outcomes: list[tuple[int, Outcome]] = []
        for users, seconds in PHASES:
            phase = closed_loop(gateway.port, "/v2/models/digits_mlp/infer", BODY, users, seconds)
            outcomes += [(users, o) for o in phase]
        done.set()
        watcher.join()
    finally:
        done.set()
        gateway.stop()

    print("\n  t(s)  users  p99(ms)  replicas")
    for second in range(0, int(sum(s for _, s in PHASES)), 5):
        window = [(u, o) for u, o in outcomes if second <= o.sent_at - start < second + 5]
        replicas = [r for t, r in timeline if second <= t < second + 5]
        if window:
            p99 = percentile([o.latency_s for _, o in window], 99) * 1000
            print(f"  {second:4d}  {window[0][0]:5d}  {p99:7.1f}  {max(replicas, default=0):8.0f}")
    assert {o.status for _, o in outcomes} == {200}, "a request failed while scaling"
    load_start, load_end = PHASES[0][1], PHASES[0][1] + PHASES[1][1]
    peak = max(r for t, r in timeline if load_start <= t <= load_end)
    assert peak > 2, f"the pool did not grow: {timeline}"
    late = [o.latency_s for _, o in outcomes if load_end - 10 <= o.sent_at - start < load_end]
    assert percentile(late, 99) * 1000 < SLO_MS, "p99 did not come back under the SLO"
    assert timeline[-1][1] < peak, f"the pool did not shrink after the load dropped: {timeline}"
