"""Per-client token bucket and concurrency limits, on a fake clock."""

from __future__ import annotations

import pytest

from gateway.clock import FakeClock
from gateway.config import ClientLimits
from gateway.errors import RateLimited
from gateway.limits import FORGET_AFTER_S, SWEEP_EVERY, ClientLimiter, client_key


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = ClientLimiter(ClientLimits(rate_per_s=10, burst=3, max_concurrency=0), clock)
    for _ in range(3):
        limiter.acquire("a")()
    with pytest.raises(RateLimited) as info:
        limiter.acquire("a")
    assert info.value.http_status == 429
    assert info.value.retry_after_s == pytest.approx(0.1)
    clock.advance(0.1)
    limiter.acquire("a")()
    with pytest.raises(RateLimited):
        limiter.acquire("a")
    limiter.acquire("b")()  # another client has its own bucket


def test_bucket_never_holds_more_than_the_burst() -> None:
    clock = FakeClock()
    limiter = ClientLimiter(ClientLimits(rate_per_s=5, max_concurrency=0), clock)  # burst 0 = one second
    clock.advance(3600)
    for _ in range(5):
        limiter.acquire("a")()
    with pytest.raises(RateLimited):
        limiter.acquire("a")


def test_concurrency_counts_until_release_and_release_is_idempotent() -> None:
    limiter = ClientLimiter(ClientLimits(max_concurrency=2), FakeClock())
    first = limiter.acquire("a")
    limiter.acquire("a")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("a")
    assert "2 requests in flight" in info.value.message
    first()
    first()  # a second call must not free a slot it does not hold
    limiter.acquire("a")
    with pytest.raises(RateLimited):
        limiter.acquire("a")


def test_a_refused_request_does_not_spend_a_slot_or_a_token() -> None:
    clock = FakeClock()
    limiter = ClientLimiter(ClientLimits(rate_per_s=1, burst=1, max_concurrency=1), clock)
    held = limiter.acquire("a")
    with pytest.raises(RateLimited):
        limiter.acquire("a")  # over concurrency: no token taken
    held()
    clock.advance(1.0)
    limiter.acquire("a")


def test_idle_clients_are_forgotten() -> None:
    clock = FakeClock()
    limiter = ClientLimiter(ClientLimits(max_concurrency=4), clock)
    busy = limiter.acquire("busy")
    limiter.acquire("idle")()
    clock.advance(FORGET_AFTER_S + 1)
    for index in range(SWEEP_EVERY):
        limiter.acquire(f"new-{index}")()
    assert "idle" not in limiter.clients and "busy" in limiter.clients
    busy()


def test_disabled_when_nothing_is_limited() -> None:
    assert not ClientLimiter(ClientLimits(rate_per_s=0, max_concurrency=0), FakeClock()).enabled


def test_client_key() -> None:
    assert client_key("auto", "alice", "spoofed", "10.0.0.1") == "token:alice"
    assert client_key("auto", None, "spoofed", "10.0.0.1") == "peer:10.0.0.1"
    assert client_key("client_id", None, "svc-a", "10.0.0.1") == "id:svc-a"
    assert client_key("client_id", "alice", None, "10.0.0.1") == "token:alice"
