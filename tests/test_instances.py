"""Several Stamp instances on one database (issue 14, item 6; docs/architecture.md,
"Shutdown and scale-out").

Three ``stamp serve`` processes with their own STAMP_INSTANCE_IDs share one PostgreSQL
and the simulators; certificates are posted to all three; one is SIGKILLed mid-run and
never comes back. The survivors take its certificates over once their leases expire,
and every certificate ends delivered, at one position, with one registry transaction,
driven by one instance at a time (each event records the instance that wrote it).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from itertools import groupby
from pathlib import Path

import asyncpg
import pytest

from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
from stamp.devstack.wallet import WalletSimConfig, WalletSimulator
from tests.faults import Scenario, stamp_env
from tests.logs import json_lines
from tests.process import StampProcess
from tests.seed import seeded_random
from tests.stack import GRID_AREA, ISSUER, REGISTRY
from tests.waiting import wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

LEASE_SECONDS = 4.0
CERTIFICATES = 150
ACTIVE = ("stored", "sent_to_registry", "issued_in_registry", "marked_as_issued")


async def _delivered(conn: asyncpg.Connection, ids: list[str]) -> int:
    n: int = await conn.fetchval(
        "SELECT count(*) FROM certificates WHERE id = ANY($1::uuid[]) AND state = 'delivered'", ids
    )
    return n


async def test_survivors_take_over_a_killed_instance_after_its_leases_expire(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    rng = seeded_random("instances")
    registry = RegistrySimulator(
        RegistrySimConfig(
            registries=(REGISTRY,), issuer_keys={GRID_AREA: (ISSUER.public_pem(),)}, commit_delay=0.2
        )
    )
    await registry.start()
    wallet = WalletSimulator(WalletSimConfig(registries={REGISTRY: registry.address}))
    await wallet.start()
    key_file = tmp_path / "dk1.pem"
    key_file.write_text(ISSUER.private_pem())
    names = [f"instance-{i}-{uuid.uuid4().hex[:4]}" for i in range(3)]
    instances = [
        StampProcess(
            stamp_env(
                empty_database_dsn,
                registry.address,
                key_file,
                STAMP_INSTANCE_ID=name,
                STAMP_LEASE_SECONDS=str(LEASE_SECONDS),
                STAMP_AUTO_MIGRATE="true",
                STAMP_CRYPTO_WORKERS="1",
            ),
            tmp_path / f"{name}.log",
        )
        for name in names
    ]
    conn: asyncpg.Connection | None = None
    try:
        await asyncio.gather(*(i.start() for i in instances))
        scenarios = [Scenario(empty_database_dsn, tmp_path, registry, wallet, i) for i in instances]
        await scenarios[0].create_recipients(6)
        for s in scenarios[1:]:
            s.recipients = scenarios[0].recipients
        bodies = scenarios[0].make_bodies(CERTIFICATES)
        await asyncio.gather(*(s.post_certificates(0, bodies[i::3]) for i, s in enumerate(scenarios)))
        ids = [b["certificate"]["id"] for b in bodies]

        conn = await asyncpg.connect(empty_database_dsn)
        victim_index = rng.randrange(3)
        victim, survivors = names[victim_index], names[:victim_index] + names[victim_index + 1 :]
        kill_at = rng.randint(5, CERTIFICATES // 4)
        print(f"killing {victim} once {kill_at} certificates are delivered")
        await wait_until(lambda: _at_least(conn, ids, kill_at), what=f"{kill_at} delivered", timeout=120)
        assert not await _no_connections_of(conn, victim), "connections are named for their instance"
        instances[victim_index].kill()
        # A statement the victim sent before it died may still commit: its leases are
        # read once PostgreSQL has ended every connection of the victim.
        await wait_until(
            lambda: _no_connections_of(conn, victim), what=f"{victim}'s connections closed", timeout=30
        )
        held = {
            r["id"]: r["lease_until"]
            for r in await conn.fetch(
                "SELECT id::text, lease_until FROM certificates WHERE lease_owner = $1 AND state = ANY($2)",
                victim,
                list(ACTIVE),
            )
        }
        states_at_kill: dict[str, str] = {
            r["id"]: r["state"]
            for r in await conn.fetch(
                "SELECT id::text, state FROM certificates WHERE id = ANY($1::uuid[])", list(held)
            )
        }
        print(f"{victim} held {len(held)} certificates when it was killed")
        assert held, "the victim drove nothing at the kill: the test proves no takeover"

        await wait_until(lambda: _at_least(conn, ids, len(ids)), what="all delivered", timeout=180)

        # Exactly once at the wallet, except where the kill fell between a wallet's 2xx
        # and its record (at-least-once); never a position twice.
        await wallet.wait_idle(within=30)
        assert {s.certificate_id for s in wallet.verified_slices()} >= set(ids)
        flags = wallet.flags()
        assert not flags.reused_positions and not flags.early_deliveries
        repeated = {d.certificate_id for d in flags.duplicates}
        in_delivery = {c for c, state in states_at_kill.items() if state == "marked_as_issued"}
        assert repeated <= in_delivery, repeated - in_delivery
        # One registry transaction per certificate.
        for certificate_id in ids:
            assert registry.stream_counters(certificate_id).distinct_issue_transactions == 1, certificate_id

        # One driver at a time: each instance's events on a certificate form one run.
        events = await conn.fetch(
            "SELECT certificate_id::text AS id, instance_id, at FROM certificate_events "
            "WHERE certificate_id = ANY($1::uuid[]) AND instance_id IS NOT NULL ORDER BY certificate_id, seq",
            ids,
        )
        drivers_seen: set[str] = set()
        for certificate_id, rows in groupby(events, key=lambda r: r["id"]):
            history = list(rows)
            runs = [instance for instance, _ in groupby(r["instance_id"] for r in history)]
            assert len(runs) == len(set(runs)), (certificate_id, runs)
            drivers_seen.update(runs)
            taken_over_at: datetime | None = held.get(certificate_id)
            if taken_over_at is not None:
                after_victim = False
                for row in history:
                    if row["instance_id"] == victim:
                        after_victim = True
                    elif after_victim:
                        assert row["at"] >= taken_over_at, (
                            certificate_id,
                            "taken over before the lease expired",
                        )
        assert set(names) <= drivers_seen
        # Two drivers at once would show as a lost compare-and-set: the one that lost
        # abandons the certificate. A takeover after expiry never loses one.
        for name in survivors:
            lost = [
                line
                for line in json_lines((tmp_path / f"{name}.log").read_text(errors="replace"))
                if line.get("event") == "certificate.abandoned"
            ]
            assert not lost, (name, lost[:3])
        taken_over = {r["id"] for r in events if r["id"] in held and r["instance_id"] in survivors}
        assert taken_over == set(held), "a certificate of the killed instance was not taken over"
    finally:
        if conn is not None:
            await conn.close()
        for instance in instances:
            instance.stop()
        await wallet.stop()
        await registry.stop()


async def _at_least(conn: asyncpg.Connection, ids: list[str], count: int) -> bool:
    return await _delivered(conn, ids) >= count


async def _no_connections_of(conn: asyncpg.Connection, instance_id: str) -> bool:
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", f"stamp:{instance_id}"
    )
    return bool(count == 0)
