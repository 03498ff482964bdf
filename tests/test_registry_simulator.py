"""The registry simulator validates and answers like the Project Origin registry.

Every test talks to a real simulator over a real grpc.aio channel on loopback. Invalid
transactions are built here directly as protobufs and signed with real issuer keys;
valid proofs come from the Project Origin worked example or from Stamp's bundle builder.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos.project_origin.common.v1 import common_pb2
from protos.project_origin.electricity.v1 import electricity_pb2
from protos.project_origin.registry.v1 import registry_pb2, registry_pb2_grpc
from stamp.crypto.bundle import IssueRequest, build_issue_bundle
from stamp.crypto.hdkeys import ExtendedPrivateKey
from stamp.crypto.issuer_keys import IssuerKey
from stamp.crypto.transactions import build_withdrawn_transaction, transaction_id
from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
from stamp.devstack.registry_rules import ISSUED_EVENT, WITHDRAWN_EVENT, proof_deserializes
from stamp.domain import CertificateContent, CertificateKey
from tests.waiting import wait_until

VECTORS = Path("/work/shared/spec/vectors/project-origin.txt")
if not VECTORS.exists():  # a checkout without the shared folder carries its own copy
    VECTORS = Path(__file__).parent / "vectors" / "project-origin.txt"


def _read_vectors() -> dict[str, str]:
    values = {}
    for line in VECTORS.read_text().splitlines():
        match = re.fullmatch(r"(\S.*?)\s+= (\S+)", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


V = _read_vectors()
REGISTRY = "Narnia"
CERT_ID = "0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69"
VECTOR_TX_BYTES = bytes.fromhex(V["transaction (1132 bytes)"])
VECTOR_ISSUER = IssuerKey.from_pem(base64.b64decode(V["private_pem_base64"]).decode())
SECOND_DK1_ISSUER = IssuerKey.generate()
DK2_ISSUER = IssuerKey.generate()
STRANGER = IssuerKey.generate()

UNKNOWN = registry_pb2.UNKNOWN
PENDING = registry_pb2.PENDING
FAILED = registry_pb2.FAILED
COMMITTED = registry_pb2.COMMITTED


# --- building transactions -------------------------------------------------------------


def vector_tx() -> registry_pb2.Transaction:
    return registry_pb2.Transaction.FromString(VECTOR_TX_BYTES)


def vector_event() -> electricity_pb2.IssuedEvent:
    return electricity_pb2.IssuedEvent.FromString(vector_tx().payload)


def signed(
    payload: bytes,
    key: IssuerKey,
    *,
    stream_id: str = CERT_ID,
    registry: str = REGISTRY,
    payload_type: str = ISSUED_EVENT,
) -> registry_pb2.Transaction:
    header = registry_pb2.TransactionHeader(
        federated_stream_id=common_pb2.FederatedStreamId(
            registry=registry, stream_id=common_pb2.Uuid(value=stream_id)
        ),
        payload_type=payload_type,
        payload_sha512=hashlib.sha512(payload).digest(),
        nonce=str(uuid.uuid4()),
    )
    return registry_pb2.Transaction(
        header=header, header_signature=key.sign(header.SerializeToString()), payload=payload
    )


def issued(
    event: electricity_pb2.IssuedEvent, key: IssuerKey = VECTOR_ISSUER, **kw: Any
) -> registry_pb2.Transaction:
    return signed(event.SerializeToString(), key, **kw)


def withdrawn(key: IssuerKey, stream_id: str = CERT_ID) -> registry_pb2.Transaction:
    return signed(
        electricity_pb2.WithdrawnEvent().SerializeToString(),
        key,
        stream_id=stream_id,
        payload_type=WITHDRAWN_EVENT,
    )


def fresh_bundle_tx(
    certificate_id: str | None = None, *, start: int = 1_700_000_000, end: int = 1_700_003_600
) -> Any:
    recipient = ExtendedPrivateKey.generate().public()
    return build_issue_bundle(
        IssueRequest(
            content=CertificateContent(
                key=CertificateKey(REGISTRY, certificate_id or str(uuid.uuid4())),
                recipient_id="0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69",
                metering_point_id="571234567890123456",
                certificate_type=2,
                quantity=1234,
                start=start,
                end=end,
                grid_area="DK1",
                clear_attributes=(("fuelCode", "F01040100"),),
                hashed_attributes=(("assetId", "571234567890123456"),),
            ),
            recipient_public_key=recipient.to_bytes(),
            position=7,
            issuer_private_pem=SECOND_DK1_ISSUER.private_pem(),
        )
    )


def tx_id(tx: registry_pb2.Transaction) -> str:
    return transaction_id(tx.SerializeToString())


# --- a simulator and a client ---------------------------------------------------------------


@dataclass
class Registry:
    sim: RegistrySimulator
    channel: grpc.aio.Channel
    stub: registry_pb2_grpc.RegistryServiceStub

    async def send(self, *txs: registry_pb2.Transaction) -> list[str]:
        await self.stub.SendTransactions(registry_pb2.SendTransactionsRequest(transactions=txs), timeout=5)
        return [tx_id(tx) for tx in txs]

    async def status(self, id_: str, rpc_timeout: float = 5, wait_for_ready: bool = False) -> tuple[int, str]:
        response = await self.stub.GetTransactionStatus(
            registry_pb2.GetTransactionStatusRequest(id=id_),
            timeout=rpc_timeout,
            wait_for_ready=wait_for_ready,
        )
        return response.status, response.message

    async def settle(self, id_: str, within: float = 10) -> tuple[int, str]:
        """Poll until the status is no longer PENDING."""

        async def settled() -> tuple[int, str] | None:
            reply = await self.status(id_)
            return reply if reply[0] != PENDING else None

        return await wait_until(settled, timeout=within, interval=0.01, what=f"{id_} no longer PENDING")

    async def stream(self, stream_id: str) -> list[registry_pb2.Transaction]:
        response = await self.stub.GetStreamTransactions(
            registry_pb2.GetStreamTransactionsRequest(stream_id=common_pb2.Uuid(value=stream_id)), timeout=5
        )
        return list(response.transactions)


StartRegistry = Callable[..., Awaitable[Registry]]


async def _reads(registry: Registry, id_: str, state: int) -> bool:
    return (await registry.status(id_))[0] == state


@pytest.fixture
async def start_registry() -> AsyncIterator[StartRegistry]:
    started: list[Registry] = []

    async def start(**overrides: Any) -> Registry:
        settings: dict[str, Any] = {
            "registries": (REGISTRY,),
            "issuer_keys": {
                "DK1": (V["public_pem_base64"], SECOND_DK1_ISSUER.public_pem()),
                "DK2": (DK2_ISSUER.public_pem(),),
            },
            "commit_delay": 0.0,
        }
        settings.update(overrides)
        sim = RegistrySimulator(RegistrySimConfig(**settings))
        port = await sim.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = registry_pb2_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        registry = Registry(sim, channel, stub)
        started.append(registry)
        return registry

    yield start
    for registry in started:
        await registry.channel.close(grace=None)
        await registry.sim.stop()


@pytest.fixture
async def registry(start_registry: StartRegistry) -> Registry:
    return await start_registry()


# --- valid issuance --------------------------------------------------------------------------


async def test_project_origin_vector_transaction_is_committed(registry: Registry) -> None:
    [id_] = await registry.send(vector_tx())
    assert id_ == V["transaction_id"]
    assert await registry.settle(id_) == (COMMITTED, "")

    assert [t.SerializeToString() for t in await registry.stream(CERT_ID)] == [VECTOR_TX_BYTES]
    view = registry.sim.stream(CERT_ID)
    assert view is not None
    assert (view.registry, view.grid_area, view.type) == (REGISTRY, "DK1", "PRODUCTION")
    assert (view.start, view.end) == (1_700_000_000, 1_700_003_600)
    assert view.owner_public_key.hex() == V["owner_key_pos_1"]
    assert view.commitment.hex() == V["C(q=1000)"]
    assert [(a.key, a.value, a.hashed) for a in view.attributes] == [
        ("fuelCode", "F01040100", False),
        ("techCode", "T010000", False),
        ("assetId", V["value_on_registry"], True),
    ]
    assert not view.withdrawn
    assert view.transaction_ids == (id_,)


async def test_bundle_transaction_for_a_fresh_recipient_is_committed(registry: Registry) -> None:
    bundle = fresh_bundle_tx()
    tx = registry_pb2.Transaction.FromString(bundle.transaction)
    [id_] = await registry.send(tx)
    assert id_ == bundle.transaction_id
    assert await registry.settle(id_) == (COMMITTED, "")
    view = registry.sim.stream(tx.header.federated_stream_id.stream_id.value)
    assert view is not None
    assert view.owner_public_key == bundle.owner_public_key
    assert view.commitment == bundle.commitment


async def test_any_configured_key_of_the_grid_area_verifies(registry: Registry) -> None:
    [id_] = await registry.send(issued(vector_event(), SECOND_DK1_ISSUER))
    assert await registry.settle(id_) == (COMMITTED, "")


async def test_every_configured_registry_name_is_served(start_registry: StartRegistry) -> None:
    registry = await start_registry(registries=(REGISTRY, "Atlantis"))
    [id_] = await registry.send(issued(vector_event(), registry="Atlantis"))
    assert await registry.settle(id_) == (COMMITTED, "")
    view = registry.sim.stream(CERT_ID)
    assert view is not None and view.registry == "Atlantis"


async def test_period_of_exactly_one_minute_is_accepted(registry: Registry) -> None:
    event = vector_event()
    event.period.end.seconds = event.period.start.seconds + 60
    [id_] = await registry.send(issued(event))
    assert await registry.settle(id_) == (COMMITTED, "")


# --- each violation is FAILED with a message naming it ---------------------------------------


def _tampered_signature() -> registry_pb2.Transaction:
    tx = vector_tx()
    signature = bytearray(tx.header_signature)
    signature[10] ^= 0x01
    tx.header_signature = bytes(signature)
    return tx


def _tampered_header() -> registry_pb2.Transaction:
    tx = vector_tx()
    tx.header.nonce = str(uuid.uuid4())  # the signature no longer covers this header
    return tx


def _tampered_payload() -> registry_pb2.Transaction:
    # Another quantity's commitment in the payload, header (and its stale hash) kept:
    # payload_sha512 is not checked, the range proof catches it.
    tx = vector_tx()
    event = vector_event()
    event.quantity_commitment.content = bytes.fromhex(V["C(q=1)"])
    tx.payload = event.SerializeToString()
    return tx


def _tampered_proof() -> registry_pb2.Transaction:
    event = vector_event()
    proof = bytearray(event.quantity_commitment.range_proof)
    proof[40] ^= 0x01  # inside point S: still deserializes, no longer verifies
    event.quantity_commitment.range_proof = bytes(proof)
    return issued(event)


def _other_label() -> registry_pb2.Transaction:
    # The proof is bound to the certificate id: a proof made for another id fails.
    other = str(uuid.uuid4())
    event = vector_event()
    event.certificate_id.stream_id.value = other
    return issued(event, stream_id=other)


def _upper_case_id() -> registry_pb2.Transaction:
    event = vector_event()
    event.certificate_id.stream_id.value = CERT_ID.upper()
    return issued(event, stream_id=CERT_ID.upper())


def _period(seconds: int) -> Callable[[], registry_pb2.Transaction]:
    def build() -> registry_pb2.Transaction:
        event = vector_event()
        event.period.end.seconds = event.period.start.seconds + seconds
        return issued(event)

    return build


def _event_with(**changes: Any) -> Callable[[], registry_pb2.Transaction]:
    def build() -> registry_pb2.Transaction:
        event = vector_event()
        for name, value in changes.items():
            if name == "owner":
                event.owner_public_key.CopyFrom(value)
            else:
                setattr(event, name, value)
        return issued(event)

    return build


def _unknown_grid_area() -> registry_pb2.Transaction:
    event = vector_event()
    event.grid_area = "DK9"
    return issued(event)


def _grid_area_of_another_issuer() -> registry_pb2.Transaction:
    event = vector_event()
    event.grid_area = "DK2"
    return issued(event, VECTOR_ISSUER)  # DK1's issuer signing for DK2


VIOLATIONS: dict[str, tuple[Callable[[], registry_pb2.Transaction], str]] = {
    "tampered signature": (_tampered_signature, "Invalid issuer signature for GridArea ”DK1”"),
    "tampered header": (_tampered_header, "Invalid issuer signature for GridArea ”DK1”"),
    "tampered payload": (_tampered_payload, "Invalid range proof for Quantity commitment"),
    "tampered proof": (_tampered_proof, "Invalid range proof for Quantity commitment"),
    "proof for another certificate id": (_other_label, "Invalid range proof for Quantity commitment"),
    "upper-case certificate id": (_upper_case_id, "Invalid range proof for Quantity commitment"),
    "signed by an unknown key": (
        lambda: issued(vector_event(), STRANGER),
        "Invalid issuer signature for GridArea ”DK1”",
    ),
    "signed by another area's issuer": (
        _grid_area_of_another_issuer,
        "Invalid issuer signature for GridArea ”DK2”",
    ),
    "period of 59 s": (_period(59), "Invalid period, minimum period is 1 minute"),
    "period of 1 h 1 s": (_period(3601), "Invalid period, maximum period is 1 hour"),
    "end before start": (_period(-3600), "Invalid period, minimum period is 1 minute"),
    "unknown grid area": (_unknown_grid_area, "No issuer found for GridArea ”DK9”"),
    "wrong registry name": (
        lambda: issued(vector_event(), registry="Atlantis"),
        "Invalid registry for transaction",
    ),
    "stream id not a UUID": (
        lambda: issued(vector_event(), stream_id="cert-42"),
        "Invalid stream id ”cert-42”, not a UUID",
    ),
    "owner key off the curve": (
        _event_with(
            owner=electricity_pb2.PublicKey(content=b"\x02" + bytes(32), type=electricity_pb2.Secp256k1)
        ),
        "Invalid owner key, not a valid publicKey",
    ),
    "owner key of the wrong length": (
        _event_with(owner=electricity_pb2.PublicKey(content=bytes.fromhex(V["owner_key_pos_1"])[:32])),
        "Invalid owner key, not a valid publicKey",
    ),
    "type INVALID": (_event_with(type=electricity_pb2.INVALID), "Invalid certificate type"),
    "first failure decides": (
        _event_with(type=electricity_pb2.INVALID, grid_area="DK9"),
        "Invalid certificate type",
    ),
    "payload family not configured": (
        lambda: issued(vector_event(), payload_type="project_origin.gas.v1.IssuedEvent"),
        "No verifier found for transaction family project_origin.gas.v1",
    ),
    "payload type unknown in the family": (
        lambda: issued(vector_event(), payload_type="project_origin.electricity.v1.MintedEvent"),
        "Could not deserialize unknown type ”project_origin.electricity.v1.MintedEvent”",
    ),
    "payload does not parse": (
        lambda: signed(b"\xff\xff\xff", VECTOR_ISSUER),
        "Could not deserialize invalid payload of type ”project_origin.electricity.v1.IssuedEvent”",
    ),
}


@pytest.mark.parametrize("violation", list(VIOLATIONS))
async def test_violation_is_failed_with_a_message_naming_it(registry: Registry, violation: str) -> None:
    build, message = VIOLATIONS[violation]
    [id_] = await registry.send(build())
    assert await registry.settle(id_) == (FAILED, message)
    assert registry.sim.stream(CERT_ID) is None


async def test_second_issuance_for_the_same_certificate_fails_as_already_existing(registry: Registry) -> None:
    [first] = await registry.send(vector_tx())
    assert await registry.settle(first) == (COMMITTED, "")
    [second] = await registry.send(issued(vector_event()))  # a new nonce: a different transaction
    assert await registry.settle(second) == (
        FAILED,
        f'Certificate with id ”{{ "value": "{CERT_ID}" }}” already exists',
    )
    assert [tx_id(t) for t in await registry.stream(CERT_ID)] == [first]
    assert registry.sim.stream_counters(CERT_ID).distinct_issue_transactions == 2


async def test_already_exists_is_checked_before_the_proof(registry: Registry) -> None:
    await registry.settle((await registry.send(vector_tx()))[0])
    [id_] = await registry.send(_tampered_proof())
    state, message = await registry.settle(id_)
    assert (state, message.endswith("already exists")) == (FAILED, True)


async def test_a_proof_that_does_not_deserialize_stays_pending_as_in_the_real_registry(
    registry: Registry,
) -> None:
    event = vector_event()
    event.quantity_commitment.range_proof = event.quantity_commitment.range_proof[:-32]
    assert not proof_deserializes(event.quantity_commitment.range_proof)
    [id_] = await registry.send(issued(event))
    await wait_until(lambda: id_ in registry.sim.stuck(), what="stuck")
    assert await registry.status(id_) == (PENDING, "")


# --- statuses ---------------------------------------------------------------------------------


async def test_unknown_transaction_id_reads_unknown(registry: Registry) -> None:
    assert await registry.status(base64.b64encode(b"\x00" * 32).decode()) == (UNKNOWN, "")


async def test_transaction_id_that_is_not_base64_is_an_rpc_error(registry: Registry) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await registry.status("not base64!")
    assert error.value.code() == grpc.StatusCode.UNKNOWN


async def test_failed_status_expires_to_unknown(start_registry: StartRegistry) -> None:
    registry = await start_registry(failed_retention=0.3)
    [id_] = await registry.send(_tampered_signature())
    assert (await registry.settle(id_))[0] == FAILED
    await wait_until(lambda: _reads(registry, id_, UNKNOWN), what="UNKNOWN after the retention")


async def test_status_stays_pending_for_the_commit_delay(start_registry: StartRegistry) -> None:
    registry = await start_registry(commit_delay=0.4)
    [id_] = await registry.send(vector_tx())
    await registry.sim.wait_idle()
    assert await registry.status(id_) == (PENDING, "")
    assert registry.sim.stream(CERT_ID) is None
    assert await registry.stream(CERT_ID) == []
    await wait_until(lambda: _reads(registry, id_, COMMITTED), what="COMMITTED after the delay")
    assert registry.sim.stream(CERT_ID) is not None


async def test_resend_of_committed_bytes_within_the_status_cache_keeps_reading_committed(
    registry: Registry,
) -> None:
    [id_] = await registry.send(vector_tx())
    assert await registry.settle(id_) == (COMMITTED, "")
    await registry.send(vector_tx())
    await registry.sim.wait_idle()
    assert await registry.status(id_) == (COMMITTED, "")
    counters = registry.sim.stream_counters(CERT_ID)
    assert (counters.received, counters.distinct_issue_transactions, counters.resends) == (2, 1, 1)
    assert registry.sim.stats().failed == 1  # verified again, refused, status not downgraded


async def test_strict_resend_of_committed_bytes_reads_failed_already_exists(
    start_registry: StartRegistry,
) -> None:
    registry = await start_registry(strict=True)
    [id_] = await registry.send(vector_tx())
    assert await registry.settle(id_) == (COMMITTED, "")
    await registry.send(vector_tx())
    state, message = await registry.settle(id_)
    assert state == FAILED and message.endswith("already exists")
    assert [tx_id(t) for t in await registry.stream(CERT_ID)] == [id_]  # it is in the log all the same


async def test_resend_after_the_committed_cache_expired_fails_then_reads_committed_again(
    start_registry: StartRegistry,
) -> None:
    registry = await start_registry(committed_cache=0.1, failed_retention=0.3)
    [id_] = await registry.send(vector_tx())
    assert await registry.settle(id_) == (COMMITTED, "")
    await asyncio.sleep(0.15)  # time passes: the cached COMMITTED expires (not a wait for work)
    assert await registry.status(id_) == (COMMITTED, "")  # from the log
    await registry.send(vector_tx())
    assert (await registry.settle(id_))[0] == FAILED
    await wait_until(lambda: _reads(registry, id_, COMMITTED), what="COMMITTED once FAILED expired")


async def test_resend_while_pending_is_harmless(registry: Registry) -> None:
    registry.sim.hold(certificate_ids=[CERT_ID])
    [id_] = await registry.send(vector_tx())
    await registry.send(vector_tx())
    assert await registry.status(id_) == (PENDING, "")
    registry.sim.release()
    assert await registry.settle(id_) == (COMMITTED, "")
    await registry.sim.wait_idle()
    assert await registry.status(id_) == (COMMITTED, "")
    assert registry.sim.stream_counters(CERT_ID).resends == 1


# --- stream order and withdrawal ---------------------------------------------------------------


async def test_a_stream_is_processed_in_order(registry: Registry) -> None:
    # Withdrawal first in the batch: the certificate does not exist yet when it is verified.
    early, issue, late = withdrawn(VECTOR_ISSUER), vector_tx(), withdrawn(SECOND_DK1_ISSUER)
    ids = await registry.send(early, issue, late)
    assert await registry.settle(ids[0]) == (FAILED, "Certificate does not exist")
    assert await registry.settle(ids[1]) == (COMMITTED, "")
    assert await registry.settle(ids[2]) == (COMMITTED, "")
    assert [tx_id(t) for t in await registry.stream(CERT_ID)] == [ids[1], ids[2]]
    view = registry.sim.stream(CERT_ID)
    assert view is not None and view.withdrawn


async def test_later_transactions_of_a_held_stream_wait_behind_it(registry: Registry) -> None:
    issue = vector_tx()
    registry.sim.hold(transaction_ids=[tx_id(issue)])
    other = fresh_bundle_tx()
    [issue_id, withdraw_id, other_id] = await registry.send(
        issue, withdrawn(VECTOR_ISSUER), registry_pb2.Transaction.FromString(other.transaction)
    )
    assert await registry.settle(other_id) == (COMMITTED, "")  # other streams go on
    assert await registry.status(issue_id) == (PENDING, "")
    assert await registry.status(withdraw_id) == (PENDING, "")
    registry.sim.release(transaction_ids=[issue_id])
    assert await registry.settle(issue_id) == (COMMITTED, "")
    assert await registry.settle(withdraw_id) == (COMMITTED, "")


async def test_stream_transactions_of_an_unknown_stream_are_empty(registry: Registry) -> None:
    assert await registry.stream(str(uuid.uuid4())) == []


async def test_withdrawal_built_by_stamp_is_committed(registry: Registry) -> None:
    await registry.settle((await registry.send(vector_tx()))[0])
    withdrawal = build_withdrawn_transaction(REGISTRY, CERT_ID, VECTOR_ISSUER)
    [id_] = await registry.send(registry_pb2.Transaction.FromString(withdrawal.transaction))
    assert id_ == withdrawal.transaction_id
    assert await registry.settle(id_) == (COMMITTED, "")
    view = registry.sim.stream(CERT_ID)
    assert view is not None and view.withdrawn


async def test_withdrawal_needs_the_issuer_of_the_certificates_grid_area(registry: Registry) -> None:
    await registry.settle((await registry.send(vector_tx()))[0])
    for key in (DK2_ISSUER, STRANGER):
        [id_] = await registry.send(withdrawn(key))
        assert await registry.settle(id_) == (FAILED, "Invalid issuer signature for GridArea ”DK1”")
    view = registry.sim.stream(CERT_ID)
    assert view is not None and not view.withdrawn


async def test_withdrawal_of_a_withdrawn_certificate_fails(registry: Registry) -> None:
    await registry.settle((await registry.send(vector_tx()))[0])
    assert (await registry.settle((await registry.send(withdrawn(VECTOR_ISSUER)))[0]))[0] == COMMITTED
    [again] = await registry.send(withdrawn(VECTOR_ISSUER))
    assert await registry.settle(again) == (FAILED, "Certificate is already withdrawn")


async def test_withdrawal_of_an_unknown_certificate_fails(registry: Registry) -> None:
    [id_] = await registry.send(withdrawn(VECTOR_ISSUER, str(uuid.uuid4())))
    assert await registry.settle(id_) == (FAILED, "Certificate does not exist")


# --- fault injection -------------------------------------------------------------------------


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_failed_send_stores_nothing(registry: Registry, code: grpc.StatusCode) -> None:
    registry.sim.fail_next("SendTransactions", code=code)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await registry.send(vector_tx())
    assert error.value.code() == code
    await registry.sim.wait_idle()
    assert await registry.status(tx_id(vector_tx())) == (UNKNOWN, "")
    [id_] = await registry.send(vector_tx())  # the next call goes through
    assert await registry.settle(id_) == (COMMITTED, "")


async def test_accepted_then_errored_send_still_commits(registry: Registry) -> None:
    registry.sim.fail_next("SendTransactions", code=grpc.StatusCode.UNAVAILABLE, accept=True)
    with pytest.raises(grpc.aio.AioRpcError):
        await registry.send(vector_tx())
    assert await registry.settle(tx_id(vector_tx())) == (COMMITTED, "")
    assert registry.sim.stats().injected_errors == 1


async def test_status_calls_fail_the_requested_number_of_times(registry: Registry) -> None:
    [id_] = await registry.send(vector_tx())
    registry.sim.fail_next("GetTransactionStatus", 2)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await registry.status(id_)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await registry.settle(id_) == (COMMITTED, "")


async def test_added_latency_can_exceed_the_callers_deadline(registry: Registry) -> None:
    registry.sim.set_latency(0.5, "GetTransactionStatus")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await registry.status("AAAA", rpc_timeout=0.1)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    registry.sim.set_latency(0.0)
    assert await registry.status("AAAA", rpc_timeout=1) == (UNKNOWN, "")


async def test_held_certificate_stays_pending_until_released(registry: Registry) -> None:
    registry.sim.hold(certificate_ids=[CERT_ID.upper()])  # any spelling of the id
    [id_] = await registry.send(vector_tx())
    await wait_until(lambda: registry.sim.stats().held == 1, what="held")
    assert await registry.status(id_) == (PENDING, "")
    registry.sim.release(certificate_ids=[CERT_ID])
    assert await registry.settle(id_) == (COMMITTED, "")


async def test_forgetting_uncommitted_statuses_leaves_the_committed_log(registry: Registry) -> None:
    [committed] = await registry.send(fresh_bundle_tx_as_proto())
    [failed] = await registry.send(_tampered_signature())
    assert (await registry.settle(committed))[0] == COMMITTED
    assert (await registry.settle(failed))[0] == FAILED
    registry.sim.hold(certificate_ids=[CERT_ID])
    [pending] = await registry.send(vector_tx())

    registry.sim.forget_uncommitted()
    registry.sim.release()
    await registry.sim.wait_idle()
    assert await registry.status(committed) == (COMMITTED, "")
    assert await registry.status(failed) == (UNKNOWN, "")
    assert await registry.status(pending) == (UNKNOWN, "")  # lost with the queue
    assert await registry.stream(CERT_ID) == []


async def test_forced_failure_names_the_given_message(registry: Registry) -> None:
    registry.sim.force_failure(CERT_ID, "registry on fire")
    [id_] = await registry.send(vector_tx())
    assert await registry.settle(id_) == (FAILED, "registry on fire")
    registry.sim.clear_forced_failures()
    [again] = await registry.send(issued(vector_event()))
    assert await registry.settle(again) == (COMMITTED, "")


async def test_going_down_refuses_calls_and_coming_up_serves_the_same_port(registry: Registry) -> None:
    [id_] = await registry.send(vector_tx())
    assert await registry.settle(id_) == (COMMITTED, "")
    port = registry.sim.port
    await registry.sim.go_down()
    assert not registry.sim.is_up
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await registry.status(id_, rpc_timeout=1)
    assert error.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    await registry.sim.go_up()
    assert registry.sim.port == port
    assert await registry.status(id_, rpc_timeout=5, wait_for_ready=True) == (COMMITTED, "")


async def test_restart_loses_pending_transactions(registry: Registry) -> None:
    registry.sim.hold(certificate_ids=[CERT_ID])
    [id_] = await registry.send(vector_tx())
    await registry.sim.restart()
    registry.sim.release()
    assert await registry.status(id_, rpc_timeout=5, wait_for_ready=True) == (UNKNOWN, "")


# --- load-test mode and counters ----------------------------------------------------------------


async def test_sampled_proof_verification_is_reported(start_registry: StartRegistry) -> None:
    registry = await start_registry(proof_sample=2)
    bad = [_tampered_proof_for(str(uuid.uuid4())) for _ in range(2)]
    ids = await registry.send(*bad)
    outcomes = sorted([(await registry.settle(i))[0] for i in ids])
    assert outcomes == [FAILED, COMMITTED]  # one proof not checked at all
    stats = registry.sim.stats()
    assert (stats.proofs_verified, stats.proofs_skipped) == (1, 1)
    assert "SAMPLED, 1 in 2" in registry.sim.report()


async def test_every_proof_is_verified_by_default(registry: Registry) -> None:
    ids = await registry.send(vector_tx(), fresh_bundle_tx_as_proto())
    for id_ in ids:
        assert (await registry.settle(id_))[0] == COMMITTED
    assert (registry.sim.stats().proofs_verified, registry.sim.stats().proofs_skipped) == (2, 0)
    assert "all verified" in registry.sim.report()


async def test_stats_count_what_was_received_and_decided(registry: Registry) -> None:
    ids = await registry.send(vector_tx(), _period(30)(), vector_tx())
    for id_ in ids:
        await registry.settle(id_)
    await registry.sim.wait_idle()
    stats = registry.sim.stats()
    assert (stats.send_calls, stats.received, stats.distinct, stats.resends) == (1, 3, 2, 1)
    assert (stats.committed, stats.failed, stats.queued) == (1, 2, 0)
    assert stats.status_calls >= 3


async def test_many_streams_in_one_call_are_all_committed(registry: Registry) -> None:
    bundles = [fresh_bundle_tx() for _ in range(6)]
    ids = await registry.send(*(registry_pb2.Transaction.FromString(b.transaction) for b in bundles))
    for id_ in ids:
        assert await registry.settle(id_) == (COMMITTED, "")
    assert len(registry.sim.streams()) == 6


def test_configuration_refuses_a_key_that_is_not_a_public_key() -> None:
    with pytest.raises(ValueError, match="grid area 'DK1'"):
        RegistrySimConfig(issuer_keys={"DK1": ("not a key",)})


# --- helpers used above ----------------------------------------------------------------------------


def fresh_bundle_tx_as_proto() -> registry_pb2.Transaction:
    return registry_pb2.Transaction.FromString(fresh_bundle_tx().transaction)


def _tampered_proof_for(certificate_id: str) -> registry_pb2.Transaction:
    tx = registry_pb2.Transaction.FromString(fresh_bundle_tx(certificate_id).transaction)
    event = electricity_pb2.IssuedEvent.FromString(tx.payload)
    proof = bytearray(event.quantity_commitment.range_proof)
    proof[40] ^= 0x01
    event.quantity_commitment.range_proof = bytes(proof)
    return issued(event, SECOND_DK1_ISSUER, stream_id=certificate_id)


async def test_verification_can_run_in_a_process_pool(start_registry: StartRegistry) -> None:
    registry = await start_registry(executor="process", workers=1)
    ids = await registry.send(vector_tx(), _tampered_proof_for(str(uuid.uuid4())))
    assert await registry.settle(ids[0], within=30) == (COMMITTED, "")
    assert await registry.settle(ids[1], within=30) == (FAILED, "Invalid range proof for Quantity commitment")
