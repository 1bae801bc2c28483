"""Gateway process behaviour: the idle-replica rule, worker restarts, clean shutdown, bad config."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.helpers import GatewayProcess, child_pids, wait_for, write_model
from workers.affinity import usable_cpus


def _infer(client: httpclient.InferenceServerClient, seed: int) -> np.ndarray:
    batch = np.random.default_rng(seed).uniform(0, 16, (1, 64)).astype(np.float32)
    tensor = httpclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(batch)
    result: np.ndarray = client.infer("digits_mlp", [tensor]).as_numpy("label")
    return result


@pytest.fixture(scope="module")
def slow_window_gateway(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Iterator[GatewayProcess]:
    """digits_mlp with a 50 ms batching window: a lone client must never wait for it."""
    root = tmp_path_factory.mktemp("window") / "models"
    write_model(
        root,
        "digits_mlp",
        (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes(),
        {"batching": {"max_batch_size": 64, "max_queue_delay_us": 50_000}},
    )
    process = GatewayProcess(root, tmp_path_factory.mktemp("logs") / "window.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_single_client_does_not_pay_the_queue_delay(slow_window_gateway: GatewayProcess) -> None:
    client = httpclient.InferenceServerClient(slow_window_gateway.url)
    for seed in range(40):
        _infer(client, seed)
    labels = {"model": "digits_mlp"}
    count = slow_window_gateway.metric("batchgate_queue_duration_seconds_count", labels)
    quick = slow_window_gateway.metric("batchgate_queue_duration_seconds_bucket", {**labels, "le": "0.01"})
    assert count == 40
    assert quick == count, "a lone request waited for the 50 ms batching window"


def test_local_workers_run_under_sched_batch(slow_window_gateway: GatewayProcess) -> None:
    """Every thread of every local worker (ONNX Runtime's included), not the gateway itself."""
    _infer(httpclient.InferenceServerClient(slow_window_gateway.url), 0)  # sessions and their threads exist
    workers = child_pids(slow_window_gateway.process.pid)
    assert workers
    for pid in workers:
        threads = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
        assert len(threads) > 1
        assert {os.sched_getscheduler(tid) for tid in threads} == {os.SCHED_BATCH}, pid
    assert os.sched_getscheduler(slow_window_gateway.process.pid) == os.SCHED_OTHER


def test_killed_worker_is_restarted_and_requests_keep_succeeding(slow_window_gateway: GatewayProcess) -> None:
    gateway = slow_window_gateway
    workers = child_pids(gateway.process.pid)
    assert len(workers) == 2
    # The gateway is ready once one replica is: the other may still be on its first probe,
    # and killing the only ready one would test a pool with none.
    wait_for(lambda: gateway.metric("batchgate_replicas_ready", {"pool": "default"}) == 2)
    client = httpclient.InferenceServerClient(gateway.url)
    os.kill(workers[0], signal.SIGKILL)
    failures = 0
    deadline = time.monotonic() + 30
    restarted = False
    seed = 0
    while time.monotonic() < deadline:
        seed += 1
        try:
            _infer(client, seed)
        except Exception as exc:
            print("failed:", exc)
            failures += 1
        if (
            gateway.metric("batchgate_worker_restarts_total") >= 1
            and gateway.metric("batchgate_replicas_ready", {"pool": "default"}) == 2
        ):
            restarted = True
            break
    assert restarted, gateway.log()
    assert failures == 0
    assert len(child_pids(gateway.process.pid)) == 2


def test_sigterm_stops_gateway_and_workers(serving_repository: Path, tmp_path: Path) -> None:
    gateway = GatewayProcess(serving_repository, tmp_path / "stop.log")
    gateway.wait_ready()
    workers = child_pids(gateway.process.pid)
    started = time.monotonic()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells why.
    assert gateway.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 15
    assert "Application shutdown complete" in gateway.log()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_bad_config_fails_at_start_with_the_field(tmp_path: Path, serving_repository: Path) -> None:
    config = tmp_path / "batchgate.yaml"
    config.write_text("pools: {default: {inflight_per_replica: 0}}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            "--model-repository",
            str(serving_repository),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "pools.default.inflight_per_replica" in result.stderr


def test_missing_repository_says_how_to_build_one(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--model-repository", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "batchgate models demo" in result.stderr


@pytest.fixture(scope="module")
def slow_worker_gateway(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Iterator[GatewayProcess]:
    """One worker that takes 400 ms per batch (fault injection), one batch at a time."""
    root = tmp_path_factory.mktemp("slow") / "models"
    write_model(
        root,
        "digits_mlp",
        (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes(),
        {"slo": {"p99_ms": 5000}},
    )
    config = {"pools": {"default": {"replicas": 1, "fault": {"delay_ms": 400}}}}
    process = GatewayProcess(root, tmp_path_factory.mktemp("logs") / "slow.log", config=config, replicas=1)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_disconnected_client_leaves_the_queue_without_costing_compute(slow_worker_gateway: GatewayProcess) -> None:
    gateway = slow_worker_gateway
    labels = {"model": "digits_mlp"}
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]})
    request = (
        f"POST /v2/models/digits_mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    rows_before = gateway.metric("batchgate_batch_size_sum", labels)

    first = socket.create_connection(("127.0.0.1", gateway.port))
    first.sendall(request)  # occupies the only worker for 400 ms
    _wait_for(lambda: gateway.metric("batchgate_batch_size_sum", labels) == rows_before + 1)
    second = socket.create_connection(("127.0.0.1", gateway.port))
    second.sendall(request)  # waits in the queue behind the first
    _wait_for(lambda: gateway.metric("batchgate_queue_depth", labels) == 1)
    second.close()
    _wait_for(lambda: gateway.metric("batchgate_queue_depth", labels) == 0)
    assert first.recv(4096).startswith(b"HTTP/1.1 200")
    first.close()
    _wait_for(lambda: gateway.metric("batchgate_requests_total", {**labels, "code": "499"}) == 1)
    assert gateway.metric("batchgate_batch_size_sum", labels) == rows_before + 1


def test_grpc_deadline_shorter_than_the_queue_wait_costs_no_compute(slow_worker_gateway: GatewayProcess) -> None:
    """The worker is busy for 400 ms; a request with a 100 ms client deadline expires in the queue."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    gateway = slow_worker_gateway
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    stats = client.get_inference_statistics("digits_mlp", as_json=True)["model_stats"][0]
    executions = int(stats.get("execution_count", 0))
    rows_before = gateway.metric("batchgate_batch_size_sum", {"model": "digits_mlp"})
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), dtype=np.float32))
    done: list[object] = []
    client.async_infer("digits_mlp", [tensor], callback=lambda result, error: done.append(error or result))
    _wait_for(lambda: gateway.metric("batchgate_batch_size_sum", {"model": "digits_mlp"}) == rows_before + 1)
    with pytest.raises(InferenceServerException) as info:
        client.infer("digits_mlp", [tensor], client_timeout=0.1)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    _wait_for(lambda: len(done) == 1)
    stats = client.get_inference_statistics("digits_mlp", as_json=True)["model_stats"][0]
    assert int(stats["execution_count"]) == executions + 1  # only the first request reached the worker
    assert gateway.metric("batchgate_batch_size_sum", {"model": "digits_mlp"}) == rows_before + 1


def test_a_cancelled_grpc_call_leaves_the_queue_and_counts_as_499(slow_worker_gateway: GatewayProcess) -> None:
    """The gateway's own HTTP/2 front answers ModelInfer without a task: a stream the client
    resets must still take its request out of the queue, free the in-flight gauge, and be
    counted once, as 499, without reaching the worker."""
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    gateway = slow_worker_gateway
    labels = {"model": "digits_mlp"}
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    executions = int(client.get_inference_statistics("digits_mlp", as_json=True)["model_stats"][0]["execution_count"])
    rows_before = gateway.metric("batchgate_batch_size_sum", labels)
    cancelled_before = gateway.metric("batchgate_requests_total", {**labels, "code": "499"})
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), dtype=np.float32))
    done: list[object] = []
    client.async_infer("digits_mlp", [tensor], callback=lambda result, error: done.append(error or result))
    _wait_for(lambda: gateway.metric("batchgate_batch_size_sum", labels) == rows_before + 1)  # the worker is busy
    request = service_pb2.ModelInferRequest(model_name="digits_mlp")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.ones((1, 64), dtype=np.float32).tobytes())
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.future(request)
        _wait_for(lambda: gateway.metric("batchgate_queue_depth", labels) == 1)
        assert call.cancel()
        _wait_for(lambda: gateway.metric("batchgate_queue_depth", labels) == 0)
        _wait_for(lambda: gateway.metric("batchgate_requests_total", {**labels, "code": "499"}) == cancelled_before + 1)
    _wait_for(lambda: len(done) == 1)
    assert not isinstance(done[0], Exception), done[0]
    _wait_for(lambda: gateway.metric("batchgate_inflight_requests", labels) == 0)
    stats = client.get_inference_statistics("digits_mlp", as_json=True)["model_stats"][0]
    assert int(stats["execution_count"]) == executions + 1  # the cancelled request never reached the worker
    assert gateway.metric("batchgate_requests_total", {**labels, "code": "499"}) == cancelled_before + 1


def test_one_worker_takes_a_second_batch_while_the_first_computes(tmp_path: Path, demo_repository: Path) -> None:
    """``concurrent_runs: 2`` on one replica: a single worker process, told to run two batches at
    once, and the gateway hands it the second while the first is still inside (a 400 ms fault
    delay). With one slot the second request would wait those 400 ms in the queue."""
    root = tmp_path / "models"
    write_model(
        root,
        "digits_mlp",
        (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes(),
        {"slo": {"p99_ms": 5000}},
    )
    config = {"pools": {"default": {"replicas": 1, "concurrent_runs": 2, "fault": {"delay_ms": 400}}}}
    gateway = GatewayProcess(root, tmp_path / "gateway.log", config=config, replicas=1)
    labels = {"model": "digits_mlp"}
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]})
    request = (
        f"POST /v2/models/digits_mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    try:
        gateway.wait_ready()
        workers = child_pids(gateway.process.pid)
        assert len(workers) == 1
        argv = Path(f"/proc/{workers[0]}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--concurrent-runs") + 1] == b"2"
        assert argv[argv.index(b"--threads") + 1] == str(max(1, usable_cpus() // 2)).encode()
        threads = (
            f"{max(1, usable_cpus() // 2)} ONNX Runtime thread(s) per run (auto: {usable_cpus()} usable CPUs / 2 runs)"
        )
        assert threads in gateway.log()  # the operator sees what was chosen, and from what
        with socket.create_connection(("127.0.0.1", gateway.port)) as first:
            first.sendall(request)
            _wait_for(lambda: gateway.metric("batchgate_batch_size_sum", labels) == 1)
            with socket.create_connection(("127.0.0.1", gateway.port)) as second:
                second.sendall(request)
                _wait_for(lambda: gateway.metric("batchgate_batch_size_sum", labels) == 2)
                first.setblocking(False)
                with pytest.raises(BlockingIOError):
                    first.recv(1)  # the first batch is still computing
                first.setblocking(True)
                first.settimeout(10)
                second.settimeout(10)
                assert first.recv(4096).startswith(b"HTTP/1.1 200")
                assert second.recv(4096).startswith(b"HTTP/1.1 200")
        quick = gateway.metric("batchgate_queue_duration_seconds_bucket", {**labels, "le": "0.1"})
        assert quick == 2, "the second request waited in the queue for the first batch"
    finally:
        gateway.stop()
