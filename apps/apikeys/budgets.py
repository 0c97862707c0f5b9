"""Tokens per minute and monthly spend, per key and per tenant: reserved before dispatch, settled after.

A request reserves the most it may use (its prompt plus `max_tokens`, and what that would cost) before it
is dispatched, and settles with what it actually used once the answer is in. A reservation checks the
key's and the tenant's counters and charges every one of them or none, in one Lua script, so no number
of concurrent requests can reserve past a limit. Counters are kept even where there is no limit, so
usage can always be shown.

Redis layout (the `{schema}` hash tag keeps a tenant's keys in one cluster slot, as a script needs):

    budget:{<schema>}:tpm:key:<prefix>:<minute>      tokens of that minute (epoch seconds // 60); TTL 2 min
    budget:{<schema>}:tpm:tenant:<minute>
    budget:{<schema>}:spend:key:<prefix>:<YYYY-MM>   micro-units (cost x 10^6) of that UTC month; TTL 40 days
    budget:{<schema>}:spend:tenant:<YYYY-MM>
    budget:{<schema>}:pending:<reservation id>       "<tokens> <micro-units>" reserved, until settled; TTL 1 day

Spend is counted in integer micro-units so Lua (whose numbers are doubles) adds exactly.

Settling replaces the reserved amounts by the actual ones in the minute and month of the reservation, and
deletes its pending entry in the same script: a second settle of the same reservation finds nothing and
changes nothing. A reservation that is never settled (its worker died) keeps what it reserved counted:
the limits err towards refusing, never towards overspending. A settle later than a day is ignored the
same way. Settling may lift a counter above its limit when a request used more than it reserved, so
callers reserve the most a request can use and settling only ever gives back.
"""

import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Protocol

from config.redis import get_redis

if TYPE_CHECKING:
    from apps.api.errors import ApiError

TPM_TTL_MS = 120 * 1000
SPEND_TTL_MS = 40 * 24 * 3600 * 1000
PENDING_TTL_MS = 24 * 3600 * 1000
_MICRO = Decimal("0.000001")
_NO_LIMIT = -1

# KEYS: key spend, tenant spend, key tpm, tenant tpm, pending.
# ARGV: micro-units, tokens, the four limits in KEYS' order (-1: none), spend TTL, tpm TTL, pending TTL.
_RESERVE = """
local amounts = {ARGV[1], ARGV[1], ARGV[2], ARGV[2]}
for i = 1, 4 do
  local limit = tonumber(ARGV[2 + i])
  if limit >= 0 then
    local used = tonumber(redis.call('GET', KEYS[i]) or '0')
    if used + tonumber(amounts[i]) > limit then
      return {0, i, used}
    end
  end
end
local ttls = {ARGV[7], ARGV[7], ARGV[8], ARGV[8]}
for i = 1, 4 do
  redis.call('INCRBY', KEYS[i], amounts[i])
  if redis.call('PTTL', KEYS[i]) < 0 then
    redis.call('PEXPIRE', KEYS[i], ttls[i])
  end
end
redis.call('SET', KEYS[5], ARGV[2] .. ' ' .. ARGV[1], 'PX', ARGV[9])
return {1, 0, 0}
"""

# KEYS: pending, key spend, tenant spend, key tpm, tenant tpm. ARGV: actual micro-units, actual tokens.
# A counter whose window has expired is left alone: recreating it would count into a closed window forever.
_SETTLE = """
local reserved = redis.call('GET', KEYS[1])
if not reserved then
  return 0
end
redis.call('DEL', KEYS[1])
local tokens, micro = string.match(reserved, '^(%d+) (%d+)$')
local micro_delta = tonumber(ARGV[1]) - tonumber(micro)
local token_delta = tonumber(ARGV[2]) - tonumber(tokens)
local deltas = {micro_delta, micro_delta, token_delta, token_delta}
for i = 1, 4 do
  if deltas[i] ~= 0 and redis.call('EXISTS', KEYS[1 + i]) == 1 then
    redis.call('INCRBY', KEYS[1 + i], string.format('%.0f', deltas[i]))
  end
end
return 1
"""


@dataclass(frozen=True)
class BudgetLimits:
    """One party's limits (a key's or a tenant's); None means no limit of that kind."""

    tokens_per_minute: int | None
    monthly_spend: Decimal | None


@dataclass(frozen=True)
class Reservation:
    """What was reserved, and where, so that settling adjusts exactly those counters, once."""

    id: str
    schema: str
    key_prefix: str
    tokens: int
    cost: Decimal
    minute: int
    month: str


