"""Writes on keys. Every change names its actor (audit log) and drops the key's cached form at once,
so revocation, expiry and rotation are seen by every web and worker process on their next request."""

import ipaddress
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from auditlog.context import set_actor
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from apps.accounts.models import User
from apps.apikeys.models import ApiKey, Scope
from apps.apikeys.secrets import key_generate, key_hash
from apps.apikeys.selectors import apikey_cache_forget

MAX_GRACE_SECONDS = 7 * 24 * 3600
MAX_TOKENS_PER_MINUTE = 2_147_483_647  # what a PositiveIntegerField holds
MAX_MONTHLY_SPEND = Decimal("999999.999999")  # DecimalField(max_digits=12, decimal_places=6)


def _require_key_manager(actor: User, owner: User) -> None:
    if actor.has_perm("apikeys.manage_all_keys"):
        return
    if actor.pk == owner.pk and actor.has_perm("apikeys.manage_own_keys"):
        return
    raise PermissionDenied(
        "You may manage only your own keys." if actor.pk != owner.pk else "Your role cannot hold keys."
    )


def _clean_name(name: str) -> str:
    if not name.strip():
        raise ValidationError("A key needs a name.", code="no_name")
    return name.strip()


def _check_expiry(expires_at: datetime | None) -> datetime | None:
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError("The expiry must be in the future.", code="invalid_expiry")
    return expires_at


def _clean_scopes(scopes: list[str], granting_scopes: tuple[str, ...] | None) -> list[str]:
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown:
        raise ValidationError(f"Unknown scope(s): {', '.join(unknown)}.", code="unknown_scope")
    if not scopes:
        raise ValidationError("A key needs at least one scope.", code="no_scope")
    if granting_scopes is not None and not set(scopes) <= set(granting_scopes):
        raise PermissionDenied("A key cannot grant scopes it does not have itself.")
    return sorted(set(scopes))


def _clean_networks(networks: list[str]) -> list[str]:
    cleaned = []
    for network in networks:
        try:
            cleaned.append(str(ipaddress.ip_network(network.strip(), strict=False)))
        except ValueError:
            raise ValidationError(f"{network!r} is not an IP network (CIDR).", code="invalid_network") from None
    return cleaned


def _clean_pins(pins: dict) -> dict[str, str]:
    if not isinstance(pins, dict) or not all(isinstance(k, str) and k for k in pins):
        raise ValidationError("Model pins map model names to versions.", code="invalid_pins")
    cleaned = {}
    for model, version in pins.items():
        if not str(version).isdigit():
            raise ValidationError(f"Pin for {model!r} must be a version number.", code="invalid_pins")
        cleaned[model] = str(version)
    return cleaned


def _clean_tokens_per_minute(value: int | None) -> int | None:
    # 0 is allowed: it stops a key from spending tokens without revoking it.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS_PER_MINUTE:
        raise ValidationError(
            f"Tokens per minute must be a whole number from 0 to {MAX_TOKENS_PER_MINUTE}.",
            code="invalid_tokens_per_minute",
        )
    return value


