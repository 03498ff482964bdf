"""``stamp loadtest``: drive Stamp with certificates and measure it.

By default it starts a local stack — PostgreSQL (embedded, or a fresh database on the
server ``--database-url`` names), the registry and wallet simulators in a child process, and one
or more Stamp processes (``stamp serve``) — or it targets a running Stamp
(``--target``, repeatable) and ``stamp devstack``'s wallet (``--wallet``). It creates
the recipients in the wallet simulator and in Stamp, posts the certificates (a fixed
total as fast as possible, or an open arrival rate, constant or stepped), shows a live
progress bar read from Stamp's ``/metrics``, waits for the backlog to drain and
reports intake, end-to-end figures, resources and the invariant check: no duplicate
positions, every certificate verified by the wallet simulator, nothing lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import psutil
import structlog

from stamp.load import scrape as metrics_scrape
from stamp.load.driver import (
    BatchOutcome,
    CertificateFactory,
    Outcome,
    Schedule,
    create_recipients,
    drive,
    drive_batches,
)
from stamp.load.report import machine, missing_fields, percentiles, render
from stamp.load.stack import (
    LocalStack,
    ProcessSampler,
    StackOptions,
    cpu_seconds,
    local_stack,
    own_cpu_seconds,
)
from stamp.progress import ProgressBar

TERMINAL = ("delivered", "withheld", "rejected", "failed")
SCRAPE_SECONDS = 1.0
# What the monitor reads every second: the progress counters and the peaks. Peaks are
# sampled once a second, so a peak shorter than that can be missed; a scrape costs
# Stamp about 2 ms of CPU (0.07 ms per certificate at 30/s), too little to sample less.
MONITORED = frozenset(
    {
        "stamp_certificates_issued_total",
        "stamp_certificates_rejected_total",
        "stamp_certificates_failed_total",
        "process_resident_memory_bytes",
        "stamp_process_threads",
        "stamp_live_actors",
        "stamp_mailbox_depth",
    }
)


@dataclass(frozen=True, slots=True)
class LoadOptions:
    certificates: int = 1000
    recipients: int = 100
    schedule: Schedule = field(default_factory=lambda: Schedule.closed(1000, 64))
    targets: tuple[str, ...] = ()
    wallet_url: str | None = None
    database_url: str | None = None
    instances: int = 1
    commit_delay: float = 0.2
    proof_sample: int = 1
    stamp_env: dict[str, str] = field(default_factory=dict)
    drain_timeout: float = 900.0
    work_dir: Path | None = None
    progress: bool = True
    postgres_pid: int | None = None  # a given server's postmaster: its CPU time is reported
    # Certificates per POST /v1/certificates/batch (0: one per POST /v1/certificates);
    # then ``schedule.concurrency`` counts batches in flight.
    batch: int = 0


# --- CLI -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    load = parser.add_argument_group("load")
    load.add_argument(
        "-n", "--certificates", type=int, default=1000, help="certificates to post (default 1000)"
    )
    load.add_argument(
        "-r", "--recipients", type=int, default=100, help="recipients to spread them over (100)"
    )
    load.add_argument(
        "--rate", type=float, help="open arrivals at this many certificates/s (default: as fast as possible)"
    )
    load.add_argument(
        "--steps",
        metavar="RATExSECONDS,…",
        help="stepped open arrivals, e.g. 20x60,40x60,80x60 (overrides -n and --rate)",
    )
    load.add_argument(
        "-c",
        "--concurrency",
        type=int,
        help="requests in flight when as fast as possible (64; with --batch: batches in flight, 2)",
    )
    load.add_argument(
        "--batch",
        type=int,
        default=0,
        metavar="N",
        help="post N certificates per request to POST /v1/certificates/batch (as fast as possible only)",
    )
    where = parser.add_argument_group("where Stamp runs (default: a local stack started here)")
    where.add_argument(
        "--target", action="append", default=[], metavar="URL", help="a running Stamp (repeatable)"
    )
    where.add_argument("--wallet", metavar="URL", help="the running wallet simulator (with --target)")
    where.add_argument(
        "--database-url",
        metavar="DSN",
        help="a PostgreSQL server for the local stack, which runs on a fresh database of its own there, "
        "dropped afterwards (default: an embedded PostgreSQL); with --target, Stamp's database, read for "
        "the position check and the commit count",
    )
    where.add_argument("--instances", type=int, default=1, help="Stamp processes of the local stack (1)")
    where.add_argument(
        "--commit-delay", type=float, default=0.2, help="registry simulator commit delay, s (0.2)"
    )
    where.add_argument(
        "--proof-sample", type=int, default=1, help="the registry simulator verifies 1 range proof in N (1)"
    )
    where.add_argument(
        "--stamp-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the local Stamp processes, e.g. STAMP_MAX_IN_FLIGHT=1024",
    )
    where.add_argument("--work-dir", type=Path, help="keep logs and the database here (default: temporary)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write the report as JSON to PATH ('-' for stdout)")
    out.add_argument(
        "--drain-timeout", type=float, default=900.0, help="give up when nothing finishes for this long (s)"
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from_args(args: argparse.Namespace) -> LoadOptions:
    if args.steps:
        steps = []
        for item in args.steps.split(","):
            rate, _, seconds = item.strip().partition("x")
            steps.append((float(rate), float(seconds)))
        schedule = Schedule.stepped(steps)
    elif args.rate:
        schedule = Schedule.constant(args.rate, args.certificates)
    else:
        default_concurrency = 2 if args.batch else 64
        schedule = Schedule.closed(args.certificates, args.concurrency or default_concurrency)
    if args.batch and schedule.open:
        raise SystemExit(
            "stamp loadtest: --batch posts as fast as possible; it does not take --rate or --steps"
        )
    if args.batch < 0:
        raise SystemExit("stamp loadtest: --batch must be a positive number of certificates")
    if args.target and not args.wallet:
        raise SystemExit("stamp loadtest: --target needs --wallet (the wallet simulator's URL)")
    stamp_env = {}
    for item in args.stamp_env:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"stamp loadtest: --stamp-env {item!r}: expected NAME=VALUE")
        stamp_env[name] = value
    return LoadOptions(
        certificates=schedule.total,
        recipients=max(1, args.recipients),
        schedule=schedule,
        targets=tuple(args.target),
        wallet_url=args.wallet,
        database_url=args.database_url,
        instances=max(1, args.instances),
        commit_delay=args.commit_delay,
        proof_sample=max(1, args.proof_sample),
        stamp_env=stamp_env,
        drain_timeout=args.drain_timeout,
        work_dir=args.work_dir,
        progress=not args.no_progress,
        batch=args.batch,
    )


def cmd_loadtest(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    quiet_logs()
    # A SIGTERM (a CI job's timeout, `kill`) takes the Ctrl-C path: asyncio.run cancels the
    # run, so the stack stops its Stamp processes and drops its database instead of
    # leaving them behind.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: signal.raise_signal(signal.SIGINT))
    try:
        report = asyncio.run(run_loadtest(options))
    except KeyboardInterrupt:
        print("loadtest: interrupted; the local stack was stopped and its database dropped", file=sys.stderr)
        return 130
    print(render(report), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json:
        text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0 if report["invariants"]["ok"] else 1


def quiet_logs() -> None:
    """The driver's own log lines (embedded PostgreSQL start-up) would break the
    progress bar: errors only, to stderr. Stamp's processes log to their own files."""
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


