"""Signed registry transactions (docs/registry.md, "The messages").

The serialized bytes returned here are what Stamp persists and resends: protobuf output is not
promised to be stable across library versions, so nothing downstream re-serializes.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from protos.project_origin.common.v1 import common_pb2
from protos.project_origin.electricity.v1 import electricity_pb2
from protos.project_origin.registry.v1 import registry_pb2
from stamp.crypto.issuer_keys import IssuerKey
from stamp.domain import CERTIFICATE_TYPES, CERTIFICATE_TYPES_TEXT

ISSUED_EVENT_TYPE = "project_origin.electricity.v1.IssuedEvent"
WITHDRAWN_EVENT_TYPE = "project_origin.electricity.v1.WithdrawnEvent"

# The registry's GranularCertificateType numbers are the domain's table (one table):
# each name of it is the registry's name of its number.
assert all(
    electricity_pb2.GranularCertificateType.Value(name.upper()) == number
    for number, name in CERTIFICATE_TYPES.items()
)


@dataclass(frozen=True, slots=True)
class SignedTransaction:
    transaction: bytes
    """Serialized `Transaction`: persist and resend exactly these bytes."""
    transaction_id: str
    """Base64(SHA-256(transaction)), what GetTransactionStatus takes."""


def transaction_id(transaction: bytes) -> str:
    return base64.b64encode(hashlib.sha256(transaction).digest()).decode("ascii")


def _stream_id(registry: str, certificate_id: str) -> common_pb2.FederatedStreamId:
    return common_pb2.FederatedStreamId(registry=registry, stream_id=common_pb2.Uuid(value=certificate_id))


def build_issued_event(
    *,
    registry: str,
    certificate_id: str,
    certificate_type: int,
    start: int,
    end: int,
    grid_area: str,
    commitment: bytes,
    range_proof: bytes,
    owner_public_key: bytes,
    clear_attributes: Sequence[tuple[str, str]] = (),
    hashed_attributes: Sequence[tuple[str, str]] = (),
) -> bytes:
    """Serialized `IssuedEvent`. `hashed_attributes` holds (key, hash as put on the registry);
    attributes go clear ones first, then hashed ones, each in the given order."""
    if certificate_type not in CERTIFICATE_TYPES:
        raise ValueError(f"certificate_type must be {CERTIFICATE_TYPES_TEXT}")
    attributes = [
        electricity_pb2.Attribute(key=key, value=value, type=electricity_pb2.CLEARTEXT)
        for key, value in clear_attributes
    ] + [
        electricity_pb2.Attribute(key=key, value=value, type=electricity_pb2.HASHED)
        for key, value in hashed_attributes
    ]
    event = electricity_pb2.IssuedEvent(
        certificate_id=_stream_id(registry, certificate_id),
        type=certificate_type,  # type: ignore[arg-type]  # checked above; the stub wants the enum
        period=electricity_pb2.DateInterval(start=Timestamp(seconds=start), end=Timestamp(seconds=end)),
        grid_area=grid_area,
        quantity_commitment=electricity_pb2.Commitment(content=commitment, range_proof=range_proof),
        owner_public_key=electricity_pb2.PublicKey(content=owner_public_key, type=electricity_pb2.Secp256k1),
        attributes=attributes,
    )
    return event.SerializeToString()


def sign_transaction(
    registry: str,
    certificate_id: str,
    payload_type: str,
    payload: bytes,
    issuer_key: IssuerKey,
    nonce: str | None = None,
) -> SignedTransaction:
    """Wrap a serialized payload in a header signed by the issuer. `nonce` None = a new UUID."""
    header = registry_pb2.TransactionHeader(
        federated_stream_id=_stream_id(registry, certificate_id),
        payload_type=payload_type,
        payload_sha512=hashlib.sha512(payload).digest(),
        nonce=str(uuid.uuid4()) if nonce is None else nonce,
    )
    header_bytes = header.SerializeToString()
    transaction = registry_pb2.Transaction(
        header=header, header_signature=issuer_key.sign(header_bytes), payload=payload
    ).SerializeToString()
    return SignedTransaction(transaction, transaction_id(transaction))


def build_withdrawn_transaction(
    registry: str, certificate_id: str, issuer_key: IssuerKey, nonce: str | None = None
) -> SignedTransaction:
    """A signed `WithdrawnEvent` for the certificate (the event has no fields)."""
    payload = electricity_pb2.WithdrawnEvent().SerializeToString()
    return sign_transaction(registry, certificate_id, WITHDRAWN_EVENT_TYPE, payload, issuer_key, nonce)
