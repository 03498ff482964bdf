"""WalletGateway: delivers slices over HTTP and records a 2xx at once; the answer goes
straight to the certificate that asked (its lifecycle decides about retries).

Delivery and its record share one trip to the event loop: nothing happens between a
wallet's 2xx and the statement that records it, and a 2xx recorded on the loop is
recorded even while the asking actor is shutting down."""

from __future__ import annotations

from actors.base import StampActor
from actors.bridge import LoopBridge, Reply, describe
from actors.messages import DeliverSlice
from stamp import tracing
from stamp.config import Settings
from stamp.db import queries
from stamp.domain import Delivery
from stamp.gateways.wallet_client import WalletClient
from stamp.lifecycle import DatabaseFailed, WalletAnswered, Written, delivered_write


def _failed(reason: str) -> WalletAnswered:
    # The exception's type only: its message could echo what the wallet sent.
    return WalletAnswered(Delivery.TRANSIENT, None, f"delivery failed: {reason.split(':', 1)[0]}")


def _identity(answer: WalletAnswered) -> WalletAnswered:
    return answer


class WalletGateway(StampActor):
    def __init__(self, client: WalletClient, bridge: LoopBridge, settings: Settings) -> None:
        super().__init__(bridge.loop)
        self.client = client
        self.bridge = bridge
        self.lease = queries.Lease(settings.instance_id, settings.lease_seconds)

    def on_receive(self, message: object) -> None:
        if isinstance(message, DeliverSlice):
            self.bridge.run(self._deliver(message), Reply(message.reply_to, _identity, _failed))

    async def _deliver(self, message: DeliverSlice) -> WalletAnswered:
        if not tracing.ENABLED:
            return await self._deliver_now(message)
        with tracing.child_of(message.trace):
            return await self._deliver_now(message)

    async def _deliver_now(self, message: DeliverSlice) -> WalletAnswered:
        record = message.record
        recipient_id = record.content.recipient_id
        assert self.bridge.batcher is not None
        url = message.endpoint
        if not message.endpoint_is_current:
            # The endpoint is read when the slice is sent, not taken from a cache: a
            # recipient moved (PATCH, by any Stamp process) gets the next attempt at
            # its new address. (A delivery right after its claim or mark got the
            # endpoint from that statement: stamp/lifecycle.py.)
            try:
                endpoint = await self.bridge.batcher.fetch(
                    queries.SELECT_RECIPIENT_ENDPOINT, (recipient_id,), ("recipient", recipient_id)
                )
            except Exception as exc:
                return _failed(f"recipient endpoint not read: {describe(exc)}")
            url = endpoint["wallet_endpoint_url"] or message.endpoint
        result = await self.client.deliver(url, message.slice)
        outcome = result.outcome
        if outcome is not Delivery.DELIVERED:
            return WalletAnswered(outcome, result.status, result.reason, endpoint=url)
        key = record.key
        write = delivered_write(record, result.status, url)
        sql, args = queries.lifecycle_write(key, write, self.lease)
        recorded: Written | DatabaseFailed
        try:
            row = await self.bridge.batcher.fetch(sql, args, (key.registry, key.certificate_id))
        except Exception as exc:  # the 2xx stands; recording it is retried by the certificate
            recorded = DatabaseFailed(describe(exc))
        else:
            recorded = Written(record.version, row["version"], bool(row["withdrawn"]))
        return WalletAnswered(outcome, result.status, result.reason, recorded, url)
