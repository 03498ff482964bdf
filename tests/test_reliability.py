"""Backpressure, crash loops and bad input against a real Stamp (issue 5)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stamp.crypto.hdkeys import ExtendedPrivateKey
from tests.stack import REGISTRY, Stack, certificate_body, running_stack
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(database_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(database_dsn, tmp_path_factory.mktemp("reliability")) as running:
        yield running


async def _row_counts(stack: Stack, recipient: str | None = None) -> tuple[int, int, int]:
    """Rows of this recipient's certificates and their events, and all recipients."""
    row = await stack.pool.fetchrow(
        "SELECT (SELECT count(*) FROM certificates WHERE recipient_id = $1) AS c, "
        "(SELECT count(*) FROM recipients) AS r, "
        "(SELECT count(*) FROM certificate_events e JOIN certificates c "
        " ON c.registry_name = e.registry_name AND c.id = e.certificate_id WHERE c.recipient_id = $1) AS e",
        recipient,
    )
    return row["c"], row["r"], row["e"]


async def test_backlog_over_the_limit_answers_503_with_retry_after_and_writes_nothing(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    async with running_stack(empty_database_dsn, tmp_path, max_backlog=2) as small:
        recipient = await small.create_recipient()
        bodies = [certificate_body(recipient) for _ in range(2)]
        ids = [b["certificate"]["id"] for b in bodies]
        small.registry.hold(certificate_ids=ids)
        for body in bodies:
            assert (await small.post_certificate(body))[0] == 202

        async def both_held_in_the_registry() -> bool:
            # Counted only once the pipeline has nothing left to write: until the held
            # transactions are sent, their sent_to_registry events are still to come.
            states = await small.pool.fetch("SELECT state FROM certificates WHERE id = ANY($1::uuid[])", ids)
            return [r["state"] for r in states] == ["sent_to_registry"] * len(ids)

        await wait_until(both_held_in_the_registry, what="both certificates sent and held")
        before = await _row_counts(small, recipient)
        async with small.http.post(f"{small.base}/v1/certificates", json=certificate_body(recipient)) as r:
            assert r.status == 503
            assert r.headers["Content-Type"].startswith("application/problem+json")
            assert int(r.headers["Retry-After"]) > 0
        assert await _row_counts(small, recipient) == before
        # An identical re-post of an accepted certificate is still answered.
        assert (await small.post_certificate(bodies[0]))[0] == 202
        small.registry.release()
        await small.wait_terminal([(REGISTRY, b["certificate"]["id"]) for b in bodies])


async def test_an_actor_that_keeps_crashing_marks_its_certificate_failed(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    certificate_id = str(uuid.uuid4())
    # A row that no code path can deliver (a salt is missing for a hashed attribute):
    # the actor crashes on it every time it tries.
    await stack.pool.execute(
        """INSERT INTO certificates (registry_name, id, recipient_id, metering_point_id, certificate_type,
               quantity, period_start, period_end, grid_area, clear_attributes, hashed_attributes,
               request_digest, state, version, position, blinding, salts, transaction, transaction_id)
           VALUES ($1, $2, $3, $4, 2, 10, 1700000000, 1700003600, 'DK1', '[]', $5, $6,
                   'marked_as_issued', 4, 1, $7, '{}', $8, 'tx-id')""",
        REGISTRY,
        certificate_id,
        recipient,
        f"crash-{certificate_id}",
        [["assetId", "1"]],
        b"x" * 32,
        bytes(32),
        b"not-a-transaction",
    )
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        row = await stack.pool.fetchrow(
            "SELECT state, failed_step, failure_reason FROM certificates WHERE id = $1", certificate_id
        )
        if row["state"] == "failed" or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert row["state"] == "failed"
    assert row["failed_step"] == "wallet"
    assert "3 crashes" in row["failure_reason"]
    _, view = await stack.get_certificate(REGISTRY, certificate_id)
    assert view["events"][-1]["type"] == "CertificateFailed"


VALID_KEY = ExtendedPrivateKey.generate().public().to_base64()


def _recipient(**reference: Any) -> dict[str, Any]:
    base = {"version": 1, "endpoint": "http://127.0.0.1:1/v1/slices", "publicKey": VALID_KEY}
    base.update(reference)
    return {"walletEndpointReference": base}


def _cert(recipient: str, **certificate: Any) -> dict[str, Any]:
    body = certificate_body(recipient)
    body["certificate"].update(certificate)
    return body


BAD_CERTIFICATES: list[tuple[str, Any, str]] = [
    ("missing quantity", lambda r: _drop(_cert(r), "quantity"), "certificate.quantity"),
    ("extra field", lambda r: {**_cert(r), "colour": "green"}, "colour"),
    ("quantity as string", lambda r: _cert(r, quantity="1000"), "certificate.quantity"),
    ("quantity as bool", lambda r: _cert(r, quantity=True), "certificate.quantity"),
    ("negative quantity", lambda r: _cert(r, quantity=-1), "certificate.quantity"),
    ("zero quantity", lambda r: _cert(r, quantity=0), "certificate.quantity"),
    ("overflowing quantity", lambda r: _cert(r, quantity=2**64), "certificate.quantity"),
    ("non-uuid id", lambda r: _cert(r, id="123"), "certificate.id"),
    ("non-uuid recipient", lambda r: {**_cert(r), "recipientId": "nope"}, "recipientId"),
    ("start after end", lambda r: _cert(r, start=1700003600, end=1700000000), "certificate.end"),
    ("period under a minute", lambda r: _cert(r, start=1700000000, end=1700000059), "certificate.end"),
    ("period over an hour", lambda r: _cert(r, start=1700000000, end=1700003601), "certificate.end"),
    ("unknown registry", lambda r: {**_cert(r), "registryName": "Atlantis"}, "registryName"),
    ("grid area without issuer key", lambda r: _cert(r, gridArea="SE4"), "certificate.gridArea"),
    (
        "too many attributes",
        lambda r: _cert(r, clearTextAttributes={f"k{i}": "v" for i in range(60)}),
        "certificate.clearTextAttributes",
    ),
    (
        "too long attribute",
        lambda r: _cert(r, clearTextAttributes={"k": "v" * 600}),
        "certificate.clearTextAttributes",
    ),
    (
        "duplicate attribute keys",
        lambda r: _cert(r, hashedAttributes=[{"key": "a", "value": "1"}, {"key": "a", "value": "2"}]),
        "certificate.hashedAttributes",
    ),
    (
        "non-string attribute value",
        lambda r: _cert(r, clearTextAttributes={"k": 5}),
        "certificate.clearTextAttributes",
    ),
    ("unknown type", lambda r: _cert(r, type="storage"), "certificate.type"),
]

BAD_RECIPIENTS: list[tuple[str, dict[str, Any], str]] = [
    ("unsupported wallet version", _recipient(version=2), "walletEndpointReference.version"),
    ("non-http endpoint", _recipient(endpoint="ftp://wallet/v1/slices"), "walletEndpointReference.endpoint"),
    ("relative endpoint", _recipient(endpoint="/v1/slices"), "walletEndpointReference.endpoint"),
    ("malformed public key", _recipient(publicKey="AAAA"), "walletEndpointReference.publicKey"),
    ("not base64", _recipient(publicKey="!!!"), "walletEndpointReference.publicKey"),
]


def _drop(body: dict[str, Any], field: str) -> dict[str, Any]:
    del body["certificate"][field]
    return body


async def _expect_problem(response: aiohttp.ClientResponse, status: int, field: str | None) -> None:
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"].startswith("application/problem+json")
    problem = await response.json(content_type=None)
    assert problem["status"] == status and problem["title"]
    if field is not None:
        assert any(e["field"].startswith(field) for e in problem["errors"]), problem


@pytest.mark.parametrize(("case", "make", "field"), BAD_CERTIFICATES, ids=[c[0] for c in BAD_CERTIFICATES])
async def test_bad_certificate_is_a_4xx_problem_and_writes_nothing(
    stack: Stack, case: str, make: Any, field: str
) -> None:
    recipient = await stack.create_recipient()
    before = await _row_counts(stack, recipient)
    async with stack.http.post(f"{stack.base}/v1/certificates", json=make(recipient)) as response:
        await _expect_problem(response, 400, field)
    assert await _row_counts(stack, recipient) == before


@pytest.mark.parametrize(("case", "body", "field"), BAD_RECIPIENTS, ids=[c[0] for c in BAD_RECIPIENTS])
async def test_bad_recipient_is_a_400_problem_and_writes_nothing(
    stack: Stack, case: str, body: dict[str, Any], field: str
) -> None:
    before = await _row_counts(stack)
    async with stack.http.post(f"{stack.base}/v1/recipients", json=body) as response:
        await _expect_problem(response, 400, field)
    assert await _row_counts(stack) == before


async def test_malformed_requests_are_problems_and_write_nothing(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    before = await _row_counts(stack, recipient)
    url = f"{stack.base}/v1/certificates"
    async with stack.http.post(url, data=b"{not json", headers={"Content-Type": "application/json"}) as r:
        await _expect_problem(r, 400, None)
    async with stack.http.post(
        url, data=json.dumps(_cert(recipient)), headers={"Content-Type": "text/plain"}
    ) as r:
        await _expect_problem(r, 415, None)
    huge = {**_cert(recipient), "padding": "x" * (stack.settings.max_body_bytes + 10)}
    async with stack.http.post(url, json=huge) as r:
        await _expect_problem(r, 413, None)
    async with stack.http.post(url, json=_cert(str(uuid.uuid4()))) as r:
        await _expect_problem(r, 404, "recipientId")
    assert await _row_counts(stack, recipient) == before


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=15,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=JSON, target=st.sampled_from(["certificates", "recipients"]), mutate=st.booleans())
async def test_random_request_bodies_never_cause_a_500(
    stack: Stack, body: Any, target: str, mutate: bool
) -> None:
    if mutate and target == "certificates":
        valid = _cert(str(uuid.uuid4()))
        valid["certificate"][next(iter(valid["certificate"]))] = body
        body = valid
    async with stack.http.post(f"{stack.base}/v1/{target}", json=body) as response:
        assert response.status < 500, await response.text()
