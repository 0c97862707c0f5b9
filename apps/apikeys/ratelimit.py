"""Atomic fixed-window limits in Redis: every bucket of a request is checked and charged in one script.

A request names its buckets (per key, per tenant, ...) with a limit and a cost. The script refuses
without charging anything if any bucket would overflow, else charges them all: concurrent requests
can never overshoot. Requests per minute use cost 1. Tokens per minute and spend budgets, which are reserved
before a call and settled after it, have their own scripts in `budgets.py`.
"""

import time
from dataclasses import dataclass

from config.redis import get_redis

_SCRIPT = """
local window_ms = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local tightest, tightest_left = 1, nil
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 + i])
  local used = tonumber(redis.call('GET', key) or '0')
  if used + cost > limit then
    local ttl = redis.call('PTTL', key)
    return {0, i, limit, used, ttl}
  end
  if tightest_left == nil or limit - used - cost < tightest_left then
    tightest, tightest_left = i, limit - used - cost
  end
end
local ttl = window_ms
for i, key in ipairs(KEYS) do
  local used = redis.call('INCRBY', key, cost)
  if used == cost then
    redis.call('PEXPIRE', key, window_ms)
  end
  if i == tightest then
    ttl = redis.call('PTTL', key)
  end
end
return {1, tightest, tonumber(ARGV[2 + tightest]), tonumber(ARGV[2 + tightest]) - tightest_left, ttl}
"""


@dataclass(frozen=True)
class Bucket:
    name: str  # e.g. "key:aip_0123abcd4567" or "tenant:acme"
    limit: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    bucket: Bucket  # the refusing bucket, or the one closest to its limit
    limit: int
    remaining: int
    reset_seconds: int


_script = None


def _registered_script():
    global _script
    if _script is None:
        _script = get_redis().register_script(_SCRIPT)
    return _script


def limit_consume(*, namespace: str, buckets: list[Bucket], cost: int = 1, window_seconds: int = 60) -> Decision:
    """Charge `cost` to every bucket of the current window, all or nothing, in one Redis round trip."""
    window_index = int(time.time() // window_seconds)
    keys = [f"rl:{namespace}:{bucket.name}:{window_seconds}:{window_index}" for bucket in buckets]
    allowed, index, limit, used, ttl_ms = _registered_script()(
        keys=keys, args=[window_seconds * 1000, cost, *(bucket.limit for bucket in buckets)]
    )
    reset = max(1, -(-int(ttl_ms) // 1000)) if int(ttl_ms) > 0 else window_seconds
    return Decision(
        allowed=bool(allowed),
        bucket=buckets[int(index) - 1],
        limit=int(limit),
        remaining=max(0, int(limit) - int(used)),
        reset_seconds=reset,
    )
