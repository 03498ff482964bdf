"""Prometheus metrics: ``GET /metrics`` in the Prometheus text format (OpenMetrics when
the scraper asks for it).

The metrics live on prometheus-client's default registry and are created once, at
import: several Stamp apps may run in one process (the tests do), and a second
registration of the same name would fail. Counters therefore add up over every app of
the process; whoever compares them (tests, the load test) takes differences.

The hooks below are called from actor threads, the gateways and the HTTP edge; each
costs a lock and an addition. What cannot be counted where it happens (live actors,
mailbox depths, threads, event-loop lag, certificates per state) is sampled by one
background task per app, ``sampler_ctx``. Labels have low cardinality only: states,
steps, certificate types, route templates, status codes — never ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import threading
import time
from collections.abc import AsyncIterator

import asyncpg
import pykka
import structlog
from aiohttp import web
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from stamp.api.problems import Handler
from stamp.api.runtime import RUNTIME
from stamp.db import queries
from stamp.domain import CERTIFICATE_TYPES, CertificateKey, CertificateRecord, State, Step

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()


def set_crypto_backend(name: str, requested: str) -> None:
    """One series at 1: the backend this Stamp's crypto workers run."""
    CRYPTO_BACKEND.clear()
    CRYPTO_BACKEND.labels(backend=name, requested=requested).set(1)


# Seconds: from a few ms (DB transitions) to minutes (a deep backlog).
_PIPELINE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

RECEIVED = Counter("stamp_certificates_received", "Certificates accepted (202, first time)")
ISSUED = Counter(
    "stamp_certificates_issued",
    "Certificates issued to the end: committed in the registry and delivered to the wallet",
    ["type"],
)
REJECTED = Counter("stamp_certificates_rejected", "Certificates the registry rejected (FAILED)")
FAILED = Counter("stamp_certificates_failed", "Certificates that failed at a step", ["step"])
IN_STATE = Gauge(
    "stamp_certificates_in_state",
    "Certificates per state in the database (sampled every few seconds)",
    ["state"],
)
STEP_DURATION = Histogram(
    "stamp_step_duration_seconds",
    "Time a certificate actor spent in a state before leaving it (step = the state left)",
    ["step"],
    buckets=_PIPELINE_BUCKETS,
)
END_TO_END = Histogram(
    "stamp_issue_end_to_end_seconds",
    "From the 202 of a certificate to its delivery to the wallet (certificates accepted by this process)",
    buckets=_PIPELINE_BUCKETS,
)
REGISTRY_REQUESTS = Counter(
    "stamp_registry_requests", "gRPC calls to the registries by method and status code", ["method", "code"]
)
WALLET_REQUESTS = Counter(
    "stamp_wallet_requests", "Slice deliveries by HTTP status (or timeout/error/not_allowed)", ["code"]
)
LIVE_ACTORS = Gauge("stamp_live_actors", "Live Pykka actors by kind", ["kind"])
CERTIFICATE_SLOTS = Gauge(
    "stamp_certificate_actor_slots",
    "Certificate actor slots taken now (at most STAMP_MAX_IN_FLIGHT; sampled every second)",
)
CERTIFICATE_SLOTS_PEAK = Gauge(
    "stamp_certificate_actor_slots_peak",
    "The most certificate actor slots taken at once since start: the peak of live certificate "
    "actors, which never exceeds STAMP_MAX_IN_FLIGHT",
)
MAILBOX_DEPTH = Gauge(
    "stamp_mailbox_depth", "Messages waiting in the actors' inboxes, summed by kind", ["kind"]
)
LOOP_LAG = Histogram(
    "stamp_event_loop_lag_seconds",
    "How late the event loop woke a sleeping task (sampled every 100 ms)",
    buckets=_LAG_BUCKETS,
)
CRYPTO_BACKEND = Gauge(
    "stamp_crypto_backend_info",
    "The group backend of the commitments and range proofs: 1 for the one in use (decaf or sodium)",
    ["backend", "requested"],
)
THREADS = Gauge("stamp_process_threads", "OS threads of the Stamp process (actors, gRPC, pools)")
HTTP_REQUESTS = Histogram(
    "stamp_http_request_duration_seconds",
    "HTTP requests served, by method, route template and status",
    ["method", "route", "status"],
    buckets=_HTTP_BUCKETS,
)
HTTP_CONNECTIONS_CLOSED = Counter(
    "stamp_http_connections_closed",
    "Connections Stamp cut off: too slow with the headers or the body, or over the connection limit",
    ["reason"],
)

ACTOR_KINDS = ("supervisor", "recipient", "certificate", "registry_gateway", "wallet_gateway")
LAG_INTERVAL_SECONDS = 0.1
ACTOR_INTERVAL_SECONDS = 1.0
STATE_INTERVAL_SECONDS = 5.0

# The 202 time of each certificate accepted here and not finished yet, for the end to
# end histogram. Bounded: past the limit the oldest are forgotten (not observed).
MAX_TRACKED_ACCEPTED = 200_000
_accepted: dict[CertificateKey, float] = {}
_accepted_lock = threading.Lock()


