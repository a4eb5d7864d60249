"""`clock.isoformat`: RFC 3339 UTC with milliseconds, the one text every stored and sent time has."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from cnop.common.clock import isoformat, parse_isoformat


def strftime_text(moment: datetime) -> str:
    """The text as it was first written (strftime), which the quicker form must equal."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@settings(deadline=None)
@given(
    st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_isoformat_writes_what_strftime_wrote_in_any_zone(naive: datetime, offset_minutes: int) -> None:
    moment = naive.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    assert isoformat(moment) == strftime_text(moment)
    assert parse_isoformat(isoformat(moment)) == moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def test_isoformat_examples() -> None:
    assert isoformat(datetime(2026, 11, 24, 10, 0, tzinfo=UTC)) == "2026-11-24T10:00:00.000Z"
    assert isoformat(datetime(2026, 11, 24, 10, 0, 0, 123999, tzinfo=UTC)) == "2026-11-24T10:00:00.123Z"
    assert isoformat(datetime(2026, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))) == "2025-12-31T23:30:00.000Z"
    early = datetime(999, 5, 6, 7, 8, 9, 10000, tzinfo=UTC)
    assert isoformat(early) == strftime_text(early)


def test_isoformat_of_the_same_moment_again_and_of_others_in_between() -> None:
    first = datetime(2026, 12, 4, 4, 50, 1, 123456, tzinfo=UTC)
    equal_elsewhere = first.astimezone(timezone(timedelta(hours=5, minutes=30)))
    later = first + timedelta(milliseconds=1)
    for moment in (first, first, later, first, equal_elsewhere, later, later, first):
        assert isoformat(moment) == strftime_text(moment)
