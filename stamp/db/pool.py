"""The asyncpg connection pool and the wait for a database that is not up yet."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import orjson
import structlog

from stamp import metrics
from stamp.db.dsn import mask_dsn as mask_dsn

log = structlog.get_logger(__name__)

# Client-side limit for one statement; a query that takes longer is a fault (a lock
# wait, a lost server), not work to wait for.
DEFAULT_COMMAND_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0


class DatabaseUnavailable(ConnectionError):
    """The database could not be reached in time, or refused us for good."""


def _encode_json(value: Any) -> str:
    # asyncpg's text codec for json/jsonb sends a str.
    return orjson.dumps(value).decode()


def _count_round_trip(_query: object) -> None:
    metrics.db_round_trip()


async def init_connection(conn: asyncpg.Connection) -> None:
    """Every pooled connection reads and writes json/jsonb as Python values and counts
    the statements it sends (``stamp_db_round_trips_total``; a pipelined batch of the
    group commit is one)."""
    conn.add_query_logger(_count_round_trip)
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, schema="pg_catalog", encoder=_encode_json, decoder=orjson.loads, format="text"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset on release (advisory unlock, CLOSE ALL, UNLISTEN, RESET
    ALL: one round trip per query Stamp makes, about half of its statements). Stamp
    leaves no session state behind: no session advisory locks, cursors, LISTEN or
    SET; transactions are always closed by their context managers."""


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    application_name: str = "stamp",
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        timeout=CONNECT_TIMEOUT,
        init=init_connection,
        reset=_keep_session,
        # No idle-connection expiry: it arms a loop timer on every release and
        # cancels it on every acquire, i.e. on each of the group commit's batches.
        max_inactive_connection_lifetime=0,
        server_settings={"application_name": application_name},
    )
    assert pool is not None  # only None when created without awaiting
    return pool


# A retry budget, not a cancellation: on expiry the error says why the last try failed.
async def wait_for_database(dsn: str, timeout: float) -> None:  # noqa: ASYNC109
    """Returns once the database accepts a connection and answers a query. Retries
    with backoff while it is down or starting (at start-up, after a PostgreSQL
    restart); gives up at once on errors waiting cannot cure (bad password, no such
    database)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        remaining = deadline - time.monotonic()
        try:
            conn = await asyncpg.connect(dsn, timeout=max(0.1, min(CONNECT_TIMEOUT, remaining)))
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close()
            return
        except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError) as exc:
            raise DatabaseUnavailable(
                f"the database at {mask_dsn(dsn)} refused the connection: {exc}"
            ) from exc
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DatabaseUnavailable(
                    f"the database at {mask_dsn(dsn)} is not reachable after {timeout:g} s: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            log.info("database.waiting", dsn=mask_dsn(dsn), error=type(exc).__name__)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)
