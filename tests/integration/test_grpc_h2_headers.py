"""Header blocks on the gateway's own HTTP/2 gRPC front, as raw frames over loopback
(tests/integration/h2peer.py): what is not a gRPC call, a bad preface, blocks split over
CONTINUATION frames, blocks that cannot be decoded, and the decoded block the connection
keeps for a client that repeats it, which must follow the HPACK dynamic table.
"""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from benchmarks.h2grpc import hpack_int, hpack_string, request_block
from gateway.grpc_api.h2wire import CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PADDED, frame
from tests.integration.h2peer import INFER, Loop, Peer, call, headers, until_end


def test_not_grpc_gets_415(h2_server: Loop) -> None:
    peer = h2_server.peer()
    block = b"\x82\x86" + hpack_int(4, 4, 0) + hpack_string(INFER.encode())  # GET, no content-type
    peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    payload = until_end(peer, 1)[3]
    assert payload[0] == 0x08 and payload[2:5] == b"415"


def test_bad_preface_gets_goaway(h2_server: Loop) -> None:
    peer = h2_server.peer(preface=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    got = peer.read()
    assert got is not None and got[0] == GOAWAY
    assert peer.read() is None


def test_split_header_block_padding_and_metadata(h2_server: Loop) -> None:
    peer = h2_server.peer()
    block = request_block("127.0.0.1", INFER) + b"\x00" + hpack_string(b"x-client-id") + hpack_string(b"abc")
    message = call("echo", b"zz")
    peer.send(
        frame(HEADERS, 0, 1, block[:5])
        + frame(CONTINUATION, 0, 1, block[5:9])
        + frame(CONTINUATION, END_HEADERS, 1, block[9:])
        + frame(DATA, PADDED, 1, bytes((4,)) + message[:3] + b"\0" * 4)  # 4 bytes of padding
        + frame(DATA, END_STREAM, 1, message[3:])
    )
    status, data = peer.answer(1)
    assert status == 0
    assert service_pb2.ModelInferResponse.FromString(data[5:]).raw_output_contents == [b"zz"]
    assert h2_server.servicer.metadata.get("x-client-id") == "abc"


def test_undecodable_header_closes_only_that_connection(h2_server: Loop) -> None:
    peer = h2_server.peer()
    block = request_block("127.0.0.1", INFER) + b"\x00" + hpack_string(b"x-bad") + hpack_string(b"\xff\xfe")
    peer.send(frame(HEADERS, END_HEADERS, 1, block))
    got = peer.read()
    assert got is not None and got[0] == GOAWAY
    other = h2_server.peer()  # the listener still serves
    other.send(headers(1) + frame(DATA, END_STREAM, 1, call("echo", b"ok")))
    assert other.answer(1)[0] == 0


BASE = request_block("127.0.0.1", INFER)
NEWEST, SECOND = b"\xbe", b"\xbf"  # references to the table's entries 62 and 63


def _joining(name: bytes, value: bytes) -> bytes:
    """A literal field that joins the dynamic table (as entry 62, pushing the others down)."""
    return b"\x40" + hpack_string(name) + hpack_int(len(value), 7) + value


def _big(size: int) -> bytes:
    """A field that is never indexed, carrying ``size`` bytes."""
    return b"\x10" + hpack_string(b"x-big") + hpack_int(size, 7) + b"x" * size


def _send_block(peer: Peer, stream: int, block: bytes) -> None:
    """A header block over as many frames as the 16 KiB frame size needs, then a call's message."""
    parts = [block[at : at + 16_000] for at in range(0, len(block), 16_000)]
    frames = [
        frame(HEADERS if index == 0 else CONTINUATION, END_HEADERS if index == len(parts) - 1 else 0, stream, part)
        for index, part in enumerate(parts)
    ]
    peer.send(b"".join(frames) + frame(DATA, END_STREAM, stream, call("echo", b"x")))


def _client_of(h2_server: Loop, peer: Peer, stream: int, block: bytes) -> str:
    """Make a call with this header block: the x-client-id the servicer saw ("" for none)."""
    h2_server.servicer.metadata = {}
    _send_block(peer, stream, block)
    assert peer.answer(stream)[0] == 0
    return h2_server.servicer.metadata.get("x-client-id", "")


def test_a_repeated_header_block_means_what_the_dynamic_table_says_now(h2_server: Loop) -> None:
    """The connection keeps the fields of the last block and skips decoding the same bytes again
    (hpack costs 50-60 us a block), but only a block that left the table as it was. A block
    that adds an entry must be decoded every time: skipped, the table would fall out of step
    with the client's, and a later reference would name the wrong field."""
    peer = h2_server.peer()
    client = b"x-client-id"
    room_for_two = hpack_int(90, 5, 0x20)  # each entry takes 32 + 11 + 2 = 45 bytes of the table
    assert _client_of(h2_server, peer, 1, room_for_two + BASE + _joining(client, b"aa")) == "aa"
    assert _client_of(h2_server, peer, 3, BASE + _joining(client, b"bb")) == "bb"  # table: bb, aa
    assert _client_of(h2_server, peer, 5, BASE + NEWEST) == "bb"  # the table stays
    assert _client_of(h2_server, peer, 7, BASE + NEWEST) == "bb"  # the same bytes: kept, not decoded
    assert _client_of(h2_server, peer, 9, BASE + _joining(client, b"vv")) == "vv"  # table: vv, bb
    assert _client_of(h2_server, peer, 11, BASE + _joining(client, b"vv")) == "vv"  # the same bytes; table: vv, vv
    assert _client_of(h2_server, peer, 13, BASE + SECOND) == "vv"  # bb had the 11th block been skipped


def test_a_block_refused_as_too_large_still_moves_the_table(h2_server: Loop) -> None:
    """Metadata over the 16 KiB limit gets RESOURCE_EXHAUSTED, and the connection goes on. The
    refused block is still decoded whole, so the fields in it that join the table, before or
    after the large one, join it here too, and a later reference means what the client meant;
    and a block kept from before does not outlive the change."""
    peer = h2_server.peer()
    client = b"x-client-id"
    assert _client_of(h2_server, peer, 1, BASE + _joining(client, b"aa")) == "aa"
    assert _client_of(h2_server, peer, 3, BASE + NEWEST) == "aa"  # kept: the table did not move
    _send_block(peer, 5, BASE + _joining(client, b"bb") + _big(17_000))
    assert peer.answer(5)[0] == 8
    assert _client_of(h2_server, peer, 7, BASE + NEWEST) == "bb"  # entry 62 is bb now
    _send_block(peer, 9, BASE + _big(17_000) + _joining(client, b"cc"))  # the new field after the large one
    assert peer.answer(9)[0] == 8
    assert _client_of(h2_server, peer, 11, BASE + NEWEST) == "cc"


def test_a_block_that_inflates_past_a_mebibyte_ends_the_connection(h2_server: Loop) -> None:
    """A few hundred one-byte references to a 4,000-byte entry (an HPACK bomb) are not decoded
    to the end: GOAWAY, and the listener serves the next connection."""
    peer = h2_server.peer()
    assert _client_of(h2_server, peer, 1, BASE + _joining(b"x-pad", b"p" * 4_000)) == ""
    peer.send(frame(HEADERS, END_HEADERS, 3, BASE + NEWEST * 300))  # 1.2 MB decoded from 300 bytes
    got = peer.read()
    assert got is not None and got[0] == GOAWAY
    other = h2_server.peer()
    other.send(headers(1) + frame(DATA, END_STREAM, 1, call("echo", b"ok")))
    assert other.answer(1)[0] == 0
