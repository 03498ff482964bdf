"""RecipientActor: hands out one recipient's wallet endpoint positions.

Requests that arrive while a database round trip is under way are batched into the
next one, so a busy recipient costs one statement per batch, not per certificate.
The counter itself lives in the recipient row and is advanced under its row lock, so
positions stay unique even across processes; the actor only saves contention.
It passivates after an idle period through a handshake with the supervisor, which
approves only when every request it routed here has been handled.
"""

from __future__ import annotations

import time

import structlog

from actors.backoff import backoff_delay
from actors.base import StampActor
from actors.bridge import reply_with, tell_quietly
from actors.deps import ActorDeps
from actors.messages import (
    AllocatePosition,
    AllocationFailed,
    IdleCheck,
    PassivateApproved,
    PositionAllocated,
    PositionNotAllocated,
    PositionsAllocated,
    RecipientIdle,
    Ref,
    RetryAllocation,
)
from stamp.db import queries

log = structlog.get_logger(__name__)
MAX_BATCH = 500


class RecipientActor(StampActor):
    def __init__(self, recipient_id: str, deps: ActorDeps, supervisor: Ref) -> None:
        super().__init__()
        self.recipient_id = recipient_id
        self.deps = deps
        self.supervisor = supervisor
        self.pending: list[AllocatePosition] = []
        self.in_flight: tuple[AllocatePosition, ...] = ()
        self.handled = 0
        self.failures = 0
        self.last_active = time.monotonic()
        self.idle_check_armed = False

    def on_start(self) -> None:
        self._arm_idle_check(self.deps.settings.recipient_idle_seconds)

    def on_receive(self, message: object) -> None:
        match message:
            case AllocatePosition():
                self.handled += 1
                self.pending.append(message)
                self._flush()
            case PositionsAllocated():
                self._on_allocated(message)
            case AllocationFailed():
                self._on_failed(message)
            case RetryAllocation():
                self._flush()
            case IdleCheck():
                self._on_idle_check()
            case PassivateApproved():
                # Approval means the supervisor routes nothing more here; whatever was
                # routed before has been handled (counts matched), so nothing is lost.
                self.stop()

    def _flush(self) -> None:
        if self.in_flight or not self.pending:
            return
        batch, self.pending = tuple(self.pending[:MAX_BATCH]), self.pending[MAX_BATCH:]
        self.in_flight = batch
        self.last_active = time.monotonic()
        done = reply_with(
            self.actor_ref,
            lambda row: PositionsAllocated(batch, tuple(queries.allocated_positions(row))),
            lambda exc: AllocationFailed(batch, f"{type(exc).__name__}: {exc}"),
        )
        settings = self.deps.settings
        self.deps.batcher.submit(
            queries.ALLOCATE_POSITIONS,
            queries.allocate_positions_args(
                self.recipient_id,
                [(request.key, request.version) for request in batch],
                settings.instance_id,
                settings.lease_seconds,
            ),
            (self.recipient_id,),
            done,
        )

    def _on_allocated(self, message: PositionsAllocated) -> None:
        self.in_flight = ()
        self.last_active = time.monotonic()
        self.failures = 0
        by_key = {a.key: a for a in message.allocated}
        for request in message.batch:
            allocated = by_key.get(request.key)
            if allocated is None:
                tell_quietly(request.reply_to, PositionNotAllocated())
            else:
                tell_quietly(request.reply_to, PositionAllocated(allocated.position, allocated.version))
        if message.allocated:
            log.debug(
                "positions.allocated",
                recipient_id=self.recipient_id,
                count=len(message.allocated),
                last=max(a.position for a in message.allocated),
            )
        self._flush()
        if not self.idle_check_armed:
            self._arm_idle_check(self.deps.settings.recipient_idle_seconds)

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
        self.deps.bridge.later(
            backoff_delay(self.deps.settings.registry_retry, self.failures), self.actor_ref, RetryAllocation()
        )

    def _on_idle_check(self) -> None:
        # One timer at a time, pushed back by activity: a busy recipient costs no
        # timer per allocation.
        self.idle_check_armed = False
        idle_seconds = self.deps.settings.recipient_idle_seconds
        if self.pending or self.in_flight:
            self._arm_idle_check(idle_seconds)
            return
        remaining = self.last_active + idle_seconds - time.monotonic()
        if remaining > 0:
            self._arm_idle_check(remaining)
            return
        # Not re-armed: either the supervisor approves and this actor stops, or it
        # routed more requests meanwhile, whose allocation arms the check again.
        tell_quietly(self.supervisor, RecipientIdle(self.recipient_id, self.handled, self.actor_ref))

    def _arm_idle_check(self, delay: float) -> None:
        self.idle_check_armed = True
        self.deps.bridge.later(delay, self.actor_ref, IdleCheck())
