"""The two group backends against each other, the native entry points against bad input, and
canonical point decoding (docs/crypto.md §4a) everywhere a point is read.

The native backend's tests skip only where stamp.crypto._decaf truly cannot load, and fail
instead under STAMP_REQUIRE_DECAF=1 or CI=true (tests/conftest.py `native_backend`)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import multiprocessing
import os
import random
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protos.project_origin.electricity.v1 import electricity_pb2
from protos.project_origin.registry.v1 import registry_pb2
from stamp.app import init_crypto_worker, warm_crypto_worker
from stamp.crypto import backend, merlin, pedersen, rangeproof, sodium
from stamp.crypto.bundle import build_issue_bundle
from stamp.crypto.generators import DALEK_DEFAULT_PEDERSEN, PROJECT_ORIGIN_PEDERSEN, bulletproof_gens
from stamp.crypto.issuer_keys import IssuerKey
from stamp.crypto.sodium import IDENTITY, L
from stamp.devstack import registry_rules, wallet_checks
from tests.conftest import native_backend
from tests.test_transaction_vector import CERTIFICATE_ID, PROOF, TX, V, vector_request

LABEL = CERTIFICATE_ID.encode()
COMMITMENT = bytes.fromhex(V["C(q=1000)"])
SCALARS = st.one_of(st.integers(0, L - 1), st.sampled_from([0, 1, 2, L - 1, L - 2, 2**252]))
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def decaf() -> backend.DecafGroup:
    return native_backend()


def _point(seed: int) -> bytes:
    return sodium.from_hash(hashlib.sha512(seed.to_bytes(8, "little")).digest())


def _naive_sum(scalars: list[int], points: list[bytes]) -> bytes:
    return functools.reduce(
        sodium.add, [sodium.mul(s, p) for s, p in zip(scalars, points, strict=True)], IDENTITY
    )


def _flip_bit_255(data: bytes, chunk: int = 0) -> bytes:
    index = 32 * chunk + 31
    return data[:index] + bytes([data[index] ^ 0x80]) + data[index + 1 :]


# --- the two backends agree ------------------------------------------------------------------


def test_native_one_way_map_gives_the_spec_generators(decaf: backend.DecafGroup) -> None:
    digest = hashlib.sha512(b"3.141592653589793238462643383279502884197169").digest()
    assert decaf.encode(decaf.from_hash(digest)).hex() == V["B"]
    assert decaf.encode(decaf.from_hash(hashlib.sha512(digest).digest())).hex() == V["B_blinding"]
    gens_g, _ = bulletproof_gens(64)
    stream = hashlib.shake_256(b"GeneratorsChain" + b"G" + bytes(4)).digest(64 * 64)
    assert decaf.encode(decaf.from_hash(stream)) == b"".join(gens_g)


@SLOW
@given(data=st.binary(min_size=64, max_size=64))
def test_one_way_map_agrees(decaf: backend.DecafGroup, data: bytes) -> None:
    assert decaf.encode(decaf.from_hash(data)) == sodium.from_hash(data)


@SLOW
@given(
    seeds=st.lists(st.integers(0, 2**63), min_size=1, max_size=12),
    scalars=st.lists(SCALARS, min_size=12, max_size=12),
    secret=st.booleans(),
    split=st.integers(0, 12),
)
@example(seeds=[0], scalars=[0] * 12, secret=True, split=0)
@example(seeds=[0, 1], scalars=[L - 1] * 12, secret=False, split=1)
def test_msm_is_the_naive_sum_on_both_backends(
    decaf: backend.DecafGroup, seeds: list[int], scalars: list[int], secret: bool, split: int
) -> None:
    points = [_point(s) for s in seeds]
    scalars = scalars[: len(points)]
    expected = _naive_sum(scalars, points)
    cut = min(split, len(points))
    for group in (backend.SODIUM, decaf):
        batches = [group.decode(b"".join(points[:cut])), group.decode(b"".join(points[cut:]))]
        assert group.encode(group.msm(scalars, batches, secret=secret)) == expected, group.name


def test_msm_over_identity_points_and_negative_scalars(decaf: backend.DecafGroup) -> None:
    points = [IDENTITY, _point(1), IDENTITY, _point(2)]
    scalars = [5, -3, L - 1, -(L - 1)]
    expected = _naive_sum([s % L for s in scalars], points)
    for group in (backend.SODIUM, decaf):
        batch = group.decode(b"".join(points))
        for secret in (True, False):
            assert group.encode(group.msm(scalars, [batch], secret=secret)) == expected


@SLOW
@given(bits=st.lists(st.integers(0, 1), min_size=1, max_size=16), ratio_seed=st.integers(0, 2**32))
def test_select_sum_fold_and_negate_agree(
    decaf: backend.DecafGroup, bits: list[int], ratio_seed: int
) -> None:
    ones = [_point(i) for i in range(len(bits))]
    zeros = [_point(1000 + i) for i in range(len(bits))]
    rng = random.Random(ratio_seed)
    ratios = [rng.randrange(L) for _ in range(len(bits))]
    selected = functools.reduce(
        sodium.add, [o if b else z for b, o, z in zip(bits, ones, zeros, strict=True)]
    )
    folded = b"".join(sodium.add(z, sodium.mul(r, o)) for z, o, r in zip(zeros, ones, ratios, strict=True))
    negated = b"".join(sodium.sub(IDENTITY, p) for p in ones)
    for group in (backend.SODIUM, decaf):
        ones_b, zeros_b = group.decode(b"".join(ones)), group.decode(b"".join(zeros))
        assert group.encode(group.select_sum(bits, ones_b, zeros_b)) == selected
        assert group.encode(group.fold(group.decode(b"".join(zeros + ones)), ratios)) == folded
        assert group.encode(group.negate(ones_b)) == negated


@SLOW
@given(
    width=st.integers(2, 8),
    scalars=st.lists(SCALARS, min_size=6, max_size=6),
)
def test_msm_is_the_same_whatever_the_table_width(
    decaf: backend.DecafGroup, width: int, scalars: list[int]
) -> None:
    points = [_point(i) for i in range(6)]
    batch = decaf._c.decode(b"".join(points))
    decaf._c.precompute(batch, width)
    expected = _naive_sum(scalars, points)
    for secret in (True, False):
        assert decaf.encode(decaf.msm(scalars, [batch], secret=secret)) == expected
    ratios = scalars[:3]
    folded = b"".join(sodium.add(points[i], sodium.mul(ratios[i], points[3 + i])) for i in range(3))
    assert decaf.encode(decaf.fold(batch, ratios)) == folded


class _FoldingDecaf(backend.DecafGroup):
    """The native backend with the explicit generator fold (libsodium's strategy)."""

    implicit_fold = False


def _groups(decaf: backend.DecafGroup) -> list[backend.Group]:
    return [backend.SODIUM, decaf, _FoldingDecaf(decaf._c)]


@SLOW
@given(
    quantity=st.integers(0, 2**32 - 1),
    blinding=st.integers(0, L - 1),
    seed=st.integers(0, 2**64),
    label=st.binary(max_size=40),
)
def test_fixed_randomness_gives_identical_proofs_that_verify_everywhere(
    decaf: backend.DecafGroup, quantity: int, blinding: int, seed: int, label: bytes
) -> None:
    made = [
        rangeproof.prove(
            quantity,
            blinding,
            label,
            PROJECT_ORIGIN_PEDERSEN,
            group=group,
            random_bytes=random.Random(seed).randbytes,
        )
        for group in _groups(decaf)
    ]
    assert len(set(made)) == 1, "the backends or fold strategies disagree"
    proof, commitment = made[0]
    assert commitment == pedersen.commit(quantity, blinding)
    for group in (backend.SODIUM, decaf):
        assert rangeproof.verify(proof, commitment, label, PROJECT_ORIGIN_PEDERSEN, group=group)


@pytest.mark.parametrize("n", [8, 16, 64])
def test_other_bit_sizes_are_identical_too(decaf: backend.DecafGroup, n: int) -> None:
    made = {
        rangeproof.prove(
            2**n - 1, 7, b"n", DALEK_DEFAULT_PEDERSEN, n, group=group, random_bytes=random.Random(n).randbytes
        )
        for group in _groups(decaf)
    }
    assert len(made) == 1
    (proof, commitment) = made.pop()
    assert rangeproof.verify(proof, commitment, b"n", DALEK_DEFAULT_PEDERSEN, n, group=decaf)


def test_each_backend_verifies_the_others_proofs(decaf: backend.DecafGroup) -> None:
    for maker in (backend.SODIUM, decaf):
        proof, commitment = rangeproof.prove(
            123_456, pedersen.random_blinding(), LABEL, PROJECT_ORIGIN_PEDERSEN, group=maker
        )
        for checker in (backend.SODIUM, decaf):
            assert rangeproof.verify(proof, commitment, LABEL, PROJECT_ORIGIN_PEDERSEN, group=checker)
            assert not rangeproof.verify(
                proof, commitment, LABEL + b"x", PROJECT_ORIGIN_PEDERSEN, group=checker
            )


def _bundle_on(group: backend.Group) -> bytes:
    previous = backend.selection()
    backend.use(backend.Selection(group.name, group))
    try:
        return build_issue_bundle(dataclasses.replace(vector_request(), proof_seed=2026)).transaction
    finally:
        backend.use(previous)


def test_fixed_randomness_gives_identical_transactions(decaf: backend.DecafGroup) -> None:
    on_sodium, on_decaf = _bundle_on(backend.SODIUM), _bundle_on(decaf)
    assert on_sodium == on_decaf
    # Everything but the proof is the worked example's: swapping the vector's proof in gives its bytes.
    ours = registry_pb2.Transaction.FromString(on_decaf)
    event = electricity_pb2.IssuedEvent.FromString(ours.payload)
    assert event.quantity_commitment.content == COMMITMENT
    assert (
        len(event.quantity_commitment.range_proof) == 608 and event.quantity_commitment.range_proof != PROOF
    )
    assert len(TX) == 1132


# --- Keccak-f[1600] in C against the pure-Python oracle -----------------------------------------


@settings(max_examples=200, deadline=None)
@given(state=st.binary(min_size=200, max_size=200))
def test_native_keccak_matches_the_python_oracle(decaf: backend.DecafGroup, state: bytes) -> None:
    native, oracle = bytearray(state), bytearray(state)
    decaf.keccak_f1600(native)
    merlin.python_keccak_f1600(oracle)
    assert native == oracle


def test_transcripts_on_either_permutation_agree(decaf: backend.DecafGroup) -> None:
    for permute in (merlin.python_keccak_f1600, decaf.keccak_f1600):
        transcript = merlin.Transcript(b"test protocol", permute)
        transcript.append_message(b"some label", b"some data")
        assert transcript.challenge_bytes(b"challenge", 32).hex() == (
            "d5a21972d0d5fe320c0d263fac7fffb8145aa640af6e9bca177c03c7efcf0615"
        )


# --- bad input never crashes the native code ------------------------------------------------------

_JUNK = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"", b"\xff" * 32, b"\xff" * 64, bytes(31), bytes(33), (L).to_bytes(32, "little")]),
)
_NON_BYTES: list[Any] = [None, 3, "32 characters of text, not bytes", [b"x"], object()]


