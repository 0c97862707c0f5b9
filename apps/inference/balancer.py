"""Which replica of a server takes the next request: least outstanding requests, behind a circuit breaker.

The counts and circuits live in Redis, so every worker process of every host sees the same picture and a
pick or a release costs one round trip (a Lua script, atomic, no lock held across the model call).

Outstanding requests are a sorted set per replica whose scores are expiry times: a worker killed between
pick and release leaves an entry that simply ages out, instead of a counter that stays wrong forever.

A circuit opens after `CIRCUIT_FAILURE_THRESHOLD` consecutive failures (connection errors, timeouts, 5xx) and
stays open for `CIRCUIT_OPEN_SECONDS`; then one trial request may pass (half-open): its success closes the
circuit, its failure opens it again. A model server refusing a request (4xx) is healthy and counts as success.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from functools import cache

from django.conf import settings

from config.redis import get_redis

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"

# KEYS: started marker, then per candidate its outstanding set and its circuit hash.
# ARGV: now, request id, entry expiry, started ttl.
# Returns {url index (1-based) or 0, seconds until the first open circuit may be tried (0 if none)}.
_PICK = """
local now = tonumber(ARGV[1])
local best, best_count, reopen = 0, nil, nil
for i = 2, #KEYS, 2 do
  local circuit = redis.call('HMGET', KEYS[i + 1], 'state', 'opened_until', 'trial_until')
  local allowed = true
  if circuit[1] == 'open' then
    local opened_until = tonumber(circuit[2]) or 0
    local trial_until = tonumber(circuit[3]) or 0
    if now < opened_until then
      allowed = false
      if reopen == nil or opened_until < reopen then reopen = opened_until end
    elseif now < trial_until then
      allowed = false
      if reopen == nil or trial_until < reopen then reopen = trial_until end
    end
  end
  if allowed then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    local count = redis.call('ZCARD', KEYS[i])
    if best_count == nil or count < best_count then best, best_count = i, count end
  end
end
if best == 0 then
  return {0, reopen and math.ceil(reopen - now) or 0}
end
redis.call('ZADD', KEYS[best], tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[best], 3600)
local circuit = redis.call('HGET', KEYS[best + 1], 'state')
if circuit == 'open' then
  redis.call('HSET', KEYS[best + 1], 'trial_until', tonumber(ARGV[3]))
end
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], '1', 'EX', tonumber(ARGV[4])) end
return {best / 2, 0}
"""

# KEYS: the outstanding set, the circuit hash. ARGV: request id, 'ok' or 'fail', now, threshold, open seconds.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local now = tonumber(ARGV[3])
if ARGV[2] == 'ok' then
  if redis.call('HGET', KEYS[2], 'state') ~= 'closed' or redis.call('HGET', KEYS[2], 'failures') ~= '0' then
    redis.call('HSET', KEYS[2], 'state', 'closed', 'failures', 0, 'opened_until', 0, 'trial_until', 0)
  end
  redis.call('EXPIRE', KEYS[2], 86400)
  return 'closed'
end
local failures = redis.call('HINCRBY', KEYS[2], 'failures', 1)
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'open' or failures >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[2], 'state', 'open', 'opened_until', now + tonumber(ARGV[5]), 'trial_until', 0)
  redis.call('EXPIRE', KEYS[2], 86400)
  return 'open'
end
redis.call('HSET', KEYS[2], 'state', 'closed')
redis.call('EXPIRE', KEYS[2], 86400)
return 'closed'
"""


@cache
def _scripts():
    client = get_redis()
    return client.register_script(_PICK), client.register_script(_RELEASE)


def _outstanding_key(schema: str, server_id: int, url: str) -> str:
    return f"lb:{schema}:{server_id}:{url}"


def _circuit_key(schema: str, server_id: int, url: str) -> str:
    return f"cb:{schema}:{server_id}:{url}"


def started_key(schema: str, request_id: str) -> str:
    """Set when a worker picks a replica for the request: the web can tell a lost worker from a queue wait."""
    return f"inference-started:{schema}:{request_id}"


@dataclass(frozen=True)
class Pick:
    """The chosen replica, or None with `retry_after` seconds until an open circuit may be tried again."""

    url: str | None
    retry_after: int = 0


@dataclass(frozen=True)
class CircuitState:
    state: str
    failures: int
    opened_until: float | None
    outstanding: int


def replica_pick(
    *, schema: str, server_id: int, urls: list[str] | tuple[str, ...], request_id: str, hold_seconds: float
) -> Pick:
    """Reserve the replica with the fewest outstanding requests whose circuit lets a request through.

    Candidates are shuffled first, so equally loaded replicas share the traffic. The reservation expires after
    `hold_seconds` even if nobody releases it. Also marks the request as started for `started_key`.
    """
    if not urls:
        return Pick(None, settings.CIRCUIT_OPEN_SECONDS)
    candidates = list(urls)
    random.shuffle(candidates)
    keys = [started_key(schema, request_id)]
    for url in candidates:
        keys += [_outstanding_key(schema, server_id, url), _circuit_key(schema, server_id, url)]
    now = time.time()
    pick, _ = _scripts()
    index, retry_after = pick(keys=keys, args=[now, request_id, now + hold_seconds, int(hold_seconds) + 60])
    if not index:
        return Pick(None, max(1, int(retry_after)))
    return Pick(candidates[int(index) - 1])


def replica_release(*, schema: str, server_id: int, url: str, request_id: str, healthy: bool) -> str:
    """End the reservation and feed the outcome to the replica's circuit; returns the circuit's new state."""
    _, release = _scripts()
    state = release(
        keys=[_outstanding_key(schema, server_id, url), _circuit_key(schema, server_id, url)],
        args=[
            request_id,
            "ok" if healthy else "fail",
            time.time(),
            settings.CIRCUIT_FAILURE_THRESHOLD,
            settings.CIRCUIT_OPEN_SECONDS,
        ],
    )
    return state.decode() if isinstance(state, bytes) else str(state)


def circuit_states(*, schema: str, server_id: int, urls: list[str] | tuple[str, ...]) -> dict[str, CircuitState]:
    """What the breaker thinks of each replica right now, for the portal and the metrics (one round trip)."""
    if not urls:
        return {}
    now = time.time()
    pipeline = get_redis().pipeline(transaction=False)
    for url in urls:
        pipeline.hmget(_circuit_key(schema, server_id, url), "state", "failures", "opened_until")
        pipeline.zcount(_outstanding_key(schema, server_id, url), now, "+inf")
    replies = pipeline.execute()
    states = {}
    for position, url in enumerate(urls):
        (state, failures, opened_until), outstanding = replies[2 * position], replies[2 * position + 1]
        opened = float(opened_until) if opened_until else None
        if state == b"open":
            label = OPEN if opened is not None and now < opened else HALF_OPEN
        else:
            label, opened = CLOSED, None
        states[url] = CircuitState(label, int(failures or 0), opened, int(outstanding))
    return states
