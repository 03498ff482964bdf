"""Everything the registry needs for one certificate, built in one call (docs/crypto.md §1–§6).

`build_issue_bundle` is what the service runs in a crypto worker process: plain picklable data
in, plain picklable data out, no clock and no I/O. The phases are also exposed one by one
(`derive_owner_key`, `commit_quantity`, `prove_quantity`, `check_proof`, `hash_attributes`,
`assemble_transaction`) so a benchmark can time them and a test can inject a known proof.
"""

from __future__ import annotations

import functools
import random
import secrets
import time
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from stamp.crypto import attributes, pedersen, rangeproof
from stamp.crypto.generators import PROJECT_ORIGIN_PEDERSEN
from stamp.crypto.hdkeys import HARDENED, ExtendedPublicKey, InvalidHDKey
from stamp.crypto.issuer_keys import IssuerKey
from stamp.crypto.sodium import L
from stamp.crypto.transactions import (
    ISSUED_EVENT_TYPE,
    SignedTransaction,
    build_issued_event,
    sign_transaction,
)
from stamp.domain import CERTIFICATE_TYPES, CERTIFICATE_TYPES_TEXT, Attributes, CertificateContent

BIT_SIZE = 32
"""Range of a quantity: [0, 2^32) Wh, proven with n = 32."""


class BundleError(ValueError):
    """The request cannot become a transaction. Messages never carry a secret."""


@dataclass(frozen=True, slots=True)
class IssueRequest:
    """A certificate's content and what the crypto adds to it: the owner's key and
    position, and the issuer's signing key."""

    content: CertificateContent
    recipient_public_key: bytes
    """The wallet endpoint's 74-byte extended public key."""
    position: int
    issuer_private_pem: str = field(repr=False)
    verify_proof: bool = True
    # Deterministic inputs for tests only; None means fresh randomness.
    blinding: int | None = field(default=None, repr=False)
    nonce: str | None = None
    salts: tuple[bytes, ...] | None = field(default=None, repr=False)
    proof_seed: int | None = field(default=None, repr=False)
    """Seeds the prover's blindings: reproducible proofs for tests, never set by the service."""


@dataclass(frozen=True, slots=True)
class IssueBundle:
    transaction: bytes
    transaction_id: str
    owner_public_key: bytes
    """33-byte compressed secp256k1 key, the child of the endpoint key at the position."""
    commitment: bytes
    blinding: bytes = field(repr=False)
    """R, 32 bytes little-endian."""
    salts: tuple[bytes, ...] = field(repr=False)
    """One 16-byte salt per hashed attribute, in the request's order."""


# --- phases ---------------------------------------------------------------------------------


def derive_owner_key(recipient_public_key: bytes, position: int) -> bytes:
    if not 0 <= position < HARDENED:
        raise BundleError(f"position must be in 0…2^31−1, got {position}")
    try:
        return ExtendedPublicKey.from_bytes(recipient_public_key).child_public_key(position)
    except InvalidHDKey as exc:
        raise BundleError(f"recipient key: {exc}") from exc


def commit_quantity(quantity: int, blinding: int) -> bytes:
    return pedersen.commit(quantity, blinding, PROJECT_ORIGIN_PEDERSEN)


def prove_quantity(
    quantity: int,
    blinding: int,
    certificate_id: str,
    random_bytes: rangeproof.RandomBytes = secrets.token_bytes,
) -> tuple[bytes, bytes]:
    """(proof, commitment) for quantity ∈ [0, 2^32), labelled with the certificate id."""
    try:
        return rangeproof.prove(
            quantity,
            blinding,
            certificate_id.encode("utf-8"),
            PROJECT_ORIGIN_PEDERSEN,
            BIT_SIZE,
            random_bytes=random_bytes,
        )
    except rangeproof.RangeProofError as exc:
        raise BundleError(f"quantity: {exc}") from exc


def check_proof(proof: bytes, commitment: bytes, certificate_id: str) -> None:
    """Verify as the registry will. A proof it cannot parse would leave the transaction PENDING
    for ever (docs/registry.md), so nothing unverified should be sent."""
    if len(proof) != rangeproof.PROOF_SIZE or len(commitment) != 32:
        raise BundleError("the range proof or commitment has the wrong size")
    label = certificate_id.encode("utf-8")
    if not rangeproof.verify(proof, commitment, label, PROJECT_ORIGIN_PEDERSEN, BIT_SIZE):
        raise BundleError("the range proof does not verify")


def hash_attributes(
    hashed_attributes: Attributes, certificate_id: str, salts: tuple[bytes, ...]
) -> tuple[tuple[str, str], ...]:
    """(key, value on the registry) for each hashed attribute."""
    return tuple(
        (key, attributes.hash_attribute(key, value, certificate_id, salt))
        for (key, value), salt in zip(hashed_attributes, salts, strict=True)
    )


