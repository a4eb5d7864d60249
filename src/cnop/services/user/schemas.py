"""Request and response shapes of the user service (docs/api.md: Auth and profile, Balance and ledger)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from cnop.common.entities.balance import Balance, BalanceTransaction
from cnop.common.entities.user import User
from cnop.common.money import UsdAmount, UsdAmountInput, usd_text

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_]{6,30}$")
_PHONE_ALLOWED = re.compile(r"^\+?[0-9 ().\-]+$")


def _username(value: str) -> str:
    if not USERNAME_PATTERN.fullmatch(value):
        raise ValueError("must be 6-30 characters of letters, digits and underscore")
    return value.lower()


def _email(value: str) -> str:
    try:
        result = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError("must be a valid email address") from exc
    return result.normalized.lower()


def _person_name(value: str) -> str:
    name = value.strip()
    if not name:
        raise ValueError("must not be empty")
    if len(name) > 50:
        raise ValueError("must be at most 50 characters")
    if not all(ch.isalpha() or ch in " '-" for ch in name) or not any(ch.isalpha() for ch in name):
        raise ValueError("may contain only letters, spaces, apostrophes and hyphens")
    return name


def _phone(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None  # "" means no phone, like null (the original's clients send it)
    if not _PHONE_ALLOWED.fullmatch(text):
        raise ValueError("may contain only digits, spaces, +, -, ., ( and )")
    digits = re.sub(r"\D", "", text)
    if not 10 <= len(digits) <= 15:
        raise ValueError("must have 10-15 digits")
    return ("+" if text.startswith("+") else "") + digits


def _date_of_birth(value: Any) -> Any:
    if value is None or isinstance(value, date):
        return value
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be a date written YYYY-MM-DD")
    return value


def _age_in_range(value: date | None) -> date | None:
    if value is None:
        return None
    today = datetime.now(UTC).date()
    if value > today:
        raise ValueError("must not be in the future")
    age = today.year - value.year - ((today.month, today.day) < (value.month, value.day))
    if not 13 <= age <= 120:
        raise ValueError("age must be between 13 and 120")
    return value


Username = Annotated[str, AfterValidator(_username)]
Email = Annotated[str, Field(max_length=254), AfterValidator(_email)]
PersonName = Annotated[str, Field(max_length=200), AfterValidator(_person_name)]
Phone = Annotated[str | None, Field(max_length=40), AfterValidator(_phone)]
DateOfBirth = Annotated[date | None, BeforeValidator(_date_of_birth), AfterValidator(_age_in_range)]
Password = Annotated[str, Field(min_length=12, max_length=128)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


class RegisterRequest(StrictModel):
    username: Username
    email: Email
    password: Password
    first_name: PersonName
    last_name: PersonName
    phone: Phone = None
    date_of_birth: DateOfBirth = None
    marketing_emails_consent: bool = False


class LoginRequest(StrictModel):
    username: Annotated[str, Field(min_length=6, max_length=30)]
    password: Password


class ProfileUpdateRequest(StrictModel):
    first_name: PersonName | None = None
    last_name: PersonName | None = None
    email: Email | None = None
    phone: Phone = None
    date_of_birth: DateOfBirth = None
    marketing_emails_consent: bool | None = None


class PasswordChangeRequest(StrictModel):
    current_password: Annotated[str, Field(min_length=1, max_length=128)]
    new_password: Annotated[str, Field(min_length=1, max_length=1024)]


class UserProfile(BaseModel):
    username: str
    email: str
    first_name: str
    last_name: str
    phone: str | None
    date_of_birth: date | None
    marketing_emails_consent: bool
    role: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, user: User) -> UserProfile:
        return cls(
            username=user.username,
            email=user.email,
            first_name=user.first_name,
            last_name=user.last_name,
            phone=user.phone,
            date_of_birth=user.date_of_birth,
            marketing_emails_consent=user.marketing_emails_consent,
            role=user.role.value,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )

    @staticmethod
    def wire(user: User) -> dict[str, Any]:
        """What `UserProfile.of(user).model_dump(mode="python")` gives, without building the model
        (`GET /auth/profile` is a hot read; a test holds the two equal)."""
        return {
            "username": user.username,
            "email": user.email,
            "first_name": user.first_name,
            "last_name": user.last_name,
            "phone": user.phone,
            "date_of_birth": user.date_of_birth,
            "marketing_emails_consent": user.marketing_emails_consent,
            "role": user.role.value,
            "created_at": user.created_at,
            "updated_at": user.updated_at,
        }


class UserEnvelope(BaseModel):
    message: str
    user: UserProfile


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class MessageResponse(BaseModel):
    message: str


class PasswordChangedResponse(MessageResponse):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class AmountRequest(StrictModel):
    amount: UsdAmountInput


class BalanceResponse(BaseModel):
    current_balance: UsdAmount
    available_balance: UsdAmount
    held_balance: UsdAmount
    total_deposited: UsdAmount
    total_withdrawn: UsdAmount
    currency: str
    updated_at: datetime

    @classmethod
    def of(cls, balance: Balance) -> BalanceResponse:
        return cls(
            current_balance=balance.current_balance,
            available_balance=balance.available,
            held_balance=balance.held,
            total_deposited=balance.total_deposited,
            total_withdrawn=balance.total_withdrawn,
            currency=balance.currency,
            updated_at=balance.updated_at,
        )

    @staticmethod
    def wire(balance: Balance) -> dict[str, Any]:
        """What `BalanceResponse.of(balance).model_dump(mode="python")` gives, without building the
        model (`GET /balance` is a hot read; a test holds the two equal)."""
        return {
            "current_balance": usd_text(balance.current_balance),
            "available_balance": usd_text(balance.available),
            "held_balance": usd_text(balance.held),
            "total_deposited": usd_text(balance.total_deposited),
            "total_withdrawn": usd_text(balance.total_withdrawn),
            "currency": balance.currency,
            "updated_at": balance.updated_at,
        }


class MoneyMovementResponse(BaseModel):
    success: bool
    message: str
    transaction_id: str
    amount: UsdAmount
    balance: UsdAmount
    timestamp: datetime


class LedgerEntry(BaseModel):
    transaction_id: str
    transaction_type: str
    amount: UsdAmount
    available_change: UsdAmount
    held_change: UsdAmount
    status: str
    description: str
    order_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, entry: BalanceTransaction) -> LedgerEntry:
        return cls(
            transaction_id=entry.transaction_id,
            transaction_type=entry.transaction_type.value,
            amount=entry.amount,
            available_change=entry.available_change,
            held_change=entry.held_change,
            status=entry.status.value,
            description=entry.description,
            order_id=entry.order_id,
            created_at=entry.created_at,
        )


class LedgerPage(BaseModel):
    transactions: list[LedgerEntry]
    has_more: bool
    next_cursor: str | None
