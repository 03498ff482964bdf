"""Hashed certificate attributes (docs/crypto.md §5).

The registry sees only a salted hash of a hashed attribute; the wallet gets key, value and salt
and can recompute it. The salt is fresh per attribute so equal values do not look equal.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

SALT_BYTES = 16


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def hash_attribute(key: str, value: str, certificate_id: str, salt: bytes) -> str:
    """Base64(SHA-256(UTF-8(key ‖ value ‖ certificate_id ‖ HEX_UPPER(salt)))).

    `certificate_id` must be the canonical lower-case UUID text: the hash covers its exact
    spelling."""
    text = key + value + certificate_id + salt.hex().upper()
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
