"""Merlin transcripts and the Keccak-f[1600] / STROBE-128 underneath (docs/crypto.md §4, §4a step 2)."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamp.crypto import sodium
from stamp.crypto.merlin import Transcript, TranscriptError, keccak_f1600

_LANES = struct.Struct("<25Q")


def _sponge(rate: int, domain: int, message: bytes, out_len: int) -> bytes:
    """SHA-3 / SHAKE sponge over our permutation (FIPS 202), to compare with hashlib."""
    padded = bytearray(message) + bytes([domain]) + bytes(-(len(message) + 1) % rate)
    padded[-1] |= 0x80
    lanes = [0] * 25
    for offset in range(0, len(padded), rate):
        block = _LANES.unpack(bytes(padded[offset : offset + rate]) + bytes(200 - rate))
        lanes = keccak_f1600([a ^ b for a, b in zip(lanes, block, strict=True)])
    out = b""
    while True:
        out += _LANES.pack(*lanes)[:rate]
        if len(out) >= out_len:
            return out[:out_len]
        lanes = keccak_f1600(lanes)


@pytest.mark.parametrize("length", [0, 3, 135, 136, 137, 300, 1000])
def test_keccak_permutation_reproduces_hashlib_sha3_256(length: int) -> None:
    message = bytes(range(256)) * 4
    message = message[:length]
    assert _sponge(136, 0x06, message, 32) == hashlib.sha3_256(message).digest()


def test_keccak_permutation_reproduces_hashlib_shake128_long_output() -> None:
    message = b"GeneratorsChain" * 20
    assert _sponge(168, 0x1F, message, 700) == hashlib.shake_128(message).digest(700)


def test_challenge_matches_the_published_merlin_vector() -> None:
    transcript = Transcript(b"test protocol")
    transcript.append_message(b"some label", b"some data")
    assert transcript.challenge_bytes(b"challenge", 32) == bytes.fromhex(
        "d5a21972d0d5fe320c0d263fac7fffb8145aa640af6e9bca177c03c7efcf0615"
    )


def test_challenge_depends_on_transcript_label_message_and_challenge_label() -> None:
    def challenge(label: bytes, message: bytes, challenge_label: bytes) -> bytes:
        transcript = Transcript(label)
        transcript.append_message(b"some label", message)
        return transcript.challenge_bytes(challenge_label, 32)

    reference = challenge(b"test protocol", b"some data", b"challenge")
    assert challenge(b"Test protocol", b"some data", b"challenge") != reference
    assert challenge(b"test protocol", b"some datb", b"challenge") != reference
    assert challenge(b"test protocol", b"some data", b"challengE") != reference


def test_u64_is_appended_as_eight_little_endian_bytes() -> None:
    as_u64, as_message = Transcript(b"t"), Transcript(b"t")
    as_u64.append_u64(b"n", 32)
    as_message.append_message(b"n", (32).to_bytes(8, "little"))
    assert as_u64.challenge_bytes(b"c", 16) == as_message.challenge_bytes(b"c", 16)


def test_challenge_scalar_is_64_challenge_bytes_reduced_mod_l() -> None:
    first, second = Transcript(b"t"), Transcript(b"t")
    wide = int.from_bytes(second.challenge_bytes(b"y", 64), "little")
    assert first.challenge_scalar(b"y") == wide % sodium.L


def test_points_and_scalars_are_appended_as_their_32_byte_encodings() -> None:
    point = sodium.from_hash(bytes(range(64)))
    helpers, raw = Transcript(b"t"), Transcript(b"t")
    helpers.append_point(b"V", point)
    helpers.validate_and_append_point(b"A", point)
    helpers.append_scalar(b"t_x", 5)
    raw.append_message(b"V", point)
    raw.append_message(b"A", point)
    raw.append_message(b"t_x", (5).to_bytes(32, "little"))
    assert helpers.challenge_bytes(b"c", 32) == raw.challenge_bytes(b"c", 32)


def test_identity_point_is_refused_where_the_protocol_forbids_it() -> None:
    transcript = Transcript(b"t")
    transcript.append_point(b"V", sodium.IDENTITY)  # allowed for V
    with pytest.raises(TranscriptError):
        transcript.validate_and_append_point(b"A", sodium.IDENTITY)


# A byte-at-a-time STROBE, written straight from the specification's loops, checks the
# chunked absorb/squeeze of merlin.py across the 166-byte rate boundary.
class _ByteStrobe:
    R = 166

    def __init__(self) -> None:
        state = bytearray(200)
        state[0:6] = bytes([1, self.R + 2, 1, 0, 1, 96])
        state[6:18] = b"STROBEv1.0.2"
        self.state = bytearray(_LANES.pack(*keccak_f1600(_LANES.unpack(state))))
        self.pos = self.pos_begin = self.cur_flags = 0
        self.op(0x10 | 0x02, b"Merlin v1.0", more=False)

    def run_f(self) -> None:
        self.state[self.pos] ^= self.pos_begin
        self.state[self.pos + 1] ^= 0x04
        self.state[self.R + 1] ^= 0x80
        self.state = bytearray(_LANES.pack(*keccak_f1600(_LANES.unpack(self.state))))
        self.pos = self.pos_begin = 0

    def absorb_byte(self, byte: int) -> None:
        self.state[self.pos] ^= byte
        self.pos += 1
        if self.pos == self.R:
            self.run_f()

    def op(self, flags: int, data: bytes, more: bool) -> bytes:
        if not more:
            old_begin, self.pos_begin, self.cur_flags = self.pos_begin, self.pos + 1, flags
            self.absorb_byte(old_begin)
            self.absorb_byte(flags)
            if flags & 0x04 and self.pos != 0:
                self.run_f()
        out = bytearray()
        for byte in data:
            if flags & 0x01:  # prf: squeeze
                out.append(self.state[self.pos])
                self.state[self.pos] = 0
                self.pos += 1
                if self.pos == self.R:
                    self.run_f()
            else:
                self.absorb_byte(byte)
        return bytes(out)

    def append_message(self, label: bytes, message: bytes) -> None:
        self.op(0x12, label, more=False)
        self.op(0x12, len(message).to_bytes(4, "little"), more=True)
        self.op(0x02, message, more=False)

    def challenge_bytes(self, label: bytes, length: int) -> bytes:
        self.op(0x12, label, more=False)
        self.op(0x12, length.to_bytes(4, "little"), more=True)
        return self.op(0x07, bytes(length), more=False)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.binary(max_size=12), st.binary(max_size=600)),  # append a message
            st.tuples(st.binary(max_size=12), st.integers(1, 400)),  # ask for a challenge
        ),
        max_size=8,
    )
)
def test_long_messages_and_challenges_match_a_byte_at_a_time_strobe(
    operations: list[tuple[bytes, bytes | int]],
) -> None:
    transcript = Transcript(b"test protocol")
    reference = _ByteStrobe()
    reference.append_message(b"dom-sep", b"test protocol")
    for label, argument in operations:
        if isinstance(argument, bytes):
            transcript.append_message(label, argument)
            reference.append_message(label, argument)
        else:
            assert transcript.challenge_bytes(label, argument) == reference.challenge_bytes(label, argument)
    assert transcript.challenge_bytes(b"final", 200) == reference.challenge_bytes(b"final", 200)
