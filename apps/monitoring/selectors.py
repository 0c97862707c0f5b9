"""Reads of the shared state behind the scrape-time gauges: Celery queue lengths and replica circuits in Redis.

Both are read when Prometheus scrapes, never on the request path, with SCAN (no KEYS, so a large keyspace
does not block Redis) and one pipelined round trip per batch of keys.
"""

import time
from dataclasses import dataclass

from config.redis import get_broker_redis, get_redis

QUEUE_PREFIX = "pool."
# kombu's Redis transport: `<queue>` holds priority 0, `<queue>\x06\x16<n>` the other priority steps, and
# `_kombu.binding.<exchange>` lists the queues bound to an exchange as `routing_key\x06\x16pattern\x06\x16queue`.
KOMBU_SEP = b"\x06\x16"
KOMBU_BINDINGS = "_kombu.binding.*"
CIRCUIT_KEYS = "cb:*"
_SCAN_COUNT = 1000


@dataclass(frozen=True)
class CircuitReading:
    """One replica's breaker: 1 open, 0.5 half-open (the next request is a trial), 0 closed."""

    tenant: str
    server: str
    replica: str
    value: float


def _in_batches(items: list, size: int = _SCAN_COUNT):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def queue_depths() -> dict[str, int]:
    """Messages waiting in each `pool.*` Celery queue, all priority levels summed into the queue's name.

    Redis drops an empty list, so queues known from kombu's bindings (declared by a worker or a sender) are
    reported with 0 instead of vanishing. Empty for a non-Redis broker: RabbitMQ exports its own queue
    metrics (its Prometheus plugin), which are the better source there.
    """
    client = get_broker_redis()
    if client is None:
        return {}
    depths: dict[str, int] = {}
    for key in client.scan_iter(match=KOMBU_BINDINGS, count=_SCAN_COUNT):
        for member in client.smembers(key):
            queue = member.split(KOMBU_SEP)[-1].decode(errors="replace")
            if queue.startswith(QUEUE_PREFIX):
                depths.setdefault(queue, 0)
    keys = list(client.scan_iter(match=f"{QUEUE_PREFIX}*", count=_SCAN_COUNT))
    for batch in _in_batches(keys):
        pipeline = client.pipeline(transaction=False)
        for key in batch:
            pipeline.llen(key)
        for key, length in zip(batch, pipeline.execute(raise_on_error=False), strict=True):
            if isinstance(length, int):  # anything but a list (WRONGTYPE) is not a queue
                queue = key.split(KOMBU_SEP)[0].decode(errors="replace")
                depths[queue] = depths.get(queue, 0) + length
    return depths


def circuit_readings() -> list[CircuitReading]:
    """Every replica circuit the balancer keeps (`cb:<schema>:<server id>:<url>`), as a gauge value.

    Same reading as `apps.inference.balancer.circuit_states`, for all tenants at once and without the
    database: the key names the tenant, server and replica.
    """
    client = get_redis()
    keys = list(client.scan_iter(match=CIRCUIT_KEYS, count=_SCAN_COUNT))
    now = time.time()
    readings = []
    for batch in _in_batches(keys):
        pipeline = client.pipeline(transaction=False)
        for key in batch:
            pipeline.hmget(key, "state", "opened_until")
        for key, reply in zip(batch, pipeline.execute(raise_on_error=False), strict=True):
            parts = key.decode(errors="replace").split(":", 3)
            if isinstance(reply, Exception) or len(parts) != 4:
                continue
            readings.append(CircuitReading(parts[1], parts[2], parts[3], _circuit_value(*reply, now=now)))
    return readings


def _circuit_value(state: bytes | None, opened_until: bytes | None, *, now: float) -> float:
    if state != b"open":
        return 0.0
    try:
        return 1.0 if now < float(opened_until or 0) else 0.5
    except ValueError:
        return 1.0
