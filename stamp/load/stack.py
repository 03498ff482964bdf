"""A local stack for the load test: PostgreSQL (embedded, or a fresh database on the
server a DSN names), the simulators in a child process, and N Stamp processes
(``stamp serve``) on that one database, all on loopback. Each part runs in its own
process so that CPU and memory are measured per part, and Stamp runs exactly as in
production.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from stamp.crypto.issuer_keys import IssuerKey
from stamp.db.embedded import EmbeddedPostgres
from stamp.load.database import fresh_database
from stamp.load.driver import GRID_AREA, REGISTRY

READY_TIMEOUT_SECONDS = 180.0


@dataclass(frozen=True, slots=True)
class StackOptions:
    instances: int = 1
    database_url: str | None = None
    commit_delay: float = 0.2
    proof_sample: int = 1
    stamp_env: Mapping[str, str] = field(default_factory=dict)
    work_dir: Path | None = None  # kept when given; a temporary one is removed
    postgres_pid: int | None = None  # the given server's postmaster, for its CPU time


@dataclass
class LocalStack:
    work_dir: Path
    dsn: str
    targets: list[str]
    wallet_url: str
    registry_address: str
    stamp_pids: list[int]
    simulators_pid: int
    postgres_pid: int | None  # the postmaster, when known (embedded, or given)
    _simulators: asyncio.subprocess.Process
    _stamps: list[asyncio.subprocess.Process]

    async def stop_stamps(self) -> None:
        """Stop the Stamp processes gracefully (SIGTERM), before the rest of the stack."""
        await asyncio.gather(*(_terminate(p, 40) for p in self._stamps))

    async def registry_report(self) -> dict[str, Any]:
        """The registry simulator's statistics (what it verified, committed, failed)."""
        assert self._simulators.stdin is not None and self._simulators.stdout is not None
        self._simulators.stdin.write(b"report\n")
        await self._simulators.stdin.drain()
        line = await asyncio.wait_for(self._simulators.stdout.readline(), 30)
        report: dict[str, Any] = orjson.loads(line)
        return report


