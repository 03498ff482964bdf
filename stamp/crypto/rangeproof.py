"""Bulletproofs range proof for one value, in the `bulletproofs` crate's v1 format
(docs/crypto.md §4, and §4a for the transcript, the verification equation and the prover).

Proves that a Pedersen commitment V = v·B + γ·B_blinding opens to 0 ≤ v < 2^n without revealing
v. The registry verifies with the Rust crate, so every transcript message, generator and byte of
the serialization follows the crate (`RangeProof::prove_single` / `verify_single`, m = 1).

The proof is written once against the group backend (`backend.Group`, libdecaf or libsodium);
the backends give byte-identical results. What depends on the cost of a backend's operations
is only how the inner-product prover treats its shrinking generator vectors:

- with libsodium a product costs ~40 µs and an addition ~11 µs whether or not it is part of
  a sum, so the generators are folded explicitly, kept as scale·point so that a fold costs one
  product per element (`_FoldedGenerators`);
- with libdecaf a multiscalar multiplication costs a fraction of the single products, so
  the prover keeps the original generators (whose lookup tables are built once per process)
  with running coefficients and makes each L and R one multiscalar multiplication over them
  (`_WeightedGenerators`): no fold at all.

scripts/bench_crypto.py measures both backends.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stamp.crypto import backend, sodium
from stamp.crypto.backend import Group
from stamp.crypto.generators import InternalBases, PedersenGens, internal_bases
from stamp.crypto.merlin import Transcript
from stamp.crypto.sodium import IDENTITY, L

RandomBytes = Callable[[int], bytes]
"""Where the prover's blindings come from: `secrets.token_bytes`; tests pass a seeded one."""

SUPPORTED_BIT_SIZES = (8, 16, 32, 64)


def proof_size(n: int) -> int:
    """Bytes of a proof for bit size n: A, S, T1, T2, t_x, t_x_blinding, e_blinding, the lg n
    pairs (L, R) and the final a, b, 32 bytes each."""
    return (9 + 2 * (n.bit_length() - 1)) * 32


PROOF_SIZE = proof_size(32)
"""608: the size of every proof Stamp sends (n = 32)."""


class RangeProofError(ValueError):
    """The value cannot be proven: outside [0, 2^n), or an unsupported bit size."""