class BudgetExceeded(Exception):
    """A reservation refused: `code` is `tokens_per_minute` or `budget_exceeded`, `scope` is `key` or `tenant`.

    `retry_after` is the number of seconds until the refusing window ends (the next minute, the next month).
    """

    def __init__(
        self,
        *,
        code: str,
        scope: str,
        limit: int | Decimal,
        used: int | Decimal,
        requested: int | Decimal,
        retry_after: int,
    ):
        self.code = code
        self.scope = scope
        self.limit = limit
        self.used = used
        self.requested = requested
        self.retry_after = retry_after
        whose = "This key's" if scope == "key" else "The tenant's"
        if code == "tokens_per_minute":
            self.message = (
                f"{whose} limit of {limit:,} tokens per minute would be exceeded: {used:,} already used this "
                f"minute, this request needs up to {requested:,}."
            )
        else:
            self.message = (
                f"{whose} monthly spend budget of {_money(limit)} would be exceeded: {_money(used)} already spent "
                f"this month (UTC), this request may cost up to {_money(requested)}."
            )
        super().__init__(self.message)


class KeyBudgetFields(Protocol):
    """What a key contributes to its limits: `KeyPrincipal`, `CachedKey` and `ApiKey` all have these."""

    tokens_per_minute: int | None
    monthly_spend_limit: Decimal | None


_scripts: dict[str, object] = {}


def _script(name: str, source: str):
    """Registered once per process; redis-py runs it by SHA and reloads it if Redis has forgotten it."""
    if name not in _scripts:
        _scripts[name] = get_redis().register_script(source)
    return _scripts[name]


def _to_micro(cost: Decimal) -> int:
    # Rounded up: a fraction of a micro-unit is charged rather than lost.
    return int((Decimal(str(cost)) / _MICRO).to_integral_value(rounding=ROUND_CEILING))


def _from_micro(micro: int) -> Decimal:
    return (Decimal(micro) * _MICRO).quantize(_MICRO)


def _money(amount: Decimal) -> str:
    return format(Decimal(amount).normalize(), "f")


