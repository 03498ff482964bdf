"""The actors' protocol between each other: every message is a small frozen dataclass
named for what happened or what is asked, carrying domain types only. What a
certificate actor is told about its own certificate is the lifecycle's events
(``stamp/lifecycle.py``); what a registry says is in ``stamp/domain.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pykka

from stamp.domain import CertificateKey, CertificateRecord, Slice, State
from stamp.withdrawal import Withdrawal

Ref = pykka.ActorRef[Any]

# --- to the Supervisor ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdmitCertificate:
    """A certificate was stored by the HTTP edge; drive it now if there is room."""

    record: CertificateRecord


@dataclass(frozen=True, slots=True)
class CertificateFinished:
    key: CertificateKey
    state: State | None  # None: the actor gave the certificate up (stale, shutting down)


@dataclass(frozen=True, slots=True)
class CertificateCrashed:
    """A certificate actor died of an unexpected exception."""

    key: CertificateKey
    state: State
    reason: str
    position: int | None = None  # with the state, the step the crash belongs to


@dataclass(frozen=True, slots=True)
class RestartCertificate:
    key: CertificateKey


@dataclass(frozen=True, slots=True)
class RecordReloaded:
    key: CertificateKey
    record: CertificateRecord | None


@dataclass(frozen=True, slots=True)
class BacklogClaimed:
    records: tuple[CertificateRecord, ...]
    limit: int


@dataclass(frozen=True, slots=True)
class BacklogClaimFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class SupervisorTick:
    pass


@dataclass(frozen=True, slots=True)
class LeasesSwept:
    """The lease sweep renewed this instance's leases (if due) and claimed the pending
    withdrawals nobody drives; ``again``: sweep again at the next tick (a withdrawal
    waits for its issuance, or there was more to claim)."""

    withdrawals: tuple[Withdrawal, ...]
    again: bool


@dataclass(frozen=True, slots=True)
class LeaseSweepFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Drain:
    """Stop admitting work (graceful shutdown)."""


# --- to the WithdrawalActor --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DriveWithdrawal:
    """A withdrawal was persisted (or re-driven) and leased to this instance.
    check_first: ask the registry for its status before sending."""

    withdrawal: Withdrawal
    check_first: bool


@dataclass(frozen=True, slots=True)
class WithdrawalsClaimed:
    """The lease sweep leased these pending withdrawals to this instance: drive those
    not driven yet, asking their status first (they may have been sent already)."""

    withdrawals: tuple[Withdrawal, ...]


# --- to a RecipientActor ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllocatePosition:
    """Answered with ``lifecycle.PositionAllocated`` or ``lifecycle.PositionRefused``."""

    key: CertificateKey
    version: int
    reply_to: Ref


@dataclass(frozen=True, slots=True)
class PositionsAllocated:
    batch: tuple[AllocatePosition, ...]
    allocated: tuple[tuple[CertificateKey, int, int], ...]  # key, position, version


@dataclass(frozen=True, slots=True)
class AllocationFailed:
    batch: tuple[AllocatePosition, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class RetryAllocation:
    pass


# --- to the gateways ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitTransaction:
    """Get this persisted transaction committed; answered with a ``RegistryOutcome``.
    check_first: ask its status before sending (it may have been sent already)."""

    key: CertificateKey
    transaction: bytes
    transaction_id: str
    reply_to: Ref
    check_first: bool
    trace: Any = None  # the certificate's step span (an OTel SpanContext), linked by the batch


@dataclass(frozen=True, slots=True)
class DeliverSlice:
    """Deliver this slice of ``record`` to the recipient's endpoint as it is now
    and, on a 2xx, record the delivery at once (the lifecycle's ``delivered_write`` of
    ``record``); answered with ``lifecycle.WalletAnswered``.

    ``endpoint_is_current``: ``endpoint`` was read by the write just before (the
    lifecycle's ``Deliver.endpoint``) and is sent to as it is; otherwise the gateway
    reads the endpoint first, and ``endpoint`` (the one the certificate knew) is used
    only for a recipient the database no longer has."""

    slice: Slice
    endpoint: str
    record: CertificateRecord
    reply_to: Ref
    trace: Any = None  # the certificate's deliver span (an OTel SpanContext): the call's parent
    endpoint_is_current: bool = False