def _clean_spend_limit(value: Decimal | int | str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or not 0 <= amount <= MAX_MONTHLY_SPEND:
        raise ValidationError(
            f"The monthly spend limit must be an amount from 0 to {MAX_MONTHLY_SPEND}.", code="invalid_spend_limit"
        )
    if amount != amount.quantize(Decimal("0.000001")):
        raise ValidationError("The monthly spend limit has at most 6 decimal places.", code="invalid_spend_limit")
    return amount


def apikey_create(
    *,
    actor: User,
    owner: User | None = None,
    name: str,
    scopes: list[str],
    model_pins: dict | None = None,
    allowed_networks: list[str] | None = None,
    expires_at: datetime | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    monthly_spend_limit: Decimal | None = None,
    granting_scopes: tuple[str, ...] | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which exists nowhere else from now on."""
    owner = owner or actor
    _require_key_manager(actor, owner)
    if not owner.is_active:
        raise ValidationError("The owner is deactivated.", code="owner_inactive")
    if not owner.has_perm("apikeys.manage_own_keys"):
        raise PermissionDenied("This member's role cannot hold API keys.")
    name = _clean_name(name)
    _check_expiry(expires_at)
    tokens_per_minute = _clean_tokens_per_minute(tokens_per_minute)
    monthly_spend_limit = _clean_spend_limit(monthly_spend_limit)
    parts = key_generate()
    with transaction.atomic(), set_actor(actor):
        key = ApiKey.objects.create(
            name=name,
            owner=owner,
            created_by=actor,
            prefix=parts.prefix,
            secret_hash=key_hash(parts.full),
            scopes=_clean_scopes(scopes, granting_scopes),
            model_pins=_clean_pins(model_pins or {}),
            allowed_networks=_clean_networks(allowed_networks or []),
            expires_at=expires_at,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            monthly_spend_limit=monthly_spend_limit,
        )
    apikey_cache_forget(key.prefix)
    return key, parts.full


def apikey_update(*, actor: User, key: ApiKey, granting_scopes: tuple[str, ...] | None = None, **changes) -> ApiKey:
    """Change name, scopes, pins, networks, expiry or limits (audited: a scope change is a security event)."""
    _require_key_manager(actor, key.owner)
    cleaners = {
        "name": _clean_name,
        "scopes": lambda value: _clean_scopes(value, granting_scopes),
        "model_pins": _clean_pins,
        "allowed_networks": _clean_networks,
        "expires_at": _check_expiry,
        "requests_per_minute": lambda value: value,
        "tokens_per_minute": _clean_tokens_per_minute,
        "monthly_spend_limit": _clean_spend_limit,
    }
    with transaction.atomic(), set_actor(actor):
        key = ApiKey.objects.select_for_update().get(pk=key.pk)
        if key.is_revoked:
            raise ValidationError("A revoked key cannot be changed.", code="key_revoked")
        for field, value in changes.items():
            setattr(key, field, cleaners[field](value))
        key.save(update_fields=list(changes))
        transaction.on_commit(lambda: apikey_cache_forget(key.prefix))
    apikey_cache_forget(key.prefix)
    return key


def apikey_rotate(*, actor: User, key: ApiKey, grace_seconds: int = 0) -> tuple[ApiKey, str]:
    """A new secret under the same prefix; the old one keeps working for `grace_seconds`, then never."""
    _require_key_manager(actor, key.owner)
    if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
        raise ValidationError(f"The grace period is 0 to {MAX_GRACE_SECONDS} seconds.", code="invalid_grace")
    parts = key_generate(prefix=key.prefix)
    now = timezone.now()
    with transaction.atomic(), set_actor(actor):
        key = ApiKey.objects.select_for_update().get(pk=key.pk)
        if key.is_revoked:
            raise ValidationError("A revoked key cannot be rotated.", code="key_revoked")
        key.previous_secret_hash = key.secret_hash if grace_seconds else ""
        key.previous_secret_expires_at = now + timedelta(seconds=grace_seconds) if grace_seconds else None
        key.secret_hash = key_hash(parts.full)
        key.rotated_at = now
        key.save(update_fields=["previous_secret_hash", "previous_secret_expires_at", "secret_hash", "rotated_at"])
        transaction.on_commit(lambda: apikey_cache_forget(key.prefix))
    apikey_cache_forget(key.prefix)
    return key, parts.full


def apikey_revoke(*, actor: User, key: ApiKey) -> ApiKey:
    """Revoked keys are refused from the next request on, in every process; the row stays for the audit."""
    _require_key_manager(actor, key.owner)
    with transaction.atomic(), set_actor(actor):
        key = ApiKey.objects.select_for_update().get(pk=key.pk)
        if not key.is_revoked:
            key.revoked_at = timezone.now()
            key.revoked_by = actor
            key.save(update_fields=["revoked_at", "revoked_by"])
        transaction.on_commit(lambda: apikey_cache_forget(key.prefix))
    apikey_cache_forget(key.prefix)
    return key


def apikeys_forget_owner(*, owner: User) -> None:
    """A member's deactivation must stop their keys at once: drop every cached key of theirs."""
    apikey_cache_forget(*ApiKey.objects.filter(owner=owner).values_list("prefix", flat=True))


def apikey_touch_many(*, last_used: dict[str, datetime]) -> int:
    """Write last-used times collected in Redis (prefix -> time); one UPDATE per key, off the hot path."""
    updated = 0
    for prefix, used_at in last_used.items():
        updated += ApiKey.objects.filter(prefix=prefix).update(last_used_at=used_at)
    return updated
