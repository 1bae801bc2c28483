"""Trace-driven autoscaling simulator: batchgate's policy against HPA- and Knative-style ones.

``python -m benchmarks.autoscale_sim`` measures the service model of one worker replica
on the ``mlp`` model (in-process ONNX Runtime, one thread: time ≈ a·rows + b per batch,
plus the measured ~0.13 ms local-transport hop), then replays four open-loop traces (step,
ramp, spike, diurnal) through a fluid queueing model of a replica pool that batches up
to ``MAX_BATCH`` rows, where new replicas take ``STARTUP_S`` to become ready. Each policy
sees the same signals and decides on its own period:

- batchgate: :func:`gateway.autoscaler.policy.decide` (concurrency target, stable and
  panic windows, SLO p99 boost, slow stepwise scale-down), every 2 s;
- HPA-style: utilisation target 70%, 10% tolerance, 300 s down-stabilisation (the highest
  recommendation of the last 300 s), up at most doubling, every 15 s;
- Knative-KPA-style: the same concurrency target, 60 s stable and 6 s panic windows, panic
  at 200%, no scale-down while panicking, every 2 s.

It prints and writes ``benchmarks/results/autoscale.md`` (SLO-violation seconds, p99 and
replica-seconds per policy and trace) and ``autoscale.png``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.autoscaler.policy import Signals, State, decide
from gateway.config import ScalingPolicy

RESULTS = Path(__file__).parent / "results"
DT = 0.5
DURATION_S = 1800
MAX_BATCH = 32
STARTUP_S = 10.0
SLO_S = 0.050
TRANSPORT_S = 0.00013
TARGET_CONCURRENCY = 20.0  # in-flight requests per replica: about 70% busy with this service model
MIN_REPLICAS, MAX_REPLICAS = 1, 40


@dataclass(frozen=True)
class Service:
    """Batch time of one replica: a·rows + b seconds."""

    per_row_s: float
    per_batch_s: float

    def batch_time(self, rows: float) -> float:
        return self.per_batch_s + self.per_row_s * rows

    def capacity(self) -> float:
        return MAX_BATCH / self.batch_time(MAX_BATCH)


def measure_service() -> Service:
    """Fit a·rows + b on the real mlp model, one intra-op thread (what one replica runs)."""
    import onnxruntime as ort

    from gateway.demo import mlp_model

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mlp.onnx"
        path.write_bytes(mlp_model())
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        rows, times = [], []
        for batch in (1, 4, 8, 16, 32):
            feed = {"input": np.random.default_rng(0).standard_normal((batch, 512)).astype(np.float32)}
            session.run(None, feed)
            start = time.perf_counter()
            for _ in range(40):
                session.run(None, feed)
            rows.append(batch)
            times.append((time.perf_counter() - start) / 40)
    slope, intercept = np.polyfit(rows, times, 1)
    return Service(float(slope), float(intercept) + TRANSPORT_S)


def traces(capacity: float) -> dict[str, np.ndarray]:
    """Requests per second at each step; peaks reach ~12 replicas' worth of capacity."""
    t = np.arange(0, DURATION_S, DT)
    peak = 12 * capacity
    rng = np.random.default_rng(7)
    step = np.where((t >= 300) & (t < 1200), peak, peak / 8)
    ramp = peak / 10 + (peak - peak / 10) * np.clip(1 - np.abs(t - 900) / 900, 0, 1)
    spike = np.full_like(t, peak / 5)
    for start in (300, 900, 1500):
        spike[(t >= start) & (t < start + 30)] = peak
    diurnal = peak / 10 + (peak - peak / 10) * (1 - np.cos(2 * math.pi * t / DURATION_S)) / 2
    diurnal = diurnal * (1 + 0.08 * rng.standard_normal(len(t)))
    return {"step": step, "ramp": ramp, "spike": spike, "diurnal": np.clip(diurnal, 0, None)}


class Policy:
    name = "policy"
    period_s = 2.0

    def desired(self, now: float, current: int, history: History) -> int:
        raise NotImplementedError


