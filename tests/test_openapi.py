"""The OpenAPI document says what the running API does (issue 7).

- It is valid OpenAPI 3.1 (openapi-spec-validator).
- Its paths and methods are exactly the routes the app registers, both ways.
- A live Stamp serves it at /openapi.json (``servers`` from the path base) and renders
  it at /docs as one self-contained HTML page.
- schemathesis, fed the served document, finds no 5xx and no answer outside it: no
  undocumented status, content type or body shape, in positive and negative cases.

The live Stamp (with its Registry and Wallet simulators and the session's PostgreSQL)
runs on its own event loop in a thread: schemathesis calls the API synchronously, and
it must not block the loop that serves the answers.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import os
import re
import threading
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from openapi_spec_validator import OpenAPIV31SpecValidator
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stamp.api.openapi import DOCS_CSP, document
from stamp.app import build_app
from stamp.config import Settings
from stamp.domain import CERTIFICATE_TYPES
from tests.stack import REGISTRY, Stack, certificate_body, running_stack

T = TypeVar("T")

PATH_BASE = "/api"
HTTP_METHODS = frozenset({"get", "put", "post", "patch", "delete", "options", "trace"})


def _template(path: str) -> str:
    """``/v1/certificates/{registry}/{id}`` and ``…/{registryName}/{id}`` are one route."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), _template(path))
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def live_operations(app: web.Application, base: str = "") -> set[tuple[str, str]]:
    """(method, path template) of every route under ``base`` (HEAD is aiohttp's own)."""
    found = set()
    for route in app.router.routes():
        resource = route.resource
        if route.method == "HEAD" or resource is None:
            continue
        path = resource.canonical
        if base:
            if not path.startswith(base + "/"):
                continue
            path = path[len(base) :]
        elif PATH_BASE and path.startswith(PATH_BASE + "/"):
            continue
        found.add((route.method, _template(path)))
    return found


# --- the document itself --------------------------------------------------------------


def test_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    OpenAPIV31SpecValidator(doc).validate()


def test_documented_paths_and_methods_are_exactly_the_live_routes() -> None:
    app = build_app(Settings(path_base=PATH_BASE))
    documented = documented_operations(document())
    bare, based = live_operations(app), live_operations(app, PATH_BASE)
    assert bare == based, "every route answers with and without the path base"
    assert sorted(bare - documented) == [], "routes the document does not describe"
    assert sorted(documented - bare) == [], "documented operations the app does not serve"


