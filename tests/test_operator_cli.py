"""The operator CLI (stamp keys / tokens / recipients / certificates / check-config),
run in-process through ``stamp.cli.main`` and once as a real subprocess, against a
real PostgreSQL database of its own."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio

from stamp.cli import main
from stamp.credentials import token_digest
from stamp.crypto import backend as crypto_backend
from stamp.crypto.hdkeys import ExtendedPrivateKey
from stamp.crypto.issuer_keys import PKCS8_V1_PREFIX, IssuerKey, verify_signature
from stamp.db.embedded import EmbeddedPostgres
from stamp.db.migrate import apply_migrations
from stamp.load.database import create_database, drop_database
from stamp.load.database import database_dsn as dsn_for_database
from tests.stack import REGISTRY, certificate_body, running_stack


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return orjson.loads(self.out)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cli_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """A database of this module only: the certificates made here by hand must not
    meet the running Stamps of other tests."""
    name = await create_database(pg_server_dsn, "stamp_test_cli")
    dsn = dsn_for_database(pg_server_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    try:
        yield dsn
    finally:
        await drop_database(pg_server_dsn, name)


def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("STAMP_") or name.startswith("IssuerPrivateKeyPems__"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STAMP_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cli_dsn: str) -> Iterator[pytest.MonkeyPatch]:
    """STAMP_* as an operator's shell would have them: only the database URL."""
    _clean_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("STAMP_DATABASE_URL", cli_dsn)
    yield monkeypatch


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    def run(*args: str, stdin: str | None = None) -> Result:
        capsys.readouterr()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(args))
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return Result(code, captured.out, captured.err)

    return run


def wallet_key() -> str:
    return ExtendedPrivateKey.generate().public().to_base64()


# --- keys -------------------------------------------------------------------------------


def test_keys_generate_writes_a_private_v1_pem_and_prints_the_registry_public_key(
    cli: Any, tmp_path: Path
) -> None:
    out = tmp_path / "DK1.pem"
    result = cli("keys", "generate", "--grid-area", "DK1", "--out", str(out))
    assert result.code == 0, result.err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    assert text.startswith("-----BEGIN PRIVATE KEY-----\n")
    der = base64.b64decode("".join(text.strip().splitlines()[1:-1]))
    assert len(der) == 48 and der.startswith(PKCS8_V1_PREFIX)
    private = IssuerKey.from_pem(text)
    lines = result.out.splitlines()
    heading = next(i for i, line in enumerate(lines) if line.startswith("Public key for the registry"))
    public_b64 = lines[heading + 1]
    assert base64.b64decode(public_b64).decode().startswith("-----BEGIN PUBLIC KEY-----")
    message = b"transaction header bytes"
    assert verify_signature(public_b64, private.sign(message), message)
    assert not verify_signature(public_b64, IssuerKey.generate().sign(message), message)
    assert f"STAMP_ISSUER_KEYS=DK1={out}" in lines


