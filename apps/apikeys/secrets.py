"""Key material: how a key looks, how it is hashed, how it is checked. Nothing here touches storage."""

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from django.conf import settings

KEY_PREFIX_TAG = "aip"
_KEY_RE = re.compile(r"^(aip_[0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class KeyParts:
    prefix: str
    full: str


def key_generate(prefix: str | None = None) -> KeyParts:
    """A new key `aip_<12 hex>_<43 url-safe chars>` (256 bits of secret); rotation keeps the prefix."""
    prefix = prefix or f"{KEY_PREFIX_TAG}_{secrets.token_hex(6)}"
    while True:
        secret = secrets.token_urlsafe(32)
        if len(secret) == 43:
            return KeyParts(prefix=prefix, full=f"{prefix}_{secret}")


def key_parse(raw: str) -> KeyParts | None:
    """The key's parts, or None when it cannot be one of ours (checked before any lookup)."""
    match = _KEY_RE.match(raw)
    if match is None:
        return None
    return KeyParts(prefix=match.group(1), full=raw)


def key_hash(full_key: str) -> str:
    """HMAC-SHA256 with the server's pepper: fast (keys are random, not passwords) and useless without it."""
    return hmac.new(settings.API_KEY_PEPPER.encode(), full_key.encode(), hashlib.sha256).hexdigest()


def key_matches(full_key: str, stored_hash: str) -> bool:
    return bool(stored_hash) and hmac.compare_digest(key_hash(full_key), stored_hash)
