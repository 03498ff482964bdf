"""End to end over HTTP: Stamp with a real PostgreSQL, registry and wallet simulators."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from stamp.crypto.hdkeys import ExtendedPublicKey
from stamp.db import queries
from stamp.db.queries import Lease
from stamp.devstack.wallet import SliceStatus
from stamp.domain import CertificateKey, Event, State
from tests.stack import REGISTRY, Stack, certificate_body, running_stack

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(database_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(database_dsn, tmp_path_factory.mktemp("stamp")) as running:
        yield running


async def test_production_and_consumption_certificates_are_delivered_and_verified(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    bodies = [
        certificate_body(recipient, certificate={"type": t}) for t in ("production", "Consumption", 1, 2)
    ]
    for body in bodies:
        status, answer = await stack.post_certificate(body)
        assert status == 202, answer
        assert answer["state"] == "stored"
        assert answer["statusUrl"] == f"/v1/certificates/{REGISTRY}/{body['certificate']['id']}"
    keys = [(REGISTRY, b["certificate"]["id"]) for b in bodies]
    states = await stack.wait_terminal(keys)
    assert set(states.values()) == {"delivered"}
    records = await stack.wallet.wait_for(b["certificate"]["id"] for b in bodies)
    assert {r.status for r in records} == {SliceStatus.VERIFIED}
    for body in bodies:
        stream = stack.registry.stream(body["certificate"]["id"])
        assert stream is not None
        expected_type = (
            "CONSUMPTION"
            if str(body["certificate"]["type"]).lower() in ("consumption", "1")
            else "PRODUCTION"
        )
        assert stream.type == expected_type


async def test_accepted_means_stored_before_the_answer(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    body = certificate_body(recipient)
    status, _ = await stack.post_certificate(body)
    assert status == 202
    # Read with a separate connection right after the 202: the row is committed.
    row = await stack.pool.fetchrow(
        "SELECT state FROM certificates WHERE registry_name = $1 AND id = $2",
        REGISTRY,
        body["certificate"]["id"],
    )
    assert row is not None


async def test_five_certificates_for_one_recipient_get_five_distinct_positions(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    bodies = [certificate_body(recipient) for _ in range(5)]
    await asyncio.gather(*(stack.post_certificate(b) for b in bodies))
    await stack.wait_terminal([(REGISTRY, b["certificate"]["id"]) for b in bodies])
    positions = [
        r["position"]
        for r in await stack.pool.fetch(
            "SELECT position FROM certificates WHERE recipient_id = $1", recipient
        )
    ]
    assert sorted(positions) == [1, 2, 3, 4, 5]


async def test_owner_key_is_the_child_of_the_recipient_key_at_the_position(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    body = certificate_body(recipient)
    await stack.post_certificate(body)
    certificate_id = body["certificate"]["id"]
    await stack.wait_terminal([(REGISTRY, certificate_id)])
    row = await stack.pool.fetchrow(
        "SELECT c.position, r.wallet_public_key FROM certificates c "
        "JOIN recipients r ON r.id = c.recipient_id "
        "WHERE c.id = $1",
        certificate_id,
    )
    stream = stack.registry.stream(certificate_id)
    assert stream is not None
    expected = ExtendedPublicKey.parse(bytes(row["wallet_public_key"])).child_public_key(row["position"])
    assert stream.owner_public_key == expected


async def test_many_recipients_concurrently_get_gapless_positions(stack: Stack) -> None:
    recipients = await asyncio.gather(*(stack.create_recipient() for _ in range(50)))
    bodies = [certificate_body(r) for r in recipients for _ in range(20)]
    limit = asyncio.Semaphore(100)

    async def post(body: dict[str, object]) -> int:
        async with limit:
            status, _ = await stack.post_certificate(body)
            return status

    statuses = await asyncio.gather(*(post(b) for b in bodies))
    assert statuses.count(202) == len(bodies)
    states = await stack.wait_terminal([(REGISTRY, b["certificate"]["id"]) for b in bodies], timeout=240)
    assert set(states.values()) == {"delivered"}
    rows = await stack.pool.fetch(
        "SELECT recipient_id::text, array_agg(position ORDER BY position) AS positions FROM certificates "
        "WHERE recipient_id = ANY($1::uuid[]) GROUP BY recipient_id",
        recipients,
    )
    assert len(rows) == 50
    for row in rows:
        assert list(row["positions"]) == list(range(1, 21))
    await stack.wallet.wait_idle()
    flags = stack.wallet.flags()
    assert not flags.duplicates and not flags.reused_positions and not flags.early_deliveries


async def test_registry_failure_rejects_the_certificate_with_the_reason(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    body = certificate_body(recipient)
    certificate_id = body["certificate"]["id"]
    stack.registry.force_failure(certificate_id, "grid area DK1 is closed for maintenance")
    await stack.post_certificate(body)
    states = await stack.wait_terminal([(REGISTRY, certificate_id)])
    assert states[certificate_id] == "rejected"
    status, view = await stack.get_certificate(REGISTRY, certificate_id)
    assert status == 200
    assert view["rejectionReason"] == "grid area DK1 is closed for maintenance"
    assert [e["type"] for e in view["events"]][-1] == "CertificateFailedInRegistry"
    assert certificate_id not in {s.certificate_id for s in stack.wallet.verified_slices()}


async def test_identical_repost_is_idempotent(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    body = certificate_body(recipient)
    certificate_id = body["certificate"]["id"]
    first, second = await asyncio.gather(stack.post_certificate(body), stack.post_certificate(body))
    assert first[0] == second[0] == 202
    await stack.wait_terminal([(REGISTRY, certificate_id)])
    status, answer = await stack.post_certificate(body)
    assert status == 202 and answer["state"] == "delivered"
    count = await stack.pool.fetchval("SELECT count(*) FROM certificates WHERE id = $1", certificate_id)
    assert count == 1
    counters = stack.registry.stream_counters(certificate_id)
    assert counters.distinct_issue_transactions == 1


async def test_same_id_with_different_content_is_a_conflict_naming_the_fields(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    body = certificate_body(recipient)
    assert (await stack.post_certificate(body))[0] == 202
    changed = {**body, "certificate": {**body["certificate"], "quantity": 999}}
    status, problem = await stack.post_certificate(changed)
    assert status == 409
    assert "certificate.quantity" in problem["differences"]


async def test_same_metering_point_and_period_with_another_id_is_a_conflict(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    body = certificate_body(recipient)
    assert (await stack.post_certificate(body))[0] == 202
    other = {**body, "certificate": {**body["certificate"], "id": str(uuid.uuid4())}}
    status, problem = await stack.post_certificate(other)
    assert status == 409
    assert problem["status"] == 409


async def test_unknown_recipient_is_404(stack: Stack) -> None:
    status, problem = await stack.post_certificate(certificate_body(str(uuid.uuid4())))
    assert status == 404
    assert problem["status"] == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"certificate": {"quantity": 0}}, "certificate.quantity"),
        ({"certificate": {"quantity": 2**32}}, "certificate.quantity"),
        ({"certificate": {"gridArea": "XX9"}}, "certificate.gridArea"),
        ({"registryName": "Atlantis"}, "registryName"),
        ({"certificate": {"end": 1_700_000_000 + 30}}, "certificate.end"),
        ({"certificate": {"end": 1_700_000_000 + 7200}}, "certificate.end"),
        ({"certificate": {"id": "not-a-uuid"}}, "certificate.id"),
    ],
)
async def test_invalid_certificates_are_400_naming_the_field(
    stack: Stack, change: dict[str, Any], field: str
) -> None:
    recipient = await stack.create_recipient()
    body = certificate_body(recipient, start=1_700_000_000, **change)
    status, problem = await stack.post_certificate(body)
    assert status == 400, problem
    assert any(e["field"].startswith(field) for e in problem["errors"]), problem
    count = await stack.pool.fetchval("SELECT count(*) FROM certificates WHERE recipient_id = $1", recipient)
    assert count == 0


async def test_pascal_case_request_from_an_existing_client_is_accepted(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    body = certificate_body(recipient)
    cert = body["certificate"]
    pascal = {
        "RecipientId": body["recipientId"],
        "RegistryName": body["registryName"],
        "MeteringPointId": body["meteringPointId"],
        "Certificate": {
            "Id": cert["id"],
            "Type": 2,
            "Quantity": cert["quantity"],
            "Start": cert["start"],
            "End": cert["end"],
            "GridArea": cert["gridArea"],
            "ClearTextAttributes": cert["clearTextAttributes"],
            "HashedAttributes": [{"Key": "assetId", "Value": "571234567890123456"}],
        },
    }
    status, answer = await stack.post_certificate(pascal)
    assert status == 202, answer
    assert (await stack.wait_terminal([(REGISTRY, cert["id"])]))[cert["id"]] == "delivered"


async def test_status_shows_the_event_history_and_no_secrets(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    body = certificate_body(recipient)
    certificate_id = body["certificate"]["id"]
    await stack.post_certificate(body)
    await stack.wait_terminal([(REGISTRY, certificate_id)])
    status, view = await stack.get_certificate(REGISTRY, certificate_id)
    assert status == 200
    assert view["state"] == "delivered"
    assert [e["type"] for e in view["events"]] == [
        "CertificateStored",
        "CertificateSentToRegistry",
        "CertificateIssuedInRegistry",
        "CertificateMarkedAsIssued",
        "CertificateSentToWallet",
    ]
    record = await queries.get_record(stack.pool, CertificateKey(REGISTRY, certificate_id))
    assert record is not None and record.blinding is not None and record.salts
    text = str(view)
    for secret in (record.blinding, *record.salts):
        assert base64.b64encode(secret).decode() not in text and secret.hex() not in text
    assert (await stack.get_certificate(REGISTRY, str(uuid.uuid4())))[0] == 404


async def test_routes_answer_under_the_path_base_too(database_dsn: str, tmp_path: Path) -> None:
    async with running_stack(database_dsn, tmp_path, path_base="/api") as stack:
        async with stack.http.get(f"{stack.base}/api/health/live") as r:
            assert r.status == 200
        recipient = await stack.create_recipient()
        async with stack.http.get(f"{stack.base}/api/v1/recipients/{recipient}") as r:
            assert r.status == 200
            assert (await r.json())["id"] == recipient


async def test_list_pages_with_a_cursor(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    bodies = [certificate_body(recipient) for _ in range(7)]
    for body in bodies:
        await stack.post_certificate(body)
    seen: list[str] = []
    cursor = None
    while True:
        url = f"{stack.base}/v1/certificates?recipientId={recipient}&limit=3" + (
            f"&cursor={cursor}" if cursor else ""
        )
        async with stack.http.get(url) as r:
            assert r.status == 200
            page = await r.json()
        seen += [c["id"] for c in page["result"]]
        cursor = page["metadata"]["nextCursor"]
        if cursor is None:
            break
    assert seen == [b["certificate"]["id"] for b in bodies]


async def test_transaction_is_persisted_before_sending_and_resends_are_identical(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    body = certificate_body(recipient)
    certificate_id = body["certificate"]["id"]
    await stack.post_certificate(body)
    await stack.wait_terminal([(REGISTRY, certificate_id)])
    record = await queries.get_record(stack.pool, CertificateKey(REGISTRY, certificate_id))
    assert record is not None and record.transaction is not None
    assert record.transaction_id == base64.b64encode(hashlib.sha256(record.transaction).digest()).decode()
    sent = stack.registry.stream_transactions(certificate_id)
    assert sent[0].SerializeToString() == record.transaction
    events = await stack.pool.fetch(
        "SELECT event_type, detail FROM certificate_events WHERE certificate_id = $1 ORDER BY seq",
        certificate_id,
    )
    sent_event = next(e for e in events if e["event_type"] == Event.SENT_TO_REGISTRY)
    assert sent_event["detail"]["transactionId"] == record.transaction_id


async def test_a_stale_writer_changes_nothing(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    body = certificate_body(recipient)
    certificate_id = body["certificate"]["id"]
    await stack.post_certificate(body)
    await stack.wait_terminal([(REGISTRY, certificate_id)])
    key = CertificateKey(REGISTRY, certificate_id)
    record = await queries.get_record(stack.pool, key)
    assert record is not None
    events_before = await stack.pool.fetchval(
        "SELECT count(*) FROM certificate_events WHERE certificate_id = $1", certificate_id
    )
    result = await queries.transition(
        stack.pool,
        queries.REJECT,
        key,
        record.version - 1,
        State.REJECTED,
        Event.FAILED_IN_REGISTRY,
        {},
        Lease("zombie", 60),
        "zombie says no",
    )
    assert result is None
    after = await queries.get_record(stack.pool, key)
    assert after is not None and after.state is State.DELIVERED and after.version == record.version
    events_after = await stack.pool.fetchval(
        "SELECT count(*) FROM certificate_events WHERE certificate_id = $1", certificate_id
    )
    assert events_after == events_before
