"""The HTTP edge of Stamp's metrics: ``GET /metrics`` (Prometheus text, OpenMetrics
when the scraper asks for it), the middleware that times every request, and the one
background task per app that samples what cannot be counted where it happens (live
actors, mailbox depths, threads, event-loop lag, certificates per state). The
instruments themselves are in ``stamp/metrics.py``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator

import asyncpg
import pykka
import structlog
from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from stamp import metrics
from stamp.api.problems import Handler
from stamp.api.runtime import RUNTIME
from stamp.db import queries
from stamp.domain import State

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()


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
        metrics.HTTP_REQUESTS.labels(request.method, route, str(status)).observe(
            time.perf_counter() - started
        )


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
        await asyncio.sleep(metrics.LAG_INTERVAL_SECONDS)
        now = loop.time()
        metrics.LOOP_LAG.observe(max(0.0, now - before - metrics.LAG_INTERVAL_SECONDS))
        if now >= next_actors:
            next_actors = now + metrics.ACTOR_INTERVAL_SECONDS
            # Thousands of actors: walk them off the loop.
            await asyncio.to_thread(sample_actors)
            if RUNTIME in app:
                live = app[RUNTIME].live
                metrics.CERTIFICATE_SLOTS.set(live.slots_taken)
                metrics.CERTIFICATE_SLOTS_PEAK.set(live.slots_peak)
        if now >= next_states and RUNTIME in app:
            next_states = now + metrics.STATE_INTERVAL_SECONDS
            try:
                counts = await queries.count_by_state(app[RUNTIME].pool)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("metrics.state_count_failed", error=type(exc).__name__)
            else:
                for state in State:
                    metrics.IN_STATE.labels(state.value).set(counts.get(state.value, 0))


def sample_actors() -> None:
    live = dict.fromkeys(metrics.ACTOR_KINDS, 0)
    depth = dict.fromkeys(metrics.ACTOR_KINDS, 0)
    for ref in pykka.ActorRegistry.get_all():
        kind = metrics.actor_kind(ref.actor_class)
        live[kind] = live.get(kind, 0) + 1
        depth[kind] = depth.get(kind, 0) + _inbox_depth(ref.actor_inbox)
    for kind, count in live.items():
        metrics.LIVE_ACTORS.labels(kind).set(count)
        metrics.MAILBOX_DEPTH.labels(kind).set(depth[kind])
    metrics.THREADS.set(_os_threads())


def _inbox_depth(inbox: object) -> int:
    # Stamp's mailboxes (actors/base.py) and threading actors' queue.Queue both say
    # qsize(); pykka types an inbox as a bare protocol.
    qsize = getattr(inbox, "qsize", None)
    return int(qsize()) if callable(qsize) else 0


def _os_threads() -> int:
    """Every thread of the process, the C ones of gRPC included (Linux), else the
    Python ones."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()
