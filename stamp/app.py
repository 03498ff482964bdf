"""Assembly of one Stamp process: every resource is set up and torn down in one
``cleanup_ctx`` generator, so start order and reverse stop order follow by
construction (docs/architecture.md).

database → crypto worker processes → registry/wallet clients → actors → HTTP routes
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pykka
import structlog
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource

from actors.bridge import MAX_HOLD_SECONDS, LoopBridge, tell_from_loop
from actors.deps import ActorDeps
from actors.messages import Drain
from actors.registry_gateway import RegistryGateway
from actors.supervisor import Supervisor
from actors.wallet_gateway import WalletGateway
from actors.withdrawal import WithdrawalActor
from stamp import metrics, scheduling
from stamp.admission import Backlog, LiveCounts, RecipientCache
from stamp.api import auth, batch, metrics_http, openapi, withdrawals
from stamp.api import routes as certificate_routes
from stamp.api.problems import problem_middleware
from stamp.api.runtime import RUNTIME, Runtime
from stamp.config import Settings, check_path_base
from stamp.crypto import backend
from stamp.db import queries
from stamp.db import withdrawals as db_withdrawals
from stamp.db.batcher import StatementBatcher
from stamp.db.embedded import EmbeddedPostgres
from stamp.db.migrate import apply_migrations, ensure_current
from stamp.db.pool import create_pool, wait_for_database
from stamp.gateways.registry_client import RegistryClient, RegistryTls
from stamp.gateways.wallet_client import WalletClient
from stamp.workers import WorkerPool

log = structlog.get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
CRYPTO_WORKERS = web.AppKey("crypto_workers", WorkerPool)
REGISTRY_CLIENT = web.AppKey("registry_client", RegistryClient)
WALLET_CLIENT = web.AppKey("wallet_client", WalletClient)

# The Python threads Stamp still starts (the loop's default executor: the metrics
# sampler's walk of the actors, stopping the actors at shutdown) run shallow calls: a
# smaller stack than the default keeps their resident memory low. Actors have no
# threads of their own (their turns run on the event loop).
HELPER_THREAD_STACK_BYTES = 512 * 1024
PR_SET_PDEATHSIG = 1
INTAKE_WRITERS = 8
POOL_SIZE = 24
"""Connections: one writer per pipeline statement kind, the reads, and
``INTAKE_WRITERS`` intake-insert batches, so an intake batch does not wait for one."""
BATCHER_KEEPS = 4
"""Connections the group commit keeps between its batches (of ``POOL_SIZE``): below
saturation one per statement kind being written at the same moment, so a batch costs
no pool checkout (stamp/db/batcher.py)."""
CRYPTO_WORKER_NICENESS = 10
CRYPTO_WORKER_SLICE_SECONDS = scheduling.MIN_SLICE_SECONDS
"""The crypto workers' time slice: the shortest the kernel grants, so that intake's
wake-ups preempt them at once (stamp/scheduling.py)."""


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    embedded: EmbeddedPostgres | None = None
    dsn = settings.database_url
    if dsn is None:
        embedded = EmbeddedPostgres(settings.data_dir / "pg")
        dsn = await asyncio.to_thread(embedded.start)
        log.info("database.embedded_started", data_dir=str(settings.data_dir / "pg"))
    try:
        await wait_for_database(dsn, timeout=30)
        # Named for the instance, so an operator (or a test) can tell in
        # pg_stat_activity which Stamp holds which connection; PostgreSQL keeps 63 bytes.
        application_name = f"stamp:{settings.instance_id}"[:63]
        pool = await create_pool(dsn, min_size=2, max_size=POOL_SIZE, application_name=application_name)
        async with pool.acquire() as conn:
            if settings.auto_migrate:
                applied = await apply_migrations(conn)
                if applied:
                    log.info("database.migrated", versions=applied)
            await ensure_current(conn)
        app[POOL] = pool
        yield
        await pool.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def die_with_parent() -> None:
    """A pool worker must not outlive the process that started it (a SIGKILLed Stamp
    or benchmark): Linux PR_SET_PDEATHSIG; elsewhere workers exit when the pool's
    socket or pipe closes."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() == 1:  # the parent died before the call above took effect
                os._exit(1)


