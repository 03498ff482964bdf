"""Stamp's benchmark: the ceilings and Stamp itself, measured in one run on one machine.

    .venv/bin/python scripts/bench.py            # ceilings, 10,000 certificates over 1,000 recipients,
                                                 # a below-saturation run, 1,000 arrivals/s for 5 s,
                                                 # 10,000 over 10,000 and two Stamp processes
    .venv/bin/python scripts/bench.py --quick    # the same, smaller (2,000 over 200): a few minutes
    .venv/bin/python scripts/bench.py --full     # adds 100,000 certificates over 10,000 recipients
    .venv/bin/python scripts/bench.py --batch-only -n 5000   # batch intake against the single route only
    .venv/bin/python scripts/bench.py --libsodium-only       # the main run with Stamp on libsodium only

Ceilings, each measured here and now:

- crypto: full issue bundles/s (owner key, commitment, range proof, self-verification,
  hashed attributes, signed transaction) in a process pool on every core, one bundle
  per task as Stamp submits them; also without the self-verification;
- database: Stamp's own statements (intake insert, position allocation, the four
  transitions) per second, as certificate lifecycles per second: through the group
  commit with as many certificates in flight as Stamp admits (as Stamp writes them),
  and one statement per round trip at Stamp's pool size (as Stamp wrote them before
  the group commit);
- HTTP intake: 202s/s of a trivial aiohttp handler (reads and parses the JSON body)
  in its own process, driven by the same load driver and concurrency as Stamp.

Batch intake: the main run again as batches of 1,000 (``POST /v1/certificates/batch``,
``--batch-concurrency`` batches in flight, default 2), with its intake/s, its ratio to
the single route's intake/s in the same run and the p99 of a batch against the targets
(≥ 10,000 certificates/s, < 1 s).

libsodium (``--libsodium-only``): the main run with Stamp's crypto on the libsodium
backend (``STAMP_CRYPTO_BACKEND=sodium`` for Stamp only: the simulators stand for the
registry and the wallet, which are not Stamp's to slow down), between two measurements
of the libsodium crypto ceiling, and delivered/s over the better one.

Then Stamp (``stamp.loadtest``: simulators in a child process, Stamp processes as
``stamp serve``, a fresh database each), and the ratios Stamp/ceiling. PostgreSQL is
an embedded one started here unless ``--database-url`` names a server (a database is
created for each measurement and dropped after it). ``--json`` and ``--markdown``
write the results.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web

from stamp.app import init_crypto_worker, warm_crypto_worker
from stamp.config import Settings
from stamp.crypto import backend
from stamp.crypto.bundle import IssueRequest, build_issue_bundle
from stamp.crypto.hdkeys import ExtendedPrivateKey
from stamp.crypto.issuer_keys import IssuerKey
from stamp.db import queries
from stamp.db.batcher import StatementBatcher
from stamp.db.embedded import EmbeddedPostgres
from stamp.db.migrate import apply_migrations
from stamp.db.pool import create_pool
from stamp.domain import CertificateContent, CertificateKey, Event, State
from stamp.load.database import fresh_database
from stamp.load.driver import CertificateFactory, Schedule, drive
from stamp.load.report import machine, percentiles
from stamp.load.run import LoadOptions, quiet_logs, run_loadtest

STAMP_POOL_SIZE = 20  # stamp.app.database_ctx: max_size
INTAKE_CONCURRENCY = 64
BATCH_SIZE = 1000
BATCH_CONCURRENCY = 2  # batches in flight: an issuing body's importer, not a crowd
BATCH_TARGET_PER_SECOND = 10_000
BATCH_TARGET_P99_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Plan:
    crypto_bundles: int
    db_certificates: int
    http_requests: int
    certificates: int
    recipients: int
    steady_seconds: float
    intake_seconds: float
    wide_recipients: int
    full: bool
    two_instances: bool
    batch_only: bool = False
    libsodium_only: bool = False
    batch_concurrency: int = BATCH_CONCURRENCY


# --- crypto ceiling -----------------------------------------------------------------------


def crypto_ceiling(count: int, verify_proof: bool, crypto_backend: str | None = None) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    recipient = ExtendedPrivateKey.generate().public().to_bytes()
    issuer = IssuerKey.generate().private_pem()
    requests = [
        IssueRequest(
            content=CertificateContent(
                key=CertificateKey("Narnia", str(uuid.uuid4())),
                recipient_id="0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69",
                metering_point_id="571234567890123456",
                certificate_type=2,
                quantity=1000 + i,
                start=1_700_000_000 + 3600 * i,
                end=1_700_003_600 + 3600 * i,
                grid_area="DK1",
                clear_attributes=(("fuelCode", "F01040100"), ("techCode", "T010000")),
                hashed_attributes=(("assetId", "571234567890123456"),),
            ),
            recipient_public_key=recipient,
            position=i + 1,
            issuer_private_pem=issuer,
            verify_proof=verify_proof,
        )
        for i in range(count)
    ]
    # Not niced or on a short slice like Stamp's workers (a busy neighbour would then
    # lower the ceiling and flatter the ratios), but gone when the benchmark is killed.
    with ProcessPoolExecutor(
        cores,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_crypto_worker,
        # Without a backend named, STAMP_CRYPTO_BACKEND decides, as it does for Stamp.
        initargs=(crypto_backend or os.environ.get(backend.ENV_VAR, "auto"), 0, None),
    ) as pool:
        backends = {warming.result() for warming in [pool.submit(warm_crypto_worker) for _ in range(cores)]}
        started = time.perf_counter()
        for future in [pool.submit(build_issue_bundle, r) for r in requests]:
            future.result()
        seconds = time.perf_counter() - started
    return {
        "bundles": count,
        "seconds": seconds,
        "per_second": count / seconds,
        "workers": cores,
        "backend": ",".join(sorted(backends)),
    }


# --- database ceiling ---------------------------------------------------------------------


async def database_ceiling(server_dsn: str, certificates: int, *, batched: bool) -> dict[str, Any]:
    async with fresh_database(server_dsn, "stamp_bench_db") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        pool = await create_pool(dsn, min_size=STAMP_POOL_SIZE, max_size=STAMP_POOL_SIZE)
        try:
            if batched:
                batcher = StatementBatcher(pool, asyncio.get_running_loop())
                return await _lifecycles(pool, certificates, Settings().max_in_flight, batcher.fetch)

            async def one_by_one(sql: str, args: Sequence[Any], _lock_key: tuple[str, ...]) -> asyncpg.Record:
                row = await pool.fetchrow(sql, *args)
                assert row is not None
                return row

            return await _lifecycles(pool, certificates, STAMP_POOL_SIZE, one_by_one)
        finally:
            await pool.close()


Write = Callable[[str, Sequence[Any], tuple[str, ...]], Awaitable[asyncpg.Record]]


async def _lifecycles(
    pool: asyncpg.Pool, certificates: int, concurrency: int, write: Write
) -> dict[str, Any]:
    """Each certificate as Stamp writes it: insert, allocate, record the transaction,
    issued, marked, delivered: six statements."""
    recipients = [str(uuid.uuid4()) for _ in range(max(1, certificates // 10))]
    for recipient_id in recipients:
        await pool.execute(
            queries.INSERT_RECIPIENT, recipient_id, 1, "http://127.0.0.1:1/v1/slices", secrets.token_bytes(74)
        )
    lease = queries.Lease("bench", 60.0)
    run = f"{uuid.uuid4().int % 10**8:08d}"

    async def lifecycle(i: int) -> None:
        recipient = recipients[i % len(recipients)]
        key = CertificateKey("Narnia", str(uuid.uuid4()))
        lock_key = (key.registry, key.certificate_id)
        new = queries.NewCertificateRow(
            content=CertificateContent(
                key=key,
                recipient_id=recipient,
                metering_point_id=f"57{run}{i:08d}",
                certificate_type=2,
                quantity=1000,
                start=1_700_000_000,
                end=1_700_003_600,
                grid_area="DK1",
                clear_attributes=(("fuelCode", "F01040100"),),
                hashed_attributes=(("assetId", "571234567890123456"),),
            ),
            request_digest=secrets.token_bytes(32),
        )
        await write(queries.INSERT_CERTIFICATE, queries.insert_certificate_args(new, lease), lock_key)
        row = await write(
            queries.ALLOCATE_POSITIONS,
            queries.allocate_positions_args(recipient, [(key, 0)], lease.owner, lease.seconds),
            (recipient,),
        )
        allocated = queries.allocated_positions(row)
        version: int | None = allocated[0].version
        assert version is not None
        row = await write(
            queries.RECORD_TRANSACTION,
            queries.transition_args(
                key,
                version,
                State.SENT_TO_REGISTRY,
                Event.SENT_TO_REGISTRY,
                {"transactionId": "x" * 64, "position": allocated[0].position},
                lease,
                secrets.token_bytes(1000),
                secrets.token_hex(32),
                secrets.token_bytes(32),
                [secrets.token_bytes(16)],
            ),
            lock_key,
        )
        version = row["version"]
        for state, event in (
            (State.ISSUED_IN_REGISTRY, Event.ISSUED_IN_REGISTRY),
            (State.MARKED_AS_ISSUED, Event.MARKED_AS_ISSUED),
            (State.DELIVERED, Event.SENT_TO_WALLET),
        ):
            assert version is not None
            row = await write(
                queries.ADVANCE, queries.transition_args(key, version, state, event, {}, lease), lock_key
            )
            version = row["version"]
        assert version is not None

    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < certificates:
            index = next_index
            next_index += 1
            await lifecycle(index)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    statements = certificates * 6
    return {
        "certificates": certificates,
        "concurrency": concurrency,
        "seconds": seconds,
        "statements_per_second": statements / seconds,
        "certificates_per_second": certificates / seconds,
    }


# --- HTTP intake ceiling ------------------------------------------------------------------


async def _trivial_intake(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    answer = {"id": body["certificate"]["id"], "registryName": body["registryName"], "state": "stored"}
    return web.Response(status=202, body=orjson.dumps(answer), content_type="application/json")


async def serve_trivial() -> None:
    """The trivial intake server (child process): prints its port, serves until stdin closes."""
    app = web.Application()
    app.router.add_post("/v1/certificates", _trivial_intake)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


async def http_ceiling(requests: int) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-trivial",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        port = int(await asyncio.wait_for(process.stdout.readline(), 60))
        factory = CertificateFactory([str(uuid.uuid4()) for _ in range(100)])
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector) as http:
            started = time.perf_counter()
            outcomes = await drive(
                http,
                [f"http://127.0.0.1:{port}"],
                Schedule.closed(requests, INTAKE_CONCURRENCY),
                factory.body,
            )
            seconds = time.perf_counter() - started
    finally:
        process.stdin.close()
        await process.wait()
    accepted = [o.latency for o in outcomes if o.status == 202]
    return {
        "requests": requests,
        "accepted": len(accepted),
        "concurrency": INTAKE_CONCURRENCY,
        "seconds": seconds,
        "per_second": len(accepted) / seconds,
        "latency_seconds": percentiles(accepted),
    }


# --- Stamp ------------------------------------------------------------------------------------


async def stamp_run(
    server_dsn: str, name: str, options: LoadOptions, note: Callable[[str], None]
) -> dict[str, Any]:
    note(f"stamp: {name}: {options.schedule.describe()}, {options.recipients} recipients")
    # The load test runs on a fresh database of its own on this server.
    options = LoadOptions(**{**_fields(options), "database_url": server_dsn})
    report = await run_loadtest(options)
    report["name"] = name
    return report


def _fields(options: LoadOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.__dataclass_fields__}


# --- the run ------------------------------------------------------------------------------


@asynccontextmanager
async def postgres(database_url: str | None) -> AsyncIterator[tuple[str, int | None]]:
    """A server DSN, and its postmaster's PID when it runs here (for its CPU time)."""
    if database_url is not None:
        yield database_url, None
        return
    with tempfile.TemporaryDirectory(prefix="stamp-bench-") as tmp:
        embedded = EmbeddedPostgres(Path(tmp) / "pg")
        dsn = await asyncio.to_thread(embedded.start)
        try:
            yield dsn, embedded.pid
        finally:
            await asyncio.to_thread(embedded.stop)