def _refused(call: Callable[[], object]) -> None:
    """The call either succeeds or raises ValueError / TypeError; anything else fails, and a
    crash takes the test process down."""
    with contextlib.suppress(ValueError, TypeError):
        call()


@settings(max_examples=300, deadline=None)
@given(junk=_JUNK, other=_JUNK, count=st.integers(0, 4))
def test_native_entry_points_refuse_junk(
    decaf: backend.DecafGroup, junk: bytes, other: bytes, count: int
) -> None:
    c = decaf._c
    points = c.decode(b"".join(_point(i) for i in range(count)))
    _refused(lambda: c.decode(junk))
    _refused(lambda: c.from_hash(junk))
    _refused(lambda: c.msm_ct(junk, (points,)))
    _refused(lambda: c.msm_vartime(junk, [points, points]))
    _refused(lambda: c.select_sum(junk, points, points))
    _refused(lambda: c.fold(points, junk))
    _refused(lambda: c.keccak_f1600(bytearray(junk)))
    _refused(lambda: c.keccak_f1600(junk))  # read-only
    if len(junk) % 32 == 0 and len(other) % 32 == 0:
        try:
            batch = c.decode(junk)
        except ValueError:
            return
        _refused(lambda: c.msm_vartime(other, (batch,)))
        _refused(lambda: c.msm_ct(other, (batch,)))
        _refused(lambda: c.fold(batch, other))


