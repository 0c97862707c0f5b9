"""Encrypted retention of raw payloads, for tenants that must be able to show what a model was given and said.

Off by default: the record's hashes prove what was processed without keeping it. A tenant that turns it on
gets each request's input and output stored with Fernet (AES-128-CBC + HMAC-SHA256) under the first of
`PAYLOAD_ENCRYPTION_KEYS`; the others still decrypt, so a key is rotated by putting a new one first. The keys
live in the environment only, never in the database, so a copy of the database reveals no payload.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import connection
from django.utils import timezone

from apps.compliance.models import RetainedPayload

logger = logging.getLogger(__name__)


class PayloadUnreadable(RuntimeError):
    """A kept payload none of the configured keys opens (its key was removed from the environment)."""


def _fernet(material: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(material.encode()).digest()))


def key_fingerprint(material: str) -> str:
    """Names a key without revealing it, so a payload says which key sealed it."""
    return hashlib.sha256(b"payload-key:" + material.encode()).hexdigest()[:16]


@cache
def _keys(materials: tuple[str, ...]) -> tuple[MultiFernet, str]:
    return MultiFernet([_fernet(material) for material in materials]), key_fingerprint(materials[0])


def encryption_available() -> bool:
    return bool(settings.PAYLOAD_ENCRYPTION_KEYS)


def payload_retention_on() -> bool:
    """Whether the current tenant keeps payloads (and a key is there to seal them)."""
    tenant = getattr(connection, "tenant", None)
    return bool(getattr(tenant, "payload_retention", False)) and encryption_available()


def payload_keep(*, request_id: str, input_body: object, output: object) -> None:
    """Store one request's input and output, encrypted; a second store of the same request is ignored."""
    fernet, key_id = _keys(tuple(settings.PAYLOAD_ENCRYPTION_KEYS))
    plain = json.dumps({"input": input_body, "output": output}, ensure_ascii=False, allow_nan=True).encode("utf-8")
    RetainedPayload.objects.bulk_create(
        [
            RetainedPayload(
                request_id=request_id,
                stored_at=timezone.now(),
                key_id=key_id,
                ciphertext=fernet.encrypt(plain),
            )
        ],
        ignore_conflicts=True,
    )


def payload_keep_quietly(*, request_id: str, input_body: object, output: object) -> None:
    """`payload_keep` when the tenant asks for it; a failure is logged, never turned into a failed answer.

    The model has already answered and the record holds the hashes, so losing the copy is better than
    withholding an answer the client is charged for.
    """
    if not payload_retention_on():
        return
    try:
        payload_keep(request_id=request_id, input_body=input_body, output=output)
    except Exception:
        logger.exception("could not keep the payload of request %s", request_id)


def payload_read(*, request_id: str) -> dict | None:
    """The kept `{"input", "output"}` of a request, None when none was kept; PayloadUnreadable without its key."""
    row = RetainedPayload.objects.filter(request_id=request_id).values_list("ciphertext", flat=True).first()
    if row is None:
        return None
    if not encryption_available():
        raise PayloadUnreadable("PAYLOAD_ENCRYPTION_KEYS is not set, so kept payloads cannot be opened")
    fernet, _ = _keys(tuple(settings.PAYLOAD_ENCRYPTION_KEYS))
    try:
        return json.loads(fernet.decrypt(bytes(row)))
    except InvalidToken:
        raise PayloadUnreadable("none of PAYLOAD_ENCRYPTION_KEYS opens this payload") from None
