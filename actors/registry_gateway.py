"""RegistryGateway: gets persisted transactions committed, in batches.

Certificates hand it a transaction; it sends many per ``SendTransactions`` call, polls
many statuses per round with a short first delay and backoff, and tells each
certificate the outcome: issued, rejected (the registry's message), or given up
(retries or the PENDING budget exhausted). It follows the registry's re-send rules
(registry.md): after any doubt it asks the status first and re-sends the same bytes
only on UNKNOWN; FAILED "already exists" is settled by reading the stream.
"""

from __future__ import annotations

import enum
import time
from collections import defaultdict
from dataclasses import dataclass, field

import structlog

from actors.backoff import backoff_delay
from actors.base import StampActor
from actors.bridge import LoopBridge, tell_quietly
from actors.messages import Ref, RegistryGaveUp, RegistryIssued, RegistryRejected, SubmitTransaction
from protos.project_origin.registry.v1 import registry_pb2
from stamp.config import Settings
from stamp.gateways.registry_client import RegistryCallError, RegistryClient, StatusReply, TxStatus

log = structlog.get_logger(__name__)
TICK_SECONDS = 0.02


class Phase(enum.Enum):
    CHECK = "check"  # ask the status before (re)sending
    SEND = "send"  # queued for the next SendTransactions batch
    POLL = "poll"  # sent; waiting for COMMITTED or FAILED
    BUSY = "busy"  # a call about it is under way


@dataclass(slots=True)
class Tracked:
    request: SubmitTransaction
    phase: Phase
    due: float
    deadline: float
    poll_delay: float
    errors: int = 0
    sends: int = 0

    @property
    def registry(self) -> str:
        return self.request.key.registry


@dataclass(frozen=True, slots=True)
class _Tick:
    pass


@dataclass(frozen=True, slots=True)
class _Sent:
    registry: str
    ids: tuple[str, ...]
    error: RegistryCallError | None


@dataclass(frozen=True, slots=True)
class _Statuses:
    registry: str
    ids: tuple[str, ...]
    replies: tuple[StatusReply | RegistryCallError, ...]


@dataclass(frozen=True, slots=True)
class _StreamRead:
    tx_id: str
    ours: bool
    error: RegistryCallError | None


@dataclass(slots=True)
class _Counters:
    sends: int = 0
    status_calls: int = 0
    transactions_sent: int = 0
    by_code: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _same_transaction(registry_copy: bytes, ours: bytes) -> bool:
    """Whether the stream's first transaction is Stamp's own. Compared as messages,
    not bytes: the registry may re-serialise what it stores."""
    return registry_pb2.Transaction.FromString(registry_copy) == registry_pb2.Transaction.FromString(ours)


