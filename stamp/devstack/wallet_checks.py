"""What the wallet simulator does with one slice, as pure functions (docs/wallet.md).

``parse_slice_request`` reads a receive-slice body the way the real wallet binds it:
field names match case-insensitively at every level, byte arrays are standard Base64.
``verify_slice`` decides a parsed slice against the registry's transactions of its
stream: the certificate exists (first event an ``IssuedEvent`` of the slice's registry),
the owner key is the endpoint key's child at ``position``, ``C`` opens to
(``quantity``, ``randomR``), and every hashed attribute hashes to the registry's value.

Reasons name fields and positions, never R, salts or clear attribute values: they end up
in logs and in the simulator's JSON.
"""

from __future__ import annotations

import base64
import binascii
import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf.message import DecodeError

from protos.project_origin.electricity.v1 import electricity_pb2
from protos.project_origin.registry.v1 import registry_pb2
from stamp.crypto import attributes, pedersen
from stamp.crypto.hdkeys import HARDENED, ExtendedPublicKey, InvalidHDKey

ISSUED_EVENT = electricity_pb2.IssuedEvent.DESCRIPTOR.full_name
UINT32_MAX = (1 << 32) - 1


class MalformedSlice(ValueError):
    """The body cannot be bound to a receive-slice request (the wallet answers 400)."""


@dataclass(frozen=True, slots=True)
class HashedAttributeDisclosure:
    """Clear key, value and salt of one hashed attribute, as the slice discloses them."""

    key: str
    value: str = field(repr=False)
    salt: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SliceRequest:
    """A receive-slice request bound from JSON. ``public_key`` is the endpoint's 74-byte
    extended key, already checked to parse."""

    public_key: bytes
    position: int
    registry: str
    certificate_id: str  # canonical lower-case UUID text
    quantity: int
    random_r: bytes = field(repr=False)
    hashed_attributes: tuple[HashedAttributeDisclosure, ...] = field(repr=False)

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key).decode("ascii")


