"""The HTTP edge's request parsing and error shape (docs/api.md, "Errors").

Bad input goes through a real aiohttp server on loopback with the real middleware, so
each case checks what a client sees: the status, ``application/problem+json`` and the
``errors`` entry naming the field at fault.
"""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from stamp.api.problems import (
    CONTENT_TYPE,
    MAX_REPORTED_ERRORS,
    Conflict,
    FieldError,
    NotFound,
    Problem,
    Unavailable,
    ValidationProblem,
    problem_middleware,
    problem_response,
)
from stamp.api.requests import (
    differences,
    parse_int_param,
    parse_json_object,
    parse_limit,
    parse_new_certificate,
    parse_new_recipient,
    parse_state_filter,
    parse_uuid,
    read_json_body,
    request_digest,
)
from stamp.domain import CertificateContent, CertificateKey, State

REGISTRIES = frozenset({"Narnia"})
GRID_AREAS = frozenset({"DK1", "DK2"})
MAX_ATTRIBUTES = 4
MAX_ATTRIBUTE_LENGTH = 32
MAX_BODY = 16 * 1024

RECIPIENT_ID = "0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69"
CERTIFICATE_ID = "6f1d0c55-2b1e-4f0e-8d8a-9b0f6f1b2c3d"

# BIP32 test vector 1, chain m/0H/1, as 74 bytes without version and checksum
# (spec/vectors/project-origin.txt, "wallet endpoint extended public key").
ENDPOINT_KEY_B64 = (
    "ATRCGT4AAAABjdlkFP9NW0dQvjr3/sziBxc/hta19Y+TZilxgN6OEJsDfCCY/SI1Zgc0Zn/4gh274OZZLUPP2Gtd3p6nyDm5OlA="
)
ENDPOINT_KEY = base64.b64decode(ENDPOINT_KEY_B64)
SECP256K1_P = 2**256 - 2**32 - 977


