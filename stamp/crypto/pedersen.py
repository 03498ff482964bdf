"""Pedersen commitment to a certificate's quantity (docs/crypto.md §3).

C = quantity·B + R·B_blinding over Ristretto255, with Project Origin's generators by default.
R ("RandomR") is what lets the wallet open C; it is a secret of the certificate.
"""

from __future__ import annotations

import hmac

from stamp.crypto import sodium
from stamp.crypto.generators import PROJECT_ORIGIN_PEDERSEN, PedersenGens
from stamp.crypto.sodium import L

BLINDING_BYTES = 32


def commit(value: int, blinding: int, gens: PedersenGens = PROJECT_ORIGIN_PEDERSEN) -> bytes:
    """The 32-byte compressed commitment value·B + blinding·B_blinding."""
    _check_scalar("value", value)
    _check_scalar("blinding", blinding)
    return gens.commit(value, blinding)


def is_canonical(commitment: bytes) -> bool:
    """Whether `commitment` is a canonical Ristretto255 encoding (RFC 9496; bit 255 clear), as
    the registry and the wallet decode it (docs/crypto.md §4a)."""
    return sodium.is_valid_point(bytes(commitment))


def opens(commitment: bytes, value: int, blinding: int, gens: PedersenGens = PROJECT_ORIGIN_PEDERSEN) -> bool:
    """Whether (value, blinding) opens `commitment` (a canonical encoding only)."""
    if not is_canonical(commitment):
        return False
    try:
        expected = commit(value, blinding, gens)
    except ValueError:
        return False
    return hmac.compare_digest(expected, bytes(commitment))


def random_blinding() -> int:
    """A fresh uniformly random R (non-zero, < ℓ) from libsodium's CSPRNG."""
    return sodium.random_scalar()


def blinding_to_bytes(blinding: int) -> bytes:
    """R as 32 bytes little-endian, the form the wallet receives."""
    _check_scalar("blinding", blinding)
    return blinding.to_bytes(BLINDING_BYTES, "little")


def blinding_from_bytes(data: bytes) -> int:
    """Inverse of `blinding_to_bytes`; refuses a non-canonical encoding (≥ ℓ)."""
    if len(data) != BLINDING_BYTES:
        raise ValueError(f"a blinding value is {BLINDING_BYTES} bytes")
    value = int.from_bytes(data, "little")
    if value >= L:
        raise ValueError("the blinding value is not a canonical scalar (≥ ℓ)")
    return value


def _check_scalar(name: str, value: int) -> None:
    # Reducing silently would let two different inputs give the same commitment.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int")
    if not 0 <= value < L:
        raise ValueError(f"{name} must be in 0…ℓ−1")
