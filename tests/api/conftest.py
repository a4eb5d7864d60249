"""API tests run through the gateway's ASGI app, on each store engine (fixtures: tests/support/api.py)."""

from tests.support.api import api, fake_clock_api

__all__ = ["api", "fake_clock_api"]
