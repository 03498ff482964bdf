"""Issue 11, the HTTP edge: each finding of the outside review, reopened against a live
Stamp (``stamp serve`` as a child process, real sockets, real PostgreSQL) and shown to
stay closed.

Most tests talk raw HTTP/1.1 over blocking sockets, as an attacker would: a client
library would refuse to send what they send, or would not show what the server did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import socket
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import psutil
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm

from stamp.api.auth import OPEN_RESOURCES, Principal, authenticate
from stamp.app import build_app
from stamp.config import ROUTE_PREFIXES, Settings, load_settings
from stamp.credentials import InvalidCredentials
from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
from tests.faults import stamp_env
from tests.process import StampProcess
from tests.stack import GRID_AREA, ISSUER, REGISTRY, running_stack
from tests.test_cli_serve import run_stamp

TOKEN = secrets.token_urlsafe(32)
JWT_ISSUER = "https://idp.example.org/realms/energy"
JWT_AUDIENCE = "stamp-api"
BASE = "/api"
TIMEOUT = 2.0
"""Header, body and keep-alive timeout of the Stamp under test, in seconds."""
GIVE_UP = 15.0
"""How long a test waits for Stamp to close a connection: far beyond TIMEOUT, far
below aiohttp's own defaults (an hour), so it cannot pass without the guard."""


@dataclass
class HttpStamp:
    process: StampProcess
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def base(self) -> str:
        return self.process.base

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        assert self.process.process is not None
        times = psutil.Process(self.process.process.pid).cpu_times()
        return float(times.user + times.system)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def http_stamp(database_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HttpStamp]:
    """``stamp serve`` with authentication (a static token; JWTs from a JWKS holding an
    EC key ``ec-1`` and a kid-less RSA PEM), path base /api and short HTTP timeouts."""
    directory = tmp_path_factory.mktemp("http-stamp")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    (directory / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "ec-1", "alg": "ES256"}]}))
    (directory / "rsa.pem").write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    key_file = directory / "dk1.pem"
    key_file.write_text(ISSUER.private_pem())
    registry = RegistrySimulator(
        RegistrySimConfig(registries=(REGISTRY,), issuer_keys={GRID_AREA: (ISSUER.public_pem(),)})
    )
    await registry.start()
    env = stamp_env(
        database_dsn,
        registry.address,
        key_file,
        STAMP_CRYPTO_WORKERS="1",
        STAMP_PATH_BASE=BASE,
        STAMP_AUTH_TOKENS=TOKEN,
        STAMP_AUTH_JWT_ISSUER=JWT_ISSUER,
        STAMP_AUTH_JWT_AUDIENCE=JWT_AUDIENCE,
        STAMP_AUTH_JWT_JWKS_FILE=str(directory / "jwks.json"),
        STAMP_AUTH_JWT_PUBLIC_KEY=str(directory / "rsa.pem"),
        STAMP_AUTH_JWT_ALGORITHMS="RS256,ES256",
        STAMP_HTTP_HEADER_TIMEOUT_SECONDS=str(TIMEOUT),
        STAMP_HTTP_BODY_TIMEOUT_SECONDS=str(TIMEOUT),
        STAMP_HTTP_KEEPALIVE_TIMEOUT_SECONDS=str(TIMEOUT),
        STAMP_LOG_FORMAT="json",
        STAMP_LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
    )
    process = StampProcess(env, directory / "stamp.log")
    try:
        await process.start()
        yield HttpStamp(process, rsa_key, ec_key)
    finally:
        process.stop()
        await registry.stop()


# --- raw HTTP ----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None
    """None: the connection closed without an answer."""
    head: str
    body: bytes


def _parse(data: bytes) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return Answer(int(match.group(1)) if match else None, head.decode("latin-1"), body)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return length is not None and len(body) >= int(length.group(1))


