"""UserDAO: users and their email claims, on the store only.

Every write to a user's record (profile, password, token generation) announces `USER username`
on the invalidation channel, and a token's revocation `TOKEN jti`, once the write has committed:
whatever a process remembers of the user (verified tokens, principals) is dropped everywhere.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from cnop.common.clock import Clock, isoformat, parse_isoformat
from cnop.common.database import keys
from cnop.common.database.store import Delete, Eq, Exists, Item, ItemStore, NotExists, Op, Put, Update
from cnop.common.database.transaction import GuardFailed, Leg, Legs
from cnop.common.entities.user import User, UserRole
from cnop.common.exceptions import (
    ConditionFailed,
    EmailTaken,
    InvalidCredentials,
    UsernameTaken,
    UserNotFound,
)
from cnop.common.security.password_manager import PasswordManager
from cnop.common.shared.invalidation import TOKEN, USER, Invalidations, LocalInvalidations


def user_to_item(user: User) -> Item:
    return {
        **keys.user_key(user.username),
        keys.GSI1.pk_attr: keys.USERS_INDEX_PK,
        keys.GSI1.sk_attr: user.username,
        "username": user.username,
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "phone": user.phone,
        "date_of_birth": user.date_of_birth.isoformat() if user.date_of_birth else None,
        "marketing_emails_consent": user.marketing_emails_consent,
        "role": user.role.value,
        "password_hash": user.password_hash,
        "token_generation": user.token_generation,
        "kept_jti": user.kept_jti,
        "created_at": isoformat(user.created_at),
        "updated_at": isoformat(user.updated_at),
    }


def user_from_item(item: Item) -> User:
    dob = item.get("date_of_birth")
    return User(
        username=item["username"],
        email=item["email"],
        first_name=item["first_name"],
        last_name=item["last_name"],
        phone=item.get("phone"),
        date_of_birth=date.fromisoformat(dob) if dob else None,
        marketing_emails_consent=bool(item.get("marketing_emails_consent", False)),
        role=UserRole(item.get("role", UserRole.CUSTOMER.value)),
        password_hash=item["password_hash"],
        token_generation=int(item.get("token_generation", 0)),
        kept_jti=item.get("kept_jti"),
        created_at=parse_isoformat(item["created_at"]),
        updated_at=parse_isoformat(item["updated_at"]),
    )


def email_claim_item(email: str, username: str) -> Item:
    return {**keys.email_key(email), "username": username}


def creation_refused(failed: GuardFailed) -> Exception:
    """The domain error for a registration refused by leg `failed.leg`: the email is claimed,
    or else the username (its profile or its balance) exists."""
    return EmailTaken() if failed.leg is Leg.EMAIL else UsernameTaken()


class UserDAO:
    """Users; every multi-item write is one store transaction."""

    def __init__(
        self,
        store: ItemStore,
        passwords: PasswordManager,
        clock: Clock,
        invalidations: Invalidations | None = None,
    ) -> None:
        self.store = store
        self.passwords = passwords
        self.clock = clock
        self.invalidations = invalidations if invalidations is not None else LocalInvalidations()

    async def create_user(self, user: User, *, tx: Legs | None = None) -> User:
        """Create the profile (leg `user`) and claim its email address (leg `email`), each refused
        if taken. With `tx` both join the use case's transaction (registration adds the balance;
        `creation_refused` maps its failure); alone they apply at once."""
        legs = tx if tx is not None else Legs()
        legs.add(Leg.USER, Put(keys.USERS, user_to_item(user), NotExists()))
        legs.add(Leg.EMAIL, Put(keys.USERS, email_claim_item(user.email, user.username), NotExists()))
        if tx is None:
            try:
                await legs.commit(self.store)
            except GuardFailed as failed:
                raise creation_refused(failed) from failed
        return user

    async def get_user_by_username(self, username: str) -> User:
        item = await self.store.get(keys.USERS, keys.user_key(username.lower()))
        if item is None:
            raise UserNotFound()
        return user_from_item(item)

    async def find_user_with_live_token(self, username: str, jti: str) -> User | None:
        """The user, or None when there is none or token id `jti` is revoked (one read of both)."""
        found = await self.store.batch_get(keys.USERS, [keys.user_key(username), keys.revoked_token_key(jti)])
        profile = next((item for item in found if keys.is_profile(item)), None)
        if profile is None or len(found) > 1:
            return None
        return user_from_item(profile)

    async def revoke_token(self, username: str, jti: str, until: datetime) -> None:
        """Revoke token id `jti` of `username` until `until` (its expiry), when the record expires too."""
        record = {
            **keys.revoked_token_key(jti),
            "username": username,
            "expires_at": Decimal(int(until.timestamp()) + 1),
        }
        await self.store.transact([Put(keys.USERS, record)])
        await self.invalidations.publish(TOKEN, jti)

    async def find_user(self, username: str) -> User | None:
        item = await self.store.get(keys.USERS, keys.user_key(username.lower()))
        return user_from_item(item) if item is not None else None

    async def email_owner(self, email: str) -> str | None:
        """The username that claims an email address (stored lower-case), or None if none does."""
        item = await self.store.get(keys.USERS, keys.email_key(email))
        return str(item["username"]) if item is not None else None

    async def update_user(self, current: User, changes: dict[str, Any]) -> User:
        """Apply profile changes; a new email claims the address and frees the old one atomically."""
        updated = current.model_copy(update={**changes, "updated_at": self.clock.now()})
        new_item = user_to_item(updated)
        fields = {name: new_item[name] for name in (*changes, "updated_at")}
        ops: list[Op] = [
            Update(keys.USERS, keys.user_key(current.username), set=fields, condition=Eq("email", current.email))
        ]
        if updated.email != current.email:
            ops.append(Put(keys.USERS, email_claim_item(updated.email, updated.username), NotExists()))
            ops.append(Delete(keys.USERS, keys.email_key(current.email), Eq("username", current.username)))
        try:
            await self.store.transact(ops)
        except ConditionFailed as exc:
            if exc.index == 1:
                raise EmailTaken() from exc
            raise EmailTaken("The email address changed meanwhile; retry") from exc
        await self.invalidations.publish(USER, current.username)
        return updated

    async def change_password(self, user: User, new_hash: str, kept_jti: str) -> None:
        """Store a new hash and move the token generation on: every older token is revoked."""
        await self.store.transact(
            [
                Update(
                    keys.USERS,
                    keys.user_key(user.username),
                    set={
                        "password_hash": new_hash,
                        "kept_jti": kept_jti,
                        "updated_at": isoformat(self.clock.now()),
                    },
                    add={"token_generation": 1},
                    condition=Exists(),
                )
            ]
        )
        await self.invalidations.publish(USER, user.username)

    async def authenticate_user(self, username: str, password: str) -> User:
        """The user if the password matches; InvalidCredentials otherwise, at the same cost either way."""
        user = await self.find_user(username)
        if user is None:
            await self.passwords.dummy_verify_async(password)
            raise InvalidCredentials()
        valid, new_hash = await self.passwords.verify_and_update_async(password, user.password_hash)
        if not valid:
            raise InvalidCredentials()
        if new_hash is not None:
            await self.store.transact(
                [
                    Update(
                        keys.USERS,
                        keys.user_key(user.username),
                        set={"password_hash": new_hash},
                        condition=Eq("password_hash", user.password_hash),
                    )
                ]
            )
            await self.invalidations.publish(USER, user.username)
            user = user.model_copy(update={"password_hash": new_hash})
        return user
