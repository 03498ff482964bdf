"""WalletGateway: delivers slices over HTTP; the answer goes straight to the
certificate that asked (its lifecycle decides about retries)."""

from __future__ import annotations

from actors.base import StampActor
from actors.bridge import LoopBridge, Reply
from actors.messages import DeliverSlice
from stamp.domain import CertificateRecord, Delivery, Recipient
from stamp.gateways.wallet_client import DeliveryResult, Slice, WalletClient
from stamp.lifecycle import WalletAnswered


def slice_of(record: CertificateRecord, recipient: Recipient) -> Slice:
    """The wallet's slice of a certificate whose position, R and salts are persisted."""
    assert record.position is not None and record.blinding is not None and record.salts is not None
    return Slice(
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


def _answered(result: DeliveryResult) -> WalletAnswered:
    return WalletAnswered(Delivery(result.outcome.value), result.status, result.reason)


def _failed(reason: str) -> WalletAnswered:
    # The exception's type only: its message could echo what the wallet sent.
    return WalletAnswered(Delivery.TRANSIENT, None, f"delivery failed: {reason.split(':', 1)[0]}")


class WalletGateway(StampActor):
    def __init__(self, client: WalletClient, bridge: LoopBridge) -> None:
        super().__init__()
        self.client = client
        self.bridge = bridge

    def on_receive(self, message: object) -> None:
        if isinstance(message, DeliverSlice):
            self.bridge.run(
                self.client.deliver(message.slice),
                Reply(message.reply_to, _answered, _failed),
            )
