"""Withdrawal end to end: Stamp over HTTP with a real PostgreSQL and the registry and
wallet simulators (docs/withdrawal.md)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from protos.project_origin.registry.v1 import registry_pb2
from stamp.crypto.issuer_keys import IssuerKey, verify_signature
from stamp.crypto.transactions import WITHDRAWN_EVENT_TYPE, build_withdrawn_transaction, transaction_id
from stamp.db import withdrawals
from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
from stamp.devstack.wallet import WalletSimConfig, WalletSimulator
from stamp.domain import CertificateKey
from stamp.gateways.registry_client import RegistryClient, TxStatus
from tests.stack import (
    GRID_AREA,
    ISSUER,
    REGISTRY,
    Stack,
    certificate_body,
    running_stack,
    serving,
    stack_settings,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(database_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(database_dsn, tmp_path_factory.mktemp("stamp")) as running:
        yield running


# --- helpers -----------------------------------------------------------------------------------


async def withdraw(stack: Stack, certificate_id: str, registry: str = REGISTRY) -> tuple[int, dict[str, Any]]:
    url = f"{stack.base}/v1/certificates/{registry}/{certificate_id}/withdraw"
    async with stack.http.post(url) as response:
        return response.status, await response.json(content_type=None)


async def feed(stack: Stack, query: str = "") -> tuple[int, dict[str, Any]]:
    async with stack.http.get(f"{stack.base}/v1/certificates/withdrawn{query}") as response:
        return response.status, await response.json(content_type=None)


async def post_certificate(stack: Stack, body: dict[str, Any]) -> str:
    status, answer = await stack.post_certificate(body)
    assert status == 202, answer
    certificate_id: str = body["certificate"]["id"]
    return certificate_id


async def delivered_certificate(stack: Stack, recipient: str | None = None) -> dict[str, Any]:
    body = certificate_body(recipient or await stack.create_recipient())
    certificate_id = await post_certificate(stack, body)
    states = await stack.wait_terminal([(REGISTRY, certificate_id)])
    assert states[certificate_id] == "delivered"
    return body


async def wait_state(stack: Stack, certificate_id: str, state: str, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if (
                await stack.pool.fetchval("SELECT state FROM certificates WHERE id = $1", certificate_id)
                == state
            ):
                return
            await asyncio.sleep(0.02)


async def wait_withdrawal(stack: Stack, certificate_id: str, *states: str, timeout: float = 30) -> Any:
    """The withdrawal row once it is in one of ``states`` (default: settled)."""
    wanted = states or ("committed", "failed")
    key = CertificateKey(REGISTRY, certificate_id)
    async with asyncio.timeout(timeout):
        while True:
            row = await withdrawals.get_withdrawal(stack.pool, key)
            if row is not None and row["state"] in wanted:
                return row
            await asyncio.sleep(0.02)


async def event_types(stack: Stack, certificate_id: str) -> list[str]:
    status, view = await stack.get_certificate(REGISTRY, certificate_id)
    assert status == 200
    return [e["type"] for e in view["events"]]


def withdrawals_received(registry: RegistrySimulator, certificate_id: str) -> list[registry_pb2.Transaction]:
    return [
        tx
        for tx in registry.stream_transactions(certificate_id)
        if tx.header.payload_type == WITHDRAWN_EVENT_TYPE
    ]


# --- withdrawing ---------------------------------------------------------------------------------


async def test_withdrawing_a_delivered_certificate_withdraws_its_stream_in_the_registry(stack: Stack) -> None:
    certificate_id = (await delivered_certificate(stack))["certificate"]["id"]
    status, answer = await withdraw(stack, certificate_id)
    assert status == 201, answer
    assert set(answer) == {"id", "registryName", "certificateId", "withdrawnDate"}
    assert isinstance(answer["id"], int)
    assert (answer["registryName"], answer["certificateId"]) == (REGISTRY, certificate_id)
    assert datetime.fromisoformat(answer["withdrawnDate"].replace("Z", "+00:00")).tzinfo is not None

    row = await wait_withdrawal(stack, certificate_id)
    assert row["state"] == "committed" and row["id"] == answer["id"]
    stream = stack.registry.stream(certificate_id)
    assert stream is not None and stream.withdrawn

    _, view = await stack.get_certificate(REGISTRY, certificate_id)
    assert view["state"] == "delivered"  # the issuance history stays as it was
    events = {e["type"]: e for e in view["events"]}
    assert [e["type"] for e in view["events"]][-2:] == [
        "CertificateWithdrawn",
        "CertificateWithdrawalCommitted",
    ]
    for name in ("CertificateWithdrawn", "CertificateWithdrawalCommitted"):
        assert events[name]["detail"]["withdrawalId"] == answer["id"]
        assert events[name]["detail"]["transactionId"] == row["transaction_id"]


async def test_the_persisted_withdrawal_is_what_the_registry_received(stack: Stack) -> None:
    certificate_id = (await delivered_certificate(stack))["certificate"]["id"]
    assert (await withdraw(stack, certificate_id))[0] == 201
    row = await wait_withdrawal(stack, certificate_id, "committed")
    persisted = bytes(row["transaction"])
    assert row["transaction_id"] == transaction_id(persisted)
    [received] = withdrawals_received(stack.registry, certificate_id)
    assert received.SerializeToString() == persisted
    assert received.header.federated_stream_id.registry == REGISTRY
    assert received.header.federated_stream_id.stream_id.value == certificate_id
    assert verify_signature(
        ISSUER.public_pem(), received.header_signature, received.header.SerializeToString()
    )


async def test_a_second_withdrawal_is_a_conflict_and_sends_nothing(stack: Stack) -> None:
    certificate_id = (await delivered_certificate(stack))["certificate"]["id"]
    first, answer = await withdraw(stack, certificate_id)
    assert first == 201
    second, problem = await withdraw(stack, certificate_id)
    assert second == 409
    assert "already withdrawn" in problem["detail"] and str(answer["id"]) in problem["detail"]
    await wait_withdrawal(stack, certificate_id, "committed")
    third, _ = await withdraw(stack, certificate_id)
    assert third == 409
    assert len(withdrawals_received(stack.registry, certificate_id)) == 1
    assert stack.registry.stream_counters(certificate_id).received == 2  # the issuance and one withdrawal


async def test_concurrent_withdrawals_of_one_certificate_make_one_withdrawal(stack: Stack) -> None:
    certificate_id = (await delivered_certificate(stack))["certificate"]["id"]
    answers = await asyncio.gather(*(withdraw(stack, certificate_id) for _ in range(5)))
    assert sorted(status for status, _ in answers) == [201, 409, 409, 409, 409]
    await wait_withdrawal(stack, certificate_id, "committed")
    assert len(withdrawals_received(stack.registry, certificate_id)) == 1


async def test_an_unknown_certificate_is_404(stack: Stack) -> None:
    status, problem = await withdraw(stack, str(uuid.uuid4()))
    assert status == 404 and problem["status"] == 404
    certificate_id = (await delivered_certificate(stack))["certificate"]["id"]
    assert (await withdraw(stack, certificate_id, registry="Atlantis"))[0] == 404
    assert (await withdraw(stack, "not-a-uuid"))[0] == 400
    status, problem = await withdraw(stack, certificate_id, registry="Nar%00nia")
    assert status == 400 and [e["field"] for e in problem["errors"]] == ["registryName"]


async def wait_withheld_and_withdrawn(stack: Stack, certificate_id: str) -> Any:
    """A certificate withdrawn before delivery: withheld, its withdrawal committed, its
    stream withdrawn in the registry and nothing in any wallet."""
    assert (await stack.wait_terminal([(REGISTRY, certificate_id)]))[certificate_id] == "withheld"
    row = await wait_withdrawal(stack, certificate_id)
    assert row["state"] == "committed", row["reason"]
    stream = stack.registry.stream(certificate_id)
    assert stream is not None and stream.withdrawn
    assert stack.wallet.received_requests(certificate_id) == []
    [received] = withdrawals_received(stack.registry, certificate_id)
    assert received.SerializeToString() == bytes(row["transaction"])
    return row


async def test_a_certificate_withdrawn_at_once_is_issued_withdrawn_and_never_delivered(stack: Stack) -> None:
    """The existing Stamp's own test: post, then withdraw at once, expecting 201."""
    body = certificate_body(await stack.create_recipient())
    certificate_id = await post_certificate(stack, body)
    status, answer = await withdraw(stack, certificate_id)
    assert status == 201, answer
    assert (answer["registryName"], answer["certificateId"]) == (REGISTRY, certificate_id)
    row = await wait_withheld_and_withdrawn(stack, certificate_id)
    assert row["id"] == answer["id"]
    _, view = await stack.get_certificate(REGISTRY, certificate_id)
    assert view["state"] == "withheld" and view["withdrawn"] is True
    events = [(e["type"], e["state"]) for e in view["events"]]
    withdrawn_at = next(i for i, e in enumerate(events) if e[0] == "CertificateWithdrawn")
    assert events[withdrawn_at][1] in ("stored", "sent_to_registry", "marked_as_issued")
    assert ("CertificateNotDelivered", "withheld") in events
    assert "CertificateSentToWallet" not in [t for t, _ in events]
    not_delivered = next(e for e in view["events"] if e["type"] == "CertificateNotDelivered")
    assert "not delivered" in not_delivered["detail"]["reason"]
    # The WithdrawnEvent went out only after the IssuedEvent was committed.
    types = [t for t, _ in events]
    assert types.index("CertificateIssuedInRegistry") < types.index("CertificateWithdrawalCommitted")


