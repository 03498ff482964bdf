"""Allocating a position costs the same however large the backlog is.

A burst leaves thousands of certificates in ``stored`` while the pipeline works
through them, and the table's statistics lag behind (autovacuum analyses it now and
then). With such statistics the allocation function's lookup of the certificates it
was asked for went through the backlog's indexes — in the burst measured, a bitmap of
the state index (every stored certificate) ANDed with the recipient index, 4–9 ms per
allocation at 1,000 arrivals/s (docs/benchmarks.md); here, the unfinished-rows index.
The lookup now goes by primary key whatever the statistics say (migration 0010).

The index entries an allocation reads are counted by PostgreSQL itself, for the
current transaction (``pg_stat_get_xact_tuples_returned`` per index), so the test
does not depend on timing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from stamp.db import queries
from stamp.db.migrate import apply_migrations
from stamp.domain import CertificateKey
from tests.rows import insert_recipient

pytestmark = pytest.mark.asyncio(loop_scope="session")

BACKLOG = 3_000
"""Stored certificates of other recipients: a burst's backlog."""
HISTORY = 2_000
"""Finished certificates in the table when it was last analysed (stale statistics)."""
PLANNED_ONCE_AFTER = 8
"""Earlier allocations on the connection: whatever plan the function's statement keeps
(the generic one, migration 0011) has been made and used."""


@pytest_asyncio.fixture(loop_scope="session")
async def conn(empty_database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(empty_database_dsn)
    try:
        await apply_migrations(connection)
        # Statistics come from ANALYZE below only, as after an autovacuum long ago.
        await connection.execute("ALTER TABLE certificates SET (autovacuum_enabled = false)")
        yield connection
    finally:
        await connection.close()


async def _store(
    conn: asyncpg.Connection, recipients: list[str], per_recipient: int, state: str = "stored"
) -> list[CertificateKey]:
    """``per_recipient`` certificates in ``state`` for each recipient, in one statement."""
    rows = await conn.fetch(
        "INSERT INTO certificates (registry_name, id, recipient_id, metering_point_id, certificate_type, "
        "quantity, period_start, period_end, grid_area, request_digest, state) "
        "SELECT 'Narnia', gen_random_uuid(), r, 'mp-' || gen_random_uuid(), 2, 1, "
        "1700000000 + 3600 * i, 1700000000 + 3600 * (i + 1), 'DK1', '\\x00', $3 "
        "FROM unnest($1::uuid[]) AS r, generate_series(1, $2) AS i "
        "RETURNING registry_name, id::text",
        recipients,
        per_recipient,
        state,
    )
    return [CertificateKey(r["registry_name"], r["id"]) for r in rows]


async def _index_entries_read(conn: asyncpg.Connection) -> dict[str, int]:
    """Index entries of ``certificates`` read so far in the current transaction."""
    rows = await conn.fetch(
        "SELECT indexrelid::regclass::text AS name, pg_stat_get_xact_tuples_returned(indexrelid) AS n "
        "FROM pg_index WHERE indrelid = 'certificates'::regclass"
    )
    return {r["name"]: r["n"] for r in rows}


async def test_an_allocation_reads_its_own_certificates_not_the_backlog(conn: asyncpg.Connection) -> None:
    allocating = await insert_recipient(conn)
    others = [await insert_recipient(conn) for _ in range(20)]
    # The history when the table was last analysed: finished certificates, few stored.
    await _store(conn, others, HISTORY // len(others), state="failed")
    await _store(conn, others, 1)
    await conn.execute("ANALYZE certificates")
    wanted = await _store(conn, [allocating], 2)
    await _store(conn, others, BACKLOG // len(others))
    # A connection of a running Stamp has allocated many times: PostgreSQL then plans
    # the function's statements once, generically, not for each recipient.
    for other in others[:PLANNED_ONCE_AFTER]:
        mine = await conn.fetch(
            "SELECT registry_name, id::text FROM certificates WHERE recipient_id = $1 LIMIT 1", other
        )
        await queries.allocate_positions(
            conn,
            other,
            [(CertificateKey(r["registry_name"], r["id"]), 0) for r in mine],
            lease_owner="a",
            lease_seconds=60,
        )

    async with conn.transaction():
        before = await _index_entries_read(conn)
        allocated = await queries.allocate_positions(
            conn, allocating, [(key, 0) for key in wanted], lease_owner="a", lease_seconds=60
        )
        read = {name: n - before[name] for name, n in (await _index_entries_read(conn)).items()}

    assert [(a.key, a.position) for a in allocated] == [(wanted[0], 1), (wanted[1], 2)]
    # One primary-key probe per certificate to find it and one to update it; the
    # update (a new row version) also runs the period exclusion check. No other index
    # is read: before, the lookup went through the backlog's indexes.
    used = {name for name, n in read.items() if n}
    assert used <= {"certificates_pkey", "certificates_metering_period_excl"}, sorted(read.items())
    assert read["certificates_pkey"] <= 2 * len(wanted), sorted(read.items())


async def test_the_allocation_function_keeps_one_plan_instead_of_planning_every_call(
    conn: asyncpg.Connection,
) -> None:
    # The plan cache would otherwise judge a custom plan (one-element arrays) cheaper
    # than the generic one (ten guessed elements) on every call and plan the function's
    # statement again each time: half its CPU (migration 0011). The generic plan is
    # safe because every lookup goes by primary key (the tests around this one).
    settings = await conn.fetchval(
        "SELECT proconfig FROM pg_proc WHERE oid = "
        "'stamp_allocate_positions(uuid, text[], uuid[], integer[], text, double precision)'::regprocedure"
    )
    assert settings is not None
    assert {"plan_cache_mode=force_generic_plan", "enable_seqscan=off"} <= set(settings)
    # The setting holds inside the function only: a session's own choice is left alone.
    assert await conn.fetchval("SHOW plan_cache_mode") == "auto"


async def test_an_allocation_planned_on_an_empty_table_still_goes_by_primary_key(
    conn: asyncpg.Connection,
) -> None:
    # A new installation: Stamp's connections make the function's one plan on their
    # first allocation, when the table holds almost nothing and a sequential scan looks
    # cheapest; that plan is kept while the table grows. Measured with the generic plan
    # alone (no enable_seqscan = off): 3,004 rows read here, and 6 ms of PostgreSQL CPU
    # per certificate instead of 2.4 in a load test of 6,000.
    first = await insert_recipient(conn)
    (key,) = await _store(conn, [first], 1)
    await queries.allocate_positions(conn, first, [(key, 0)], lease_owner="a", lease_seconds=60)
    others = [await insert_recipient(conn) for _ in range(10)]
    await _store(conn, others, 300)
    later = await insert_recipient(conn)
    wanted = await _store(conn, [later], 2)
    async with conn.transaction():
        allocated = await queries.allocate_positions(
            conn, later, [(k, 0) for k in wanted], lease_owner="a", lease_seconds=60
        )
        scanned = await conn.fetchval(
            "SELECT seq_tup_read FROM pg_stat_xact_user_tables WHERE relid = 'certificates'::regclass"
        )
    assert [a.position for a in allocated] == [1, 2]
    assert scanned == 0
