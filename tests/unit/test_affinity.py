"""CPU lists and confining a process to them (workers/affinity.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from workers.affinity import cgroup_cpu_quota, format_cpus, parse_cpus, usable_cpus


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


def _cgroup_v2(root: Path, path: str, limits: dict[str, str]) -> Path:
    """A cgroup v2 tree under ``root`` with ``cpu.max`` where ``limits`` says; the process's line."""
    for folder, text in limits.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(text + "\n")
    (root / path.strip("/")).mkdir(parents=True, exist_ok=True)
    proc = root / "proc-self-cgroup"
    proc.write_text(f"0::{path}\n")
    return proc


def test_the_tightest_cgroup_v2_quota_on_the_way_up_is_the_limit(tmp_path: Path) -> None:
    """A Kubernetes pod: the pod's cgroup caps at 2.5 CPUs, the container's below it at 4."""
    proc = _cgroup_v2(tmp_path, "/kubepods/pod1/ctr", {"kubepods": "max 100000", "kubepods/pod1": "250000 100000",
                                                       "kubepods/pod1/ctr": "400000 100000"})  # fmt: skip
    assert cgroup_cpu_quota(tmp_path, proc) == 2.5
    assert usable_cpus(tmp_path, proc) == min(len(os.sched_getaffinity(0)), 2)


def test_no_quota_leaves_the_cpu_set_and_a_fraction_rounds_down_to_at_least_one(tmp_path: Path) -> None:
    unlimited = _cgroup_v2(tmp_path / "a", "/", {"": "max 100000"})
    assert cgroup_cpu_quota(tmp_path / "a", unlimited) is None
    assert usable_cpus(tmp_path / "a", unlimited) == len(os.sched_getaffinity(0))
    half = _cgroup_v2(tmp_path / "b", "/", {"": "50000 100000"})
    assert usable_cpus(tmp_path / "b", half) == 1
    assert usable_cpus(tmp_path / "none", tmp_path / "missing") == len(os.sched_getaffinity(0))
    for text in ("garbage", "abc 100000", "100000 0", "max", ""):  # unreadable: no quota, not a crash
        broken = _cgroup_v2(tmp_path / "broken", "/", {"": text})
        assert cgroup_cpu_quota(tmp_path / "broken", broken) is None, text


def test_a_cgroup_v1_cfs_quota_is_read_from_the_cpu_controller(tmp_path: Path) -> None:
    folder = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("300000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cgroup_cpu_quota(tmp_path, proc) == 3.0
    (folder / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert cgroup_cpu_quota(tmp_path, proc) is None


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU affinity")
def test_worker_threads_follow_the_cpu_set_not_the_host_count() -> None:
    """Under taskset (or a container's cpuset) on one CPU, auto threads are 1 whatever the host has."""
    cpu = min(os.sched_getaffinity(0))
    script = f"""
import os
os.sched_setaffinity(0, {{{cpu}}})
from workers.affinity import auto_threads, usable_cpus
print(usable_cpus(), auto_threads(1))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]
