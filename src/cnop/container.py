"""The composition root: builds every component once, from settings, for one process."""

from __future__ import annotations

import math
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from cnop.common.clock import Clock, SystemClock
from cnop.common.config import Settings
from cnop.common.counters import CounterStore, counter_store
from cnop.common.dao.api_key_dao import ApiKeyDAO
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.house_dao import HouseInventory, HouseRebalancer
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.dao.user_dao import UserDAO
from cnop.common.database.factory import open_store
from cnop.common.database.store import ItemStore
from cnop.common.events import EventBus, InProcessEventBus, StreamConnections
from cnop.common.idempotency import IdempotencyRecords
from cnop.common.metrics import Metrics
from cnop.common.security import AuditLogger, PasswordManager, TokenManager
from cnop.common.security.api_key_hasher import ApiKeyHasher
from cnop.common.security.login_guard import AccountThrottle, LoginGuard, login_guard_from_settings
from cnop.common.shared.invalidation import ALL, TOKEN, USER, Invalidations, invalidations_for
from cnop.common.shared.lease import FencedLease
from cnop.common.shared.redis import SharedRedis, open_redis, watch_redis
from cnop.common.shared.redis_events import RedisEventBus
from cnop.common.shared.shards import AssetShards
from cnop.market.bus import LocalPriceBus, PriceBus, RedisPriceBus
from cnop.market.catalogue import CatalogueAsset, load_catalogue
from cnop.market.feed import PriceFeed
from cnop.market.history import PriceHistoryRecorder, PriceHistoryStore, StorePriceHistory
from cnop.market.leader import LeasedPriceFeed
from cnop.market.prices import PriceBook, PriceSource
from cnop.market.sources import open_price_source
from cnop.services.insights.service import InsightsService
from cnop.services.inventory.service import InventoryService
from cnop.services.order.fills import Fills
from cnop.services.order.placement import Placement
from cnop.services.order.release import Release
from cnop.services.order.service import OrderService
from cnop.services.order.settlement import Settlement
from cnop.services.order.triggers import TriggerEngine
from cnop.services.stream_slots import StreamSlots
from cnop.services.user.api_keys import ApiKeyService
from cnop.services.user.portfolio import PortfolioService
from cnop.services.user.service import AccountService, MoneyService


@dataclass
class Container:
    settings: Settings
    clock: Clock
    store: ItemStore
    passwords: PasswordManager
    tokens: TokenManager
    audit: AuditLogger
    metrics: Metrics
    # Shared state (common/shared): the Redis client (None without CNOP_REDIS_URL), the counters
    # of rate limits and the login guard, and the cache-invalidation channel, each chosen once here.
    redis: SharedRedis | None
    counters: CounterStore
    invalidations: Invalidations
    login_guard: LoginGuard
    account_throttle: AccountThrottle
    streams: StreamSlots
    idempotency: IdempotencyRecords
    catalogue: list[CatalogueAsset]
    price_book: PriceBook
    price_source: PriceSource | None
    user_dao: UserDAO
    balance_dao: BalanceDAO
    asset_dao: AssetDAO
    holding_dao: HoldingDAO
    order_dao: OrderDAO
    api_key_dao: ApiKeyDAO
    api_keys: ApiKeyService
    accounts: AccountService
    money: MoneyService
    inventory: InventoryService
    trading: OrderService
    portfolio: PortfolioService
    insights: InsightsService
    events: EventBus
    triggers: TriggerEngine
    price_history: PriceHistoryStore
    price_stream_connections: StreamConnections
    # How ticks reach this process's book: in-process, or a Redis stream every process follows.
    price_bus: PriceBus
    # The price lease if this process competes to be the fleet's one price publisher (Redis only).
    price_lease: FencedLease | None = None
    # Run at start-up (after the tables exist), and background tasks living as long as the app.
    startup: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)


def _price_age(book: PriceBook, clock: Clock) -> Callable[[], float]:
    def age() -> float:
        last = book.last_applied_at
        return math.inf if last is None else max(0.0, (clock.now() - last).total_seconds())

    return age


