"""Re-delivery of delivered slices and moving a recipient's wallet endpoint, end to end:
real PostgreSQL, the registry and wallet simulators, Stamp over HTTP (docs/api.md)."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from stamp.api.runtime import RUNTIME
from stamp.config import RetryPolicy
from stamp.crypto.hdkeys import ExtendedPrivateKey
from stamp.db import queries
from stamp.devstack.wallet import SliceStatus
from tests.stack import REGISTRY, Stack, certificate_body, loopback_host, running_stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Slow enough wallet retries that a test can move the endpoint while one is in flight.
PATIENT = RetryPolicy(base_seconds=0.1, cap_seconds=0.3, max_attempts=60)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(database_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(database_dsn, tmp_path_factory.mktemp("stamp"), wallet_retry=PATIENT) as running:
        yield running


async def _delivered(stack: Stack, recipient: str, count: int = 1) -> list[str]:
    bodies = [certificate_body(recipient) for _ in range(count)]
    for body in bodies:
        status, answer = await stack.post_certificate(body)
        assert status == 202, answer
    ids = [b["certificate"]["id"] for b in bodies]
    states = await stack.wait_terminal([(REGISTRY, i) for i in ids])
    assert set(states.values()) == {"delivered"}
    await stack.wallet.wait_for(ids)
    return ids


async def _post(stack: Stack, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    async with stack.http.post(f"{stack.base}{path}", json=body) as response:
        return response.status, await response.json(content_type=None)


async def _patch(stack: Stack, recipient: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with stack.http.patch(f"{stack.base}/v1/recipients/{recipient}", json=body) as response:
        return response.status, await response.json(content_type=None)


async def _events(stack: Stack, certificate_id: str) -> list[dict[str, Any]]:
    status, view = await stack.get_certificate(REGISTRY, certificate_id)
    assert status == 200
    events: list[dict[str, Any]] = view["events"]
    return events


async def _until(predicate: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _redelivered(stack: Stack, ids: list[str]) -> None:
    """Until the wallet holds these certificates again and Stamp recorded it."""

    async def done() -> bool:
        pending = await stack.pool.fetchval(
            "SELECT count(*) FROM certificates"
            " WHERE id = ANY($1::uuid[]) AND redelivery_requested_at IS NOT NULL",
            ids,
        )
        return bool(pending == 0)

    await _until(done)
    records = await stack.wallet.wait_for(ids)
    assert {r.status for r in records} == {SliceStatus.VERIFIED}


async def test_a_restored_wallet_gets_a_certificate_back_byte_for_byte(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    (certificate_id,) = await _delivered(stack, recipient)
    (first,) = stack.wallet.received_requests(certificate_id)
    stack.wallet.forget_received()  # restored from a backup taken before the delivery

    status, answer = await _post(stack, f"/v1/certificates/{REGISTRY}/{certificate_id}/redeliver")
    assert status == 202, answer
    assert answer["redelivery"] == "requested" and answer["id"] == certificate_id
    await _redelivered(stack, [certificate_id])

    (again,) = stack.wallet.received_requests(certificate_id)
    # Same position, R and salts: the very slice, not a new one.
    assert again == first
    assert again.random_r == first.random_r and again.hashed_attributes == first.hashed_attributes
    events = await _events(stack, certificate_id)
    types = [e["type"] for e in events]
    assert types[-2:] == ["CertificateRedeliveryRequested", "CertificateRedelivered"]
    endpoint = stack.wallet.slices_url
    assert events[-1]["detail"] == {"status": 202, "endpoint": endpoint}
    assert events[-1]["state"] == "delivered"
    sent = next(e for e in events if e["type"] == "CertificateSentToWallet")
    assert sent["detail"]["endpoint"] == endpoint
    # No secret in the history.
    status, view = await stack.get_certificate(REGISTRY, certificate_id)
    assert base64.b64encode(first.random_r).decode() not in str(view)


async def test_every_delivered_certificate_of_a_recipient_is_redelivered(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    ids = await _delivered(stack, recipient, 3)
    before = {i: stack.wallet.received_requests(i) for i in ids}
    stack.wallet.forget_received()

    status, answer = await _post(stack, f"/v1/recipients/{recipient}/redeliver?since=2026-01-01T00:00:00Z")
    assert status == 202, answer
    assert sorted(r["id"] for r in answer["result"]) == sorted(ids)
    assert {r["redelivery"] for r in answer["result"]} == {"requested"}
    await _redelivered(stack, ids)
    assert {i: stack.wallet.received_requests(i) for i in ids} == before

    # Delivered since a time after every delivery: nothing selected, nothing sent.
    stack.wallet.forget_received()
    status, answer = await _post(stack, f"/v1/recipients/{recipient}/redeliver?since=4102444800")
    assert status == 202 and answer["result"] == [], answer
    status, answer = await _post(stack, f"/v1/recipients/{recipient}/redeliver?since=yesterday")
    assert status == 400 and answer["errors"][0]["field"] == "since", answer
    status, answer = await _post(stack, f"/v1/recipients/{uuid.uuid4()}/redeliver")
    assert status == 404, answer
    await asyncio.sleep(0.3)
    assert stack.wallet.received_count() == 0


async def test_a_certificate_never_delivered_is_not_redelivered(stack: Stack) -> None:
    reference = stack.wallet.create_endpoint()
    async with stack.http.post(
        f"{stack.base}/v1/recipients", json={"walletEndpointReference": reference.as_json()}
    ) as response:
        recipient = (await response.json())["id"]
    stack.wallet.disable_endpoint(reference)  # answers 400: the delivery fails at once
    body = certificate_body(recipient)
    certificate_id = body["certificate"]["id"]
    assert (await stack.post_certificate(body))[0] == 202
    assert (await stack.wait_terminal([(REGISTRY, certificate_id)]))[certificate_id] == "failed"

    status, answer = await _post(stack, f"/v1/certificates/{REGISTRY}/{certificate_id}/redeliver")
    assert status == 409, answer
    assert "failed" in answer["detail"]
    status, answer = await _post(stack, f"/v1/certificates/{REGISTRY}/{uuid.uuid4()}/redeliver")
    assert status == 404, answer
    status, answer = await _post(stack, f"/v1/recipients/{recipient}/redeliver")
    assert status == 202 and answer["result"] == [], answer


async def test_a_withdrawn_certificate_is_not_redelivered(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    withdrawn, kept = await _delivered(stack, recipient, 2)
    status, answer = await _post(stack, f"/v1/certificates/{REGISTRY}/{withdrawn}/withdraw")
    assert status == 201, answer
    stack.wallet.forget_received()

    status, answer = await _post(stack, f"/v1/certificates/{REGISTRY}/{withdrawn}/redeliver")
    assert status == 409 and "withdrawn" in answer["detail"], answer
    status, answer = await _post(stack, f"/v1/recipients/{recipient}/redeliver")
    assert status == 202, answer
    assert {r["id"]: r["redelivery"] for r in answer["result"]} == {withdrawn: "withdrawn", kept: "requested"}
    await _redelivered(stack, [kept])
    await asyncio.sleep(0.3)
    assert stack.wallet.received_requests(withdrawn) == []
    assert "CertificateRedeliveryRequested" not in [e["type"] for e in await _events(stack, withdrawn)]


@pytest_asyncio.fixture(loop_scope="session")
async def failing_wallet() -> AsyncIterator[tuple[str, list[int]]]:
    """A wallet host that answers 503 to everything: its URL and a count of its hits."""
    hits: list[int] = []

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        hits.append(1)
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    async with loopback_host(app) as port:
        yield f"http://127.0.0.1:{port}/v1/slices", hits


@pytest.fixture
def endpoint_reads(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The recipients whose endpoint the wallet gateway read before a delivery, from
    now on (the batcher's ``fetch`` watched: the statements still run)."""
    batcher = stack.app[RUNTIME].batcher
    fetch = batcher.fetch
    reads: list[object] = []

    async def watched(sql: str, args: Sequence[Any], lock_key: tuple[str, ...]) -> Any:
        if sql == queries.SELECT_RECIPIENT_ENDPOINT:
            reads.append(args[0])
        return await fetch(sql, args, lock_key)

    monkeypatch.setattr(batcher, "fetch", watched)
    return reads


