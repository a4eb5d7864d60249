"""User service use cases: accounts, sessions, cash. Each write is one store transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from cnop.common.clock import Clock
from cnop.common.config import Settings
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.user_dao import UserDAO, creation_refused
from cnop.common.database import keys
from cnop.common.database.store import AttrNotExists, ItemStore, Le, Op, Or, Update
from cnop.common.database.transaction import GuardFailed, Leg, Legs
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.user import User, UserRole
from cnop.common.exceptions import (
    DailyLimitExceeded,
    IdempotencyInProgress,
    InsufficientFunds,
    InvalidCredentials,
    InvalidToken,
    StoreError,
    UserNotFound,
)
from cnop.common.idempotency import applying_mark
from cnop.common.ids import new_id
from cnop.common.security import AccessToken, AuditLogger, PasswordManager, TokenClaims, TokenManager
from cnop.common.shared.invalidation import Invalidations, LocalInvalidations
from cnop.services.user.api_keys import ApiKeyService
from cnop.services.user.principal_cache import PrincipalCache
from cnop.services.user.schemas import (
    MoneyMovementResponse,
    PasswordChangeRequest,
    ProfileUpdateRequest,
    RegisterRequest,
)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a protected route: the user as stored now, and the token they presented."""

    user: User
    claims: TokenClaims

    @property
    def username(self) -> str:
        return self.user.username

    @property
    def is_admin(self) -> bool:
        return self.user.role is UserRole.ADMIN


class AccountService:
    def __init__(
        self,
        store: ItemStore,
        users: UserDAO,
        balances: BalanceDAO,
        passwords: PasswordManager,
        tokens: TokenManager,
        audit: AuditLogger,
        clock: Clock,
        api_keys: ApiKeyService | None = None,
        invalidations: Invalidations | None = None,
        principal_cache_seconds: float = 0.0,
    ) -> None:
        """`principal_cache_seconds` > 0 remembers each token's principal (`PrincipalCache`),
        dropped on `invalidations` when the user or the token changes; 0 reads it every time."""
        self.store = store
        self.users = users
        self.api_keys = api_keys
        # Logout and password change are announced, so every process forgets the revoked tokens.
        self.invalidations = invalidations if invalidations is not None else LocalInvalidations()
        self.principals: PrincipalCache[Principal] = PrincipalCache(
            self.invalidations, ttl_seconds=principal_cache_seconds
        )
        self.balances = balances
        self.passwords = passwords
        self.tokens = tokens
        self.audit = audit
        self.clock = clock

    async def register(
        self, request: RegisterRequest, *, role: UserRole = UserRole.CUSTOMER, ip: str | None = None
    ) -> User:
        """User + email claim + zero balance, in one transaction."""
        self.passwords.validate_password_strength(request.password)
        password_hash = await self.passwords.hash_password_async(request.password)
        now = self.clock.now()
        user = User(
            username=request.username,
            email=request.email,
            first_name=request.first_name,
            last_name=request.last_name,
            phone=request.phone,
            date_of_birth=request.date_of_birth,
            marketing_emails_consent=request.marketing_emails_consent,
            role=role,
            password_hash=password_hash,
            created_at=now,
            updated_at=now,
        )
        legs = Legs()
        await self.users.create_user(user, tx=legs)
        await self.balances.create_balance(user.username, tx=legs)
        try:
            await legs.commit(self.store)
        except GuardFailed as failed:
            raise creation_refused(failed) from failed
        self.audit.log_registration(user.username, ip_address=ip)
        return user

    async def login(self, username: str, password: str, *, ip: str | None = None) -> AccessToken:
        try:
            user = await self.users.authenticate_user(username.lower(), password)
        except InvalidCredentials:
            self.audit.log_login_failure(username.lower(), ip_address=ip, reason="invalid_credentials")
            raise
        self.audit.log_login_success(user.username, ip_address=ip)
        return self.issue_token(user)

    def issue_token(self, user: User) -> AccessToken:
        return self.tokens.create_access_token(user.username, user.role.value, token_generation=user.token_generation)

    async def authenticate(self, token: str) -> Principal:
        """Verify the token, then that it is neither revoked nor from before a password change."""
        claims = self.tokens.verify_access_token(token)
        return await self.principal_for(claims)

    async def principal_for(self, claims: TokenClaims) -> Principal:
        """The caller of verified `claims`: remembered, or read (user and revocation) and remembered."""
        remembered = self.principals.get(claims)
        if remembered is not None:
            return remembered
        epoch = self.principals.epoch
        user = await self.users.find_user_with_live_token(claims.sub, claims.jti)
        if user is None:
            raise InvalidToken()
        if claims.generation != user.token_generation and claims.jti != user.kept_jti:
            raise InvalidToken()
        principal = Principal(user, claims)
        self.principals.put(principal, epoch)
        return principal

    async def logout(self, principal: Principal, *, ip: str | None = None) -> None:
        """Revoke the token's id until the token would have expired anyway."""
        claims = principal.claims
        await self.users.revoke_token(principal.username, claims.jti, claims.exp)
        self.audit.log_logout(principal.username, ip_address=ip)
        self.audit.log_token_revoked(principal.username, claims.jti, reason="logout")

    async def update_profile(self, principal: Principal, request: ProfileUpdateRequest) -> User:
        changes: dict[str, Any] = {}
        for name in request.model_fields_set:
            value = getattr(request, name)
            if value is None and name not in ("phone", "date_of_birth"):
                continue
            changes[name] = value
        if not changes:
            return principal.user
        return await self.users.update_user(principal.user, changes)

    async def change_password(
        self, principal: Principal, request: PasswordChangeRequest, *, ip: str | None = None
    ) -> AccessToken:
        """Check the current password, store the new one and revoke every other token."""
        valid = await self.passwords.verify_password_async(request.current_password, principal.user.password_hash)
        if not valid:
            self.audit.log_login_failure(principal.username, ip_address=ip, reason="password_change_wrong_current")
            raise InvalidCredentials("The current password is wrong")
        self.passwords.validate_password_strength(request.new_password)
        new_hash = await self.passwords.hash_password_async(request.new_password)
        await self.users.change_password(principal.user, new_hash, principal.claims.jti)
        self.audit.log_password_change(principal.username, ip_address=ip)
        self.audit.log_token_revoked(principal.username, "all-other-tokens", reason="password_change")
        if self.api_keys is not None:
            # The generation moved on, so every key is dead already; this removes them from the store.
            await self.api_keys.revoke_all(principal.username, reason="password_change")
        user = await self.users.get_user_by_username(principal.username)
        return self.issue_token(user)


