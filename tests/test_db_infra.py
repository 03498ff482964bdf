"""Database infrastructure: migrations, the pool, the constraints of the initial
schema and the embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import asyncpg
import psutil
import pytest

from stamp.db.embedded import DataDirectoryInUse, EmbeddedPostgres
from stamp.db.migrate import (
    MigrationError,
    MigrationFailed,
    SchemaOutdated,
    apply_migrations,
    default_source,
    ensure_current,
    load_migrations,
    schema_status,
)
from stamp.db.pool import DatabaseUnavailable, wait_for_database

REPO = Path(__file__).resolve().parent.parent


# --- migrations -------------------------------------------------------------------


def migrations_folder(tmp_path: Path, extra: dict[str, str]) -> Path:
    """The shipped migrations plus `extra` files, as a separate source."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for migration in load_migrations():
        (folder / f"{migration.version:04d}_{migration.name}.sql").write_text(migration.sql)
    for name, sql in extra.items():
        (folder / name).write_text(sql)
    return folder


SHIPPED = [m.version for m in load_migrations()]
LATEST = SHIPPED[-1]
NEXT = LATEST + 1


async def test_migrations_apply_to_an_empty_database_and_are_recorded(empty_database_dsn: str) -> None:
    conn = await asyncpg.connect(empty_database_dsn)
    try:
        assert await apply_migrations(conn) == SHIPPED
        rows = await conn.fetch("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == SHIPPED
        assert (rows[0]["version"], rows[0]["name"]) == (1, "initial")
        assert rows[0]["applied_at"] is not None
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {"recipients", "certificates", "certificate_events", "schema_migrations"} <= tables
    finally:
        await conn.close()


async def test_applying_migrations_twice_applies_nothing_the_second_time(empty_database_dsn: str) -> None:
    conn = await asyncpg.connect(empty_database_dsn)
    try:
        await apply_migrations(conn)
        assert await apply_migrations(conn) == []
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(SHIPPED)
    finally:
        await conn.close()


async def test_an_empty_database_is_outdated_and_the_error_tells_to_run_stamp_migrate(
    empty_database_dsn: str,
) -> None:
    conn = await asyncpg.connect(empty_database_dsn)
    try:
        status = await schema_status(conn)
        assert (status.current, status.latest, status.pending) == (0, LATEST, SHIPPED)
        with pytest.raises(SchemaOutdated) as raised:
            await ensure_current(conn)
        assert "stamp migrate" in str(raised.value)
        assert raised.value.status == status
        await apply_migrations(conn)
        assert await ensure_current(conn) == (await schema_status(conn))
        assert (await schema_status(conn)).pending == []
    finally:
        await conn.close()


async def test_a_database_missing_a_newer_migration_is_outdated_until_it_is_applied(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    newer = migrations_folder(
        tmp_path, {f"{NEXT:04d}_add_notes.sql": "CREATE TABLE notes (id int PRIMARY KEY);"}
    )
    conn = await asyncpg.connect(empty_database_dsn)
    try:
        await apply_migrations(conn)  # the shipped subset only
        status = await schema_status(conn, newer)
        assert (status.current, status.latest, status.pending) == (LATEST, NEXT, [NEXT])
        with pytest.raises(SchemaOutdated, match=f"{NEXT:04d}"):
            await ensure_current(conn, newer)
        assert await apply_migrations(conn, newer) == [NEXT]
        assert (await ensure_current(conn, newer)).current == NEXT
        assert await conn.fetchval("SELECT to_regclass('notes') IS NOT NULL")
    finally:
        await conn.close()


async def test_a_failing_migration_is_rolled_back_and_stays_pending(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    broken = migrations_folder(
        tmp_path,
        {f"{NEXT:04d}_broken.sql": "CREATE TABLE half_done (id int);\nSELECT no_such_column FROM half_done;"},
    )
    conn = await asyncpg.connect(empty_database_dsn)
    try:
        with pytest.raises(MigrationFailed, match=rf"{NEXT:04d} \(broken\).*no_such_column") as failed:
            await apply_migrations(conn, broken)
        assert isinstance(failed.value.error, asyncpg.UndefinedColumnError)
        # The shipped ones ran each in its own transaction and stay; nothing of the broken one does.
        assert (await schema_status(conn, broken)).pending == [NEXT]
        assert await conn.fetchval("SELECT to_regclass('half_done') IS NULL")
    finally:
        await conn.close()


async def test_concurrent_migrators_apply_each_migration_exactly_once(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    # The sleep keeps the first migrator inside its transaction while the others
    # arrive: without the advisory lock they would run the same files.
    folder = migrations_folder(
        tmp_path,
        {
            f"{NEXT:04d}_slow.sql": "SELECT pg_sleep(0.2); CREATE TABLE slow (id int);",
            f"{NEXT + 1:04d}_counter.sql": "CREATE TABLE counter (n int); INSERT INTO counter VALUES (1);",
        },
    )
    conns = [await asyncpg.connect(empty_database_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(c, folder) for c in conns))
        applied = sorted(v for result in results for v in result)
        assert applied == [*SHIPPED, NEXT, NEXT + 1]
        assert await conns[0].fetchval("SELECT count(*) FROM counter") == 1
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == len(SHIPPED) + 2
    finally:
        for c in conns:
            await c.close()


def test_migration_files_must_be_numbered_and_unique(tmp_path: Path) -> None:
    misnamed = tmp_path / "misnamed"
    misnamed.mkdir()
    (misnamed / "1_initial.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"1_initial\.sql"):
        load_migrations(misnamed)

    duplicated = tmp_path / "duplicated"
    duplicated.mkdir()
    (duplicated / "0001_a.sql").write_text("SELECT 1;")
    (duplicated / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="0001"):
        load_migrations(duplicated)


def test_shipped_migrations_are_found_as_package_resources() -> None:
    names = sorted(entry.name for entry in default_source().iterdir() if entry.name.endswith(".sql"))
    assert names[0] == "0001_initial.sql"
    assert [m.version for m in load_migrations()] == list(range(1, len(names) + 1))


async def test_the_session_database_is_current(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        status = await ensure_current(conn)
    assert status.current == status.latest >= 1


# --- constraints of the initial schema --------------------------------------------


async def add_recipient(conn: asyncpg.Pool) -> uuid.UUID:
    recipient = uuid.uuid4()
    await conn.execute(
        "INSERT INTO recipients (id, wallet_endpoint_version, wallet_endpoint_url, wallet_public_key) "
        "VALUES ($1, 1, 'http://wallet.example/v1', $2)",
        recipient,
        bytes(74),
    )
    return recipient


async def add_certificate(
    conn: asyncpg.Pool,
    recipient: uuid.UUID,
    *,
    registry: str = "narnia",
    certificate_id: uuid.UUID | None = None,
    metering_point: str = "571234567890123456",
    start: int = 1_700_000_000,
    position: int | None = None,
    state: str = "stored",
    transaction: bytes | None = None,
) -> uuid.UUID:
    certificate_id = certificate_id or uuid.uuid4()
    await conn.execute(
        "INSERT INTO certificates (registry_name, id, recipient_id, metering_point_id, certificate_type, "
        "quantity, period_start, period_end, grid_area, clear_attributes, request_digest, state, position, "
        "transaction) VALUES ($1, $2, $3, $4, 1, 1000, $5, $6, 'DK1', $7, $8, $9, $10, $11)",
        registry,
        certificate_id,
        recipient,
        metering_point,
        start,
        start + 3600,
        [["fuelCode", "F01040100"]],
        bytes(32),
        state,
        position,
        transaction,
    )
    return certificate_id


async def test_a_recipient_position_is_used_by_one_certificate_only(clean_db: asyncpg.Pool) -> None:
    recipient = await add_recipient(clean_db)
    await add_certificate(clean_db, recipient, start=0, position=1)
    # Not yet allocated: any number of certificates may wait without a position.
    await add_certificate(clean_db, recipient, start=3600)
    await add_certificate(clean_db, recipient, start=7200)
    with pytest.raises(asyncpg.UniqueViolationError, match="certificates_recipient_position_key"):
        await add_certificate(clean_db, recipient, start=10800, position=1)
    other = await add_recipient(clean_db)
    await add_certificate(clean_db, other, start=0, metering_point="other", position=1)


async def test_a_metering_point_period_is_certified_once(clean_db: asyncpg.Pool) -> None:
    recipient = await add_recipient(clean_db)
    await add_certificate(clean_db, recipient, start=0)
    await add_certificate(clean_db, recipient, start=3600)
    with pytest.raises(asyncpg.ExclusionViolationError, match="certificates_metering_period_excl"):
        await add_certificate(clean_db, recipient, start=0, registry="another-registry")
    with pytest.raises(asyncpg.ExclusionViolationError, match="certificates_metering_period_excl"):
        await add_certificate(clean_db, recipient, start=1800)


async def test_the_period_exclusion_compares_metering_points_not_only_their_hashes(
    clean_db: asyncpg.Pool,
) -> None:
    # Migration 0009 leads the GiST index with a 64-bit hash of the metering point, for
    # speed; the metering point itself must stay in the constraint, or two metering
    # points whose hashes collide would refuse each other's periods.
    columns = await clean_db.fetchval(
        "SELECT array_agg(pg_get_indexdef(i.indexrelid, k, true) ORDER BY k) "
        "FROM pg_index i, generate_series(1, i.indnkeyatts) k "
        "WHERE i.indexrelid = 'certificates_metering_period_excl'::regclass"
    )
    assert columns == [
        "hashtextextended(metering_point_id, 0::bigint)",
        "metering_point_id",
        "int8range(period_start, period_end, '[)'::text)",
    ]


async def test_a_certificate_is_keyed_by_registry_and_id(clean_db: asyncpg.Pool) -> None:
    recipient = await add_recipient(clean_db)
    certificate_id = await add_certificate(clean_db, recipient, start=0)
    await add_certificate(clean_db, recipient, certificate_id=certificate_id, registry="other", start=3600)
    with pytest.raises(asyncpg.UniqueViolationError, match="certificates_pkey"):
        await add_certificate(clean_db, recipient, certificate_id=certificate_id, start=7200)


async def test_the_state_must_be_a_known_state_and_sent_states_need_a_transaction(
    clean_db: asyncpg.Pool,
) -> None:
    recipient = await add_recipient(clean_db)
    with pytest.raises(asyncpg.CheckViolationError):
        await add_certificate(clean_db, recipient, state="lost")
    with pytest.raises(asyncpg.CheckViolationError):
        await add_certificate(clean_db, recipient, state="sent_to_registry")
    await add_certificate(clean_db, recipient, state="sent_to_registry", transaction=b"signed")


async def test_clean_db_empties_the_tables_before_each_test(clean_db: asyncpg.Pool) -> None:
    # Earlier tests in this module left rows; this one must not see them.
    assert await clean_db.fetchval("SELECT count(*) FROM recipients") == 0
    assert await clean_db.fetchval("SELECT count(*) FROM certificates") == 0
    assert await clean_db.fetchval("SELECT count(*) FROM schema_migrations") >= 1


# --- pool ----------------------------------------------------------------------------


async def test_pool_reads_and_writes_json_as_python_values(clean_db: asyncpg.Pool) -> None:
    recipient = await add_recipient(clean_db)
    await add_certificate(clean_db, recipient)
    assert await clean_db.fetchval("SELECT clear_attributes FROM certificates") == [["fuelCode", "F01040100"]]
    value = {"reason": "wallet said 400", "attempt": 3, "nested": [1, None, "ü"]}
    assert await clean_db.fetchval("SELECT $1::jsonb", value) == value
    assert await clean_db.fetchval("SELECT $1::json", value) == value
    # Stored as a JSON object, not as a JSON string holding the text.
    assert await clean_db.fetchval("SELECT jsonb_typeof($1::jsonb)", value) == "object"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_wait_for_database_gives_up_after_its_timeout_without_revealing_the_password() -> None:
    dsn = f"postgresql://stamp:hunter2@127.0.0.1:{free_port()}/stamp"
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as raised:
        await wait_for_database(dsn, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert "hunter2" not in str(raised.value)
    assert "127.0.0.1" in str(raised.value)


async def test_wait_for_database_fails_at_once_for_a_database_that_does_not_exist(pg_server_dsn: str) -> None:
    from stamp.load.database import database_dsn as dsn_for_database

    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        await wait_for_database(dsn_for_database(pg_server_dsn, "stamp_no_such_database"), timeout=30)
    assert time.monotonic() - started < 5


# --- embedded PostgreSQL --------------------------------------------------------------


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # A short path: the server's Unix socket goes into the data directory.
    parent = Path(tempfile.mkdtemp(prefix="stamp-test-"))
    try:
        yield parent / "pg"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def servers() -> Iterator[list[EmbeddedPostgres]]:
    """Every server a test starts is stopped, whatever the test's outcome."""
    started: list[EmbeddedPostgres] = []
    yield started
    for server in started:
        server.stop()


async def start(servers: list[EmbeddedPostgres], data_dir: Path) -> EmbeddedPostgres:
    server = EmbeddedPostgres(data_dir)
    servers.append(server)
    await asyncio.to_thread(server.start)
    return server


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.02)


async def test_embedded_server_starts_serves_stamp_and_keeps_data_across_restarts(
    data_dir: Path, servers: list[EmbeddedPostgres]
) -> None:
    server = await start(servers, data_dir)
    conn = await asyncpg.connect(server.dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == "stamp"
        # Only the Unix socket in the private data directory: no TCP port to race
        # for, nothing another local user can reach.
        assert await conn.fetchval("SHOW listen_addresses") == ""
        assert await conn.fetchval("SELECT current_setting('server_version_num')::int") >= 140000
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('across restarts')")
    finally:
        await conn.close()
    pid = server.pid
    await asyncio.to_thread(server.stop)
    assert not server.running
    assert not psutil.pid_exists(pid)

    await asyncio.to_thread(server.start)
    conn = await asyncpg.connect(server.dsn)
    try:
        assert await conn.fetchval("SELECT v FROM kept") == "across restarts"
    finally:
        await conn.close()


async def test_embedded_server_never_runs_as_root(data_dir: Path, servers: list[EmbeddedPostgres]) -> None:
    server = await start(servers, data_dir)
    server_uid = psutil.Process(server.pid).uids().effective
    assert server_uid != 0
    if os.geteuid() != 0:
        assert server_uid == os.geteuid()
    owner = await asyncio.to_thread(data_dir.stat)
    assert owner.st_uid == server_uid
    assert owner.st_mode & 0o077 == 0


async def test_a_second_server_on_the_same_data_dir_is_refused(
    data_dir: Path, servers: list[EmbeddedPostgres]
) -> None:
    first = await start(servers, data_dir)
    with pytest.raises(DataDirectoryInUse, match=str(data_dir)) as raised:
        await start(servers, data_dir)
    assert str(os.getpid()) in str(raised.value)
    conn = await asyncpg.connect(first.dsn)  # the first one is untouched
    await conn.close()
    await asyncio.to_thread(first.stop)
    second = await start(servers, data_dir)
    assert second.running


async def test_embedded_server_starts_after_its_postmaster_was_killed(
    data_dir: Path, servers: list[EmbeddedPostgres]
) -> None:
    server = await start(servers, data_dir)
    conn = await asyncpg.connect(server.dsn)
    await conn.execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('committed')")
    await conn.close()
    os.kill(server.pid, signal.SIGKILL)
    await asyncio.to_thread(server.stop)
    assert (data_dir / "postmaster.pid").exists()  # stale, and its children may linger

    restarted = await start(servers, data_dir)
    conn = await asyncpg.connect(restarted.dsn)
    try:
        assert await conn.fetchval("SELECT v FROM t") == "committed"
    finally:
        await conn.close()


KILLED_STAMP = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path

    import asyncpg

    from stamp.db.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(Path(sys.argv[1]))
    dsn = server.start()

    async def write() -> None:
        conn = await asyncpg.connect(dsn)
        await conn.execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('before the kill')")
        await conn.close()

    asyncio.run(write())
    print(server.pid, flush=True)
    time.sleep(600)
    """
)


def run_killed_stamp(data_dir: Path) -> int:
    """Runs a Stamp-like process that starts the server, writes, and is SIGKILLed;
    returns the PID of the server it left behind."""
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_STAMP, str(data_dir)], stdout=subprocess.PIPE, cwd=REPO, text=True
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the server's PID, after any log lines
            if line.strip().isdigit():
                return int(line)
        raise AssertionError("the child exited without starting the server")
    finally:
        process.kill()
        process.wait()


async def test_embedded_server_starts_after_the_stamp_process_was_killed(
    data_dir: Path, servers: list[EmbeddedPostgres]
) -> None:
    orphan = await asyncio.to_thread(run_killed_stamp, data_dir)
    assert psutil.pid_exists(orphan)  # the server outlives a SIGKILLed Stamp

    server = await start(servers, data_dir)
    wait_gone(orphan)
    assert server.pid != orphan
    conn = await asyncpg.connect(server.dsn)
    try:
        assert await conn.fetchval("SELECT v FROM t") == "before the kill"
    finally:
        await conn.close()


async def test_embedded_server_starts_when_both_stamp_and_server_were_killed(
    data_dir: Path, servers: list[EmbeddedPostgres]
) -> None:
    orphan = await asyncio.to_thread(run_killed_stamp, data_dir)
    os.kill(orphan, signal.SIGKILL)
    await asyncio.to_thread(wait_gone, orphan)

    server = await start(servers, data_dir)
    conn = await asyncpg.connect(server.dsn)
    try:
        assert await conn.fetchval("SELECT v FROM t") == "before the kill"
    finally:
        await conn.close()


async def test_embedded_server_starts_when_its_stale_pid_now_belongs_to_another_process(
    data_dir: Path, servers: list[EmbeddedPostgres]
) -> None:
    # After a reboot or a container restart the PID in postmaster.pid may be taken
    # by an unrelated process; PostgreSQL alone would refuse to start.
    server = await start(servers, data_dir)
    os.kill(server.pid, signal.SIGKILL)
    await asyncio.to_thread(server.stop)
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = data_dir / "postmaster.pid"
        lines = pid_file.read_text().splitlines(keepends=True)
        pid_file.write_text(f"{unrelated.pid}\n" + "".join(lines[1:]))

        restarted = await start(servers, data_dir)
        conn = await asyncpg.connect(restarted.dsn)
        await conn.close()
        assert unrelated.poll() is None  # left alone
    finally:
        unrelated.kill()
        unrelated.wait()


async def test_wait_for_database_waits_for_a_server_that_starts_later(
    data_dir: Path, servers: list[EmbeddedPostgres]
) -> None:
    # The DSN of an embedded server is known before it runs: its socket directory.
    # It waits on the maintenance database, which exists as soon as the server
    # accepts connections ("stamp" is created a moment later, and a missing database
    # fails at once by design: see the test above).
    dsn = f"postgresql://postgres@/postgres?host={data_dir}&port=5432"
    waiting = asyncio.create_task(wait_for_database(dsn, timeout=30))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    server = await start(servers, data_dir)
    assert server.dsn == dsn.replace("/postgres?", "/stamp?")
    await asyncio.wait_for(waiting, 10)


def start_as(uid: int, gid: int, data_dir: Path, report: Connection) -> None:
    """In a forked child: become an ordinary user, then run the server as Stamp would."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    with EmbeddedPostgres(data_dir) as server:
        report.send((os.geteuid(), psutil.Process(server.pid).uids().effective, server.dsn))


@pytest.mark.skipif(os.geteuid() != 0, reason="as a normal user, every other embedded test runs this path")
async def test_embedded_server_runs_for_a_normal_user_too(pg_server_dsn: str) -> None:
    # Forked, not spawned: the interpreter may sit where the user cannot reach it
    # (a 0700 /root), and the code under test is already loaded.
    nobody = pwd.getpwnam("nobody")
    home = Path(tempfile.mkdtemp(prefix="stamp-user-"))
    try:
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        receiver, sender = multiprocessing.get_context("fork").Pipe(duplex=False)
        child = multiprocessing.get_context("fork").Process(
            target=start_as, args=(nobody.pw_uid, nobody.pw_gid, home / "pg", sender)
        )
        child.start()
        child_uid, server_uid, dsn = await asyncio.to_thread(receiver.recv)
        await asyncio.to_thread(child.join, 60)
        assert child.exitcode == 0
        assert child_uid == server_uid == nobody.pw_uid
        assert (home / "pg").stat().st_uid == nobody.pw_uid
        assert dsn.startswith("postgresql://postgres@/stamp?host=")
    finally:
        shutil.rmtree(home, ignore_errors=True)
