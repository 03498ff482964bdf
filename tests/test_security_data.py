"""Security findings about the data Stamp accepts, stores and shows (issue 11: findings
9 to 12 and the supervisor's crash counts), each against a live Stamp: real sockets,
real PostgreSQL, the registry and wallet simulators, the real ``stamp`` CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pykka
import pytest
import pytest_asyncio

from actors.certificate import CertificateActor
from actors.messages import CertificateCrashed, CertificateFinished
from actors.supervisor import MAX_TRACKED_CRASHES
from stamp.api.runtime import RUNTIME
from stamp.db.migrate import MigrationFailed, apply_migrations, default_source, schema_status
from stamp.domain import CertificateKey, State
from tests.stack import REGISTRY, Stack, certificate_body, running_stack, serving
from tests.test_withdrawal import withdraw

pytestmark = pytest.mark.asyncio(loop_scope="session")

MAX_IN_FLIGHT = 4
HOUR = 3600


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def data_stack(database_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(
        database_dsn, tmp_path_factory.mktemp("security-data"), max_in_flight=MAX_IN_FLIGHT
    ) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def data_recipient(data_stack: Stack) -> str:
    return await data_stack.create_recipient()


def data_period_body(recipient: str, metering_point: str, start: int, end: int) -> dict[str, Any]:
    body = certificate_body(recipient, start=start, meteringPointId=metering_point)
    body["certificate"]["end"] = end
    return body


def data_metering_point() -> str:
    return f"57{uuid.uuid4().int % 10**16:016d}"


def data_start() -> int:
    return 1_600_000_000 + HOUR * (uuid.uuid4().int % 10**6)


async def data_live_rows(stack: Stack, metering_point: str) -> list[asyncpg.Record]:
    return list(
        await stack.pool.fetch(
            "SELECT registry_name, id::text AS id, period_start, period_end FROM certificates "
            "WHERE metering_point_id = $1 AND NOT withdrawn ORDER BY period_start",
            metering_point,
        )
    )


def data_assert_conflict_names(answer: dict[str, Any], holder: dict[str, Any]) -> None:
    assert answer["status"] == 409, answer
    assert answer["type"].endswith("/conflict")
    certificate = holder["certificate"]
    assert answer["conflictingCertificate"] == {
        "registryName": REGISTRY,
        "id": certificate["id"],
        "start": certificate["start"],
        "end": certificate["end"],
    }
    assert f"{REGISTRY}/{certificate['id']}" in answer["detail"]


# --- finding 9: overlapping periods -------------------------------------------------------------


async def test_periods_overlapping_a_live_certificate_are_refused_with_409_naming_it(
    data_stack: Stack, data_recipient: str
) -> None:
    point, start = data_metering_point(), data_start()
    first = data_period_body(data_recipient, point, start, start + HOUR)
    assert (await data_stack.post_certificate(first))[0] == 202
    # The three periods of the finding: the first, one shifted by a minute, its first minute.
    for begin, end in ((start + 60, start + HOUR + 60), (start, start + 60), (start + 1800, start + 1860)):
        async with data_stack.http.post(
            f"{data_stack.base}/v1/certificates", json=data_period_body(data_recipient, point, begin, end)
        ) as response:
            assert response.content_type == "application/problem+json"
            data_assert_conflict_names(await response.json(content_type=None), first)
    assert [r["id"] for r in await data_live_rows(data_stack, point)] == [first["certificate"]["id"]]
    # Still as before: an identical re-post is idempotent, a changed one under the same id conflicts.
    status, answer = await data_stack.post_certificate(first)
    assert status == 202 and answer["id"] == first["certificate"]["id"]
    changed = {**first, "certificate": {**first["certificate"], "quantity": 7}}
    status, answer = await data_stack.post_certificate(changed)
    assert status == 409 and answer["differences"] == ["certificate.quantity"]
    assert "conflictingCertificate" not in answer
    await data_stack.wait_terminal([(REGISTRY, first["certificate"]["id"])])


async def test_adjacent_periods_of_one_metering_point_are_both_issued(
    data_stack: Stack, data_recipient: str
) -> None:
    point, start = data_metering_point(), data_start()
    bodies = [
        data_period_body(data_recipient, point, start, start + HOUR),
        data_period_body(data_recipient, point, start + HOUR, start + 2 * HOUR),
    ]
    for body in bodies:
        status, answer = await data_stack.post_certificate(body)
        assert status == 202, answer
    states = await data_stack.wait_terminal([(REGISTRY, b["certificate"]["id"]) for b in bodies])
    assert set(states.values()) == {"delivered"}


async def test_concurrent_overlapping_posts_to_two_instances_issue_exactly_one(
    data_stack: Stack, data_recipient: str
) -> None:
    point, start = data_metering_point(), data_start()
    # Every body overlaps every other: all cover [start + 59, start + 61).
    bodies = [
        data_period_body(data_recipient, point, start + offset, start + offset + 60 + offset)
        for offset in range(60)
    ]
    second_settings = dataclasses.replace(data_stack.settings, instance_id=f"second-{uuid.uuid4().hex[:8]}")
    async with serving(second_settings, data_stack.registry, data_stack.wallet) as second:

        async def post(i: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            # One client (connection) per request, alternating between the instances.
            base = (data_stack, second)[i % 2].base
            async with (
                aiohttp.ClientSession() as client,
                client.post(f"{base}/v1/certificates", json=body) as response,
            ):
                return response.status, await response.json(content_type=None)

        answers = await asyncio.gather(*(post(i, b) for i, b in enumerate(bodies)))
    accepted = [bodies[i] for i, (status, _) in enumerate(answers) if status == 202]
    assert len(accepted) == 1, sorted(status for status, _ in answers)
    for status, answer in answers:
        if status != 202:
            data_assert_conflict_names(answer, accepted[0])
    assert [r["id"] for r in await data_live_rows(data_stack, point)] == [accepted[0]["certificate"]["id"]]
    states = await data_stack.wait_terminal([(REGISTRY, accepted[0]["certificate"]["id"])])
    assert set(states.values()) == {"delivered"}


async def test_the_period_of_a_withdrawn_certificate_can_be_certified_again(
    data_stack: Stack, data_recipient: str
) -> None:
    point, start = data_metering_point(), data_start()
    first = data_period_body(data_recipient, point, start, start + HOUR)
    assert (await data_stack.post_certificate(first))[0] == 202
    await data_stack.wait_terminal([(REGISTRY, first["certificate"]["id"])])
    overlapping = data_period_body(data_recipient, point, start + 60, start + HOUR + 60)
    assert (await data_stack.post_certificate(overlapping))[0] == 409
    status, answer = await withdraw(data_stack, first["certificate"]["id"])
    assert status == 201, answer
    status, answer = await data_stack.post_certificate(overlapping)
    assert status == 202, answer
    states = await data_stack.wait_terminal([(REGISTRY, overlapping["certificate"]["id"])])
    assert set(states.values()) == {"delivered"}


async def data_database_at_0003(dsn: str, tmp_path: Path) -> tuple[asyncpg.Connection, uuid.UUID]:
    """A connection to a database migrated up to 0003 only, and a recipient in it."""
    before = tmp_path / "migrations"
    before.mkdir()
    for migration in default_source().iterdir():
        if migration.name.endswith(".sql") and migration.name < "0004":
            shutil.copyfile(Path(str(migration)), before / migration.name)
    conn = await asyncpg.connect(dsn)
    await apply_migrations(conn, before)
    recipient = uuid.uuid4()
    await conn.execute(
        "INSERT INTO recipients (id, wallet_endpoint_version, wallet_endpoint_url, wallet_public_key) "
        "VALUES ($1, 1, 'http://wallet.example/v1', $2)",
        recipient,
        bytes(74),
    )
    return conn, recipient


async def data_insert_delivered(
    conn: asyncpg.Connection, recipient: uuid.UUID, metering_point: str, start: int, end: int, position: int
) -> uuid.UUID:
    certificate_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO certificates (registry_name, id, recipient_id, metering_point_id, certificate_type, "
        "quantity, period_start, period_end, grid_area, request_digest, state, position, transaction) "
        "VALUES ($1, $2, $3, $4, 2, 10, $5, $6, 'DK1', $7, 'delivered', $8, 'tx')",
        REGISTRY,
        certificate_id,
        recipient,
        metering_point,
        start,
        end,
        bytes(32),
        position,
    )
    return certificate_id


async def test_migration_0004_refuses_to_run_over_stored_overlaps_and_lists_them(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    conn, recipient = await data_database_at_0003(empty_database_dsn, tmp_path)
    try:
        # As the old unique index let them in: one hour, the hour shifted by a minute,
        # the first minute (the last two are adjacent, so two pairs overlap).
        periods = {"hour": (0, HOUR), "shifted": (60, HOUR + 60), "first_minute": (0, 60)}
        ids = {
            name: await data_insert_delivered(conn, recipient, "MP-1", begin, end, position)
            for position, (name, (begin, end)) in enumerate(periods.items(), start=1)
        }
        await data_insert_delivered(conn, recipient, "MP-2", 0, HOUR, 4)  # another point: no overlap
        with pytest.raises(MigrationFailed) as failed:
            await apply_migrations(conn)
        report = str(failed.value)
        assert "2 pair(s)" in report and "withdraw" in report and "stamp migrate" in report
        assert all(str(i) in report for i in ids.values())
        assert (await schema_status(conn)).pending[0] == 4
        # The operator's way out: the two issued in error are withdrawn; then it migrates.
        await conn.execute(
            "UPDATE certificates SET withdrawn = true WHERE id = ANY($1::uuid[])",
            [ids["shifted"], ids["first_minute"]],
        )
        await apply_migrations(conn)
        assert (await schema_status(conn)).pending == []
    finally:
        await conn.close()


async def test_stamp_migrate_prints_the_overlaps_it_refuses(
    empty_database_dsn: str, tmp_path: Path, data_cli_env: dict[str, str]
) -> None:
    conn, recipient = await data_database_at_0003(empty_database_dsn, tmp_path)
    try:
        point = "MP\x1b]0;owned\x07"  # the report quotes stored text: escaped on the terminal
        ids = [
            await data_insert_delivered(conn, recipient, point, 0, HOUR, 1),
            await data_insert_delivered(conn, recipient, point, 1800, HOUR + 1800, 2),
        ]
    finally:
        await conn.close()
    result = await data_run_cli({**data_cli_env, "STAMP_DATABASE_URL": empty_database_dsn}, "migrate")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "migration 0004" in result.stderr and "1 pair(s)" in result.stderr and "Hint:" in result.stderr
    assert all(str(i) in result.stderr for i in ids)
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


# --- finding 10: the in-flight bound under a burst ----------------------------------------------


class DataActorPeak:
    """Counts live certificate actors (in pykka's registry) as often as it can, from a
    thread of its own: a measure independent of Stamp's own bookkeeping."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, len(pykka.ActorRegistry.get_by_class(CertificateActor)))
            self._stop.wait(0.0005)

    def __enter__(self) -> DataActorPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def test_max_in_flight_holds_under_a_burst_and_nothing_is_lost(
    data_stack: Stack, data_recipient: str
) -> None:
    live = data_stack.app[RUNTIME].live
    bodies = [certificate_body(data_recipient) for _ in range(150)]

    with DataActorPeak() as observed:
        assert await data_stack.post_in_parallel(bodies, clients=30) == [202] * len(bodies)
        states = await data_stack.wait_terminal(
            [(REGISTRY, b["certificate"]["id"]) for b in bodies], timeout=180
        )
    assert set(states.values()) == {"delivered"}
    assert 1 <= observed.peak <= MAX_IN_FLIGHT
    assert 1 <= live.slots_peak <= MAX_IN_FLIGHT
    # Every slot comes back (the 409s and re-posts of the tests before took none for good).
    async with asyncio.timeout(10):
        while live.slots_taken:  # noqa: ASYNC110 (released by the supervisor, an actor thread)
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.2)  # the metrics sampler's round
    async with data_stack.http.get(f"{data_stack.base}/metrics") as response:
        text = await response.text()
    peak_line = next(
        line for line in text.splitlines() if line.startswith("stamp_certificate_actor_slots_peak ")
    )
    assert 1 <= float(peak_line.split()[1]) <= MAX_IN_FLIGHT


