"""What the HTTP handlers share: the pool, the supervisor, the withdrawal actor and the
admission values."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
import pykka
from aiohttp import web

from stamp.admission import Backlog, LiveCounts, RecipientCache
from stamp.config import Settings
from stamp.db.batcher import StatementBatcher
from stamp.db.migrate import schema_status


@dataclass(slots=True)
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    batcher: StatementBatcher
    supervisor: pykka.ActorRef[Any]
    recipients: RecipientCache
    backlog: Backlog
    live: LiveCounts
    withdrawals: pykka.ActorRef[Any] | None = None  # the withdrawal actor
    draining: bool = False
    drained: bool = False  # the actors were told to drain (once)

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
