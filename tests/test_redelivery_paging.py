"""A recipient-wide re-delivery request is written page by page, each page its own
transaction, and is idempotent when interrupted and repeated (real PostgreSQL, a
database of its own: no Stamp drives these rows)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from stamp.db import queries
from stamp.db.migrate import apply_migrations
from stamp.db.queries import Redelivery

pytestmark = pytest.mark.asyncio(loop_scope="session")

REGISTRY = "Narnia"


@pytest_asyncio.fixture(loop_scope="session")
async def conn(empty_database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(empty_database_dsn)
    try:
        await apply_migrations(connection)
        yield connection
    finally:
        await connection.close()


async def _delivered(conn: asyncpg.Connection, count: int) -> str:
    """A recipient with ``count`` delivered certificates (several sharing one
    ``created_at``, as a batch intake stores them); its id."""
    recipient = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO recipients (id, wallet_endpoint_version, wallet_endpoint_url, wallet_public_key)"
        " VALUES ($1, 1, 'http://127.0.0.1:1/v1/slices', $2)",
        recipient,
        b"k" * 74,
    )
    await conn.execute(
        """
        INSERT INTO certificates (registry_name, id, recipient_id, metering_point_id, certificate_type,
            quantity, period_start, period_end, grid_area, clear_attributes, hashed_attributes,
            request_digest, state, position, transaction, transaction_id, created_at)
        SELECT $1, gen_random_uuid(), $2::uuid, 'mp-' || $2::text || '-' || n, 2, 1000,
               1700000000 + 3600 * n, 1700003600 + 3600 * n, 'DK1', '[]', '[]', '\\x00', 'delivered', n,
               '\\x00', 'tx-' || n,
               timestamptz '2026-12-01T00:00:00Z' + make_interval(secs => n / 10)
        FROM generate_series(1, $3) AS n
        """,
        REGISTRY,
        recipient,
        count,
    )
    return recipient


async def _requested_events(conn: asyncpg.Connection, recipient: str) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT c.id::text AS id, count(e.seq) AS n FROM certificates c LEFT JOIN certificate_events e"
        " ON e.registry_name = c.registry_name AND e.certificate_id = c.id"
        " AND e.event_type = 'CertificateRedeliveryRequested' WHERE c.recipient_id = $1 GROUP BY c.id",
        recipient,
    )
    return {r["id"]: r["n"] for r in rows}


async def test_a_recipient_wide_request_is_written_page_by_page(conn: asyncpg.Connection) -> None:
    count = queries.REDELIVERY_PAGE + 3
    recipient = await _delivered(conn, count)

    outcomes = await queries.request_redelivery(conn, recipient_id=recipient)

    assert len(outcomes) == count  # reported as before: every certificate selected
    assert {o.outcome for o in outcomes} == {Redelivery.REQUESTED}
    assert len({o.key for o in outcomes}) == count
    assert set((await _requested_events(conn, recipient)).values()) == {1}
    # Two pages, two transactions (the rows' writing transaction ids): no single
    # statement locked every certificate of the recipient.
    transactions = await conn.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM certificates WHERE recipient_id = $1", recipient
    )
    assert transactions == 2


async def test_an_interrupted_request_repeated_queues_nothing_twice(
    conn: asyncpg.Connection, empty_database_dsn: str
) -> None:
    recipient = await _delivered(conn, 7)
    ordered = [
        r["id"]
        for r in await conn.fetch(
            "SELECT id::text AS id FROM certificates WHERE recipient_id = $1"
            " ORDER BY created_at, registry_name, id",
            recipient,
        )
    ]
    blocker = await asyncpg.connect(empty_database_dsn)
    try:
        # Another writer holds a certificate of the second page: the request stops there.
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("SELECT 1 FROM certificates WHERE id = $1 FOR UPDATE", ordered[4])
        await conn.execute("SET lock_timeout = '300ms'")
        with pytest.raises(asyncpg.LockNotAvailableError):
            await queries.request_redelivery(conn, recipient_id=recipient, page=3)
        await blocking.rollback()
    finally:
        await blocker.close()
        await conn.execute("RESET lock_timeout")
    # The first page stays requested; nothing of the second one was written.
    assert await _requested_events(conn, recipient) == {i: int(i in ordered[:3]) for i in ordered}

    outcomes = await queries.request_redelivery(conn, recipient_id=recipient, page=3)
    assert [o.key.certificate_id for o in outcomes] == ordered
    assert [o.outcome for o in outcomes] == [Redelivery.ALREADY_REQUESTED] * 3 + [Redelivery.REQUESTED] * 4
    assert set((await _requested_events(conn, recipient)).values()) == {1}

    # Once more: everything is pending already, nothing new is queued.
    again = await queries.request_redelivery(conn, recipient_id=recipient, page=3)
    assert {o.outcome for o in again} == {Redelivery.ALREADY_REQUESTED} and len(again) == 7
    assert set((await _requested_events(conn, recipient)).values()) == {1}
