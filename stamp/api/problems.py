"""Errors have a shape: every 4xx/5xx answer is RFC 7807 ``application/problem+json``.

Code below the handlers raises one exception type per failure kind (``ValidationProblem``,
``NotFound``, ``Conflict`` …); ``problem_middleware`` is the single place that turns
them — and aiohttp's own 404/405, and anything unexpected — into a response. An
unexpected exception becomes a 500 that says nothing about its cause (the cause may
hold data that must not leave the process); the operator finds it in the log by the
``requestId`` the answer carries.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import web

CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "https://stamp.energy/problems/"
REQUEST_ID_KEY = web.RequestKey("request_id", str)
"""Where the middleware keeps the request id: ``request[REQUEST_ID_KEY]``."""

MAX_REPORTED_ERRORS = 100
"""A hostile body can be wrong in thousands of places; the answer names the first ones."""

_RESERVED_MEMBERS = frozenset({"type", "title", "status", "detail", "instance", "errors"})
_KEPT_HTTP_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "Location", "Accept-Encoding")
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True, slots=True)
class FieldError:
    """One field at fault: ``field`` is its JSON path (``certificate.quantity``,
    ``certificate.hashedAttributes[0].key``), ``body`` for the body as a whole."""

    field: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class Problem(Exception):
    """An answer that is not a success. Subclasses fix status, title and type;
    ``extra`` members (camelCase, as every answer) are added to the JSON body."""

    status: int = 500
    title: str = "Internal Server Error"
    type: str = "about:blank"

    def __init__(
        self,
        detail: str | None = None,
        *,
        status: int | None = None,
        title: str | None = None,
        type: str | None = None,
        errors: Iterable[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title or self.title)
        # Instance attributes shadow the class defaults only when given.
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        if type is not None:
            self.type = type
        self.detail = detail
        self.errors: tuple[FieldError, ...] = tuple(errors)
        self.headers: dict[str, str] = dict(headers or {})
        clash = _RESERVED_MEMBERS.intersection(extra)
        if clash:
            raise ValueError(f"extra members may not replace RFC 7807 members: {sorted(clash)}")
        self.extra: dict[str, Any] = extra

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if self.errors:
            body["errors"] = [e.to_json() for e in self.errors]
        body.update(self.extra)
        return body

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(status={self.status}, detail={self.detail!r}, errors={len(self.errors)})"


class ValidationProblem(Problem):
    """400: the request is malformed. Lists every field at fault at once."""

    status = 400
    title = "Invalid request"
    type = PROBLEM_BASE + "validation"

    def __init__(self, errors: Iterable[FieldError], detail: str | None = None) -> None:
        every = tuple(errors)
        fields = list(dict.fromkeys(e.field for e in every))
        if detail is None:
            if len(every) == 1:
                detail = f"{every[0].field}: {every[0].message}"
            else:
                named = ", ".join(fields[:5]) + (", …" if len(fields) > 5 else "")
                detail = f"{len(fields)} field{'s are' if len(fields) != 1 else ' is'} invalid: {named}"
        extra: dict[str, Any] = {}
        if len(every) > MAX_REPORTED_ERRORS:
            extra["omittedErrors"] = len(every) - MAX_REPORTED_ERRORS
        super().__init__(detail, errors=every[:MAX_REPORTED_ERRORS], **extra)

    @classmethod
    def single(cls, field: str, message: str) -> ValidationProblem:
        return cls([FieldError(field, message)])


class NotFound(Problem):
    """404. ``field`` names the request field that referred to the missing thing
    (``recipientId``), so the client knows which of its ids is unknown."""

    status = 404
    title = "Not Found"

    def __init__(self, detail: str | None = None, *, field: str | None = None) -> None:
        errors = [FieldError(field, detail or "not found")] if field else []
        super().__init__(detail, errors=errors)


class Conflict(Problem):
    """409: the request contradicts what Stamp already holds; ``differences`` lists the
    JSON paths of the fields that differ from the stored request, and
    ``conflicting_certificate`` (``conflictingCertificate``) names another certificate
    that holds the metering point's period."""

    status = 409
    title = "Conflict"
    type = PROBLEM_BASE + "conflict"

    def __init__(
        self,
        detail: str | None = None,
        *,
        differences: Sequence[str] | None = None,
        conflicting_certificate: Mapping[str, Any] | None = None,
    ) -> None:
        extra: dict[str, Any] = {} if differences is None else {"differences": list(differences)}
        if conflicting_certificate is not None:
            extra["conflictingCertificate"] = dict(conflicting_certificate)
        super().__init__(detail, **extra)