async def test_an_endpoint_moved_before_the_mark_gets_the_delivery_from_the_marks_answer(
    stack: Stack, failing_wallet: tuple[str, list[int]], endpoint_reads: list[object]
) -> None:
    old_url, hits = failing_wallet
    reference = stack.wallet.create_endpoint()
    async with stack.http.post(
        f"{stack.base}/v1/recipients",
        json={"walletEndpointReference": {**reference.as_json(), "endpoint": old_url}},
    ) as response:
        assert response.status == 201
        recipient = (await response.json())["id"]
    body = certificate_body(recipient)
    certificate_id = body["certificate"]["id"]
    stack.registry.hold(certificate_ids=[certificate_id])
    try:
        assert (await stack.post_certificate(body))[0] == 202

        async def at_the_registry() -> bool:
            state = await stack.pool.fetchval("SELECT state FROM certificates WHERE id = $1", certificate_id)
            return bool(state == "sent_to_registry")

        await _until(at_the_registry)
        # Moved by another Stamp process, say: straight in the database, so this
        # process's recipient (loaded for the build) still names the old URL.
        await stack.pool.execute(
            "UPDATE recipients SET wallet_endpoint_url = $2 WHERE id = $1", recipient, reference.endpoint
        )
    finally:
        stack.registry.release(certificate_ids=[certificate_id])
    assert (await stack.wait_terminal([(REGISTRY, certificate_id)]))[certificate_id] == "delivered"
    (sent,) = [e for e in await _events(stack, certificate_id) if e["type"] == "CertificateSentToWallet"]
    assert sent["detail"]["endpoint"] == reference.endpoint
    assert hits == []
    # The mark (ISSUE_AND_MARK) answered the endpoint: the delivery made no read of its own.
    assert recipient not in endpoint_reads


