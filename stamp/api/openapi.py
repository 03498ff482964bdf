"""OpenAPI document and docs page (issue 7). PLACEHOLDER, filled in by the OpenAPI work."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
