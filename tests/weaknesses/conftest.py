"""The weak points run through the same ASGI app as the API tests, on each store engine."""

from tests.support.api import api, fake_clock_api

__all__ = ["api", "fake_clock_api"]