async def test_moving_the_endpoint_redirects_a_delivery_in_flight(
    stack: Stack, failing_wallet: tuple[str, list[int]], endpoint_reads: list[object]
) -> None:
    old_url, hits = failing_wallet
    reference = stack.wallet.create_endpoint()
    moved_reference = {**reference.as_json(), "endpoint": old_url}
    async with stack.http.post(
        f"{stack.base}/v1/recipients", json={"walletEndpointReference": moved_reference}
    ) as response:
        assert response.status == 201
        recipient = (await response.json())["id"]
    body = certificate_body(recipient)
    certificate_id = body["certificate"]["id"]
    assert (await stack.post_certificate(body))[0] == 202

    async def retried_at_the_old_url() -> bool:
        return len(hits) >= 2

    await _until(retried_at_the_old_url)
    status, answer = await _patch(
        stack, recipient, {"walletEndpointReference": {"endpoint": reference.endpoint}}
    )
    assert status == 200, answer
    assert answer["walletEndpointReference"]["endpoint"] == reference.endpoint
    assert answer["walletEndpointReference"]["publicKey"] == reference.public_key_b64

    assert (await stack.wait_terminal([(REGISTRY, certificate_id)]))[certificate_id] == "delivered"
    (record,) = await stack.wallet.wait_for([certificate_id])
    assert record.status is SliceStatus.VERIFIED
    events = await _events(stack, certificate_id)
    failed = [e for e in events if e["type"] == "CertificateWalletAttemptFailed"]
    assert failed and all(e["detail"]["endpoint"] == old_url for e in failed)
    assert failed[0]["detail"]["reason"] == "wallet answered 503"
    (sent,) = [e for e in events if e["type"] == "CertificateSentToWallet"]
    assert sent["detail"]["endpoint"] == reference.endpoint
    async with stack.http.get(f"{stack.base}/v1/recipients/{recipient}") as response:
        assert (await response.json())["walletEndpointReference"]["endpoint"] == reference.endpoint
    # Every attempt followed its claim, which answered the endpoint: no read of its own.
    assert recipient not in endpoint_reads


async def test_a_recipient_keeps_its_key_and_moves_only_to_allowed_urls(stack: Stack) -> None:
    reference = stack.wallet.create_endpoint()
    recipient = await stack.create_recipient()
    async with stack.http.get(f"{stack.base}/v1/recipients/{recipient}") as response:
        current = (await response.json())["walletEndpointReference"]
    other_key = ExtendedPrivateKey.generate().public().to_base64()

    status, answer = await _patch(
        stack,
        recipient,
        {"walletEndpointReference": {"endpoint": current["endpoint"], "publicKey": other_key}},
    )
    assert status == 409, answer
    assert answer["differences"] == ["walletEndpointReference.publicKey"]

    # The same key, restated with the whole reference as it was read: accepted.
    status, answer = await _patch(stack, recipient, {"walletEndpointReference": current})
    assert status == 200, answer

    for bad in ("ftp://wallet.example/slices", "http://wallet.example/\x07slices", "not a url"):
        status, answer = await _patch(stack, recipient, {"walletEndpointReference": {"endpoint": bad}})
        assert status == 400, (bad, answer)
        assert answer["errors"][0]["field"] == "walletEndpointReference.endpoint", answer
    status, answer = await _patch(stack, recipient, {"walletEndpointReference": {}})
    assert status == 400 and answer["errors"][0]["field"] == "walletEndpointReference.endpoint"
    status, answer = await _patch(
        stack, str(uuid.uuid4()), {"walletEndpointReference": {"endpoint": reference.endpoint}}
    )
    assert status == 404, answer
    async with stack.http.get(f"{stack.base}/v1/recipients/{recipient}") as response:
        assert (await response.json())["walletEndpointReference"] == current