def exchange(port: int, request: bytes, body: bytes = b"") -> Answer:
    """Send a request (and a body, as far as the server takes it); read one answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=GIVE_UP) as sock:
        sock.sendall(request)
        with contextlib.suppress(ConnectionError):
            sock.sendall(body)
        data = b""
        with contextlib.suppress(ConnectionError):
            while not _complete(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    return _parse(data)


def request_bytes(method: str, path: str, *headers: bytes | str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: stamp"]
    lines += [h if isinstance(h, bytes) else h.encode() for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def wait_closed(sock: socket.socket, drip: bytes = b"", interval: float = 0.2) -> bytes | None:
    """Keep the connection busy (``drip`` every ``interval``) until the server closes
    it; what it answered meanwhile, or None if it was still open after GIVE_UP."""
    sock.settimeout(interval)
    received = b""
    deadline = time.monotonic() + GIVE_UP
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
        except TimeoutError:
            pass
        except ConnectionError:
            return received
        if drip:
            try:
                sock.sendall(drip)
            except ConnectionError:
                return received
    return None


def closed_by_guard(stamp: HttpStamp, reason: str) -> float:
    with socket.create_connection(("127.0.0.1", stamp.port), timeout=GIVE_UP) as sock:
        sock.sendall(request_bytes("GET", "/metrics"))
        data = b""
        while not _complete(data):
            chunk = sock.recv(65536)
            assert chunk, "no answer from /metrics"
            data += chunk
    text = _parse(data).body.decode()
    found = re.search(rf'stamp_http_connections_closed_total\{{reason="{reason}"\}} ([0-9.e+]+)', text)
    return float(found.group(1)) if found else 0.0


def bearer(token: str) -> str:
    return f"Authorization: Bearer {token}"


# --- finding 1: protection by route, and no path base that collides with a route ----------


@pytest.mark.parametrize(
    "base", ["/v1", "/v1/", "/v1/issuer", "/health", "/metrics", "/openapi.json", "/docs"]
)
def test_a_path_base_that_collides_with_a_route_is_refused_by_check_config(base: str) -> None:
    result = run_stamp("check-config", env={"STAMP_PATH_BASE": base})
    assert result.returncode == 2, result.stdout
    assert "STAMP_PATH_BASE" in result.stderr and "collides" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_the_path_base_v1_before_listening() -> None:
    result = run_stamp(
        "serve",
        env={
            "STAMP_PATH_BASE": "/v1",
            "STAMP_REGISTRIES": "Narnia=127.0.0.1:1",
            "STAMP_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
            "STAMP_AUTH_TOKENS": TOKEN,
        },
    )
    assert result.returncode == 2
    assert "STAMP_PATH_BASE" in result.stderr and "collides" in result.stderr


def test_an_app_is_never_built_on_a_colliding_path_base() -> None:
    with pytest.raises(ValueError, match="collides"):
        build_app(Settings(path_base="/v1"))


def _filled(template: str) -> str:
    return template.replace("{registry}", REGISTRY).replace("{id}", str(uuid.uuid4()))


async def test_every_route_but_the_open_ones_demands_a_token_under_each_base(http_stamp: HttpStamp) -> None:
    app = build_app(Settings(path_base=BASE))
    open_resources = app[OPEN_RESOURCES]
    checked = {"open": 0, "protected": 0}
    # A fresh connection per request: a kept-alive one may meet the short keep-alive timeout.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for route in app.router.routes():
            resource = route.resource
            assert resource is not None
            first = "/" + resource.canonical.removeprefix(BASE).split("/")[1]
            assert first in ROUTE_PREFIXES, f"{resource.canonical}: add its prefix to ROUTE_PREFIXES"
            url = http_stamp.base + _filled(resource.canonical)
            async with http.request(route.method, url) as response:
                if resource in open_resources:
                    checked["open"] += 1
                    assert response.status != 401, resource.canonical
                else:
                    checked["protected"] += 1
                    assert response.status == 401, (route.method, resource.canonical, response.status)
    # Both bases, both kinds: the walk above was not empty.
    assert checked["protected"] >= 16 and checked["open"] >= 10


# --- finding 3: compressed bodies are refused before anything is inflated --------------------


@pytest.fixture(scope="module")
def http_gzip_bomb() -> bytes:
    """256 MiB of zeros, gzip-compressed to about 260 KB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join([*(compressor.compress(block) for _ in range(256)), compressor.flush()])


