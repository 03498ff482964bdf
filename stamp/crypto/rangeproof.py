"""Bulletproofs range proof for one value, in the `bulletproofs` crate's v1 format
(crypto.md §4, and §4a for the transcript, the verification equation and the prover).

Proves that a Pedersen commitment V = v·B + γ·B_blinding opens to 0 ≤ v < 2^n without revealing
v. The registry verifies with the Rust crate, so every transcript message, generator and byte of
the serialization follows the crate (`RangeProof::prove_single` / `verify_single`, m = 1).

Why the code is shaped as it is: libsodium offers one variable-base scalar multiplication
(~40 µs) and one addition (~11 µs, mostly decoding and encoding) per call, and no multiscalar
multiplication. Bucket (Pippenger) or interleaved (Straus) methods built from those additions
lose to plain products because an addition costs a quarter of a product, so every Σ sᵢ·Pᵢ here
is a sum of single products and the work is to need fewer of them: scalars are Python ints, A
is built from additions only, H′ = y⁻ⁱ·Hᵢ is never materialized, the inner-product generators
are folded as scale·point (one product per element instead of two) and Q = w·B is folded into
B's scalar. scripts/bench_rangeproof.py measures all of this.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from stamp.crypto import sodium
from stamp.crypto.generators import PedersenGens, bulletproof_gens
from stamp.crypto.merlin import Transcript
from stamp.crypto.sodium import IDENTITY, L

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
        """Parse a proof for bit size n. ValueError unless the length fits n, every point is a
        valid encoding and every scalar is canonical: the crate's `from_bytes` together with
        the decompression of each point in `verify`."""
        if len(data) != proof_size(n):
            raise ValueError("range proof has the wrong length for its bit size")
        chunks = [data[i : i + 32] for i in range(0, len(data), 32)]
        points, rounds = chunks[:4], chunks[7:-2]
        if not all(map(sodium.is_valid_point, points + rounds)):
            raise ValueError("range proof holds an invalid point")
        scalars = [sodium.scalar_int(chunk) for chunk in chunks[4:7] + chunks[-2:]]
        if any(s >= L for s in scalars):
            raise ValueError("range proof holds a non-canonical scalar")
        t_x, t_x_blinding, e_blinding, a, b = scalars
        a_point, s_point, t1_point, t2_point = points
        l_points, r_points = tuple(rounds[0::2]), tuple(rounds[1::2])
        return cls(
            a_point, s_point, t1_point, t2_point, t_x, t_x_blinding, e_blinding, l_points, r_points, a, b
        )


# --- prover ---------------------------------------------------------------------------------


def prove(
    value: int, blinding: int, label: bytes, pedersen: PedersenGens, n: int = 32
) -> tuple[bytes, bytes]:
    """Prove 0 ≤ value < 2^n for V = value·B + blinding·B_blinding; returns (proof, V).

    `label` is the Merlin transcript label (Stamp: the certificate id's UTF-8 bytes)."""
    if n not in SUPPORTED_BIT_SIZES:
        raise RangeProofError(f"bit size must be one of {SUPPORTED_BIT_SIZES}")
    if not 0 <= value < 1 << n:
        raise RangeProofError(f"the value is outside [0, 2^{n})")
    gens_g, gens_h = bulletproof_gens(n)
    commitment = pedersen.commit(value, blinding)
    transcript = _start_transcript(label, n, commitment)

    alpha, rho, tau_1, tau_2, *s_vectors = _random_scalars(4 + 2 * n)
    s_l, s_r = s_vectors[:n], s_vectors[n:]
    bits = [value >> i & 1 for i in range(n)]
    a_point = _commit_bits(bits, alpha, pedersen)
    s_point = _sum_of_products([rho, *s_l, *s_r], [pedersen.B_blinding, *gens_g, *gens_h])
    y, z = _bit_challenges(transcript, a_point, s_point)

    poly = _VectorPolynomials.build(bits, s_l, s_r, y, z)
    t1_point = pedersen.commit(poly.t1, tau_1)
    t2_point = pedersen.commit(poly.t2, tau_2)
    x = _poly_challenge(transcript, t1_point, t2_point)

    t_x = (poly.t0 + x * (poly.t1 + x * poly.t2)) % L
    t_x_blinding = (z * z * blinding + x * (tau_1 + x * tau_2)) % L
    e_blinding = (alpha + rho * x) % L
    w = _opening_challenge(transcript, t_x, t_x_blinding, e_blinding)

    l_vec, r_vec = poly.evaluate(x)
    y_inverse = pow(y, -1, L)
    ipp = _prove_inner_product(
        transcript,
        _ScaledPoints(gens_g, (1,) * n, (1,) * n),
        _ScaledPoints(gens_h, tuple(_powers(y_inverse, n)), tuple(_powers(y, n))),  # H′ = y⁻ⁱ·Hᵢ
        q_base=pedersen.B,
        q_scale=w,
        a=l_vec,
        b=r_vec,
    )
    proof = _Proof(a_point, s_point, t1_point, t2_point, t_x, t_x_blinding, e_blinding, *ipp)
    return proof.to_bytes(), commitment


def _commit_bits(bits: Sequence[int], alpha: int, pedersen: PedersenGens) -> bytes:
    """A = α·B_blinding + Σ_{bit 1} Gᵢ − Σ_{bit 0} Hᵢ, as α·B_blinding + Σ_{bit 1}(Gᵢ + Hᵢ) − ΣHᵢ:
    one product and popcount + 2 additions."""
    g_plus_h, minus_h_sum = _bit_commitment_bases(len(bits))
    set_bits = [g_plus_h[i] for i, bit in enumerate(bits) if bit]
    return functools.reduce(sodium.add, [sodium.mul(alpha, pedersen.B_blinding), minus_h_sum, *set_bits])


@functools.cache
def _bit_commitment_bases(n: int) -> tuple[tuple[bytes, ...], bytes]:
    gens_g, gens_h = bulletproof_gens(n)
    return tuple(map(sodium.add, gens_g, gens_h)), sodium.sub(IDENTITY, functools.reduce(sodium.add, gens_h))


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


@dataclass(frozen=True, slots=True)
class _ScaledPoints:
    """Generators kept as scaleᵢ·pointᵢ. Folding lo·Xᵢ + hi·X_{k+i} then costs one product and
    one addition per element, the factor lo·scaleᵢ going into the new scale."""

    points: tuple[bytes, ...]
    scales: tuple[int, ...]
    inverse_scales: tuple[int, ...]

    def fold(self, lo: int, lo_inverse: int, hi: int) -> _ScaledPoints:
        k = len(self.points) // 2
        points, scales, inverse_scales = [], [], []
        for i in range(k):
            ratio = hi * self.scales[k + i] * self.inverse_scales[i] * lo_inverse % L
            points.append(sodium.add(self.points[i], sodium.mul(ratio, self.points[k + i])))
            scales.append(lo * self.scales[i] % L)
            inverse_scales.append(lo_inverse * self.inverse_scales[i] % L)
        return _ScaledPoints(tuple(points), tuple(scales), tuple(inverse_scales))


def _prove_inner_product(
    transcript: Transcript,
    g: _ScaledPoints,
    h: _ScaledPoints,
    *,
    q_base: bytes,
    q_scale: int,
    a: list[int],
    b: list[int],
) -> tuple[tuple[bytes, ...], tuple[bytes, ...], int, int]:
    """`InnerProductProof::create` with Q = q_scale·q_base: returns (L vector, R vector, a, b)."""
    n = len(a)
    transcript.append_message(b"dom-sep", b"ipp v1")
    transcript.append_u64(b"n", n)
    l_points: list[bytes] = []
    r_points: list[bytes] = []
    while n > 1:
        k = n // 2
        a_lo, a_hi, b_lo, b_hi = a[:k], a[k:], b[:k], b[k:]
        l_point = _sum_of_products(
            [
                *_hadamard(a_lo, g.scales[k:]),
                *_hadamard(b_hi, h.scales[:k]),
                _inner_product(a_lo, b_hi) * q_scale,
            ],
            [*g.points[k:], *h.points[:k], q_base],
        )
        r_point = _sum_of_products(
            [
                *_hadamard(a_hi, g.scales[:k]),
                *_hadamard(b_lo, h.scales[k:]),
                _inner_product(a_hi, b_lo) * q_scale,
            ],
            [*g.points[:k], *h.points[k:], q_base],
        )
        transcript.validate_and_append_point(b"L", l_point)
        transcript.validate_and_append_point(b"R", r_point)
        u = transcript.challenge_scalar(b"u")
        u_inverse = pow(u, -1, L)
        l_points.append(l_point)
        r_points.append(r_point)
        a = [(lo * u + hi * u_inverse) % L for lo, hi in zip(a_lo, a_hi, strict=True)]
        b = [(lo * u_inverse + hi * u) % L for lo, hi in zip(b_lo, b_hi, strict=True)]
        if k > 1:  # the last round's generators are never used
            g = g.fold(u_inverse, u, u)
            h = h.fold(u, u_inverse, u_inverse)
        n = k
    return tuple(l_points), tuple(r_points), a[0], b[0]


# --- verifier -------------------------------------------------------------------------------


def verify(proof: bytes, commitment: bytes, label: bytes, pedersen: PedersenGens, n: int = 32) -> bool:
    """True when `proof` shows that `commitment` opens to a value in [0, 2^n) under this
    transcript label and these generators. Never raises: anything malformed is False."""
    try:
        return _verify(bytes(proof), bytes(commitment), bytes(label), pedersen, n)
    except (ValueError, TypeError):
        return False


def _verify(proof: bytes, commitment: bytes, label: bytes, pedersen: PedersenGens, n: int) -> bool:
    if n not in SUPPORTED_BIT_SIZES or not sodium.is_valid_point(commitment):
        return False
    p = _Proof.from_bytes(proof, n)
    transcript = _start_transcript(label, n, commitment)
    y, z = _bit_challenges(transcript, p.A, p.S)
    x = _poly_challenge(transcript, p.T1, p.T2)
    w = _opening_challenge(transcript, p.t_x, p.t_x_blinding, p.e_blinding)
    u = _inner_product_challenges(transcript, n, p.L, p.R)
    c = _random_scalars(1)[0]  # batches the t(x) check with the inner-product check

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
    gens_g, gens_h = bulletproof_gens(n)
    total = _sum_of_products(
        [
            1,
            x,
            c * x,
            c * x * x,
            *u_sq,
            *u_inverse_sq,
            -p.e_blinding - c * p.t_x_blinding,
            w * (p.t_x - p.a * p.b) + c * (delta - p.t_x),
            *g_scalars,
            *h_scalars,
            c * zz,
        ],
        [p.A, p.S, p.T1, p.T2, *p.L, *p.R, pedersen.B_blinding, pedersen.B, *gens_g, *gens_h, commitment],
    )
    return total == IDENTITY


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


def _start_transcript(label: bytes, n: int, commitment: bytes) -> Transcript:
    transcript = Transcript(label)
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


def _sum_of_products(scalars: Sequence[int], points: Sequence[bytes]) -> bytes:
    """Σ sᵢ·Pᵢ as single libsodium products (a factor of 1 costs no product)."""
    products = (
        point if scalar == 1 else sodium.mul(scalar, point)
        for scalar, point in zip(scalars, points, strict=True)
    )
    return functools.reduce(sodium.add, products)


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


def _random_scalars(count: int) -> list[int]:
    """Uniform scalars (64 random bytes each, reduced mod ℓ, so the bias is negligible)."""
    data = secrets.token_bytes(64 * count)
    return [int.from_bytes(data[64 * i : 64 * (i + 1)], "little") % L for i in range(count)]