async def bench(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    def note(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["scripts/bench.py", *sys.argv[1:]]),
        "commit_delay_seconds": args.commit_delay,
        "proof_sample": args.proof_sample,
        "ceilings": {},
        "stamp": [],
    }
    ceilings = results["ceilings"]
    if plan.batch_only:
        return await batch_comparison(args, plan, results, note)
    if plan.libsodium_only:
        return await libsodium_ratio(args, plan, results, note)
    note(f"crypto ceiling: {plan.crypto_bundles} bundles on {os.cpu_count()} cores")
    ceilings["crypto"] = await asyncio.to_thread(crypto_ceiling, plan.crypto_bundles, True)
    ceilings["crypto_without_self_verification"] = await asyncio.to_thread(
        crypto_ceiling, plan.crypto_bundles, False
    )
    async with postgres(args.database_url) as (server_dsn, postgres_pid):
        note(f"database ceiling: {plan.db_certificates} lifecycles, group commit and one by one")
        ceilings["database"] = await database_ceiling(server_dsn, plan.db_certificates, batched=True)
        ceilings["database_one_by_one"] = await database_ceiling(
            server_dsn, plan.db_certificates, batched=False
        )
        note(f"HTTP intake ceiling: {plan.http_requests} requests at concurrency {INTAKE_CONCURRENCY}")
        ceilings["http"] = await http_ceiling(plan.http_requests)

        common = common_options(args, postgres_pid)
        runs: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = []

        def closed(name: str, certificates: int, recipients: int, instances: int = 1) -> None:
            options = LoadOptions(
                certificates=certificates,
                recipients=recipients,
                schedule=Schedule.closed(certificates, INTAKE_CONCURRENCY),
                instances=instances,
                **common,
            )
            runs.append((name, functools.partial(stamp_run, server_dsn, name, options, note)))

        closed(f"{plan.certificates} over {plan.recipients}", plan.certificates, plan.recipients)
        batch_options = batch_run_options(plan, common)
        runs.append(
            (
                "batches",
                functools.partial(stamp_run, server_dsn, batch_run_name(plan), batch_options, note),
            )
        )

        async def open_arrivals(rate: float, seconds: float, what: str) -> dict[str, Any]:
            count = int(rate * seconds)
            name = f"{rate:g}/s for {seconds:g} s over {plan.recipients} ({what})"
            options = LoadOptions(
                certificates=count,
                recipients=plan.recipients,
                schedule=Schedule.constant(rate, count),
                **common,
            )
            return await stamp_run(server_dsn, name, options, note)

        async def steady() -> dict[str, Any]:
            # Below saturation: half of what the first run delivered per second, for
            # the accepted→delivered latency of a pipeline that keeps up.
            rate = round(results["stamp"][0]["pipeline"]["delivered_per_second"] * 0.5, 1)
            return await open_arrivals(rate, plan.steady_seconds, "below saturation")

        runs.append(("steady", steady))
        # The intake target as stated: 1,000 arrivals/s (open, not a closed loop that
        # slows down with the server) while the pipeline runs.
        runs.append(
            (
                "open intake",
                functools.partial(open_arrivals, 1000.0, plan.intake_seconds, "intake under load"),
            )
        )
        if plan.wide_recipients:
            closed(
                f"{plan.certificates} over {plan.wide_recipients} (resources at many recipients)",
                plan.certificates,
                plan.wide_recipients,
            )
        if plan.two_instances:
            closed(
                f"{plan.certificates} over {plan.recipients}, two Stamp processes",
                plan.certificates,
                plan.recipients,
                2,
            )
        if plan.full:
            closed("100000 over 10000", 100_000, 10_000)
        for _, run in runs:
            results["stamp"].append(await run())
    # Neighbours on a shared machine move the crypto ceiling: measured again at the
    # end, and the better of the two is the ceiling the ratios use.
    note("crypto ceiling again")
    ceilings["crypto_at_end"] = await asyncio.to_thread(crypto_ceiling, plan.crypto_bundles, True)
    results["ratios"] = ratios(results)
    results["batch_intake"] = batch_figures(results["stamp"][0], results["stamp"][1], plan)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    return results


