"""Token-per-minute limits and monthly spend budgets on the real Redis: arithmetic, refusals, windows,
tenants, and the proof that concurrent reservations never overshoot a limit."""

import threading
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django_tenants.utils import tenant_context
from rest_framework.test import APIRequestFactory

from apps.api.errors import exception_handler
from apps.apikeys.authentication import ApiKeyAuthentication
from apps.apikeys.budgets import (
    BudgetExceeded,
    BudgetLimits,
    budget_limits_for,
    budget_refusal,
    budget_reserve,
    budget_settle,
    budget_usage,
)
from apps.apikeys.services import apikey_update
from apps.compliance.models import AccessEvent
from apps.compliance.services import access_events_flush
from apps.tenants.plans import plan_limits
from config.redis import get_redis

NONE = BudgetLimits(tokens_per_minute=None, monthly_spend=None)
# 2026-11-30 23:59:15 UTC: 45 seconds to the next minute, 45 seconds to December.
LAST_MINUTE_OF_NOVEMBER = datetime(2026, 11, 30, 23, 59, 15, tzinfo=UTC).timestamp()
MID_NOVEMBER = datetime(2026, 11, 15, 12, 0, 30, tzinfo=UTC).timestamp()


def _reserve(*, key=NONE, tenant=NONE, tokens=0, cost="0", schema="alpha", prefix="aip_000000000001", now=MID_NOVEMBER):
    return budget_reserve(
        schema=schema, key_prefix=prefix, key=key, tenant=tenant, tokens=tokens, cost=Decimal(cost), now=now
    )


def _key_usage(prefix="aip_000000000001", schema="alpha", now=MID_NOVEMBER) -> tuple[int, Decimal]:
    usage = budget_usage(schema=schema, key_prefix=prefix, now=now)
    return usage["tokens_this_minute"], usage["spend_this_month"]


def _tenant_usage(schema="alpha", now=MID_NOVEMBER) -> tuple[int, Decimal]:
    usage = budget_usage(schema=schema, now=now)
    return usage["tokens_this_minute"], usage["spend_this_month"]