async def test_a_redelivery_the_wallet_refuses_ends_and_the_certificate_stays_delivered(stack: Stack) -> None:
    reference = stack.wallet.create_endpoint()
    async with stack.http.post(
        f"{stack.base}/v1/recipients", json={"walletEndpointReference": reference.as_json()}
    ) as response:
        recipient = (await response.json())["id"]
    (certificate_id,) = await _delivered(stack, recipient)
    stack.wallet.disable_endpoint(reference)  # answers 400 from now on

    status, answer = await _post(stack, f"/v1/certificates/{REGISTRY}/{certificate_id}/redeliver")
    assert status == 202, answer

    async def ended() -> bool:
        events = await _events(stack, certificate_id)
        last: str = events[-1]["type"]
        return last == "CertificateRedeliveryFailed"

    await _until(ended)
    status, view = await stack.get_certificate(REGISTRY, certificate_id)
    assert view["state"] == "delivered"
    assert view["events"][-1]["detail"] == {
        "endpoint": reference.endpoint,
        "reason": "wallet answered 400",
        "attempts": 1,
    }
    pending = await stack.pool.fetchval(
        "SELECT redelivery_requested_at FROM certificates WHERE id = $1", certificate_id
    )
    assert pending is None
    # It can be asked for again once the wallet is back.
    stack.wallet.enable_endpoint(reference)
    status, answer = await _post(stack, f"/v1/certificates/{REGISTRY}/{certificate_id}/redeliver")
    assert status == 202 and answer["redelivery"] == "requested", answer
    await _redelivered(stack, [certificate_id])


async def test_a_redelivery_whose_driver_died_is_resumed_from_the_database(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    (certificate_id,) = await _delivered(stack, recipient)
    (first,) = stack.wallet.received_requests(certificate_id)
    stack.wallet.forget_received()
    # Another Stamp process claimed the re-delivery (its lease, a version bump) and died
    # before sending: its lease runs out and this one takes the row over.
    await stack.pool.execute(
        """
        UPDATE certificates
        SET redelivery_requested_at = now(), version = version + 2, lease_owner = 'dead-instance',
            lease_until = now() + interval '1 second'
        WHERE id = $1
        """,
        certificate_id,
    )
    await _redelivered(stack, [certificate_id])
    assert stack.wallet.received_requests(certificate_id) == [first]
    events = await _events(stack, certificate_id)
    assert events[-1]["type"] == "CertificateRedelivered"


async def test_a_redelivery_whose_driver_keeps_crashing_ends_failed_and_the_certificate_stays_delivered(
    stack: Stack,
) -> None:
    recipient = await stack.create_recipient()
    certificate_id = str(uuid.uuid4())
    # A delivered row whose slice cannot be built (a salt is missing for a hashed
    # attribute), with a re-delivery asked for: its driver crashes on every try.
    await stack.pool.execute(
        """INSERT INTO certificates (registry_name, id, recipient_id, metering_point_id, certificate_type,
               quantity, period_start, period_end, grid_area, clear_attributes, hashed_attributes,
               request_digest, state, version, position, blinding, salts, transaction, transaction_id,
               redelivery_requested_at)
           VALUES ($1, $2, $3, $4, 2, 10, 1700000000, 1700003600, 'DK1', '[]', $5, $6,
                   'delivered', 6, 1, $7, '{}', $8, 'tx-id', now())""",
        REGISTRY,
        certificate_id,
        recipient,
        f"crash-{certificate_id}",
        [["assetId", "1"]],
        b"x" * 32,
        bytes(32),
        b"not-a-transaction",
    )

    async def ended() -> bool:
        events = await _events(stack, certificate_id)
        return bool(events) and events[-1]["type"] == "CertificateRedeliveryFailed"

    await _until(ended)
    status, view = await stack.get_certificate(REGISTRY, certificate_id)
    assert status == 200
    assert view["state"] == "delivered" and view["failure"] is None
    detail = view["events"][-1]["detail"]
    assert detail["crashes"] == 3 and detail["reason"].startswith("internal error (3 crashes): ")
    row = await stack.pool.fetchrow(
        "SELECT redelivery_requested_at, lease_owner FROM certificates WHERE id = $1", certificate_id
    )
    assert row["redelivery_requested_at"] is None and row["lease_owner"] is None
    # Nobody drives it any more: the history stays as it is.
    await asyncio.sleep(1.5)
    assert (await _events(stack, certificate_id))[-1]["type"] == "CertificateRedeliveryFailed"
    assert stack.wallet.received_requests(certificate_id) == []
