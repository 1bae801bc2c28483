"""Frames out of one HTTP/2 connection, held to the peer's windows (gateway/grpc_api/h2send.py)."""

from __future__ import annotations

from gateway.grpc_api import h2wire as wire
from gateway.grpc_api.h2send import Outbox, Stream


def _frames(outbox: Outbox) -> list[tuple[int, int, int, bytes]]:
    """The queued frames as (kind, flags, stream, payload), taken out of the outbox."""
    buffer = bytearray(b"".join(outbox.frames))
    outbox.frames.clear()
    found, at = [], 0
    while (parsed := wire.next_frame(buffer, at, 1 << 24)) is not None:
        kind, flags, stream, payload, at = parsed
        found.append((kind, flags, stream, payload))
    return found


def _outbox() -> tuple[Outbox, list[int]]:
    ended: list[int] = []
    return Outbox(lambda stream: ended.append(stream.id)), ended


def test_an_answer_within_the_windows_leaves_whole_then_ends_with_ok_trailers() -> None:
    outbox, ended = _outbox()
    outbox.answer(Stream(1, remote_closed=True), b"m" * 100)
    frames = _frames(outbox)
    assert [(kind, flags) for kind, flags, _, _ in frames] == [
        (wire.HEADERS, wire.END_HEADERS),
        (wire.DATA, 0),
        (wire.HEADERS, wire.END_STREAM | wire.END_HEADERS),
    ]
    assert frames[1][3] == b"m" * 100 and frames[2][3] == wire.OK_TRAILERS
    assert ended == [1]


def test_the_stream_window_holds_the_rest_until_the_peer_widens_it() -> None:
    outbox, ended = _outbox()
    outbox.peer_stream_window = 40
    stream = Stream(3, remote_closed=True)
    outbox.answer(stream, b"a" * 100)
    assert [len(p) for kind, _, _, p in _frames(outbox) if kind == wire.DATA] == [40]
    assert ended == [] and 3 in outbox.waiting and 3 not in outbox.blocked
    assert outbox.widen_stream(stream, 60)
    frames = _frames(outbox)
    assert [len(p) for kind, _, _, p in frames if kind == wire.DATA] == [60]
    assert frames[-1][1] & wire.END_STREAM and ended == [3] and not outbox.waiting


def test_a_connection_window_update_moves_only_the_streams_it_blocked() -> None:
    outbox, ended = _outbox()
    outbox.send_window = 10
    first, second = Stream(1, remote_closed=True), Stream(3, remote_closed=True)
    outbox.answer(first, b"x" * 30)
    outbox.answer(second, b"y" * 30)
    assert set(outbox.blocked) == {1, 3}
    _frames(outbox)
    assert outbox.widen(100)
    data = [(s, len(p)) for kind, _, s, p in _frames(outbox) if kind == wire.DATA]
    assert data == [(1, 20), (3, 30)]
    assert ended == [1, 3] and not outbox.blocked


def test_windows_past_the_protocols_maximum_are_refused() -> None:
    outbox, _ = _outbox()
    assert not outbox.widen(wire.MAX_WINDOW)
    assert not outbox.widen_stream(Stream(1), wire.MAX_WINDOW)


def test_a_grown_initial_window_releases_every_waiting_answer() -> None:
    outbox, ended = _outbox()
    outbox.peer_stream_window = 0
    outbox.answer(Stream(1, remote_closed=True), b"a" * 10)
    outbox.answer(Stream(3, remote_closed=True), b"b" * 10)
    _frames(outbox)
    outbox.initial_window(1000)
    assert ended == [1, 3]


def test_a_long_header_block_is_split_into_continuations() -> None:
    outbox, ended = _outbox()
    outbox.peer_frame = 16
    outbox.block(Stream(5, remote_closed=True), bytes(range(40)), end=True)
    frames = _frames(outbox)
    assert [(kind, flags) for kind, flags, _, _ in frames] == [
        (wire.HEADERS, wire.END_STREAM),
        (wire.CONTINUATION, 0),
        (wire.CONTINUATION, wire.END_HEADERS),
    ]
    assert b"".join(p for _, _, _, p in frames) == bytes(range(40)) and ended == [5]


def test_an_answer_before_the_request_ended_resets_the_rest_of_it() -> None:
    outbox, ended = _outbox()
    outbox.block(Stream(7, remote_closed=False), wire.status_block(8, "too large", (), True), end=True)
    kind, _, stream, payload = _frames(outbox)[-1]
    assert (kind, stream, int.from_bytes(payload, "big")) == (wire.RST_STREAM, 7, wire.NO_ERROR)
    assert ended == [7]
