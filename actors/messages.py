"""The actors' protocol: every message is a small frozen dataclass named for what
happened or what is asked (STYLE.md "Messages are data").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pykka

from stamp.crypto.bundle import IssueBundle
from stamp.db.queries import AllocatedPosition
from stamp.domain import CertificateKey, CertificateRecord, Recipient, State
from stamp.gateways.wallet_client import DeliveryResult, Slice

Ref = pykka.ActorRef[Any]

# --- to the Supervisor ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdmitCertificate:
    """A certificate was stored by the HTTP edge; drive it now if there is room."""

    record: CertificateRecord


@dataclass(frozen=True, slots=True)
class AllocatePositionFor:
    recipient_id: str
    request: AllocatePosition


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


@dataclass(frozen=True, slots=True)
class RestartCertificate:
    key: CertificateKey


@dataclass(frozen=True, slots=True)
class RecordReloaded:
    key: CertificateKey
    record: CertificateRecord | None


@dataclass(frozen=True, slots=True)
class RecipientIdle:
    recipient_id: str
    handled: int
    ref: Ref


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
class Drain:
    """Stop admitting work (graceful shutdown)."""


# --- to a RecipientActor ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllocatePosition:
    key: CertificateKey
    version: int
    reply_to: Ref


@dataclass(frozen=True, slots=True)
class PositionsAllocated:
    batch: tuple[AllocatePosition, ...]
    allocated: tuple[AllocatedPosition, ...]


@dataclass(frozen=True, slots=True)
class AllocationFailed:
    batch: tuple[AllocatePosition, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class IdleCheck:
    """Time to see whether the recipient actor has been idle long enough to stop."""


@dataclass(frozen=True, slots=True)
class PassivateApproved:
    pass


@dataclass(frozen=True, slots=True)
class RetryAllocation:
    pass


# --- to a CertificateActor ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PositionAllocated:
    position: int
    version: int


@dataclass(frozen=True, slots=True)
class PositionNotAllocated:
    """The certificate was stale (another writer moved it on)."""


@dataclass(frozen=True, slots=True)
class RecipientLoaded:
    recipient: Recipient | None


@dataclass(frozen=True, slots=True)
class BundleBuilt:
    bundle: IssueBundle


@dataclass(frozen=True, slots=True)
class StepFailed:
    """An attempt at the current step failed in a way that may pass on retry."""

    step: str
    reason: str


@dataclass(frozen=True, slots=True)
class Transitioned:
    state: State
    version: int | None  # None: stale, someone else moved the certificate on


@dataclass(frozen=True, slots=True)
class Resume:
    """Timer: try the current step again."""


@dataclass(frozen=True, slots=True)
class RegistryIssued:
    key: CertificateKey


@dataclass(frozen=True, slots=True)
class RegistryRejected:
    key: CertificateKey
    message: str


@dataclass(frozen=True, slots=True)
class RegistryGaveUp:
    key: CertificateKey
    reason: str
    attempts: int


@dataclass(frozen=True, slots=True)
class WalletAnswered:
    result: DeliveryResult


# --- to the gateways ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitTransaction:
    """Get this persisted transaction committed. check_first: ask its status before
    sending (a resumed certificate may have been sent already)."""

    key: CertificateKey
    transaction: bytes
    transaction_id: str
    reply_to: Ref
    check_first: bool


@dataclass(frozen=True, slots=True)
class DeliverSlice:
    slice: Slice
    reply_to: Ref