async def test_a_certificate_withdrawn_while_in_the_registry_waits_for_its_issuance(stack: Stack) -> None:
    body = certificate_body(await stack.create_recipient())
    certificate_id = body["certificate"]["id"]
    stack.registry.hold(certificate_ids=[certificate_id])
    try:
        await post_certificate(stack, body)
        await wait_state(stack, certificate_id, "sent_to_registry")
        status, answer = await withdraw(stack, certificate_id)
        assert status == 201, answer
        assert await stack.pool.fetchval("SELECT withdrawn FROM certificates WHERE id = $1", certificate_id)
        await asyncio.sleep(1.5)  # a lease sweep or two: nothing may be sent while the issuance is pending
        row = await withdrawals.get_withdrawal(stack.pool, CertificateKey(REGISTRY, certificate_id))
        assert row is not None and row["state"] == "pending"
        assert withdrawals_received(stack.registry, certificate_id) == []
        assert (
            await stack.pool.fetchval("SELECT state FROM certificates WHERE id = $1", certificate_id)
            == "sent_to_registry"
        )
    finally:
        stack.registry.release(certificate_ids=[certificate_id])
    await wait_withheld_and_withdrawn(stack, certificate_id)
    types = await event_types(stack, certificate_id)
    assert types.index("CertificateWithdrawn") < types.index("CertificateIssuedInRegistry")
    assert types.index("CertificateIssuedInRegistry") < types.index("CertificateWithdrawalCommitted")


