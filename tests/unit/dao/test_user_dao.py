"""UserDAO's seed methods on the SQLite engine: a profile and its email claim are written
together, alone or with the rest of a registration (`tx=`), and a refusal names what was taken."""

from __future__ import annotations

import pytest

from cnop.common.clock import FakeClock
from cnop.common.config import Settings
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.user_dao import UserDAO, creation_refused
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.transaction import GuardFailed, Leg, Legs
from cnop.common.entities.user import User
from cnop.common.exceptions import EmailTaken, InvalidCredentials, UsernameTaken, UserNotFound
from cnop.common.security import PasswordManager
from cnop.common.security.password_manager import TEST_ARGON2_PARAMS

PASSWORD = "Correct-Horse-42"


@pytest.fixture(scope="module")
def passwords() -> PasswordManager:
    return PasswordManager(Settings(_env_file=None), argon2_params=TEST_ARGON2_PARAMS)


@pytest.fixture
def users(store: SQLiteStore, passwords: PasswordManager, clock: FakeClock) -> UserDAO:
    return UserDAO(store, passwords, clock)


def a_user(
    clock: FakeClock, passwords: PasswordManager, username: str = "erin", email: str = "erin@example.com"
) -> User:
    now = clock.now()
    return User(
        username=username,
        email=email,
        first_name="Erin",
        last_name="Example",
        password_hash=passwords.hash_password(PASSWORD),
        created_at=now,
        updated_at=now,
    )


async def test_create_user_alone_refuses_a_taken_username_or_email(
    users: UserDAO, passwords: PasswordManager, clock: FakeClock
) -> None:
    user = a_user(clock, passwords)
    assert await users.create_user(user) == user
    assert await users.get_user_by_username("ERIN") == user
    with pytest.raises(UsernameTaken):
        await users.create_user(a_user(clock, passwords, email="other@example.com"))
    with pytest.raises(EmailTaken):
        await users.create_user(a_user(clock, passwords, username="frank"))
    with pytest.raises(UserNotFound):
        await users.get_user_by_username("frank")


async def test_create_user_joins_a_registration_with_its_balance(
    users: UserDAO, store: SQLiteStore, passwords: PasswordManager, clock: FakeClock
) -> None:
    balances = BalanceDAO(store, clock)
    user = a_user(clock, passwords)
    legs = Legs()
    await users.create_user(user, tx=legs)
    await balances.create_balance(user.username, tx=legs)
    assert legs.names == [Leg.USER, Leg.EMAIL, Leg.BALANCE]
    assert await users.find_user(user.username) is None
    await legs.commit(store)
    assert await users.get_user_by_username(user.username) == user
    assert (await balances.get_balance(user.username)).created_at == clock.now()
    for username, email, refusal in (
        ("erin", "new@example.com", UsernameTaken),
        ("gina", "erin@example.com", EmailTaken),
    ):
        again = Legs()
        await users.create_user(a_user(clock, passwords, username, email), tx=again)
        await balances.create_balance(username, tx=again)
        with pytest.raises(GuardFailed) as failed:
            await again.commit(store)
        assert isinstance(creation_refused(failed.value), refusal)
    assert await users.find_user("gina") is None


async def test_update_user_moves_the_email_claim_and_authenticate_user_checks_the_password(
    users: UserDAO, passwords: PasswordManager, clock: FakeClock
) -> None:
    erin = await users.create_user(a_user(clock, passwords))
    await users.create_user(a_user(clock, passwords, "hank", "hank@example.com"))
    with pytest.raises(EmailTaken):
        await users.update_user(erin, {"email": "hank@example.com"})
    moved = await users.update_user(erin, {"email": "erin2@example.com", "first_name": "E."})
    assert await users.get_user_by_username("erin") == moved
    await users.create_user(a_user(clock, passwords, "ivan", "erin@example.com"))  # the old address is free
    assert (await users.authenticate_user("erin", PASSWORD)).username == "erin"
    with pytest.raises(InvalidCredentials):
        await users.authenticate_user("erin", "Wrong-Horse-42")
    with pytest.raises(InvalidCredentials):
        await users.authenticate_user("nobody", PASSWORD)
