"""The HTTP/2 (RFC 9113) and HPACK (RFC 7541) wire format that unary gRPC needs.

Shared by the gateway's gRPC front (:mod:`gateway.grpc_api.h2connection`) and the
benchmark's client (``benchmarks/h2grpc.py``): frame types, flags, settings and error
codes, framing and unframing, and the header blocks the server writes. Those use only
the static table and literals that are never indexed, so a peer keeps no state for them.
"""

from __future__ import annotations

import struct
from urllib.parse import quote

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY_FRAME, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = range(1, 6)
MAX_HEADER_LIST = 6
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 6, 7, 8, 9, 11
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
OUR_FRAME = 1 << 20  # largest frame we accept: big DATA frames mean fewer of them
STREAM_WINDOW = 4 << 20  # per stream; given back as it is used
CONNECTION_GRANT = MAX_WINDOW - DEFAULT_WINDOW  # the connection window, raised once to the maximum
# The connection window is given back only once this much of it is used: a WINDOW_UPDATE
# after every read costs a send and wakes the client for nothing (one per call at 1 user).
CONNECTION_REFILL = CONNECTION_GRANT // 2
MAX_HEADER_BLOCK = 64 * 1024  # header bytes per request (HEADERS + CONTINUATION) before GOAWAY
MAX_HEADER_LIST_SIZE = 16 * 1024  # decoded metadata per request (grpcio allows 8 KiB by default)
# What the HPACK decoder may inflate one block to. Past MAX_HEADER_LIST_SIZE a call is refused,
# but the block is still decoded whole so the dynamic table stays in step with the client's;
# past this (a few bytes of references to large entries: an HPACK bomb) the connection ends.
MAX_DECODED_HEADERS = 1 << 20
TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def next_frame(buffer: bytearray, at: int, limit: int) -> tuple[int, int, int, bytes, int] | None:
    """The frame starting at ``at``: kind, flags, stream, payload and where the next starts;
    None until all of it has arrived. A frame longer than ``limit`` raises ValueError."""
    if len(buffer) - at < 9:
        return None
    length = int.from_bytes(buffer[at : at + 3], "big")
    if length > limit:
        raise ValueError(f"frame of {length} bytes")
    end = at + 9 + length
    if len(buffer) < end:
        return None
    stream = int.from_bytes(buffer[at + 5 : at + 9], "big") & MAX_WINDOW
    return buffer[at + 3], buffer[at + 4], stream, bytes(buffer[at + 9 : end]), end


def unpad(payload: bytes) -> bytes | None:
    """A PADDED frame's payload without its pad length and padding; None when they do not fit."""
    if not payload or payload[0] >= len(payload):
        return None
    return payload[1 : len(payload) - payload[0]]


def header_fragment(flags: int, payload: bytes) -> bytes | None:
    """A HEADERS frame's block fragment: padding and priority fields removed; None if malformed."""
    if flags & PADDED:
        stripped = unpad(payload)
        if stripped is None:
            return None
        payload = stripped
    return payload[5:] if flags & PRIORITY else payload


def hpack_int(value: int, prefix: int, pattern: int = 0) -> bytes:
    """RFC 7541 §5.1 integer with an N-bit prefix; ``pattern`` sets the representation's flag bits."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes((pattern | value,))
    out = bytearray((pattern | top,))
    value -= top
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A field never added to any table: the peer keeps no state for our header blocks."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


# :status 200 (static entry 8), then content-type (static name 31) with its value.
RESPONSE_HEADERS = b"\x88" + hpack_int(31, 4) + hpack_int(16, 7) + b"application/grpc"
OK_TRAILERS = literal(b"grpc-status", b"0")


def status_block(code: int, message: str, metadata: tuple[tuple[str, str], ...], headers: bool) -> bytes:
    """Trailers (or, for an error before any answer, a trailers-only response)."""
    block = RESPONSE_HEADERS if headers else b""
    block += literal(b"grpc-status", str(code).encode())
    if message:
        # gRPC percent-encodes the message; keep printable ASCII except '%' as it is.
        block += literal(b"grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode())
    for key, value in metadata:
        block += literal(key.lower().encode(), value.encode())
    return block


def grpc_timeout(value: str) -> float | None:
    """``grpc-timeout`` (up to 8 digits and a unit) in seconds; None when malformed."""
    if 2 <= len(value) <= 9 and value[:-1].isdigit() and value[-1] in TIMEOUT_UNITS:
        return int(value[:-1]) * TIMEOUT_UNITS[value[-1]]
    return None
