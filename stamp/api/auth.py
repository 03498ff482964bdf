"""Optional bearer authentication of the API (docs/authentication.md).

Off unless static tokens or a JWT policy are configured. When on, every route needs
``Authorization: Bearer <token>`` except those ``build_app`` registers as open —
health, metrics and the API description, so probes and scrapers need no
credentials. Protection is decided from the route object that matched, never from
the path's text: no path base, spelling or prefix can make a protected route look
open (issue 11, finding 1). A request that matches no route is treated as protected,
so an unauthenticated caller cannot probe which paths exist.

A refusal is a 401 whose body says only "missing token" or "invalid token": why a
token failed (expired, wrong audience, unknown key …) goes to the log, where the
operator can see it, and not to the caller, who could use it to probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource

from stamp.api.problems import PROBLEM_BASE, Handler, Problem, Unavailable
from stamp.api.runtime import RUNTIME
from stamp.config import Settings
from stamp.credentials import (
    InvalidCredentials,
    check_token_syntax,
    looks_like_jwt,
    match_token,
    verify_jwt,
)

REALM = "stamp"
MAX_PRINCIPAL_LENGTH = 128

OPEN_RESOURCES = web.AppKey("open_resources", frozenset[AbstractResource])
"""The resources (route objects) anyone may call; set once by ``build_app``."""


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


def is_open(request: web.Request) -> bool:
    """Whether the route that matched is one of the open ones."""
    resource = request.match_info.route.resource
    return resource is not None and resource in request.app.get(OPEN_RESOURCES, frozenset())


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
    check_token_syntax(token)
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
        if not is_open(request):
            raise Unavailable("Stamp is starting", retry_after=1)
        return await handler(request)
    settings = runtime.settings
    if not settings.auth_enabled or is_open(request):
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
