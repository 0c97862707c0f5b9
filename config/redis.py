"""One Redis client per process, for the hot-path work the cache API cannot do (Lua, lists, pipelines)."""

from functools import cache

import redis
from django.conf import settings


@cache
def get_redis() -> redis.Redis:
    """Thread-safe: redis-py hands each command a pooled connection."""
    # Short timeouts: a hung Redis must fail a request quickly, not hold a web worker forever.
    return redis.Redis.from_url(
        settings.REDIS_URL, health_check_interval=30, socket_connect_timeout=1, socket_timeout=2
    )
