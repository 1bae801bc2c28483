"""The core benchmark's results table (markdown) and plots (PNG), from one run's measurements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.measure import Row
from benchmarks.targets import OURS, batch1_reference, best_peer, best_raw, fmt, pair_added, pair_spaced, targets

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)


def _raw_table(raw: list[dict[str, Any]], model: str) -> list[str]:
    lines = ["| threads | " + " | ".join(f"b={b}" for b in BATCHES) + " |", "|---:|" + "---:|" * len(BATCHES)]
    for threads in (1, 2):
        cells = {r["batch"]: f"{r['items_per_s']:.0f}" for r in raw if r["model"] == model and r["threads"] == threads}
        lines.append(f"| {threads} | " + " | ".join(cells.get(b, "-") for b in BATCHES) + " |")
    best = best_raw(raw, model)
    lines += ["", f"Best: **{best['items_per_s']:.0f} items/s** at batch {best['batch']}, {best['threads']} threads."]
    return lines


def rounds_table(rounds: list[Row]) -> list[str]:
    """Each interleaved round of the 64-user comparison, and the ratios within it."""
    ours = [("batchgate", p) for p in ("json", "binary", "grpc") if any(r.protocol == p for r in rounds)]
    columns = [*ours, ("no-batching", "json")]
    series = {c: [r for r in rounds if (r.system, r.protocol) == c] for c in columns}
    count = min(len(v) for v in series.values())
    names = [f"batchgate {p}" for _, p in ours]
    lines = [
        "| round | " + " | ".join([*names, "no-batching json"]) + " | "
        + " | ".join(f"{p} / no-batching" for _, p in ours) + " |",
        "|---:|" + "---:|" * (len(columns) + len(ours)),
    ]  # fmt: skip
    for index in range(count):
        measured = [series[c][index] for c in columns]
        base = measured[-1]
        cells = [f"{r.items_per_s:.0f} (p99 {fmt(r.p99_ms, 1)})" for r in measured]
        ratios = [f"{r.items_per_s / base.items_per_s:.2f}x" for r in measured[:-1]]
        lines.append(f"| {index + 1} | " + " | ".join(cells + ratios) + " |")
    return lines


def _capacity_check(check: dict[str, float]) -> list[str]:
    """Whether the open-loop rate was still its share of the capacity once those runs were done
    (results from before the capacity was measured before each round: see :func:`_capacities`)."""
    if not check:
        return []
    before, after, rate = check["before"], check["after"], check["rate"]
    return [
        f"- capacity (peak `mlp` binary items/s) {before:.0f} before the open-loop runs and {after:.0f} right after "
        f"those at {rate:.0f}/s: that rate was {rate / before:.0%} of the first and {rate / after:.0%} of the second"
    ]


def _capacities(capacities: list[dict[str, float]]) -> list[str]:
    """The capacity measured before each open-loop round, and the rate it set for that round."""
    lines = []
    for share in sorted({c["share"] for c in capacities}, reverse=True):
        each = [c for c in capacities if c["share"] == share]
        lines.append(
            f"- capacity (peak `mlp` binary items/s) before each round at {share:.0%}: "
            + ", ".join(f"{c['capacity']:.0f}" for c in each)
            + "; so the rates "
            + ", ".join(f"{c['rate']:.0f}" for c in each)
            + "/s"
        )
    return lines


def cpus_text(meta: dict[str, Any]) -> str:
    """'2 CPUs', or '2 CPUs (of 16 on the host)' when the run was confined to some of them."""
    host = meta.get("host_cpus")
    return f"{meta['cpus']} CPUs" + (f" (of {host} on the host)" if host and host != meta["cpus"] else "")


def machine_text(meta: dict[str, Any]) -> str:
    """The Machine line's body: architecture and CPU model, CPUs, Python, the runtime's versions, date.

    Results written before the CPU model and the versions were recorded render as they did.
    """
    machine = meta["machine"] + (f" ({meta['cpu_model']})" if meta.get("cpu_model") else "")
    parts = [machine, cpus_text(meta), f"Python {meta['python']}"]
    parts += [f"{name} {version}" for name, version in meta.get("versions", {}).items()]
    return "; ".join([*parts, meta["date"]])


def open_loop_cpu(rows: list[Row]) -> list[str]:
    """Each open-loop run's CPU by process and CPU pressure: whether the work went to one
    worker or both, and how often something waited for a core, next to the tail it got."""
    runs = [r for r in rows if r.rate and r.cpu_by_process]
    if not runs:
        return []
    lines = [
        "",
        "## Open-loop runs: where the CPU went",
        "",
        "CPU in % of one core: the server's own process, then each of its child processes (batchgate's "
        "workers). Pressure: the share of the run in which some runnable task waited for a CPU "
        '(`/proc/pressure/cpu`, "some").',
        "",
        "| system | rate | p50 ms | p99 ms | p99/p50 | rows/batch | CPU: server / children | pressure |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in runs:
        ratio = r.p99_ms / r.p50_ms if r.p50_ms and r.p99_ms else None
        split = " / ".join(f"{share:.0f}" for share in r.cpu_by_process)
        lines.append(
            f"| {r.system} | {r.rate:.0f}/s | {fmt(r.p50_ms)} | {fmt(r.p99_ms)} | {fmt(ratio)} | "
            f"{fmt(r.rows_per_batch, 1)} | {split} | {fmt(r.cpu_pressure)} |"
        )
    return lines


def markdown(
    raw: list[dict[str, Any]],
    latency: dict[str, float],
    rows: list[Row],
    meta: dict[str, Any],
    rounds: list[Row] | None = None,
    xl_rounds: list[dict[str, Any]] | None = None,
) -> str:
    lines = [
        "# Core benchmark: batchgate vs raw ONNX Runtime vs peers",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {machine_text(meta)}  ",
        f"Load: one item per request, {meta['duration']} s measured after {meta['warmup']} s warm-up; closed loop "
        "(users) or open loop (Poisson arrivals at a rate, latency from the scheduled arrival). The load generator "
        "runs in its own process (its CPU share is reported): pre-encoded keep-alive HTTP/1.1, or for gRPC a minimal "
        "HTTP/2 client (`benchmarks/h2grpc.py`) that counts an answer only when its grpc-status is 0. Peers: "
        + meta["peers"],
        "",
        "## Targets (issue 8)",
        "",
        *targets(raw, latency, rows, rounds, xl_rounds, cpus=meta["cpus"]),
        *_capacity_check(meta.get("capacity_check") or {}),
        *_capacities(meta.get("capacities") or []),
        "",
    ]
    if rounds:
        lines += [
            "## 64 users, interleaved rounds (target 1)",
            "",
            "The machine's speed drifts by 10-25% over minutes, so target 1 compares medians of rounds "
            "that measure batchgate and the no-batching server one after another (items/s, p99 ms):",
            "",
            *rounds_table(rounds),
            "",
        ]
    for model in sorted({r["model"] for r in raw}):
        lines += [f"## Raw limit (in-process ONNX Runtime, `{model}`)", "", *_raw_table(raw, model), ""]
    if raw and all("runs" in r for r in raw):  # runs before 2026-11-27-c took the mean instead
        fewest = min(r["runs"] for r in raw)
        lines += [f"Each raw cell is the batch size over the median run (at least {fewest} runs per cell).", ""]
    lines += [
        "Raw batch-1 p50 (1 thread): " + ", ".join(f"`{m}` {v:.3f} ms" for m, v in latency.items()) + ".",
        "",
        "## Through the network",
        "",
        "| system | model | protocol | load | items/s | x raw best | x best peer | p50 ms | p99 ms | p99.9 ms | errors "
        "| rows/batch | server CPU % | server RSS MB | loadgen CPU % |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        raw_best = best_raw(raw, r.model)["items_per_s"] if any(x["model"] == r.model for x in raw) else None
        peer = best_peer(rows, r.model, r.users) if r.users else None
        load = f"{r.users} users" if r.users else f"{r.rate:.0f}/s open"
        lines.append(
            f"| {r.system} | {r.model} | {r.protocol} | {load} | {r.items_per_s:.0f} | "
            f"{fmt(r.items_per_s / raw_best if raw_best else None)} | "
            f"{fmt(r.items_per_s / peer.items_per_s if peer else None)} | {fmt(r.p50_ms)} | {fmt(r.p99_ms)} | "
            f"{fmt(r.p999_ms)} | {r.errors_text()} | {fmt(r.rows_per_batch, 1)} | {r.server_cpu_pct:.0f} | "
            f"{r.server_rss_mb:.0f} | "
            f"{r.loadgen_cpu_pct:.0f} |"
        )
    lines += open_loop_cpu(rows)
    lines += ["", "## Added latency at 1 user (p50 over raw batch-1 ORT on the threads the server runs it on)", ""]
    for r in rows:
        reference = batch1_reference(r, raw, latency, meta["cpus"]) if r.users == 1 else None
        if reference is not None and r.p50_ms is not None:
            base, label = reference
            pairs = f"; median of {len(r.lone_pairs)} pairs +{pair_added(r):.3f} ms" if r.lone_pairs else ""
            spaced = pair_spaced(r)
            if spaced is not None:
                pairs += f" ({spaced[1]:+.3f} over raw batch-1 with 1 ms idle before each run)"
            lines.append(f"- {r.system} `{r.model}` {r.protocol}: +{r.p50_ms - base:.3f} ms over {label}{pairs}")
    lines += ["", "![throughput, p99 and latency CDF](core.png)", ""]
    return "\n".join(lines)


def plot(rows: list[Row], out: Path) -> None:
    """Three panels: items/s against users, p99 against users (mlp), and latency CDFs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5))
    series: dict[str, list[Row]] = {}
    for r in rows:
        if r.model == "mlp" and r.users:
            series.setdefault(f"{r.system} {r.protocol}", []).append(r)
    for label, points in sorted(series.items()):
        points.sort(key=lambda r: r.users)
        users = [r.users for r in points]
        style = "-o" if points[0].system in OURS else "--s"
        left.plot(users, [r.items_per_s for r in points], style, label=label)
        middle.plot(users, [r.p99_ms for r in points], style, label=label)
    for axis, title, unit in ((left, "mlp: throughput", "items/s"), (middle, "mlp: p99 latency", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent users (closed loop)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    middle.set_yscale("log")
    plotted = set()
    for r in rows:
        if r.samples is None or r.samples in plotted or not (out / r.samples).exists():
            continue  # repeated runs share one samples file: the last run's
        plotted.add(r.samples)
        values = json.loads((out / r.samples).read_text())
        if not values:
            continue
        fractions = [(i + 1) / len(values) for i in range(len(values))]
        load = f"{r.users} users" if r.users else f"{r.rate:.0f}/s open"
        right.plot(values, fractions, label=f"{r.system} {r.model} {r.protocol} {load}")
    right.set_xscale("log")
    right.set_xlabel("latency (ms)")
    right.set_ylabel("fraction of requests")
    right.set_title("latency CDF")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "core.png", dpi=110)
    plt.close(figure)


def rerender(results: Path) -> None:
    """Write core.md and core.png again from core.json (after a change to this report)."""
    document = json.loads((results / "core.json").read_text())
    rows = [Row(**r) for r in document["rows"]]
    rounds = [Row(**r) for r in document.get("rounds", [])]
    xl_rounds = document.get("xl_rounds")
    text = markdown(document["raw"], document["raw_latency_ms"], rows, document["meta"], rounds, xl_rounds)
    (results / "core.md").write_text(text)
    plot(rows, results)


if __name__ == "__main__":
    import sys

    rerender(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results")
