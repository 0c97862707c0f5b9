"""Last-used times: one Redis write per request, written to the database by a periodic task."""

import time
from datetime import UTC, datetime

from django.db import connection

from config.redis import get_redis


def _hash_key(schema: str) -> str:
    return f"apikey-last-used:{schema}"


def key_used(*, prefix: str) -> None:
    get_redis().hset(_hash_key(connection.schema_name), prefix, int(time.time()))


def keys_last_used_drain(*, schema: str) -> dict:
    """Take (and clear) what the hot path collected for `schema`: prefix -> aware datetime."""
    pipe = get_redis().pipeline()
    pipe.hgetall(_hash_key(schema))
    pipe.delete(_hash_key(schema))
    collected, _ = pipe.execute()
    return {prefix.decode(): datetime.fromtimestamp(int(stamp), tz=UTC) for prefix, stamp in collected.items()}
