"""Fixtures shared by every Stamp test.

The database fixtures run against a real PostgreSQL: STAMP_TEST_PG_DSN, else
127.0.0.1:5432 as `postgres`, else an embedded PostgreSQL started for the session.
Each test session works in its own database (created here, migrated, dropped at the
end), so sessions and other users of the server never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import pytest_asyncio

from stamp.crypto import backend
from stamp.db.embedded import EmbeddedPostgres
from stamp.db.migrate import apply_migrations
from stamp.db.pool import DatabaseUnavailable, create_pool, wait_for_database
from stamp.load.database import create_database, drop_database
from stamp.load.database import database_dsn as dsn_for_database

DEFAULT_TEST_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def native_backend() -> backend.DecafGroup:
    """The libdecaf backend, or a skip with the reason where it is truly unavailable.

    With STAMP_REQUIRE_DECAF=1 or CI=true (.ci/run sets the former) a missing backend fails
    the run instead: a broken build must not pass as a row of skipped tests."""
    try:
        return backend.load_decaf()
    except backend.BackendUnavailable as exc:
        if os.environ.get("STAMP_REQUIRE_DECAF") == "1" or os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the native crypto backend is required here but unavailable: {exc}", pytrace=False)
        pytest.skip(f"the native crypto backend is unavailable: {exc}")


@pytest.fixture(scope="module", params=["sodium", "decaf"])
def each_backend(request: pytest.FixtureRequest) -> Iterator[backend.Group]:
    """Runs every test of a module once per crypto backend, as this process's active one."""
    group: backend.Group = backend.SODIUM if request.param == "sodium" else native_backend()
    previous = backend.selection()
    backend.use(backend.Selection(request.param, group))
    try:
        yield group
    finally:
        backend.use(previous)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A maintenance DSN of the test PostgreSQL server.

    STAMP_TEST_PG_DSN when set (CI sets it): then the server must be there — this
    fails, never skips, because a suite that silently skips its database tests proves
    nothing. Otherwise 127.0.0.1:5432, and when nothing answers there (a fresh machine)
    an embedded PostgreSQL started for this session: the same engine Stamp embeds."""
    explicit = os.environ.get("STAMP_TEST_PG_DSN")
    dsn = explicit or DEFAULT_TEST_PG_DSN
    try:
        await wait_for_database(dsn, timeout=10 if explicit else 3)
    except DatabaseUnavailable as exc:
        if explicit:
            pytest.fail(
                f"the tests need PostgreSQL and cannot reach it: {exc}. Start PostgreSQL on "
                "127.0.0.1:5432 (user postgres, trust auth) or set STAMP_TEST_PG_DSN to a server "
                "where that user may CREATE DATABASE.",
                pytrace=False,
            )
        embedded = EmbeddedPostgres(tmp_path_factory.mktemp("embedded-pg") / "pg")
        embedded_dsn = await asyncio.to_thread(embedded.start)
        try:
            yield dsn_for_database(embedded_dsn, "postgres")
        finally:
            await asyncio.to_thread(embedded.stop)
        return
    yield dsn


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """A database of this session with Stamp's schema applied; dropped at the end."""
    name = await create_database(pg_server_dsn, "stamp_test")
    try:
        dsn = dsn_for_database(pg_server_dsn, name)
        conn = await asyncpg.connect(dsn)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        yield dsn
    finally:
        await drop_database(pg_server_dsn, name)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def db_pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_dsn, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()


async def _empty_tables(pool: asyncpg.Pool) -> None:
    tables = await pool.fetch(
        "SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables "
        "WHERE schemaname = current_schema() AND tablename <> 'schema_migrations'"
    )
    if tables:
        await pool.execute(f"TRUNCATE {', '.join(t['name'] for t in tables)} RESTART IDENTITY CASCADE")


@pytest_asyncio.fixture(loop_scope="session")
async def clean_db(db_pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The session pool, on tables emptied before the test — and after it, so the
    hand-made rows of a constraint test never reach a later test's running Stamp.
    Every table but the migration ledger is emptied, so tables added by later
    migrations are covered."""
    await _empty_tables(db_pool)
    yield db_pool
    await _empty_tables(db_pool)


@pytest_asyncio.fixture(loop_scope="session")
async def empty_database_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """A fresh database without any schema, dropped after the test (for tests of
    migrations and of start-up against an empty database)."""
    name = await create_database(pg_server_dsn, "stamp_test_empty")
    try:
        yield dsn_for_database(pg_server_dsn, name)
    finally:
        await drop_database(pg_server_dsn, name)
