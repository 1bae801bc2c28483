"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.h2peer import Loop


@pytest.fixture
def h2_server() -> Iterator[Loop]:
    """The gateway's own HTTP/2 gRPC server with a test servicer, on its own loop (see h2peer)."""
    running = Loop()
    try:
        yield running
    finally:
        running.close()