def test_native_entry_points_check_lengths_and_types(decaf: backend.DecafGroup) -> None:
    c = decaf._c
    three = c.decode(b"".join(_point(i) for i in range(3)))
    four = c.decode(b"".join(_point(i) for i in range(4)))
    bad_scalars = [bytes(32 * 2), bytes(32 * 4), bytes(95), L.to_bytes(32, "little") * 3, b"\xff" * 96]
    for scalars in bad_scalars:
        for msm in (c.msm_ct, c.msm_vartime):
            with pytest.raises(ValueError):
                msm(scalars, (three,))
    for junk in _NON_BYTES:
        for function in (c.decode, c.from_hash, c.negate, c.keccak_f1600):
            with pytest.raises(TypeError):
                function(junk)
        with pytest.raises(TypeError):
            c.msm_ct(bytes(96), (junk,))
        with pytest.raises(TypeError):
            c.msm_vartime(bytes(96), junk)
    with pytest.raises(ValueError):
        c.fold(three, bytes(32))  # odd
    with pytest.raises(ValueError):
        c.fold(four, bytes(32))  # one ratio short
    with pytest.raises(ValueError):
        c.fold(four, L.to_bytes(32, "little") + bytes(32))
    with pytest.raises(ValueError):
        c.select_sum(bytes([0, 1]), three, three)
    with pytest.raises(ValueError):
        c.select_sum(bytes([0, 1, 2]), three, three)
    with pytest.raises(ValueError):
        c.select_sum(bytes([0, 1, 1, 0]), three, four)
    for width in (-1, 0, 1, 9, 2**40):
        with pytest.raises((ValueError, OverflowError)):
            c.precompute(three, width)
    with pytest.raises(TypeError):
        c.precompute(b"points", 5)
    with pytest.raises(ValueError):
        c.keccak_f1600(bytearray(199))
    with pytest.raises(TypeError):
        c.keccak_f1600(bytes(200))
    with pytest.raises(ValueError):
        c.decode(bytes(32) + b"\xff" * 32)
    with pytest.raises(ValueError):
        c.from_hash(bytes(63))
    # Empty batches are fine and give the identity.
    empty = c.decode(b"")
    assert len(empty) == 0 and c.msm_ct(b"", (empty,)).encode() == IDENTITY
    assert c.msm_vartime(b"", ()).encode() == IDENTITY


