"""The benchmark's process tree walk, which a server's threads and workers may leave mid-walk."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.measure import proc_tree


def test_the_tree_holds_the_process_and_its_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        tree = proc_tree(os.getpid())
        assert tree[0] == os.getpid()
        assert child.pid in tree
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


def test_a_process_that_has_ended_is_its_own_tree() -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait(timeout=30)
    assert proc_tree(ended.pid) == [ended.pid]


def test_a_thread_that_ends_between_the_listing_and_the_read_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The race, made certain: the listing names a thread that is no longer there.

    Its id is ``pid_max``, which no thread can have (ids run below it); a thread that has just
    been joined may still be listed by the kernel for a moment, so it would not make this certain.
    """
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    gone = Path(f"/proc/{os.getpid()}/task/{pid_max}")
    assert not gone.exists()
    listing = Path.iterdir

    def iterdir_with_the_ended_thread(self: Path) -> Iterator[Path]:
        yield from listing(self)
        if self == gone.parent:
            yield gone

    monkeypatch.setattr(Path, "iterdir", iterdir_with_the_ended_thread)
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert child.pid in proc_tree(os.getpid())
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