class MoneyService:
    """Deposits and withdrawals: balance + ledger entry + daily counter (+ idempotency) at once."""

    def __init__(self, store: ItemStore, balances: BalanceDAO, settings: Settings, clock: Clock) -> None:
        self.store = store
        self.balances = balances
        self.settings = settings
        self.clock = clock

    def _daily_limit_op(self, username: str, kind: str, amount: Decimal, limit: Decimal) -> Op:
        now = self.clock.now()
        expires = int((now + timedelta(days=2)).timestamp())
        return Update(
            keys.USERS,
            keys.daily_limit_key(username, kind, now.date().isoformat()),
            set={"expires_at": Decimal(expires)},
            add={"total": amount},
            condition=Or(AttrNotExists("total"), Le("total", limit - amount)),
        )

    async def daily_usage(self, username: str) -> dict[str, tuple[Decimal, Decimal]]:
        """Per kind (`deposit`, `withdraw`): what the user moved today (UTC) and the day's limit."""
        day = self.clock.now().date().isoformat()
        usage: dict[str, tuple[Decimal, Decimal]] = {}
        for kind, limit in (
            (TransactionType.DEPOSIT.value, self.settings.daily_deposit_limit),
            (TransactionType.WITHDRAW.value, self.settings.daily_withdraw_limit),
        ):
            item = await self.store.get(keys.USERS, keys.daily_limit_key(username, kind, day))
            usage[kind] = (Decimal(item["total"]) if item and "total" in item else Decimal("0.00"), limit)
        return usage

    async def deposit(self, username: str, amount: Decimal) -> MoneyMovementResponse:
        return await self._move(username, TransactionType.DEPOSIT, amount)

    async def withdraw(self, username: str, amount: Decimal) -> MoneyMovementResponse:
        return await self._move(username, TransactionType.WITHDRAW, amount)

    async def _move(self, username: str, kind: TransactionType, amount: Decimal) -> MoneyMovementResponse:
        deposit = kind is TransactionType.DEPOSIT
        limit = self.settings.daily_deposit_limit if deposit else self.settings.daily_withdraw_limit
        if amount > limit:
            raise DailyLimitExceeded(f"The daily {kind.value} limit is {limit} USD")
        now = self.clock.now()
        entry = BalanceTransaction(
            transaction_id=new_id(),
            username=username,
            transaction_type=kind,
            amount=amount,
            available_change=amount if deposit else -amount,
            held_change=Decimal("0.00"),
            description=f"Deposit of {amount} USD" if deposit else f"Withdrawal of {amount} USD",
            created_at=now,
        )
        legs = Legs()
        await self.balances.create_transaction(
            entry, deposited=amount if deposit else Decimal(0), withdrawn=Decimal(0) if deposit else amount, tx=legs
        )
        legs.add(Leg.DAILY_LIMIT, self._daily_limit_op(username, kind.value, amount, limit))
        mark = applying_mark()  # set when the request carries an idempotency key
        if mark is not None:
            legs.add(Leg.IDEMPOTENCY, mark(entry.transaction_id))
        try:
            await legs.commit(self.store)
        except GuardFailed as failed:
            if failed.leg is Leg.BALANCE:
                if deposit:
                    raise UserNotFound() from failed
                raise InsufficientFunds(f"Available balance is less than {amount} USD") from failed
            if failed.leg is Leg.DAILY_LIMIT:
                raise DailyLimitExceeded(f"The daily {kind.value} limit of {limit} USD would be exceeded") from failed
            if failed.leg is Leg.IDEMPOTENCY:
                raise IdempotencyInProgress() from failed
            raise StoreError(f"unexpected condition failure on the {failed.leg.value} leg") from failed
        return await self._movement_response(entry)

    async def movement_of(self, username: str, transaction_id: str) -> MoneyMovementResponse:
        """The answer to a deposit or withdrawal, rebuilt from its ledger entry (an idempotent replay)."""
        entry = await self.balances.get_transaction(username, transaction_id)
        if entry is None:
            raise StoreError(f"ledger entry {transaction_id} of an applied idempotency key is missing")
        return await self._movement_response(entry)

    async def _movement_response(self, entry: BalanceTransaction) -> MoneyMovementResponse:
        deposit = entry.transaction_type is TransactionType.DEPOSIT
        balance = await self.balances.get_balance(entry.username)
        return MoneyMovementResponse(
            success=True,
            message=f"Successfully {'deposited' if deposit else 'withdrew'} {entry.amount} USD",
            transaction_id=entry.transaction_id,
            amount=entry.amount,
            balance=balance.current_balance,
            timestamp=entry.created_at,
        )