# --- the run ----------------------------------------------------------------------------


async def run_loadtest(options: LoadOptions) -> dict[str, Any]:
    """Run one load test and return its report (``report.REPORT_FIELDS``)."""
    if options.targets:
        assert options.wallet_url is not None
        return await _measure(options, list(options.targets), options.wallet_url, options.database_url, None)
    stack_options = StackOptions(
        instances=options.instances,
        database_url=options.database_url,
        commit_delay=options.commit_delay,
        proof_sample=options.proof_sample,
        stamp_env=options.stamp_env,
        work_dir=options.work_dir,
        postgres_pid=options.postgres_pid,
    )
    _say(options, "starting PostgreSQL, the simulators and Stamp …")
    async with local_stack(stack_options) as stack:
        return await _measure(options, stack.targets, stack.wallet_url, stack.dsn, stack)


def _say(options: LoadOptions, text: str) -> None:
    if options.progress:
        print(text, file=sys.stderr, flush=True)


@dataclass
class LiveFigures:
    """What the monitor saw during the run."""

    baseline: metrics_scrape.Scrape
    latest: metrics_scrape.Scrape
    peak_rss: float = 0.0
    peak_threads: float = 0.0
    peak_actors: float = 0.0
    peak_actors_by_kind: dict[str, float] = field(default_factory=dict)
    peak_workers_rss: float = 0.0
    peak_mailbox: float = 0.0

    def finished(self) -> dict[str, int]:
        def delta(name: str) -> int:
            return int(self.latest.total(name) - self.baseline.total(name))

        return {
            "delivered": delta("stamp_certificates_issued_total"),
            "rejected": delta("stamp_certificates_rejected_total"),
            "failed": delta("stamp_certificates_failed_total"),
        }


