"""``batchgate loadtest``: locust against a gateway, judged against an SLO.

Starts a gateway on free loopback ports unless ``--host`` is given, runs each protocol's
locustfile headless for a bounded time, and exits 1 with a one-line reason when p99,
error ratio or throughput misses the SLO (from the model's config or the flags). With
``--compare`` it also checks that locust's latencies agree with the benchmark's own load
generator at one user. Writes locust's CSV and HTML, ``summary.json`` and ``loadtest.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from gateway.child import ChildGateway
from loadtests.report import SLO, Measured, plot, read_stats, summary

HERE = Path(__file__).resolve().parent
PROTOCOLS = ("http_json", "http_binary", "grpc")


def allowed_difference_ms(benchmark_p50_ms: float, tolerance_ms: float, tolerance_ratio: float) -> float:
    """How far locust's exact p50 may be from the benchmark load generator's and still agree."""
    return tolerance_ms + tolerance_ratio * benchmark_p50_ms


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def model_slo_ms(host: str, model: str) -> float | None:
    """The model's SLO p99 from its served config (``parameters.slo_p99_ms``)."""
    status, body = _get(f"{host}/v2/models/{model}/config")
    if status != 200:
        return None
    value = json.loads(body).get("parameters", {}).get("slo_p99_ms", {}).get("string_value")
    return float(value) if value else None


def run_locust(
    protocol: str,
    host: str,
    grpc_host: str,
    out: Path,
    args: argparse.Namespace,
    *,
    users: int,
    seconds: float,
    think_ms: float,
    max_rows: int,
    tag: str = "",
    samples: Path | None = None,
) -> Measured:
    prefix = out / f"{protocol}{tag}"
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / f"locustfile_{protocol}.py"),
        "--headless",
        "--host",
        host,
        "--grpc-host",
        grpc_host,
        "--csv",
        str(prefix),
        "--csv-full-history",
        "--html",
        f"{prefix}.html",
        "--only-summary",
        "--model",
        args.model,
        "--shape",
        args.shape,
        "--peak-users",
        str(users),
        "--run-seconds",
        str(seconds),
        "--think-ms",
        str(think_ms),
        "--max-rows",
        str(max_rows),
        "--run-time",
        f"{int(seconds) + 15}s",
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
    ]
    if samples is not None:
        argv += ["--samples-out", str(samples)]
    with open(f"{prefix}.log", "wb") as log:
        subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=seconds + 90, check=True, cwd=HERE.parent)
    return read_stats(prefix, protocol)


def _bodies(out: Path, model: str) -> dict[str, list[str]]:
    """One-row requests for the benchmark's load generator, per protocol (its extra argv)."""
    from tritonclient.grpc import service_pb2

    data = np.full((1, 64), 8.0, dtype=np.float32)
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 64]}
    (out / "compare.json").write_text(json.dumps({"inputs": [{**tensor, "data": data.reshape(-1).tolist()}]}))
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": data.nbytes}}]}).encode()
    (out / "compare.bin").write_bytes(header + data.tobytes())
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(data.tobytes())
    (out / "compare.pb").write_bytes(request.SerializeToString())
    return {
        "http_json": ["--body", str(out / "compare.json")],
        "http_binary": [
            "--body",
            str(out / "compare.bin"),
            "--header",
            f"Inference-Header-Content-Length: {len(header)}",
        ],
        "grpc": ["--body", str(out / "compare.pb"), "--grpc"],
    }


