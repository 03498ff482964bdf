"""Domain values shared by the HTTP edge, the actors and the database layer."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class State(enum.StrEnum):
    """Lifecycle states of a certificate (docs/architecture.md)."""

    STORED = "stored"
    SENT_TO_REGISTRY = "sent_to_registry"
    ISSUED_IN_REGISTRY = "issued_in_registry"
    MARKED_AS_ISSUED = "marked_as_issued"
    DELIVERED = "delivered"
    WITHHELD = "withheld"  # issued, then withdrawn before delivery: the slice is not delivered
    REJECTED = "rejected"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({State.DELIVERED, State.WITHHELD, State.REJECTED, State.FAILED})
ACTIVE_STATES = tuple(s for s in State if s not in TERMINAL_STATES)


class Event(enum.StrEnum):
    """Events of a certificate's history, named as in the issuance flow."""

    STORED = "CertificateStored"
    SENT_TO_REGISTRY = "CertificateSentToRegistry"
    ISSUED_IN_REGISTRY = "CertificateIssuedInRegistry"
    FAILED_IN_REGISTRY = "CertificateFailedInRegistry"
    MARKED_AS_ISSUED = "CertificateMarkedAsIssued"
    SENT_TO_WALLET = "CertificateSentToWallet"
    NOT_DELIVERED = "CertificateNotDelivered"  # withdrawn before its slice was delivered
    FAILED = "CertificateFailed"
    RETRIED = "CertificateRetried"
    WALLET_ATTEMPT_FAILED = "CertificateWalletAttemptFailed"
    REDELIVERY_REQUESTED = "CertificateRedeliveryRequested"
    REDELIVERED = "CertificateRedelivered"
    REDELIVERY_FAILED = "CertificateRedeliveryFailed"


class Step(enum.StrEnum):
    """The step of the pipeline a failure belongs to (and an operator retry resumes)."""

    POSITION = "position"
    CRYPTO = "crypto"
    REGISTRY = "registry"
    WALLET = "wallet"


class Delivery(enum.Enum):
    """How a wallet took a slice."""

    DELIVERED = "delivered"
    REJECTED = "rejected"  # permanent for this delivery
    TRANSIENT = "transient"  # retry the same body


CERTIFICATE_TYPES = {1: "consumption", 2: "production"}
"""The one certificate-type table: wire number → name (the request, the view, the
metrics and the registry's ``GranularCertificateType`` all use it)."""
CERTIFICATE_TYPE_NUMBERS = {name: number for number, name in CERTIFICATE_TYPES.items()}


def step_of(state: State, position: int | None = None) -> Step:
    """The pipeline step a certificate in this state is working on (a failure there
    belongs to it, and an operator retry resumes it)."""
    if state is State.STORED:
        return Step.POSITION if position is None else Step.CRYPTO
    if state is State.SENT_TO_REGISTRY:
        return Step.REGISTRY
    return Step.WALLET


def resume_state(failed_step: str | None, has_transaction: bool) -> State:
    """Where an operator retry of a failed certificate resumes: from the step that
    failed, with whatever was persisted before it (position, transaction, R)."""
    if failed_step == Step.WALLET:
        return State.MARKED_AS_ISSUED
    if has_transaction:
        return State.SENT_TO_REGISTRY
    return State.STORED


@dataclass(frozen=True, slots=True)
class CertificateKey:
    registry: str
    certificate_id: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.certificate_id}"


@dataclass(frozen=True, slots=True)
class Recipient:
    id: str
    wallet_endpoint_version: int
    wallet_endpoint_url: str
    wallet_public_key: bytes


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """A certificate row as the actors see it: what is needed to resume any step."""

    key: CertificateKey
    recipient_id: str
    metering_point_id: str
    certificate_type: int
    quantity: int
    start: int
    end: int
    grid_area: str
    clear_attributes: tuple[tuple[str, str], ...]
    hashed_attributes: tuple[tuple[str, str], ...]
    state: State
    version: int
    position: int | None
    attempts: int
    transaction_id: str | None
    transaction: bytes | None = field(default=None, repr=False)
    blinding: bytes | None = field(default=None, repr=False)
    salts: tuple[bytes, ...] | None = field(default=None, repr=False)
    failed_step: str | None = None
    redelivery: bool = False  # delivered, and an operator asked to deliver it again
    withdrawn: bool = False  # a withdrawal is recorded: the slice is never delivered
    traceparent: str | None = None  # the intake's W3C trace context (stamp/tracing.py)


# --- what a registry said about a transaction (issuance and withdrawal alike) ----------------


@dataclass(frozen=True, slots=True)
class RegistryCommitted:
    """The transaction is committed (or the stream shows it is ours). A withdrawal may
    find the stream withdrawn by another transaction: withdrawn all the same."""

    key: CertificateKey
    by_another_transaction: bool = False


@dataclass(frozen=True, slots=True)
class RegistryRejected:
    """The registry FAILED the transaction; ``message`` is its reason."""

    key: CertificateKey
    message: str


@dataclass(frozen=True, slots=True)
class RegistryGaveUp:
    """No answer within the retries or the PENDING budget."""

    key: CertificateKey
    reason: str
    attempts: int


RegistryOutcome = RegistryCommitted | RegistryRejected | RegistryGaveUp
