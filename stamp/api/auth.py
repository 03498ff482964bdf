"""Optional bearer authentication of the /v1 routes (docs/authentication.md).

Off unless static tokens or a JWT policy are configured. When on, every route under
``/v1`` (with or without ``STAMP_PATH_BASE``) needs ``Authorization: Bearer <token>``;
health, metrics and the API description stay open so probes and scrapers need no
credentials. Whether a route is protected is decided from the route that matched
(its template), not from the raw path, so no spelling of a path slips past; paths
that match no route are judged by their text, so an unauthenticated caller cannot
probe which /v1 paths exist.

A refusal is a 401 whose body says only "missing token" or "invalid token": why a
token failed (expired, wrong audience, unknown key …) goes to the log, where the
operator can see it, and not to the caller, who could use it to probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from aiohttp import web

from stamp.api.problems import PROBLEM_BASE, Handler, Problem, Unavailable
from stamp.api.runtime import RUNTIME
from stamp.config import Settings
from stamp.credentials import InvalidCredentials, looks_like_jwt, match_token, verify_jwt

REALM = "stamp"
PROTECTED_PREFIX = "/v1"
MAX_PRINCIPAL_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made an authenticated request: ``token#2`` (the second configured static
    token) or ``jwt:<sub>``. Safe to log; never the credential itself."""

    name: str


PRINCIPAL_KEY = web.RequestKey("principal", Principal)
"""Where the middleware leaves the caller of an authenticated request."""


class Unauthorized(Problem):
    """401 with the RFC 6750 challenge. Says whether a token was there, nothing more."""

    status = 401
    title = "Unauthorized"
    type = PROBLEM_BASE + "unauthorized"

    def __init__(self, *, token_given: bool) -> None:
        challenge = f'Bearer realm="{REALM}"'
        if token_given:
            challenge += ', error="invalid_token"'
        super().__init__(
            "invalid token" if token_given else "missing token", headers={"WWW-Authenticate": challenge}
        )


def is_protected(path: str, path_base: str) -> bool:
    """Whether a route path (a template such as ``/api/v1/certificates/{registry}/{id}``,
    or a request path) is under /v1, with or without the path base."""
    if path_base and (path == path_base or path.startswith(path_base + "/")):
        path = path[len(path_base) :]
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def _route_path(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def bearer_token(request: web.Request) -> str | None:
    """The bearer token, None when the request carries none. Several Authorization
    headers, or a Bearer header without a token, count as an invalid token."""
    values = request.headers.getall("Authorization", [])
    if not values:
        return None
    if len(values) > 1:
        return ""
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return None  # another scheme (Basic …): no bearer token was offered
    return token.strip()


def authenticate(settings: Settings, token: str) -> Principal:
    """The caller the token identifies; InvalidCredentials if it identifies nobody."""
    if not token:
        raise InvalidCredentials("empty token")
    index = match_token(settings.auth_tokens, token)
    if index is not None:
        return Principal(f"token#{index + 1}")
    if settings.auth_jwt is not None and looks_like_jwt(token):
        claims = verify_jwt(settings.auth_jwt, token)
        subject = claims.get("sub")
        name = f"jwt:{subject}" if isinstance(subject, str) and subject else "jwt"
        return Principal(name[:MAX_PRINCIPAL_LENGTH])
    raise InvalidCredentials("not a configured token")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    runtime = request.app.get(RUNTIME)
    if runtime is None:
        # Requests are served only after start-up, when the runtime exists; if one
        # came earlier, refusing is the safe answer for a route that may be protected.
        if is_protected(_route_path(request), ""):
            raise Unavailable("Stamp is starting", retry_after=1)
        return await handler(request)
    settings = runtime.settings
    if not settings.auth_enabled or not is_protected(_route_path(request), settings.path_base):
        return await handler(request)
    log = structlog.get_logger(__name__)
    token = bearer_token(request)
    if token is None:
        log.info("auth.rejected", reason="missing token", method=request.method, path=request.path)
        raise Unauthorized(token_given=False)
    try:
        principal = authenticate(settings, token)
    except InvalidCredentials as exc:
        log.info("auth.rejected", reason=exc.reason, method=request.method, path=request.path)
        raise Unauthorized(token_given=True) from None
    request[PRINCIPAL_KEY] = principal
    with structlog.contextvars.bound_contextvars(principal=principal.name):
        return await handler(request)
