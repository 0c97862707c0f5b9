"""DRF authentication by API key: `Authorization: Bearer <key>` (what the openai SDK sends) or `X-API-Key`."""

import ipaddress
from dataclasses import dataclass
from decimal import Decimal

from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication

from apps.accounts.models import User
from apps.accounts.roles import KEY_HOLDING_ROLES
from apps.api.client_ip import client_ip
from apps.apikeys.secrets import key_matches, key_parse
from apps.apikeys.selectors import CachedKey, apikey_cached_get
from apps.apikeys.usage import key_used
from apps.compliance.services import access_event_from_request


@dataclass(frozen=True)
class KeyPrincipal:
    """`request.auth` for key-authenticated requests: what the key may do."""

    id: int
    prefix: str
    scopes: tuple[str, ...]
    model_pins: dict
    requests_per_minute: int | None
    owner_role: str | None
    tokens_per_minute: int | None = None
    monthly_spend_limit: Decimal | None = None


class KeyRefused(exceptions.AuthenticationFailed):
    def __init__(self, message: str, *, code: str, status_code: int = 401):
        super().__init__(detail=message, code=code)
        self.error_code = code
        self.status_code = status_code


_INVALID = ("Invalid API key.", "invalid_api_key")


class ApiKeyAuthentication(BaseAuthentication):
    """Finds the key in Redis (database on a miss), checks it in constant time, and records every refusal.

    A key of another tenant is simply not in this tenant's schema, so it is refused exactly like a
    made-up one: same status, code and message.
    """

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'

    def authenticate(self, request):
        raw = self._credential(request)
        if raw is None:
            return None
        parts = key_parse(raw)
        if parts is None:
            self._refuse(request, "malformed_key", "", *_INVALID)
        key = apikey_cached_get(prefix=parts.prefix)
        if key is None or not self._secret_ok(key, parts.full):
            self._refuse(request, "unknown_key", parts.prefix, *_INVALID)
        if key.revoked:
            self._refuse(request, "revoked_key", parts.prefix, "This API key has been revoked.", "key_revoked")
        if key.expires_at is not None and key.expires_at <= timezone.now():
            self._refuse(request, "expired_key", parts.prefix, "This API key has expired.", "key_expired")
        if not key.owner_active or key.owner_role not in KEY_HOLDING_ROLES:
            self._refuse(
                request, "revoked_key", parts.prefix, "The owner of this key can no longer hold keys.", "key_revoked"
            )
        if key.allowed_networks and not self._network_ok(key, client_ip(request)):
            self._refuse(
                request,
                "network_not_allowed",
                parts.prefix,
                "This key may not be used from your network.",
                "network_not_allowed",
                status_code=403,
            )
        key_used(prefix=key.prefix)
        user = User(id=key.owner_id, email=key.owner_email, is_active=True)
        user._state.adding = False
        principal = KeyPrincipal(
            id=key.id,
            prefix=key.prefix,
            scopes=key.scopes,
            model_pins=key.model_pins,
            requests_per_minute=key.requests_per_minute,
            owner_role=key.owner_role,
            tokens_per_minute=key.tokens_per_minute,
            monthly_spend_limit=key.monthly_spend_limit,
        )
        return user, principal

    @staticmethod
    def _credential(request) -> str | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer":
                return value.strip()
            return None  # another scheme: not ours to judge
        value = request.META.get("HTTP_X_API_KEY")
        return value.strip() if value is not None else None

    @staticmethod
    def _secret_ok(key: CachedKey, full: str) -> bool:
        if key_matches(full, key.secret_hash):
            return True
        grace_until = key.previous_secret_expires_at
        return grace_until is not None and grace_until > timezone.now() and key_matches(full, key.previous_secret_hash)

    @staticmethod
    def _network_ok(key: CachedKey, address: str | None) -> bool:
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(network) for network in key.allowed_networks)

    @staticmethod
    def _refuse(request, reason: str, prefix: str, message: str, code: str, status_code: int = 401):
        access_event_from_request(request, reason=reason, key_prefix=prefix)
        raise KeyRefused(message, code=code, status_code=status_code)
