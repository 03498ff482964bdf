"""CertificateActor: runs the effects of one certificate's lifecycle.

What a certificate goes through, and every rule of it, is ``stamp/lifecycle.py``; this
actor is the thin shell around it: it feeds each event to ``lifecycle.advance``, runs
the effects that come back (a statement through the group commit, a position request
to the recipient's actor, a crypto job, a registry submission, a wallet delivery, a
backoff timer) and feeds their outcomes back as events.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from functools import partial

import asyncpg
import structlog

from actors.backoff import backoff_delay
from actors.base import StampActor
from actors.bridge import Reply, describe, tell_quietly
from actors.deps import ActorDeps
from actors.messages import (
    AllocatePosition,
    CertificateCrashed,
    CertificateFinished,
    DeliverSlice,
    Ref,
    SubmitTransaction,
)
from actors.recipient import RecipientDirectory
from stamp import lifecycle as lc
from stamp import metrics, tracing
from stamp.config import RetryPolicy, Settings
from stamp.crypto.bundle import IssueBundle, IssueRequest, build_issue_bundle
from stamp.db import queries
from stamp.domain import (
    CertificateRecord,
    Recipient,
    RegistryCommitted,
    RegistryGaveUp,
    RegistryRejected,
    State,
    Step,
    slice_of,
)

log = structlog.get_logger(__name__)

# What the actor accepts from others: the lifecycle's events (and a registry's outcome).
_EVENTS = (
    lc.Started,
    lc.PositionAllocated,
    lc.PositionRefused,
    lc.RecipientFound,
    lc.BundleBuilt,
    lc.BuildFailed,
    lc.Written,
    lc.DatabaseFailed,
    RegistryCommitted,
    RegistryRejected,
    RegistryGaveUp,
    lc.WalletAnswered,
    lc.RetryDue,
    lc.Drain,
)


def rules_of(deps: ActorDeps) -> lc.Rules:
    settings = deps.settings
    return lc.Rules(
        registry_max_attempts=settings.registry_retry.max_attempts,
        wallet_max_attempts=settings.wallet_retry.max_attempts,
        crypto_max_attempts=settings.crypto_retry.max_attempts,
        grid_areas=frozenset(deps.issuer_pems),
    )


# The backoff of each step the lifecycle waits at (None: a database statement failed).
_RETRY_POLICIES: dict[Step | None, Callable[[Settings], RetryPolicy]] = {
    None: lambda settings: settings.database_retry,
    Step.POSITION: lambda settings: settings.database_retry,
    Step.CRYPTO: lambda settings: settings.crypto_retry,
    Step.REGISTRY: lambda settings: settings.registry_retry,
    Step.WALLET: lambda settings: settings.wallet_retry,
}


def _built(bundle: IssueBundle) -> lc.BundleBuilt:
    return lc.BundleBuilt(bundle.transaction, bundle.transaction_id, bundle.blinding, bundle.salts)


def _version(expected: int, row: asyncpg.Record) -> lc.Written:
    # The writes right before a delivery also answer the recipient's endpoint.
    endpoint: str | None = row.get("wallet_endpoint_url")
    return lc.Written(expected, row["version"], bool(row["withdrawn"]), endpoint)


class CertificateActor(StampActor):
    def __init__(
        self,
        record: CertificateRecord,
        deps: ActorDeps,
        supervisor: Ref,
        recipients: RecipientDirectory,
        rules: lc.Rules | None = None,
    ) -> None:
        super().__init__(deps.bridge.loop)
        self.journey = lc.Journey.resume(record)
        self.deps = deps
        self.supervisor = supervisor
        self.recipients = recipients
        self.rules = rules or rules_of(deps)
        # Counted as a user of the recipient's actor from its allocation until it stops:
        # the actor then lives while a certificate of its recipient is in flight, and a
        # busy recipient keeps one thread instead of starting one per allocation.
        self.holds_recipient = False
        self.step_started = time.monotonic()
        self.queue: deque[lc.LifecycleEvent] = deque()
        self.finished: CertificateFinished | None = None  # told to the supervisor on stop
        key = record.key
        self.lock_key = (key.registry, key.certificate_id)
        self.log = log.bind(
            certificate_id=key.certificate_id, registry=key.registry, recipient_id=record.content.recipient_id
        )
        self.trace = tracing.CertificateTrace.of(record)  # None: tracing is off

    # --- protocol ---------------------------------------------------------------------

    def on_start(self) -> None:
        self._feed(lc.Started())

    def on_receive(self, message: object) -> None:
        if isinstance(message, _EVENTS):
            self._feed(message)

    def on_failure(self, exc_type: object, exc: object, traceback: object) -> None:
        self._release_recipient()
        record = self.journey.record
        reason = describe(exc) if isinstance(exc, BaseException) else str(exc)
        if self.trace is not None:
            self.trace.close("crashed")
        self.log.error("certificate.actor_crashed", state=record.state.value, reason=reason)
        tell_quietly(self.supervisor, CertificateCrashed(record.key, record.state, reason, record.position))

    # --- the shell ----------------------------------------------------------------------

    def _feed(self, event: lc.LifecycleEvent) -> None:
        """Advance the journey; an effect answered at once (a cached recipient) queues
        its event, so effects always run in the order the lifecycle gave them."""
        self.queue.append(event)
        if len(self.queue) > 1:
            return
        while self.queue:
            before = self.journey
            self.journey, effects = lc.advance(before, self.queue[0], self.rules)
            if self.trace is not None:
                self.trace.advanced(self.queue[0], before, self.journey, effects)
            for effect in effects:
                self._run(effect)
            self.queue.popleft()

    def _run(self, effect: lc.Effect) -> None:
        match effect:
            case lc.Allocate(key=key, recipient_id=recipient_id, version=version):
                self.holds_recipient = True
                self.recipients.allocate(recipient_id, AllocatePosition(key, version, self.actor_ref))
            case lc.LoadRecipient(recipient_id=recipient_id):
                self._load_recipient(recipient_id)
            case lc.Build(record=record, recipient=recipient):
                self._build(record, recipient)
            case lc.Persist(write=write):
                sql, args = queries.lifecycle_write(self.journey.record.key, write, self.deps.lease)
                reply = Reply(self.actor_ref, partial(_version, write.expected), lc.DatabaseFailed)
                self.deps.bridge.write(sql, args, self.lock_key, reply)
            case lc.Submit(
                key=key, transaction=transaction, transaction_id=transaction_id, check_first=check
            ):
                traced = tracing.current_span_context()
                self.deps.registry_gateway.tell(
                    SubmitTransaction(key, transaction, transaction_id, self.actor_ref, check, traced)
                )
            case lc.Deliver(record=record, recipient=recipient, endpoint=endpoint):
                # Built here: a record no slice can be made of crashes this actor
                # (and fails after the supervisor's restarts), it is no wallet error.
                self.deps.wallet_gateway.tell(
                    DeliverSlice(
                        slice_of(record, recipient),
                        endpoint or recipient.wallet_endpoint_url,
                        record,
                        self.actor_ref,
                        tracing.current_span_context(),
                        endpoint_is_current=endpoint is not None,
                    )
                )
            case lc.Wait(step=step, attempt=attempt, reason=reason):
                self._wait(step, attempt, reason)
            case lc.Moved(record=record, previous=previous):
                now = time.monotonic()
                metrics.certificate_transitioned(record, previous, record.state, now - self.step_started)
                self.step_started = now
                self.log.info("certificate.transitioned", state=record.state.value, version=record.version)
            case lc.Finish(state=state, reason=reason):
                self._finish(state, reason)

    def _load_recipient(self, recipient_id: str) -> None:
        cached = self.deps.recipients.peek(recipient_id)
        if cached is not None:
            self._feed(lc.RecipientFound(cached))
            return
        self.deps.bridge.run(
            self.deps.recipients.get(recipient_id),
            Reply(self.actor_ref, lc.RecipientFound, lc.DatabaseFailed),
        )

    def _build(self, record: CertificateRecord, recipient: Recipient) -> None:
        assert record.position is not None
        request = IssueRequest(
            content=record.content,
            recipient_public_key=recipient.wallet_public_key,
            position=record.position,
            issuer_private_pem=self.deps.issuer_pems[record.content.grid_area],
            verify_proof=self.deps.settings.verify_own_proofs,
        )
        self.deps.bridge.compute(build_issue_bundle, request, Reply(self.actor_ref, _built, lc.BuildFailed))

    def _wait(self, step: Step | None, attempt: int, reason: str) -> None:
        settings = self.deps.settings
        policy = _RETRY_POLICIES[step](settings)
        delay = backoff_delay(policy, attempt)
        self.log.warning(
            "certificate.step_retry",
            step=step.value if step else "database",
            reason=reason,
            attempt=attempt,
            delay=round(delay, 3),
        )
        self.deps.bridge.later(delay, self.actor_ref, lc.RetryDue())

    def _release_recipient(self) -> None:
        if self.holds_recipient:
            self.holds_recipient = False
            self.recipients.release(self.journey.record.content.recipient_id)

    def _finish(self, state: State | None, reason: str) -> None:
        self._release_recipient()
        record = self.journey.record
        if state is None:
            self.log.info("certificate.left", state=record.state.value, reason=reason)
        self.finished = CertificateFinished(record.key, state)
        self.stop()

    def on_stop(self) -> None:
        # Told once this actor is out of the registry, not before it stops: the
        # supervisor then frees the slot, and a new actor never overlaps this one.
        if self.trace is not None:
            self.trace.close("stopped")
        if self.finished is not None:
            tell_quietly(self.supervisor, self.finished)