class History:
    """What a metrics system would have: per-step in-flight, utilisation and latency."""

    def __init__(self) -> None:
        self.concurrency: deque[tuple[float, float]] = deque(maxlen=int(400 / DT))
        self.utilisation: deque[tuple[float, float]] = deque(maxlen=int(400 / DT))
        self.latency: deque[tuple[float, float]] = deque(maxlen=int(400 / DT))
        self.ready = 0

    @staticmethod
    def mean(series: deque[tuple[float, float]], now: float, window: float) -> float:
        values = [v for t, v in series if t > now - window]
        return float(np.mean(values)) if values else 0.0

    def p99(self, now: float, window: float) -> float | None:
        values = [v for t, v in self.latency if t > now - window]
        return float(np.percentile(values, 99)) if values else None


class Batchgate(Policy):
    name = "batchgate"

    def __init__(self) -> None:
        self.policy = ScalingPolicy(
            min_replicas=MIN_REPLICAS,
            max_replicas=MAX_REPLICAS,
            target_concurrency=TARGET_CONCURRENCY,
            stable_window_s=30,
            panic_window_s=6,
            panic_threshold=2.0,
            max_step_up=8,
            max_step_down=40,
            scale_down_delay_s=0,
        )
        self.state = State()

    def desired(self, now: float, current: int, history: History) -> int:
        window = self.policy.stable_window_s
        signals = Signals(
            History.mean(history.concurrency, now, window),
            History.mean(history.concurrency, now, 6),
            history.p99(now, 10),
            ready_replicas=history.ready,
        )
        decision = decide(signals, self.state, self.policy, current, now, SLO_S)
        self.state = decision.state
        return decision.desired


class HPA(Policy):
    name = "hpa"
    period_s = 15.0

    def __init__(self, target: float = 0.7) -> None:
        self.target = target
        self.recommendations: deque[tuple[float, int]] = deque()

    def desired(self, now: float, current: int, history: History) -> int:
        utilisation = History.mean(history.utilisation, now, 60)  # metrics-server's window
        ratio = utilisation / self.target
        wanted = current if abs(ratio - 1) <= 0.1 else math.ceil(current * ratio)
        wanted = min(max(wanted, MIN_REPLICAS), MAX_REPLICAS, max(2 * current, 4))
        self.recommendations.append((now, wanted))
        while self.recommendations[0][0] < now - 300:
            self.recommendations.popleft()
        if wanted < current:  # scale down only to the highest recommendation of the last 300 s
            wanted = max(r for _, r in self.recommendations)
        return min(wanted, MAX_REPLICAS)


class KPA(Policy):
    name = "knative"

    def __init__(self) -> None:
        self.panic_until = -1.0

    def desired(self, now: float, current: int, history: History) -> int:
        stable = math.ceil(History.mean(history.concurrency, now, 60) / TARGET_CONCURRENCY)
        panic = math.ceil(History.mean(history.concurrency, now, 6) / TARGET_CONCURRENCY)
        if current and panic / current >= 2.0:
            self.panic_until = now + 60
        wanted = max(stable, panic, current) if now < self.panic_until else stable
        return min(max(wanted, MIN_REPLICAS), MAX_REPLICAS)


@dataclass
class Outcome:
    times: np.ndarray
    replicas: np.ndarray
    latency: np.ndarray
    violation_s: float
    p99_ms: float
    replica_s: float


