"""The repository poller loads the model folders whose files changed, leaves alone those
unloaded on purpose, and reads the disk on a thread, never on the event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from gateway.clock import MonotonicClock
from gateway.config import ServerConfig
from gateway.demo import mlp_model
from gateway.lifecycle import ModelManager
from gateway.metrics import Metrics
from gateway.router import Router
from tests.helpers import write_model


def test_changed_folders_are_loaded_and_the_disk_is_read_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    model = mlp_model((8, 16, 4), seed=1)
    for name in ("a", "b", "same"):
        write_model(root, name, model, {})
    clock = MonotonicClock()
    metrics = Metrics()
    manager = ModelManager(ServerConfig(model_repository=root), {}, Router(clock, metrics), metrics, clock)
    manager.unloaded.add("b")
    read_on: set[int] = set()
    looks = 0  # folders fingerprinted so far
    waiting: list[tuple[int, threading.Event]] = []
    fingerprint = manager.fingerprint

    def watched(name: str) -> tuple[tuple[str, int, int], ...]:
        nonlocal looks
        read_on.add(threading.get_ident())
        mark = fingerprint(name)
        looks += 1
        for count, event in waiting:
            if looks >= count:
                event.set()
        return mark

    def after(more: int) -> threading.Event:
        """Set once ``more`` folders more have been fingerprinted."""
        event = threading.Event()
        waiting.append((looks + more, event))
        return event

    monkeypatch.setattr(manager, "fingerprint", watched)
    loaded: list[str] = []

    async def main() -> None:
        async def load(name: str) -> None:
            loaded.append(name)

        monkeypatch.setattr(manager, "load", load)
        first_look = after(3)  # the poller's first look: a, b and same, as they were
        poller = asyncio.ensure_future(manager.poll(0.01))
        try:
            assert await asyncio.to_thread(first_look.wait, 10)
            write_model(root, ".staging", model, {})  # hidden: never a model
            (root / "a" / "config.yaml").write_text("batching: {max_batch_size: 8}\n")  # a changed config
            write_model(root, "a", model, version=2)  # and a new version
            write_model(root, "b", model, version=2)  # unloaded on purpose: stays so
            write_model(root, "c", model, {})  # a new model
            # Two whole looks at the four folders after all of that: the first may have
            # begun before the writes.
            assert await asyncio.to_thread(after(4 * 3).wait, 10)
        finally:
            poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        assert threading.get_ident() not in read_on

    asyncio.run(main())
    # Each once, or twice if a look fell between the writes; nothing else.
    assert set(loaded) == {"a", "c"}
    assert read_on