@SLOW
@given(encoding=st.binary(min_size=32, max_size=32))
def test_both_backends_accept_exactly_the_same_encodings(decaf: backend.DecafGroup, encoding: bytes) -> None:
    verdicts: list[bytes | None] = []
    for group in (backend.SODIUM, decaf):
        try:
            verdicts.append(group.encode(group.decode(encoding)))
        except ValueError:
            verdicts.append(None)
    assert verdicts[0] == verdicts[1]
    assert verdicts[0] in (None, encoding)  # decoding is canonical: what decodes re-encodes the same


# --- canonical decoding: bit 255 (docs/crypto.md §4a) -----------------------------------------------


def test_libsodium_itself_ignores_bit_255() -> None:
    """Why the check is Stamp's own: the library's validity test passes the flipped encoding."""
    flipped = _flip_bit_255(COMMITMENT)
    assert sodium._lib.crypto_core_ristretto255_is_valid_point(flipped) == 1
    assert not sodium.is_valid_point(flipped)
    assert not pedersen.is_canonical(flipped) and pedersen.is_canonical(COMMITMENT)


@pytest.mark.usefixtures("each_backend")
def test_commitment_with_bit_255_set_is_rejected_everywhere() -> None:
    group = backend.active()
    flipped = _flip_bit_255(COMMITMENT)
    with pytest.raises(ValueError):
        group.decode(flipped)
    assert rangeproof.verify(PROOF, COMMITMENT, LABEL, PROJECT_ORIGIN_PEDERSEN)
    assert not rangeproof.verify(PROOF, flipped, LABEL, PROJECT_ORIGIN_PEDERSEN)
    r = bytes.fromhex(V["R"])
    assert not pedersen.opens(flipped, 1000, int.from_bytes(r, "little"))


@pytest.mark.usefixtures("each_backend")
@pytest.mark.parametrize(
    "chunk", [0, 1, 2, 3, 7, 8, 15, 16], ids=["A", "S", "T1", "T2", "L0", "R0", "L4", "R4"]
)
def test_proof_point_with_bit_255_set_is_rejected(chunk: int) -> None:
    group = backend.active()
    flipped = _flip_bit_255(PROOF, chunk)
    with pytest.raises(ValueError):
        group.decode(flipped[32 * chunk : 32 * chunk + 32])
    assert not rangeproof.verify(flipped, COMMITMENT, LABEL, PROJECT_ORIGIN_PEDERSEN)


def _transaction_with(commitment: bytes, proof: bytes) -> bytes:
    tx = registry_pb2.Transaction.FromString(TX)
    event = electricity_pb2.IssuedEvent.FromString(tx.payload)
    event.quantity_commitment.content = commitment
    event.quantity_commitment.range_proof = proof
    tx.payload = event.SerializeToString()
    return tx.SerializeToString()


def _registry_rules() -> registry_rules.RegistryRules:
    key = IssuerKey.from_seed(bytes.fromhex(V["seed"]))
    return registry_rules.RegistryRules(frozenset({"Narnia"}), {"DK1": (key.public_pem_base64(),)})


