"""The circuit breaker alone, on a fake clock: sliding window, opening, half-open probes, closing."""

from __future__ import annotations

import pytest

from cnop.common.clock import FakeClock
from cnop.gateway.breaker import BreakerPolicy, BreakerState, CircuitBreaker

POLICY = BreakerPolicy(
    window_seconds=30, bucket_seconds=1, min_failures=5, failure_ratio=0.5, open_seconds=10, half_open_probes=2
)


def make_breaker(policy: BreakerPolicy = POLICY) -> tuple[CircuitBreaker, FakeClock, list[tuple[str, str]]]:
    clock = FakeClock()
    transitions: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        "order", policy, monotonic=clock.timestamp, on_transition=lambda _n, old, new: transitions.append((old, new))
    )
    return breaker, clock, transitions


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        ticket = breaker.try_acquire()
        assert ticket is not None
        ticket.failed()


def succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        ticket = breaker.try_acquire()
        assert ticket is not None
        ticket.succeeded()


def test_failures_below_the_threshold_keep_it_closed() -> None:
    breaker, _clock, transitions = make_breaker()
    fail(breaker, 4)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.window_counts() == (0, 4)
    assert breaker.try_acquire() is not None
    assert transitions == []


def test_five_failures_in_the_window_open_it_and_every_request_is_refused_with_the_time_left() -> None:
    breaker, clock, transitions = make_breaker()
    fail(breaker, 5)
    assert breaker.state is BreakerState.OPEN
    assert transitions == [("closed", "open")]
    assert breaker.try_acquire() is None
    assert breaker.retry_after() == 10
    clock.advance(3.5)
    assert breaker.try_acquire() is None
    assert breaker.retry_after() == 7  # 6.5 s left, rounded up


def test_failures_older_than_the_window_are_forgotten() -> None:
    breaker, clock, _ = make_breaker()
    fail(breaker, 4)
    clock.advance(31)  # past the 30 s window
    assert breaker.window_counts() == (0, 0)
    fail(breaker, 4)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.window_counts() == (0, 4)
    # Within the window they add up: the fifth one opens it.
    clock.advance(29)
    fail(breaker)
    assert breaker.state is BreakerState.OPEN


def test_the_window_slides_bucket_by_bucket() -> None:
    breaker, clock, _ = make_breaker()
    fail(breaker, 2)  # t=0
    clock.advance(15)
    fail(breaker, 2)  # t=15
    clock.advance(16)  # t=31: the first two have left the window, the last two have not
    assert breaker.window_counts() == (0, 2)
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    fail(breaker)
    assert breaker.state is BreakerState.OPEN


def test_failures_that_are_a_minority_of_calls_do_not_open_it() -> None:
    breaker, _clock, _ = make_breaker()
    succeed(breaker, 20)
    fail(breaker, 10)  # 10 of 30 = 33 % < 50 %
    assert breaker.state is BreakerState.CLOSED
    fail(breaker, 10)  # 20 of 40 = 50 %
    assert breaker.state is BreakerState.OPEN


def test_half_open_admits_only_the_probe_limit_at_once() -> None:
    breaker, clock, transitions = make_breaker()
    fail(breaker, 5)
    clock.advance(10)
    assert breaker.state is BreakerState.HALF_OPEN
    first, second = breaker.try_acquire(), breaker.try_acquire()
    assert first is not None and first.probe
    assert second is not None and second.probe
    # The limit is two probes in flight: everyone else is refused, however many ask.
    assert [breaker.try_acquire() for _ in range(50)] == [None] * 50
    assert breaker.retry_after() == 1
    first.succeeded()
    third = breaker.try_acquire()
    assert third is not None and third.probe
    assert breaker.try_acquire() is None
    second.succeeded()  # two successful probes close it
    assert breaker.state is BreakerState.CLOSED
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    # A probe still out from the half-open period says nothing about the closed breaker.
    third.failed()
    assert breaker.window_counts() == (0, 0)
    assert breaker.state is BreakerState.CLOSED


def test_a_failed_probe_opens_it_again_for_a_full_period() -> None:
    breaker, clock, transitions = make_breaker()
    fail(breaker, 5)
    clock.advance(12)
    probe = breaker.try_acquire()
    assert probe is not None
    probe.failed()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 10
    clock.advance(9.9)
    assert breaker.try_acquire() is None
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN
    assert transitions[-2:] == [("half_open", "open"), ("open", "half_open")]


def test_a_released_probe_frees_its_slot_without_counting() -> None:
    breaker, clock, _ = make_breaker()
    fail(breaker, 5)
    clock.advance(10)
    a, b = breaker.try_acquire(), breaker.try_acquire()
    assert a is not None and b is not None
    assert breaker.try_acquire() is None
    a.release()
    c = breaker.try_acquire()
    assert c is not None
    b.succeeded()
    assert breaker.state is BreakerState.HALF_OPEN  # one success so far, not two
    c.succeeded()
    assert breaker.state is BreakerState.CLOSED


def test_an_outcome_is_counted_once() -> None:
    breaker, _clock, _ = make_breaker()
    ticket = breaker.try_acquire()
    assert ticket is not None
    ticket.failed()
    ticket.failed()
    ticket.succeeded()
    assert breaker.window_counts() == (0, 1)


def test_requests_from_before_an_opening_do_not_count_after_it() -> None:
    breaker, clock, _ = make_breaker()
    slow = [breaker.try_acquire() for _ in range(3)]
    fail(breaker, 5)
    clock.advance(10)
    for ticket in slow:
        assert ticket is not None
        ticket.succeeded()  # answered late: must not close the half-open breaker
    assert breaker.state is BreakerState.HALF_OPEN


def test_closing_starts_a_fresh_window() -> None:
    breaker, clock, _ = make_breaker()
    fail(breaker, 5)
    clock.advance(10)
    succeed(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    fail(breaker, 4)
    assert breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize(
    "bad",
    [
        {"window_seconds": 0},
        {"bucket_seconds": 60},
        {"min_failures": 0},
        {"failure_ratio": 0},
        {"failure_ratio": 1.5},
        {"open_seconds": 0},
        {"half_open_probes": 0},
    ],
)
def test_a_policy_that_cannot_work_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="breaker"):
        BreakerPolicy(**bad)  # type: ignore[arg-type]
