"""A running Stamp with its Registry and Wallet simulators, for end-to-end tests.

Everything is real: PostgreSQL (the test database), a grpc.aio registry simulator,
an aiohttp wallet simulator, and Stamp's own app served on a loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from stamp.api.connections import make_runner
from stamp.app import POOL, build_app
from stamp.config import RetryPolicy, Settings
from stamp.crypto.issuer_keys import IssuerKey
from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
from stamp.devstack.wallet import WalletSimConfig, WalletSimulator
from stamp.domain import TERMINAL_STATES

REGISTRY = "Narnia"
GRID_AREA = "DK1"
ISSUER = IssuerKey.generate()


@dataclass
class Stack:
    base: str
    http: aiohttp.ClientSession
    app: web.Application
    registry: RegistrySimulator
    wallet: WalletSimulator
    settings: Settings

    @property
    def pool(self) -> Any:
        return self.app[POOL]

    async def create_recipient(self) -> str:
        reference = self.wallet.create_endpoint()
        async with self.http.post(
            f"{self.base}/v1/recipients", json={"walletEndpointReference": reference.as_json()}
        ) as response:
            assert response.status == 201, await response.text()
            recipient_id: str = (await response.json())["id"]
            return recipient_id

    async def post_certificate(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with self.http.post(f"{self.base}/v1/certificates", json=body) as response:
            return response.status, await response.json(content_type=None)

    async def post_accepted(self, recipient: str, count: int) -> list[tuple[str, str]]:
        """Post ``count`` new certificates for ``recipient``, one at a time, each answered
        202; their keys (registry, id)."""
        keys = []
        for _ in range(count):
            body = certificate_body(recipient)
            status, answer = await self.post_certificate(body)
            assert status == 202, answer
            keys.append((body["registryName"], body["certificate"]["id"]))
        return keys

    async def post_in_parallel(self, bodies: list[dict[str, Any]], clients: int) -> list[int]:
        """POST every body, ``clients`` at once, each client on a session of its own (as
        separate issuing bodies' clients would be); every answer's status."""

        async def client(share: list[dict[str, Any]]) -> list[int]:
            async with aiohttp.ClientSession() as http:
                statuses = []
                for body in share:
                    async with http.post(f"{self.base}/v1/certificates", json=body) as response:
                        statuses.append(response.status)
                return statuses

        shares = await asyncio.gather(*(client(bodies[i::clients]) for i in range(clients)))
        return [status for share in shares for status in share]

    async def get_certificate(self, registry: str, certificate_id: str) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"{self.base}/v1/certificates/{registry}/{certificate_id}") as response:
            return response.status, await response.json(content_type=None)

    async def wait_terminal(self, keys: list[tuple[str, str]], timeout: float = 60) -> dict[str, str]:
        """Wait until every certificate is in a terminal state; their states by id."""
        terminal = {s.value for s in TERMINAL_STATES}
        deadline = asyncio.get_running_loop().time() + timeout
        ids = [certificate_id for _, certificate_id in keys]
        while True:
            rows = await self.pool.fetch(
                "SELECT id::text, state FROM certificates WHERE id = ANY($1::uuid[])", ids
            )
            states = {r["id"]: r["state"] for r in rows}
            if len(states) == len(ids) and all(s in terminal for s in states.values()):
                return states
            if asyncio.get_running_loop().time() > deadline:
                pending = {k: v for k, v in states.items() if v not in terminal}
                raise AssertionError(
                    f"not terminal after {timeout}s: {len(pending)} e.g. {list(pending.items())[:3]}"
                )
            await asyncio.sleep(0.1)


def certificate_body(
    recipient_id: str, *, quantity: int = 1000, start: int | None = None, **overrides: Any
) -> dict[str, Any]:
    start = start if start is not None else 1_700_000_000 + 3600 * (uuid.uuid4().int % 10**6)
    certificate = {
        "id": str(uuid.uuid4()),
        "type": "production",
        "quantity": quantity,
        "start": start,
        "end": start + 3600,
        "gridArea": GRID_AREA,
        "clearTextAttributes": {"fuelCode": "F01040100", "techCode": "T010000"},
        "hashedAttributes": [{"key": "assetId", "value": "571234567890123456"}],
    }
    certificate.update(overrides.pop("certificate", {}))
    body = {
        "recipientId": recipient_id,
        "registryName": REGISTRY,
        "meteringPointId": f"57{uuid.uuid4().int % 10**16:016d}",
        "certificate": certificate,
    }
    body.update(overrides)
    return body


def stack_settings(database_url: str, registry_address: str, data_dir: Path, **overrides: Any) -> Settings:
    """Test settings: fast retries and polls; ``overrides`` replace any field."""
    fast_retry = RetryPolicy(base_seconds=0.05, cap_seconds=0.5, max_attempts=5)
    settings = Settings(
        database_url=database_url,
        data_dir=data_dir,
        registries={REGISTRY: registry_address},
        issuer_keys={GRID_AREA: ISSUER},
        auto_migrate=True,
        instance_id=f"test-{uuid.uuid4().hex[:8]}",
        crypto_workers=2,
        registry_poll_initial_seconds=0.05,
        registry_poll_max_seconds=0.2,
        registry_retry=fast_retry,
        crypto_retry=fast_retry,
        wallet_retry=fast_retry,
    )
    return dataclasses.replace(settings, **overrides)


@contextlib.asynccontextmanager
async def loopback_host(app: web.Application) -> AsyncIterator[int]:
    """Serve ``app`` on a free loopback port for the block (a wallet host that answers
    what a test needs, say); yields the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, registry: RegistrySimulator, wallet: WalletSimulator
) -> AsyncIterator[Stack]:
    """One Stamp (in-process) on running simulators; leaving it and serving again is a restart."""
    app = build_app(settings)
    runner = make_runner(app, settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            yield Stack(f"http://127.0.0.1:{port}", http, app, registry, wallet, settings)
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running_stack(
    database_url: str,
    data_dir: Path,
    *,
    commit_delay: float = 0.05,
    issuer_keys: Mapping[str, IssuerKey] | None = None,
    registry_options: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """Simulators and one in-process Stamp. ``issuer_keys``: per grid area (default: DK1
    only); ``registry_options``: more RegistrySimConfig fields (``strict``, …);
    ``overrides``: Settings fields."""
    keys = dict(issuer_keys or {GRID_AREA: ISSUER})
    registry = RegistrySimulator(
        RegistrySimConfig(
            registries=(REGISTRY,),
            issuer_keys={area: (key.public_pem(),) for area, key in keys.items()},
            commit_delay=commit_delay,
            **(registry_options or {}),
        )
    )
    await registry.start()
    wallet = WalletSimulator(WalletSimConfig(registries={REGISTRY: registry.address}))
    await wallet.start()
    settings = stack_settings(database_url, registry.address, data_dir, issuer_keys=keys, **overrides)
    try:
        async with serving(settings, registry, wallet) as stack:
            yield stack
    finally:
        await wallet.stop()
        await registry.stop()
