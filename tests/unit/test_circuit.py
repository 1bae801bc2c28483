import asyncio

from gateway.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, RetryBudget
from gateway.clock import FakeClock
from gateway.metrics import Metrics
from gateway.pool import PoolClient


def test_consecutive_failures_eject_then_probe_then_close() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, consecutive_failures=3, base_ejection_s=10)
    assert not breaker.failure(True) and not breaker.failure(True)
    breaker.success()  # resets the run
    assert not breaker.failure(True) and not breaker.failure(True)
    assert breaker.failure(True) and breaker.state == OPEN
    assert not breaker.allows(0)
    clock.advance(10)
    assert breaker.state == HALF_OPEN
    assert breaker.allows(0) and not breaker.allows(1)  # one probe at a time
    breaker.success()
    assert breaker.state == CLOSED and breaker.allows(5)


def test_failed_probe_ejects_for_longer() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, consecutive_failures=1, base_ejection_s=10, max_ejection_s=25)
    breaker.failure(True)
    clock.advance(10)
    assert breaker.state == HALF_OPEN
    assert breaker.failure(True)  # the probe failed
    clock.advance(19.9)
    assert breaker.state == OPEN
    clock.advance(0.1)
    assert breaker.state == HALF_OPEN
    breaker.failure(True)
    assert breaker.open_until - clock.now() == 25  # capped


def test_ejection_can_be_refused_to_keep_capacity() -> None:
    breaker = CircuitBreaker(FakeClock(), consecutive_failures=1)
    assert not breaker.failure(may_eject=False)
    assert breaker.state == CLOSED


def test_retry_budget() -> None:
    clock = FakeClock()
    budget = RetryBudget(clock, ratio=0.5, min_per_s=1, cap=2)
    assert budget.withdraw() and budget.withdraw() and not budget.withdraw()
    budget.deposit()
    budget.deposit()
    assert budget.withdraw() and not budget.withdraw()
    clock.advance(1)
    assert budget.withdraw()


def test_a_replica_added_back_while_draining_is_kept() -> None:
    import asyncio

    from gateway.pool import PoolClient

    async def scenario() -> None:
        pool = PoolClient("p")
        replica = pool.add("127.0.0.1:1")
        pool.set_ready(replica, True)
        held = pool.try_acquire()
        assert held is replica
        removal = asyncio.ensure_future(pool.remove("127.0.0.1:1"))
        await asyncio.sleep(0)
        assert replica.draining and pool.try_acquire() is None
        assert pool.add("127.0.0.1:1") is replica and not replica.draining  # the address came back
        pool.release(replica)
        await removal
        assert "127.0.0.1:1" in pool.replicas
        await pool.close()

    asyncio.run(scenario())


def test_the_pool_gauge_follows_the_breaker_without_a_set_per_batch() -> None:
    """``PoolClient.record`` sets the circuit gauge when the state changes, not on each batch."""

    async def scenario() -> None:  # a replica's idle event wants a running loop
        clock, metrics = FakeClock(), Metrics()
        pool = PoolClient("p", clock=clock, metrics=metrics)
        replica = pool.add("w:1")
        pool.add("w:2")  # half the pool may be ejected: one of two
        gauge = metrics.circuit_state.labels("p", "w:1")
        sets = []
        original = gauge.set
        gauge.set = lambda value: (sets.append(value), original(value))  # type: ignore[method-assign]
        for _ in range(5):
            pool.record(replica, True)
        assert sets == []  # closed all along: nothing to tell
        for _ in range(replica.breaker.threshold):
            pool.record(replica, False)
        assert replica.breaker.state == OPEN and sets[-1] == OPEN
        clock.advance(replica.breaker.max_ejection_s)
        pool.record(replica, True)  # the probe came back
        assert sets[-1] == CLOSED and gauge._value.get() == CLOSED
        count = len(sets)
        pool.record(replica, True)
        assert len(sets) == count

    asyncio.run(scenario())
