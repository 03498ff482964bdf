"""`stamp migrate` and `stamp serve` as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.process import free_port


def run_stamp(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stamp.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_serve_refuses_an_outdated_schema_and_migrate_brings_it_current(empty_database_dsn: str) -> None:
    env = {
        "STAMP_DATABASE_URL": empty_database_dsn,
        "STAMP_REGISTRIES": "Narnia=127.0.0.1:1",
        "STAMP_PORT": str(free_port()),
        "STAMP_AUTO_MIGRATE": "false",
        "STAMP_CRYPTO_WORKERS": "1",
    }
    refused = run_stamp("serve", env=env)
    assert refused.returncode == 1
    assert "stamp migrate" in refused.stderr
    migrated = run_stamp("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "applied now: [1" in migrated.stdout
    again = run_stamp("migrate", env=env)
    assert "applied now: none" in again.stdout


def test_serve_without_registries_exits_with_a_clear_message() -> None:
    result = run_stamp(
        "serve", env={"STAMP_REGISTRIES": "", "STAMP_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"}
    )
    assert result.returncode == 2
    assert "STAMP_REGISTRIES" in result.stderr


def test_invalid_configuration_lists_every_problem_and_exits_non_zero() -> None:
    result = run_stamp(
        "serve",
        env={"STAMP_PORT": "http", "STAMP_MAX_IN_FLIGHT": "-3", "STAMP_REGISTRIES": "Narnia=nohostport"},
    )
    assert result.returncode == 2
    for name in ("STAMP_PORT", "STAMP_MAX_IN_FLIGHT", "STAMP_REGISTRIES"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_against_an_unreachable_database_fails_cleanly() -> None:
    result = run_stamp(
        "migrate", env={"STAMP_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}, timeout=90
    )
    assert result.returncode == 1
    assert "cannot migrate" in result.stderr and "Traceback" not in result.stderr
