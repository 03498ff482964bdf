"""Merlin transcripts (STROBE-128 over Keccak-f[1600]) for the range proof's Fiat–Shamir
challenges (docs/crypto.md §4 and §4a step 2).

The range proof is only accepted by the registry if every challenge is derived exactly as
the `merlin` crate (v1.0, "Merlin v1.0" protocol label) does, so this module reproduces its
STROBE-128 subset byte for byte: `meta_ad`, `ad` and `prf` with the same framing. hashlib
exposes only the finished sponges, so the permutation is passed in: the native backend's C
Keccak-f[1600] (`backend.py`), or the pure-Python one written here, which is also the test
oracle for the C one.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from stamp.crypto import sodium

_MASK64 = (1 << 64) - 1
_LANES = struct.Struct("<25Q")
_ROUND_CONSTANTS = (
    0x0000000000000001, 0x0000000000008082, 0x800000000000808A, 0x8000000080008000,
    0x000000000000808B, 0x0000000080000001, 0x8000000080008081, 0x8000000000008009,
    0x000000000000008A, 0x0000000000000088, 0x0000000080008009, 0x000000008000000A,
    0x000000008000808B, 0x800000000000008B, 0x8000000000008089, 0x8000000000008003,
    0x8000000000008002, 0x8000000000000080, 0x000000000000800A, 0x800000008000000A,
    0x8000000080008081, 0x8000000000008080, 0x0000000080000001, 0x8000000080008008,
)  # fmt: skip


def keccak_f1600(lanes: Sequence[int]) -> list[int]:
    """Keccak-f[1600] on 25 little-endian 64-bit lanes (lane x + 5·y).

    Unrolled over lanes, as plain ints, because a proof or a verification runs about
    a dozen permutations and this is the hot loop of the transcript. It uses the "lane
    complementing" form of the Keccak team's implementation overview (§2.2): six lanes
    are kept inverted, which lets χ use AND/OR with one NOT per row instead of five.
    """
    M = _MASK64  # a local: faster than a global in the loop
    (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12,
     a13, a14, a15, a16, a17, a18, a19, a20, a21, a22, a23, a24) = lanes  # fmt: skip
    a1 ^= M
    a2 ^= M
    a8 ^= M
    a12 ^= M
    a17 ^= M
    a20 ^= M
    for rc in _ROUND_CONSTANTS:
        c0 = a0 ^ a5 ^ a10 ^ a15 ^ a20
        c1 = a1 ^ a6 ^ a11 ^ a16 ^ a21
        c2 = a2 ^ a7 ^ a12 ^ a17 ^ a22
        c3 = a3 ^ a8 ^ a13 ^ a18 ^ a23
        c4 = a4 ^ a9 ^ a14 ^ a19 ^ a24
        d0 = c4 ^ (((c1 << 1) | (c1 >> 63)) & M)
        d1 = c0 ^ (((c2 << 1) | (c2 >> 63)) & M)
        d2 = c1 ^ (((c3 << 1) | (c3 >> 63)) & M)
        d3 = c2 ^ (((c4 << 1) | (c4 >> 63)) & M)
        d4 = c3 ^ (((c0 << 1) | (c0 >> 63)) & M)
        b0 = a0 ^ d0
        t = a1 ^ d1
        b10 = ((t << 1) | (t >> 63)) & M
        t = a2 ^ d2
        b20 = ((t << 62) | (t >> 2)) & M
        t = a3 ^ d3
        b5 = ((t << 28) | (t >> 36)) & M
        t = a4 ^ d4
        b15 = ((t << 27) | (t >> 37)) & M
        t = a5 ^ d0
        b16 = ((t << 36) | (t >> 28)) & M
        t = a6 ^ d1
        b1 = ((t << 44) | (t >> 20)) & M
        t = a7 ^ d2
        b11 = ((t << 6) | (t >> 58)) & M
        t = a8 ^ d3
        b21 = ((t << 55) | (t >> 9)) & M
        t = a9 ^ d4
        b6 = ((t << 20) | (t >> 44)) & M
        t = a10 ^ d0
        b7 = ((t << 3) | (t >> 61)) & M
        t = a11 ^ d1
        b17 = ((t << 10) | (t >> 54)) & M
        t = a12 ^ d2
        b2 = ((t << 43) | (t >> 21)) & M
        t = a13 ^ d3
        b12 = ((t << 25) | (t >> 39)) & M
        t = a14 ^ d4
        b22 = ((t << 39) | (t >> 25)) & M
        t = a15 ^ d0
        b23 = ((t << 41) | (t >> 23)) & M
        t = a16 ^ d1
        b8 = ((t << 45) | (t >> 19)) & M
        t = a17 ^ d2
        b18 = ((t << 15) | (t >> 49)) & M
        t = a18 ^ d3
        b3 = ((t << 21) | (t >> 43)) & M
        t = a19 ^ d4
        b13 = ((t << 8) | (t >> 56)) & M
        t = a20 ^ d0
        b14 = ((t << 18) | (t >> 46)) & M
        t = a21 ^ d1
        b24 = ((t << 2) | (t >> 62)) & M
        t = a22 ^ d2
        b9 = ((t << 61) | (t >> 3)) & M
        t = a23 ^ d3
        b19 = ((t << 56) | (t >> 8)) & M
        t = a24 ^ d4
        b4 = ((t << 14) | (t >> 50)) & M
        a0 = b0 ^ (b1 | b2)
        a1 = b1 ^ ((b2 ^ M) | b3)
        a2 = b2 ^ (b3 & b4)
        a3 = b3 ^ (b4 | b0)
        a4 = b4 ^ (b0 & b1)
        a5 = b5 ^ (b6 | b7)
        a6 = b6 ^ (b7 & b8)
        a7 = b7 ^ (b8 | (b9 ^ M))
        a8 = b8 ^ (b9 | b5)
        a9 = b9 ^ (b5 & b6)
        a10 = b10 ^ (b11 | b12)
        a11 = b11 ^ (b12 & b13)
        a12 = b12 ^ ((b13 ^ M) & b14)
        a13 = (b13 ^ M) ^ (b14 | b10)
        a14 = b14 ^ (b10 & b11)
        a15 = b15 ^ (b16 & b17)
        a16 = b16 ^ (b17 | b18)
        a17 = b17 ^ ((b18 ^ M) | b19)
        a18 = (b18 ^ M) ^ (b19 & b15)
        a19 = b19 ^ (b15 | b16)
        a20 = b20 ^ ((b21 ^ M) & b22)
        a21 = (b21 ^ M) ^ (b22 | b23)
        a22 = b22 ^ (b23 & b24)
        a23 = b23 ^ (b24 | b20)
        a24 = b24 ^ (b20 & b21)
        a0 ^= rc
    return [
        a0, a1 ^ M, a2 ^ M, a3, a4, a5, a6, a7, a8 ^ M, a9, a10, a11, a12 ^ M,
        a13, a14, a15, a16, a17 ^ M, a18, a19, a20 ^ M, a21, a22, a23, a24,
    ]  # fmt: skip


Permutation = Callable[[bytearray], None]
"""Keccak-f[1600] in place on a 200-byte state."""


def python_keccak_f1600(state: bytearray) -> None:
    """`keccak_f1600` in place on the 200-byte state, as the transcript wants it."""
    _LANES.pack_into(state, 0, *keccak_f1600(_LANES.unpack(state)))


# STROBE-128 as Merlin uses it (strobe.rs of the merlin crate).
_STROBE_R = 166
_FLAG_I = 1
_FLAG_A = 1 << 1
_FLAG_C = 1 << 2
_FLAG_T = 1 << 3
_FLAG_M = 1 << 4
_FLAG_K = 1 << 5


class Strobe128:
    """The subset of STROBE-128 that Merlin needs, with the same byte-level behaviour."""

    __slots__ = ("_cur_flags", "_permute", "_pos", "_pos_begin", "_state")

    def __init__(self, protocol_label: bytes, permute: Permutation = python_keccak_f1600) -> None:
        state = bytearray(200)
        state[0:6] = bytes([1, _STROBE_R + 2, 1, 0, 1, 96])
        state[6:18] = b"STROBEv1.0.2"
        permute(state)
        self._state = state
        self._permute = permute
        self._pos = 0
        self._pos_begin = 0
        self._cur_flags = 0
        self.meta_ad(protocol_label, more=False)

    def copy(self, permute: Permutation | None = None) -> Strobe128:
        """An independent copy, optionally running on another (equivalent) permutation."""
        other = Strobe128.__new__(Strobe128)
        other._state = bytearray(self._state)
        other._permute = self._permute if permute is None else permute
        other._pos = self._pos
        other._pos_begin = self._pos_begin
        other._cur_flags = self._cur_flags
        return other

    def meta_ad(self, data: bytes, *, more: bool) -> None:
        self._begin_op(_FLAG_M | _FLAG_A, more)
        self._absorb(data)

    def ad(self, data: bytes, *, more: bool) -> None:
        self._begin_op(_FLAG_A, more)
        self._absorb(data)

    def prf(self, length: int, *, more: bool) -> bytes:
        self._begin_op(_FLAG_I | _FLAG_A | _FLAG_C, more)
        return self._squeeze(length)

    def _run_f(self) -> None:
        state = self._state
        state[self._pos] ^= self._pos_begin
        state[self._pos + 1] ^= 0x04
        state[_STROBE_R + 1] ^= 0x80
        self._permute(state)
        self._pos = 0
        self._pos_begin = 0

    def _absorb(self, data: bytes) -> None:
        state = self._state
        offset = 0
        while offset < len(data):
            take = min(_STROBE_R - self._pos, len(data) - offset)
            start, end = self._pos, self._pos + take
            mixed = int.from_bytes(state[start:end], "little") ^ int.from_bytes(
                data[offset : offset + take], "little"
            )
            state[start:end] = mixed.to_bytes(take, "little")
            offset += take
            self._pos = end
            if end == _STROBE_R:
                self._run_f()

    def _squeeze(self, length: int) -> bytes:
        state = self._state
        out = bytearray()
        while len(out) < length:
            take = min(_STROBE_R - self._pos, length - len(out))
            start, end = self._pos, self._pos + take
            out += state[start:end]
            state[start:end] = bytes(take)
            self._pos = end
            if end == _STROBE_R:
                self._run_f()
        return bytes(out)

    def _begin_op(self, flags: int, more: bool) -> None:
        if more:
            if flags != self._cur_flags:
                raise ValueError("STROBE: continued an operation with other flags")
            return
        if flags & _FLAG_T:
            raise ValueError("STROBE: transport operations are not used by Merlin")
        old_begin = self._pos_begin
        self._pos_begin = self._pos + 1
        self._cur_flags = flags
        self._absorb(bytes([old_begin, flags]))
        if flags & (_FLAG_C | _FLAG_K) and self._pos != 0:
            self._run_f()


_MERLIN_PROTOCOL_LABEL = b"Merlin v1.0"
_MERLIN_START = Strobe128(_MERLIN_PROTOCOL_LABEL)
"""Every transcript starts from this state; copying it saves a permutation per proof."""


class TranscriptError(ValueError):
    """A proof put into the transcript something the protocol forbids (an identity point)."""


class Transcript:
    """A Merlin transcript (merlin crate v1.0), with the bulletproofs crate's helpers for
    points, scalars and challenge scalars."""

    __slots__ = ("_strobe",)

    def __init__(self, label: bytes, permute: Permutation = python_keccak_f1600) -> None:
        self._strobe = _MERLIN_START.copy(permute)
        self.append_message(b"dom-sep", label)

    def append_message(self, label: bytes, message: bytes) -> None:
        self._strobe.meta_ad(label, more=False)
        self._strobe.meta_ad(_u32(len(message)), more=True)
        self._strobe.ad(message, more=False)

    def append_u64(self, label: bytes, value: int) -> None:
        self.append_message(label, value.to_bytes(8, "little"))

    def challenge_bytes(self, label: bytes, length: int) -> bytes:
        self._strobe.meta_ad(label, more=False)
        self._strobe.meta_ad(_u32(length), more=True)
        return self._strobe.prf(length, more=False)

    def append_point(self, label: bytes, point: bytes) -> None:
        self.append_message(label, point)

    def validate_and_append_point(self, label: bytes, point: bytes) -> None:
        """Append a proof point, refusing the identity as the crate does (a prover
        could otherwise cancel terms of the verification equation)."""
        if point == sodium.IDENTITY:
            raise TranscriptError(f"proof point {label.decode()} is the identity")
        self.append_message(label, point)

    def append_scalar(self, label: bytes, scalar: int) -> None:
        self.append_message(label, sodium.scalar_bytes(scalar))

    def challenge_scalar(self, label: bytes) -> int:
        """64 challenge bytes read little-endian and reduced mod ℓ (dalek's
        `Scalar::from_bytes_mod_order_wide`)."""
        return int.from_bytes(self.challenge_bytes(label, 64), "little") % sodium.L


def _u32(length: int) -> bytes:
    return length.to_bytes(4, "little")
