"""Failures under load with real processes: a killed worker, 5x overload, SIGTERM mid-traffic."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from tests.helpers import GatewayProcess, child_pids, identity_model, write_model
from tests.load import Outcome, closed_loop, open_loop, percentile

BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [3.0] * 64}]}).encode()
INFER = "/v2/models/digits_mlp/infer"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _mid_batch(pid: int) -> bool:
    """A worker is inside a batch: one of its threads sleeps the injected fault delay."""
    try:
        return any("nanosleep" in (task / "wchan").read_text() for task in Path(f"/proc/{pid}/task").iterdir())
    except OSError:  # it or one of its threads exited meanwhile
        return False


def _repository(tmp_path: Path, demo_repository: Path, config: dict[str, object]) -> Path:
    root = tmp_path / "models"
    write_model(root, "digits_mlp", (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes(), config)
    return root


def test_killed_worker_under_load_loses_no_request(tmp_path: Path, demo_repository: Path) -> None:
    """kill -9 one of two busy workers during 30 s of 32 users: every request still gets a 200."""
    root = _repository(tmp_path, demo_repository, {"slo": {"p99_ms": 2000}})
    config = {"pools": {"default": {"replicas": 2, "fault": {"delay_ms": 5}}}}
    gateway = GatewayProcess(root, tmp_path / "gateway.log", config=config)
    try:
        gateway.wait_ready()
        killed_at: list[float] = []
        back_at: list[float] = []

        def chaos() -> None:
            time.sleep(5)  # let the load settle before the kill
            # Kill a worker while it holds a batch: an idle one (the batcher keeps one busy
            # before it adds a second batch beside it) would test nothing.
            give_up = time.monotonic() + 10
            while time.monotonic() < give_up:
                busy = [pid for pid in child_pids(gateway.process.pid) if _mid_batch(pid)]
                if busy:
                    os.kill(busy[0], signal.SIGKILL)
                    killed_at.append(time.monotonic())
                    break
            else:
                return
            while time.monotonic() - killed_at[0] < 20:
                restarted = gateway.metric("batchgate_worker_restarts_total") >= 1
                if restarted and gateway.metric("batchgate_replicas_ready", {"pool": "default"}) == 2:
                    back_at.append(time.monotonic())
                    return
                time.sleep(0.1)

        thread = threading.Thread(target=chaos)
        thread.start()
        outcomes = closed_loop(gateway.port, INFER, BODY, users=32, duration_s=30)
        thread.join()
        assert killed_at, "no worker was ever seen inside a batch"
        statuses = {o.status for o in outcomes}
        print(
            f"{len(outcomes)} requests, statuses {statuses}, worker back after {back_at[0] - killed_at[0]:.1f}s, "
            f"retries {gateway.metric('batchgate_retries_total'):.0f}"
        )
        assert statuses == {200}, gateway.log()
        assert back_at and back_at[0] - killed_at[0] < 10
        assert gateway.metric("batchgate_retries_total") >= 1
    finally:
        gateway.stop()


def test_five_times_capacity_is_shed_and_service_resumes(tmp_path: Path, demo_repository: Path) -> None:
    """Capacity ~200 rows/s (4 rows per 20 ms batch, one worker); 1000 requests/s offered for 20 s."""
    slo_ms = 100
    root = _repository(tmp_path, demo_repository, {"batching": {"max_batch_size": 4}, "slo": {"p99_ms": slo_ms}})
    config = {"pools": {"default": {"replicas": 1, "fault": {"delay_ms": 20}}}}
    gateway = GatewayProcess(root, tmp_path / "gateway.log", config=config, replicas=1)
    try:
        gateway.wait_ready()
        rss_before = _rss_mb(gateway.process.pid)
        outcomes = open_loop(gateway.port, INFER, BODY, rate_per_s=1000, duration_s=20)
        rss_after = _rss_mb(gateway.process.pid)
        admitted = [o.latency_s for o in outcomes if o.status == 200]
        shed = [o for o in outcomes if o.status == 429]
        p99 = percentile(admitted, 99) * 1000
        print(
            f"{len(outcomes)} offered: {len(admitted)} served (p99 {p99:.1f} ms), {len(shed)} shed; "
            f"gateway RSS {rss_before:.0f} -> {rss_after:.0f} MB"
        )
        assert {o.status for o in outcomes} <= {200, 429}, [o.body for o in outcomes if o.status == 0][:5]
        assert all(int(o.headers["retry-after"]) >= 1 for o in shed)
        assert len(admitted) > 1000 and len(shed) > 5000
        assert p99 < 2 * slo_ms
        assert rss_after - rss_before < 100
        after = closed_loop(gateway.port, INFER, BODY, users=1, duration_s=2, max_requests=20)
        assert [o.status for o in after] == [200] * len(after) and len(after) == 20
        assert max(o.latency_s for o in after) < slo_ms / 1000
    finally:
        gateway.stop()


def test_a_burst_the_workers_keep_up_with_is_not_shed(tmp_path: Path) -> None:
    """128 users sending 32 rows each at once, to a cheap model under the default 100 ms SLO.

    The workers could answer all of it well within the SLO; the gateway's own event loop is
    what is busy. Shedding judged on the round trips the loop saw: the burst stretched them,
    the refusals kept the loop as busy as admissions did, and nearly every request got 429
    until the load stopped (7.5k of 204k rows/s in the benchmark). Now shedding weighs the
    time the workers report, and this load is simply served.
    """
    root = tmp_path / "models"
    write_model(root, "wide", identity_model(["FP32"], width=512), {"batching": {"max_batch_size": 128}})
    rows = [[0.5] * 512] * 32
    body = json.dumps({"inputs": [{"name": "in_FP32", "datatype": "FP32", "shape": [32, 512], "data": rows}]})
    gateway = GatewayProcess(root, tmp_path / "gateway.log", config={"limits": {"per_client": {"max_concurrency": 0}}})
    try:
        gateway.wait_ready()
        outcomes = closed_loop(gateway.port, "/v2/models/wide/infer", body.encode(), users=128, duration_s=6)
        statuses = Counter(o.status for o in outcomes)
        print(f"{len(outcomes)} requests, statuses {dict(statuses)}, shed {gateway.metric('batchgate_shed_total')}")
        assert statuses[200] > 500
        assert set(statuses) == {200}, [o.body for o in outcomes if o.status != 200][:3]
    finally:
        gateway.stop()


def test_sigterm_under_load_finishes_every_admitted_request(tmp_path: Path, demo_repository: Path) -> None:
    root = _repository(tmp_path, demo_repository, {"slo": {"p99_ms": 5000}})
    config = {"drain_timeout_s": 10, "pools": {"default": {"replicas": 2, "fault": {"delay_ms": 50}}}}
    gateway = GatewayProcess(root, tmp_path / "gateway.log", config=config)
    gateway.wait_ready()
    sent: list[float] = []
    exited_at: list[float] = []

    def terminate() -> None:
        time.sleep(2)  # let the load settle first
        sent.append(time.perf_counter())
        gateway.process.send_signal(signal.SIGTERM)
        gateway.process.wait(15)
        exited_at.append(time.perf_counter())

    thread = threading.Thread(target=terminate)
    thread.start()
    outcomes: list[Outcome] = closed_loop(gateway.port, INFER, BODY, users=16, duration_s=6)
    thread.join()
    exited = gateway.process.wait(15)
    stopped_after = exited_at[0] - sent[0]
    gateway.stop()
    in_flight = [o for o in outcomes if o.sent_at < sent[0] < o.sent_at + o.latency_s]
    print(f"{len(outcomes)} requests; {len(in_flight)} in flight at SIGTERM; exit {exited} after {stopped_after:.1f}s")
    assert in_flight and all(o.status == 200 for o in in_flight)
    assert {o.status for o in outcomes} <= {200, 503, 0}
    assert all(o.status == 200 for o in outcomes if o.sent_at + o.latency_s < sent[0])
    assert stopped_after < 10
    assert "drained: every admitted request has been answered" in gateway.log()


def test_worker_sigterm_drains_without_failing_requests(tmp_path: Path, demo_repository: Path) -> None:
    """A worker told to stop finishes its batch and refuses new ones; the gateway sends them elsewhere."""
    root = _repository(tmp_path, demo_repository, {"slo": {"p99_ms": 5000}})
    config = {"pools": {"default": {"replicas": 2, "fault": {"delay_ms": 20}}}}
    gateway = GatewayProcess(root, tmp_path / "gateway.log", config=config)
    try:
        gateway.wait_ready()

        def stop_one() -> None:
            time.sleep(2)
            os.kill(child_pids(gateway.process.pid)[0], signal.SIGTERM)

        thread = threading.Thread(target=stop_one)
        thread.start()
        outcomes = closed_loop(gateway.port, INFER, BODY, users=16, duration_s=8)
        thread.join()
        assert {o.status for o in outcomes} == {200}
        assert gateway.metric("batchgate_worker_restarts_total") >= 1
    finally:
        gateway.stop()