def init_crypto_worker(
    crypto_backend: str = "auto",
    niceness: int = CRYPTO_WORKER_NICENESS,
    slice_seconds: float | None = CRYPTO_WORKER_SLICE_SECONDS,
) -> None:
    """Runs first in each crypto worker process.

    - The worker dies with Stamp (``die_with_parent``).
    - It uses the backend the service chose (the resolved name, so that ``auto`` cannot
      resolve differently in a worker).
    - It runs at a lower priority than Stamp itself: proving saturates every core by
      design, and intake latency and the actors' hand-offs should not queue behind
      it. Throughput is unchanged; the workers still get every idle cycle.
    - It asks for a short time slice, so that whatever wakes up (the loop, a database
      backend) takes the core at once instead of after the worker's slice; where the
      kernel cannot, the worker runs without (stamp/scheduling.py).
    (The benchmark's crypto ceiling passes 0 and no slice: alone on the machine it
    needs no yielding.)"""
    die_with_parent()
    backend.configure(crypto_backend)
    if niceness:
        with contextlib.suppress(OSError):
            os.nice(niceness)
    if slice_seconds is not None:
        scheduling.request_slice(slice_seconds)


def warm_crypto_worker() -> str:
    """Imports, generators and their lookup tables are paid for at start-up, not by the first
    certificates. Returns the worker's backend, which the service checks."""
    from stamp.crypto import rangeproof
    from stamp.crypto.generators import PROJECT_ORIGIN_PEDERSEN

    proof, commitment = rangeproof.prove(1, 1, b"warm-up", PROJECT_ORIGIN_PEDERSEN)
    rangeproof.verify(proof, commitment, b"warm-up", PROJECT_ORIGIN_PEDERSEN)
    return backend.active().name


async def crypto_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    # Proving is CPU-bound and pure: worker processes put it on every core.
    settings = app[SETTINGS]
    selection = backend.configure(settings.crypto_backend)
    log.info(
        "crypto.backend",
        backend=selection.group.name,
        requested=selection.requested,
        fallback_reason=selection.fallback_reason,
    )
    metrics.set_crypto_backend(selection.group.name, selection.requested)
    # Stamp's own pool (stamp/workers.py): answered on the loop, with no manager or
    # feeder thread of ProcessPoolExecutor's.
    workers = WorkerPool(
        settings.crypto_workers,
        asyncio.get_running_loop(),
        initializer=init_crypto_worker,
        initargs=(selection.group.name,),
        warm=warm_crypto_worker,
        expect=selection.group.name,
    )
    try:
        in_workers = await workers.start()
        if set(in_workers) != {selection.group.name}:
            raise RuntimeError(
                f"crypto workers run {sorted(map(str, set(in_workers)))}, not {selection.group.name}"
            )
    except BaseException:
        await workers.close()
        raise
    # Operators see whether the kernel granted the short slice (Linux 6.12 and later).
    granted = [scheduling.current_slice(pid) for pid in workers.pids]
    log.info(
        "crypto.workers",
        count=len(granted),
        short_slice=all(g == CRYPTO_WORKER_SLICE_SECONDS for g in granted),
    )
    app[CRYPTO_WORKERS] = workers
    yield
    await workers.close()


async def clients_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[REGISTRY_CLIENT] = RegistryClient(
        settings.registries,
        call_timeout=settings.registry_call_timeout_seconds,
        tls=RegistryTls.from_files(
            settings.registry_tls_ca_file, settings.registry_tls_cert_file, settings.registry_tls_key_file
        ),
    )
    app[WALLET_CLIENT] = WalletClient(
        timeout=settings.wallet_timeout_seconds,
        limit_per_host=settings.wallet_concurrency_per_host,
        allow=settings.wallet_endpoint_allow,
    )
    yield
    await app[WALLET_CLIENT].close()
    await app[REGISTRY_CLIENT].close()