def common_options(args: argparse.Namespace, postgres_pid: int | None) -> dict[str, Any]:
    """What every Stamp run of one benchmark shares."""
    return {
        "commit_delay": args.commit_delay,
        "proof_sample": args.proof_sample,
        "progress": not args.no_progress,
        "postgres_pid": postgres_pid,
    }


def main_run_options(plan: Plan, common: dict[str, Any], **extra: Any) -> LoadOptions:
    """The main run: the plan's certificates over its recipients, as fast as possible."""
    return LoadOptions(
        certificates=plan.certificates,
        recipients=plan.recipients,
        schedule=Schedule.closed(plan.certificates, INTAKE_CONCURRENCY),
        **common,
        **extra,
    )


def batch_run_name(plan: Plan) -> str:
    return f"{plan.certificates} in batches of {BATCH_SIZE} over {plan.recipients}"


def batch_run_options(plan: Plan, common: dict[str, Any]) -> LoadOptions:
    return LoadOptions(
        certificates=plan.certificates,
        recipients=plan.recipients,
        schedule=Schedule.closed(plan.certificates, plan.batch_concurrency),
        batch=BATCH_SIZE,
        **common,
    )


async def batch_comparison(
    args: argparse.Namespace, plan: Plan, results: dict[str, Any], note: Callable[[str], None]
) -> dict[str, Any]:
    """Only the two runs batch intake is judged by: the single route, then batches, on
    one database server, one after the other (a shared machine moves both alike)."""
    async with postgres(args.database_url) as (server_dsn, postgres_pid):
        common = common_options(args, postgres_pid)
        single = main_run_options(plan, common)
        name = f"{plan.certificates} over {plan.recipients}"
        results["stamp"].append(await stamp_run(server_dsn, name, single, note))
        batched = batch_run_options(plan, common)
        results["stamp"].append(await stamp_run(server_dsn, batch_run_name(plan), batched, note))
    results["batch_intake"] = batch_figures(results["stamp"][0], results["stamp"][1], plan)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    return results


