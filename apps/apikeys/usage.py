"""Last-used times: one Redis write per request, written to the database by a periodic task."""

import time
from datetime import UTC, datetime

from django.db import connection

from config.redis import get_redis


def _hash_key(schema: str) -> str:
    return f"apikey-last-used:{schema}"


# Per process: the last time each key's use was written to Redis. Last-used is a minute-grained fact,
# so a busy key costs one Redis write per process every RECORD_EVERY_SECONDS, not one per request.
RECORD_EVERY_SECONDS = 30
_last_recorded: dict[tuple[str, str], float] = {}


def key_used(*, prefix: str) -> None:
    now = time.monotonic()
    slot = (connection.schema_name, prefix)
    if now - _last_recorded.get(slot, -RECORD_EVERY_SECONDS) < RECORD_EVERY_SECONDS:
        return
    _last_recorded[slot] = now
    get_redis().hset(_hash_key(connection.schema_name), prefix, int(time.time()))


def keys_last_used_drain(*, schema: str) -> dict:
    """Take (and clear) what the hot path collected for `schema`: prefix -> aware datetime."""
    pipe = get_redis().pipeline()
    pipe.hgetall(_hash_key(schema))
    pipe.delete(_hash_key(schema))
    collected, _ = pipe.execute()
    return {prefix.decode(): datetime.fromtimestamp(int(stamp), tz=UTC) for prefix, stamp in collected.items()}