def test_every_error_answer_is_documented_as_problem_json() -> None:
    """4xx/5xx are RFC 7807 everywhere; readiness's 503 is the one plain-JSON answer."""
    doc = document()
    responses = doc["components"]["responses"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert "500" in operation["responses"], f"{method} {path} can fail with 500"
            for status, response in operation["responses"].items():
                if status < "400" or (path, status) == ("/health/ready", "503"):
                    continue
                if "$ref" in response:
                    response = responses[response["$ref"].rsplit("/", 1)[1]]
                assert list(response["content"]) == ["application/problem+json"], (method, path, status)


def test_v1_routes_document_optional_bearer_auth_and_others_none() -> None:
    doc = document()
    assert doc["security"] == [{}, {"bearerAuth": []}]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if path.startswith("/v1/"):
                assert "security" not in operation and "401" in operation["responses"], (method, path)
            else:
                assert operation["security"] == [] and "401" not in operation["responses"], (method, path)


def test_the_documented_certificate_types_are_the_domain_table() -> None:
    # The document is written by hand; the one type table is stamp.domain's.
    schemas = document()["components"]["schemas"]
    assert sorted(schemas["CertificateType"]["enum"]) == sorted(CERTIFICATE_TYPES.values())
    numbers = schemas["NewCertificateBody"]["properties"]["type"]["oneOf"][1]["enum"]
    assert sorted(numbers) == sorted(CERTIFICATE_TYPES)


def test_servers_follow_the_path_base() -> None:
    assert [s["url"] for s in document()["servers"]] == ["/"]
    assert [s["url"] for s in document("/api")["servers"]] == ["/api", "/"]
    assert document("/api")["paths"] == document()["paths"]


# --- a live Stamp ---------------------------------------------------------------------


class ThreadedStamp:
    """running_stack() on an event loop of its own, in a daemon thread."""

    def __init__(self, database_dsn: str, data_dir: Path) -> None:
        self._dsn, self._data_dir = database_dsn, data_dir
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._stack: Stack | None = None
        self._thread = threading.Thread(target=self._run, name="live-stamp", daemon=True)

    @property
    def base(self) -> str:
        """Where Stamp answers, path base included."""
        assert self._stack is not None
        return self._stack.base + PATH_BASE

    def run(self, work: Callable[[Stack], Coroutine[Any, Any, T]]) -> T:
        """Runs ``work(stack)`` on the stack's loop and waits for its result."""
        assert self._loop is not None and self._stack is not None
        return asyncio.run_coroutine_threadsafe(work(self._stack), self._loop).result(60)

    def __enter__(self) -> ThreadedStamp:
        self._thread.start()
        if not self._ready.wait(120):
            raise TimeoutError("the live Stamp did not start within 120 s")
        if self._error is not None:
            raise RuntimeError("the live Stamp failed to start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running_stack(self._dsn, self._data_dir, path_base=PATH_BASE) as stack:
            self._stack = stack
            self._ready.set()
            await self._stop.wait()


@pytest.fixture(scope="module")
def live(database_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedStamp]:
    """A running Stamp (STAMP_PATH_BASE=/api) with its simulators."""
    with ThreadedStamp(database_dsn, tmp_path_factory.mktemp("openapi-stamp")) as stamp:
        yield stamp


@pytest.fixture(scope="module")
def live_stamp(live: ThreadedStamp) -> str:
    """The live Stamp's URL without the path base."""
    return live.base.removesuffix(PATH_BASE)


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


@pytest.mark.parametrize("base", [PATH_BASE, ""])
def test_openapi_json_is_served_with_servers_from_the_path_base(live_stamp: str, base: str) -> None:
    status, headers, body = fetch(f"{live_stamp}{base}/openapi.json")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    served = json.loads(body)
    assert [s["url"] for s in served["servers"]] == [PATH_BASE, "/"]
    assert served == json.loads(json.dumps(document(PATH_BASE)))


def test_docs_is_one_self_contained_html_page_naming_every_operation(live_stamp: str) -> None:
    status, headers, body = fetch(f"{live_stamp}{PATH_BASE}/docs")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"] == DOCS_CSP
    page = body.decode()
    assert page.startswith("<!DOCTYPE html>")
    doc = document(PATH_BASE)
    for path, item in doc["paths"].items():
        assert f'<span class="path">{html.escape(path)}</span>' in page, path
        for method, operation in item.items():
            assert f'id="op-{operation["operationId"]}"' in page, (method, path)
    for name in doc["components"]["schemas"]:
        assert f'id="schema-{name}"' in page, name
    # Nothing is loaded from elsewhere: no scripts, stylesheets, images or frames.
    assert not re.search(r"<(script|link|img|iframe)\b|\bsrc=|url\(", page, re.IGNORECASE)


# --- schemathesis against the live Stamp ---------------------------------------------

# Bounded for CI (the run takes seconds); raise it for a deeper search on a workstation:
# STAMP_SCHEMATHESIS_EXAMPLES=500 pytest tests/test_openapi.py
MAX_EXAMPLES = int(os.environ.get("STAMP_SCHEMATHESIS_EXAMPLES", "25"))
SCHEMATHESIS_CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
    }
)