class RegistryGateway(StampActor):
    def __init__(self, client: RegistryClient, bridge: LoopBridge, settings: Settings) -> None:
        super().__init__()
        self.client = client
        self.bridge = bridge
        self.settings = settings
        self.tracked: dict[str, Tracked] = {}
        self.sends_in_flight: set[str] = set()
        self.ticking = False
        self.counters = _Counters()

    # --- protocol ---------------------------------------------------------------

    def on_receive(self, message: object) -> None:
        match message:
            case SubmitTransaction():
                self._track(message)
            case _Tick():
                self.ticking = False
                self._work()
            case _Sent():
                self._on_sent(message)
            case _Statuses():
                self._on_statuses(message)
            case _StreamRead():
                self._on_stream(message)
        self._arm()

    def _track(self, request: SubmitTransaction) -> None:
        now = time.monotonic()
        existing = self.tracked.get(request.transaction_id)
        if existing is not None:  # the certificate asks again (e.g. restarted actor): answer the new ref
            existing.request = request
            return
        self.tracked[request.transaction_id] = Tracked(
            request=request,
            phase=Phase.CHECK if request.check_first else Phase.SEND,
            due=now,
            deadline=now + self.settings.registry_pending_timeout_seconds,
            poll_delay=self.settings.registry_poll_initial_seconds,
        )

    def _arm(self) -> None:
        if not self.ticking and any(t.phase is not Phase.BUSY for t in self.tracked.values()):
            self.ticking = True
            self.bridge.later(TICK_SECONDS, self.actor_ref, _Tick())

    # --- sending ----------------------------------------------------------------

    def _work(self) -> None:
        now = time.monotonic()
        to_send: dict[str, list[Tracked]] = defaultdict(list)
        to_check: dict[str, list[Tracked]] = defaultdict(list)
        for tracked in self.tracked.values():
            if tracked.due > now:
                continue
            if tracked.phase is Phase.SEND and tracked.registry not in self.sends_in_flight:
                to_send[tracked.registry].append(tracked)
            elif tracked.phase in (Phase.CHECK, Phase.POLL):
                to_check[tracked.registry].append(tracked)
        batch = self.settings.registry_batch_size
        for registry, items in to_send.items():
            self._send(registry, items[:batch])
        for registry, items in to_check.items():
            for i in range(0, len(items), batch):
                self._check(registry, items[i : i + batch])

    def _send(self, registry: str, items: list[Tracked]) -> None:
        for tracked in items:
            tracked.phase = Phase.BUSY
            tracked.sends += 1
        ids = tuple(t.request.transaction_id for t in items)
        self.sends_in_flight.add(registry)
        self.counters.sends += 1
        self.counters.transactions_sent += len(ids)

        async def call() -> RegistryCallError | None:
            try:
                await self.client.send(registry, [t.request.transaction for t in items])
            except RegistryCallError as exc:
                return exc
            return None

        self.bridge.run(
            call(),
            self.actor_ref,
            lambda error: _Sent(registry, ids, error),
            lambda exc: _Sent(
                registry, ids, RegistryCallError(registry, "client", repr(exc), transient=True)
            ),
        )

    def _on_sent(self, message: _Sent) -> None:
        self.sends_in_flight.discard(message.registry)
        now = time.monotonic()
        for tx_id in message.ids:
            tracked = self.tracked.get(tx_id)
            if tracked is None:
                continue
            if message.error is None:
                tracked.phase, tracked.due = Phase.POLL, now + tracked.poll_delay
                tracked.deadline = now + self.settings.registry_pending_timeout_seconds
                continue
            # The batch may have been stored although the call failed ("accepted then
            # errored"): never re-send blindly, ask first.
            self._on_call_error(tracked, message.error, next_phase=Phase.CHECK)
        if message.error is not None:
            log.warning(
                "registry.send_failed",
                registry=message.registry,
                code=message.error.code,
                transactions=len(message.ids),
            )

    def _on_call_error(self, tracked: Tracked, error: RegistryCallError, *, next_phase: Phase) -> None:
        tracked.errors += 1
        self.counters.by_code[error.code] += 1
        policy = self.settings.registry_retry
        if not error.transient or tracked.errors >= policy.max_attempts:
            self._finish(
                tracked, RegistryGaveUp(tracked.request.key, f"registry call failed: {error}", tracked.errors)
            )
            return
        tracked.phase = next_phase
        tracked.due = time.monotonic() + backoff_delay(policy, tracked.errors)

    # --- status -----------------------------------------------------------------

    def _check(self, registry: str, items: list[Tracked]) -> None:
        for tracked in items:
            tracked.phase = Phase.BUSY
        ids = tuple(t.request.transaction_id for t in items)
        self.counters.status_calls += len(ids)
        self.bridge.run(
            self.client.statuses(registry, list(ids)),
            self.actor_ref,
            lambda replies: _Statuses(registry, ids, tuple(replies)),
            lambda exc: _Statuses(
                registry,
                ids,
                tuple(RegistryCallError(registry, "client", repr(exc), transient=True) for _ in ids),
            ),
        )

    def _on_statuses(self, message: _Statuses) -> None:
        now = time.monotonic()
        for tx_id, reply in zip(message.ids, message.replies, strict=True):
            tracked = self.tracked.get(tx_id)
            if tracked is None:
                continue
            if isinstance(reply, RegistryCallError):
                self._on_call_error(tracked, reply, next_phase=Phase.CHECK)
                continue
            self.counters.by_code["OK"] += 1
            if reply.status.issued:
                self._finish(tracked, RegistryIssued(tracked.request.key))
            elif reply.status is TxStatus.FAILED:
                if "already exists" in reply.message.lower():
                    self._read_stream(tracked)
                else:
                    self._finish(tracked, RegistryRejected(tracked.request.key, reply.message or "FAILED"))
            elif reply.status is TxStatus.UNKNOWN:
                # Never seen, or forgotten (registry restart, cache expiry): the only
                # case in which the same bytes are sent again.
                tracked.phase, tracked.due = Phase.SEND, now
            elif now >= tracked.deadline:
                tracked_for = self.settings.registry_pending_timeout_seconds
                self._finish(
                    tracked,
                    RegistryGaveUp(
                        tracked.request.key,
                        f"transaction still PENDING after {tracked_for:g} s",
                        tracked.sends,
                    ),
                )
            else:
                tracked.phase, tracked.due = Phase.POLL, now + tracked.poll_delay
                tracked.poll_delay = min(tracked.poll_delay * 1.5, self.settings.registry_poll_max_seconds)

    def _read_stream(self, tracked: Tracked) -> None:
        tracked.phase = Phase.BUSY
        key = tracked.request.key
        tx_id = tracked.request.transaction_id
        ours = tracked.request.transaction

        async def call() -> _StreamRead:
            try:
                transactions = await self.client.stream_transactions(key.registry, key.certificate_id)
            except RegistryCallError as exc:
                return _StreamRead(tx_id, False, exc)
            return _StreamRead(tx_id, bool(transactions) and _same_transaction(transactions[0], ours), None)

        self.bridge.run(
            call(),
            self.actor_ref,
            lambda result: result,
            lambda exc: _StreamRead(
                tx_id, False, RegistryCallError(key.registry, "client", repr(exc), transient=True)
            ),
        )

    def _on_stream(self, message: _StreamRead) -> None:
        tracked = self.tracked.get(message.tx_id)
        if tracked is None:
            return
        if message.error is not None:
            self._on_call_error(tracked, message.error, next_phase=Phase.CHECK)
        elif message.ours:
            self._finish(tracked, RegistryIssued(tracked.request.key))
        else:
            self._finish(
                tracked,
                RegistryRejected(
                    tracked.request.key,
                    "certificate already exists in the registry, issued by another transaction",
                ),
            )

    def _finish(self, tracked: Tracked, outcome: RegistryIssued | RegistryRejected | RegistryGaveUp) -> None:
        self.tracked.pop(tracked.request.transaction_id, None)
        reply_to: Ref = tracked.request.reply_to
        tell_quietly(reply_to, outcome)

    # --- introspection for metrics ------------------------------------------------

    def tracked_count(self) -> int:
        return len(self.tracked)
