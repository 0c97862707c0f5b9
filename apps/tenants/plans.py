"""What each plan allows. Request and token limits are per minute; spend budgets per calendar month (UTC).

A key may override its own request and token limits and carry its own spend budget; the tenant-wide
limits here still apply on top of every key's.
"""

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class PlanLimits:
    tenant_requests_per_minute: int
    key_requests_per_minute: int
    tenant_tokens_per_minute: int
    key_tokens_per_minute: int | None  # default for keys without their own limit; None: only the tenant's applies
    tenant_monthly_spend_limit: Decimal | None  # None: no tenant-wide budget (invoiced by contract)


PLAN_LIMITS: dict[str, PlanLimits] = {
    "free": PlanLimits(
        tenant_requests_per_minute=120,
        key_requests_per_minute=60,
        tenant_tokens_per_minute=20_000,
        key_tokens_per_minute=10_000,
        tenant_monthly_spend_limit=Decimal("10"),
    ),
    "team": PlanLimits(
        tenant_requests_per_minute=3_000,
        key_requests_per_minute=600,
        tenant_tokens_per_minute=1_000_000,
        key_tokens_per_minute=200_000,
        tenant_monthly_spend_limit=Decimal("5000"),
    ),
    "enterprise": PlanLimits(
        tenant_requests_per_minute=30_000,
        key_requests_per_minute=6_000,
        tenant_tokens_per_minute=20_000_000,
        key_tokens_per_minute=None,
        tenant_monthly_spend_limit=Decimal("250000"),
    ),
}


def plan_limits(plan: str) -> PlanLimits:
    return PLAN_LIMITS.get(plan, PLAN_LIMITS["free"])
