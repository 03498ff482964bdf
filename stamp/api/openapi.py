"""``GET /openapi.json`` and ``GET /docs``: Stamp's API described (issue 7).

The approach: a hand-written, checked-in OpenAPI 3.1 document (``openapi.yaml`` beside
this module, package data) is the contract. The handlers stay plain aiohttp, so no
framework decides the wire format; instead tests/test_openapi.py keeps the document
honest — it validates it as OpenAPI 3.1, compares its paths and methods with the
routes the app registers (both ways), and runs schemathesis against a live Stamp.

Served as is, except ``servers``, which reflects ``STAMP_PATH_BASE`` at request time:
the base first, then the base-less root (the routes answer at both).
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any, Final

import orjson
import yaml
from aiohttp import web

from stamp.api.docs_html import render_docs
from stamp.api.runtime import RUNTIME

DOCUMENT_RESOURCE: Final = "openapi.yaml"

# The page is self-contained: nothing may load from elsewhere, not even by injection.
DOCS_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

routes = web.RouteTableDef()


@functools.cache
def _source() -> dict[str, Any]:
    text = resources.files("stamp.api").joinpath(DOCUMENT_RESOURCE).read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ValueError(f"{DOCUMENT_RESOURCE} is not a mapping")
    return document


def document(path_base: str = "") -> dict[str, Any]:
    """The OpenAPI document as served under ``path_base`` (a fresh copy: callers may edit)."""
    doc = copy.deepcopy(_source())
    if path_base:
        doc["servers"] = [
            {"url": path_base, "description": f"This Stamp, under its path base {path_base}."},
            {"url": "/", "description": "The same routes without the path base."},
        ]
    return doc


@functools.cache
def document_json(path_base: str) -> bytes:
    return orjson.dumps(document(path_base))


@functools.cache
def docs_html(path_base: str) -> str:
    return render_docs(document(path_base))


def _path_base(request: web.Request) -> str:
    runtime = request.app.get(RUNTIME)
    return runtime.settings.path_base if runtime is not None else ""


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=document_json(_path_base(request)), content_type="application/json")


@routes.get("/docs")
async def docs(request: web.Request) -> web.Response:
    return web.Response(
        text=docs_html(_path_base(request)),
        content_type="text/html",
        headers={"Content-Security-Policy": DOCS_CSP},
    )
