"""Rate limits for every API request: per key (or per user for portal sessions) and per tenant, in one round trip."""

from django.db import connection
from rest_framework.throttling import BaseThrottle

from apps.apikeys.authentication import KeyPrincipal
from apps.apikeys.ratelimit import Bucket, Decision, limit_consume
from apps.compliance.services import access_event_from_request
from apps.tenants.plans import plan_limits


def request_buckets(request) -> list[Bucket]:
    """The plan's limits, with a key's own limit taking over for that key."""
    limits = plan_limits(getattr(request.tenant, "plan", "free"))
    tenant = Bucket(f"tenant:{connection.schema_name}", limits.tenant_requests_per_minute)
    if isinstance(request.auth, KeyPrincipal):
        per_key = request.auth.requests_per_minute or limits.key_requests_per_minute
        return [Bucket(f"key:{request.auth.prefix}", per_key), tenant]
    return [Bucket(f"user:{request.user.pk}", limits.key_requests_per_minute), tenant]


class RateLimitThrottle(BaseThrottle):
    decision: Decision | None = None

    def allow_request(self, request, view) -> bool:
        if not request.user or not request.user.is_authenticated:
            return True  # authentication refuses these first
        self.decision = limit_consume(namespace=connection.schema_name, buckets=request_buckets(request))
        request._request.ratelimit = self.decision
        if not self.decision.allowed:
            access_event_from_request(
                request,
                reason="rate_limited",
                key_prefix=request.auth.prefix if isinstance(request.auth, KeyPrincipal) else "",
                user_id=request.user.pk,
                detail=f"{self.decision.bucket.name} over {self.decision.limit}/min",
            )
        return self.decision.allowed

    def wait(self) -> float | None:
        return self.decision.reset_seconds if self.decision else None
