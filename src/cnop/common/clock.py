"""Time, injected: services ask a Clock, so tests can move time without sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def timestamp(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def timestamp(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 24, 10, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def timestamp(self) -> float:
        return self._now.timestamp()

    def advance(self, seconds: float) -> None:
        self._now = self._now + timedelta(seconds=seconds)


# The last moment written and its text: an order's moments (created, updated, executed, its ledger
# entry's, its asset transaction's, its holding's) are one `datetime` object, written six times or
# more per order. Only that very object is answered from here (identity, not equality), and the
# pair is replaced in one assignment, so threads never see a text of another moment.
_last_written: tuple[datetime, str] | None = None


def isoformat(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds: `2026-11-24T10:00:00.123Z`."""
    global _last_written
    last = _last_written
    if last is not None and last[0] is moment:
        return last[1]
    utc = moment.astimezone(UTC)
    if utc.year >= 1000:  # `isoformat` is a third of `strftime`'s cost; both write the same text here
        text = utc.isoformat(timespec="milliseconds")[:-6] + "Z"
    else:
        text = utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    _last_written = (moment, text)
    return text


def parse_isoformat(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
