"""Per-request cost of API key authentication + rate limiting, against a direct Redis round trip.

    make bench-auth            (or: python -m config.devstack exec -- python bench/auth_ratelimit.py)

Runs in a throwaway tenant on the configured (or embedded) PostgreSQL and Redis, warms the key cache,
then times N calls of each and prints medians and p99 in microseconds, plus the ratio to the baseline.
"""

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.db import connection
from django_tenants.utils import schema_context, tenant_context
from rest_framework.test import APIRequestFactory

from apps.apikeys.authentication import ApiKeyAuthentication
from apps.apikeys.ratelimit import Bucket, limit_consume
from apps.apikeys.services import apikey_create
from apps.tenants.models import Tenant
from apps.tenants.services import tenant_signup
from config.redis import get_redis

N = int(os.environ.get("BENCH_N", "5000"))
SLUG = "benchauth"


def timed(function, n: int = N) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        function()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def summary(name: str, samples: list[float], baseline: float | None) -> str:
    samples.sort()
    median = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99) - 1]
    ratio = f"{median / baseline:5.1f}x" if baseline else "  1.0x"
    return f"| {name:<44} | {median:8.1f} | {p99:8.1f} | {ratio} |"


def main() -> None:
    with schema_context("public"):
        stale = Tenant.objects.filter(schema_name=SLUG).first()
        if stale is not None:
            stale.delete(force_drop=True)
        tenant = tenant_signup(
            name="Bench", slug=SLUG, owner_email="bench@bench.example", owner_password="bench-Password-123"
        ).tenant
    try:
        run(tenant)
    finally:
        with schema_context("public"):
            tenant.delete(force_drop=True)


def run(tenant: Tenant) -> None:
    with tenant_context(tenant):
        from apps.accounts.models import User

        owner = User.objects.get(email="bench@bench.example")
        _, secret = apikey_create(actor=owner, name="bench", scopes=["inference"], requests_per_minute=10**9)
        request = APIRequestFactory().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {secret}")
        request.tenant = tenant
        auth = ApiKeyAuthentication()
        buckets = [Bucket("key:bench", 10**9), Bucket(f"tenant:{SLUG}", 10**9)]
        redis = get_redis()
        auth.authenticate(request)  # warm the key cache and the connections
        for _ in range(200):
            redis.ping()

        baseline = timed(redis.ping)
        base_median = statistics.median(baseline)
        rows = [
            summary("Redis PING (one round trip, the baseline)", baseline, None),
            summary("key authentication (cached key)", timed(lambda: auth.authenticate(request)), base_median),
            summary(
                "rate limit (per-key + per-tenant, one script)",
                timed(lambda: limit_consume(namespace=SLUG, buckets=buckets)),
                base_median,
            ),
            summary(
                "authentication + rate limit",
                timed(lambda: (auth.authenticate(request), limit_consume(namespace=SLUG, buckets=buckets))),
                base_median,
            ),
        ]
    print(
        f"\n{N} calls each, Redis at {connection.settings_dict.get('HOST') or 'unix socket'} / {redis.connection_pool}"
    )
    print("| what | median µs | p99 µs | x PING |")
    print("| --- | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
