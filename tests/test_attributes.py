"""Hashed attributes (docs/crypto.md §5)."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from stamp.crypto.attributes import SALT_BYTES, hash_attribute, new_salt

VECTORS = Path(__file__).resolve().parent / "vectors" / "project-origin.txt"
V = dict(re.findall(r"^(\S+)(?: \(\d+ bytes\))?\s+= (\S+)$", VECTORS.read_text(), re.M))
CERTIFICATE_ID = "0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69"


def test_hashed_attribute_matches_the_vector() -> None:
    value = hash_attribute("assetId", "571234567890123456", CERTIFICATE_ID, bytes(range(16)))
    assert value == V["value_on_registry"] == "k3FAGRuIIaZOVqURgqUDBaXWJNI6tFDv+BXSWnWtYuk="


def test_hash_covers_key_value_id_and_upper_case_hex_salt() -> None:
    salt = bytes.fromhex("deadbeef00112233445566778899aabb")
    text = "techCode" + "T010000" + CERTIFICATE_ID + "DEADBEEF00112233445566778899AABB"
    expected = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    assert hash_attribute("techCode", "T010000", CERTIFICATE_ID, salt) == expected


def test_lower_case_hex_or_id_would_give_another_hash() -> None:
    salt = bytes.fromhex("deadbeef00112233445566778899aabb")
    ours = hash_attribute("k", "v", CERTIFICATE_ID, salt)
    lower_hex = "k" + "v" + CERTIFICATE_ID + salt.hex()
    assert ours != base64.b64encode(hashlib.sha256(lower_hex.encode()).digest()).decode()
    assert ours != hash_attribute("k", "v", CERTIFICATE_ID.upper(), salt)


def test_values_are_hashed_as_utf8() -> None:
    salt = bytes(16)
    text = "owner" + "Ærø Kommune" + CERTIFICATE_ID + "00" * 16
    expected = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()
    assert hash_attribute("owner", "Ærø Kommune", CERTIFICATE_ID, salt) == expected


def test_new_salts_are_fresh_16_byte_values() -> None:
    salts = {new_salt() for _ in range(100)}
    assert len(salts) == 100
    assert all(len(s) == SALT_BYTES == 16 for s in salts)
