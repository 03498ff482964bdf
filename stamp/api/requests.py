"""Request bodies and query parameters of the REST API (docs/api.md), parsed into frozen values.

Bodies are read as the existing service reads them: member names case-insensitively at
every level (a production client sends ``RecipientId``, ``Certificate.Type``), the
certificate type as a word or as the integer 1 / 2. Everything else is strict — an
unknown member, a member given twice, a wrong JSON type (``true`` is not an integer) —
and every fault is collected before answering, so a client fixes its request in one go.

What passes here cannot fail later for a reason visible now: the registry's period rule,
a known registry and grid area, canonical lower-case UUIDs (the range-proof label and the
hashed attributes depend on the exact id string), text PostgreSQL and orjson can hold.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from stamp.api.problems import (
    FieldError,
    PayloadTooLarge,
    Problem,
    UnsupportedMediaType,
    ValidationProblem,
)
from stamp.crypto.hdkeys import ExtendedPublicKey
from stamp.domain import (
    CERTIFICATE_TYPE_NUMBERS,
    CERTIFICATE_TYPES,
    CertificateContent,
    CertificateKey,
    State,
)

WALLET_ENDPOINT_VERSION: Final = 1
EXTENDED_PUBLIC_KEY_BYTES: Final = 74
MAX_QUANTITY: Final = 2**32 - 1
MIN_PERIOD_SECONDS: Final = 60
MAX_PERIOD_SECONDS: Final = 3600
MAX_UNIX_SECONDS: Final = 253_402_300_799
"""9999-12-31T23:59:59Z: the end of protobuf Timestamp's range (the registry's period type)."""
MAX_ID_LENGTH: Final = 256
"""Registry names, grid areas and metering point ids are short codes (a GSRN has 18 digits)."""
MAX_URL_LENGTH: Final = 2048

BODY: Final = "body"
"""The ``field`` of a FieldError about the body as a whole."""


# --- values -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewRecipient:
    wallet_endpoint_version: int
    wallet_endpoint_url: str
    wallet_public_key: bytes


def _comparable(new: CertificateContent) -> dict[str, Any]:
    """The request's meaning, keyed by JSON path. Attribute order does not change what
    a certificate says, so a re-post that reorders them is the same request (a client
    re-serialising a map must not see a false conflict). ``str`` because a value
    rebuilt from the database may carry ``uuid.UUID`` ids."""
    return {
        "recipientId": str(new.recipient_id).lower(),
        "registryName": new.key.registry,
        "meteringPointId": new.metering_point_id,
        "certificate.id": str(new.key.certificate_id).lower(),
        "certificate.type": new.certificate_type,
        "certificate.quantity": new.quantity,
        "certificate.start": new.start,
        "certificate.end": new.end,
        "certificate.gridArea": new.grid_area,
        "certificate.clearTextAttributes": sorted((str(k), str(v)) for k, v in new.clear_attributes),
        "certificate.hashedAttributes": sorted((str(k), str(v)) for k, v in new.hashed_attributes),
    }


def request_digest(new: CertificateContent) -> bytes:
    """SHA-256 of a canonical JSON of the request: equal digests ⇔ identical re-post."""
    document = {"schema": "stamp.new-certificate.v1", **_comparable(new)}
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).digest()


def differences(new: CertificateContent, stored: CertificateContent) -> list[str]:
    """JSON paths of the fields whose values differ (for a 409's ``differences``)."""
    mine, theirs = _comparable(new), _comparable(stored)
    return [path for path, value in mine.items() if theirs[path] != value]


# --- reading the body ---------------------------------------------------------------


class JsonObject(dict[str, Any]):
    """A parsed JSON object that remembers the names it was given more than once: a
    plain dict silently keeps the last, and a duplicate must be reported, not guessed."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj = JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated: dict[str, None] = {}
        for key, _ in pairs:
            if key in seen:
                repeated[key] = None
            seen.add(key)
        obj.duplicates = tuple(repeated)
    return obj


class _NotJson(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value")


# The stdlib decoder because it has object_pairs_hook (orjson keeps the last duplicate
# without a word); a certificate body still parses in a few microseconds.
_DECODER = json.JSONDecoder(object_pairs_hook=_object_pairs, parse_constant=_reject_constant)


def parse_json_object(data: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8 only, no NaN/Infinity, an object at the top. The objects are
    ``JsonObject``s, so the parse_* functions can report duplicated names."""
    data = data.removeprefix(b"\xef\xbb\xbf")  # RFC 8259 §8.1: a parser may ignore a BOM
    if not data.strip():
        raise ValidationProblem.single(BODY, "is empty; expected a JSON object")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationProblem.single(BODY, f"is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise ValidationProblem.single(
            BODY, f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except _NotJson as exc:
        raise ValidationProblem.single(BODY, f"is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValidationProblem.single(BODY, "is nested too deeply") from None
    except ValueError:  # an integer with more digits than Python converts
        raise ValidationProblem.single(BODY, "is not valid JSON: a number has too many digits") from None
    if not isinstance(value, dict):
        raise ValidationProblem.single(BODY, f"must be a JSON object, got {_kind(value)}")
    return value


def _check_content_type(request: web.Request) -> None:
    if "Content-Type" not in request.headers:
        raise UnsupportedMediaType("the request has no Content-Type; send application/json")
    main, _, sub = request.content_type.partition("/")
    if main != "application" or not (sub == "json" or sub.endswith("+json")):
        raise UnsupportedMediaType("the body must be JSON (Content-Type: application/json)")
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("JSON must be encoded as UTF-8")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Refused rather than inflated: a small compressed body can expand without bound.
        raise UnsupportedMediaType(
            "content-encoded bodies are not accepted; send the body uncompressed",
            headers={"Accept-Encoding": "identity"},
        )


async def read_json_body(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object. 415 unless JSON; 413 over ``max_bytes`` — judged by
    Content-Length before reading and by the bytes actually read (chunked bodies carry
    no length, and aiohttp's client_max_size is not ours); 400 unless a JSON object."""
    _check_content_type(request)
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(max_bytes)
    data = bytearray()
    try:
        while True:
            chunk = await request.content.read(max_bytes + 1 - len(data))
            if not chunk:
                break
            data += chunk
            if len(data) > max_bytes:
                raise PayloadTooLarge(max_bytes)
    except ConnectionResetError:
        # The connection closed under the read: the client left, or the body did not
        # arrive within STAMP_HTTP_BODY_TIMEOUT_SECONDS. Nobody reads this answer;
        # it keeps the request from counting as a database or server failure.
        raise Problem(
            "the request body did not arrive in full", status=408, title="Request Timeout"
        ) from None
    return parse_json_object(bytes(data))


# --- walking an object ---------------------------------------------------------------


class _Missing(enum.Enum):
    ABSENT = enum.auto()  # not in the object
    REPORTED = enum.auto()  # present but unusable, and already reported


_ABSENT: Final = _Missing.ABSENT
_REPORTED: Final = _Missing.REPORTED


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _join(parent: str, name: str) -> str:
    """``certificate.quantity``; a name that is not a plain word (a client's attribute
    key, an unknown member) in brackets as a JSON string: ``clearTextAttributes["a b"]``.
    Bounded, and with lone surrogates escaped, since the path is echoed in the answer."""
    short = name if len(name) <= 64 else name[:64] + "…"
    if _PLAIN_NAME.fullmatch(short):
        return f"{parent}.{short}" if parent else short
    quoted = json.dumps(short, ensure_ascii=False)
    try:
        quoted.encode("utf-8")
    except UnicodeEncodeError:
        quoted = json.dumps(short)
    if not quoted.isprintable():  # C1 controls, bidi overrides: \u-escaped, as JSON allows
        quoted = "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in quoted)
    return f"{parent}[{quoted}]"


def _fold(name: str) -> str:
    # ASCII-only folding: no non-ASCII spelling ("\u212aey", Kelvin sign) can match a member.
    return name.lower() if name.isascii() else name


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""C0 and C1 control characters and DEL. None belongs in an id, a code or an
attribute, and each can drive a terminal (ESC[2J, OSC, BEL, NEL, CSI) when an operator
prints the value; PostgreSQL text cannot hold NUL at all."""


def _text_problem(value: str, max_length: int, *, allow_empty: bool = False) -> str | None:
    if not allow_empty and not value.strip():
        return "must not be empty"
    if len(value) > max_length:
        return f"must be at most {max_length} characters long"
    if control := _CONTROL.search(value):
        return f"must not contain control characters (U+{ord(control[0]):04X} at position {control.start()})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (a lone surrogate escape is not)"
    return None


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_UUID_MESSAGE: Final = "must be a UUID (8-4-4-4-12 hexadecimal digits)"


def _canonical_uuid(value: object) -> str | None:
    if isinstance(value, str) and _UUID.fullmatch(value):
        return value.lower()
    return None


class _Members:
    """One JSON object's members looked up by case-insensitive name. Records a name
    given twice when it is asked for, and by ``finish`` every name nobody asked for."""

    __slots__ = ("_duplicated", "_errors", "_index", "_obj", "_path", "_taken")

    def __init__(self, obj: Mapping[str, Any], path: str, errors: list[FieldError]) -> None:
        self._obj = obj
        self._path = path
        self._errors = errors
        self._taken: set[str] = set()
        self._duplicated = {_fold(key) for key in getattr(obj, "duplicates", ())}
        self._index: dict[str, str] = {}
        for key in obj:
            folded = _fold(key)
            if folded in self._index:
                self._duplicated.add(folded)
            else:
                self._index[folded] = key

    def path(self, name: str) -> str:
        return _join(self._path, name)

    def error(self, name: str, message: str) -> None:
        self._errors.append(FieldError(self.path(name), message))

    def take(self, name: str) -> Any:
        """The member's value, _ABSENT, or _REPORTED (given more than once)."""
        folded = name.lower()
        self._taken.add(folded)
        if folded in self._duplicated:
            self.error(name, "is given more than once (member names are case-insensitive)")
            return _REPORTED
        key = self._index.get(folded)
        return _ABSENT if key is None else self._obj[key]

    def required(self, name: str) -> Any:
        value = self.take(name)
        if value is _ABSENT:
            self.error(name, "is required")
            return _REPORTED
        if value is None:
            self.error(name, "is required (got null)")
            return _REPORTED
        return value

    def finish(self) -> None:
        for folded, key in self._index.items():
            if folded not in self._taken:
                self._errors.append(FieldError(_join(self._path, key), "unknown field"))

    def string(self, name: str, *, max_length: int = MAX_ID_LENGTH, allow_empty: bool = False) -> str | None:
        value = self.required(name)
        if value is _REPORTED:
            return None
        if not isinstance(value, str):
            self.error(name, f"must be a string, got {_kind(value)}")
            return None
        problem = _text_problem(value, max_length, allow_empty=allow_empty)
        if problem:
            self.error(name, problem)
            return None
        return value

    def integer(self, name: str, minimum: int, maximum: int) -> int | None:
        value = self.required(name)
        if value is _REPORTED:
            return None
        if type(value) is not int:  # bool is an int subclass, and 1.0 is not an integer
            self.error(name, f"must be an integer, got {_kind(value)}")
            return None
        if value < minimum:
            self.error(name, f"must be at least {minimum}")
            return None
        if value > maximum:
            self.error(name, f"must be at most {maximum}")
            return None
        return value

    def uuid(self, name: str) -> str | None:
        value = self.required(name)
        if value is _REPORTED:
            return None
        canonical = _canonical_uuid(value)
        if canonical is None:
            self.error(name, _UUID_MESSAGE)
        return canonical

    def object(self, name: str) -> Mapping[str, Any] | None:
        value = self.required(name)
        if value is _REPORTED:
            return None
        if not isinstance(value, dict):
            self.error(name, f"must be an object, got {_kind(value)}")
            return None
        return value


def _root(body: object) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ValidationProblem.single(BODY, f"must be a JSON object, got {_kind(body)}")
    return body


# --- recipients ----------------------------------------------------------------------


_URL_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")


def _endpoint_problem(url: str) -> str | None:
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters long"
    if _URL_FORBIDDEN.search(url):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError unless the port is a number 0..65535
    except ValueError:
        return "is not a valid URL"
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return "must be an absolute http(s) URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        # Stored and logged with every delivery: no place for credentials.
        return "must not contain user credentials"
    return None


def _public_key(w: _Members) -> bytes | None:
    name = "publicKey"
    value = w.required(name)
    if value is _REPORTED:
        return None
    if not isinstance(value, str):
        w.error(name, f"must be a Base64 string, got {_kind(value)}")
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raw = None
    if raw is None or base64.b64encode(raw).decode("ascii") != value:
        w.error(name, "must be standard Base64 with padding, on one line")
        return None
    if len(raw) != EXTENDED_PUBLIC_KEY_BYTES:
        w.error(name, f"must be an extended public key of {EXTENDED_PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
        return None
    try:
        ExtendedPublicKey.from_bytes(raw)
    except ValueError as exc:  # InvalidHDKey; its message describes public bytes only
        w.error(name, f"is not a valid extended secp256k1 public key: {exc}")
        return None
    return raw


def parse_new_recipient(body: object) -> NewRecipient:
    errors: list[FieldError] = []
    m = _Members(_root(body), "", errors)
    version = url = public_key = None
    reference = m.object("walletEndpointReference")
    if reference is not None:
        w = _Members(reference, "walletEndpointReference", errors)
        raw_version = w.required("version")
        if raw_version is not _REPORTED:
            if type(raw_version) is not int:
                w.error("version", f"must be an integer, got {_kind(raw_version)}")
            elif raw_version != WALLET_ENDPOINT_VERSION:
                w.error(
                    "version", f"unsupported wallet endpoint version (only {WALLET_ENDPOINT_VERSION} exists)"
                )
            else:
                version = raw_version
        url = w.string("endpoint", max_length=MAX_URL_LENGTH)
        if url is not None and (problem := _endpoint_problem(url)):
            w.error("endpoint", problem)
        public_key = _public_key(w)
        w.finish()
    m.finish()
    if errors:
        raise ValidationProblem(errors)
    assert version is not None and url is not None and public_key is not None
    return NewRecipient(version, url, public_key)


@dataclass(frozen=True, slots=True)
class RecipientPatch:
    """A recipient's move: the new endpoint, and the key if the caller restated it
    (it must be the stored one: a recipient's key never changes)."""

    wallet_endpoint_url: str
    wallet_public_key: bytes | None


def parse_recipient_patch(body: object) -> RecipientPatch:
    """``{"walletEndpointReference": {"endpoint": …}}``, with ``version`` and
    ``publicKey`` allowed too, so a whole reference can be sent back as it was read."""
    errors: list[FieldError] = []
    m = _Members(_root(body), "", errors)
    url = public_key = None
    reference = m.object("walletEndpointReference")
    if reference is not None:
        w = _Members(reference, "walletEndpointReference", errors)
        given = {_fold(k) for k in reference}
        if "version" in given:
            raw_version = w.required("version")
            if raw_version is not _REPORTED and (
                type(raw_version) is not int or raw_version != WALLET_ENDPOINT_VERSION
            ):
                w.error("version", f"must be {WALLET_ENDPOINT_VERSION}, the only wallet endpoint version")
        url = w.string("endpoint", max_length=MAX_URL_LENGTH)
        if url is not None and (problem := _endpoint_problem(url)):
            w.error("endpoint", problem)
        if "publickey" in given:
            public_key = _public_key(w)
        w.finish()
    m.finish()
    if errors:
        raise ValidationProblem(errors)
    assert url is not None
    return RecipientPatch(url, public_key)


# --- certificates --------------------------------------------------------------------


_BY_NUMBER_DOWN = sorted(CERTIFICATE_TYPES.items(), reverse=True)
_TYPE_MESSAGE = "must be {} (or the integer {})".format(
    " or ".join(f'"{name}"' for _, name in _BY_NUMBER_DOWN), " or ".join(str(n) for n, _ in _BY_NUMBER_DOWN)
)
"""``must be "production" or "consumption" (or the integer 2 or 1)``: from the type table."""


def _certificate_type(c: _Members) -> int | None:
    value = c.required("type")
    if value is _REPORTED:
        return None
    if type(value) is int and value in CERTIFICATE_TYPES:
        return value
    if isinstance(value, str) and value.lower() in CERTIFICATE_TYPE_NUMBERS:
        return CERTIFICATE_TYPE_NUMBERS[value.lower()]
    c.error("type", _TYPE_MESSAGE)
    return None


def _clear_attributes(
    c: _Members, errors: list[FieldError], max_length: int
) -> tuple[Collection[str], list[tuple[str, str]]]:
    """(the keys given, the valid attributes) — keys are data, so case-sensitive."""
    name = "clearTextAttributes"
    value = c.take(name)
    if value is _ABSENT or value is None or value is _REPORTED:
        return (), []
    if not isinstance(value, dict):
        c.error(name, f"must be an object of string values, got {_kind(value)}")
        return (), []
    base = c.path(name)
    for key in getattr(value, "duplicates", ()):
        errors.append(FieldError(_join(base, key), "duplicate attribute key"))
    valid = []
    for key, item in value.items():
        problem = _text_problem(key, max_length)
        if problem:
            errors.append(FieldError(_join(base, key), f"key {problem}"))
            continue
        if not isinstance(item, str):
            errors.append(FieldError(_join(base, key), f"must be a string, got {_kind(item)}"))
            continue
        problem = _text_problem(item, max_length, allow_empty=True)
        if problem:
            errors.append(FieldError(_join(base, key), problem))
            continue
        valid.append((key, item))
    return value.keys(), valid


def _hashed_attributes(
    c: _Members, errors: list[FieldError], max_length: int, clear_keys: Collection[str]
) -> tuple[int, list[tuple[str, str]]]:
    name = "hashedAttributes"
    value = c.take(name)
    if value is _ABSENT or value is None or value is _REPORTED:
        return 0, []
    if not isinstance(value, list):
        c.error(name, f"must be an array of {{key, value}} objects, got {_kind(value)}")
        return 0, []
    valid = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        path = f"{c.path(name)}[{i}]"
        if not isinstance(item, dict):
            errors.append(FieldError(path, f"must be an object with key and value, got {_kind(item)}"))
            continue
        h = _Members(item, path, errors)
        key = h.string("key", max_length=max_length)
        text = h.string("value", max_length=max_length, allow_empty=True)
        h.finish()
        if key is not None and key in seen:
            h.error("key", "duplicate attribute key")
        elif key is not None and key in clear_keys:
            h.error("key", "duplicate attribute key (also a clear-text attribute)")
        elif key is not None and text is not None:
            valid.append((key, text))
        if key is not None:
            seen.add(key)
    return len(value), valid


def parse_new_certificate(
    body: object,
    *,
    registries: Collection[str],
    grid_areas: Collection[str],
    max_attributes: int,
    max_attribute_length: int,
) -> CertificateContent:
    errors: list[FieldError] = []
    m = _Members(_root(body), "", errors)
    recipient_id = m.uuid("recipientId")
    registry_name = m.string("registryName")
    if registry_name is not None and registry_name not in registries:
        m.error("registryName", "unknown registry")
    metering_point_id = m.string("meteringPointId")
    certificate_id = certificate_type = quantity = start = end = grid_area = None
    clear: list[tuple[str, str]] = []
    hashed: list[tuple[str, str]] = []
    certificate = m.object("certificate")
    if certificate is not None:
        c = _Members(certificate, "certificate", errors)
        certificate_id = c.uuid("id")
        certificate_type = _certificate_type(c)
        quantity = c.integer("quantity", 1, MAX_QUANTITY)
        start = c.integer("start", 0, MAX_UNIX_SECONDS)
        end = c.integer("end", 0, MAX_UNIX_SECONDS)
        if start is not None and end is not None:
            # The registry's rule (docs/registry.md): refuse now what it would reject later.
            if start >= end:
                c.error("end", "must be after start")
            elif not MIN_PERIOD_SECONDS <= end - start <= MAX_PERIOD_SECONDS:
                c.error("end", f"the period is {end - start} s; it must be between 1 minute and 1 hour")
        grid_area = c.string("gridArea")
        if grid_area is not None and grid_area not in grid_areas:
            c.error("gridArea", "grid area without a configured issuer key")
        clear_keys, clear = _clear_attributes(c, errors, max_attribute_length)
        hashed_count, hashed = _hashed_attributes(c, errors, max_attribute_length, clear_keys)
        clear_count = len(clear_keys)
        if clear_count + hashed_count > max_attributes:
            message = f"{clear_count + hashed_count} attributes in all; at most {max_attributes} are allowed"
            for name, count in (("clearTextAttributes", clear_count), ("hashedAttributes", hashed_count)):
                if count:
                    c.error(name, message)
        c.finish()
    m.finish()
    if errors:
        raise ValidationProblem(errors)
    assert recipient_id is not None and registry_name is not None and metering_point_id is not None
    assert certificate_id is not None and certificate_type is not None and quantity is not None
    assert start is not None and end is not None and grid_area is not None
    return CertificateContent(
        key=CertificateKey(registry_name, certificate_id),
        recipient_id=recipient_id,
        metering_point_id=metering_point_id,
        certificate_type=certificate_type,
        quantity=quantity,
        start=start,
        end=end,
        grid_area=grid_area,
        clear_attributes=tuple(clear),
        hashed_attributes=tuple(hashed),
    )


def parse_batch(body: object, *, max_items: int) -> list[object]:
    """The items of a batch body, ``{"certificates": [ … ]}``, unparsed: each is judged
    on its own by ``parse_new_certificate``, so one bad item does not refuse the rest."""
    errors: list[FieldError] = []
    m = _Members(_root(body), "", errors)
    items = m.required("certificates")
    m.finish()
    if items is not _REPORTED:
        if not isinstance(items, list):
            m.error("certificates", f"must be an array of certificate requests, got {_kind(items)}")
        elif not items:
            m.error("certificates", "must not be empty")
        elif len(items) > max_items:
            m.error(
                "certificates", f"has {len(items)} items; at most {max_items} are allowed (STAMP_MAX_BATCH)"
            )
    if errors:
        raise ValidationProblem(errors)
    return list(items)


# --- query parameters ----------------------------------------------------------------


def parse_uuid(value: object, field: str) -> str:
    """A UUID path or query parameter, as the canonical lower-case string."""
    canonical = _canonical_uuid(value)
    if canonical is None:
        raise ValidationProblem.single(field, _UUID_MESSAGE)
    return canonical


def parse_text_param(value: str, field: str, *, max_length: int = MAX_ID_LENGTH) -> str:
    """A text path or query parameter that reaches a query (a registry name, a metering
    point id): what a body's text must be, since PostgreSQL text cannot hold NUL and
    would answer a 500 instead of a 400."""
    problem = _text_problem(value, max_length)
    if problem:
        raise ValidationProblem.single(field, problem)
    return value


_DIGITS = re.compile(r"[0-9]{1,19}")
"""Enough for any bigint id (2**63 - 1 has 19 digits); the range is checked after."""


def parse_int_param(value: str | None, field: str, *, default: int, minimum: int = 0, maximum: int) -> int:
    """A decimal integer query parameter; absent or empty means ``default``."""
    if value is None or value == "":
        return default
    if not _DIGITS.fullmatch(value) or not minimum <= int(value) <= maximum:
        raise ValidationProblem.single(field, f"must be an integer from {minimum} to {maximum}")
    return int(value)


def parse_since(value: str | None) -> datetime | None:
    """``since=``: Unix seconds, or an RFC 3339 time with its offset (``Z`` allowed)."""
    if value is None or value == "":
        return None
    if _DIGITS.fullmatch(value):
        if int(value) > MAX_UNIX_SECONDS:
            raise ValidationProblem.single("since", f"must be at most {MAX_UNIX_SECONDS} (Unix seconds)")
        return datetime.fromtimestamp(int(value), UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or not value.isascii():
        raise ValidationProblem.single(
            "since", "must be Unix seconds or an RFC 3339 time with an offset, e.g. 2026-12-01T00:00:00Z"
        )
    return parsed


def parse_limit(value: str | None, default: int, maximum: int) -> int:
    return parse_int_param(value, "limit", default=default, minimum=1, maximum=maximum)


def parse_state_filter(value: str | None) -> State | None:
    """``state=`` of the certificate list: one state name, case-insensitive."""
    if value is None or value == "":
        return None
    try:
        return State(value.lower())
    except ValueError:
        allowed = ", ".join(s.value for s in State)
        raise ValidationProblem.single("state", f"must be one of {allowed}") from None
