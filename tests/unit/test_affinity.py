"""CPU lists and confining a process to them (workers/affinity.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from workers.affinity import format_cpus, parse_cpus


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", {0}), ("1-3", {1, 2, 3}), ("0,2-3,7", {0, 2, 3, 7}), (" 4 , 5 ", {4, 5}), ("3-3", {3})],
)
def test_cpu_lists_name_the_cpus_linux_would(text: str, cpus: set[int]) -> None:
    assert parse_cpus(text) == cpus
    assert parse_cpus(format_cpus(frozenset(cpus))) == cpus


def test_the_shortest_list_uses_ranges_where_the_cpus_run_on() -> None:
    assert format_cpus(frozenset({0, 1, 2, 4, 6, 7})) == "0-2,4,6-7"


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "3-1", "1,,2", "0x1"])
def test_a_malformed_list_is_refused_with_what_was_given(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_cpus(text)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU affinity")
def test_a_confined_process_and_the_threads_it_had_run_only_there() -> None:
    """In a child process: confining must also move the threads started before it."""
    cpu = min(os.sched_getaffinity(0))
    script = f"""
import os, threading
from workers.affinity import before_confined, confine
started = threading.Event(); done = threading.Event()
seen = []
def early():
    started.set(); done.wait(10); seen.append(os.sched_getaffinity(0))
thread = threading.Thread(target=early); thread.start(); started.wait(10)
before = frozenset(os.sched_getaffinity(0))
confine(frozenset({{{cpu}}}))
done.set(); thread.join(10)
assert os.sched_getaffinity(0) == {{{cpu}}}, os.sched_getaffinity(0)
assert seen == [{{{cpu}}}], seen
assert before_confined() == before
try:
    confine(frozenset({{(os.cpu_count() or 1) + 5}}))
except OSError as exc:
    assert "do not exist here" in str(exc), exc
else:
    raise AssertionError("a CPU that does not exist was accepted")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