def _windows(now: float) -> tuple[int, str]:
    return int(now // 60), datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m")


def _seconds_to_next_minute(now: float) -> int:
    return max(1, math.ceil((int(now // 60) + 1) * 60 - now))


def _seconds_to_next_month(now: float) -> int:
    moment = datetime.fromtimestamp(now, tz=UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return max(1, math.ceil(datetime(year, month, 1, tzinfo=UTC).timestamp() - now))


def _counter_keys(schema: str, key_prefix: str, minute: int, month: str) -> list[str]:
    """Key spend, tenant spend, key tokens, tenant tokens: the order both scripts take them in."""
    base = f"budget:{{{schema}}}"
    return [
        f"{base}:spend:key:{key_prefix}:{month}",
        f"{base}:spend:tenant:{month}",
        f"{base}:tpm:key:{key_prefix}:{minute}",
        f"{base}:tpm:tenant:{minute}",
    ]


def _pending_key(schema: str, reservation_id: str) -> str:
    return f"budget:{{{schema}}}:pending:{reservation_id}"


def _limit_arg(limit: int | Decimal | None, *, money: bool) -> int:
    if limit is None:
        return _NO_LIMIT
    return _to_micro(limit) if money else int(limit)


def budget_limits_for(*, plan: str, key: KeyBudgetFields | None) -> tuple[BudgetLimits, BudgetLimits]:
    """(key limits, tenant limits) for a request: a key's own token limit wins over the plan's per-key default.

    Without a key (a portal session) only the plan's per-key token default applies to the caller.
    """
    from apps.tenants.plans import plan_limits

    limits = plan_limits(plan)
    own_tpm = key.tokens_per_minute if key is not None else None
    key_limits = BudgetLimits(
        tokens_per_minute=own_tpm if own_tpm is not None else limits.key_tokens_per_minute,
        monthly_spend=key.monthly_spend_limit if key is not None else None,
    )
    return key_limits, BudgetLimits(limits.tenant_tokens_per_minute, limits.tenant_monthly_spend_limit)


def budget_reserve(
    *,
    schema: str,
    key_prefix: str,
    key: BudgetLimits,
    tenant: BudgetLimits,
    tokens: int,
    cost: Decimal,
    now: float | None = None,
) -> Reservation:
    """Reserve `tokens` this minute and `cost` this month for the key and the tenant: all or nothing.

    One Redis round trip. Raises `BudgetExceeded` for the first limit that would be passed, spend before
    tokens (a spent budget is the refusal that lasts, so it is the one to report). `now` is for tests.
    """
    if tokens < 0 or cost < 0:
        raise ValueError("A reservation cannot be negative.")
    if not key_prefix:
        raise ValueError("A reservation needs the caller's bucket: a key's prefix, or e.g. `user:<id>` for a session.")
    now = time.time() if now is None else now
    minute, month = _windows(now)
    micro = _to_micro(cost)
    reservation_id = uuid.uuid4().hex
    limits = [
        _limit_arg(key.monthly_spend, money=True),
        _limit_arg(tenant.monthly_spend, money=True),
        _limit_arg(key.tokens_per_minute, money=False),
        _limit_arg(tenant.tokens_per_minute, money=False),
    ]
    allowed, index, used = _script("reserve", _RESERVE)(
        keys=[*_counter_keys(schema, key_prefix, minute, month), _pending_key(schema, reservation_id)],
        args=[micro, tokens, *limits, SPEND_TTL_MS, TPM_TTL_MS, PENDING_TTL_MS],
    )
    if not allowed:
        raise _refusal(int(index), limit=limits[int(index) - 1], used=int(used), tokens=tokens, micro=micro, now=now)
    return Reservation(
        id=reservation_id,
        schema=schema,
        key_prefix=key_prefix,
        tokens=tokens,
        cost=_from_micro(micro),
        minute=minute,
        month=month,
    )


def _refusal(index: int, *, limit: int, used: int, tokens: int, micro: int, now: float) -> BudgetExceeded:
    scope = "key" if index in (1, 3) else "tenant"
    if index <= 2:
        return BudgetExceeded(
            code="budget_exceeded",
            scope=scope,
            limit=_from_micro(limit),
            used=_from_micro(used),
            requested=_from_micro(micro),
            retry_after=_seconds_to_next_month(now),
        )
    return BudgetExceeded(
        code="tokens_per_minute",
        scope=scope,
        limit=limit,
        used=used,
        requested=tokens,
        retry_after=_seconds_to_next_minute(now),
    )


def budget_settle(reservation: Reservation, *, tokens: int, cost: Decimal) -> bool:
    """Replace what `reservation` reserved by what was actually used (more or less), once.

    Returns False, changing nothing, for a reservation already settled (or older than a day).
    """
    if tokens < 0 or cost < 0:
        raise ValueError("Actual usage cannot be negative.")
    keys = _counter_keys(reservation.schema, reservation.key_prefix, reservation.minute, reservation.month)
    settled = _script("settle", _SETTLE)(
        keys=[_pending_key(reservation.schema, reservation.id), *keys], args=[_to_micro(cost), tokens]
    )
    return bool(settled)


def budget_usage(*, schema: str, key_prefix: str | None = None, now: float | None = None) -> dict:
    """This minute's tokens and this month's spend of a key (or of the whole tenant when `key_prefix` is None).

    Reserved amounts of requests still in flight are included: that is what the limits are checked against.
    """
    now = time.time() if now is None else now
    minute, month = _windows(now)
    spend_key, spend_tenant, tpm_key, tpm_tenant = _counter_keys(schema, key_prefix or "", minute, month)
    keys = [tpm_key, spend_key] if key_prefix is not None else [tpm_tenant, spend_tenant]
    tokens, micro = get_redis().mget(keys)
    return {
        "scope": "key" if key_prefix is not None else "tenant",
        "minute": minute,
        "tokens_this_minute": int(tokens or 0),
        "month": month,
        "spend_this_month": _from_micro(int(micro or 0)),
    }


def budget_refusal(request, error: BudgetExceeded, *, key_prefix: str = "", user_id: int | None = None) -> "ApiError":
    """Record a refused reservation as the tenant's access event and return the 429 `ApiError` to raise.

    The access event's reason is the error's code (`budget_exceeded` or `tokens_per_minute`).
    """
    from apps.api.errors import ApiError
    from apps.compliance.services import access_event_from_request

    access_event_from_request(
        request,
        reason=error.code,
        key_prefix=key_prefix,
        user_id=user_id,
        detail=f"{error.scope} {error.code}: {error.used} used + {error.requested} over {error.limit}",
    )
    return ApiError(error.message, code=error.code, status_code=429, headers={"Retry-After": str(error.retry_after)})
