"""What the HTTP handlers share: the pool, the supervisor, the backlog gauge."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pykka
from aiohttp import web

from actors.deps import LiveCounts, RecipientCache
from stamp.config import Settings
from stamp.db import queries
from stamp.db.batcher import StatementBatcher
from stamp.db.migrate import schema_status


@dataclass(slots=True)
class Backlog:
    """Non-terminal certificates, refreshed from the database every second and
    counted up by intake in between, so that admission control costs no query."""

    limit: int
    count: int = 0

    @property
    def full(self) -> bool:
        return self.count >= self.limit

    def added(self) -> None:
        self.count += 1

    async def refresh(self, pool: asyncpg.Pool) -> None:
        self.count = await queries.count_active(pool)


@dataclass(slots=True)
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    batcher: StatementBatcher
    supervisor: pykka.ActorRef[Any]
    recipients: RecipientCache
    backlog: Backlog
    live: LiveCounts
    draining: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    async def readiness(self) -> dict[str, bool]:
        checks = {
            "database": False,
            "schema": False,
            "actors": self.supervisor.is_alive(),
            "accepting": not self.draining,
        }
        try:
            async with asyncio.timeout(2):
                async with self.pool.acquire() as conn:
                    status = await schema_status(conn)
            checks["database"] = True
            checks["schema"] = not status.pending
        except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError):
            pass
        return checks


RUNTIME = web.AppKey("runtime", Runtime)
