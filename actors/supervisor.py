"""Supervisor: admits certificates and owns the actor tree.

At most ``max_in_flight`` certificate actors live at once; the rest wait as rows in
PostgreSQL (the database is the backlog) and are claimed, oldest first, as capacity
frees (while saturated, some slots at a time: ``CLAIM_BATCH_FRACTION``). The bound is
kept with slots (``LiveCounts.take_slots``): whoever admits a certificate takes its
slot first (intake, or this actor's backlog sweep), and this actor releases it when
the certificate actor has stopped. On start it resumes every
certificate this instance was driving before a crash or restart.

One lease sweep serves issuance and withdrawal alike: every third of a lease it
renews the leases of the certificates and the withdrawals this instance drives, so
that another instance takes over only what nobody drives, and it claims the pending
withdrawals nobody drives for the WithdrawalActor (at start, then with the renewal,
or every tick while a withdrawal waits for its issuance).
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from functools import partial
from typing import Any

import pykka
import structlog

from actors.backoff import backoff_delay
from actors.base import StampActor
from actors.bridge import Reply, tell_quietly
from actors.certificate import CertificateActor, rules_of
from actors.deps import ActorDeps
from actors.messages import (
    AdmitCertificate,
    BacklogClaimed,
    BacklogClaimFailed,
    CertificateCrashed,
    CertificateFinished,
    Drain,
    LeasesSwept,
    LeaseSweepFailed,
    RecordReloaded,
    Ref,
    RestartCertificate,
    SupervisorTick,
    WithdrawalsClaimed,
)
from actors.recipient import RecipientDirectory
from stamp import lifecycle, metrics
from stamp.db import queries, withdrawals
from stamp.domain import CertificateKey, CertificateRecord, Step, step_of

log = structlog.get_logger(__name__)
TICK_SECONDS = 1.0
MAX_CRASHES = 3
"""An actor that crashes this often on one certificate marks it failed (a re-delivery:
ends it failed, the certificate staying delivered) instead of looping: the crash is a
bug or bad data that a restart does not cure."""
MAX_TRACKED_CRASHES = 1024
"""Crash counts kept at once. An entry lives only while its certificate holds a slot,
so there are at most ``max_in_flight``; the cap bounds the map whatever happens."""
CLAIM_BATCH_FRACTION = 16
"""While saturated, a finished certificate's slot is refilled from the backlog only once
1/16 of ``max_in_flight`` slots are free (or at the next tick). A claim reads past every
certificate in flight (they are the oldest unfinished rows, leased), so its cost hardly
depends on how many it claims: at 512 in flight, claiming slot by slot made 13 claims a
second reading ~1,000 index entries and ~470 rows each (docs/database.md); with the
others in flight still queued for the crypto workers, a slot left empty a moment longer
delays nothing."""
WITHDRAWAL_CLAIM_LIMIT = 1000
"""Pending withdrawals claimed per sweep; more are claimed by the next one, a tick later."""


async def _sweep_leases(deps: ActorDeps, renew: bool, withdrawing: bool, claim: bool) -> LeasesSwept:
    """Renew this instance's leases (certificates, and withdrawals while the withdrawal
    actor lives), settle the withdrawals that became moot and claim the pending ones
    nobody drives."""
    lease = deps.lease
    if renew:
        await queries.renew_leases(deps.pool, owner=lease.owner, lease_seconds=lease.seconds)
        if withdrawing:
            await withdrawals.renew_leases(deps.pool, lease=lease)
    if not claim:
        return LeasesSwept((), again=False)
    moot = await withdrawals.settle_moot(deps.pool)
    if moot:
        log.info("withdrawal.moot", withdrawals=moot)
    claimed = await withdrawals.claim_pending(deps.pool, lease=lease, limit=WITHDRAWAL_CLAIM_LIMIT)
    again = len(claimed) >= WITHDRAWAL_CLAIM_LIMIT or await withdrawals.count_waiting(deps.pool) > 0
    return LeasesSwept(tuple(claimed), again)


class Supervisor(StampActor):
    def __init__(self, deps: ActorDeps, withdrawal_actor: Ref | None = None) -> None:
        super().__init__(deps.bridge.loop)
        self.deps = deps
        self.withdrawal_actor = withdrawal_actor
        self.settings = deps.settings
        self.certificates: dict[CertificateKey, Ref] = {}
        # Certificate actors reach their recipient's actor directly, not through here.
        self.recipients = RecipientDirectory.of(deps)
        self.rules = rules_of(deps)
        self.crashes: OrderedDict[CertificateKey, int] = OrderedDict()
        self.claiming = False
        self.claim_slots = 0  # slots taken for the backlog claim under way
        self.claim_batch = max(1, self.settings.max_in_flight // CLAIM_BATCH_FRACTION)
        self.backlog_waiting = True  # unknown at start: look
        self.draining = False
        self.last_renewal = time.monotonic()
        self.sweeping = False
        self.sweep_again = False

    def on_start(self) -> None:
        self._pump()
        self._sweep_leases(renew=False)
        self.deps.bridge.later(TICK_SECONDS, self.actor_ref, SupervisorTick())

    def on_stop(self) -> None:
        for ref in self.certificates.values():
            with contextlib.suppress(pykka.ActorDeadError):
                ref.stop(block=False)
        self.recipients.stop_all()

    def on_receive(self, message: object) -> Any:
        match message:
            case AdmitCertificate(record=record):
                # Intake (or an operator retry) took a slot for it and leased the row
                # to this instance.
                if not self.draining and record.key not in self.certificates:
                    self._spawn(record)
                else:
                    self.deps.live.release_slots()
            case CertificateFinished(key=key, state=state):
                self._forget(key)
                if state is None:
                    # Abandoned (crash, stale, shutdown): let whoever is next pick it up.
                    self.deps.bridge.spawn(
                        queries.release_lease(self.deps.pool, key, self.settings.instance_id), "release_lease"
                    )
                    self.backlog_waiting = True
                if self.backlog_waiting or self.deps.live.backlog_waiting:
                    self._pump(at_least=self.claim_batch)
            case CertificateCrashed(key=key, state=state, position=position, reason=reason):
                self._on_crash(key, step_of(state, position), reason)
            case RestartCertificate(key=key):
                self.deps.bridge.run(
                    queries.get_record(self.deps.pool, key),
                    Reply(
                        self.actor_ref, partial(RecordReloaded, key), lambda _reason: RestartCertificate(key)
                    ),
                )
            case RecordReloaded(key=key, record=record):
                driven = record is not None and (not record.state.terminal or record.redelivery)
                if record is not None and driven and not self.draining:
                    self._spawn(record)
                else:
                    self._forget(key)
            case BacklogClaimed(records=records, limit=limit):
                self.claiming = False
                self.backlog_waiting = len(records) >= limit
                spawned = 0
                for record in records:
                    if record.key not in self.certificates and not self.draining:
                        self._spawn(record)
                        spawned += 1
                self.deps.live.release_slots(self.claim_slots - spawned)
                self.claim_slots = 0
                metrics.BACKLOG_CLAIMS.inc()
                metrics.BACKLOG_CLAIMED.inc(spawned)
            case BacklogClaimFailed(reason=reason):
                self.claiming = False
                self.deps.live.release_slots(self.claim_slots)
                self.claim_slots = 0
                log.warning("supervisor.claim_failed", reason=reason)
            case SupervisorTick():
                self._on_tick()
            case LeasesSwept(withdrawals=claimed, again=again):
                self.sweeping = False
                self.sweep_again = again
                if claimed and self.withdrawal_actor is not None:
                    tell_quietly(self.withdrawal_actor, WithdrawalsClaimed(claimed))
            case LeaseSweepFailed(reason=reason):
                self.sweeping = False
                log.warning("supervisor.lease_sweep_failed", reason=reason)
            case Drain():
                self.draining = True
                for ref in self.certificates.values():
                    tell_quietly(ref, lifecycle.Drain())
        self.deps.live.certificate_actors = len(self.certificates)
        return None

    def _forget(self, key: CertificateKey) -> None:
        """The certificate's actor is gone for good: its slot and crash count go too."""
        self.crashes.pop(key, None)
        if self.certificates.pop(key, None) is not None:
            self.deps.live.release_slots()

    def _on_crash(self, key: CertificateKey, step: Step, reason: str) -> None:
        crashes = self.crashes.pop(key, 0) + 1
        self.crashes[key] = crashes  # the most recent last, for the cap below
        while len(self.crashes) > MAX_TRACKED_CRASHES:
            self.crashes.popitem(last=False)
        if crashes >= MAX_CRASHES:
            self._forget(key)
            log.error(
                "supervisor.certificate_crash_loop",
                certificate_id=key.certificate_id,
                registry=key.registry,
                crashes=crashes,
                reason=reason,
            )
            self.deps.bridge.spawn(
                queries.fail_after_crashes(
                    self.deps.pool, key, step, f"internal error ({crashes} crashes): {reason}", crashes
                ),
                "fail_after_crashes",
            )
            self._pump()
            return
        # The slot stays taken (and the lease held) until the restart: nobody else
        # picks the certificate up meanwhile.
        delay = backoff_delay(self.settings.restart_retry, crashes)
        log.warning(
            "supervisor.certificate_restarting",
            certificate_id=key.certificate_id,
            registry=key.registry,
            crashes=crashes,
            delay=round(delay, 3),
        )
        self.deps.bridge.later(delay, self.actor_ref, RestartCertificate(key))

    def _spawn(self, record: CertificateRecord) -> None:
        self.certificates[record.key] = CertificateActor.start(
            record, self.deps, self.actor_ref, self.recipients, self.rules
        )

    def _pump(self, at_least: int = 1) -> None:
        if self.claiming or self.draining:
            return
        limit = self.deps.live.take_slots(self.settings.max_in_flight, 500, at_least)
        if limit == 0:
            return
        self.claiming = True
        self.claim_slots = limit
        self.deps.live.backlog_waiting = False
        self.deps.bridge.run(
            queries.claim_backlog(
                self.deps.pool,
                owner=self.settings.instance_id,
                lease_seconds=self.settings.lease_seconds,
                limit=limit,
            ),
            Reply(self.actor_ref, lambda records: BacklogClaimed(tuple(records), limit), BacklogClaimFailed),
        )

    def _on_tick(self) -> None:
        now = time.monotonic()
        renew = now - self.last_renewal >= self.settings.lease_seconds / 3
        if renew or self.sweep_again:
            self._sweep_leases(renew)
        # Also catches certificates whose owner died (expired leases) and rows stored
        # while every slot was taken.
        self._pump()
        self.deps.bridge.later(TICK_SECONDS, self.actor_ref, SupervisorTick())

    def _sweep_leases(self, renew: bool) -> None:
        if self.sweeping:
            return
        if renew:
            self.last_renewal = time.monotonic()
        self.sweeping = True
        # A withdrawal waiting for its issuance goes out soon after the registry
        # commits it: while any wait, the claim runs every tick. Claims stop with
        # intake (draining); leases are renewed until the end.
        # A dead withdrawal actor's withdrawals are not renewed: their leases expire and
        # another instance takes them over.
        withdrawing = self.withdrawal_actor is not None and self.withdrawal_actor.is_alive()
        claim = withdrawing and not self.draining
        self.deps.bridge.run(
            _sweep_leases(self.deps, renew, withdrawing, claim),
            Reply(self.actor_ref, _identity, LeaseSweepFailed),
        )


def _identity(swept: LeasesSwept) -> LeasesSwept:
    return swept