def _python_module(module: str) -> tuple[str, ...]:
    """``python -m module`` of this very installation. ``-P``: ``-m`` would put the
    working directory first on the path, and a load test started inside another
    checkout would then measure that checkout's Stamp and simulators."""
    return (sys.executable, "-P", "-m", module)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def local_stack(options: StackOptions) -> AsyncIterator[LocalStack]:
    keep = options.work_dir is not None
    work_dir = options.work_dir or Path(tempfile.mkdtemp(prefix="stamp-loadtest-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    embedded: EmbeddedPostgres | None = None
    simulators: asyncio.subprocess.Process | None = None
    stamps: list[asyncio.subprocess.Process] = []
    databases = contextlib.AsyncExitStack()
    try:
        if options.database_url is None:
            embedded = EmbeddedPostgres(work_dir / "pg")
            dsn = await asyncio.to_thread(embedded.start)
        else:
            # Never the given database itself: the invariant check and the commit
            # count must see this run's rows only, and a run leaves nothing behind.
            dsn = await databases.enter_async_context(fresh_database(options.database_url, "stamp_loadtest"))
        issuer = IssuerKey.generate()
        key_path = work_dir / f"{GRID_AREA}.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(issuer.private_pem())
        simulators, registry_address, wallet_url = await _start_simulators(options, issuer, work_dir)
        targets: list[str] = []
        for index in range(max(1, options.instances)):
            # One at a time: the first applies the migrations, the others find them done.
            port = free_port()
            env = {
                **os.environ,
                "STAMP_DATABASE_URL": dsn,
                "STAMP_AUTO_MIGRATE": "true",
                "STAMP_HOST": "127.0.0.1",
                "STAMP_PORT": str(port),
                "STAMP_DATA_DIR": str(work_dir / f"stamp-{index}"),
                "STAMP_INSTANCE_ID": f"loadtest-{index}",
                "STAMP_REGISTRIES": f"{REGISTRY}={registry_address}",
                "STAMP_ISSUER_KEYS": f"{GRID_AREA}={key_path}",
                "STAMP_LOG_LEVEL": "warning",
                **options.stamp_env,
            }
            log = (work_dir / f"stamp-{index}.log").open("ab")
            process = await asyncio.create_subprocess_exec(
                *_python_module("stamp.cli"), "serve", env=env, stdout=log, stderr=log
            )
            log.close()
            stamps.append(process)
            base = f"http://127.0.0.1:{port}"
            await _wait_ready(base, process, work_dir / f"stamp-{index}.log")
            targets.append(base)
        yield LocalStack(
            work_dir=work_dir,
            dsn=dsn,
            targets=targets,
            wallet_url=wallet_url,
            registry_address=registry_address,
            stamp_pids=[p.pid for p in stamps],
            simulators_pid=simulators.pid,
            postgres_pid=embedded.pid if embedded is not None else options.postgres_pid,
            _simulators=simulators,
            _stamps=stamps,
        )
    finally:
        await asyncio.gather(*(_terminate(p, 40) for p in stamps))
        if simulators is not None:
            if simulators.stdin is not None:
                simulators.stdin.close()
            await _terminate(simulators, 10)
        await databases.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)


async def _start_simulators(
    options: StackOptions, issuer: IssuerKey, work_dir: Path
) -> tuple[asyncio.subprocess.Process, str, str]:
    log = (work_dir / "simulators.log").open("ab")
    process = await asyncio.create_subprocess_exec(
        *_python_module("stamp.load.simulators"),
        "--issuer-public-pem-b64",
        issuer.public_pem_base64(),
        "--commit-delay",
        str(options.commit_delay),
        "--proof-sample",
        str(options.proof_sample),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    log.close()
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_SECONDS)
        started = orjson.loads(line)
    except (TimeoutError, orjson.JSONDecodeError) as exc:
        await _terminate(process, 5)
        raise RuntimeError(f"the simulators did not start; see {work_dir / 'simulators.log'}") from exc
    return process, started["registry"], started["wallet"]


async def _wait_ready(base: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_SECONDS
    async with aiohttp.ClientSession() as http:
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"stamp exited with {process.returncode}; see {log_path}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{base}/health/ready") as response:
                    if response.status == 200:
                        return
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"stamp not ready after {READY_TIMEOUT_SECONDS:g} s; see {log_path}")
            await asyncio.sleep(0.2)


async def _terminate(process: asyncio.subprocess.Process, grace: float) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


# --- measuring processes ---------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of all its children, live and already reaped."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
        return total
    except psutil.Error:
        return 0.0


def own_cpu_seconds(pid: int) -> float:
    """CPU time of the process alone (its threads), without any child."""
    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.Error:
        return 0.0


@dataclass(frozen=True, slots=True)
class ProcessSample:
    rss_bytes: int
    threads: int
    children_rss_bytes: int


class ProcessSampler:
    """``sample_process`` for a process sampled every second: its children (the crypto
    workers, started once) are listed again only every ``refresh`` seconds or when one
    is gone, since listing them scans every process of the machine."""

    def __init__(self, pid: int, refresh: float = 10.0) -> None:
        self._pid = pid
        self._refresh = refresh
        self._process: psutil.Process | None = None
        self._children: list[psutil.Process] = []
        self._listed_at = -math.inf

    def sample(self) -> ProcessSample | None:
        try:
            if self._process is None:
                self._process = psutil.Process(self._pid)
            now = time.monotonic()
            if now - self._listed_at >= self._refresh:
                self._children = self._process.children(recursive=True)
                self._listed_at = now
            with self._process.oneshot():
                rss, threads = self._process.memory_info().rss, self._process.num_threads()
        except psutil.Error:
            return None
        children = 0
        for child in self._children:
            try:
                children += child.memory_info().rss
            except psutil.Error:
                self._listed_at = -math.inf  # one is gone: list them again next time
        return ProcessSample(rss, threads, children)


def sample_process(pid: int) -> ProcessSample | None:
    """Resident memory and threads of a process; children (the crypto workers) apart."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            rss, threads = process.memory_info().rss, process.num_threads()
        children = 0
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                children += child.memory_info().rss
        return ProcessSample(rss, threads, children)
    except psutil.Error:
        return None
