"""The hold benchmark's summary: per load, each variant's medians over rounds, from made-up runs."""

from __future__ import annotations

from benchmarks.hold import summary
from benchmarks.measure import Row


def _run(variant: str, p50: float, p99: float, cpu: float, rate: float = 0.0, users: int = 0) -> Row:
    items = rate or 9000.0
    return Row(variant, "mlp", "binary", users, items, p50, p99, p99 * 1.5, 0, cpu, 300.0, 15.0, rate=rate)


def test_each_load_gets_one_line_per_variant_with_its_medians() -> None:
    rows = [
        _run("hold", 2.0, 9.0, 160.0, rate=2200),
        _run("no-hold", 4.5, 22.0, 310.0, rate=2200),
        _run("hold", 2.6, 8.8, 170.0, rate=2200),
        _run("no-hold", 3.2, 26.0, 320.0, rate=2200),
        _run("hold", 2.7, 3.5, 165.0, rate=2200),
        _run("no-hold", 5.7, 4.0, 314.0, rate=2200),
        _run("hold", 6.5, 9.4, 227.0, users=64),
    ]
    lines = summary(rows)
    assert lines[2] == "| 2200/s open | hold | 3 | 2200 | 2.60 | 8.80 | 0 | 0.0 | 165 |"
    assert lines[3] == "| 2200/s open | no-hold | 3 | 2200 | 4.50 | 22.00 | 0 | 0.0 | 314 |"
    assert lines[4] == "| 64 users | hold | 1 | 9000 | 6.50 | 9.40 | 0 | 0.0 | 227 |"
    assert len(lines) == 5  # no line for a variant without runs at that load
