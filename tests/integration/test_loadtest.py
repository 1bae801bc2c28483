"""The load-test gate against a real gateway: it can pass, and it can fail with a reason."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from tests.helpers import GatewayProcess

ROOT = Path(__file__).resolve().parents[2]


def _loadtest(gateway: GatewayProcess, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "loadtests.run",
        "--host",
        f"http://{gateway.url}",
        "--grpc-host",
        gateway.grpc_url,
        "--users",
        "4",
        "--seconds",
        "4",
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_unmeetable_slo_fails_and_names_the_objective(gateway: GatewayProcess, tmp_path: Path) -> None:
    result = _loadtest(gateway, tmp_path, "--protocols", "http_json", "--slo-p99-ms", "0.1")
    assert result.returncode == 1, result.stdout + result.stderr
    verdict = result.stdout.strip().splitlines()[-1]
    assert verdict.startswith("loadtest FAIL: http_json: p99") and "> 0.1 ms" in verdict
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["verdict"] == "fail" and summary["results"][0]["requests"] > 0
    assert (tmp_path / "loadtest.png").stat().st_size > 10_000
    assert (tmp_path / "http_json.html").stat().st_size > 1_000


def test_every_protocol_passes_the_model_slo(gateway: GatewayProcess, tmp_path: Path) -> None:
    result = _loadtest(gateway, tmp_path, "--shape", "step")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["slo"]["p99_ms"] == 50  # read from the model's config
    assert [r["protocol"] for r in summary["results"]] == ["http_json", "http_binary", "grpc"]
    assert all(r["failures"] == 0 for r in summary["results"])


def test_a_failing_model_breaches_the_error_ratio(tmp_path: Path, demo_repository: Path) -> None:
    from tests.helpers import write_model

    root = tmp_path / "models"
    write_model(
        root,
        "digits_mlp",
        (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes(),
        {"slo": {"p99_ms": 1000}},
    )
    config = {"pools": {"default": {"replicas": 1, "fault": {"error_ratio": 0.5}}}}
    gateway = GatewayProcess(root, tmp_path / "gateway.log", config=config, replicas=1)
    try:
        gateway.wait_ready()
        result = _loadtest(gateway, tmp_path / "out", "--protocols", "http_binary")
    finally:
        gateway.stop()
    assert result.returncode == 1
    assert "http_binary: error ratio" in result.stdout.strip().splitlines()[-1]


def test_compare_judges_the_exact_one_user_times(gateway: GatewayProcess, tmp_path: Path) -> None:
    """locust's rounded p50 is whole milliseconds; the comparison uses every exact time."""
    result = _loadtest(gateway, tmp_path, "--protocols", "http_binary", "--compare", "--compare-seconds", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads((tmp_path / "summary.json").read_text())["comparison"]
    samples = json.loads((tmp_path / "http_binary_compare_samples.json").read_text())
    with open(tmp_path / "http_binary_compare_stats.csv") as stats:
        aggregated = [line for line in stats if ",Aggregated," in line]
    counted = int(aggregated[0].split(",")[2])
    assert counted > 50 and counted <= len(samples) <= counted + 2  # a call may end after the CSV is written
    assert row["locust_p50_ms"] == statistics.median(samples)
    assert row["locust_p50_ms"] != round(row["locust_p50_ms"])  # not locust's whole milliseconds
    assert row["agree"] and row["benchmark_p50_ms"] > 0
