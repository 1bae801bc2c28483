"""Large JSON inference bodies, decoded and encoded in processes of their own.

``orjson.loads`` builds a body's Python objects in one C call that keeps the GIL, and the
tensors are then built from those objects: about 5 ms per MB of JSON tensor data on the
event loop (0.5 MB 2.6 ms, 1 MB 5.2 ms, 10 MB 73 ms on the AMD VM). Writing a response's
tensors as JSON costs about half that (10.6 MB, a million FP32 values: 29 ms). A thread
would not help, and every other request on the gateway waits meanwhile. A request body, or
a response's JSON outputs, of ``http.json_offload_bytes`` or more is handled by a small pool
of spawned processes instead; the loop only hands the bytes or arrays over and takes back
the result. For a 10 MB body the longest hold of the loop fell from 73 to 1.7 ms, at 3-5 ms
per MB more latency for the large request itself (moving the bytes between processes);
``benchmarks/results/json_offload.md`` measures it on a serving gateway. Smaller bodies stay
on the loop, where they cost less than the trip.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from gateway.codec import DecodeLimits
from gateway.codec.v2http import decode_request, encode_response
from gateway.errors import Unavailable
from gateway.rest.body import decode_content, encode
from gateway.types import InferRequest, InferResponse

log = logging.getLogger("batchgate.rest")

COMPRESSION_WEIGHT = 4
"""A gzip or deflate body counts this many times its size: JSON numbers shrink about so much."""
JSON_BYTES_PER_VALUE = 10
"""What one output value takes as JSON text, about: an FP32 as orjson writes it, and its comma."""

T = TypeVar("T")


def decode_body(
    model: str,
    version: str,
    raw: bytes,
    coding: str | None,
    header_length: int | None,
    max_body_bytes: int,
    limits: DecodeLimits,
) -> InferRequest:
    """The request in ``raw`` (still content coded); what a JSON process runs for a request."""
    body = decode_content(raw, coding, max_body_bytes)
    return decode_request(model, version, body, header_length, limits)


def encode_body(response: InferResponse, request: InferRequest, coding: str | None) -> tuple[bytes, int | None]:
    """The response's body (content coded when ``coding`` is given) and its JSON header's
    length when any output is binary; what a JSON process runs for a response."""
    payload, json_length = encode_response(response, request)
    return (payload if coding is None else encode(payload, coding)), json_length


def _started() -> None:
    # Ctrl+C reaches the whole process group; the gateway decides when its JSON processes stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class JsonOffload:
    """Processes that decode large JSON requests and encode large JSON responses; started at
    the first such body."""

    def __init__(self, min_bytes: int, processes: int) -> None:
        self.min_bytes = min_bytes
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    def wants_request(self, size: int, coding: str | None, header_length: int | None) -> bool:
        """Whether a request body of ``size`` bytes goes to a JSON process: its JSON part is large.

        A binary request's JSON part is its header, and its tensors are views over the
        body, so only a large header sends it (with its tensors) to a JSON process.
        """
        if self.min_bytes <= 0:
            return False
        if coding is not None and coding.strip().lower() not in ("", "identity"):
            return size * COMPRESSION_WEIGHT >= self.min_bytes
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
        return await self._run(decode_body, model, version, raw, coding, header_length, max_body_bytes, limits)

    async def encode(
        self, response: InferResponse, request: InferRequest, coding: str | None
    ) -> tuple[bytes, int | None]:
        """:func:`encode_body` in a JSON process."""
        # What the encoding reads of the request: not its inputs, which would travel for nothing.
        wanted = InferRequest(request.model, request.version, [], request.outputs, binary_output=request.binary_output)
        return await self._run(encode_body, response, wanted, coding)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a JSON process. One that dies (the kernel's OOM killer, a
        signal) takes its pool with it: the pool is started afresh and the call tried once
        more, then answered 503."""
        for attempt in (1, 2):
            executor = self._running()
            try:
                return await asyncio.wrap_future(executor.submit(function, *args))
            except BrokenProcessPool:
                self._forget(executor)
                log.warning("a JSON process died (attempt %d of %s)", attempt, function.__name__)
        raise Unavailable("the JSON process died twice on this request; send large tensors as binary")

    def _running(self) -> ProcessPoolExecutor:
        if self._closed:
            raise Unavailable("gateway is shutting down")
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_started
            )
        return self._executor

    def _forget(self, executor: ProcessPoolExecutor) -> None:
        if self._executor is executor:
            self._executor = None
        executor.shutdown(wait=False)

    def close(self) -> None:
        """Stop taking bodies (503 from now on); the processes finish those they have, then exit."""
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
