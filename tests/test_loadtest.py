"""The load test: a small real run through the CLI, and its report's arithmetic."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil
import pytest
import pytest_asyncio

from stamp import event_loop
from stamp.crypto.issuer_keys import IssuerKey
from stamp.load.database import create_database, drop_database
from stamp.load.database import database_dsn as dsn_for_database
from stamp.load.driver import CertificateFactory, Outcome, Schedule
from stamp.load.report import missing_fields, percentiles
from stamp.load.run import MONITORED, LiveFigures, LoadOptions, build_report
from stamp.load.scrape import Scrape, histogram_quantile
from stamp.load.stack import StackOptions, _start_simulators
from tests.waiting import wait_until


@pytest_asyncio.fixture(loop_scope="session")
async def loadtest_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """A server database the load test is pointed at: it must run on a fresh database
    of its own beside it and leave this one untouched."""
    name = await create_database(pg_server_dsn, "stamp_loadtest")
    try:
        yield dsn_for_database(pg_server_dsn, name)
    finally:
        await drop_database(pg_server_dsn, name)


async def run_loadtest(dsn: str, report_path: Path, *options: str) -> tuple[str, int]:
    """`stamp loadtest` as a child process on a fresh database beside ``dsn``: its
    output and process id, after asserting it exited 0 with a passed invariant check."""
    command = [
        sys.executable, "-m", "stamp.cli", "loadtest", *options, "--commit-delay", "0.05",
        "--database-url", dsn, "--no-progress", "--json", str(report_path),
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 300)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert "result      OK" in text
    return text, process.pid


@pytest.mark.slow
async def test_small_loadtest_passes_the_invariant_check_and_reports_every_field(
    loadtest_dsn: str, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    _, pid = await run_loadtest(loadtest_dsn, report_path, "-n", "100", "-r", "10", "--concurrency", "16")
    report = orjson.loads(report_path.read_bytes())
    assert missing_fields(report) == []
    assert report["run"]["certificates"] == 100 and report["run"]["recipients"] == 10
    assert report["intake"]["accepted"] == 100 and report["intake"]["refused"] == 0
    assert report["pipeline"]["delivered"] == 100
    assert report["invariants"]["ok"] is True
    assert report["invariants"]["wallet_verified"] == 100
    assert report["invariants"]["database_states"] == {"delivered": 100}
    e2e = report["pipeline"]["end_to_end_seconds"]
    assert 0.05 <= e2e["p50"] <= e2e["p95"] <= e2e["p99"] <= e2e["max"]
    latency = report["intake"]["latency_seconds"]
    assert 0 < latency["p50"] <= latency["max"]
    resources = report["resources"]
    assert resources["peak_rss_bytes"] > 10 * 2**20
    assert resources["peak_threads"] > 1
    assert resources["peak_live_actors"] >= 3  # supervisor and both gateways at least
    assert resources["event_loop_lag_p99_seconds"] is not None
    # Counted from PostgreSQL: the group commit writes several certificates' statements
    # per transaction, yet six statements per certificate at 10 in flight leave more
    # than one commit per certificate; far fewer than 100.
    assert 1 <= resources["db_commits_per_certificate"] < 100
    assert resources["cpu_seconds"]["stamp"] > 0 and resources["cpu_seconds"]["stamp_crypto_workers"] > 0
    assert "range proofs: all verified (100)" in report["registry"]["report"]
    # The wallet simulator read the registry simulator in its process, each read counted
    # as the RPC it stands for.
    assert report["registry"]["walletReads"] == "in-process"
    assert report["registry"]["eventLoop"] == event_loop.resolve("auto"), "the simulators run on Stamp's loop"
    assert report["registry"]["stats"]["stream_calls"] >= 100
    assert resources["peak_crypto_workers_rss_bytes"] > 10 * 2**20
    conn = await asyncpg.connect(loadtest_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('certificates')") is None, (
            "the given database is untouched"
        )
        leftovers = await conn.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname LIKE $1", f"stamp_loadtest_{pid}_%"
        )
        assert leftovers == 0, "the run's own database is dropped"
    finally:
        await conn.close()


async def test_the_stack_runs_this_installation_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started inside another checkout, the stack's children used to import that
    checkout's ``stamp`` (``python -m`` puts the working directory first)."""
    shadow = tmp_path / "stamp" / "load"
    shadow.mkdir(parents=True)
    (tmp_path / "stamp" / "__init__.py").write_text("")
    (shadow / "__init__.py").write_text("")
    (shadow / "simulators.py").write_text(
        'print(\'{"registry": "shadowed", "wallet": "shadowed"}\', flush=True)\n'
    )
    monkeypatch.chdir(tmp_path)
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    process, registry, wallet = await _start_simulators(StackOptions(), IssuerKey.generate(), work_dir)
    try:
        assert registry != "shadowed" and wallet.startswith("http://127.0.0.1:")
    finally:
        assert process.stdin is not None
        process.stdin.close()
        await asyncio.wait_for(process.wait(), 10)


