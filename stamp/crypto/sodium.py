"""Ristretto255 group operations on the system libsodium.

PyNaCl does not expose libsodium's Ristretto255 functions; ``pysodium`` loads the
system library (Debian: ``libsodium23``). pysodium's own wrappers re-check the
library version on every call, which costs more than the group operation itself on a
hot path of a range proof, so the functions here call the library handle that
pysodium opened directly through ctypes, with the exact buffer sizes libsodium wants.

Points are 32-byte canonical Ristretto encodings. Scalars are 32-byte little-endian
(canonical, < L) at this boundary; arithmetic on scalars is done with Python ints by
the callers, which is faster than a ctypes round trip.
"""

from __future__ import annotations

import ctypes
from typing import Any

L = 2**252 + 27742317777372353535851937790883648493
"""Order of the Ristretto255 group."""

POINT_BYTES = 32
SCALAR_BYTES = 32
HASH_BYTES = 64
IDENTITY = bytes(32)


class CryptoBackendMissing(RuntimeError):
    """libsodium (with Ristretto255 support) cannot be loaded."""


def _load() -> Any:
    try:
        import pysodium
    except (ImportError, ValueError, OSError) as exc:  # pysodium raises ValueError when libsodium is absent
        raise CryptoBackendMissing(
            "libsodium is required for Stamp's commitments and range proofs but could not be "
            "loaded. Install it (Debian/Ubuntu: `apt-get install -y libsodium23`; "
            f"macOS: `brew install libsodium`) and `pip install pysodium`. Cause: {exc}"
        ) from exc
    lib = pysodium.sodium
    if not hasattr(lib, "crypto_core_ristretto255_from_hash"):
        raise CryptoBackendMissing("the installed libsodium is older than 1.0.18 and lacks Ristretto255")
    if lib.sodium_init() < 0:
        raise CryptoBackendMissing("sodium_init() failed")
    return lib


_lib = _load()
_buf = ctypes.create_string_buffer


def scalar_bytes(value: int) -> bytes:
    """Canonical 32-byte little-endian encoding of value mod L."""
    return (value % L).to_bytes(32, "little")


def scalar_int(data: bytes) -> int:
    return int.from_bytes(data, "little")


def from_hash(data: bytes) -> bytes:
    """Ristretto255 one-way map of 64 uniform bytes (RFC 9496 §4.3.4)."""
    if len(data) != HASH_BYTES:
        raise ValueError("from_hash needs 64 bytes")
    out = _buf(POINT_BYTES)
    _lib.crypto_core_ristretto255_from_hash(out, data)
    return out.raw


def is_valid_point(point: bytes) -> bool:
    """True for a canonical encoding of a group element (the identity included).

    RFC 9496 decoding (and the registry's Rust code) rejects an encoding with bit 255 set;
    libsodium 1.0.18 ignores that bit, so it is checked here (docs/crypto.md §4a)."""
    if len(point) != POINT_BYTES or point[31] & 0x80:
        return False
    if point == IDENTITY:
        return True
    return bool(_lib.crypto_core_ristretto255_is_valid_point(point))


def add(p: bytes, q: bytes) -> bytes:
    out = _buf(POINT_BYTES)
    if _lib.crypto_core_ristretto255_add(out, p, q) != 0:
        raise ValueError("invalid Ristretto255 point")
    return out.raw


def sub(p: bytes, q: bytes) -> bytes:
    out = _buf(POINT_BYTES)
    if _lib.crypto_core_ristretto255_sub(out, p, q) != 0:
        raise ValueError("invalid Ristretto255 point")
    return out.raw


def mul(scalar: int, point: bytes) -> bytes:
    """scalar·point. libsodium refuses a product equal to the identity; that is
    reported as the identity encoding, not as an error."""
    s = scalar % L
    if s == 0:
        return IDENTITY
    if point == IDENTITY:
        return IDENTITY
    out = _buf(POINT_BYTES)
    if _lib.crypto_scalarmult_ristretto255(out, s.to_bytes(32, "little"), point) != 0:
        if not is_valid_point(point):
            raise ValueError("invalid Ristretto255 point")
        return IDENTITY
    return out.raw


def random_scalar() -> int:
    """Uniformly random non-zero scalar mod L (libsodium's CSPRNG)."""
    out = _buf(SCALAR_BYTES)
    _lib.crypto_core_ristretto255_scalar_random(out)
    return int.from_bytes(out.raw, "little")
