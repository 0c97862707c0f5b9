"""What each plan allows. Limits are per minute; a key may override its own request limit."""

from dataclasses import dataclass


@dataclass(frozen=True)
class PlanLimits:
    tenant_requests_per_minute: int
    key_requests_per_minute: int


PLAN_LIMITS: dict[str, PlanLimits] = {
    "free": PlanLimits(tenant_requests_per_minute=120, key_requests_per_minute=60),
    "team": PlanLimits(tenant_requests_per_minute=3_000, key_requests_per_minute=600),
    "enterprise": PlanLimits(tenant_requests_per_minute=30_000, key_requests_per_minute=6_000),
}


def plan_limits(plan: str) -> PlanLimits:
    return PLAN_LIMITS.get(plan, PLAN_LIMITS["free"])
