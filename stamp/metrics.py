"""Stamp's Prometheus instruments and the hooks that count into them: a leaf module
that imports nothing of the HTTP edge, the actors or the database, so every layer may
count (docs/benchmarks.md "Metrics"). ``GET /metrics``, the HTTP middleware and the
sampler of what cannot be counted where it happens live at the edge
(``stamp/api/metrics_http.py``).

The metrics live on prometheus-client's default registry and are created once, at
import: several Stamp apps may run in one process (the tests do), and a second
registration of the same name would fail. Counters therefore add up over every app of
the process; whoever compares them (tests, the load test) takes differences.

Hooks are called from actor turns, the gateways and the HTTP edge; each costs a
lock and an addition. Labels have low cardinality only: states, steps, certificate
types, route templates, status codes — never ids.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Collection

from prometheus_client import Counter, Gauge, Histogram

from stamp.domain import CERTIFICATE_TYPES, CertificateKey, CertificateRecord, State, step_of

# Seconds: from a few ms (DB transitions) to minutes (a deep backlog).
_PIPELINE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
# 0.075: a latency objective of 100 ms (docs/benchmarks.md) is read off these buckets,
# and with nothing between 50 and 100 ms an interpolated p99 was tens of ms off.
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

RECEIVED = Counter("stamp_certificates_received", "Certificates accepted (202, first time)")
ISSUED = Counter(
    "stamp_certificates_issued",
    "Certificates issued to the end: committed in the registry and delivered to the wallet",
    ["type"],
)
REJECTED = Counter("stamp_certificates_rejected", "Certificates the registry rejected (FAILED)")
WITHHELD = Counter(
    "stamp_certificates_withheld", "Certificates withdrawn before delivery: issued, the slice not delivered"
)
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
BACKLOG_CLAIMS = Counter(
    "stamp_backlog_claims",
    "Claims of certificates waiting in the database (one statement each); with "
    "stamp_backlog_claimed_certificates, how many each claim took on average",
)
BACKLOG_CLAIMED = Counter(
    "stamp_backlog_claimed_certificates", "Certificates the backlog claims took (and started an actor for)"
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

HANDOFFS = Counter(
    "stamp_actor_handoffs",
    "Hand-offs between actors and the event loop's coroutines (a coroutine or statement handed to "
    "the loop, an answer or timer handed back to an actor)",
    ["direction"],
)
_TO_LOOP = HANDOFFS.labels("to_loop")
_TO_ACTOR = HANDOFFS.labels("to_actor")
DB_ROUND_TRIPS = Counter(
    "stamp_db_round_trips", "Statements sent to PostgreSQL over the pool (a pipelined batch counts once)"
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


def set_crypto_backend(name: str, requested: str) -> None:
    """One series at 1: the backend this Stamp's crypto workers run."""
    CRYPTO_BACKEND.clear()
    CRYPTO_BACKEND.labels(backend=name, requested=requested).set(1)


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


def certificates_received(keys: Collection[CertificateKey]) -> None:
    """Many new certificates accepted at once (a batch): ``certificate_received`` for
    each, under one lock and one counter increment."""
    if not keys:
        return
    RECEIVED.inc(len(keys))
    now = time.monotonic()
    with _accepted_lock:
        for key in keys:
            _accepted[key] = now
        while len(_accepted) > MAX_TRACKED_ACCEPTED:
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
        ISSUED.labels(CERTIFICATE_TYPES.get(record.content.certificate_type, "unknown")).inc()
        if accepted_at is not None:
            END_TO_END.observe(time.monotonic() - accepted_at)
    elif new is State.REJECTED:
        REJECTED.inc()
    elif new is State.WITHHELD:
        WITHHELD.inc()
    else:
        FAILED.labels(record.failed_step or step_of(previous, record.position).value).inc()


def registry_call(method: str, code: str) -> None:
    """One gRPC call to a registry ended with this status code ("OK" on success)."""
    REGISTRY_REQUESTS.labels(method, code).inc()


def wallet_answer(code: str) -> None:
    """One slice delivery ended: the HTTP status, or "timeout"/"error"/"not_allowed"."""
    WALLET_REQUESTS.labels(code).inc()


def handed_to_loop() -> None:
    """An actor handed work to the event loop (a coroutine, a statement, a timer)."""
    _TO_LOOP.inc()


def handed_to_actor() -> None:
    """The event loop told an actor something (an answer, a timer, an admission)."""
    _TO_ACTOR.inc()


def db_round_trip() -> None:
    """One statement (or one pipelined batch of statements) went to PostgreSQL."""
    DB_ROUND_TRIPS.inc()


# --- names -----------------------------------------------------------------------------


def actor_kind(actor_class: type) -> str:
    """``CertificateActor`` → ``certificate``, ``RegistryGateway`` → ``registry_gateway``."""
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", actor_class.__name__).lower()
    return name.removesuffix("_actor")
