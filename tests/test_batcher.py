"""The group commit (stamp/db/batcher.py) against a real PostgreSQL: statements that
queue up share a round trip, each still gets its own answer, a bad row fails alone,
and racing batchers (two Stamp processes) neither deadlock nor break invariant 2."""

from __future__ import annotations

import asyncio
import threading
import uuid

import asyncpg
import pytest

from stamp.db import queries
from stamp.db.batcher import StatementBatcher
from stamp.db.pool import create_pool
from stamp.domain import CertificateContent, CertificateKey, Event, State
from tests.test_positions import _stored_certificates

pytestmark = pytest.mark.asyncio(loop_scope="session")
LEASE = queries.Lease("test", 60)


def _advance(key: CertificateKey, version: int) -> tuple[object, ...]:
    return queries.transition_args(key, version, State.SENT_TO_REGISTRY, Event.SENT_TO_REGISTRY, {}, LEASE)


async def _with_position(pool: asyncpg.Pool, count: int) -> list[CertificateKey]:
    recipient, keys = await _stored_certificates(pool, count)
    await queries.allocate_positions(
        pool, recipient, [(k, 0) for k in keys], lease_owner="test", lease_seconds=60
    )
    # A transaction must exist before leaving 'stored' (schema check).
    await pool.execute("UPDATE certificates SET transaction = '\\x01' WHERE recipient_id = $1", recipient)
    return keys


async def test_statements_queued_meanwhile_share_a_round_trip_and_each_gets_its_answer(
    clean_db: asyncpg.Pool,
) -> None:
    keys = await _with_position(clean_db, 60)
    batcher = StatementBatcher(clean_db, asyncio.get_running_loop())
    # Half at the version they are at (1 after allocation), half stale.
    results = await asyncio.gather(
        *(
            batcher.fetch(
                queries.ADVANCE, _advance(k, 1 if i % 2 == 0 else 7), (k.registry, k.certificate_id)
            )
            for i, k in enumerate(keys)
        )
    )
    assert [r["version"] for r in results] == [2 if i % 2 == 0 else None for i in range(60)]
    assert batcher.statements == 60
    assert batcher.round_trips < 10, "the statements were batched"
    states = {
        r["id"]: r["state"]
        for r in await clean_db.fetch("SELECT id::text, state FROM certificates WHERE version = 2")
    }
    assert sorted(states) == sorted(k.certificate_id for i, k in enumerate(keys) if i % 2 == 0)
    events = await clean_db.fetchval(
        "SELECT count(*) FROM certificate_events WHERE event_type = 'CertificateSentToRegistry'"
    )
    assert events == 30, "one event per applied transition, none for the stale ones"


async def test_a_failing_row_fails_alone_and_the_rest_of_its_batch_commits(clean_db: asyncpg.Pool) -> None:
    keys = await _with_position(clean_db, 10)
    batcher = StatementBatcher(clean_db, asyncio.get_running_loop())
    bad = keys[4]
    # The schema refuses a blinding value that is not 32 bytes.
    args = [
        queries.transition_args(
            k,
            1,
            State.SENT_TO_REGISTRY,
            Event.SENT_TO_REGISTRY,
            {},
            LEASE,
            b"tx",
            f"id-{i}",
            bytes(31 if k == bad else 32),
            [bytes(16)],
        )
        for i, k in enumerate(keys)
    ]
    outcomes = await asyncio.gather(
        *(
            batcher.fetch(queries.RECORD_TRANSACTION, a, (k.registry, k.certificate_id))
            for a, k in zip(args, keys, strict=True)
        ),
        return_exceptions=True,
    )
    for key, outcome in zip(keys, outcomes, strict=True):
        if key == bad:
            assert isinstance(outcome, asyncpg.CheckViolationError)
        else:
            assert isinstance(outcome, asyncpg.Record) and outcome["version"] == 2
    assert await clean_db.fetchval("SELECT count(*) FROM certificates WHERE state = 'sent_to_registry'") == 9


