"""Reads on keys: the hot-path lookup (Redis first) and the access chokepoint for management."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from apps.accounts.models import User
from apps.accounts.selectors import user_role
from apps.apikeys.models import ApiKey
from config.redis import cached_object_get, cached_object_set, cached_objects_forget

NEGATIVE_CACHE_SECONDS = 30


@dataclass(frozen=True)
class CachedKey:
    """What authentication needs of a key, kept in Redis (tenant-prefixed) so the hot path skips the database."""

    id: int
    prefix: str
    owner_id: int
    owner_email: str
    owner_active: bool
    owner_role: str | None
    secret_hash: str
    previous_secret_hash: str
    previous_secret_expires_at: datetime | None
    scopes: tuple[str, ...]
    model_pins: dict
    allowed_networks: tuple[str, ...]
    requests_per_minute: int | None
    expires_at: datetime | None
    revoked: bool
    # Defaults, so a form pickled before these fields existed still reads as "no key limit" until it expires.
    tokens_per_minute: int | None = None
    monthly_spend_limit: Decimal | None = None


def _cache_key(prefix: str) -> str:
    return f"apikey:{connection.schema_name}:{prefix}"


def apikey_cached_get(*, prefix: str) -> CachedKey | None:
    """The key behind `prefix` in the current tenant, or None. Unknown prefixes are remembered briefly,
    so a flood of made-up keys costs Redis reads, not database queries."""
    from django.conf import settings

    entry = cached_object_get(_cache_key(prefix))
    if entry is None:
        key = ApiKey.objects.select_related("owner").prefetch_related("owner__groups").filter(prefix=prefix).first()
        entry = _cached_form(key) if key else False
        cached_object_set(_cache_key(prefix), entry, settings.API_KEY_CACHE_SECONDS if key else NEGATIVE_CACHE_SECONDS)
    return entry or None


def apikey_cache_forget(*prefixes: str) -> None:
    cached_objects_forget(_cache_key(prefix) for prefix in prefixes)


def _cached_form(key: ApiKey) -> CachedKey:
    return CachedKey(
        id=key.pk,
        prefix=key.prefix,
        owner_id=key.owner_id,
        owner_email=key.owner.email,
        owner_active=key.owner.is_active,
        owner_role=user_role(key.owner),
        secret_hash=key.secret_hash,
        previous_secret_hash=key.previous_secret_hash,
        previous_secret_expires_at=key.previous_secret_expires_at,
        scopes=tuple(key.scopes),
        model_pins=dict(key.model_pins),
        allowed_networks=tuple(key.allowed_networks),
        requests_per_minute=key.requests_per_minute,
        expires_at=key.expires_at,
        revoked=key.revoked_at is not None,
        tokens_per_minute=key.tokens_per_minute,
        monthly_spend_limit=key.monthly_spend_limit,
    )


def apikey_list_for(*, user: User) -> QuerySet[ApiKey]:
    """Owners see every key of the tenant, developers their own, everyone else none."""
    keys = ApiKey.objects.select_related("owner").order_by("-created")
    if user.has_perm("apikeys.manage_all_keys"):
        return keys
    if user.has_perm("apikeys.manage_own_keys"):
        return keys.filter(owner=user)
    return keys.none()


def apikey_get_for(*, user: User, key_id: int) -> ApiKey:
    """The one way to fetch a key for management: another member's key and a missing key look the same."""
    return get_object_or_404(apikey_list_for(user=user), pk=key_id)
