"""Operator commands of ``stamp`` (docs/cli.md): issuer keys, API tokens, recipients
and certificates.

The recipient and certificate commands work directly on the configured Stamp's
database (``STAMP_DATABASE_URL``, else the embedded one under ``STAMP_DATA_DIR``)
through the same queries as the HTTP API, and parse their input with the API's own
request parsing, so what the CLI accepts and answers is what the API would. A
running Stamp notices their changes by itself: a retried certificate is a row nobody
drives, and its supervisor claims such rows every second.

Expected failures (an unknown id, an unreachable database, invalid input) end with a
message on stderr and a documented exit code, never with a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import getpass
import json
import logging
import os
import re
import secrets
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

import asyncpg
import orjson
import structlog

from stamp.api.problems import ValidationProblem
from stamp.api.requests import (
    parse_limit,
    parse_new_recipient,
    parse_recipient_patch,
    parse_since,
    parse_state_filter,
    parse_uuid,
)
from stamp.api.views import certificate_detail, certificate_summary, decode_cursor, encode_cursor, rfc3339
from stamp.config import ConfigError, Settings, load_settings
from stamp.credentials import TOKEN_DIGEST_PREFIX, CredentialsError, parse_token_spec, token_digest
from stamp.crypto.issuer_keys import IssuerKey
from stamp.db import queries
from stamp.db.embedded import DataDirectoryInUse, EmbeddedPostgres, EmbeddedPostgresError
from stamp.db.migrate import SchemaOutdated, ensure_current
from stamp.db.pool import DatabaseUnavailable, init_connection, mask_dsn, wait_for_database
from stamp.domain import CertificateKey, Recipient, State
from stamp.gateways.endpoint_allow import REFUSED_AT_CREATION, check_endpoint
from stamp.terminal import printable

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
"""The command could not be carried out: database unreachable or in use, I/O error."""
EXIT_INVALID = 2
"""Invalid arguments or configuration (argparse uses 2 for usage errors too)."""
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
"""The thing exists but is not in a state that allows the command (or a file exists)."""

DEFAULT_CONNECT_TIMEOUT = 10.0
GRID_AREA = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# API field paths of a recipient → the CLI options that carry them.
_RECIPIENT_OPTIONS = {
    "walletEndpointReference.version": "--version",
    "walletEndpointReference.endpoint": "--endpoint",
    "walletEndpointReference.publicKey": "--public-key",
}


class CommandError(Exception):
    """An expected failure: printed as ``stamp: <message>`` (and one line per detail)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.details = tuple(details)


Command = Callable[[argparse.Namespace], int]


