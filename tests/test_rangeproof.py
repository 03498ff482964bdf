"""Range proof, generators and commitments against the spec's vectors (docs/crypto.md §3, §4, §4a)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stamp.crypto import sodium
from stamp.crypto.generators import (
    DALEK_DEFAULT_PEDERSEN,
    PROJECT_ORIGIN_PEDERSEN,
    PedersenGens,
    bulletproof_gens,
)
from stamp.crypto.rangeproof import PROOF_SIZE, RangeProofError, proof_size, prove, verify

# Every test here runs on both group backends (libsodium and libdecaf).
pytestmark = pytest.mark.usefixtures("each_backend")

# Copies of shared/spec/vectors, kept in the repo so the suite is self-contained.
VECTORS = Path(__file__).resolve().parent / "vectors"
DALEK_LABEL = b"Deserialize-And-Verify Test"
CERTIFICATE_ID = "0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69"


@dataclass(frozen=True)
class DalekProof:
    n: int
    commitment: bytes
    proof: bytes


def _dalek_single_value_proofs() -> list[DalekProof]:
    proofs = []
    for line in (VECTORS / "rangeproof-dalek.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[0].isdigit() and fields[1] == "1":
            proofs.append(DalekProof(int(fields[0]), bytes.fromhex(fields[2]), bytes.fromhex(fields[3])))
    return proofs


def _project_origin_values() -> dict[str, str]:
    text = (VECTORS / "project-origin.txt").read_text()
    return {m[1]: m[2] for m in re.finditer(r"^(\w.*?)\s+=\s+(\S+)$", text, re.MULTILINE)}


DALEK = _dalek_single_value_proofs()
DALEK_32 = next(p for p in DALEK if p.n == 32)
PO = _project_origin_values()
PO_PROOF = bytes.fromhex(PO["proof (608 bytes)"])
PO_R = sodium.scalar_int(bytes.fromhex(PO["R"]))
PO_COMMITMENT = bytes.fromhex(PO["C(q=1000)"])


def _with_byte_changed(data: bytes, index: int, xor: int) -> bytes:
    return data[:index] + bytes([data[index] ^ xor]) + data[index + 1 :]


def _with_chunk(data: bytes, chunk: int, replacement: bytes) -> bytes:
    return data[: 32 * chunk] + replacement + data[32 * (chunk + 1) :]


def _point_chunks(n: int) -> list[int]:
    """Chunk indices of A, S, T1, T2 and every L, R in a proof for bit size n."""
    return [0, 1, 2, 3, *range(7, 7 + 2 * (n.bit_length() - 1))]


def _scalar_chunks(n: int) -> list[int]:
    """Chunk indices of t_x, t_x_blinding, e_blinding, a and b."""
    last = proof_size(n) // 32
    return [4, 5, 6, last - 2, last - 1]


# --- generators and commitments (§3, §4a step 1) ---------------------------------------------


def test_project_origin_generators_match_the_spec_vectors() -> None:
    pi = b"3.141592653589793238462643383279502884197169"
    assert hashlib.sha512(pi).hexdigest() == PO["sha512_of_pi_string"]
    assert PROJECT_ORIGIN_PEDERSEN.B.hex() == PO["B"]
    assert PROJECT_ORIGIN_PEDERSEN.B_blinding.hex() == PO["B_blinding"]


def test_crate_default_generators_are_the_basepoint_and_its_sha3_hash() -> None:
    assert (
        DALEK_DEFAULT_PEDERSEN.B.hex() == "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76"
    )
    assert DALEK_DEFAULT_PEDERSEN.B_blinding.hex().startswith("8c9240b4")
    assert DALEK_DEFAULT_PEDERSEN.B_blinding.hex().endswith("1134")


@pytest.mark.parametrize("quantity", [0, 1, 1000, 4294967295])
def test_commitment_matches_worked_example(quantity: int) -> None:
    commitment = PROJECT_ORIGIN_PEDERSEN.commit(quantity, PO_R)
    assert commitment.hex() == PO[f"C(q={quantity})"]
    expected = sodium.add(
        sodium.mul(quantity, PROJECT_ORIGIN_PEDERSEN.B), sodium.mul(PO_R, PROJECT_ORIGIN_PEDERSEN.B_blinding)
    )
    assert commitment == expected


def test_vector_generators_are_a_prefix_of_larger_capacities() -> None:
    g8, h8 = bulletproof_gens(8)
    g64, h64 = bulletproof_gens(64)
    assert (g8, h8) == (g64[:8], h64[:8])
    assert len(set(g64 + h64)) == 128


def test_proof_size_is_608_bytes_for_32_bits_and_fits_every_vector() -> None:
    assert PROOF_SIZE == proof_size(32) == 608
    assert {p.n: len(p.proof) for p in DALEK} == {n: proof_size(n) for n in (8, 16, 32, 64)}


# --- the crate's own proofs (crate-default generators) ---------------------------------------


@pytest.mark.parametrize("vector", DALEK, ids=lambda v: f"n={v.n}")
def test_crate_proof_verifies(vector: DalekProof) -> None:
    assert verify(vector.proof, vector.commitment, DALEK_LABEL, DALEK_DEFAULT_PEDERSEN, vector.n)


def test_crate_proof_with_any_byte_changed_fails() -> None:
    for index in range(len(DALEK_32.proof)):
        tampered = _with_byte_changed(DALEK_32.proof, index, 1 << (index % 8))
        assert not verify(tampered, DALEK_32.commitment, DALEK_LABEL, DALEK_DEFAULT_PEDERSEN, 32), index


@pytest.mark.parametrize("vector", [p for p in DALEK if p.n != 32], ids=lambda v: f"n={v.n}")
def test_crate_proof_with_a_byte_changed_in_any_section_fails(vector: DalekProof) -> None:
    for chunk in range(len(vector.proof) // 32):
        for offset in (0, 13, 30):
            tampered = _with_byte_changed(vector.proof, 32 * chunk + offset, 0x04)
            assert not verify(tampered, vector.commitment, DALEK_LABEL, DALEK_DEFAULT_PEDERSEN, vector.n)


@pytest.mark.parametrize("vector", DALEK, ids=lambda v: f"n={v.n}")
def test_crate_proof_with_another_valid_point_in_any_point_section_fails(vector: DalekProof) -> None:
    for chunk in _point_chunks(vector.n):
        other = sodium.add(vector.proof[32 * chunk : 32 * (chunk + 1)], DALEK_DEFAULT_PEDERSEN.B)
        tampered = _with_chunk(vector.proof, chunk, other)
        assert not verify(tampered, vector.commitment, DALEK_LABEL, DALEK_DEFAULT_PEDERSEN, vector.n), chunk


@pytest.mark.parametrize("vector", DALEK, ids=lambda v: f"n={v.n}")
def test_crate_proof_with_any_scalar_changed_or_not_canonical_fails(vector: DalekProof) -> None:
    for chunk in _scalar_chunks(vector.n):
        scalar = sodium.scalar_int(vector.proof[32 * chunk : 32 * (chunk + 1)])
        for replacement in (sodium.scalar_bytes(scalar + 1), (scalar + sodium.L).to_bytes(32, "little")):
            tampered = _with_chunk(vector.proof, chunk, replacement)
            assert not verify(tampered, vector.commitment, DALEK_LABEL, DALEK_DEFAULT_PEDERSEN, vector.n)


def test_crate_proof_with_identity_in_a_point_section_fails() -> None:
    for chunk in _point_chunks(32):
        tampered = _with_chunk(DALEK_32.proof, chunk, sodium.IDENTITY)
        assert not verify(tampered, DALEK_32.commitment, DALEK_LABEL, DALEK_DEFAULT_PEDERSEN, 32), chunk


def test_crate_proof_with_swapped_l_and_r_fails() -> None:
    l0, r0 = DALEK_32.proof[7 * 32 : 8 * 32], DALEK_32.proof[8 * 32 : 9 * 32]
    swapped = _with_chunk(_with_chunk(DALEK_32.proof, 7, r0), 8, l0)
    assert not verify(swapped, DALEK_32.commitment, DALEK_LABEL, DALEK_DEFAULT_PEDERSEN, 32)


@pytest.mark.parametrize("vector", DALEK, ids=lambda v: f"n={v.n}")
def test_crate_proof_fails_with_another_label_bit_size_commitment_or_generators(vector: DalekProof) -> None:
    proof, commitment, n = vector.proof, vector.commitment, vector.n
    other_commitment = sodium.add(commitment, DALEK_DEFAULT_PEDERSEN.B)
    assert not verify(proof, commitment, b"Deserialize-And-Verify test", DALEK_DEFAULT_PEDERSEN, n)
    assert not verify(proof, commitment, DALEK_LABEL + b" ", DALEK_DEFAULT_PEDERSEN, n)
    for other_n in (8, 16, 32, 64):
        if other_n != n:
            assert not verify(proof, commitment, DALEK_LABEL, DALEK_DEFAULT_PEDERSEN, other_n)
    assert not verify(proof, other_commitment, DALEK_LABEL, DALEK_DEFAULT_PEDERSEN, n)
    assert not verify(proof, sodium.IDENTITY, DALEK_LABEL, DALEK_DEFAULT_PEDERSEN, n)
    assert not verify(proof, commitment, DALEK_LABEL, PROJECT_ORIGIN_PEDERSEN, n)
    swapped_gens = PedersenGens(B=DALEK_DEFAULT_PEDERSEN.B_blinding, B_blinding=DALEK_DEFAULT_PEDERSEN.B)
    assert not verify(proof, commitment, DALEK_LABEL, swapped_gens, n)


# --- the Project Origin worked example -------------------------------------------------------


def test_worked_example_proof_verifies_under_project_origin_generators() -> None:
    assert verify(PO_PROOF, PO_COMMITMENT, CERTIFICATE_ID.encode(), PROJECT_ORIGIN_PEDERSEN)


def test_worked_example_proof_fails_with_crate_defaults_or_upper_case_label() -> None:
    assert not verify(PO_PROOF, PO_COMMITMENT, CERTIFICATE_ID.encode(), DALEK_DEFAULT_PEDERSEN)
    assert not verify(PO_PROOF, PO_COMMITMENT, CERTIFICATE_ID.upper().encode(), PROJECT_ORIGIN_PEDERSEN)
    other_quantity = PROJECT_ORIGIN_PEDERSEN.commit(1001, PO_R)
    assert not verify(PO_PROOF, other_quantity, CERTIFICATE_ID.encode(), PROJECT_ORIGIN_PEDERSEN)


# --- Stamp's prover ---------------------------------------------------------------------------


def _blinding() -> int:
    return sodium.random_scalar()


def test_own_proof_is_608_bytes_commits_to_the_quantity_and_verifies() -> None:
    label = CERTIFICATE_ID.encode()
    proof, commitment = prove(1000, PO_R, label, PROJECT_ORIGIN_PEDERSEN)
    assert len(proof) == 608
    assert commitment == PO_COMMITMENT
    assert verify(proof, commitment, label, PROJECT_ORIGIN_PEDERSEN)


def test_own_proof_fails_when_changed_or_checked_against_anything_else() -> None:
    label = CERTIFICATE_ID.encode()
    blinding = _blinding()
    proof, commitment = prove(123456, blinding, label, PROJECT_ORIGIN_PEDERSEN)
    for index in (0, 40, 100, 127, 128 + 5, 160 + 9, 224, 300, 447, 575, 607):
        tampered = _with_byte_changed(proof, index, 0x02)
        assert not verify(tampered, commitment, label, PROJECT_ORIGIN_PEDERSEN), index
    assert not verify(proof, commitment, CERTIFICATE_ID.upper().encode(), PROJECT_ORIGIN_PEDERSEN)
    assert not verify(proof, commitment, b"", PROJECT_ORIGIN_PEDERSEN)
    wrong_commitment = PROJECT_ORIGIN_PEDERSEN.commit(123457, blinding)
    assert not verify(proof, wrong_commitment, label, PROJECT_ORIGIN_PEDERSEN)
    assert not verify(proof, commitment, label, DALEK_DEFAULT_PEDERSEN)
    for n in (8, 16, 64):
        assert not verify(proof, commitment, label, PROJECT_ORIGIN_PEDERSEN, n)


@settings(max_examples=15, deadline=None)
@given(quantity=st.integers(0, 2**32 - 1), label=st.binary(max_size=40))
@example(quantity=0, label=CERTIFICATE_ID.encode())
@example(quantity=1, label=CERTIFICATE_ID.encode())
@example(quantity=2**32 - 1, label=CERTIFICATE_ID.encode())
def test_every_32_bit_quantity_can_be_proven(quantity: int, label: bytes) -> None:
    blinding = _blinding()
    proof, commitment = prove(quantity, blinding, label, PROJECT_ORIGIN_PEDERSEN)
    assert commitment == PROJECT_ORIGIN_PEDERSEN.commit(quantity, blinding)
    assert verify(proof, commitment, label, PROJECT_ORIGIN_PEDERSEN)


@pytest.mark.parametrize("quantity", [-1, 2**32, 2**33 + 5, 2**64])
def test_quantity_outside_32_bits_cannot_be_proven(quantity: int) -> None:
    with pytest.raises(RangeProofError):
        prove(quantity, _blinding(), b"label", PROJECT_ORIGIN_PEDERSEN)


@pytest.mark.parametrize("n", [0, 1, 7, 12, 128])
def test_unsupported_bit_size_cannot_be_proven_or_verified(n: int) -> None:
    with pytest.raises(RangeProofError):
        prove(1, _blinding(), b"label", PROJECT_ORIGIN_PEDERSEN, n)
    assert not verify(PO_PROOF, PO_COMMITMENT, CERTIFICATE_ID.encode(), PROJECT_ORIGIN_PEDERSEN, n)


@pytest.mark.parametrize("n", [8, 16, 64])
def test_other_bit_sizes_prove_their_largest_value(n: int) -> None:
    proof, commitment = prove(2**n - 1, _blinding(), b"label", PROJECT_ORIGIN_PEDERSEN, n)
    assert len(proof) == proof_size(n)
    assert verify(proof, commitment, b"label", PROJECT_ORIGIN_PEDERSEN, n)
    assert not verify(proof, commitment, b"label", PROJECT_ORIGIN_PEDERSEN, 32)
    with pytest.raises(RangeProofError):
        prove(2**n, _blinding(), b"label", PROJECT_ORIGIN_PEDERSEN, n)


def test_commitment_to_zero_with_zero_blinding_is_the_identity_and_still_proves() -> None:
    proof, commitment = prove(0, 0, b"label", PROJECT_ORIGIN_PEDERSEN)
    assert commitment == sodium.IDENTITY
    assert verify(proof, commitment, b"label", PROJECT_ORIGIN_PEDERSEN)


def test_proofs_are_randomized() -> None:
    blinding = _blinding()
    first, commitment = prove(7, blinding, b"label", PROJECT_ORIGIN_PEDERSEN)
    second, same_commitment = prove(7, blinding, b"label", PROJECT_ORIGIN_PEDERSEN)
    assert commitment == same_commitment
    assert first != second
    assert verify(second, commitment, b"label", PROJECT_ORIGIN_PEDERSEN)


# --- malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "proof",
    [
        b"",
        PO_PROOF[:-1],
        PO_PROOF + b"\x00",
        PO_PROOF[:-32],
        PO_PROOF + bytes(32),
        bytes(608),
        b"\xff" * 608,
        _with_chunk(PO_PROOF, 0, b"\xff" * 32),
        _with_chunk(PO_PROOF, 4, b"\xff" * 32),
    ],
    ids=[
        "empty",
        "one byte short",
        "one byte long",
        "a chunk short",
        "a chunk long",
        "zeros",
        "ones",
        "invalid point",
        "scalar above 2^255",
    ],
)
def test_malformed_proof_is_rejected_without_raising(proof: bytes) -> None:
    assert not verify(proof, PO_COMMITMENT, CERTIFICATE_ID.encode(), PROJECT_ORIGIN_PEDERSEN)


@pytest.mark.parametrize(
    "commitment", [b"", PO_COMMITMENT[:31], PO_COMMITMENT + b"\x00", b"\xff" * 32, b"\x01" + bytes(31)]
)
def test_malformed_commitment_is_rejected_without_raising(commitment: bytes) -> None:
    assert not verify(PO_PROOF, commitment, CERTIFICATE_ID.encode(), PROJECT_ORIGIN_PEDERSEN)


def test_wrongly_typed_arguments_are_rejected_without_raising() -> None:
    label = CERTIFICATE_ID
    assert not verify(PO_PROOF, PO_COMMITMENT, label, PROJECT_ORIGIN_PEDERSEN)  # type: ignore[arg-type]
    assert not verify(None, PO_COMMITMENT, label.encode(), PROJECT_ORIGIN_PEDERSEN)  # type: ignore[arg-type]


def test_range_proof_error_is_a_value_error_and_keeps_the_value_secret() -> None:
    with pytest.raises(ValueError, match=r"outside \[0, 2\^32\)") as raised:
        prove(2**32 + 12345, _blinding(), b"label", PROJECT_ORIGIN_PEDERSEN)
    assert "12345" not in str(raised.value)
