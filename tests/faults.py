"""Harness of the fault-injection suite: the simulators in the test process, Stamp as
a real child process, a few hundred certificates, and one invariant check for all."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
from stamp.devstack.wallet import WalletEndpointReference, WalletSimConfig, WalletSimulator
from tests.process import StampProcess, free_port
from tests.stack import GRID_AREA, ISSUER, REGISTRY, certificate_body

TERMINAL = ("delivered", "rejected", "failed")


@dataclass
class Scenario:
    database_url: str
    tmp_path: Path
    registry: RegistrySimulator
    wallet: WalletSimulator
    stamp: StampProcess
    recipients: list[str] = field(default_factory=list)
    endpoints: list[WalletEndpointReference] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.stamp.log_path

    async def create_recipients(self, count: int) -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(count):
                reference = self.wallet.create_endpoint()
                async with http.post(
                    f"{self.stamp.base}/v1/recipients", json={"walletEndpointReference": reference.as_json()}
                ) as r:
                    assert r.status == 201, await r.text()
                    self.recipients.append((await r.json())["id"])
                    self.endpoints.append(reference)

    def make_bodies(self, count: int) -> list[dict[str, Any]]:
        return [certificate_body(self.recipients[i % len(self.recipients)]) for i in range(count)]

    async def post_certificates(self, count: int, bodies: list[dict[str, Any]] | None = None) -> list[str]:
        """Post like a client that retries on 503 and connection errors (idempotent)."""
        bodies = bodies if bodies is not None else self.make_bodies(count)
        limit = asyncio.Semaphore(32)
        async with aiohttp.ClientSession() as http:

            async def post(body: dict[str, Any]) -> None:
                async with limit:
                    for _ in range(600):
                        try:
                            async with http.post(f"{self.stamp.base}/v1/certificates", json=body) as r:
                                await r.read()
                                if r.status == 202:
                                    return
                                assert r.status == 503, (r.status, await r.text())
                        except aiohttp.ClientError:
                            pass
                        await asyncio.sleep(0.1)
                    raise AssertionError("certificate never accepted")

            await asyncio.gather(*(post(b) for b in bodies))
        ids = [b["certificate"]["id"] for b in bodies]
        self.ids += ids
        return ids

    async def states(self) -> dict[str, str]:
        conn = await asyncpg.connect(self.database_url)
        try:
            rows = await conn.fetch(
                "SELECT id::text, state FROM certificates WHERE id = ANY($1::uuid[])", self.ids
            )
        finally:
            await conn.close()
        return {r["id"]: r["state"] for r in rows}

    async def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in (await self.states()).values():
            counts[state] = counts.get(state, 0) + 1
        return counts

    async def wait(self, condition: Callable[[dict[str, int]], bool], timeout: float = 120) -> dict[str, int]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                counts = await self.counts()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                counts = {}
            if counts and condition(counts):
                return counts
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {timeout}s; states {counts}")
            await asyncio.sleep(0.1)

    async def wait_terminal(self, timeout: float = 180) -> dict[str, int]:
        return await self.wait(lambda c: sum(c.get(s, 0) for s in TERMINAL) == len(self.ids), timeout)

    async def check_invariants(self) -> dict[str, int]:
        """What every scenario must show at the end; returns the final counts."""
        conn = await asyncpg.connect(self.database_url)
        try:
            rows = await conn.fetch(
                "SELECT id::text, state, recipient_id::text, position, transaction_id, blinding, salts "
                "FROM certificates WHERE id = ANY($1::uuid[])",
                self.ids,
            )
        finally:
            await conn.close()
        assert len(rows) == len(self.ids), "an accepted certificate was lost"
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        counts["lost"] = len(self.ids) - len(rows)
        assert all(r["state"] in TERMINAL for r in rows), counts
        positions = [(r["recipient_id"], r["position"]) for r in rows if r["position"] is not None]
        assert len(positions) == len(set(positions)), "a (recipient, position) was used twice"
        await self.wallet.wait_idle(within=30)
        verified = {s.certificate_id for s in self.wallet.verified_slices()}
        delivered = {r["id"] for r in rows if r["state"] == "delivered"}
        assert delivered <= verified, f"{len(delivered - verified)} delivered but not verified by the wallet"
        assert not self.wallet.flags().reused_positions
        for row in rows:
            if row["transaction_id"] is not None:
                counters = self.registry.stream_counters(row["id"])
                assert counters.distinct_issue_transactions == 1, (row["id"], counters)
        log_text = self.log_path.read_text(errors="replace")
        secrets = [ISSUER.private_pem().splitlines()[1]]
        for row in rows:
            for secret in [row["blinding"], *(row["salts"] or [])]:
                if secret:
                    secrets += [base64.b64encode(secret).decode(), secret.hex()]
        leaked = [s for s in secrets if s in log_text]
        assert not leaked, f"{len(leaked)} secrets in the log"
        counts["duplicate_deliveries"] = len(self.wallet.flags().duplicates)
        return counts


def stamp_env(database_url: str, registry_address: str, key_file: Path, **extra: str) -> dict[str, str]:
    env = {
        "STAMP_DATABASE_URL": database_url,
        "STAMP_PORT": str(free_port()),
        "STAMP_REGISTRIES": f"{REGISTRY}={registry_address}",
        "STAMP_ISSUER_KEYS": f"{GRID_AREA}={key_file}",
        "STAMP_INSTANCE_ID": f"faults-{uuid.uuid4().hex[:6]}",
        "STAMP_REGISTRY_POLL_INITIAL_SECONDS": "0.05",
        "STAMP_REGISTRY_POLL_MAX_SECONDS": "0.3",
        "STAMP_REGISTRY_RETRY_BASE_SECONDS": "0.1",
        "STAMP_REGISTRY_RETRY_CAP_SECONDS": "1",
        "STAMP_REGISTRY_RETRY_MAX_ATTEMPTS": "30",
        "STAMP_WALLET_RETRY_BASE_SECONDS": "0.1",
        "STAMP_WALLET_RETRY_CAP_SECONDS": "1",
        "STAMP_WALLET_RETRY_MAX_ATTEMPTS": "30",
        "STAMP_WALLET_TIMEOUT_SECONDS": "1",
        "STAMP_CRYPTO_WORKERS": "2",
        "STAMP_SHUTDOWN_TIMEOUT": "10",
    }
    env.update(extra)
    return env


async def start_scenario(
    database_url: str, tmp_path: Path, *, commit_delay: float = 0.05, **env: str
) -> Scenario:
    registry = RegistrySimulator(
        RegistrySimConfig(
            registries=(REGISTRY,), issuer_keys={GRID_AREA: (ISSUER.public_pem(),)}, commit_delay=commit_delay
        )
    )
    await registry.start()
    wallet = WalletSimulator(WalletSimConfig(registries={REGISTRY: registry.address}))
    await wallet.start()
    key_file = tmp_path / "dk1.pem"
    key_file.write_text(ISSUER.private_pem())
    stamp = StampProcess(stamp_env(database_url, registry.address, key_file, **env), tmp_path / "stamp.log")
    await stamp.start()
    return Scenario(database_url, tmp_path, registry, wallet, stamp)


async def stop_scenario(scenario: Scenario) -> None:
    scenario.stamp.stop()
    await scenario.wallet.stop()
    await scenario.registry.stop()
