"""Free ports for loopback servers: chosen where outgoing connections never take them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway import ports


def _range_file(tmp_path: Path, low: int, high: int) -> Path:
    path = tmp_path / "ip_local_port_range"
    path.write_text(f"{low}\t{high}\n")
    return path


def test_ports_come_from_below_the_ephemeral_range(tmp_path: Path) -> None:
    path = _range_file(tmp_path, 32768, 60999)
    chosen = {ports.free_port(path=path) for _ in range(20)}
    assert all(ports.LOWEST <= port < 32768 for port in chosen)
    for port in chosen:  # and each is free to bind
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _range_file(tmp_path, 32768, 60999)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with socket.socket() as probe:  # a free one below the range to be offered second
            probe.bind(("127.0.0.1", 0))
            spare = probe.getsockname()[1]
        offers = iter([busy, spare])
        monkeypatch.setattr(ports.random, "randrange", lambda _low, _high: next(offers))
        assert ports.free_port(path=path) == spare


@pytest.mark.parametrize("text", ["", "not numbers", "32768"])
def test_an_unreadable_range_falls_back_to_the_kernel(tmp_path: Path, text: str) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text(text)
    assert ports.ephemeral_range(path) is None
    assert 0 < ports.free_port(path=path) < 65536
    assert ports.ephemeral_range(tmp_path / "absent") is None


def test_a_range_with_no_room_below_falls_back_to_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _range_file(tmp_path, ports.LOWEST + 10, 60999)

    def never(_low: int, _high: int) -> int:
        raise AssertionError("no port should be drawn from a range this small")

    monkeypatch.setattr(ports.random, "randrange", never)
    assert 0 < ports.free_port(path=path) < 65536