async def libsodium_ratio(
    args: argparse.Namespace, plan: Plan, results: dict[str, Any], note: Callable[[str], None]
) -> dict[str, Any]:
    """The main run with Stamp on the libsodium backend, between two measurements of the
    libsodium crypto ceiling: how close the pipeline comes to its crypto there."""
    ceilings = results["ceilings"]
    note(f"libsodium crypto ceiling: {plan.crypto_bundles} bundles on {os.cpu_count()} cores")
    ceilings["crypto"] = await asyncio.to_thread(crypto_ceiling, plan.crypto_bundles, True, "sodium")
    async with postgres(args.database_url) as (server_dsn, postgres_pid):
        options = main_run_options(
            plan, common_options(args, postgres_pid), stamp_env={backend.ENV_VAR: "sodium"}
        )
        name = f"{plan.certificates} over {plan.recipients}, Stamp on libsodium"
        results["stamp"].append(await stamp_run(server_dsn, name, options, note))
    note("libsodium crypto ceiling again")
    ceilings["crypto_at_end"] = await asyncio.to_thread(crypto_ceiling, plan.crypto_bundles, True, "sodium")
    run = results["stamp"][0]
    ceiling = crypto_ceiling_per_second(ceilings)
    results["libsodium"] = {
        "crypto_ceiling_per_second": ceiling,
        "delivered_per_second": run["pipeline"]["delivered_per_second"],
        "delivered_per_crypto_ceiling": run["pipeline"]["delivered_per_second"] / ceiling,
        "cpu_seconds_per_certificate": run["resources"]["cpu_seconds_per_certificate"],
        "invariants_ok": bool(run["invariants"]["ok"]),
    }
    results["machine"]["load_average_end"] = list(os.getloadavg())
    return results