def test_gzip_bombs_are_refused_without_being_inflated(http_stamp: HttpStamp, http_gzip_bomb: bytes) -> None:
    def post(*headers: str) -> Answer:
        head = request_bytes(
            "POST",
            f"{BASE}/v1/certificates",
            "Content-Type: application/json",
            "Content-Encoding: gzip",
            f"Content-Length: {len(http_gzip_bomb)}",
            *headers,
        )
        return exchange(http_stamp.port, head, http_gzip_bomb)

    before = http_stamp.cpu_seconds()
    for _ in range(4):
        assert post().status == 401  # authentication comes before any body
        refused = post(bearer(TOKEN))
        assert refused.status == 415 and b"content-encoded" in refused.body
    spent = http_stamp.cpu_seconds() - before
    # Inflating these eight bodies costs Stamp several seconds of CPU (2 GiB of output);
    # receiving and discarding 2 MB costs a few milliseconds.
    assert spent < 1.0, f"Stamp spent {spent:.2f} s of CPU on eight refused bodies"
    assert exchange(http_stamp.port, request_bytes("GET", "/health/live")).status == 200


# --- finding 4: slow and idle clients --------------------------------------------------------


def test_a_request_whose_headers_trickle_in_is_closed_after_the_header_timeout(
    http_stamp: HttpStamp,
) -> None:
    before = closed_by_guard(http_stamp, "header_timeout")
    with socket.create_connection(("127.0.0.1", http_stamp.port)) as sock:
        sock.sendall(f"GET {BASE}/health/live HTTP/1.1\r\nHost: stamp\r\n".encode())
        answered = wait_closed(sock, drip=b"X-Slow: 1\r\n")
    assert answered is not None, f"half-sent headers still open after {GIVE_UP} s"
    assert answered == b""  # closed, never answered
    assert closed_by_guard(http_stamp, "header_timeout") > before


def test_a_connection_that_sends_nothing_is_closed(http_stamp: HttpStamp) -> None:
    with socket.create_connection(("127.0.0.1", http_stamp.port)) as sock:
        assert wait_closed(sock) == b"", f"a silent connection was still open after {GIVE_UP} s"


def _head_of_a_body_that_trickles() -> bytes:
    """An authorized request announcing a 4 KiB body, of which the test sends a byte at a time."""
    return request_bytes(
        "POST",
        f"{BASE}/v1/recipients",
        bearer(TOKEN),
        "Content-Type: application/json",
        "Content-Length: 4096",
    )


def test_a_body_that_trickles_in_is_closed_after_the_body_timeout(http_stamp: HttpStamp) -> None:
    before = closed_by_guard(http_stamp, "body_timeout")
    log_before = len(http_stamp.log())
    head = _head_of_a_body_that_trickles()
    with socket.create_connection(("127.0.0.1", http_stamp.port)) as sock:
        sock.sendall(head + b"{")
        answered = wait_closed(sock, drip=b" ")
    assert answered is not None, f"a trickling body still open after {GIVE_UP} s"
    assert _parse(answered).status in (None, 408)
    assert closed_by_guard(http_stamp, "body_timeout") > before
    # A client too slow is not a server failure: nothing at error level.
    assert '"level":"error"' not in http_stamp.log()[log_before:]


def _ask_on(sock: socket.socket, request: bytes) -> Answer:
    sock.sendall(request)
    data = b""
    while not _complete(data):
        chunk = sock.recv(65536)
        assert chunk, "closed before answering"
        data += chunk
    return _parse(data)


def test_a_kept_alive_connection_busy_past_the_header_timeout_stays_open(http_stamp: HttpStamp) -> None:
    # The deadline is per request: requests answered one after another for longer than
    # the header timeout (counted from the connection's first byte) never trip it.
    with socket.create_connection(("127.0.0.1", http_stamp.port), timeout=GIVE_UP) as sock:
        started = time.monotonic()
        while time.monotonic() - started < 2.5 * TIMEOUT:
            assert _ask_on(sock, request_bytes("GET", f"{BASE}/health/live")).status == 200
            time.sleep(TIMEOUT / 8)


