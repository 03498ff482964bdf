"""RecipientActor: hands out one recipient's wallet endpoint positions.

Requests that arrive while a database round trip is under way are batched into the
next one, so a busy recipient costs one statement per batch, not per certificate.
The counter itself lives in the recipient row and is advanced under its row lock, so
positions stay unique even across processes; the actor only saves contention.

A recipient's actor lives only while one of its certificates is in flight
(``RecipientDirectory``): certificate actors reach it directly, count themselves in
when they ask for a position and out when they stop, and the last one out stops it.
Live recipient actors are therefore never more than live certificate actors, under
any load.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pykka
import structlog

from actors.backoff import backoff_delay
from actors.base import StampActor
from actors.bridge import Reply, tell_quietly
from actors.deps import ActorDeps
from actors.messages import (
    AllocatePosition,
    AllocationFailed,
    PositionsAllocated,
    Ref,
    RetryAllocation,
)
from stamp.db import queries
from stamp.lifecycle import PositionAllocated, PositionRefused

log = structlog.get_logger(__name__)
MAX_BATCH = 500


def _allocated(batch: tuple[AllocatePosition, ...], row: object) -> PositionsAllocated:
    found = queries.allocated_positions(row)  # type: ignore[arg-type]
    return PositionsAllocated(batch, tuple((a.key, a.position, a.version) for a in found))


class RecipientActor(StampActor):
    def __init__(self, recipient_id: str, deps: ActorDeps) -> None:
        super().__init__(deps.bridge.loop)
        self.recipient_id = recipient_id
        self.deps = deps
        self.pending: list[AllocatePosition] = []
        self.in_flight: tuple[AllocatePosition, ...] = ()
        self.failures = 0

    def on_receive(self, message: object) -> None:
        match message:
            case AllocatePosition():
                self.pending.append(message)
                self._flush()
            case PositionsAllocated():
                self._on_allocated(message)
            case AllocationFailed():
                self._on_failed(message)
            case RetryAllocation():
                self._flush()

    def _flush(self) -> None:
        if self.in_flight or not self.pending:
            return
        batch, self.pending = tuple(self.pending[:MAX_BATCH]), self.pending[MAX_BATCH:]
        self.in_flight = batch
        settings = self.deps.settings
        self.deps.bridge.write(
            queries.ALLOCATE_POSITIONS,
            queries.allocate_positions_args(
                self.recipient_id,
                [(request.key, request.version) for request in batch],
                settings.instance_id,
                settings.lease_seconds,
            ),
            (self.recipient_id,),
            Reply(
                self.actor_ref,
                lambda row: _allocated(batch, row),
                lambda reason: AllocationFailed(batch, reason),
            ),
        )

    def _on_allocated(self, message: PositionsAllocated) -> None:
        self.in_flight = ()
        self.failures = 0
        by_key = {key: (position, version) for key, position, version in message.allocated}
        for request in message.batch:
            allocated = by_key.get(request.key)
            answer = PositionRefused() if allocated is None else PositionAllocated(*allocated)
            tell_quietly(request.reply_to, answer)
        if message.allocated:
            log.debug(
                "positions.allocated",
                recipient_id=self.recipient_id,
                count=len(message.allocated),
                last=max(position for _, position, _ in message.allocated),
            )
        self._flush()

    def _on_failed(self, message: AllocationFailed) -> None:
        # The database is unreachable or busy: keep the requests, in order, and retry.
        self.in_flight = ()
        self.pending[:0] = message.batch
        self.failures += 1
        log.warning(
            "positions.allocation_failed",
            recipient_id=self.recipient_id,
            reason=message.reason,
            attempt=self.failures,
        )
        delay = backoff_delay(self.deps.settings.database_retry, self.failures)
        self.deps.bridge.later(delay, self.actor_ref, RetryAllocation())


@dataclass(slots=True)
class _Entry:
    ref: Ref
    users: int = 0


class RecipientDirectory:
    """The live recipient actors, one per recipient with a certificate in flight that
    asked it for a position. Thread-safe: certificate actors call it from their own
    threads."""

    def __init__(self, start: Callable[[str], Ref]) -> None:
        self._start = start
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    @classmethod
    def of(cls, deps: ActorDeps) -> RecipientDirectory:
        return cls(lambda recipient_id: RecipientActor.start(recipient_id, deps))

    def allocate(self, recipient_id: str, request: AllocatePosition) -> None:
        """Count the asking certificate in and pass its request on."""
        with self._lock:
            entry = self._entries.get(recipient_id)
            if entry is None:
                entry = self._entries[recipient_id] = _Entry(self._start(recipient_id))
            entry.users += 1
            tell_quietly(entry.ref, request)

    def release(self, recipient_id: str) -> None:
        """The certificate no longer needs the actor (finished or crashed); the last
        one out stops it. Whatever it still has under way answers nobody who
        waits (every user has left), and a position it persists stays persisted."""
        with self._lock:
            entry = self._entries.get(recipient_id)
            if entry is None:
                return
            entry.users -= 1
            if entry.users > 0:
                return
            del self._entries[recipient_id]
        with contextlib.suppress(pykka.ActorDeadError):
            entry.ref.stop(block=False)

    def stop_all(self) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            with contextlib.suppress(pykka.ActorDeadError):
                entry.ref.stop(block=False)

    def __len__(self) -> int:
        return len(self._entries)
