"""Stable hashes of JSON values, for the compliance record of each inference.

The record keeps the SHA-256 of the input and of the output rather than the data itself, so two requests
with the same content must hash equally however the client ordered its keys or spaced its JSON, and a hash
taken today must still match one recomputed from the stored payload later. Hence one canonical byte form:
UTF-8, keys sorted, no insignificant whitespace, characters written as themselves (not `\\u` escapes), and
floats in Python's shortest round-trip form (so `1` and `1.0` stay distinct, as they are in the JSON).
NaN and Infinity are refused: they are not JSON, and a hash of a value no other system can write down
proves nothing.
"""

from __future__ import annotations

import hashlib
import json


def canonical_json(value: object) -> bytes:
    """The one byte form of a JSON value that its hash is taken over; ValueError for NaN or Infinity."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def sha256_hex(value: object) -> str:
    """The hex SHA-256 of `canonical_json(value)`: equal content, equal hash."""
    return hashlib.sha256(canonical_json(value)).hexdigest()