def _outcome(certificate_id: str, answered_at: float) -> Outcome:
    return Outcome(certificate_id, 0, 202, 0.01, answered_at)


def _report(wallet: dict[str, Any], database: dict[str, Any] | None) -> dict[str, Any]:
    accepted = {cid: _outcome(cid, 1000.0) for cid in ("a", "b")}
    issued = Scrape({("stamp_certificates_issued_total", frozenset({("type", "production")})): 2.0})
    return build_report(
        options=LoadOptions(certificates=2, recipients=1, schedule=Schedule.closed(2, 1)),
        host={"cpus": 2, "load_average_start": [0.0, 0.0, 0.0]},
        outcomes=list(accepted.values()),
        accepted=accepted,
        refused=0,
        intake_seconds=1.0,
        started_wall=1000.0,
        live=LiveFigures(Scrape({}), issued),
        wallet=wallet,
        database=database,
        commits=12,
        cpu={"stamp": 1.0},
        registry=None,
        lag_buckets={0.001: 5.0, 0.01: 10.0, math.inf: 10.0},
    )


def _wallet(**overrides: Any) -> dict[str, Any]:
    wallet: dict[str, Any] = {
        "verified": [
            {"certificateId": "a", "receivedAt": 1001.0},
            {"certificateId": "b", "receivedAt": 1003.0},
        ],
        "invalid": [],
        "pending": [],
        "duplicates": [],
        "early": [],
        "reused_positions": [],
    }
    wallet.update(overrides)
    return wallet


@pytest.mark.slow
async def test_batch_loadtest_posts_batches_and_everything_is_delivered(
    loadtest_dsn: str, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    text, _ = await run_loadtest(loadtest_dsn, report_path, "-n", "120", "-r", "10", "--batch", "50")
    assert "batches     3 of 50 certificates" in text
    report = orjson.loads(report_path.read_bytes())
    assert missing_fields(report) == []
    assert report["intake"]["accepted"] == 120 and report["intake"]["refused"] == 0
    assert report["intake"]["batches"]["sent"] == 3 and report["intake"]["batches"]["by_status"] == {"200": 3}
    assert report["invariants"]["database_states"] == {"delivered": 120}
    assert report["invariants"]["wallet_verified"] == 120


def test_report_of_a_clean_run_is_ok_with_its_figures() -> None:
    report = _report(
        _wallet(), {"states": {"delivered": 2}, "duplicate_positions": 0, "recipients_with_gaps": 0}
    )
    assert missing_fields(report) == []
    assert report["invariants"]["ok"] is True
    assert report["pipeline"]["end_to_end_seconds"] == {"p50": 1.0, "p95": 3.0, "p99": 3.0, "max": 3.0}
    assert report["pipeline"]["delivered_per_second"] == pytest.approx(2 / 3)
    assert report["resources"]["db_commits_per_certificate"] == 6


def test_report_fails_on_a_reused_position_an_unverified_slice_or_a_lost_certificate() -> None:
    reused = _wallet(reused_positions=[{"position": 1, "certificateIds": ["a", "b"]}])
    report = _report(reused, None)
    assert report["invariants"]["no_duplicate_positions"] is False
    assert report["invariants"]["ok"] is False

    unverified = _wallet(verified=[{"certificateId": "a", "receivedAt": 1001.0}])
    assert _report(unverified, None)["invariants"]["all_verified_by_wallet"] is False

    stuck = {
        "states": {"delivered": 1, "sent_to_registry": 1},
        "duplicate_positions": 0,
        "recipients_with_gaps": 0,
    }
    report = _report(_wallet(), stuck)
    assert report["invariants"]["nothing_lost"] is False
    assert any("not finished" in p for p in report["invariants"]["problems"])

    gaps = {"states": {"delivered": 2}, "duplicate_positions": 0, "recipients_with_gaps": 1}
    assert _report(_wallet(), gaps)["invariants"]["gapless_positions"] is False


def test_buckets_can_be_narrowed_to_one_route_and_status() -> None:
    intake = 'method="POST",route="/v1/certificates",status="202"'
    metrics = 'method="GET",route="/metrics",status="200"'
    scrape = Scrape.parse(
        "# TYPE stamp_http_request_duration_seconds histogram\n"
        f'stamp_http_request_duration_seconds_bucket{{{intake},le="0.1"}} 3\n'
        f'stamp_http_request_duration_seconds_bucket{{{intake},le="+Inf"}} 4\n'
        f'stamp_http_request_duration_seconds_bucket{{{metrics},le="0.1"}} 7\n'
        f'stamp_http_request_duration_seconds_bucket{{{metrics},le="+Inf"}} 7\n'
    )
    name = "stamp_http_request_duration_seconds"
    assert scrape.buckets(name) == {0.1: 10.0, math.inf: 11.0}
    assert scrape.buckets(name, route="/v1/certificates", status="202") == {0.1: 3.0, math.inf: 4.0}


def test_the_monitors_narrow_parse_reads_its_samples_as_the_full_parse_does() -> None:
    text = (
        "# HELP stamp_certificates_issued_total Certificates issued\n"
        "# TYPE stamp_certificates_issued_total counter\n"
        'stamp_certificates_issued_total{type="production"} 7.0\n'
        'stamp_certificates_issued_total{type="consumption"} 2.0\n'
        'stamp_certificates_issued_created{type="production"} 1.7e9\n'
        "# TYPE stamp_live_actors gauge\n"
        'stamp_live_actors{kind="certificate"} 12.0\n'
        'stamp_live_actors{kind="recipient",note="a {brace} and a \\"quote\\""} 3.0\n'
        "stamp_mailbox_depth 5.0\n"
        "# TYPE stamp_http_request_duration_seconds histogram\n"
        'stamp_http_request_duration_seconds_bucket{le="+Inf"} 4.0\n'
    )
    full = Scrape.parse(text)
    narrow = Scrape.parse(text, MONITORED)
    for name in ("stamp_certificates_issued_total", "stamp_live_actors", "stamp_mailbox_depth"):
        assert narrow.total(name) == full.total(name) > 0
    assert narrow.by_label("stamp_live_actors", "kind") == {"certificate": 12.0, "recipient": 3.0}
    assert {name for name, _ in narrow.samples} == {
        "stamp_certificates_issued_total",
        "stamp_live_actors",
        "stamp_mailbox_depth",
    }


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, {0.1: 0.0, math.inf: 0.0}) is None
    # Beyond the last finite bucket only its bound is known.
    assert histogram_quantile(0.99, {0.1: 1.0, math.inf: 10.0}) == pytest.approx(0.1)


