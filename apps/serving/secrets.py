"""Encryption at rest of the credentials the portal sends to model servers.

Unlike API keys, these secrets must be read back (to be sent), so they are encrypted, not hashed: Fernet
(AES-128-CBC + HMAC-SHA256) with a key derived from `SERVING_SECRET_KEY`, or from `SECRET_KEY` when that is
not set. Changing the key makes the stored values unreadable: servers must then be given their header again.
"""

import base64
import hashlib
import os
from functools import cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _key_material() -> str:
    return (
        getattr(settings, "SERVING_SECRET_KEY", "") or os.environ.get("SERVING_SECRET_KEY", "") or settings.SECRET_KEY
    )


@cache
def _fernet(material: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(material.encode()).digest()))


def secret_encrypt(value: str) -> str:
    return _fernet(_key_material()).encrypt(value.encode()).decode("ascii")


def secret_decrypt(token: str) -> str | None:
    """The plain value, or None when it was encrypted under another key."""
    try:
        return _fernet(_key_material()).decrypt(token.encode("ascii")).decode()
    except (InvalidToken, ValueError):
        return None
