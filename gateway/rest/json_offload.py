"""Large JSON inference bodies, read and written in processes of their own.

``orjson.loads`` builds a body's Python objects in one C call that keeps the GIL, and the
tensors are then built from those objects: 7-10 ms per MB of JSON tensor data on the event
loop of the AMD VM (74-105 ms for 10.6 MB). Writing tensors as JSON costs about 3 ms per MB.
A thread would not help, and every other request on the gateway waits meanwhile. A request
body, or a response's JSON outputs, of ``http.json_offload_bytes`` or more is handled by a
JSON process (:mod:`gateway.rest.json_child`) instead; the loop only moves the bytes. For
10.6 MB its longest hold fell to 1.1-1.3 ms (read) and 0.7 ms (write);
``benchmarks/results/json_offload.md`` measures it on a serving gateway. Smaller bodies stay
on the loop, where they cost less than the trip.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import pickle
import socket
import sys
from collections.abc import Callable
from typing import Any

from gateway.codec import DecodeLimits
from gateway.codec.v2http import decode_request, encode_response
from gateway.errors import Unavailable
from gateway.rest.body import content_coded, decode_content, encode
from gateway.rest.json_child import HEADER, IDLE_RELEASE_S, LENGTH, pack, payload_size, unpack
from gateway.types import InferRequest, InferResponse

log = logging.getLogger("batchgate.rest")

COMPRESSION_WEIGHT = 4
"""A gzip or deflate body counts this many times its size: JSON numbers shrink about so much."""
CALL_TIMEOUT_S = 30.0
"""Longest a JSON process may take over one body (64 MB of JSON decodes in well under 2 s):
past it, the process is taken to be stuck, killed, and the request answered 503."""
JSON_BYTES_PER_VALUE = 10
"""What one output value takes as JSON text, about: an FP32 as orjson writes it, and its comma."""


def decode_body(
    model: str,
    version: str,
    raw: memoryview,
    coding: str | None,
    header_length: int | None,
    max_body_bytes: int,
    limits: DecodeLimits,
) -> InferRequest:
    """The request in ``raw`` (still content coded); what a JSON process runs for a request,
    with ``raw`` a view of the bytes it received."""
    body = decode_content(raw, coding, max_body_bytes)
    return decode_request(model, version, body, header_length, limits)


def encode_body(response: InferResponse, request: InferRequest, coding: str | None) -> tuple[bytes, int | None]:
    """The response's body (content coded when ``coding`` is given) and its JSON header's
    length when any output is binary; what a JSON process runs for a response."""
    payload, json_length = encode_response(response, request)
    return (payload if coding is None else encode(payload, coding)), json_length


def encode_body_aside(
    response: InferResponse, request: InferRequest, coding: str | None
) -> tuple[pickle.PickleBuffer, int | None]:
    """:func:`encode_body`, the body marked to travel beside the pickle: the gateway then
    keeps it as a view of the bytes it received, with no copy into a fresh ``bytes``."""
    payload, json_length = encode_body(response, request, coding)
    return pickle.PickleBuffer(payload), json_length


class ProcessGone(Exception):
    """The JSON process's end of the socket closed: it died."""


