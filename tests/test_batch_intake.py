"""POST /v1/certificates/batch against a real Stamp, PostgreSQL and the simulators:
per-item outcomes in request order, collisions inside the batch and with stored rows,
idempotent repeats, the limits, the backlog refusal and the in-flight bound."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from stamp.api.runtime import RUNTIME
from stamp.credentials import token_digest
from stamp.devstack.wallet import SliceStatus
from tests.stack import REGISTRY, Stack, certificate_body, running_stack
from tests.test_security_data import DataActorPeak

pytestmark = pytest.mark.asyncio(loop_scope="session")

MAX_BATCH = 20
MAX_BATCH_BODY = 64 * 1024
MAX_IN_FLIGHT = 3


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(database_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(
        database_dsn,
        tmp_path_factory.mktemp("stamp"),
        max_batch=MAX_BATCH,
        max_batch_body_bytes=MAX_BATCH_BODY,
        max_in_flight=MAX_IN_FLIGHT,
    ) as running:
        yield running


async def post_batch(stack: Stack, items: Any, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    async with stack.http.post(
        f"{stack.base}/v1/certificates/batch", json={"certificates": items}, **kwargs
    ) as response:
        return response.status, await response.json(content_type=None), response.headers


def ids(bodies: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(REGISTRY, b["certificate"]["id"]) for b in bodies]


async def count_rows(stack: Stack, bodies: list[dict[str, Any]]) -> int:
    return int(
        await stack.pool.fetchval(
            "SELECT count(*) FROM certificates WHERE id = ANY($1::uuid[])",
            [b["certificate"]["id"] for b in bodies],
        )
    )


async def test_a_mixed_batch_reports_every_item_in_order_and_delivers_the_accepted(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    good = [certificate_body(recipient) for _ in range(6)]
    invalid = certificate_body(recipient, certificate={"quantity": 0})
    not_an_object = ["not", "a", "certificate"]
    stranger = certificate_body(str(uuid.uuid4()))
    items = [good[0], invalid, good[1], not_an_object, good[2], stranger, *good[3:]]
    status, answer, _ = await post_batch(stack, items)
    assert status == 200, answer
    assert [item["index"] for item in answer["items"]] == list(range(len(items)))
    assert (answer["accepted"], answer["alreadyAccepted"], answer["failed"]) == (6, 0, 3)
    outcomes = [(item["outcome"], item["status"]) for item in answer["items"]]
    assert outcomes == [
        ("accepted", 202),
        ("failed", 400),
        ("accepted", 202),
        ("failed", 400),
        ("accepted", 202),
        ("failed", 404),
        ("accepted", 202),
        ("accepted", 202),
        ("accepted", 202),
    ]
    first = answer["items"][0]
    assert first["id"] == good[0]["certificate"]["id"] and first["registryName"] == REGISTRY
    assert first["state"] == "stored"
    assert first["statusUrl"] == f"/v1/certificates/{REGISTRY}/{good[0]['certificate']['id']}"
    # The same problem shape as the single route, the field named relative to the item.
    bad = answer["items"][1]["problem"]
    assert bad["status"] == 400 and bad["type"].endswith("/validation")
    assert bad["errors"] == [{"field": "certificate.quantity", "message": "must be at least 1"}]
    assert answer["items"][3]["problem"]["errors"][0]["field"] == "body"
    unknown = answer["items"][5]["problem"]
    assert unknown["status"] == 404 and unknown["errors"][0]["field"] == "recipientId"
    assert await count_rows(stack, [invalid, stranger]) == 0
    states = await stack.wait_terminal(ids(good), timeout=120)
    assert set(states.values()) == {"delivered"}
    records = await stack.wallet.wait_for(b["certificate"]["id"] for b in good)
    assert {r.status for r in records} == {SliceStatus.VERIFIED}
    positions = await stack.pool.fetchval(
        "SELECT array_agg(position ORDER BY position) FROM certificates WHERE recipient_id = $1", recipient
    )
    assert list(positions) == list(range(1, 7))


async def test_a_repeated_batch_is_idempotent_item_by_item(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    bodies = [certificate_body(recipient) for _ in range(5)]
    status, first, _ = await post_batch(stack, bodies[:3])
    assert status == 200 and first["accepted"] == 3
    # Again, with two new ones: the first three are already accepted, the two are new.
    status, second, _ = await post_batch(stack, bodies)
    assert status == 200, second
    assert [i["outcome"] for i in second["items"]] == ["alreadyAccepted"] * 3 + ["accepted"] * 2
    assert [i["id"] for i in second["items"]] == [b["certificate"]["id"] for b in bodies]
    await stack.wait_terminal(ids(bodies), timeout=120)
    status, third, _ = await post_batch(stack, bodies)
    assert [(i["outcome"], i["state"]) for i in third["items"]] == [("alreadyAccepted", "delivered")] * 5
    assert await count_rows(stack, bodies) == 5
    for body in bodies:
        assert stack.registry.stream_counters(body["certificate"]["id"]).distinct_issue_transactions == 1


async def test_duplicates_conflicts_and_overlaps_inside_one_batch(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    base = certificate_body(recipient, start=1_800_000_000)
    identical = base
    same_id_other_quantity = {**base, "certificate": {**base["certificate"], "quantity": 7}}
    overlapping = {
        **base,
        "certificate": {
            **base["certificate"],
            "id": str(uuid.uuid4()),
            "start": 1_800_001_800,
            "end": 1_800_005_400,
        },
    }
    adjacent = {
        **base,
        "certificate": {
            **base["certificate"],
            "id": str(uuid.uuid4()),
            "start": 1_800_003_600,
            "end": 1_800_007_200,
        },
    }
    status, answer, _ = await post_batch(
        stack, [base, identical, same_id_other_quantity, overlapping, adjacent]
    )
    assert status == 200, answer
    items = answer["items"]
    assert [i["outcome"] for i in items] == ["accepted", "alreadyAccepted", "failed", "failed", "accepted"]
    assert items[1]["id"] == base["certificate"]["id"]
    conflict = items[2]["problem"]
    assert conflict["status"] == 409 and conflict["differences"] == ["certificate.quantity"]
    overlap = items[3]["problem"]
    assert overlap["status"] == 409
    assert overlap["conflictingCertificate"] == {
        "registryName": REGISTRY,
        "id": base["certificate"]["id"],
        "start": 1_800_000_000,
        "end": 1_800_003_600,
    }
    assert await count_rows(stack, [base, overlapping, adjacent]) == 2


async def test_conflicts_and_overlaps_with_stored_certificates(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    stored = certificate_body(recipient, start=1_810_000_000)
    assert (await stack.post_certificate(stored))[0] == 202
    changed = {**stored, "certificate": {**stored["certificate"], "gridArea": "DK1", "quantity": 5}}
    other_id = {**stored, "certificate": {**stored["certificate"], "id": str(uuid.uuid4())}}
    fresh = certificate_body(recipient)
    status, answer, _ = await post_batch(stack, [changed, other_id, fresh, stored])
    assert status == 200, answer
    items = answer["items"]
    assert [i["outcome"] for i in items] == ["failed", "failed", "accepted", "alreadyAccepted"]
    assert items[0]["problem"]["differences"] == ["certificate.quantity"]
    holder = items[1]["problem"]["conflictingCertificate"]
    assert holder["id"] == stored["certificate"]["id"]
    assert "differences" in items[1]["problem"] and "certificate.id" in items[1]["problem"]["differences"]
    assert await count_rows(stack, [other_id]) == 0


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"certificates": []}, "certificates", "must not be empty"),
        ({}, "certificates", "is required"),
        ({"certificates": {}}, "certificates", "must be an array of certificate requests, got an object"),
        (
            {"certificates": [{}] * (MAX_BATCH + 1)},
            "certificates",
            f"has {MAX_BATCH + 1} items; at most {MAX_BATCH} are allowed (STAMP_MAX_BATCH)",
        ),
        ({"certificates": [], "extra": 1}, "extra", "unknown field"),
    ],
)
async def test_a_malformed_batch_is_400_naming_the_field(
    stack: Stack, body: dict[str, Any], field: str, message: str
) -> None:
    async with stack.http.post(f"{stack.base}/v1/certificates/batch", json=body) as response:
        problem = await response.json(content_type=None)
        assert response.status == 400, problem
        assert response.content_type == "application/problem+json"
    assert {"field": field, "message": message} in problem["errors"]


async def test_a_batch_over_the_body_limit_is_413_and_stores_nothing(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    bodies = [certificate_body(recipient) for _ in range(3)]
    padding = " " * MAX_BATCH_BODY
    data = ('{"certificates": ' + str(bodies).replace("'", '"') + padding + "}").encode()
    async with stack.http.post(
        f"{stack.base}/v1/certificates/batch", data=data, headers={"Content-Type": "application/json"}
    ) as response:
        problem = await response.json(content_type=None)
        assert response.status == 413
    assert problem["maxBytes"] == MAX_BATCH_BODY
    assert await count_rows(stack, bodies) == 0


async def test_a_full_batch_never_exceeds_the_in_flight_bound_and_is_delivered(stack: Stack) -> None:
    live = stack.app[RUNTIME].live
    recipients = await asyncio.gather(*(stack.create_recipient() for _ in range(4)))
    bodies = [certificate_body(recipients[i % 4]) for i in range(MAX_BATCH)]
    live.slots_peak = 0
    with DataActorPeak() as observed:
        status, answer, _ = await post_batch(stack, bodies)
        assert status == 200 and answer["accepted"] == MAX_BATCH, answer
        states = await stack.wait_terminal(ids(bodies), timeout=180)
    assert set(states.values()) == {"delivered"}
    assert 1 <= observed.peak <= MAX_IN_FLIGHT
    assert 1 <= live.slots_peak <= MAX_IN_FLIGHT
    async with asyncio.timeout(10):
        while live.slots_taken:  # noqa: ASYNC110 (released by the supervisor, an actor thread)
            await asyncio.sleep(0.05)


async def test_when_the_backlog_cannot_take_the_batch_it_is_503_and_nothing_is_written(
    database_dsn: str, tmp_path: Path
) -> None:
    # A registry that takes a minute to commit keeps every accepted certificate in the backlog.
    async with running_stack(database_dsn, tmp_path, max_backlog=4, commit_delay=60) as small:
        recipient = await small.create_recipient()
        bodies = [certificate_body(recipient) for _ in range(5)]
        status, problem, headers = await post_batch(small, bodies)
        assert status == 503, problem
        assert headers["Retry-After"] == "5" and problem["retryAfter"] == 5
        assert "cannot take 5 more within the limit 4" in problem["detail"]
        assert await count_rows(small, bodies) == 0
        # What fits is taken.
        status, answer, _ = await post_batch(small, bodies[:4])
        assert status == 200 and answer["accepted"] == 4
        # The backlog is full now, but a repeat stores nothing new: answered, not refused.
        status, again, _ = await post_batch(small, bodies[:4])
        assert status == 200, again
        assert [i["outcome"] for i in again["items"]] == ["alreadyAccepted"] * 4
        status, problem, _ = await post_batch(small, bodies)
        assert status == 503 and "cannot take 1 more" in problem["detail"]
        assert await count_rows(small, bodies) == 4


async def test_batch_intake_needs_the_bearer_token_like_every_v1_route(
    database_dsn: str, tmp_path: Path
) -> None:
    token = "batch-test-token-0123456789abcdef"
    async with running_stack(database_dsn, tmp_path, auth_tokens=(token_digest(token),)) as guarded:
        bodies = [certificate_body(str(uuid.uuid4()))]
        status, _, headers = await post_batch(guarded, bodies)
        assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
        status, answer, _ = await post_batch(guarded, bodies, headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and answer["items"][0]["status"] == 404
