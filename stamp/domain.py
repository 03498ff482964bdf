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
CERTIFICATE_TYPES_TEXT = " or ".join(f"{number} ({name})" for number, name in CERTIFICATE_TYPES.items())
"""``1 (consumption) or 2 (production)``, for messages."""


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


Attributes = tuple[tuple[str, str], ...]
"""(key, value) pairs in the order the request gave them (the transaction keeps it)."""


@dataclass(frozen=True, slots=True)
class CertificateContent:
    """What a certificate says, as its issuing body posted it: the one shape of it
    that the request parsing, the stored row, the record, the crypto request and the
    wallet's slice share. ``key.certificate_id`` is the canonical lower-case UUID text
    (the range-proof label and the attribute hashes use it verbatim)."""

    key: CertificateKey
    recipient_id: str
    metering_point_id: str
    certificate_type: int  # a number of CERTIFICATE_TYPES
    quantity: int  # Wh
    start: int  # the period, Unix seconds, [start, end)
    end: int
    grid_area: str
    clear_attributes: Attributes = ()
    # Hashed on the registry because they are private to the owner.
    hashed_attributes: Attributes = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """A certificate row as the actors see it: its content and what is needed to
    resume any step."""

    content: CertificateContent
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

    @property
    def key(self) -> CertificateKey:
        return self.content.key


@dataclass(frozen=True, slots=True)
class Slice:
    """What a recipient's wallet receives for one certificate (docs/wallet.md,
    "Receive slice"; ``gateways.wallet_client.slice_body`` writes it): the content the
    wallet checks against the registry, and the secrets that open it. R and the salts
    are secrets."""

    public_key: bytes  # the recipient's extended public key, not the derived child
    position: int
    key: CertificateKey
    quantity: int
    blinding: bytes = field(repr=False)
    hashed_attributes: tuple[tuple[str, str, bytes], ...] = field(repr=False)  # key, value, salt


def slice_of(record: CertificateRecord, recipient: Recipient) -> Slice:
    """The wallet's slice of a certificate whose position, R and salts are persisted."""
    assert record.position is not None and record.blinding is not None and record.salts is not None
    content = record.content
    return Slice(
        public_key=recipient.wallet_public_key,
        position=record.position,
        key=content.key,
        quantity=content.quantity,
        blinding=record.blinding,
        hashed_attributes=tuple(
            (k, v, salt) for (k, v), salt in zip(content.hashed_attributes, record.salts, strict=True)
        ),
    )


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