async def test_the_certificate_view_shows_the_withdrawals_own_state(stack: Stack) -> None:
    body = certificate_body(await stack.create_recipient())
    certificate_id = body["certificate"]["id"]
    stack.registry.hold(certificate_ids=[certificate_id])
    try:
        await post_certificate(stack, body)
        await wait_state(stack, certificate_id, "sent_to_registry")
        _, view = await stack.get_certificate(REGISTRY, certificate_id)
        assert "withdrawal" not in view  # not withdrawn: no withdrawal object at all
        status, answer = await withdraw(stack, certificate_id)
        assert status == 201, answer
        _, view = await stack.get_certificate(REGISTRY, certificate_id)
        pending = view["withdrawal"]
        assert view["withdrawn"] is True
        assert pending["state"] == "pending" and pending["reason"] is None
        assert pending["id"] == answer["id"] and pending["withdrawnAt"] == answer["withdrawnDate"]
    finally:
        stack.registry.release(certificate_ids=[certificate_id])
    row = await wait_withdrawal(stack, certificate_id)
    _, view = await stack.get_certificate(REGISTRY, certificate_id)
    committed = view["withdrawal"]
    assert committed["state"] == "committed" == row["state"]
    assert committed["transactionId"] == row["transaction_id"]
    assert committed["withdrawnAt"] == answer["withdrawnDate"]
    assert committed["updatedAt"] >= committed["withdrawnAt"]
    assert set(committed) == {"id", "state", "reason", "transactionId", "withdrawnAt", "updatedAt"}