async def actors_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, pool = app[SETTINGS], app[POOL]
    threading.stack_size(HELPER_THREAD_STACK_BYTES)
    loop = asyncio.get_running_loop()
    # The intake insert is the one statement a client waits for (its 202): several
    # of its batches may be written at once (docs/benchmarks.md, "Actors on shared threads").
    batcher = StatementBatcher(
        pool, loop, writers={queries.INSERT_CERTIFICATE: INTAKE_WRITERS}, keep_connections=BATCHER_KEEPS
    )
    # A renewal of the leases (every third of STAMP_LEASE_SECONDS) held at most a sixth
    # more: renewed before half the lease is gone, whatever the intake.
    max_hold = min(MAX_HOLD_SECONDS, settings.lease_seconds / 6)
    bridge = LoopBridge(loop, app[CRYPTO_WORKERS], batcher, max_hold_seconds=max_hold)
    registry_gateway = RegistryGateway.start(app[REGISTRY_CLIENT], bridge, settings)
    wallet_gateway = WalletGateway.start(app[WALLET_CLIENT], bridge, settings)
    recipients = RecipientCache(pool)
    live = LiveCounts()
    issuer_pems = {area: key.private_pem() for area, key in settings.issuer_keys.items()}
    deps = ActorDeps(
        settings, bridge, pool, batcher, recipients, registry_gateway, wallet_gateway, live, issuer_pems
    )
    released = await queries.release_all_leases(pool, settings.instance_id)
    released_withdrawals = await db_withdrawals.release_all_leases(pool, settings.instance_id)
    if released or released_withdrawals:
        log.info("supervisor.resuming", certificates=released, withdrawals=released_withdrawals)
    backlog = Backlog(settings.max_backlog)
    await backlog.refresh(pool)
    # The supervisor's lease sweep hands the withdrawal actor what it claims (at start:
    # whatever this instance drove before a crash or restart).
    withdrawal_actor = WithdrawalActor.start(deps)
    supervisor = Supervisor.start(deps, withdrawal_actor)
    runtime = Runtime(settings, pool, batcher, supervisor, recipients, backlog, live, withdrawal_actor)
    app[RUNTIME] = runtime
    refresher = asyncio.create_task(_refresh_backlog(runtime))
    yield
    try:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await drain(runtime)  # at once when `stamp serve` drained before closing the listener
        await asyncio.to_thread(
            _stop_actors, supervisor, [withdrawal_actor, registry_gateway, wallet_gateway]
        )
        # Whatever is still in flight is resumable from its persisted state: hand it to
        # the next instance now rather than after the lease expires.
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            released = await queries.release_all_leases(pool, settings.instance_id)
            released_withdrawals = await db_withdrawals.release_all_leases(pool, settings.instance_id)
            log.info("supervisor.released", certificates=released, withdrawals=released_withdrawals)
    finally:
        await batcher.close()  # before the pool closes: it waits for every connection


async def drain(runtime: Runtime) -> None:
    """Stop admitting and let the answers still on their way (a wallet's 2xx, a
    transition) be recorded, so a graceful stop never causes a repeated delivery after
    restart. ``stamp serve`` runs this while the listener still answers (readiness and
    intake say 503); the actors' teardown runs it again, which then returns at once."""
    runtime.draining = True
    if runtime.drained:
        return
    runtime.drained = True
    tell_from_loop(runtime.supervisor, Drain())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + runtime.settings.shutdown_timeout_seconds * 0.8
    while runtime.live.certificate_actors and loop.time() < deadline:  # noqa: ASYNC110 (an actor's turn sets it)
        await asyncio.sleep(0.05)


def _stop_actors(supervisor: pykka.ActorRef[Any], gateways: list[pykka.ActorRef[Any]]) -> None:
    with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
        supervisor.stop(block=True, timeout=10)
    for gateway in gateways:
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            gateway.stop(block=True, timeout=5)


async def _refresh_backlog(runtime: Runtime) -> None:
    while True:
        await asyncio.sleep(1)
        try:
            await runtime.backlog.refresh(runtime.pool)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("backlog.refresh_failed", error=type(exc).__name__)


def build_app(settings: Settings) -> web.Application:
    check_path_base(settings.path_base)
    app = web.Application(
        middlewares=[metrics_http.metrics_middleware, problem_middleware, auth.auth_middleware],
        client_max_size=max(settings.max_body_bytes, settings.max_batch_body_bytes) + 1024,
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([database_ctx, crypto_pool_ctx, clients_ctx, actors_ctx, metrics_http.sampler_ctx])
    # Whether a route needs a token is decided here, once, by the table it comes from;
    # the auth middleware asks the route that matched (never the path's text).
    protected = [*withdrawals.routes, *batch.routes, *certificate_routes.routes]
    open_to_all = [*certificate_routes.operations, *openapi.routes, *metrics_http.routes]
    opened: set[AbstractResource] = set()
    guarded: set[AbstractResource] = set()
    # Like the existing Stamp, every route answers with and without the path base.
    bases = [""] if not settings.path_base else ["", settings.path_base]
    for base in bases:
        for route in [*protected, *open_to_all]:
            assert isinstance(route, web.RouteDef)
            resource = app.router.add_route(route.method, base + route.path, route.handler).resource
            assert resource is not None
            (opened if route in open_to_all else guarded).add(resource)
    if opened & guarded:
        raise ValueError("a path serves both open and protected routes")
    app[auth.OPEN_RESOURCES] = frozenset(opened)
    return app
