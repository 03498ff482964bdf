"""Optional bearer authentication of /v1 routes (issue 7). PLACEHOLDER: lets everything
through until the authentication work fills it in."""

from __future__ import annotations

from aiohttp import web

from stamp.api.problems import Handler


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await handler(request)