class JsonProcess:
    """One JSON process (:mod:`gateway.rest.json_child`) and the gateway's end of its socket.

    One call at a time. Both ways the loop moves the bytes a socket buffer at a time, and
    the large buffers (the body, the arrays) go beside the pickle rather than through it:
    moving 21 MB took 52 ms through a ``ProcessPoolExecutor``'s pipe and pickles, 18 ms
    through a socket pair on the same VM.
    """

    def __init__(self, process: asyncio.subprocess.Process, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock

    @classmethod
    async def start(cls, idle_release_s: float = IDLE_RELEASE_S) -> JsonProcess:
        """A new JSON process; its receive buffer goes back after ``idle_release_s`` without work."""
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.rest.json_child",
                str(theirs.fileno()),
                str(idle_release_s),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(process, ours)

    async def call(self, name: str, args: tuple[Any, ...]) -> tuple[bool, Any]:
        """``(ok, result)`` of ``name(*args)`` there, or ``(False, the exception it raised)``."""
        loop = asyncio.get_running_loop()
        for frame in pack((name, args)):
            await loop.sock_sendall(self.sock, frame)
        header = bytes(await self._exactly(HEADER.size))
        _, count = HEADER.unpack(header)
        lengths = bytes(await self._exactly(count * LENGTH.size)) if count else b""
        payload = await self._exactly(payload_size(header, lengths))
        answer: tuple[bool, Any] = unpack(header, lengths, payload)
        return answer

    async def _exactly(self, size: int) -> bytearray:
        loop = asyncio.get_running_loop()
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            count = await loop.sock_recv_into(self.sock, view[got:])
            if not count:
                raise ProcessGone(f"JSON process {self.process.pid} closed its socket")
            got += count
        return buffer

    def stop(self) -> None:
        """Close the socket: the process reads the end of it and exits."""
        self.sock.close()

    def kill(self) -> None:
        """For a process whose stream cannot be trusted (it died, or a call stopped halfway)."""
        self.sock.close()
        if self.process.returncode is None:
            try:
                self.process.kill()
            except ProcessLookupError:
                pass


class JsonOffload:
    """Up to ``processes`` JSON processes, each started when a large body finds none idle."""

    def __init__(
        self,
        min_bytes: int,
        processes: int,
        call_timeout_s: float = CALL_TIMEOUT_S,
        idle_release_s: float = IDLE_RELEASE_S,
    ) -> None:
        self.min_bytes = min_bytes
        self.processes = processes
        self.call_timeout_s = call_timeout_s
        self.idle_release_s = idle_release_s
        self._idle: list[JsonProcess] = []
        self._started = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._exiting: set[JsonProcess] = set()  # stopped or killed, not yet seen to exit
        self._closed = False

    def may_want_request(self, size: int) -> bool:
        """Whether a request body of ``size`` bytes could go to a JSON process, however it is
        coded or framed: False for nearly every request, decided before reading its headers."""
        return self.min_bytes > 0 and size * COMPRESSION_WEIGHT >= self.min_bytes

    def wants_request(self, size: int, coding: str | None, header_length: int | None) -> bool:
        """Whether a request body of ``size`` bytes goes to a JSON process: its JSON part is large.

        A binary request's JSON part is its header, and its tensors are views over the
        body, so only a large header sends it (with its tensors) to a JSON process.
        """
        if not self.may_want_request(size):
            return False
        if content_coded(coding):
            return True  # decoded, it may be COMPRESSION_WEIGHT times its size
        return (size if header_length is None else header_length) >= self.min_bytes

    def wants_response(self, json_values: int) -> bool:
        """Whether a response with ``json_values`` output values to write as JSON goes to a JSON process."""
        return self.min_bytes > 0 and json_values * JSON_BYTES_PER_VALUE >= self.min_bytes

    async def decode(
        self,
        model: str,
        version: str,
        raw: bytes,
        coding: str | None,
        header_length: int | None,
        max_body_bytes: int,
        limits: DecodeLimits,
    ) -> InferRequest:
        """:func:`decode_body` in a JSON process; its errors (400, 413) come back as raised there."""
        # Out of band: the body goes to the socket as it is, not copied into the pickle first.
        body = pickle.PickleBuffer(raw)
        request: InferRequest = await self._run(
            "decode", (model, version, body, coding, header_length, max_body_bytes, limits)
        )
        return request

    async def encode(
        self, response: InferResponse, request: InferRequest, coding: str | None
    ) -> tuple[memoryview, int | None]:
        """:func:`encode_body` in a JSON process; the body comes back as a view of the bytes received."""
        # What the encoding reads of the request: not its inputs, which would travel for nothing.
        wanted = InferRequest(request.model, request.version, [], request.outputs, binary_output=request.binary_output)
        encoded: tuple[memoryview, int | None] = await self._run("encode", (response, wanted, coding))
        return encoded

    async def _run(self, name: str, args: tuple[Any, ...]) -> Any:
        """``name(*args)`` in a JSON process. One that dies (the kernel's OOM killer, a signal)
        is replaced and the call tried once more, then answered 503."""
        for attempt in (1, 2):
            process = await self._acquire()
            try:
                async with asyncio.timeout(self.call_timeout_s):
                    ok, value = await process.call(name, args)
            except TimeoutError:  # listed before OSError, which it subclasses
                self._discard(process)
                log.error(
                    "JSON process %d took over %g s at %s; killed", process.process.pid, self.call_timeout_s, name
                )
                raise Unavailable(f"the JSON process did not answer within {self.call_timeout_s:g} s") from None
            except (ProcessGone, OSError) as exc:
                self._discard(process)
                log.warning("a JSON process died (attempt %d at %s): %s", attempt, name, exc)
                continue
            except BaseException:
                self._discard(process)  # cancelled halfway through a message: its stream is lost
                raise
            self._release(process)
            if ok:
                return value
            raise value
        raise Unavailable("the JSON process died twice on this request; send large tensors as binary")

    async def _acquire(self) -> JsonProcess:
        while True:
            if self._closed:
                raise Unavailable("gateway is shutting down")
            if self._idle:
                return self._idle.pop()
            if self._started < self.processes:
                self._started += 1
                try:
                    return await JsonProcess.start(self.idle_release_s)
                except BaseException as exc:
                    self._started -= 1
                    self._wake()
                    if isinstance(exc, OSError):  # out of processes or memory: the client may retry
                        log.error("cannot start a JSON process: %s", exc)
                        raise Unavailable(f"cannot start a JSON process: {exc}") from None
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken as it was cancelled: pass the turn on
                raise

    def _wake(self) -> None:
        """Let one waiting call look again: a process came free, or room to start one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, process: JsonProcess) -> None:
        if self._closed:
            self._retire(process, process.stop)
            return
        self._idle.append(process)
        self._wake()

    def _discard(self, process: JsonProcess) -> None:
        self._retire(process, process.kill)
        self._wake()

    def _retire(self, process: JsonProcess, how: Callable[[], None]) -> None:
        how()
        self._started -= 1
        self._exiting.add(process)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Refuse new bodies (503) and stop the processes: idle ones now, busy ones once their
        body is done; wait up to ``timeout_s`` for those stopped so far to exit, then kill them."""
        self._closed = True
        while self._idle:
            process = self._idle.pop()
            self._retire(process, process.stop)
        while self._waiters:
            self._wake()
        exiting, self._exiting = list(self._exiting), set()
        for process in exiting:
            try:
                await asyncio.wait_for(process.process.wait(), timeout_s)
            except TimeoutError:
                process.kill()
                await process.process.wait()
