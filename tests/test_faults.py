"""Fault-injection suite (issue 5): Stamp as a real process on loopback, a few hundred
certificates per scenario, and the same invariants after every scenario — every
accepted certificate terminal, delivered ones verified by the wallet, no position
twice, one registry transaction per certificate, no secret in the log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from stamp.db.embedded import EmbeddedPostgres
from stamp.devstack.wallet_faults import Fault
from tests.faults import start_scenario, stop_scenario
from tests.seed import seeded_random

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


def report(name: str, counts: dict[str, int]) -> None:
    accepted = sum(counts.get(s, 0) for s in ("delivered", "rejected", "failed"))
    print(
        f"\nscenario {name}: accepted {accepted} delivered {counts.get('delivered', 0)} "
        f"rejected {counts.get('rejected', 0)} failed {counts.get('failed', 0)} lost {counts.get('lost', 0)} "
        f"(repeated wallet deliveries {counts.get('duplicate_deliveries', 0)})"
    )


async def test_sigkill_five_times_at_random_moments(empty_database_dsn: str, tmp_path: Path) -> None:
    scenario = await start_scenario(empty_database_dsn, tmp_path, STAMP_AUTO_MIGRATE="true")
    try:
        await scenario.create_recipients(8)
        posting = asyncio.create_task(scenario.post_certificates(300))
        rng = seeded_random("sigkill x5")
        for _ in range(5):
            await asyncio.sleep(rng.uniform(0.5, 2.0))  # a random moment, not a wait for a condition
            scenario.stamp.kill()
            await scenario.stamp.start()
        await posting
        await scenario.wait_terminal()
        counts = await scenario.check_invariants()
        report("sigkill x5", counts)
        assert counts.get("delivered") == 300
    finally:
        await stop_scenario(scenario)


async def test_registry_down_slow_and_failing(empty_database_dsn: str, tmp_path: Path) -> None:
    scenario = await start_scenario(empty_database_dsn, tmp_path, STAMP_AUTO_MIGRATE="true")
    try:
        await scenario.create_recipients(5)
        bodies = scenario.make_bodies(150)
        ids = [b["certificate"]["id"] for b in bodies]
        rejected = ids[:10]
        for certificate_id in rejected:  # before they can reach the registry
            scenario.registry.force_failure(certificate_id, "metering point not approved")
        scenario.registry.hold(certificate_ids=ids[10:40])
        await scenario.post_certificates(len(bodies), bodies)
        await scenario.registry.go_down()
        await asyncio.sleep(2)
        await scenario.registry.go_up()
        scenario.registry.fail_next("SendTransactions", 3)
        scenario.registry.fail_next("GetTransactionStatus", 5)
        await asyncio.sleep(2)  # seconds of PENDING for the held ones
        scenario.registry.release()
        await scenario.wait_terminal()
        counts = await scenario.check_invariants()
        report("registry faults", counts)
        assert counts.get("rejected") == 10 and counts.get("delivered") == 140
        states = await scenario.states()
        assert all(states[c] == "rejected" for c in rejected)
    finally:
        await stop_scenario(scenario)


async def test_wallet_errors_timeouts_and_a_broken_endpoint_fixed_by_operator_retry(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    scenario = await start_scenario(empty_database_dsn, tmp_path, STAMP_AUTO_MIGRATE="true")
    try:
        await scenario.create_recipients(5)
        broken = scenario.endpoints[0]
        scenario.wallet.inject_for(broken, Fault.respond(404))
        scenario.wallet.fail_next(40, 503)
        scenario.wallet.fail_next(20, 500)
        scenario.wallet.hang_next(2.0, count=10)
        await scenario.post_certificates(150)
        counts = await scenario.wait_terminal()
        assert counts.get("failed") == 30, counts  # every certificate of the broken endpoint
        # The wallet operator fixes the endpoint; the Stamp operator retries.
        scenario.wallet.clear_faults()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{scenario.stamp.base}/v1/certificates?state=failed&limit=1000") as r:
                failed = (await r.json())["result"]
            assert {c["failure"]["step"] for c in failed} == {"wallet"}
            for certificate in failed:
                key = f"{certificate['registryName']}/{certificate['id']}"
                url = f"{scenario.stamp.base}/v1/certificates/{key}/retry"
                async with http.post(url) as r:
                    assert r.status == 202
                    assert (await r.json())["state"] == "marked_as_issued"
            async with http.post(url) as r:
                assert r.status == 409  # not failed any more
        await scenario.wait(lambda c: c.get("delivered", 0) == 150)
        counts = await scenario.check_invariants()
        report("wallet faults + operator retry", counts)
    finally:
        await stop_scenario(scenario)


async def test_postgresql_restarted_in_the_middle(tmp_path: Path) -> None:
    database = EmbeddedPostgres(tmp_path / "pg")
    dsn = await asyncio.to_thread(database.start)
    scenario = await start_scenario(dsn, tmp_path, STAMP_AUTO_MIGRATE="true")
    try:
        await scenario.create_recipients(5)
        await scenario.post_certificates(100)
        await scenario.wait(lambda c: c.get("delivered", 0) >= 10)
        await asyncio.to_thread(database.stop)
        # What intake answers meanwhile: test_database_away.py.
        async with aiohttp.ClientSession() as http, http.get(f"{scenario.stamp.base}/health/ready") as r:
            assert r.status == 503
        await asyncio.sleep(2)  # away for a while: the pipeline pauses, then resumes
        await asyncio.to_thread(database.start)
        more = scenario.post_certificates(100)
        await more
        await scenario.wait_terminal()
        counts = await scenario.check_invariants()
        report("postgresql restart", counts)
        assert counts.get("delivered") == 200
    finally:
        await stop_scenario(scenario)
        await asyncio.to_thread(database.stop)


async def test_sigterm_in_the_middle_then_restart(empty_database_dsn: str, tmp_path: Path) -> None:
    scenario = await start_scenario(empty_database_dsn, tmp_path, STAMP_AUTO_MIGRATE="true")
    try:
        await scenario.create_recipients(5)
        await scenario.post_certificates(200)
        await scenario.wait(lambda c: c.get("delivered", 0) >= 20)
        exit_code = await scenario.stamp.terminate()
        assert exit_code == 0
        log_text = scenario.log_path.read_text()
        assert "stamp.shutting_down" in log_text and "stamp.stopped" in log_text
        await scenario.stamp.start()
        await scenario.wait_terminal()
        counts = await scenario.check_invariants()
        report("sigterm + restart", counts)
        assert counts.get("delivered") == 200
        # A graceful stop waits for answers that must be recorded: nothing is re-sent.
        assert counts["duplicate_deliveries"] == 0
    finally:
        await stop_scenario(scenario)