async def _scrape_all(
    http: aiohttp.ClientSession, targets: list[str], only: frozenset[str] | None = None
) -> list[metrics_scrape.Scrape]:
    return list(await asyncio.gather(*(metrics_scrape.scrape(http, t, only) for t in targets)))


async def _commits(dsn: str | None) -> int | None:
    if dsn is None:
        return None
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(value)
    finally:
        await conn.close()


async def _measure(
    options: LoadOptions, targets: list[str], wallet_url: str, dsn: str | None, stack: LocalStack | None
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=max(256, options.schedule.concurrency), force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        _say(options, f"creating {options.recipients} recipients …")
        recipient_ids = await create_recipients(http, wallet_url, targets[0], options.recipients)
        factory = CertificateFactory(recipient_ids)
        host = machine()
        baseline_scrapes = await _scrape_all(http, targets)
        baseline = metrics_scrape.merge(baseline_scrapes)
        commits_before = await _commits(dsn)
        cpu_before = _cpu(stack)
        live = LiveFigures(baseline, baseline)
        accepted: dict[str, Outcome] = {}
        counts = {"sent": 0, "refused": 0}

        def on_outcome(outcome: Outcome) -> None:
            counts["sent"] += 1
            if outcome.status == 202:
                accepted[outcome.certificate_id] = outcome
            else:
                counts["refused"] += 1

        bar = ProgressBar(options.schedule.total) if options.progress else None
        monitor = asyncio.create_task(_monitor(http, targets, stack, live, bar, accepted, counts))
        _say(options, f"posting: {options.schedule.describe()}")
        started_wall, started = time.time(), time.monotonic()
        try:
            batches: list[BatchOutcome] | None = None
            if options.batch:
                outcomes, batches = await drive_batches(
                    http,
                    targets,
                    options.schedule.total,
                    options.batch,
                    options.schedule.concurrency,
                    factory.body,
                    on_outcome,
                )
            else:
                outcomes = await drive(http, targets, options.schedule, factory.body, on_outcome)
            intake_seconds = time.monotonic() - started
            await _drain(live, accepted, options.drain_timeout)
            wallet = await _wallet_slices(http, wallet_url, set(accepted))
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            if bar is not None:
                bar.close()
        final = metrics_scrape.merge(await _scrape_all(http, targets))
        live.latest = final
        cpu_after = _cpu(stack)
        registry = await stack.registry_report() if stack is not None else None
        if stack is not None:
            await stack.stop_stamps()  # their sessions end: every commit is in the statistics
        elif dsn is not None:
            await asyncio.sleep(11)  # idle backends report their commits within 10 s
        commits_after = await _commits(dsn)
        database = await _database_check(dsn, list(accepted), recipient_ids) if dsn else None

    return build_report(
        options=options,
        host=host,
        outcomes=outcomes,
        accepted=accepted,
        refused=counts["refused"],
        intake_seconds=intake_seconds,
        started_wall=started_wall,
        live=live,
        wallet=wallet,
        database=database,
        commits=None if commits_before is None or commits_after is None else commits_after - commits_before,
        cpu={k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after},
        registry=registry,
        lag_buckets=metrics_scrape.bucket_delta(baseline, final, "stamp_event_loop_lag_seconds"),
        counters={
            name: final.total(f"stamp_{name}_total") - baseline.total(f"stamp_{name}_total")
            for name in ("actor_handoffs", "db_round_trips")
            if any(n == f"stamp_{name}_total" for n, _ in final.samples)
        },
        intake_buckets=metrics_scrape.bucket_delta(
            baseline,
            final,
            "stamp_http_request_duration_seconds",
            method="POST",
            route="/v1/certificates/batch" if options.batch else "/v1/certificates",
            status="200" if options.batch else "202",
        ),
        batches=batches,
    )


def _cpu(stack: LocalStack | None) -> dict[str, float]:
    own = psutil.Process().cpu_times()
    out = {"loadtest": own.user + own.system}  # the driver alone, without its children
    if stack is None:
        return out
    # Stamp's own process (loop, actors, gRPC) apart from its crypto workers.
    total = sum(cpu_seconds(pid) for pid in stack.stamp_pids)
    out["stamp"] = sum(own_cpu_seconds(pid) for pid in stack.stamp_pids)
    out["stamp_crypto_workers"] = total - out["stamp"]
    out["simulators"] = cpu_seconds(stack.simulators_pid)
    if stack.postgres_pid is not None:
        out["postgres"] = cpu_seconds(stack.postgres_pid)
    return out


async def _monitor(
    http: aiohttp.ClientSession,
    targets: list[str],
    stack: LocalStack | None,
    live: LiveFigures,
    bar: ProgressBar | None,
    accepted: dict[str, Outcome],
    counts: dict[str, int],
) -> None:
    samplers = [ProcessSampler(pid) for pid in stack.stamp_pids] if stack is not None else []
    while True:
        await asyncio.sleep(SCRAPE_SECONDS)
        try:
            scrapes = await _scrape_all(http, targets, MONITORED)
        except (aiohttp.ClientError, TimeoutError):
            continue
        live.latest = metrics_scrape.merge(scrapes)
        for one in scrapes:
            live.peak_rss = max(live.peak_rss, one.total("process_resident_memory_bytes"))
            live.peak_threads = max(live.peak_threads, one.total("stamp_process_threads"))
        actors = live.latest.by_label("stamp_live_actors", "kind")
        live.peak_actors = max(live.peak_actors, sum(actors.values()))
        for kind, count in actors.items():
            live.peak_actors_by_kind[kind] = max(live.peak_actors_by_kind.get(kind, 0.0), count)
        live.peak_mailbox = max(live.peak_mailbox, live.latest.total("stamp_mailbox_depth"))
        for sampler in samplers:
            sample = sampler.sample()
            if sample is not None:
                live.peak_rss = max(live.peak_rss, sample.rss_bytes)
                live.peak_threads = max(live.peak_threads, sample.threads)
                live.peak_workers_rss = max(live.peak_workers_rss, sample.children_rss_bytes)
        if bar is not None:
            finished = live.finished()
            done = sum(finished.values())
            figures = {"accepted": len(accepted), **finished, "in flight": len(accepted) - done}
            if counts["refused"]:
                figures["refused"] = counts["refused"]
            bar.update(done, figures)


async def _drain(live: LiveFigures, accepted: dict[str, Outcome], patience: float) -> None:
    """Until every accepted certificate finished, or nothing finished for ``patience`` s."""
    last_done, last_progress = -1, time.monotonic()
    while True:
        done = sum(live.finished().values())
        if done >= len(accepted):
            return
        if done != last_done:
            last_done, last_progress = done, time.monotonic()
        elif time.monotonic() - last_progress > patience:
            return
        await asyncio.sleep(SCRAPE_SECONDS)


async def _wallet_slices(http: aiohttp.ClientSession, wallet_url: str, ours: set[str]) -> dict[str, Any]:
    """The wallet simulator's view of this run's certificates, once it has finished
    verifying them."""
    base = wallet_url.rstrip("/")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with http.get(f"{base}/v1/_test/slices", params={"summary": "true"}) as response:
            summary = await response.json()
        if summary["pendingCount"] == 0:
            break
        await asyncio.sleep(0.5)
    async with http.get(f"{base}/v1/_test/slices") as response:
        snapshot: dict[str, Any] = orjson.loads(await response.read())

    def mine(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [s for s in items if s.get("certificateId") in ours]

    return {
        "verified": mine(snapshot["verified"]),
        "invalid": mine(snapshot["invalid"]),
        "pending": mine(snapshot["pending"]),
        "duplicates": mine(snapshot["duplicates"]),
        "early": mine(snapshot["earlyDeliveries"]),
        "reused_positions": [
            p for p in snapshot["reusedPositions"] if any(c in ours for c in p["certificateIds"])
        ],
    }


async def _database_check(dsn: str, ids: list[str], recipient_ids: list[str]) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        states: dict[str, int] = {}
        chunk = 20_000
        for i in range(0, len(ids), chunk):
            rows = await conn.fetch(
                "SELECT state, count(*) AS n FROM certificates WHERE id = ANY($1::uuid[]) GROUP BY state",
                ids[i : i + chunk],
            )
            for row in rows:
                states[row["state"]] = states.get(row["state"], 0) + row["n"]
        positions = await conn.fetch(
            "SELECT recipient_id, count(position) AS n, count(DISTINCT position) AS distinct_n, "
            "min(position) AS lo, max(position) AS hi FROM certificates "
            "WHERE recipient_id = ANY($1::uuid[]) AND position IS NOT NULL GROUP BY recipient_id",
            recipient_ids,
        )
    finally:
        await conn.close()
    duplicates = sum(r["n"] - r["distinct_n"] for r in positions)
    gaps = sum(1 for r in positions if r["lo"] != 1 or r["hi"] - r["lo"] + 1 != r["n"])
    return {"states": states, "duplicate_positions": duplicates, "recipients_with_gaps": gaps}


def build_report(
    *,
    options: LoadOptions,
    host: dict[str, Any],
    outcomes: list[Outcome],
    accepted: dict[str, Outcome],
    refused: int,
    intake_seconds: float,
    started_wall: float,
    live: LiveFigures,
    wallet: dict[str, Any],
    database: dict[str, Any] | None,
    commits: int | None,
    cpu: dict[str, float],
    registry: dict[str, Any] | None,
    lag_buckets: dict[float, float],
    intake_buckets: dict[float, float] | None = None,
    counters: dict[str, float] | None = None,
    batches: list[BatchOutcome] | None = None,
) -> dict[str, Any]:
    finished = live.finished()
    received = {s["certificateId"]: s["receivedAt"] for s in wallet["verified"] + wallet["invalid"]}
    end_to_end = [
        max(0.0, received[cid] - outcome.answered_at) for cid, outcome in accepted.items() if cid in received
    ]
    last_delivery = max(received.values(), default=started_wall)
    pipeline_seconds = max(1e-9, last_delivery - started_wall)
    delivered = finished["delivered"]
    latencies = [o.latency for o in outcomes if o.status == 202]
    verified = {s["certificateId"] for s in wallet["verified"]}

    problems: list[str] = []
    duplicate_positions = len(wallet["reused_positions"])
    gapless = True
    if database is not None:
        duplicate_positions += database["duplicate_positions"]
        gapless = database["recipients_with_gaps"] == 0
        terminal = sum(database["states"].get(s, 0) for s in TERMINAL)
        lost = len(accepted) - terminal
    else:
        lost = len(accepted) - sum(finished.values())
    if duplicate_positions:
        problems.append(f"{duplicate_positions} duplicate positions")
    if not gapless:
        problems.append(f"{database and database['recipients_with_gaps']} recipients with gaps in positions")
    unverified = len(set(accepted) - verified)
    if unverified:
        problems.append(f"{unverified} accepted certificates not verified by the wallet simulator")
    if lost:
        problems.append(f"{lost} accepted certificates not finished (lost or stuck)")
    for name in ("invalid", "duplicates", "early"):
        if wallet[name]:
            problems.append(f"wallet simulator flagged {len(wallet[name])} {name}")
    all_verified = unverified == 0 and not wallet["invalid"]
    lag_p99 = metrics_scrape.histogram_quantile(0.99, lag_buckets)
    schedule = options.schedule
    return {
        "run": {
            "certificates": schedule.total,
            "recipients": options.recipients,
            "schedule": schedule.describe(),
            "arrival": "open" if schedule.open else "closed",
            "steps": [list(s) for s in schedule.steps],
            "concurrency": None if schedule.open else schedule.concurrency,
            "instances": len(options.targets) or options.instances,
            "targets": list(options.targets) or "local",
            "commit_delay_seconds": options.commit_delay if not options.targets else None,
            "proof_sample": options.proof_sample if not options.targets else None,
            "stamp_env": options.stamp_env,
            "started_at": started_wall,
        },
        "machine": {**host, "load_average_end": list(os.getloadavg())},
        "intake": {
            "sent": len(outcomes),
            "accepted": len(accepted),
            "refused": refused,
            "refused_by_status": _by_status(outcomes),
            "seconds": intake_seconds,
            "accepted_per_second": len(accepted) / intake_seconds if intake_seconds else 0.0,
            "latency_seconds": percentiles(latencies),
            # As Stamp measured it, from the request's arrival in its handler chain to
            # the answer: the rest of the client's figure is waiting for a CPU or for
            # the event loop to read the request.
            "server_latency_p99_seconds": metrics_scrape.histogram_quantile(0.99, intake_buckets or {}),
            # With --batch: each POST /v1/certificates/batch (an item's latency is its batch's).
            "batches": None
            if batches is None
            else {
                "size": options.batch,
                "sent": len(batches),
                "by_status": {
                    str(b): sum(1 for x in batches if x.status == b) for b in {x.status for x in batches}
                },
                "latency_seconds": percentiles([b.latency for b in batches if b.status == 200]),
            },
        },
        "pipeline": {
            "delivered": delivered,
            "rejected": finished["rejected"],
            "failed": finished["failed"],
            "seconds": pipeline_seconds,
            "delivered_per_second": delivered / pipeline_seconds,
            "end_to_end_seconds": percentiles(end_to_end),
        },
        "resources": {
            "peak_rss_bytes": live.peak_rss or None,
            "peak_crypto_workers_rss_bytes": live.peak_workers_rss or None,
            "peak_threads": int(live.peak_threads) or None,
            "peak_live_actors": int(live.peak_actors),
            "peak_live_actors_by_kind": {k: int(v) for k, v in sorted(live.peak_actors_by_kind.items())},
            "peak_mailbox_depth": int(live.peak_mailbox),
            "event_loop_lag_p99_seconds": lag_p99,
            # From Stamp's own counters (absent on a Stamp that does not count them).
            "actor_handoffs_per_delivered": _per(counters, "actor_handoffs", delivered),
            "db_round_trips_per_certificate": _per(counters, "db_round_trips", len(accepted)),
            "db_commits": commits,
            "db_commits_per_certificate": commits / len(accepted)
            if commits is not None and accepted
            else None,
            "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
            "cpu_seconds_per_certificate": {
                k: round(v / len(accepted), 5) for k, v in cpu.items() if accepted
            },
        },
        "invariants": {
            "no_duplicate_positions": duplicate_positions == 0,
            "gapless_positions": gapless,
            "all_verified_by_wallet": all_verified,
            "nothing_lost": lost == 0,
            "ok": not problems,
            "problems": problems,
            "wallet_verified": len(verified),
            "database_states": database["states"] if database else None,
        },
        "registry": registry,
    }


def _by_status(outcomes: list[Outcome]) -> dict[str, int]:
    out: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.status != 202:
            out[str(outcome.status)] = out.get(str(outcome.status), 0) + 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stamp loadtest", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return cmd_loadtest(args)


__all__ = ["LoadOptions", "add_arguments", "cmd_loadtest", "main", "missing_fields", "run_loadtest"]

if __name__ == "__main__":
    raise SystemExit(main())


def _per(counters: dict[str, float] | None, name: str, count: int) -> float | None:
    if not counters or name not in counters or not count:
        return None
    return counters[name] / count