def simulate(trace: np.ndarray, policy: Policy, service: Service) -> Outcome:
    history = History()
    queue = 0.0
    ready = 2.0
    starting: list[tuple[float, int]] = []  # (ready at, count)
    target = 2
    next_decision = 0.0
    times, replicas, latencies, weights = [], [], [], []
    for index, rate in enumerate(trace):
        now = index * DT
        ready += sum(n for at, n in starting if at <= now)
        starting = [(at, n) for at, n in starting if at > now]
        live = max(ready, 1e-9)
        queue += rate * DT
        per_replica = queue / live
        batch = min(max(per_replica, 1.0), MAX_BATCH)
        throughput = live * batch / service.batch_time(batch)  # rows/s the pool can serve now
        served = min(queue, throughput * DT)
        queue -= served
        wait = queue / throughput if throughput > 0 else float("inf")
        latency = wait + service.batch_time(batch)
        busy = min(1.0, (served / DT) / (live * service.capacity()))
        history.concurrency.append((now, (served / DT) * latency + queue * 0))  # Little's law: in flight
        history.utilisation.append((now, busy))
        history.latency.append((now, latency))
        history.ready = round(ready)
        if now >= next_decision:
            next_decision = now + policy.period_s
            current = round(ready + sum(n for _, n in starting))
            target = policy.desired(now, current, history)
            if target > current:
                starting.append((now + STARTUP_S, target - current))
            elif target < current:
                remove = current - target
                ready = max(ready - remove, 0.0)  # drained replicas stop taking work at once
        times.append(now)
        replicas.append(ready + sum(n for _, n in starting))
        latencies.append(latency)
        weights.append(rate * DT)
    latency_array = np.asarray(latencies)
    order = np.argsort(latency_array)
    cumulative = np.cumsum(np.asarray(weights)[order])
    p99 = latency_array[order][np.searchsorted(cumulative, 0.99 * cumulative[-1])]
    return Outcome(
        np.asarray(times),
        np.asarray(replicas),
        latency_array,
        float(np.sum(latency_array > SLO_S) * DT),
        float(p99 * 1000),
        float(np.sum(replicas) * DT),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    service = measure_service()
    print(
        f"service model (mlp, 1 thread): {service.per_row_s * 1e6:.1f} us/row + "
        f"{service.per_batch_s * 1e6:.0f} us/batch; capacity {service.capacity():.0f} rows/s per replica"
    )
    factories: list[Callable[[], Policy]] = [Batchgate, HPA, KPA]
    results: dict[str, dict[str, Outcome]] = {}
    for name, trace in traces(service.capacity()).items():
        results[name] = {}
        for factory in factories:
            policy = factory()
            results[name][policy.name] = simulate(trace, policy, service)
    lines = [
        "# Autoscaling simulator: batchgate vs HPA-style vs Knative-KPA-style",
        "",
        "Command: `python -m benchmarks.autoscale_sim`  ",
        f"Service model measured on `mlp` (1 thread): {service.per_row_s * 1e6:.1f} µs/row + "
        f"{service.per_batch_s * 1e6:.0f} µs/batch, batches up to {MAX_BATCH}; replicas ready {STARTUP_S:g} s after "
        f"they are asked for; SLO p99 {SLO_S * 1000:g} ms; {DURATION_S} s per trace, open-loop arrivals.  ",
        "batchgate policy here: target concurrency 20/replica, stable window 30 s, panic 6 s at 200%, step up 8, "
        "step down 40, no extra scale-down delay (its p99 guard replaces Knative's longer window); Knative: the same "
        "target, 60 s / 6 s windows; HPA: 70% utilisation, 10% tolerance, 300 s down-stabilisation, 15 s period.",
        "",
        "| trace | policy | SLO-violation s | p99 ms | replica-seconds |",
        "|---|---|---:|---:|---:|",
    ]
    for trace_name, by_policy in results.items():
        for policy_name, outcome in by_policy.items():
            lines.append(
                f"| {trace_name} | {policy_name} | {outcome.violation_s:.1f} | {outcome.p99_ms:.1f} "
                f"| {outcome.replica_s:.0f} |"
            )
    verdicts = []
    for trace_name, by_policy in results.items():
        ours = by_policy["batchgate"]
        better = all(
            ours.violation_s < other.violation_s
            or (ours.violation_s == other.violation_s and ours.replica_s <= other.replica_s)
            for name, other in by_policy.items()
            if name != "batchgate"
        )
        verdicts.append(
            f"- {trace_name}: {'meets' if better else 'MISSES'} the target (fewer violation seconds than both "
            "baselines, or equal with fewer replica-seconds)"
        )
    lines += ["", *verdicts, ""]
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "autoscale.md").write_text(text)
    plot(results, args.out / "autoscale.png")
    print(text)


def plot(results: dict[str, dict[str, Outcome]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 2, figsize=(12, 3 * len(results)), squeeze=False)
    for row, (trace, by_policy) in enumerate(results.items()):
        for policy, outcome in by_policy.items():
            axes[row, 0].plot(outcome.times, outcome.replicas, label=policy)
            axes[row, 1].plot(outcome.times, np.minimum(outcome.latency * 1000, 500), label=policy)
        axes[row, 0].set_title(f"{trace}: replicas")
        axes[row, 1].set_title(f"{trace}: latency (ms, capped at 500)")
        axes[row, 1].axhline(SLO_S * 1000, color="red", linewidth=0.8)
        axes[row, 0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


if __name__ == "__main__":
    main()
