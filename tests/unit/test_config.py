"""Settings come from CNOP_* environment variables."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cnop.common.config import Settings


def test_environment_overrides_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNOP_STORE", "sqlite:///tmp/x.db")
    monkeypatch.setenv("CNOP_ORDER_VALUE_LIMIT", "2500.50")
    monkeypatch.setenv("CNOP_TRUSTED_PROXIES", "10.0.0.1, 192.168.0.0/16")
    monkeypatch.setenv("CNOP_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("CNOP_MAX_PRICE_AGE", "12")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.store == "sqlite:///tmp/x.db"
    assert settings.order_value_limit == Decimal("2500.50")
    assert settings.trusted_proxies == ["10.0.0.1", "192.168.0.0/16"]
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.max_price_age_seconds == 12


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNOP_MAX_PRICE_AGE_SECONDS", "-1")
    with pytest.raises(ValueError):
        Settings(_env_file=None)  # type: ignore[call-arg]
