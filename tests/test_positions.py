"""Position allocation races as two Stamp instances would run it (invariant 2)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from stamp.db import queries
from stamp.domain import CertificateKey
from tests.rows import insert_recipient

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _stored_certificates(pool: asyncpg.Pool, count: int) -> tuple[str, list[CertificateKey]]:
    recipient = await insert_recipient(pool)
    keys = []
    for i in range(count):
        key = CertificateKey("Narnia", str(uuid.uuid4()))
        await pool.execute(
            "INSERT INTO certificates (registry_name, id, recipient_id, metering_point_id, certificate_type, "
            "quantity, period_start, period_end, grid_area, request_digest, state) "
            "VALUES ($1, $2, $3, $4, 2, 1, $5::bigint, $5::bigint + 3600, 'DK1', '\\x00', 'stored')",
            key.registry,
            key.certificate_id,
            recipient,
            f"race-{recipient}",
            1_700_000_000 + 3600 * i,
        )
        keys.append(key)
    return recipient, keys


async def test_two_allocators_racing_for_the_same_certificates_leave_no_gap_and_no_duplicate(
    db_pool: asyncpg.Pool,
) -> None:
    for _ in range(5):
        recipient, keys = await _stored_certificates(db_pool, 20)
        wanted = [(k, 0) for k in keys]
        # Two instances both believe they drive these certificates (same versions).
        first, second = await asyncio.gather(
            queries.allocate_positions(db_pool, recipient, wanted, lease_owner="a", lease_seconds=60),
            queries.allocate_positions(
                db_pool, recipient, list(reversed(wanted)), lease_owner="b", lease_seconds=60
            ),
        )
        won = [a.key for a in first] + [a.key for a in second]
        assert sorted(won, key=str) == sorted(keys, key=str), "each certificate is allocated exactly once"
        rows = await db_pool.fetch(
            "SELECT position FROM certificates WHERE recipient_id = $1 ORDER BY position", recipient
        )
        assert [r["position"] for r in rows] == list(range(1, 21))
        assert await db_pool.fetchval("SELECT next_position FROM recipients WHERE id = $1", recipient) == 21


async def test_a_stale_version_gets_no_position(db_pool: asyncpg.Pool) -> None:
    recipient, keys = await _stored_certificates(db_pool, 2)
    allocated = await queries.allocate_positions(
        db_pool, recipient, [(keys[0], 7), (keys[1], 0)], lease_owner="a", lease_seconds=60
    )
    assert [(a.key, a.position) for a in allocated] == [(keys[1], 1)]