def test_a_second_request_whose_body_trickles_in_is_closed_after_its_own_body_timeout(
    http_stamp: HttpStamp,
) -> None:
    # The connection's one timer was set by its first request and fires before the
    # second request's body deadline: it must move on to that deadline, neither close
    # the connection early nor lapse.
    before = closed_by_guard(http_stamp, "body_timeout")
    with socket.create_connection(("127.0.0.1", http_stamp.port), timeout=GIVE_UP) as sock:
        assert _ask_on(sock, request_bytes("GET", f"{BASE}/health/live")).status == 200
        time.sleep(TIMEOUT / 2)
        head = _head_of_a_body_that_trickles()
        sent_at = time.monotonic()
        sock.sendall(head + b"{")
        answered = wait_closed(sock, drip=b" ")
        lasted = time.monotonic() - sent_at
    assert answered is not None, f"a trickling body still open after {GIVE_UP} s"
    assert lasted >= TIMEOUT * 0.9, f"closed {lasted:.2f} s after the body began, before its deadline"
    assert closed_by_guard(http_stamp, "body_timeout") > before


def test_an_idle_keep_alive_connection_is_closed(http_stamp: HttpStamp) -> None:
    with socket.create_connection(("127.0.0.1", http_stamp.port), timeout=GIVE_UP) as sock:
        sock.sendall(request_bytes("GET", f"{BASE}/health/live"))
        data = b""
        while not _complete(data):
            data += sock.recv(65536)
        assert _parse(data).status == 200
        assert wait_closed(sock) == b"", f"an idle keep-alive connection still open after {GIVE_UP} s"