async def test_submit_from_actor_threads_answers_on_the_loop(clean_db: asyncpg.Pool) -> None:
    keys = await _with_position(clean_db, 40)
    loop = asyncio.get_running_loop()
    batcher = StatementBatcher(clean_db, loop)
    answers: dict[str, int | None] = {}
    all_done = asyncio.Event()
    loop_thread = threading.get_ident()

    def submit_all() -> None:
        for key in keys:

            def done(
                row: asyncpg.Record | None, error: BaseException | None, key: CertificateKey = key
            ) -> None:
                assert threading.get_ident() == loop_thread
                assert error is None and row is not None
                answers[key.certificate_id] = row["version"]
                if len(answers) == len(keys):
                    all_done.set()

            batcher.submit(queries.ADVANCE, _advance(key, 1), (key.registry, key.certificate_id), done)

    threads = [threading.Thread(target=submit_all)]
    for thread in threads:
        thread.start()
    async with asyncio.timeout(10):
        await all_done.wait()
    assert set(answers.values()) == {2}
    assert batcher.round_trips < len(keys)


async def test_a_database_that_is_gone_fails_every_statement(database_dsn: str) -> None:
    pool = await asyncpg.create_pool(database_dsn, min_size=1, max_size=1)
    await pool.close()
    batcher = StatementBatcher(pool, asyncio.get_running_loop())
    outcomes = await asyncio.gather(
        *(batcher.fetch("SELECT $1::int AS v", (i,), (str(i),)) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, asyncpg.InterfaceError) for o in outcomes)


async def test_two_batchers_racing_over_many_recipients_leave_no_gap_no_duplicate_and_no_deadlock(
    clean_db: asyncpg.Pool,
) -> None:
    """Two processes' batchers allocate for the same recipients at once, in opposite
    orders: lock ordering by recipient keeps them from deadlocking, the row lock keeps
    positions gapless and unique."""
    loop = asyncio.get_running_loop()
    first, second = StatementBatcher(clean_db, loop), StatementBatcher(clean_db, loop)
    recipients = [await _stored_certificates(clean_db, 6) for _ in range(12)]

    def allocate(batcher: StatementBatcher, recipient: str, keys: list[CertificateKey], owner: str):  # type: ignore[no-untyped-def]
        return batcher.fetch(
            queries.ALLOCATE_POSITIONS,
            queries.allocate_positions_args(recipient, [(k, 0) for k in keys], owner, 60),
            (recipient,),
        )

    async with asyncio.timeout(20):
        rows = await asyncio.gather(
            *(allocate(first, r, keys, "a") for r, keys in recipients),
            *(allocate(second, r, list(reversed(keys)), "b") for r, keys in reversed(recipients)),
        )
    won = sorted(str(a.key) for row in rows for a in queries.allocated_positions(row))
    assert won == sorted(str(k) for _, keys in recipients for k in keys), "each allocated exactly once"
    for recipient, _ in recipients:
        positions = await clean_db.fetch(
            "SELECT position FROM certificates WHERE recipient_id = $1 ORDER BY position", recipient
        )
        assert [p["position"] for p in positions] == list(range(1, 7))
        assert await clean_db.fetchval("SELECT next_position FROM recipients WHERE id = $1", recipient) == 7


async def test_intake_inserts_batch_and_a_repeat_is_told_apart(clean_db: asyncpg.Pool) -> None:
    recipient, _ = await _stored_certificates(clean_db, 0)
    batcher = StatementBatcher(clean_db, asyncio.get_running_loop())

    def row(i: int) -> queries.NewCertificateRow:
        return queries.NewCertificateRow(
            content=CertificateContent(
                key=CertificateKey("Narnia", str(uuid.UUID(int=i + 1))),
                recipient_id=recipient,
                metering_point_id="571313000000000001",
                certificate_type=2,
                quantity=100 + i,
                start=1_700_000_000 + 3600 * i,
                end=1_700_003_600 + 3600 * i,
                grid_area="DK1",
                clear_attributes=(),
                hashed_attributes=(),
            ),
            request_digest=b"\x00",
        )

    new_rows = [row(i) for i in range(20)] + [row(3)]  # the last one repeats an earlier one
    results = await asyncio.gather(
        *(
            batcher.fetch(
                queries.INSERT_CERTIFICATE,
                queries.insert_certificate_args(r, None),
                (r.content.key.registry, r.content.key.certificate_id),
            )
            for r in new_rows
        )
    )
    stored = [r["created_at"] is not None for r in results]
    assert stored.count(True) == 20 and stored.count(False) == 1
    assert await clean_db.fetchval("SELECT count(*) FROM certificate_events") == 20