async def test_a_certificate_withdrawn_between_wallet_attempts_is_not_delivered(stack: Stack) -> None:
    reference = stack.wallet.create_endpoint()
    async with stack.http.post(
        f"{stack.base}/v1/recipients", json={"walletEndpointReference": reference.as_json()}
    ) as response:
        recipient = (await response.json())["id"]
    stack.wallet.fail_endpoint(reference, status=503)  # transient: Stamp keeps trying
    try:
        body = certificate_body(recipient)
        certificate_id = await post_certificate(stack, body)
        await wait_state(stack, certificate_id, "marked_as_issued")
        status, _ = await withdraw(stack, certificate_id)
        assert status == 201
    finally:
        stack.wallet.clear_faults(reference)
    await wait_withheld_and_withdrawn(stack, certificate_id)


async def test_a_delivery_already_on_its_way_completes_and_the_history_shows_the_order(stack: Stack) -> None:
    body = certificate_body(await stack.create_recipient())
    certificate_id = body["certificate"]["id"]
    stack.wallet.hang_next(2.0, accept=True)  # the wallet takes its time with this slice
    await post_certificate(stack, body)
    await wait_state(stack, certificate_id, "marked_as_issued")
    await asyncio.sleep(0.3)  # the delivery is on its way
    status, _ = await withdraw(stack, certificate_id)
    assert status == 201
    await stack.wait_terminal([(REGISTRY, certificate_id)])
    _, view = await stack.get_certificate(REGISTRY, certificate_id)
    assert view["state"] == "delivered", [(e["type"], e["detail"]) for e in view["events"]][4:]
    assert (await wait_withdrawal(stack, certificate_id))["state"] == "committed"
    types = await event_types(stack, certificate_id)
    # The wallet took the slice after the withdrawal was recorded; it drops it on the feed.
    assert types.index("CertificateWithdrawn") < types.index("CertificateSentToWallet")


async def test_a_certificate_failed_at_the_registry_step_is_withdrawn_once_retried(stack: Stack) -> None:
    body = certificate_body(await stack.create_recipient())
    certificate_id = body["certificate"]["id"]
    stack.registry.fail_next("SendTransactions", stack.settings.registry_retry.max_attempts)
    await post_certificate(stack, body)
    assert (await stack.wait_terminal([(REGISTRY, certificate_id)]))[certificate_id] == "failed"
    status, _ = await withdraw(stack, certificate_id)
    assert status == 201
    await asyncio.sleep(1.0)
    row = await withdrawals.get_withdrawal(stack.pool, CertificateKey(REGISTRY, certificate_id))
    assert row is not None and row["state"] == "pending"  # not known to be issued: it waits
    async with stack.http.post(f"{stack.base}/v1/certificates/{REGISTRY}/{certificate_id}/retry") as response:
        assert response.status == 202, await response.text()
    await wait_withheld_and_withdrawn(stack, certificate_id)


async def test_a_certificate_that_failed_before_its_transaction_was_built_is_moot_at_once(
    stack: Stack,
) -> None:
    # A certificate left failed at the crypto step by an earlier run (e.g. its grid
    # area's key was missing then): the row as that failure wrote it, in the real schema.
    recipient = await stack.create_recipient()
    certificate_id = str(uuid.uuid4())
    await stack.pool.execute(
        "INSERT INTO certificates (registry_name, id, recipient_id, metering_point_id, certificate_type, "
        "quantity, period_start, period_end, grid_area, request_digest, state, failed_step, failure_reason, "
        "attempts) VALUES ($1, $2, $3, '571234567890999999', 2, 10, 1700000000, 1700003600, $4, "
        "'\\x00', 'failed', 'crypto', 'signing failed', 5)",
        REGISTRY,
        certificate_id,
        recipient,
        GRID_AREA,
    )
    status, answer = await withdraw(stack, certificate_id)
    assert status == 201, answer
    row = await withdrawals.get_withdrawal(stack.pool, CertificateKey(REGISTRY, certificate_id))
    assert row is not None and row["state"] == "moot"  # in the same transaction as the 201
    assert "never sent to the registry" in row["reason"]
    _, page = await feed(stack, f"?lastWithdrawnId={answer['id'] - 1}")
    assert answer["id"] not in [w["id"] for w in page["result"]]
    assert await event_types(stack, certificate_id) == ["CertificateWithdrawn", "CertificateWithdrawalMoot"]
    async with stack.http.post(f"{stack.base}/v1/certificates/{REGISTRY}/{certificate_id}/retry") as response:
        assert response.status == 409  # never issued now: the withdrawal stays moot
    await asyncio.sleep(0.6)
    assert stack.registry.stream(certificate_id) is None