def test_registry_simulator_rejects_bit_255_in_commitment_or_proof() -> None:
    rules = _registry_rules()
    snapshot = registry_rules.StreamSnapshot()
    assert (
        registry_rules.verify_transaction(TX, snapshot, rules, True).outcome
        == registry_rules.Outcome.COMMITTED
    )
    flipped_commitment = _transaction_with(_flip_bit_255(COMMITMENT), PROOF)
    for check_proof in (True, False):  # the simulator's fast mode skips the proof, not the decoding
        verdict = registry_rules.verify_transaction(flipped_commitment, snapshot, rules, check_proof)
        assert verdict.outcome == registry_rules.Outcome.FAILED, check_proof
        assert verdict.message == "Invalid range proof for Quantity commitment"
    for chunk in (0, 7):
        verdict = registry_rules.verify_transaction(
            _transaction_with(COMMITMENT, _flip_bit_255(PROOF, chunk)), snapshot, rules, True
        )
        assert verdict.outcome == registry_rules.Outcome.FAILED


def test_wallet_simulator_rejects_a_commitment_with_bit_255_set() -> None:
    event = electricity_pb2.IssuedEvent.FromString(registry_pb2.Transaction.FromString(TX).payload)
    event.quantity_commitment.content = _flip_bit_255(COMMITMENT)
    valid = electricity_pb2.IssuedEvent.FromString(registry_pb2.Transaction.FromString(TX).payload)
    slice_ = _slice(quantity=1000, random_r=bytes.fromhex(V["R"]))
    assert wallet_checks._check_commitment(slice_, valid) == []
    problems = wallet_checks._check_commitment(slice_, event)  # the wallet's commitment check alone
    assert problems == ["the quantity commitment is not a canonical Ristretto255 point"]


def _slice(quantity: int, random_r: bytes) -> wallet_checks.SliceRequest:
    return wallet_checks.SliceRequest(
        public_key=bytes.fromhex(V["endpoint_key_hex"]),
        position=1,
        registry="Narnia",
        certificate_id=CERTIFICATE_ID,
        quantity=quantity,
        random_r=random_r,
        hashed_attributes=(),
    )


# --- choosing the backend ---------------------------------------------------------------------

_WITHOUT_EXTENSION = """
import sys
sys.modules["stamp.crypto._decaf"] = None  # what a failed build leaves: the import fails
from stamp.config import ConfigError, load_settings
from stamp.crypto import backend, rangeproof
from stamp.crypto.generators import PROJECT_ORIGIN_PEDERSEN
try:
    load_settings({"STAMP_CRYPTO_BACKEND": "decaf"})
except ConfigError as exc:
    print("forced:", " ".join(str(exc).split()))
auto = backend.select("auto")
print("auto:", auto.group.name, "|", auto.fallback_reason)
print("configured:", load_settings({}).crypto_backend, backend.active().name)
proof, commitment = rangeproof.prove(5, 6, b"label", PROJECT_ORIGIN_PEDERSEN)
print("proves:", rangeproof.verify(proof, commitment, b"label", PROJECT_ORIGIN_PEDERSEN))
"""


def test_without_the_extension_auto_falls_back_and_forcing_decaf_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "STAMP_CRYPTO_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTENSION], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert "STAMP_CRYPTO_BACKEND='decaf': decaf cannot be used here" in lines["forced"]
    assert "libdecaf-dev" in lines["forced"] and "STAMP_CRYPTO_BACKEND=sodium" in lines["forced"]
    assert lines["auto"].startswith("sodium | the native extension stamp.crypto._decaf is not built")
    assert lines["configured"] == "auto sodium"
    assert lines["proves"] == "True"


def test_selection_names_its_backend_and_rejects_unknown_names() -> None:
    assert backend.select("sodium").group is backend.SODIUM
    assert backend.select(" SODIUM ").requested == "sodium"
    with pytest.raises(ValueError, match="must be one of auto, decaf, sodium"):
        backend.select("openssl")
    described = backend.select("auto").describe()
    assert described.startswith(
        f"crypto backend: {backend.select('auto').group.name} (STAMP_CRYPTO_BACKEND=auto)"
    )


@pytest.mark.parametrize("name", ["sodium", "decaf"])
def test_crypto_workers_run_the_backend_the_service_chose(name: str) -> None:
    if name == "decaf":
        native_backend()
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=init_crypto_worker, initargs=(name,)) as pool:
        assert pool.submit(warm_crypto_worker).result(timeout=120) == name