async def test_a_statement_kind_waiting_on_a_lock_does_not_hold_up_another(clean_db: asyncpg.Pool) -> None:
    """Intake inserts must not queue behind transitions that wait for PostgreSQL."""
    keys = await _with_position(clean_db, 1)
    batcher = StatementBatcher(clean_db, asyncio.get_running_loop())
    key = keys[0]
    async with clean_db.acquire() as blocker, blocker.transaction():
        await blocker.execute("SELECT 1 FROM certificates WHERE id = $1 FOR UPDATE", key.certificate_id)
        blocked = asyncio.ensure_future(
            batcher.fetch(queries.ADVANCE, _advance(key, 1), (key.registry, key.certificate_id))
        )
        await asyncio.sleep(0.2)
        assert not blocked.done(), "the transition waits for the row lock"
        other = await asyncio.wait_for(batcher.fetch("SELECT $1::int AS answer", (42,), ("other",)), 5)
        assert other["answer"] == 42
    assert (await asyncio.wait_for(blocked, 5))["version"] == 2


SLOW = "SELECT $2::int AS n, pg_sleep($1::float8) IS NULL AS slept"


@pytest.mark.parametrize("writers", [1, 3])
async def test_a_kind_with_more_writers_answers_without_waiting_for_a_slow_batch(
    clean_db: asyncpg.Pool, writers: int
) -> None:
    batcher = StatementBatcher(clean_db, asyncio.get_running_loop(), writers={SLOW: writers})
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow = asyncio.ensure_future(batcher.fetch(SLOW, (1.0, 1), ("a",)))
    await asyncio.sleep(0.05)  # the slow one is being written
    quick = await batcher.fetch(SLOW, (0.0, 2), ("b",))
    quick_after = loop.time() - started
    assert quick["n"] == 2 and (await slow)["n"] == 1
    if writers == 1:
        assert quick_after >= 0.9, "one writer: the next statement waits for the batch under way"
    else:
        assert quick_after < 0.5, "a second writer answers at once"


PID = "SELECT pg_backend_pid() AS pid, $1::int AS n"


async def _writers_done(batcher: StatementBatcher) -> None:
    """A statement is answered before its writer gives the connection back."""
    if batcher._running:
        await asyncio.wait(list(batcher._running))


async def test_a_batcher_keeps_its_connections_between_batches_and_gives_them_back_on_close(
    database_dsn: str,
) -> None:
    pool = await create_pool(database_dsn, min_size=1, max_size=3)
    try:
        batcher = StatementBatcher(pool, asyncio.get_running_loop(), keep_connections=1)
        pids = {(await batcher.fetch(PID, (i,), ("a",)))["pid"] for i in range(5)}
        assert len(pids) == 1, "one statement after the other: the same kept connection"
        await _writers_done(batcher)
        assert pool.get_idle_size() < pool.get_size(), "kept checked out between batches"
        await batcher.close()
        assert pool.get_idle_size() == pool.get_size()
        # Closed: a batch still gets written, on a connection it gives back at once.
        assert (await batcher.fetch(PID, (9,), ("a",)))["n"] == 9
        await _writers_done(batcher)
        assert pool.get_idle_size() == pool.get_size()
    finally:
        await asyncio.wait_for(pool.close(), 5)  # would wait for ever for a kept connection


async def test_a_kept_connection_that_was_lost_or_failed_is_not_used_again(
    clean_db: asyncpg.Pool, database_dsn: str
) -> None:
    pool = await create_pool(database_dsn, min_size=1, max_size=3)
    try:
        batcher = StatementBatcher(pool, asyncio.get_running_loop(), keep_connections=1)
        first = (await batcher.fetch(PID, (1,), ("a",)))["pid"]
        # The server drops the kept connection while it is idle (a restart, an admin):
        # the next batch gets another one instead of failing.
        await clean_db.execute("SELECT pg_terminate_backend($1)", first)
        await asyncio.sleep(0.3)
        second = (await batcher.fetch(PID, (2,), ("a",)))["pid"]
        assert second != first
        # A statement that failed returns its connection to the pool, not to the batcher.
        with pytest.raises(asyncpg.PostgresError):
            await batcher.fetch("SELECT 1 / $1::int AS n", (0,), ("a",))
        third = (await batcher.fetch(PID, (3,), ("a",)))["pid"]
        await _writers_done(batcher)
        assert batcher._idle and third == batcher._idle[0].get_server_pid()
        await batcher.close()
    finally:
        await asyncio.wait_for(pool.close(), 5)
