"""What `/metrics` answers: every worker's inference samples, plus gauges read from Redis at scrape time."""

import logging

import redis
from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from apps.monitoring.selectors import circuit_readings, queue_depths

logger = logging.getLogger(__name__)


class SharedStateCollector:
    """Queue depth and circuit state, read fresh at each scrape.

    Not global Gauges: in multiprocess mode each worker would keep its own copy of a value that belongs to
    nobody in particular. `portal_metrics_redis_up` says whether the readings could be taken at all, so an
    outage shows as 0 there rather than as series that silently disappear.
    """

    def collect(self):
        up = GaugeMetricFamily("portal_metrics_redis_up", "1 if the scrape could read queues and circuits in Redis.")
        try:
            depths, circuits = queue_depths(), circuit_readings()
        except redis.RedisError as error:
            logger.warning("metrics: cannot read queues and circuits from Redis: %s", error)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        queue = GaugeMetricFamily(
            "portal_queue_depth", "Messages waiting in a GPU pool's Celery queue.", labels=["queue"]
        )
        for name, depth in sorted(depths.items()):
            queue.add_metric([name], depth)
        yield queue
        circuit = GaugeMetricFamily(
            "portal_circuit_open",
            "A replica's circuit breaker: 1 open, 0.5 half-open, 0 closed.",
            labels=["tenant", "server", "replica"],
        )
        for reading in circuits:
            circuit.add_metric([reading.tenant, reading.server, reading.replica], reading.value)
        yield circuit


class _Forward:
    """Hands a registry's collectors to another registry (the default one, in single-process mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        return self.registry.collect()


def metrics_render() -> bytes:
    """The text exposition for one scrape, built in a registry of its own so concurrent scrapes never meet."""
    registry = CollectorRegistry(auto_describe=False)
    # The setting mirrors the environment variable that made prometheus_client write files at import time.
    if settings.PROMETHEUS_MULTIPROC_DIR:
        MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(SharedStateCollector())
    return generate_latest(registry)
