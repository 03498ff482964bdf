"""``stamp devstack`` (also ``python -m stamp.devstack``): the Registry and Wallet
simulators, standalone, for trying Stamp by hand or driving it from another process.

It prints what Stamp needs (``STAMP_REGISTRIES``, ``STAMP_ISSUER_KEYS``) and a ready
wallet endpoint reference for creating a recipient; logs go to stderr so stdout stays
readable (``--json`` prints one machine-readable line instead). SIGINT/SIGTERM stop
both simulators cleanly and print what they saw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from stamp import event_loop
from stamp.crypto.issuer_keys import IssuerKey

DEFAULT_REGISTRY = "Narnia"
DEFAULT_GRID_AREA = "DK1"
# Names end up in STAMP_REGISTRIES / STAMP_ISSUER_KEYS (NAME=value items split on , and ;)
# and grid areas in file names.
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class IssuerKeyFile:
    grid_area: str
    key: IssuerKey  # its repr holds no secret
    path: Path
    generated: bool


def build_parser(prog: str = "stamp devstack") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the Project Origin Registry simulator (gRPC) and the Wallet simulator (HTTP) "
        "standalone, so Stamp can be run against them. Prints the registry address, each grid "
        "area's issuer key (private PEM file for STAMP_ISSUER_KEYS, public PEM Base64 for the "
        "registry) and one ready wallet endpoint reference. Stop with Ctrl-C or SIGTERM.",
        epilog="Wallet test routes: POST /v1/_test/endpoints creates another endpoint (recipient); "
        "GET /v1/_test/slices shows received, verified and invalid slices and flags (duplicates, "
        "reused positions, early deliveries); POST /v1/_test/faults injects faults, e.g. "
        '{"kind": "status", "status": 503, "count": 3}; DELETE /v1/_test/faults clears them.',
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--registry-port", type=int, default=5001, help="registry gRPC port (default 5001; 0 = any free port)"
    )
    parser.add_argument(
        "--wallet-port", type=int, default=5002, help="wallet HTTP port (default 5002; 0 = any free port)"
    )
    parser.add_argument(
        "--registry-name",
        action="append",
        metavar="NAME",
        help=f"registry name the simulator serves (repeatable; default {DEFAULT_REGISTRY})",
    )
    parser.add_argument(
        "--grid-area",
        action="append",
        metavar="AREA",
        help=f"grid area to generate an issuer key for (repeatable; default {DEFAULT_GRID_AREA} "
        "unless --issuer-key is given)",
    )
    parser.add_argument(
        "--issuer-key",
        action="append",
        default=[],
        metavar="AREA=PATH",
        help="use the Ed25519 private key PEM (or Base64 of it) in PATH for grid AREA instead of "
        "generating one (repeatable)",
    )
    parser.add_argument(
        "--commit-delay",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="time from a transaction's verification to its commit being visible (default 0.2)",
    )
    parser.add_argument(
        "--verify-window",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long the wallet keeps retrying a slice whose certificate is not (yet) on the "
        "registry before calling it invalid (default 30)",
    )
    parser.add_argument(
        "--registry-tls-cert",
        type=Path,
        metavar="PEM",
        help="serve the registry over TLS with this certificate chain (with --registry-tls-key); "
        "Stamp then takes the registry as https://host:port and this file as its "
        "STAMP_REGISTRY_TLS_CA_FILE when the certificate is self-signed",
    )
    parser.add_argument(
        "--registry-tls-key", type=Path, metavar="PEM", help="the private key of --registry-tls-cert"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        metavar="DIR",
        help="write generated issuer private keys here, mode 0600, and keep them (default: a "
        "temporary directory removed at exit)",
    )
    parser.add_argument("--json", action="store_true", help="print the start-up information as one JSON line")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="simulator log level; logs go to stderr (default info)",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "stamp devstack") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    problems = _check_names(args)
    if args.commit_delay < 0 or args.verify_window <= 0:
        problems.append("--commit-delay must be ≥ 0 and --verify-window > 0")
    if (args.registry_tls_cert is None) != (args.registry_tls_key is None):
        problems.append("--registry-tls-cert and --registry-tls-key go together")
    if problems:
        parser.error("; ".join(problems))
    _configure_logging(args.log_level)

    out_dir: Path = args.out_dir or Path(tempfile.mkdtemp(prefix="stamp-devstack-"))
    try:
        try:
            keys = _issuer_keys(args, out_dir)
        except (OSError, ValueError) as exc:
            print(f"stamp devstack: {exc}", file=sys.stderr)
            return 2
        return event_loop.run(_run(args, keys), "auto")
    finally:
        if args.out_dir is None:
            shutil.rmtree(out_dir, ignore_errors=True)


def _check_names(args: argparse.Namespace) -> list[str]:
    args.registry_name = args.registry_name or [DEFAULT_REGISTRY]
    if args.grid_area is None:
        args.grid_area = [] if args.issuer_key else [DEFAULT_GRID_AREA]
    problems = [
        f"{flag} {name!r}: use letters, digits, '_', '.' or '-'"
        for flag, names in (("--registry-name", args.registry_name), ("--grid-area", args.grid_area))
        for name in names
        if not _NAME.fullmatch(name)
    ]
    for item in args.issuer_key:
        area, sep, path = item.partition("=")
        if not sep or not path or not _NAME.fullmatch(area):
            problems.append(f"--issuer-key {item!r}: expected AREA=PATH")
    return problems


def _issuer_keys(args: argparse.Namespace, out_dir: Path) -> list[IssuerKeyFile]:
    keys: dict[str, IssuerKeyFile] = {}
    for item in args.issuer_key:
        area, _, path_text = item.partition("=")
        path = Path(path_text).expanduser().resolve()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"--issuer-key {area}: cannot read {path}: {exc.strerror}") from None
        try:
            key = IssuerKey.from_pem(text)
        except ValueError as exc:
            raise ValueError(
                f"--issuer-key {area}: {path} does not hold an Ed25519 private key ({exc})"
            ) from None
        keys[area] = IssuerKeyFile(area, key, path, generated=False)
    missing = [area for area in dict.fromkeys(args.grid_area) if area not in keys]
    if missing:
        out_dir.mkdir(parents=True, exist_ok=True)
    for area in missing:
        key = IssuerKey.generate()
        path = (out_dir / f"{area}.pem").resolve()
        _write_private(path, key.private_pem())
        keys[area] = IssuerKeyFile(area, key, path, generated=True)
    return sorted(keys.values(), key=lambda k: k.grid_area)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)  # an existing file keeps its mode otherwise
        file.write(text)


def _configure_logging(level: str) -> None:
    import logging

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104


async def _run(args: argparse.Namespace, keys: list[IssuerKeyFile]) -> int:
    # Handle the signals from the start: a SIGTERM during start-up still stops cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _serve(args, keys, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)


async def _serve(args: argparse.Namespace, keys: list[IssuerKeyFile], stop: asyncio.Event) -> int:
    from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
    from stamp.devstack.wallet import WalletSimConfig, WalletSimulator

    names = list(dict.fromkeys(args.registry_name))
    tls_chain = tls_key = None
    if args.registry_tls_cert is not None:
        try:
            tls_chain, tls_key = args.registry_tls_cert.read_bytes(), args.registry_tls_key.read_bytes()
        except OSError as exc:
            print(f"stamp devstack: cannot read the registry TLS files: {exc}", file=sys.stderr)
            return 2
    registry = RegistrySimulator(
        RegistrySimConfig(
            registries=tuple(names),
            issuer_keys={k.grid_area: (k.key.public_pem(),) for k in keys},
            commit_delay=args.commit_delay,
            tls_certificate_chain=tls_chain,
            tls_private_key=tls_key,
        )
    )
    try:
        await registry.start(args.host, args.registry_port)
    except OSError as exc:
        print(f"stamp devstack: registry simulator cannot listen: {exc}", file=sys.stderr)
        return 1
    scheme = "https://" if tls_chain is not None else ""
    address = f"{scheme}{_connect_host(args.host)}:{registry.port}"
    wallet = WalletSimulator(
        WalletSimConfig(
            registries=dict.fromkeys(names, address),
            verify_window=args.verify_window,
            registry_root_certificates=tls_chain,
        )
    )
    try:
        try:
            await wallet.start(args.host, args.wallet_port)
        except OSError as exc:
            print(f"stamp devstack: wallet simulator cannot listen: {exc}", file=sys.stderr)
            return 1
        reference = wallet.create_endpoint("devstack")
        info = _startup_info(names, address, keys, wallet.base_url, reference.as_json(), args.commit_delay)
        if args.registry_tls_cert is not None:
            info["env"]["STAMP_REGISTRY_TLS_CA_FILE"] = str(args.registry_tls_cert.resolve())
        print(orjson.dumps(info).decode() if args.json else _describe(info), flush=True)
        await stop.wait()
        if not args.json:
            print(f"\n{registry.report()}\n{wallet.report()}\nstamp devstack: stopped", flush=True)
        return 0
    finally:
        await wallet.stop()
        await registry.stop()


def _startup_info(
    names: list[str],
    address: str,
    keys: list[IssuerKeyFile],
    wallet_url: str,
    reference: dict[str, Any],
    commit_delay: float,
) -> dict[str, Any]:
    return {
        "registry": {"address": address, "names": names, "commitDelay": commit_delay},
        "issuerKeys": {
            k.grid_area: {
                "privatePemPath": str(k.path),
                "publicPemBase64": k.key.public_pem_base64(),
                "generated": k.generated,
            }
            for k in keys
        },
        "wallet": {"url": wallet_url, "endpointReference": reference},
        "env": {
            "STAMP_REGISTRIES": ",".join(f"{name}={address}" for name in names),
            "STAMP_ISSUER_KEYS": ",".join(f"{k.grid_area}={k.path}" for k in keys),
        },
    }


def _describe(info: dict[str, Any]) -> str:
    registry, wallet, env = info["registry"], info["wallet"], info["env"]
    url = wallet["url"]
    lines = [
        "stamp devstack: registry and wallet simulators are running (Ctrl-C or SIGTERM stops them)",
        "",
        f"Registry simulator  {registry['address']}  (registries: {', '.join(registry['names'])}; "
        f"commit delay {registry['commitDelay']:g} s)",
        "",
        "Issuer keys (private key PEM for Stamp; public key PEM, Base64, as the registry holds it):",
    ]
    for area, key in info["issuerKeys"].items():
        origin = "generated" if key["generated"] else "loaded"
        lines += [
            f"  {area}  private: {key['privatePemPath']} ({origin})",
            f"  {' ' * len(area)}  public:  {key['publicPemBase64']}",
        ]
    lines += [
        "",
        "For Stamp:",
        f"  export STAMP_REGISTRIES={env['STAMP_REGISTRIES']}",
        f"  export STAMP_ISSUER_KEYS={env['STAMP_ISSUER_KEYS']}",
        *(
            [f"  export STAMP_REGISTRY_TLS_CA_FILE={env['STAMP_REGISTRY_TLS_CA_FILE']}"]
            if "STAMP_REGISTRY_TLS_CA_FILE" in env
            else []
        ),
        "",
        f"Wallet simulator  {url}",
        '  a wallet endpoint reference (POST /v1/recipients with {"walletEndpointReference": <it>}):',
        orjson.dumps(wallet["endpointReference"]).decode(),
        f"  another endpoint:  curl -s -X POST {url}/v1/_test/endpoints",
        f"  received slices:   curl -s {url}/v1/_test/slices",
        f'  inject a fault:    curl -s {url}/v1/_test/faults -d \'{{"kind": "status", "status": 503}}\'',
    ]
    return "\n".join(lines)
