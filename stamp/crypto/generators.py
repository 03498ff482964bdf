"""Generators of the quantity commitment and of the range proof (docs/crypto.md §3 and §4a step 1).

Two sets matter: Project Origin's Pedersen generators (everything Stamp makes and the registry
checks) and the `bulletproofs` crate's defaults (only its own test proofs in
`vectors/rangeproof-dalek.txt`). The vector generators G_i, H_i are the crate's SHAKE256
"GeneratorsChain" chains for party 0 in both cases.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

from stamp.crypto import backend, sodium
from stamp.crypto.backend import Group


@dataclass(frozen=True, slots=True)
class PedersenGens:
    """The two bases of a Pedersen commitment value·B + blinding·B_blinding."""

    B: bytes
    B_blinding: bytes

    def commit(self, value: int, blinding: int, group: Group | None = None) -> bytes:
        """value·B + blinding·B_blinding, in constant time on the native backend (both secret)."""
        group = backend.active() if group is None else group
        return group.encode(group.msm([value, blinding], [internal_pedersen(group, self)], secret=True))


def _project_origin_pedersen() -> PedersenGens:
    digest_1 = hashlib.sha512(b"3.141592653589793238462643383279502884197169").digest()
    digest_2 = hashlib.sha512(digest_1).digest()
    return PedersenGens(B=sodium.from_hash(digest_1), B_blinding=sodium.from_hash(digest_2))


_RISTRETTO_BASEPOINT = bytes.fromhex("e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76")

PROJECT_ORIGIN_PEDERSEN = _project_origin_pedersen()
"""What the registry verifies Stamp's commitments and proofs with."""

DALEK_DEFAULT_PEDERSEN = PedersenGens(
    B=_RISTRETTO_BASEPOINT,
    B_blinding=sodium.from_hash(hashlib.sha3_512(_RISTRETTO_BASEPOINT).digest()),
)
"""`PedersenGens::default()` of the crate: only for its own test proofs."""


def _generators_chain(label: bytes, count: int) -> tuple[bytes, ...]:
    stream = hashlib.shake_256(b"GeneratorsChain" + label).digest(64 * count)
    return tuple(sodium.from_hash(stream[64 * i : 64 * (i + 1)]) for i in range(count))


@functools.cache
def bulletproof_gens(n: int) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The first n points (G_i, H_i) of party 0's chains; the same for any capacity ≥ n."""
    party = (0).to_bytes(4, "little")
    return _generators_chain(b"G" + party, n), _generators_chain(b"H" + party, n)


# --- the same points in a backend's internal form, made once per process ---------------------


@functools.cache
def internal_pedersen(group: Group, gens: PedersenGens) -> Any:
    """The batch (B, B_blinding)."""
    return _fixed(group, gens.B + gens.B_blinding)


@dataclass(frozen=True, slots=True)
class InternalBases:
    """Every fixed base of a range proof for one bit size, as batches of `group`."""

    B: Any
    B_blinding: Any
    G: Any
    H: Any
    minus_H: Any


@functools.cache
def internal_bases(group: Group, gens: PedersenGens, n: int) -> InternalBases:
    gens_g, gens_h = bulletproof_gens(n)
    h = _fixed(group, b"".join(gens_h))
    minus_h = group.negate(h)
    group.precompute(minus_h)
    return InternalBases(
        B=_fixed(group, gens.B),
        B_blinding=_fixed(group, gens.B_blinding),
        G=_fixed(group, b"".join(gens_g)),
        H=h,
        minus_H=minus_h,
    )


def _fixed(group: Group, encodings: bytes) -> Any:
    points = group.decode(encodings)
    group.precompute(points)
    return points
