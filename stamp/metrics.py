"""Prometheus metrics (``/metrics``). PLACEHOLDER: the hook functions below are called
from the actors, gateways and HTTP edge; their bodies are filled in by the metrics work
(issue 6). Keep their signatures."""

from __future__ import annotations

from aiohttp import web

from stamp.api.problems import Handler
from stamp.domain import CertificateRecord, State

routes = web.RouteTableDef()


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await handler(request)


def certificate_received() -> None:
    """A new certificate was accepted (202, first time)."""


def certificate_transitioned(
    record: CertificateRecord, previous: State, new: State, seconds_in_step: float
) -> None:
    """A certificate actor committed a state change."""


def registry_call(method: str, code: str) -> None:
    """One gRPC call to a registry ended with this status code ("OK" on success)."""


def wallet_answer(code: str) -> None:
    """One slice delivery ended: the HTTP status, or "timeout"/"error"."""