# The document as served under the path base (test_openapi_json_is_served_… checks that
# /openapi.json serves exactly this). Loaded here rather than from the live URL because
# schemathesis makes one test per operation at collection time, before any Stamp runs.
schema = schemathesis.openapi.from_dict(document(PATH_BASE), config=SCHEMATHESIS_CONFIG)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_live_stamp_answers_only_as_documented(live: ThreadedStamp, case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(base_url=live.base, checks=CHECKS)


# --- the answers of a real issuance, checked against the document ---------------------
# Generated requests rarely name things that exist (a recipient, a certificate), so the
# answers for existing things are checked here, along one certificate's life.


def call(live: ThreadedStamp, method: str, path: str, **parts: Any) -> Any:
    """One request as a schemathesis case of the documented operation, with every check."""
    operation = schema[path][method]
    response = operation.Case(**parts).call_and_validate(base_url=live.base, checks=CHECKS)
    return response


def test_a_certificates_life_is_answered_as_documented(live: ThreadedStamp) -> None:
    recipient_id = live.run(lambda stack: stack.create_recipient())
    assert call(live, "GET", "/v1/recipients/{id}", path_parameters={"id": recipient_id}).status_code == 200
    body = certificate_body(recipient_id)
    key = {"registryName": REGISTRY, "id": body["certificate"]["id"]}

    assert call(live, "POST", "/v1/certificates", body=body).status_code == 202
    assert call(live, "POST", "/v1/certificates", body=body).status_code == 202  # idempotent
    different = {**body, "certificate": {**body["certificate"], "quantity": 7}}
    conflict = call(live, "POST", "/v1/certificates", body=different)
    assert conflict.status_code == 409
    assert conflict.json()["differences"] == ["certificate.quantity"]

    states = live.run(lambda stack: stack.wait_terminal([(REGISTRY, key["id"])]))
    assert states == {key["id"]: "delivered"}
    detail = call(live, "GET", "/v1/certificates/{registryName}/{id}", path_parameters=key)
    assert detail.json()["state"] == "delivered" and len(detail.json()["events"]) >= 4
    page = call(live, "GET", "/v1/certificates", query={"recipientId": recipient_id, "limit": 1})
    assert [c["id"] for c in page.json()["result"]] == [key["id"]]
    assert (
        call(live, "POST", "/v1/certificates/{registryName}/{id}/retry", path_parameters=key).status_code
        == 409
    )

    withdrawal = call(live, "POST", "/v1/certificates/{registryName}/{id}/withdraw", path_parameters=key)
    assert withdrawal.status_code == 201
    again = call(live, "POST", "/v1/certificates/{registryName}/{id}/withdraw", path_parameters=key)
    assert again.status_code == 409
    after = withdrawal.json()["id"] - 1
    feed = call(live, "GET", "/v1/certificates/withdrawn", query={"lastWithdrawnId": after, "limit": 1})
    assert feed.json()["result"] == [withdrawal.json()]
    assert call(live, "POST", "/v1/certificates", body=body).status_code == 409  # withdrawn

    assert call(live, "GET", "/health/ready").status_code == 200
    assert call(live, "GET", "/metrics").status_code == 200


def test_a_mixed_batch_is_answered_as_documented(live: ThreadedStamp) -> None:
    recipient_id = live.run(lambda stack: stack.create_recipient())
    good = certificate_body(recipient_id)
    items = [
        good,
        good,
        {**good, "certificate": {**good["certificate"], "quantity": 7}},
        {**good, "certificate": {**good["certificate"], "id": "0b6c4a52-8f53-4c3e-9a51-2f0f4d7c9e11"}},
        certificate_body(recipient_id, certificate={"quantity": 0}),
        certificate_body("3f1e8a4e-53c0-4a8b-9f0e-6d2d7b1c2a90"),
    ]
    answer = call(live, "POST", "/v1/certificates/batch", body={"certificates": items})
    assert answer.status_code == 200
    assert [i["status"] for i in answer.json()["items"]] == [202, 202, 409, 409, 400, 404]


# Found by schemathesis and by hand: values a route passes on to PostgreSQL unchecked.
# A request Stamp cannot serve is a 400 (documented), never a 500.
_NUL = "Nar\x00nia"
_UUID = "0b6c4a52-8f53-4c3e-9a51-2f0f4d7c9e11"


def _cursor(at: str, registry: str, certificate_id: str) -> str:
    """A cursor as the list encodes one (views.encode_cursor), with chosen contents."""
    raw = json.dumps([at, registry, certificate_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _at_nul_registry(name: str, method: str, path: str) -> Any:
    parts = {"path_parameters": {"registryName": _NUL, "id": _UUID}}
    return pytest.param(method, path, parts, id=f"nul-registry-{name}")


@pytest.mark.parametrize(
    ("method", "path", "parts"),
    [
        pytest.param(
            "GET", "/v1/certificates", {"query": {"meteringPointId": "\x00"}}, id="nul-metering-point"
        ),
        pytest.param(
            "GET",
            "/v1/certificates",
            {"query": {"cursor": _cursor("2025-01-01T00:00:00Z", "Narnia", "x")}},
            id="cursor-with-a-bad-id",
        ),
        pytest.param(
            "GET",
            "/v1/certificates",
            {"query": {"cursor": _cursor("2025-01-01T00:00:00Z", _NUL, _UUID)}},
            id="cursor-with-a-nul-registry",
        ),
        pytest.param(
            "GET",
            "/v1/certificates",
            {"query": {"cursor": _cursor("9999-12-31T23:59:59-23:59", "Narnia", _UUID)}},
            id="cursor-past-year-9999",
        ),
        _at_nul_registry("get", "GET", "/v1/certificates/{registryName}/{id}"),
        _at_nul_registry("retry", "POST", "/v1/certificates/{registryName}/{id}/retry"),
        _at_nul_registry("withdraw", "POST", "/v1/certificates/{registryName}/{id}/withdraw"),
        pytest.param(
            "GET",
            "/v1/certificates/withdrawn",
            {"query": {"lastWithdrawnId": 2**63 - 1}},
            id="largest-withdrawal-id",
        ),
    ],
)
def test_edge_values_get_documented_answers(
    live: ThreadedStamp, method: str, path: str, parts: dict[str, Any]
) -> None:
    assert call(live, method, path, **parts).status_code < 500