def guarded(command: Command) -> Command:
    """Turns a CommandError into its message and exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except CommandError as exc:
            _say(f"stamp: {exc}", file=sys.stderr)
            for detail in exc.details:
                _say(f"  - {detail}", file=sys.stderr)
            return exc.exit_code

    return run


def _say(line: str, file: TextIO | None = None) -> None:
    """Prints a line for a human: values from the database or the command line may
    hold control characters (terminal escapes), which are shown escaped."""
    print(printable(line), file=file)


def _print_json(value: Any) -> None:
    # orjson escapes C0 controls; C1 controls and bidi overrides would pass raw.
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    if not text.replace("\n", "").isprintable():
        text = "".join(c if c.isprintable() or c == "\n" else json.dumps(c)[1:-1] for c in text)
    print(text)


def _invalid(problem: ValidationProblem, options: dict[str, str] | None = None) -> CommandError:
    options = options or {}
    details = [f"{options.get(e.field, e.field)}: {e.message}" for e in problem.errors]
    return CommandError("invalid input", EXIT_INVALID, details)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise CommandError("invalid configuration", EXIT_INVALID, exc.problems) from None


# --- logging ----------------------------------------------------------------------------


class _StderrLogger:
    """Writes to whatever ``sys.stderr`` is at the time of the call: stdout is the
    command's output (``--json`` must stay parseable)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr)

    debug = info = warning = warn = error = critical = exception = fatal = msg


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Library log lines (the embedded database starting …) only from warnings up,
    to stderr; the previous configuration is restored afterwards."""
    previous = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=lambda *_: _StderrLogger(),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**previous)


# --- database access --------------------------------------------------------------------


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[tuple[str, bool]]:
    """The DSN of the configured database and whether it is the embedded one (then
    started here, and stopped again when the command is done)."""
    if settings.database_url is not None:
        yield settings.database_url, False
        return
    data_dir = settings.data_dir / "pg"
    if not (data_dir / "PG_VERSION").exists():
        raise CommandError(
            f"no embedded database in {data_dir} (STAMP_DATA_DIR={settings.data_dir}): has Stamp run "
            "with this data directory? For an external database set STAMP_DATABASE_URL"
        )
    embedded = EmbeddedPostgres(data_dir)
    try:
        dsn = embedded.start()
    except DataDirectoryInUse:
        raise CommandError(
            f"the embedded database in {data_dir} is in use by a running Stamp; it can be opened "
            "by one process at a time. Use that Stamp's HTTP API instead (e.g. "
            f"`curl http://{settings.host}:{settings.port}{settings.path_base}/v1/certificates`), "
            "or stop it and run the command again"
        ) from None
    except EmbeddedPostgresError as exc:
        raise CommandError(f"could not start the embedded database: {exc}") from None
    try:
        yield dsn, True
    finally:
        embedded.stop()


def _on_database(
    args: argparse.Namespace, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> tuple[T, bool]:
    """Runs ``work`` on one connection to the configured database; also whether that
    database is the embedded one (so no Stamp can be running on it now)."""
    settings = _settings()
    with _quiet_logs(), _database(settings) as (dsn, embedded):
        return asyncio.run(_connected(dsn, args.connect_timeout, work)), embedded


async def _connected(
    dsn: str, connect_timeout: float, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    try:
        await wait_for_database(dsn, timeout=connect_timeout)
        conn = await asyncpg.connect(dsn, timeout=max(connect_timeout, 1.0))
    except DatabaseUnavailable as exc:
        raise CommandError(str(exc)) from None
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CommandError(
            f"cannot connect to the database at {mask_dsn(dsn)}: {type(exc).__name__}"
        ) from None
    try:
        await init_connection(conn)
        await ensure_current(conn)
        return await work(conn)
    except SchemaOutdated as exc:
        raise CommandError(str(exc)) from None
    except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as exc:
        raise CommandError(f"lost the database connection: {type(exc).__name__}") from None
    except asyncpg.PostgresError as exc:
        raise CommandError(f"the database refused the command: {type(exc).__name__}: {exc}") from None
    finally:
        await conn.close()


# --- keys -------------------------------------------------------------------------------


def cmd_keys_generate(args: argparse.Namespace) -> int:
    area: str = args.grid_area
    if not GRID_AREA.fullmatch(area):
        raise CommandError(
            "invalid input",
            EXIT_INVALID,
            ["--grid-area: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"],
        )
    path = Path(args.out if args.out else f"{area}.pem").expanduser().absolute()
    if re.search(r"[,;\s]", str(path)):
        raise CommandError(
            "invalid input",
            EXIT_INVALID,
            ["--out: no ',', ';' or whitespace in the path (they separate STAMP_ISSUER_KEYS items)"],
        )
    key = IssuerKey.generate(area)
    pem = key.private_pem()
    _write_secret(path, pem, overwrite=args.force)
    setting = f"STAMP_ISSUER_KEYS={area}={path}"
    if args.json:
        _print_json(
            {
                "gridArea": area,
                "privateKeyFile": str(path),
                "publicKeyPemBase64": key.public_pem_base64(),
                "fingerprint": key.fingerprint,
                "issuerKeysSetting": setting,
            }
        )
        return EXIT_OK
    print(f"Private key of grid area {area} written to {path} (PKCS#8 v1 PEM, mode 0600): keep it secret.")
    print(f"Public key fingerprint: {key.fingerprint}")
    print()
    print(f"Public key for the registry operator (Base64 of the PEM), grid area {area}:")
    print(key.public_pem_base64())
    print()
    print("Stamp configuration (add it to STAMP_ISSUER_KEYS, comma-separated, for several grid areas):")
    print(setting)
    return EXIT_OK


def _write_secret(path: Path, text: str, *, overwrite: bool) -> None:
    """Creates ``path`` with mode 0600 from the first byte on; an existing file only
    with ``overwrite``, replaced atomically (never briefly readable by others, never
    half-written)."""
    if not path.parent.is_dir():
        raise CommandError(f"the directory {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise CommandError(f"{path} exists already; refusing to overwrite a key (use --force)", EXIT_CONFLICT)
    try:
        if not overwrite:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                os.fchmod(file.fileno(), 0o600)  # whatever the umask
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            return
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except FileExistsError:
        raise CommandError(
            f"{path} exists already; refusing to overwrite a key (use --force)", EXIT_CONFLICT
        ) from None
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None


# --- tokens -----------------------------------------------------------------------------


def cmd_tokens_generate(args: argparse.Namespace) -> int:
    token = secrets.token_urlsafe(32)
    digest = f"{TOKEN_DIGEST_PREFIX}{token_digest(token).hex()}"
    if args.json:
        _print_json({"token": token, "digest": digest, "authTokensSetting": f"STAMP_AUTH_TOKENS={digest}"})
        return EXIT_OK
    print("API token (give it to the client; Stamp keeps only its digest, so note it now):")
    print(token)
    print()
    print("Stamp configuration (several tokens comma-separated, e.g. while rotating):")
    print(f"STAMP_AUTH_TOKENS={digest}")
    return EXIT_OK


def cmd_tokens_hash(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        token = getpass.getpass("token (not echoed): ", stream=sys.stderr).strip()
    else:
        token = sys.stdin.readline().strip()
    if token.lower().startswith(TOKEN_DIGEST_PREFIX):
        raise CommandError("invalid input", EXIT_INVALID, ["token: give the token itself, not its digest"])
    try:
        # The rules STAMP_AUTH_TOKENS applies to a plain token, so the digest is usable.
        digest = parse_token_spec(token)
    except CredentialsError as exc:
        raise CommandError("invalid input", EXIT_INVALID, [f"token: {exc}"]) from None
    line = f"{TOKEN_DIGEST_PREFIX}{digest.hex()}"
    if args.json:
        _print_json({"digest": line})
    else:
        print(line)
    return EXIT_OK


# --- recipients ------------------------------------------------------------------------


def _recipient_json(recipient: Recipient) -> dict[str, Any]:
    return {
        "id": recipient.id,
        "walletEndpointReference": {
            "version": recipient.wallet_endpoint_version,
            "endpoint": recipient.wallet_endpoint_url,
            "publicKey": base64.b64encode(recipient.wallet_public_key).decode("ascii"),
        },
    }


def _print_recipient(recipient: Recipient) -> None:
    view = _recipient_json(recipient)["walletEndpointReference"]
    _say(f"Recipient {recipient.id}")
    _say(f"  wallet endpoint  {view['endpoint']} (version {view['version']})")
    _say(f"  public key       {view['publicKey']}")


def cmd_recipients_create(args: argparse.Namespace) -> int:
    body = {
        "walletEndpointReference": {
            "version": args.version,
            "endpoint": args.endpoint,
            "publicKey": args.public_key,
        }
    }
    try:
        new = parse_new_recipient(body)
    except ValidationProblem as problem:
        raise _invalid(problem, _RECIPIENT_OPTIONS) from None
    recipient = Recipient(
        str(uuid.uuid4()), new.wallet_endpoint_version, new.wallet_endpoint_url, new.wallet_public_key
    )

    allow = _settings().wallet_endpoint_allow

    async def work(conn: asyncpg.Connection) -> None:
        # The same rule as POST /v1/recipients: an operator's typo is no exception.
        if not await check_endpoint(allow, recipient.wallet_endpoint_url):
            refused = ValidationProblem.single("walletEndpointReference.endpoint", REFUSED_AT_CREATION)
            raise _invalid(refused, _RECIPIENT_OPTIONS)
        await queries.insert_recipient(conn, recipient)

    _on_database(args, work)
    if args.json:
        _print_json(_recipient_json(recipient))
    else:
        _say("created")
        _print_recipient(recipient)
    return EXIT_OK


def _uuid_argument(value: str, name: str) -> str:
    try:
        return parse_uuid(value, name)
    except ValidationProblem as problem:
        raise _invalid(problem) from None


def cmd_recipients_show(args: argparse.Namespace) -> int:
    recipient_id = _uuid_argument(args.id, "ID")

    async def work(conn: asyncpg.Connection) -> Recipient | None:
        return await queries.get_recipient(conn, recipient_id)

    recipient, _ = _on_database(args, work)
    if recipient is None:
        raise CommandError(f"recipient {recipient_id} not found", EXIT_NOT_FOUND)
    if args.json:
        _print_json(_recipient_json(recipient))
    else:
        _print_recipient(recipient)
    return EXIT_OK


def cmd_recipients_move(args: argparse.Namespace) -> int:
    recipient_id = _uuid_argument(args.id, "ID")
    try:
        patch = parse_recipient_patch({"walletEndpointReference": {"endpoint": args.endpoint}})
    except ValidationProblem as problem:
        raise _invalid(problem, _RECIPIENT_OPTIONS) from None
    allow = _settings().wallet_endpoint_allow

    async def work(conn: asyncpg.Connection) -> Recipient | None:
        # The same rules as PATCH /v1/recipients/{id}.
        if not await check_endpoint(allow, patch.wallet_endpoint_url):
            refused = ValidationProblem.single("walletEndpointReference.endpoint", REFUSED_AT_CREATION)
            raise _invalid(refused, _RECIPIENT_OPTIONS)
        return await queries.move_recipient_endpoint(conn, recipient_id, patch.wallet_endpoint_url)

    recipient, _ = _on_database(args, work)
    if recipient is None:
        raise CommandError(f"recipient {recipient_id} not found", EXIT_NOT_FOUND)
    if args.json:
        _print_json(_recipient_json(recipient))
    else:
        _say("moved; every later delivery attempt goes to the new endpoint")
        _print_recipient(recipient)
    return EXIT_OK


# --- certificates ---------------------------------------------------------------------


def _when(unix_seconds: int) -> str:
    return rfc3339(datetime.fromtimestamp(unix_seconds, UTC))


def _failure_text(failure: dict[str, Any] | None) -> str:
    if not failure:
        return ""
    return f"step {failure['step']}: {failure['reason']} ({failure['attempts']} attempts)"


def _print_certificate(view: dict[str, Any]) -> None:
    _say(f"Certificate {view['registryName']}/{view['id']}")
    rows = [
        ("state", view["state"]),
        ("failure", _failure_text(view["failure"])),
        ("rejection reason", view["rejectionReason"] or ""),
        ("recipient", view["recipientId"]),
        ("metering point", view["meteringPointId"]),
        ("type", view["type"]),
        ("quantity", f"{view['quantity']} Wh"),
        ("period", f"{_when(view['start'])} – {_when(view['end'])}"),
        ("grid area", view["gridArea"]),
        ("position", "" if view["position"] is None else str(view["position"])),
        ("transaction id", view["transactionId"] or ""),
        ("created", view["createdAt"]),
        ("updated", view["updatedAt"]),
    ]
    withdrawal = view.get("withdrawal")
    if withdrawal is not None:
        reason = f" ({withdrawal['reason']})" if withdrawal["reason"] else ""
        rows.append(("withdrawal", f"{withdrawal['state']}{reason} since {withdrawal['withdrawnAt']}"))
    for label, value in rows:
        if value:
            _say(f"  {label:<19}{value}")
    if view["clearTextAttributes"]:
        attributes = ", ".join(f"{k}={v}" for k, v in view["clearTextAttributes"].items())
        _say(f"  {'attributes':<19}{attributes}")
    if view["hashedAttributes"]:
        _say(f"  {'hashed attributes':<19}{', '.join(a['key'] for a in view['hashedAttributes'])}")
    _say("History")
    for event in view["events"]:
        detail = orjson.dumps(event["detail"]).decode() if event["detail"] else ""
        _say(f"  {event['at']}  {event['type']:<28} {event['state']:<19} {detail}".rstrip())


def cmd_certificates_show(args: argparse.Namespace) -> int:
    key = CertificateKey(args.registry, _uuid_argument(args.id, "ID"))

    async def work(conn: asyncpg.Connection) -> dict[str, Any] | None:
        found = await queries.get_view(conn, key)
        return None if found is None else certificate_detail(*found)

    view, _ = _on_database(args, work)
    if view is None:
        raise CommandError(f"certificate {key} not found", EXIT_NOT_FOUND)
    if args.json:
        _print_json(view)
    else:
        _print_certificate(view)
    return EXIT_OK


def cmd_certificates_list(args: argparse.Namespace) -> int:
    try:
        limit = parse_limit(args.limit, default=100, maximum=1000)
        state = parse_state_filter(args.state)
        recipient_id = parse_uuid(args.recipient, "--recipient") if args.recipient else None
    except ValidationProblem as problem:
        raise _invalid(problem, {"limit": "--limit", "state": "--state"}) from None
    after = None
    if args.cursor:
        try:
            after = decode_cursor(args.cursor)
        except ValueError:
            raise CommandError("invalid input", EXIT_INVALID, ["--cursor: not a valid cursor"]) from None

    async def work(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return await queries.list_certificates(
            conn,
            state=state,
            recipient_id=recipient_id,
            metering_point_id=args.metering_point or None,
            after=after,
            limit=limit + 1,
        )

    rows, _ = _on_database(args, work)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1]) if more else None
    result = [certificate_summary(r) for r in page]
    if args.json:
        _print_json(
            {"result": result, "metadata": {"count": len(page), "limit": limit, "nextCursor": next_cursor}}
        )
        return EXIT_OK
    if not result:
        _say("no certificates")
        return EXIT_OK
    _say(f"{'CREATED':<28}{'REGISTRY/ID':<50}{'STATE':<20}{'QUANTITY':>12}  FAILURE")
    for c in result:
        name = f"{c['registryName']}/{c['id']}"
        failure = _failure_text(c["failure"]) or c["rejectionReason"] or ""
        _say(f"{c['createdAt']:<28}{name:<50}{c['state']:<20}{c['quantity']:>12}  {failure}".rstrip())
    if next_cursor:
        _say(f"more: --cursor {next_cursor}")
    return EXIT_OK


def cmd_certificates_retry(args: argparse.Namespace) -> int:
    key = CertificateKey(args.registry, _uuid_argument(args.id, "ID"))

    async def work(conn: asyncpg.Connection) -> queries.RetryOutcome:
        return await queries.retry_failed(conn, key)

    outcome, embedded = _on_database(args, work)
    if not outcome.found:
        raise CommandError(f"certificate {key} not found", EXIT_NOT_FOUND)
    if outcome.state is None:
        raise CommandError(
            f"certificate {key} is {outcome.previous_state}; only a failed certificate can be retried",
            EXIT_CONFLICT,
        )
    if args.json:
        _print_json({"id": key.certificate_id, "registryName": key.registry, "state": outcome.state.value})
        return EXIT_OK
    _say(f"certificate {key} resumes from state {outcome.state.value}")
    if embedded:
        _say("Stamp takes it up when it starts on this data directory.")
    else:
        _say("A running Stamp takes it up within about a second; follow it with `stamp certificates show`.")
    return EXIT_OK


def cmd_certificates_redeliver(args: argparse.Namespace) -> int:
    if (args.recipient is None) == (args.id is None):
        raise CommandError("name one certificate (REGISTRY ID) or --recipient ID", EXIT_INVALID)
    if args.since is not None and args.recipient is None:
        raise CommandError("--since goes with --recipient", EXIT_INVALID)
    key = None if args.id is None else CertificateKey(args.registry, _uuid_argument(args.id, "ID"))
    recipient_id = None if args.recipient is None else _uuid_argument(args.recipient, "--recipient")
    try:
        since = parse_since(args.since)
    except ValidationProblem as problem:
        raise _invalid(problem, {"since": "--since"}) from None

    async def work(conn: asyncpg.Connection) -> list[queries.RedeliveryRequested]:
        # The same rules as POST …/redeliver.
        if key is not None:
            found = await queries.certificate_state(conn, key)
            if found is None:
                raise CommandError(f"certificate {key} not found", EXIT_NOT_FOUND)
            state, withdrawn = found
            if withdrawn or state is not State.DELIVERED:
                why = "withdrawn" if withdrawn else state.value
                raise CommandError(
                    f"certificate {key} is {why}; only a delivered certificate can be re-delivered",
                    EXIT_CONFLICT,
                )
        elif recipient_id is not None and await queries.get_recipient(conn, recipient_id) is None:
            raise CommandError(f"recipient {recipient_id} not found", EXIT_NOT_FOUND)
        return await queries.request_redelivery(
            conn, recipient_id=recipient_id, key=key, delivered_since=since
        )

    outcomes, embedded = _on_database(args, work)
    if args.json:
        _print_json(
            [
                {"id": o.key.certificate_id, "registryName": o.key.registry, "redelivery": o.outcome.value}
                for o in outcomes
            ]
        )
        return EXIT_OK
    for outcome in outcomes:
        _say(f"{outcome.key} {outcome.outcome.value}")
    requested = sum(o.outcome is queries.Redelivery.REQUESTED for o in outcomes)
    _say(f"{requested} of {len(outcomes)} certificates to be delivered again")
    if embedded:
        _say("Stamp delivers them when it starts on this data directory.")
    elif requested:
        _say("A running Stamp delivers them within about a second; follow with `stamp certificates show`.")
    return EXIT_OK


# --- wiring ---------------------------------------------------------------------------


def _parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    command: Command,
    parents: Sequence[argparse.ArgumentParser] = (),
    description: str | None = None,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=description or help, parents=list(parents))
    parser.set_defaults(func=guarded(command))
    return parser


def _group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = sub.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``keys``, ``tokens``, ``recipients`` and ``certificates`` to ``stamp``."""
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for the database (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    on_database = [output, database]
    where = (
        " Works directly on the database of the configured Stamp (STAMP_DATABASE_URL, else the "
        "embedded one under STAMP_DATA_DIR, which must not be in use by a running Stamp)."
    )

    keys = _group(sub, "keys", "manage issuer signing keys")
    generate = _parser(
        keys,
        "generate",
        "generate an Ed25519 issuer key pair for a grid area",
        cmd_keys_generate,
        [output],
        description="Generate an Ed25519 issuer key pair for a grid area: the private key goes to a new "
        "file (PKCS#8 v1 PEM, mode 0600); the public key is printed as Base64 of its PEM, the form "
        "the registry operator configures, with the STAMP_ISSUER_KEYS setting to use.",
    )
    generate.add_argument("--grid-area", required=True, help="the grid area the key signs for, e.g. DK1")
    generate.add_argument("--out", metavar="PATH", help="private key file (default: ./<grid-area>.pem)")
    generate.add_argument("--force", action="store_true", help="overwrite an existing file")

    tokens = _group(sub, "tokens", "manage static API tokens (STAMP_AUTH_TOKENS)")
    _parser(
        tokens,
        "generate",
        "generate a random API token and the digest to configure",
        cmd_tokens_generate,
        [output],
        description="Generate a random API token (256 bits) and print it with its SHA-256 digest: "
        "configure Stamp with the digest (STAMP_AUTH_TOKENS=sha256:…) and give the token to the client.",
    )
    _parser(
        tokens,
        "hash",
        "print the sha256: digest of a token read from stdin",
        cmd_tokens_hash,
        [output],
        description="Read a token from the first line of stdin and print its digest for "
        "STAMP_AUTH_TOKENS (`sha256:<hex>`), so the token itself need not be configured.",
    )

    recipients = _group(sub, "recipients", "create, show and move recipients (wallet endpoints)")
    create = _parser(
        recipients,
        "create",
        "register a recipient's wallet endpoint",
        cmd_recipients_create,
        on_database,
        description="Register a recipient's wallet endpoint, validated as POST /v1/recipients does." + where,
    )
    create.add_argument("--endpoint", required=True, metavar="URL", help="the wallet's slice endpoint URL")
    create.add_argument(
        "--public-key",
        required=True,
        metavar="B64",
        help="the endpoint's extended secp256k1 public key, Base64 (74 bytes)",
    )
    create.add_argument("--version", type=int, default=1, help="wallet endpoint version (default 1)")
    show_recipient = _parser(
        recipients, "show", "show a recipient", cmd_recipients_show, on_database, "Show a recipient." + where
    )
    show_recipient.add_argument("id", metavar="ID", help="the recipient's id (UUID)")
    move = _parser(
        recipients,
        "move",
        "move a recipient's wallet endpoint (the URL only)",
        cmd_recipients_move,
        on_database,
        "Point a recipient at a new wallet endpoint URL, checked as PATCH /v1/recipients/{id} does; "
        "the public key never changes. Every later delivery attempt, by any running Stamp, goes to "
        "the new URL." + where,
    )
    move.add_argument("id", metavar="ID", help="the recipient's id (UUID)")
    move.add_argument("--endpoint", required=True, metavar="URL", help="the new slice endpoint URL")

    certificates = _group(sub, "certificates", "inspect certificates, retry failed ones, re-deliver")
    show = _parser(
        certificates,
        "show",
        "show a certificate with its history",
        cmd_certificates_show,
        on_database,
        "Show a certificate, its failure if any, and its history of events." + where,
    )
    show.add_argument("registry", metavar="REGISTRY", help="registry name")
    show.add_argument("id", metavar="ID", help="certificate id (UUID)")
    listing = _parser(
        certificates,
        "list",
        "list certificates, oldest first",
        cmd_certificates_list,
        on_database,
        "List certificates, oldest first, a page at a time." + where,
    )
    listing.add_argument("--state", help="only this state (stored … delivered, rejected, failed)")
    listing.add_argument("--recipient", metavar="ID", help="only this recipient's")
    listing.add_argument("--metering-point", metavar="ID", help="only this metering point's")
    listing.add_argument("--limit", metavar="N", help="page size, 1 to 1000 (default 100)")
    listing.add_argument("--cursor", help="continue after the page that printed this cursor")
    retry = _parser(
        certificates,
        "retry",
        "resume a failed certificate from the step that failed",
        cmd_certificates_retry,
        on_database,
        "Resume a failed certificate from the step that failed (as POST …/retry does); a running "
        "Stamp takes it up within about a second." + where,
    )
    retry.add_argument("registry", metavar="REGISTRY", help="registry name")
    retry.add_argument("id", metavar="ID", help="certificate id (UUID)")
    redeliver = _parser(
        certificates,
        "redeliver",
        "deliver delivered certificates' slices again (a wallet restored from a backup)",
        cmd_certificates_redeliver,
        on_database,
        "Deliver a delivered certificate's slice again (REGISTRY ID), or every delivered certificate "
        "of a recipient (--recipient, optionally --since), as POST …/redeliver does: the same slice "
        "(position, R, salts) to the recipient's current endpoint, with the retries of any delivery. "
        "Withdrawn certificates are not delivered again. A running Stamp takes them up within "
        "about a second." + where,
    )
    redeliver.add_argument("registry", metavar="REGISTRY", nargs="?", help="registry name")
    redeliver.add_argument("id", metavar="ID", nargs="?", help="certificate id (UUID)")
    redeliver.add_argument("--recipient", metavar="ID", help="every delivered certificate of this recipient")
    redeliver.add_argument(
        "--since",
        metavar="TIME",
        help="with --recipient: only those delivered at or after TIME (Unix seconds or RFC 3339, "
        "e.g. 2026-12-01T00:00:00Z)",
    )