def build_container(
    settings: Settings,
    *,
    clock: Clock | None = None,
    store: ItemStore | None = None,
    passwords: PasswordManager | None = None,
) -> Container:
    clock = clock or SystemClock()
    store = store or open_store(settings.store, settings)
    passwords = passwords or PasswordManager(settings)
    tokens = TokenManager(settings, clock=clock)
    audit = AuditLogger()
    metrics = Metrics()
    redis = open_redis(settings)
    counters = counter_store(settings, clock)
    invalidations = invalidations_for(redis)
    catalogue = list(load_catalogue())
    shared = redis
    price_bus: PriceBus
    if shared is None:
        price_book = PriceBook.seed(catalogue, clock, history_size=settings.price_history_size)
        price_bus = LocalPriceBus(price_book)
    else:
        # The book starts from the shared prices and history (RedisPriceBus.start), not the snapshot.
        price_book = PriceBook(clock, history_size=settings.price_history_size)
        price_bus = RedisPriceBus(
            shared,
            price_book,
            clock,
            catalogue=catalogue,
            stream_maxlen=settings.price_stream_maxlen,
            block_seconds=min(1.0, settings.redis_socket_timeout_seconds / 2),
        )
    # With `manual`, the admin endpoint feeds the manual source, and the feed publishes its prices
    # on the bus (with Redis: from whichever process the admin used). Any other source runs, with
    # Redis, only in a process that competes for the price lease (never in an API process).
    manual = settings.price_source.strip().lower() == "manual"
    publisher = settings.trigger_engine if settings.price_publisher is None else settings.price_publisher
    price_source = (
        open_price_source(settings.price_source, catalogue, settings, clock)
        if shared is None or manual or publisher
        else None
    )
    user_dao = UserDAO(store, passwords, clock, invalidations=invalidations)
    balance_dao = BalanceDAO(store, clock)
    house = HouseInventory(store, settings.house_shards)
    asset_dao = AssetDAO(
        store, clock, cache_seconds=settings.asset_cache_seconds, invalidations=invalidations, house=house
    )
    holding_dao = HoldingDAO(store, clock)
    order_dao = OrderDAO(store, clock)
    inventory = InventoryService(asset_dao, price_book, catalogue, clock)
    # Shared state through Redis when CNOP_REDIS_URL is set (decision 0015), else in-process.
    events: EventBus = InProcessEventBus(clock) if redis is None else RedisEventBus(redis, clock, metrics=metrics)
    settlement = Settlement(store, balance_dao, holding_dao, house)
    release = Release(store, order_dao, settlement, clock, events)
    portfolio = PortfolioService(balance_dao, holding_dao, asset_dao, price_book, clock)
    api_key_dao = ApiKeyDAO(store, clock)
    api_keys = ApiKeyService(api_key_dao, user_dao, ApiKeyHasher(settings), audit, counters, settings, clock)
    container = Container(
        settings=settings,
        clock=clock,
        store=store,
        passwords=passwords,
        tokens=tokens,
        audit=audit,
        metrics=metrics,
        redis=redis,
        counters=counters,
        invalidations=invalidations,
        login_guard=login_guard_from_settings(settings, clock, counters if redis is not None else None),
        account_throttle=AccountThrottle.from_settings(settings, counters, clock),
        streams=StreamSlots(settings.max_streams_per_user, settings.max_streams_per_ip),
        idempotency=IdempotencyRecords(store, clock, settings),
        catalogue=catalogue,
        price_book=price_book,
        price_source=price_source,
        user_dao=user_dao,
        balance_dao=balance_dao,
        asset_dao=asset_dao,
        holding_dao=holding_dao,
        order_dao=order_dao,
        api_key_dao=api_key_dao,
        api_keys=api_keys,
        accounts=AccountService(
            store,
            user_dao,
            balance_dao,
            passwords,
            tokens,
            audit,
            clock,
            api_keys=api_keys,
            invalidations=invalidations,
            principal_cache_seconds=settings.principal_cache_seconds,
        ),
        money=MoneyService(store, balance_dao, settings, clock),
        inventory=inventory,
        trading=OrderService(
            store,
            order_dao,
            asset_dao,
            balance_dao,
            holding_dao,
            price_book,
            settings,
            clock,
            metrics,
            events,
            settlement,
            Placement(store, order_dao, settlement, settings, clock, events),
            release,
        ),
        portfolio=portfolio,
        insights=InsightsService(portfolio, order_dao, clock),
        events=events,
        triggers=TriggerEngine(
            price_book, order_dao, Fills(order_dao, settlement, release, clock, events), release, settings, clock
        ),
        price_history=StorePriceHistory(store),
        price_stream_connections=StreamConnections(settings.price_stream_connections_per_ip),
        price_bus=price_bus,
    )
    metrics.watch_price_age(_price_age(price_book, clock))
    invalidations.subscribe(TOKEN, lambda jti: tokens.forget_all() if jti == ALL else tokens.forget_token(jti))
    invalidations.subscribe(USER, lambda user: tokens.forget_all() if user == ALL else tokens.forget_subject(user))
    container.background.append(invalidations.run)
    if redis is not None:
        redis_url = redis.url
        container.background.append(lambda: watch_redis(redis_url, metrics))
    if settings.trigger_engine:
        metrics.watch_trigger_engine_lag(container.triggers.lag_seconds)
    container.startup.append(inventory.load_catalogue)
    if shared is not None:
        # Before anything serves: the shared prices and history into the book, then follow them.
        container.startup.insert(0, price_bus.start)
        container.background.append(price_bus.run)
    if shared is None and settings.price_history_flush_seconds > 0:
        # With Redis the shared history lives next to the stream (market/bus.py) instead.
        recorder = PriceHistoryRecorder(
            price_book, container.price_history, clock, settings.price_history_flush_seconds
        )
        container.startup.append(recorder.restore)
        container.background.append(recorder.run)
    if price_source is not None and (shared is None or manual):
        container.background.append(PriceFeed(price_source, price_bus).run)
    elif price_source is not None and shared is not None:
        holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        container.price_lease = FencedLease(shared, "prices", holder, settings.price_lease_seconds)
        container.background.append(LeasedPriceFeed(container.price_lease, price_source, price_bus, price_book).run)
    if settings.trigger_engine:
        # The house shards are rebalanced by the background process; in a fleet, by one of them.
        rebalance_lease = None
        if shared is not None:
            holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
            ttl = max(3 * settings.house_rebalance_seconds, settings.price_lease_seconds)
            rebalance_lease = FencedLease(shared, "house-rebalance", holder, ttl)
        rebalancer = HouseRebalancer(house, asset_dao.all_assets, settings.house_rebalance_seconds, rebalance_lease)
        container.background.append(rebalancer.run)
        if shared is not None:
            holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
            ttl = max(3 * settings.expiry_check_seconds, settings.price_lease_seconds)
            container.triggers.expiry_lease = FencedLease(shared, "expiry", holder, ttl)
            shards = AssetShards(shared, holder, settings.price_lease_seconds)
            shards.on_gain = container.triggers.catch_up
            container.triggers.shards = shards
            container.background.append(shards.run)
        container.background.append(container.triggers.run)
    return container
