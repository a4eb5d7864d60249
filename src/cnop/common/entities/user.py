"""User entities."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class UserRole(StrEnum):
    CUSTOMER = "customer"
    ADMIN = "admin"


class User(BaseModel):
    """A registered user. `password_hash` never leaves the user service."""

    model_config = ConfigDict(frozen=True)

    username: str
    email: str
    first_name: str
    last_name: str
    phone: str | None = None
    date_of_birth: date | None = None
    marketing_emails_consent: bool = False
    role: UserRole = UserRole.CUSTOMER
    password_hash: str
    # Tokens carry the generation they were issued in; a password change moves it on, which
    # revokes every older token at once (the token used for the change is kept via `kept_jti`).
    token_generation: int = 0
    kept_jti: str | None = None
    created_at: datetime
    updated_at: datetime