def libsodium_markdown(results: dict[str, Any]) -> str:
    c, figures = results["ceilings"], results["libsodium"]
    run = results["stamp"][0]
    per = ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in figures["cpu_seconds_per_certificate"].items())
    return (
        "\n".join(
            [
                f"{run['name']} ({results['started_at']}):",
                "",
                "| libsodium crypto ceiling, start / end | delivered/s | delivered / better ceiling "
                "| invariants |",
                "| --- | --- | --- | --- |",
                f"| {c['crypto']['per_second']:.1f} / {c['crypto_at_end']['per_second']:.1f} "
                f"| {figures['delivered_per_second']:.1f} | {figures['delivered_per_crypto_ceiling']:.2f} "
                f"| {'ok' if figures['invariants_ok'] else 'FAILED'} |",
                "",
                f"CPU per certificate: {per}.",
            ]
        )
        + "\n"
    )


def batch_figures(single: dict[str, Any], batched: dict[str, Any], plan: Plan) -> dict[str, Any]:
    single_rate = single["intake"]["accepted_per_second"]
    batch_rate = batched["intake"]["accepted_per_second"]
    p99 = batched["intake"]["batches"]["latency_seconds"]["p99"]
    return {
        "batch_size": BATCH_SIZE,
        "batches_in_flight": plan.batch_concurrency,
        "single_accepted_per_second": single_rate,
        "batch_accepted_per_second": batch_rate,
        "batch_per_single": batch_rate / single_rate if single_rate else None,
        "batch_latency_seconds": batched["intake"]["batches"]["latency_seconds"],
        "meets_intake_target": batch_rate >= BATCH_TARGET_PER_SECOND,
        "meets_latency_target": p99 is not None and p99 < BATCH_TARGET_P99_SECONDS,
        "invariants_ok": bool(single["invariants"]["ok"] and batched["invariants"]["ok"]),
    }


