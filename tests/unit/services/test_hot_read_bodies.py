"""The hot reads' direct renderings give the bytes their response models give (the HTTP contract)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from decimal import Decimal
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from cnop.common.entities.balance import Balance
from cnop.common.entities.holding import Holding
from cnop.common.entities.user import User, UserRole
from cnop.common.jsonio import dumps
from cnop.services.user.portfolio import PortfolioService
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


# --- the portfolio ------------------------------------------------------------------------------


class _Holdings:
    def __init__(self, balance: Balance, holdings: list[Holding]) -> None:
        self.answer = (balance, holdings)

    async def get_balance_and_holdings(self, username: str) -> tuple[Balance, list[Holding]]:
        return self.answer


class _Assets:
    async def all_assets(self) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(asset_id="BTC", name="Bitcoin"),
            SimpleNamespace(asset_id="ETH", name='Ether \u2028 "x"'),
        ]


class _Prices:
    def __init__(self, prices: dict[str, Decimal | None]) -> None:
        self.prices = prices

    def current(self, asset_id: str) -> SimpleNamespace | None:
        price = self.prices.get(asset_id)
        return None if price is None else SimpleNamespace(price=price)


class _Clock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def now(self) -> datetime:
        return self.moment


units = st.one_of(
    st.just(Decimal(0)),
    st.decimals(min_value=0, max_value=10**9, places=8, allow_nan=False, allow_infinity=False),
    st.decimals(min_value=0, max_value=10**30, allow_nan=False, allow_infinity=False),
)
prices = st.none() | st.decimals(min_value=0, max_value=10**7, allow_nan=False, allow_infinity=False)
holding_rows = st.lists(
    st.tuples(st.sampled_from(["BTC", "ETH", "SOL", "DOGE"]), units, units, raw_amounts),
    max_size=6,
    unique_by=lambda row: row[0],
)


@settings(deadline=None)
@given(
    available=raw_amounts,
    held=raw_amounts,
    rows=holding_rows,
    quotes=st.dictionaries(st.sampled_from(["BTC", "ETH", "SOL", "DOGE"]), prices),
    moment=moments,
)
def test_the_portfolio_body_is_the_models(
    available: Decimal,
    held: Decimal,
    rows: list[tuple[str, Decimal, Decimal, Decimal]],
    quotes: dict[str, Decimal | None],
    moment: datetime,
) -> None:
    balance = Balance(
        username="someone",
        available=available,
        held=held,
        total_deposited=available,
        total_withdrawn=Decimal(0),
        created_at=moment,
        updated_at=moment,
    )
    holdings = [
        Holding(
            username="someone",
            asset_id=asset,
            available=free,
            held=locked,
            cost_basis=cost,
            created_at=moment,
            updated_at=moment,
        )
        for asset, free, locked, cost in rows
    ]
    service = PortfolioService(
        balances=None,  # type: ignore[arg-type]
        holdings=_Holdings(balance, holdings),  # type: ignore[arg-type]
        assets=_Assets(),  # type: ignore[arg-type]
        prices=_Prices(quotes),  # type: ignore[arg-type]
        clock=_Clock(moment),  # type: ignore[arg-type]
    )
    wire = asyncio.run(service.portfolio_wire("someone"))
    model = asyncio.run(service.portfolio("someone"))
    assert wire == model.model_dump(mode="python")
    assert dumps(wire) == dumps(model)
