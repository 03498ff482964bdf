"""``stamp serve``: run the service until SIGTERM/SIGINT, then shut down gracefully.

First signal: readiness turns 503 and intake answers 503 at once (load balancers
and clients back off) while the answers in flight are recorded; then the listener
closes, the actors stop, leases are released for other instances and every pool
closes, within STAMP_SHUTDOWN_TIMEOUT;
exit code 0. A second signal exits at once: nothing is lost either way, because every
step is persisted before its side effects and resumes after a restart.
"""

from __future__ import annotations

import asyncio
import os
import signal

import structlog
from aiohttp import web

from stamp import event_loop, gc_policy, tracing
from stamp.api.connections import make_runner
from stamp.api.runtime import RUNTIME
from stamp.app import build_app, drain
from stamp.config import Settings

log = structlog.get_logger(__name__)
EXIT_AT_ONCE = {signal.SIGINT: 130, signal.SIGTERM: 143}


async def serve(settings: Settings) -> int:
    app = build_app(settings)
    runner = make_runner(
        app, settings, handle_signals=False, shutdown_timeout=settings.shutdown_timeout_seconds
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    gc_policy.settle_after_startup()
    log.info(
        "stamp.started",
        host=settings.host,
        port=settings.port,
        instance_id=settings.instance_id,
        event_loop=event_loop.running_loop_name(),
    )
    traces = tracing.TracingConfig.from_env()
    log.info("stamp.tracing", **traces.describe())

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def exit_at_once(sig: signal.Signals) -> None:
        log.warning("stamp.exiting_at_once", signal=sig.name)
        os._exit(EXIT_AT_ONCE[sig])

    def begin_shutdown(sig: signal.Signals) -> None:
        log.info("stamp.shutting_down", signal=sig.name, timeout=settings.shutdown_timeout_seconds)
        app[RUNTIME].draining = True
        for s in EXIT_AT_ONCE:
            loop.add_signal_handler(s, exit_at_once, s)
        stopping.set()

    for sig in EXIT_AT_ONCE:
        loop.add_signal_handler(sig, begin_shutdown, sig)
    await stopping.wait()
    try:
        async with asyncio.timeout(settings.shutdown_timeout_seconds + 5):
            # Work in flight finishes while the listener still answers 503: load
            # balancers see "not ready" rather than a refused connection.
            await drain(app[RUNTIME])
            await runner.cleanup()
    except TimeoutError:
        log.error("stamp.shutdown_timed_out", timeout=settings.shutdown_timeout_seconds)
        return 1
    log.info("stamp.stopped")
    return 0
