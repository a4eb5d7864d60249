"""Settings: one pydantic-settings class, env prefix CNOP_, `.env` read. Every limit lives here."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_HOUSE_SHARDS = 32


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _split_pairs(value: object) -> object:
    """`name=value,name=value` (how a ConfigMap writes a map) as a dict; a dict passes through."""
    if isinstance(value, str):
        pairs: dict[str, str] = {}
        for part in value.split(","):
            name, sep, item = part.partition("=")
            if part.strip() and not sep:
                raise ValueError(f"{part.strip()!r} is not name=value")
            if part.strip():
                pairs[name.strip()] = item.strip()
        return pairs
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CNOP_", env_file=".env", extra="ignore")

    # Shape and store
    store: str = "sqlite:///./data/cnop.db"
    dynamodb_table_prefix: str = "cnop"
    # SQLite's commit durability (WAL mode): NORMAL survives a killed process, FULL also a power cut.
    sqlite_synchronous: Literal["NORMAL", "FULL", "EXTRA"] = "NORMAL"
    # Concurrent transactions share one SQLite commit, a savepoint each (off: one commit each).
    sqlite_group_commit: bool = True
    # Reads run in place on the event loop's thread, on a read connection of their own (off: on
    # the store thread, a hop each way).
    sqlite_inline_reads: bool = True
    aws_role_arn: str | None = None
    aws_role_session_name: str = "cnop"
    environment: str = "local"
    # `local`: one process, HS256 allowed. `cloud`: one process per service (`cnop serve <service>`),
    # tokens only asymmetric (EdDSA), signed by the user service alone.
    shape: Literal["local", "cloud"] = "local"

    # Tokens
    jwt_secret: SecretStr | None = None
    jwt_algorithm: str = "HS256"
    jwt_private_key_file: str | None = None
    jwt_public_key_file: str | None = None
    # Every `*.pem` in this directory is a trusted public key (rotation: old and new at once).
    jwt_public_keys_dir: str | None = None
    jwt_issuer: str = "cnop"
    jwt_audience: str = "cnop-api"
    access_token_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 86400)

    # API keys (bots): the secret is stored as HMAC-SHA-256 under this server-side key. Unset, it is
    # derived from CNOP_JWT_SECRET; with neither set, keys die with the process (like tokens).
    api_key_secret: SecretStr | None = None
    api_keys_per_user: int = Field(default=10, ge=1, le=100)
    api_key_max_lifetime_days: int = Field(default=366, ge=1, le=3660)
    rate_limit_per_api_key: str = "200/minute"

    # Passwords
    password_hash_workers: int = Field(default=2, ge=1, le=32)

    # Money
    max_single_deposit: Decimal = Decimal("1000000")
    daily_deposit_limit: Decimal = Decimal("10000")
    daily_withdraw_limit: Decimal = Decimal("5000")
    order_value_limit: Decimal = Decimal("10000")
    # Stop and trailing buys fill at the market price once triggered, which may gap past the
    # stop: they reserve this fraction more than quantity x stop, and a fill that still costs more
    # takes the difference from available cash (or fails, releasing the hold).
    stop_buy_reserve_margin: Decimal = Field(default=Decimal("0.05"), ge=0, le=1)
    expiry_check_seconds: float = Field(default=1.0, gt=0)
    # Run the trigger engine inside `cnop serve` (false: API only, engines run as `cnop serve worker`).
    trigger_engine: bool = True
    idempotency_ttl_seconds: int = 86400
    idempotency_lease_seconds: int = 30
    # The house side of each asset is split into this many inventory shards, so concurrent
    # trades write different items (decision 0025); new assets and `cnop db migrate` use it, and
    # the rebalancer grows existing assets to it (never shrinks them).
    house_shards: int = Field(default=DEFAULT_HOUSE_SHARDS, ge=1, le=64)
    # How often the shards of each asset are rebalanced (by the trigger-engine process; with
    # Redis, by the one holding the `house-rebalance` lease).
    house_rebalance_seconds: float = Field(default=5.0, gt=0)

    # Prices
    price_source: str = "simulated"
    price_tick_seconds: float = Field(default=1.0, gt=0)
    price_seed: int = 42
    # `replay:PATH.csv` starts the file again from the top when it ends (a demo that never goes stale).
    price_replay_loop: bool = False
    # Also read from CNOP_MAX_PRICE_AGE, the name the trading issue uses.
    max_price_age_seconds: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices("max_price_age_seconds", "CNOP_MAX_PRICE_AGE_SECONDS", "CNOP_MAX_PRICE_AGE"),
    )
    price_history_size: int = 1440
    # Price history kept in the store for charts (per asset: a point per minute for a day, per
    # hour for 30 days), written every this many seconds; 0 keeps history in memory only.
    price_history_flush_seconds: float = Field(default=10.0, ge=0)
    # The public price stream (GET /api/v1/prices/stream): assets per connection, open
    # connections per client IP, and how long one connection lasts before the client reconnects.
    price_stream_max_assets: int = Field(default=50, ge=1, le=500)
    price_stream_connections_per_ip: int = Field(default=8, ge=1)
    price_stream_max_seconds: float = Field(default=900.0, gt=0)
    # With CNOP_REDIS_URL (market/bus.py, market/leader.py): one process at a time runs the price
    # source, holding a lease of this many seconds (renewed every third of it), so another one
    # takes over this long after the holder dies or stalls.
    price_lease_seconds: float = Field(default=5.0, ge=0.3, le=600)
    # Whether this process competes for that lease; unset, it does where the trigger engine runs
    # (`cnop serve` with the engine, `cnop serve worker`, `cnop serve price`), never in an API process.
    price_publisher: bool | None = None
    # About how many batches the shared price stream keeps (older entries are trimmed).
    price_stream_maxlen: int = Field(default=10_000, ge=100, le=1_000_000)

    # Gateway
    rate_limit_enabled: bool = True
    rate_limit_per_ip: str = "600/minute"
    rate_limit_per_user: str = "300/minute"
    login_guard_failures: int = 5
    login_guard_window_seconds: int = 300
    login_guard_block_seconds: int = 300
    # Per account (common/security/login_guard.py AccountThrottle): free failures, then doubling delays.
    login_account_free_failures: int = Field(default=5, ge=1)
    login_account_base_delay_seconds: float = Field(default=1.0, gt=0)
    login_account_max_delay_seconds: float = Field(default=60.0, gt=0)
    login_account_window_seconds: int = Field(default=3600, ge=1)
    # Concurrent event streams (GET /api/v1/events), per user and per client IP; past them 429.
    max_streams_per_user: int = Field(default=5, ge=1)
    max_streams_per_ip: int = Field(default=20, ge=1)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    metrics_enabled: bool = True

    # Shared state (common/shared/redis.py). Set, every process shares prices, events, limits and
    # cache invalidation through this Redis (redis:// or rediss:// for TLS; `redis://USER:PASSWORD@`
    # for an ACL user); unset, each process keeps its own. Keys start with `redis_prefix`, so two
    # deployments can share one Redis.
    redis_url: str | None = None
    # The password (ElastiCache AUTH token, or the ACL user's password) kept apart from the URL, so
    # that it can come from a Secret while the URL stays in plain configuration. Applied only when
    # the URL carries no password of its own; never logged.
    redis_password: SecretStr | None = None
    redis_prefix: str = Field(default="cnop:", max_length=64)
    redis_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    # A command that takes longer fails (and the caller falls back); blocking reads pass their own.
    redis_socket_timeout_seconds: float = Field(default=2.0, gt=0)
    redis_max_connections: int = Field(default=64, ge=1)
    # `cnop serve` and the workers wait this long for a first PING before refusing to start.
    redis_startup_timeout_seconds: float = Field(default=5.0, gt=0)
    # How long a process trusts its cached copy of an asset. Changes made through the API are
    # announced on the invalidation channel, so with Redis other processes drop them at once;
    # this bounds staleness only when a message is lost (Redis down).
    asset_cache_seconds: float = Field(default=2.0, ge=0)
    # How long one `/health` (liveness) answer is given again before its checks run anew (0: every
    # request runs them). `/health/ready` always runs its checks.
    health_cache_seconds: float = Field(default=1.0, ge=0)
    # How long a process remembers the caller behind a token (its user and that the token is not
    # revoked) instead of reading both per request. Logout, password and profile changes are
    # announced on the invalidation channel and drop it at once, in every process; while this
    # process's Redis listener is cut off the cache is not used. 0: read on every request.
    principal_cache_seconds: float = Field(default=30.0, ge=0)
    # rediss:// only: a CA bundle to verify the server with (default: the system's trust store).
    redis_tls_ca_file: str | None = None

    # HTTP server layer (`cnop serve`, gateway/server.py): refused before the app sees a request
    server_max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    server_header_timeout_seconds: float = Field(default=10.0, gt=0)
    server_keep_alive_seconds: float = Field(default=5.0, gt=0)
    server_max_connections: int = Field(default=1000, ge=1)
    # Peers in `trusted_proxies` are exempt (a load balancer carries many clients).
    server_max_connections_per_ip: int = Field(default=100, ge=1)
    # Request bodies (gateway/middleware/body_limit.py): larger ones are 413 before they are read
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_auth_body_bytes: int = Field(default=8 * 1024, ge=1024)

    # Gateway to services (the cloud shape): `CNOP_UPSTREAM_URLS=user=http://user:8080,order=...`
    # names each service's base URL; `CNOP_UPSTREAM_TIMEOUTS=/api/v1/insights=30` overrides the
    # read timeout of a routed prefix (the defaults are in `cnop.gateway.upstreams.ROUTES`).
    upstream_urls: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    upstream_timeouts: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    upstream_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    upstream_max_connections: int = Field(default=256, ge=1)
    upstream_max_keepalive_connections: int = Field(default=64, ge=1)
    upstream_keepalive_seconds: float = Field(default=30.0, gt=0)
    # Idempotent requests are retried this many times (so up to retries + 1 attempts) after a
    # transport error or a 502/503/504, with jittered back-off from `upstream_retry_backoff_seconds`.
    upstream_retries: int = Field(default=2, ge=0, le=5)
    upstream_retry_backoff_seconds: float = Field(default=0.05, ge=0)
    # Bodies up to this size with a Content-Length are kept so that a retry can resend them;
    # larger or chunked bodies stream straight through and are never retried.
    upstream_replay_body_bytes: int = Field(default=65536, ge=0)
    breaker_window_seconds: float = Field(default=30.0, gt=0)
    breaker_min_failures: int = Field(default=5, ge=1)
    breaker_failure_ratio: float = Field(default=0.5, gt=0, le=1)
    breaker_open_seconds: float = Field(default=10.0, gt=0)
    breaker_half_open_probes: int = Field(default=2, ge=1)

    # On SIGTERM: answer not-ready (and close event streams) this long before the server stops,
    # so a load balancer stops sending first. 0 stops at once (a developer's Ctrl-C).
    shutdown_drain_seconds: float = Field(default=0.0, ge=0, le=300)

    # Web app: where `make install` put the npm assets (default: ./node_modules of the checkout,
    # then of the working directory).
    web_assets_dir: str | None = None

    # Logging
    log_level: str = "INFO"
    log_json: bool = True

    _split_lists = field_validator("cors_origins", "trusted_proxies", mode="before")(_split_csv)
    _split_maps = field_validator("upstream_urls", "upstream_timeouts", mode="before")(_split_pairs)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
