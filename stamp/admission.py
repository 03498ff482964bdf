"""Admission values: what the HTTP edge decides admission with and the actors keep up
to date — the backlog gauge, the live actor counts, the recipient cache. A leaf both
the edge and the actors import; neither imports the other's runtime for them."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

import asyncpg

from stamp.db import queries
from stamp.domain import Recipient


class RecipientCache:
    """Recipients never change once created, so a bounded cache of them saves a
    query per certificate. Filled and evicted on the event loop only; ``peek`` may
    be called from any thread."""

    def __init__(self, pool: asyncpg.Pool, size: int = 50_000) -> None:
        self._pool = pool
        self._size = size
        self._entries: OrderedDict[str, Recipient] = OrderedDict()
        self._lock = asyncio.Lock()

    def peek(self, recipient_id: str) -> Recipient | None:
        """The cached recipient, without a hop to the loop (a single dict read, atomic
        under the GIL); None when it is not cached."""
        return self._entries.get(recipient_id)

    async def get(self, recipient_id: str) -> Recipient | None:
        found = self._entries.get(recipient_id)
        if found is not None:
            self._entries.move_to_end(recipient_id)
            return found
        recipient = await queries.get_recipient(self._pool, recipient_id)
        if recipient is not None:
            self._entries[recipient_id] = recipient
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return recipient


@dataclass(slots=True)
class LiveCounts:
    """Written by the supervisor, read by the HTTP edge and metrics: plain ints, so a
    slightly stale read is harmless and nobody waits on an actor."""

    certificate_actors: int = 0
    recipient_actors: int = 0
    # Set by intake when it stored a certificate without admitting it (no room).
    backlog_waiting: bool = False


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
