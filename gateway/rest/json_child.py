"""A JSON process: decodes large requests and encodes large answers for its gateway.

Started by :class:`gateway.rest.json_offload.JsonOffload` as ``python -m
gateway.rest.json_child FD [IDLE_S]``, with one end of a socket pair as ``FD``. It answers one
message at a time until the gateway closes its end, or dies. A message is
:func:`pack`'s frames: a header, then a pickle (protocol 5) whose large buffers (the body, the
arrays) travel beside it rather than inside, so neither side copies them into or out of
the pickle stream.
"""

from __future__ import annotations

import pickle
import select
import signal
import socket
import struct
import sys
from typing import Any

from workers.allocator import give_back_freed_memory

HEADER = struct.Struct("<QQ")
"""Pickle length, buffer count; then one ``<Q`` length per buffer, the pickle, the buffers."""
LENGTH = struct.Struct("<Q")
IDLE_RELEASE_S = 30.0
"""A receive buffer left this long without a message is given back (``IDLE_S`` overrides)."""


def pack(value: Any) -> list[bytes | memoryview]:
    """``value`` as the frames of one message, its large buffers out of band."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    views = [buffer.raw() for buffer in buffers]
    lengths = b"".join(LENGTH.pack(view.nbytes) for view in views)
    return [HEADER.pack(len(data), len(views)) + lengths, data, *views]


def unpack(header: bytes, lengths: bytes, payload: bytearray | memoryview) -> Any:
    """The value of a message whose parts after the header arrived in ``payload``."""
    size, _ = HEADER.unpack(header)
    view = memoryview(payload)
    buffers = []
    offset = size
    for (length,) in LENGTH.iter_unpack(lengths):
        buffers.append(view[offset : offset + length])
        offset += length
    return pickle.loads(view[:size], buffers=buffers)


def payload_size(header: bytes, lengths: bytes) -> int:
    """Bytes after the header and the buffer lengths: the pickle and the buffers."""
    size: int = HEADER.unpack(header)[0]
    buffers: int = sum(length for (length,) in LENGTH.iter_unpack(lengths))
    return size + buffers


class _Receiver:
    """Reads messages off the socket into one buffer, kept between messages.

    A fresh 21 MB buffer cost 25-28 ms of page faults on the AMD VM before a byte of it was
    read; kept, it costs that once. It grows to the largest message seen, and is given back
    once ``idle_s`` pass without a message: a gateway that read one large body at start-up
    does not hold its size for good. Reusing it is safe because each answer is sent, arrays
    and all, before the next message is read.
    """

    def __init__(self, sock: socket.socket, idle_s: float = IDLE_RELEASE_S) -> None:
        self.sock = sock
        self.idle_s = idle_s
        self.buffer = bytearray()

    def _release_when_idle(self) -> None:
        """Wait for the next message; give the buffer back if none starts within ``idle_s``."""
        if self.buffer and not select.select([self.sock], [], [], self.idle_s)[0]:
            self.buffer = bytearray()
            give_back_freed_memory()

    def _exactly(self, size: int, into: memoryview) -> bool:
        got = 0
        while got < size:
            count = self.sock.recv_into(into[got:size])
            if not count:
                return False
            got += count
        return True

    def message(self) -> Any:
        """The next message's value; None once the gateway has closed its end."""
        self._release_when_idle()
        head = bytearray(HEADER.size)
        if not self._exactly(HEADER.size, memoryview(head)):
            return None
        _, count = HEADER.unpack(head)
        lengths = bytearray(count * LENGTH.size)
        if count and not self._exactly(len(lengths), memoryview(lengths)):
            return None
        size = payload_size(bytes(head), bytes(lengths))
        if size > len(self.buffer):
            self.buffer = bytearray(size)
        view = memoryview(self.buffer)[:size]
        if not self._exactly(size, view):
            return None
        return unpack(bytes(head), bytes(lengths), view)


def _answer(function: Any, args: tuple[Any, ...]) -> tuple[bool, Any]:
    try:
        return True, function(*args)
    except Exception as exc:
        try:
            pickle.dumps(exc, protocol=5)
        except Exception:
            return False, RuntimeError(f"{type(exc).__name__}: {exc}")
        return False, exc


def serve(sock: socket.socket, idle_s: float = IDLE_RELEASE_S) -> None:
    """Answer messages ``(name, args)`` with ``(ok, result or exception)`` until the other end closes."""
    from gateway.rest.json_offload import decode_body, encode_body_aside

    functions = {"decode": decode_body, "encode": encode_body_aside}
    receiver = _Receiver(sock, idle_s)
    while _answer_one(receiver, functions):
        pass


def _answer_one(receiver: _Receiver, functions: dict[str, Any]) -> bool:
    """Read one message and send its answer; False once the other end has closed.

    A function of its own so that nothing of the message outlives it: its arguments are
    views of the receive buffer, which could not be given back while they were held.
    """
    message = receiver.message()
    if message is None:
        return False
    name, args = message
    for frame in pack(_answer(functions[name], args)):
        receiver.sock.sendall(frame)
    return True


def main() -> None:
    # Ctrl+C reaches the whole process group; the gateway decides when its JSON processes stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    idle_s = float(sys.argv[2]) if len(sys.argv) > 2 else IDLE_RELEASE_S
    with socket.socket(fileno=int(sys.argv[1])) as sock:
        serve(sock, idle_s)


if __name__ == "__main__":
    main()
