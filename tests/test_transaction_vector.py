"""The project-origin vector's signed IssuedEvent, reproduced byte for byte (docs/crypto.md §6, §8).

Range proofs are randomized, so the transaction is assembled around the vector's own proof
(`assemble_transaction`); the proof itself is checked to verify as the registry would."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest

from protos.project_origin.electricity.v1 import electricity_pb2
from protos.project_origin.registry.v1 import registry_pb2
from stamp.crypto import rangeproof
from stamp.crypto.bundle import (
    IssueRequest,
    assemble_transaction,
    check_proof,
    commit_quantity,
    derive_owner_key,
)
from stamp.crypto.generators import DALEK_DEFAULT_PEDERSEN, PROJECT_ORIGIN_PEDERSEN
from stamp.crypto.issuer_keys import IssuerKey, load_public_key, verify_signature
from stamp.crypto.pedersen import blinding_from_bytes
from stamp.crypto.transactions import (
    ISSUED_EVENT_TYPE,
    WITHDRAWN_EVENT_TYPE,
    build_issued_event,
    build_withdrawn_transaction,
    transaction_id,
)
from stamp.domain import CertificateContent, CertificateKey

# Every test here runs on both group backends (libsodium and libdecaf).
pytestmark = pytest.mark.usefixtures("each_backend")


VECTORS = Path(__file__).resolve().parent / "vectors" / "project-origin.txt"
V = dict(re.findall(r"^(\S+)(?: \(\d+ bytes\))?\s+= (\S+)$", VECTORS.read_text(), re.M))
CERTIFICATE_ID = "0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69"
NONCE = "6f1d0c55-2b1e-4f0e-8d8a-9b0f6f1b2c3d"
SALT = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
PROOF = bytes.fromhex(V["proof"])
TX = bytes.fromhex(V["transaction"])


def vector_request() -> IssueRequest:
    return IssueRequest(
        content=CertificateContent(
            key=CertificateKey("Narnia", CERTIFICATE_ID),
            recipient_id="0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69",
            metering_point_id="571234567890123456",
            certificate_type=2,
            quantity=1000,
            start=1_700_000_000,
            end=1_700_003_600,
            grid_area="DK1",
            clear_attributes=(("fuelCode", "F01040100"), ("techCode", "T010000")),
            hashed_attributes=(("assetId", "571234567890123456"),),
        ),
        recipient_public_key=bytes.fromhex(V["endpoint_key_hex"]),
        position=1,
        issuer_private_pem=IssuerKey.from_seed(bytes.fromhex(V["seed"])).private_pem(),
        blinding=blinding_from_bytes(bytes.fromhex(V["R"])),
        nonce=NONCE,
        salts=(SALT,),
    )


def test_builds_the_identical_vector_transaction() -> None:
    request = vector_request()
    assert request.blinding is not None and request.salts is not None
    owner = derive_owner_key(request.recipient_public_key, request.position)
    commitment = commit_quantity(request.content.quantity, request.blinding)
    signed = assemble_transaction(request, owner, commitment, PROOF, request.salts)
    assert len(signed.transaction) == len(TX) == 1132
    assert signed.transaction == TX
    assert signed.transaction_id == V["transaction_id"] == "gKySWbDaZpZlps/8ehClf2IPEjwZGTpGOmly2QYidQ8="


def test_transaction_id_is_base64_of_sha256_of_the_bytes() -> None:
    assert transaction_id(TX) == base64.b64encode(hashlib.sha256(TX).digest()).decode()
    assert transaction_id(TX) == V["transaction_id"]


def test_vector_proof_verifies_with_project_origin_generators_and_the_id_label() -> None:
    commitment = bytes.fromhex(V["C(q=1000)"])
    assert len(PROOF) == rangeproof.PROOF_SIZE == 608
    assert rangeproof.verify(PROOF, commitment, CERTIFICATE_ID.encode(), PROJECT_ORIGIN_PEDERSEN, 32)
    check_proof(PROOF, commitment, CERTIFICATE_ID)
    assert not rangeproof.verify(PROOF, commitment, CERTIFICATE_ID.encode(), DALEK_DEFAULT_PEDERSEN, 32)
    assert not rangeproof.verify(
        PROOF, commitment, CERTIFICATE_ID.upper().encode(), PROJECT_ORIGIN_PEDERSEN, 32
    )


def test_header_signature_verifies_with_the_exported_public_key() -> None:
    tx = registry_pb2.Transaction.FromString(TX)
    public = load_public_key(IssuerKey.from_seed(bytes.fromhex(V["seed"])).public_pem_base64())
    assert tx.header_signature.hex() == V["header_signature"]
    assert verify_signature(public, tx.header_signature, tx.header.SerializeToString())


def test_header_carries_stream_type_payload_hash_and_nonce() -> None:
    tx = registry_pb2.Transaction.FromString(TX)
    assert tx.header.federated_stream_id.registry == "Narnia"
    assert tx.header.federated_stream_id.stream_id.value == CERTIFICATE_ID
    assert tx.header.payload_type == ISSUED_EVENT_TYPE == "project_origin.electricity.v1.IssuedEvent"
    assert tx.header.payload_sha512.hex() == V["payload_sha512"]
    assert hashlib.sha512(tx.payload).digest() == tx.header.payload_sha512
    assert tx.header.nonce == NONCE


def test_issued_event_alone_matches_the_vector_payload() -> None:
    payload = build_issued_event(
        registry="Narnia",
        certificate_id=CERTIFICATE_ID,
        certificate_type=electricity_pb2.PRODUCTION,
        start=1_700_000_000,
        end=1_700_003_600,
        grid_area="DK1",
        commitment=bytes.fromhex(V["C(q=1000)"]),
        range_proof=PROOF,
        owner_public_key=bytes.fromhex(V["owner_key_pos_1"]),
        clear_attributes=[("fuelCode", "F01040100"), ("techCode", "T010000")],
        hashed_attributes=[("assetId", V["value_on_registry"])],
    )
    assert payload == registry_pb2.Transaction.FromString(TX).payload
    event = electricity_pb2.IssuedEvent.FromString(payload)
    assert event.asset_id_hash == b""
    assert event.owner_public_key.type == electricity_pb2.Secp256k1
    assert [(a.key, a.type) for a in event.attributes] == [
        ("fuelCode", electricity_pb2.CLEARTEXT),
        ("techCode", electricity_pb2.CLEARTEXT),
        ("assetId", electricity_pb2.HASHED),
    ]
    assert (event.period.start.seconds, event.period.start.nanos) == (1_700_000_000, 0)
    assert event.period.end.seconds == 1_700_003_600


def test_withdrawn_transaction_is_signed_over_an_empty_event() -> None:
    key = IssuerKey.from_seed(bytes.fromhex(V["seed"]))
    signed = build_withdrawn_transaction("Narnia", CERTIFICATE_ID, key, nonce=NONCE)
    tx = registry_pb2.Transaction.FromString(signed.transaction)
    assert tx.payload == b""
    assert tx.header.payload_type == WITHDRAWN_EVENT_TYPE == "project_origin.electricity.v1.WithdrawnEvent"
    assert tx.header.payload_sha512 == hashlib.sha512(b"").digest()
    assert tx.header.federated_stream_id.stream_id.value == CERTIFICATE_ID
    assert tx.header.nonce == NONCE
    assert verify_signature(key.public_key, tx.header_signature, tx.header.SerializeToString())
    assert signed.transaction_id == transaction_id(signed.transaction)


def test_withdrawn_transactions_get_a_fresh_uuid_nonce() -> None:
    key = IssuerKey.generate()
    first = build_withdrawn_transaction("Narnia", CERTIFICATE_ID, key)
    second = build_withdrawn_transaction("Narnia", CERTIFICATE_ID, key)
    assert first.transaction_id != second.transaction_id
    nonce = registry_pb2.Transaction.FromString(first.transaction).header.nonce
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", nonce)
