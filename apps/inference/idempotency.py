"""`Idempotency-Key`: the same key and request within 24 hours get the first answer, and the work runs once.

Any endpoint can use it: give `idempotent_call` the caller's scope, the client's key, a fingerprint of the
request, and a function that produces the answer. The first request claims the key with `SET NX` (a "running"
marker whose lifetime covers the longest the request may take) and runs; duplicates that arrive meanwhile wait
for it (woken through a list of that run's own, re-checked every second) and get its answer, so the work is
never done twice, also for requests that arrive together.

What is kept is an answer the client should not retry for: 2xx and 4xx. A 5xx (the model server failed or is
unavailable, the worker was lost, a timeout), a 429 (rate limit or budget) or a 409 releases the key instead,
so a retry with the same key runs again.

Redis layout, per tenant schema:
- `idempotency:<schema>:<principal>:<sha256(endpoint, key)>`: JSON `{"state": "running", "fingerprint",
  "token"}` while the first request runs, then `{"state": "done", "fingerprint", "status", "body",
  "headers"}` for `REMEMBER_SECONDS`.
- `idempotency-done:<token>`: the wake-up list of one run's waiters, kept a minute.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from apps.api.errors import ApiError
from config.redis import get_redis, get_redis_for_waiting

REMEMBER_SECONDS = 24 * 3600
# Refusals that say "not now" rather than "not this": kept, they would refuse every retry for a day.
RETRYABLE_STATUSES = frozenset({409, 429})
WAKE_SECONDS = 60
HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")

# KEYS: the key's entry, the run's wake-up list. ARGV: our marker, the finished entry ('' to release), its TTL.
# Replaces only our own marker: one that expired and was claimed by another request is not ours to touch.
_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
end
redis.call('RPUSH', KEYS[2], '1')
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
return 1
"""


@dataclass(frozen=True)
class Scope:
    """Whose keys these are and where: a key never matches another tenant's, caller's or endpoint's."""

    schema: str
    principal: str
    endpoint: str


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as kept for replay: status, JSON body and the headers worth repeating."""

    status: int
    body: object
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    answer: Answer
    replayed: bool


def scope_of(*, schema: str, key_id: int | None, user_id: int | None, endpoint: str) -> Scope:
    """A key's requests are its own; a portal session's are its user's."""
    principal = f"key:{key_id}" if key_id is not None else f"user:{user_id}"
    return Scope(schema=schema, principal=principal, endpoint=endpoint)


def key_check(raw: str | None) -> str | None:
    """The client's key, None when it sent none; 400 for one that is not 1-255 printable ASCII characters."""
    if raw is None:
        return None
    if not _KEY.match(raw):
        raise ApiError(
            f"{HEADER} must be 1 to 255 printable ASCII characters.", code="invalid_idempotency_key", status_code=400
        )
    return raw


def fingerprint(body: bytes, *variants: str) -> str:
    """What makes two requests "the same": the body's bytes plus whatever else changes the answer (query, mode)."""
    digest = hashlib.sha256(body)
    for variant in variants:
        digest.update(b"\0" + variant.encode())
    return digest.hexdigest()


def entry_key(scope: Scope, key: str) -> str:
    named = hashlib.sha256(f"{scope.endpoint}\0{key}".encode()).hexdigest()
    return f"idempotency:{scope.schema}:{scope.principal}:{named}"


def idempotent_call(
    *, scope: Scope, key: str, fingerprint: str, hold_seconds: float, call: Callable[[], Answer]
) -> Outcome:
    """`call()`'s answer, or the answer the first request with this key got (`replayed`).

    `hold_seconds` bounds both how long the first request may hold the key and how long a duplicate waits for
    it. A duplicate with another fingerprint is a 422 (`idempotency_key_reused`); one that waited that long
    and still finds the first running is a 409 (`idempotency_key_in_use`).
    """
    redis = get_redis()
    entry = entry_key(scope, key)
    marker = json.dumps({"state": "running", "fingerprint": fingerprint, "token": uuid.uuid4().hex})
    give_up = time.monotonic() + hold_seconds
    while not redis.set(entry, marker, nx=True, ex=math.ceil(hold_seconds)):
        current = redis.get(entry)
        if current is None:
            continue  # released (or expired) between our SET and GET: try to claim it again
        state = json.loads(current)
        if state["fingerprint"] != fingerprint:
            raise ApiError(
                f"This {HEADER} was already used with a different request.",
                code="idempotency_key_reused",
                status_code=422,
            )
        if state["state"] == "done":
            return Outcome(Answer(state["status"], state["body"], state["headers"]), replayed=True)
        left = give_up - time.monotonic()
        if left <= 0:
            raise ApiError(
                f"A request with this {HEADER} is still running.",
                code="idempotency_key_in_use",
                status_code=409,
                headers={"Retry-After": "1"},
            )
        _wait(state["token"], min(1.0, left))
    return Outcome(_run(entry, marker, call), replayed=False)


def _run(entry: str, marker: str, call: Callable[[], Answer]) -> Answer:
    token = json.loads(marker)["token"]
    finish = _finish_script()
    try:
        answer = call()
    except BaseException:
        finish(keys=[entry, _wake_key(token)], args=[marker, "", 0, WAKE_SECONDS])
        raise
    done = ""
    if answer.status < 500 and answer.status not in RETRYABLE_STATUSES:
        fields = json.loads(marker)
        done = json.dumps(
            {
                "state": "done",
                "fingerprint": fields["fingerprint"],
                "status": answer.status,
                "body": answer.body,
                "headers": answer.headers,
            }
        )
    finish(keys=[entry, _wake_key(token)], args=[marker, done, REMEMBER_SECONDS, WAKE_SECONDS])
    return answer


def _wait(token: str, seconds: float) -> None:
    """Sleep until the run `token` finishes (or `seconds` pass); each waiter woken wakes the next one."""
    wake = _wake_key(token)
    if get_redis_for_waiting().blpop([wake], timeout=seconds) is not None:
        pipeline = get_redis().pipeline(transaction=False)
        pipeline.rpush(wake, "1")
        pipeline.expire(wake, WAKE_SECONDS)
        pipeline.execute()


@cache
def _finish_script():
    return get_redis().register_script(_FINISH)


def _wake_key(token: str) -> str:
    return f"idempotency-done:{token}"
