"""Withdrawal routes (issue 7). PLACEHOLDER, filled in by the withdrawal work."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
