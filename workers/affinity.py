"""Confining a process to some CPUs (Linux), given as a CPU list such as ``0`` or ``1-3,6``,
and counting the CPUs a process may use (:func:`usable_cpus`).

The gateway and its local workers can be kept off each other's cores: on a small machine
the gateway's event loop, which every request passes through, then never waits for a
core behind a worker computing a batch (``cpus`` in the server and pool configuration).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

_before: frozenset[int] | None = None  # this process's CPUs before confine() first changed them


def parse_cpus(text: str) -> frozenset[int]:
    """The CPUs a CPU list names; ValueError when it is malformed or names none."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{text!r} is not a CPU list such as '0' or '1-3,6'")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"{text!r}: the range {part.strip()} runs backwards")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def format_cpus(cpus: frozenset[int]) -> str:
    """The shortest CPU list for ``cpus`` (ranges where they run on)."""
    ordered = sorted(cpus)
    parts = []
    start = previous = ordered[0]
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == previous + 1:
            previous = cpu
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if cpu is not None:
            start = previous = cpu
    return ",".join(parts)


def each_thread(apply: Callable[[int], None]) -> None:
    """Call ``apply`` with the id of every thread of this process, threads that end meanwhile
    skipped. Threads already started (numpy's, uvloop's) keep their own affinity and policy,
    so a per-process setting must be applied to each. Other OSErrors propagate."""
    for task in os.listdir("/proc/self/task"):
        try:
            apply(int(task))
        except ProcessLookupError:
            continue  # that thread has ended


def confine(cpus: frozenset[int]) -> None:
    """Run this process, its threads now and every thread it starts later, on ``cpus`` only.

    OSError with the reason when the platform cannot, or some of ``cpus`` are not this
    machine's (or this container's) to use.
    """
    global _before
    if not hasattr(os, "sched_setaffinity"):
        raise OSError("CPU affinity is not supported on this platform")
    count = os.cpu_count() or 1
    absent = sorted(cpu for cpu in cpus if cpu >= count)
    if absent:
        raise OSError(f"CPUs {format_cpus(frozenset(absent))} do not exist here (CPUs 0-{count - 1})")
    current = frozenset(os.sched_getaffinity(0))
    try:
        each_thread(lambda thread: os.sched_setaffinity(thread, cpus))
    except OSError as exc:
        reason = f"{exc.strerror} (outside this container's set?)"
        raise OSError(f"cannot run on CPUs {format_cpus(cpus)}: {reason}") from None
    if _before is None:
        _before = current


def before_confined() -> frozenset[int] | None:
    """The CPUs this process had before :func:`confine` first changed them; None if it never did.

    Processes started afterwards inherit the confined set, so a worker spawned by a confined
    gateway is given this one back unless its pool names its own.
    """
    return _before


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """How many CPUs this process may keep busy: its CPU set (the one from before
    :func:`confine`, which workers are given back), capped by its cgroup's CPU quota.

    ``os.cpu_count()`` is the host's count: under ``taskset``, ``docker --cpuset-cpus``,
    ``docker --cpus 2`` or a Kubernetes CPU limit on a 64-core node it would size every
    replica's thread pool for 64 cores, and the kernel would throttle the threads that do
    not fit. A fractional quota rounds down (1.5 CPUs: 1), never below 1.
    """
    cpus = before_confined() or (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None)
    count = len(cpus) if cpus else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))
    return max(1, count)


def auto_threads(runs: int, cpus: int | None = None) -> int:
    """Threads per run that share ``cpus`` (default: the usable ones) between ``runs`` runs at
    once, so their thread pools fill the CPUs without fighting over them."""
    return max(1, (cpus or usable_cpus()) // max(runs, 1))


def cgroup_cpu_quota(root: Path, proc_cgroup: Path) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors; None when
    unlimited or unknown. cgroup v2 reads ``cpu.max``; v1 the cpu controller's CFS files."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    quotas: list[float] = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # v2: "0::/path"
            quotas += [q for d in _ancestors(root, path) if (q := _v2_quota(d / "cpu.max")) is not None]
        elif "cpu" in controllers.split(","):
            for mount in (root / controllers, root / "cpu", root / "cpu,cpuacct"):
                if mount.is_dir():
                    quotas += [q for d in _ancestors(mount, path) if (q := _v1_quota(d)) is not None]
                    break
    return min(quotas) if quotas else None


def _ancestors(root: Path, path: str) -> list[Path]:
    """``root/path`` and each folder above it up to ``root``, those that exist. Inside a
    container's cgroup namespace the path is ``/`` and ``root`` is the container's own."""
    parts = [part for part in path.split("/") if part and part != ".."]
    folders = [root.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [folder for folder in folders if folder.is_dir()]


def _v2_quota(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()[:2]
        if quota == "max":
            return None
        cpus = int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return cpus if cpus > 0 else None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:  # -1: unlimited
        return None
    return quota / period
