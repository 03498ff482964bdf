"""Numbered SQL migrations: `stamp/db/migrations/NNNN_name.sql`, applied in order,
each in its own transaction, recorded in `schema_migrations`.

Several Stamp processes may start against one database at once; a transaction-level
advisory lock serialises them, and each re-checks under the lock whether its file
was applied meanwhile, so every file runs exactly once.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Any fixed 64-bit key, the same in every Stamp version: it names "Stamp's schema".
MIGRATION_LOCK_KEY = 0x5354414D50_0001  # "STAMP", 1
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

MigrationSource = Traversable | Path
# A plain connection or one acquired from a pool.
Connection = asyncpg.Connection | PoolConnectionProxy


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    current: int  # the highest applied version, 0 on an empty database
    latest: int  # the highest version this Stamp ships
    pending: list[int]  # shipped but not applied, in order


class SchemaOutdated(RuntimeError):
    def __init__(self, status: SchemaStatus) -> None:
        self.status = status
        pending = ", ".join(f"{v:04d}" for v in status.pending)
        super().__init__(
            f"the database schema is behind this Stamp: at version {status.current}, "
            f"needs {status.latest} (pending migrations: {pending}). "
            "Run `stamp migrate` with the same STAMP_DATABASE_URL, then start Stamp again "
            "(or set STAMP_AUTO_MIGRATE=true to migrate at start-up)."
        )


class MigrationError(RuntimeError):
    """The migration files themselves are malformed."""


class MigrationFailed(RuntimeError):
    """A migration's SQL failed and was rolled back: the database refused it, or the
    migration refused the data it found (then its message says what to do)."""

    def __init__(self, migration: Migration, error: asyncpg.PostgresError) -> None:
        self.version = migration.version
        self.error = error
        lines = [f"migration {migration.version:04d} ({migration.name}) failed and was rolled back: {error}"]
        detail = getattr(error, "detail", None)
        hint = getattr(error, "hint", None)
        if detail:
            lines.append(detail)
        if hint:
            lines.append(f"Hint: {hint}")
        super().__init__("\n".join(lines))


def default_source() -> Traversable:
    return importlib.resources.files("stamp.db") / "migrations"


def load_migrations(source: MigrationSource | None = None) -> tuple[Migration, ...]:
    if source is None:
        return _default_migrations()
    return _load(source)


@functools.cache
def _default_migrations() -> tuple[Migration, ...]:
    # The shipped files never change while the process runs; readiness probes ask often.
    return _load(default_source())


def _load(source: MigrationSource) -> tuple[Migration, ...]:
    found: dict[int, Migration] = {}
    for entry in source.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_lowercase_name.sql")
        version = int(match[1])
        if version == 0:
            raise MigrationError(f"migration file {entry.name!r}: versions start at 0001")
        if version in found:
            raise MigrationError(f"two migration files have version {version:04d}")
        found[version] = Migration(version, match[2], entry.read_text(encoding="utf-8"))
    return tuple(found[v] for v in sorted(found))


async def applied_versions(conn: Connection) -> set[int]:
    if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL"):
        return set()
    return {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}


async def apply_migrations(conn: Connection, source: MigrationSource | None = None) -> list[int]:
    """Applies every pending migration; returns the versions this call applied."""
    migrations = load_migrations(source)
    done = await applied_versions(conn)
    applied: list[int] = []
    for migration in migrations:
        if migration.version in done:
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            # Created under the lock: CREATE TABLE IF NOT EXISTS is not safe against
            # a concurrent creator.
            await conn.execute(_CREATE_TABLE)
            if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", migration.version):
                continue  # another process applied it while we waited for the lock
            try:
                await conn.execute(migration.sql)
            except asyncpg.PostgresError as exc:
                raise MigrationFailed(migration, exc) from exc
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        applied.append(migration.version)
    return applied


async def schema_status(conn: Connection, source: MigrationSource | None = None) -> SchemaStatus:
    known = [m.version for m in load_migrations(source)]
    done = await applied_versions(conn)
    # A schema ahead of this Stamp (a newer instance migrated during a rolling
    # upgrade) counts as current: migrations are written expand-then-contract, so
    # the previous release keeps working on the next schema.
    return SchemaStatus(
        current=max(done, default=0),
        latest=max(known, default=0),
        pending=[v for v in known if v not in done],
    )


async def ensure_current(conn: Connection, source: MigrationSource | None = None) -> SchemaStatus:
    status = await schema_status(conn, source)
    if status.pending:
        raise SchemaOutdated(status)
    return status
