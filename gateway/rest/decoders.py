"""Large JSON inference bodies, decoded in a process of their own.

``orjson.loads`` builds a body's Python objects in one C call that keeps the GIL, and the
tensors are then built from those objects: about 5 ms per MB of JSON tensor data on the
event loop (0.5 MB 2.6 ms, 1 MB 5.2 ms, 10 MB 73 ms on the AMD VM). A thread would not
help, and every other request on the gateway waits meanwhile. A body at or above
``http.json_offload_bytes`` is decoded (content coding included) by a small pool of
spawned processes instead; the loop only hands the bytes over and takes back the request
with its arrays: the longest hold of the loop for a 10 MB body fell from 73 to 1.7 ms,
for 4-8 ms more latency on the large request itself (HISTORY, the thirty-first session).
Smaller bodies stay on the loop, where they cost less than the trip.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from gateway.codec import DecodeLimits
from gateway.codec.v2http import decode_request
from gateway.errors import Unavailable
from gateway.rest.body import decode_content
from gateway.types import InferRequest

log = logging.getLogger("batchgate.rest")

COMPRESSION_WEIGHT = 4
"""A gzip or deflate body counts this many times its size: JSON numbers shrink about so much."""


def decode_body(
    model: str,
    version: str,
    raw: bytes,
    coding: str | None,
    header_length: int | None,
    max_body_bytes: int,
    limits: DecodeLimits,
) -> InferRequest:
    """The request in ``raw`` (still content coded); what a decoder process runs."""
    body = decode_content(raw, coding, max_body_bytes)
    return decode_request(model, version, body, header_length, limits)


def _decoder_started() -> None:
    # Ctrl+C reaches the whole process group; the gateway decides when its decoders stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class DecoderPool:
    """Processes that decode large JSON bodies; started at the first such body."""

    def __init__(self, min_bytes: int, processes: int) -> None:
        self.min_bytes = min_bytes
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    def wants(self, size: int, coding: str | None, header_length: int | None) -> bool:
        """Whether a body of ``size`` bytes goes to a decoder: its JSON part is large.

        A binary request's JSON part is its header, and its tensors are views over the
        body, so only a large header sends it (with its tensors) to a decoder.
        """
        if self.min_bytes <= 0:
            return False
        if coding is not None and coding.strip().lower() not in ("", "identity"):
            return size * COMPRESSION_WEIGHT >= self.min_bytes
        return (size if header_length is None else header_length) >= self.min_bytes

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
        """:func:`decode_body` in a decoder process; its errors (400, 413) come back as raised there.

        A decoder that dies (the kernel's OOM killer, a signal) takes its pool with it: the
        pool is started afresh and the body tried once more, then answered 503.
        """
        for attempt in (1, 2):
            executor = self._running()
            try:
                future = executor.submit(
                    decode_body, model, version, raw, coding, header_length, max_body_bytes, limits
                )
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                self._forget(executor)
                log.warning("a JSON decoder process died (attempt %d for a %d-byte body)", attempt, len(raw))
        raise Unavailable("the JSON decoder process died twice on this request; send large tensors as binary")

    def _running(self) -> ProcessPoolExecutor:
        if self._closed:
            raise Unavailable("gateway is shutting down")
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_decoder_started
            )
        return self._executor

    def _forget(self, executor: ProcessPoolExecutor) -> None:
        if self._executor is executor:
            self._executor = None
        executor.shutdown(wait=False)

    def close(self) -> None:
        """Stop taking bodies (503 from now on); the decoders finish those they have, then exit."""
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
