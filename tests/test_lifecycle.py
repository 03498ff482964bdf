"""The lifecycle of a certificate as a pure function (stamp/lifecycle.py): tables of
(record, event) → (record, effects), and a state machine that feeds random outcome
orders — duplicates, late answers, stale writes, crashes replayed from the persisted
record, a second driver — and checks the invariants of docs/architecture.md, and every
interleaving of two drivers' answers searched exhaustively. No actors, no database, no
network."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from stamp import lifecycle as lc
from stamp.domain import (
    CertificateContent,
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

KEY = CertificateKey("Narnia", "7b7a1f0e-3f2c-4f7e-9d7c-2d1f5c9a0b11")
RECIPIENT = Recipient("0f8fad5b-d9cb-469f-a165-70867728950e", 1, "http://wallet/v1/slices", b"k" * 74)
RULES = lc.Rules(
    registry_max_attempts=3, wallet_max_attempts=3, crypto_max_attempts=3, grid_areas=frozenset({"DK1"})
)
TX = b"the-signed-transaction"
R = b"r" * 32
SALTS = (b"s" * 16,)
BUILT = lc.BundleBuilt(TX, "tx-1", R, SALTS)


CONTENT = CertificateContent(
    key=KEY,
    recipient_id=RECIPIENT.id,
    metering_point_id="571234567890123456",
    certificate_type=2,
    quantity=1000,
    start=1_700_000_000,
    end=1_700_003_600,
    grid_area="DK1",
    clear_attributes=(("fuelCode", "F01040100"),),
    hashed_attributes=(("assetId", "571234567890123456"),),
)


def record(state: State = State.STORED, grid_area: str = "DK1", **changes: Any) -> CertificateRecord:
    base = CertificateRecord(
        content=dataclasses.replace(CONTENT, grid_area=grid_area),
        state=state,
        version=0,
        position=None,
        attempts=0,
        transaction_id=None,
    )
    return dataclasses.replace(base, **changes)


SENT = record(
    State.SENT_TO_REGISTRY,
    version=2,
    position=7,
    transaction=TX,
    transaction_id="tx-1",
    blinding=R,
    salts=SALTS,
)
MARKED = dataclasses.replace(SENT, state=State.MARKED_AS_ISSUED, version=3)


def run(journey: lc.Journey, *events: lc.LifecycleEvent) -> tuple[lc.Journey, list[lc.Effect]]:
    effects: list[lc.Effect] = []
    for event in events:
        journey, out = lc.advance(journey, event, RULES)
        effects.extend(out)
    return journey, effects


def kinds(effects: list[lc.Effect]) -> list[str]:
    return [type(e).__name__ for e in effects]


# --- the happy path, step by step ------------------------------------------------------------


def test_a_new_certificate_travels_the_whole_journey() -> None:
    j = lc.Journey.resume(record())
    j, fx = run(j, lc.Started())
    assert fx == [lc.Allocate(KEY, RECIPIENT.id, 0)]
    j, fx = run(j, lc.PositionAllocated(7, 1))
    assert fx == [lc.LoadRecipient(RECIPIENT.id)]
    j, fx = run(j, lc.RecipientFound(RECIPIENT))
    assert fx == [lc.Build(j.record, RECIPIENT)] and j.record.position == 7
    j, fx = run(j, BUILT)
    (persist,) = fx
    assert isinstance(persist, lc.Persist) and persist.write.kind is lc.WriteKind.RECORD_TRANSACTION
    assert persist.write.expected == 1 and persist.write.event is Event.SENT_TO_REGISTRY
    j, fx = run(j, lc.Written(1, 2))
    assert kinds(fx) == ["Moved", "Submit"]
    assert fx[1] == lc.Submit(KEY, TX, "tx-1", check_first=False)  # persisted by this driver: never sent
    j, fx = run(j, RegistryCommitted(KEY))
    (persist,) = fx
    assert isinstance(persist, lc.Persist) and persist.write.kind is lc.WriteKind.ISSUE_AND_MARK
    j, fx = run(j, lc.Written(2, 3))
    assert kinds(fx) == [
        "Moved",
        "Moved",
        "Deliver",
    ]  # issued_in_registry and marked_as_issued, one statement
    assert [m.previous for m in fx[:2] if isinstance(m, lc.Moved)] == [
        State.SENT_TO_REGISTRY,
        State.ISSUED_IN_REGISTRY,
    ]
    j, fx = run(j, lc.WalletAnswered(Delivery.DELIVERED, 202, ""))
    (persist,) = fx
    assert isinstance(persist, lc.Persist) and persist.write.state is State.DELIVERED
    j, fx = run(j, lc.Written(3, 4))
    assert kinds(fx) == ["Moved", "Finish"] and fx[1] == lc.Finish(State.DELIVERED)
    assert j.record.state is State.DELIVERED and j.record.version == 4


# --- resuming: the next step from the persisted record alone ----------------------------------


@pytest.mark.parametrize(
    ("persisted", "expected"),
    [
        (record(), [lc.Allocate(KEY, RECIPIENT.id, 0)]),
        (record(position=3, version=1), [lc.LoadRecipient(RECIPIENT.id)]),
        # The recipient first, so that the mark is followed by the delivery at once.
        (SENT, [lc.LoadRecipient(RECIPIENT.id)]),
        (dataclasses.replace(SENT, state=State.ISSUED_IN_REGISTRY), [lc.LoadRecipient(RECIPIENT.id)]),
        (MARKED, [lc.LoadRecipient(RECIPIENT.id)]),
        (dataclasses.replace(SENT, state=State.DELIVERED), [lc.Finish(State.DELIVERED)]),
        (dataclasses.replace(SENT, state=State.REJECTED), [lc.Finish(State.REJECTED)]),
        (dataclasses.replace(SENT, state=State.FAILED), [lc.Finish(State.FAILED)]),
    ],
)
def test_a_resumed_certificate_continues_where_its_record_says(
    persisted: CertificateRecord, expected: list[object]
) -> None:
    _, fx = run(lc.Journey.resume(persisted), lc.Started())
    shown = [
        f"Persist {e.write.kind.value} {e.write.state.value}" if isinstance(e, lc.Persist) else e for e in fx
    ]
    assert shown == expected


def test_a_resumed_delivery_is_claimed_before_it_is_sent() -> None:
    j, fx = run(lc.Journey.resume(MARKED), lc.Started(), lc.RecipientFound(RECIPIENT))
    load, persist = fx
    assert load == lc.LoadRecipient(RECIPIENT.id)
    assert isinstance(persist, lc.Persist) and persist.write.kind is lc.WriteKind.CLAIM_DELIVERY
    j, fx = run(j, lc.Written(3, 4))
    assert fx == [lc.Deliver(j.record, RECIPIENT)]  # no Moved: the state did not change


MOVED_URL = "http://moved-wallet/v1/slices"
NEW_URL = "http://new-wallet/v1/slices"


def test_the_mark_answers_the_endpoint_the_delivery_goes_to() -> None:
    # Driven since its build: the recipient is at hand when the registry commits.
    j, _ = run(lc.Journey(SENT, recipient=RECIPIENT), lc.Started())
    j, fx = run(j, RegistryCommitted(KEY), lc.Written(2, 3, endpoint=MOVED_URL))
    assert fx[-1] == lc.Deliver(j.record, RECIPIENT, MOVED_URL)  # the mark read it: no read of its own


def test_a_claim_answers_the_endpoint_the_delivery_goes_to() -> None:
    j, fx = run(lc.Journey.resume(MARKED), lc.Started(), lc.RecipientFound(RECIPIENT))
    j, fx = run(j, lc.Written(3, 4, endpoint=MOVED_URL))
    assert fx == [lc.Deliver(j.record, RECIPIENT, MOVED_URL)]


def test_a_resumed_certificate_reads_its_recipient_before_it_asks_the_registry() -> None:
    # Then the mark (which also reads the endpoint) is followed by the delivery at once:
    # it is the delivery's claim, as for a certificate driven since its build.
    j, _ = run(lc.Journey.resume(SENT), lc.Started())
    j, fx = run(j, lc.RecipientFound(RECIPIENT))
    assert fx == [lc.Submit(KEY, TX, "tx-1", check_first=True)]  # may have been sent: ask first
    j, fx = run(j, RegistryCommitted(KEY), lc.Written(2, 3, endpoint=MOVED_URL))
    assert kinds(fx) == ["Persist", "Moved", "Moved", "Deliver"]
    assert fx[-1] == lc.Deliver(j.record, RECIPIENT, MOVED_URL)


def test_a_delivery_after_a_write_that_reads_no_endpoint_has_it_read_by_the_gateway() -> None:
    # Left in issued_in_registry by an older version: its mark (ADVANCE) reads no endpoint.
    issued = dataclasses.replace(SENT, state=State.ISSUED_IN_REGISTRY)
    j, fx = run(lc.Journey.resume(issued), lc.Started(), lc.RecipientFound(RECIPIENT))
    mark = fx[-1]
    assert isinstance(mark, lc.Persist) and mark.write.kind is lc.WriteKind.ADVANCE
    j, fx = run(j, lc.Written(2, 3))
    assert fx[-1] == lc.Deliver(j.record, RECIPIENT, None)


# --- failures and retries -----------------------------------------------------------------------


def _after_send() -> lc.Journey:
    j, _ = run(lc.Journey.resume(SENT), lc.Started(), lc.RecipientFound(RECIPIENT))
    assert j.awaiting is lc.Awaiting.REGISTRY
    return j


@pytest.mark.parametrize(
    ("start", "events", "write_kind", "detail"),
    [
        (
            _after_send,
            [RegistryRejected(KEY, "bad signature")],
            lc.WriteKind.REJECT,
            {"reason": "bad signature"},
        ),
        (
            _after_send,
            [RegistryGaveUp(KEY, "still PENDING", 4)],
            lc.WriteKind.FAIL,
            {"step": "registry", "reason": "still PENDING", "attempts": 4},
        ),
    ],
)
def test_registry_outcomes_become_states(
    start: Any, events: list[lc.LifecycleEvent], write_kind: lc.WriteKind, detail: dict[str, object]
) -> None:
    _, fx = run(start(), *events)
    (persist,) = fx
    assert isinstance(persist, lc.Persist)
    assert persist.write.kind is write_kind and dict(persist.write.detail) == detail


def _delivering() -> lc.Journey:
    j, _ = run(lc.Journey.resume(MARKED), lc.Started(), lc.RecipientFound(RECIPIENT), lc.Written(3, 4))
    assert j.awaiting is lc.Awaiting.WALLET
    return j


def test_a_wallet_rejection_fails_at_once() -> None:
    _, fx = run(_delivering(), lc.WalletAnswered(Delivery.REJECTED, 404, "wallet answered 404"))
    (persist,) = fx
    assert isinstance(persist, lc.Persist) and persist.write.kind is lc.WriteKind.FAIL
    assert persist.write.detail == {"step": "wallet", "reason": "wallet answered 404", "attempts": 1}


def test_a_transient_wallet_answer_is_recorded_then_waits_claims_again_and_gives_up() -> None:
    j = _delivering()
    transient = lc.WalletAnswered(Delivery.TRANSIENT, 503, "wallet answered 503")
    j, fx = run(j, transient)
    (record_failure,) = fx
    # Recorded before the backoff: a crash while waiting loses no attempt.
    assert isinstance(record_failure, lc.Persist)
    assert record_failure.write.kind is lc.WriteKind.ATTEMPT_FAILED
    assert record_failure.write.event is Event.WALLET_ATTEMPT_FAILED
    assert record_failure.write.state is State.MARKED_AS_ISSUED
    assert dict(record_failure.write.detail) == {
        "endpoint": "",
        "reason": "wallet answered 503",
        "attempt": 1,
    }
    j, fx = run(j, lc.Written(4, 5))
    assert fx == [lc.Wait(Step.WALLET, 1, "wallet answered 503")]
    j, fx = run(j, lc.RetryDue())
    (claim,) = fx
    assert isinstance(claim, lc.Persist) and claim.write.kind is lc.WriteKind.CLAIM_DELIVERY
    assert claim.write.event is None
    j, fx = run(j, lc.Written(5, 6), transient, lc.Written(6, 7), lc.RetryDue(), lc.Written(7, 8))
    assert kinds(fx) == ["Deliver", "Persist", "Wait", "Persist", "Deliver"]
    j, fx = run(j, transient)
    (fail,) = fx
    assert isinstance(fail, lc.Persist) and fail.write.kind is lc.WriteKind.FAIL
    assert fail.write.detail["attempts"] == 3


def test_crypto_failures_retry_then_fail_with_the_step() -> None:
    j, _ = run(lc.Journey.resume(record(position=3, version=1)), lc.Started(), lc.RecipientFound(RECIPIENT))
    j, fx = run(j, lc.BuildFailed("BundleError: bad key"), lc.RetryDue())
    assert kinds(fx) == ["Wait", "Build"]
    j, fx = run(j, lc.BuildFailed("x"), lc.RetryDue(), lc.BuildFailed("x"))
    assert kinds(fx) == ["Wait", "Build", "Persist"]
    assert isinstance(fx[-1], lc.Persist) and fx[-1].write.detail["step"] == "crypto"


def test_database_failures_repeat_the_same_write_for_ever() -> None:
    j = _after_send()
    j, fx = run(j, RegistryCommitted(KEY))
    (first,) = fx
    for attempt in range(1, 30):
        j, fx = run(j, lc.DatabaseFailed("ConnectionRefusedError"))
        assert fx == [lc.Wait(None, attempt, "ConnectionRefusedError")]
        j, fx = run(j, lc.RetryDue())
        assert fx == [first]


def test_no_issuer_key_for_the_grid_area_fails_at_the_crypto_step() -> None:
    j = lc.Journey.resume(record(position=3, version=1, grid_area="DK2"))
    _, fx = run(j, lc.Started(), lc.RecipientFound(RECIPIENT))
    fail = fx[-1]
    assert isinstance(fail, lc.Persist) and fail.write.detail["step"] == "crypto"


def test_an_unknown_recipient_fails_at_the_position_step() -> None:
    _, fx = run(lc.Journey.resume(record(position=3, version=1)), lc.Started(), lc.RecipientFound(None))
    fail = fx[-1]
    assert isinstance(fail, lc.Persist) and fail.write.detail["step"] == "position"


def test_a_stale_write_or_allocation_stops_the_driver_and_touches_nothing() -> None:
    j, fx = run(_after_send(), RegistryCommitted(KEY), lc.Written(2, None))
    assert j.finished
    assert kinds(fx) == ["Persist", "Finish"] and fx[-1] == lc.Finish(
        None, "stale transition to marked_as_issued: the certificate was changed by another writer"
    )
    assert j.record == SENT
    _, fx = run(lc.Journey.resume(record()), lc.Started(), lc.PositionRefused())
    assert kinds(fx) == ["Allocate", "Finish"]


# --- draining, late and duplicate answers ---------------------------------------------------------


def test_draining_waits_for_an_answer_that_must_be_recorded() -> None:
    j, fx = run(_delivering(), lc.Drain())
    assert fx == []
    j, fx = run(j, lc.WalletAnswered(Delivery.DELIVERED, 200, ""))
    assert kinds(fx) == ["Persist"]  # the 2xx is recorded, never re-sent after the restart
    j, fx = run(j, lc.Written(4, 5))
    assert fx[-1] == lc.Finish(State.DELIVERED)


def test_a_2xx_recorded_on_the_same_trip_needs_no_second_write() -> None:
    written = lc.Written(4, 5)
    j, fx = run(_delivering(), lc.WalletAnswered(Delivery.DELIVERED, 202, "", written))
    assert kinds(fx) == ["Moved", "Finish"] and j.record.state is State.DELIVERED
    j, fx = run(_delivering(), lc.WalletAnswered(Delivery.DELIVERED, 202, "", lc.DatabaseFailed("down")))
    assert kinds(fx) == ["Wait"]
    j, fx = run(j, lc.RetryDue())
    (persist,) = fx
    assert isinstance(persist, lc.Persist)
    assert persist.write == lc.delivered_write(_delivering().record, 202, "")


# --- re-delivery of a delivered certificate ------------------------------------------------

DELIVERED = dataclasses.replace(MARKED, state=State.DELIVERED, version=5)
REDELIVERY = dataclasses.replace(DELIVERED, redelivery=True)


def _redelivering() -> lc.Journey:
    j, fx = run(lc.Journey.resume(REDELIVERY), lc.Started())
    assert fx == [lc.LoadRecipient(RECIPIENT.id)]
    j, fx = run(j, lc.RecipientFound(RECIPIENT))
    (claim,) = fx
    assert isinstance(claim, lc.Persist) and claim.write.kind is lc.WriteKind.CLAIM_REDELIVERY
    assert claim.write.state is State.DELIVERED and claim.write.event is None
    j, fx = run(j, lc.Written(5, 6))
    (deliver,) = fx
    # The persisted slice, the same as the first delivery's.
    assert isinstance(deliver, lc.Deliver) and deliver.record.blinding == R and deliver.record.position == 7
    return j


def test_a_delivered_certificate_without_a_request_is_left_alone() -> None:
    _, fx = run(lc.Journey.resume(DELIVERED), lc.Started())
    assert fx == [lc.Finish(State.DELIVERED)]


def test_a_redelivery_is_claimed_sent_and_recorded_with_its_endpoint() -> None:
    j, fx = run(_redelivering(), lc.WalletAnswered(Delivery.DELIVERED, 202, "", endpoint=NEW_URL))
    (persist,) = fx
    assert isinstance(persist, lc.Persist)
    write = persist.write
    assert write.kind is lc.WriteKind.REDELIVERED and write.event is Event.REDELIVERED
    assert write.state is State.DELIVERED and dict(write.detail) == {"status": 202, "endpoint": NEW_URL}
    assert write == lc.delivered_write(j.record, 202, NEW_URL)  # what the gateway records on its trip
    j, fx = run(j, lc.Written(6, 7))
    assert fx == [lc.Finish(State.DELIVERED)] and not j.record.redelivery


def test_a_refused_redelivery_ends_and_the_certificate_stays_delivered() -> None:
    j, fx = run(
        _redelivering(), lc.WalletAnswered(Delivery.REJECTED, 404, "wallet answered 404", endpoint=NEW_URL)
    )
    (persist,) = fx
    assert isinstance(persist, lc.Persist)
    assert persist.write.kind is lc.WriteKind.REDELIVERED and persist.write.event is Event.REDELIVERY_FAILED
    assert persist.write.state is State.DELIVERED
    assert dict(persist.write.detail) == {"endpoint": NEW_URL, "reason": "wallet answered 404", "attempts": 1}
    _, fx = run(j, lc.Written(6, 7))
    assert fx == [lc.Finish(State.DELIVERED)]


def test_a_failing_redelivery_is_retried_recording_each_attempt_then_given_up() -> None:
    j = _redelivering()
    failed = lc.WalletAnswered(Delivery.TRANSIENT, 503, "wallet answered 503", endpoint=NEW_URL)
    j, fx = run(j, failed)
    (recorded,) = fx
    assert isinstance(recorded, lc.Persist) and recorded.write.kind is lc.WriteKind.ATTEMPT_FAILED
    assert recorded.write.event is Event.WALLET_ATTEMPT_FAILED and recorded.write.state is State.DELIVERED
    assert dict(recorded.write.detail) == {"endpoint": NEW_URL, "reason": "wallet answered 503", "attempt": 1}
    j, fx = run(j, lc.Written(6, 7))
    assert kinds(fx) == ["Wait"]
    j, fx = run(j, lc.RetryDue())
    (claim,) = fx
    assert isinstance(claim, lc.Persist) and claim.write.kind is lc.WriteKind.CLAIM_REDELIVERY
    assert claim.write.event is None
    j, fx = run(j, lc.Written(7, 8), failed, lc.Written(8, 9), lc.RetryDue(), lc.Written(9, 10), failed)
    (persist,) = [e for e in fx if isinstance(e, lc.Persist) and e.write.kind is lc.WriteKind.REDELIVERED]
    assert persist.write.event is Event.REDELIVERY_FAILED and persist.write.detail["attempts"] == 3


def test_a_delivery_failing_at_one_endpoint_records_where_each_attempt_went() -> None:
    old = "http://old-wallet/v1/slices"
    j, fx = run(
        _delivering(), lc.WalletAnswered(Delivery.TRANSIENT, 503, "wallet answered 503", endpoint=old)
    )
    (recorded,) = fx
    assert isinstance(recorded, lc.Persist) and recorded.write.kind is lc.WriteKind.ATTEMPT_FAILED
    assert recorded.write.event is Event.WALLET_ATTEMPT_FAILED and recorded.write.detail["endpoint"] == old
    j, fx = run(j, lc.Written(recorded.write.expected, recorded.write.expected + 1), lc.RetryDue())
    assert kinds(fx) == ["Wait", "Persist"]
    claim = fx[-1]
    assert isinstance(claim, lc.Persist) and claim.write.kind is lc.WriteKind.CLAIM_DELIVERY
    j, fx = run(j, lc.Written(claim.write.expected, claim.write.expected + 1))
    assert kinds(fx) == ["Deliver"]
    j, fx = run(j, lc.WalletAnswered(Delivery.DELIVERED, 202, "", endpoint=NEW_URL))
    (persist,) = fx
    assert isinstance(persist, lc.Persist) and persist.write.event is Event.SENT_TO_WALLET
    assert persist.write.detail["endpoint"] == NEW_URL


def test_draining_leaves_anything_else_for_the_restart() -> None:
    _, fx = run(_after_send(), lc.Drain())
    assert fx == [lc.Finish(None, "left for restart")]


@pytest.mark.parametrize(
    "late",
    [
        lc.Written(1, 2),  # an answer for an older write
        lc.RetryDue(),
        lc.WalletAnswered(Delivery.DELIVERED, 200, ""),
        lc.PositionAllocated(9, 9),
        BUILT,
        RegistryCommitted(KEY),
    ],
)
def test_answers_nobody_waits_for_change_nothing(late: lc.LifecycleEvent) -> None:
    j, fx = run(_after_send(), RegistryRejected(KEY, "no"))
    j2, fx = run(j, late)
    assert fx == [] and j2 == j


# --- random outcome orders against the invariants (docs/architecture.md) ------------------------


class Row:
    """The certificate row as PostgreSQL keeps it: versioned compare-and-set."""

    def __init__(self, persisted: CertificateRecord) -> None:
        self.record = persisted
        self.history: list[State] = []
        self.positions: list[int] = []
        self.transactions: list[bytes] = []

    def apply(self, write: lc.Write) -> int | None:
        if write.expected != self.record.version:
            return None
        if write.kind is lc.WriteKind.CLAIM_DELIVERY and self.record.state is not State.MARKED_AS_ISSUED:
            return None
        changes = dict(write.changes)
        if "transaction" in changes:
            assert self.record.transaction is None, "a second transaction for one certificate"
            self.transactions.append(changes["transaction"])
        self.record = dataclasses.replace(
            self.record, state=write.state, version=self.record.version + 1, **changes
        )
        self.history.append(write.state)
        return self.record.version

    def allocate(self, version: int) -> tuple[int, int] | None:
        if version != self.record.version or self.record.position is not None:
            return None
        position = 100 + len(self.positions)
        self.positions.append(position)
        self.record = dataclasses.replace(self.record, position=position, version=version + 1)
        return position, version + 1


class Driver:
    """One driver of the certificate (an actor's life): its journey and what it waits for."""

    def __init__(self, persisted: CertificateRecord, name: int) -> None:
        self.name = name
        self.journey = lc.Journey.resume(persisted)
        self.outstanding: list[lc.Effect] = []  # effects whose answers are still to come


_TAKEN = lc.WalletAnswered(Delivery.DELIVERED, 202, "")
_BUSY = lc.WalletAnswered(Delivery.TRANSIENT, 503, "wallet answered 503")


def _good_answer(row: Row, effect: lc.Effect) -> lc.LifecycleEvent:
    """What a working database and registry answer (the wallet's is chosen apart)."""
    match effect:
        case lc.Allocate(version=version):
            allocated = row.allocate(version)
            return lc.PositionRefused() if allocated is None else lc.PositionAllocated(*allocated)
        case lc.LoadRecipient():
            return lc.RecipientFound(RECIPIENT)
        case lc.Build():
            return BUILT
        case lc.Persist(write=write):
            return lc.Written(write.expected, row.apply(write))
        case lc.Submit():
            return RegistryCommitted(KEY)
        case lc.Wait():
            return lc.RetryDue()
    raise AssertionError(effect)


OUTCOMES = st.sampled_from(["ok", "ok", "ok", "transient", "permanent", "db_down"])


# Where the row starts: a new certificate, or one left mid-journey (resumed drivers
# take the paths a fresh one never does, e.g. reading the recipient after the mark).
STARTS = st.sampled_from(
    [
        record(),
        record(position=3, version=1),
        SENT,
        dataclasses.replace(SENT, state=State.ISSUED_IN_REGISTRY),
        MARKED,
    ]
)


class LifecycleMachine(RuleBasedStateMachine):
    """Outcomes in any order; a crash replaces the driver by a replay of the persisted
    row; a zombie driver may linger and keep answering."""

    def __init__(self) -> None:
        super().__init__()
        self.row = Row(record())
        self.drivers: list[Driver] = []
        self.deliveries: list[tuple[int, bytes, bytes, int]] = []
        self.sends: list[bytes] = []
        self.names = 0

    @initialize(persisted=STARTS)
    def start(self, persisted: CertificateRecord) -> None:
        self.row = Row(persisted)
        self._start_driver()

    def _start_driver(self) -> Driver:
        self.names += 1
        driver = Driver(self.row.record, self.names)
        self.drivers.append(driver)
        self._feed(driver, lc.Started())
        return driver

    def _feed(self, driver: Driver, event: lc.LifecycleEvent) -> None:
        before = driver.journey
        driver.journey, effects = lc.advance(driver.journey, event, RULES)
        for effect in effects:
            self._check_effect(driver, before, effect)
            if not isinstance(effect, lc.Moved | lc.Finish):
                driver.outstanding.append(effect)

    def _check_effect(self, driver: Driver, before: lc.Journey, effect: lc.Effect) -> None:
        persisted = self.row.record
        assert R not in repr(effect).encode() and b"r" * 8 not in repr(effect).encode(), (
            "a secret in an effect"
        )
        match effect:
            case lc.Allocate():
                assert driver.journey.record.position is None  # a position is allocated once
            case lc.Build():
                assert effect.record.transaction is None, "a retry never builds a second transaction"
            case lc.Submit():
                # Every (re)send carries the persisted bytes.
                assert persisted.transaction == effect.transaction
                self.sends.append(effect.transaction)
            case lc.Deliver(record=delivered):
                # Only after marked_as_issued is persisted, and only by the driver whose
                # claim moved the version to what the row holds now.
                assert persisted.state is State.MARKED_AS_ISSUED
                assert driver.journey.record.version == persisted.version
                assert delivered.position == persisted.position and delivered.blinding == persisted.blinding
                self.deliveries.append(
                    (
                        driver.name,
                        delivered.blinding or b"",
                        b"".join(delivered.salts or ()),
                        persisted.version,
                    )
                )
            case lc.Persist(write=write):
                assert write.expected == driver.journey.record.version

    # --- outcomes arrive ---------------------------------------------------------------

    @precondition(lambda self: any(d.outstanding for d in self.drivers))
    @rule(data=st.data(), outcome=OUTCOMES, duplicate=st.booleans(), same_trip=st.booleans())
    def answer(self, data: st.DataObject, outcome: str, duplicate: bool, same_trip: bool) -> None:
        busy = [d for d in self.drivers if d.outstanding]
        driver = data.draw(st.sampled_from(busy))
        effect = driver.outstanding.pop(data.draw(st.integers(0, len(driver.outstanding) - 1)))
        if isinstance(effect, lc.Allocate) and outcome == "db_down":
            driver.outstanding.append(effect)  # the recipient actor retries: the answer comes later
            return
        for event in self._answers(effect, outcome, same_trip):
            self._feed(driver, event)
            if duplicate:
                self._feed(driver, event)

    def _answers(self, effect: lc.Effect, outcome: str, same_trip: bool) -> list[lc.LifecycleEvent]:
        match effect:
            case lc.LoadRecipient() | lc.Persist() if outcome == "db_down":
                return [lc.DatabaseFailed("ConnectionRefusedError")]
            case lc.Build() if outcome in ("transient", "permanent"):
                return [lc.BuildFailed("BundleError")]
            case lc.Submit(key=key) if outcome == "permanent":
                return [RegistryRejected(key, "invalid")]
            case lc.Submit(key=key) if outcome in ("transient", "db_down"):
                return [RegistryGaveUp(key, "UNAVAILABLE", 3)]
            case lc.Deliver():
                if outcome == "permanent":
                    return [lc.WalletAnswered(Delivery.REJECTED, 404, "wallet answered 404")]
                if outcome in ("transient", "db_down"):
                    return [_BUSY]
                if same_trip:  # the gateway recorded the 2xx on the same trip
                    expected = effect.record.version
                    written = lc.Written(expected, self.row.apply(lc.delivered_write(effect.record, 202, "")))
                    return [lc.WalletAnswered(Delivery.DELIVERED, 202, "", written)]
                return [_TAKEN]
        return [_good_answer(self.row, effect)]

    # --- crashes, zombies, shutdown -----------------------------------------------------

    @rule()
    def crash(self) -> None:
        """The driver dies; its answers are lost; a new one replays the persisted row."""
        self.drivers.pop()
        self._start_driver()

    @precondition(lambda self: len(self.drivers) < 3 and not self.row.record.state.terminal)
    @rule()
    def second_driver(self) -> None:
        """Another instance (or a zombie's successor) drives the same certificate."""
        self._start_driver()

    @rule()
    def late_noise(self) -> None:
        """Answers nobody asked for reach the newest driver."""
        driver = self.drivers[-1]
        for event in (lc.RetryDue(), lc.Written(-1, 99), RegistryCommitted(KEY)):
            awaited = (isinstance(event, lc.RetryDue) and driver.journey.awaiting is lc.Awaiting.TIMER) or (
                isinstance(event, RegistryCommitted) and driver.journey.awaiting is lc.Awaiting.REGISTRY
            )
            if not awaited:
                before = driver.journey
                self._feed(driver, event)
                assert driver.journey == before

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def position_and_transaction_are_set_once(self) -> None:
        assert len(self.row.positions) <= 1
        assert len(self.row.transactions) <= 1
        assert all(sent == self.row.record.transaction for sent in self.sends)

    @invariant()
    def deliveries_are_identical_and_each_after_its_own_claim(self) -> None:
        assert len({(r, s) for _, r, s, _ in self.deliveries}) <= 1
        versions = [v for _, _, _, v in self.deliveries]
        assert len(versions) == len(set(versions)), "two deliveries on one claim"

    @invariant()
    def every_live_driver_of_an_active_row_has_something_to_wait_for(self) -> None:
        for driver in self.drivers:
            j = driver.journey
            if not j.finished:
                assert j.awaiting is not lc.Awaiting.NOTHING, "a driver stuck with nothing to wait for"
                assert driver.outstanding, "a driver waiting for an answer nobody will give"

    @invariant()
    def terminal_rows_stay_terminal(self) -> None:
        history = self.row.history
        for i, state in enumerate(history):
            if state.terminal:
                assert i == len(history) - 1, f"left a terminal state: {history}"


LifecycleMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLifecycleInvariants = LifecycleMachine.TestCase


def test_replay_after_any_crash_reaches_a_terminal_state_when_outcomes_are_good() -> None:
    """Accepted means durable: whatever the persisted state, a fresh driver with good
    outcomes finishes the certificate."""
    for persisted in (record(), record(position=3, version=1), SENT, MARKED):
        row = Row(persisted)
        journey = lc.Journey.resume(row.record)
        journey, effects = lc.advance(journey, lc.Started(), RULES)
        queue = list(effects)
        for _ in range(50):
            if journey.finished:
                break
            effect = queue.pop(0)
            if isinstance(effect, lc.Moved | lc.Finish):
                continue
            event = _TAKEN if isinstance(effect, lc.Deliver) else _good_answer(row, effect)
            assert not isinstance(event, lc.PositionRefused)
            journey, more = lc.advance(journey, event, RULES)
            queue.extend(more)
        assert journey.finished and row.record.state is State.DELIVERED, persisted.state


# --- two drivers, every interleaving ----------------------------------------------------------


def _interleavings(
    row: Row,
    drivers: tuple[Driver, ...],
    second_started: bool,
    wallet_busy_once: bool,
    found: list[str],
    ends: list[State],
    path: tuple[str, ...],
) -> None:
    """Every order in which the drivers' answers can arrive, the second driver starting
    at any point, and the wallet answering 503 once at any delivery (a retry after the
    backoff, claimed again): each delivery must go out on the claim the row holds at
    that moment (``found`` collects the orders where one did not); ``ends`` collects the
    row's state once nobody waits for anything."""

    def feed(row: Row, driving: Driver, event: lc.LifecycleEvent, step: str) -> None:
        driving.journey, effects = lc.advance(driving.journey, event, RULES)
        for effect in effects:
            if isinstance(effect, lc.Deliver):
                current = row.record
                if (
                    current.state is not State.MARKED_AS_ISSUED
                    or driving.journey.record.version != current.version
                ):
                    found.append(" → ".join((*path, step)))
            if not isinstance(effect, lc.Moved | lc.Finish):
                driving.outstanding.append(effect)

    moves: list[tuple[int | None, bool]] = []
    for number, waiting in enumerate(drivers):
        if waiting.outstanding:
            moves.append((number, False))
            if isinstance(waiting.outstanding[0], lc.Deliver) and not wallet_busy_once:
                moves.append((number, True))
    if not second_started:
        moves.append((None, False))
    if not moves:
        assert all(d.journey.finished for d in drivers), " → ".join(path)
        ends.append(row.record.state)
    for index, busy in moves:
        row_copy = copy.deepcopy(row)
        drivers_copy = copy.deepcopy(drivers)
        if index is None:
            step = "driver 2 starts"
            started = Driver(row_copy.record, 2)
            drivers_copy = (*drivers_copy, started)
            feed(row_copy, started, lc.Started(), step)
        else:
            driving = drivers_copy[index]
            effect = driving.outstanding.pop(0)
            if isinstance(effect, lc.Deliver):
                answer: lc.LifecycleEvent = _BUSY if busy else _TAKEN
            else:
                answer = _good_answer(row_copy, effect)
            shown = f"{answer.status}" if isinstance(answer, lc.WalletAnswered) else type(answer).__name__
            step = f"driver {index + 1}: {type(effect).__name__} answered {shown}"
            feed(row_copy, driving, answer, step)
        _interleavings(
            row_copy,
            drivers_copy,
            second_started or index is None,
            wallet_busy_once or busy,
            found,
            ends,
            (*path, step),
        )


@pytest.mark.parametrize(
    "persisted",
    [SENT, dataclasses.replace(SENT, state=State.ISSUED_IN_REGISTRY), MARKED],
    ids=["sent_to_registry", "issued_in_registry", "marked_as_issued"],
)
def test_two_drivers_in_any_interleaving_never_deliver_on_a_stale_claim(persisted: CertificateRecord) -> None:
    """The case TestLifecycleInvariants once found at random, searched exhaustively: a
    resumed driver and a second one (another instance, or a zombie's successor)."""
    row = Row(persisted)
    first = Driver(row.record, 1)
    first.journey, effects = lc.advance(first.journey, lc.Started(), RULES)
    first.outstanding.extend(effects)
    found: list[str] = []
    ends: list[State] = []
    _interleavings(row, (first,), False, False, found, ends, ())
    assert not found, f"{len(found)} orders deliver on a stale claim, e.g. {found[0]}"
    # Hundreds of orders, and each one ends with the slice delivered.
    assert len(ends) > 100 and set(ends) == {State.DELIVERED}
