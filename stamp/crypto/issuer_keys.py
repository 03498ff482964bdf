"""Issuer signing keys: Ed25519 per grid area, in the PEM forms Project Origin uses (docs/crypto.md §2).

Private keys are PKCS#8 v1 PEM (other Project Origin tools reject v2); operators of the old
Stamp hold them as Base64 of the PEM text, so both spellings are read. The registry is
configured with Base64 of the PKIX public-key PEM, which `public_pem_base64` prints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PKCS8_V1_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
"""DER of a PKCS#8 v1 Ed25519 private key up to the 32-byte seed (48 bytes in all)."""

PKIX_PREFIX = bytes.fromhex("302a300506032b6570032100")
"""DER of an Ed25519 SubjectPublicKeyInfo up to the 32-byte key (44 bytes in all)."""

SEED_BYTES = 32
SIGNATURE_BYTES = 64


class InvalidIssuerKey(ValueError):
    """Text that is not an Ed25519 key in an accepted form. Messages never quote the input."""


class IssuerKey:
    """An issuer's Ed25519 signing key, optionally tagged with its grid area.

    Picklable (it travels to crypto worker processes as its seed); its repr shows only the
    grid area and a fingerprint of the public key."""

    __slots__ = ("_private", "_seed", "grid_area", "public_key")

    _private: Ed25519PrivateKey
    _seed: bytes
    grid_area: str | None
    public_key: bytes
    """The raw 32-byte public key."""

    def __init__(self, seed: bytes, grid_area: str | None = None) -> None:
        if len(seed) != SEED_BYTES:
            raise InvalidIssuerKey("an Ed25519 seed is 32 bytes")
        self._seed = bytes(seed)
        self._private = Ed25519PrivateKey.from_private_bytes(self._seed)
        self.grid_area = grid_area
        self.public_key = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def generate(cls, grid_area: str | None = None) -> IssuerKey:
        private = Ed25519PrivateKey.generate()
        seed = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return cls(seed, grid_area)

    @classmethod
    def from_seed(cls, seed: bytes, grid_area: str | None = None) -> IssuerKey:
        return cls(seed, grid_area)

    @classmethod
    def from_pem(cls, text: str | bytes, grid_area: str | None = None) -> IssuerKey:
        """Read a PKCS#8 Ed25519 private key given as PEM text or as Base64 of the PEM text."""
        pem = _pem_bytes(text, "PRIVATE KEY")
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # `from None`: the parser's message could echo part of the secret input.
            raise InvalidIssuerKey("not a readable unencrypted PKCS#8 private key PEM") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise InvalidIssuerKey("the private key is not an Ed25519 key")
        seed = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return cls(seed, grid_area)

    def with_grid_area(self, grid_area: str) -> IssuerKey:
        return IssuerKey(self._seed, grid_area)

    # --- export ---------------------------------------------------------------------------

    @property
    def seed(self) -> bytes:
        """The 32-byte RFC 8032 private key. Secret."""
        return self._seed

    @property
    def fingerprint(self) -> str:
        """Hex of the first 8 bytes of SHA-256 of the raw public key: safe to log."""
        return hashlib.sha256(self.public_key).hexdigest()[:16]

    def private_pem(self) -> str:
        """PKCS#8 v1 PEM text (`-----BEGIN PRIVATE KEY-----`)."""
        der = self._private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Other Project Origin tools reject PKCS#8 v2; refuse to hand one out if the library changes.
        if len(der) != 48 or not der.startswith(PKCS8_V1_PREFIX):
            raise RuntimeError("the cryptography library did not produce a PKCS#8 v1 Ed25519 key")
        return _pem("PRIVATE KEY", der)

    def private_pem_base64(self) -> str:
        """Base64 of the PEM text: the old Stamp's `IssuerPrivateKeyPems__<gridArea>` form."""
        return base64.b64encode(self.private_pem().encode("ascii")).decode("ascii")

    def public_pem(self) -> str:
        """PKIX PEM text (`-----BEGIN PUBLIC KEY-----`)."""
        return _pem("PUBLIC KEY", PKIX_PREFIX + self.public_key)

    def public_pem_base64(self) -> str:
        """Base64 of the public PEM text: what the registry operator configures for the grid area."""
        return base64.b64encode(self.public_pem().encode("ascii")).decode("ascii")

    # --- use ------------------------------------------------------------------------------

    def sign(self, data: bytes) -> bytes:
        """Pure Ed25519 (RFC 8032) signature, 64 bytes."""
        return self._private.sign(data)

    def __repr__(self) -> str:
        return f"IssuerKey(grid_area={self.grid_area!r}, public_fingerprint={self.fingerprint!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IssuerKey):
            return NotImplemented
        return self.public_key == other.public_key and self.grid_area == other.grid_area

    def __hash__(self) -> int:
        return hash((self.public_key, self.grid_area))

    def __reduce__(self) -> tuple[Any, tuple[bytes, str | None]]:
        return IssuerKey, (self._seed, self.grid_area)


def _pem(label: str, der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def _pem_bytes(text: str | bytes, label: str) -> bytes:
    """The PEM text itself, whether given directly or as Base64 of it."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidIssuerKey("a key must be ASCII text (PEM, or Base64 of PEM)") from None
    stripped = text.strip()
    if not stripped.startswith("-----BEGIN"):
        try:
            decoded = base64.b64decode("".join(stripped.split()), validate=True)
            stripped = decoded.decode("ascii").strip()
        except (binascii.Error, ValueError):
            raise InvalidIssuerKey(f"neither PEM nor Base64 of a PEM {label}") from None
        if not stripped.startswith("-----BEGIN"):
            raise InvalidIssuerKey(f"the Base64 text does not decode to a PEM {label}")
    if not stripped.startswith(f"-----BEGIN {label}-----"):
        raise InvalidIssuerKey(f"expected a PEM block '-----BEGIN {label}-----'")
    return (stripped + "\n").encode("ascii")


def load_public_key(text: str | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PKIX PEM text or Base64 of it (the registry's configuration)."""
    pem = _pem_bytes(text, "PUBLIC KEY")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidIssuerKey("not a readable PKIX public key PEM") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidIssuerKey("the public key is not an Ed25519 key")
    return key


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_signature(public_key: Ed25519PublicKey | bytes | str, signature: bytes, data: bytes) -> bool:
    """Whether `signature` is a valid Ed25519 signature of `data`. `public_key` is a key object,
    its raw 32 bytes, or PEM / Base64-of-PEM text. Never raises for a bad signature."""
    if isinstance(public_key, str):
        public_key = load_public_key(public_key)
    elif isinstance(public_key, bytes):
        public_key = Ed25519PublicKey.from_public_bytes(public_key)
    try:
        public_key.verify(bytes(signature), bytes(data))
    except InvalidSignature:
        return False
    return True
