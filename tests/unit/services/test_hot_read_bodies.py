"""The hot reads' direct renderings give the bytes their response models give (the HTTP contract)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from cnop.common.entities.balance import Balance
from cnop.common.entities.user import User, UserRole
from cnop.common.jsonio import dumps
from cnop.services.user.schemas import BalanceResponse, UserProfile

moments = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
# Names with anything a person may type: accents, scripts, quotes, backslashes, controls, U+2028.
texts = st.text(min_size=1, max_size=40)
amounts = st.decimals(min_value=0, max_value=10**12, places=2, allow_nan=False, allow_infinity=False)
# Stored balances may be written with more or fewer places than two (written as usd_text does).
raw_amounts = st.one_of(amounts, st.decimals(min_value=0, max_value=10**6, allow_nan=False, allow_infinity=False))


@settings(deadline=None)  # no clock in a unit test: the machine may be busy
@given(
    username=texts,
    email=texts,
    first=texts,
    last=texts,
    phone=st.none() | texts,
    born=st.none() | st.dates(min_value=date(1900, 1, 1)),
    consent=st.booleans(),
    role=st.sampled_from(list(UserRole)),
    created=moments,
    updated=moments,
)
def test_the_profile_body_is_the_models(
    username: str,
    email: str,
    first: str,
    last: str,
    phone: str | None,
    born: date | None,
    consent: bool,
    role: UserRole,
    created: datetime,
    updated: datetime,
) -> None:
    user = User(
        username=username,
        email=email,
        first_name=first,
        last_name=last,
        phone=phone,
        date_of_birth=born,
        marketing_emails_consent=consent,
        role=role,
        password_hash="x",
        created_at=created,
        updated_at=updated,
    )
    assert dumps(UserProfile.wire(user)) == dumps(UserProfile.of(user))


@settings(deadline=None)
@given(available=raw_amounts, held=raw_amounts, deposited=amounts, withdrawn=amounts, updated=moments)
def test_the_balance_body_is_the_models(
    available: Decimal, held: Decimal, deposited: Decimal, withdrawn: Decimal, updated: datetime
) -> None:
    balance = Balance(
        username="someone",
        available=available,
        held=held,
        total_deposited=deposited,
        total_withdrawn=withdrawn,
        created_at=updated,
        updated_at=updated,
    )
    assert dumps(BalanceResponse.wire(balance)) == dumps(BalanceResponse.of(balance))
