"""The group backend under the commitments and the range proof: libdecaf (native) or libsodium.

The range proof (`rangeproof.py`) and the commitments (`pedersen.py`) are written once against
`Group`, a handful of batch operations on Ristretto255. Two implementations:

- ``decaf``: the project's C extension `stamp.crypto._decaf` on Debian's libdecaf. Points stay
  in libdecaf's internal form inside opaque batches, so a proof crosses into C a few dozen
  times; it has multiscalar multiplication, and Keccak-f[1600] in C for the transcript.
- ``sodium``: libsodium through ctypes (`sodium.py`), one call per group operation on
  32-byte encodings, and the pure-Python Keccak of `merlin.py`. Always available.

Which operation runs in constant time (decaf; libsodium's single products are constant time,
its skipped 0/1 factors and the bit commitment's additions are not):

- constant time, because a scalar is secret: the commitments V = v·B + γ·B_blinding and
  T₁, T₂ (`msm(secret=True)`), the bit commitment A (`select_sum`, then α·B_blinding) and S
  with its random vectors s_L, s_R and ρ (`msm(secret=True)`);
- variable time, because every scalar is public or already blinded (as the `bulletproofs`
  crate does): the inner-product rounds L and R, the generator folds and all of
  verification (`msm(secret=False)`, `fold`).

Scalar arithmetic (the polynomials, the inner-product vectors) is done on Python ints by the
callers in both backends; it is not constant time.

`STAMP_CRYPTO_BACKEND` = ``auto`` (decaf when the extension imports, else sodium) | ``decaf``
| ``sodium``. `configure` is called once per process (the service and each crypto worker);
`active` configures from the environment on first use otherwise.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from stamp.crypto import merlin, sodium
from stamp.crypto.sodium import IDENTITY, L

BACKEND_CHOICES: Final = ("auto", "decaf", "sodium")
FIXED_BASE_NAF_WIDTH: Final = 8
"""wNAF width of the generators' tables on the native backend: 64 odd multiples (16 KiB) per
generator, ~1 MiB for n = 32, and about a quarter fewer additions than width 5 in the
inner-product rounds and in verification."""
ENV_VAR: Final = "STAMP_CRYPTO_BACKEND"


class BackendUnavailable(RuntimeError):
    """The requested backend cannot be loaded here; the message says why and what to do."""


class Group(Protocol):
    """Batch operations on Ristretto255. A batch (`Points`) is opaque: make it with `decode` or
    `from_hash`, read it back with `encode`. Scalars are ints, reduced mod ℓ here."""

    name: str
    implicit_fold: bool
    """Whether the inner-product prover should keep the original generators with running
    coefficients (cheap when a multiscalar multiplication is) instead of folding them."""

    def decode(self, encodings: bytes) -> Any:
        """32 bytes per point, canonical (RFC 9496: bit 255 clear), the identity allowed;
        ValueError otherwise."""

    def encode(self, points: Any) -> bytes: ...

    def from_hash(self, data: bytes) -> Any:
        """The one-way map of each 64 bytes."""

    def negate(self, points: Any) -> Any: ...

    def precompute(self, points: Any) -> None:
        """These points serve the whole process (the generators): spend memory on lookup tables
        that make every later multiscalar multiplication over them cheaper."""

    def msm(self, scalars: Sequence[int], batches: Sequence[Any], *, secret: bool) -> Any:
        """Σ sᵢ·Pᵢ (a batch of one) over the batches' points in order; constant time when
        `secret`."""

    def select_sum(self, bits: Sequence[int], ones: Any, zeros: Any) -> Any:
        """Σ (ones[i] if bits[i] else zeros[i]), a batch of one."""

    def fold(self, points: Any, ratios: Sequence[int]) -> Any:
        """points[i] + ratios[i]·points[k+i] for i < k = len/2 (public ratios)."""

    def keccak_f1600(self, state: bytearray) -> None:
        """The permutation under the transcript, in place on 200 bytes."""

    def __hash__(self) -> int:
        """Backends key the per-process caches of internal generators."""


def _scalar_bytes(scalars: Sequence[int]) -> bytes:
    return b"".join((s % L).to_bytes(32, "little") for s in scalars)


class SodiumGroup:
    """Today's path: libsodium per operation, pure-Python Keccak. Batches are tuples of
    validated encodings."""

    name = "sodium"
    implicit_fold = False

    def decode(self, encodings: bytes) -> tuple[bytes, ...]:
        if len(encodings) % 32:
            raise ValueError("point encodings must be 32 bytes each")
        points = tuple(encodings[i : i + 32] for i in range(0, len(encodings), 32))
        for i, point in enumerate(points):
            if not sodium.is_valid_point(point):
                raise ValueError(f"point {i} is not a canonical Ristretto255 encoding")
        return points

    def encode(self, points: tuple[bytes, ...]) -> bytes:
        return b"".join(points)

    def from_hash(self, data: bytes) -> tuple[bytes, ...]:
        if len(data) % 64:
            raise ValueError("the one-way map takes 64 bytes per point")
        return tuple(sodium.from_hash(data[i : i + 64]) for i in range(0, len(data), 64))

    def negate(self, points: tuple[bytes, ...]) -> tuple[bytes, ...]:
        return tuple(sodium.sub(IDENTITY, p) for p in points)

    def precompute(self, points: tuple[bytes, ...]) -> None:
        """libsodium has no lookup tables to build."""

    def msm(
        self, scalars: Sequence[int], batches: Sequence[tuple[bytes, ...]], *, secret: bool
    ) -> tuple[bytes]:
        points = [p for batch in batches for p in batch]
        if len(points) != len(scalars):
            raise ValueError("one scalar per point")
        total = IDENTITY
        for scalar, point in zip(scalars, points, strict=True):
            s = scalar % L
            if s:  # a factor of 0 or 1 costs no product
                total = sodium.add(total, point if s == 1 else sodium.mul(s, point))
        return (total,)

    def select_sum(
        self, bits: Sequence[int], ones: tuple[bytes, ...], zeros: tuple[bytes, ...]
    ) -> tuple[bytes]:
        if not len(bits) == len(ones) == len(zeros) or any(b not in (0, 1) for b in bits):
            raise ValueError("select_sum: one bit (0 or 1) per pair of points")
        base, differences = _sodium_selection_bases(ones, zeros)
        # Σ zeros + Σ_{bit 1} (ones − zeros): popcount + 1 additions.
        chosen = [d for d, bit in zip(differences, bits, strict=True) if bit]
        return (functools.reduce(sodium.add, chosen, base),)

    def fold(self, points: tuple[bytes, ...], ratios: Sequence[int]) -> tuple[bytes, ...]:
        k = len(points) // 2
        if len(points) % 2 or len(ratios) != k:
            raise ValueError("fold: an even batch and one ratio per output")
        return tuple(sodium.add(points[i], sodium.mul(ratios[i], points[k + i])) for i in range(k))

    def keccak_f1600(self, state: bytearray) -> None:
        merlin.python_keccak_f1600(state)


@functools.cache
def _sodium_selection_bases(
    ones: tuple[bytes, ...], zeros: tuple[bytes, ...]
) -> tuple[bytes, tuple[bytes, ...]]:
    return functools.reduce(sodium.add, zeros, IDENTITY), tuple(map(sodium.sub, ones, zeros))


class DecafGroup:
    """libdecaf through `stamp.crypto._decaf`: internal points, MSM, Keccak in C."""

    name = "decaf"
    implicit_fold = True

    def __init__(self, module: Any) -> None:
        self._c = module

    def decode(self, encodings: bytes) -> Any:
        return self._c.decode(encodings)

    def from_hash(self, data: bytes) -> Any:
        return self._c.from_hash(data)

    def negate(self, points: Any) -> Any:
        return self._c.negate(points)

    def precompute(self, points: Any) -> None:
        self._c.precompute(points, FIXED_BASE_NAF_WIDTH)

    def keccak_f1600(self, state: bytearray) -> None:
        self._c.keccak_f1600(state)

    def encode(self, points: Any) -> bytes:
        return bytes(points.encode())

    def msm(self, scalars: Sequence[int], batches: Sequence[Any], *, secret: bool) -> Any:
        function = self._c.msm_ct if secret else self._c.msm_vartime
        return function(_scalar_bytes(scalars), tuple(batches))

    def select_sum(self, bits: Sequence[int], ones: Any, zeros: Any) -> Any:
        if any(b not in (0, 1) for b in bits):
            raise ValueError("select_sum bits must be 0 or 1")
        return self._c.select_sum(bytes(bits), ones, zeros)

    def fold(self, points: Any, ratios: Sequence[int]) -> Any:
        return self._c.fold(points, _scalar_bytes(ratios))


# --- choosing one -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    requested: str
    group: Group
    fallback_reason: str | None = None
    """Why ``auto`` fell back to sodium (None when it did not)."""

    def describe(self) -> str:
        text = f"crypto backend: {self.group.name} (STAMP_CRYPTO_BACKEND={self.requested})"
        if self.fallback_reason:
            text += f"; the native backend is unavailable: {self.fallback_reason}"
        return text


@functools.cache
def load_decaf() -> DecafGroup:
    try:
        from stamp.crypto import _decaf  # type: ignore[attr-defined]
    except ImportError as exc:
        raise BackendUnavailable(
            "the native extension stamp.crypto._decaf is not built or libdecaf cannot be loaded "
            f"({exc}). Install libdecaf-dev, gcc and python3-dev (scripts/bootstrap.sh does on "
            "Debian/Ubuntu) and reinstall Stamp, or set STAMP_CRYPTO_BACKEND=sodium"
        ) from exc
    return DecafGroup(_decaf)


SODIUM: Final = SodiumGroup()


def select(requested: str) -> Selection:
    """The backend for a `STAMP_CRYPTO_BACKEND` value; BackendUnavailable when ``decaf`` is
    forced and cannot load, ValueError for an unknown name."""
    requested = requested.strip().lower() or "auto"
    if requested not in BACKEND_CHOICES:
        raise ValueError(f"must be one of {', '.join(BACKEND_CHOICES)}")
    if requested == "sodium":
        return Selection(requested, SODIUM)
    try:
        return Selection(requested, load_decaf())
    except BackendUnavailable as exc:
        if requested == "decaf":
            raise
        return Selection(requested, SODIUM, str(exc))


_selection: Selection | None = None


def configure(requested: str) -> Selection:
    """Make `requested` this process's backend (the service at start, each crypto worker)."""
    return use(select(requested))


def use(chosen: Selection) -> Selection:
    """Make an existing selection this process's backend (tests switch back and forth)."""
    global _selection
    _selection = chosen
    return chosen


def selection() -> Selection:
    if _selection is None:
        return configure(os.environ.get(ENV_VAR, "auto"))
    return _selection


def active() -> Group:
    """This process's backend."""
    return selection().group


def available() -> tuple[Group, ...]:
    """Every backend that loads here (sodium first): for tests and benchmarks."""
    try:
        return (SODIUM, load_decaf())
    except BackendUnavailable:
        return (SODIUM,)
