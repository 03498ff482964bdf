"""The rules of withdrawal at any time after intake, as pure functions: which
certificate may be withdrawn, when its withdrawal goes to the registry
(stamp/withdrawal.py), and that a withdrawn certificate's slice is withheld from the
wallet (stamp/lifecycle.py). No actors, no database."""

from __future__ import annotations

import dataclasses

import pytest

from stamp import lifecycle as lc
from stamp.domain import CertificateKey, Delivery, Event, RegistryCommitted, State, Step
from stamp.withdrawal import Course, course, withdrawal_refusal
from tests.test_lifecycle import MARKED, RECIPIENT, SENT, record, run

KEY = CertificateKey("Narnia", "7b7a1f0e-3f2c-4f7e-9d7c-2d1f5c9a0b11")


@pytest.mark.parametrize(
    ("state", "failed_step", "has_transaction", "expected"),
    [
        (State.STORED, None, False, Course.WAIT),
        (State.SENT_TO_REGISTRY, None, True, Course.WAIT),
        (State.ISSUED_IN_REGISTRY, None, True, Course.SEND),
        (State.MARKED_AS_ISSUED, None, True, Course.SEND),
        (State.DELIVERED, None, True, Course.SEND),
        (State.WITHHELD, None, True, Course.SEND),
        (State.FAILED, Step.WALLET.value, True, Course.SEND),
        (State.FAILED, Step.REGISTRY.value, True, Course.WAIT),  # maybe issued: an operator retry settles it
        (State.FAILED, Step.POSITION.value, True, Course.WAIT),
        (State.FAILED, Step.CRYPTO.value, False, Course.MOOT),
        (State.FAILED, Step.POSITION.value, False, Course.MOOT),
        (State.REJECTED, None, True, Course.MOOT),
    ],
)
def test_a_withdrawal_is_sent_only_once_the_issuance_is_committed(
    state: State, failed_step: str | None, has_transaction: bool, expected: Course
) -> None:
    assert course(state, failed_step, has_transaction) is expected


@pytest.mark.parametrize("state", [s for s in State if s is not State.REJECTED])
def test_every_certificate_but_a_rejected_one_can_be_withdrawn(state: State) -> None:
    assert withdrawal_refusal(KEY, state) is None


def test_a_rejected_certificate_cannot_be_withdrawn() -> None:
    refusal = withdrawal_refusal(KEY, State.REJECTED)
    assert refusal is not None and "rejected by the registry" in refusal


@pytest.mark.parametrize(
    ("state", "withdrawn", "withheld"),
    [
        (State.STORED, True, True),
        (State.SENT_TO_REGISTRY, True, True),
        (State.ISSUED_IN_REGISTRY, True, True),
        (State.MARKED_AS_ISSUED, True, True),
        (State.MARKED_AS_ISSUED, False, False),
        (State.DELIVERED, True, False),  # delivered already: the wallet learns from the feed
        (State.FAILED, True, False),
        (State.REJECTED, True, False),
    ],
)
def test_which_certificates_are_withheld_from_the_wallet(
    state: State, withdrawn: bool, withheld: bool
) -> None:
    assert lc.withheld_from_wallet(record(state, withdrawn=withdrawn)) is withheld


def test_a_withdrawn_certificate_resumed_in_marked_as_issued_is_withheld_not_delivered() -> None:
    j, fx = run(lc.Journey.resume(dataclasses.replace(MARKED, withdrawn=True)), lc.Started())
    [persist] = fx
    assert isinstance(persist, lc.Persist)
    write = persist.write
    assert (write.kind, write.state, write.event) == (
        lc.WriteKind.WITHHOLD,
        State.WITHHELD,
        Event.NOT_DELIVERED,
    )
    assert write.detail["failedDeliveryAttempts"] == 0 and "note" not in write.detail
    j, fx = run(j, lc.Written(3, 4, True))
    assert j.record.state is State.WITHHELD and j.finished
    assert not any(isinstance(e, lc.Deliver) for e in fx)
    assert fx[-1] == lc.Finish(State.WITHHELD)


def test_a_withdrawal_seen_in_the_answer_of_the_issuance_write_withholds_the_delivery() -> None:
    j, _ = run(lc.Journey.resume(SENT), lc.Started(), lc.RecipientFound(RECIPIENT))
    j, fx = run(j, RegistryCommitted(KEY))
    [persist] = fx
    assert isinstance(persist, lc.Persist) and persist.write.kind is lc.WriteKind.ISSUE_AND_MARK
    # The issuance write answers the flag set by a withdrawal recorded meanwhile.
    j, fx = run(j, lc.Written(2, 3, True))
    assert j.record.withdrawn
    assert not any(isinstance(e, lc.Deliver) for e in fx)
    withhold = [e for e in fx if isinstance(e, lc.Persist)]
    assert [p.write.kind for p in withhold] == [lc.WriteKind.WITHHOLD]


def test_the_same_answer_without_a_withdrawal_delivers() -> None:
    j, _ = run(lc.Journey.resume(SENT), lc.Started(), lc.RecipientFound(RECIPIENT))
    j, fx = run(j, RegistryCommitted(KEY), lc.Written(2, 3, False))
    assert any(isinstance(e, lc.Deliver) for e in fx)


def test_a_withdrawal_between_wallet_attempts_stops_the_next_one_and_says_one_may_have_landed() -> None:
    j, _ = run(lc.Journey.resume(SENT), lc.Started(), lc.RecipientFound(RECIPIENT))
    j, fx = run(j, RegistryCommitted(KEY), lc.Written(2, 3, False))
    assert any(isinstance(e, lc.Deliver) for e in fx)
    j, fx = run(
        j, lc.WalletAnswered(Delivery.TRANSIENT, None, "timeout"), lc.Written(3, 4, False), lc.RetryDue()
    )
    [claim] = fx[-1:]
    assert isinstance(claim, lc.Persist) and claim.write.kind is lc.WriteKind.CLAIM_DELIVERY
    j, fx = run(j, lc.Written(4, 5, True))  # the claim's answer: withdrawn meanwhile
    assert not any(isinstance(e, lc.Deliver) for e in fx)
    [withhold] = [e for e in fx if isinstance(e, lc.Persist)]
    assert withhold.write.kind is lc.WriteKind.WITHHOLD
    assert withhold.write.detail["failedDeliveryAttempts"] == 1
    assert "may have reached the wallet" in withhold.write.detail["note"]


def test_a_withdrawal_seen_when_a_failed_attempt_is_recorded_withholds_without_waiting() -> None:
    j, _ = run(lc.Journey.resume(SENT), lc.Started(), lc.RecipientFound(RECIPIENT))
    j, fx = run(j, RegistryCommitted(KEY), lc.Written(2, 3, False))
    j, fx = run(j, lc.WalletAnswered(Delivery.TRANSIENT, None, "timeout"))
    [recorded] = fx
    assert isinstance(recorded, lc.Persist) and recorded.write.kind is lc.WriteKind.ATTEMPT_FAILED
    j, fx = run(j, lc.Written(3, 4, True))  # the failure's record answers: withdrawn meanwhile
    assert not any(isinstance(e, (lc.Wait, lc.Deliver)) for e in fx)
    [withhold] = [e for e in fx if isinstance(e, lc.Persist)]
    assert withhold.write.kind is lc.WriteKind.WITHHOLD
    assert withhold.write.detail["failedDeliveryAttempts"] == 1