async def test_connections_beyond_the_limit_are_answered_503_and_closed(
    database_dsn: str, tmp_path: Path
) -> None:
    limit = 4
    async with running_stack(database_dsn, tmp_path, crypto_workers=1, http_max_connections=limit) as stack:
        port = int(stack.base.rsplit(":", 1)[1])
        ping = request_bytes("GET", "/health/live")

        async def served(reader: Any, writer: Any) -> int | None:
            writer.write(ping)
            data = b""
            while not _complete(data):
                chunk = await asyncio.wait_for(reader.read(65536), GIVE_UP)
                if not chunk:
                    break
                data += chunk
            return _parse(data).status

        held = []
        for _ in range(limit):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await served(reader, writer) == 200  # admitted, and kept alive
            held.append(writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # read() to EOF: Stamp answers and closes at once (without a limit it would
        # wait for a request, and the wait ends in a TimeoutError).
        refused = _parse(await asyncio.wait_for(reader.read(), GIVE_UP))
        writer.close()
        assert refused.status == 503
        assert "Retry-After: 1" in refused.head
        assert json.loads(refused.body)["status"] == 503
        # A slot freed is a slot to be had.
        held.pop().close()
        status = None
        for _ in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            with contextlib.suppress(ConnectionError):
                status = await served(reader, writer)
            writer.close()
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200
        for writer in held:
            writer.close()


# --- finding 7: nothing a client sent in a header reaches the log ----------------------------


MALFORMED_HEADERS = {
    "control character after the token": bearer(TOKEN).encode() + b"\x01",
    "DEL after the token": bearer(TOKEN).encode() + b"\x7f",
    "NUL inside the token": bearer(TOKEN[:10]).encode() + b"\x00" + TOKEN[10:].encode(),
    "token in an invalid header name": f"Bearer {TOKEN}\x02: x".encode(),
    "token on a folded line": b"X-Note: a\r\n " + bearer(TOKEN).encode() + b"\x03",
}


@pytest.mark.parametrize("case", sorted(MALFORMED_HEADERS))
def test_a_malformed_header_never_writes_the_token_to_the_log_or_the_answer(
    http_stamp: HttpStamp, case: str
) -> None:
    log_before = len(http_stamp.log())
    answer = exchange(
        http_stamp.port, request_bytes("GET", f"{BASE}/v1/certificates", MALFORMED_HEADERS[case])
    )
    written = http_stamp.log()[log_before:]
    assert TOKEN[:16] not in written and TOKEN[-16:] not in written
    assert "http.malformed_request" in written  # the log was captured, and said why
    assert TOKEN not in http_stamp.log()
    # Nor is it echoed to the client (or to whatever proxy logs the answer).
    assert answer.status == 400
    assert TOKEN[-16:].encode() not in answer.body and TOKEN[-16:] not in answer.head
    assert answer.head.lower().count("content-type: application/problem+json") == 1


# --- finding 8: malformed credentials are a 401, never a 500 ---------------------------------


def test_a_bearer_token_that_is_not_ascii_is_a_401(http_stamp: HttpStamp) -> None:
    for value in (b"\xff\xfe\xfd", b"\xc3\xa9t\xc3\xa9" * 8, TOKEN.encode() + b"\xff", b"\x80"):
        headers = b"Authorization: Bearer " + value
        answer = exchange(http_stamp.port, request_bytes("GET", f"{BASE}/v1/certificates", headers))
        assert answer.status == 401, (value, answer.status, answer.body[:200])
        assert b"invalid token" in answer.body


@settings(max_examples=60, deadline=None)
@given(
    value=st.one_of(
        st.binary(max_size=80),
        st.text(st.characters(codec="latin-1"), max_size=80).map(lambda t: t.encode("latin-1")),
        st.binary(max_size=20).map(lambda b: TOKEN.encode() + b),
    )
)
def test_any_authorization_header_is_refused_or_accepted_never_a_500(
    http_stamp: HttpStamp, value: bytes
) -> None:
    value = value.replace(b"\r", b"").replace(b"\n", b"")  # one header line, whatever is on it
    for header in (b"Authorization: Bearer " + value, b"Authorization: " + value):
        answer = exchange(http_stamp.port, request_bytes("GET", f"{BASE}/v1/certificates", header))
        ok = answer.status in (400, 401) or (answer.status == 200 and TOKEN.encode() in value)
        assert ok, (header, answer.status, answer.body[:200])


@settings(max_examples=300, deadline=None)
@given(token=st.text(st.characters(exclude_categories=()), max_size=100))
def test_authenticate_either_names_a_caller_or_refuses(token: str) -> None:
    configured = load_settings({"STAMP_AUTH_TOKENS": TOKEN})
    try:
        outcome = authenticate(configured, token)
    except InvalidCredentials:
        return
    assert outcome == Principal("token#1") and token == TOKEN


# --- minor: a kid selects exactly its key; time claims are numbers ---------------------------


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "sub": "probe",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return claims


def _status_with(stamp: HttpStamp, token: str) -> int:
    answer = exchange(stamp.port, request_bytes("GET", f"{BASE}/v1/certificates?limit=1", bearer(token)))
    assert answer.status is not None
    return answer.status


def test_a_jwt_naming_a_key_is_verified_by_that_key_only(http_stamp: HttpStamp) -> None:
    # Both keys are trusted on their own: ES256 under kid ec-1, RS256 without a kid.
    assert _status_with(http_stamp, jwt.encode(_claims(), http_stamp.ec, "ES256", {"kid": "ec-1"})) == 200
    assert _status_with(http_stamp, jwt.encode(_claims(), http_stamp.rsa, "RS256")) == 200
    # A token naming ec-1 is not rescued by the kid-less RSA key, whatever its alg says.
    named = jwt.encode(_claims(), http_stamp.rsa, "RS256", {"kid": "ec-1"})
    assert _status_with(http_stamp, named) == 401


@pytest.mark.parametrize(
    "claim, value",
    [
        ("exp", str(int(time.time()) + 3600)),
        ("nbf", str(int(time.time()) - 60)),
        ("iat", str(int(time.time()))),
        ("exp", True),
        ("exp", [int(time.time()) + 3600]),
    ],
)
def test_jwt_time_claims_that_are_not_numbers_are_refused(
    http_stamp: HttpStamp, claim: str, value: Any
) -> None:
    token = jwt.encode(_claims(**{claim: value}), http_stamp.rsa, "RS256")
    assert _status_with(http_stamp, token) == 401
    assert _status_with(http_stamp, jwt.encode(_claims(), http_stamp.rsa, "RS256")) == 200