def batch_markdown(results: dict[str, Any]) -> str:
    b = results["batch_intake"]
    lat = b["batch_latency_seconds"]
    ratio = "–" if b["batch_per_single"] is None else f"{b['batch_per_single']:.1f}×"
    return (
        "\n".join(
            [
                f"Batch intake ({b['batch_size']} per request, {b['batches_in_flight']} in flight), "
                "against the single route in the same run:",
                "",
                "| single route accepted/s | batch accepted/s | batch / single | batch p50 / p99 / max ms "
                f"| ≥ {BATCH_TARGET_PER_SECOND}/s | p99 < {BATCH_TARGET_P99_SECONDS:g} s | invariants |",
                "| --- | --- | --- | --- | --- | --- | --- |",
                f"| {b['single_accepted_per_second']:.0f} | {b['batch_accepted_per_second']:.0f} | {ratio} "
                f"| {_ms(lat['p50'])} / {_ms(lat['p99'])} / {_ms(lat['max'])} "
                f"| {'yes' if b['meets_intake_target'] else 'no'} "
                f"| {'yes' if b['meets_latency_target'] else 'no'} "
                f"| {'ok' if b['invariants_ok'] else 'FAILED'} |",
            ]
        )
        + "\n"
    )


def crypto_ceiling_per_second(ceilings: dict[str, Any]) -> float:
    at_end = ceilings.get("crypto_at_end", {}).get("per_second", 0.0)
    return float(max(ceilings["crypto"]["per_second"], at_end))


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    ceilings = results["ceilings"]
    crypto = crypto_ceiling_per_second(ceilings)
    out = []
    for run in results["stamp"]:
        delivered = run["pipeline"]["delivered_per_second"]
        accepted = run["intake"]["accepted_per_second"]
        out.append(
            {
                "run": run["name"],
                "delivered_per_crypto_ceiling": delivered / crypto,
                "delivered_per_database_ceiling": delivered / ceilings["database"]["certificates_per_second"],
                "accepted_per_http_ceiling": accepted / ceilings["http"]["per_second"],
            }
        )
    return out


