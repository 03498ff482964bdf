"""Security of Stamp's outbound calls (issue 11, findings 2, 5 and 6, and registry TLS):
wallets are untrusted URLs and their answers untrusted bytes; the registry link can be
authenticated. Stamp runs as a real process on loopback, with the project's Registry and
Wallet simulators and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stamp.config import ConfigError, load_settings
from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
from stamp.devstack.wallet import WalletSimConfig, WalletSimulator
from stamp.devstack.wallet_faults import Fault
from stamp.domain import CertificateKey, Delivery, Slice
from stamp.gateways.endpoint_allow import NOT_ALLOWED, REFUSED_AT_CREATION
from stamp.gateways.wallet_client import WalletClient
from tests.faults import Scenario, stamp_env, start_scenario, stop_scenario
from tests.process import StampProcess
from tests.stack import GRID_AREA, ISSUER, REGISTRY, certificate_body, loopback_host

pytestmark = pytest.mark.asyncio(loop_scope="session")

GW_ENDPOINT_FIELD = "walletEndpointReference.endpoint"


# --- helpers ----------------------------------------------------------------------------


@dataclass
class GwCatcher:
    """A loopback HTTP server that records every request it gets and answers 202 to
    all: the host a hostile redirect would send the slice to."""

    requests: list[tuple[str, str, bytes]] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._record)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1/slices"

    async def _record(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, await request.read()))
        return web.json_response({}, status=202)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def gw_catcher() -> AsyncIterator[GwCatcher]:
    catcher = GwCatcher()
    await catcher.start()
    try:
        yield catcher
    finally:
        await catcher.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw_scenario(database_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scenario]:
    """One Stamp without an allow-list, shared by the tests of hostile wallets."""
    scenario = await start_scenario(database_dsn, tmp_path_factory.mktemp("gw"))
    try:
        yield scenario
    finally:
        await stop_scenario(scenario)


async def gw_post_recipient(base: str, reference: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/v1/recipients", json={"walletEndpointReference": reference}) as r,
    ):
        text = await r.text()
        return r.status, orjson.loads(text), r.headers.get("Content-Type", "")


async def gw_new_recipient(scenario: Scenario, endpoint: str | None = None) -> tuple[str, Any]:
    """A recipient on a fresh simulator endpoint (its URL replaced by ``endpoint``)."""
    reference = scenario.wallet.create_endpoint()
    body = reference.as_json()
    if endpoint is not None:
        body["endpoint"] = endpoint
    status, answer, _ = await gw_post_recipient(scenario.stamp.base, body)
    assert status == 201, answer
    return answer["id"], reference


async def gw_certificate(scenario: Scenario, certificate_id: str) -> tuple[dict[str, Any], str]:
    """The certificate as the API shows it (with its history), parsed and raw."""
    url = f"{scenario.stamp.base}/v1/certificates/{REGISTRY}/{certificate_id}"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200
        text = await r.text()
    return orjson.loads(text), text


async def gw_deliver_one(scenario: Scenario, recipient_id: str) -> tuple[dict[str, Any], str]:
    """Post one certificate to this recipient and wait until it is terminal."""
    body = certificate_body(recipient_id)
    [certificate_id] = await scenario.post_certificates(1, [body])
    await scenario.wait_terminal(timeout=60)
    return await gw_certificate(scenario, certificate_id)


def gw_assert_failed_at_wallet(view: dict[str, Any], reason: str) -> None:
    assert view["state"] == "failed", view
    assert view["failure"]["step"] == "wallet"
    assert view["failure"]["reason"] == reason
    assert "delivered" not in [e.get("state") for e in view["events"]]


# --- finding 2: redirects -----------------------------------------------------------------


@pytest.mark.parametrize("status", [307, 308, 301, 302, 303])
async def test_a_wallet_redirect_is_not_followed_and_fails_the_delivery(
    gw_scenario: Scenario, gw_catcher: GwCatcher, status: int
) -> None:
    recipient, reference = await gw_new_recipient(gw_scenario)
    gw_scenario.wallet.inject_for(reference, Fault.redirect(status, gw_catcher.url))
    before = gw_scenario.wallet.received_count()

    view, _ = await gw_deliver_one(gw_scenario, recipient)

    # Neither the slice (R, salts) nor any request at all reached the named host.
    assert gw_catcher.requests == []
    assert gw_scenario.wallet.received_count() == before
    gw_assert_failed_at_wallet(view, f"wallet answered {status}, a redirect: not followed")
    assert view["failure"]["attempts"] == 1  # permanent: not retried


# --- finding 5: the answer is read only in part -------------------------------------------


async def test_a_huge_wallet_answer_is_read_only_in_part(gw_scenario: Scenario) -> None:
    planned = 100 * 1024 * 1024
    recipient, reference = await gw_new_recipient(gw_scenario)
    gw_scenario.wallet.inject_for(reference, Fault.respond(404, body_bytes=planned))
    already = len(gw_scenario.wallet.streamed_answers())

    view, _ = await gw_deliver_one(gw_scenario, recipient)

    gw_assert_failed_at_wallet(view, "wallet answered 404")
    for _ in range(100):  # the simulator records the answer once its write fails
        answers = gw_scenario.wallet.streamed_answers()[already:]
        if answers:
            break
        await asyncio.sleep(0.1)
    [answer] = answers
    # Stamp closed the connection after a small prefix: what was sent is what the
    # loopback socket buffers held, far below the answer's length.
    print(f"\nlong wallet answer: sent {answer.sent} of {answer.planned} bytes before Stamp hung up")
    assert not answer.complete
    assert answer.sent < 16 * 1024 * 1024, answer


# --- a wallet's cookies are not kept -------------------------------------------------------


async def test_a_cookie_set_by_a_wallet_is_never_sent_back() -> None:
    """Wallets sharing a host would otherwise receive each other's cookies with every
    later slice: a hostile one could plant state that Stamp carries to the others."""
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.Response(status=202)
        response.set_cookie("session", "planted-by-a-wallet", path="/")
        return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    client = WalletClient(timeout=5, limit_per_host=4)
    piece = Slice(
        public_key=b"\x01" * 78,
        position=1,
        key=CertificateKey(REGISTRY, str(uuid.uuid4())),
        quantity=10,
        blinding=b"\x02" * 32,
        hashed_attributes=(("assetId", "571234567890123456", b"\x03" * 32),),
    )
    async with loopback_host(app) as port:
        # A host name: aiohttp's default jar ignores cookies from address literals anyway.
        base = f"http://localhost:{port}"
        try:
            for path in ("/wallet-a/v1/slices", "/wallet-b/v1/slices", "/wallet-a/v1/slices"):
                result = await client.deliver(base + path, piece)
                assert result.outcome is Delivery.DELIVERED
        finally:
            await client.close()
    assert seen == [None, None, None]


# --- finding 6: no answer read back, and the allow-list -------------------------------------


@pytest.mark.parametrize("status", [404, 400, 503])
async def test_a_wallet_answer_body_is_never_stored_returned_or_logged(
    gw_scenario: Scenario, status: int
) -> None:
    secret = f"INTERNAL-ONLY: db_password={uuid.uuid4().hex}"
    recipient, reference = await gw_new_recipient(gw_scenario)
    gw_scenario.wallet.inject_for(
        reference, Fault.respond(status, body=secret), count=None if status < 500 else 2
    )
    view, text = await gw_deliver_one(gw_scenario, recipient)
    if status >= 500:  # transient: retried, then the endpoint heals
        assert view["state"] == "delivered"
    else:
        gw_assert_failed_at_wallet(view, f"wallet answered {status}")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gw_scenario.stamp.base}/v1/certificates", params={"limit": "500"}) as r,
    ):
        listing = await r.text()
    for where in (text, listing, gw_scenario.log_path.read_text(errors="replace")):
        assert "INTERNAL-ONLY" not in where
        assert secret.split("=")[1] not in where


@pytest_asyncio.fixture(loop_scope="session")
async def gw_allowing(empty_database_dsn: str, tmp_path: Path) -> AsyncIterator[Scenario]:
    """A Stamp whose wallets must be on loopback (by address) or under *.wallet.example."""
    scenario = await start_scenario(
        empty_database_dsn,
        tmp_path,
        STAMP_AUTO_MIGRATE="true",
        STAMP_WALLET_ENDPOINT_ALLOW="127.0.0.0/8, ::1/128, *.wallet.example",
    )
    try:
        yield scenario
    finally:
        await stop_scenario(scenario)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://10.1.2.3/v1/slices",
        "http://[fd00::1]:8080/v1/slices",
        "http://wallet.example/v1/slices",  # the pattern names subdomains only
        "http://evil-wallet.example/v1/slices",
        "https://unresolvable.invalid/v1/slices",
    ],
)
async def test_a_recipient_outside_the_allow_list_is_refused(gw_allowing: Scenario, endpoint: str) -> None:
    reference = gw_allowing.wallet.create_endpoint().as_json()
    status, problem, content_type = await gw_post_recipient(
        gw_allowing.stamp.base, {**reference, "endpoint": endpoint}
    )
    assert status == 400
    assert content_type.startswith("application/problem+json")
    assert [(e["field"], e["message"]) for e in problem["errors"]] == [
        (GW_ENDPOINT_FIELD, REFUSED_AT_CREATION)
    ]
    assert await gw_recipient_count(gw_allowing) == 0


async def gw_recipient_count(scenario: Scenario) -> int:
    conn = await asyncpg.connect(scenario.database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM recipients")
        return count
    finally:
        await conn.close()


async def test_allowed_wallet_endpoints_are_accepted_and_delivered(gw_allowing: Scenario) -> None:
    # A name matching a pattern is accepted without looking it up.
    reference = gw_allowing.wallet.create_endpoint().as_json()
    status, _, _ = await gw_post_recipient(
        gw_allowing.stamp.base, {**reference, "endpoint": "https://a.b.wallet.example/v1/slices"}
    )
    assert status == 201
    # An address inside an allowed network, and a name resolving only into allowed networks.
    port = gw_allowing.wallet.port
    by_address, _ = await gw_new_recipient(gw_allowing)
    by_name, _ = await gw_new_recipient(gw_allowing, f"http://localhost:{port}/v1/slices")
    for recipient in (by_address, by_name):
        view, _ = await gw_deliver_one(gw_allowing, recipient)
        assert view["state"] == "delivered", view


async def test_delivery_is_refused_when_the_allow_list_no_longer_admits_the_endpoint(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    scenario = await start_scenario(empty_database_dsn, tmp_path, STAMP_AUTO_MIGRATE="true")
    try:
        port = scenario.wallet.port
        by_address, _ = await gw_new_recipient(scenario)
        by_name, _ = await gw_new_recipient(scenario, f"http://localhost:{port}/v1/slices")
        # A tighter rule after the recipients exist: localhost resolves to 127.0.0.1,
        # which the rule no longer admits, exactly as a re-pointed DNS name would.
        assert await scenario.stamp.terminate() == 0
        scenario.stamp.env["STAMP_WALLET_ENDPOINT_ALLOW"] = "127.0.0.2/32"
        await scenario.stamp.start()
        for recipient in (by_address, by_name):
            view, _ = await gw_deliver_one(scenario, recipient)
            gw_assert_failed_at_wallet(view, NOT_ALLOWED)
            assert view["failure"]["attempts"] == 1
        assert scenario.wallet.request_count == 0  # no slice left Stamp
    finally:
        await stop_scenario(scenario)


async def test_the_allow_list_is_validated_and_shown_by_check_config() -> None:
    settings = load_settings({"STAMP_WALLET_ENDPOINT_ALLOW": "*.Wallet.Example., 10.0.0.0/8, fd00::1"})
    assert settings.masked()["wallet_endpoint_allow"] == ["*.wallet.example", "10.0.0.0/8", "fd00::1/128"]
    assert load_settings({}).masked()["wallet_endpoint_allow"] is None
    with pytest.raises(ConfigError) as raised:
        load_settings({"STAMP_WALLET_ENDPOINT_ALLOW": "10.0.0.1/8, http://x, a b"})
    [problem] = raised.value.problems
    assert problem.startswith("STAMP_WALLET_ENDPOINT_ALLOW=")
    assert "host bits set" in problem and "'http://x'" in problem and "'a b'" in problem


# --- registry over TLS ----------------------------------------------------------------------


def gw_self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def gw_tls_scenario(database_url: str, tmp_path: Path, ca_file: Path, **env: str) -> Scenario:
    """A registry simulator serving TLS with the "registry" certificate; Stamp trusts
    ``ca_file``."""
    cert, key = tmp_path / "registry.crt", tmp_path / "registry.key"
    registry = RegistrySimulator(
        RegistrySimConfig(
            registries=(REGISTRY,),
            issuer_keys={GRID_AREA: (ISSUER.public_pem(),)},
            commit_delay=0.05,
            tls_certificate_chain=cert.read_bytes(),
            tls_private_key=key.read_bytes(),
        )
    )
    await registry.start()
    assert registry.address.startswith("https://127.0.0.1:")
    wallet = WalletSimulator(
        WalletSimConfig(registries={REGISTRY: registry.address}, registry_root_certificates=cert.read_bytes())
    )
    await wallet.start()
    key_file = tmp_path / "dk1.pem"
    key_file.write_text(ISSUER.private_pem())
    stamp = StampProcess(
        stamp_env(
            database_url,
            registry.address,
            key_file,
            STAMP_AUTO_MIGRATE="true",
            STAMP_REGISTRY_TLS_CA_FILE=str(ca_file),
            **env,
        ),
        tmp_path / "stamp.log",
    )
    scenario = Scenario(database_url, tmp_path, registry, wallet, stamp)
    try:
        await stamp.start()
    except BaseException:
        await stop_scenario(scenario)
        raise
    return scenario


async def test_issuance_works_over_tls_to_the_registry(empty_database_dsn: str, tmp_path: Path) -> None:
    cert, _ = gw_self_signed(tmp_path, "registry")
    scenario = await gw_tls_scenario(empty_database_dsn, tmp_path, cert)
    try:
        await scenario.create_recipients(1)
        [certificate_id] = await scenario.post_certificates(1)
        await scenario.wait_terminal(timeout=60)
        view, _ = await gw_certificate(scenario, certificate_id)
        assert view["state"] == "delivered", view
        assert scenario.registry.stream_counters(certificate_id).distinct_issue_transactions == 1
        # The wallet simulator read the certificate back over TLS too.
        [record] = await scenario.wallet.wait_for([certificate_id], within=30)
        assert record.status.value == "verified", record.reason
    finally:
        await stop_scenario(scenario)


async def test_a_registry_certificate_from_another_ca_is_refused(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    gw_self_signed(tmp_path, "registry")
    other_ca, _ = gw_self_signed(tmp_path, "other")
    scenario = await gw_tls_scenario(
        empty_database_dsn,
        tmp_path,
        other_ca,
        STAMP_REGISTRY_RETRY_MAX_ATTEMPTS="3",
        STAMP_REGISTRY_RETRY_CAP_SECONDS="0.2",
    )
    try:
        await scenario.create_recipients(1)
        [certificate_id] = await scenario.post_certificates(1)
        await scenario.wait_terminal(timeout=60)
        view, _ = await gw_certificate(scenario, certificate_id)
        assert view["state"] == "failed", view
        assert view["failure"]["step"] == "registry"
        assert scenario.registry.stream_counters(certificate_id).distinct_issue_transactions == 0
        log = scenario.log_path.read_text(errors="replace")
        assert "registry.tls_handshake_failed" in log
    finally:
        await stop_scenario(scenario)


async def test_registry_tls_settings_are_validated(tmp_path: Path) -> None:
    cert, key = gw_self_signed(tmp_path, "registry")
    tls = {"STAMP_REGISTRIES": "Narnia=https://registry.example:443", "STAMP_REGISTRY_TLS_CA_FILE": str(cert)}
    settings = load_settings(
        {**tls, "STAMP_REGISTRY_TLS_CERT_FILE": str(cert), "STAMP_REGISTRY_TLS_KEY_FILE": str(key)}
    )
    shown = settings.masked()
    assert shown["registries"] == {"Narnia": "https://registry.example:443"}
    assert shown["registry_tls_ca_file"] == str(cert)
    assert "PRIVATE KEY" not in orjson.dumps(shown).decode()
    for env, expected in [
        ({**tls, "STAMP_REGISTRY_TLS_CA_FILE": str(tmp_path / "missing.pem")}, "cannot read it"),
        ({**tls, "STAMP_REGISTRY_TLS_CA_FILE": str(key)}, "holds no PEM certificate"),
        ({**tls, "STAMP_REGISTRY_TLS_KEY_FILE": str(key)}, "a client certificate needs both"),
        (
            {**tls, "STAMP_REGISTRIES": "Narnia=registry.example:443"},
            "no registry in STAMP_REGISTRIES uses TLS",
        ),
        ({"STAMP_REGISTRIES": "Narnia=ftp://registry.example:443"}, "https://host:port"),
    ]:
        with pytest.raises(ConfigError) as raised:
            load_settings(env)
        assert any(expected in p for p in raised.value.problems), raised.value.problems
