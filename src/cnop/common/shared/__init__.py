"""Shared state across processes: the in-process and the Redis implementations of each port.

`redis.py` is the only place a Redis client is made (`open_redis(settings)`), with the key prefix
applied by `SharedRedis.key(...)`. The composition root (`cnop.container`) picks each port's
implementation once, by `CNOP_REDIS_URL`.
"""
