"""Read locust's CSV output, judge it against an SLO, and plot it."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Measured:
    """The aggregated figures of one locust run."""

    protocol: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


@dataclass(frozen=True)
class SLO:
    """What a run must meet: p99 latency, error ratio, and a minimum throughput."""

    p99_ms: float
    max_error_ratio: float = 0.01
    min_rps: float = 1.0


def read_stats(prefix: Path, protocol: str) -> Measured:
    """The ``Aggregated`` row of ``<prefix>_stats.csv``."""
    with open(f"{prefix}_stats.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    if not rows:
        raise ValueError(f"{prefix}_stats.csv has no Aggregated row")
    row = rows[0]
    count = int(row["Request Count"])

    def number(key: str) -> float:
        value = row[key]
        return float(value) if value not in ("", "N/A") else float("nan")

    return Measured(
        protocol=protocol,
        requests=count,
        failures=int(row["Failure Count"]),
        rps=number("Requests/s"),
        p50_ms=number("50%"),
        p99_ms=number("99%"),
        mean_ms=number("Average Response Time"),
    )


def breaches(measured: Measured, slo: SLO) -> list[str]:
    """Each objective the run missed, as a phrase naming it and both numbers."""
    found = []
    if measured.requests == 0:
        return [f"{measured.protocol}: no request completed"]
    if not measured.p99_ms <= slo.p99_ms:
        found.append(f"{measured.protocol}: p99 {measured.p99_ms:.1f} ms > {slo.p99_ms:g} ms")
    if measured.error_ratio > slo.max_error_ratio:
        found.append(f"{measured.protocol}: error ratio {measured.error_ratio:.2%} > {slo.max_error_ratio:.2%}")
    if measured.rps < slo.min_rps:
        found.append(f"{measured.protocol}: throughput {measured.rps:.1f} req/s < {slo.min_rps:g} req/s")
    return found


def summary(results: list[Measured], slo: SLO, extra: dict[str, Any]) -> dict[str, Any]:
    problems = [b for m in results for b in breaches(m, slo)]
    return {
        "verdict": "fail" if problems else "pass",
        "breaches": problems,
        "slo": asdict(slo),
        "results": [{**asdict(m), "error_ratio": m.error_ratio} for m in results],
        **extra,
    }


def _history(prefix: Path) -> tuple[list[float], list[int], dict[str, list[float]]]:
    times: list[float] = []
    users: list[int] = []
    series: dict[str, list[float]] = {"50%": [], "95%": [], "99%": []}
    with open(f"{prefix}_stats_history.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    start = float(rows[0]["Timestamp"]) if rows else 0.0
    for row in rows:
        if row["50%"] in ("N/A", "", "0") or row["Total Request Count"] == "0":
            continue
        times.append(float(row["Timestamp"]) - start)
        users.append(int(row["User Count"]))
        for key in series:
            series[key].append(float(row[key]))
    return times, users, series


def plot(prefixes: dict[str, Path], slo: SLO, path: Path) -> None:
    """Latency percentiles (left axis) and users (right axis) over time, one panel per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(prefixes), 1, figsize=(9, 3.2 * len(prefixes)), squeeze=False)
    for axis, (protocol, prefix) in zip(axes[:, 0], prefixes.items(), strict=True):
        times, users, series = _history(prefix)
        for key, style in (("50%", "-"), ("95%", "--"), ("99%", ":")):
            axis.plot(times, series[key], style, label=f"p{key.rstrip('%')}")
        axis.axhline(slo.p99_ms, color="red", linewidth=0.8, label=f"SLO p99 {slo.p99_ms:g} ms")
        axis.set_ylabel("latency (ms)")
        axis.set_title(protocol)
        twin = axis.twinx()
        twin.fill_between(times, users, step="post", alpha=0.15, color="grey")
        twin.set_ylabel("users")
        axis.legend(loc="upper left", fontsize="small")
    axes[-1, 0].set_xlabel("seconds since start")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