@functools.lru_cache(maxsize=64)
def issuer_key(pem: str) -> IssuerKey:
    """Parsed once per worker process: one process signs many bundles with few keys."""
    return IssuerKey.from_pem(pem)


def assemble_transaction(
    request: IssueRequest,
    owner_public_key: bytes,
    commitment: bytes,
    range_proof: bytes,
    salts: tuple[bytes, ...],
) -> SignedTransaction:
    """Hash the attributes, build the `IssuedEvent` and sign it."""
    content = request.content
    registry, certificate_id = content.key.registry, content.key.certificate_id
    payload = build_issued_event(
        registry=registry,
        certificate_id=certificate_id,
        certificate_type=content.certificate_type,
        start=content.start,
        end=content.end,
        grid_area=content.grid_area,
        commitment=commitment,
        range_proof=range_proof,
        owner_public_key=owner_public_key,
        clear_attributes=content.clear_attributes,
        hashed_attributes=hash_attributes(content.hashed_attributes, certificate_id, salts),
    )
    nonce = str(uuid.uuid4()) if request.nonce is None else request.nonce
    key = issuer_key(request.issuer_private_pem)
    return sign_transaction(registry, certificate_id, ISSUED_EVENT_TYPE, payload, key, nonce)


# --- the whole bundle -----------------------------------------------------------------------

_T = TypeVar("_T")


def build_issue_bundle(
    request: IssueRequest, timings: MutableMapping[str, float] | None = None
) -> IssueBundle:
    """Owner key, commitment, range proof, hashed attributes and the signed transaction.

    `timings`, when given, receives the seconds spent in each phase (derive, commit, prove,
    verify, sign = hash attributes, build and sign the transaction); the service leaves it out."""

    @contextmanager
    def phase(name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - started

    _check_request(request)
    _guard(lambda: issuer_key(request.issuer_private_pem))  # fail before the costly proof
    content = request.content
    blinding = pedersen.random_blinding() if request.blinding is None else request.blinding
    salts = request.salts
    if salts is None:
        salts = tuple(attributes.new_salt() for _ in content.hashed_attributes)

    with phase("derive"):
        owner_key = derive_owner_key(request.recipient_public_key, request.position)
    with phase("commit"):
        commitment = commit_quantity(content.quantity, blinding)
    with phase("prove"):
        randomness = (
            secrets.token_bytes if request.proof_seed is None else random.Random(request.proof_seed).randbytes
        )
        proof, proven_commitment = prove_quantity(
            content.quantity, blinding, content.key.certificate_id, randomness
        )
    if proven_commitment != commitment:
        raise BundleError("the prover committed to something else than the quantity")
    if request.verify_proof:
        with phase("verify"):
            check_proof(proof, commitment, content.key.certificate_id)
    with phase("sign"):
        signed = _guard(lambda: assemble_transaction(request, owner_key, commitment, proof, salts))
    return IssueBundle(
        transaction=signed.transaction,
        transaction_id=signed.transaction_id,
        owner_public_key=owner_key,
        commitment=commitment,
        blinding=pedersen.blinding_to_bytes(blinding),
        salts=salts,
    )


def _guard(step: Callable[[], _T]) -> _T:
    try:
        return step()
    except BundleError:
        raise
    except ValueError as exc:  # e.g. an unreadable issuer key; its message quotes no secret
        raise BundleError(str(exc)) from exc


def _check_request(request: IssueRequest) -> None:
    """Refuse inputs that would give a transaction the registry cannot accept or the wallet
    cannot use: every problem at once, so the caller sees the whole picture."""
    content = request.content
    problems = []
    try:
        canonical = str(uuid.UUID(content.key.certificate_id))
    except (ValueError, TypeError, AttributeError):
        canonical = None
    if canonical != content.key.certificate_id:
        problems.append("certificate_id must be a canonical lower-case UUID")
    if content.certificate_type not in CERTIFICATE_TYPES:
        problems.append(f"certificate_type must be {CERTIFICATE_TYPES_TEXT}")
    if not 0 <= content.quantity < 1 << BIT_SIZE:
        problems.append(f"quantity must be in 0…2^{BIT_SIZE}−1")
    if request.blinding is not None and not 0 <= request.blinding < L:
        problems.append("blinding must be a scalar in 0…ℓ−1")
    if request.salts is not None and (
        len(request.salts) != len(content.hashed_attributes)
        or any(len(s) != attributes.SALT_BYTES for s in request.salts)
    ):
        problems.append(f"salts must be one {attributes.SALT_BYTES}-byte salt per hashed attribute")
    if problems:
        raise BundleError("; ".join(problems))
