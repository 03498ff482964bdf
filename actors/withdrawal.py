"""WithdrawalActor: gets the pending withdrawals it is told of committed in the registry.

A withdrawal is accepted at any time after intake, but the registry refuses to
withdraw a stream it does not hold: a withdrawal whose certificate's issuance is not
committed yet waits, unleased; the supervisor's lease sweep claims it once it is
(``stamp.withdrawal.course``) and marks it moot if the certificate never will be in
the registry.

The HTTP edge persists a withdrawal (record, signed ``WithdrawnEvent`` transaction and
the certificate's flag, in one DB transaction) and then tells this actor to drive it;
so does the supervisor's lease sweep for the pending withdrawals nobody drives (a
stopped instance's, expired leases, those whose issuance was committed meanwhile),
with "ask the status first": they may have been sent already. The leases are the
sweep's too, like the certificates'. The actor hands the persisted bytes to the
RegistryGateway, which sends, re-sends only on UNKNOWN and polls, exactly as for
issuance; the outcome is written back as a compare-and-set from ``pending`` with its
history event.

"Already withdrawn" from the registry is settled by the gateway reading the stream,
like "already exists" for issuance (``registry_gateway.settle_by_stream``): the
identical bytes re-sent after the registry's status cache expired are verified again
and fail so, although the stream holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog

from actors.backoff import backoff_delay
from actors.base import StampActor
from actors.bridge import Reply, tell_quietly
from actors.deps import ActorDeps
from actors.messages import DriveWithdrawal, SubmitTransaction, WithdrawalsClaimed
from stamp.db import withdrawals
from stamp.domain import CertificateKey, RegistryCommitted, RegistryGaveUp, RegistryRejected
from stamp.withdrawal import Withdrawal, WithdrawalEvent, WithdrawalState

log = structlog.get_logger(__name__)

# --- protocol ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What to record for a withdrawal: its final state and the history event."""

    state: WithdrawalState
    event: WithdrawalEvent
    detail: dict[str, Any]
    reason: str | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class _Settled:
    key: CertificateKey
    generation: int
    outcome: _Outcome
    changed: bool


@dataclass(frozen=True, slots=True)
class _SettleFailed:
    key: CertificateKey
    generation: int
    outcome: _Outcome
    reason: str


@dataclass(frozen=True, slots=True)
class _Retry:
    key: CertificateKey
    generation: int
    outcome: _Outcome


@dataclass(slots=True)
class _Entry:
    withdrawal: Withdrawal
    generation: int
    errors: int = 0
    settling: bool = False


class WithdrawalActor(StampActor):
    def __init__(self, deps: ActorDeps) -> None:
        super().__init__(deps.bridge.loop)
        self.deps = deps
        self.active: dict[CertificateKey, _Entry] = {}
        self.generations = 0

    # --- protocol ---------------------------------------------------------------------------

    def on_receive(self, message: object) -> None:
        match message:
            case DriveWithdrawal(withdrawal=withdrawal, check_first=check_first):
                self._drive(withdrawal, check_first)
            case WithdrawalsClaimed(withdrawals=claimed):
                log.info("withdrawal.claimed", withdrawals=len(claimed))
                for withdrawal in claimed:
                    if withdrawal.key not in self.active:
                        self._drive(withdrawal, check_first=True)
            case RegistryCommitted(key=key, by_another_transaction=by_another):
                self._on_committed(key, by_us=not by_another)
            case RegistryRejected(key=key, message=reason):
                self._on_failed(key, f"rejected by the registry: {reason}", 1)
            case RegistryGaveUp(key=key, reason=reason, attempts=attempts):
                self._on_failed(key, reason, attempts)
            case _Settled():
                self._on_settled(message)
            case _SettleFailed():
                self._on_settle_failed(message)
            case _Retry(key=key, generation=generation, outcome=outcome):
                entry = self.active.get(key)
                if entry is not None and entry.generation == generation:
                    self._settle(key, outcome)

    # --- driving ----------------------------------------------------------------------------

    def _drive(self, withdrawal: Withdrawal, check_first: bool) -> None:
        entry = self.active.get(withdrawal.key)
        if entry is not None and not entry.settling:
            return  # driven already: the gateway answers once
        self.generations += 1
        self.active[withdrawal.key] = _Entry(withdrawal, self.generations)
        self._log(withdrawal).info("withdrawal.driving", check_first=check_first)
        tell_quietly(
            self.deps.registry_gateway,
            SubmitTransaction(
                withdrawal.key, withdrawal.transaction, withdrawal.transaction_id, self.actor_ref, check_first
            ),
        )

    # --- outcomes ---------------------------------------------------------------------------

    def _on_committed(self, key: CertificateKey, *, by_us: bool) -> None:
        entry = self.active.get(key)
        if entry is None:
            return
        detail: dict[str, Any] = {
            "withdrawalId": entry.withdrawal.id,
            "transactionId": entry.withdrawal.transaction_id,
        }
        if not by_us:
            detail["note"] = "the registry holds the certificate as withdrawn by another transaction"
        self._settle(key, _Outcome(WithdrawalState.COMMITTED, WithdrawalEvent.COMMITTED, detail))

    def _on_failed(self, key: CertificateKey, reason: str, attempts: int) -> None:
        entry = self.active.get(key)
        if entry is None:
            return
        self._log(entry.withdrawal).warning("withdrawal.failed", reason=reason, attempts=attempts)
        detail = {"withdrawalId": entry.withdrawal.id, "reason": reason, "attempts": attempts}
        outcome = _Outcome(WithdrawalState.FAILED, WithdrawalEvent.FAILED, detail, reason, attempts)
        self._settle(key, outcome)

    # --- recording --------------------------------------------------------------------------

    def _settle(self, key: CertificateKey, outcome: _Outcome) -> None:
        entry = self.active[key]
        entry.settling = True
        generation = entry.generation
        self.deps.bridge.run(
            withdrawals.record_outcome(
                self.deps.pool,
                entry.withdrawal.id,
                outcome.state,
                outcome.event,
                outcome.detail,
                reason=outcome.reason,
                attempts=outcome.attempts,
            ),
            Reply(
                self.actor_ref,
                partial(_Settled, key, generation, outcome),
                partial(_SettleFailed, key, generation, outcome),
            ),
        )

    def _on_settled(self, message: _Settled) -> None:
        entry = self.active.get(message.key)
        if entry is None or entry.generation != message.generation:
            return
        del self.active[message.key]
        self._log(entry.withdrawal).info(
            "withdrawal.settled",
            state=message.outcome.state.value,
            recorded=message.changed,  # False: another driver settled it first
        )

    def _on_settle_failed(self, message: _SettleFailed) -> None:
        entry = self.active.get(message.key)
        if entry is None or entry.generation != message.generation:
            return
        # The outcome is known, only writing it failed: try again until the database
        # is back (the lease keeps other instances from driving it meanwhile).
        entry.errors += 1
        delay = backoff_delay(self.deps.settings.database_retry, entry.errors)
        self._log(entry.withdrawal).warning(
            "withdrawal.record_failed", reason=message.reason, attempt=entry.errors, delay=round(delay, 3)
        )
        self.deps.bridge.later(delay, self.actor_ref, _Retry(message.key, entry.generation, message.outcome))

    def _log(self, withdrawal: Withdrawal) -> Any:
        return log.bind(
            withdrawal_id=withdrawal.id,
            certificate_id=withdrawal.key.certificate_id,
            registry=withdrawal.key.registry,
        )