# --- hooks ----------------------------------------------------------------------------


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        HTTP_REQUESTS.labels(request.method, route, str(status)).observe(time.perf_counter() - started)


def http_connection_closed(reason: str) -> None:
    """A connection was closed by a guard (``header_timeout``, ``body_timeout``,
    ``connection_limit``)."""
    HTTP_CONNECTIONS_CLOSED.labels(reason).inc()


def certificate_received(key: CertificateKey | None = None) -> None:
    """A new certificate was accepted (202, first time)."""
    RECEIVED.inc()
    if key is None:
        return
    with _accepted_lock:
        _accepted[key] = time.monotonic()
        if len(_accepted) > MAX_TRACKED_ACCEPTED:
            del _accepted[next(iter(_accepted))]


def certificate_transitioned(
    record: CertificateRecord, previous: State, new: State, seconds_in_step: float
) -> None:
    """A certificate actor committed a state change."""
    STEP_DURATION.labels(previous.value).observe(seconds_in_step)
    if not new.terminal:
        return
    with _accepted_lock:
        accepted_at = _accepted.pop(record.key, None)
    if new is State.DELIVERED:
        ISSUED.labels(CERTIFICATE_TYPES.get(record.certificate_type, "unknown")).inc()
        if accepted_at is not None:
            END_TO_END.observe(time.monotonic() - accepted_at)
    elif new is State.REJECTED:
        REJECTED.inc()
    else:
        FAILED.labels(record.failed_step or _failed_step(previous, record)).inc()


def _failed_step(previous: State, record: CertificateRecord) -> str:
    """The step a failure belongs to, from the state it failed in (for records that
    do not carry ``failed_step``)."""
    if previous is State.STORED:
        return Step.POSITION.value if record.position is None else Step.CRYPTO.value
    if previous is State.SENT_TO_REGISTRY:
        return Step.REGISTRY.value
    if previous in (State.ISSUED_IN_REGISTRY, State.MARKED_AS_ISSUED):
        return Step.WALLET.value
    return "unknown"


def registry_call(method: str, code: str) -> None:
    """One gRPC call to a registry ended with this status code ("OK" on success)."""
    REGISTRY_REQUESTS.labels(method, code).inc()


def wallet_answer(code: str) -> None:
    """One slice delivery ended: the HTTP status, or "timeout"/"error"/"not_allowed"."""
    WALLET_REQUESTS.labels(code).inc()


# --- GET /metrics -------------------------------------------------------------------------


@routes.get("/metrics")
async def get_metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = web.Response(body=encoder(REGISTRY))
    response.headers["Content-Type"] = content_type
    return response


# --- sampling ---------------------------------------------------------------------------------


async def sampler_ctx(app: web.Application) -> AsyncIterator[None]:
    """Runs the sampler for the app's lifetime (add it after the actors' context, so
    it stops first)."""
    task = asyncio.create_task(_sample(app), name="stamp-metrics-sampler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sample(app: web.Application) -> None:
    loop = asyncio.get_running_loop()
    next_actors = next_states = loop.time()
    while True:
        before = loop.time()
        await asyncio.sleep(LAG_INTERVAL_SECONDS)
        now = loop.time()
        LOOP_LAG.observe(max(0.0, now - before - LAG_INTERVAL_SECONDS))
        if now >= next_actors:
            next_actors = now + ACTOR_INTERVAL_SECONDS
            # Thousands of actors: walk them off the loop.
            await asyncio.to_thread(sample_actors)
            if RUNTIME in app:
                live = app[RUNTIME].live
                CERTIFICATE_SLOTS.set(live.slots_taken)
                CERTIFICATE_SLOTS_PEAK.set(live.slots_peak)
        if now >= next_states and RUNTIME in app:
            next_states = now + STATE_INTERVAL_SECONDS
            try:
                counts = await queries.count_by_state(app[RUNTIME].pool)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("metrics.state_count_failed", error=type(exc).__name__)
            else:
                for state in State:
                    IN_STATE.labels(state.value).set(counts.get(state.value, 0))


def actor_kind(actor_class: type) -> str:
    """``CertificateActor`` → ``certificate``, ``RegistryGateway`` → ``registry_gateway``."""
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", actor_class.__name__).lower()
    return name.removesuffix("_actor")


def sample_actors() -> None:
    live = dict.fromkeys(ACTOR_KINDS, 0)
    depth = dict.fromkeys(ACTOR_KINDS, 0)
    for ref in pykka.ActorRegistry.get_all():
        kind = actor_kind(ref.actor_class)
        live[kind] = live.get(kind, 0) + 1
        depth[kind] = depth.get(kind, 0) + _inbox_depth(ref.actor_inbox)
    for kind, count in live.items():
        LIVE_ACTORS.labels(kind).set(count)
        MAILBOX_DEPTH.labels(kind).set(depth[kind])
    THREADS.set(_os_threads())


def _inbox_depth(inbox: object) -> int:
    # Threading actors' inboxes are queue.Queue; pykka types them as a bare protocol.
    if isinstance(inbox, queue.Queue):
        return inbox.qsize()
    return 0


def _os_threads() -> int:
    """Every thread of the process, the C ones of gRPC included (Linux), else the
    Python ones."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()