async def test_a_withdrawal_is_moot_when_the_registry_rejects_the_issuance(stack: Stack) -> None:
    body = certificate_body(await stack.create_recipient())
    certificate_id = body["certificate"]["id"]
    stack.registry.hold(certificate_ids=[certificate_id])
    stack.registry.force_failure(certificate_id, "grid area DK1 is closed")
    try:
        await post_certificate(stack, body)
        await wait_state(stack, certificate_id, "sent_to_registry")
        status, answer = await withdraw(stack, certificate_id)
        assert status == 201
        _, page = await feed(stack, f"?lastWithdrawnId={answer['id'] - 1}&limit=1")
        assert page["result"] == [answer]  # listed while it is pending
        stack.registry.release(certificate_ids=[certificate_id])
        assert (await stack.wait_terminal([(REGISTRY, certificate_id)]))[certificate_id] == "rejected"
        row = await wait_withdrawal(stack, certificate_id, "moot")
    finally:
        stack.registry.clear_forced_failures()
    assert "rejected the certificate's issuance" in row["reason"]
    assert withdrawals_received(stack.registry, certificate_id) == []
    _, page = await feed(stack, f"?lastWithdrawnId={answer['id'] - 1}")
    assert answer["id"] not in [w["id"] for w in page["result"]]
    _, view = await stack.get_certificate(REGISTRY, certificate_id)
    assert view["state"] == "rejected" and view["withdrawn"] is True
    moot = view["events"][-1]
    assert moot["type"] == "CertificateWithdrawalMoot" and moot["detail"]["withdrawalId"] == answer["id"]
    assert view["withdrawal"]["state"] == "moot" and view["withdrawal"]["reason"] == row["reason"]
    assert (await withdraw(stack, certificate_id))[0] == 409  # already withdrawn (moot)


async def test_a_certificate_the_registry_rejected_cannot_be_withdrawn(stack: Stack) -> None:
    body = certificate_body(await stack.create_recipient())
    certificate_id = body["certificate"]["id"]
    stack.registry.force_failure(certificate_id, "grid area DK1 is closed")
    try:
        await post_certificate(stack, body)
        assert (await stack.wait_terminal([(REGISTRY, certificate_id)]))[certificate_id] == "rejected"
    finally:
        stack.registry.clear_forced_failures()
    status, problem = await withdraw(stack, certificate_id)
    assert status == 409
    assert "rejected by the registry" in problem["detail"]


async def test_a_certificate_the_wallet_refused_can_be_withdrawn(stack: Stack) -> None:
    reference = stack.wallet.create_endpoint()
    async with stack.http.post(
        f"{stack.base}/v1/recipients", json={"walletEndpointReference": reference.as_json()}
    ) as response:
        recipient = (await response.json())["id"]
    stack.wallet.fail_endpoint(reference, status=400)
    try:
        body = certificate_body(recipient)
        certificate_id = await post_certificate(stack, body)
        assert (await stack.wait_terminal([(REGISTRY, certificate_id)]))[certificate_id] == "failed"
    finally:
        stack.wallet.clear_faults(reference)
    assert (await withdraw(stack, certificate_id))[0] == 201
    assert (await wait_withdrawal(stack, certificate_id))["state"] == "committed"
    stream = stack.registry.stream(certificate_id)
    assert stream is not None and stream.withdrawn


# --- the feed ----------------------------------------------------------------------------------