def compare(
    protocols: list[str], host: str, grpc_host: str, out: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """p50 at one user, no think time: locust against the benchmark's load generator."""
    bodies = _bodies(out, args.model)
    http_port = int(host.rsplit(":", 1)[1])
    grpc_port = int(grpc_host.rsplit(":", 1)[1])
    rows = []
    for protocol in protocols:
        ours = run_locust(
            protocol,
            host,
            grpc_host,
            out,
            args,
            users=1,
            seconds=args.compare_seconds,
            think_ms=0,
            max_rows=1,
            tag="_compare",
            samples=out / f"{protocol}_compare_samples.json",
        )
        exact = json.loads((out / f"{protocol}_compare_samples.json").read_text())
        locust_p50_ms = float(np.median(exact)) if exact else float("nan")
        port = grpc_port if protocol == "grpc" else http_port
        argv = [
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            "--port",
            str(port),
            "--path",
            f"/v2/models/{args.model}/infer",
            "--users",
            "1",
            "--duration",
            str(args.compare_seconds),
            "--warmup",
            "0.5",
            *bodies[protocol],
        ]
        bench = json.loads(subprocess.run(argv, capture_output=True, check=True, timeout=120, cwd=HERE.parent).stdout)
        allowed = allowed_difference_ms(bench["p50_ms"], args.tolerance_ms, args.tolerance_ratio)
        rows.append(
            {
                "protocol": protocol,
                "locust_p50_ms": locust_p50_ms,
                "locust_rounded_p50_ms": ours.p50_ms,
                "benchmark_p50_ms": bench["p50_ms"],
                "allowed_difference_ms": allowed,
                "agree": abs(locust_p50_ms - bench["p50_ms"]) <= allowed,
            }
        )
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchgate loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", help="HTTP base URL of a running gateway (default: start one)")
    parser.add_argument("--grpc-host", help="gRPC host:port of that gateway (default: its port 8001)")
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=Path("models"),
        help="repository for the gateway this command starts (built with the demo if missing)",
    )
    parser.add_argument("--model", default="digits_mlp")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated: " + ", ".join(PROTOCOLS))
    parser.add_argument("--shape", default="steady", choices=["steady", "step", "ramp", "spike"])
    parser.add_argument("--users", type=int, default=16, help="peak concurrent users per protocol")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each protocol's run")
    parser.add_argument("--think-ms", type=float, default=50.0, help="mean think time per user")
    parser.add_argument("--max-rows", type=int, default=4, help="rows per request are 1..max-rows")
    parser.add_argument("--slo-p99-ms", type=float, help="p99 objective (default: the model's slo.p99_ms)")
    parser.add_argument("--max-error-ratio", type=float, default=0.01)
    parser.add_argument("--min-rps", type=float, default=1.0, help="least requests/s per protocol")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also check locust's latency against the benchmark load generator at one user",
    )
    parser.add_argument("--compare-seconds", type=float, default=4.0)
    parser.add_argument(
        "--tolerance-ms",
        type=float,
        default=2.0,
        help="agreement: fixed part (a Python client on gevent adds 1-1.6 ms a call; python-requests about 3)",
    )
    parser.add_argument("--tolerance-ratio", type=float, default=0.5, help="agreement: share of the benchmark's p50")
    parser.add_argument("--out", type=Path, default=Path("loadtests/reports"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    protocols = [p for p in args.protocols.split(",") if p]
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise SystemExit(f"loadtest: unknown protocols {sorted(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    gateway = None
    if args.host is None:
        if not args.model_repository.is_dir():
            from gateway.demo import build_demo

            build_demo(args.model_repository)
        gateway = ChildGateway(args.model_repository, args.out / "gateway.log", args=["--log-format", "text"])
        print(f"loadtest: starting a gateway on {gateway.url} (gRPC {gateway.grpc_url}) ...", flush=True)
        try:
            gateway.wait_ready(120)
        except (RuntimeError, TimeoutError) as exc:
            gateway.stop()
            raise SystemExit(f"loadtest: {exc}") from None
        host, grpc_host = f"http://{gateway.url}", gateway.grpc_url
    else:
        host = args.host.rstrip("/")
        grpc_host = args.grpc_host or f"{host.split('://', 1)[-1].rsplit(':', 1)[0]}:8001"
    try:
        slo_ms = args.slo_p99_ms if args.slo_p99_ms is not None else model_slo_ms(host, args.model)
        if slo_ms is None:
            raise SystemExit(f"loadtest: no SLO for model {args.model}: give --slo-p99-ms")
        slo = SLO(slo_ms, args.max_error_ratio, args.min_rps)
        results = []
        for protocol in protocols:
            print(f"loadtest: {protocol}, {args.shape} shape, {args.users} users, {args.seconds:g}s ...", flush=True)
            results.append(
                run_locust(
                    protocol,
                    host,
                    grpc_host,
                    args.out,
                    args,
                    users=args.users,
                    seconds=args.seconds,
                    think_ms=args.think_ms,
                    max_rows=args.max_rows,
                )
            )
        comparison = compare(protocols, host, grpc_host, args.out, args) if args.compare else []
    finally:
        if gateway is not None:
            gateway.stop()
    plot({p: args.out / p for p in protocols}, slo, args.out / "loadtest.png")
    report = summary(
        results, slo, {"shape": args.shape, "users": args.users, "seconds": args.seconds, "comparison": comparison}
    )
    problems = list(report["breaches"])
    problems += [
        f"{row['protocol']}: locust p50 {row['locust_p50_ms']:.2f} ms vs benchmark {row['benchmark_p50_ms']:.2f} ms "
        f"(allowed ±{row['allowed_difference_ms']:.2f} ms)"
        for row in comparison
        if not row["agree"]
    ]
    report["verdict"] = "fail" if problems else "pass"
    report["breaches"] = problems
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    measured = "; ".join(
        f"{m.protocol} p99 {m.p99_ms:.1f} ms, errors {m.error_ratio:.2%}, {m.rps:.1f} req/s" for m in results
    )
    objective = f"SLO p99 <= {slo.p99_ms:g} ms, errors <= {slo.max_error_ratio:.0%}, >= {slo.min_rps:g} req/s"
    if problems:
        print(f"loadtest FAIL: {'; '.join(problems)} ({objective}; reports in {args.out})")
        return 1
    print(f"loadtest PASS: {measured} ({objective}; reports in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
