"""The scaling policy on a fake clock."""

from gateway.autoscaler.policy import Signals, State, decide
from gateway.config import ScalingPolicy

POLICY = ScalingPolicy(
    min_replicas=1,
    max_replicas=10,
    target_concurrency=4,
    stable_window_s=60,
    panic_threshold=2.0,
    max_step_up=4,
    max_step_down=1,
    scale_down_delay_s=30,
)
SLO = 0.05


def _signals(stable: float, panic: float | None = None, p99: float | None = 0.01) -> Signals:
    return Signals(stable, stable if panic is None else panic, p99)


def test_replicas_follow_concurrency() -> None:
    decision = decide(_signals(11), State(), POLICY, current=2, now=0, slo_s=SLO)
    assert decision.desired == 3 and "up to 3" in decision.reason


def test_step_up_is_bounded_unless_panicking_and_max_respected() -> None:
    decision = decide(_signals(40, panic=7), State(), POLICY, current=2, now=0, slo_s=SLO)
    assert decision.desired == 6  # wants 10, +4 at most
    decision = decide(_signals(40, panic=36), State(), POLICY, current=2, now=0, slo_s=SLO)
    assert decision.desired == 10 and "panic" in decision.reason  # a burst jumps at once, past +4
    decision = decide(_signals(100, panic=100), State(), POLICY, current=8, now=0, slo_s=SLO)
    assert decision.desired == 10


def test_p99_over_slo_adds_replicas_even_at_low_concurrency() -> None:
    decision = decide(_signals(2, p99=0.2), State(), POLICY, current=2, now=0, slo_s=SLO)
    assert decision.desired == 4 and "over SLO" in decision.reason


def test_panic_holds_scale_down_for_a_stable_window() -> None:
    decision = decide(_signals(4, panic=20), State(), POLICY, current=2, now=0, slo_s=SLO)
    assert decision.desired == 5 and "panic" in decision.reason
    later = decide(_signals(4, panic=1), decision.state, POLICY, current=5, now=30, slo_s=SLO)
    assert later.desired == 5  # still inside the panic hold
    after = decide(_signals(4, panic=1), later.state, POLICY, current=5, now=61, slo_s=SLO)
    assert after.desired == 5 and "hold" in after.reason  # now the scale-down delay starts


def test_scale_down_waits_then_steps_one_at_a_time() -> None:
    state = State()
    for now in (0, 10, 20):
        decision = decide(_signals(1), state, POLICY, current=4, now=now, slo_s=SLO)
        state = decision.state
        assert decision.desired == 4
    decision = decide(_signals(1), state, POLICY, current=4, now=30, slo_s=SLO)
    assert decision.desired == 3
    decision = decide(_signals(1), decision.state, POLICY, current=3, now=35, slo_s=SLO)
    assert decision.desired == 3  # waits a full delay before the next step


def test_no_scale_down_while_over_slo_and_min_respected() -> None:
    decision = decide(_signals(0, p99=0.5), State(below_since=0), POLICY, current=3, now=100, slo_s=SLO)
    assert decision.desired >= 3
    decision = decide(_signals(0, p99=None), State(below_since=0), POLICY, current=1, now=100, slo_s=SLO)
    assert decision.desired == 1


def test_scale_from_zero_on_first_request() -> None:
    policy = POLICY.model_copy(update={"min_replicas": 0})
    decision = decide(_signals(0.5, panic=0.5), State(), policy, current=0, now=0, slo_s=SLO)
    assert decision.desired == 1


def test_no_p99_boost_while_asked_for_replicas_are_starting() -> None:
    from gateway.autoscaler.policy import Signals as S

    starting = S(8, 8, 0.5, ready_replicas=1)
    assert decide(starting, State(), POLICY, current=2, now=0, slo_s=SLO).desired == 2
    serving = S(8, 8, 0.5, ready_replicas=2)
    assert decide(serving, State(), POLICY, current=2, now=0, slo_s=SLO).desired == 4
