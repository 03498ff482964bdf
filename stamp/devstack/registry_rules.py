"""What the Project Origin registry rejects, as a pure function (docs/registry.md,
"What the registry rejects").

``verify_transaction`` decides one transaction against a snapshot of its stream, in the
registry's exact order: registry-level checks (registry name, stream id, payload type
family and parse), then the electricity verifier (stream exists, range proof, type,
owner key, period, grid-area issuer signature); the first failure decides. The texts
are the real registry's, so Stamp's handling of them is exercised as in production.

It holds no state and takes only picklable arguments, so the simulator can run it in a
thread or process pool: range-proof verification is the CPU-heavy part.

Two real behaviours are kept on purpose:
- a commitment that is not 32 bytes or a proof that does not deserialize makes the
  real verifier throw; the transaction is retried for ever and stays PENDING
  (``Outcome.STUCK``);
- ``payload_sha512``, the nonce, ``asset_id_hash`` and attribute contents are not
  checked, and the signature is checked over the re-serialized header.

A stream id that is not a UUID and an unconfigured payload family make the real
registry throw too (PENDING for ever); Stamp's contract with the registry lists them as
FAILED (docs/registry.md), and the simulator follows it there, with messages of its own.
"""

from __future__ import annotations

import enum
import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import coincurve
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from protos.project_origin.electricity.v1 import electricity_pb2
from protos.project_origin.registry.v1 import registry_pb2
from stamp.crypto import issuer_keys, pedersen, rangeproof
from stamp.crypto.generators import PROJECT_ORIGIN_PEDERSEN
from stamp.crypto.sodium import L

ELECTRICITY_FAMILY = "project_origin.electricity.v1"
ISSUED_EVENT = electricity_pb2.IssuedEvent.DESCRIPTOR.full_name
WITHDRAWN_EVENT = electricity_pb2.WithdrawnEvent.DESCRIPTOR.full_name

PROOF_BITS = 32
COMMITMENT_BYTES = 32
MAX_PERIOD_NANOS = 3600 * 10**9
MIN_PERIOD_NANOS = 60 * 10**9

_ELECTRICITY_MESSAGES: dict[str, Any] = {
    desc.full_name: getattr(electricity_pb2, name)
    for name, desc in electricity_pb2.DESCRIPTOR.message_types_by_name.items()
}
# Events the real electricity verifier handles but this simulator (issuance only) does not.
_WALLET_EVENTS = frozenset(
    f"{ELECTRICITY_FAMILY}.{name}"
    for name in ("TransferredEvent", "SlicedEvent", "AllocatedEvent", "ClaimedEvent", "UnclaimedEvent")
)


class Outcome(enum.Enum):
    COMMITTED = "committed"
    FAILED = "failed"
    STUCK = "stuck"  # the real verifier throws: retried for ever, status stays PENDING


class ProofCheck(enum.Enum):
    NOT_REACHED = "not reached"  # decided before the range-proof step
    VERIFIED = "verified"
    SKIPPED = "skipped"  # sampling: this proof was not verified


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    message: str = ""
    proof: ProofCheck = ProofCheck.NOT_REACHED


@dataclass(frozen=True, slots=True)
class StreamSnapshot:
    """What the verifier needs to know of the stream's committed history."""

    exists: bool = False
    grid_area: str = ""
    withdrawn: bool = False


@dataclass(frozen=True, slots=True)
class RegistryRules:
    """The registry's configuration: its names and each grid area's issuer public keys
    (PEM or Base64 of PEM, as the real registry's configuration holds them)."""

    registries: frozenset[str]
    issuer_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    families: frozenset[str] = frozenset({ELECTRICITY_FAMILY})


def verify_transaction(
    data: bytes, stream: StreamSnapshot, rules: RegistryRules, check_proof: bool
) -> Verdict:
    """Decide one serialized Transaction given its stream's state before it."""
    tx = registry_pb2.Transaction.FromString(data)
    header = tx.header
    fsid = header.federated_stream_id
    if fsid.registry not in rules.registries:
        return _failed("Invalid registry for transaction")
    if parse_uuid(fsid.stream_id.value) is None:
        return _failed(f"Invalid stream id ”{fsid.stream_id.value}”, not a UUID")
    payload_type = header.payload_type
    family = payload_type.rpartition(".")[0]
    if family not in rules.families:
        return _failed(f"No verifier found for transaction family {family}")

    message_class = _ELECTRICITY_MESSAGES.get(payload_type)
    if message_class is None:
        if payload_type in _WALLET_EVENTS:
            return _failed(
                f"No verifier implemented for payload type ”{payload_type}” "
                "(the registry simulator verifies IssuedEvent and WithdrawnEvent only)"
            )
        return _failed(f"Could not deserialize unknown type ”{payload_type}”")
    try:
        payload = message_class.FromString(tx.payload)
    except DecodeError:
        return _failed(f"Could not deserialize invalid payload of type ”{payload_type}”")

    if payload_type == ISSUED_EVENT:
        return _verify_issued(tx, payload, stream, rules, check_proof)
    if payload_type == WITHDRAWN_EVENT:
        return _verify_withdrawn(tx, stream, rules)
    return _failed(f"No verifier implemented for payload type ”{payload_type}”")