async def test_the_feed_pages_by_last_withdrawn_id_skip_and_limit(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    bodies = [certificate_body(recipient) for _ in range(4)]
    for body in bodies:
        await post_certificate(stack, body)
    await stack.wait_terminal([(REGISTRY, b["certificate"]["id"]) for b in bodies])
    withdrawn = []
    for body in bodies:
        status, answer = await withdraw(stack, body["certificate"]["id"])
        assert status == 201
        withdrawn.append(answer)
    ids = [w["id"] for w in withdrawn]
    assert ids == sorted(ids)
    before = ids[0] - 1

    status, page = await feed(stack, f"?lastWithdrawnId={before}")
    assert status == 200
    assert page["result"] == withdrawn
    assert page["metadata"] == {"count": 4, "offset": 0, "limit": 100, "total": 4}

    # Parameter names are read case-insensitively, like the existing Stamp.
    status, page = await feed(stack, f"?LastWithdrawnId={before}&SKIP=1&Limit=2")
    assert status == 200
    assert [w["id"] for w in page["result"]] == ids[1:3]
    assert page["metadata"] == {"count": 2, "offset": 1, "limit": 2, "total": 4}

    status, page = await feed(stack, f"?lastwithdrawnid={ids[1]}")
    assert [w["certificateId"] for w in page["result"]] == [b["certificate"]["id"] for b in bodies[2:]]
    assert page["metadata"]["total"] == 2

    status, page = await feed(stack, f"?lastWithdrawnId={ids[-1]}")
    assert page == {"result": [], "metadata": {"count": 0, "offset": 0, "limit": 100, "total": 0}}

    status, page = await feed(stack)
    listed = [w["id"] for w in page["result"]]
    assert listed == sorted(listed) and page["metadata"]["total"] >= 4


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?skip=-1", "skip"),
        ("?lastWithdrawnId=abc", "lastWithdrawnId"),
        ("?LASTWITHDRAWNID=-5", "lastWithdrawnId"),
    ],
)
async def test_the_feed_refuses_bad_paging_parameters(stack: Stack, query: str, field: str) -> None:
    status, problem = await feed(stack, query)
    assert status == 400
    assert [e["field"] for e in problem["errors"]] == [field]


# --- certifying again after a withdrawal -----------------------------------------------------------


async def test_reposting_a_withdrawn_certificate_is_a_conflict(stack: Stack) -> None:
    body = await delivered_certificate(stack)
    certificate_id = body["certificate"]["id"]
    assert (await withdraw(stack, certificate_id))[0] == 201
    status, problem = await stack.post_certificate(body)
    assert status == 409
    assert "withdrawn" in problem["detail"]
    changed = {**body, "certificate": {**body["certificate"], "quantity": 7}}
    assert (await stack.post_certificate(changed))[0] == 409
    assert stack.registry.stream_counters(certificate_id).distinct_issue_transactions == 1


async def test_the_metering_point_and_period_can_be_certified_again_after_withdrawal(stack: Stack) -> None:
    body = await delivered_certificate(stack)
    replacement = {**body, "certificate": {**body["certificate"], "id": str(uuid.uuid4()), "quantity": 900}}
    status, problem = await stack.post_certificate(replacement)
    assert status == 409  # the period is taken while the first certificate stands
    assert body["certificate"]["id"] in problem["detail"]

    assert (await withdraw(stack, body["certificate"]["id"]))[0] == 201
    status, answer = await stack.post_certificate(replacement)
    assert status == 202, answer
    replacement_id = replacement["certificate"]["id"]
    assert (await stack.wait_terminal([(REGISTRY, replacement_id)]))[replacement_id] == "delivered"

    third = {**body, "certificate": {**body["certificate"], "id": str(uuid.uuid4())}}
    status, problem = await stack.post_certificate(third)
    assert status == 409  # now the replacement holds the period
    assert replacement_id in problem["detail"]


# --- the registry send -------------------------------------------------------------------------


