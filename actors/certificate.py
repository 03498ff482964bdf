"""CertificateActor: drives one certificate through the states of DESIGN.md §1.

The next action is always derived from the persisted record (state, position,
transaction), so a fresh start and a resume after a crash take the same path. Every
state change is a compare-and-set transition; when it turns out stale another writer
owns the certificate and this actor stops. Side effects (registry send, wallet
delivery) only ever happen after the values they carry are persisted.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import structlog

from actors.backoff import backoff_delay
from actors.base import StampActor
from actors.bridge import reply_with, tell_quietly
from actors.deps import ActorDeps
from actors.messages import (
    AllocatePosition,
    AllocatePositionFor,
    BundleBuilt,
    CertificateCrashed,
    CertificateFinished,
    DeliverSlice,
    Drain,
    PositionAllocated,
    PositionNotAllocated,
    RecipientLoaded,
    Ref,
    RegistryGaveUp,
    RegistryIssued,
    RegistryRejected,
    Resume,
    StepFailed,
    SubmitTransaction,
    Transitioned,
    WalletAnswered,
)
from stamp import metrics
from stamp.crypto.bundle import IssueBundle, IssueRequest, build_issue_bundle
from stamp.db import queries
from stamp.domain import CertificateRecord, Event, Recipient, State, Step
from stamp.gateways.wallet_client import DeliveryOutcome, Slice

log = structlog.get_logger(__name__)


class CertificateActor(StampActor):
    def __init__(self, record: CertificateRecord, deps: ActorDeps, supervisor: Ref) -> None:
        super().__init__()
        self.record = record
        self.deps = deps
        self.supervisor = supervisor
        self.recipient: Recipient | None = None
        self.attempts = 0  # failed attempts at the current step
        self.retry: Any = None  # the operation a Resume repeats
        self.resumed = record.state is not State.STORED or record.position is not None
        self.delivery_claimed = False
        self.step_started = time.monotonic()
        self.awaiting = False  # an answer is due that must be recorded before stopping
        self.draining = False
        self.finished: CertificateFinished | None = None  # told to the supervisor on stop
        self.log = log.bind(
            certificate_id=record.key.certificate_id,
            registry=record.key.registry,
            recipient_id=record.recipient_id,
        )

    # --- protocol ---------------------------------------------------------------------

    def on_start(self) -> None:
        self._advance()

    def on_receive(self, message: object) -> None:
        if isinstance(message, (Transitioned, WalletAnswered, StepFailed)):
            self.awaiting = False
        match message:
            case PositionAllocated(position=position, version=version):
                self.record = dataclasses.replace(self.record, position=position, version=version)
                self.log.info("certificate.position_allocated", position=position)
                self._advance()
            case PositionNotAllocated():
                self._give_up("position not allocated: the certificate was changed by another writer")
            case RecipientLoaded(recipient=recipient):
                self._on_recipient(recipient)
            case BundleBuilt(bundle=bundle):
                self._persist_transaction(bundle)
            case Transitioned(state=state, version=version):
                self._on_transitioned(state, version)
            case RegistryIssued():
                self._transition(State.ISSUED_IN_REGISTRY, Event.ISSUED_IN_REGISTRY, {}, queries.ADVANCE)
            case RegistryRejected(message=reason):
                self._transition(
                    State.REJECTED, Event.FAILED_IN_REGISTRY, {"reason": reason}, queries.REJECT, reason
                )
            case RegistryGaveUp(reason=reason, attempts=attempts):
                self._fail(Step.REGISTRY, reason, attempts)
            case WalletAnswered(result=result):
                self._on_wallet(result.outcome, result.status, result.reason)
            case StepFailed(step=step, reason=reason):
                self._on_step_failed(step, reason)
            case Resume():
                operation, self.retry = self.retry, None
                if self.draining:
                    self._leave_for_shutdown()
                else:
                    (operation or self._advance)()
            case Drain():
                # Shutdown: an answer we wait for that must be recorded (a wallet's
                # 2xx, a transition) is awaited; anything else resumes after restart.
                self.draining = True
                if not self.awaiting:
                    self._leave_for_shutdown()

    def on_failure(self, exc_type: object, exc: object, traceback: object) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        self.log.error("certificate.actor_crashed", state=self.record.state.value, reason=reason)
        tell_quietly(self.supervisor, CertificateCrashed(self.record.key, self.record.state, reason))

    # --- the state machine --------------------------------------------------------------

    def _advance(self) -> None:
        record = self.record
        if record.state.terminal:
            self._finish()
        elif self.draining:
            self._leave_for_shutdown()
        elif record.state is State.STORED and record.position is None:
            request = AllocatePosition(record.key, record.version, self.actor_ref)
            tell_quietly(self.supervisor, AllocatePositionFor(record.recipient_id, request))
        elif record.state is State.STORED:
            self._with_recipient()
        elif record.state is State.SENT_TO_REGISTRY:
            assert record.transaction is not None and record.transaction_id is not None
            self.deps.registry_gateway.tell(
                SubmitTransaction(
                    record.key,
                    record.transaction,
                    record.transaction_id,
                    self.actor_ref,
                    check_first=self.resumed,
                )
            )
        elif record.state is State.ISSUED_IN_REGISTRY:
            self._transition(State.MARKED_AS_ISSUED, Event.MARKED_AS_ISSUED, {}, queries.ADVANCE)
        elif record.state is State.MARKED_AS_ISSUED:
            self._with_recipient()

    def _with_recipient(self) -> None:
        recipient = self.recipient or self.deps.recipients.peek(self.record.recipient_id)
        if recipient is not None:
            self._on_recipient(recipient)
            return
        self.deps.bridge.run(
            self.deps.recipients.get(self.record.recipient_id),
            self.actor_ref,
            RecipientLoaded,
            lambda exc: StepFailed("database", f"{type(exc).__name__}: {exc}"),
        )

    def _on_recipient(self, recipient: Recipient | None) -> None:
        if recipient is None:
            self._fail(Step.POSITION, "recipient not found", 1)
            return
        self.recipient = recipient
        if self.record.state is State.STORED:
            self._build_bundle()
        elif self.record.state is State.MARKED_AS_ISSUED:
            self._deliver()

    # --- crypto ---------------------------------------------------------------------------

    def _build_bundle(self) -> None:
        record, recipient = self.record, self.recipient
        assert recipient is not None and record.position is not None
        issuer_pem = self.deps.issuer_pems.get(record.grid_area)
        if issuer_pem is None:
            self._fail(Step.CRYPTO, f"no issuer key configured for grid area {record.grid_area}", 1)
            return
        request = IssueRequest(
            registry=record.key.registry,
            certificate_id=record.key.certificate_id,
            certificate_type=record.certificate_type,
            quantity=record.quantity,
            start=record.start,
            end=record.end,
            grid_area=record.grid_area,
            clear_attributes=record.clear_attributes,
            hashed_attributes=record.hashed_attributes,
            recipient_public_key=recipient.wallet_public_key,
            position=record.position,
            issuer_private_pem=issuer_pem,
            verify_proof=self.deps.settings.verify_own_proofs,
        )
        self.deps.bridge.compute(
            build_issue_bundle,
            request,
            self.actor_ref,
            BundleBuilt,
            lambda exc: StepFailed(Step.CRYPTO, f"{type(exc).__name__}: {exc}"),
        )

    def _persist_transaction(self, bundle: IssueBundle) -> None:
        record = self.record
        self.record = dataclasses.replace(
            record,
            transaction=bundle.transaction,
            transaction_id=bundle.transaction_id,
            blinding=bundle.blinding,
            salts=bundle.salts,
        )
        self.resumed = False  # persisted now, never sent before: no need to ask first
        self._transition(
            State.SENT_TO_REGISTRY,
            Event.SENT_TO_REGISTRY,
            {"transactionId": bundle.transaction_id, "position": record.position},
            queries.RECORD_TRANSACTION,
            bundle.transaction,
            bundle.transaction_id,
            bundle.blinding,
            list(bundle.salts),
        )

    # --- wallet ---------------------------------------------------------------------------

    def _deliver(self) -> None:
        record = self.record
        if not self.delivery_claimed:
            # Resumed or retried: move the version on first so that only one driver
            # of this certificate can be delivering it.
            self._write(
                queries.CLAIM_DELIVERY,
                queries.claim_delivery_args(record.key, record.version, self.deps.lease),
                lambda version: Transitioned(State.MARKED_AS_ISSUED, version),
            )
            return
        recipient = self.recipient
        assert recipient is not None and record.position is not None
        assert record.blinding is not None and record.salts is not None
        slice_ = Slice(
            endpoint=recipient.wallet_endpoint_url,
            public_key=recipient.wallet_public_key,
            position=record.position,
            registry=record.key.registry,
            certificate_id=record.key.certificate_id,
            quantity=record.quantity,
            blinding=record.blinding,
            hashed_attributes=tuple(
                (k, v, salt) for (k, v), salt in zip(record.hashed_attributes, record.salts, strict=True)
            ),
        )
        self.awaiting = True
        self.deps.wallet_gateway.tell(DeliverSlice(slice_, self.actor_ref))

    def _on_wallet(self, outcome: DeliveryOutcome, status: int | None, reason: str) -> None:
        if outcome is DeliveryOutcome.DELIVERED:
            self._transition(State.DELIVERED, Event.SENT_TO_WALLET, {"status": status}, queries.ADVANCE)
        elif outcome is DeliveryOutcome.REJECTED:
            self._fail(Step.WALLET, reason, self.attempts + 1)
        else:
            self.delivery_claimed = False
            self._on_step_failed(Step.WALLET, reason)

    # --- transitions ----------------------------------------------------------------------

    def _transition(self, state: State, event: Event, detail: dict[str, Any], sql: str, *extra: Any) -> None:
        record = self.record
        self._write(
            sql,
            queries.transition_args(
                record.key, record.version, state, event, detail, self.deps.lease, *extra
            ),
            lambda version: Transitioned(state, version),
            retry=lambda: self._transition(state, event, detail, sql, *extra),
        )

    def _write(
        self,
        sql: str,
        args: tuple[Any, ...],
        on_version: Callable[[int | None], object],
        retry: Callable[[], None] | None = None,
    ) -> None:
        """A versioned statement through the group commit; its outcome comes back as
        a message."""

        def on_error(exc: BaseException) -> StepFailed:
            # On the loop: the actor is waiting for exactly this answer.
            self.retry = retry
            return StepFailed("database", f"{type(exc).__name__}: {exc}")

        self.awaiting = True
        key = self.record.key
        done = reply_with(self.actor_ref, lambda row: on_version(row["version"]), on_error)
        self.deps.batcher.submit(sql, args, (key.registry, key.certificate_id), done)

    def _on_transitioned(self, state: State, version: int | None) -> None:
        if version is None:
            self._give_up(f"stale transition to {state}: the certificate was changed by another writer")
            return
        previous = self.record.state
        self.record = dataclasses.replace(self.record, state=state, version=version)
        if state is not previous:
            now = time.monotonic()
            metrics.certificate_transitioned(self.record, previous, state, now - self.step_started)
            self.step_started = now
            self.attempts = 0
            self.log.info("certificate.transitioned", state=state.value, version=version)
        if state is State.MARKED_AS_ISSUED:
            # Entering the state, or re-claiming it, moved the version on: this actor
            # is now the one allowed to deliver.
            self.delivery_claimed = True
        self._advance()

    def _on_step_failed(self, step: str, reason: str) -> None:
        self.attempts += 1
        policy = self.deps.settings.wallet_retry if step == Step.WALLET else self.deps.settings.registry_retry
        if step != "database" and self.attempts >= policy.max_attempts:
            self._fail(Step(step), reason, self.attempts)
            return
        delay = backoff_delay(policy, self.attempts)
        self.log.warning(
            "certificate.step_retry", step=step, reason=reason, attempt=self.attempts, delay=round(delay, 3)
        )
        self.deps.bridge.later(delay, self.actor_ref, Resume())

    def _fail(self, step: Step, reason: str, attempts: int) -> None:
        self.log.warning("certificate.failed", step=step.value, reason=reason, attempts=attempts)
        self.record = dataclasses.replace(self.record, failed_step=step.value)
        self._transition(
            State.FAILED,
            Event.FAILED,
            {"step": step.value, "reason": reason, "attempts": attempts},
            queries.FAIL,
            step.value,
            reason,
            attempts,
        )

    def _give_up(self, reason: str) -> None:
        self.log.warning("certificate.abandoned", reason=reason)
        self._stop_with(None)

    def _leave_for_shutdown(self) -> None:
        self.log.info("certificate.left_for_restart", state=self.record.state.value)
        self._stop_with(None)

    def _finish(self) -> None:
        self._stop_with(self.record.state)

    def _stop_with(self, state: State | None) -> None:
        self.finished = CertificateFinished(self.record.key, state)
        self.stop()

    def on_stop(self) -> None:
        # Told once this actor is out of the registry, not before it stops: the
        # supervisor then frees the slot, and a new actor never overlaps this one.
        if self.finished is not None:
            tell_quietly(self.supervisor, self.finished)
