"""One Redis client per process, for the hot-path work the cache API cannot do (Lua, lists, pipelines)."""

import pickle
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


def get_broker_redis() -> redis.Redis | None:
    """The Celery broker's Redis (the portal's own client when they are one), or None for another broker (RabbitMQ)."""
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return get_redis() if url == settings.REDIS_URL else _redis_at(url)


@cache
def _redis_at(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, health_check_interval=30, socket_connect_timeout=1, socket_timeout=2)


@cache
def get_redis_for_waiting() -> redis.Redis:
    """A client for blocking reads (BLPOP) that may legitimately wait up to a deployment's longest timeout."""
    return redis.Redis.from_url(
        settings.REDIS_URL, health_check_interval=30, socket_connect_timeout=1, socket_timeout=700
    )


def cached_object_get(key: str):
    """A pickled object stored by `cached_object_set`, or None. Only the portal writes these keys.

    The hot path uses this instead of Django's cache API, whose Redis backend builds a new client
    (and its table of response callbacks) on every call: about 0.4 ms a lookup.
    """
    raw = get_redis().get(key)
    return None if raw is None else pickle.loads(raw)  # noqa: S301 (our own data, in our own Redis)


def cached_object_set(key: str, value, seconds: int) -> None:
    get_redis().set(key, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), ex=seconds)


def cached_objects_forget(keys) -> None:
    keys = list(keys)
    if keys:
        get_redis().delete(*keys)
