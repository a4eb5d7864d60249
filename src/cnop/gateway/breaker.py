"""A circuit breaker per upstream: stop sending requests to a service that is failing, then probe it.

The original system's breaker never forgot a failure, let every request through once half-open
and tripped on business errors. This one:

- counts outcomes in a **sliding time window** (`window_seconds`, in `bucket_seconds` buckets), so
  failures older than the window are forgotten;
- opens when the window holds at least `min_failures` failures **and** they are at least
  `failure_ratio` of its calls, so one failure in a quiet minute does not trip it;
- stays open for `open_seconds` (every request is refused at once, with the time left as
  `Retry-After`), then turns **half-open** and admits at most `half_open_probes` requests at a
  time; that many successful probes in a row close it, any failed probe opens it again;
- counts only what the caller reports as a failure: the proxy reports connect errors, timeouts
  and 5xx answers, never a 4xx (a refused order is the service working).

A request takes a `Ticket` (`try_acquire`), and reports its outcome on it exactly once
(`succeeded`, `failed`) or gives it back without one (`release`, e.g. the client went away).
Outcomes of tickets taken before the last state change are ignored, so a slow request from
before an outage cannot close a breaker that opened since.

Time comes from an injected monotonic function, so the unit tests move it without sleeping.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

Monotonic = Callable[[], float]
TransitionListener = Callable[[str, "BreakerState", "BreakerState"], None]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def gauge_value(self) -> int:
        """The state as the `cnop_circuit_breaker_state` gauge shows it: 0 closed, 1 half-open, 2 open."""
        return _GAUGE_VALUES[self]


_GAUGE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    window_seconds: float = 30.0
    bucket_seconds: float = 1.0
    min_failures: int = 5
    failure_ratio: float = 0.5
    open_seconds: float = 10.0
    half_open_probes: int = 2

    def __post_init__(self) -> None:
        if self.window_seconds <= 0 or self.bucket_seconds <= 0 or self.bucket_seconds > self.window_seconds:
            raise ValueError("breaker window and bucket must be positive, the bucket no longer than the window")
        if self.min_failures < 1 or not 0 < self.failure_ratio <= 1:
            raise ValueError("breaker min_failures must be >= 1 and failure_ratio in (0, 1]")
        if self.open_seconds <= 0 or self.half_open_probes < 1:
            raise ValueError("breaker open_seconds must be positive and half_open_probes >= 1")


class _Bucket:
    __slots__ = ("failures", "index", "successes")

    def __init__(self, index: int) -> None:
        self.index = index
        self.successes = 0
        self.failures = 0


class Ticket:
    """Permission for one request; report its outcome once."""

    __slots__ = ("_breaker", "_done", "_generation", "probe")

    def __init__(self, breaker: CircuitBreaker, generation: int, probe: bool) -> None:
        self._breaker = breaker
        self._generation = generation
        self._done = False
        #: Whether this request is one of the half-open probes.
        self.probe = probe

    def succeeded(self) -> None:
        self._finish(True)

    def failed(self) -> None:
        self._finish(False)

    def release(self) -> None:
        """Give the ticket back without an outcome (the request was abandoned, not answered)."""
        if not self._done:
            self._done = True
            self._breaker._release(self)

    def _finish(self, success: bool) -> None:
        if not self._done:
            self._done = True
            self._breaker._record(self, success)


class CircuitBreaker:
    """The breaker of one upstream; see the module docstring for the rules."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy | None = None,
        *,
        monotonic: Monotonic = time.monotonic,
        on_transition: TransitionListener | None = None,
    ) -> None:
        self.name = name
        self.policy = policy or BreakerPolicy()
        self._now = monotonic
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._buckets: deque[_Bucket] = deque()
        self._successes = 0
        self._failures = 0
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._probe_successes = 0

    # --- reading -------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose time is up reads as half-open)."""
        self._advance()
        return self._state

    def window_counts(self) -> tuple[int, int]:
        """(successes, failures) counted in the current window."""
        self._expire(self._now())
        return self._successes, self._failures

    def retry_after(self) -> int:
        """Whole seconds a refused client should wait before trying again (at least 1)."""
        self._advance()
        if self._state is BreakerState.OPEN:
            return max(1, math.ceil(self._opened_at + self.policy.open_seconds - self._now()))
        return 1

    # --- admitting -----------------------------------------------------------------------------

    def try_acquire(self) -> Ticket | None:
        """A ticket for one request, or None if the breaker refuses it now."""
        self._advance()
        if self._state is BreakerState.CLOSED:
            return Ticket(self, self._generation, probe=False)
        if self._state is BreakerState.HALF_OPEN and self._probes_in_flight < self.policy.half_open_probes:
            self._probes_in_flight += 1
            return Ticket(self, self._generation, probe=True)
        return None

    # --- outcomes (called by tickets) ----------------------------------------------------------

    def _record(self, ticket: Ticket, success: bool) -> None:
        self._advance()
        if ticket._generation != self._generation:
            return  # taken before the last state change: says nothing about the upstream now
        if ticket.probe:
            self._probes_in_flight -= 1
            if not success:
                self._open()
                return
            self._probe_successes += 1
            if self._probe_successes >= self.policy.half_open_probes:
                self._transition(BreakerState.CLOSED)
            return
        now = self._now()
        self._expire(now)
        bucket = self._bucket(now)
        if success:
            bucket.successes += 1
            self._successes += 1
            return
        bucket.failures += 1
        self._failures += 1
        total = self._successes + self._failures
        if self._failures >= self.policy.min_failures and self._failures >= self.policy.failure_ratio * total:
            self._open()

    def _release(self, ticket: Ticket) -> None:
        if ticket.probe and ticket._generation == self._generation:
            self._probes_in_flight -= 1

    # --- internals -----------------------------------------------------------------------------

    def _advance(self) -> None:
        if self._state is BreakerState.OPEN and self._now() >= self._opened_at + self.policy.open_seconds:
            self._transition(BreakerState.HALF_OPEN)

    def _open(self) -> None:
        self._opened_at = self._now()
        self._transition(BreakerState.OPEN)

    def _transition(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        self._generation += 1
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._buckets.clear()
        self._successes = self._failures = 0
        if self._on_transition is not None and old is not new:
            self._on_transition(self.name, old, new)

    def _bucket(self, now: float) -> _Bucket:
        index = math.floor(now / self.policy.bucket_seconds)
        if self._buckets and self._buckets[-1].index == index:
            return self._buckets[-1]
        bucket = _Bucket(index)
        self._buckets.append(bucket)
        return bucket

    def _expire(self, now: float) -> None:
        oldest = math.floor((now - self.policy.window_seconds) / self.policy.bucket_seconds)
        while self._buckets and self._buckets[0].index <= oldest:
            gone = self._buckets.popleft()
            self._successes -= gone.successes
            self._failures -= gone.failures