# --- finding 11: the database password in check-config -----------------------------------------


@dataclasses.dataclass(frozen=True)
class DataCliResult:
    returncode: int
    stdout: str
    stderr: str
    raw_stdout: bytes


async def data_run_cli(env: dict[str, str], *args: str) -> DataCliResult:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stamp.cli",
        *args,
        env={"PYTHONIOENCODING": "utf-8", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return DataCliResult(process.returncode, out.decode(), err.decode(), out)


@pytest.fixture
def data_cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {"PATH": os.environ["PATH"], "STAMP_DATA_DIR": str(tmp_path / "data")}


async def test_check_config_masks_database_passwords_given_in_the_query(data_cli_env: dict[str, str]) -> None:
    url = (
        "postgresql://stamp:userinfo-secret@db.example:5432/stamp?sslmode=verify-full"
        "&password=query-secret&sslpassword=key-passphrase&PASS%57ORD=encoded-secret&passfile=/etc/stamp/pgpass"
    )
    result = await data_run_cli({**data_cli_env, "STAMP_DATABASE_URL": url}, "check-config")
    assert result.returncode == 0, result.stderr
    shown = orjson.loads(result.stdout)["database_url"]
    assert shown == (
        "postgresql://stamp:***@db.example:5432/stamp?sslmode=verify-full"
        "&password=***&sslpassword=***&PASS%57ORD=***&passfile=/etc/stamp/pgpass"
    )
    for secret in ("userinfo-secret", "query-secret", "key-passphrase", "encoded-secret"):
        assert secret not in result.stdout + result.stderr


async def test_a_database_error_does_not_show_a_query_password(data_cli_env: dict[str, str]) -> None:
    url = "postgresql://stamp@127.0.0.1:1/stamp?password=query-secret&sslpassword=key-passphrase"
    result = await data_run_cli(
        {**data_cli_env, "STAMP_DATABASE_URL": url}, "certificates", "list", "--connect-timeout", "0.5"
    )
    assert result.returncode == 1
    assert "password=***&sslpassword=***" in result.stderr
    for secret in ("query-secret", "key-passphrase"):
        assert secret not in result.stdout + result.stderr


# --- finding 12: control characters -------------------------------------------------------------

DATA_CONTROL_TEXTS = {
    "clear screen": "57\x1b[2J",
    "osc title": "a\x1b]0;owned\x07",
    "bell": "F01\x07",
    "next line (C1)": "T01\x85",
    "csi (C1)": "x\x9b31m",
    "delete": "x\x7f",
}


def data_with_text(body: dict[str, Any], field: str, text: str) -> tuple[dict[str, Any], str]:
    """The body with ``text`` put into one text field; the field path the 400 names."""
    certificate = dict(body["certificate"])
    body = {**body, "certificate": certificate}
    if field == "meteringPointId":
        body["meteringPointId"] = text
        return body, "meteringPointId"
    if field == "registryName":
        body["registryName"] = text
        return body, "registryName"
    if field == "gridArea":
        certificate["gridArea"] = text
        return body, "certificate.gridArea"
    if field == "clear key":
        certificate["clearTextAttributes"] = {text: "1"}
        return body, "certificate.clearTextAttributes["
    if field == "clear value":
        certificate["clearTextAttributes"] = {"fuelCode": text}
        return body, "certificate.clearTextAttributes.fuelCode"
    if field == "hashed key":
        certificate["hashedAttributes"] = [{"key": text, "value": "1"}]
        return body, "certificate.hashedAttributes[0].key"
    assert field == "hashed value"
    certificate["hashedAttributes"] = [{"key": "assetId", "value": text}]
    return body, "certificate.hashedAttributes[0].value"


@pytest.mark.parametrize(
    "field",
    ["meteringPointId", "registryName", "gridArea", "clear key", "clear value", "hashed key", "hashed value"],
)
async def test_intake_refuses_control_characters_in_each_text_field(
    data_stack: Stack, data_recipient: str, field: str
) -> None:
    for name, text in DATA_CONTROL_TEXTS.items():
        body, path = data_with_text(certificate_body(data_recipient), field, text)
        async with data_stack.http.post(f"{data_stack.base}/v1/certificates", json=body) as response:
            assert response.status == 400, (name, await response.text())
            assert response.content_type == "application/problem+json"
            answer = await response.json(content_type=None)
        errors = [e for e in answer["errors"] if e["field"].startswith(path)]
        assert len(errors) == 1, (name, answer["errors"])
        assert "control characters" in errors[0]["message"], (name, errors)
        assert errors[0]["field"].isprintable()
        assert not await data_stack.pool.fetchval(
            "SELECT count(*) FROM certificates WHERE id = $1", body["certificate"]["id"]
        )


async def test_recipient_endpoints_and_query_filters_refuse_control_characters(data_stack: Stack) -> None:
    reference = data_stack.wallet.create_endpoint().as_json()
    for name, text in DATA_CONTROL_TEXTS.items():
        body = {"walletEndpointReference": {**reference, "endpoint": f"http://wallet.example/{text}"}}
        async with data_stack.http.post(f"{data_stack.base}/v1/recipients", json=body) as response:
            assert response.status == 400, name
            answer = await response.json(content_type=None)
        assert [e["field"] for e in answer["errors"]] == ["walletEndpointReference.endpoint"], name
        assert "control characters" in answer["errors"][0]["message"]
        async with data_stack.http.get(
            f"{data_stack.base}/v1/certificates", params={"meteringPointId": text}
        ) as response:
            assert response.status == 400, name
            assert (await response.json(content_type=None))["errors"][0]["field"] == "meteringPointId"


async def data_insert_hostile_rows(stack: Stack) -> tuple[str, str]:
    """A recipient and a certificate with control characters, as an older Stamp (or a
    hand-written INSERT) may have stored them."""
    recipient, certificate_id, start = str(uuid.uuid4()), str(uuid.uuid4()), data_start()
    async with stack.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO recipients (id, wallet_endpoint_version, wallet_endpoint_url, wallet_public_key) "
            "VALUES ($1, 1, $2, $3)",
            recipient,
            "http://wallet.example/\x1b[2J\x1b]0;owned\x07",
            bytes(74),
        )
        await conn.execute(
            "INSERT INTO certificates (registry_name, id, recipient_id, metering_point_id, certificate_type, "
            "quantity, period_start, period_end, grid_area, clear_attributes, hashed_attributes, "
            "request_digest, state, failed_step, failure_reason) "
            "VALUES ($1, $2, $3, $4, 2, 10, $5, $6, 'DK1', $7, $8, $9, 'failed', 'wallet', $10)",
            REGISTRY,
            certificate_id,
            recipient,
            "57\x1b[2J\x1b]0;owned\x07\x85",
            start,
            start + HOUR,
            [["fuel\x1b[31mCode", "F01\x9b1m"]],
            [["asset\x07Id", "1"]],
            bytes(32),
            "wallet said \x1b[8mhidden\u202e",
        )
        await conn.execute(
            "INSERT INTO certificate_events (registry_name, certificate_id, event_type, state, detail) "
            "VALUES ($1, $2, 'CertificateFailed', 'failed', $3::jsonb)",
            REGISTRY,
            certificate_id,
            {"reason": "\x1b[2J\x85"},
        )
    return recipient, certificate_id


