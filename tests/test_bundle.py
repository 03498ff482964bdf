"""The issue bundle a worker process builds: everything in it checks out (docs/crypto.md §1–§6)."""

from __future__ import annotations

import dataclasses
import pickle
import uuid
from concurrent.futures import ProcessPoolExecutor

import coincurve
import pytest

from protos.project_origin.electricity.v1 import electricity_pb2
from protos.project_origin.registry.v1 import registry_pb2
from stamp.crypto import rangeproof
from stamp.crypto.attributes import hash_attribute
from stamp.crypto.bundle import (
    BundleError,
    IssueBundle,
    IssueRequest,
    build_issue_bundle,
    check_proof,
    issuer_key,
)
from stamp.crypto.generators import PROJECT_ORIGIN_PEDERSEN
from stamp.crypto.hdkeys import ExtendedPrivateKey
from stamp.crypto.issuer_keys import IssuerKey, verify_signature
from stamp.crypto.pedersen import blinding_from_bytes, opens
from stamp.crypto.transactions import ISSUED_EVENT_TYPE, transaction_id
from stamp.domain import CertificateContent, CertificateKey
from tests.test_transaction_vector import CERTIFICATE_ID, PROOF, TX, vector_request

# Every test here runs on both group backends (libsodium and libdecaf).
pytestmark = pytest.mark.usefixtures("each_backend")

WALLET = ExtendedPrivateKey.generate().child(1)
ISSUER = IssuerKey.generate("DK1")


def fresh_request(**changes: object) -> IssueRequest:
    request = IssueRequest(
        content=CertificateContent(
            key=CertificateKey("Narnia", str(uuid.uuid4())),
            recipient_id="0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69",
            metering_point_id="571234567890123456",
            certificate_type=1,
            quantity=4_294_967_295,
            start=1_700_000_000,
            end=1_700_000_900,
            grid_area="DK1",
            clear_attributes=(("fuelCode", "F01040100"),),
            hashed_attributes=(("assetId", "571234567890123456"), ("address", "Ærø 1")),
        ),
        recipient_public_key=WALLET.public().to_bytes(),
        position=2_147_483_647,
        issuer_private_pem=ISSUER.private_pem(),
    )
    # A change of a content field (the id included) changes the content.
    certificate_id = changes.pop("certificate_id", None)
    content_fields = {name: changes.pop(name) for name in CONTENT_FIELDS if name in changes}
    content = dataclasses.replace(request.content, **content_fields)  # type: ignore[arg-type]
    if certificate_id is not None:
        key = CertificateKey("Narnia", str(certificate_id))
        content = dataclasses.replace(content, key=key)
    return dataclasses.replace(request, content=content, **changes)  # type: ignore[arg-type]


CONTENT_FIELDS = {f.name for f in dataclasses.fields(CertificateContent)}


def _event(bundle: IssueBundle) -> tuple[registry_pb2.Transaction, electricity_pb2.IssuedEvent]:
    tx = registry_pb2.Transaction.FromString(bundle.transaction)
    return tx, electricity_pb2.IssuedEvent.FromString(tx.payload)


def test_a_bundle_with_fresh_randomness_checks_out() -> None:
    request = fresh_request()
    content = request.content
    bundle = build_issue_bundle(request)
    tx, event = _event(bundle)
    label = content.key.certificate_id.encode()
    r = blinding_from_bytes(bundle.blinding)

    assert bundle.transaction_id == transaction_id(bundle.transaction)
    assert tx.header.payload_type == ISSUED_EVENT_TYPE
    assert verify_signature(ISSUER.public_pem_base64(), tx.header_signature, tx.header.SerializeToString())
    assert event.certificate_id.stream_id.value == request.content.key.certificate_id
    assert event.type == electricity_pb2.CONSUMPTION
    # the proof verifies, and the commitment opens with the quantity and the returned R
    assert event.quantity_commitment.content == bundle.commitment
    assert rangeproof.verify(
        event.quantity_commitment.range_proof, bundle.commitment, label, PROJECT_ORIGIN_PEDERSEN
    )
    assert opens(bundle.commitment, request.content.quantity, r)
    # the owner key is the endpoint's child at the position, and the wallet holds its private key
    assert event.owner_public_key.content == bundle.owner_public_key
    assert bundle.owner_public_key == WALLET.public().child_public_key(request.position)
    private = WALLET.private_key_at(request.position)
    assert coincurve.PrivateKey(private).public_key.format() == bundle.owner_public_key
    # hashed attributes recompute from the returned salts, in order
    assert len(bundle.salts) == 2 and all(len(s) == 16 for s in bundle.salts)
    registry_values = [(a.key, a.value, a.type) for a in event.attributes]
    assert registry_values == [
        ("fuelCode", "F01040100", electricity_pb2.CLEARTEXT),
        *(
            (key, hash_attribute(key, value, content.key.certificate_id, salt), electricity_pb2.HASHED)
            for (key, value), salt in zip(content.hashed_attributes, bundle.salts, strict=True)
        ),
    ]