async def test_withdrawal_is_retried_with_the_same_bytes_while_the_registry_is_unavailable(
    stack: Stack,
) -> None:
    certificate_id = (await delivered_certificate(stack))["certificate"]["id"]
    before = stack.registry.stats()
    stack.registry.fail_next("SendTransactions", 3)
    assert (await withdraw(stack, certificate_id))[0] == 201
    row = await wait_withdrawal(stack, certificate_id)
    assert row["state"] == "committed"
    after = stack.registry.stats()
    assert after.injected_errors - before.injected_errors == 3
    assert after.send_calls - before.send_calls == 4  # three refused, the fourth taken
    [received] = withdrawals_received(stack.registry, certificate_id)
    assert received.SerializeToString() == bytes(row["transaction"])
    stream = stack.registry.stream(certificate_id)
    assert stream is not None and stream.withdrawn


async def test_a_lost_answer_is_settled_by_asking_not_by_sending_again(stack: Stack) -> None:
    certificate_id = (await delivered_certificate(stack))["certificate"]["id"]
    # The registry takes the withdrawal but the answer to SendTransactions is lost.
    stack.registry.fail_next("SendTransactions", 1, accept=True)
    assert (await withdraw(stack, certificate_id))[0] == 201
    assert (await wait_withdrawal(stack, certificate_id))["state"] == "committed"
    counters = stack.registry.stream_counters(certificate_id)
    assert (counters.received, counters.resends) == (2, 0)


async def test_a_withdrawal_the_registry_rejects_is_failed_with_the_reason(stack: Stack) -> None:
    certificate_id = (await delivered_certificate(stack))["certificate"]["id"]
    stack.registry.force_failure(certificate_id, "the registry is closed for withdrawals")
    try:
        status, answer = await withdraw(stack, certificate_id)
        assert status == 201
        row = await wait_withdrawal(stack, certificate_id)
    finally:
        stack.registry.clear_forced_failures()
    assert row["state"] == "failed"
    assert "the registry is closed for withdrawals" in row["reason"]
    _, view = await stack.get_certificate(REGISTRY, certificate_id)
    failed = view["events"][-1]
    assert failed["type"] == "CertificateWithdrawalFailed"
    assert "the registry is closed for withdrawals" in failed["detail"]["reason"]
    # Stamp's decision stands: the certificate stays withdrawn and listed in the feed.
    _, page = await feed(stack, f"?lastWithdrawnId={answer['id'] - 1}&limit=1")
    assert page["result"] == [answer]


async def test_a_failed_withdrawal_is_driven_again_with_the_same_transaction(stack: Stack) -> None:
    certificate_id = (await delivered_certificate(stack))["certificate"]["id"]
    attempts = stack.settings.registry_retry.max_attempts
    stack.registry.fail_next("SendTransactions", attempts)  # every attempt the gateway makes
    status, answer = await withdraw(stack, certificate_id)
    assert status == 201
    failed = await wait_withdrawal(stack, certificate_id)
    assert failed["state"] == "failed" and "registry call failed" in failed["reason"]
    assert withdrawals_received(stack.registry, certificate_id) == []

    status, again = await withdraw(stack, certificate_id)
    assert status == 201
    assert again == answer  # the same withdrawal, not a second one
    row = await wait_withdrawal(stack, certificate_id, "committed")
    assert row["transaction_id"] == failed["transaction_id"]
    [received] = withdrawals_received(stack.registry, certificate_id)
    assert received.SerializeToString() == bytes(failed["transaction"])
    types = await event_types(stack, certificate_id)
    assert types[-4:] == [
        "CertificateWithdrawn",
        "CertificateWithdrawalFailed",
        "CertificateWithdrawalRetried",
        "CertificateWithdrawalCommitted",
    ]


async def test_already_withdrawn_in_the_registry_is_settled_by_reading_the_stream(stack: Stack) -> None:
    certificate_id = (await delivered_certificate(stack))["certificate"]["id"]
    # Someone else (another issuer instance) withdrew the stream first.
    other = build_withdrawn_transaction(REGISTRY, certificate_id, ISSUER)
    async with registry_client(stack) as client:
        await client.send(REGISTRY, [other.transaction])
        assert await settle(client, other.transaction_id) == (TxStatus.COMMITTED, "")
    assert (await withdraw(stack, certificate_id))[0] == 201
    row = await wait_withdrawal(stack, certificate_id)
    assert row["state"] == "committed"
    _, view = await stack.get_certificate(REGISTRY, certificate_id)
    committed = view["events"][-1]
    assert committed["type"] == "CertificateWithdrawalCommitted"
    assert "another transaction" in committed["detail"]["note"]


