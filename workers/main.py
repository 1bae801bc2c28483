"""``batchgate worker``: one process that loads ONNX models and serves them over v2 gRPC."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2_grpc

from workers.affinity import auto_threads, confine, each_thread, parse_cpus, usable_cpus
from workers.allocator import keep_freed_memory
from workers.local_server import LocalServer
from workers.runtime import LoadedModel, RuntimeConflict, check_single_runtime, load_model
from workers.servicer import Faults, WorkerServicer

log = logging.getLogger("batchgate.worker")

MAX_MESSAGE_BYTES = 512 * 1024 * 1024


def _parse_model(text: str) -> tuple[str, str, Path]:
    try:
        name, rest = text.split("=", 1)
        version, path = rest.split(":", 1)
        int(version)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=VERSION:PATH, got {text!r}") from None
    return name, version, Path(path)


def scan_repository(root: Path) -> list[tuple[str, str, Path]]:
    """Latest version of every model folder under ``root`` (for workers started without a gateway)."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = [v for v in folder.iterdir() if v.name.isdigit() and (v / "model.onnx").is_file()]
        if versions:
            latest = max(versions, key=lambda v: int(v.name))
            found.append((folder.name, latest.name, latest / "model.onnx"))
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchgate worker", description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port or unix:/path/to.sock")
    parser.add_argument(
        "--model",
        action="append",
        type=_parse_model,
        default=[],
        metavar="NAME=VERSION:PATH",
        help="a model file to serve (repeatable)",
    )
    parser.add_argument("--model-repository", type=Path, help="serve the latest version of every model here")
    parser.add_argument(
        "--listen-local", type=Path, help="also serve the framed local fast path on this unix socket path"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads per run; 0 (default) = usable CPUs / --concurrent-runs, where "
        "usable CPUs honour --cpus, the CPU set and the cgroup CPU quota (a pod's CPU limit)",
    )
    parser.add_argument(
        "--concurrent-runs",
        type=int,
        default=1,
        help="batches of one model computed at once, sharing its session (and its weights)",
    )
    parser.add_argument("--providers", default="auto", help="comma-separated execution providers")
    parser.add_argument("--spin", action="store_true", help="let ONNX Runtime threads spin-wait between runs")
    parser.add_argument(
        "--batch-scheduling",
        action="store_true",
        help="run under SCHED_BATCH (Linux): wake-ups do not preempt other processes on the same cores",
    )
    parser.add_argument("--cpus", help="Linux CPU list ('1-3') to run on, ONNX Runtime's threads included")
    parser.add_argument("--rpc-threads", type=int, default=4, help="gRPC handler threads")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish in-flight work on SIGTERM")
    parser.add_argument("--log-level", default="info")
    tls = parser.add_argument_group("TLS on the gRPC port (mutual when --tls-client-ca is given)")
    tls.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    tls.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    tls.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA")
    faults = parser.add_argument_group("fault injection (tests and chaos runs only)")
    faults.add_argument("--fault-delay-ms", type=float, default=0.0, help="add this latency to every batch")
    faults.add_argument("--fault-error-ratio", type=float, default=0.0, help="fail this fraction of batches")
    faults.add_argument("--fault-seed", type=int, default=0)
    faults.add_argument("--fault-models", default="", help="comma-separated models to affect (default: all)")
    return parser