# --- the proof as data ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Proof:
    A: bytes
    S: bytes
    T1: bytes
    T2: bytes
    t_x: int
    t_x_blinding: int
    e_blinding: int
    L: tuple[bytes, ...]
    R: tuple[bytes, ...]
    a: int
    b: int

    def to_bytes(self) -> bytes:
        """`RangeProof::to_bytes`: A S T1 T2 t_x t_x_blinding e_blinding L0 R0 L1 R1 … a b."""
        scalars = (self.t_x, self.t_x_blinding, self.e_blinding)
        rounds = (point for pair in zip(self.L, self.R, strict=True) for point in pair)
        return b"".join(
            (
                self.A,
                self.S,
                self.T1,
                self.T2,
                *map(sodium.scalar_bytes, scalars),
                *rounds,
                sodium.scalar_bytes(self.a),
                sodium.scalar_bytes(self.b),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes, n: int) -> _Proof:
        """Parse a proof for bit size n. ValueError unless the length fits n and every scalar is
        canonical (the crate's `from_bytes`); the points are decoded by the verifier."""
        if len(data) != proof_size(n):
            raise ValueError("range proof has the wrong length for its bit size")
        chunks = [data[i : i + 32] for i in range(0, len(data), 32)]
        points, rounds = chunks[:4], chunks[7:-2]
        scalars = [sodium.scalar_int(chunk) for chunk in chunks[4:7] + chunks[-2:]]
        if any(s >= L for s in scalars):
            raise ValueError("range proof holds a non-canonical scalar")
        t_x, t_x_blinding, e_blinding, a, b = scalars
        a_point, s_point, t1_point, t2_point = points
        l_points, r_points = tuple(rounds[0::2]), tuple(rounds[1::2])
        return cls(
            a_point, s_point, t1_point, t2_point, t_x, t_x_blinding, e_blinding, l_points, r_points, a, b
        )

    def points(self) -> bytes:
        """A S T1 T2 L0 R0 L1 R1 …: every point, in the order of the serialization."""
        rounds = (point for pair in zip(self.L, self.R, strict=True) for point in pair)
        return b"".join((self.A, self.S, self.T1, self.T2, *rounds))


# --- prover ---------------------------------------------------------------------------------


def prove(
    value: int,
    blinding: int,
    label: bytes,
    pedersen: PedersenGens,
    n: int = 32,
    *,
    group: Group | None = None,
    random_bytes: RandomBytes = secrets.token_bytes,
) -> tuple[bytes, bytes]:
    """Prove 0 ≤ value < 2^n for V = value·B + blinding·B_blinding; returns (proof, V).

    `label` is the Merlin transcript label (Stamp: the certificate id's UTF-8 bytes). `group`
    defaults to this process's backend."""
    if n not in SUPPORTED_BIT_SIZES:
        raise RangeProofError(f"bit size must be one of {SUPPORTED_BIT_SIZES}")
    if not 0 <= value < 1 << n:
        raise RangeProofError(f"the value is outside [0, 2^{n})")
    group = backend.active() if group is None else group
    bases = internal_bases(group, pedersen, n)
    commitment = pedersen.commit(value, blinding, group)
    transcript = _start_transcript(group, label, n, commitment)

    alpha, rho, tau_1, tau_2, *s_vectors = _random_scalars(4 + 2 * n, random_bytes)
    s_l, s_r = s_vectors[:n], s_vectors[n:]
    bits = [value >> i & 1 for i in range(n)]
    # A = α·B_blinding + Σ (bit ? Gᵢ : −Hᵢ); S = ρ·B_blinding + ⟨s_L, G⟩ + ⟨s_R, H⟩ (all secret).
    selected = group.select_sum(bits, bases.G, bases.minus_H)
    a_point = group.encode(group.msm([alpha, 1], [bases.B_blinding, selected], secret=True))
    s_point = group.encode(group.msm([rho, *s_l, *s_r], [bases.B_blinding, bases.G, bases.H], secret=True))
    y, z = _bit_challenges(transcript, a_point, s_point)

    poly = _VectorPolynomials.build(bits, s_l, s_r, y, z)
    t1_point = pedersen.commit(poly.t1, tau_1, group)
    t2_point = pedersen.commit(poly.t2, tau_2, group)
    x = _poly_challenge(transcript, t1_point, t2_point)

    t_x = (poly.t0 + x * (poly.t1 + x * poly.t2)) % L
    t_x_blinding = (z * z * blinding + x * (tau_1 + x * tau_2)) % L
    e_blinding = (alpha + rho * x) % L
    w = _opening_challenge(transcript, t_x, t_x_blinding, e_blinding)

    l_vec, r_vec = poly.evaluate(x)
    y_inverse = pow(y, -1, L)
    generators: type[_WeightedGenerators | _FoldedGenerators] = (
        _WeightedGenerators if group.implicit_fold else _FoldedGenerators
    )
    ipp = _prove_inner_product(
        group,
        transcript,
        generators(group, bases.G, [1] * n, [1] * n),
        generators(group, bases.H, _powers(y_inverse, n), _powers(y, n)),  # H′ = y⁻ⁱ·Hᵢ
        bases,
        q_scale=w,
        a=l_vec,
        b=r_vec,
    )
    proof = _Proof(a_point, s_point, t1_point, t2_point, t_x, t_x_blinding, e_blinding, *ipp)
    return proof.to_bytes(), commitment


@dataclass(frozen=True, slots=True, repr=False)
class _VectorPolynomials:
    """l(X) = l0 + l1·X, r(X) = r0 + r1·X and t(X) = ⟨l(X), r(X)⟩ = t0 + t1·X + t2·X² (secret)."""

    l0: list[int]
    l1: list[int]
    r0: list[int]
    r1: list[int]
    t0: int
    t1: int
    t2: int

    @classmethod
    def build(cls, bits: Sequence[int], s_l: list[int], s_r: list[int], y: int, z: int) -> _VectorPolynomials:
        """a_L = bits, a_R = a_L − 1; l = a_L − z + s_L·X; r = yⁿ∘(a_R + z + s_R·X) + z²·2ⁿ."""
        zz = z * z % L
        y_powers = _powers(y, len(bits))
        l0 = [(bit - z) % L for bit in bits]
        r0 = [
            (y_i * (bit - 1 + z) + (zz << i)) % L
            for i, (bit, y_i) in enumerate(zip(bits, y_powers, strict=True))
        ]
        r1 = [y_i * s % L for y_i, s in zip(y_powers, s_r, strict=True)]
        t0 = _inner_product(l0, r0)
        t2 = _inner_product(s_l, r1)
        t1 = (_inner_product(l0, r1) + _inner_product(s_l, r0)) % L
        return cls(l0, s_l, r0, r1, t0, t1, t2)

    def evaluate(self, x: int) -> tuple[list[int], list[int]]:
        l_vec = [(c0 + c1 * x) % L for c0, c1 in zip(self.l0, self.l1, strict=True)]
        r_vec = [(c0 + c1 * x) % L for c0, c1 in zip(self.r0, self.r1, strict=True)]
        return l_vec, r_vec


class _Generators(Protocol):
    """A generator vector X of the inner-product argument, current length 2k, folded each round
    as X′ᵢ = lo·Xᵢ + hi·X_{k+i}."""

    points: Any

    def weights(self, lo: Sequence[int] | None, hi: Sequence[int] | None) -> list[int]:
        """Scalars on `points` whose sum is Σ loᵢ·Xᵢ + Σ hiᵢ·X_{k+i} (a missing half is 0)."""

    def fold(self, lo: int, lo_inverse: int, hi: int) -> None: ...


class _FoldedGenerators:
    """X kept as scaleᵢ·pointᵢ over explicitly folded points: a fold costs one product and one
    addition per element, the factor lo·scaleᵢ going into the new scale."""

    def __init__(self, group: Group, points: Any, scales: list[int], inverse_scales: list[int]) -> None:
        self._group = group
        self.points = points
        self._scales = scales
        self._inverse_scales = inverse_scales

    def weights(self, lo: Sequence[int] | None, hi: Sequence[int] | None) -> list[int]:
        k = len(self._scales) // 2
        low = _hadamard(lo, self._scales[:k]) if lo is not None else [0] * k
        high = _hadamard(hi, self._scales[k:]) if hi is not None else [0] * k
        return low + high

    def fold(self, lo: int, lo_inverse: int, hi: int) -> None:
        k = len(self._scales) // 2
        scales, inverse_scales = self._scales, self._inverse_scales
        ratios = [hi * scales[k + i] * inverse_scales[i] * lo_inverse % L for i in range(k)]
        self.points = self._group.fold(self.points, ratios)
        self._scales = [lo * s % L for s in scales[:k]]
        self._inverse_scales = [lo_inverse * s % L for s in inverse_scales[:k]]


class _WeightedGenerators:
    """X kept as the original points with a running coefficient each: Xᵢ = Σ_{m ≡ i mod 2k}
    coefficientₘ·Pₘ. A fold only updates coefficients; L and R are sums over all n points."""

    # The same signature as _FoldedGenerators', so that the prover can make either.
    def __init__(self, _group: Group, points: Any, coefficients: list[int], _inverse: list[int]) -> None:
        self.points = points
        self._coefficients = coefficients
        self._size = len(coefficients)

    def weights(self, lo: Sequence[int] | None, hi: Sequence[int] | None) -> list[int]:
        k = self._size // 2
        result = []
        for m, coefficient in enumerate(self._coefficients):
            j = m % self._size
            half, index = (lo, j) if j < k else (hi, j - k)
            result.append(half[index] * coefficient % L if half is not None else 0)
        return result

    def fold(self, lo: int, lo_inverse: int, hi: int) -> None:
        k = self._size // 2
        self._coefficients = [
            c * (lo if m % self._size < k else hi) % L for m, c in enumerate(self._coefficients)
        ]
        self._size = k


def _prove_inner_product(
    group: Group,
    transcript: Transcript,
    g: _Generators,
    h: _Generators,
    bases: InternalBases,
    *,
    q_scale: int,
    a: list[int],
    b: list[int],
) -> tuple[tuple[bytes, ...], tuple[bytes, ...], int, int]:
    """`InnerProductProof::create` with Q = q_scale·B: returns (L vector, R vector, a, b).
    Variable time, as in the crate: a and b are blinded, the challenges public."""
    n = len(a)
    transcript.append_message(b"dom-sep", b"ipp v1")
    transcript.append_u64(b"n", n)
    l_points: list[bytes] = []
    r_points: list[bytes] = []
    while n > 1:
        k = n // 2
        a_lo, a_hi, b_lo, b_hi = a[:k], a[k:], b[:k], b[k:]
        batches = [g.points, h.points, bases.B]
        l_scalars = [*g.weights(None, a_lo), *h.weights(b_hi, None), _inner_product(a_lo, b_hi) * q_scale]
        r_scalars = [*g.weights(a_hi, None), *h.weights(None, b_lo), _inner_product(a_hi, b_lo) * q_scale]
        l_point = group.encode(group.msm(l_scalars, batches, secret=False))
        r_point = group.encode(group.msm(r_scalars, batches, secret=False))
        transcript.validate_and_append_point(b"L", l_point)
        transcript.validate_and_append_point(b"R", r_point)
        u = transcript.challenge_scalar(b"u")
        u_inverse = pow(u, -1, L)
        l_points.append(l_point)
        r_points.append(r_point)
        a = [(lo * u + hi * u_inverse) % L for lo, hi in zip(a_lo, a_hi, strict=True)]
        b = [(lo * u_inverse + hi * u) % L for lo, hi in zip(b_lo, b_hi, strict=True)]
        if k > 1:  # the last round's generators are never used
            g.fold(u_inverse, u, u)
            h.fold(u, u_inverse, u_inverse)
        n = k
    return tuple(l_points), tuple(r_points), a[0], b[0]


# --- verifier -------------------------------------------------------------------------------


def verify(
    proof: bytes,
    commitment: bytes,
    label: bytes,
    pedersen: PedersenGens,
    n: int = 32,
    *,
    group: Group | None = None,
) -> bool:
    """True when `proof` shows that `commitment` opens to a value in [0, 2^n) under this
    transcript label and these generators. Never raises: anything malformed (a non-canonical
    point or scalar included, docs/crypto.md §4a) is False."""
    try:
        return _verify(bytes(proof), bytes(commitment), bytes(label), pedersen, n, group)
    except (ValueError, TypeError):
        return False


def _verify(
    proof: bytes, commitment: bytes, label: bytes, pedersen: PedersenGens, n: int, group: Group | None
) -> bool:
    if n not in SUPPORTED_BIT_SIZES or len(commitment) != 32:
        return False
    group = backend.active() if group is None else group
    p = _Proof.from_bytes(proof, n)
    points = group.decode(p.points())  # ValueError on any non-canonical encoding
    commitment_point = group.decode(commitment)
    transcript = _start_transcript(group, label, n, commitment)
    y, z = _bit_challenges(transcript, p.A, p.S)
    x = _poly_challenge(transcript, p.T1, p.T2)
    w = _opening_challenge(transcript, p.t_x, p.t_x_blinding, p.e_blinding)
    u = _inner_product_challenges(transcript, n, p.L, p.R)
    c = _random_scalars(1, secrets.token_bytes)[0]  # batches the t(x) check with the inner-product one

    y_inverse, *u_inverse = _batch_invert([y, *u])
    u_sq = [u_k * u_k % L for u_k in u]
    u_inverse_sq = [v * v % L for v in u_inverse]
    s = _fold_weights(u_sq, u_inverse)
    zz = z * z % L
    delta = ((z - zz) * sum(_powers(y, n)) - zz * z * ((1 << n) - 1)) % L
    g_scalars = [-z - p.a * s_i for s_i in s]
    h_scalars = [
        z + y_inv_i * ((zz << i) - p.b * s_i)
        for i, (y_inv_i, s_i) in enumerate(zip(_powers(y_inverse, n), reversed(s), strict=True))
    ]
    round_scalars = [v for pair in zip(u_sq, u_inverse_sq, strict=True) for v in pair]
    bases = internal_bases(group, pedersen, n)
    total = group.msm(
        [
            1,
            x,
            c * x,
            c * x * x,
            *round_scalars,
            -p.e_blinding - c * p.t_x_blinding,
            w * (p.t_x - p.a * p.b) + c * (delta - p.t_x),
            *g_scalars,
            *h_scalars,
            c * zz,
        ],
        [points, bases.B_blinding, bases.B, bases.G, bases.H, commitment_point],
        secret=False,
    )
    return group.encode(total) == IDENTITY


def _inner_product_challenges(
    transcript: Transcript, n: int, l_points: Sequence[bytes], r_points: Sequence[bytes]
) -> list[int]:
    transcript.append_message(b"dom-sep", b"ipp v1")
    transcript.append_u64(b"n", n)
    challenges = []
    for l_point, r_point in zip(l_points, r_points, strict=True):
        transcript.validate_and_append_point(b"L", l_point)
        transcript.validate_and_append_point(b"R", r_point)
        challenges.append(transcript.challenge_scalar(b"u"))
    return challenges


def _fold_weights(u_sq: Sequence[int], u_inverse: Sequence[int]) -> list[int]:
    """sᵢ: the weight of Gᵢ in the fully folded generator. s₀ = ∏ u_k⁻¹ and
    sᵢ = s_{i−2^j}·u²_{lg n−1−j} with 2^j the highest power of two ≤ i."""
    lg_n = len(u_sq)
    s = [functools.reduce(lambda acc, v: acc * v % L, u_inverse, 1)]
    for i in range(1, 1 << lg_n):
        j = i.bit_length() - 1
        s.append(s[i - (1 << j)] * u_sq[lg_n - 1 - j] % L)
    return s


# --- transcript steps shared by prover and verifier (§4a step 2) ----------------------------


def _start_transcript(group: Group, label: bytes, n: int, commitment: bytes) -> Transcript:
    transcript = Transcript(label, group.keccak_f1600)
    transcript.append_message(b"dom-sep", b"rangeproof v1")
    transcript.append_u64(b"n", n)
    transcript.append_u64(b"m", 1)
    transcript.append_point(b"V", commitment)  # V may be the identity (value 0, blinding 0)
    return transcript


def _bit_challenges(transcript: Transcript, a_point: bytes, s_point: bytes) -> tuple[int, int]:
    transcript.validate_and_append_point(b"A", a_point)
    transcript.validate_and_append_point(b"S", s_point)
    return transcript.challenge_scalar(b"y"), transcript.challenge_scalar(b"z")


def _poly_challenge(transcript: Transcript, t1_point: bytes, t2_point: bytes) -> int:
    transcript.validate_and_append_point(b"T_1", t1_point)
    transcript.validate_and_append_point(b"T_2", t2_point)
    return transcript.challenge_scalar(b"x")


def _opening_challenge(transcript: Transcript, t_x: int, t_x_blinding: int, e_blinding: int) -> int:
    transcript.append_scalar(b"t_x", t_x)
    transcript.append_scalar(b"t_x_blinding", t_x_blinding)
    transcript.append_scalar(b"e_blinding", e_blinding)
    return transcript.challenge_scalar(b"w")


# --- arithmetic -----------------------------------------------------------------------------


def _inner_product(left: Sequence[int], right: Sequence[int]) -> int:
    return sum(a * b for a, b in zip(left, right, strict=True)) % L


def _hadamard(left: Sequence[int], right: Sequence[int]) -> list[int]:
    return [a * b % L for a, b in zip(left, right, strict=True)]


def _powers(base: int, count: int) -> list[int]:
    powers = [1] * count
    for i in range(1, count):
        powers[i] = powers[i - 1] * base % L
    return powers


def _batch_invert(values: Sequence[int]) -> list[int]:
    """Inverses mod ℓ with one modular inversion (Montgomery's trick); ValueError on 0."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % L)
    inverse = pow(prefix[-1], -1, L)
    result = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        result[i] = inverse * prefix[i] % L
        inverse = inverse * values[i] % L
    return result


def _random_scalars(count: int, random_bytes: RandomBytes) -> list[int]:
    """Uniform scalars (64 random bytes each, reduced mod ℓ, so the bias is negligible)."""
    data = random_bytes(64 * count)
    return [int.from_bytes(data[64 * i : 64 * (i + 1)], "little") % L for i in range(count)]
