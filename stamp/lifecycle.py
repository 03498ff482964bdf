"""The journey of one certificate, as one pure function (docs/architecture.md).

``advance(journey, event, rules) → (journey, effects)``: given what is persisted about
a certificate (plus the little an actor keeps while it drives it) and what just
happened, it says what the certificate is now and what must be done next. Effects are
data; the ``CertificateActor`` runs them (a statement, a registry submission, a wallet
delivery, a timer) and feeds their outcomes back as events. No clock, no I/O, no
randomness: the same inputs give the same answer, so a crash is simply a replay from
the persisted record (``Journey.resume``).

The journey, state by state (every arrow is one versioned statement that also appends
the event(s) in brackets to the history):

    stored, no position   ─ Allocate ─▶ position persisted, version moved on
    stored, position      ─ Build ─▶ RECORD_TRANSACTION   [CertificateSentToRegistry]
    sent_to_registry      ─ Submit ─▶ registry COMMITTED:  ISSUE_AND_MARK
                                        [CertificateIssuedInRegistry, CertificateMarkedAsIssued]
                                    ─▶ registry FAILED:    REJECT [CertificateFailedInRegistry]
    issued_in_registry    ─▶ MARK [CertificateMarkedAsIssued]  (only left over by older versions)
    marked_as_issued      ─ (CLAIM_DELIVERY unless this driver's mark was the last
                             thing it did)
                          ─ Deliver ─▶ wallet 2xx: DELIVER [CertificateSentToWallet]
    marked_as_issued, withdrawn ─▶ WITHHOLD → withheld [CertificateNotDelivered]
    delivered, re-delivery requested (an operator's, ``record.redelivery``)
                          ─ CLAIM_REDELIVERY ─ Deliver ─▶ wallet 2xx: REDELIVERED
                                        [CertificateRedelivered]
                                    ─▶ rejected or attempts used up: REDELIVERED
                                        [CertificateRedeliveryFailed] (still delivered)

Every delivery goes to the endpoint the recipient has *when it is sent*, and the event
recording it names that endpoint. The write right before a delivery (ISSUE_AND_MARK,
CLAIM_DELIVERY, CLAIM_REDELIVERY) reads the recipient's endpoint in the same statement
and answers it with the new version (``Written.endpoint``); the ``Deliver`` that follows
at once carries it, and the wallet gateway sends without a read of its own. The window
between that read and the POST is the one the gateway's own read had (the statement's
answer, then the POST) plus the hops from the loop to the certificate's actor, to the
gateway and back to the loop: milliseconds, the same order as before, and no
guarantee was ever stronger: a move committed inside either window (or during the POST)
reaches the next attempt. A resumed driver reads the recipient before anything else
(in sent_to_registry, before it asks the registry), so its mark too is followed by the
delivery at once. Only a mark that reads no endpoint (ADVANCE, from issued_in_registry
left over by older versions) gives a delivery without one, and the gateway reads it
when it sends. A failed attempt is recorded, with its endpoint, as soon as it failed
(ATTEMPT_FAILED, a version bump [CertificateWalletAttemptFailed]) before the backoff
starts, so the history shows where each delivery went and a crash during the backoff
loses no attempt. A delivery that succeeds at once makes no such write.

A withdrawn certificate still goes through its issuance (the registry can only
withdraw a stream it holds) but its slice is never delivered (``withheld_from_wallet``).
Every write answers the ``withdrawn`` flag with the new version, so a withdrawal
recorded while the certificate was being driven is seen at the next write; one
recorded after the last write before the delivery cannot stop the delivery already
on its way, and the history then shows the withdrawal before CertificateSentToWallet.

Retry and failure rules, all of them:

- A stale write (``Written(version=None)``): another writer owns the certificate; stop
  and leave it alone (invariant 5).
- A database failure (a write or a recipient read): wait with backoff, then repeat
  the very same statement, for ever (work pauses while PostgreSQL is away).
- Crypto failure, registry give-up, wallet transient: counted per step; at the step's
  ``max_attempts`` the certificate fails with step, reason and attempts. A wallet
  400/404 fails at once; a registry FAILED rejects at once.
- A delivery goes out only right after this driver's own write moved the version on
  (the mark or a claim). After anything else awaited in between — a wallet attempt that
  did not succeed and its backoff — the delivery is claimed again (a version bump)
  first, so a driver whose claim another one has overtaken stops at its stale claim
  instead of delivering.
- Draining (shutdown): an answer that must be recorded (a write, a wallet delivery) is
  awaited and recorded; anything else stops at once and resumes after restart.
- Answers nobody waits for (late, duplicated, for an older write) change nothing.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stamp.domain import (
    CertificateKey,
    CertificateRecord,
    Delivery,
    Event,
    Recipient,
    RegistryCommitted,
    RegistryGaveUp,
    RegistryRejected,
    State,
    Step,
)

# --- events: what happened ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """The certificate is (again) driven from its persisted record."""


@dataclass(frozen=True, slots=True)
class PositionAllocated:
    position: int
    version: int


@dataclass(frozen=True, slots=True)
class PositionRefused:
    """The allocation found the certificate changed by another writer."""


@dataclass(frozen=True, slots=True)
class RecipientFound:
    recipient: Recipient | None


@dataclass(frozen=True, slots=True)
class BundleBuilt:
    transaction: bytes = field(repr=False)
    transaction_id: str
    blinding: bytes = field(repr=False)
    salts: tuple[bytes, ...] = field(repr=False)


@dataclass(frozen=True, slots=True)
class BuildFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Written:
    """A write answered. ``expected``: the version it was written against; ``version``:
    the new one, None when the write was stale."""

    expected: int
    version: int | None
    withdrawn: bool = False  # the row's flag as the write found it
    # The recipient's wallet endpoint as the statement read it, answered by the writes
    # right before a delivery (None: not read, or the recipient is unknown).
    endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class DatabaseFailed:
    """A statement or read did not get through (the database is away or busy)."""

    reason: str


@dataclass(frozen=True, slots=True)
class WalletAnswered:
    """The wallet's answer. ``recorded``: the answer of the ``delivered_write`` sent
    right after a 2xx on the same trip (``Deliver.record``), None when it was not."""

    outcome: Delivery
    status: int | None
    reason: str
    recorded: Written | DatabaseFailed | None = None
    endpoint: str = ""  # where the slice went (the recipient's endpoint when it was sent)


@dataclass(frozen=True, slots=True)
class RetryDue:
    """The backoff timer of the last ``Wait`` fired."""


@dataclass(frozen=True, slots=True)
class Drain:
    """Shutdown: record what must be recorded, leave the rest for the restart."""


LifecycleEvent = (
    Started
    | PositionAllocated
    | PositionRefused
    | RecipientFound
    | BundleBuilt
    | BuildFailed
    | Written
    | DatabaseFailed
    | RegistryCommitted
    | RegistryRejected
    | RegistryGaveUp
    | WalletAnswered
    | RetryDue
    | Drain
)


# --- writes: the versioned statements a journey makes ----------------------------------------


class WriteKind(enum.Enum):
    RECORD_TRANSACTION = "record_transaction"
    ISSUE_AND_MARK = "issue_and_mark"
    ADVANCE = "advance"
    WITHHOLD = "withhold"
    REJECT = "reject"
    FAIL = "fail"
    CLAIM_DELIVERY = "claim_delivery"
    CLAIM_REDELIVERY = "claim_redelivery"
    ATTEMPT_FAILED = "attempt_failed"  # a wallet attempt failed: recorded before the backoff
    REDELIVERED = "redelivered"  # the re-delivery ended (its event says how)


@dataclass(frozen=True, slots=True)
class Write:
    """One compare-and-set statement against ``expected``; ``changes`` are the record's
    fields it persists besides state and version."""

    kind: WriteKind
    expected: int
    state: State
    event: Event | None
    detail: Mapping[str, Any] = field(default_factory=dict)
    changes: Mapping[str, Any] = field(default_factory=dict, repr=False)


# --- effects: what to do ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allocate:
    key: CertificateKey
    recipient_id: str
    version: int


@dataclass(frozen=True, slots=True)
class LoadRecipient:
    recipient_id: str


@dataclass(frozen=True, slots=True)
class Build:
    record: CertificateRecord
    recipient: Recipient


@dataclass(frozen=True, slots=True)
class Persist:
    write: Write


@dataclass(frozen=True, slots=True)
class Submit:
    key: CertificateKey
    transaction: bytes = field(repr=False)
    transaction_id: str
    check_first: bool


@dataclass(frozen=True, slots=True)
class Deliver:
    """Deliver the certificate's slice (position, R, salts: all persisted) to the
    recipient's current endpoint and, on a 2xx, send ``delivered_write(record, status,
    endpoint)`` at once (nothing happens between the two, so they share one trip).
    ``endpoint``: the recipient's endpoint as the write just before read it; None: the
    gateway reads it when it sends."""

    record: CertificateRecord
    recipient: Recipient
    endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """Arm the backoff timer for ``attempt`` at ``step`` (None: the database)."""

    step: Step | None
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Moved:
    """The certificate left ``previous`` for ``record.state`` (for logs and metrics)."""

    record: CertificateRecord
    previous: State


@dataclass(frozen=True, slots=True)
class Finish:
    """Stop driving. ``state`` None: given up or left for a restart, not finished."""

    state: State | None
    reason: str = ""


Effect = Allocate | LoadRecipient | Build | Persist | Submit | Deliver | Wait | Moved | Finish


# --- the journey ------------------------------------------------------------------------------


class Awaiting(enum.Enum):
    NOTHING = "nothing"
    ALLOCATION = "allocation"
    RECIPIENT = "recipient"
    BUILD = "build"
    WRITE = "write"
    REGISTRY = "registry"
    WALLET = "wallet"
    TIMER = "timer"


@dataclass(frozen=True, slots=True)
class Rules:
    registry_max_attempts: int
    wallet_max_attempts: int
    crypto_max_attempts: int
    grid_areas: frozenset[str]


@dataclass(frozen=True, slots=True)
class Journey:
    """The persisted record and what its driver keeps in memory meanwhile."""

    record: CertificateRecord
    recipient: Recipient | None = None
    awaiting: Awaiting = Awaiting.NOTHING
    pending: Write | None = None  # the write awaited, or repeated when the timer fires
    attempts: int = 0  # failed attempts at the current step
    database_failures: int = 0
    fresh_transaction: bool = False  # persisted by this driver: never sent before
    draining: bool = False
    finished: bool = False

    @classmethod
    def resume(cls, record: CertificateRecord) -> Journey:
        return cls(record)


def advance(journey: Journey, event: LifecycleEvent, rules: Rules) -> tuple[Journey, tuple[Effect, ...]]:
    """What ``event`` means for the certificate, and what to do about it."""
    if journey.finished:
        return journey, ()
    if isinstance(event, Drain):
        journey = dataclasses.replace(journey, draining=True)
        if journey.awaiting in (Awaiting.WRITE, Awaiting.WALLET):
            return journey, ()  # an answer that must be recorded is on its way
        return _finish(journey, None, "left for restart")
    if isinstance(event, Started):
        return _next(journey, rules)
    if not _awaited(journey, event):
        return journey, ()
    journey = dataclasses.replace(journey, awaiting=Awaiting.NOTHING)
    record = journey.record
    match event:
        case PositionAllocated(position=position, version=version):
            journey = _with_record(journey, position=position, version=version)
            return _next(journey, rules)
        case PositionRefused():
            return _finish(
                journey, None, "position not allocated: the certificate was changed by another writer"
            )
        case RecipientFound(recipient=None) if record.redelivery:
            return _end_redelivery(journey, Event.REDELIVERY_FAILED, {"reason": "recipient not found"})
        case RecipientFound(recipient=None):
            return _fail(journey, Step.POSITION, "recipient not found", 1)
        case RecipientFound(recipient=recipient):
            journey = dataclasses.replace(journey, recipient=recipient, database_failures=0)
            return _next(journey, rules)
        case BundleBuilt():
            detail = {"transactionId": event.transaction_id, "position": record.position}
            changes = {
                "transaction": event.transaction,
                "transaction_id": event.transaction_id,
                "blinding": event.blinding,
                "salts": event.salts,
            }
            return _persist(
                journey,
                WriteKind.RECORD_TRANSACTION,
                State.SENT_TO_REGISTRY,
                Event.SENT_TO_REGISTRY,
                detail,
                changes,
            )
        case BuildFailed(reason=reason):
            return _attempt_failed(journey, Step.CRYPTO, reason, rules.crypto_max_attempts)
        case Written():
            return _written(journey, event, rules)
        case DatabaseFailed(reason=reason):
            failures = journey.database_failures + 1
            journey = dataclasses.replace(journey, database_failures=failures, awaiting=Awaiting.TIMER)
            return journey, (Wait(None, failures, reason),)
        case RegistryCommitted():
            return _persist(journey, WriteKind.ISSUE_AND_MARK, State.MARKED_AS_ISSUED, Event.MARKED_AS_ISSUED)
        case RegistryRejected(message=message):
            return _persist(
                journey,
                WriteKind.REJECT,
                State.REJECTED,
                Event.FAILED_IN_REGISTRY,
                {"reason": message},
            )
        case RegistryGaveUp(reason=reason, attempts=attempts):
            return _fail(journey, Step.REGISTRY, reason, attempts)
        case WalletAnswered(outcome=Delivery.DELIVERED, status=status, recorded=recorded):
            write = delivered_write(record, status, event.endpoint)
            journey = dataclasses.replace(journey, pending=write, awaiting=Awaiting.WRITE)
            if recorded is None:
                return journey, (Persist(write),)
            return advance(journey, recorded, rules)  # the write went out with the delivery
        case WalletAnswered(outcome=Delivery.REJECTED, reason=reason, endpoint=endpoint):
            return _wallet_gave_up(journey, reason, journey.attempts + 1, endpoint)
        case WalletAnswered(reason=reason, endpoint=endpoint):
            attempts = journey.attempts + 1
            if attempts >= rules.wallet_max_attempts:
                return _wallet_gave_up(journey, reason, attempts, endpoint)
            failure = {"endpoint": endpoint, "reason": reason, "attempt": attempts}
            journey = dataclasses.replace(journey, attempts=attempts)
            return _persist(
                journey, WriteKind.ATTEMPT_FAILED, record.state, Event.WALLET_ATTEMPT_FAILED, failure
            )
        case RetryDue():
            if journey.draining:
                return _finish(journey, None, "left for restart")
            if journey.pending is not None:
                return _await(journey, Awaiting.WRITE), (Persist(journey.pending),)
            return _next(journey, rules)
    raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover


def delivered_write(record: CertificateRecord, status: int | None, endpoint: str) -> Write:
    """The write that records a wallet's 2xx: the delivery, or a re-delivery of a
    delivered certificate. The event names the endpoint the slice went to."""
    detail = {"status": status, "endpoint": endpoint}
    if record.state is State.DELIVERED:
        return Write(
            WriteKind.REDELIVERED, record.version, State.DELIVERED, Event.REDELIVERED, detail, _NO_REDELIVERY
        )
    return Write(WriteKind.ADVANCE, record.version, State.DELIVERED, Event.SENT_TO_WALLET, detail)


_NO_REDELIVERY: Mapping[str, Any] = {"redelivery": False}


def _wallet_gave_up(
    journey: Journey, reason: str, attempts: int, endpoint: str
) -> tuple[Journey, tuple[Effect, ...]]:
    """A wallet refused the slice, or every attempt was used: a delivery fails; a
    re-delivery ends, the certificate staying delivered."""
    if journey.record.redelivery:
        detail = {"endpoint": endpoint, "reason": reason, "attempts": attempts}
        return _end_redelivery(journey, Event.REDELIVERY_FAILED, detail)
    return _fail(journey, Step.WALLET, reason, attempts, endpoint=endpoint)


def _end_redelivery(
    journey: Journey, event: Event, detail: Mapping[str, Any]
) -> tuple[Journey, tuple[Effect, ...]]:
    return _persist(journey, WriteKind.REDELIVERED, State.DELIVERED, event, detail, _NO_REDELIVERY)


WITHHELD_REASON = "withdrawn before its slice was delivered: the slice is not delivered to the wallet"


def withheld_from_wallet(record: CertificateRecord) -> bool:
    """Whether the certificate's slice must not go to the wallet: it is withdrawn and
    not yet delivered. The wallet would otherwise hold a certificate the issuing body
    has already withdrawn (it learns of the withdrawal from the feed only if it knew
    the certificate)."""
    return record.withdrawn and record.state in (
        State.STORED,
        State.SENT_TO_REGISTRY,
        State.ISSUED_IN_REGISTRY,
        State.MARKED_AS_ISSUED,
    )


def _withhold(journey: Journey) -> tuple[Journey, tuple[Effect, ...]]:
    # Earlier wallet attempts that got no 2xx may still have reached the wallet (a
    # timeout): the history says so rather than claim the wallet holds nothing.
    earlier = max(journey.attempts, journey.record.attempts)
    detail: dict[str, Any] = {"reason": WITHHELD_REASON, "failedDeliveryAttempts": earlier}
    if earlier:
        detail["note"] = (
            "an earlier delivery attempt got no answer and may have reached the wallet; "
            "the wallet drops the certificate when it reads the withdrawal feed"
        )
    return _persist(journey, WriteKind.WITHHOLD, State.WITHHELD, Event.NOT_DELIVERED, detail)


def _awaited(journey: Journey, event: LifecycleEvent) -> bool:
    """Whether the driver is waiting for this kind of answer (and, for a write, this one)."""
    awaiting = journey.awaiting
    if isinstance(event, Written):
        return (
            awaiting is Awaiting.WRITE
            and journey.pending is not None
            and journey.pending.expected == event.expected
        )
    if isinstance(event, DatabaseFailed):
        return awaiting in (Awaiting.WRITE, Awaiting.RECIPIENT)
    expected = _ANSWERS.get(type(event))
    return expected is awaiting


_ANSWERS: dict[type, Awaiting] = {
    PositionAllocated: Awaiting.ALLOCATION,
    PositionRefused: Awaiting.ALLOCATION,
    RecipientFound: Awaiting.RECIPIENT,
    BundleBuilt: Awaiting.BUILD,
    BuildFailed: Awaiting.BUILD,
    RegistryCommitted: Awaiting.REGISTRY,
    RegistryRejected: Awaiting.REGISTRY,
    RegistryGaveUp: Awaiting.REGISTRY,
    WalletAnswered: Awaiting.WALLET,
    RetryDue: Awaiting.TIMER,
}


def _next(
    journey: Journey, rules: Rules, endpoint: str | None = None, *, claimed: bool = False
) -> tuple[Journey, tuple[Effect, ...]]:
    """The next step, derived from the persisted record alone: a fresh start and a
    resume after a crash take the same path. ``claimed``: the write just answered was
    this driver's and moved the version on in a delivering state (a mark or a claim);
    ``endpoint``: the recipient's endpoint as that write read it.

    A claim holds only for a delivery sent at once: anything awaited in between (a
    backoff, a read) lets another driver claim meanwhile, so the delivery is claimed
    again first and goes out only if this driver's version is still the row's."""
    record = journey.record
    if record.state.terminal and not record.redelivery:
        return _finish(journey, record.state)
    if journey.draining:
        return _finish(journey, None, "left for restart")
    state = record.state
    if state is State.STORED and record.position is None:
        return _await(journey, Awaiting.ALLOCATION), (
            Allocate(record.key, record.content.recipient_id, record.version),
        )
    if state is State.MARKED_AS_ISSUED and withheld_from_wallet(record):
        return _withhold(journey)
    if journey.recipient is None:
        # Read before anything that leads to the delivery (for a driver resumed in
        # sent_to_registry, before it asks the registry), so that the mark is followed by
        # the delivery at once and is its claim: no read in between for another driver
        # to claim in.
        return _await(journey, Awaiting.RECIPIENT), (LoadRecipient(record.content.recipient_id),)
    if state is State.STORED:
        if record.content.grid_area not in rules.grid_areas:
            return _fail(
                journey, Step.CRYPTO, f"no issuer key configured for grid area {record.content.grid_area}", 1
            )
        return _await(journey, Awaiting.BUILD), (Build(record, journey.recipient),)
    if state is State.SENT_TO_REGISTRY:
        assert record.transaction is not None and record.transaction_id is not None
        submit = Submit(record.key, record.transaction, record.transaction_id, not journey.fresh_transaction)
        return _await(journey, Awaiting.REGISTRY), (submit,)
    if state is State.ISSUED_IN_REGISTRY:
        return _persist(journey, WriteKind.ADVANCE, State.MARKED_AS_ISSUED, Event.MARKED_AS_ISSUED)
    assert state in (State.MARKED_AS_ISSUED, State.DELIVERED)  # delivered: a re-delivery was requested
    if not claimed:
        # Resumed, retried or re-delivered: move the version on first, so that only one
        # driver of this certificate can be delivering it.
        kind = WriteKind.CLAIM_REDELIVERY if state is State.DELIVERED else WriteKind.CLAIM_DELIVERY
        return _persist(journey, kind, state, None)
    return _await(journey, Awaiting.WALLET), (Deliver(record, journey.recipient, endpoint),)


def _written(journey: Journey, event: Written, rules: Rules) -> tuple[Journey, tuple[Effect, ...]]:
    write = journey.pending
    assert write is not None
    if event.version is None:
        return _finish(
            dataclasses.replace(journey, pending=None),
            None,
            f"stale transition to {write.state}: the certificate was changed by another writer",
        )
    previous = journey.record
    record = dataclasses.replace(
        previous,
        state=write.state,
        version=event.version,
        withdrawn=previous.withdrawn or event.withdrawn,
        **write.changes,
    )
    journey = dataclasses.replace(
        journey,
        record=record,
        pending=None,
        database_failures=0,
        fresh_transaction=journey.fresh_transaction or write.kind is WriteKind.RECORD_TRANSACTION,
    )
    if write.kind is WriteKind.ATTEMPT_FAILED and not journey.draining and not withheld_from_wallet(record):
        journey = dataclasses.replace(journey, awaiting=Awaiting.TIMER)
        return journey, (Wait(Step.WALLET, journey.attempts, str(write.detail["reason"])),)
    moved: tuple[Effect, ...] = ()
    if record.state is not previous.state:
        journey = dataclasses.replace(journey, attempts=0)
        if write.kind is WriteKind.ISSUE_AND_MARK:
            # Two transitions in one statement: both are observed, as both are in the history.
            issued = dataclasses.replace(previous, state=State.ISSUED_IN_REGISTRY, version=event.version)
            moved = (Moved(issued, previous.state), Moved(record, State.ISSUED_IN_REGISTRY))
        else:
            moved = (Moved(record, previous.state),)
    # A recorded failure is no claim: the next attempt is claimed after the backoff.
    claimed = write.kind is not WriteKind.ATTEMPT_FAILED and (
        write.state is State.MARKED_AS_ISSUED or write.kind is WriteKind.CLAIM_REDELIVERY
    )
    journey, effects = _next(journey, rules, event.endpoint, claimed=claimed)
    return journey, moved + effects


def _persist(
    journey: Journey,
    kind: WriteKind,
    state: State,
    event: Event | None,
    detail: Mapping[str, Any] | None = None,
    changes: Mapping[str, Any] | None = None,
) -> tuple[Journey, tuple[Effect, ...]]:
    write = Write(kind, journey.record.version, state, event, detail or {}, changes or {})
    journey = dataclasses.replace(journey, pending=write, awaiting=Awaiting.WRITE)
    return journey, (Persist(write),)


def _attempt_failed(
    journey: Journey, step: Step, reason: str, max_attempts: int
) -> tuple[Journey, tuple[Effect, ...]]:
    attempts = journey.attempts + 1
    if attempts >= max_attempts:
        return _fail(journey, step, reason, attempts)
    journey = dataclasses.replace(journey, attempts=attempts, awaiting=Awaiting.TIMER)
    return journey, (Wait(step, attempts, reason),)


def _fail(
    journey: Journey, step: Step, reason: str, attempts: int, *, endpoint: str | None = None
) -> tuple[Journey, tuple[Effect, ...]]:
    detail: dict[str, Any] = {"step": step.value, "reason": reason, "attempts": attempts}
    if endpoint:  # empty: the attempt failed before a URL was known
        detail["endpoint"] = endpoint
    return _persist(
        journey,
        WriteKind.FAIL,
        State.FAILED,
        Event.FAILED,
        detail,
        {"failed_step": step.value, "attempts": attempts},
    )


def _await(journey: Journey, awaiting: Awaiting) -> Journey:
    return dataclasses.replace(journey, awaiting=awaiting)


def _with_record(journey: Journey, **changes: Any) -> Journey:
    return dataclasses.replace(journey, record=dataclasses.replace(journey.record, **changes))


def _finish(journey: Journey, state: State | None, reason: str = "") -> tuple[Journey, tuple[Effect, ...]]:
    journey = dataclasses.replace(journey, finished=True, awaiting=Awaiting.NOTHING)
    return journey, (Finish(state, reason),)