def batch_scheduling() -> None:
    """Move this process to SCHED_BATCH: its threads now, and so every thread started later.

    A worker that shares cores with its gateway wakes whenever a batch arrives; under the
    default policy that wake-up may preempt the gateway's event loop in the middle of
    answering clients, and every client then waits for the batch. SCHED_BATCH keeps the
    worker's share of the CPU and only gives up preempting on wake-up. Measured on the
    2-core benchmark box, ``mlp`` at 7,800 Poisson arrivals/s (70% of capacity): median
    p99 28 ms over 9 runs against 43 ms over 8 without (single runs vary from 20 to
    136 ms); closed-loop throughput at 1, 64 and 256 users unchanged.
    """
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        log.info("SCHED_BATCH is not available here; the worker keeps the default scheduling")
        return
    # Imports have already started threads (numpy's BLAS pool): each thread has its own policy.
    try:
        each_thread(lambda thread: os.sched_setscheduler(thread, policy, os.sched_param(0)))
    except OSError as exc:  # a seccomp profile may forbid it: serving matters more
        log.warning("cannot switch to SCHED_BATCH (%s); the worker keeps the default scheduling", exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads < 0 or args.concurrent_runs < 1:
        parser.error("--threads must be 0 (auto) or more, and --concurrent-runs at least 1")
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(message)s",
    )
    try:
        check_single_runtime()
    except RuntimeConflict as exc:
        log.error("%s", exc)
        return 2
    if args.batch_scheduling:
        batch_scheduling()
    if args.cpus is not None:
        try:
            confine(parse_cpus(args.cpus))
        except (ValueError, OSError) as exc:
            log.error("--cpus %s: %s", args.cpus, exc)
            return 2
        log.info("running on CPUs %s", args.cpus)
    keep_freed_memory()
    if not args.threads:  # a pod limited to 4 CPUs runs 4 (2 each for 2 runs), whatever the node has
        cpus = usable_cpus()
        if args.cpus is not None:
            cpus = min(cpus, len(parse_cpus(args.cpus)))
        args.threads = auto_threads(args.concurrent_runs, cpus)
    specs = list(args.model)
    if args.model_repository:
        specs.extend(scan_repository(args.model_repository))
    if not specs:
        log.error("no models: give --model NAME=VERSION:PATH or --model-repository DIR")
        return 2
    models: dict[tuple[str, str], LoadedModel] = {}
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    for name, version, path in specs:
        try:
            models[(name, version)] = load_model(
                name, version, path, args.threads, providers, args.spin, args.concurrent_runs
            )
        except Exception as exc:  # ORT raises several types; any of them means this model cannot load
            log.error("cannot load %s:%s from %s: %s", name, version, path, exc)
            return 1

    servicer = WorkerServicer(
        models,
        faults=Faults(
            args.fault_delay_ms / 1000,
            args.fault_error_ratio,
            args.fault_seed,
            frozenset(m for m in args.fault_models.split(",") if m),
        ),
        loader=lambda name, version, path: load_model(
            name, version, path, args.threads, providers, args.spin, args.concurrent_runs
        ),
    )
    if servicer.faults.active:
        log.warning(
            "fault injection on: +%.1f ms per batch, %.0f%% of batches fail",
            args.fault_delay_ms,
            args.fault_error_ratio * 100,
        )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.rpc_threads, thread_name_prefix="rpc"),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    # grpc.health.v1 for Kubernetes probes: SERVING once the models are loaded, NOT_SERVING while draining.
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_client_ca and not args.tls_cert):
        log.error("--tls-cert and --tls-key go together (and --tls-client-ca needs both)")
        return 2
    if args.tls_cert is not None:
        client_ca = args.tls_client_ca.read_bytes() if args.tls_client_ca else None
        credentials = grpc.ssl_server_credentials(
            [(args.tls_key.read_bytes(), args.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(args.listen, credentials)
    else:
        port = server.add_insecure_port(args.listen)
    if port == 0 and not args.listen.startswith("unix:"):
        log.error("cannot listen on %s", args.listen)
        return 1
    server.start()
    gc.collect()
    gc.freeze()  # the loaded models and imports stay: keep full collections from rescanning them
    local = None
    if args.listen_local is not None:
        local = LocalServer(args.listen_local, servicer)
        local.start()
    log.info("serving %d model(s) on %s", len(models), args.listen)

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining", signum)
        servicer.ready = False
        health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    stop.wait()
    if local is not None:
        local.close(args.drain_timeout)
    server.stop(args.drain_timeout).wait()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
