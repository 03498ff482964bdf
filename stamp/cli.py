"""The ``stamp`` command: serve, migrate, demo, devstack, check-config, and the operator
commands (keys, tokens, recipients, certificates: ``stamp.operator_cli``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import orjson

from stamp import event_loop, tracing
from stamp.config import ConfigError, Settings, load_settings
from stamp.crypto import backend as crypto_backend
from stamp.terminal import printable


def _startup_errors() -> tuple[type[BaseException], ...]:
    """Expected start-up failures: a clear message, not a traceback. (Evaluated only
    when an exception is raised, so the imports cost nothing otherwise.)"""
    from stamp.db.embedded import EmbeddedPostgresError
    from stamp.db.migrate import MigrationError, MigrationFailed, SchemaOutdated
    from stamp.db.pool import DatabaseUnavailable

    return (SchemaOutdated, MigrationError, MigrationFailed, DatabaseUnavailable, EmbeddedPostgresError)


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"stamp: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def _tracing_or_exit() -> tracing.TracingConfig:
    try:
        return tracing.TracingConfig.from_env()
    except tracing.TracingConfigError as exc:
        print(f"stamp: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def cmd_serve(args: argparse.Namespace) -> int:
    from stamp.logging import configure_logging
    from stamp.server import serve

    settings = _settings_or_exit()
    traces = _tracing_or_exit()
    configure_logging(settings.log_format, settings.log_level)
    if not settings.registries:
        print(
            "stamp: STAMP_REGISTRIES is empty: configure at least one registry (NAME=host:port)",
            file=sys.stderr,
        )
        return 2
    # Before the app, its clients and channels exist: the instrumentations patch them.
    tracing.configure(traces, settings.instance_id)
    try:
        return event_loop.run(serve(settings), settings.event_loop)
    except _startup_errors() as exc:
        print(f"stamp: cannot start: {printable(str(exc), keep_newlines=True)}", file=sys.stderr)
        return 1
    finally:
        tracing.shutdown()  # what is still buffered is exported


def cmd_migrate(args: argparse.Namespace) -> int:
    from stamp.db.embedded import EmbeddedPostgres
    from stamp.db.migrate import apply_migrations, schema_status
    from stamp.db.pool import wait_for_database

    settings = _settings_or_exit()

    async def run(dsn: str) -> list[int]:
        import asyncpg

        await wait_for_database(dsn, timeout=30)
        conn = await asyncpg.connect(dsn)
        try:
            applied = await apply_migrations(conn)
            status = await schema_status(conn)
        finally:
            await conn.close()
        print(
            f"schema at version {status.current} (latest {status.latest}); applied now: {applied or 'none'}"
        )
        return applied

    try:
        if settings.database_url is not None:
            asyncio.run(run(settings.database_url))
            return 0
        embedded = EmbeddedPostgres(settings.data_dir / "pg")
        dsn = embedded.start()
        try:
            asyncio.run(run(dsn))
        finally:
            embedded.stop()
    except _startup_errors() as exc:
        # A migration's report may quote stored data (metering point ids).
        print(f"stamp: cannot migrate: {printable(str(exc), keep_newlines=True)}", file=sys.stderr)
        return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"stamp: {exc}", file=sys.stderr)
        return 2
    try:
        traces = tracing.TracingConfig.from_env()
    except tracing.TracingConfigError as exc:
        print(f"stamp: {exc}", file=sys.stderr)
        return 2
    shown = settings.masked()
    shown["tracing"] = traces.describe()
    selection = crypto_backend.select(settings.crypto_backend)
    shown["crypto_backend_in_use"] = selection.group.name
    if selection.fallback_reason:
        shown["crypto_backend_fallback_reason"] = selection.fallback_reason
    shown["event_loop_in_use"] = event_loop.resolve(settings.event_loop)
    print(orjson.dumps(shown, option=orjson.OPT_INDENT_2, default=str).decode())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stamp.demo import run_demo

    return asyncio.run(run_demo(args))


def cmd_loadtest(args: argparse.Namespace) -> int:
    from stamp.load.run import cmd_loadtest as run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stamp",
        description="Stamp issues granular certificates into a Project Origin registry and delivers them "
        "to the recipients' wallets. Configuration comes from STAMP_* environment variables "
        "(see `stamp check-config` and docs/configuration.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the Stamp service (HTTP API and issuance pipeline)")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply the database schema migrations and exit")
    migrate.set_defaults(func=cmd_migrate)

    check = sub.add_parser("check-config", help="validate the configuration and print it, secrets masked")
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser(
        "demo",
        help="run a full local stack (embedded PostgreSQL, registry and wallet simulators, Stamp) "
        "and issue certificates through it",
    )
    demo.add_argument(
        "-n", "--certificates", type=int, default=300, help="certificates to issue (default 300)"
    )
    demo.add_argument(
        "-r", "--recipients", type=int, default=1, help="recipients to spread them over (default 1)"
    )
    demo.add_argument("--commit-delay", type=float, default=0.2, help="registry simulator commit delay in s")
    demo.add_argument("--data-dir", help="keep the embedded database here (default: a temporary folder)")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.set_defaults(func=cmd_demo)

    loadtest = sub.add_parser(
        "loadtest",
        help="drive Stamp with certificates (local stack or --target) and report throughput, latencies, "
        "resources and the invariant check",
        description="Drive Stamp with certificates and measure it: a local stack (PostgreSQL, simulators, "
        "Stamp processes) or a running Stamp (--target) with `stamp devstack`'s wallet (--wallet). "
        "Exit code 1 when the invariant check fails.",
    )
    from stamp.load.run import add_arguments as add_loadtest_arguments

    add_loadtest_arguments(loadtest)
    loadtest.set_defaults(func=cmd_loadtest)

    sub.add_parser(
        "devstack", help="run the registry and wallet simulators standalone (see `stamp devstack --help`)"
    )

    from stamp import operator_cli

    operator_cli.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's fork handlers only print warnings here: Stamp never forks a process that
    # uses gRPC (the crypto pool is spawned), it only starts PostgreSQL's binaries.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["devstack"]:
        # The simulators' CLI owns every option after the word (argparse's REMAINDER
        # would not pass on options such as --help).
        from stamp.devstack.cli import main as devstack_main

        return devstack_main(argv[1:], prog="stamp devstack")
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