# --- markdown -----------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f}"


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(results: dict[str, Any]) -> str:
    m, c = results["machine"], results["ceilings"]
    loads = [", ".join(f"{x:.2f}" for x in m[k]) for k in ("load_average_start", "load_average_end")]
    sample = results["proof_sample"]
    proofs = "every range proof" if sample == 1 else f"1 range proof in {sample}"
    db, db_single, http = c["database"], c["database_one_by_one"], c["http"]
    lines = [
        f"### Results of `{results['command']}` ({results['started_at']})",
        "",
        f"Machine: {m['cpus']} cores ({m['cpu_model']}), {m['memory_bytes'] / 2**30:.0f} GiB, "
        f"Python {m['python']}, {m['system']}; load average at start {loads[0]}, at end {loads[1]}.",
        f"Registry simulator commit delay {results['commit_delay_seconds']:g} s; it verifies {proofs}.",
        "",
        "| Ceiling | Figure |",
        "| --- | --- |",
        f"| Crypto: full bundles/s on {c['crypto']['workers']} cores, self-verification on (the default); "
        f"at the start / at the end | {c['crypto']['per_second']:.1f} / "
        f"{c.get('crypto_at_end', {}).get('per_second', 0.0):.1f} |",
        "| Crypto: the same without the self-verification "
        f"| {c['crypto_without_self_verification']['per_second']:.1f} |",
        f"| Database: Stamp's statements/s through the group commit, {db['concurrency']} certificates "
        f"in flight (as now) | {db['statements_per_second']:.0f} "
        f"(= {db['certificates_per_second']:.0f} certificate lifecycles/s) |",
        f"| Database: the same one statement per round trip at concurrency {db_single['concurrency']} "
        f"| {db_single['statements_per_second']:.0f} "
        f"(= {db_single['certificates_per_second']:.0f} lifecycles/s) |",
        f"| HTTP intake: trivial aiohttp handler, 202/s at concurrency {http['concurrency']} "
        f"| {http['per_second']:.0f} (p99 {_ms(http['latency_seconds']['p99'])} ms) |",
        "",
        "| Stamp run | accepted/s | 202 p50 / p95 / p99 ms (p99 in Stamp) | delivered/s "
        "| accepted→delivered p50 / p95 / p99 s | peak RSS MB (crypto workers) | peak threads "
        "| peak actors | loop lag p99 ms | DB commits/cert | hand-offs/cert | DB round trips/cert "
        "| invariants |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in results["stamp"]:
        i, p, r = run["intake"], run["pipeline"], run["resources"]
        lat, e2e = i["latency_seconds"], p["end_to_end_seconds"]
        rss = (r["peak_rss_bytes"] or 0) / 2**20
        workers = (r.get("peak_crypto_workers_rss_bytes") or 0) / 2**20
        commits = "–" if r["db_commits_per_certificate"] is None else f"{r['db_commits_per_certificate']:.1f}"
        verdict = "ok" if run["invariants"]["ok"] else "FAILED"
        handoffs, trips = r.get("actor_handoffs_per_delivered"), r.get("db_round_trips_per_certificate")
        lines.append(
            f"| {run['name']} | {i['accepted_per_second']:.0f} "
            f"| {_ms(lat['p50'])} / {_ms(lat['p95'])} / {_ms(lat['p99'])} "
            f"({_ms(i.get('server_latency_p99_seconds'))}) | {p['delivered_per_second']:.1f} "
            f"| {_s(e2e['p50'])} / {_s(e2e['p95'])} / {_s(e2e['p99'])} | {rss:.0f} ({workers:.0f}) "
            f"| {r['peak_threads']} | {r['peak_live_actors']} | {_ms(r['event_loop_lag_p99_seconds'])} "
            f"| {commits} | {'–' if handoffs is None else f'{handoffs:.1f}'} "
            f"| {'–' if trips is None else f'{trips:.1f}'} | {verdict} |"
        )
    lines += [
        "",
        f"Ratios against the better crypto ceiling ({crypto_ceiling_per_second(c):.1f}/s):",
        "",
        "| Stamp run | delivered / crypto ceiling | delivered / DB ceiling | accepted / HTTP ceiling |",
        "| --- | --- | --- | --- |",
    ]
    for ratio in results["ratios"]:
        lines.append(
            f"| {ratio['run']} | {ratio['delivered_per_crypto_ceiling']:.0%} | "
            f"{ratio['delivered_per_database_ceiling']:.0%} | {ratio['accepted_per_http_ceiling']:.0%} |"
        )
    lines += ["", "CPU seconds per certificate (each process with its children):", ""]
    for run in results["stamp"]:
        per = run["resources"]["cpu_seconds_per_certificate"]
        lines.append(f"- {run['name']}: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in per.items()))
    if "batch_intake" in results:
        lines += ["", batch_markdown(results)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs (2,000 certificates over 200)")
    parser.add_argument("--full", action="store_true", help="add 100,000 certificates over 10,000 recipients")
    parser.add_argument(
        "--no-two-instances", action="store_true", help="skip the run with two Stamp processes"
    )
    parser.add_argument(
        "--batch-only",
        action="store_true",
        help="only the single route and batch intake runs, without the ceilings and the other runs",
    )
    parser.add_argument(
        "--libsodium-only",
        action="store_true",
        help="only the main run with Stamp on the libsodium backend, between two libsodium crypto ceilings",
    )
    parser.add_argument(
        "-n", "--certificates", type=int, help="certificates of the main run (default 10,000)"
    )
    parser.add_argument("--recipients", type=int, help="recipients of the main runs (default 1,000)")
    parser.add_argument(
        "--batch-concurrency",
        type=int,
        default=BATCH_CONCURRENCY,
        help=f"batches of {BATCH_SIZE} in flight in the batch intake run (default {BATCH_CONCURRENCY})",
    )
    parser.add_argument("--commit-delay", type=float, default=0.2, help="registry commit delay, s (0.2)")
    parser.add_argument(
        "--proof-sample", type=int, default=10, help="the registry simulator verifies 1 range proof in N (10)"
    )
    parser.add_argument("--database-url", help="a PostgreSQL server (maintenance DSN); default: embedded")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the results as a Markdown section here")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--serve-trivial", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_trivial:
        asyncio.run(serve_trivial())
        return 0
    quick = args.quick
    plan = Plan(
        crypto_bundles=150 if quick else 400,
        db_certificates=1000 if quick else 3000,
        http_requests=3000 if quick else 10_000,
        certificates=args.certificates or (2000 if quick else 10_000),
        recipients=args.recipients or (200 if quick else 1000),
        steady_seconds=30 if quick else 60,
        intake_seconds=3 if quick else 5,
        wide_recipients=0 if quick else 10_000,
        full=args.full,
        two_instances=not args.no_two_instances,
        batch_only=args.batch_only,
        libsodium_only=args.libsodium_only,
        batch_concurrency=max(1, args.batch_concurrency),
    )
    quiet_logs()
    results = asyncio.run(bench(args, plan))
    if plan.batch_only:
        text = batch_markdown(results)
    elif plan.libsodium_only:
        text = libsodium_markdown(results)
    else:
        text = markdown(results)
    print(text)
    if args.json:
        args.json.write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0 if all(run["invariants"]["ok"] for run in results["stamp"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