def test_keys_generate_refuses_to_overwrite_unless_forced(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "DK2.pem"
    first = cli("keys", "generate", "--grid-area", "DK2", "--out", str(out), "--json")
    assert first.code == 0
    before = out.read_text()
    again = cli("keys", "generate", "--grid-area", "DK2", "--out", str(out))
    assert again.code == 4 and "exists already" in again.err and "--force" in again.err
    assert out.read_text() == before
    out.chmod(0o644)
    forced = cli("keys", "generate", "--grid-area", "DK2", "--out", str(out), "--force", "--json")
    assert forced.code == 0
    assert out.read_text() != before
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    answer = forced.json()
    key = IssuerKey.from_pem(out.read_text())
    assert answer["publicKeyPemBase64"] == key.public_pem_base64()
    assert answer["fingerprint"] == key.fingerprint
    assert answer["issuerKeysSetting"] == f"STAMP_ISSUER_KEYS=DK2={out}"
    assert key.private_pem() not in forced.out


def test_keys_generate_defaults_to_the_grid_area_file_in_the_current_directory(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("keys", "generate", "--grid-area", "SE3").code == 0
    assert IssuerKey.from_pem((tmp_path / "SE3.pem").read_text())
    bad = cli("keys", "generate", "--grid-area", "DK1,DK2")
    assert bad.code == 2 and "--grid-area" in bad.err


def test_tokens_generate_and_hash_agree(cli: Any) -> None:
    generated = cli("tokens", "generate", "--json").json()
    assert generated["digest"] == f"sha256:{token_digest(generated['token']).hex()}"
    hashed = cli("tokens", "hash", stdin=generated["token"] + "\n")
    assert hashed.code == 0 and hashed.out.strip() == generated["digest"]
    assert cli("tokens", "hash", stdin="short\n").code == 2


# --- check-config -----------------------------------------------------------------------


def test_check_config_fails_on_invalid_configuration(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clean_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("STAMP_PORT", "eighty")
    monkeypatch.setenv("STAMP_AUTH_TOKENS", "too-short")
    result = cli("check-config")
    assert result.code == 2
    assert "STAMP_PORT" in result.err and "STAMP_AUTH_TOKENS item 1" in result.err
    assert "too-short" not in result.err


def test_check_config_prints_the_configuration_with_secrets_masked(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clean_environment(monkeypatch, tmp_path)
    key = IssuerKey.generate()
    token = "a-token-that-is-long-enough-1234"
    monkeypatch.setenv("STAMP_DATABASE_URL", "postgresql://stamp:hunter2-secret@db:5432/stamp")
    monkeypatch.setenv("STAMP_ISSUER_KEYS", f"DK1={key.private_pem_base64()}")
    monkeypatch.setenv("STAMP_AUTH_TOKENS", token)
    result = cli("check-config")
    assert result.code == 0, result.err
    shown = result.json()
    assert shown["database_url"] == "postgresql://stamp:***@db:5432/stamp"
    assert shown["issuer_keys"] == {"DK1": key.fingerprint}
    assert shown["auth_tokens"] == "1 configured (masked)"
    for secret in (
        "hunter2-secret",
        key.private_pem_base64(),
        token,
        hashlib.sha256(token.encode()).hexdigest(),
    ):
        assert secret not in result.out


def test_check_config_names_the_crypto_backend_in_use(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clean_environment(monkeypatch, tmp_path)
    shown = cli("check-config").json()
    assert shown["crypto_backend"] == "auto"
    assert shown["crypto_backend_in_use"] == crypto_backend.select("auto").group.name
    monkeypatch.setenv("STAMP_CRYPTO_BACKEND", "sodium")
    shown = cli("check-config").json()
    assert (shown["crypto_backend"], shown["crypto_backend_in_use"]) == ("sodium", "sodium")
    assert "crypto_backend_fallback_reason" not in shown
    monkeypatch.setenv("STAMP_CRYPTO_BACKEND", "openssl")
    result = cli("check-config")
    assert result.code == 2
    assert "STAMP_CRYPTO_BACKEND='openssl': must be one of auto, decaf, sodium" in result.err


# --- recipients -------------------------------------------------------------------------


def test_recipients_create_and_show(cli: Any, env: pytest.MonkeyPatch) -> None:
    public_key = wallet_key()
    created = cli(
        "recipients",
        "create",
        "--endpoint",
        "https://wallet.example/v1/slices",
        "--public-key",
        public_key,
        "--json",
    )
    assert created.code == 0, created.err
    recipient_id = created.json()["id"]
    assert str(uuid.UUID(recipient_id)) == recipient_id
    shown = cli("recipients", "show", recipient_id, "--json")
    assert shown.code == 0
    assert shown.json() == {
        "id": recipient_id,
        "walletEndpointReference": {
            "version": 1,
            "endpoint": "https://wallet.example/v1/slices",
            "publicKey": public_key,
        },
    }
    human = cli("recipients", "show", recipient_id.upper())
    assert human.code == 0 and recipient_id in human.out and "https://wallet.example/v1/slices" in human.out


def test_recipients_create_validates_as_the_api_does(cli: Any, env: pytest.MonkeyPatch) -> None:
    result = cli(
        "recipients", "create", "--endpoint", "ftp://wallet", "--public-key", "bm90IGEga2V5", "--version", "2"
    )
    assert result.code == 2
    assert "--version: unsupported wallet endpoint version" in result.err
    assert "--endpoint: must be an absolute http(s) URL" in result.err
    assert "--public-key: must be an extended public key of 74 bytes" in result.err


def test_recipients_create_applies_the_wallet_endpoint_allow_list(cli: Any, env: pytest.MonkeyPatch) -> None:
    env.setenv("STAMP_WALLET_ENDPOINT_ALLOW", "*.wallet.example")
    refused = cli(
        "recipients", "create", "--endpoint", "http://10.0.0.7/v1/slices", "--public-key", wallet_key()
    )
    assert refused.code == 2
    assert "--endpoint: names a host outside the wallet endpoints this Stamp may call" in refused.err
    allowed = cli(
        "recipients",
        "create",
        "--endpoint",
        "https://a.wallet.example/v1/slices",
        "--public-key",
        wallet_key(),
    )
    assert allowed.code == 0, allowed.err


def test_recipients_show_of_an_unknown_or_malformed_id(cli: Any, env: pytest.MonkeyPatch) -> None:
    unknown = cli("recipients", "show", str(uuid.uuid4()))
    assert unknown.code == 3 and "not found" in unknown.err
    malformed = cli("recipients", "show", "nope")
    assert malformed.code == 2 and "ID" in malformed.err


# --- certificates -----------------------------------------------------------------------


async def insert_certificate(
    dsn: str, recipient_id: str, *, state: str, failed_step: str | None = None
) -> str:
    """A certificate as the pipeline leaves it (inserted by hand, with its history)."""
    certificate_id = str(uuid.uuid4())
    start = 1_700_000_000 + 3600 * (uuid.uuid4().int % 10**6)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                """
                INSERT INTO certificates (registry_name, id, recipient_id, metering_point_id,
                    certificate_type, quantity, period_start, period_end, grid_area,
                    clear_attributes, hashed_attributes, request_digest, state, position,
                    transaction, transaction_id, failed_step, failure_reason, attempts)
                VALUES ($1, $2, $3, $4, 2, 1000, $5, $6, 'DK1', '[["fuelCode", "F01040100"]]',
                    '[["assetId", "571234567890123456"]]', $7, $8,
                    (SELECT count(*) + 1 FROM certificates WHERE recipient_id = $3),
                    $9, 'abc123', $10, $11, $12)
                """,
                REGISTRY,
                certificate_id,
                recipient_id,
                f"57{uuid.uuid4().int % 10**16:016d}",
                start,
                start + 3600,
                b"\x00" * 32,
                state,
                b"transaction bytes",
                failed_step,
                "wallet answered 404" if failed_step else None,
                5 if failed_step else 0,
            )
            for event, event_state in (("CertificateStored", "stored"), ("CertificateFailed", state)):
                await conn.execute(
                    "INSERT INTO certificate_events "
                    "(registry_name, certificate_id, event_type, state, detail) "
                    "VALUES ($1, $2, $3, $4, $5::jsonb)",
                    REGISTRY,
                    certificate_id,
                    event,
                    event_state,
                    '{"step": "wallet"}' if event == "CertificateFailed" else "{}",
                )
    finally:
        await conn.close()
    return certificate_id


@pytest_asyncio.fixture(loop_scope="session")
async def failed_certificate(cli_dsn: str, env: pytest.MonkeyPatch, cli: Any) -> tuple[str, str]:
    recipient_id = await _created_recipient(cli)
    return recipient_id, await insert_certificate(cli_dsn, recipient_id, state="failed", failed_step="wallet")


async def test_certificates_show_prints_the_failure_and_the_history(
    cli: Any, failed_certificate: tuple[str, str]
) -> None:
    recipient_id, certificate_id = failed_certificate
    result = await asyncio.to_thread(cli, "certificates", "show", REGISTRY, certificate_id, "--json")
    assert result.code == 0, result.err
    view = result.json()
    assert view["state"] == "failed" and view["recipientId"] == recipient_id
    assert view["failure"] == {"step": "wallet", "reason": "wallet answered 404", "attempts": 5}
    assert [e["type"] for e in view["events"]] == ["CertificateStored", "CertificateFailed"]
    assert "blinding" not in result.out
    human = await asyncio.to_thread(cli, "certificates", "show", REGISTRY, certificate_id)
    assert "step wallet: wallet answered 404 (5 attempts)" in human.out
    assert "CertificateFailed" in human.out
    unknown = await asyncio.to_thread(cli, "certificates", "show", REGISTRY, str(uuid.uuid4()))
    assert unknown.code == 3 and "not found" in unknown.err


async def test_certificates_show_prints_the_withdrawals_own_state(
    cli: Any, cli_dsn: str, failed_certificate: tuple[str, str]
) -> None:
    _, certificate_id = failed_certificate
    before = (await asyncio.to_thread(cli, "certificates", "show", REGISTRY, certificate_id, "--json")).json()
    assert "withdrawal" not in before
    conn = await asyncpg.connect(cli_dsn)
    try:
        async with conn.transaction():
            await conn.execute("UPDATE certificates SET withdrawn = true WHERE id = $1", certificate_id)
            withdrawal_id = await conn.fetchval(
                "INSERT INTO withdrawn_certificates"
                " (registry_name, certificate_id, transaction, transaction_id, state, reason)"
                " VALUES ($1, $2, 'tx', 'wtx-1', 'failed', 'registry unavailable') RETURNING id",
                REGISTRY,
                certificate_id,
            )
    finally:
        await conn.close()
    view = (await asyncio.to_thread(cli, "certificates", "show", REGISTRY, certificate_id, "--json")).json()
    withdrawal = view["withdrawal"]
    assert withdrawal["id"] == withdrawal_id and withdrawal["transactionId"] == "wtx-1"
    assert (withdrawal["state"], withdrawal["reason"]) == ("failed", "registry unavailable")
    human = await asyncio.to_thread(cli, "certificates", "show", REGISTRY, certificate_id)
    assert f"failed (registry unavailable) since {withdrawal['withdrawnAt']}" in human.out


async def test_certificates_retry_resumes_a_failed_certificate_once(
    cli: Any, cli_dsn: str, failed_certificate: tuple[str, str]
) -> None:
    _, certificate_id = failed_certificate
    result = await asyncio.to_thread(cli, "certificates", "retry", REGISTRY, certificate_id, "--json")
    assert result.code == 0, result.err
    assert result.json() == {"id": certificate_id, "registryName": REGISTRY, "state": "marked_as_issued"}
    view = (await asyncio.to_thread(cli, "certificates", "show", REGISTRY, certificate_id, "--json")).json()
    assert view["state"] == "marked_as_issued" and view["failure"] is None
    assert view["events"][-1]["type"] == "CertificateRetried"
    assert view["events"][-1]["detail"]["from"] == "wallet"
    again = await asyncio.to_thread(cli, "certificates", "retry", REGISTRY, certificate_id)
    assert again.code == 4 and "only a failed certificate can be retried" in again.err
    unknown = await asyncio.to_thread(cli, "certificates", "retry", REGISTRY, str(uuid.uuid4()))
    assert unknown.code == 3


async def test_certificates_list_filters_and_pages(cli: Any, cli_dsn: str, env: pytest.MonkeyPatch) -> None:
    created = await asyncio.to_thread(
        cli,
        "recipients",
        "create",
        "--endpoint",
        "https://w.example/",
        "--public-key",
        wallet_key(),
        "--json",
    )
    recipient_id = created.json()["id"]
    ids = [
        await insert_certificate(cli_dsn, recipient_id, state="failed", failed_step="wallet"),
        await insert_certificate(cli_dsn, recipient_id, state="delivered"),
        await insert_certificate(cli_dsn, recipient_id, state="failed", failed_step="registry"),
    ]
    every = await asyncio.to_thread(cli, "certificates", "list", "--recipient", recipient_id, "--json")
    assert every.code == 0, every.err
    assert [c["id"] for c in every.json()["result"]] == ids
    failed = await asyncio.to_thread(
        cli, "certificates", "list", "--recipient", recipient_id, "--state", "FAILED", "--json"
    )
    assert [c["id"] for c in failed.json()["result"]] == [ids[0], ids[2]]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        args = ["certificates", "list", "--recipient", recipient_id, "--limit", "2", "--json"]
        page = (await asyncio.to_thread(cli, *args, *(["--cursor", cursor] if cursor else []))).json()
        seen += [c["id"] for c in page["result"]]
        cursor = page["metadata"]["nextCursor"]
        if cursor is None:
            break
    assert seen == ids
    human = await asyncio.to_thread(cli, "certificates", "list", "--recipient", recipient_id, "--limit", "1")
    assert ids[0] in human.out and "step wallet" in human.out and "more: --cursor" in human.out
    for bad, option in (("--state", "--state"), ("--limit", "--limit"), ("--cursor", "--cursor")):
        wrong = await asyncio.to_thread(cli, "certificates", "list", bad, "0")
        assert wrong.code == 2 and option in wrong.err


def test_a_real_subprocess_lists_certificates_as_json(env: pytest.MonkeyPatch) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "stamp.cli", "certificates", "list", "--limit", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    answer = orjson.loads(completed.stdout)
    assert answer["metadata"]["limit"] == 5
    assert isinstance(answer["result"], list)


# --- database failures ------------------------------------------------------------------


def test_an_unreachable_database_is_a_clear_error(cli: Any, env: pytest.MonkeyPatch) -> None:
    env.setenv("STAMP_DATABASE_URL", "postgresql://postgres:pw@127.0.0.1:9/stamp")
    result = cli("certificates", "list", "--connect-timeout", "0.3")
    assert result.code == 1
    assert "not reachable" in result.err and "127.0.0.1:9" in result.err
    assert "pw@" not in result.err


async def test_an_outdated_schema_asks_for_stamp_migrate(
    cli: Any, env: pytest.MonkeyPatch, empty_database_dsn: str
) -> None:
    env.setenv("STAMP_DATABASE_URL", empty_database_dsn)
    result = await asyncio.to_thread(cli, "recipients", "show", str(uuid.uuid4()))
    assert result.code == 1 and "stamp migrate" in result.err


async def test_the_embedded_database_in_use_by_stamp_points_to_the_http_api(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clean_environment(monkeypatch, tmp_path)
    data_dir = tmp_path / "data"
    missing = await asyncio.to_thread(cli, "certificates", "list")
    assert missing.code == 1 and "no embedded database" in missing.err
    running = EmbeddedPostgres(data_dir / "pg")
    await asyncio.to_thread(running.start)
    try:
        busy = await asyncio.to_thread(cli, "certificates", "list")
    finally:
        await asyncio.to_thread(running.stop)
    assert busy.code == 1
    assert "in use by a running Stamp" in busy.err and "HTTP API" in busy.err
    # Not in use any more: the command runs on it (after `stamp migrate`).
    assert (await asyncio.to_thread(cli, "migrate")).code == 0
    listed = await asyncio.to_thread(cli, "certificates", "list", "--json")
    assert listed.code == 0, listed.err
    assert listed.json()["result"] == []


# --- with a running Stamp ---------------------------------------------------------------


async def test_a_running_stamp_delivers_a_certificate_retried_from_the_cli(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, empty_database_dsn: str
) -> None:
    _clean_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("STAMP_DATABASE_URL", empty_database_dsn)
    async with running_stack(empty_database_dsn, tmp_path / "stamp", crypto_workers=1) as stack:
        reference = stack.wallet.create_endpoint()
        stack.wallet.disable_endpoint(reference)  # the wallet answers 400 for it
        created = await asyncio.to_thread(
            cli,
            *("recipients", "create", "--endpoint", reference.endpoint),
            *("--public-key", reference.public_key_b64, "--json"),
        )
        assert created.code == 0, created.err
        body = certificate_body(created.json()["id"])
        status, answer = await stack.post_certificate(body)
        assert status == 202, answer
        key: tuple[str, str] = (REGISTRY, body["certificate"]["id"])
        assert await stack.wait_terminal([key]) == {key[1]: "failed"}
        shown = (await asyncio.to_thread(cli, "certificates", "show", key[0], key[1], "--json")).json()
        assert shown["failure"]["step"] == "wallet"

        stack.wallet.enable_endpoint(reference)
        retried = await asyncio.to_thread(cli, "certificates", "retry", key[0], key[1])
        assert retried.code == 0, retried.err
        assert "within about a second" in retried.out
        assert await stack.wait_terminal([key], timeout=30) == {key[1]: "delivered"}
        await stack.wallet.wait_for([key[1]])


async def test_certificates_redeliver_one_or_a_recipients(
    cli: Any, cli_dsn: str, env: pytest.MonkeyPatch
) -> None:
    recipient_id = await _created_recipient(cli)
    delivered = await insert_certificate(cli_dsn, recipient_id, state="delivered", failed_step=None)
    failed = await insert_certificate(cli_dsn, recipient_id, state="failed", failed_step="wallet")

    result = await asyncio.to_thread(cli, "certificates", "redeliver", REGISTRY, delivered, "--json")
    assert result.code == 0, result.err
    assert result.json() == [{"id": delivered, "registryName": REGISTRY, "redelivery": "requested"}]
    view = (await asyncio.to_thread(cli, "certificates", "show", REGISTRY, delivered, "--json")).json()
    assert view["state"] == "delivered"
    assert view["events"][-1]["type"] == "CertificateRedeliveryRequested"
    conn = await asyncpg.connect(cli_dsn)
    try:
        pending = await conn.fetchval(
            "SELECT redelivery_requested_at IS NOT NULL FROM certificates WHERE id = $1", delivered
        )
    finally:
        await conn.close()
    assert pending  # durable before the command answered: a running Stamp's sweep takes it up

    again = await asyncio.to_thread(cli, "certificates", "redeliver", "--recipient", recipient_id)
    assert again.code == 0, again.err
    assert f"{REGISTRY}/{delivered} alreadyRequested" in again.out and failed not in again.out
    never = await asyncio.to_thread(cli, "certificates", "redeliver", REGISTRY, failed)
    assert never.code == 4 and "only a delivered certificate" in never.err
    later = await asyncio.to_thread(
        cli,
        "certificates",
        "redeliver",
        "--recipient",
        recipient_id,
        "--since",
        "2100-01-01T00:00:00Z",
        "--json",
    )
    assert later.code == 0 and later.json() == []
    for bad in (
        ("certificates", "redeliver"),
        ("certificates", "redeliver", REGISTRY, delivered, "--recipient", recipient_id),
        ("certificates", "redeliver", "--recipient", recipient_id, "--since", "last week"),
    ):
        assert (await asyncio.to_thread(cli, *bad)).code == 2, bad
    unknown = await asyncio.to_thread(cli, "certificates", "redeliver", "--recipient", str(uuid.uuid4()))
    assert unknown.code == 3


def test_recipients_move_changes_the_endpoint_only(cli: Any, env: pytest.MonkeyPatch) -> None:
    public_key = wallet_key()
    created = cli(
        "recipients", "create", "--endpoint", "https://old.example/s", "--public-key", public_key, "--json"
    )
    recipient_id = created.json()["id"]
    moved = cli("recipients", "move", recipient_id, "--endpoint", "https://new.example/s", "--json")
    assert moved.code == 0, moved.err
    assert moved.json()["walletEndpointReference"] == {
        "version": 1,
        "endpoint": "https://new.example/s",
        "publicKey": public_key,
    }
    bad = cli("recipients", "move", recipient_id, "--endpoint", "ftp://new.example/s")
    assert bad.code == 2 and "--endpoint" in bad.err
    assert cli("recipients", "move", str(uuid.uuid4()), "--endpoint", "https://x.example/").code == 3


async def _created_recipient(cli: Any) -> str:
    """A recipient made through `stamp recipients create`; its id."""
    created = await asyncio.to_thread(
        cli,
        "recipients",
        "create",
        "--endpoint",
        "https://w.example/",
        "--public-key",
        wallet_key(),
        "--json",
    )
    recipient_id: str = created.json()["id"]
    return recipient_id
