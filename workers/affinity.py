"""Confining a process to some CPUs (Linux), given as a CPU list such as ``0`` or ``1-3,6``.

The gateway and its local workers can be kept off each other's cores: on a small machine
the gateway's event loop, which every request passes through, then never waits for a
core behind a worker computing a batch (``cpus`` in the server and pool configuration).
"""

from __future__ import annotations

import os
from collections.abc import Callable

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
