"""RegistryGateway: gets persisted transactions committed, in batches.

Certificates (and withdrawals) hand it a transaction; it sends many per
``SendTransactions`` call, asks many statuses per round, and tells each asker the
outcome as a ``RegistryOutcome`` (stamp/domain.py): committed, rejected (the
registry's message), or given up (retries or the PENDING budget exhausted). It follows
the registry's re-send rules (docs/architecture.md): after any doubt it asks the
status first and re-sends the same bytes only on UNKNOWN; FAILED "already exists" or
"already withdrawn" is settled by reading the stream (``settle_by_stream``).

Timers sit at the deadlines: a status round is one coroutine that sleeps until the
round is due and then asks; a round waits ``ROUND_WAIT_FRACTION`` of the poll delay for
the transactions that come due meanwhile (``round_for``). Nothing wakes up that is not
due, and nothing is asked before it is due.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from actors.backoff import backoff_delay
from actors.base import StampActor
from actors.bridge import LoopBridge, Reply, tell_quietly
from actors.messages import Ref, SubmitTransaction
from protos.project_origin.registry.v1 import registry_pb2
from stamp import tracing
from stamp.config import Settings
from stamp.crypto.transactions import WITHDRAWN_EVENT_TYPE
from stamp.domain import RegistryCommitted, RegistryGaveUp, RegistryOutcome, RegistryRejected
from stamp.gateways.registry_client import RegistryCallError, RegistryClient, StatusReply, TxStatus

log = structlog.get_logger(__name__)
ROUND_WAIT_FRACTION = 0.5
"""A status round starts this fraction of the initial poll delay after the first of its
transactions is due, and every transaction that comes due before it starts joins it: a
little late, never early (asked before its due time, a transaction is still PENDING,
which costs another call and another poll delay). The wait pays beyond the calls: a
round's outcomes reach their certificates together, so their next database writes share
statements and their hand-offs share turns (docs/benchmarks.md, "The session of
2026-12-07 (third)")."""


class Phase(enum.Enum):
    SEND = "send"  # queued for the next SendTransactions batch of its registry
    STATUS = "status"  # in a status round (after a send, a doubt, or a resume)
    BUSY = "busy"  # a send or stream read about it is under way


@dataclass(slots=True)
class Tracked:
    request: SubmitTransaction
    phase: Phase
    deadline: float
    poll_delay: float
    errors: int = 0
    sends: int = 0

    @property
    def registry(self) -> str:
        return self.request.key.registry

    @property
    def tx_id(self) -> str:
        return self.request.transaction_id


@dataclass(eq=False, slots=True)
class StatusRound:
    """One status round of one registry, due at ``at`` (time.monotonic)."""

    registry: str
    at: float
    ids: list[str] = field(default_factory=list)
    started: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def join(self, tx_id: str, limit: int) -> bool:
        with self.lock:
            if self.started or len(self.ids) >= limit:
                return False
            self.ids.append(tx_id)
            return True

    def start(self) -> tuple[str, ...]:
        with self.lock:
            self.started = True
            return tuple(self.ids)


@dataclass(frozen=True, slots=True)
class _Sent:
    registry: str
    ids: tuple[str, ...]
    error: RegistryCallError | None


@dataclass(frozen=True, slots=True)
class _Statuses:
    round: StatusRound
    ids: tuple[str, ...]
    replies: tuple[StatusReply | RegistryCallError, ...]


@dataclass(frozen=True, slots=True)
class _StreamRead:
    tx_id: str
    outcome: RegistryOutcome | None  # None: the read failed
    error: RegistryCallError | None


def round_for(
    rounds: list[StatusRound], registry: str, tx_id: str, due: float, wait: float, limit: int
) -> StatusRound | None:
    """The status round that asks about ``tx_id``, due at ``due``: one of ``rounds`` not
    started yet, with room, due at most ``wait`` after it (joined; None is returned), else
    a new round due ``wait`` after it, appended to ``rounds`` for the caller to start."""
    for round_ in rounds:
        if 0.0 <= round_.at - due <= wait and round_.join(tx_id, limit):
            return None
    round_ = StatusRound(registry, due + wait, [tx_id])
    rounds.append(round_)
    return round_


def _client_error(registry: str, reason: str) -> RegistryCallError:
    """A call that failed inside Stamp (not an answer of the registry): transient."""
    return RegistryCallError(registry, "client", reason, transient=True)


def _same_transaction(registry_copy: bytes, ours: bytes) -> bool:
    """Compared as messages, not bytes: the registry may re-serialise what it stores."""
    return registry_pb2.Transaction.FromString(registry_copy) == registry_pb2.Transaction.FromString(ours)


def settle_by_stream(
    request: SubmitTransaction, message: str, transactions: Sequence[bytes]
) -> RegistryOutcome:
    """What the stream says about a transaction the registry FAILED as "already
    exists" (an issuance) or "already withdrawn" (a withdrawal): committed when the
    stream holds ours (an identical re-send after the registry forgot the status),
    rejected otherwise."""
    key = request.key
    if not transactions:
        return RegistryRejected(key, f"{message}; the stream holds no transaction")
    ours = request.transaction
    if registry_pb2.Transaction.FromString(ours).header.payload_type == WITHDRAWN_EVENT_TYPE:
        withdrawals = [
            tx
            for tx in transactions
            if registry_pb2.Transaction.FromString(tx).header.payload_type == WITHDRAWN_EVENT_TYPE
        ]
        if not withdrawals:
            return RegistryRejected(
                key, "the registry answered 'already withdrawn' but the stream holds no withdrawal"
            )
        mine = registry_pb2.Transaction.FromString(ours)
        by_us = any(registry_pb2.Transaction.FromString(tx) == mine for tx in withdrawals)
        return RegistryCommitted(key, by_another_transaction=not by_us)
    if _same_transaction(transactions[0], ours):
        return RegistryCommitted(key)
    return RegistryRejected(key, "certificate already exists in the registry, issued by another transaction")


def _settled_by_stream(message: str) -> bool:
    lowered = message.lower()
    return "already exists" in lowered or "already withdrawn" in lowered


class RegistryGateway(StampActor):
    def __init__(self, client: RegistryClient, bridge: LoopBridge, settings: Settings) -> None:
        super().__init__(bridge.loop)
        self.client = client
        self.bridge = bridge
        self.settings = settings
        self.tracked: dict[str, Tracked] = {}
        self.send_queues: dict[str, list[str]] = {}
        self.sending: set[str] = set()
        self.rounds: dict[str, list[StatusRound]] = {}
        self.round_wait = ROUND_WAIT_FRACTION * settings.registry_poll_initial_seconds

    # --- protocol ---------------------------------------------------------------

    def on_receive(self, message: object) -> None:
        match message:
            case SubmitTransaction():
                self._track(message)
            case _Sent():
                self._on_sent(message)
            case _Statuses():
                self._on_statuses(message)
            case _StreamRead():
                self._on_stream(message)

    def _track(self, request: SubmitTransaction) -> None:
        now = time.monotonic()
        existing = self.tracked.get(request.transaction_id)
        if existing is not None:  # asked again (e.g. a restarted actor): answer the new ref
            existing.request = request
            return
        tracked = Tracked(
            request=request,
            phase=Phase.SEND,
            deadline=now + self.settings.registry_pending_timeout_seconds,
            poll_delay=self.settings.registry_poll_initial_seconds,
        )
        self.tracked[request.transaction_id] = tracked
        if request.check_first:
            self._ask_at(tracked, now)
        else:
            self._queue_send(tracked)

    # --- sending ----------------------------------------------------------------

    def _queue_send(self, tracked: Tracked) -> None:
        tracked.phase = Phase.SEND
        self.send_queues.setdefault(tracked.registry, []).append(tracked.tx_id)
        self._send_next(tracked.registry)

    def _send_next(self, registry: str) -> None:
        if registry in self.sending:
            return  # what queues up meanwhile goes in the next batch
        queue = self.send_queues.get(registry, [])
        batch: list[Tracked] = []
        while queue and len(batch) < self.settings.registry_batch_size:
            tracked = self.tracked.get(queue.pop(0))
            if tracked is not None and tracked.phase is Phase.SEND:
                batch.append(tracked)
        if not batch:
            return
        for tracked in batch:
            tracked.phase = Phase.BUSY
            tracked.sends += 1
        ids = tuple(t.tx_id for t in batch)
        self.sending.add(registry)

        async def send() -> RegistryCallError | None:
            # One span for the call, linked to every certificate it carries.
            carried = (t.request.trace for t in batch)
            with tracing.batch_span("registry.send_transactions", carried, _batch_attributes(registry, ids)):
                try:
                    await self.client.send(registry, [t.request.transaction for t in batch])
                except RegistryCallError as exc:
                    return exc
                return None

        self.bridge.run(
            send(),
            Reply(
                self.actor_ref,
                lambda error: _Sent(registry, ids, error),
                lambda reason: _Sent(registry, ids, _client_error(registry, reason)),
            ),
        )

    def _on_sent(self, message: _Sent) -> None:
        self.sending.discard(message.registry)
        now = time.monotonic()
        for tx_id in message.ids:
            tracked = self.tracked.get(tx_id)
            if tracked is None:
                continue
            if message.error is None:
                tracked.deadline = now + self.settings.registry_pending_timeout_seconds
                self._ask_at(tracked, now + tracked.poll_delay)
            else:
                # The batch may have been stored although the call failed ("accepted
                # then errored"): never re-send blindly, ask first.
                self._on_call_error(tracked, message.error)
        if message.error is not None:
            log.warning(
                "registry.send_failed",
                registry=message.registry,
                code=message.error.code,
                transactions=len(message.ids),
            )
        self._send_next(message.registry)

    def _on_call_error(self, tracked: Tracked, error: RegistryCallError) -> None:
        tracked.errors += 1
        policy = self.settings.registry_retry
        if not error.transient or tracked.errors >= policy.max_attempts:
            reason = f"registry call failed: {error}"
            self._finish(tracked, RegistryGaveUp(tracked.request.key, reason, tracked.errors))
            return
        self._ask_at(tracked, time.monotonic() + backoff_delay(policy, tracked.errors))

    # --- status rounds at their deadlines ----------------------------------------

    def _ask_at(self, tracked: Tracked, due: float) -> None:
        tracked.phase = Phase.STATUS
        rounds = self.rounds.setdefault(tracked.registry, [])
        limit = self.settings.registry_batch_size
        round_ = round_for(rounds, tracked.registry, tracked.tx_id, due, self.round_wait, limit)
        if round_ is not None:
            self.bridge.run(self._ask(round_), Reply(self.actor_ref, _identity, self._round_failed(round_)))

    async def _ask(self, round_: StatusRound) -> _Statuses:
        await asyncio.sleep(max(0.0, round_.at - time.monotonic()))
        ids = round_.start()
        if not tracing.ENABLED:
            replies = await self.client.statuses(round_.registry, list(ids))
            return _Statuses(round_, ids, tuple(replies))
        # Read from the loop: a request replaced meanwhile only changes which span is linked.
        carried = [t.request.trace for t in map(self.tracked.get, ids) if t is not None]
        with tracing.batch_span("registry.status_round", carried, _batch_attributes(round_.registry, ids)):
            replies = await self.client.statuses(round_.registry, list(ids))
        return _Statuses(round_, ids, tuple(replies))

    def _round_failed(self, round_: StatusRound) -> Callable[[str], _Statuses]:
        def failed(reason: str) -> _Statuses:
            ids = round_.start()
            return _Statuses(round_, ids, tuple(_client_error(round_.registry, reason) for _ in ids))

        return failed

    def _on_statuses(self, message: _Statuses) -> None:
        rounds = self.rounds.get(message.round.registry, [])
        if message.round in rounds:
            rounds.remove(message.round)
        now = time.monotonic()
        for tx_id, reply in zip(message.ids, message.replies, strict=True):
            tracked = self.tracked.get(tx_id)
            if tracked is None or tracked.phase is not Phase.STATUS:
                continue
            if isinstance(reply, RegistryCallError):
                self._on_call_error(tracked, reply)
            elif reply.status.issued:
                self._finish(tracked, RegistryCommitted(tracked.request.key))
            elif reply.status is TxStatus.FAILED:
                if _settled_by_stream(reply.message):
                    self._read_stream(tracked, reply.message)
                else:
                    self._finish(tracked, RegistryRejected(tracked.request.key, reply.message or "FAILED"))
            elif reply.status is TxStatus.UNKNOWN:
                # Never seen, or forgotten (registry restart, cache expiry): the only
                # case in which the same bytes are sent again.
                self._queue_send(tracked)
            elif now >= tracked.deadline:
                budget = self.settings.registry_pending_timeout_seconds
                self._finish(
                    tracked,
                    RegistryGaveUp(
                        tracked.request.key, f"transaction still PENDING after {budget:g} s", tracked.sends
                    ),
                )
            else:
                self._ask_at(tracked, now + tracked.poll_delay)
                tracked.poll_delay = min(tracked.poll_delay * 1.5, self.settings.registry_poll_max_seconds)

    # --- settling by the stream ----------------------------------------------------

    def _read_stream(self, tracked: Tracked, message: str) -> None:
        tracked.phase = Phase.BUSY
        request, tx_id = tracked.request, tracked.tx_id
        key = request.key

        async def read() -> _StreamRead:
            try:
                transactions = await self.client.stream_transactions(key.registry, key.certificate_id)
            except RegistryCallError as exc:
                return _StreamRead(tx_id, None, exc)
            return _StreamRead(tx_id, settle_by_stream(request, message, transactions), None)

        self.bridge.run(
            read(),
            Reply(
                self.actor_ref,
                _identity,
                lambda reason: _StreamRead(tx_id, None, _client_error(key.registry, reason)),
            ),
        )

    def _on_stream(self, message: _StreamRead) -> None:
        tracked = self.tracked.get(message.tx_id)
        if tracked is None:
            return
        if message.outcome is not None:
            self._finish(tracked, message.outcome)
        elif message.error is not None:
            self._on_call_error(tracked, message.error)

    def _finish(self, tracked: Tracked, outcome: RegistryOutcome) -> None:
        self.tracked.pop(tracked.tx_id, None)
        reply_to: Ref = tracked.request.reply_to
        tell_quietly(reply_to, outcome)


def _identity(message: object) -> object:
    return message


def _batch_attributes(registry: str, ids: tuple[str, ...]) -> dict[str, object]:
    return {"registry": registry, "rpc.system": "grpc", "stamp.batch.size": len(ids)}