def _fold(value: Any) -> Any:
    """Lower-case every object key, recursively (the wallet binds names case-insensitively)."""
    if isinstance(value, dict):
        return {str(k).lower(): _fold(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fold(v) for v in value]
    return value


def _field(obj: Mapping[str, Any], name: str, where: str) -> Any:
    value = obj.get(name.lower())
    if value is None:
        raise MalformedSlice(f"{where}{name} is required")
    return value


def _uint32(obj: Mapping[str, Any], name: str) -> int:
    value = _field(obj, name, "")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT32_MAX:
        raise MalformedSlice(f"{name} must be an unsigned 32-bit integer")
    return value


def _string(obj: Mapping[str, Any], name: str, where: str) -> str:
    value = _field(obj, name, where)
    if not isinstance(value, str):
        raise MalformedSlice(f"{where}{name} must be a string")
    return value


def _base64(obj: Mapping[str, Any], name: str, where: str) -> bytes:
    text = _string(obj, name, where)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedSlice(f"{where}{name} is not valid Base64") from exc


def parse_slice_request(raw: bytes) -> SliceRequest:
    """Bind a receive-slice body; raise ``MalformedSlice`` (→ 400) saying what is wrong."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedSlice("the body is not JSON") from exc
    if not isinstance(document, dict):
        raise MalformedSlice("the body must be a JSON object")
    body = _fold(document)

    key_text = _string(body, "publicKey", "")
    try:
        public_key = ExtendedPublicKey.from_base64(key_text).to_bytes()
    except InvalidHDKey as exc:
        raise MalformedSlice(f"publicKey cannot be parsed: {exc}") from exc

    certificate = _field(body, "certificateId", "")
    if not isinstance(certificate, dict):
        raise MalformedSlice("certificateId must be an object")
    registry = _string(certificate, "registry", "certificateId.")
    stream_text = _string(certificate, "streamId", "certificateId.")
    try:
        certificate_id = str(uuid.UUID(stream_text))
    except ValueError as exc:
        raise MalformedSlice("certificateId.streamId is not a UUID") from exc

    random_r = _base64(body, "randomR", "")
    items = body.get("hashedattributes")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise MalformedSlice("hashedAttributes must be an array")
    disclosures = []
    for index, item in enumerate(items):
        where = f"hashedAttributes[{index}]."
        if not isinstance(item, dict):
            raise MalformedSlice(f"hashedAttributes[{index}] must be an object")
        disclosures.append(
            HashedAttributeDisclosure(
                key=_string(item, "key", where),
                value=_string(item, "value", where),
                salt=_base64(item, "salt", where),
            )
        )
    return SliceRequest(
        public_key=public_key,
        position=_uint32(body, "position"),
        registry=registry,
        certificate_id=certificate_id,
        quantity=_uint32(body, "quantity"),
        random_r=random_r,
        hashed_attributes=tuple(disclosures),
    )


# --- verification -------------------------------------------------------------------------


class Check(enum.Enum):
    VERIFIED = "verified"
    INVALID = "invalid"
    NOT_COMMITTED = "not committed"  # the registry has no transaction for the stream (yet)


@dataclass(frozen=True, slots=True)
class SliceVerdict:
    check: Check
    reason: str = ""


def verify_slice(
    slice_: SliceRequest, endpoint_key: ExtendedPublicKey, transactions: Sequence[registry_pb2.Transaction]
) -> SliceVerdict:
    """Decide a slice against the registry's committed transactions of its stream."""
    if not transactions:
        return SliceVerdict(Check.NOT_COMMITTED, "the registry has no certificate with this id")
    first = transactions[0]
    if first.header.payload_type != ISSUED_EVENT:
        return SliceVerdict(
            Check.INVALID, f"the stream's first transaction is a {first.header.payload_type!r}"
        )
    if first.header.federated_stream_id.registry != slice_.registry:
        return SliceVerdict(
            Check.INVALID,
            f"the certificate was issued in registry {first.header.federated_stream_id.registry!r}, "
            f"the slice names {slice_.registry!r}",
        )
    try:
        event = electricity_pb2.IssuedEvent.FromString(first.payload)
    except DecodeError:
        return SliceVerdict(Check.INVALID, "the IssuedEvent on the registry does not parse")

    problems = [
        *_check_identity(slice_, event),
        *_check_owner_key(slice_, endpoint_key, event),
        *_check_commitment(slice_, event),
        *_check_hashed_attributes(slice_, event),
    ]
    if problems:
        return SliceVerdict(Check.INVALID, "; ".join(problems))
    return SliceVerdict(Check.VERIFIED)


def _check_identity(slice_: SliceRequest, event: electricity_pb2.IssuedEvent) -> list[str]:
    problems = []
    if event.certificate_id.registry != slice_.registry:
        problems.append(f"the IssuedEvent names registry {event.certificate_id.registry!r}")
    try:
        issued_id = str(uuid.UUID(event.certificate_id.stream_id.value))
    except ValueError:
        issued_id = event.certificate_id.stream_id.value
    if issued_id != slice_.certificate_id:
        problems.append("the IssuedEvent names another certificate id")
    return problems


def _check_owner_key(
    slice_: SliceRequest, endpoint_key: ExtendedPublicKey, event: electricity_pb2.IssuedEvent
) -> list[str]:
    if slice_.position >= HARDENED:
        return [f"position {slice_.position} is a hardened index: no owner key can be derived from it"]
    try:
        expected = endpoint_key.child_public_key(slice_.position)
    except InvalidHDKey as exc:
        return [f"position {slice_.position}: {exc}"]
    owner = event.owner_public_key
    if owner.type != electricity_pb2.Secp256k1:
        return [f"the owner key type is {electricity_pb2.KeyType.Name(owner.type)}, not Secp256k1"]
    if owner.content != expected:
        return [f"the owner key is not the endpoint key's child at position {slice_.position}"]
    return []


def _check_commitment(slice_: SliceRequest, event: electricity_pb2.IssuedEvent) -> list[str]:
    if len(slice_.random_r) != 32:
        return [f"randomR is {len(slice_.random_r)} bytes, not 32"]
    try:
        blinding = pedersen.blinding_from_bytes(slice_.random_r)
    except ValueError:
        return ["randomR is not a canonical scalar"]
    commitment = event.quantity_commitment.content
    if not pedersen.is_canonical(commitment):
        return ["the quantity commitment is not a canonical Ristretto255 point"]
    try:
        opens = pedersen.opens(commitment, slice_.quantity, blinding)
    except ValueError:
        opens = False
    if not opens:
        return [f"the quantity commitment does not open to quantity {slice_.quantity} with randomR"]
    return []


def _check_hashed_attributes(slice_: SliceRequest, event: electricity_pb2.IssuedEvent) -> list[str]:
    on_registry = {a.key: a.value for a in event.attributes if a.type == electricity_pb2.HASHED}
    problems = []
    disclosed = set()
    for item in slice_.hashed_attributes:
        disclosed.add(item.key)
        expected = on_registry.get(item.key)
        if expected is None:
            problems.append(f"hashed attribute {item.key!r} is not a hashed attribute on the registry")
        elif attributes.hash_attribute(item.key, item.value, slice_.certificate_id, item.salt) != expected:
            problems.append(f"hashed attribute {item.key!r} does not hash to the registry's value")
    # Stricter than the real wallet, which would store the slice without the clear value.
    missing = sorted(set(on_registry) - disclosed)
    if missing:
        problems.append(
            f"hashed attribute(s) {', '.join(map(repr, missing))} on the registry were not disclosed"
        )
    return problems