class Unavailable(Problem):
    """503 with ``Retry-After``: Stamp cannot take this now (draining, backlog full)."""

    status = 503
    title = "Service Unavailable"
    type = PROBLEM_BASE + "unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int = 5) -> None:
        seconds = max(0, int(retry_after))
        super().__init__(detail, headers={"Retry-After": str(seconds)}, retryAfter=seconds)


class PayloadTooLarge(Problem):
    """413: the body exceeds ``max_bytes``."""

    status = 413
    title = "Payload Too Large"

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"the request body exceeds the limit of {max_bytes} bytes", maxBytes=max_bytes)


class UnsupportedMediaType(Problem):
    """415: the body is not JSON (or is content-encoded, which Stamp does not accept)."""

    status = 415
    title = "Unsupported Media Type"

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail, headers={"Accept-Post": "application/json", **(headers or {})})


class MethodNotAllowed(Problem):
    """405 with the ``Allow`` header."""

    status = 405
    title = "Method Not Allowed"

    def __init__(self, method: str, allowed: Iterable[str]) -> None:
        methods = sorted(set(allowed))
        listed = ", ".join(methods) if methods else "none"
        super().__init__(
            f"method {method} is not allowed on this resource; allowed: {listed}",
            headers={"Allow": ", ".join(methods)},
        )


class InternalError(Problem):
    """500 that deliberately says nothing about its cause."""

    status = 500
    title = "Internal Server Error"

    def __init__(self, request_id: str) -> None:
        super().__init__(
            "an unexpected error occurred; it has been logged under this requestId",
            requestId=request_id,
        )


def problem_response(problem: Problem) -> web.Response:
    body = problem.to_json()
    try:
        data = orjson.dumps(body)
    except TypeError:
        # orjson refuses lone surrogates a client may have smuggled into a name we
        # echo; the stdlib escapes them instead of failing the error answer itself.
        data = json.dumps(body, ensure_ascii=True, default=str).encode()
    headers = {k: v for k, v in problem.headers.items() if k.lower() != "content-type"}
    return web.Response(status=problem.status, body=data, content_type=CONTENT_TYPE, headers=headers)


def from_http_exception(exc: web.HTTPException) -> Problem:
    """aiohttp's own errors (no route, wrong method, body over client_max_size …)."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(exc.method, exc.allowed_methods)
    default_text = f"{exc.status}: {exc.reason}"
    detail = exc.text if exc.text and exc.text != default_text and exc.content_type == "text/plain" else None
    if isinstance(exc, web.HTTPNotFound) and detail is None:
        detail = "no resource at this path"
    headers = {name: exc.headers[name] for name in _KEPT_HTTP_HEADERS if name in exc.headers}
    return Problem(detail, status=exc.status, title=exc.reason, headers=headers)


def request_id_of(request: web.Request) -> str:
    """The request's id: set by this middleware, else a sane ``X-Request-Id`` from the
    client (so a caller can correlate), else a fresh one."""
    if REQUEST_ID_KEY in request:
        return request[REQUEST_ID_KEY]
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    request[REQUEST_ID_KEY] = request_id
    return request_id


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # connection refused/reset (ConnectionError is a subclass)
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,  # e.g. the connection was closed under the query
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    # SQLSTATE class 53: the server is out of connection slots (or memory, or disk).
    # Passing, like a restart: nothing was written, so the client may retry.
    asyncpg.exceptions.InsufficientResourcesError,
)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_of(request)
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
        except Problem as problem:
            response = problem_response(problem)
        except web.HTTPException as exc:
            if exc.status < 400:  # redirects and the like are answers, not problems
                raise
            response = problem_response(from_http_exception(exc))
        except DATABASE_UNAVAILABLE as exc:
            # PostgreSQL restarting or unreachable: nothing was written, the client may
            # retry; the pipeline pauses and resumes by itself.
            structlog.get_logger(__name__).warning(
                "request.database_unavailable", request_id=request_id, error=type(exc).__name__
            )
            response = problem_response(Unavailable("database unavailable, retry later", retry_after=2))
        except Exception:
            # The exception text may carry anything (SQL, values, keys): log it, never answer it.
            # A fresh logger proxy: it follows the logging configuration in force now.
            log = structlog.get_logger(__name__)
            log.exception("request.failed", request_id=request_id, method=request.method, path=request.path)
            response = problem_response(InternalError(request_id))
        if not response.prepared:
            response.headers.setdefault("X-Request-Id", request_id)
        return response
