"""The inference path's Prometheus instruments, and the one call that feeds them.

Pure prometheus_client, no Django: it runs on the hot path and in any process. Under gunicorn every worker
writes its samples to files in `PROMETHEUS_MULTIPROC_DIR` (set by `config/gunicorn.conf.py` before the
workers fork, because prometheus_client picks its storage when first imported); anywhere else the samples
stay in process memory.
"""

from prometheus_client import Counter, Histogram

# 1 ms to 60 s, about two and a half steps per decade: fast scorers and slow generations in one histogram.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

STATUSES = ("ok", "refused", "failed", "timeout", "unavailable", "worker_lost")

REQUESTS = Counter(
    "portal_inference_requests",
    "Inference requests, by tenant schema, model, version and final status.",
    ["tenant", "model", "version", "status"],
)
LATENCY = Histogram(
    "portal_inference_latency_seconds",
    "Time from receiving an inference request to answering it.",
    ["tenant", "model"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_LATENCY = Histogram(
    "portal_inference_upstream_latency_seconds",
    "Time the model server took to answer, as seen by the portal.",
    ["tenant", "model"],
    buckets=LATENCY_BUCKETS,
)


def prediction_observe(
    *, tenant: str, model: str, version: str, status: str, total_seconds: float, upstream_seconds: float | None
) -> None:
    """Count one finished inference request and its latencies.

    `upstream_seconds` is None when no model server was reached (refused, unavailable, a lost worker). A negative
    duration (the clock stepped back) counts as zero rather than dragging the histogram's sum below zero.
    """
    REQUESTS.labels(tenant, model, version, status).inc()
    LATENCY.labels(tenant, model).observe(max(0.0, total_seconds))
    if upstream_seconds is not None:
        UPSTREAM_LATENCY.labels(tenant, model).observe(max(0.0, upstream_seconds))
