"""HTTP client of the recipients' wallets (wallet.md "Receive slice").

One aiohttp session for the process: connection reuse and a per-host limit, so one
slow wallet cannot take every connection.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field

import aiohttp
import orjson

from stamp import metrics


class DeliveryOutcome(enum.Enum):
    DELIVERED = "delivered"
    REJECTED = "rejected"  # 400/404: permanent for this delivery
    TRANSIENT = "transient"  # 5xx, timeouts, connection errors: retry the same body


@dataclass(frozen=True, slots=True)
class Slice:
    """What the wallet receives for one certificate. R and salts are secrets."""

    endpoint: str
    public_key: bytes
    position: int
    registry: str
    certificate_id: str
    quantity: int
    blinding: bytes = field(repr=False)
    hashed_attributes: tuple[tuple[str, str, bytes], ...] = field(repr=False)

    def body(self) -> bytes:
        b64 = base64.b64encode
        return orjson.dumps(
            {
                "publicKey": b64(self.public_key).decode(),
                "position": self.position,
                "certificateId": {"registry": self.registry, "streamId": self.certificate_id},
                "quantity": self.quantity,
                "randomR": b64(self.blinding).decode(),
                "hashedAttributes": [
                    {"key": k, "value": v, "salt": b64(salt).decode()}
                    for k, v, salt in self.hashed_attributes
                ],
            }
        )


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    outcome: DeliveryOutcome
    status: int | None
    reason: str


class WalletClient:
    def __init__(self, *, timeout: float, limit_per_host: int) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._limit_per_host)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, slice_: Slice) -> DeliveryResult:
        session = self._get_session()
        try:
            async with session.post(
                slice_.endpoint, data=slice_.body(), headers={"Content-Type": "application/json"}
            ) as response:
                text = (await response.text(errors="replace"))[:300]
                status = response.status
        except TimeoutError:
            metrics.wallet_answer("timeout")
            return DeliveryResult(DeliveryOutcome.TRANSIENT, None, "wallet did not answer in time")
        except aiohttp.ClientError as exc:
            metrics.wallet_answer("error")
            return DeliveryResult(
                DeliveryOutcome.TRANSIENT, None, f"wallet unreachable: {type(exc).__name__}"
            )
        metrics.wallet_answer(str(status))
        if 200 <= status < 300:
            return DeliveryResult(DeliveryOutcome.DELIVERED, status, "")
        if status in (400, 404, 410, 422):
            return DeliveryResult(DeliveryOutcome.REJECTED, status, f"wallet answered {status}: {text}")
        return DeliveryResult(DeliveryOutcome.TRANSIENT, status, f"wallet answered {status}")
