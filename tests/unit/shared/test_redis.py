"""The Redis client factory, key prefix, ping and the fail-fast start-up check (against a real redis-server)."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from cnop.cli import app
from cnop.common.config import Settings
from cnop.common.counters import redis_counters
from cnop.common.metrics import Metrics
from cnop.common.shared.redis import (
    EXIT_REDIS_UNAVAILABLE,
    RedisUnavailable,
    connection_url,
    open_redis,
    ping_redis,
    redacted,
    startup_problem,
    watch_redis,
)
from tests.support.redis_server import RedisServer, free_port


def _settings(**values: object) -> Settings:
    return Settings(jwt_secret="test-secret-that-is-long-enough-for-hs256-0123456789", **values)  # type: ignore[arg-type]


def test_without_a_url_there_is_no_shared_redis_and_nothing_to_check() -> None:
    assert open_redis(_settings(redis_url=None)) is None
    assert startup_problem(_settings(redis_url=None)) is None


async def test_keys_carry_the_deployment_prefix_and_the_client_round_trips(redis_url: str, redis_prefix: str) -> None:
    shared = open_redis(_settings(redis_url=redis_url, redis_prefix=redis_prefix))
    assert shared is not None
    try:
        key = shared.key("rl", "ip", "2001:db8::1")
        assert key == f"{redis_prefix}rl:ip:2001:db8::1"
        await shared.client.set(key, "7", ex=60)
        assert await shared.client.get(key) == "7"  # strings in, strings out
        assert 0 < await shared.client.ttl(key) <= 60
        await shared.ping()
    finally:
        await shared.close()
    with pytest.raises(ValueError, match="at least one part"):
        shared.key()


def test_the_password_never_shows_in_a_url_meant_for_a_log() -> None:
    assert redacted("rediss://app:s3cr3t@cache.example:6380/0") == "rediss://app:***@cache.example:6380/0"
    assert redacted("redis://:s3cr3t@127.0.0.1/0") == "redis://:***@127.0.0.1/0"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


async def test_ping_answers_a_live_server_and_raises_for_a_dead_port(redis_url: str) -> None:
    await ping_redis(redis_url)
    with pytest.raises(RedisUnavailable):
        await ping_redis(f"redis://127.0.0.1:{free_port()}/0", within_seconds=1.0)
    with pytest.raises(ValueError, match="redis://HOST"):
        await ping_redis("http://127.0.0.1:6379")


async def test_a_password_in_the_url_is_used_and_a_wrong_one_is_refused() -> None:
    with RedisServer.start(password="pw-for-tests") as server:
        await ping_redis(server.url)
        with pytest.raises(RedisUnavailable):
            await ping_redis(f"redis://:wrong@127.0.0.1:{server.port}/0")
        with pytest.raises(RedisUnavailable):
            await ping_redis(f"redis://127.0.0.1:{server.port}/0")  # no password at all
        # An ACL user with its password (`redis://USER:PASSWORD@`).
        await ping_redis(f"redis://default:pw-for-tests@127.0.0.1:{server.port}/0")


async def test_the_gauge_follows_redis_down_and_back(restartable_redis: RedisServer) -> None:
    metrics = Metrics()
    watcher = asyncio.create_task(watch_redis(restartable_redis.url, metrics, every_seconds=0.05))

    async def gauge_becomes(value: float) -> None:
        async with asyncio.timeout(10):
            while metrics.redis_up._value.get() != value:
                await asyncio.sleep(0.02)

    try:
        await gauge_becomes(1)
        restartable_redis.stop()
        await gauge_becomes(0)
        restartable_redis.restart()
        await gauge_becomes(1)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def test_a_configured_redis_that_does_not_answer_stops_start_up_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"redis://:hidden-pw@127.0.0.1:{free_port()}/0"
    problem = startup_problem(_settings(redis_url=url, redis_startup_timeout_seconds=1.0))
    assert problem is not None
    assert "CNOP_REDIS_URL" in problem and "does not answer" in problem
    assert "hidden-pw" not in problem and "***" in problem

    monkeypatch.setenv("CNOP_REDIS_URL", url)
    monkeypatch.setenv("CNOP_REDIS_STARTUP_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("CNOP_JWT_SECRET", "test-secret-that-is-long-enough-for-hs256-0123456789")
    runner = CliRunner()
    for command in (["serve", "--port", str(free_port())], ["serve", "worker", "--port", str(free_port())]):
        result = runner.invoke(app, command)
        assert result.exit_code == EXIT_REDIS_UNAVAILABLE, result.output
        assert "Redis does not answer" in result.output
        assert "hidden-pw" not in result.output


def test_the_password_setting_goes_into_a_url_without_one_and_never_overrides_the_url() -> None:
    def url(redis_url: str, password: str | None) -> str | None:
        return connection_url(_settings(redis_url=redis_url, redis_password=password))

    assert url("rediss://cache.example:6379/0", "tok/en:@") == "rediss://:tok%2Fen%3A%40@cache.example:6379/0"
    assert url("rediss://cnop@cache.example:6379/0", "pw") == "rediss://cnop:pw@cache.example:6379/0"  # ACL user
    assert url("redis://:in-url@127.0.0.1/0", "setting") == "redis://:in-url@127.0.0.1/0"  # the URL wins
    assert url("redis://127.0.0.1:6379/0", None) == "redis://127.0.0.1:6379/0"
    assert connection_url(_settings(redis_url=None, redis_password="pw")) is None
    assert "pw-setting" not in repr(_settings(redis_url="redis://h/0", redis_password="pw-setting"))


async def test_the_password_setting_authenticates_every_client_and_a_wrong_one_stops_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with RedisServer.start(password="pw/for:tests") as server:
        bare = f"redis://127.0.0.1:{server.port}/0"
        settings = _settings(redis_url=bare, redis_password="pw/for:tests", redis_prefix="pwtest:")
        assert await asyncio.to_thread(startup_problem, settings) is None
        shared = open_redis(settings)
        assert shared is not None
        try:
            await shared.client.set(shared.key("k"), "v")
            assert await shared.client.get("pwtest:k") == "v"
            await shared.ping()
        finally:
            await shared.close()
        counters = redis_counters(settings)  # `limits`' own pool gets the password too
        assert await counters.incr("pwtest-counter", 60) == 1
        assert await counters.get("pwtest-counter") == 1

        wrong = _settings(redis_url=bare, redis_password="wrong-pw-xyz", redis_startup_timeout_seconds=1.0)
        problem = await asyncio.to_thread(startup_problem, wrong)
        assert problem is not None
        assert "does not answer" in problem and "CNOP_REDIS_PASSWORD" in problem
        assert "wrong-pw-xyz" not in problem and "***" in problem

        monkeypatch.setenv("CNOP_REDIS_URL", bare)
        monkeypatch.setenv("CNOP_REDIS_PASSWORD", "wrong-pw-xyz")
        monkeypatch.setenv("CNOP_REDIS_STARTUP_TIMEOUT_SECONDS", "1")
        monkeypatch.setenv("CNOP_JWT_SECRET", "test-secret-that-is-long-enough-for-hs256-0123456789")
        result = await asyncio.to_thread(CliRunner().invoke, app, ["serve", "worker", "--port", str(free_port())])
        assert result.exit_code == EXIT_REDIS_UNAVAILABLE, result.output
        assert "Redis does not answer" in result.output and "wrong-pw-xyz" not in result.output
