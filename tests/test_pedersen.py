"""Quantity commitments with Project Origin's generators (docs/crypto.md §3)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamp.crypto import sodium
from stamp.crypto.generators import DALEK_DEFAULT_PEDERSEN, PROJECT_ORIGIN_PEDERSEN
from stamp.crypto.pedersen import (
    blinding_from_bytes,
    blinding_to_bytes,
    commit,
    opens,
    random_blinding,
)
from stamp.crypto.sodium import L

# Every test here runs on both group backends (libsodium and libdecaf).
pytestmark = pytest.mark.usefixtures("each_backend")

VECTORS = Path(__file__).resolve().parent / "vectors" / "project-origin.txt"
V = dict(re.findall(r"^(\S+)(?: \(\d+ bytes\))?\s+= (\S+)$", VECTORS.read_text(), re.M))
R = blinding_from_bytes(bytes.fromhex(V["R"]))
PI_DIGITS = b"3.141592653589793238462643383279502884197169"


def test_generators_are_derived_from_the_digits_of_pi() -> None:
    # The spec calls these "42 ASCII bytes"; the string it gives is 44 bytes, and those 44
    # are what reproduce its SHA-512 and generator vectors.
    assert len(PI_DIGITS) == 44
    d1 = hashlib.sha512(PI_DIGITS).digest()
    assert d1.hex() == V["sha512_of_pi_string"]
    assert sodium.from_hash(d1) == PROJECT_ORIGIN_PEDERSEN.B
    assert sodium.from_hash(hashlib.sha512(d1).digest()) == PROJECT_ORIGIN_PEDERSEN.B_blinding


def test_generators_equal_the_spec_vectors() -> None:
    assert PROJECT_ORIGIN_PEDERSEN.B.hex() == V["B"]
    assert PROJECT_ORIGIN_PEDERSEN.B_blinding.hex() == V["B_blinding"]


@pytest.mark.parametrize("quantity", [0, 1, 1000, 2**32 - 1])
def test_commitment_matches_the_vector(quantity: int) -> None:
    assert commit(quantity, R).hex() == V[f"C(q={quantity})"]
    assert commit(quantity, R, PROJECT_ORIGIN_PEDERSEN).hex() == V[f"C(q={quantity})"]


def test_commitment_with_the_crate_default_generators_differs() -> None:
    assert commit(1000, R, DALEK_DEFAULT_PEDERSEN).hex() != V["C(q=1000)"]


def test_commitment_opens_with_its_value_and_blinding_only() -> None:
    c = bytes.fromhex(V["C(q=1000)"])
    assert opens(c, 1000, R)
    assert not opens(c, 1001, R)
    assert not opens(c, 1000, (R + 1) % L)
    assert not opens(c, 1000, R, DALEK_DEFAULT_PEDERSEN)
    assert not opens(c, -1, R)


def test_blinding_bytes_are_32_little_endian() -> None:
    assert blinding_to_bytes(R).hex() == V["R"]
    assert blinding_to_bytes(1) == b"\x01" + bytes(31)
    assert blinding_from_bytes(blinding_to_bytes(L - 1)) == L - 1


@pytest.mark.parametrize(
    "data",
    [L.to_bytes(32, "little"), (2**256 - 1).to_bytes(32, "little"), bytes(31), bytes(33)],
    ids=["l", "max", "short", "long"],
)
def test_rejects_non_canonical_or_missized_blinding_bytes(data: bytes) -> None:
    with pytest.raises(ValueError):
        blinding_from_bytes(data)


@pytest.mark.parametrize("blinding", [-1, L])
def test_rejects_a_blinding_outside_the_scalar_field(blinding: int) -> None:
    with pytest.raises(ValueError):
        blinding_to_bytes(blinding)
    with pytest.raises(ValueError):
        commit(1, blinding)


@pytest.mark.parametrize("value", [-1, L])
def test_rejects_a_value_that_would_be_reduced(value: int) -> None:
    with pytest.raises(ValueError):
        commit(value, R)


def test_random_blindings_are_fresh_non_zero_scalars() -> None:
    values = {random_blinding() for _ in range(50)}
    assert len(values) == 50
    assert all(0 < v < L for v in values)
    assert max(values).bit_length() > 240  # uniform mod ℓ, not a small number


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, L - 1),
    st.integers(0, L - 1),
)
def test_commitments_add_up_and_open(q1: int, q2: int, r1: int, r2: int) -> None:
    c1, c2 = commit(q1, r1), commit(q2, r2)
    assert opens(c1, q1, r1)
    assert sodium.add(c1, c2) == commit(q1 + q2, (r1 + r2) % L)
    assert opens(sodium.add(c1, c2), q1 + q2, (r1 + r2) % L)
    if q1 != q2:
        assert not opens(c1, q2, r1)
