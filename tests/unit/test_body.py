from __future__ import annotations

import gzip

from gateway.rest.body import pick_encoding


def test_pick_encoding() -> None:
    assert pick_encoding(None) is None
    assert pick_encoding("identity") is None
    assert pick_encoding("gzip, deflate") == "gzip"
    assert pick_encoding("gzip;q=0, deflate") == "deflate"
    assert gzip.decompress(gzip.compress(b"x")) == b"x"