def test_two_bundles_for_the_same_request_share_nothing_random() -> None:
    request = fresh_request()
    first, second = build_issue_bundle(request), build_issue_bundle(request)
    assert first.owner_public_key == second.owner_public_key
    assert first.blinding != second.blinding
    assert first.commitment != second.commitment
    assert set(first.salts).isdisjoint(second.salts)
    assert first.transaction_id != second.transaction_id


def test_vector_inputs_give_the_vector_transaction_except_for_the_fresh_proof() -> None:
    bundle = build_issue_bundle(vector_request())
    tx, event = _event(bundle)
    vector_tx = registry_pb2.Transaction.FromString(TX)
    vector_event = electricity_pb2.IssuedEvent.FromString(vector_tx.payload)
    assert event.quantity_commitment.range_proof != PROOF
    check_proof(event.quantity_commitment.range_proof, bundle.commitment, CERTIFICATE_ID)
    event.quantity_commitment.range_proof = PROOF
    assert event == vector_event
    assert event.SerializeToString() == vector_tx.payload
    assert tx.header.nonce == vector_tx.header.nonce


def test_timings_name_every_phase() -> None:
    timings: dict[str, float] = {}
    build_issue_bundle(fresh_request(), timings)
    assert set(timings) == {"derive", "commit", "prove", "verify", "sign"}
    assert all(t > 0 for t in timings.values())
    assert timings["prove"] > timings["sign"]


def test_verification_can_be_left_out() -> None:
    timings: dict[str, float] = {}
    bundle = build_issue_bundle(fresh_request(verify_proof=False), timings)
    assert "verify" not in timings
    _, event = _event(bundle)
    assert len(event.quantity_commitment.range_proof) == rangeproof.PROOF_SIZE


def test_check_proof_refuses_a_tampered_or_truncated_proof() -> None:
    commitment = bytes.fromhex("40041b5705dd78c3f2b3979b36cf4e84230fa9b0f46a895080b8eb31d9b3ef08")
    tampered = PROOF[:100] + bytes([PROOF[100] ^ 1]) + PROOF[101:]
    with pytest.raises(BundleError, match="does not verify"):
        check_proof(tampered, commitment, CERTIFICATE_ID)
    with pytest.raises(BundleError, match="wrong size"):
        check_proof(PROOF[:-32], commitment, CERTIFICATE_ID)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"certificate_id": CERTIFICATE_ID.upper()}, "canonical lower-case UUID"),
        ({"certificate_id": "not-a-uuid"}, "canonical lower-case UUID"),
        ({"certificate_id": CERTIFICATE_ID.replace("-", "")}, "canonical lower-case UUID"),
        ({"certificate_type": 0}, "certificate_type"),
        ({"quantity": 2**32}, "quantity"),
        ({"quantity": -1}, "quantity"),
        ({"position": 2**31}, "position"),
        ({"position": -1}, "position"),
        ({"recipient_public_key": bytes(73)}, "74 bytes"),
        ({"salts": (bytes(16),)}, "one 16-byte salt per hashed attribute"),
        ({"salts": (bytes(16), bytes(15))}, "one 16-byte salt per hashed attribute"),
        ({"issuer_private_pem": "garbage"}, "PEM"),
    ],
)
def test_refuses_requests_the_registry_or_wallet_could_not_use(
    changes: dict[str, object], message: str
) -> None:

    with pytest.raises(BundleError, match=message):
        build_issue_bundle(fresh_request(**changes))


def test_secrets_stay_out_of_reprs() -> None:
    request = fresh_request()
    bundle = build_issue_bundle(request)
    request_text, bundle_text = repr(request), repr(bundle)
    assert "PRIVATE KEY" not in request_text
    assert ISSUER.private_pem_base64()[:40] not in request_text
    for salt in bundle.salts:
        assert repr(salt) not in bundle_text and salt.hex() not in bundle_text
    assert repr(bundle.blinding) not in bundle_text and bundle.blinding.hex() not in bundle_text
    seeded = vector_request()
    assert str(seeded.blinding) not in repr(seeded)


def test_issuer_keys_are_parsed_once_per_pem() -> None:
    pem = ISSUER.private_pem()
    assert issuer_key(pem) is issuer_key(pem)
    assert issuer_key(pem).public_key == ISSUER.public_key


def test_request_and_bundle_survive_a_worker_process() -> None:
    request = fresh_request()
    assert pickle.loads(pickle.dumps(request)) == request
    with ProcessPoolExecutor(max_workers=1) as pool:
        bundle = pool.submit(build_issue_bundle, request).result(timeout=60)
    assert pickle.loads(pickle.dumps(bundle)) == bundle
    _, event = _event(bundle)
    assert rangeproof.verify(
        event.quantity_commitment.range_proof,
        bundle.commitment,
        request.content.key.certificate_id.encode(),
        PROJECT_ORIGIN_PEDERSEN,
    )
    assert opens(bundle.commitment, request.content.quantity, blinding_from_bytes(bundle.blinding))