def test_percentiles_are_observed_values_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None}


def test_open_schedules_spread_arrivals_over_their_steps() -> None:
    stepped = Schedule.stepped([(10, 1), (20, 0.5)])
    assert stepped.total == 20
    offsets = stepped.offsets()
    assert offsets[:2] == [0.0, 0.1] and offsets[10] == 1.0 and offsets[-1] == pytest.approx(1.45)
    constant = Schedule.constant(50, 100)
    assert constant.open and constant.total == 100 and constant.offsets()[-1] == pytest.approx(1.98)
    assert not Schedule.closed(10, 4).open


def test_certificate_bodies_never_collide_on_id_or_metering_period() -> None:
    factory = CertificateFactory(["r1", "r2", "r3"])
    seen_ids, seen_periods = set(), set()
    for index in range(300):
        certificate_id, recipient, body = factory.body(index)
        parsed = orjson.loads(body)
        assert parsed["recipientId"] == ["r1", "r2", "r3"][recipient]
        key = (parsed["meteringPointId"], parsed["certificate"]["start"])
        assert certificate_id not in seen_ids and key not in seen_periods
        seen_ids.add(certificate_id)
        seen_periods.add(key)


@pytest.mark.slow
async def test_a_terminated_loadtest_stops_its_stack_and_drops_its_database(loadtest_dsn: str) -> None:
    """SIGTERM (a CI timeout, `kill`) in the middle of a run: the Stamp and simulator
    processes it started exit and its own database is dropped, as on Ctrl-C."""
    command = [
        sys.executable, "-m", "stamp.cli", "loadtest", "-n", "100000", "-r", "50",
        "--database-url", loadtest_dsn, "--no-progress",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    conn = await asyncpg.connect(loadtest_dsn)
    try:
        pattern = f"stamp_loadtest_{process.pid}_%"

        async def stack_running() -> list[psutil.Process] | None:
            try:
                children = psutil.Process(process.pid).children(recursive=True)
                serving = [c for c in children if "serve" in c.cmdline()]
            except psutil.NoSuchProcess:
                return None
            exists = await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname LIKE $1", pattern)
            return children if serving and exists else None

        children = await wait_until(stack_running, what="the load test's stack", timeout=120, interval=0.5)
        await asyncio.sleep(2)  # certificates in flight
        process.terminate()
        output, _ = await asyncio.wait_for(process.communicate(), 90)
        assert process.returncode == 130, output.decode(errors="replace")
        _, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [], [p.cmdline() for p in alive]
        leftovers = await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname LIKE $1", pattern)
        assert leftovers == 0, "the run's own database is dropped"
    finally:
        if process.returncode is None:
            process.kill()
        await conn.close()
