"""The HTTP connections Stamp accepts (issue 11): slow or silent clients are cut off,
their number is bounded, compressed bodies are never inflated, and what a malformed
request carries never reaches a log line or an answer.

aiohttp closes an idle keep-alive connection, but never one that sends its headers
or its body slowly: a few hundred such clients hold the server's sockets forever.
``GuardedRequestHandler`` gives each connection one deadline for the phase it is in:

- **headers**: a new connection must deliver its first request's headers within
  ``header_timeout``; on a kept-alive connection the clock starts at the first byte
  of the next request. The deadline is not moved by further bytes, so a client
  trickling one byte a second gains nothing.
- **body**: from the end of the headers, the whole body within ``body_timeout``
  (also while aiohttp discards the body of a request answered without reading it).
- **idle**: between requests, aiohttp's own ``keepalive_timeout``.

When a deadline passes the connection is closed without an answer (as nginx does):
the client is too slow to read one either. Past ``max_connections`` open connections
a new one is answered ``503`` with ``Retry-After`` and closed at once, without
reading it.

aiohttp builds its protocol from a fixed class; ``GuardedAppRunner`` swaps in ours.
That leans on two private names of aiohttp (``Server._kwargs``, ``AppRunner._make_server``),
which is why aiohttp is bounded to 3.x; tests/test_security_http.py exercises every
path against a live server, so a change there fails loudly.
"""

from __future__ import annotations

import asyncio
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from stamp import metrics
from stamp.api.problems import PROBLEM_BASE, Problem, Unavailable, problem_response
from stamp.config import Settings

log = structlog.get_logger(__name__)

HEADERS: Final = "header_timeout"
BODY: Final = "body_timeout"
LIMIT: Final = "connection_limit"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            settings.http_header_timeout_seconds,
            settings.http_body_timeout_seconds,
            settings.http_keepalive_timeout_seconds,
            settings.http_max_connections,
        )


def _refusal() -> bytes:
    """The whole answer to a connection over the limit, written before reading it."""
    problem = Unavailable("too many open connections; retry later", retry_after=1)
    body = orjson.dumps(problem.to_json())
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/problem+json\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


REFUSAL: Final = _refusal()


class MalformedRequest(Problem):
    """400 for a request aiohttp's parser refused. Its message quotes the offending
    header line (a bearer token, say), so neither the answer nor the log repeats it."""

    status = 400
    title = "Bad Request"
    type = PROBLEM_BASE + "malformed-request"


class GuardedServer(web.Server):
    """aiohttp's low-level server, making ``GuardedRequestHandler`` protocols and
    counting the connections they hold."""

    def __init__(self, handler: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.open_connections = 0

    def __call__(self) -> RequestHandler:
        # What the base class passes to its RequestHandler; the limits replace the
        # timeouts and decompression aiohttp would otherwise apply.
        kwargs = {k: v for k, v in self._kwargs.items() if k not in ("keepalive_timeout", "auto_decompress")}
        return GuardedRequestHandler(self, loop=self._loop, **kwargs)


class GuardedAppRunner(web.AppRunner):
    """``web.AppRunner`` serving through ``GuardedServer``."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            limits=self._limits,
            **plain._kwargs,
        )


def make_runner(app: web.Application, settings: Settings, **kwargs: Any) -> web.AppRunner:
    """The runner every Stamp server uses (``stamp serve``, the demo, the tests)."""
    kwargs.setdefault("access_log", None)
    return GuardedAppRunner(app, limits=ConnectionLimits.of(settings), **kwargs)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol with a deadline per phase, a connection bound, no body
    decompression and log lines that carry no request content."""

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        limits = manager.limits
        # auto_decompress=False: the parser hands the bytes as sent. Stamp refuses
        # content-encoded bodies (415), and a refused gzip bomb must cost nothing.
        super().__init__(manager, keepalive_timeout=limits.keepalive_timeout, auto_decompress=False, **kwargs)
        self._guard_server = manager
        self._limits = limits
        self._admitted = False
        # One timer per connection, moved lazily: arming a phase only records its due
        # time, and the timer, when it fires early, re-arms itself for what is due
        # then. A request on a kept-alive connection arms and disarms twice; with a
        # timer each time that was four timer-heap operations per request (and the
        # heap full of cancelled handles), now mostly none.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._due = 0.0
        self._phase: str | None = None

    # --- the deadline of the current phase ----------------------------------------

    def _arm(self, phase: str, seconds: float) -> None:
        self._phase = phase
        self._due = self._loop.time() + seconds
        if self._timer is None or self._timer_at > self._due:
            self._schedule(self._due)

    def _disarm(self) -> None:
        self._phase = None  # a timer still pending finds nothing due and lapses

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        phase = self._phase
        if phase is None:
            return
        if self._loop.time() < self._due:
            self._schedule(self._due)  # the phase was armed again since this timer was set
            return
        self._phase = None
        metrics.http_connection_closed(phase)
        log.debug("http.connection_timed_out", phase=phase)
        self.force_close()

    def _body_complete(self) -> None:
        if self._phase == BODY:
            self._disarm()

    # --- the protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._guard_server
        if server.open_connections >= self._limits.max_connections:
            metrics.http_connection_closed(LIMIT)
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(REFUSAL)
            transport.close()
            return
        server.open_connections += 1
        self._admitted = True
        super().connection_made(transport)
        # A fresh connection has to say something soon; it is not idle between requests.
        self._arm(HEADERS, self._limits.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._admitted:
            self._admitted = False
            self._guard_server.open_connections -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._phase is None and data:
            # The first byte of the next request on a kept-alive connection.
            self._arm(HEADERS, self._limits.header_timeout)
        before = self._request_count
        super().data_received(data)
        if self._request_count == before or not self._messages:
            return
        # Headers complete. Only the last message parsed now can still await its body.
        self._disarm()
        _, payload = self._messages[-1]
        if not payload.is_eof():
            self._arm(BODY, self._limits.body_timeout)
            payload.on_eof(self._body_complete)

    # --- nothing a client sent reaches a log line ----------------------------------------

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        _log_failure(exc if isinstance(exc, BaseException) else None)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError) or 400 <= status < 500:
            # A malformed request: the client's fault, and its text is the client's data.
            log.info("http.malformed_request", status=status, error=type(exc).__name__)
            problem: Problem = MalformedRequest("the request is not valid HTTP/1.1", status=status)
        else:
            _log_failure(exc)
            problem = Problem(status=status, title=HTTPStatus(status).phrase)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already under way; the connection is closed")
        response = problem_response(problem)
        response.force_close()
        return response


def _log_failure(exc: BaseException | None) -> None:
    """An unexpected failure inside aiohttp: the exception type and where it happened,
    never its message, which may quote the request (header lines, a path)."""
    where = "".join(traceback.format_tb(exc.__traceback__)) if exc is not None else ""
    log.error("http.server_error", error=type(exc).__name__ if exc else None, where=where)
