"""HTTP client of the recipients' wallets (docs/wallet.md, "Receive slice").

One aiohttp session for the process: connection reuse and a per-host limit, so one
slow wallet cannot take every connection.

A wallet endpoint is a URL from outside, and the answer comes from whatever listens
there, so the client trusts neither: it never follows a redirect (the slice holds R
and the salts, and a 302 would turn the POST into a GET that "succeeds"), reads at
most ``ANSWER_READ_LIMIT`` bytes of any answer and keeps none of them (a failure
reason is the status and a fixed text: never an internal service's answer read back
through Stamp), and connects only to hosts the allow-list admits
(``stamp.gateways.endpoint_allow``).
"""

from __future__ import annotations

import base64
import socket
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult

from stamp import metrics
from stamp.domain import Delivery, Slice
from stamp.gateways.endpoint_allow import (
    NOT_ALLOWED,
    EndpointAllowList,
    EndpointNotAllowed,
    endpoint_host,
    is_ip_literal,
)

ANSWER_READ_LIMIT = 512
"""Bytes of a wallet's answer read at most (then the connection is dropped): enough
to reuse the connection after the usual ``{}``, never a memory cost."""


def slice_body(slice_: Slice) -> bytes:
    """The receive-slice request body (camelCase, byte arrays as standard Base64)."""
    b64 = base64.b64encode
    return orjson.dumps(
        {
            "publicKey": b64(slice_.public_key).decode(),
            "position": slice_.position,
            "certificateId": {"registry": slice_.key.registry, "streamId": slice_.key.certificate_id},
            "quantity": slice_.quantity,
            "randomR": b64(slice_.blinding).decode(),
            "hashedAttributes": [
                {"key": k, "value": v, "salt": b64(salt).decode()} for k, v, salt in slice_.hashed_attributes
            ],
        }
    )


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    outcome: Delivery
    status: int | None
    reason: str


class AllowListResolver(AbstractResolver):
    """Resolves as usual, then refuses a name whose addresses the allow-list does not
    all admit: the check applies to the very addresses the connection is made to, so
    a name re-pointed after the recipient was created is caught."""

    def __init__(self, allow: EndpointAllowList, inner: AbstractResolver) -> None:
        self._allow = allow
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow.allows_name(host) and not self._allow.allows_addresses(r["host"] for r in results):
            raise EndpointNotAllowed
        return results

    async def close(self) -> None:
        await self._inner.close()


class WalletClient:
    def __init__(
        self, *, timeout: float, limit_per_host: int, allow: EndpointAllowList | None = None
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit_per_host = limit_per_host
        self._allow = allow
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = None
            if self._allow is not None:
                resolver = AllowListResolver(self._allow, aiohttp.DefaultResolver())
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._limit_per_host, resolver=resolver)
            # auto_decompress off: the answer is never used, so nothing is ever inflated.
            # No cookie jar: a wallet's Set-Cookie would otherwise be kept and sent back
            # with later slices to that host (every wallet sharing it), and each request
            # would pay for filtering the jar.
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _literal_refused(self, url: str) -> bool:
        """An address in the URL skips the resolver, so it is checked here."""
        if self._allow is None:
            return False
        host = endpoint_host(url)
        if host is None:
            return True
        return is_ip_literal(host) and not self._allow.allows_address(host)

    async def deliver(self, endpoint: str, slice_: Slice) -> DeliveryResult:
        """POST the slice to ``endpoint``; how the wallet took it (Delivery.REJECTED:
        3xx, 400/404/410/422, endpoint not allowed; TRANSIENT: 5xx, timeouts,
        connection errors)."""
        if self._literal_refused(endpoint):
            metrics.wallet_answer("not_allowed")
            return DeliveryResult(Delivery.REJECTED, None, NOT_ALLOWED)
        session = self._get_session()
        try:
            async with session.post(
                endpoint,
                data=slice_body(slice_),
                headers={"Content-Type": "application/json"},
                allow_redirects=False,
            ) as response:
                status = response.status
                await _discard_answer(response)
        except EndpointNotAllowed:
            metrics.wallet_answer("not_allowed")
            return DeliveryResult(Delivery.REJECTED, None, NOT_ALLOWED)
        except TimeoutError:
            metrics.wallet_answer("timeout")
            return DeliveryResult(Delivery.TRANSIENT, None, "wallet did not answer in time")
        except aiohttp.ClientError as exc:
            metrics.wallet_answer("error")
            return DeliveryResult(Delivery.TRANSIENT, None, f"wallet unreachable: {type(exc).__name__}")
        metrics.wallet_answer(str(status))
        if 200 <= status < 300:
            return DeliveryResult(Delivery.DELIVERED, status, "")
        if 300 <= status < 400:
            # Following it would hand R and the salts to whatever host the answer names.
            return DeliveryResult(
                Delivery.REJECTED, status, f"wallet answered {status}, a redirect: not followed"
            )
        if status in (400, 404, 410, 422):
            return DeliveryResult(Delivery.REJECTED, status, f"wallet answered {status}")
        return DeliveryResult(Delivery.TRANSIENT, status, f"wallet answered {status}")


async def _discard_answer(response: aiohttp.ClientResponse) -> None:
    """Read at most ANSWER_READ_LIMIT bytes and keep none. A longer answer costs its
    connection rather than memory: closing it stops the peer's stream."""
    remaining = ANSWER_READ_LIMIT
    while remaining > 0:
        chunk = await response.content.read(remaining)
        if not chunk:
            break
        remaining -= len(chunk)
    if not response.content.at_eof():
        response.close()