def verify_batch(jobs: Sequence[tuple[bytes, StreamSnapshot, bool]], rules: RegistryRules) -> list[Verdict]:
    """``verify_transaction`` over a chunk: one executor round trip per chunk."""
    return [verify_transaction(data, stream, rules, check_proof) for data, stream, check_proof in jobs]


def _verify_issued(
    tx: registry_pb2.Transaction,
    event: electricity_pb2.IssuedEvent,
    stream: StreamSnapshot,
    rules: RegistryRules,
    check_proof: bool,
) -> Verdict:
    certificate_id = event.certificate_id.stream_id.value
    if stream.exists:
        return _failed(f"Certificate with id ”{_dotnet_uuid_text(certificate_id)}” already exists")

    commitment = event.quantity_commitment
    if len(commitment.content) != COMMITMENT_BYTES or not proof_deserializes(commitment.range_proof):
        return Verdict(Outcome.STUCK, "the quantity commitment or its range proof cannot be parsed")
    # A non-canonical point (bit 255 set, docs/crypto.md §4a) fails the real verifier's decoding;
    # checked even when the proof check is skipped, since it costs one decoding.
    if not pedersen.is_canonical(commitment.content):
        return _failed("Invalid range proof for Quantity commitment", ProofCheck.VERIFIED)
    if check_proof and not rangeproof.verify(
        commitment.range_proof,
        commitment.content,
        certificate_id.encode(),
        PROJECT_ORIGIN_PEDERSEN,
        PROOF_BITS,
    ):
        return _failed("Invalid range proof for Quantity commitment", ProofCheck.VERIFIED)
    proof = ProofCheck.VERIFIED if check_proof else ProofCheck.SKIPPED

    if event.type == electricity_pb2.INVALID:
        return _failed("Invalid certificate type", proof)
    if not owner_key_is_valid(event.owner_public_key):
        return _failed("Invalid owner key, not a valid publicKey", proof)
    span = _nanos(event.period.end) - _nanos(event.period.start)
    if span > MAX_PERIOD_NANOS:
        return _failed("Invalid period, maximum period is 1 hour", proof)
    if span < MIN_PERIOD_NANOS:
        return _failed("Invalid period, minimum period is 1 minute", proof)
    failure = _issuer_signature_failure(tx, event.grid_area, rules)
    if failure:
        return _failed(failure, proof)
    return Verdict(Outcome.COMMITTED, "", proof)


def _verify_withdrawn(tx: registry_pb2.Transaction, stream: StreamSnapshot, rules: RegistryRules) -> Verdict:
    if not stream.exists:
        return _failed("Certificate does not exist")
    if stream.withdrawn:
        return _failed("Certificate is already withdrawn")
    # The issuer of the certificate's own grid area withdraws it, whatever the event says.
    failure = _issuer_signature_failure(tx, stream.grid_area, rules)
    if failure:
        return _failed(failure)
    return Verdict(Outcome.COMMITTED)


def _issuer_signature_failure(tx: registry_pb2.Transaction, grid_area: str, rules: RegistryRules) -> str:
    keys = rules.issuer_keys.get(grid_area, ())
    if not keys:
        return f"No issuer found for GridArea ”{grid_area}”"
    # The real registry verifies over the header as it re-serializes it, not the bytes received.
    signed = tx.header.SerializeToString()
    if not any(issuer_keys.verify_signature(_public_key(text), tx.header_signature, signed) for text in keys):
        return f"Invalid issuer signature for GridArea ”{grid_area}”"
    return ""


def owner_key_is_valid(key: electricity_pb2.PublicKey) -> bool:
    if key.type == electricity_pb2.Secp256k1:
        try:
            coincurve.PublicKey(key.content)
        except (ValueError, TypeError):
            return False
        return True
    if key.type == electricity_pb2.ED25519:
        try:
            Ed25519PublicKey.from_public_bytes(key.content)
        except ValueError:
            return False
        return True
    return False


def proof_deserializes(proof: bytes) -> bool:
    """Whether the crate's ``RangeProof::from_bytes`` would accept the layout: 32-byte
    elements, 7 fixed ones, then the inner-product proof (pairs L, R and the final a, b),
    with every scalar canonical. Points are only decoded when verifying."""
    if len(proof) % 32 or len(proof) < 9 * 32:
        return False
    rounds, odd = divmod(len(proof) // 32 - 9, 2)
    if odd or rounds >= 32:
        return False
    scalars = (proof[128:160], proof[160:192], proof[192:224], proof[-64:-32], proof[-32:])
    return all(int.from_bytes(s, "little") < L for s in scalars)


def parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def stream_key(stream_id: str) -> str:
    """The registry keys streams by the parsed GUID: any spelling of it is one stream."""
    parsed = parse_uuid(stream_id)
    return str(parsed) if parsed is not None else stream_id


@functools.lru_cache(maxsize=256)
def _public_key(text: str) -> Any:
    return issuer_keys.load_public_key(text)


def _nanos(ts: Any) -> int:
    return int(ts.seconds) * 10**9 + int(ts.nanos)


def _dotnet_uuid_text(value: str) -> str:
    # The real registry formats the Uuid message with .NET protobuf's ToString (JSON).
    return f'{{ "value": {json.dumps(value)} }}' if value else "{ }"


def _failed(message: str, proof: ProofCheck = ProofCheck.NOT_REACHED) -> Verdict:
    return Verdict(Outcome.FAILED, message, proof)