# --- the registry's rules (simulator) ------------------------------------------------------------


@contextlib.asynccontextmanager
async def registry_client(stack: Stack) -> AsyncIterator[RegistryClient]:
    client = RegistryClient({REGISTRY: stack.registry.address}, call_timeout=5)
    try:
        yield client
    finally:
        await client.close()


async def settle(client: RegistryClient, tx_id: str, timeout: float = 10) -> tuple[TxStatus, str]:
    async with asyncio.timeout(timeout):
        while True:
            reply = await client.status(REGISTRY, tx_id)
            if reply.status is not TxStatus.PENDING:
                return reply.status, reply.message
            await asyncio.sleep(0.02)


async def test_the_registry_takes_a_withdrawal_only_from_the_grid_areas_issuer_and_only_once(
    stack: Stack,
) -> None:
    certificate_id = (await delivered_certificate(stack))["certificate"]["id"]
    foreign = build_withdrawn_transaction(REGISTRY, certificate_id, IssuerKey.generate())
    unknown = build_withdrawn_transaction(REGISTRY, str(uuid.uuid4()), ISSUER)
    valid = build_withdrawn_transaction(REGISTRY, certificate_id, ISSUER)
    again = build_withdrawn_transaction(REGISTRY, certificate_id, ISSUER)
    async with registry_client(stack) as client:
        await client.send(REGISTRY, [foreign.transaction, unknown.transaction])
        status, message = await settle(client, foreign.transaction_id)
        assert status is TxStatus.FAILED and "Invalid issuer signature" in message
        assert await settle(client, unknown.transaction_id) == (TxStatus.FAILED, "Certificate does not exist")
        stream = stack.registry.stream(certificate_id)
        assert stream is not None and not stream.withdrawn

        await client.send(REGISTRY, [valid.transaction])
        assert await settle(client, valid.transaction_id) == (TxStatus.COMMITTED, "")
        stream = stack.registry.stream(certificate_id)
        assert stream is not None and stream.withdrawn

        await client.send(REGISTRY, [again.transaction])
        assert await settle(client, again.transaction_id) == (
            TxStatus.FAILED,
            "Certificate is already withdrawn",
        )


# --- crash safety --------------------------------------------------------------------------------


async def test_a_pending_withdrawal_resumes_after_a_restart_and_resends_the_same_bytes(
    database_dsn: str, tmp_path: Path
) -> None:
    registry = RegistrySimulator(
        RegistrySimConfig(
            registries=(REGISTRY,), issuer_keys={GRID_AREA: (ISSUER.public_pem(),)}, commit_delay=0.05
        )
    )
    await registry.start()
    wallet = WalletSimulator(WalletSimConfig(registries={REGISTRY: registry.address}))
    await wallet.start()
    settings = stack_settings(database_dsn, registry.address, tmp_path)
    try:
        async with serving(settings, registry, wallet) as first:
            certificate_id = (await delivered_certificate(first))["certificate"]["id"]
            registry.hold(certificate_ids=[certificate_id])  # received, never processed
            status, answer = await withdraw(first, certificate_id)
            assert status == 201
            async with asyncio.timeout(10):
                while True:
                    if registry.stream_counters(certificate_id).received == 2:
                        break
                    await asyncio.sleep(0.02)
        # Stamp is down with the withdrawal pending; the registry restarts and forgets it.
        registry.forget_uncommitted()
        registry.release()
        async with serving(settings, registry, wallet) as second:
            pending = await withdrawals.get_withdrawal(second.pool, CertificateKey(REGISTRY, certificate_id))
            assert pending is not None and pending["id"] == answer["id"]
            row = await wait_withdrawal(second, certificate_id)
            assert row["state"] == "committed"
        counters = registry.stream_counters(certificate_id)
        assert (counters.received, counters.resends) == (
            3,
            1,
        )  # issuance, withdrawal, the same withdrawal again
        [received] = withdrawals_received(registry, certificate_id)
        assert received.SerializeToString() == bytes(row["transaction"])
        stream = registry.stream(certificate_id)
        assert stream is not None and stream.withdrawn
    finally:
        await wallet.stop()
        await registry.stop()
