"""workers.allocator: large buffers freed and allocated again stop costing fresh pages, and
freed memory goes back to the kernel when a process asks.

Each case runs in a fresh interpreter, since the setting is process-wide and cannot be undone.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc alone")

# Copies of about 1 MiB whose sizes change each round, as request bodies and batches do.
CHURN = """
import os, resource, sys
from workers.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else None
blob = os.urandom(1 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(100):
    parts = [blob[: (1 << 20) - i], blob + b"x" * (i * 4096), bytearray(blob)]
    joined = b"".join(parts)
    del parts, joined
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 100
print(applied, faults)
"""


def churn(mode: str, **env: str) -> tuple[str, float]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    environment.pop("LD_PRELOAD", None)
    environment.update(env, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True, env=environment, timeout=60
    ).stdout.split()
    return out[0], float(out[1])


def test_freed_batch_buffers_are_reused_instead_of_faulted_in_again() -> None:
    applied, tuned = churn("on")
    _, default = churn("off")
    assert applied == "True"
    # glibc's defaults hand each ~3 MiB of copies back to the kernel: hundreds of faults a round.
    assert default > 200
    assert tuned < default / 10


def test_a_users_own_malloc_setting_is_left_alone() -> None:
    applied, faults = churn("on", MALLOC_TRIM_THRESHOLD_="0")
    assert applied == "False"
    assert faults > 200  # their setting (trim at once) holds, not ours


# A heap block kept after its free (the thresholds above), then given back on request.
GIVE_BACK = """
import sys
from workers.allocator import give_back_freed_memory, keep_freed_memory

def rss_mb():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) / 1024

keep_freed_memory()
blocks = [bytearray(8 << 20) for _ in range(6)]  # 48 MiB on the heap: each is under the mmap threshold
held = rss_mb()
del blocks
kept = rss_mb()
gave = give_back_freed_memory()
print(held, kept, rss_mb(), gave)
"""


def test_freed_heap_memory_goes_back_when_asked() -> None:
    out = subprocess.run(
        [sys.executable, "-c", GIVE_BACK],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    ).stdout.split()
    held, kept, after, gave = float(out[0]), float(out[1]), float(out[2]), out[3]
    assert kept > held - 8  # freed, but kept mapped: under the trim threshold
    assert gave == "True" and after < kept - 40