def data_assert_no_raw_controls(raw: bytes) -> None:
    text = raw.decode("utf-8")
    controls = [c for c in text if not c.isprintable() and c != "\n"]
    assert controls == [], controls


async def test_operator_commands_print_stored_control_characters_escaped(
    data_stack: Stack, data_cli_env: dict[str, str], database_dsn: str
) -> None:
    recipient, certificate_id = await data_insert_hostile_rows(data_stack)
    env = {**data_cli_env, "STAMP_DATABASE_URL": database_dsn}
    show = await data_run_cli(env, "certificates", "show", REGISTRY, certificate_id)
    assert show.returncode == 0, show.stderr
    data_assert_no_raw_controls(show.raw_stdout)
    assert "57\\x1b[2J\\x1b]0;owned\\x07\\x85" in show.stdout
    assert "fuel\\x1b[31mCode=F01\\x9b1m" in show.stdout
    assert "asset\\x07Id" in show.stdout
    assert "wallet said \\x1b[8mhidden\\u202e" in show.stdout
    listing = await data_run_cli(env, "certificates", "list", "--state", "failed", "--limit", "1000")
    assert listing.returncode == 0, listing.stderr
    data_assert_no_raw_controls(listing.raw_stdout)
    assert certificate_id in listing.stdout
    shown = await data_run_cli(env, "recipients", "show", recipient)
    assert shown.returncode == 0, shown.stderr
    data_assert_no_raw_controls(shown.raw_stdout)
    assert "http://wallet.example/\\x1b[2J\\x1b]0;owned\\x07" in shown.stdout
    # --json is for scripts: escaped as JSON, and the values read back exactly.
    as_json = await data_run_cli(env, "certificates", "show", REGISTRY, certificate_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    data_assert_no_raw_controls(as_json.raw_stdout)
    view = orjson.loads(as_json.raw_stdout)
    assert view["meteringPointId"] == "57\x1b[2J\x1b]0;owned\x07\x85"
    assert view["clearTextAttributes"] == {"fuel\x1b[31mCode": "F01\x9b1m"}


# --- the supervisor's crash counts --------------------------------------------------------------


async def test_crash_counts_are_dropped_when_a_certificate_finishes_and_are_capped(data_stack: Stack) -> None:
    supervisor = data_stack.app[RUNTIME].supervisor

    def crash_keys() -> set[CertificateKey]:
        crashes = supervisor.proxy().crashes.get(timeout=10)
        while True:
            try:
                return set(crashes)
            except RuntimeError:  # changed by the supervisor while we read it
                continue

    finished = CertificateKey(REGISTRY, str(uuid.uuid4()))
    supervisor.tell(CertificateCrashed(finished, State.MARKED_AS_ISSUED, "test crash"))
    supervisor.tell(CertificateFinished(finished, State.DELIVERED))
    assert finished not in await asyncio.to_thread(crash_keys)
    # Crashes of many certificates at once (each restart then finds no such row).
    keys = [CertificateKey(REGISTRY, str(uuid.uuid4())) for _ in range(MAX_TRACKED_CRASHES + 200)]
    for key in keys:
        supervisor.tell(CertificateCrashed(key, State.STORED, "test crash"))
    assert len(await asyncio.to_thread(crash_keys)) <= MAX_TRACKED_CRASHES
    async with asyncio.timeout(30):
        while await asyncio.to_thread(crash_keys):  # noqa: ASYNC110 (state of an actor)
            await asyncio.sleep(0.1)
