"""Withdrawal of certificates: the values, the rule of which certificate may be
withdrawn and when its withdrawal goes to the registry (docs/withdrawal.md). Pure: no
I/O, no clock."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from stamp.domain import CertificateKey, State, Step


class WithdrawalState(enum.StrEnum):
    PENDING = "pending"  # persisted; being sent to the registry or awaiting its commit
    COMMITTED = "committed"  # the registry holds the stream as withdrawn
    FAILED = "failed"  # rejected by the registry, or retries exhausted
    MOOT = "moot"  # the certificate never was in the registry: nothing was sent


class WithdrawalEvent(enum.StrEnum):
    """Entries of the certificate's history."""

    WITHDRAWN = "CertificateWithdrawn"
    COMMITTED = "CertificateWithdrawalCommitted"
    FAILED = "CertificateWithdrawalFailed"
    RETRIED = "CertificateWithdrawalRetried"
    MOOT = "CertificateWithdrawalMoot"


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """A withdrawal as the withdrawal actor needs it to (re)send its transaction."""

    id: int
    key: CertificateKey
    transaction_id: str
    withdrawn_at: datetime
    transaction: bytes = field(repr=False)


class Course(enum.Enum):
    """What becomes of a pending withdrawal, given its certificate."""

    SEND = "send"  # the registry committed the issuance: send the WithdrawnEvent
    WAIT = "wait"  # the issuance is not (known to be) committed yet: wait for it
    MOOT = "moot"  # the certificate is not and never will be in the registry


# States in which the registry has committed the certificate's IssuedEvent. A
# certificate ``failed`` at the wallet step is issued too (the registry committed it
# before the delivery failed).
ISSUED_STATES = frozenset({State.ISSUED_IN_REGISTRY, State.MARKED_AS_ISSUED, State.DELIVERED, State.WITHHELD})


def withdrawal_refusal(key: CertificateKey, state: State) -> str | None:
    """Why the certificate cannot be withdrawn; None when it can. Any certificate can
    be withdrawn at any time after intake, except one the registry rejected: it was
    never issued (the caller refuses a second withdrawal)."""
    if state is State.REJECTED:
        return f"certificate {key} was rejected by the registry: there is nothing to withdraw"
    return None


def course(state: State, failed_step: str | None, has_transaction: bool) -> Course:
    """Whether a pending withdrawal is sent now, waits for the issuance, or is moot.

    The registry refuses to withdraw a stream it does not hold, so the WithdrawnEvent
    is sent only once the IssuedEvent is committed. A certificate the registry
    rejected has no stream; one that failed before its transaction was built never
    reaches the registry (an operator retry of a withdrawn certificate is refused
    then). A certificate that failed after its transaction was persisted may be
    issued: the withdrawal waits until an operator retry settles it."""
    if state in ISSUED_STATES or (state is State.FAILED and failed_step == Step.WALLET):
        return Course.SEND
    if state is State.REJECTED or (state is State.FAILED and not has_transaction):
        return Course.MOOT
    return Course.WAIT
