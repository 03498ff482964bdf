"""Admission values: what the HTTP edge decides admission with and the actors keep up
to date — the backlog gauge, the live actor counts, the recipient cache. A leaf both
the edge and the actors import; neither imports the other's runtime for them."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg

from stamp.db import queries
from stamp.domain import Recipient


class RecipientCache:
    """A recipient's key never changes and its endpoint is read again at each delivery
    (a moved recipient), so a bounded cache of them saves a query per certificate.
    Filled and evicted on the event loop only; ``peek`` may be called from any thread."""

    def __init__(self, pool: asyncpg.Pool, size: int = 50_000) -> None:
        self._pool = pool
        self._size = size
        self._entries: OrderedDict[str, Recipient] = OrderedDict()
        self._lock = asyncio.Lock()

    def peek(self, recipient_id: str) -> Recipient | None:
        """The cached recipient, without a hop to the loop (a single dict read, atomic
        under the GIL); None when it is not cached."""
        return self._entries.get(recipient_id)

    def remember(self, recipient: Recipient) -> None:
        """Cache a recipient just stored here (on the loop): its first certificates,
        often a burst of them, need no query to find it."""
        self._entries[recipient.id] = recipient
        self._entries.move_to_end(recipient.id)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def forget(self, recipient_id: str) -> None:
        """Drop a recipient that changed (a moved endpoint); read again when next asked."""
        self._entries.pop(recipient_id, None)

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

    async def get_many(self, recipient_ids: Iterable[str]) -> dict[str, Recipient]:
        """The known recipients among ``recipient_ids``, by id: those not cached in one query."""
        found: dict[str, Recipient] = {}
        missing: list[str] = []
        for recipient_id in set(recipient_ids):
            cached = self._entries.get(recipient_id)
            if cached is None:
                missing.append(recipient_id)
            else:
                self._entries.move_to_end(recipient_id)
                found[recipient_id] = cached
        if missing:
            for recipient in await queries.get_recipients(self._pool, missing):
                found[recipient.id] = recipient
                self._entries[recipient.id] = recipient
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return found


@dataclass(slots=True)
class LiveCounts:
    """Written by the supervisor, read by the HTTP edge and metrics: plain ints, so a
    slightly stale read is harmless and nobody waits on an actor.

    Certificate actor *slots* are the exception: they bound the actors alive at once
    (STAMP_MAX_IN_FLIGHT), so they are taken atomically, under a lock, by whoever
    admits a certificate (intake on the loop, the supervisor's backlog sweep) before
    the actor is started, and released by the supervisor once the actor has stopped.
    A count that only the supervisor updated let a burst of requests all see room."""

    certificate_actors: int = 0
    # Set by intake when it stored a certificate without admitting it (no room).
    backlog_waiting: bool = False
    slots_taken: int = 0
    slots_peak: int = 0  # the most slots taken at once since start (a high-water mark)
    _slots_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take_slots(self, limit: int, wanted: int = 1, at_least: int = 1) -> int:
        """Takes up to ``wanted`` slots while fewer than ``limit`` are taken; how many.
        Takes none while fewer than ``at_least`` are free."""
        with self._slots_lock:
            free = limit - self.slots_taken
            taken = max(0, min(wanted, free)) if free >= at_least else 0
            self.slots_taken += taken
            self.slots_peak = max(self.slots_peak, self.slots_taken)
            return taken

    def release_slots(self, count: int = 1) -> None:
        with self._slots_lock:
            self.slots_taken = max(0, self.slots_taken - count)


@dataclass(slots=True)
class Backlog:
    """Non-terminal certificates, refreshed from the database every second and
    counted up by intake in between, so that admission control costs no query."""

    limit: int
    count: int = 0

    @property
    def full(self) -> bool:
        return self.count >= self.limit

    def added(self, count: int = 1) -> None:
        self.count += count

    async def refresh(self, pool: asyncpg.Pool) -> None:
        self.count = await queries.count_active(pool)