def _x_not_on_curve() -> bytes:
    """An x coordinate for which x³ + 7 has no square root mod p: no point has it."""
    x = 1
    while pow(x**3 + 7, (SECP256K1_P - 1) // 2, SECP256K1_P) != SECP256K1_P - 1:
        x += 1
    return x.to_bytes(32, "big")


def certificate_body() -> dict[str, Any]:
    return {
        "recipientId": RECIPIENT_ID,
        "registryName": "Narnia",
        "meteringPointId": "571234567890123456",
        "certificate": {
            "id": CERTIFICATE_ID,
            "type": "production",
            "quantity": 1234,
            "start": 1735689600,
            "end": 1735693200,
            "gridArea": "DK1",
            "clearTextAttributes": {"fuelCode": "F01040100", "techCode": "T010000"},
            "hashedAttributes": [{"key": "assetId", "value": "571234567890123456"}],
        },
    }


def pascal_case(value: Any) -> Any:
    """What the existing Stamp's production client sends: every member name PascalCase."""
    if isinstance(value, dict):
        return {
            k[:1].upper() + k[1:]: v if k == "clearTextAttributes" else pascal_case(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [pascal_case(v) for v in value]
    return value


def recipient_body() -> dict[str, Any]:
    return {
        "walletEndpointReference": {
            "version": 1,
            "endpoint": "https://wallet.example/v1/slices",
            "publicKey": ENDPOINT_KEY_B64,
        }
    }


def parse_certificate(body: object) -> CertificateContent:
    return parse_new_certificate(
        body,
        registries=REGISTRIES,
        grid_areas=GRID_AREAS,
        max_attributes=MAX_ATTRIBUTES,
        max_attribute_length=MAX_ATTRIBUTE_LENGTH,
    )


# --- the tiny server -------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def make_app() -> web.Application:
    routes = web.RouteTableDef()

    @routes.post("/v1/certificates")
    async def create_certificate(request: web.Request) -> web.Response:
        new = parse_certificate(await read_json_body(request, MAX_BODY))
        return web.json_response(
            {
                "certificateId": new.key.certificate_id,
                "recipientId": new.recipient_id,
                "type": new.certificate_type,
                "quantity": new.quantity,
                "clear": new.clear_attributes,
                "hashed": new.hashed_attributes,
                "digest": request_digest(new).hex(),
            },
            status=202,
        )

    @routes.post("/v1/recipients")
    async def create_recipient(request: web.Request) -> web.Response:
        new = parse_new_recipient(await read_json_body(request, MAX_BODY))
        return web.json_response(
            {
                "version": new.wallet_endpoint_version,
                "endpoint": new.wallet_endpoint_url,
                "publicKey": base64.b64encode(new.wallet_public_key).decode(),
            },
            status=201,
        )

    @routes.get("/v1/certificates/{registry}/{id}")
    async def get_certificate(request: web.Request) -> web.Response:
        return web.json_response({"id": parse_uuid(request.match_info["id"], "id")})

    @routes.get("/v1/certificates")
    async def list_certificates(request: web.Request) -> web.Response:
        query = {k.lower(): v for k, v in request.query.items()}
        limit = parse_limit(query.get("limit"), default=100, maximum=1000)
        state = parse_state_filter(query.get("state"))
        return web.json_response({"limit": limit, "state": state})

    @routes.get("/boom")
    async def boom(request: web.Request) -> web.Response:
        raise Boom("connection to postgresql://stamp:hunter2@db failed; issuer key MC4CAQAwBQYDK2VwBCIEI")

    @routes.get("/busy")
    async def busy(request: web.Request) -> web.Response:
        raise Unavailable("Stamp is shutting down", retry_after=7)

    @routes.get("/conflict")
    async def conflict(request: web.Request) -> web.Response:
        raise Conflict("already exists with different content", differences=["certificate.quantity"])

    @routes.get("/unknown-recipient")
    async def unknown_recipient(request: web.Request) -> web.Response:
        raise NotFound(f"recipient {RECIPIENT_ID} not found", field="recipientId")

    @routes.get("/redirect")
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/health")

    app = web.Application(middlewares=[problem_middleware])
    app.add_routes(routes)
    return app


Client = TestClient[web.Request, web.Application]


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[Client]:
    async with TestClient(TestServer(make_app(), host="127.0.0.1")) as test_client:
        yield test_client


async def post(
    client: Client, path: str, body: object, *, content_type: str = "application/json", **kwargs: Any
) -> tuple[int, str, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with client.post(path, data=data, headers={"Content-Type": content_type}, **kwargs) as response:
        return response.status, response.content_type, await response.json(content_type=None)


async def assert_problem(
    client: Client, path: str, body: object, status: int, *fields: str, **kwargs: Any
) -> dict[str, Any]:
    got_status, content_type, problem = await post(client, path, body, **kwargs)
    assert (got_status, content_type) == (status, CONTENT_TYPE), problem
    assert problem["status"] == status
    assert problem["title"] and problem["type"]
    named = {e["field"] for e in problem.get("errors", [])}
    assert set(fields) <= named, problem
    return problem


# --- accepted requests ------------------------------------------------------------------


async def test_camel_case_certificate_is_accepted(client: Client) -> None:
    status, content_type, answer = await post(client, "/v1/certificates", certificate_body())
    assert (status, content_type) == (202, "application/json")
    assert answer["certificateId"] == CERTIFICATE_ID
    assert answer["type"] == 2
    assert answer["clear"] == [["fuelCode", "F01040100"], ["techCode", "T010000"]]
    assert answer["hashed"] == [["assetId", "571234567890123456"]]


async def test_pascal_case_certificate_is_read_like_camel_case(client: Client) -> None:
    body = pascal_case(certificate_body())
    assert (
        "RecipientId" in body
        and "Type" in body["Certificate"]
        and "Key" in body["Certificate"]["HashedAttributes"][0]
    )
    _, _, camel = await post(client, "/v1/certificates", certificate_body())
    status, _, pascal = await post(client, "/v1/certificates", body)
    assert status == 202
    assert pascal == camel


async def test_member_names_match_in_any_case(client: Client) -> None:
    body = certificate_body()
    body["RECIPIENTID"] = body.pop("recipientId")
    body["certificate"]["qUaNtItY"] = body["certificate"].pop("quantity")
    status, _, answer = await post(client, "/v1/certificates", body)
    assert status == 202
    assert answer["quantity"] == 1234


@pytest.mark.parametrize(
    ("given", "expected"),
    [("production", 2), ("Production", 2), ("CONSUMPTION", 1), ("consumption", 1), (2, 2), (1, 1)],
)
async def test_type_is_read_as_word_or_number(client: Client, given: object, expected: int) -> None:
    body = certificate_body()
    body["certificate"]["type"] = given
    status, _, answer = await post(client, "/v1/certificates", body)
    assert (status, answer["type"]) == (202, expected)


async def test_an_unknown_type_is_answered_with_the_table_of_types(client: Client) -> None:
    body = certificate_body()
    body["certificate"]["type"] = "storage"
    problem = await assert_problem(client, "/v1/certificates", body, 400, "certificate.type")
    assert problem["errors"][0]["message"] == 'must be "production" or "consumption" (or the integer 2 or 1)'


async def test_ids_are_normalised_to_lower_case(client: Client) -> None:
    body = certificate_body()
    body["recipientId"] = RECIPIENT_ID.upper()
    body["certificate"]["id"] = CERTIFICATE_ID.upper()
    status, _, answer = await post(client, "/v1/certificates", body)
    assert status == 202
    assert (answer["recipientId"], answer["certificateId"]) == (RECIPIENT_ID, CERTIFICATE_ID)


async def test_structured_json_media_type_is_accepted(client: Client) -> None:
    status, _, _ = await post(
        client, "/v1/certificates", certificate_body(), content_type="application/vnd.stamp+json"
    )
    assert status == 202
    status, _, _ = await post(
        client, "/v1/certificates", certificate_body(), content_type="Application/JSON; charset=UTF-8"
    )
    assert status == 202


async def test_body_of_exactly_the_limit_is_accepted(client: Client) -> None:
    data = json.dumps(certificate_body()).encode()
    data += b" " * (MAX_BODY - len(data))
    assert len(data) == MAX_BODY
    status, _, _ = await post(client, "/v1/certificates", data)
    assert status == 202


async def test_utf8_byte_order_mark_is_ignored(client: Client) -> None:
    status, _, _ = await post(
        client, "/v1/certificates", b"\xef\xbb\xbf" + json.dumps(certificate_body()).encode()
    )
    assert status == 202


async def test_attributes_are_optional_and_null_means_none(client: Client) -> None:
    body = certificate_body()
    del body["certificate"]["clearTextAttributes"]
    body["certificate"]["hashedAttributes"] = None
    status, _, answer = await post(client, "/v1/certificates", body)
    assert (status, answer["clear"], answer["hashed"]) == (202, [], [])


async def test_recipient_is_accepted_in_camel_and_pascal_case(client: Client) -> None:
    for body in (recipient_body(), pascal_case(recipient_body())):
        status, _, answer = await post(client, "/v1/recipients", body)
        assert status == 201
        assert answer == {
            "version": 1,
            "endpoint": "https://wallet.example/v1/slices",
            "publicKey": ENDPOINT_KEY_B64,
        }


async def test_successful_answers_carry_a_request_id(client: Client) -> None:
    async with client.post(
        "/v1/recipients", json=recipient_body(), headers={"X-Request-Id": "abc-123"}
    ) as response:
        assert response.headers["X-Request-Id"] == "abc-123"


# --- rejected certificates --------------------------------------------------------------


Mutation = Callable[[dict[str, Any]], object]


def _set(path: str, value: object) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = body
        for name in parents:
            target = target[name]
        target[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = body
        for name in parents:
            target = target[name]
        del target[last]

    return mutate


def _period(start: int, end: int) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        body["certificate"]["start"], body["certificate"]["end"] = start, end

    return mutate


def _attributes(clear: dict[str, Any] | None, hashed: list[Any] | None) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        body["certificate"]["clearTextAttributes"] = clear
        body["certificate"]["hashedAttributes"] = hashed

    return mutate


LONG = "x" * (MAX_ATTRIBUTE_LENGTH + 1)

BAD_CERTIFICATES: list[tuple[str, Mutation, list[str]]] = [
    ("missing recipient id", _delete("recipientId"), ["recipientId"]),
    ("recipient id not a uuid", _set("recipientId", "not-a-uuid"), ["recipientId"]),
    ("recipient id without hyphens", _set("recipientId", RECIPIENT_ID.replace("-", "")), ["recipientId"]),
    ("recipient id a number", _set("recipientId", 12), ["recipientId"]),
    ("recipient id null", _set("recipientId", None), ["recipientId"]),
    ("unknown registry", _set("registryName", "Atlantis"), ["registryName"]),
    ("registry name in another case", _set("registryName", "narnia"), ["registryName"]),
    ("registry name not a string", _set("registryName", ["Narnia"]), ["registryName"]),
    ("empty metering point", _set("meteringPointId", ""), ["meteringPointId"]),
    ("blank metering point", _set("meteringPointId", "   "), ["meteringPointId"]),
    ("metering point too long", _set("meteringPointId", "5" * 257), ["meteringPointId"]),
    ("metering point a number", _set("meteringPointId", 571234567890123456), ["meteringPointId"]),
    ("metering point with NUL", _set("meteringPointId", "5712\x0034"), ["meteringPointId"]),
    ("missing certificate", _delete("certificate"), ["certificate"]),
    ("certificate an array", _set("certificate", []), ["certificate"]),
    ("certificate id not a uuid", _set("certificate.id", "1234"), ["certificate.id"]),
    ("certificate id missing", _delete("certificate.id"), ["certificate.id"]),
    ("unknown type word", _set("certificate.type", "solar"), ["certificate.type"]),
    ("type number 3", _set("certificate.type", 3), ["certificate.type"]),
    ("type number 0", _set("certificate.type", 0), ["certificate.type"]),
    ("type as digit string", _set("certificate.type", "2"), ["certificate.type"]),
    ("type a boolean", _set("certificate.type", True), ["certificate.type"]),
    ("quantity zero", _set("certificate.quantity", 0), ["certificate.quantity"]),
    ("quantity negative", _set("certificate.quantity", -5), ["certificate.quantity"]),
    ("quantity above 2^32-1", _set("certificate.quantity", 2**32), ["certificate.quantity"]),
    ("quantity huge", _set("certificate.quantity", 10**30), ["certificate.quantity"]),
    ("quantity a fraction", _set("certificate.quantity", 12.5), ["certificate.quantity"]),
    ("quantity an integral float", _set("certificate.quantity", 1234.0), ["certificate.quantity"]),
    ("quantity a boolean", _set("certificate.quantity", True), ["certificate.quantity"]),
    ("quantity a string", _set("certificate.quantity", "1234"), ["certificate.quantity"]),
    ("quantity missing", _delete("certificate.quantity"), ["certificate.quantity"]),
    ("start a string", _set("certificate.start", "2025-01-01T00:00:00Z"), ["certificate.start"]),
    ("start negative", _period(-3600, 0), ["certificate.start"]),
    ("start after end", _period(1735693200, 1735689600), ["certificate.end"]),
    ("start equal to end", _period(1735689600, 1735689600), ["certificate.end"]),
    ("period under a minute", _period(1735689600, 1735689659), ["certificate.end"]),
    ("period over an hour", _period(1735689600, 1735693201), ["certificate.end"]),
    ("grid area without issuer key", _set("certificate.gridArea", "DK9"), ["certificate.gridArea"]),
    ("grid area missing", _delete("certificate.gridArea"), ["certificate.gridArea"]),
    (
        "clear attribute value a number",
        _set("certificate.clearTextAttributes", {"fuelCode": 1040100}),
        ["certificate.clearTextAttributes.fuelCode"],
    ),
    (
        "clear attribute value null",
        _set("certificate.clearTextAttributes", {"fuelCode": None}),
        ["certificate.clearTextAttributes.fuelCode"],
    ),
    (
        "clear attributes an array",
        _set("certificate.clearTextAttributes", [["fuelCode", "F01"]]),
        ["certificate.clearTextAttributes"],
    ),
    (
        "clear attribute empty key",
        _set("certificate.clearTextAttributes", {"": "F01"}),
        ['certificate.clearTextAttributes[""]'],
    ),
    (
        "clear attribute key too long",
        _set("certificate.clearTextAttributes", {LONG: "F01"}),
        [f"certificate.clearTextAttributes.{LONG}"],
    ),
    (
        "clear attribute value too long",
        _set("certificate.clearTextAttributes", {"fuelCode": LONG}),
        ["certificate.clearTextAttributes.fuelCode"],
    ),
    (
        "hashed attributes an object",
        _set("certificate.hashedAttributes", {"assetId": "1"}),
        ["certificate.hashedAttributes"],
    ),
    (
        "hashed attribute not an object",
        _set("certificate.hashedAttributes", ["assetId"]),
        ["certificate.hashedAttributes[0]"],
    ),
    (
        "hashed attribute value a number",
        _set("certificate.hashedAttributes", [{"key": "assetId", "value": 5712}]),
        ["certificate.hashedAttributes[0].value"],
    ),
    (
        "hashed attribute without value",
        _set("certificate.hashedAttributes", [{"key": "assetId"}]),
        ["certificate.hashedAttributes[0].value"],
    ),
    (
        "hashed attribute with an extra member",
        _set("certificate.hashedAttributes", [{"key": "assetId", "value": "1", "salt": "AAAA"}]),
        ["certificate.hashedAttributes[0].salt"],
    ),
    (
        "hashed attribute key too long",
        _set("certificate.hashedAttributes", [{"key": LONG, "value": "1"}]),
        ["certificate.hashedAttributes[0].key"],
    ),
    (
        "duplicate hashed attribute keys",
        _set(
            "certificate.hashedAttributes",
            [{"key": "assetId", "value": "1"}, {"key": "assetId", "value": "2"}],
        ),
        ["certificate.hashedAttributes[1].key"],
    ),
    (
        "hashed attribute key also a clear key",
        _attributes({"assetId": "1"}, [{"key": "assetId", "value": "2"}]),
        ["certificate.hashedAttributes[0].key"],
    ),
    (
        "hashed attribute key also an invalid clear attribute",
        _attributes({"assetId": 5712}, [{"key": "assetId", "value": "2"}]),
        ["certificate.clearTextAttributes.assetId", "certificate.hashedAttributes[0].key"],
    ),
    (
        "too many attributes",
        _attributes({f"k{i}": "v" for i in range(3)}, [{"key": f"h{i}", "value": "v"} for i in range(2)]),
        ["certificate.clearTextAttributes", "certificate.hashedAttributes"],
    ),
    (
        "too many clear attributes alone",
        _attributes({f"k{i}": "v" for i in range(MAX_ATTRIBUTES + 1)}, None),
        ["certificate.clearTextAttributes"],
    ),
    ("unknown top-level field", _set("colour", "green"), ["colour"]),
    ("unknown certificate field", _set("certificate.Colour", "green"), ["certificate.Colour"]),
]


@pytest.mark.parametrize(
    ("mutate", "fields"), [c[1:] for c in BAD_CERTIFICATES], ids=[c[0] for c in BAD_CERTIFICATES]
)
async def test_bad_certificate_is_rejected_naming_the_field(
    client: Client, mutate: Mutation, fields: list[str]
) -> None:
    body = certificate_body()
    mutate(body)
    await assert_problem(client, "/v1/certificates", body, 400, *fields)


async def test_every_field_at_fault_is_listed_at_once(client: Client) -> None:
    body = certificate_body()
    body["recipientId"] = "nope"
    body["registryName"] = "Atlantis"
    body["certificate"]["quantity"] = 0
    body["certificate"]["end"] = body["certificate"]["start"]
    body["certificate"]["gridArea"] = "DK9"
    body["certificate"]["Extra"] = 1
    problem = await assert_problem(client, "/v1/certificates", body, 400)
    assert [e["field"] for e in problem["errors"]] == [
        "recipientId",
        "registryName",
        "certificate.quantity",
        "certificate.end",
        "certificate.gridArea",
        "certificate.Extra",
    ]
    assert problem["type"] == "https://stamp.energy/problems/validation"
    assert "6 fields are invalid" in problem["detail"]


def _raw_certificate(replace: str, by: str) -> bytes:
    text = json.dumps(certificate_body())
    assert replace in text
    return text.replace(replace, by, 1).encode()


RAW_BAD_BODIES: list[tuple[str, bytes, list[str]]] = [
    ("invalid json", b'{"recipientId": ', ["body"]),
    ("trailing garbage", json.dumps(certificate_body()).encode() + b" x", ["body"]),
    ("NaN", _raw_certificate('"quantity": 1234', '"quantity": NaN'), ["body"]),
    ("Infinity", _raw_certificate('"quantity": 1234', '"quantity": Infinity'), ["body"]),
    ("not utf-8", b'{"meteringPointId": "\xff\xfe"}', ["body"]),
    ("utf-16", json.dumps(certificate_body()).encode("utf-16"), ["body"]),
    ("top-level array", b"[]", ["body"]),
    ("top-level string", b'"hello"', ["body"]),
    ("empty body", b"", ["body"]),
    ("deeply nested", b'{"a":' + b"[" * 7000 + b"]" * 7000 + b"}", ["body"]),
    ("integer with too many digits", b'{"a": ' + b"9" * 5000 + b"}", ["body"]),
    (
        "the same member twice",
        _raw_certificate('"recipientId": ', f'"recipientId": "{RECIPIENT_ID}", "recipientId": '),
        ["recipientId"],
    ),
    (
        "the same member in two cases",
        _raw_certificate('"quantity": 1234', '"quantity": 1234, "Quantity": 1234'),
        ["certificate.quantity"],
    ),
    (
        "the same clear attribute key twice",
        _raw_certificate('"techCode": ', '"fuelCode": "F02", "techCode": '),
        ["certificate.clearTextAttributes.fuelCode"],
    ),
    (
        "lone surrogate in a value",
        _raw_certificate('"571234567890123456"', '"5712\\ud800"'),
        ["meteringPointId"],
    ),
    (
        "lone surrogate in an attribute key",
        _raw_certificate('"fuelCode"', '"fuel\\udc00"'),
        ['certificate.clearTextAttributes["fuel\\udc00"]'],
    ),
    (
        "lone surrogate in an unknown name",
        _raw_certificate('"registryName"', '"x\\ud800": 1, "registryName"'),
        ['["x\\ud800"]'],
    ),
]


@pytest.mark.parametrize(
    ("data", "fields"), [c[1:] for c in RAW_BAD_BODIES], ids=[c[0] for c in RAW_BAD_BODIES]
)
async def test_malformed_body_is_rejected_naming_the_field(
    client: Client, data: bytes, fields: list[str]
) -> None:
    await assert_problem(client, "/v1/certificates", data, 400, *fields)


# --- media type and size ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "application/json; charset=utf-16",
    ],
)
async def test_non_json_content_type_is_unsupported(client: Client, content_type: str) -> None:
    await assert_problem(client, "/v1/certificates", certificate_body(), 415, content_type=content_type)


async def test_missing_content_type_is_unsupported(client: Client) -> None:
    data = json.dumps(certificate_body()).encode()
    async with client.post("/v1/certificates", data=data, skip_auto_headers=["Content-Type"]) as response:
        assert (response.status, response.content_type) == (415, CONTENT_TYPE)


async def test_compressed_body_is_unsupported(client: Client) -> None:
    data = gzip.compress(json.dumps(certificate_body()).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with client.post("/v1/certificates", data=data, headers=headers) as response:
        assert (response.status, response.content_type) == (415, CONTENT_TYPE)
        assert response.headers["Accept-Encoding"] == "identity"


async def test_body_over_the_limit_is_refused_by_its_length(client: Client) -> None:
    data = json.dumps(certificate_body()).encode()
    data += b" " * (MAX_BODY + 1 - len(data))
    problem = await assert_problem(client, "/v1/certificates", data, 413)
    assert problem["maxBytes"] == MAX_BODY


async def test_chunked_body_over_the_limit_is_refused_while_reading(client: Client) -> None:
    """No Content-Length to trust: the limit is enforced on the bytes read."""

    async def chunks() -> AsyncIterator[bytes]:
        yield json.dumps(certificate_body())[:-1].encode()
        for _ in range(2 * MAX_BODY // 1024):
            yield b" " * 1024
        yield b"}"

    headers = {"Content-Type": "application/json"}
    async with client.post("/v1/certificates", data=chunks(), headers=headers) as response:
        assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in response.request_info.headers
        assert (response.status, response.content_type) == (413, CONTENT_TYPE)


async def test_chunked_body_within_the_limit_is_read(client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        data = json.dumps(certificate_body()).encode()
        for i in range(0, len(data), 7):
            yield data[i : i + 7]

    async with client.post(
        "/v1/certificates", data=chunks(), headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 202


# --- rejected recipients ------------------------------------------------------------------


def _key_with(public_key: bytes) -> str:
    return base64.b64encode(ENDPOINT_KEY[:41] + public_key).decode()


BAD_RECIPIENTS: list[tuple[str, Mutation, str]] = [
    ("missing reference", _delete("walletEndpointReference"), "walletEndpointReference"),
    ("reference a string", _set("walletEndpointReference", "https://wallet"), "walletEndpointReference"),
    ("unsupported version", _set("walletEndpointReference.version", 2), "walletEndpointReference.version"),
    ("version zero", _set("walletEndpointReference.version", 0), "walletEndpointReference.version"),
    ("version a string", _set("walletEndpointReference.version", "1"), "walletEndpointReference.version"),
    ("version a boolean", _set("walletEndpointReference.version", True), "walletEndpointReference.version"),
    ("version missing", _delete("walletEndpointReference.version"), "walletEndpointReference.version"),
    (
        "ftp endpoint",
        _set("walletEndpointReference.endpoint", "ftp://wallet/v1"),
        "walletEndpointReference.endpoint",
    ),
    (
        "relative endpoint",
        _set("walletEndpointReference.endpoint", "/v1/slices"),
        "walletEndpointReference.endpoint",
    ),
    (
        "endpoint without host",
        _set("walletEndpointReference.endpoint", "https://"),
        "walletEndpointReference.endpoint",
    ),
    (
        "endpoint without scheme",
        _set("walletEndpointReference.endpoint", "wallet.example/v1"),
        "walletEndpointReference.endpoint",
    ),
    (
        "endpoint with bad port",
        _set("walletEndpointReference.endpoint", "https://w:99999/"),
        "walletEndpointReference.endpoint",
    ),
    (
        "endpoint with credentials",
        _set("walletEndpointReference.endpoint", "https://u:p@w/"),
        "walletEndpointReference.endpoint",
    ),
    (
        "endpoint with a space",
        _set("walletEndpointReference.endpoint", "https://w/a b"),
        "walletEndpointReference.endpoint",
    ),
    (
        "endpoint not a string",
        _set("walletEndpointReference.endpoint", {"url": "x"}),
        "walletEndpointReference.endpoint",
    ),
    (
        "public key not base64",
        _set("walletEndpointReference.publicKey", "not base64!"),
        "walletEndpointReference.publicKey",
    ),
    (
        "public key without padding",
        _set("walletEndpointReference.publicKey", ENDPOINT_KEY_B64.rstrip("=")),
        "walletEndpointReference.publicKey",
    ),
    (
        "public key with a line break",
        _set("walletEndpointReference.publicKey", ENDPOINT_KEY_B64[:40] + "\n" + ENDPOINT_KEY_B64[40:]),
        "walletEndpointReference.publicKey",
    ),
    (
        "public key url-safe base64",
        _set("walletEndpointReference.publicKey", base64.urlsafe_b64encode(ENDPOINT_KEY).decode()),
        "walletEndpointReference.publicKey",
    ),
    (
        "public key 73 bytes",
        _set("walletEndpointReference.publicKey", base64.b64encode(ENDPOINT_KEY[:73]).decode()),
        "walletEndpointReference.publicKey",
    ),
    (
        "public key 33 bytes (a bare point)",
        _set("walletEndpointReference.publicKey", base64.b64encode(ENDPOINT_KEY[41:]).decode()),
        "walletEndpointReference.publicKey",
    ),
    (
        "public key with an uncompressed prefix",
        _set("walletEndpointReference.publicKey", _key_with(b"\x04" + ENDPOINT_KEY[42:])),
        "walletEndpointReference.publicKey",
    ),
    (
        "public key off the curve",
        _set("walletEndpointReference.publicKey", _key_with(b"\x02" + _x_not_on_curve())),
        "walletEndpointReference.publicKey",
    ),
    (
        "public key x not below p",
        _set("walletEndpointReference.publicKey", _key_with(b"\x02" + SECP256K1_P.to_bytes(32, "big"))),
        "walletEndpointReference.publicKey",
    ),
    (
        "public key a byte array",
        _set("walletEndpointReference.publicKey", list(ENDPOINT_KEY)),
        "walletEndpointReference.publicKey",
    ),
    ("unknown reference field", _set("walletEndpointReference.owner", "me"), "walletEndpointReference.owner"),
    ("unknown top-level field", _set("Id", RECIPIENT_ID), "Id"),
]


@pytest.mark.parametrize(
    ("mutate", "field"), [c[1:] for c in BAD_RECIPIENTS], ids=[c[0] for c in BAD_RECIPIENTS]
)
async def test_bad_recipient_is_rejected_naming_the_field(
    client: Client, mutate: Mutation, field: str
) -> None:
    body = recipient_body()
    mutate(body)
    await assert_problem(client, "/v1/recipients", body, 400, field)


async def test_unsupported_wallet_version_says_so(client: Client) -> None:
    body = recipient_body()
    body["walletEndpointReference"]["version"] = 2
    problem = await assert_problem(client, "/v1/recipients", body, 400, "walletEndpointReference.version")
    assert "unsupported wallet endpoint version" in problem["errors"][0]["message"]


async def test_invalid_point_is_reported_as_an_invalid_key(client: Client) -> None:
    body = recipient_body()
    body["walletEndpointReference"]["publicKey"] = _key_with(b"\x03" + _x_not_on_curve())
    problem = await assert_problem(client, "/v1/recipients", body, 400, "walletEndpointReference.publicKey")
    assert "not a valid extended secp256k1 public key" in problem["errors"][0]["message"]


# --- path and query parameters ------------------------------------------------------------


async def test_uuid_path_parameter_is_validated(client: Client) -> None:
    async with client.get(f"/v1/certificates/Narnia/{CERTIFICATE_ID.upper()}") as response:
        assert response.status == 200
        assert await response.json() == {"id": CERTIFICATE_ID}
    async with client.get("/v1/certificates/Narnia/not-a-uuid") as response:
        assert (response.status, response.content_type) == (400, CONTENT_TYPE)
        assert [e["field"] for e in (await response.json())["errors"]] == ["id"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("state=lost", "state"),
    ],
)
async def test_bad_query_parameter_is_rejected_naming_it(client: Client, query: str, field: str) -> None:
    async with client.get(f"/v1/certificates?{query}") as response:
        assert (response.status, response.content_type) == (400, CONTENT_TYPE)
        assert [e["field"] for e in (await response.json())["errors"]] == [field]


async def test_query_parameters_have_defaults(client: Client) -> None:
    async with client.get("/v1/certificates") as response:
        assert await response.json() == {"limit": 100, "state": None}
    async with client.get("/v1/certificates?Limit=1000&State=FAILED") as response:
        assert await response.json() == {"limit": 1000, "state": "failed"}


# --- the error shape ----------------------------------------------------------------------


async def test_unknown_route_is_a_problem(client: Client) -> None:
    async with client.get("/v1/nothing-here") as response:
        assert (response.status, response.content_type) == (404, CONTENT_TYPE)
        problem = await response.json()
        assert (
            problem["status"] == 404 and problem["type"] == "about:blank" and problem["title"] == "Not Found"
        )


async def test_wrong_method_is_a_problem_with_allow(client: Client) -> None:
    async with client.delete("/v1/recipients") as response:
        assert (response.status, response.content_type) == (405, CONTENT_TYPE)
        assert response.headers["Allow"] == "POST"
        assert (await response.json())["status"] == 405


async def test_unexpected_exception_is_a_500_that_leaks_nothing(client: Client) -> None:
    with structlog.testing.capture_logs() as logs:
        async with client.get("/boom") as response:
            text = await response.text()
            request_id = response.headers["X-Request-Id"]
            assert (response.status, response.content_type) == (500, CONTENT_TYPE)
    for secret in ("hunter2", "postgresql", "MC4CAQAw", "Boom", "issuer", "Traceback"):
        assert secret not in text
    problem = orjson.loads(text)
    assert problem["status"] == 500 and problem["requestId"] == request_id
    failed = [entry for entry in logs if entry["event"] == "request.failed"]
    assert len(failed) == 1
    assert failed[0]["request_id"] == request_id
    assert failed[0]["path"] == "/boom"
    assert failed[0]["log_level"] == "error" and failed[0].get("exc_info")


async def test_client_request_id_is_used_when_sane(client: Client) -> None:
    async with client.get("/boom", headers={"X-Request-Id": "trace-42"}) as response:
        assert (await response.json())["requestId"] == "trace-42"
    async with client.get("/boom", headers={"X-Request-Id": "bad id with spaces"}) as response:
        assert (await response.json())["requestId"] != "bad id with spaces"


async def test_unavailable_carries_retry_after(client: Client) -> None:
    async with client.get("/busy") as response:
        assert (response.status, response.content_type) == (503, CONTENT_TYPE)
        assert response.headers["Retry-After"] == "7"
        problem = await response.json()
        assert problem["retryAfter"] == 7 and problem["detail"] == "Stamp is shutting down"


async def test_conflict_lists_the_differences(client: Client) -> None:
    async with client.get("/conflict") as response:
        assert (response.status, response.content_type) == (409, CONTENT_TYPE)
        assert (await response.json())["differences"] == ["certificate.quantity"]


async def test_not_found_names_the_referring_field(client: Client) -> None:
    async with client.get("/unknown-recipient") as response:
        assert (response.status, response.content_type) == (404, CONTENT_TYPE)
        assert [e["field"] for e in (await response.json())["errors"]] == ["recipientId"]


async def test_redirects_pass_through_the_middleware(client: Client) -> None:
    async with client.get("/redirect", allow_redirects=False) as response:
        assert response.status == 302 and response.headers["Location"] == "/health"


def test_validation_problem_caps_the_errors_it_reports() -> None:
    problem = ValidationProblem([FieldError(f"f{i}", "bad") for i in range(MAX_REPORTED_ERRORS + 5)])
    body = problem.to_json()
    assert len(body["errors"]) == MAX_REPORTED_ERRORS
    assert body["omittedErrors"] == 5


def test_problem_response_survives_unencodable_text() -> None:
    response = problem_response(ValidationProblem.single("x\ud800", "bad"))
    assert response.status == 400 and response.content_type == CONTENT_TYPE
    assert response.body is not None
    assert json.loads(bytes(response.body))["errors"][0]["field"] == "x\ud800"  # type: ignore[arg-type]


def test_extra_members_cannot_replace_standard_ones() -> None:
    with pytest.raises(ValueError, match="instance"):
        Problem("x", instance="/elsewhere")


# --- pure parsing ---------------------------------------------------------------------------


def test_identical_request_has_the_same_digest_whatever_the_spelling() -> None:
    camel = parse_certificate(certificate_body())
    pascal = parse_certificate(pascal_case(certificate_body()))
    body = certificate_body()
    body["certificate"]["type"] = 2
    body["certificate"]["clearTextAttributes"] = {"techCode": "T010000", "fuelCode": "F01040100"}
    reordered = parse_certificate(body)
    assert camel == pascal
    assert request_digest(camel) == request_digest(pascal) == request_digest(reordered)
    assert differences(camel, reordered) == []
    assert len(request_digest(camel)) == 32


def test_the_request_digest_of_a_stored_certificate_never_changes() -> None:
    # Rows keep the digest of the request that stored them; a re-post is recognised
    # as identical only while the digest is computed exactly as it was then.
    digest = request_digest(parse_certificate(certificate_body()))
    assert digest.hex() == "6811ff69dfccd7260bb67f3596dc10ba4b69459c34f56fe79553e44c3438c2c9"


def test_different_request_has_another_digest_and_names_the_differences() -> None:
    first = parse_certificate(certificate_body())
    body = certificate_body()
    body["certificate"]["quantity"] = 1235
    body["certificate"]["hashedAttributes"][0]["value"] = "other"
    second = parse_certificate(body)
    assert request_digest(first) != request_digest(second)
    assert differences(first, second) == ["certificate.quantity", "certificate.hashedAttributes"]


def test_differences_ignore_how_ids_were_stored() -> None:
    new = parse_certificate(certificate_body())
    stored = CertificateContent(
        key=CertificateKey("Narnia", uuid.UUID(CERTIFICATE_ID)),  # type: ignore[arg-type]
        recipient_id=uuid.UUID(RECIPIENT_ID),  # type: ignore[arg-type]  # as asyncpg returns a uuid column
        metering_point_id="571234567890123456",
        certificate_type=2,
        quantity=1234,
        start=1735689600,
        end=1735693200,
        grid_area="DK1",
        clear_attributes=(("fuelCode", "F01040100"), ("techCode", "T010000")),
        hashed_attributes=(("assetId", "571234567890123456"),),
    )
    assert differences(new, stored) == []
    assert request_digest(new) == request_digest(stored)


def test_clear_attributes_keep_the_order_they_were_sent_in() -> None:
    body = certificate_body()
    body["certificate"]["clearTextAttributes"] = {"z": "1", "a": "2", "m": "3"}
    body["certificate"]["hashedAttributes"] = []
    assert parse_certificate(body).clear_attributes == (("z", "1"), ("a", "2"), ("m", "3"))


def test_attribute_keys_are_case_sensitive_data() -> None:
    body = certificate_body()
    body["certificate"]["clearTextAttributes"] = {"fuelCode": "1", "FuelCode": "2"}
    assert parse_certificate(body).clear_attributes == (("fuelCode", "1"), ("FuelCode", "2"))


def test_hashed_attribute_values_stay_out_of_the_repr() -> None:
    text = repr(parse_certificate(certificate_body()))
    assert "fuelCode" in text
    assert "assetId" not in text


def test_period_bounds_are_inclusive() -> None:
    for seconds in (60, 3600):
        body = certificate_body()
        body["certificate"]["end"] = body["certificate"]["start"] + seconds
        assert parse_certificate(body).end - parse_certificate(body).start == seconds


def test_quantity_bounds_are_inclusive() -> None:
    for quantity in (1, 2**32 - 1):
        body = certificate_body()
        body["certificate"]["quantity"] = quantity
        assert parse_certificate(body).quantity == quantity


def test_non_ascii_spelling_does_not_match_a_member() -> None:
    body = certificate_body()
    body["certificate"]["hashedAttributes"] = [{"\u212aey": "assetId", "value": "1"}]  # Kelvin sign K
    with pytest.raises(ValidationProblem) as caught:
        parse_certificate(body)
    assert {e.field for e in caught.value.errors} == {
        "certificate.hashedAttributes[0].key",
        'certificate.hashedAttributes[0]["\u212aey"]',
    }


def test_parse_functions_refuse_a_non_object() -> None:
    for parse in (parse_certificate, parse_new_recipient):
        with pytest.raises(ValidationProblem) as caught:
            parse([certificate_body()])
        assert caught.value.errors == (FieldError("body", "must be a JSON object, got an array"),)


def test_duplicates_are_remembered_by_the_json_reader() -> None:
    obj = parse_json_object(b'{"a": 1, "b": 2, "a": 3, "b": 4, "c": 5}')
    assert getattr(obj, "duplicates") == ("a", "b")  # noqa: B009


def test_parse_uuid_returns_the_canonical_form() -> None:
    assert parse_uuid(RECIPIENT_ID.upper(), "id") == RECIPIENT_ID
    for bad in ("", "{" + RECIPIENT_ID + "}", "urn:uuid:" + RECIPIENT_ID, RECIPIENT_ID + "\n", None, 5):
        with pytest.raises(ValidationProblem):
            parse_uuid(bad, "id")


def test_parse_int_param() -> None:
    assert parse_int_param(None, "skip", default=0, maximum=10) == 0
    assert parse_int_param("", "skip", default=3, maximum=10) == 3
    assert parse_int_param("10", "skip", default=0, maximum=10) == 10
    for bad in ("11", "-1", "1.5", "٣", " 1", "1" * 40):
        with pytest.raises(ValidationProblem) as caught:
            parse_int_param(bad, "skip", default=0, maximum=10)
        assert caught.value.errors[0].field == "skip"
    assert parse_limit("5", 100, 1000) == 5


def test_parse_state_filter() -> None:
    assert parse_state_filter(None) is None
    assert parse_state_filter("Sent_To_Registry") is State.SENT_TO_REGISTRY
    with pytest.raises(ValidationProblem):
        parse_state_filter("done")


# --- nothing a client sends makes Stamp fail ---------------------------------------------------


_text = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=12)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=16,
)


def _case(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.upper(), name[:1].upper() + name[1:], name.lower()])


@st.composite
def _mutated(draw: st.DrawFn, template: dict[str, Any]) -> dict[str, Any]:
    """The template with members re-cased, dropped, replaced by random JSON, or added."""
    out: dict[str, Any] = {}
    for name, value in template.items():
        choice = draw(st.sampled_from(["keep", "keep", "drop", "random"]))
        if choice == "drop":
            continue
        if choice == "random":
            value = draw(_json_values)
        elif isinstance(value, dict) and name != "clearTextAttributes":
            value = draw(_mutated(value))
        out[draw(_case(name))] = value
    if draw(st.booleans()):
        out[draw(_text)] = draw(_json_values)
    return out


def _encode(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()  # escapes lone surrogates, as a client could


_bodies = st.one_of(
    _mutated(certificate_body()).map(_encode),
    _json_values.map(_encode),
    st.binary(max_size=64),
)
_recipient_bodies = st.one_of(_mutated(recipient_body()).map(_encode), _json_values.map(_encode))


@settings(max_examples=150, deadline=None)
@given(data=_bodies)
async def test_random_certificate_bodies_never_cause_a_server_error(client: Client, data: bytes) -> None:
    async with client.post(
        "/v1/certificates", data=data, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status in (202, 400), await response.text()
        if response.status == 400:
            assert response.content_type == CONTENT_TYPE
            problem = await response.json()
            assert problem["errors"] and all(e["field"] and e["message"] for e in problem["errors"])


@settings(max_examples=100, deadline=None)
@given(data=_recipient_bodies)
async def test_random_recipient_bodies_never_cause_a_server_error(client: Client, data: bytes) -> None:
    async with client.post(
        "/v1/recipients", data=data, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status in (201, 400), await response.text()
        assert response.status == 201 or response.content_type == CONTENT_TYPE
