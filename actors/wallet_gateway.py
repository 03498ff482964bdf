"""WalletGateway: delivers slices over HTTP; the answer goes straight to the
certificate that asked (its state machine decides about retries)."""

from __future__ import annotations

from collections import Counter

from actors.base import StampActor
from actors.bridge import LoopBridge
from actors.messages import DeliverSlice, WalletAnswered
from stamp.gateways.wallet_client import DeliveryOutcome, DeliveryResult, WalletClient


class WalletGateway(StampActor):
    def __init__(self, client: WalletClient, bridge: LoopBridge) -> None:
        super().__init__()
        self.client = client
        self.bridge = bridge
        self.answers: Counter[str] = Counter()

    def on_receive(self, message: object) -> None:
        if isinstance(message, DeliverSlice):
            self.bridge.run(
                self.client.deliver(message.slice),
                message.reply_to,
                WalletAnswered,
                lambda exc: WalletAnswered(
                    DeliveryResult(DeliveryOutcome.TRANSIENT, None, f"delivery failed: {type(exc).__name__}")
                ),
            )
