"""Withdrawal of issued certificates: the values and the rule of which certificate may
be withdrawn (docs/withdrawal.md). Pure: no I/O, no clock."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from stamp.domain import CertificateKey, State, Step


class WithdrawalState(enum.StrEnum):
    PENDING = "pending"  # persisted; being sent to the registry or awaiting its commit
    COMMITTED = "committed"  # the registry holds the stream as withdrawn
    FAILED = "failed"  # rejected by the registry, or retries exhausted


class WithdrawalEvent(enum.StrEnum):
    """Entries of the certificate's history."""

    WITHDRAWN = "CertificateWithdrawn"
    COMMITTED = "CertificateWithdrawalCommitted"
    FAILED = "CertificateWithdrawalFailed"
    RETRIED = "CertificateWithdrawalRetried"


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """A withdrawal as the withdrawal actor needs it to (re)send its transaction."""

    id: int
    key: CertificateKey
    transaction_id: str
    withdrawn_at: datetime
    transaction: bytes = field(repr=False)


def withdrawal_refusal(key: CertificateKey, state: State, failed_step: str | None) -> str | None:
    """Why the certificate cannot be withdrawn now; None when it can.

    Only a certificate that is issued in the registry *and* at rest can be withdrawn:
    ``delivered``, or ``failed`` at the wallet step (the registry committed it, the
    wallet did not take the slice). Before the registry committed there is no stream
    to withdraw; while the slice is on its way to the wallet (``issued_in_registry``,
    ``marked_as_issued``) a withdrawal could overtake the delivery, and the wallet
    would then hold a certificate it was told is withdrawn."""
    if state is State.DELIVERED or (state is State.FAILED and failed_step == Step.WALLET):
        return None
    if state in (State.ISSUED_IN_REGISTRY, State.MARKED_AS_ISSUED):
        return (
            f"certificate {key} is issued in the registry and its slice is being delivered to the "
            "recipient's wallet; withdraw it once it is delivered"
        )
    if state is State.REJECTED:
        return f"certificate {key} was rejected by the registry: there is nothing to withdraw"
    if state is State.FAILED:
        return (
            f"certificate {key} failed at the {failed_step} step and is not known to be issued in the "
            "registry; retry it first"
        )
    return (
        f"certificate {key} is not yet issued in the registry (state {state.value}); "
        "it cannot be withdrawn yet"
    )
