"""BIP32 hierarchical deterministic keys on secp256k1 (docs/crypto.md §1).

The wallet hands out an extended public key; the owner key of each slice is its non-hardened
child at the slice's position. All curve arithmetic is libsecp256k1's (through `coincurve`):
only the BIP32 bookkeeping (HMAC, serialization, the invalid cases) is written here.

The private side (`ExtendedPrivateKey`) exists for the wallet simulator and for tests: Stamp
itself never holds a recipient's private key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass, field

import coincurve

HARDENED = 1 << 31
"""First hardened child index; owner keys use only indices below it."""

SERIALIZED_LENGTH = 74
"""depth (1) ‖ parent fingerprint (4) ‖ child number (4) ‖ chain code (32) ‖ key (33)."""

CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_MASTER_HMAC_KEY = b"Bitcoin seed"
_HEADER = struct.Struct(">B4sI32s")


class InvalidHDKey(ValueError):
    """An extended key or a derivation that BIP32 (or Stamp's use of it) does not allow."""


# --- public side ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExtendedPublicKey:
    """A BIP32 extended public key, as a wallet endpoint publishes it."""

    depth: int
    parent_fingerprint: bytes
    child_number: int
    chain_code: bytes
    public_key: bytes
    """33-byte compressed SEC1 point."""

    def __post_init__(self) -> None:
        if not 0 <= self.depth <= 255:
            raise InvalidHDKey("depth must be 0…255")
        if len(self.parent_fingerprint) != 4:
            raise InvalidHDKey("the parent fingerprint must be 4 bytes")
        if not 0 <= self.child_number < 1 << 32:
            raise InvalidHDKey("the child number must fit in 32 bits")
        if len(self.chain_code) != 32:
            raise InvalidHDKey("the chain code must be 32 bytes")
        _check_compressed_point(self.public_key)

    @classmethod
    def from_bytes(cls, data: bytes) -> ExtendedPublicKey:
        if len(data) != SERIALIZED_LENGTH:
            raise InvalidHDKey(
                f"an extended public key is {SERIALIZED_LENGTH} bytes "
                "(depth, parent fingerprint, child number, chain code, compressed key), "
                f"got {len(data)}"
            )
        depth, fingerprint, child_number, chain_code = _HEADER.unpack_from(data)
        return cls(depth, fingerprint, child_number, chain_code, bytes(data[41:]))

    @classmethod
    def parse(cls, data: bytes | str) -> ExtendedPublicKey:
        """The 74 bytes, or their Base64 text (the wallet endpoint's JSON form)."""
        return cls.from_base64(data) if isinstance(data, str) else cls.from_bytes(data)

    @classmethod
    def from_base64(cls, text: str) -> ExtendedPublicKey:
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidHDKey("the extended public key is not valid Base64") from exc
        return cls.from_bytes(data)

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(self.depth, self.parent_fingerprint, self.child_number, self.chain_code)
        return header + self.public_key

    def to_base64(self) -> str:
        return base64.b64encode(self.to_bytes()).decode("ascii")

    @property
    def fingerprint(self) -> bytes:
        """First 4 bytes of HASH160 of the key: what its children record as their parent."""
        return hash160(self.public_key)[:4]

    def child_public_key(self, index: int) -> bytes:
        """The 33-byte compressed owner key at non-hardened `index` (CKDpub)."""
        return _ckd_pub(self.public_key, self.chain_code, index)[0]

    def child(self, index: int) -> ExtendedPublicKey:
        """The non-hardened child extended key at `index` (CKDpub)."""
        if self.depth == 255:
            raise InvalidHDKey("a key at depth 255 cannot have children")
        key, chain_code = _ckd_pub(self.public_key, self.chain_code, index)
        return ExtendedPublicKey(self.depth + 1, self.fingerprint, index, chain_code, key)


def _check_compressed_point(key: bytes) -> None:
    if len(key) != 33 or key[0] not in (2, 3):
        raise InvalidHDKey("the public key must be a 33-byte compressed secp256k1 point (02/03 prefix)")
    try:
        coincurve.PublicKey(key)
    except ValueError as exc:
        raise InvalidHDKey("the public key is not a point on secp256k1") from exc


def _check_non_hardened(index: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int):
        raise InvalidHDKey("a child index must be an int")
    if index < 0:
        raise InvalidHDKey("a child index cannot be negative")
    if index >= HARDENED:
        raise InvalidHDKey("a hardened child (index ≥ 2^31) cannot be derived from a public key")


def _ckd_pub(parent: bytes, chain_code: bytes, index: int) -> tuple[bytes, bytes]:
    _check_non_hardened(index)
    digest = hmac.digest(chain_code, parent + index.to_bytes(4, "big"), "sha512")
    return _add_tweak_public(parent, digest[:32], index), digest[32:]


def _add_tweak_public(parent: bytes, tweak: bytes, index: int) -> bytes:
    """parent + parse256(tweak)·G, refusing BIP32's invalid cases."""
    if int.from_bytes(tweak, "big") >= CURVE_ORDER:
        raise InvalidHDKey(f"child {index} is invalid (I_L ≥ n); BIP32 says to use the next index")
    try:
        child = coincurve.PublicKey(parent).add(tweak)
    except ValueError as exc:  # libsecp256k1 refuses a sum at infinity
        raise InvalidHDKey(f"child {index} is invalid (point at infinity); use the next index") from exc
    return child.format(compressed=True)


def _add_tweak_private(key: bytes, tweak: bytes, index: int) -> bytes:
    """(k + parse256(tweak)) mod n, refusing BIP32's invalid cases."""
    tweak_int = int.from_bytes(tweak, "big")
    if tweak_int >= CURVE_ORDER:
        raise InvalidHDKey(f"child {index} is invalid (I_L ≥ n); BIP32 says to use the next index")
    child = (tweak_int + int.from_bytes(key, "big")) % CURVE_ORDER
    if child == 0:
        raise InvalidHDKey(f"child {index} is invalid (zero key); BIP32 says to use the next index")
    return child.to_bytes(32, "big")


# --- private side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExtendedPrivateKey:
    """A BIP32 extended private key (wallet simulator and tests). Its repr holds no secret."""

    depth: int
    parent_fingerprint: bytes
    child_number: int
    chain_code: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    """32-byte big-endian scalar, 0 < k < n."""

    def __post_init__(self) -> None:
        if not 0 <= self.depth <= 255:
            raise InvalidHDKey("depth must be 0…255")
        if len(self.parent_fingerprint) != 4:
            raise InvalidHDKey("the parent fingerprint must be 4 bytes")
        if not 0 <= self.child_number < 1 << 32:
            raise InvalidHDKey("the child number must fit in 32 bits")
        if len(self.chain_code) != 32:
            raise InvalidHDKey("the chain code must be 32 bytes")
        if len(self.private_key) != 32 or not 0 < int.from_bytes(self.private_key, "big") < CURVE_ORDER:
            raise InvalidHDKey("the private key must be a 32-byte scalar in 1…n−1")

    @classmethod
    def from_seed(cls, seed: bytes) -> ExtendedPrivateKey:
        """The BIP32 master key of `seed` (16…64 bytes)."""
        if not 16 <= len(seed) <= 64:
            raise InvalidHDKey("a BIP32 seed is 16…64 bytes")
        digest = hmac.digest(_MASTER_HMAC_KEY, seed, "sha512")
        if not 0 < int.from_bytes(digest[:32], "big") < CURVE_ORDER:
            raise InvalidHDKey("this seed gives an invalid master key; use another seed")
        return cls(0, bytes(4), 0, digest[32:], digest[:32])

    @classmethod
    def generate(cls) -> ExtendedPrivateKey:
        return cls.from_seed(secrets.token_bytes(32))

    @classmethod
    def from_bytes(cls, data: bytes) -> ExtendedPrivateKey:
        """Inverse of `to_bytes`: the 74-byte form with 0x00 ‖ k in place of the public key."""
        if len(data) != SERIALIZED_LENGTH or data[41] != 0:
            raise InvalidHDKey(f"an extended private key is {SERIALIZED_LENGTH} bytes ending in 0x00 ‖ k")
        depth, fingerprint, child_number, chain_code = _HEADER.unpack_from(data)
        return cls(depth, fingerprint, child_number, chain_code, bytes(data[42:]))

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(self.depth, self.parent_fingerprint, self.child_number, self.chain_code)
        return header + b"\x00" + self.private_key

    @property
    def public_key(self) -> bytes:
        """33-byte compressed public key of this node."""
        return coincurve.PrivateKey(self.private_key).public_key.format(compressed=True)

    @property
    def fingerprint(self) -> bytes:
        return hash160(self.public_key)[:4]

    def public(self) -> ExtendedPublicKey:
        """The neutered key: what a wallet publishes as its endpoint key."""
        return ExtendedPublicKey(
            self.depth, self.parent_fingerprint, self.child_number, self.chain_code, self.public_key
        )

    def child(self, index: int) -> ExtendedPrivateKey:
        """CKDpriv: hardened for index ≥ 2^31, non-hardened below."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1 << 32:
            raise InvalidHDKey("a child index must be an int in 0…2^32−1")
        if self.depth == 255:
            raise InvalidHDKey("a key at depth 255 cannot have children")
        parent_public = self.public_key
        if index >= HARDENED:
            data = b"\x00" + self.private_key + index.to_bytes(4, "big")
        else:
            data = parent_public + index.to_bytes(4, "big")
        digest = hmac.digest(self.chain_code, data, "sha512")
        return ExtendedPrivateKey(
            self.depth + 1,
            hash160(parent_public)[:4],
            index,
            digest[32:],
            _add_tweak_private(self.private_key, digest[:32], index),
        )

    def private_key_at(self, position: int) -> bytes:
        """The 32-byte private key of the owner key at non-hardened `position`: the key a wallet
        uses for a slice whose owner key is `self.public().child_public_key(position)`."""
        _check_non_hardened(position)
        return self.child(position).private_key


# --- HASH160 --------------------------------------------------------------------------------


def hash160(data: bytes) -> bytes:
    """RIPEMD-160(SHA-256(data)), BIP32's key identifier."""
    return ripemd160(hashlib.sha256(data).digest())


def ripemd160(data: bytes) -> bytes:
    # OpenSSL 3 moved RIPEMD-160 to its legacy provider, so hashlib may lack it; the pure-Python
    # version only ever hashes 32 bytes per fingerprint, which is cheap enough.
    try:
        return hashlib.new("ripemd160", data).digest()
    except ValueError:
        return _ripemd160_pure(data)


_R_LEFT = (
    *range(16),
    *(7, 4, 13, 1, 10, 6, 15, 3, 12, 0, 9, 5, 2, 14, 11, 8),
    *(3, 10, 14, 4, 9, 15, 8, 1, 2, 7, 0, 6, 13, 11, 5, 12),
    *(1, 9, 11, 10, 0, 8, 12, 4, 13, 3, 7, 15, 14, 5, 6, 2),
    *(4, 0, 5, 9, 7, 12, 2, 10, 14, 1, 3, 8, 11, 6, 15, 13),
)
_R_RIGHT = (
    *(5, 14, 7, 0, 9, 2, 11, 4, 13, 6, 15, 8, 1, 10, 3, 12),
    *(6, 11, 3, 7, 0, 13, 5, 10, 14, 15, 8, 12, 4, 9, 1, 2),
    *(15, 5, 1, 3, 7, 14, 6, 9, 11, 8, 12, 2, 10, 0, 4, 13),
    *(8, 6, 4, 1, 3, 11, 15, 0, 5, 12, 2, 13, 9, 7, 10, 14),
    *(12, 15, 10, 4, 1, 5, 8, 7, 6, 2, 13, 14, 0, 3, 9, 11),
)
_S_LEFT = (
    *(11, 14, 15, 12, 5, 8, 7, 9, 11, 13, 14, 15, 6, 7, 9, 8),
    *(7, 6, 8, 13, 11, 9, 7, 15, 7, 12, 15, 9, 11, 7, 13, 12),
    *(11, 13, 6, 7, 14, 9, 13, 15, 14, 8, 13, 6, 5, 12, 7, 5),
    *(11, 12, 14, 15, 14, 15, 9, 8, 9, 14, 5, 6, 8, 6, 5, 12),
    *(9, 15, 5, 11, 6, 8, 13, 12, 5, 12, 13, 14, 11, 8, 5, 6),
)
_S_RIGHT = (
    *(8, 9, 9, 11, 13, 15, 15, 5, 7, 7, 8, 11, 14, 14, 12, 6),
    *(9, 13, 15, 7, 12, 8, 9, 11, 7, 7, 12, 7, 6, 15, 13, 11),
    *(9, 7, 15, 11, 8, 6, 6, 14, 12, 13, 5, 14, 13, 13, 7, 5),
    *(15, 5, 8, 11, 14, 14, 6, 14, 6, 9, 12, 9, 12, 5, 15, 8),
    *(8, 5, 12, 9, 12, 5, 14, 6, 8, 13, 6, 5, 15, 13, 11, 11),
)
_K_LEFT = (0x00000000, 0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xA953FD4E)
_K_RIGHT = (0x50A28BE6, 0x5C4DD124, 0x6D703EF3, 0x7A6D76E9, 0x00000000)
_MASK = 0xFFFFFFFF


def _rol(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & _MASK


def _f(j: int, x: int, y: int, z: int) -> int:
    if j == 0:
        return x ^ y ^ z
    if j == 1:
        return (x & y) | (~x & z)
    if j == 2:
        return ((x | ~y) ^ z) & _MASK
    if j == 3:
        return (x & z) | (y & ~z)
    return (x ^ (y | ~z)) & _MASK


def _ripemd160_pure(data: bytes) -> bytes:
    """RIPEMD-160 (Dobbertin, Bosselaers, Preneel 1996), for when OpenSSL does not offer it."""
    h = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0]
    padded = data + b"\x80" + bytes((55 - len(data)) % 64) + (8 * len(data)).to_bytes(8, "little")
    for offset in range(0, len(padded), 64):
        x = struct.unpack_from("<16I", padded, offset)
        al, bl, cl, dl, el = h
        ar, br, cr, dr, er = h
        for i in range(80):
            j = i // 16
            t = _rol((al + _f(j, bl, cl, dl) + x[_R_LEFT[i]] + _K_LEFT[j]) & _MASK, _S_LEFT[i])
            al, el, dl, cl, bl = el, dl, _rol(cl, 10), bl, (t + el) & _MASK
            t = _rol((ar + _f(4 - j, br, cr, dr) + x[_R_RIGHT[i]] + _K_RIGHT[j]) & _MASK, _S_RIGHT[i])
            ar, er, dr, cr, br = er, dr, _rol(cr, 10), br, (t + er) & _MASK
        h = [
            (h[1] + cl + dr) & _MASK,
            (h[2] + dl + er) & _MASK,
            (h[3] + el + ar) & _MASK,
            (h[4] + al + br) & _MASK,
            (h[0] + bl + cr) & _MASK,
        ]
    return struct.pack("<5I", *h)
