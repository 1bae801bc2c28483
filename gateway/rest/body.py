"""Reading request bodies within limits, and content codings (gzip, deflate) both ways."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from typing import TypeVar

from starlette.requests import Request
from starlette.types import Receive

from gateway.errors import Cancelled, InvalidInput, PayloadTooLarge, RequestTimeout

BodyT = TypeVar("BodyT", bytes, memoryview)
"""A body as the loop holds it (bytes), or as a JSON process received it (a view of its buffer)."""

_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def read_body(request: Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The whole body, refusing more than ``limit`` bytes (before or after decompression) or a
    client that takes longer than ``timeout_s`` to send it (slow-loris)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        check_declared(declared, limit)
    body = await receive_body(request.receive, limit, timeout_s)
    return decode_content(body, request.headers.get("content-encoding"), limit)


def check_declared(declared: str, limit: int) -> None:
    """413 at once for a Content-Length over ``limit`` (400 if it is not a number)."""
    try:
        size = int(declared)
    except ValueError:
        raise InvalidInput(f"Content-Length {declared!r} is not a number") from None
    if size > limit:
        raise PayloadTooLarge(f"request body of {size} bytes exceeds the {limit}-byte limit")


async def receive_body(receive: Receive, limit: int, timeout_s: float) -> bytes:
    """The raw body from ASGI ``receive``: 413 past ``limit`` bytes, 408 past ``timeout_s``,
    :class:`Cancelled` if the client goes away first."""
    chunks = []
    received = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Cancelled("client disconnected")
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout_s:g}s") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def content_coded(content_encoding: str | None) -> bool:
    """Whether a Content-Encoding value names a coding (gzip, deflate, or one refused), not identity."""
    return (content_encoding or "").strip().lower() not in ("", "identity")


def decode_content(body: BodyT, content_encoding: str | None, limit: int) -> BodyT | bytes:
    """The body without its content coding (gzip, deflate), still within ``limit`` bytes."""
    if not content_coded(content_encoding):
        return body
    coding = (content_encoding or "").strip().lower()
    wbits = _DECODERS.get(coding)
    if wbits is None:
        raise InvalidInput(f"unsupported Content-Encoding {coding!r}; use gzip or deflate")
    decoder = zlib.decompressobj(wbits)
    try:
        plain = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {coding}: {exc}") from None
    if len(plain) > limit or decoder.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body exceeds the {limit}-byte limit")
    return plain


def pick_encoding(accept: str | None) -> str | None:
    """gzip or deflate when the client accepts it (and did not give it q=0)."""
    if not accept:
        return None
    offered = {}
    for part in accept.lower().split(","):
        name, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        offered[name.strip()] = quality
    for name in ("gzip", "deflate"):
        if offered.get(name, 0.0) > 0:
            return name
    return None


def encode(body: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(body, compresslevel=1)
    return zlib.compress(body, 1)