def test_a_reservation_charges_the_key_and_the_tenant():
    reservation = _reserve(tokens=1200, cost="0.0042")
    assert (reservation.tokens, reservation.cost, reservation.schema) == (1200, Decimal("0.004200"), "alpha")
    assert reservation.month == "2026-11"
    assert reservation.minute == int(MID_NOVEMBER // 60)
    assert _key_usage() == (1200, Decimal("0.0042"))
    assert _tenant_usage() == (1200, Decimal("0.0042"))


def test_settling_replaces_the_reserved_amounts_by_the_actual_ones_down_or_up():
    first = _reserve(tokens=1000, cost="0.50")
    second = _reserve(tokens=1000, cost="0.50", prefix="aip_000000000002")
    assert budget_settle(first, tokens=300, cost=Decimal("0.15")) is True
    assert _key_usage() == (300, Decimal("0.15"))
    assert _tenant_usage() == (1300, Decimal("0.65"))
    assert budget_settle(second, tokens=1500, cost=Decimal("0.75")) is True  # used more than it reserved
    assert _key_usage("aip_000000000002") == (1500, Decimal("0.75"))
    assert _tenant_usage() == (1800, Decimal("0.90"))


def test_a_second_settle_of_the_same_reservation_changes_nothing():
    reservation = _reserve(tokens=1000, cost="1")
    assert budget_settle(reservation, tokens=100, cost=Decimal("0.1")) is True
    assert budget_settle(reservation, tokens=100, cost=Decimal("0.1")) is False
    assert budget_settle(reservation, tokens=5000, cost=Decimal("9")) is False
    assert _key_usage() == (100, Decimal("0.1"))
    assert _tenant_usage() == (100, Decimal("0.1"))


def test_a_reservation_never_settled_stays_counted():
    _reserve(tokens=700, cost="0.07")  # the worker died: nobody settles
    assert _key_usage() == (700, Decimal("0.07"))


def test_settling_after_the_minute_expired_does_not_bring_its_counter_back():
    reservation = _reserve(tokens=1000, cost="1")
    minute_keys = list(get_redis().scan_iter(match="budget:{alpha}:tpm:*"))
    assert len(minute_keys) == 2
    get_redis().delete(*minute_keys)  # what the two-minute TTL does
    assert budget_settle(reservation, tokens=10, cost=Decimal("0.5")) is True
    assert get_redis().exists(*minute_keys) == 0
    assert _key_usage() == (0, Decimal("0.5"))


def test_counters_expire_with_their_window():
    _reserve(tokens=10, cost="1")
    client = get_redis()
    ttls = {key.decode().split(":")[2]: client.pttl(key) for key in client.scan_iter(match="budget:{alpha}:*")}
    assert 0 < ttls["tpm"] <= 120_000
    assert 39 * 86_400_000 < ttls["spend"] <= 40 * 86_400_000
    assert 0 < ttls["pending"] <= 86_400_000


def test_the_keys_token_limit_refuses_and_says_so():
    key = BudgetLimits(tokens_per_minute=1000, monthly_spend=None)
    tenant = BudgetLimits(tokens_per_minute=100_000, monthly_spend=None)
    _reserve(key=key, tenant=tenant, tokens=800, now=LAST_MINUTE_OF_NOVEMBER)
    with pytest.raises(BudgetExceeded) as refused:
        _reserve(key=key, tenant=tenant, tokens=300, now=LAST_MINUTE_OF_NOVEMBER)
    error = refused.value
    assert (error.code, error.scope, error.retry_after) == ("tokens_per_minute", "key", 45)
    assert error.message.startswith("This key's limit of 1,000 tokens per minute")
    assert "800 already used" in error.message
    assert "300" in error.message
    assert _key_usage(now=LAST_MINUTE_OF_NOVEMBER) == (800, Decimal(0))
    _reserve(key=key, tenant=tenant, tokens=200, now=LAST_MINUTE_OF_NOVEMBER)  # exactly up to the limit


def test_the_tenants_token_limit_refuses_across_keys_and_charges_nothing():
    tenant = BudgetLimits(tokens_per_minute=1000, monthly_spend=None)
    _reserve(tenant=tenant, tokens=900, prefix="aip_00000000000a")
    with pytest.raises(BudgetExceeded) as refused:
        _reserve(tenant=tenant, tokens=200, cost="0.2", prefix="aip_00000000000b")
    assert (refused.value.code, refused.value.scope) == ("tokens_per_minute", "tenant")
    assert refused.value.message.startswith("The tenant's limit of 1,000 tokens per minute")
    assert refused.value.retry_after == 30  # MID_NOVEMBER is 30 seconds into its minute
    assert _key_usage("aip_00000000000b") == (0, Decimal(0))  # all or nothing: the key was not charged
    assert _tenant_usage() == (900, Decimal(0))


def test_the_keys_spend_budget_refuses_until_next_month():
    key = BudgetLimits(tokens_per_minute=None, monthly_spend=Decimal("1.00"))
    _reserve(key=key, cost="0.75", now=LAST_MINUTE_OF_NOVEMBER)
    with pytest.raises(BudgetExceeded) as refused:
        _reserve(key=key, cost="0.30", now=LAST_MINUTE_OF_NOVEMBER)
    error = refused.value
    assert (error.code, error.scope, error.retry_after) == ("budget_exceeded", "key", 45)
    assert error.message == (
        "This key's monthly spend budget of 1 would be exceeded: 0.75 already spent this month (UTC), "
        "this request may cost up to 0.3."
    )


def test_the_tenants_spend_budget_refuses_every_key():
    tenant = BudgetLimits(tokens_per_minute=None, monthly_spend=Decimal("10"))
    _reserve(tenant=tenant, cost="10", prefix="aip_00000000000a")
    with pytest.raises(BudgetExceeded) as refused:
        _reserve(tenant=tenant, cost="0.000001", prefix="aip_00000000000b")
    assert (refused.value.code, refused.value.scope) == ("budget_exceeded", "tenant")
    assert refused.value.message.startswith("The tenant's monthly spend budget of 10 would be exceeded")
    assert refused.value.retry_after == 15 * 86_400 + 12 * 3600 - 30  # to 2026-12-01 00:00:00 UTC


def test_a_spent_budget_is_reported_before_a_full_minute():
    limits = BudgetLimits(tokens_per_minute=100, monthly_spend=Decimal("1"))
    _reserve(key=limits, tokens=100, cost="1")
    with pytest.raises(BudgetExceeded) as refused:
        _reserve(key=limits, tokens=100, cost="1")
    assert refused.value.code == "budget_exceeded"


def test_a_new_minute_and_a_new_month_start_from_zero():
    limits = BudgetLimits(tokens_per_minute=100, monthly_spend=Decimal("1"))
    november = _reserve(key=limits, tenant=limits, tokens=100, cost="1", now=LAST_MINUTE_OF_NOVEMBER)
    with pytest.raises(BudgetExceeded):
        _reserve(key=limits, tenant=limits, tokens=1, now=LAST_MINUTE_OF_NOVEMBER)
    first_of_december = LAST_MINUTE_OF_NOVEMBER + 45
    december = _reserve(key=limits, tenant=limits, tokens=100, cost="1", now=first_of_december)
    assert (december.month, december.minute) == ("2026-12", int(first_of_december // 60))
    assert _key_usage(now=first_of_december) == (100, Decimal(1))
    # A settle that arrives in December adjusts the minute and month its reservation was made in.
    budget_settle(november, tokens=40, cost=Decimal("0.4"))
    assert _key_usage(now=LAST_MINUTE_OF_NOVEMBER) == (40, Decimal("0.4"))
    assert _key_usage(now=first_of_december) == (100, Decimal(1))


def test_no_limit_means_no_refusal_but_usage_is_still_counted():
    for _ in range(3):
        _reserve(tokens=10**9, cost="999999")
    assert _key_usage() == (3 * 10**9, Decimal("2999997"))


def test_a_zero_limit_refuses_any_use():
    frozen = BudgetLimits(tokens_per_minute=0, monthly_spend=Decimal(0))
    with pytest.raises(BudgetExceeded):
        _reserve(key=frozen, tokens=1)
    with pytest.raises(BudgetExceeded):
        _reserve(key=frozen, cost="0.000001")


def test_spend_is_exact_to_the_micro_unit():
    limit = BudgetLimits(tokens_per_minute=None, monthly_spend=Decimal("0.001"))
    for _ in range(1000):
        _reserve(key=limit, cost="0.000001")
    with pytest.raises(BudgetExceeded):
        _reserve(key=limit, cost="0.000001")
    assert _key_usage() == (0, Decimal("0.001"))
    assert _reserve(cost="0.0000001").cost == Decimal("0.000001")  # a fraction of a micro-unit is charged


def test_negative_amounts_are_refused():
    with pytest.raises(ValueError, match="negative"):
        _reserve(tokens=-1)
    reservation = _reserve(tokens=1)
    with pytest.raises(ValueError, match="negative"):
        budget_settle(reservation, tokens=0, cost=Decimal("-0.1"))


def test_tenants_never_share_counters():
    limits = BudgetLimits(tokens_per_minute=100, monthly_spend=Decimal("1"))
    prefix = "aip_0123456789ab"  # the same prefix in both schemas: only the schema tells them apart
    _reserve(key=limits, tenant=limits, tokens=100, cost="1", schema="alpha", prefix=prefix)
    with pytest.raises(BudgetExceeded):
        _reserve(key=limits, tenant=limits, tokens=1, schema="alpha", prefix=prefix)
    _reserve(key=limits, tenant=limits, tokens=100, cost="1", schema="bravo", prefix=prefix)
    assert _key_usage(prefix, schema="bravo") == (100, Decimal(1))
    assert _tenant_usage(schema="bravo") == (100, Decimal(1))


def test_reserving_and_settling_cost_no_database_query(django_assert_num_queries, db):
    with django_assert_num_queries(0):
        reservation = _reserve(tokens=5, cost="0.01")
        budget_settle(reservation, tokens=4, cost=Decimal("0.008"))
        budget_usage(schema="alpha")


def _race(count: int, attempt) -> int:
    """`count` threads released at once, each calling `attempt(index)` once: how many got through."""
    barrier = threading.Barrier(count)
    outcomes = [False] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = bool(attempt(index))
        except BudgetExceeded:
            outcomes[index] = False

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(outcomes)


@pytest.mark.parametrize("fits", [1, 37, 99])
@pytest.mark.parametrize("round_", range(3))
def test_a_hundred_concurrent_reservations_never_overshoot_the_token_limit(fits, round_):
    prefix = f"aip_{uuid.uuid4().hex[:12]}"
    limits = BudgetLimits(tokens_per_minute=fits * 250, monthly_spend=None)
    assert _race(100, lambda _: _reserve(key=limits, tokens=250, prefix=prefix)) == fits
    assert _key_usage(prefix) == (fits * 250, Decimal(0))
    assert _tenant_usage() == (fits * 250, Decimal(0))


@pytest.mark.parametrize("fits", [1, 37, 99])
@pytest.mark.parametrize("round_", range(3))
def test_a_hundred_concurrent_reservations_never_overshoot_the_spend_budget(fits, round_):
    prefix = f"aip_{uuid.uuid4().hex[:12]}"
    limits = BudgetLimits(tokens_per_minute=None, monthly_spend=Decimal("0.013") * fits)
    assert _race(100, lambda _: _reserve(key=limits, cost="0.013", prefix=prefix)) == fits
    assert _key_usage(prefix) == (0, Decimal("0.013") * fits)
    assert _tenant_usage() == (0, Decimal("0.013") * fits)


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_keys_never_overshoot_the_tenants_limits_together(round_):
    tenant = BudgetLimits(tokens_per_minute=4_200, monthly_spend=Decimal("4.2"))
    prefixes = [f"aip_{uuid.uuid4().hex[:12]}" for _ in range(4)]
    assert _race(100, lambda i: _reserve(tenant=tenant, tokens=100, cost="0.1", prefix=prefixes[i % 4])) == 42
    assert _tenant_usage() == (4_200, Decimal("4.2"))
    assert sum(_key_usage(prefix)[0] for prefix in prefixes) == 4_200


def test_concurrent_settles_of_one_reservation_apply_once():
    reservation = _reserve(tokens=1000, cost="1")
    assert _race(50, lambda _: budget_settle(reservation, tokens=10, cost=Decimal("0.01"))) == 1
    assert _key_usage() == (10, Decimal("0.01"))
    assert _tenant_usage() == (10, Decimal("0.01"))


def test_limits_come_from_the_key_then_the_plan():
    plan = plan_limits("team")

    class Key:
        tokens_per_minute = None
        monthly_spend_limit = None

    key, tenant = budget_limits_for(plan="team", key=Key())
    assert key == BudgetLimits(plan.key_tokens_per_minute, None)
    assert tenant == BudgetLimits(plan.tenant_tokens_per_minute, plan.tenant_monthly_spend_limit)
    Key.tokens_per_minute, Key.monthly_spend_limit = 0, Decimal("3")
    assert budget_limits_for(plan="team", key=Key())[0] == BudgetLimits(0, Decimal("3"))
    assert budget_limits_for(plan="team", key=None)[0] == BudgetLimits(plan.key_tokens_per_minute, None)


def test_plans_grow_from_free_to_enterprise():
    free, team, enterprise = plan_limits("free"), plan_limits("team"), plan_limits("enterprise")
    assert free.tenant_tokens_per_minute < team.tenant_tokens_per_minute < enterprise.tenant_tokens_per_minute
    assert free.tenant_monthly_spend_limit < team.tenant_monthly_spend_limit < enterprise.tenant_monthly_spend_limit


def test_the_principal_carries_the_keys_limits_without_a_query(make_key, cast, django_assert_max_num_queries):
    key, secret = make_key(tokens_per_minute=5_000, monthly_spend_limit=Decimal("12.5"))
    request = APIRequestFactory().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {secret}")
    request.tenant = cast.tenant_a
    with tenant_context(cast.tenant_a):
        ApiKeyAuthentication().authenticate(request)  # fills the cache
        with django_assert_max_num_queries(0):
            _, principal = ApiKeyAuthentication().authenticate(request)
        assert (principal.tokens_per_minute, principal.monthly_spend_limit) == (5_000, Decimal("12.5"))
        assert budget_limits_for(plan="enterprise", key=principal)[0] == BudgetLimits(5_000, Decimal("12.5"))
        apikey_update(actor=cast.alice, key=key, tokens_per_minute=None, monthly_spend_limit=Decimal("1"))
        _, principal = ApiKeyAuthentication().authenticate(request)
    assert (principal.tokens_per_minute, principal.monthly_spend_limit) == (None, Decimal("1"))


def test_a_refusal_is_an_access_event_and_a_429_in_the_api_shape(cast, in_tenant_a):
    key = BudgetLimits(tokens_per_minute=10, monthly_spend=None)
    with pytest.raises(BudgetExceeded) as refused:
        budget_reserve(schema="alpha", key_prefix="aip_0123456789ab", key=key, tenant=NONE, tokens=11, cost=Decimal(0))
    request = APIRequestFactory().post("/v1/chat/completions", HTTP_X_REQUEST_ID="req-budget-1")
    request.request_id = "req-budget-1"
    error = budget_refusal(request, refused.value, key_prefix="aip_0123456789ab", user_id=cast.alice.pk)
    response = exception_handler(error, {"request": request})
    assert response.status_code == 429
    assert response["Retry-After"] == str(refused.value.retry_after)
    # Under /v1/ the error comes in OpenAI's shape, so the openai SDK raises its RateLimitError.
    assert response.data["error"]["code"] == "tokens_per_minute"
    assert response.data["error"]["message"] == refused.value.message
    assert response.data["error"]["type"] == "rate_limit_error"
    assert access_events_flush(schema_name="alpha") == 1
    event = AccessEvent.objects.get()
    assert (event.reason, event.key_prefix, event.user_id, event.path) == (
        AccessEvent.Reason.TOKENS_PER_MINUTE,
        "aip_0123456789ab",
        cast.alice.pk,
        "/v1/chat/completions",
    )
    assert "key" in event.detail
    with tenant_context(cast.tenant_b):
        assert access_events_flush(schema_name="bravo") == 0
        assert not AccessEvent.objects.exists()
    connection.set_tenant(cast.tenant_a)
